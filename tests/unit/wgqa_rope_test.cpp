// WGQA with RoPE (Note [wgqa with rope] in gqa/variants/wgqa.hpp): when each head's K is rotated after
// the projection, `col` weights cannot be folded into the K projection (the rotation mixes channel pairs
// that carry different weights), while scalar weights still fold exactly; the exact inference form,
// wgqa_policy::combine_rows, combines each new token's rotated per-head rows once as they enter the KV
// cache and gives the trained model's keys and outputs bit for bit. Plus combine_rows' errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <vector>

#include <gqa/gqa.hpp>
#include <gqa/reference/wgqa.hpp>

#include "support/data.hpp"
#include "support/expect.hpp"

namespace {

using gqa::index_t;

constexpr index_t B = 2, T = 7, H = 4, G = 2, d = 8, D = 16;

// y (rows × out) = x (rows × D) · Wᵀ (W: out × D), in double, rounded to float.
std::vector<float> project(const std::vector<float>& x, const std::vector<float>& w, index_t rows, index_t out) {
  std::vector<float> y(static_cast<std::size_t>(rows * out));
  for (index_t r = 0; r < rows; ++r)
    for (index_t o = 0; o < out; ++o) {
      double acc = 0.0;
      for (index_t c = 0; c < D; ++c)
        acc += static_cast<double>(x[static_cast<std::size_t>(r * D + c)]) * w[static_cast<std::size_t>(o * D + c)];
      y[static_cast<std::size_t>(r * out + o)] = static_cast<float>(acc);
    }
  return y;
}

// RoPE on (B, len, heads, d) in place: channel pair (2i, 2i + 1) of the token at position p is rotated
// by p · 10000^(-2i/d), the same rotation for every head; token t sits at position first_position + t.
void rope(std::vector<float>& x, index_t heads, index_t first_position = 0) {
  const auto len = static_cast<index_t>(x.size()) / (B * heads * d);
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < len; ++t)
      for (index_t h = 0; h < heads; ++h)
        for (index_t i = 0; i < d / 2; ++i) {
          const double angle = static_cast<double>(first_position + t) * std::pow(10000.0, -2.0 * static_cast<double>(i) / d);
          const auto at = static_cast<std::size_t>(((b * len + t) * heads + h) * d + 2 * i);
          const double x0 = x[at], x1 = x[at + 1];
          x[at] = static_cast<float>(x0 * std::cos(angle) - x1 * std::sin(angle));
          x[at + 1] = static_cast<float>(x0 * std::sin(angle) + x1 * std::cos(angle));
        }
}

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double e = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) e = std::max(e, std::fabs(static_cast<double>(a[i]) - b[i]));
  return e;
}
double max_abs(const std::vector<float>& a) {
  double m = 0.0;
  for (const float x : a) m = std::max(m, static_cast<double>(std::fabs(x)));
  return m;
}

struct layer {
  std::vector<float> x = gqa::test::random_floats(static_cast<std::size_t>(B * T * D), 1);
  std::vector<float> w_k = gqa::test::random_floats(static_cast<std::size_t>(H * d * D), 2);
  std::vector<float> w_v = gqa::test::random_floats(static_cast<std::size_t>(H * d * D), 3);
  std::vector<float> k, v;  // per-head (B, T, H, d): K rotated, V not
  layer() : k(project(x, w_k, B * T, H * d)), v(project(x, w_v, B * T, H * d)) { rope(k, H); }
};

