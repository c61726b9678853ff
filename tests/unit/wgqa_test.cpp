// wgqa_test.cpp: WGQA outside the ISA sweep: the weights (mean init = 1/s so that step 0 is GQA mean
// pooling; random init from gqa's seeded normal generator; the paper's parameter counts), the
// policy's plan and prepare on small hand-checkable inputs, and every error message. The per-ISA forward
// and the fold end to end are in suites/wgqa_suite.hpp; the fold's weights in convert_test.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <gqa/gqa.hpp>

#include "support/data.hpp"
#include "support/expect.hpp"

namespace {

using gqa::index_t;
using gqa::test::expect_invalid;
using gqa::wgqa_kind;
using gqa::wgqa_weights;

constexpr wgqa_kind all_kinds[] = {wgqa_kind::scalar, wgqa_kind::col, wgqa_kind::row};

TEST(wgqa_weights, mean_init_is_one_over_the_group_size) {
  const index_t hq = 12, hkv = 4, d = 8, dm = 20;  // s = 3
  const std::size_t sizes[] = {12, 12 * 8, 12 * 20};
  for (int i = 0; i < 3; ++i) {
    const auto w = wgqa_weights::mean_init(all_kinds[i], hq, hkv, d, dm);
    EXPECT_EQ(w.kind, all_kinds[i]);
    EXPECT_EQ(w.k.size(), sizes[i]);
    EXPECT_EQ(w.v.size(), sizes[i]);
    EXPECT_EQ(w.parameter_count(), static_cast<index_t>(2 * sizes[i]));
    for (const float x : w.k) EXPECT_EQ(x, 1.0f / 3.0f);
    EXPECT_EQ(w.k, w.v);
  }
}

// Parameters added per attention module are 2H (scalar), 2·H·d (col), 2·H·D (row). T5-base decoder:
// 12 layers × (self + cross attention) = 24 modules, H = 12, d = 64, D = 768 -> 576 / 36,864 / 442,368, the
// paper's numbers. T5-small course version (6 layers, H = 8, scalar): 192.
TEST(wgqa_weights, parameter_counts_match_the_paper) {
  EXPECT_EQ(24 * gqa::wgqa_parameter_count(wgqa_kind::scalar, 12, 64, 768), 576);
  EXPECT_EQ(24 * gqa::wgqa_parameter_count(wgqa_kind::col, 12, 64, 768), 36864);
  EXPECT_EQ(24 * gqa::wgqa_parameter_count(wgqa_kind::row, 12, 64, 768), 442368);
  EXPECT_EQ(12 * gqa::wgqa_parameter_count(wgqa_kind::scalar, 8, 64, 512), 192);
  for (const auto kind : all_kinds) {
    const auto w = wgqa_weights::mean_init(kind, 12, 6, 64, 768);  // G = H/2 as in the paper
    EXPECT_EQ(w.parameter_count(), static_cast<index_t>(w.k.size() + w.v.size()));
    EXPECT_EQ(w.parameter_count(), gqa::wgqa_parameter_count(kind, 12, 64, 768));
  }
}

// Random init (the authors' torch.randn): N(0,1) draws; here from random::stream{seed, 0} (k) and {seed, 1}
// (v), reproducible.
TEST(wgqa_weights, random_init_is_a_seeded_standard_normal) {
  const auto a = wgqa_weights::random_init(wgqa_kind::row, 12, 4, 64, 768, 2024);
  const auto b = wgqa_weights::random_init(wgqa_kind::row, 12, 4, 64, 768, 2024);
  const auto c = wgqa_weights::random_init(wgqa_kind::row, 12, 4, 64, 768, 2025);
  EXPECT_EQ(a.k, b.k);
  EXPECT_EQ(a.v, b.v);
  EXPECT_NE(a.k, c.k);
  EXPECT_NE(a.k, a.v);
  gqa::random::stream sk{2024, 0, 0}, sv{2024, 1, 0};
  for (std::size_t i = 0; i < a.k.size(); ++i) ASSERT_EQ(a.k[i], static_cast<float>(sk.next_normal())) << i;
  for (std::size_t i = 0; i < a.v.size(); ++i) ASSERT_EQ(a.v[i], static_cast<float>(sv.next_normal())) << i;
  // Moments of n = 9,216 draws: the sample mean has sd 1/√n ≈ 0.0104, the sample variance sd √(2/n) ≈ 0.0147;
  // 4 sd bounds.
  const double n = static_cast<double>(a.k.size());
  double sum = 0.0, ss = 0.0;
  for (const float x : a.k) sum += x;
  for (const float x : a.k) ss += (x - sum / n) * (x - sum / n);
  EXPECT_NEAR(sum / n, 0.0, 0.042);
  EXPECT_NEAR(ss / (n - 1), 1.0, 0.059);
  // Smaller kinds take a prefix of the same streams.
  const auto s = wgqa_weights::random_init(wgqa_kind::scalar, 12, 4, 64, 768, 2024);
  EXPECT_EQ(s.k, std::vector<float>(a.k.begin(), a.k.begin() + 12));
}

// plan: uniform contiguous groups over the hkv combined heads (map[h] = h / (hq/hkv)).
TEST(wgqa_policy, plans_uniform_groups) {
  gqa::wgqa_policy p(wgqa_weights::mean_init(wgqa_kind::scalar, 8, 2, 4, 16));
  EXPECT_EQ(gqa::wgqa_policy::name, "wgqa");
  std::vector<float> dummy(8 * 4);
  const auto q = gqa::bshd<const float>(dummy.data(), 1, 1, 8, 4);
  const auto kc = gqa::bshd<const float>(dummy.data(), 1, 1, 2, 4);
  EXPECT_EQ(p.plan(q, kc), gqa::head_map::uniform(8, 2));
  EXPECT_EQ(p.weights().hkv, 2);
}

// A hand-checked combination: H = 4, G = 2, d = 2, one token. Scalar: K̃_0 = w0·K0 + w1·K1; col: per channel.
TEST(wgqa_policy, prepare_combines_heads_by_hand) {
  const std::vector<float> k = {1, 2, 3, 4, 5, 6, 7, 8};  // heads (1,2) (3,4) (5,6) (7,8)
  const std::vector<float> v = {-1, 0, 0, 1, 2, 2, 4, -4};
  wgqa_weights ws{wgqa_kind::scalar, 4, 2, 2, 3, {1.0f, 0.5f, -2.0f, 0.25f}, {0.0f, 1.0f, 1.0f, 1.0f}};
  gqa::wgqa_policy ps(ws);
  auto kv = ps.prepare(gqa::bshd<const float>(k.data(), 1, 1, 4, 2), gqa::bshd<const float>(v.data(), 1, 1, 4, 2));
  ASSERT_EQ(kv.k.h, 2);
  ASSERT_EQ(kv.k.d, 2);
  const float ks[] = {1 + 1.5f, 2 + 2.0f, -10 + 1.75f, -12 + 2.0f};
  const float vs[] = {0, 1, 6, -2};
  for (int g = 0; g < 2; ++g)
    for (int c = 0; c < 2; ++c) {
      EXPECT_EQ(kv.k(0, 0, g, c), ks[g * 2 + c]) << g << " " << c;
      EXPECT_EQ(kv.v(0, 0, g, c), vs[g * 2 + c]) << g << " " << c;
    }
  wgqa_weights wc{wgqa_kind::col, 4, 2, 2, 3, {1, 0, 0, 1, 2, 3, 0.5f, -1}, {1, 1, 1, 1, 1, 1, 1, 1}};
  gqa::wgqa_policy pc(wc);
  kv = pc.prepare(gqa::bshd<const float>(k.data(), 1, 1, 4, 2), gqa::bshd<const float>(v.data(), 1, 1, 4, 2));
  const float kc[] = {1 * 1 + 0 * 3, 0 * 2 + 1 * 4, 2 * 5 + 0.5f * 7, 3 * 6 - 1 * 8};
  const float vc[] = {-1, 1, 6, -2};
  for (int g = 0; g < 2; ++g)
    for (int c = 0; c < 2; ++c) {
      EXPECT_EQ(kv.k(0, 0, g, c), kc[g * 2 + c]) << g << " " << c;
      EXPECT_EQ(kv.v(0, 0, g, c), vc[g * 2 + c]) << g << " " << c;
    }
}

// With the mean init, step 0 is GQA mean pooling of the per-head K/V. For s a power of two, w = 1/s is
// exact and so is the comparison (Σ w·K_j = (Σ K_j)/s in double, rounded once); for other s, w = fl(1/s)
// has relative error ≤ 2⁻²⁴, so the pooled value may differ by that plus its own rounding: ≤ 2⁻²³·Σ|K_j|/s.
TEST(wgqa_policy, mean_init_is_gqa_mean_pooling) {
  const index_t b = 2, t = 5, hq = 12, d = 6;
  const auto k = gqa::test::random_floats(static_cast<std::size_t>(b * t * hq * d), 41);
  const auto v = gqa::test::random_floats(static_cast<std::size_t>(b * t * hq * d), 42);
  for (const auto kind : {wgqa_kind::scalar, wgqa_kind::col})
    for (const index_t hkv : {12, 6, 3, 4, 2, 1}) {
      const index_t s = hq / hkv;
      const bool exact = (s & (s - 1)) == 0;
      SCOPED_TRACE(testing::Message() << gqa::to_string(kind) << " s = " << s);
      gqa::wgqa_policy p(wgqa_weights::mean_init(kind, hq, hkv, d, 10));
      const auto kv = p.prepare(gqa::bshd<const float>(k.data(), b, t, hq, d), gqa::bshd<const float>(v.data(), b, t, hq, d));
      const std::vector<float>* src[2] = {&k, &v};
      for (int which = 0; which < 2; ++which) {
        const auto in = gqa::bshd<const float>(src[which]->data(), b, t, hq, d);
        const auto& out = which == 0 ? kv.k : kv.v;
        for (index_t ib = 0; ib < b; ++ib)
          for (index_t it = 0; it < t; ++it)
            for (index_t g = 0; g < hkv; ++g)
              for (index_t c = 0; c < d; ++c) {
                double sum = 0.0, abs_sum = 0.0;
                for (index_t j = g * s; j < (g + 1) * s; ++j) {
                  sum += in(ib, it, j, c);
                  abs_sum += std::fabs(in(ib, it, j, c));
                }
                const auto pooled = static_cast<float>(sum / static_cast<double>(s));
                if (exact) {
                  ASSERT_EQ(out(ib, it, g, c), pooled);
                } else {
                  ASSERT_NEAR(out(ib, it, g, c), pooled, 0x1p-23 * abs_sum / static_cast<double>(s));
                }
              }
      }
    }
}

// The combined buffers are re-used: a second prepare with other shapes gives fresh, correct views.
TEST(wgqa_policy, prepare_reuses_its_buffers_safely) {
  gqa::wgqa_policy p(wgqa_weights::mean_init(wgqa_kind::scalar, 4, 2, 2, 3));
  const std::vector<float> a(2 * 3 * 4 * 2, 1.0f), b1(1 * 1 * 4 * 2, 3.0f);
  auto kv = p.prepare(gqa::bshd<const float>(a.data(), 2, 3, 4, 2), gqa::bshd<const float>(a.data(), 2, 3, 4, 2));
  EXPECT_EQ(kv.k.b, 2);
  EXPECT_EQ(kv.k.s, 3);
  EXPECT_EQ(kv.k(1, 2, 1, 1), 1.0f);
  kv = p.prepare(gqa::bshd<const float>(b1.data(), 1, 1, 4, 2), gqa::bshd<const float>(b1.data(), 1, 1, 4, 2));
  EXPECT_EQ(kv.k.b, 1);
  EXPECT_EQ(kv.k(0, 0, 1, 1), 3.0f);
  EXPECT_EQ(kv.v(0, 0, 0, 0), 3.0f);
}

// --- errors ---

TEST(wgqa_errors, weights_are_validated) {
  EXPECT_THROWS_WITH((void)wgqa_weights::mean_init(wgqa_kind::scalar, 8, 3, 4, 16),
                     "gqa::wgqa_weights::mean_init: hkv = 3: must divide hq = 8");
  EXPECT_THROWS_WITH((void)wgqa_weights::mean_init(wgqa_kind::col, 0, 1, 4, 16), "gqa::wgqa_weights::mean_init: hq = 0: must be positive");
  EXPECT_THROWS_WITH((void)wgqa_weights::mean_init(wgqa_kind::col, 4, 0, 4, 16), "gqa::wgqa_weights::mean_init: hkv = 0: must be positive");
  EXPECT_THROWS_WITH((void)wgqa_weights::mean_init(wgqa_kind::col, 4, 2, 0, 16), "gqa::wgqa_weights::mean_init: d = 0: must be positive");
  EXPECT_THROWS_WITH((void)wgqa_weights::random_init(wgqa_kind::row, 4, 2, 4, -1, 0),
                     "gqa::wgqa_weights::random_init: model_dim = -1: must be positive");
  EXPECT_THROWS_WITH((void)wgqa_weights::mean_init(static_cast<wgqa_kind>(9), 4, 2, 4, 8),
                     "gqa::wgqa_weights::mean_init: kind = 9: must be wgqa_kind::scalar, col or row");
  // volatile: at -O3 GCC propagates these constants into the (unreachable) allocation and warns.
  volatile index_t huge = index_t{1} << 40;
  EXPECT_THROWS_WITH((void)wgqa_weights::mean_init(wgqa_kind::row, 1 << 20, 1, 1 << 20, huge),
                     "gqa::wgqa_weights::mean_init: hq * d * model_dim overflows");

  auto w = wgqa_weights::mean_init(wgqa_kind::col, 4, 2, 3, 5);
  w.k.pop_back();
  EXPECT_THROWS_WITH(gqa::wgqa_policy{w}, "gqa::wgqa_policy: weights.k.size() = 11: must be 12 for kind col (hq * d)");
  w = wgqa_weights::mean_init(wgqa_kind::scalar, 4, 2, 3, 5);
  w.v.push_back(1.0f);
  EXPECT_THROWS_WITH(gqa::wgqa_policy{w}, "gqa::wgqa_policy: weights.v.size() = 5: must be 4 for kind scalar (hq)");
  w = wgqa_weights::mean_init(wgqa_kind::scalar, 4, 2, 3, 5);
  w.k[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROWS_WITH(gqa::wgqa_policy{w}, "gqa::wgqa_policy: weights.k[3] = nan: must be finite");
  w.k[3] = 0.5f;
  w.v[0] = -std::numeric_limits<float>::infinity();
  EXPECT_THROWS_WITH(gqa::wgqa_policy{w}, "gqa::wgqa_policy: weights.v[0] = -inf: must be finite");
  w = wgqa_weights::mean_init(wgqa_kind::scalar, 4, 2, 3, 5);
  w.hkv = 3;
  EXPECT_THROWS_WITH(gqa::wgqa_policy{w}, "gqa::wgqa_policy: weights.hkv = 3: must divide weights.hq = 4");
}

TEST(wgqa_errors, calls_are_validated) {
  const index_t b = 1, t = 2, hq = 4, d = 3;
  std::vector<float> q(static_cast<std::size_t>(b * t * hq * d), 0.1f), kv(q.size(), 0.2f), o(q.size());
  const auto qv = gqa::bshd<const float>(q.data(), b, t, hq, d);
  const auto kvv = gqa::bshd<const float>(kv.data(), b, t, hq, d);
  const auto ov = gqa::bshd(o.data(), b, t, hq, d);

  gqa::wgqa_policy row(wgqa_weights::mean_init(wgqa_kind::row, hq, 2, d, 8));
  expect_invalid([&] { gqa::forward(row, qv, kvv, kvv, ov); },
                 {"gqa::wgqa_policy: weights.kind = row: row weights scale the projection's input features", "gqa::wgqa_fold"});
  EXPECT_THROWS_WITH((void)row.prepare(kvv, kvv), "weights.kind = row");

  gqa::wgqa_policy p8(wgqa_weights::mean_init(wgqa_kind::scalar, 8, 2, d, 8));
  EXPECT_THROWS_WITH(gqa::forward(p8, qv, kvv, kvv, ov), "gqa::wgqa_policy: k.h = 4: must equal weights.hq = 8");
  gqa::wgqa_policy pd(wgqa_weights::mean_init(wgqa_kind::col, hq, 2, 5, 8));
  EXPECT_THROWS_WITH(gqa::forward(pd, qv, kvv, kvv, ov), "gqa::wgqa_policy: k.d = 3: must equal weights.d = 5");
  gqa::wgqa_policy p3(wgqa_weights::mean_init(wgqa_kind::scalar, 6, 3, d, 8));
  std::vector<float> k6(static_cast<std::size_t>(b * t * 6 * d), 0.3f);
  const auto k6v = gqa::bshd<const float>(k6.data(), b, t, 6, d);
  EXPECT_THROWS_WITH(gqa::forward(p3, qv, k6v, k6v, ov), "gqa::wgqa_policy: q.h = 4: must be a multiple of weights.hkv = 3");
  std::vector<float> v5(static_cast<std::size_t>(b * t * hq * 5), 0.3f);
  gqa::wgqa_policy p(wgqa_weights::mean_init(wgqa_kind::scalar, hq, 2, d, 8));
  EXPECT_THROWS_WITH((void)p.prepare(kvv, gqa::bshd<const float>(v5.data(), b, t, hq, 5)),
                     "gqa::wgqa_policy: v.d = 5: must equal weights.d = 3");
  EXPECT_THROWS_WITH((void)p.prepare(kvv, gqa::bshd<const float>(v5.data(), b, 1, hq, d)),
                     "gqa::wgqa_policy: v.s = 1: must equal k.s = 2");
}

}  // namespace
