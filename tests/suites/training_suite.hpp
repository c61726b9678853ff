// tests/suites/training_suite.hpp: every variant's backward through its policy (gqa::forward_train then
// gqa::backward) on every ISA. MHA, MQA, GQA, SQA: the policy path gives the core's gradients bit for bit
// and matches the reference. KDGQA (reference rule and per sample) and DGQA: backward uses the map the
// forward chose, never a later one. PGQA: against the double chain reference::attention -> pgqa_backward
// -> attention_backward (noise held fixed, gradient through mu and sigma), and plain GQA when the noise is
// off. WGQA (scalar, col): per-head dk/dv and the weights' gradients against the double chain through
// reference::wgqa_combine(_backward). forward_train's output is forward()'s, bit for bit. Every variant's
// shapes include a sliding window; window + softcap + sinks + ALiBi (and the sinks' gradient) through the
// policy path are the core's. Tolerances: Note [backward tolerance], with naive fp32 yardsticks of each
// whole chain. Helpers stay in `namespace {}`.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include <gqa/gqa.hpp>
#include <gqa/reference/attention.hpp>
#include <gqa/reference/grouping.hpp>
#include <gqa/reference/pgqa.hpp>
#include <gqa/reference/wgqa.hpp>

#include "support/expect.hpp"
#include "support/isa_suite.hpp"
#include "support/policy_grads.hpp"
#include "support/tolerance.hpp"

namespace {

using gqa::index_t;
using gqa::test::gradient_tolerance;
using gqa::test::naive_fp32;
using gqa::test::naive_fp32_backward;

/// One training step's tensors, BSHD: inputs (k and v with `kv_heads` heads, what the policy receives),
/// the upstream gradient, the output and the three gradients (NaN until written).
struct step_data {
  index_t b, sq, skv, hq, kv_heads, d, dv;
  std::vector<float> q, k, v, dout, o, dq, dk, dv_;
  std::vector<index_t> lengths;
  bool causal = false;
  index_t window_left = -1, window_right = -1;
  float softcap = 0.0f;
  std::vector<float> sinks, slopes;  // per query head, or empty

  step_data(index_t b_, index_t sq_, index_t skv_, index_t hq_, index_t kvh, index_t d_, index_t dv__, std::uint64_t seed)
      : b(b_), sq(sq_), skv(skv_), hq(hq_), kv_heads(kvh), d(d_), dv(dv__),
        q(gqa::test::random_floats(n(b, sq, hq, d), seed * 5)),
        k(gqa::test::random_floats(n(b, skv, kvh, d), seed * 5 + 1)),
        v(gqa::test::random_floats(n(b, skv, kvh, dv), seed * 5 + 2)),
        dout(gqa::test::random_floats(n(b, sq, hq, dv), seed * 5 + 3)), o(n(b, sq, hq, dv), nan()),
        dq(n(b, sq, hq, d), nan()), dk(n(b, skv, kvh, d), nan()), dv_(n(b, skv, kvh, dv), nan()) {}

  static std::size_t n(index_t b, index_t s, index_t h, index_t d) { return static_cast<std::size_t>(b * s * h * d); }
  static float nan() { return std::numeric_limits<float>::quiet_NaN(); }

  gqa::tensor_view<const float> qv() const { return gqa::bshd<const float>(q.data(), b, sq, hq, d); }
  gqa::tensor_view<const float> kv() const { return gqa::bshd<const float>(k.data(), b, skv, kv_heads, d); }
  gqa::tensor_view<const float> vv() const { return gqa::bshd<const float>(v.data(), b, skv, kv_heads, dv); }
  gqa::tensor_view<const float> doutv() const { return gqa::bshd<const float>(dout.data(), b, sq, hq, dv); }
  gqa::tensor_view<float> ov() { return gqa::bshd(o.data(), b, sq, hq, dv); }
  gqa::tensor_view<float> dqv() { return gqa::bshd(dq.data(), b, sq, hq, d); }
  gqa::tensor_view<float> dkv() { return gqa::bshd(dk.data(), b, skv, kv_heads, d); }
  gqa::tensor_view<float> dvv() { return gqa::bshd(dv_.data(), b, skv, kv_heads, dv); }

  gqa::attention_options options() const {
    gqa::attention_options opt;
    opt.causal = causal;
    opt.kv_lengths = lengths;
    opt.window_left = window_left;
    opt.window_right = window_right;
    opt.softcap = softcap;
    opt.sinks = sinks;
    opt.alibi_slopes = slopes;
    return opt;
  }
  /// The modifiers of options() for the references.
  gqa::reference::modifiers mods() const { return {window_left, window_right, softcap, sinks, slopes}; }
  double scale() const { return 1.0 / std::sqrt(static_cast<double>(static_cast<float>(d))); }

  /// forward_train then backward through `policy`; returns what the forward saved.
  template <class Isa, class P>
  gqa::saved_forward<P> train(P& policy) {
    auto saved = gqa::forward_train<Isa>(policy, qv(), kv(), vv(), ov(), options());
    gqa::backward<Isa>(policy, saved, qv(), kv(), vv(), ov(), doutv(), dqv(), dkv(), dvv(), options());
    return saved;
  }
};

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::vector<double> widen(const std::vector<float>& x) { return {x.begin(), x.end()}; }

/// |got − ref| ≤ tol (+ the cancellation floor of Note [backward tolerance] when `terms` is given) for
/// every element, reported with the name.
void expect_close(const std::vector<float>& got, const std::vector<double>& ref, double tol, const char* name,
                  const std::vector<double>& terms = {}) {
  ASSERT_EQ(got.size(), ref.size()) << name;
  double err = 0.0;
  std::size_t bad = 0, over = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) ++bad;
    const double e = std::fabs(static_cast<double>(got[i]) - ref[i]);
    err = std::max(err, e);
    over += e > tol + (terms.empty() ? 0.0 : gqa::test::cancellation_floor(terms[i]));
  }
  EXPECT_EQ(bad, 0u) << name << ": non-finite values";
  EXPECT_EQ(over, 0u) << name << ": elements over the bound " << tol << "; max |error| = " << err;
}

