// eigen_interop_test.cpp: gqa/interop/eigen.hpp: views of row-major Eigen matrices (one batch element,
// stacked batches, blocks with an outer stride), the Maps back, the errors, and one attention call through
// Eigen checked against softmax(scale·Q·Kᵀ)·V written with Eigen's own matrix products (the core's
// contract: O[b,h] = softmax(scale · Q[b,h] · K[b,map[h]]ᵀ) · V[b,map[h]], contiguous map h / (hq/hkv)).
// Compiled only when Eigen is available.
#if __has_include(<Eigen/Core>)

#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include <gqa/attention.hpp>
#include <gqa/interop/eigen.hpp>

#include "support/expect.hpp"

namespace {

using gqa::index_t;
using gqa::test::expect_invalid;
using mat = gqa::eigen::row_matrix<float>;
using dmat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Deterministic values in [-1, 1] that differ per element and per seed.
mat filled(index_t rows, index_t cols, int seed) {
  mat m(rows, cols);
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j) m(i, j) = static_cast<float>(std::sin(0.61 * double(i * cols + j) + seed));
  return m;
}

TEST(eigen_interop, input_views_one_batch_element) {
  const index_t s = 5, h = 3, d = 7;  // odd sizes
  const mat m = filled(s, h * d, 1);
  const auto t = gqa::eigen::input(m, h, d);
  EXPECT_EQ(t.b, 1);
  EXPECT_EQ(t.s, s);
  EXPECT_EQ(t.h, h);
  EXPECT_EQ(t.d, d);
  EXPECT_EQ(t.stride_s, h * d);
  EXPECT_EQ(t.stride_h, d);
  EXPECT_EQ(t.stride_d, 1);
  EXPECT_EQ(t.data, m.data());  // no copy
  for (index_t i = 0; i < s; ++i)
    for (index_t ih = 0; ih < h; ++ih)
      for (index_t c = 0; c < d; ++c) ASSERT_EQ(t(0, i, ih, c), m(i, ih * d + c)) << i << " " << ih << " " << c;
}

TEST(eigen_interop, input_views_stacked_batch_and_blocks) {
  const index_t b = 3, s = 4, h = 2, d = 5;
  const mat big = filled(b * s + 2, h * d + 3, 2);  // extra rows/cols: the view is a Block with outer stride
  const auto blk = big.block(1, 2, b * s, h * d);
  const auto t = gqa::eigen::input(blk, b, h, d);
  EXPECT_EQ(t.b, b);
  EXPECT_EQ(t.s, s);
  EXPECT_EQ(t.stride_s, h * d + 3);
  EXPECT_EQ(t.stride_b, s * (h * d + 3));
  for (index_t ib = 0; ib < b; ++ib)
    for (index_t i = 0; i < s; ++i)
      for (index_t ih = 0; ih < h; ++ih)
        for (index_t c = 0; c < d; ++c) ASSERT_EQ(t(ib, i, ih, c), big(1 + ib * s + i, 2 + ih * d + c));
}

TEST(eigen_interop, maps_back_per_head_and_per_batch_element) {
  const index_t b = 2, h = 3, s = 5, d = 4;
  std::vector<float> buf(static_cast<std::size_t>(b * h * s * d));
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<float>(i);
  // BHSD: one head is a contiguous (s × d) slab.
  const auto t = gqa::bhsd(buf.data(), b, h, s, d);
  auto m = gqa::eigen::head(t, 1, 2);
  ASSERT_EQ(m.rows(), s);
  ASSERT_EQ(m.cols(), d);
  for (index_t i = 0; i < s; ++i)
    for (index_t c = 0; c < d; ++c) EXPECT_EQ(m(i, c), t(1, i, 2, c));
  m(0, 0) = -1.0f;  // writable through a mutable view
  EXPECT_EQ(t(1, 0, 2, 0), -1.0f);
  // BSHD: a batch element is an (s × h·d) matrix.
  const auto u = gqa::bshd<const float>(buf.data(), b, s, h, d);
  const auto bm = gqa::eigen::batch_matrix(u, 1);
  ASSERT_EQ(bm.rows(), s);
  ASSERT_EQ(bm.cols(), h * d);
  for (index_t i = 0; i < s; ++i)
    for (index_t j = 0; j < h * d; ++j) EXPECT_EQ(bm(i, j), u(1, i, j / d, j % d));
  // Head of a BSHD view: rows strided by h·d.
  const auto hm = gqa::eigen::head(u, 0, 1);
  EXPECT_EQ(hm.outerStride(), h * d);
  EXPECT_EQ(hm(3, 2), u(0, 3, 1, 2));
}

