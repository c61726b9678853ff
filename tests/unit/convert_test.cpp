// convert_test.cpp: checkpoint conversion (gqa/convert.hpp). MHA -> GQA/MQA mean pooling: hand-worked
// examples, agreement with the literal transcription (reference/convert.hpp), the fact that pooling the
// weights equals pooling the activations (the projection is linear), H % G != 0 rejected. The WGQA fold:
// against the reference einsums for every kind, the fold identity (folded projection ==
// unfolded per-head form), mean init folding to mean pooling, biases. Every error message.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <gqa/convert.hpp>
#include <gqa/reference/convert.hpp>
#include <gqa/reference/wgqa.hpp>

#include "support/data.hpp"
#include "support/expect.hpp"

namespace {

using gqa::index_t;
using gqa::wgqa_kind;
using gqa::wgqa_weights;

std::vector<double> widen(const std::vector<float>& x) { return {x.begin(), x.end()}; }
std::vector<double> abs_of(const std::vector<float>& x) {
  std::vector<double> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = std::fabs(static_cast<double>(x[i]));
  return out;
}

// Mean pooling by hand. H = 4, G = 2, d = 1, D = 2: rows (1,2) (3,4) (5,6) (7,8) -> means (2,3) (6,7); MQA:
// (4,5).
TEST(convert, mean_pool_by_hand) {
  const std::vector<float> w = {1, 2, 3, 4, 5, 6, 7, 8};
  EXPECT_EQ(gqa::mean_pool_heads(w, 4, 2, 1, 2), (std::vector<float>{2, 3, 6, 7}));
  EXPECT_EQ(gqa::mean_pool_heads(w, 4, 1, 1, 2), (std::vector<float>{4, 5}));
  EXPECT_EQ(gqa::mean_pool_heads(w, 4, 4, 1, 2), w);  // G = H: MHA unchanged
  EXPECT_EQ(gqa::mean_pool_bias(std::vector<float>{1, 2, 3, 4}, 4, 2, 1), (std::vector<float>{1.5f, 3.5f}));
  // Heads are row blocks of d rows (the (out, in) layout): H = 2, d = 2, D = 1 gives [(1+3)/2, (2+4)/2],
  // not the [(1+2)/2, (3+4)/2] of the wrong (D, H, d) reshape the reference code warns about (gqa.py:84).
  EXPECT_EQ(gqa::mean_pool_heads(std::vector<float>{1, 2, 3, 4}, 2, 1, 2, 1), (std::vector<float>{2, 3}));
  // H = 6, G = 2, s = 3: a mean of three.
  const std::vector<float> w6 = {3, 0, 6, 0, 0, 3, 1, 1, 1, 1, 1, 4};
  EXPECT_EQ(gqa::mean_pool_heads(w6, 6, 2, 1, 2), (std::vector<float>{3, 1, 1, 2}));
}

// Against reference::mean_pool (view -> split -> mean -> cat) for every G dividing H = 12. Both sum in
// double and divide by s; the library then rounds once: ≤ 2⁻²⁴·|ref|.
TEST(convert, mean_pool_matches_reference) {
  const index_t h = 12, d = 8, dm = 20;
  const auto w = gqa::test::random_floats(static_cast<std::size_t>(h * d * dm), 71);
  const auto b = gqa::test::random_floats(static_cast<std::size_t>(h * d), 72);
  for (const index_t g : {1, 2, 3, 4, 6, 12}) {
    SCOPED_TRACE(g);
    const auto got = gqa::mean_pool_heads(w, h, g, d, dm);
    const auto ref = gqa::reference::mean_pool(widen(w), h, g, d, dm);
    ASSERT_EQ(got.size(), ref.size());
    for (std::size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(got[i], ref[i], 0x1p-24 * std::fabs(ref[i])) << i;
    const auto gb = gqa::mean_pool_bias(b, h, g, d);
    const auto rb = gqa::reference::mean_pool(widen(b), h, g, d, 1);
    for (std::size_t i = 0; i < rb.size(); ++i) ASSERT_NEAR(gb[i], rb[i], 0x1p-24 * std::fabs(rb[i])) << i;
  }
}

// The projection is linear, so X·W_gᵀ + b_g with pooled weights equals the mean over the group
// of the per-head projections X·W_jᵀ + b_j. Checked in double from the float pooled weights: the only
// difference is the rounding of W_g and b_g (≤ 2⁻²⁴ relative each), so |Δ| ≤ 2⁻²⁴·(Σ_c |x_c||W_g[k,c]| + |b_g[k]|)
// plus double rounding.
TEST(convert, pooling_weights_equals_pooling_activations) {
  const index_t h = 8, d = 4, dm = 16, rows = 10;
  const auto x = gqa::test::random_floats(static_cast<std::size_t>(rows * dm), 73, -2.0f, 2.0f);
  gqa::kv_projection mha{gqa::test::random_floats(static_cast<std::size_t>(h * d * dm), 74),
                         gqa::test::random_floats(static_cast<std::size_t>(h * d), 75),
                         gqa::test::random_floats(static_cast<std::size_t>(h * d * dm), 76), {}};
  for (const index_t g : {1, 2, 4}) {
    const index_t s = h / g;
    const auto conv = gqa::convert_mha_to_gqa(mha, h, g, d, dm);
    EXPECT_TRUE(conv.b_v.empty());  // no bias in, no bias out
    ASSERT_EQ(conv.w_k.size(), static_cast<std::size_t>(g * d * dm));
    ASSERT_EQ(conv.b_k.size(), static_cast<std::size_t>(g * d));
    EXPECT_EQ(conv.w_k, gqa::mean_pool_heads(mha.w_k, h, g, d, dm));
    EXPECT_EQ(conv.w_v, gqa::mean_pool_heads(mha.w_v, h, g, d, dm));
    EXPECT_EQ(conv.b_k, gqa::mean_pool_bias(mha.b_k, h, g, d));
    for (index_t r = 0; r < rows; ++r)
      for (index_t gi = 0; gi < g; ++gi)
        for (index_t k = 0; k < d; ++k) {
          double pooled_w = conv.b_k[static_cast<std::size_t>(gi * d + k)], mag = std::fabs(pooled_w);
          for (index_t c = 0; c < dm; ++c) {
            const double term = double(x[static_cast<std::size_t>(r * dm + c)]) * conv.w_k[static_cast<std::size_t>((gi * d + k) * dm + c)];
            pooled_w += term;
            mag += std::fabs(term);
          }
          double pooled_act = 0.0;
          for (index_t j = gi * s; j < (gi + 1) * s; ++j) {
            double kj = mha.b_k[static_cast<std::size_t>(j * d + k)];
            for (index_t c = 0; c < dm; ++c)
              kj += double(x[static_cast<std::size_t>(r * dm + c)]) * mha.w_k[static_cast<std::size_t>((j * d + k) * dm + c)];
            pooled_act += kj;
          }
          pooled_act /= static_cast<double>(s);
          ASSERT_NEAR(pooled_w, pooled_act, 0x1p-24 * mag + 1e-12) << g << " " << r << " " << gi << " " << k;
        }
  }
}

TEST(convert, errors_name_the_argument) {
  const std::vector<float> w(8 * 2 * 3, 0.5f), b(8 * 2, 0.5f);
  EXPECT_THROWS_WITH((void)gqa::mean_pool_heads(w, 8, 3, 2, 3), "gqa::mean_pool_heads: groups = 3: must divide heads = 8");
  EXPECT_THROWS_WITH((void)gqa::mean_pool_bias(b, 8, 3, 2), "gqa::mean_pool_bias: groups = 3: must divide heads = 8");
  EXPECT_THROWS_WITH((void)gqa::mean_pool_heads(w, 0, 1, 2, 3), "gqa::mean_pool_heads: heads = 0: must be positive");
  EXPECT_THROWS_WITH((void)gqa::mean_pool_heads(w, 8, 0, 2, 3), "gqa::mean_pool_heads: groups = 0: must be positive");
  EXPECT_THROWS_WITH((void)gqa::mean_pool_heads(w, 8, 2, 0, 3), "gqa::mean_pool_heads: d = 0: must be positive");
  EXPECT_THROWS_WITH((void)gqa::mean_pool_heads(w, 8, 2, 2, -3), "gqa::mean_pool_heads: in_dim = -3: must be positive");
  EXPECT_THROWS_WITH((void)gqa::mean_pool_heads(w, 8, 2, 2, 4), "gqa::mean_pool_heads: w.size() = 48: must equal heads * d * in_dim = 64");
  EXPECT_THROWS_WITH((void)gqa::mean_pool_bias(b, 8, 2, 3), "gqa::mean_pool_bias: b.size() = 16: must equal heads * d = 24");
  volatile index_t huge = index_t{1} << 40;  // volatile: no constant propagation into the unreachable allocation
  EXPECT_THROWS_WITH((void)gqa::mean_pool_heads(w, 1 << 30, 1, 1 << 30, huge),
                     "gqa::mean_pool_heads: d * in_dim overflows");
  auto bad = w;
  bad[7] = std::numeric_limits<float>::infinity();
  EXPECT_THROWS_WITH((void)gqa::mean_pool_heads(bad, 8, 2, 2, 3), "gqa::mean_pool_heads: w[7] = inf: must be finite");
  auto badb = b;
  badb[2] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROWS_WITH((void)gqa::mean_pool_bias(badb, 8, 2, 2), "gqa::mean_pool_bias: b[2] = nan: must be finite");

  gqa::kv_projection p{w, b, w, b};
  EXPECT_THROWS_WITH((void)gqa::convert_mha_to_gqa(p, 8, 3, 2, 3), "gqa::convert_mha_to_gqa: groups = 3: must divide heads = 8");
  p.w_v.pop_back();
  EXPECT_THROWS_WITH((void)gqa::convert_mha_to_gqa(p, 8, 2, 2, 3), "gqa::convert_mha_to_gqa: mha.w_v.size() = 47: must equal heads * d * in_dim = 48");
  p = {w, b, w, b};
  p.b_k.resize(5);
  EXPECT_THROWS_WITH((void)gqa::convert_mha_to_gqa(p, 8, 2, 2, 3), "gqa::convert_mha_to_gqa: mha.b_k.size() = 5: must equal heads * d (or 0 for no bias) = 16");
  p = {w, b, bad, b};
  EXPECT_THROWS_WITH((void)gqa::convert_mha_to_gqa(p, 8, 2, 2, 3), "gqa::convert_mha_to_gqa: mha.w_v[7] = inf: must be finite");
  p = {w, b, w, badb};
  EXPECT_THROWS_WITH((void)gqa::convert_mha_to_gqa(p, 8, 2, 2, 3), "gqa::convert_mha_to_gqa: mha.b_v[2] = nan: must be finite");
}

// --- WGQA fold ---

constexpr wgqa_kind all_kinds[] = {wgqa_kind::scalar, wgqa_kind::col, wgqa_kind::row};

gqa::kv_projection random_projection(index_t h, index_t d, index_t dm, bool bias, std::uint64_t seed) {
  gqa::kv_projection p{gqa::test::random_floats(static_cast<std::size_t>(h * d * dm), seed), {},
                       gqa::test::random_floats(static_cast<std::size_t>(h * d * dm), seed + 1), {}};
  if (bias) {
    p.b_k = gqa::test::random_floats(static_cast<std::size_t>(h * d), seed + 2);
    p.b_v = gqa::test::random_floats(static_cast<std::size_t>(h * d), seed + 3);
  }
  return p;
}

// wgqa_fold == the reference's einsums (reference::wgqa_fold), every kind, mean and random weights: exact
// float products summed in double and rounded once: ≤ 2⁻²⁴·Σ_j |w_j W_j| per element.
TEST(wgqa_fold, matches_reference_einsums) {
  const index_t h = 6, d = 4, dm = 10;
  for (const auto kind : all_kinds)
    for (const index_t g : {1, 2, 3, 6})
      for (const bool random : {false, true}) {
        SCOPED_TRACE(testing::Message() << gqa::to_string(kind) << " g " << g << (random ? " random" : " mean"));
        const auto w = random ? wgqa_weights::random_init(kind, h, g, d, dm, 81) : wgqa_weights::mean_init(kind, h, g, d, dm);
        const auto p = random_projection(h, d, dm, kind != wgqa_kind::row, 82);
        const auto f = gqa::wgqa_fold(p, w);
        const auto name = gqa::to_string(kind);
        const auto rk = gqa::reference::wgqa_fold(widen(p.w_k), h, g, d, dm, name, widen(w.k));
        const auto rv = gqa::reference::wgqa_fold(widen(p.w_v), h, g, d, dm, name, widen(w.v));
        const auto mk = gqa::reference::wgqa_fold(abs_of(p.w_k), h, g, d, dm, name, abs_of(w.k));
        const auto mv = gqa::reference::wgqa_fold(abs_of(p.w_v), h, g, d, dm, name, abs_of(w.v));
        ASSERT_EQ(f.w_k.size(), rk.size());
        ASSERT_EQ(f.w_v.size(), rv.size());
        for (std::size_t i = 0; i < rk.size(); ++i) {
          ASSERT_NEAR(f.w_k[i], rk[i], 0x1p-24 * mk[i]) << i;
          ASSERT_NEAR(f.w_v[i], rv[i], 0x1p-24 * mv[i]) << i;
        }
        if (kind == wgqa_kind::row) {
          EXPECT_TRUE(f.b_k.empty());
          EXPECT_TRUE(f.b_v.empty());
        } else {
          // b̃_g[k] = Σ_{j∈g} weight_j(k) b_j[k]: the fold of a (h·d × 1) "weight" with in = 1 for scalar/col.
          const auto rb = gqa::reference::wgqa_fold(widen(p.b_k), h, g, d, 1, name, widen(w.k));
          const auto mb = gqa::reference::wgqa_fold(abs_of(p.b_k), h, g, d, 1, name, abs_of(w.k));
          ASSERT_EQ(f.b_k.size(), rb.size());
          for (std::size_t i = 0; i < rb.size(); ++i) ASSERT_NEAR(f.b_k[i], rb[i], 0x1p-24 * mb[i]) << i;
          ASSERT_EQ(f.b_v.size(), rb.size());
        }
      }
}

// The fold identity (linearity again) in exact arithmetic terms: the reference fold, applied as a projection,
// equals the unfolded per-head form by its definition (scalar Σ w_j(XW_jᵀ + b_j), col Σ c_j ⊙ (XW_jᵀ + b_j),
// row Σ X diag(r_j) W_jᵀ). Both in double: only summation-order rounding, ~1e-15 relative.
TEST(wgqa_fold, folded_projection_is_the_unfolded_form) {
  const index_t h = 6, g = 2, d = 4, dm = 10, rows = 7;
  const auto x = widen(gqa::test::random_floats(static_cast<std::size_t>(rows * dm), 83));
  for (const auto kind : all_kinds) {
    SCOPED_TRACE(gqa::to_string(kind));
    const auto w = wgqa_weights::random_init(kind, h, g, d, dm, 84);
    const auto p = random_projection(h, d, dm, kind != wgqa_kind::row, 85);
    const auto name = gqa::to_string(kind);
    const auto fw = gqa::reference::wgqa_fold(widen(p.w_k), h, g, d, dm, name, widen(w.k));
    const auto fb = kind == wgqa_kind::row ? std::vector<double>{} : gqa::reference::wgqa_fold(widen(p.b_k), h, g, d, 1, name, widen(w.k));
    const auto unfolded = gqa::reference::wgqa_unfolded_projection(x, rows, widen(p.w_k), widen(p.b_k), h, g, d, dm, name, widen(w.k));
    for (index_t r = 0; r < rows; ++r)
      for (index_t o = 0; o < g * d; ++o) {
        double y = fb.empty() ? 0.0 : fb[static_cast<std::size_t>(o)];
        for (index_t c = 0; c < dm; ++c) y += x[static_cast<std::size_t>(r * dm + c)] * fw[static_cast<std::size_t>(o * dm + c)];
        ASSERT_NEAR(y, unfolded[static_cast<std::size_t>(r * g * d + o)], 1e-12) << r << " " << o;
      }
  }
}

// With the mean init, the fold is mean pooling, bitwise when s is a power of two (1/s exact); for
// s = 3 the weight fl(1/3) is off by ≤ 2⁻²⁴ relative: ≤ 2⁻²³·Σ|W_j|/s.
TEST(wgqa_fold, mean_init_folds_to_mean_pooling) {
  const index_t h = 12, d = 4, dm = 6;
  const auto p = random_projection(h, d, dm, true, 86);
  for (const auto kind : {wgqa_kind::scalar, wgqa_kind::col, wgqa_kind::row})
    for (const index_t g : {12, 6, 3, 4}) {
      SCOPED_TRACE(testing::Message() << gqa::to_string(kind) << " g " << g);
      const index_t s = h / g;
      auto pk = p;
      if (kind == wgqa_kind::row) pk.b_k.clear(), pk.b_v.clear();
      const auto f = gqa::wgqa_fold(pk, wgqa_weights::mean_init(kind, h, g, d, dm));
      const auto pooled = gqa::mean_pool_heads(p.w_k, h, g, d, dm);
      const auto mag = gqa::reference::mean_pool(abs_of(p.w_k), h, g, d, dm);
      for (std::size_t i = 0; i < pooled.size(); ++i) {
        if ((s & (s - 1)) == 0) {
          ASSERT_EQ(f.w_k[i], pooled[i]) << i;
        } else {
          ASSERT_NEAR(f.w_k[i], pooled[i], 0x1p-23 * mag[i]) << i;
        }
      }
      if (kind != wgqa_kind::row && (s & (s - 1)) == 0) {
        EXPECT_EQ(f.b_k, gqa::mean_pool_bias(p.b_k, h, g, d));
      }
    }
}

// Bias by hand, H = 2, G = 1, d = 2: scalar b̃ = w0·b0 + w1·b1; col b̃[k] = c0[k]·b0[k] + c1[k]·b1[k].
TEST(wgqa_fold, bias_by_hand) {
  gqa::kv_projection p{std::vector<float>(4, 1.0f), {1, 2, 3, 4}, std::vector<float>(4, 1.0f), {0, 1, 0, 1}};
  const auto fs = gqa::wgqa_fold(p, wgqa_weights{wgqa_kind::scalar, 2, 1, 2, 1, {2.0f, -1.0f}, {1.0f, 3.0f}});
  EXPECT_EQ(fs.b_k, (std::vector<float>{2 - 3, 4 - 4}));
  EXPECT_EQ(fs.b_v, (std::vector<float>{0, 1 + 3}));
  EXPECT_EQ(fs.w_k, (std::vector<float>{1, 1}));  // 2·1 − 1·1 for both rows
  const auto fc = gqa::wgqa_fold(p, wgqa_weights{wgqa_kind::col, 2, 1, 2, 1, {1, 2, 3, 4}, {1, 1, 1, 1}});
  EXPECT_EQ(fc.b_k, (std::vector<float>{1 * 1 + 3 * 3, 2 * 2 + 4 * 4}));
  EXPECT_EQ(fc.w_k, (std::vector<float>{1 + 3, 2 + 4}));
  EXPECT_EQ(fc.b_v, (std::vector<float>{0, 2}));
}

TEST(wgqa_fold, errors_name_the_argument) {
  const index_t h = 4, g = 2, d = 2, dm = 3;
  const auto p = random_projection(h, d, dm, true, 87);
  auto w = wgqa_weights::mean_init(wgqa_kind::scalar, h, g, d, dm);
  w.k[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROWS_WITH((void)gqa::wgqa_fold(p, w), "gqa::wgqa_fold: weights.k[3] = nan: must be finite");
  w = wgqa_weights::mean_init(wgqa_kind::col, h, g, d, dm);
  w.v.resize(3);
  EXPECT_THROWS_WITH((void)gqa::wgqa_fold(p, w), "gqa::wgqa_fold: weights.v.size() = 3: must be 8 for kind col (hq * d)");
  w = wgqa_weights::mean_init(wgqa_kind::scalar, h, g, d, dm);
  w.model_dim = 0;
  EXPECT_THROWS_WITH((void)gqa::wgqa_fold(p, w), "gqa::wgqa_fold: weights.model_dim = 0: must be positive");
  w = wgqa_weights::mean_init(wgqa_kind::scalar, h, g, d, dm + 1);
  EXPECT_THROWS_WITH((void)gqa::wgqa_fold(p, w),
                     "gqa::wgqa_fold: per_head.w_k.size() = 24: must equal weights.hq * weights.d * weights.model_dim = 32");
  w = wgqa_weights::mean_init(wgqa_kind::scalar, h, g, d, dm);
  auto q = p;
  q.w_v[5] = -std::numeric_limits<float>::infinity();
  EXPECT_THROWS_WITH((void)gqa::wgqa_fold(q, w), "gqa::wgqa_fold: per_head.w_v[5] = -inf: must be finite");
  q = p;
  q.b_v.resize(3);
  EXPECT_THROWS_WITH((void)gqa::wgqa_fold(q, w), "gqa::wgqa_fold: per_head.b_v.size() = 3: must equal heads * d (or 0 for no bias) = 8");
  const auto row = wgqa_weights::mean_init(wgqa_kind::row, h, g, d, dm);
  EXPECT_THROWS_WITH((void)gqa::wgqa_fold(p, row), "gqa::wgqa_fold: per_head.b_k.size() = 8: must be 0 for row weights");
  q = p;
  q.b_k.clear();
  EXPECT_THROWS_WITH((void)gqa::wgqa_fold(q, row), "gqa::wgqa_fold: per_head.b_v.size() = 8: must be 0 for row weights");
  q.b_v.clear();
  EXPECT_NO_THROW((void)gqa::wgqa_fold(q, row));
}

}  // namespace