/// The core's gradients on `map`, straight from attend_backward on the step's inputs and the given o/LSE.
template <class Isa>
std::vector<float> core_gradients(const step_data& s, std::span<const float> lse, const gqa::head_map& map) {
  std::vector<float> dq(s.dq.size()), dk(s.dk.size()), dv(s.dv_.size());
  gqa::attend_backward<Isa>(s.qv(), s.kv(), s.vv(), gqa::bshd<const float>(s.o.data(), s.b, s.sq, s.hq, s.dv), s.doutv(),
                            lse, gqa::bshd(dq.data(), s.b, s.sq, s.hq, s.d),
                            gqa::bshd(dk.data(), s.b, s.skv, s.kv_heads, s.d),
                            gqa::bshd(dv.data(), s.b, s.skv, s.kv_heads, s.dv), map, s.options());
  dq.insert(dq.end(), dk.begin(), dk.end());
  dq.insert(dq.end(), dv.begin(), dv.end());
  return dq;
}

std::vector<float> all_gradients(const step_data& s) {
  auto g = s.dq;
  g.insert(g.end(), s.dk.begin(), s.dk.end());
  g.insert(g.end(), s.dv_.begin(), s.dv_.end());
  return g;
}

/// The step's gradients against the double reference on `kv_of_q`, within Note [backward tolerance].
void expect_matches_reference(const step_data& s, std::span<const float> lse, std::span<const index_t> kv_of_q) {
  const auto qd = widen(s.q), kd = widen(s.k), vd = widen(s.v), dd = widen(s.dout);
  const auto ref = gqa::reference::attention_backward(
      gqa::bshd<const double>(qd.data(), s.b, s.sq, s.hq, s.d), gqa::bshd<const double>(kd.data(), s.b, s.skv, s.kv_heads, s.d),
      gqa::bshd<const double>(vd.data(), s.b, s.skv, s.kv_heads, s.dv), gqa::bshd<const double>(dd.data(), s.b, s.sq, s.hq, s.dv),
      kv_of_q, s.scale(), s.causal, s.lengths, s.mods());
  const auto naive = naive_fp32_backward(s.qv(), s.kv(), s.vv(), gqa::bshd<const float>(s.o.data(), s.b, s.sq, s.hq, s.dv),
                                         s.doutv(), lse, kv_of_q, static_cast<float>(s.scale()), s.causal, s.lengths, s.mods());
  expect_close(s.dq, ref.dq, gradient_tolerance(naive.dq, ref.dq), "dq", ref.dq_terms);
  expect_close(s.dk, ref.dk, gradient_tolerance(naive.dk, ref.dk), "dk", ref.dk_terms);
  expect_close(s.dv_, ref.dv, gradient_tolerance(naive.dv, ref.dv), "dv", ref.dv_terms);
}

struct shape_case {
  index_t b, sq, skv, hq, hkv, d, dv;
  bool causal;
  std::vector<index_t> lengths;
  index_t window_left = -1, window_right = -1;

  /// Sets the case's masks on s.
  void masks_of(step_data& s) const {
    s.causal = causal;
    s.lengths = lengths;
    s.window_left = window_left;
    s.window_right = window_right;
  }
};

/// Every variant's training step runs on these: causal, padded decode rows, a sliding window (causal,
/// and both sides with padding).
std::vector<shape_case> shapes() {
  std::vector<shape_case> v = {{2, 40, 70, 8, 2, 24, 24, true, {}},
                               {2, 1, 130, 8, 4, 17, 17, false, {130, 60}},
                               {2, 40, 70, 8, 2, 24, 24, true, {}, 12, -1}};
  if (!gqa::test::reduced) {
    v.push_back({1, 70, 70, 12, 4, 64, 40, true, {}});
    v.push_back({2, 33, 90, 8, 2, 17, 17, false, {90, 41}, 20, 5});
  }
  return v;
}

/// A static variant's training step on `sc` with (hq, hkv) heads: the core's gradients bit for bit, the
/// uniform map saved, forward_train's output equal to forward()'s, and the reference matched.
template <class Isa, class P>
void check_static_variant(P policy, index_t hq, index_t hkv, const shape_case& sc, std::uint64_t seed, const char* name) {
  SCOPED_TRACE(name);
  step_data s(sc.b, sc.sq, sc.skv, hq, hkv, sc.d, sc.dv, seed);
  sc.masks_of(s);
  const auto saved = s.template train<Isa>(policy);
  ASSERT_EQ(saved.maps.size(), 1u);
  EXPECT_EQ(saved.maps[0], gqa::head_map::uniform(hq, hkv));
  EXPECT_TRUE(same_bits(all_gradients(s), core_gradients<Isa>(s, saved.lse, saved.maps[0])));
  std::vector<float> o2(s.o.size());
  gqa::forward<Isa>(policy, s.qv(), s.kv(), s.vv(), gqa::bshd(o2.data(), s.b, s.sq, s.hq, s.dv), s.options());
  EXPECT_TRUE(same_bits(o2, s.o)) << "forward_train's output differs from forward()'s";
  expect_matches_reference(s, saved.lse, saved.maps[0].kv_of_q());
}

}  // namespace

template <class Isa>
class training_suite : public gqa::test::isa_test<Isa> {};
TYPED_TEST_SUITE_P(training_suite);