TEST(eigen_interop, rejects_layouts_that_would_need_a_copy) {
  const Eigen::MatrixXf colmajor = Eigen::MatrixXf::Zero(4, 6);
  expect_invalid([&] { (void)gqa::eigen::input(colmajor, 2, 3); }, "column-major");
  const mat m = mat::Zero(4, 6);
  expect_invalid([&] { (void)gqa::eigen::input(m, 4, 2); }, "matrix.cols() = 6");
  expect_invalid([&] { (void)gqa::eigen::input(m, 3, 2, 3); }, "matrix.rows() = 4");
  std::vector<float> buf(2 * 3 * 4 * 5);
  const auto bhsd = gqa::bhsd(buf.data(), 2, 3, 4, 5);
  expect_invalid([&] { (void)gqa::eigen::batch_matrix(bhsd, 0); }, "view.stride_h");
  expect_invalid([&] { (void)gqa::eigen::head(bhsd, 2, 0); }, "ib = 2");
}

// One GQA layer (b = 2, sq = 5, skv = 9, hq = 6, hkv = 2, d = 13, dv = 11) with Q/K/V/O as Eigen matrices,
// against softmax(scale·Q_h·K_gᵀ)·V_g computed with Eigen in double. Tolerance 2e-6: every output is a
// convex combination of V entries in [-1, 1]; float accumulation over 9 keys and 13 dims stays ~1e-7.
TEST(eigen_interop, attention_through_eigen_matches_eigen_math) {
  const index_t b = 2, sq = 5, skv = 9, hq = 6, hkv = 2, d = 13, dv = 11;
  const mat q = filled(b * sq, hq * d, 3), k = filled(b * skv, hkv * d, 4), v = filled(b * skv, hkv * dv, 5);
  mat o = mat::Constant(b * sq, hq * dv, 99.0f);
  gqa::attend(gqa::eigen::input(q, b, hq, d), gqa::eigen::input(k, b, hkv, d), gqa::eigen::input(v, b, hkv, dv),
              gqa::eigen::output(o, b, hq, dv), gqa::head_map::uniform(hq, hkv));
  const double scale = 1.0 / std::sqrt(double(d));
  double worst = 0.0;
  for (index_t ib = 0; ib < b; ++ib)
    for (index_t h = 0; h < hq; ++h) {
      const index_t g = h / (hq / hkv);
      const dmat qh = q.block(ib * sq, h * d, sq, d).cast<double>();
      const dmat kg = k.block(ib * skv, g * d, skv, d).cast<double>();
      const dmat vg = v.block(ib * skv, g * dv, skv, dv).cast<double>();
      dmat p = (qh * kg.transpose()) * scale;
      for (index_t i = 0; i < sq; ++i) {
        p.row(i).array() -= p.row(i).maxCoeff();
        p.row(i) = p.row(i).array().exp().matrix();
        p.row(i) /= p.row(i).sum();
      }
      const dmat want = p * vg;
      const dmat got = o.block(ib * sq, h * dv, sq, dv).cast<double>();
      worst = std::max(worst, (want - got).cwiseAbs().maxCoeff());
    }
  EXPECT_LE(worst, 2e-6);

  // The same call on the same memory through bshd() views gives bitwise the same output.
  mat o2 = mat::Zero(b * sq, hq * dv);
  gqa::attend(gqa::bshd<const float>(q.data(), b, sq, hq, d), gqa::bshd<const float>(k.data(), b, skv, hkv, d),
              gqa::bshd<const float>(v.data(), b, skv, hkv, dv), gqa::bshd(o2.data(), b, sq, hq, dv),
              gqa::head_map::uniform(hq, hkv));
  EXPECT_TRUE(o == o2);

  // Output into a temporary Map over caller memory.
  std::vector<float> raw(static_cast<std::size_t>(b * sq * hq * dv), 0.0f);
  gqa::attend(gqa::eigen::input(q, b, hq, d), gqa::eigen::input(k, b, hkv, d), gqa::eigen::input(v, b, hkv, dv),
              gqa::eigen::output(Eigen::Map<mat>(raw.data(), b * sq, hq * dv), b, hq, dv),
              gqa::head_map::uniform(hq, hkv));
  EXPECT_TRUE(Eigen::Map<const mat>(raw.data(), b * sq, hq * dv) == o);
}

}  // namespace

#endif  // __has_include(<Eigen/Core>)
