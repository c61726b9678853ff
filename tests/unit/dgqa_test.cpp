// DGQA: the initial state, the reference cache arithmetic (W = 1: a running sum; W > 1: fixed point
// m/(W-1)), train vs eval and the step % W schedule, stale splits, the fallbacks, both repairs (the
// reference's random retries from gqa's seeded stream, and hamilton), seeded determinism and state
// save/restore, agreement with reference::dgqa_step, and every error path of the public API.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include <gqa/reference/grouping.hpp>
#include <gqa/variants/dgqa.hpp>

#include "support/data.hpp"
#include "support/expect.hpp"

namespace {

using gqa::index_t;
using gqa::test::expect_invalid;
using ints = std::vector<int>;
using floats = std::vector<float>;

// Keys (b = 1, s = 2, G heads, d = 3) whose head g has norm exactly norms[g] (one non-zero element).
struct keys {
  std::vector<float> data;
  gqa::tensor_view<const float> k;
  gqa::tensor_view<const float> q;  // plan() reads only q.h: a view of the same buffer with hq heads
  keys(const floats& norms, index_t hq) : data(norms.size() * 6, 0.0f) {
    const auto g_count = static_cast<index_t>(norms.size());
    for (index_t g = 0; g < g_count; ++g) data[static_cast<std::size_t>((1 * g_count + g) * 3 + 1)] = norms[static_cast<std::size_t>(g)];
    k = gqa::bshd<const float>(data.data(), 1, 2, g_count, 3);
    q = k;
    q.h = hq;
  }
};

// Random keys for step i: heads scaled differently at every step so scores move.
struct random_keys {
  std::vector<float> data;
  gqa::tensor_view<const float> k, q;
  random_keys(index_t b, index_t s, index_t hq, index_t hkv, index_t d, std::uint64_t seed)
      : data(gqa::test::random_floats(static_cast<std::size_t>(b * s * hkv * d), seed)) {
    const auto scales = gqa::test::random_floats(static_cast<std::size_t>(hkv), seed + 77, 0.5f, 1.5f);
    for (std::size_t i = 0; i < data.size(); ++i) data[i] *= scales[(i / static_cast<std::size_t>(d)) % static_cast<std::size_t>(hkv)];
    k = gqa::bshd<const float>(data.data(), b, s, hkv, d);
    q = k;
    q.h = hq;
  }
};

TEST(dgqa, initial_state) {
  const auto s = gqa::dgqa_state::initial(12, 4);
  EXPECT_EQ(s.splits, (ints{3, 3, 3, 3}));
  EXPECT_EQ(s.cache, (floats{0, 0, 0, 0}));
  EXPECT_EQ(s.rng_counter, 0u);
  // hkv does not divide hq: the balanced allocation (the reference's (hq // hkv,) * hkv would sum to 4).
  EXPECT_EQ(gqa::dgqa_state::initial(6, 4).splits, (ints{2, 2, 1, 1}));
  EXPECT_EQ(gqa::dgqa_state::initial(5, 1).splits, (ints{5}));
  expect_invalid([] { gqa::dgqa_state::initial(4, 0); }, "gqa::dgqa_state::initial: hkv = 0");
  expect_invalid([] { gqa::dgqa_state::initial(0, 1); }, "gqa::dgqa_state::initial: hq = 0");
  expect_invalid([] { gqa::dgqa_state::initial(4, 5); }, "gqa::dgqa_state::initial: hkv = 5: must be <= hq = 4");
}

// The reference cache update, W = 1: cache <- (cache + m) / 1 is a running sum of the magnitudes.
TEST(dgqa, window_one_cache_is_a_running_sum) {
  const keys kk({3, 4, 5, 6}, 8);
  auto state = gqa::dgqa_state::initial(8, 4);
  gqa::dgqa_policy p({}, state);
  p.set_mode(gqa::dgqa_mode::train);
  for (std::uint64_t step = 0; step < 4; ++step) {
    p.set_step(step);
    p.plan(kk.q, kk.k);
    const float t = static_cast<float>(step + 1);
    EXPECT_EQ(state.cache, (floats{3 * t, 4 * t, 5 * t, 6 * t})) << "step " << step;
    EXPECT_TRUE(p.last().updated);
  }
  // Step 0: diff = |0 - m| = m, shares m/18·8 = {1.33, 1.78, 2.22, 2.67} -> {1, 2, 2, 3} (sum 8, no
  // repair). Step 1: cache = m, so diff = 0 everywhere: the Σscore == 0 fallback keeps {1, 2, 2, 3} (the
  // reference hangs here: 0/0 turns into INT_MIN and its fix-up loop runs ~2³¹ times). Steps 2, 3: diff =
  // m, 2m -> {1, 2, 2, 3} again.
  EXPECT_EQ(state.splits, (ints{1, 2, 2, 3}));
  EXPECT_EQ(state.rng_counter, 0u);
}

TEST(dgqa, window_one_zero_score_on_the_second_step) {
  const keys kk({3, 4, 5, 6}, 8);
  auto state = gqa::dgqa_state::initial(8, 4);
  gqa::dgqa_policy p({}, state);
  p.set_mode(gqa::dgqa_mode::train);
  p.set_step(0);
  p.plan(kk.q, kk.k);
  EXPECT_EQ(p.last().status, gqa::grouping_status::ok);
  p.set_step(1);
  p.plan(kk.q, kk.k);
  EXPECT_EQ(p.last().status, gqa::grouping_status::fallback_zero_score);
  EXPECT_EQ(p.last().fallback, gqa::grouping_fallback::previous);
  EXPECT_EQ(p.last().alloc, (ints{1, 2, 2, 3}));
  EXPECT_EQ(state.cache, (floats{6, 8, 10, 12}));  // still updated
}

// The reference cache update, W > 1: cache_{n+1} = (cache_n + m) / W converges to m / (W - 1).
TEST(dgqa, window_above_one_cache_fixed_point) {
  for (index_t w : {2, 4, 300}) {
    const keys kk({3712, 4000, 5000, 2500}, 8);
    auto state = gqa::dgqa_state::initial(8, 4);
    gqa::dgqa_options opt;
    opt.window = w;
    gqa::dgqa_policy p(opt, state);
    p.set_mode(gqa::dgqa_mode::train);
    for (std::uint64_t i = 0; i < 60; ++i) {
      p.set_step(i * static_cast<std::uint64_t>(w));
      p.plan(kk.q, kk.k);
    }
    const float m[] = {3712, 4000, 5000, 2500};
    for (std::size_t g = 0; g < 4; ++g) {
      const double fixed = m[g] / static_cast<double>(w - 1);
      // The iteration contracts by 1/W per update; after 60 updates only float rounding of each
      // update (~1 ulp of the fixed point, amplified at most W/(W-1) times) remains.
      EXPECT_NEAR(state.cache[g], fixed, 4e-7 * fixed) << "W " << w << " g " << g;
    }
  }
}

// Eval mode: splits recomputed on every call, cache <- m (NOT divided by W); updated is true.
TEST(dgqa, eval_recomputes_every_call_and_stores_m_undivided) {
  auto state = gqa::dgqa_state::initial(12, 6);
  gqa::dgqa_options opt;
  opt.window = 300;
  gqa::dgqa_policy p(opt, state);
  EXPECT_EQ(p.mode(), gqa::dgqa_mode::eval);  // the default
  // Without min-max scaling allocations are usually uniform: ±20% spread, group size 2, first update from a
  // zero cache: diff = m, shares = m/600·12 = {1.6, 1.8, 2, 2.2, 2.4, 2} -> all 2: uniform GQA.
  const keys a({80, 90, 100, 110, 120, 100}, 12);
  p.plan(a.q, a.k);
  EXPECT_EQ(p.last().alloc, (ints{2, 2, 2, 2, 2, 2}));
  EXPECT_TRUE(p.last().updated);
  EXPECT_EQ(state.cache, (floats{80, 90, 100, 110, 120, 100}));
  // Next batch: diff = |m_prev - m| = {60, 0, 0, 0, 0, 0}: all 12 heads go to KV head 0 (in eval,
  // diff follows batch-to-batch fluctuation).
  const keys b({20, 90, 100, 110, 120, 100}, 12);
  p.plan(b.q, b.k);
  EXPECT_EQ(p.last().alloc, (ints{12, 0, 0, 0, 0, 0}));
  EXPECT_EQ(state.cache, (floats{20, 90, 100, 110, 120, 100}));
  // The same batch again: Σscore == 0 -> previous splits, reported (the reference hangs).
  p.plan(b.q, b.k);
  EXPECT_EQ(p.last().status, gqa::grouping_status::fallback_zero_score);
  EXPECT_EQ(p.last().alloc, (ints{12, 0, 0, 0, 0, 0}));
}

// First update after init, ema kind: score = 0.9·m + 0.1·cache; from a zero cache, proportional to m as
// diff is.
TEST(dgqa, ema_score_weights_the_current_magnitude) {
  auto state = gqa::dgqa_state::initial(8, 4);
  gqa::dgqa_options opt;
  opt.kind = gqa::dgqa_kind::ema;
  gqa::dgqa_policy p(opt, state);
  const keys a({3, 4, 5, 6}, 8);
  p.plan(a.q, a.k);
  EXPECT_EQ(p.last().alloc, (ints{1, 2, 2, 3}));  // 0.9·m / Σ · 8 = m/18·8, as for diff
  // cache = {20, 0, 0, 0} (set by hand), m = {3, 4, 5, 6}: score = {.9·3 + .1·20, .9·4, .9·5, .9·6} =
  // {4.7, 3.6, 4.5, 5.4}, Σ = 18.2, shares ·8/18.2 = {2.07, 1.58, 1.98, 2.37} -> {2, 2, 2, 2}.
  state.cache = {20, 0, 0, 0};
  p.plan(a.q, a.k);
  EXPECT_EQ(p.last().alloc, (ints{2, 2, 2, 2}));
}

// Note [dgqa arithmetic]: float32 (default) forms the ema score as torch does on float32 tensors,
// float(0.9f·m) + float(0.1f·c), and the shares score / Σ · hq in float; float64 keeps them in double.
TEST(dgqa, float32_and_float64_shares) {
  for (const auto arith : {gqa::allocation_arithmetic::float32, gqa::allocation_arithmetic::float64}) {
    auto state = gqa::dgqa_state::initial(8, 4);
    gqa::dgqa_options opt;
    opt.kind = gqa::dgqa_kind::ema;
    opt.arithmetic = arith;
    gqa::dgqa_policy p(opt, state);
    state.cache = {20, 0, 0, 0};
    const keys a({3, 4, 5, 6}, 8);
    p.plan(a.q, a.k);
    // score = {0.9f·3 + 0.1f·20, 0.9f·4, 0.9f·5, 0.9f·6}, each product and sum rounded to float in
    // float32 mode; shares = score / Σ · 8.
    const volatile float s0a = 0.9f * 3.0f, s0b = 0.1f * 20.0f, s1 = 0.9f * 4.0f, s2 = 0.9f * 5.0f, s3 = 0.9f * 6.0f;
    const float score[4] = {s0a + s0b, s1, s2, s3};
    const auto& sh = p.last().shares;
    ASSERT_EQ(sh.size(), 4u);
    if (arith == gqa::allocation_arithmetic::float32) {
      float sum = 0.0f;
      for (float x : score) sum += x;
      for (std::size_t g = 0; g < 4; ++g) EXPECT_EQ(sh[g], static_cast<double>(score[g] / sum * 8.0f)) << g;
    } else {
      const double w_now = 0.9f, w_old = 0.1f;  // the same float weights, products exact in double
      const double sd[4] = {w_now * 3 + w_old * 20, w_now * 4, w_now * 5, w_now * 6};
      const double sum = sd[0] + sd[1] + sd[2] + sd[3];
      for (std::size_t g = 0; g < 4; ++g) EXPECT_EQ(sh[g], sd[g] / sum * 8.0) << g;
    }
    EXPECT_EQ(p.last().alloc, (ints{2, 2, 2, 2}));
  }
  // Where they differ: diff from a zero cache, m = {1, 0, 0.6f}, hq = 12. In float32 Σ = 1.6f and the
  // shares are exactly {7.5, 0, 4.5} (1 / 1.6f rounds to 0.625f), which round half to even to {8, 0, 4},
  // as the authors' code does; in double they are 7.4999999 and 4.5000001, hence {7, 0, 5}.
  const keys tie({1.0f, 0.0f, 0.6f}, 12);
  for (const auto arith : {gqa::allocation_arithmetic::float32, gqa::allocation_arithmetic::float64}) {
    auto state = gqa::dgqa_state::initial(12, 3);
    gqa::dgqa_options opt;
    opt.arithmetic = arith;
    gqa::dgqa_policy p(opt, state);
    p.plan(tie.q, tie.k);
    if (arith == gqa::allocation_arithmetic::float32) {
      EXPECT_EQ(p.last().shares, (std::vector<double>{7.5, 0.0, 4.5}));
      EXPECT_EQ(p.last().alloc, (ints{8, 0, 4}));
    } else {
      EXPECT_EQ(p.last().alloc, (ints{7, 0, 5}));
    }
    EXPECT_EQ(state.rng_counter, 0u);  // the rounded shares summed to 12: no repair
  }
}

// Why gqa-compare scales its key heads (bench/compare/model.hpp, key_head_scales): on iid random keys all
// head norms agree to about 1%, so DGQA-ema's shares (hq/hkv)·(1 ± 1%) round to exactly uniform groups, on
// the first call (cache 0: score 0.9·m) and the next (cache m: score m); with head norms 0.5 to 2 apart
// it is not uniform.
TEST(dgqa, ema_is_uniform_on_iid_keys_and_not_on_scaled_heads) {
  const index_t b = 1, s = 256, hq = 32, hkv = 8, d = 64;
  for (std::uint64_t seed = 0; seed < 4; ++seed) {
    auto k = gqa::test::random_floats(static_cast<std::size_t>(b * s * hkv * d), 300 + seed);
    const auto kv = gqa::bshd<const float>(k.data(), b, s, hkv, d);
    gqa::tensor_view<const float> q = kv;
    q.h = hq;
    for (const bool scaled : {false, true}) {
      if (scaled)
        for (std::size_t i = 0; i < k.size(); ++i)
          k[i] *= static_cast<float>(0.5 * std::pow(4.0, static_cast<double>((i / d) % hkv) / (hkv - 1)));
      auto state = gqa::dgqa_state::initial(hq, hkv);
      gqa::dgqa_options opt;
      opt.kind = gqa::dgqa_kind::ema;
      gqa::dgqa_policy p(opt, state);
      for (int call = 0; call < 2; ++call) {
        p.plan(q, kv);
        if (scaled) {
          EXPECT_NE(p.last().alloc, ints(8, 4)) << "seed " << seed;
        } else {
          EXPECT_EQ(p.last().alloc, ints(8, 4)) << "seed " << seed;
        }
      }
    }
  }
}

// Train mode: updates only when step % W == 0; in between the old splits are reused (stale) and the
// state is untouched, whatever the keys.
TEST(dgqa, train_updates_on_window_boundaries_only) {
  auto state = gqa::dgqa_state::initial(12, 4);
  gqa::dgqa_options opt;
  opt.window = 3;
  gqa::dgqa_policy p(opt, state);
  p.set_mode(gqa::dgqa_mode::train);
  for (std::uint64_t step = 0; step < 7; ++step) {
    const random_keys rk(2, 9, 12, 4, 8, 100 + step);
    const gqa::dgqa_state before = state;
    p.set_step(step);
    const gqa::head_map map = p.plan(rk.q, rk.k);
    EXPECT_EQ(p.last().updated, step % 3 == 0) << step;
    EXPECT_EQ(map.allocation(), state.splits);
    if (step % 3 != 0) {
      EXPECT_EQ(state.splits, before.splits);
      EXPECT_EQ(state.cache, before.cache);
      EXPECT_EQ(state.rng_counter, before.rng_counter);
      EXPECT_EQ(p.last().status, gqa::grouping_status::ok);
      EXPECT_EQ(p.last().fallback, gqa::grouping_fallback::none);
    } else {
      EXPECT_NE(state.cache, before.cache);
    }
  }
  EXPECT_EQ(p.step().value_or(99), 6u);
}

TEST(dgqa, eval_without_state_updates_is_pure) {
  auto state = gqa::dgqa_state::initial(12, 4);
  state.cache = {1, 50, 2, 3};
  gqa::dgqa_options opt;
  opt.eval_updates_state = false;
  gqa::dgqa_policy p(opt, state);
  const gqa::dgqa_state before = state;
  const random_keys rk(1, 16, 12, 4, 8, 3);
  const auto first = p.plan(rk.q, rk.k).allocation();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(p.plan(rk.q, rk.k).allocation(), first);
  EXPECT_EQ(state.cache, before.cache);
  EXPECT_EQ(state.splits, before.splits);
  EXPECT_EQ(state.rng_counter, before.rng_counter);
  // Training still updates.
  p.set_mode(gqa::dgqa_mode::train);
  p.set_step(0);
  p.plan(rk.q, rk.k);
  EXPECT_NE(state.cache, before.cache);
}

TEST(dgqa, nonfinite_magnitude_keeps_splits_and_state) {
  auto state = gqa::dgqa_state::initial(6, 3);
  state.cache = {1, 2, 3};
  state.splits = {1, 4, 1};
  state.rng_counter = 9;
  gqa::dgqa_policy p({}, state);
  keys kk({3, 4, 5}, 6);
  kk.data[1] = std::numeric_limits<float>::quiet_NaN();
  p.plan(kk.q, kk.k);
  EXPECT_EQ(p.last().status, gqa::grouping_status::fallback_nonfinite);
  EXPECT_EQ(p.last().fallback, gqa::grouping_fallback::previous);
  EXPECT_EQ(p.last().alloc, (ints{1, 4, 1}));
  EXPECT_EQ(state.cache, (floats{1, 2, 3}));
  EXPECT_EQ(state.splits, (ints{1, 4, 1}));
  EXPECT_EQ(state.rng_counter, 9u);
  // A norm too large for float is non-finite as a float magnitude too.
  keys huge({3e38f, 3e38f, 3e38f}, 6);
  huge.data[4] = 3e38f;  // a second element of head 1: its norm sqrt(2)·3e38 exceeds FLT_MAX
  p.plan(huge.q, huge.k);
  EXPECT_EQ(p.last().status, gqa::grouping_status::fallback_nonfinite);
}

TEST(dgqa, nonfinite_score_keeps_splits_but_updates_cache) {
  auto state = gqa::dgqa_state::initial(6, 3);
  state.cache = {std::numeric_limits<float>::infinity(), 2, 3};  // e.g. a W = 1 running sum that overflowed
  gqa::dgqa_policy p({}, state);
  const keys kk({3, 4, 5}, 6);
  p.plan(kk.q, kk.k);
  EXPECT_EQ(p.last().status, gqa::grouping_status::fallback_nonfinite);
  EXPECT_EQ(p.last().alloc, (ints{2, 2, 2}));
  EXPECT_EQ(state.cache, (floats{3, 4, 5}));  // eval stores m
}

// The repairs. m = {8, 8, 9, 0}, zero cache, H = 5: shares {1.6, 1.6, 1.8, 0} -> {2, 2, 2, 0}, sum 6.
TEST(dgqa, random_repair_draws_from_the_seeded_stream) {
  const keys kk({8, 8, 9, 0}, 5);
  auto state = gqa::dgqa_state::initial(5, 4);
  gqa::dgqa_options opt;
  opt.seed = 1234;
  opt.layer = 3;
  gqa::dgqa_policy p(opt, state);
  p.plan(kk.q, kk.k);
  const ints a = p.last().alloc;
  EXPECT_EQ(a[3], 0);  // a miss on the empty slot is retried, never decremented below 0
  EXPECT_EQ(a[0] + a[1] + a[2], 5);
  EXPECT_EQ(*std::min_element(a.begin(), a.begin() + 3), 1);
  EXPECT_GE(state.rng_counter, 1u);
  // Exactly the draws of random::stream{seed, dgqa_stream_key(layer), 0}.
  gqa::random::stream rng{1234, gqa::dgqa_stream_key(3), 0};
  ints want = {2, 2, 2, 0};
  gqa::fix_sum_random(want, 5, rng);
  EXPECT_EQ(a, want);
  EXPECT_EQ(state.rng_counter, rng.counter);
}

TEST(dgqa, hamilton_repair_is_deterministic_and_draws_nothing) {
  const keys kk({8, 8, 9, 0}, 5);
  auto state = gqa::dgqa_state::initial(5, 4);
  gqa::dgqa_options opt;
  opt.repair = gqa::dgqa_repair::hamilton;
  gqa::dgqa_policy p(opt, state);
  p.plan(kk.q, kk.k);
  // floors {1, 1, 1, 0}, 2 seats: .8 (index 2), then the first .6 (index 0).
  EXPECT_EQ(p.last().alloc, (ints{2, 1, 2, 0}));
  EXPECT_EQ(state.rng_counter, 0u);
}

TEST(dgqa, cache_update_options) {
  const keys kk({3, 4, 5, 6}, 8);
  for (auto mode : {gqa::dgqa_mode::train, gqa::dgqa_mode::eval}) {
    auto s1 = gqa::dgqa_state::initial(8, 4), s2 = s1;
    s1.cache = s2.cache = {10, 10, 10, 10};
    gqa::dgqa_options o1, o2;
    o1.cache_update = gqa::dgqa_cache_update::prev_window;
    o2.cache_update = gqa::dgqa_cache_update::true_ema;
    o1.window = o2.window = 5;
    gqa::dgqa_policy p1(o1, s1), p2(o2, s2);
    p1.set_mode(mode);
    p2.set_mode(mode);
    p1.set_step(0);
    p2.set_step(0);
    p1.plan(kk.q, kk.k);
    p2.plan(kk.q, kk.k);
    EXPECT_EQ(s1.cache, (floats{3, 4, 5, 6}));  // m, in train and eval
    // 0.9f · 10 + 0.1f · m in float32 (the weights are float(0.9) and float(1 - 0.9) = 0.1f, as torch
    // rounds the authors' Python constants; each product and the sum rounded to float).
    for (std::size_t g = 0; g < 4; ++g) {
      const volatile float old_part = 0.9f * 10.0f, new_part = 0.1f * (3.0f + static_cast<float>(g));
      EXPECT_EQ(s2.cache[g], old_part + new_part);
    }
  }
  // The reference rule: train divides by W, eval does not.
  auto s = gqa::dgqa_state::initial(8, 4);
  gqa::dgqa_options o;
  o.window = 5;
  gqa::dgqa_policy p(o, s);
  p.plan(kk.q, kk.k);
  EXPECT_EQ(s.cache, (floats{3, 4, 5, 6}));
  p.set_mode(gqa::dgqa_mode::train);
  p.set_step(10);
  p.plan(kk.q, kk.k);
  EXPECT_EQ(s.cache, (floats{6.0f / 5, 8.0f / 5, 10.0f / 5, 12.0f / 5}));
}

// Runs `n` eval plans on random keys (seeds from `first`), returning every allocation and counter.
std::vector<ints> run_eval(gqa::dgqa_policy& p, std::uint64_t first, int n) {
  std::vector<ints> out;
  for (int i = 0; i < n; ++i) {
    const random_keys rk(2, 5, 12, 5, 4, first + static_cast<std::uint64_t>(i));
    out.push_back(p.plan(rk.q, rk.k).allocation());
    out.back().push_back(static_cast<int>(p.state().rng_counter));
  }
  return out;
}

// The state is plain data; restoring it replays the same draws and allocations.
TEST(dgqa, saved_state_replays_identical_draws) {
  auto state = gqa::dgqa_state::initial(12, 5);
  gqa::dgqa_options opt;
  opt.seed = 99;
  gqa::dgqa_policy p(opt, state);
  run_eval(p, 500, 10);
  const gqa::dgqa_state saved = state;
  const auto first = run_eval(p, 600, 20);
  EXPECT_GT(state.rng_counter, saved.rng_counter);  // the random repair did run
  state = saved;
  EXPECT_EQ(run_eval(p, 600, 20), first);
  // A fresh policy over a restored copy (as after loading a checkpoint) replays too.
  gqa::dgqa_state loaded = saved;
  gqa::dgqa_policy q(opt, loaded);
  EXPECT_EQ(run_eval(q, 600, 20), first);
}

TEST(dgqa, same_seed_same_bits_other_seed_or_layer_differs) {
  auto run = [](std::uint64_t seed, std::uint64_t layer) {
    auto state = gqa::dgqa_state::initial(12, 5);
    gqa::dgqa_options opt;
    opt.seed = seed;
    opt.layer = layer;
    gqa::dgqa_policy p(opt, state);
    auto seq = run_eval(p, 700, 30);
    seq.emplace_back(state.cache.size());
    std::memcpy(seq.back().data(), state.cache.data(), state.cache.size() * sizeof(float));
    return seq;
  };
  const auto a = run(5, 0);
  EXPECT_EQ(run(5, 0), a);
  EXPECT_NE(run(6, 0), a);
  EXPECT_NE(run(5, 1), a);
}

// Policy vs reference::dgqa_step over mixed train/eval sequences, for every option combination and both
// arithmetics.
TEST(dgqa, policy_matches_reference_transcription) {
  int updates = 0, repairs = 0, fallbacks = 0;
  for (int kind = 0; kind < 2; ++kind)
    for (int repair = 0; repair < 2; ++repair)
      for (int cu = 0; cu < 3; ++cu)
        for (int eval_updates = 0; eval_updates < 2; ++eval_updates)
        for (int f64 = 0; f64 < 2; ++f64) {
          const index_t hq = 12, hkv = 5;
          gqa::dgqa_options opt;
          opt.kind = static_cast<gqa::dgqa_kind>(kind);
          opt.repair = static_cast<gqa::dgqa_repair>(repair);
          opt.cache_update = static_cast<gqa::dgqa_cache_update>(cu);
          opt.eval_updates_state = eval_updates != 0;
          opt.window = 2;
          opt.beta = 0.8;
          opt.seed = 17;
          opt.layer = 4;
          opt.arithmetic = f64 ? gqa::allocation_arithmetic::float64 : gqa::allocation_arithmetic::float32;
          gqa::reference::dgqa_setup setup;
          setup.float64 = f64 != 0;
          setup.ema = kind == 1;
          setup.hamilton = repair == 1;
          setup.cache_update = cu == 0 ? "reference" : cu == 1 ? "prev_window" : "true_ema";
          setup.eval_updates_state = opt.eval_updates_state;
          setup.window = 2;
          setup.beta = 0.8;
          setup.seed = 17;
          setup.layer = 4;
          auto state = gqa::dgqa_state::initial(hq, hkv);
          gqa::reference::dgqa_memory mem{state.cache, state.splits, state.rng_counter};
          gqa::dgqa_policy p(opt, state);
          for (std::uint64_t call = 0; call < 16; ++call) {
            const bool train = call < 6 || call >= 10;
            p.set_mode(train ? gqa::dgqa_mode::train : gqa::dgqa_mode::eval);
            p.set_step(call);
            // Call 9 repeats call 8's keys (eval: cache = m, so diff scores are 0); calls 12 and 14 repeat
            // call 10's (train updates: prev_window stores m, so diff scores are 0 again).
            const std::uint64_t key_seed = call == 9 ? 8 : (call == 12 || call == 14) ? 10 : call;
            const random_keys rk(2, 7, hq, hkv, 6, 900 + key_seed);
            const auto map = p.plan(rk.q, rk.k);
            const auto ref = gqa::reference::dgqa_step(mem, rk.k, hq, setup, train, call);
            ASSERT_EQ(p.last().alloc, ref.alloc) << "call " << call << " kind " << kind << " repair " << repair << " cu " << cu
                                                 << " float64 " << f64;
            EXPECT_EQ(std::vector<index_t>(map.kv_of_q().begin(), map.kv_of_q().end()), ref.kv_of_q);
            EXPECT_EQ(gqa::to_string(p.last().status), ref.status);
            EXPECT_EQ(gqa::to_string(p.last().fallback), ref.fallback);
            EXPECT_EQ(p.last().updated, ref.updated);
            ASSERT_EQ(0, std::memcmp(state.cache.data(), mem.cache.data(), state.cache.size() * sizeof(float)));
            EXPECT_EQ(state.splits, mem.splits);
            EXPECT_EQ(state.rng_counter, mem.rng_counter);
            updates += ref.updated;
            fallbacks += ref.status != "ok";
          }
          repairs += state.rng_counter > 0;
        }
  EXPECT_GT(updates, 400);
  EXPECT_GT(repairs, 8);
  EXPECT_GT(fallbacks, 0);
}

TEST(dgqa, options_errors_name_the_option) {
  auto state = gqa::dgqa_state::initial(4, 2);
  auto with = [&](auto edit) {
    gqa::dgqa_options o;
    edit(o);
    return [o, &state] { gqa::dgqa_policy p(o, state); };
  };
  expect_invalid(with([](auto& o) { o.window = 0; }), "gqa::dgqa_policy: options.window = 0: must be >= 1");
  expect_invalid(with([](auto& o) { o.window = -3; }), "options.window = -3");
  expect_invalid(with([](auto& o) { o.beta = std::nanf(""); }), "gqa::dgqa_policy: options.beta = nan: must be in [0, 1]");
  expect_invalid(with([](auto& o) { o.beta = -0.1f; }), "options.beta = -0.1");
  expect_invalid(with([](auto& o) { o.beta = 1.5f; }), "options.beta = 1.5");
  expect_invalid(with([](auto& o) { o.kind = static_cast<gqa::dgqa_kind>(9); }), "options.kind = 9");
  expect_invalid(with([](auto& o) { o.repair = static_cast<gqa::dgqa_repair>(9); }), "options.repair = 9");
  expect_invalid(with([](auto& o) { o.cache_update = static_cast<gqa::dgqa_cache_update>(9); }), "options.cache_update = 9");
  expect_invalid(with([](auto& o) { o.arithmetic = static_cast<gqa::allocation_arithmetic>(5); }), "options.arithmetic = 5");
  gqa::dgqa_policy p({}, state);
  expect_invalid([&] { p.set_mode(static_cast<gqa::dgqa_mode>(9)); }, "gqa::dgqa_policy::set_mode: mode = 9");
}

TEST(dgqa, state_and_call_errors_name_the_argument_and_change_nothing) {
  const index_t b = 1, s = 3, d = 4;
  const auto q = gqa::test::random_floats(static_cast<std::size_t>(b * s * 8 * d), 1);
  const auto k = gqa::test::random_floats(static_cast<std::size_t>(b * s * 9 * d), 2);
  std::vector<float> o(q.size());
  const auto q8 = gqa::bshd<const float>(q.data(), b, s, 8, d);
  const auto k4 = gqa::bshd<const float>(k.data(), b, s, 4, d);
  const auto o8 = gqa::bshd(o.data(), b, s, 8, d);
  auto state = gqa::dgqa_state::initial(8, 4);
  gqa::dgqa_policy p({}, state);
  auto expect_all = [&](const std::string& needle) {
    const gqa::dgqa_state before = state;
    expect_invalid([&] { p.check(q8, k4, k4, o8); }, needle);
    expect_invalid([&] { p.plan(q8, k4); }, needle);
    expect_invalid([&] { gqa::forward(p, q8, k4, k4, o8); }, needle);
    ASSERT_EQ(state.cache.size(), before.cache.size());  // bits: the cache may hold the NaN under test
    EXPECT_EQ(0, std::memcmp(state.cache.data(), before.cache.data(), state.cache.size() * sizeof(float)));
    EXPECT_EQ(state.splits, before.splits);
    EXPECT_EQ(state.rng_counter, before.rng_counter);
    EXPECT_TRUE(p.last().alloc.empty());
  };
  expect_invalid([&] { p.plan(q8, gqa::bshd<const float>(k.data(), b, s, 9, d)); }, "gqa::dgqa_policy: k.h = 9: must be <= q.h = 8");
  state.cache = {0, 0, 0};
  expect_all("gqa::dgqa_policy: state.cache.size() = 3: must equal k.h = 4");
  state = gqa::dgqa_state::initial(8, 4);
  state.splits = {4, 4};
  expect_all("gqa::dgqa_policy: state.splits.size() = 2: must equal k.h = 4");
  state.splits = {3, 3, 3, -1};
  expect_all("gqa::dgqa_policy: state.splits[3] = -1: must be >= 0");
  state.splits = {3, 3, 3, 3};  // a state saved for hq = 12
  expect_all("gqa::dgqa_policy: sum(state.splits) = 12: must equal q.h = 8");
  state.splits = {2, 2, 2, 2};
  state.cache = {0, std::nanf(""), 0, 0};
  expect_all("gqa::dgqa_policy: state.cache[1] = nan: must be >= 0");
  state.cache = {0, 0, -1, 0};
  expect_all("state.cache[2] = -1: must be >= 0");
  state.cache = {0, 0, 0, 0};
  p.set_mode(gqa::dgqa_mode::train);
  expect_all("gqa::dgqa_policy: step = (unset): call set_step(step)");
  p.set_step(0);
  expect_invalid([&] { p.plan(q8, gqa::bshd<const float>(nullptr, b, s, 4, d)); }, "gqa::key_norms: k.data = nullptr");
  // A bad attention argument throws in forward before plan(): the state is untouched.
  const gqa::dgqa_state before = state;
  expect_invalid([&] { gqa::forward(p, q8, k4, gqa::bshd<const float>(k.data(), b, s, 4, 3), o8); }, "o.d = 4: must equal v.d = 3");
  EXPECT_EQ(state.cache, before.cache);
  EXPECT_TRUE(p.last().alloc.empty());
  gqa::forward(p, q8, k4, k4, o8);
  EXPECT_FALSE(p.last().alloc.empty());
}

}  // namespace