// MHA, MQA, GQA and SQA: the policy only plans, so its backward is the core's on the policy's map, bit for
// bit, and matches the reference; forward_train's output is forward()'s.
TYPED_TEST_P(training_suite, static_variants_are_the_core) {
  std::uint64_t seed = 10;
  for (const auto& sc : shapes()) {
    check_static_variant<TypeParam>(gqa::mha_policy{}, 4, 4, sc, seed++, "mha");
    check_static_variant<TypeParam>(gqa::mqa_policy{}, 8, 1, sc, seed++, "mqa");
    check_static_variant<TypeParam>(gqa::gqa_policy{}, sc.hq, sc.hkv, sc, seed++, "gqa");
    check_static_variant<TypeParam>(gqa::sqa_policy{gqa::sqa_config::standard(16, 8, 2)}, 8, 2, sc, seed++, "sqa");
  }
}

// KDGQA: saved.maps holds the allocation the forward chose (the policy's last(), and the reference's);
// the backward is the core's on it (unequal and empty groups), per sample too.
TYPED_TEST_P(training_suite, kdgqa_uses_the_recorded_allocation) {
  std::uint64_t seed = 30;
  for (const auto& sc : shapes())
    for (const bool per_sample : {false, true}) {
      SCOPED_TRACE(per_sample ? "per sample" : "one allocation per batch");
      step_data s(sc.b, sc.sq, sc.skv, sc.hq, sc.hkv, sc.d, sc.dv, seed++);
      sc.masks_of(s);
      // Unequal key norms so the allocation is not uniform (KV head 0 small: possibly no query heads).
      for (std::size_t i = 0; i < s.k.size(); ++i) {
        const auto g = static_cast<index_t>(i / static_cast<std::size_t>(s.d)) % s.kv_heads;
        s.k[i] *= 0.2f + 0.6f * static_cast<float>(g);
      }
      gqa::kdgqa_policy policy({.per_sample = per_sample});
      const auto saved = s.template train<TypeParam>(policy);
      const index_t samples = per_sample && s.b > 1 ? s.b : 1;
      ASSERT_EQ(saved.maps.size(), static_cast<std::size_t>(samples));
      EXPECT_EQ(saved.maps.back(), gqa::head_map::from_allocation(policy.last().alloc));
      for (index_t ib = 0; ib < samples; ++ib) {
        const auto& map = saved.maps[static_cast<std::size_t>(ib)];
        const auto kview = samples > 1 ? gqa::bshd<const float>(s.k.data() + ib * s.skv * s.kv_heads * s.d, 1, s.skv,
                                                                s.kv_heads, s.d)
                                       : s.kv();
        const auto want = gqa::reference::kdgqa(kview, s.hq).kv_of_q;
        EXPECT_TRUE(std::equal(map.kv_of_q().begin(), map.kv_of_q().end(), want.begin(), want.end())) << "sample " << ib;
      }
      if (samples == 1) {
        EXPECT_TRUE(same_bits(all_gradients(s), core_gradients<TypeParam>(s, saved.lse, saved.maps[0])));
        expect_matches_reference(s, saved.lse, saved.maps[0].kv_of_q());
      } else {
        // Per sample: each sample's gradients are the core's on that sample's map.
        for (index_t ib = 0; ib < s.b; ++ib) {
          step_data one(1, s.sq, s.skv, s.hq, s.kv_heads, s.d, s.dv, 0);
          auto slice = [&](const std::vector<float>& x, index_t per) {
            return std::vector<float>(x.begin() + ib * per, x.begin() + (ib + 1) * per);
          };
          one.q = slice(s.q, s.sq * s.hq * s.d);
          one.k = slice(s.k, s.skv * s.kv_heads * s.d);
          one.v = slice(s.v, s.skv * s.kv_heads * s.dv);
          one.dout = slice(s.dout, s.sq * s.hq * s.dv);
          one.o = slice(s.o, s.sq * s.hq * s.dv);
          one.causal = s.causal;
          one.window_left = s.window_left;
          one.window_right = s.window_right;
          if (!s.lengths.empty()) one.lengths = {s.lengths[static_cast<std::size_t>(ib)]};
          const auto per = static_cast<std::size_t>(s.hq * s.sq);
          const auto lse = std::span<const float>(saved.lse).subspan(static_cast<std::size_t>(ib) * per, per);
          auto want = core_gradients<TypeParam>(one, lse, saved.maps[static_cast<std::size_t>(ib)]);
          auto got = slice(s.dq, s.sq * s.hq * s.d);
          const auto gk = slice(s.dk, s.skv * s.kv_heads * s.d), gv = slice(s.dv_, s.skv * s.kv_heads * s.dv);
          got.insert(got.end(), gk.begin(), gk.end());
          got.insert(got.end(), gv.begin(), gv.end());
          EXPECT_TRUE(same_bits(got, want)) << "sample " << ib;
        }
      }
    }
}

// DGQA: a second training step changes the state's splits; the first step's backward still uses the map
// its forward chose (saved.maps), not the state's current one.
TYPED_TEST_P(training_suite, dgqa_uses_the_recorded_map) {
  const index_t b = 2, sq = 30, skv = 50, hq = 12, hkv = 4, d = 16;
  step_data s(b, sq, skv, hq, hkv, d, d, 50);
  s.causal = true;
  for (std::size_t i = 0; i < s.k.size(); ++i) {
    const auto g = static_cast<index_t>(i / static_cast<std::size_t>(d)) % hkv;
    s.k[i] *= 0.3f + 0.5f * static_cast<float>(g);
  }
  auto state = gqa::dgqa_state::initial(hq, hkv);
  gqa::dgqa_policy policy({.kind = gqa::dgqa_kind::diff, .repair = gqa::dgqa_repair::hamilton}, state);
  policy.set_mode(gqa::dgqa_mode::train);
  policy.set_step(0);
  const auto saved = gqa::forward_train<TypeParam>(policy, s.qv(), s.kv(), s.vv(), s.ov(), s.options());
  const auto first = saved.maps.at(0);
  // Step 1 on other keys moves the state's splits.
  auto k2 = s.k;
  for (std::size_t i = 0; i < k2.size(); ++i) {
    const auto g = static_cast<index_t>(i / static_cast<std::size_t>(d)) % hkv;
    k2[i] *= g == 0 ? 4.0f : 0.5f;
  }
  std::vector<float> o2(s.o.size());
  policy.set_step(1);
  gqa::forward<TypeParam>(policy, s.qv(), gqa::bshd<const float>(k2.data(), b, skv, hkv, d), s.vv(),
                          gqa::bshd(o2.data(), b, sq, hq, d), s.options());
  ASSERT_NE(gqa::head_map::from_allocation(state.splits), first) << "the test needs the second step to move the splits";
  gqa::backward<TypeParam>(policy, saved, s.qv(), s.kv(), s.vv(), s.ov(), s.doutv(), s.dqv(), s.dkv(), s.dvv(), s.options());
  EXPECT_TRUE(same_bits(all_gradients(s), core_gradients<TypeParam>(s, saved.lse, first)));
  expect_matches_reference(s, saved.lse, first.kv_of_q());
}

