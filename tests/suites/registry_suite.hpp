// tests/suites/registry_suite.hpp: every registered variant (gqa/variants/registry.hpp), built by its
// default factory, through gqa::forward<Isa> against the same steps written with the reference: a second
// default policy prepares K/V and plans, reference::attention (double) runs on the prepared K/V with that
// map, and a third and fourth default policy apply the variant's finish step (if any; e.g. PGQA's noise) to
// the reference and to the naive fp32 output. Within Note [attention tolerance], the yardstick taken
// after the finish step too. Layers with odd head dims and group sizes, odd lengths, causal or not. A new
// registered variant is tested here without editing this file. Compiled once per ISA.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <gqa/reference/attention.hpp>
#include <gqa/variants.hpp>

#include "support/isa_suite.hpp"
#include "support/tolerance.hpp"

namespace {

using gqa::index_t;

template <class Isa>
class registry_suite : public gqa::test::isa_test<Isa> {};
TYPED_TEST_SUITE_P(registry_suite);

/// Applies P's finish step, as a fresh default policy's first call would (PGQA: call counter 0), to `o`
/// laid out BSHD (b, s, hq, d) with `map`; nothing for a policy without one.
template <class P>
void finish_like_first_call(const gqa::model_shape& m, std::vector<float>& o, index_t b, index_t s, index_t d,
                            const gqa::head_map& map) {
  if constexpr (gqa::policy_with_finish<P> || gqa::policy_with_finish_executor<P>) {
    gqa::with_default_policy<P>(m, [&](P& p) {
      gqa::detail::finish(p, gqa::bshd(o.data(), b, s, map.hq(), d), map, gqa::executor{});
    });
  }
}

template <class Isa, class P>
void check_variant(const gqa::model_shape& m, index_t b, index_t sq, index_t skv, bool causal, std::uint64_t seed) {
  const gqa::variant_heads h = P::heads_for(m);
  const index_t d = m.d;
  SCOPED_TRACE(std::string(P::name) + " on H = " + std::to_string(m.heads) + ", G = " + std::to_string(m.groups) +
               ", d = " + std::to_string(d) + ": b=" + std::to_string(b) + " sq=" + std::to_string(sq) +
               " skv=" + std::to_string(skv) + (causal ? " causal" : " non-causal"));
  const auto qd = gqa::test::random_floats(static_cast<std::size_t>(b * sq * h.hq * d), seed);
  const auto kd = gqa::test::random_floats(static_cast<std::size_t>(b * skv * h.kv_in * d), seed + 1);
  const auto vd = gqa::test::random_floats(static_cast<std::size_t>(b * skv * h.kv_in * d), seed + 2);
  const auto q = gqa::bshd<const float>(qd.data(), b, sq, h.hq, d);
  const auto k = gqa::bshd<const float>(kd.data(), b, skv, h.kv_in, d);
  const auto v = gqa::bshd<const float>(vd.data(), b, skv, h.kv_in, d);
  gqa::attention_options opt;
  opt.causal = causal;

  std::vector<float> o(static_cast<std::size_t>(b * sq * h.hq * d));
  gqa::with_default_policy<P>(m, [&](P& p) { gqa::forward<Isa>(p, q, k, v, gqa::bshd(o.data(), b, sq, h.hq, d), opt); });

  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> ref;
  std::vector<float> naive;
  gqa::head_map map;
  gqa::with_default_policy<P>(m, [&](P& p) {
    gqa::kv_views kv{k, v};
    if constexpr (gqa::policy_with_prepare<P>) kv = p.prepare(k, v);
    map = p.plan(q, kv.k);
    ref = gqa::reference::attention(q, kv.k, kv.v, map.kv_of_q(), scale, causal).o;
    naive = gqa::test::naive_fp32(q, kv.k, kv.v, map.kv_of_q(), static_cast<float>(scale), causal).o;
  });
  ASSERT_EQ(map.hq(), h.hq);
  ASSERT_EQ(map.hkv(), h.hkv);
  double tol = gqa::test::attention_tolerance(naive, ref, vd);
  if constexpr (gqa::policy_with_finish<P> || gqa::policy_with_finish_executor<P>) {
    // The finish step of the reference output (rounded to float once) and of the naive one: the yardstick
    // goes through the same step as the output.
    std::vector<float> ref_f(ref.begin(), ref.end());
    finish_like_first_call<P>(m, ref_f, b, sq, d, map);
    finish_like_first_call<P>(m, naive, b, sq, d, map);
    ref.assign(ref_f.begin(), ref_f.end());
    std::vector<double> naive_d(naive.begin(), naive.end());
    double err = 0.0;
    for (std::size_t i = 0; i < ref.size(); ++i) err = std::max(err, std::fabs(naive_d[i] - ref[i]));
    double omax = 1.0;
    for (const double x : ref) omax = std::max(omax, std::fabs(x));
    tol = gqa::test::k_error_factor * err + gqa::test::k_error_floor * omax;
  }
  double err = 0.0;
  for (std::size_t i = 0; i < o.size(); ++i) {
    ASSERT_TRUE(std::isfinite(o[i])) << "output " << i;
    err = std::max(err, std::fabs(static_cast<double>(o[i]) - ref[i]));
  }
  EXPECT_LE(err, tol);
}

TYPED_TEST_P(registry_suite, every_registered_variant_matches_the_reference) {
  // (H, G, d): group sizes 1 to 4 and uneven norms; d below, at and above a vector width.
  const gqa::model_shape layers[] = {{8, 2, 16, 5}, {12, 4, 17, 6}, {6, 3, 8, 7}, {4, 1, 33, 8}};
  gqa::for_each_variant([&](auto t) {
    using P = typename decltype(t)::type;
    std::uint64_t seed = 100;
    for (const gqa::model_shape& m : layers)
      for (const bool causal : {false, true}) {
        check_variant<TypeParam, P>(m, 2, 5, 37, causal, seed += 10);
        check_variant<TypeParam, P>(m, 1, 1, 70, causal, seed += 10);  // decode
      }
  });
}

REGISTER_TYPED_TEST_SUITE_P(registry_suite, every_registered_variant_matches_the_reference);

}  // namespace