// col weights: the folded keys are not the trained ones (V, unrotated, still folds); scalar weights fold.
TEST(wgqa_rope, col_weights_do_not_fold_under_rope_scalar_weights_do) {
  const layer L;
  for (const auto kind : {gqa::wgqa_kind::col, gqa::wgqa_kind::scalar}) {
    SCOPED_TRACE(std::string(gqa::to_string(kind)));
    const auto w = gqa::wgqa_weights::random_init(kind, H, G, d, D, 5);
    // Trained form: combine the rotated per-head heads (what wgqa_policy does in training).
    gqa::wgqa_policy pol(w);
    const auto kv = pol.prepare(gqa::bshd<const float>(L.k.data(), B, T, H, d), gqa::bshd<const float>(L.v.data(), B, T, H, d));
    const std::vector<float> k_trained(kv.k.data, kv.k.data + B * T * G * d), v_trained(kv.v.data, kv.v.data + B * T * G * d);
    // Folded form: project with the folded weights, then rotate the G heads.
    const gqa::kv_projection folded = gqa::wgqa_fold({L.w_k, {}, L.w_v, {}}, w);
    std::vector<float> k_fold = project(L.x, folded.w_k, B * T, G * d);
    const std::vector<float> v_fold = project(L.x, folded.w_v, B * T, G * d);
    rope(k_fold, G);
    const double k_err = max_diff(k_fold, k_trained), scale = max_abs(k_trained);
    EXPECT_LE(max_diff(v_fold, v_trained), 1e-5 * max_abs(v_trained));  // V: no rotation, the fold is exact
    if (kind == gqa::wgqa_kind::col) {
      EXPECT_GT(k_err, 0.1 * scale) << "col weights folded through RoPE should not give the trained keys";
      std::cout << "wgqa_rope: col fold vs trained keys: max |diff| " << k_err << " (keys up to " << scale << ")\n";
    } else {
      EXPECT_LE(k_err, 1e-5 * scale);  // one weight per head commutes with the rotation
    }
  }
}