// --- PGQA: the naive fp32 chain is the yardstick (Note [backward tolerance]). ---
namespace {

/// The naive fp32 training step of PGQA: naive attention, then per (sample, head) row μ, σ in float, the
/// noise Z rounded to float, the perturbation and its backward (Note [PGQA gradient]) in float, then the
/// naive core backward on the naive output.
gqa::test::naive_gradients naive_pgqa_step(const step_data& s, index_t hkv, std::uint64_t seed, std::uint64_t layer,
                                           std::uint64_t call) {
  const auto map = gqa::test::uniform_kv_of_q(s.hq, hkv);
  const auto fwd = naive_fp32(s.qv(), s.kv(), s.vv(), map, static_cast<float>(s.scale()), s.causal, s.lengths, s.mods());
  const index_t grp = s.hq / hkv, n = s.sq * s.dv;
  std::vector<float> dx(fwd.o.size());
  auto at = [&](index_t ib, index_t t, index_t h, index_t c) { return static_cast<std::size_t>(((ib * s.sq + t) * s.hq + h) * s.dv + c); };
  for (index_t h = 0; h < s.hq; ++h) {
    const auto z = gqa::reference::pgqa_noise_row(seed, layer, call, h / grp, h % grp, grp, n);
    for (index_t ib = 0; ib < s.b; ++ib) {
      float mu = 0.0f, g1 = 0.0f, gz = 0.0f;
      for (index_t t = 0; t < s.sq; ++t)
        for (index_t c = 0; c < s.dv; ++c) {
          mu += fwd.o[at(ib, t, h, c)];
          g1 += s.dout[at(ib, t, h, c)];
          gz += s.dout[at(ib, t, h, c)] * static_cast<float>(z[static_cast<std::size_t>(t * s.dv + c)]);
        }
      mu /= static_cast<float>(n);
      float var = 0.0f;
      for (index_t t = 0; t < s.sq; ++t)
        for (index_t c = 0; c < s.dv; ++c) var += (fwd.o[at(ib, t, h, c)] - mu) * (fwd.o[at(ib, t, h, c)] - mu);
      const float sigma = std::sqrt(var / static_cast<float>(n - 1));
      for (index_t t = 0; t < s.sq; ++t)
        for (index_t c = 0; c < s.dv; ++c) {
          const float ds = sigma > 0.0f ? (fwd.o[at(ib, t, h, c)] - mu) / (static_cast<float>(n - 1) * sigma) : 0.0f;
          dx[at(ib, t, h, c)] = s.dout[at(ib, t, h, c)] - g1 / static_cast<float>(n) - ds * gz;
        }
    }
  }
  return naive_fp32_backward(s.qv(), s.kv(), s.vv(), gqa::bshd<const float>(fwd.o.data(), s.b, s.sq, s.hq, s.dv),
                             gqa::bshd<const float>(dx.data(), s.b, s.sq, s.hq, s.dv), fwd.lse, map,
                             static_cast<float>(s.scale()), s.causal, s.lengths, s.mods());
}
}  // namespace

// PGQA: against the double chain reference::attention -> reference::pgqa_backward (the draw held fixed)
// -> reference::attention_backward; the call key recorded (not the policy's next one); noise off (and
// train_only in eval) is plain GQA's backward, bit for bit.
TYPED_TEST_P(training_suite, pgqa_gradient_through_mean_and_std) {
  std::uint64_t seed = 70;
  for (const auto& sc : shapes()) {
    step_data s(sc.b, sc.sq, sc.skv, sc.hq, sc.hkv, sc.d, sc.dv, seed++);
    sc.masks_of(s);
    if (s.sq * s.dv < 2) continue;
    gqa::pgqa_policy policy({.seed = 5, .layer = 2});
    policy.set_calls(3);
    const auto saved = gqa::forward_train<TypeParam>(policy, s.qv(), s.kv(), s.vv(), s.ov(), s.options());
    EXPECT_EQ(saved.policy.call, 3u);
    EXPECT_TRUE(saved.policy.perturbed);
    EXPECT_EQ(policy.calls(), 4u);
    // The same call replayed by forward() gives the same output.
    std::vector<float> o2(s.o.size());
    policy.set_calls(3);
    gqa::forward<TypeParam>(policy, s.qv(), s.kv(), s.vv(), gqa::bshd(o2.data(), s.b, s.sq, s.hq, s.dv), s.options());
    EXPECT_TRUE(same_bits(o2, s.o)) << "forward_train's output differs from forward()'s";
    gqa::backward<TypeParam>(policy, saved, s.qv(), s.kv(), s.vv(), s.ov(), s.doutv(), s.dqv(), s.dkv(), s.dvv(), s.options());

    const auto map = gqa::test::uniform_kv_of_q(s.hq, s.kv_heads);
    const auto qd = widen(s.q), kd = widen(s.k), vd = widen(s.v), dd = widen(s.dout);
    const auto qv = gqa::bshd<const double>(qd.data(), s.b, s.sq, s.hq, s.d);
    const auto kv = gqa::bshd<const double>(kd.data(), s.b, s.skv, s.kv_heads, s.d);
    const auto vv = gqa::bshd<const double>(vd.data(), s.b, s.skv, s.kv_heads, s.dv);
    const auto att = gqa::reference::attention(qv, kv, vv, map, s.scale(), s.causal, s.lengths, s.mods());
    const auto dcore = gqa::reference::pgqa_backward(att.o, dd, s.b, s.sq, s.hq, s.dv, s.kv_heads, 5, 2, 3);
    const auto ref = gqa::reference::attention_backward(qv, kv, vv, gqa::bshd<const double>(dcore.data(), s.b, s.sq, s.hq, s.dv),
                                                        map, s.scale(), s.causal, s.lengths, s.mods());
    const auto naive = naive_pgqa_step(s, s.kv_heads, 5, 2, 3);
    expect_close(s.dq, ref.dq, gradient_tolerance(naive.dq, ref.dq), "dq", ref.dq_terms);
    expect_close(s.dk, ref.dk, gradient_tolerance(naive.dk, ref.dk), "dk", ref.dk_terms);
    expect_close(s.dv_, ref.dv, gradient_tolerance(naive.dv, ref.dv), "dv", ref.dv_terms);

    // Noise off: plain GQA's gradients.
    for (const bool off : {true, false}) {
      gqa::pgqa_policy quiet({.seed = 5, .noise = off ? gqa::pgqa_noise::off : gqa::pgqa_noise::train_only});
      quiet.set_training(false);
      const auto sq = s.template train<TypeParam>(quiet);
      EXPECT_FALSE(sq.policy.perturbed);
      EXPECT_TRUE(same_bits(all_gradients(s), core_gradients<TypeParam>(s, sq.lse, gqa::head_map::uniform(s.hq, s.kv_heads))));
    }
  }
}

