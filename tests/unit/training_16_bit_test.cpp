// Training through every registered policy on 16-bit inputs (Note [16-bit training] in
// gqa/variants/policy.hpp): gqa::forward_train on bf16/f16 Q, K, V, O is forward() of those types and
// saves what the float forward_train on the widened inputs saves (map, LSE bits); gqa::backward on them
// gives, bit for bit, the float backward on the widened q, k, v, o (the rounded output) and dout with its
// gradients rounded once to the gradients' type (16-bit or float), the sinks' gradient and WGQA's weight
// gradients the same bits. The policy plumbing is ISA-independent: this TU runs the baseline ISA; the
// core's 16-bit backward is compared on every ISA in suites/backward_suite.hpp. Also: the 16-bit
// backward's checks name the argument before any work.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <gqa/gqa.hpp>

#include "support/data.hpp"
#include "support/expect.hpp"
#include "support/tolerance.hpp"

namespace {

using gqa::index_t;

using gqa::test::narrowed;
using gqa::test::widened;

/// The index of the first element where got (of type G) is not ref rounded to G (the same bits), or -1.
template <class G>
long first_unrounded(const std::vector<G>& got, const std::vector<float>& ref) {
  if (got.size() != ref.size()) return 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const G r = static_cast<G>(ref[i]);
    if (std::memcmp(&got[i], &r, sizeof(G)) != 0) return static_cast<long>(i);
  }
  return -1;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

/// One training step of every registered variant on inputs in T (gradients in G), against the float step
/// on the widened inputs: a fresh policy for each (PGQA draws the same noise, DGQA starts from the same
/// state). Padded rows (kv_lengths), sinks with their gradient; keys with uneven norms per head, so KDGQA
/// and DGQA plan uneven groups.
template <class T, class G>
void check_every_variant() {
  gqa::for_each_variant([&](auto t) {
    using P = typename decltype(t)::type;
    const gqa::model_shape m{8, 2, 24, 7};
    const gqa::variant_heads h = P::heads_for(m);
    const index_t b = 2, sq = 5, skv = 19, hq = h.hq, kvh = h.kv_in, d = m.d;
    SCOPED_TRACE(std::string(P::name) + ", " + gqa::element_name<T> + " in, " + gqa::element_name<G> + " gradients");
    const auto nq = static_cast<std::size_t>(b * sq * hq * d), nk = static_cast<std::size_t>(b * skv * kvh * d);
    auto kr = gqa::test::random_floats(nk, 901);
    for (std::size_t i = 0; i < nk; ++i)
      kr[i] *= 1.0f + static_cast<float>((i / static_cast<std::size_t>(d)) % static_cast<std::size_t>(kvh));
    const auto qw = gqa::test::rounded_kv<T>(gqa::test::random_floats(nq, 900));
    const auto kw = gqa::test::rounded_kv<T>(kr);
    const auto vw = gqa::test::rounded_kv<T>(gqa::test::random_floats(nk, 902));
    const auto dw = gqa::test::rounded_kv<T>(gqa::test::random_floats(nq, 903));
    const auto q16 = narrowed<T>(qw), k16 = narrowed<T>(kw), v16 = narrowed<T>(vw), d16 = narrowed<T>(dw);
    const std::vector<index_t> lengths = {skv, 11};
    const std::vector<float> sinks = gqa::test::random_floats(static_cast<std::size_t>(hq), 904);
    std::vector<float> dsinks16(static_cast<std::size_t>(hq)), dsinks32(dsinks16.size());
    gqa::attention_options opt;
    opt.kv_lengths = lengths;
    opt.sinks = sinks;

    // The 16-bit step.
    std::vector<T> o16(nq);
    std::vector<G> dq16(nq), dk16(nk), dv16(nk);
    gqa::saved_forward<P> s16;
    std::vector<float> wgrad16;
    gqa::with_policy<P>(m, h, [&](P& p) {
      s16 = gqa::forward_train(p, gqa::bshd<const T>(q16.data(), b, sq, hq, d), gqa::bshd<const T>(k16.data(), b, skv, kvh, d),
                               gqa::bshd<const T>(v16.data(), b, skv, kvh, d), gqa::bshd(o16.data(), b, sq, hq, d), opt);
      gqa::attention_options bo = opt;
      bo.dsinks = dsinks16;
      gqa::backward(p, s16, gqa::bshd<const T>(q16.data(), b, sq, hq, d), gqa::bshd<const T>(k16.data(), b, skv, kvh, d),
                    gqa::bshd<const T>(v16.data(), b, skv, kvh, d), gqa::bshd<const T>(o16.data(), b, sq, hq, d),
                    gqa::bshd<const T>(d16.data(), b, sq, hq, d), gqa::bshd(dq16.data(), b, sq, hq, d),
                    gqa::bshd(dk16.data(), b, skv, kvh, d), gqa::bshd(dv16.data(), b, skv, kvh, d), bo);
      if constexpr (std::is_same_v<P, gqa::wgqa_policy>) {
        wgrad16 = p.weight_grad().k;
        wgrad16.insert(wgrad16.end(), p.weight_grad().v.begin(), p.weight_grad().v.end());
      }
    });
    // The float step on the widened inputs; its backward on the widened 16-bit output.
    std::vector<float> o32(nq), dq32(nq), dk32(nk), dv32(nk), wgrad32;
    const std::vector<float> ow = widened(o16);
    gqa::saved_forward<P> s32;
    gqa::with_policy<P>(m, h, [&](P& p) {
      s32 = gqa::forward_train(p, gqa::bshd<const float>(qw.data(), b, sq, hq, d), gqa::bshd<const float>(kw.data(), b, skv, kvh, d),
                               gqa::bshd<const float>(vw.data(), b, skv, kvh, d), gqa::bshd(o32.data(), b, sq, hq, d), opt);
      gqa::attention_options bo = opt;
      bo.dsinks = dsinks32;
      gqa::backward(p, s32, gqa::bshd<const float>(qw.data(), b, sq, hq, d), gqa::bshd<const float>(kw.data(), b, skv, kvh, d),
                    gqa::bshd<const float>(vw.data(), b, skv, kvh, d), gqa::bshd<const float>(ow.data(), b, sq, hq, d),
                    gqa::bshd<const float>(dw.data(), b, sq, hq, d), gqa::bshd(dq32.data(), b, sq, hq, d),
                    gqa::bshd(dk32.data(), b, skv, kvh, d), gqa::bshd(dv32.data(), b, skv, kvh, d), bo);
      if constexpr (std::is_same_v<P, gqa::wgqa_policy>) {
        wgrad32 = p.weight_grad().k;
        wgrad32.insert(wgrad32.end(), p.weight_grad().v.begin(), p.weight_grad().v.end());
      }
    });
    EXPECT_EQ(first_unrounded(o16, o32), -1) << "forward_train's output";
    EXPECT_TRUE(same_bits(s16.lse, s32.lse)) << "saved LSE";
    EXPECT_EQ(s16.maps, s32.maps) << "saved map(s)";
    EXPECT_EQ(first_unrounded(dq16, dq32), -1) << "dq";
    EXPECT_EQ(first_unrounded(dk16, dk32), -1) << "dk";
    EXPECT_EQ(first_unrounded(dv16, dv32), -1) << "dv";
    EXPECT_TRUE(same_bits(dsinks16, dsinks32)) << "dsinks";
    EXPECT_TRUE(same_bits(wgrad16, wgrad32)) << "WGQA's weight gradients";
    for (const float x : dq32) ASSERT_TRUE(std::isfinite(x));
    for (const float x : dv32) ASSERT_TRUE(std::isfinite(x));
  });
}

TEST(training_16_bit, every_variant_bf16_gradients) { check_every_variant<gqa::bf16, gqa::bf16>(); }
TEST(training_16_bit, every_variant_f16_in_float_gradients) { check_every_variant<gqa::f16, float>(); }

// The 16-bit backward checks its call as the float one does, before any work: a different forward's
// extents, gradient extents, a gradient over an input's bytes.
TEST(training_16_bit, backward_names_the_argument) {
  using T = gqa::bf16;
  const index_t b = 1, s = 4, hq = 4, hkv = 2, d = 8;
  const auto n = static_cast<std::size_t>(b * s * hq * d), nk = static_cast<std::size_t>(b * s * hkv * d);
  std::vector<T> q(n, T(0.5f)), k(nk, T(0.25f)), v(nk, T(-0.5f)), o(n), dout(n, T(1.0f));
  const T sentinel(7.0f);
  std::vector<T> dq(n, sentinel), dk(nk, sentinel), dv(nk, sentinel);
  gqa::gqa_policy p;
  const auto qv = gqa::bshd<const T>(q.data(), b, s, hq, d), kv = gqa::bshd<const T>(k.data(), b, s, hkv, d);
  const auto vv = gqa::bshd<const T>(v.data(), b, s, hkv, d);
  const auto saved = gqa::forward_train(p, qv, kv, vv, gqa::bshd(o.data(), b, s, hq, d));
  const auto ov = gqa::bshd<const T>(o.data(), b, s, hq, d), dov = gqa::bshd<const T>(dout.data(), b, s, hq, d);
  const auto dkv = gqa::bshd(dk.data(), b, s, hkv, d), dvv = gqa::bshd(dv.data(), b, s, hkv, d);
  gqa::test::expect_invalid([&] { gqa::backward(p, saved, qv, kv, vv, ov, dov, gqa::bshd(dq.data(), b, s, hq, d - 1), dkv, dvv); },
                            {"gqa::backward: dq.d = 7: must equal q.d = 8"});
  gqa::test::expect_invalid(
      [&] {
        gqa::backward(p, saved, gqa::bshd<const T>(q.data(), b, s - 1, hq, d), kv, vv, ov, dov,
                      gqa::bshd(dq.data(), b, s - 1, hq, d), dkv, dvv);
      },
      {"gqa::backward: q.s = 3: must equal the forward's q.s = 4"});
  gqa::test::expect_invalid(
      [&] { gqa::backward(p, saved, qv, kv, vv, ov, dov, gqa::bshd(dq.data(), b, s, hq, d), dkv, gqa::bshd(k.data(), b, s, hkv, d)); },
      {"gqa::backward: dv", "overlaps k"});
  for (const auto* g : {&dq, &dk, &dv})
    for (const T x : *g) ASSERT_EQ(gqa::to_float(x), 7.0f) << "a gradient was written before the call was rejected";
  // The valid call writes every gradient.
  gqa::backward(p, saved, qv, kv, vv, ov, dov, gqa::bshd(dq.data(), b, s, hq, d), dkv, dvv);
  for (const T x : dq) EXPECT_NE(gqa::to_float(x), 7.0f);
}

}  // namespace
