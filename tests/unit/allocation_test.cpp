// The allocation helpers shared by KDGQA and DGQA (gqa/variants/allocation.hpp): key norms, half-to-even
// rounding, the reference fix-up loops (KDGQA's arg-max/arg-min, DGQA's random retries), the hamilton rule,
// balanced allocations, and their error paths. Also defines the scalar-build functions the ISA suites
// compare against (norms and DGQA arithmetic must be bit-identical on every ISA).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <gqa/reference/grouping.hpp>
#include <gqa/variants/allocation.hpp>
#include <gqa/variants/dgqa.hpp>

#include "support/data.hpp"
#include "support/expect.hpp"

namespace gqa::test {
// Declared in tests/suites/kdgqa_suite.hpp and dgqa_suite.hpp; defined here, in a TU built with the
// baseline (scalar) flags, so the suites can compare their ISA build's results bit for bit.
std::vector<double> scalar_build_key_norms(const float* k, index_t b, index_t s, index_t h, index_t d) {
  return gqa::key_norms(gqa::bshd<const float>(k, b, s, h, d));
}
std::vector<float> scalar_build_dgqa_run(const float* k, index_t b, index_t s, index_t h, index_t d, index_t hq,
                                         int kind, int cache_update, int steps) {
  auto state = gqa::dgqa_state::initial(hq, h);
  gqa::dgqa_options opt;
  opt.kind = static_cast<gqa::dgqa_kind>(kind);
  opt.cache_update = static_cast<gqa::dgqa_cache_update>(cache_update);
  gqa::dgqa_policy p(opt, state);
  p.set_mode(gqa::dgqa_mode::train);
  std::vector<float> trace;
  const auto kv = gqa::bshd<const float>(k, b, s, h, d);
  tensor_view<const float> qv = kv;
  qv.h = hq;  // plan() reads only q.h
  for (int step = 0; step < steps; ++step) {
    p.set_step(static_cast<std::uint64_t>(step));
    p.plan(qv, kv);
    trace.insert(trace.end(), state.cache.begin(), state.cache.end());
    for (int x : state.splits) trace.push_back(static_cast<float>(x));
  }
  return trace;
}
}  // namespace gqa::test