// --- WGQA: the naive fp32 chain is the yardstick. ---
namespace {

struct wgqa_naive {
  gqa::test::naive_gradients g;  // dq, and dk/dv per head
  std::vector<float> dwk, dwv;
};

/// Naive fp32 WGQA step: combine in float, naive attention and backward on the combined heads, then
/// dK_j = w_j ⊙ dK̃_g and the weights' gradients as float sums in (b, t, c) order.
wgqa_naive naive_wgqa_step(const step_data& s, const gqa::wgqa_weights& w) {
  const index_t grp = w.hq / w.hkv, d = w.d;
  const bool scalar = w.kind == gqa::wgqa_kind::scalar;
  auto weight = [&](const std::vector<float>& ww, index_t j, index_t c) { return scalar ? ww[static_cast<std::size_t>(j)] : ww[static_cast<std::size_t>(j * d + c)]; };
  auto combine = [&](const std::vector<float>& x, const std::vector<float>& ww) {
    std::vector<float> out(static_cast<std::size_t>(s.b * s.skv * w.hkv * d), 0.0f);
    for (index_t ib = 0; ib < s.b; ++ib)
      for (index_t t = 0; t < s.skv; ++t)
        for (index_t j = 0; j < w.hq; ++j)
          for (index_t c = 0; c < d; ++c)
            out[static_cast<std::size_t>(((ib * s.skv + t) * w.hkv + j / grp) * d + c)] +=
                weight(ww, j, c) * x[static_cast<std::size_t>(((ib * s.skv + t) * w.hq + j) * d + c)];
    return out;
  };
  const auto kc = combine(s.k, w.k), vc = combine(s.v, w.v);
  const auto map = gqa::test::uniform_kv_of_q(s.hq, w.hkv);
  const auto kcv = gqa::bshd<const float>(kc.data(), s.b, s.skv, w.hkv, d), vcv = gqa::bshd<const float>(vc.data(), s.b, s.skv, w.hkv, d);
  const auto fwd = naive_fp32(s.qv(), kcv, vcv, map, static_cast<float>(s.scale()), s.causal, s.lengths, s.mods());
  const auto core = naive_fp32_backward(s.qv(), kcv, vcv, gqa::bshd<const float>(fwd.o.data(), s.b, s.sq, s.hq, d), s.doutv(),
                                        fwd.lse, map, static_cast<float>(s.scale()), s.causal, s.lengths, s.mods());
  wgqa_naive r;
  r.g.dq = core.dq;
  auto back = [&](const std::vector<float>& x, const std::vector<float>& dcomb, const std::vector<float>& ww,
                  std::vector<float>& dx, std::vector<float>& dw) {
    dx.assign(x.size(), 0.0f);
    dw.assign(ww.size(), 0.0f);
    for (index_t ib = 0; ib < s.b; ++ib)
      for (index_t t = 0; t < s.skv; ++t)
        for (index_t j = 0; j < w.hq; ++j)
          for (index_t c = 0; c < d; ++c) {
            const auto xi = static_cast<std::size_t>(((ib * s.skv + t) * w.hq + j) * d + c);
            const float go = dcomb[static_cast<std::size_t>(((ib * s.skv + t) * w.hkv + j / grp) * d + c)];
            dx[xi] = weight(ww, j, c) * go;
            dw[static_cast<std::size_t>(scalar ? j : j * d + c)] += go * x[xi];
          }
  };
  back(s.k, core.dk, w.k, r.g.dk, r.dwk);
  back(s.v, core.dv, w.v, r.g.dv, r.dwv);
  return r;
}
}  // namespace

