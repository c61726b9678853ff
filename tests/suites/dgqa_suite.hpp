// tests/suites/dgqa_suite.hpp: gqa::forward<Isa>(dgqa_policy, ...) over train/eval sequences against
// reference::dgqa_step (map and state, exactly) and reference::attention (the output), with unequal and
// empty groups, masks, padding, head dims and lengths (the reference rule and both repairs); DGQA's
// arithmetic bit-identical to the scalar build. Compiled once per ISA: every helper stays in `namespace {}`.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include <gqa/reference/attention.hpp>
#include <gqa/reference/grouping.hpp>
#include <gqa/variants/dgqa.hpp>

#include "support/isa_suite.hpp"

namespace gqa::test {
// Defined in tests/unit/allocation_test.cpp (a baseline-flags TU): runs `steps` training plans (window 1)
// on one K and returns every step's cache and splits.
std::vector<float> scalar_build_dgqa_run(const float* k, index_t b, index_t s, index_t h, index_t d, index_t hq,
                                         int kind, int cache_update, int steps);
}  // namespace gqa::test

namespace {

using gqa::index_t;

struct dg_case {
  index_t b, sq, skv, hq, hkv, d;
  bool causal, padded;
  std::string name() const {
    std::ostringstream os;
    os << "b" << b << " sq" << sq << " skv" << skv << " hq" << hq << " hkv" << hkv << " d" << d
       << (causal ? " causal" : "") << (padded ? " padded" : "");
    return os.str();
  }
};

// (hq, hkv) = 6/4, 12/4, 8/2; d ∈ {17, 64}; sq, skv ∈ {1, 63, 65, 200}.
std::vector<dg_case> dg_cases() {
  std::vector<dg_case> v = {{2, 63, 65, 6, 4, 17, false, false}, {1, 65, 63, 12, 4, 64, true, true},
                            {2, 1, 200, 8, 2, 64, false, true}};
  if (!gqa::test::reduced) {
    v.push_back({1, 200, 200, 12, 4, 64, true, false});
    v.push_back({1, 200, 1, 6, 4, 17, false, false});
    v.push_back({3, 63, 65, 8, 2, 17, true, true});
  }
  return v;
}

// Keys of call `call`: KV head 0 is the same at every call (so its diff score is 0 once the cache holds
// its magnitude, and it can end up with no query heads); the other heads get fresh values and scales.
std::vector<float> dg_keys(const dg_case& c, std::uint64_t call) {
  auto k = gqa::test::random_floats(static_cast<std::size_t>(c.b * c.skv * c.hkv * c.d), 300 + call);
  const auto fixed = gqa::test::random_floats(k.size(), 299);
  const auto scale = gqa::test::random_floats(static_cast<std::size_t>(c.hkv), 500 + call, 0.5f, 1.5f);
  for (std::size_t i = 0; i < k.size(); ++i) {
    const auto g = (i / static_cast<std::size_t>(c.d)) % static_cast<std::size_t>(c.hkv);
    k[i] = g == 0 ? fixed[i] : k[i] * scale[g];
  }
  return k;
}

// See Note [grouping suite tolerance] in kdgqa_suite.hpp: 1e-6 on outputs that are means of values in
// [-1, 1] (the core measures <= 1.4e-7 here; a wrong map moves a row by 1e-2 or more).
constexpr double k_dgqa_tolerance = 1e-6;

template <class Isa>
class dgqa_suite : public gqa::test::isa_test<Isa> {};
TYPED_TEST_SUITE_P(dgqa_suite);

// Train (window 2) then eval then train, both kinds and both repairs; every call's map, status and state
// equal the reference step's, and the output equals reference attention on that map.
TYPED_TEST_P(dgqa_suite, forward_sequence_matches_reference_step_and_attention) {
  int empty_groups = 0;
  for (const dg_case& c : dg_cases())
    for (int variant = 0; variant < 3; ++variant) {
      gqa::dgqa_options opt;
      gqa::reference::dgqa_setup setup;
      opt.window = setup.window = 2;
      opt.seed = setup.seed = 21;
      opt.layer = setup.layer = 2;
      if (variant == 1) {
        opt.kind = gqa::dgqa_kind::ema;
        setup.ema = true;
      }
      if (variant == 2) {
        opt.repair = gqa::dgqa_repair::hamilton;
        opt.cache_update = gqa::dgqa_cache_update::prev_window;
        setup.hamilton = true;
        setup.cache_update = "prev_window";
      }
      auto state = gqa::dgqa_state::initial(c.hq, c.hkv);
      gqa::reference::dgqa_memory mem{state.cache, state.splits, state.rng_counter};
      gqa::dgqa_policy p(opt, state);
      const auto q = gqa::test::random_floats(static_cast<std::size_t>(c.b * c.sq * c.hq * c.d), 11);
      const auto v = gqa::test::random_floats(static_cast<std::size_t>(c.b * c.skv * c.hkv * c.d), 12);
      std::vector<index_t> lengths;
      if (c.padded)
        for (index_t ib = 0; ib < c.b; ++ib) lengths.push_back(ib == 0 ? c.skv / 2 + 1 : c.skv);
      const auto qv = gqa::bshd<const float>(q.data(), c.b, c.sq, c.hq, c.d);
      const auto vv = gqa::bshd<const float>(v.data(), c.b, c.skv, c.hkv, c.d);
      for (std::uint64_t call = 0; call < (gqa::test::reduced ? 5u : 8u); ++call) {
        SCOPED_TRACE(c.name() + " variant " + std::to_string(variant) + " call " + std::to_string(call));
        const bool train = call < 3 || call >= 6;
        p.set_mode(train ? gqa::dgqa_mode::train : gqa::dgqa_mode::eval);
        p.set_step(call);
        const auto k = dg_keys(c, call);
        const auto kv = gqa::bshd<const float>(k.data(), c.b, c.skv, c.hkv, c.d);
        std::vector<float> o(q.size(), -7.0f);
        gqa::attention_options ao;
        ao.causal = c.causal;
        ao.kv_lengths = lengths;
        gqa::forward<TypeParam>(p, qv, kv, vv, gqa::bshd(o.data(), c.b, c.sq, c.hq, c.d), ao);
        const auto ref = gqa::reference::dgqa_step(mem, kv, c.hq, setup, train, call);
        ASSERT_EQ(p.last().alloc, ref.alloc);
        ASSERT_EQ(gqa::to_string(p.last().status), ref.status);
        ASSERT_EQ(p.last().updated, ref.updated);
        ASSERT_EQ(0, std::memcmp(state.cache.data(), mem.cache.data(), state.cache.size() * sizeof(float)));
        ASSERT_EQ(state.splits, mem.splits);
        ASSERT_EQ(state.rng_counter, mem.rng_counter);
        empty_groups += std::count(ref.alloc.begin(), ref.alloc.end(), 0) > 0;
        const auto r = gqa::reference::attention(qv, kv, vv, ref.kv_of_q, 1.0 / std::sqrt(static_cast<double>(c.d)),
                                                 c.causal, lengths);
        double worst = 0.0;
        for (std::size_t i = 0; i < o.size(); ++i) worst = std::max(worst, std::fabs(static_cast<double>(o[i]) - r.o[i]));
        EXPECT_LE(worst, k_dgqa_tolerance);
      }
    }
  EXPECT_GT(empty_groups, 0);  // some call left a KV head without query heads
}

// Note [dgqa arithmetic]: the same scores, caches and splits whatever the ISA flags (FMA contraction
// included), for the ema score and the true_ema update (the two formulas with products).
TYPED_TEST_P(dgqa_suite, arithmetic_bitwise_equal_to_scalar_build) {
  const dg_case c = {2, 1, 37, 12, 5, 19, false, false};
  const auto k = dg_keys(c, 3);
  for (int kind = 0; kind < 2; ++kind)
    for (int update = 0; update < 3; ++update) {
      auto state = gqa::dgqa_state::initial(c.hq, c.hkv);
      gqa::dgqa_options opt;
      opt.kind = static_cast<gqa::dgqa_kind>(kind);
      opt.cache_update = static_cast<gqa::dgqa_cache_update>(update);
      gqa::dgqa_policy p(opt, state);
      p.set_mode(gqa::dgqa_mode::train);
      const auto kv = gqa::bshd<const float>(k.data(), c.b, c.skv, c.hkv, c.d);
      gqa::tensor_view<const float> qv = kv;
      qv.h = c.hq;
      std::vector<float> trace;
      for (int step = 0; step < 6; ++step) {
        p.set_step(static_cast<std::uint64_t>(step));
        p.plan(qv, kv);
        trace.insert(trace.end(), state.cache.begin(), state.cache.end());
        for (int x : state.splits) trace.push_back(static_cast<float>(x));
      }
      const auto base = gqa::test::scalar_build_dgqa_run(k.data(), c.b, c.skv, c.hkv, c.d, c.hq, kind, update, 6);
      ASSERT_EQ(trace.size(), base.size());
      EXPECT_EQ(0, std::memcmp(trace.data(), base.data(), trace.size() * sizeof(float))) << "kind " << kind << " update " << update;
    }
}

REGISTER_TYPED_TEST_SUITE_P(dgqa_suite, forward_sequence_matches_reference_step_and_attention,
                            arithmetic_bitwise_equal_to_scalar_build);

}  // namespace