// combine_rows, fed one token at a time into a cache, gives the trained keys and values bit for bit, and
// the decode step's attention output equals the trained forward's; the fold's output does not.
TEST(wgqa_rope, combine_rows_is_the_exact_inference_form) {
  const layer L;
  const auto w = gqa::wgqa_weights::random_init(gqa::wgqa_kind::col, H, G, d, D, 5);
  gqa::wgqa_policy pol(w);
  std::vector<float> cache_k(static_cast<std::size_t>(B * T * G * d), -9.0f), cache_v(cache_k.size(), -9.0f);
  for (index_t t = 0; t < T; ++t) {  // decode: each token's rows are combined once, when written
    const gqa::tensor_view<const float> k_new(L.k.data() + t * H * d, B, 1, H, d, T * H * d, H * d, d);
    const gqa::tensor_view<const float> v_new(L.v.data() + t * H * d, B, 1, H, d, T * H * d, H * d, d);
    pol.combine_rows(k_new, v_new, gqa::tensor_view<float>(cache_k.data() + t * G * d, B, 1, G, d, T * G * d, G * d, d),
                     gqa::tensor_view<float>(cache_v.data() + t * G * d, B, 1, G, d, T * G * d, G * d, d));
  }
  gqa::wgqa_policy trained(w);
  const auto kv = trained.prepare(gqa::bshd<const float>(L.k.data(), B, T, H, d), gqa::bshd<const float>(L.v.data(), B, T, H, d));
  EXPECT_EQ(0, std::memcmp(cache_k.data(), kv.k.data, cache_k.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(cache_v.data(), kv.v.data, cache_v.size() * sizeof(float)));
  // Against the double transcription of the combination.
  const auto ref = gqa::reference::wgqa_combine(std::vector<double>(L.k.begin(), L.k.end()), B, T, H, G, d, "col",
                                                std::vector<double>(w.k.begin(), w.k.end()));
  double ref_err = 0.0;
  for (std::size_t i = 0; i < ref.size(); ++i) ref_err = std::max(ref_err, std::fabs(cache_k[i] - ref[i]));
  EXPECT_LE(ref_err, 1e-6 * max_abs(cache_k));

  // Decode step: one query token at the last position, H query heads over the G cached heads.
  std::vector<float> q = gqa::test::random_floats(static_cast<std::size_t>(B * 1 * H * d), 9);
  rope(q, H, T - 1);
  const auto qv = gqa::bshd<const float>(q.data(), B, 1, H, d);
  std::vector<float> o_trained(q.size()), o_cache(q.size()), o_fold(q.size());
  gqa::forward(trained, qv, gqa::bshd<const float>(L.k.data(), B, T, H, d), gqa::bshd<const float>(L.v.data(), B, T, H, d),
               gqa::bshd(o_trained.data(), B, 1, H, d));
  gqa::attend(qv, gqa::bshd<const float>(cache_k.data(), B, T, G, d), gqa::bshd<const float>(cache_v.data(), B, T, G, d),
              gqa::bshd(o_cache.data(), B, 1, H, d), gqa::head_map::uniform(H, G));
  EXPECT_EQ(0, std::memcmp(o_cache.data(), o_trained.data(), o_cache.size() * sizeof(float)));
  const gqa::kv_projection folded = gqa::wgqa_fold({L.w_k, {}, L.w_v, {}}, w);
  std::vector<float> k_fold = project(L.x, folded.w_k, B * T, G * d);
  const std::vector<float> v_fold = project(L.x, folded.w_v, B * T, G * d);
  rope(k_fold, G);
  gqa::attend(qv, gqa::bshd<const float>(k_fold.data(), B, T, G, d), gqa::bshd<const float>(v_fold.data(), B, T, G, d),
              gqa::bshd(o_fold.data(), B, 1, H, d), gqa::head_map::uniform(H, G));
  const double fold_err = max_diff(o_fold, o_trained);
  EXPECT_GT(fold_err, 1e-2) << "the fold should not reproduce the trained attention under RoPE";
  std::cout << "wgqa_rope: decode output, fold vs trained: max |diff| " << fold_err << " (outputs up to "
            << max_abs(o_trained) << "); combine_rows vs trained: 0 (bitwise)\n";
}

TEST(wgqa_rope, combine_rows_errors_name_the_argument) {
  using gqa::test::expect_invalid;
  const layer L;
  const auto k = gqa::bshd<const float>(L.k.data(), B, T, H, d), v = gqa::bshd<const float>(L.v.data(), B, T, H, d);
  std::vector<float> ck(static_cast<std::size_t>(B * T * G * d)), cv(ck.size());
  const auto kd = gqa::bshd(ck.data(), B, T, G, d), vd = gqa::bshd(cv.data(), B, T, G, d);
  gqa::wgqa_policy pol(gqa::wgqa_weights::mean_init(gqa::wgqa_kind::col, H, G, d, D));
  pol.combine_rows(k, v, kd, vd);  // valid
  expect_invalid([&] { pol.combine_rows(k, v, gqa::bshd(ck.data(), B, T, H / 2 + 1, d - 2), vd); },
                 "gqa::wgqa_policy::combine_rows: k_dst.h = 3: must equal weights.hkv = 2");
  expect_invalid([&] { pol.combine_rows(k, v, gqa::bshd(ck.data(), B, T - 1, G, d), vd); }, "k_dst.s = 6: must equal k_new.s = 7");
  expect_invalid([&] { pol.combine_rows(k, v, kd, gqa::bshd(cv.data(), B, T, G, d / 2)); }, "v_dst.d = 4: must equal weights.d = 8");
  expect_invalid([&] { pol.combine_rows(k, v, kd, gqa::tensor_view<float>(nullptr, B, T, G, d, 1, 1, 1)); }, "v_dst.data = nullptr");
  expect_invalid([&] { pol.combine_rows(k, v, kd, kd); }, {"combine_rows: k_dst (data = ", ") overlaps v_dst"});
  std::vector<float> kk = L.k;  // a destination inside a source
  expect_invalid([&] {
    pol.combine_rows(gqa::bshd<const float>(kk.data(), B, T, H, d), v, gqa::bshd(kk.data(), B, T, G, d), vd);
  }, {"combine_rows: k_dst (data = ", ") overlaps k_new"});
  expect_invalid([&] { pol.combine_rows(gqa::bshd<const float>(L.k.data(), B, T, H - 1, d), v, kd, vd); }, "k.h = 3");
  // Row weights have no per-head form (and fold exactly under RoPE anyway).
  gqa::wgqa_policy row(gqa::wgqa_weights::mean_init(gqa::wgqa_kind::row, H, G, d, D));
  expect_invalid([&] { row.combine_rows(k, v, kd, vd); }, "weights.kind = row");
}

}  // namespace