// WGQA (scalar and col, mean and random weights): per-head dk/dv and the weights' gradients against the
// double chain reference::wgqa_combine -> attention_backward -> wgqa_combine_backward.
TYPED_TEST_P(training_suite, wgqa_gradients_of_heads_and_weights) {
  std::uint64_t seed = 90;
  for (const auto& sc : shapes())
    for (const auto kind : {gqa::wgqa_kind::scalar, gqa::wgqa_kind::col})
      for (const bool random : {false, true}) {
        SCOPED_TRACE(std::string(gqa::to_string(kind)) + (random ? " random" : " mean"));
        const index_t hq = sc.hq, hkv = sc.hkv, d = sc.d;
        step_data s(sc.b, sc.sq, sc.skv, hq, hq, d, d, seed++);
        sc.masks_of(s);
        const auto w = random ? gqa::wgqa_weights::random_init(kind, hq, hkv, d, 8, seed)
                              : gqa::wgqa_weights::mean_init(kind, hq, hkv, d, 8);
        gqa::wgqa_policy policy(w);
        s.template train<TypeParam>(policy);

        const std::string kname(gqa::to_string(kind));
        const auto wk = widen(w.k), wv = widen(w.v), kd = widen(s.k), vd = widen(s.v), qd = widen(s.q), dd = widen(s.dout);
        const auto kc = gqa::reference::wgqa_combine(kd, s.b, s.skv, hq, hkv, d, kname, wk);
        const auto vc = gqa::reference::wgqa_combine(vd, s.b, s.skv, hq, hkv, d, kname, wv);
        const auto map = gqa::test::uniform_kv_of_q(hq, hkv);
        const auto g = gqa::reference::attention_backward(
            gqa::bshd<const double>(qd.data(), s.b, s.sq, hq, d), gqa::bshd<const double>(kc.data(), s.b, s.skv, hkv, d),
            gqa::bshd<const double>(vc.data(), s.b, s.skv, hkv, d), gqa::bshd<const double>(dd.data(), s.b, s.sq, hq, d), map,
            s.scale(), s.causal, s.lengths, s.mods());
        const auto gk = gqa::reference::wgqa_combine_backward(kd, g.dk, s.b, s.skv, hq, hkv, d, kname, wk);
        const auto gv = gqa::reference::wgqa_combine_backward(vd, g.dv, s.b, s.skv, hq, hkv, d, kname, wv);
        const auto naive = naive_wgqa_step(s, w);
        expect_close(s.dq, g.dq, gradient_tolerance(naive.g.dq, g.dq), "dq");
        expect_close(s.dk, gk.dx, gradient_tolerance(naive.g.dk, gk.dx), "dk (per head)");
        expect_close(s.dv_, gv.dx, gradient_tolerance(naive.g.dv, gv.dx), "dv (per head)");
        expect_close(policy.weight_grad().k, gk.dw, gradient_tolerance(naive.dwk, gk.dw), "d weights.k");
        expect_close(policy.weight_grad().v, gv.dw, gradient_tolerance(naive.dwv, gv.dw), "d weights.v");
      }
}

// --- Bitwise invariance of a whole training step over thread counts and executors. ---
namespace {

/// A caller parallel_for running the tasks in reverse order on the calling thread.
void reverse_order_tasks(index_t n, const std::function<void(index_t)>& task) {
  for (index_t i = n; i-- > 0;) task(i);
}

/// forward_train + backward of a fresh policy from `make` on `s` with options tweaked by `tweak`: the
/// output and every gradient (and WGQA's weight gradient), concatenated.
template <class Isa, class Make>
std::vector<float> step_bits(const step_data& base, Make&& make, const std::function<void(gqa::attention_options&)>& tweak) {
  step_data s = base;
  auto policy = make();
  auto opt = s.options();
  tweak(opt);
  const auto saved = gqa::forward_train<Isa>(policy, s.qv(), s.kv(), s.vv(), s.ov(), opt);
  gqa::backward<Isa>(policy, saved, s.qv(), s.kv(), s.vv(), s.ov(), s.doutv(), s.dqv(), s.dkv(), s.dvv(), opt);
  auto bits = all_gradients(s);
  bits.insert(bits.end(), s.o.begin(), s.o.end());
  const std::vector<float> own = gqa::test::policy_gradients(policy);
  bits.insert(bits.end(), own.begin(), own.end());
  return bits;
}

template <class Isa, class Make>
void check_step_deterministic(const step_data& s, Make&& make, const char* name) {
  SCOPED_TRACE(name);
  const auto one = step_bits<Isa>(s, make, [](gqa::attention_options& o) { o.num_threads = 1; });
  EXPECT_TRUE(same_bits(one, step_bits<Isa>(s, make, [](gqa::attention_options& o) { o.num_threads = 2; })))
      << "num_threads = 2 differs from 1";
  EXPECT_TRUE(same_bits(one, step_bits<Isa>(s, make, [](gqa::attention_options& o) { o.num_threads = 0; })))
      << "num_threads = 0 differs from 1";
  EXPECT_TRUE(same_bits(one, step_bits<Isa>(s, make, [](gqa::attention_options& o) { o.parallel_for = reverse_order_tasks; })))
      << "a caller loop in reverse order differs from 1 thread";
}

}  // namespace

// A whole training step (forward_train + backward) of the variants with steps of their own, and of one
// with unequal groups, gives the same bits for any thread count and executor.
TYPED_TEST_P(training_suite, training_step_is_deterministic) {
  step_data s(2, 50, 80, 8, 2, 24, 24, 300);
  s.causal = true;
  check_step_deterministic<TypeParam>(s, [] { return gqa::pgqa_policy({.seed = 9}); }, "pgqa");
  check_step_deterministic<TypeParam>(s, [] { return gqa::kdgqa_policy({.per_sample = true}); }, "kdgqa per sample");
  step_data w(2, 50, 80, 8, 8, 24, 24, 301);
  w.causal = true;
  check_step_deterministic<TypeParam>(
      w, [] { return gqa::wgqa_policy(gqa::wgqa_weights::random_init(gqa::wgqa_kind::col, 8, 2, 24, 8, 3)); }, "wgqa col");
}

