// Training through every registered policy on 16-bit inputs (Note [16-bit training] in
// gqa/variants/policy.hpp): gqa::forward_train on bf16/f16 Q, K, V, O is forward() of those types and
// saves what the float forward_train on the widened inputs saves (map, LSE bits); gqa::backward on them
// gives, bit for bit, the float backward on the widened q, k, v, o (the rounded output) and dout with its
// gradients rounded once to the gradients' type (16-bit or float), the sinks' gradient and WGQA's weight
// gradients the same bits; the same on a ragged batch (forward_train/backward with a gqa::varlen). The
// policy plumbing is ISA-independent: this TU runs the baseline ISA; the core's 16-bit backward is
// compared on every ISA in suites/backward_suite.hpp. Also: the 16-bit backward's checks name the argument
// before any work.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <gqa/gqa.hpp>
#include <gqa/varlen.hpp>

#include "support/data.hpp"
#include "support/expect.hpp"
#include "support/policy_grads.hpp"
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

/// The batch of a step: dense views (b, sq, skv; kv_lengths pad the second sample) or, with offsets, a
/// ragged batch's packed views (b = 1; sq, skv the total rows).
struct layout {
  index_t b, sq, skv;
  std::vector<index_t> cu_q, cu_k;
};

/// One training step of every registered variant on inputs in T (gradients in G), against the float step
/// on the widened inputs: a fresh policy for each (PGQA draws the same noise, DGQA starts from the same
/// state). Padded rows (kv_lengths) or two sequences of unequal lengths, sinks with their gradient; keys
/// with uneven norms per head, so KDGQA and DGQA plan uneven groups.
template <class T, class G>
void check_every_variant(const layout& l) {
  const bool ragged = !l.cu_q.empty();
  const gqa::varlen seqs{l.cu_q, l.cu_k};
  gqa::for_each_variant([&](auto t) {
    using P = typename decltype(t)::type;
    const gqa::model_shape m{8, 2, 24, 7};
    const gqa::variant_heads h = P::heads_for(m);
    const index_t b = l.b, sq = l.sq, skv = l.skv, hq = h.hq, kvh = h.kv_in, d = m.d;
    SCOPED_TRACE(std::string(P::name) + ", " + gqa::element_name<T> + " in, " + gqa::element_name<G> + " gradients" +
                 (ragged ? ", ragged" : ""));
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
    if (!ragged) opt.kv_lengths = lengths;
    opt.sinks = sinks;
    // forward_train and backward on views of x (rows: sq or skv; heads hq or kvh), dense or ragged.
    const auto view = [&](auto* x, index_t rows, index_t heads) { return gqa::bshd(x, b, rows, heads, d); };
    const auto train = [&](P& p, auto q, auto k, auto v, auto o) {
      return ragged ? gqa::forward_train(p, q, k, v, o, seqs, opt) : gqa::forward_train(p, q, k, v, o, opt);
    };
    const auto back = [&](P& p, const gqa::saved_forward<P>& s, auto q, auto k, auto v, auto o, auto dout, auto dq,
                          auto dk, auto dv, std::vector<float>& dsinks) {
      gqa::attention_options bo = opt;
      bo.dsinks = dsinks;
      if (ragged) {
        gqa::backward(p, s, q, k, v, o, dout, dq, dk, dv, seqs, bo);
      } else {
        gqa::backward(p, s, q, k, v, o, dout, dq, dk, dv, bo);
      }
    };

    // The 16-bit step.
    std::vector<T> o16(nq);
    std::vector<G> dq16(nq), dk16(nk), dv16(nk);
    gqa::saved_forward<P> s16;
    std::vector<float> wgrad16;
    gqa::with_policy<P>(m, h, [&](P& p) {
      s16 = train(p, view(q16.data(), sq, hq), view(k16.data(), skv, kvh), view(v16.data(), skv, kvh),
                  view(o16.data(), sq, hq));
      back(p, s16, view(q16.data(), sq, hq), view(k16.data(), skv, kvh), view(v16.data(), skv, kvh),
           view(std::as_const(o16).data(), sq, hq), view(d16.data(), sq, hq), view(dq16.data(), sq, hq),
           view(dk16.data(), skv, kvh), view(dv16.data(), skv, kvh), dsinks16);
      wgrad16 = gqa::test::policy_gradients(p);
    });
    // The float step on the widened inputs; its backward on the widened 16-bit output.
    std::vector<float> o32(nq), dq32(nq), dk32(nk), dv32(nk), wgrad32;
    const std::vector<float> ow = widened(o16);
    gqa::saved_forward<P> s32;
    gqa::with_policy<P>(m, h, [&](P& p) {
      s32 = train(p, view(qw.data(), sq, hq), view(kw.data(), skv, kvh), view(vw.data(), skv, kvh),
                  view(o32.data(), sq, hq));
      back(p, s32, view(qw.data(), sq, hq), view(kw.data(), skv, kvh), view(vw.data(), skv, kvh),
           view(ow.data(), sq, hq), view(dw.data(), sq, hq), view(dq32.data(), sq, hq), view(dk32.data(), skv, kvh),
           view(dv32.data(), skv, kvh), dsinks32);
      wgrad32 = gqa::test::policy_gradients(p);
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

const layout k_dense{2, 5, 19, {}, {}};
const layout k_ragged{1, 8, 30, {0, 5, 8}, {0, 19, 30}};  // sequences of 5 and 3 queries, 19 and 11 keys

TEST(training_16_bit, every_variant_bf16_gradients) { check_every_variant<gqa::bf16, gqa::bf16>(k_dense); }
TEST(training_16_bit, every_variant_f16_in_float_gradients) { check_every_variant<gqa::f16, float>(k_dense); }
TEST(training_16_bit, ragged_batch_every_variant_bf16_gradients) { check_every_variant<gqa::bf16, gqa::bf16>(k_ragged); }
TEST(training_16_bit, ragged_batch_every_variant_f16_in_float_gradients) {
  check_every_variant<gqa::f16, float>(k_ragged);
}

// The 16-bit backward checks its call as the float one does, before any work: a different forward's
// extents, gradient extents, a gradient over an input's bytes; on a ragged batch, other offsets.
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

  // On a ragged batch (two sequences of the same rows): offsets other than the forward's, a dense `saved`.
  std::fill(dq.begin(), dq.end(), sentinel);
  const std::vector<index_t> cu{0, 1, 4}, other{0, 2, 4};
  const auto ragged = gqa::forward_train(p, qv, kv, vv, gqa::bshd(o.data(), b, s, hq, d), gqa::varlen{cu, cu});
  const auto dqv = gqa::bshd(dq.data(), b, s, hq, d);
  gqa::test::expect_invalid([&] { gqa::backward(p, ragged, qv, kv, vv, ov, dov, dqv, dkv, dvv, gqa::varlen{cu, other}); },
                            {"gqa::backward(varlen): seqs.cu_seqlens_k[1] = 2: must equal the forward's (1)"});
  gqa::test::expect_invalid([&] { gqa::backward(p, saved, qv, kv, vv, ov, dov, dqv, dkv, dvv, gqa::varlen{cu, cu}); },
                            {"gqa::backward(varlen): saved: from a forward_train on dense views"});
  for (const T x : dq) ASSERT_EQ(gqa::to_float(x), 7.0f) << "a gradient was written before the call was rejected";
  gqa::backward(p, ragged, qv, kv, vv, ov, dov, dqv, dkv, dvv, gqa::varlen{cu, cu});
  for (const T x : dq) EXPECT_NE(gqa::to_float(x), 7.0f);
}

}  // namespace
