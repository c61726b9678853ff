// KDGQA: the allocation rule on hand-worked norms, ties and fix-ups, every fallback (one KV head, equal or
// non-finite norms), the hamilton rule with a minimum, per-sample planning,
// agreement with reference::kdgqa, and every error path of the public API.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <gqa/reference/grouping.hpp>
#include <gqa/variants/kdgqa.hpp>

#include "support/data.hpp"
#include "support/expect.hpp"

namespace {

using gqa::index_t;
using gqa::test::expect_invalid;
using ints = std::vector<int>;

ints allocate(std::vector<double> norms, index_t hq, gqa::kdgqa_options opt = {}) {
  const auto r = gqa::kdgqa_allocate(norms, hq, opt);
  EXPECT_EQ(r.status, gqa::grouping_status::ok);
  EXPECT_EQ(r.fallback, gqa::grouping_fallback::none);
  return r.alloc;
}

// K of shape (b, 3, G, 4) whose per-head norm summed over the batch is norms[g]: each sample b carries
// one non-zero value per head (a Frobenius norm of one element is its magnitude); the first sample holds
// `first_share` of it, the last sample the rest. Norms are small integers, so every sum is exact.
std::vector<float> keys_with_norms(const std::vector<double>& norms, index_t b, double first_share = 1.0) {
  const index_t s = 3, d = 4, g_count = static_cast<index_t>(norms.size());
  std::vector<float> k(static_cast<std::size_t>(b * s * g_count * d), 0.0f);
  for (index_t g = 0; g < g_count; ++g) {
    const double n = norms[static_cast<std::size_t>(g)];
    const double first = b == 1 ? n : std::floor(n * first_share);
    k[static_cast<std::size_t>(((0 * s + 1) * g_count + g) * d + 2)] = static_cast<float>(first);
    if (b > 1) k[static_cast<std::size_t>((((b - 1) * s + 2) * g_count + g) * d + 0)] = -static_cast<float>(n - first);
  }
  return k;
}

// Allocations are very skewed: those measured with the authors' code, from norms constructed here (the
// measured norms were not recorded).
// Each comment is the hand computation: n̂ = (n - min)/(max - min), shares = n̂ / Σn̂ · H, round half even.
TEST(kdgqa, probe_allocations_from_hand_worked_norms) {
  // n = {20, 23, 25, 26, 28, 31}: n̂ = {0, 3, 5, 6, 8, 11}/11, Σn̂ = 33/11 = 3, shares = 4·n̂ =
  // {0, 1.09, 1.82, 2.18, 2.91, 4} -> {0, 1, 2, 2, 3, 4}, sum 12: no fix-up.
  EXPECT_EQ(allocate({20, 23, 25, 26, 28, 31}, 12), (ints{0, 1, 2, 2, 3, 4}));
  // n = {100, 109, 120}: n̂ = {0, .45, 1}, Σ = 1.45, shares = {0, 1.862, 4.138} -> {0, 2, 4}.
  EXPECT_EQ(allocate({100, 109, 120}, 6), (ints{0, 2, 4}));
  // n = {50, 54, 56, 60}: n̂ = {0, .4, .6, 1}, Σ = 2, shares = 8·n̂ = {0, 3.2, 4.8, 8} -> {0, 3, 5, 8}.
  EXPECT_EQ(allocate({50, 54, 56, 60}, 16), (ints{0, 3, 5, 8}));
  // n = {10, 11, 12, 15 ×6, 19, 20, 20}: n̂ = {0, .1, .2, .5 ×6, .9, 1, 1}, Σ = 6.2, shares = n̂ · 12/6.2 =
  // {0, .19, .39, .97 ×6, 1.74, 1.94, 1.94} -> {0, 0, 0, 1 ×6, 2, 2, 2}, sum 12.
  EXPECT_EQ(allocate({10, 11, 12, 15, 15, 15, 15, 15, 15, 19, 20, 20}, 12), (ints{0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2}));
}

// With G = 2, n̂ ∈ {0, 1}, so all H query heads go to the larger-norm head, whatever the spread.
TEST(kdgqa, two_kv_heads_degenerate_to_mqa_on_the_larger_norm) {
  EXPECT_EQ(allocate({7, 9}, 12), (ints{0, 12}));
  EXPECT_EQ(allocate({9, 7}, 12), (ints{12, 0}));
  EXPECT_EQ(allocate({1000, 1000.01}, 8), (ints{0, 8}));
  EXPECT_EQ(allocate({1, 1e9}, 2), (ints{0, 2}));
}

// Note [allocation arithmetic]: the default float32 arithmetic lands on the authors' .5 ties; float64
// (a departure) does not. The first two are the golden near_tie_half_* cases (tests/data/golden).
TEST(kdgqa, float32_arithmetic_reproduces_the_authors_ties) {
  gqa::kdgqa_options f64;
  f64.arithmetic = gqa::allocation_arithmetic::float64;
  // n = {2, 1, 1.6f}, H = 12: float32 n̂ = {1, 0, 0.6f}, Σ = 1.6f, shares exactly {7.5, 0, 4.5} ->
  // half even {8, 0, 4}; double: 7.4999999 and 4.5000001 -> {7, 0, 5}.
  const std::vector<double> a = {2.0, 1.0, static_cast<double>(1.6f)};
  const auto r = gqa::kdgqa_allocate(a, 12);
  EXPECT_EQ(r.shares, (std::vector<double>{7.5, 0.0, 4.5}));
  EXPECT_EQ(r.alloc, (ints{8, 0, 4}));
  EXPECT_EQ(allocate(a, 12, f64), (ints{7, 0, 5}));
  // n = {1, 1.59999999974, 2}, H = 4: the norm rounds to 1.6f, shares {0, 1.5, 2.5} -> {0, 2, 2}; in
  // double the share is 1.49999999... -> {0, 1, 3}.
  const std::vector<double> b = {1.0, 1.59999999974, 2.0};
  EXPECT_EQ(allocate(b, 4), (ints{0, 2, 2}));
  EXPECT_EQ(allocate(b, 4, f64), (ints{0, 1, 3}));
  // Norms equal in float32 but not in double are equal norms for float32 (the fallback), and only
  // differ by 1e-8 relative for float64, inside the 1e-6 band as well.
  EXPECT_EQ(gqa::kdgqa_allocate(std::vector<double>{1.0, 1.0 + 1e-8}, 4).status, gqa::grouping_status::fallback_equal_norms);
  // A norm beyond FLT_MAX is infinite in float32: the non-finite fallback, not a NaN share.
  EXPECT_EQ(gqa::kdgqa_allocate(std::vector<double>{1.0, 1e39}, 4).status, gqa::grouping_status::fallback_nonfinite);
  EXPECT_EQ(allocate({1.0, 1e39}, 4, f64), (ints{0, 4}));
}

// Reported: with two KV heads every call runs as MQA on the larger norm (min-max maps two norms
// to {0, 1}); allocation_result says so.
TEST(kdgqa, two_kv_heads_reported_as_mqa) {
  const auto r = gqa::kdgqa_allocate(std::vector<double>{1.0, 1.0025}, 8);  // a 0.25% spread is enough
  EXPECT_EQ(r.alloc, (ints{0, 8}));
  EXPECT_EQ(r.kv_heads_used(), 1);
  EXPECT_TRUE(r.runs_as_mqa());
  const auto three = gqa::kdgqa_allocate(std::vector<double>{1.0, 1.5, 2.0}, 8);
  EXPECT_EQ(three.kv_heads_used(), 2);  // {0, 3, 5}: the min-norm head is idle, but it is not MQA
  EXPECT_FALSE(three.runs_as_mqa());
  gqa::kdgqa_options h;
  h.rule = gqa::allocation_rule::hamilton;
  h.min_per_kv = 1;
  EXPECT_FALSE(gqa::kdgqa_allocate(std::vector<double>{1.0, 1.0025}, 8, h).runs_as_mqa());  // {1, 7}
  EXPECT_FALSE(gqa::kdgqa_allocate(std::vector<double>{3.0}, 8).runs_as_mqa());  // one KV head is MQA by design
  // Through the policy.
  const auto k = keys_with_norms({7, 9}, 1);
  const auto kv = gqa::bshd<const float>(k.data(), 1, 3, 2, 4);
  gqa::tensor_view<const float> q = kv;
  q.h = 12;
  gqa::kdgqa_policy p;
  p.plan(q, kv);
  EXPECT_TRUE(p.last().runs_as_mqa());
}

// Min-max scaling is invariant to scaling all norms AND to adding a constant to all of them: only the
// norms' relative positions in [min, max] matter, so a 0.25% spread allocates like a 50% one.
TEST(kdgqa, min_max_scaling_ignores_scale_and_shift) {
  const ints want = allocate({1.0, 1.2, 1.3, 1.5}, 12);  // n̂ = {0, .4, .6, 1}: {0, 2, 4, 6}
  EXPECT_EQ(want, (ints{0, 2, 4, 6}));
  gqa::kdgqa_options f64;
  f64.arithmetic = gqa::allocation_arithmetic::float64;
  EXPECT_EQ(allocate({10.0, 12.0, 13.0, 15.0}, 12, f64), want);          // × 10
  EXPECT_EQ(allocate({101.0, 101.2, 101.3, 101.5}, 12, f64), want);      // + 100: a 0.5% spread
  EXPECT_EQ(allocate({400.0, 400.4, 400.6, 401.0}, 12, f64), want);      // a 0.25% spread
}

// ...so on iid random keys, whose head norms agree to about 1%, KDGQA is as skewed as on heads 50% apart
// (DGQA-ema is exactly uniform there: dgqa_test.cpp).
TEST(kdgqa, skewed_on_iid_random_keys) {
  const index_t s = 256, hq = 32, hkv = 8, d = 64;
  for (std::uint64_t seed = 0; seed < 4; ++seed) {
    const auto k = gqa::test::random_floats(static_cast<std::size_t>(s * hkv * d), 300 + seed);
    const auto norms = gqa::key_norms(gqa::bshd<const float>(k.data(), 1, s, hkv, d));
    const double lo = *std::min_element(norms.begin(), norms.end()), hi = *std::max_element(norms.begin(), norms.end());
    EXPECT_LT(hi / lo, 1.05) << "seed " << seed;
    const auto r = gqa::kdgqa_allocate(norms, hq);
    // Far from uniform 4 each: the smallest and largest groups are at least 5 query heads apart.
    const auto [mn, mx] = std::minmax_element(r.alloc.begin(), r.alloc.end());
    EXPECT_GE(*mx - *mn, 5) << "seed " << seed;
  }
}

// The same probes end to end: keys -> key_norms (batch-summed) -> policy plan -> head map.
TEST(kdgqa, policy_plans_probe_allocations_from_keys) {
  struct probe_case {
    std::vector<double> norms;
    index_t hq;
    ints want;
  };
  const std::vector<probe_case> cases = {{{20, 23, 25, 26, 28, 31}, 12, {0, 1, 2, 2, 3, 4}},
                                         {{100, 109, 120}, 6, {0, 2, 4}},
                                         {{50, 54, 56, 60}, 16, {0, 3, 5, 8}},
                                         {{7, 9}, 12, {0, 12}},
                                         {{10, 11, 12, 15, 15, 15, 15, 15, 15, 19, 20, 20}, 12, {0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2}}};
  for (const auto& c : cases)
    for (index_t b : {1, 2}) {
      const auto k = keys_with_norms(c.norms, b, 0.25);
      const auto kv = gqa::bshd<const float>(k.data(), b, 3, static_cast<index_t>(c.norms.size()), 4);
      EXPECT_EQ(gqa::key_norms(kv), c.norms);
      gqa::tensor_view<const float> q = kv;
      q.h = c.hq;  // plan reads q.h only
      gqa::kdgqa_policy p;
      const gqa::head_map map = p.plan(q, kv);
      EXPECT_EQ(p.last().alloc, c.want);
      EXPECT_EQ(map.allocation(), c.want);
      EXPECT_EQ(map, gqa::head_map::from_allocation(c.want));
      EXPECT_TRUE(map.contiguous());
    }
}

// The fix-ups: the min-norm head gets n̂ = 0; only the Σa < H loop gives it queries back.
TEST(kdgqa, fix_up_first_argmin_and_half_even_ties) {
  // n = {1, 1, 2, 2}, H = 5: n̂ = {0, 0, 1, 1}, shares {0, 0, 2.5, 2.5} -> half even {0, 0, 2, 2} (std::round
  // would give {0, 0, 3, 3}); sum 4 < 5: increment the FIRST arg-min, index 0 -> {1, 0, 2, 2}.
  EXPECT_EQ(allocate({1, 1, 2, 2}, 5), (ints{1, 0, 2, 2}));
  // n = {0, 3, 3}, H = 5: shares {0, 2.5, 2.5} -> {0, 2, 2}, sum 4: index 0 gets one -> {1, 2, 2}.
  EXPECT_EQ(allocate({0, 3, 3}, 5), (ints{1, 2, 2}));
  // n = {0, 3, 3}, H = 3: shares {0, 1.5, 1.5} -> half even {0, 2, 2}, sum 4 > 3: decrement the FIRST
  // arg-max, index 1 -> {0, 1, 2}.
  EXPECT_EQ(allocate({0, 3, 3}, 3), (ints{0, 1, 2}));
  // n = {0, 8, 8, 9}, H = 5: n̂ = {0, 8/9, 8/9, 1}, Σ = 25/9, shares {0, 1.6, 1.6, 1.8} -> {0, 2, 2, 2}, sum 6:
  // decrement the first arg-max (index 1, not 2 or 3) -> {0, 1, 2, 2}.
  EXPECT_EQ(allocate({0, 8, 8, 9}, 5), (ints{0, 1, 2, 2}));
}

TEST(kdgqa, fallback_single_kv_head) {
  const auto r = gqa::kdgqa_allocate(std::vector<double>{3.0}, 5);
  EXPECT_EQ(r.alloc, (ints{5}));
  EXPECT_EQ(r.status, gqa::grouping_status::fallback_single_kv);
  EXPECT_EQ(r.fallback, gqa::grouping_fallback::uniform);
  // A NaN norm with one KV head is still the single-KV fallback (checked first), never a NaN -> int.
  EXPECT_EQ(gqa::kdgqa_allocate(std::vector<double>{std::nan("")}, 5).status, gqa::grouping_status::fallback_single_kv);
}

TEST(kdgqa, fallback_equal_norms_uniform_previous_or_balanced) {
  auto r = gqa::kdgqa_allocate(std::vector<double>{2, 2, 2}, 6);
  EXPECT_EQ(r.alloc, (ints{2, 2, 2}));
  EXPECT_EQ(r.status, gqa::grouping_status::fallback_equal_norms);
  EXPECT_EQ(r.fallback, gqa::grouping_fallback::uniform);
  // All zero (a zero K) is the equal-norm case too.
  EXPECT_EQ(gqa::kdgqa_allocate(std::vector<double>{0, 0, 0}, 6).status, gqa::grouping_status::fallback_equal_norms);
  // Within the 1e-6 relative band: max - min = 5e-7 <= 1e-6 · max.
  EXPECT_EQ(gqa::kdgqa_allocate(std::vector<double>{1.0, 1.0 + 5e-7}, 4).status, gqa::grouping_status::fallback_equal_norms);
  // Just outside it the rule applies (and G = 2 gives everything to the larger head).
  EXPECT_EQ(allocate({1.0, 1.0 + 2e-6}, 4), (ints{0, 4}));
  // hkv does not divide hq: a valid previous allocation is kept...
  const ints prev = {1, 2, 2, 1};
  r = gqa::kdgqa_allocate(std::vector<double>{5, 5, 5, 5}, 6, {}, prev);
  EXPECT_EQ(r.alloc, prev);
  EXPECT_EQ(r.fallback, gqa::grouping_fallback::previous);
  // ...but uniform wins when hkv divides hq, even with a previous allocation.
  r = gqa::kdgqa_allocate(std::vector<double>{5, 5, 5}, 6, {}, ints{0, 2, 4});
  EXPECT_EQ(r.alloc, (ints{2, 2, 2}));
  EXPECT_EQ(r.fallback, gqa::grouping_fallback::uniform);
  // No previous, or an invalid one (wrong sum, wrong size, negative): the balanced allocation.
  for (const ints& bad : {ints{}, ints{1, 2, 2, 2}, ints{3, 3}, ints{-1, 3, 3, 1}}) {
    r = gqa::kdgqa_allocate(std::vector<double>{5, 5, 5, 5}, 6, {}, bad);
    EXPECT_EQ(r.alloc, (ints{2, 2, 1, 1}));
    EXPECT_EQ(r.fallback, gqa::grouping_fallback::uniform);
    EXPECT_EQ(r.status, gqa::grouping_status::fallback_equal_norms);
  }
}

TEST(kdgqa, fallback_nonfinite_norms) {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  for (double bad : {nan, inf, -inf}) {
    const auto r = gqa::kdgqa_allocate(std::vector<double>{1, bad, 2}, 6);
    EXPECT_EQ(r.alloc, (ints{2, 2, 2}));
    EXPECT_EQ(r.status, gqa::grouping_status::fallback_nonfinite);
    EXPECT_EQ(r.fallback, gqa::grouping_fallback::uniform);
  }
  // Through the policy: an inf in K makes that head's norm inf.
  std::vector<float> k = keys_with_norms({3, 4, 5, 6}, 1);
  k[5] = std::numeric_limits<float>::infinity();
  const auto kv = gqa::bshd<const float>(k.data(), 1, 3, 4, 4);
  gqa::tensor_view<const float> q = kv;
  q.h = 8;
  gqa::kdgqa_policy p;
  EXPECT_EQ(p.plan(q, kv), gqa::head_map::uniform(8, 4));
  EXPECT_EQ(p.last().status, gqa::grouping_status::fallback_nonfinite);
}

// The policy feeds its last allocation back as `previous`.
TEST(kdgqa, policy_remembers_previous_allocation_for_fallbacks) {
  gqa::kdgqa_policy p;
  auto plan_norms = [&](const std::vector<double>& norms) {
    const auto k = keys_with_norms(norms, 1);
    const auto kv = gqa::bshd<const float>(k.data(), 1, 3, 4, 4);
    gqa::tensor_view<const float> q = kv;
    q.h = 6;
    return p.plan(q, kv).allocation();
  };
  EXPECT_EQ(plan_norms({5, 5, 5, 5}), (ints{2, 2, 1, 1}));  // first call, equal norms: balanced
  EXPECT_EQ(p.last().fallback, gqa::grouping_fallback::uniform);
  // n = {50, 54, 56, 60}, H = 6: shares 3·n̂ = {0, 1.2, 1.8, 3} -> {0, 1, 2, 3}.
  EXPECT_EQ(plan_norms({50, 54, 56, 60}), (ints{0, 1, 2, 3}));
  EXPECT_EQ(p.last().status, gqa::grouping_status::ok);
  EXPECT_EQ(plan_norms({7, 7, 7, 7}), (ints{0, 1, 2, 3}));  // equal again: the previous allocation
  EXPECT_EQ(p.last().fallback, gqa::grouping_fallback::previous);
  EXPECT_EQ(p.last().status, gqa::grouping_status::fallback_equal_norms);
  EXPECT_TRUE(p.last().updated);
}

// The hamilton rule (non-reference): largest remainder, ties to the lower index, optional minimum.
TEST(kdgqa, hamilton_rule_and_minimum_per_kv_head) {
  gqa::kdgqa_options h;
  h.rule = gqa::allocation_rule::hamilton;
  // n = {0, 8, 8, 9}, H = 5: quotas {0, 1.6, 1.6, 1.8}; floors {0, 1, 1, 1}; seats to .8 (index 3) and
  // the first .6 (index 1): {0, 2, 1, 2} (the reference rule gives {0, 1, 2, 2}).
  EXPECT_EQ(allocate({0, 8, 8, 9}, 5, h), (ints{0, 2, 1, 2}));
  // n = {0, 3, 3}, H = 3: quotas {0, 1.5, 1.5}: one seat left, tie -> index 1: {0, 2, 1}.
  EXPECT_EQ(allocate({0, 3, 3}, 3, h), (ints{0, 2, 1}));
  // Probes agree with the reference rule where no rounding conflict arises.
  EXPECT_EQ(allocate({50, 54, 56, 60}, 16, h), (ints{0, 3, 5, 8}));
  // min_per_kv = 1: one each, then 1 seat by quotas {0, .32, .32, .36} -> index 3: {1, 1, 1, 2}.
  h.min_per_kv = 1;
  EXPECT_EQ(allocate({0, 8, 8, 9}, 5, h), (ints{1, 1, 1, 2}));
  // G = 2 no longer degenerates to MQA: min 2 of 12 each, then 8 seats by n̂ = {0, 1}: {2, 10}.
  h.min_per_kv = 2;
  EXPECT_EQ(allocate({7, 9}, 12, h), (ints{2, 10}));
  // The minimum holds in fallbacks too (balanced 6 over 4 = {2, 2, 1, 1} is valid for min 1).
  h.min_per_kv = 1;
  const auto r = gqa::kdgqa_allocate(std::vector<double>{1, 1, 1, 1}, 6, h, ints{0, 2, 2, 2});  // previous below min
  EXPECT_EQ(r.alloc, (ints{2, 2, 1, 1}));
  EXPECT_EQ(r.fallback, gqa::grouping_fallback::uniform);
}

// The policy, kdgqa_allocate and reference::kdgqa agree on random keys, for every rule and shape.
TEST(kdgqa, policy_matches_reference_transcription_on_random_keys) {
  const index_t shapes[][5] = {{1, 7, 6, 4, 5}, {3, 9, 12, 4, 16}, {2, 5, 8, 2, 3}, {2, 4, 6, 5, 8},
                               {1, 33, 12, 12, 7}, {4, 2, 7, 3, 2}, {2, 3, 5, 1, 4}};
  int ok = 0, fallbacks = 0;
  for (const auto& sh : shapes)
    for (std::uint64_t seed = 0; seed < 20; ++seed) {
      const index_t b = sh[0], s = sh[1], hq = sh[2], hkv = sh[3], d = sh[4];
      auto k = gqa::test::random_floats(static_cast<std::size_t>(b * s * hkv * d), 1000 + seed);
      // Per-head scales spread the norms (and make ties unlikely); seed 0 keeps all heads alike.
      for (std::size_t i = 0; i < k.size(); ++i)
        k[i] *= seed == 0 ? 1.0f : 0.5f + static_cast<float>((i / static_cast<std::size_t>(d)) % static_cast<std::size_t>(hkv) * seed % 7) * 0.25f;
      const auto kv = gqa::bshd<const float>(k.data(), b, s, hkv, d);
      gqa::tensor_view<const float> q = kv;
      q.h = hq;
      for (int variant = 0; variant < 6; ++variant) {
        const int rule = variant % 3;
        gqa::kdgqa_options opt;
        gqa::reference::kdgqa_setup setup;
        if (variant >= 3) {
          opt.arithmetic = gqa::allocation_arithmetic::float64;
          setup.float64 = true;
        }
        if (rule > 0) {
          opt.rule = gqa::allocation_rule::hamilton;
          setup.hamilton = true;
        }
        if (rule == 2) opt.min_per_kv = setup.min_per_kv = static_cast<int>(hq / hkv / 2);
        gqa::kdgqa_policy p(opt);
        const auto map = p.plan(q, kv);
        const auto ref = gqa::reference::kdgqa(kv, hq, setup);
        ASSERT_EQ(p.last().alloc, ref.alloc) << "b" << b << " s" << s << " hq" << hq << " hkv" << hkv << " seed " << seed;
        EXPECT_EQ(std::vector<index_t>(map.kv_of_q().begin(), map.kv_of_q().end()), ref.kv_of_q);
        EXPECT_EQ(gqa::to_string(p.last().status), ref.status);
        EXPECT_EQ(gqa::to_string(p.last().fallback), ref.fallback);
        EXPECT_EQ(gqa::kdgqa_allocate(gqa::key_norms(kv), hq, opt).alloc, ref.alloc);
        (p.last().status == gqa::grouping_status::ok ? ok : fallbacks) += 1;
      }
    }
  EXPECT_GT(ok, 600);
  EXPECT_GT(fallbacks, 0);  // hkv = 1 shape
}

// per_sample plans every batch element alone: a sample's output no longer depends on the batch.
TEST(kdgqa, per_sample_matches_separate_single_sample_calls) {
  const index_t b = 3, sq = 5, skv = 3, hq = 6, hkv = 3, d = 4;
  // Sample norms chosen so the per-sample allocations differ from the batch-global one:
  // sample 0 {1, 2, 3} -> {0, 2, 4}; sample 1 {3, 2, 1} -> {4, 2, 0}; sample 2 {3, 3, 1} -> {3, 3, 0};
  // batch sum {7, 7, 5} -> n̂ {1, 1, 0} -> {3, 3, 0}.
  const std::vector<std::vector<double>> per = {{1, 2, 3}, {3, 2, 1}, {3, 3, 1}};
  std::vector<float> k(static_cast<std::size_t>(b * skv * hkv * d), 0.0f);
  for (index_t ib = 0; ib < b; ++ib)
    for (index_t g = 0; g < hkv; ++g)
      k[static_cast<std::size_t>(((ib * skv + 0) * hkv + g) * d + 1)] = static_cast<float>(per[static_cast<std::size_t>(ib)][static_cast<std::size_t>(g)]);
  const auto q = gqa::test::random_floats(static_cast<std::size_t>(b * sq * hq * d), 5);
  const auto v = gqa::test::random_floats(k.size(), 6);
  std::vector<float> o(q.size()), o_one(q.size());
  gqa::kdgqa_options opt;
  opt.per_sample = true;
  gqa::kdgqa_policy p(opt);
  EXPECT_TRUE(p.per_sample());
  gqa::forward(p, gqa::bshd<const float>(q.data(), b, sq, hq, d), gqa::bshd<const float>(k.data(), b, skv, hkv, d),
               gqa::bshd<const float>(v.data(), b, skv, hkv, d), gqa::bshd(o.data(), b, sq, hq, d));
  EXPECT_EQ(p.last().alloc, (ints{3, 3, 0}));  // the last sample's
  const std::vector<ints> want = {{0, 2, 4}, {4, 2, 0}, {3, 3, 0}};
  for (index_t ib = 0; ib < b; ++ib) {
    gqa::kdgqa_policy single;
    const auto off_q = static_cast<std::size_t>(ib * sq * hq * d), off_k = static_cast<std::size_t>(ib * skv * hkv * d);
    gqa::forward(single, gqa::bshd<const float>(q.data() + off_q, 1, sq, hq, d),
                 gqa::bshd<const float>(k.data() + off_k, 1, skv, hkv, d),
                 gqa::bshd<const float>(v.data() + off_k, 1, skv, hkv, d), gqa::bshd(o_one.data() + off_q, 1, sq, hq, d));
    EXPECT_EQ(single.last().alloc, want[static_cast<std::size_t>(ib)]);
  }
  EXPECT_EQ(0, std::memcmp(o.data(), o_one.data(), o.size() * sizeof(float)));
  // The reference (batch-global) policy uses one allocation for all three samples (a sample's allocation
  // depends on the batch).
  gqa::kdgqa_policy global;
  EXPECT_FALSE(global.per_sample());
  gqa::forward(global, gqa::bshd<const float>(q.data(), b, sq, hq, d), gqa::bshd<const float>(k.data(), b, skv, hkv, d),
               gqa::bshd<const float>(v.data(), b, skv, hkv, d), gqa::bshd(o.data(), b, sq, hq, d));
  EXPECT_EQ(global.last().alloc, (ints{3, 3, 0}));
  EXPECT_NE(0, std::memcmp(o.data(), o_one.data(), o.size() * sizeof(float)));
}

TEST(kdgqa, options_errors_name_the_option) {
  gqa::kdgqa_options o;
  o.min_per_kv = -1;
  expect_invalid([&] { gqa::kdgqa_policy p(o); }, "gqa::kdgqa_policy: options.min_per_kv = -1: must be >= 0");
  o.min_per_kv = 1;  // reference rule has no minimum
  expect_invalid([&] { gqa::kdgqa_policy p(o); }, "options.min_per_kv = 1: a minimum per KV head needs options.rule");
  o = {};
  o.rule = static_cast<gqa::allocation_rule>(7);
  expect_invalid([&] { gqa::kdgqa_policy p(o); }, "gqa::kdgqa_policy: options.rule = 7");
  expect_invalid([&] { gqa::kdgqa_allocate(std::vector<double>{1, 2}, 4, o); }, "gqa::kdgqa_allocate: options.rule = 7");
  o = {};
  o.arithmetic = static_cast<gqa::allocation_arithmetic>(3);
  expect_invalid([&] { gqa::kdgqa_policy p(o); }, "gqa::kdgqa_policy: options.arithmetic = 3");
}

TEST(kdgqa, allocate_errors_name_the_argument) {
  expect_invalid([] { gqa::kdgqa_allocate({}, 4); }, "gqa::kdgqa_allocate: norms.size() = 0");
  expect_invalid([] { gqa::kdgqa_allocate(std::vector<double>{1, 2}, 0); }, "gqa::kdgqa_allocate: hq = 0");
  expect_invalid([] { gqa::kdgqa_allocate(std::vector<double>{1, 2}, 3000000000LL); }, "hq = 3000000000");
  expect_invalid([] { gqa::kdgqa_allocate(std::vector<double>{1, 2, 3}, 2); }, "norms.size() = 3: must be <= hq = 2");
  expect_invalid([] { gqa::kdgqa_allocate(std::vector<double>{1, -1, 3}, 6); }, "norms[1] = -1: must be >= 0");
  gqa::kdgqa_options h;
  h.rule = gqa::allocation_rule::hamilton;
  h.min_per_kv = 2;
  expect_invalid([&] { gqa::kdgqa_allocate(std::vector<double>{1, 2, 3}, 5, h); },
                 "options.min_per_kv = 2: min_per_kv · hkv = 6 exceeds hq = 5");
}

TEST(kdgqa, policy_errors_name_the_argument_and_leave_state) {
  const auto q = gqa::test::random_floats(2 * 3 * 8 * 4, 1);
  const auto k = gqa::test::random_floats(2 * 3 * 9 * 4, 2);
  std::vector<float> o(q.size());
  const auto qv = gqa::bshd<const float>(q.data(), 2, 3, 8, 4);
  const auto kv = gqa::bshd<const float>(k.data(), 2, 3, 9, 4);
  gqa::kdgqa_policy p;
  expect_invalid([&] { p.check(qv, kv, kv, gqa::bshd(o.data(), 2, 3, 8, 4)); }, "gqa::kdgqa_policy: k.h = 9: must be <= q.h = 8");
  expect_invalid([&] { p.plan(qv, kv); }, "gqa::kdgqa_policy: k.h = 9: must be <= q.h = 8");
  expect_invalid([&] { gqa::forward(p, qv, kv, kv, gqa::bshd(o.data(), 2, 3, 8, 4)); }, "k.h = 9: must be <= q.h = 8");
  EXPECT_TRUE(p.last().alloc.empty());  // nothing was planned
  gqa::kdgqa_options h;
  h.rule = gqa::allocation_rule::hamilton;
  h.min_per_kv = 2;
  gqa::kdgqa_policy pm(h);
  const auto k4 = gqa::bshd<const float>(k.data(), 1, 3, 4, 4);
  gqa::tensor_view<const float> q6 = qv;
  q6.b = 1;
  q6.h = 6;
  expect_invalid([&] { pm.plan(q6, k4); }, "gqa::kdgqa_policy: options.min_per_kv = 2: min_per_kv · k.h = 8 exceeds q.h = 6");
  gqa::kdgqa_policy plain;
  expect_invalid([&] { plain.plan(q6, gqa::bshd<const float>(nullptr, 1, 3, 4, 4)); }, "gqa::key_norms: k.data = nullptr");
  // A bad attention argument (v's head count) throws in forward before plan() runs.
  expect_invalid([&] { gqa::forward(plain, q6, k4, gqa::bshd<const float>(k.data(), 1, 3, 3, 4), gqa::bshd(o.data(), 1, 3, 6, 4)); },
                 "v.h = 3");
  EXPECT_TRUE(plain.last().alloc.empty());
}

}  // namespace