// gqa::backward's own checks: an empty saved_forward, extents or options other than the forward's, and
// aliasing, each named, before any work.
namespace {
template <class Isa>
void check_backward_errors() {
  step_data s(1, 8, 9, 4, 2, 8, 8, 200);
  gqa::gqa_policy policy;
  const auto saved = gqa::forward_train<Isa>(policy, s.qv(), s.kv(), s.vv(), s.ov(), s.options());
  using gqa::test::expect_invalid;
  auto run = [&](const gqa::saved_forward<gqa::gqa_policy>& sv, gqa::attention_options opt) {
    gqa::backward<Isa>(policy, sv, s.qv(), s.kv(), s.vv(), s.ov(), s.doutv(), s.dqv(), s.dkv(), s.dvv(), opt);
  };
  expect_invalid([&] { run(gqa::saved_forward<gqa::gqa_policy>{}, s.options()); }, "gqa::backward: saved = (empty)");
  auto causal = s.options();
  causal.causal = true;
  expect_invalid([&] { run(saved, causal); }, "gqa::backward: options.causal = true: must equal the forward's (false)");
  auto scaled = s.options();
  scaled.scale = 0.5f;
  expect_invalid([&] { run(saved, scaled); }, "gqa::backward: options.scale = 0.5");
  const std::vector<index_t> lens = {9};
  auto padded = s.options();
  padded.kv_lengths = lens;
  expect_invalid([&] { run(saved, padded); }, "gqa::backward: options.kv_lengths (size 1)");
  // The score modifiers must be the forward's too; dsinks needs sinks.
  auto windowed = s.options();
  windowed.window_left = 3;
  expect_invalid([&] { run(saved, windowed); }, "gqa::backward: options.window_left = 3: must equal the forward's (-1)");
  auto capped = s.options();
  capped.softcap = 2.0f;
  expect_invalid([&] { run(saved, capped); }, "gqa::backward: options.softcap = 2: must equal the forward's (0)");
  const std::vector<float> per_head = {0.5f, 0.25f, 0.0f, -1.0f};
  auto sunk = s.options();
  sunk.sinks = per_head;
  expect_invalid([&] { run(saved, sunk); }, "gqa::backward: options.sinks (size 4): must equal the forward's (size 0)");
  auto biased = s.options();
  biased.alibi_slopes = per_head;
  expect_invalid([&] { run(saved, biased); }, "gqa::backward: options.alibi_slopes (size 4)");
  std::vector<float> dsinks(4);
  auto no_sinks = s.options();
  no_sinks.dsinks = dsinks;
  expect_invalid([&] { run(saved, no_sinks); }, {"gqa::backward: options.dsinks.size() = 4", "needs options.sinks"});
  {
    // Same sizes, other values: still a different call.
    step_data t = s;
    t.sinks = per_head;
    const auto saved_sinks = gqa::forward_train<Isa>(policy, t.qv(), t.kv(), t.vv(), t.ov(), t.options());
    auto other = t.options();
    const std::vector<float> moved = {0.5f, 0.25f, 0.0f, -0.5f};
    other.sinks = moved;
    expect_invalid([&] { run(saved_sinks, other); }, "gqa::backward: options.sinks (size 4): must equal the forward's");
  }
  expect_invalid(
      [&] {
        gqa::backward<Isa>(policy, saved, s.qv(), s.kv(), s.vv(), s.ov(), s.doutv(),
                                 gqa::bshd(s.dq.data(), 1, 7, 4, 8), s.dkv(), s.dvv(), s.options());
      },
      "gqa::backward: dq.s = 7: must equal q.s = 8");
  expect_invalid(
      [&] {
        gqa::backward<Isa>(policy, saved, s.qv(), gqa::bshd<const float>(s.k.data(), 1, 8, 2, 8), s.vv(), s.ov(),
                                 s.doutv(), s.dqv(), gqa::bshd(s.dk.data(), 1, 8, 2, 8), s.dvv(), s.options());
      },
      "gqa::backward: k.s = 8: must equal the forward's k.s = 9");
  expect_invalid(
      [&] {
        gqa::backward<Isa>(policy, saved, s.qv(), s.kv(), s.vv(), s.ov(), s.doutv(), s.dqv(),
                                 gqa::bshd(s.dv_.data(), 1, 9, 2, 8), s.dvv(), s.options());
      },
      {"gqa::backward: dk", "overlaps dv"});
  expect_invalid(
      [&] {
        gqa::backward<Isa>(policy, saved, s.qv(), s.kv(), s.vv(), s.ov(), s.doutv(),
                                 gqa::bshd(const_cast<float*>(s.q.data()), 1, 8, 4, 8), s.dkv(), s.dvv(), s.options());
      },
      {"gqa::backward: dq", "overlaps q"});
  for (const float x : s.dq) EXPECT_TRUE(std::isnan(x)) << "a rejected call wrote dq";
}
}  // namespace

TYPED_TEST_P(training_suite, backward_rejects_a_different_call) { check_backward_errors<TypeParam>(); }