namespace {

using gqa::index_t;
using gqa::test::expect_invalid;

// Key norms: per-sample Frobenius norms, summed over the batch (not the norm of the whole batch).
TEST(allocation, key_norms_sum_per_sample_frobenius_norms) {
  // b = 2, s = 2, h = 2, d = 2 (BSHD). Head 0: sample 0 = {3, 4, 0, 0} (norm 5), sample 1 = {0, 0, 0, 1}
  // (norm 1): 6, not sqrt(26). Head 1: sample 0 = {1, 2, 2, 0} (norm 3), sample 1 = {12, 0, 0, 0} (12): 15.
  const std::vector<float> k = {3, 4, 1, 2,    // b0 s0: head 0, head 1
                                0, 0, 2, 0,    // b0 s1
                                0, 0, 12, 0,   // b1 s0
                                0, 1, 0, 0};   // b1 s1
  const auto n = gqa::key_norms(gqa::bshd<const float>(k.data(), 2, 2, 2, 2));
  ASSERT_EQ(n.size(), 2u);
  EXPECT_EQ(n[0], 6.0);
  EXPECT_EQ(n[1], 15.0);
}

TEST(allocation, key_norms_follow_strides_and_match_reference) {
  const index_t b = 3, s = 37, h = 5, d = 19;
  const auto bshd = gqa::test::random_floats(static_cast<std::size_t>(b * s * h * d), 11);
  // The same logical tensor laid out BHSD.
  std::vector<float> bhsd(bshd.size());
  for (index_t ib = 0; ib < b; ++ib)
    for (index_t is = 0; is < s; ++is)
      for (index_t ih = 0; ih < h; ++ih)
        for (index_t c = 0; c < d; ++c)
          bhsd[static_cast<std::size_t>(((ib * h + ih) * s + is) * d + c)] =
              bshd[static_cast<std::size_t>(((ib * s + is) * h + ih) * d + c)];
  const auto n1 = gqa::key_norms(gqa::bshd<const float>(bshd.data(), b, s, h, d));
  const auto n2 = gqa::key_norms(gqa::bhsd<const float>(bhsd.data(), b, h, s, d));
  const auto nr = gqa::reference::key_norms(gqa::bshd<const float>(bshd.data(), b, s, h, d));
  ASSERT_EQ(n1.size(), static_cast<std::size_t>(h));
  EXPECT_EQ(0, std::memcmp(n1.data(), n2.data(), n1.size() * sizeof(double)));
  // The library sums in 16 fixed lanes (Note [key norm order]), the reference in one plain chain: the
  // same exact terms in a different order, so they agree to double rounding (~1e-16 relative per term,
  // a few hundred terms here), not bit for bit. Bitwise determinism across ISAs and layouts is checked
  // above and in kdgqa_suite.
  for (std::size_t g = 0; g < n1.size(); ++g) EXPECT_NEAR(n1[g], nr[g], 1e-13 * nr[g]) << "g=" << g;
  // A view with a non-unit channel stride (every other float) reads only its own elements.
  std::vector<float> spread(bshd.size() * 2, 1e30f);
  for (std::size_t i = 0; i < bshd.size(); ++i) spread[2 * i] = bshd[i];
  const gqa::tensor_view<const float> strided(spread.data(), b, s, h, d, 2 * s * h * d, 2 * h * d, 2 * d, 2);
  const auto n3 = gqa::key_norms(strided);
  EXPECT_EQ(0, std::memcmp(n1.data(), n3.data(), n1.size() * sizeof(double)));
}

TEST(allocation, key_norms_rejects_empty_views) {
  std::vector<float> k(16, 1.0f);
  expect_invalid([&] { gqa::key_norms(gqa::bshd<const float>(nullptr, 1, 2, 2, 4)); }, "gqa::key_norms: k.data = nullptr");
  expect_invalid([&] { gqa::key_norms(gqa::bshd<const float>(k.data(), 0, 2, 2, 4)); }, "k.b = 0");
  expect_invalid([&] { gqa::key_norms(gqa::bshd<const float>(k.data(), 1, 0, 2, 4)); }, "k.s = 0");
  expect_invalid([&] { gqa::key_norms(gqa::bshd<const float>(k.data(), 1, 2, 0, 4)); }, "k.h = 0");
  expect_invalid([&] { gqa::key_norms(gqa::bshd<const float>(k.data(), 1, 2, 2, 0)); }, "k.d = 0");
}

// torch.round is half to even: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2 (std::round would give 1, 2, 3).
TEST(allocation, round_half_even_ties) {
  const std::vector<double> x = {0.0, 0.5, 1.5, 2.5, 3.5, 0.49999999999999994, 2.5000000000000004, 7.2, 7.8};
  const std::vector<int> want = {0, 0, 2, 2, 4, 0, 3, 7, 8};
  EXPECT_EQ(gqa::round_half_even(x), want);
  for (std::size_t i = 0; i < x.size(); ++i) EXPECT_EQ(gqa::reference::round_half_even(x[i]), want[i]) << x[i];
}

TEST(allocation, round_half_even_never_converts_nan_or_out_of_range) {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  expect_invalid([&] { gqa::round_half_even(std::vector<double>{1.0, nan}); }, "gqa::round_half_even: shares[1] = nan");
  expect_invalid([&] { gqa::round_half_even(std::vector<double>{inf}); }, "shares[0] = inf");
  expect_invalid([&] { gqa::round_half_even(std::vector<double>{-0.5}); }, "shares[0] = -0.5");
  expect_invalid([&] { gqa::round_half_even(std::vector<double>{4e9}); }, "shares[0] = 4e+09");
}

TEST(allocation, proportional_shares_divide_first) {
  const std::vector<double> w = {0.0, 1.0, 1.0, 2.0};
  const auto s = gqa::proportional_shares(w, 8);
  EXPECT_EQ(s, (std::vector<double>{0.0, 2.0, 2.0, 4.0}));
  expect_invalid([] { gqa::proportional_shares({}, 4); }, "gqa::proportional_shares: w.size() = 0");
  expect_invalid([] { gqa::proportional_shares(std::vector<double>{1.0}, -1); }, "total = -1");
  expect_invalid([] { gqa::proportional_shares(std::vector<double>{1.0, -2.0}, 4); }, "w[1] = -2");
  expect_invalid([] { gqa::proportional_shares(std::vector<double>{0.0, 0.0}, 4); }, "sum(w) = 0");
}

// KDGQA's fix-up: decrement the FIRST arg-max while the sum is too large, increment the FIRST arg-min while
// too small.
TEST(allocation, fix_sum_first_extreme_uses_first_index) {
  std::vector<int> a = {3, 1, 3, 3};  // sum 10 -> 8: decrements index 0 (first max 3), then index 2
  gqa::fix_sum_first_extreme(a, 8);
  EXPECT_EQ(a, (std::vector<int>{2, 1, 2, 3}));
  std::vector<int> b = {2, 0, 1, 0};  // sum 3 -> 5: increments index 1 (first min 0), then index 3
  gqa::fix_sum_first_extreme(b, 5);
  EXPECT_EQ(b, (std::vector<int>{2, 1, 1, 1}));
  std::vector<int> c = {1, 2, 3};  // already right: untouched
  gqa::fix_sum_first_extreme(c, 6);
  EXPECT_EQ(c, (std::vector<int>{1, 2, 3}));
  expect_invalid([] { std::vector<int> e; gqa::fix_sum_first_extreme(e, 1); }, "gqa::fix_sum_first_extreme: a.size() = 0");
  expect_invalid([] { std::vector<int> e = {1, -1}; gqa::fix_sum_first_extreme(e, 1); }, "a[1] = -1");
  expect_invalid([] { std::vector<int> e = {1}; gqa::fix_sum_first_extreme(e, -3); }, "total = -3");
}

// DGQA's fix-up: "pick i; decrement only if a[i] > 0" and "pick i; increment", from a seeded stream.
TEST(allocation, fix_sum_random_retry_semantics_and_replay) {
  gqa::random::stream rng{42, 7, 0};
  std::vector<int> a = {0, 0, 5, 0};  // only slot 2 can be decremented: every miss draws again
  gqa::fix_sum_random(a, 3, rng);
  EXPECT_EQ(a, (std::vector<int>{0, 0, 3, 0}));
  EXPECT_GE(rng.counter, 2u);  // at least one draw per decrement
  // Increments: total draws == deficit (no rejection in uniform_int for n = 4, a power of two).
  gqa::random::stream inc{42, 7, 100};
  std::vector<int> b = {1, 1, 1, 1};
  gqa::fix_sum_random(b, 10, inc);
  EXPECT_EQ(gqa::detail::sum_of(b), 10);
  EXPECT_EQ(inc.counter, 106u);
  // The same stream position replays the same draws.
  gqa::random::stream again{42, 7, 100};
  std::vector<int> c = {1, 1, 1, 1};
  gqa::fix_sum_random(c, 10, again);
  EXPECT_EQ(b, c);
  EXPECT_EQ(again.counter, inc.counter);
  // Another seed gives another repair here (checked: these streams differ in their 6 draws).
  gqa::random::stream other{43, 7, 100};
  std::vector<int> d = {1, 1, 1, 1};
  gqa::fix_sum_random(d, 10, other);
  EXPECT_NE(b, d);
  gqa::random::stream r{0, 0, 0};
  expect_invalid([&] { std::vector<int> e = {2, -1}; gqa::fix_sum_random(e, 1, r); }, "gqa::fix_sum_random: a[1] = -1");
}

// Hamilton: floor of the quotas, then the remaining seats by largest fractional part, ties to the lower
// index.
TEST(allocation, hamilton_largest_remainder) {
  // w = {0, 8, 8, 9}, total 5: quotas (w/25)·5 = {0, 1.6, 1.6, 1.8}; floors {0,1,1,1}, 2 seats left:
  // largest fraction .8 (index 3), then .6 at index 1 (tie with index 2 goes to the lower index).
  EXPECT_EQ(gqa::hamilton_allocation(std::vector<double>{0, 8, 8, 9}, 5), (std::vector<int>{0, 2, 1, 2}));
  // w = {1, 1, 1}, total 4: quotas 4/3 each, one seat left, to index 0.
  EXPECT_EQ(gqa::hamilton_allocation(std::vector<double>{1, 1, 1}, 4), (std::vector<int>{2, 1, 1}));
  // min_per = 1: one each, then 1 seat by quotas {0, .32, .32, .36}: to index 3.
  EXPECT_EQ(gqa::hamilton_allocation(std::vector<double>{0, 8, 8, 9}, 5, 1), (std::vector<int>{1, 1, 1, 2}));
  // min_per · G == total: exactly min_per each.
  EXPECT_EQ(gqa::hamilton_allocation(std::vector<double>{0, 1, 5, 9}, 8, 2), (std::vector<int>{2, 2, 2, 2}));
  expect_invalid([] { gqa::hamilton_allocation(std::vector<double>{1, 1}, 3, 2); },
                 "gqa::hamilton_allocation: min_per = 2: min_per · G = 4 exceeds total = 3");
  expect_invalid([] { gqa::hamilton_allocation(std::vector<double>{1, 1}, 3, -1); }, "min_per = -1");
  expect_invalid([] { gqa::hamilton_allocation({}, 3); }, "w.size() = 0");
  expect_invalid([] { gqa::hamilton_allocation(std::vector<double>{1, 1}, -2); }, "total = -2");
}

TEST(allocation, hamilton_matches_reference_transcription) {
  for (std::uint64_t seed = 0; seed < 200; ++seed) {
    const std::size_t g = 2 + seed % 7;
    const index_t total = static_cast<index_t>(g + seed % 13);
    const int min_per = static_cast<int>(seed % 3 == 0 ? total / static_cast<index_t>(g) / 2 : 0);
    const auto f = gqa::test::random_floats(g, seed, 0.0f, 1.0f);
    const std::vector<double> w(f.begin(), f.end());
    const auto a = gqa::hamilton_allocation(w, total, min_per);
    EXPECT_EQ(a, gqa::reference::hamilton(w, total, min_per)) << "seed " << seed;
    EXPECT_TRUE(gqa::is_allocation(a, total, static_cast<index_t>(g), min_per));
  }
}

TEST(allocation, balanced_allocation_and_validity) {
  EXPECT_EQ(gqa::balanced_allocation(12, 4), (std::vector<int>{3, 3, 3, 3}));
  EXPECT_EQ(gqa::balanced_allocation(6, 4), (std::vector<int>{2, 2, 1, 1}));
  EXPECT_EQ(gqa::balanced_allocation(7, 1), (std::vector<int>{7}));
  expect_invalid([] { gqa::balanced_allocation(0, 2); }, "gqa::balanced_allocation: hq = 0");
  expect_invalid([] { gqa::balanced_allocation(4, 0); }, "hkv = 0");
  EXPECT_TRUE(gqa::is_allocation(std::vector<int>{0, 3, 3}, 6, 3));
  EXPECT_FALSE(gqa::is_allocation(std::vector<int>{0, 3, 3}, 6, 3, 1));  // below the minimum
  EXPECT_FALSE(gqa::is_allocation(std::vector<int>{1, 3, 3}, 6, 3));     // wrong sum
  EXPECT_FALSE(gqa::is_allocation(std::vector<int>{-1, 4, 3}, 6, 3));    // negative
  EXPECT_FALSE(gqa::is_allocation(std::vector<int>{3, 3}, 6, 3));        // wrong size
}

TEST(allocation, status_names) {
  EXPECT_EQ(gqa::to_string(gqa::grouping_status::ok), "ok");
  EXPECT_EQ(gqa::to_string(gqa::grouping_status::fallback_single_kv), "fallback_single_kv");
  EXPECT_EQ(gqa::to_string(gqa::grouping_status::fallback_equal_norms), "fallback_equal_norms");
  EXPECT_EQ(gqa::to_string(gqa::grouping_status::fallback_nonfinite), "fallback_nonfinite");
  EXPECT_EQ(gqa::to_string(gqa::grouping_status::fallback_zero_score), "fallback_zero_score");
  EXPECT_EQ(gqa::to_string(gqa::grouping_fallback::none), "none");
  EXPECT_EQ(gqa::to_string(gqa::grouping_fallback::uniform), "uniform");
  EXPECT_EQ(gqa::to_string(gqa::grouping_fallback::previous), "previous");
}

}  // namespace