// Every modifier through the policy path: gqa::backward with window + softcap + sinks + ALiBi and
// options.dsinks is the core's attend_backward bit for bit (dsinks included) and matches the reference;
// KDGQA per sample (one core call per batch element) sums the samples' dsinks in order.
TYPED_TEST_P(training_suite, modifiers_through_policies) {
  step_data s(2, 45, 80, 8, 2, 24, 24, 400);
  s.causal = true;
  s.lengths = {80, 51};
  s.window_left = 20;
  s.softcap = 4.0f;
  s.sinks = {0.5f, -1.0f, 0.25f, 1.5f, 0.0f, -0.25f, 2.0f, 0.75f};
  s.slopes = {0.5f, 0.25f, 0.125f, 0.0625f, 0.03125f, 0.015625f, 0.0078125f, 0.00390625f};
  {
    SCOPED_TRACE("gqa");
    gqa::gqa_policy policy;
    std::vector<float> dsinks(8, step_data::nan());
    auto opt = s.options();
    const auto saved = gqa::forward_train<TypeParam>(policy, s.qv(), s.kv(), s.vv(), s.ov(), opt);
    opt.dsinks = dsinks;
    gqa::backward<TypeParam>(policy, saved, s.qv(), s.kv(), s.vv(), s.ov(), s.doutv(), s.dqv(), s.dkv(), s.dvv(), opt);
    // The core on the same map, with its own dsinks.
    std::vector<float> dq(s.dq.size()), dk(s.dk.size()), dv(s.dv_.size()), core_dsinks(8);
    auto copt = s.options();
    copt.dsinks = core_dsinks;
    gqa::attend_backward<TypeParam>(s.qv(), s.kv(), s.vv(), gqa::bshd<const float>(s.o.data(), s.b, s.sq, s.hq, s.dv),
                                    s.doutv(), saved.lse, gqa::bshd(dq.data(), s.b, s.sq, s.hq, s.d),
                                    gqa::bshd(dk.data(), s.b, s.skv, s.kv_heads, s.d),
                                    gqa::bshd(dv.data(), s.b, s.skv, s.kv_heads, s.dv), saved.maps[0], copt);
    EXPECT_TRUE(same_bits(s.dq, dq) && same_bits(s.dk, dk) && same_bits(s.dv_, dv)) << "differs from attend_backward";
    EXPECT_TRUE(same_bits(dsinks, core_dsinks)) << "dsinks differs from attend_backward's";
    expect_matches_reference(s, saved.lse, saved.maps[0].kv_of_q());
    const auto qd = widen(s.q), kd = widen(s.k), vd = widen(s.v), dd = widen(s.dout);
    const auto ref = gqa::reference::attention_backward(
        gqa::bshd<const double>(qd.data(), s.b, s.sq, s.hq, s.d), gqa::bshd<const double>(kd.data(), s.b, s.skv, s.kv_heads, s.d),
        gqa::bshd<const double>(vd.data(), s.b, s.skv, s.kv_heads, s.dv), gqa::bshd<const double>(dd.data(), s.b, s.sq, s.hq, s.dv),
        saved.maps[0].kv_of_q(), s.scale(), s.causal, s.lengths, s.mods());
    const auto naive = naive_fp32_backward(s.qv(), s.kv(), s.vv(), gqa::bshd<const float>(s.o.data(), s.b, s.sq, s.hq, s.dv),
                                           s.doutv(), saved.lse, saved.maps[0].kv_of_q(), static_cast<float>(s.scale()),
                                           s.causal, s.lengths, s.mods());
    expect_close(dsinks, ref.dsinks, gradient_tolerance(naive.dsinks, ref.dsinks), "dsinks", ref.dsinks_terms);
  }
  {
    SCOPED_TRACE("kdgqa per sample");
    gqa::kdgqa_policy policy({.per_sample = true});
    std::vector<float> dsinks(8, step_data::nan());
    auto opt = s.options();
    const auto saved = gqa::forward_train<TypeParam>(policy, s.qv(), s.kv(), s.vv(), s.ov(), opt);
    ASSERT_EQ(saved.maps.size(), 2u);
    opt.dsinks = dsinks;
    gqa::backward<TypeParam>(policy, saved, s.qv(), s.kv(), s.vv(), s.ov(), s.doutv(), s.dqv(), s.dkv(), s.dvv(), opt);
    // Each sample's core call with its own map, then the sum in sample order.
    std::vector<float> want(8, 0.0f);
    const auto per = static_cast<std::size_t>(s.hq * s.sq);
    for (index_t ib = 0; ib < s.b; ++ib) {
      auto sample = [&](const std::vector<float>& x, index_t n) {
        return std::vector<float>(x.begin() + ib * n, x.begin() + (ib + 1) * n);
      };
      const auto q1 = sample(s.q, s.sq * s.hq * s.d), k1 = sample(s.k, s.skv * s.kv_heads * s.d),
                 v1 = sample(s.v, s.skv * s.kv_heads * s.dv), o1 = sample(s.o, s.sq * s.hq * s.dv),
                 g1 = sample(s.dout, s.sq * s.hq * s.dv);
      std::vector<float> dq(q1.size()), dk(k1.size()), dv(v1.size()), ds(8);
      auto one = s.options();
      const std::vector<index_t> len = {s.lengths[static_cast<std::size_t>(ib)]};
      one.kv_lengths = len;
      one.dsinks = ds;
      gqa::attend_backward<TypeParam>(
          gqa::bshd<const float>(q1.data(), 1, s.sq, s.hq, s.d), gqa::bshd<const float>(k1.data(), 1, s.skv, s.kv_heads, s.d),
          gqa::bshd<const float>(v1.data(), 1, s.skv, s.kv_heads, s.dv), gqa::bshd<const float>(o1.data(), 1, s.sq, s.hq, s.dv),
          gqa::bshd<const float>(g1.data(), 1, s.sq, s.hq, s.dv), std::span<const float>(saved.lse).subspan(ib * per, per),
          gqa::bshd(dq.data(), 1, s.sq, s.hq, s.d), gqa::bshd(dk.data(), 1, s.skv, s.kv_heads, s.d),
          gqa::bshd(dv.data(), 1, s.skv, s.kv_heads, s.dv), saved.maps[static_cast<std::size_t>(ib)], one);
      for (std::size_t h = 0; h < want.size(); ++h) want[h] = ib == 0 ? ds[h] : want[h] + ds[h];
    }
    EXPECT_TRUE(same_bits(dsinks, want)) << "dsinks is not the samples' sum in order";
  }
}

REGISTER_TYPED_TEST_SUITE_P(training_suite, static_variants_are_the_core, kdgqa_uses_the_recorded_allocation,
                            dgqa_uses_the_recorded_map, pgqa_gradient_through_mean_and_std,
                            wgqa_gradients_of_heads_and_weights, training_step_is_deterministic,
                            backward_rejects_a_different_call, modifiers_through_policies);
