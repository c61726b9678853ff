// convert_eigen_test.cpp: the Eigen overloads of checkpoint conversion (gqa/interop/eigen_convert.hpp: mean
// pooling and the WGQA fold): they equal the span versions bitwise for row-major matrices, blocks of bigger
// matrices, column-major storage and expressions, and report shape errors by name. Compiled only when Eigen
// is found.
#if __has_include(<Eigen/Core>)

#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <vector>

#include <gqa/convert.hpp>
#include <gqa/interop/eigen_convert.hpp>

#include "support/data.hpp"
#include "support/expect.hpp"

namespace {

using gqa::index_t;
using mat = gqa::eigen::row_matrix<float>;
using col_mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;

mat random_matrix(index_t rows, index_t cols, std::uint64_t seed) {
  const auto v = gqa::test::random_floats(static_cast<std::size_t>(rows * cols), seed);
  return Eigen::Map<const mat>(v.data(), rows, cols);
}

std::vector<float> flat(const mat& m) { return {m.data(), m.data() + m.size()}; }

TEST(convert_eigen, mean_pool_heads_equals_span_version) {
  const index_t h = 6, g = 2, d = 4, dm = 5;
  const mat w = random_matrix(h * d, dm, 91);
  const auto expect = gqa::mean_pool_heads(flat(w), h, g, d, dm);
  const mat got = gqa::eigen::mean_pool_heads(w, h, g);
  ASSERT_EQ(got.rows(), g * d);
  ASSERT_EQ(got.cols(), dm);
  EXPECT_EQ(flat(got), expect);
  // A block of a bigger matrix (outer stride), column-major storage and an expression: same values.
  mat big = mat::Zero(h * d + 3, dm + 2);
  big.block(1, 2, h * d, dm) = w;
  EXPECT_EQ(flat(gqa::eigen::mean_pool_heads(big.block(1, 2, h * d, dm), h, g)), expect);
  const col_mat cm = w;
  EXPECT_EQ(flat(gqa::eigen::mean_pool_heads(cm, h, g)), expect);
  const mat doubled = gqa::eigen::mean_pool_heads(2.0f * w, h, g);
  for (std::size_t i = 0; i < expect.size(); ++i) EXPECT_EQ(doubled.data()[i], 2.0f * expect[i]);  // ×2 is exact
}

TEST(convert_eigen, mean_pool_bias_equals_span_version) {
  const Eigen::VectorXf b = Eigen::Map<const Eigen::VectorXf>(gqa::test::random_floats(12, 92).data(), 12);
  const auto expect = gqa::mean_pool_bias(std::vector<float>(b.data(), b.data() + 12), 6, 3, 2);
  const Eigen::VectorXf got = gqa::eigen::mean_pool_bias(b, 6, 3);
  EXPECT_EQ(std::vector<float>(got.data(), got.data() + got.size()), expect);
  const Eigen::RowVectorXf row = b.transpose();
  const Eigen::VectorXf got_row = gqa::eigen::mean_pool_bias(row, 6, 3);
  EXPECT_EQ(std::vector<float>(got_row.data(), got_row.data() + got_row.size()), expect);
}

TEST(convert_eigen, convert_mha_to_gqa_equals_span_version) {
  const index_t h = 8, d = 3, dm = 7;
  for (const bool bias : {false, true})
    for (const index_t g : {1, 2, 8}) {
      gqa::eigen::kv_projection m{random_matrix(h * d, dm, 93), random_matrix(h * d, dm, 94), {}, {}};
      if (bias) {
        m.b_k = random_matrix(h * d, 1, 95);
        m.b_v = random_matrix(h * d, 1, 96);
      }
      const gqa::kv_projection s{flat(m.w_k), std::vector<float>(m.b_k.data(), m.b_k.data() + m.b_k.size()), flat(m.w_v),
                                 std::vector<float>(m.b_v.data(), m.b_v.data() + m.b_v.size())};
      const auto expect = gqa::convert_mha_to_gqa(s, h, g, d, dm);
      const auto got = gqa::eigen::convert_mha_to_gqa(m, h, g);
      ASSERT_EQ(got.w_k.rows(), g * d);
      ASSERT_EQ(got.w_k.cols(), dm);
      EXPECT_EQ(flat(got.w_k), expect.w_k);
      EXPECT_EQ(flat(got.w_v), expect.w_v);
      EXPECT_EQ(std::vector<float>(got.b_k.data(), got.b_k.data() + got.b_k.size()), expect.b_k);
      EXPECT_EQ(std::vector<float>(got.b_v.data(), got.b_v.data() + got.b_v.size()), expect.b_v);
      EXPECT_EQ(got.b_k.size(), bias ? g * d : 0);
    }
}

TEST(convert_eigen, wgqa_fold_equals_span_version) {
  const index_t h = 4, g = 2, d = 3, dm = 5;
  for (const auto kind : {gqa::wgqa_kind::scalar, gqa::wgqa_kind::col, gqa::wgqa_kind::row}) {
    SCOPED_TRACE(gqa::to_string(kind));
    const auto w = gqa::wgqa_weights::random_init(kind, h, g, d, dm, 97);
    gqa::eigen::kv_projection m{random_matrix(h * d, dm, 98), random_matrix(h * d, dm, 99), {}, {}};
    if (kind != gqa::wgqa_kind::row) {
      m.b_k = random_matrix(h * d, 1, 100);
      m.b_v = random_matrix(h * d, 1, 101);
    }
    const gqa::kv_projection s{flat(m.w_k), std::vector<float>(m.b_k.data(), m.b_k.data() + m.b_k.size()), flat(m.w_v),
                               std::vector<float>(m.b_v.data(), m.b_v.data() + m.b_v.size())};
    const auto expect = gqa::wgqa_fold(s, w);
    const auto got = gqa::eigen::wgqa_fold(m, w);
    ASSERT_EQ(got.w_k.rows(), g * d);
    EXPECT_EQ(flat(got.w_k), expect.w_k);
    EXPECT_EQ(flat(got.w_v), expect.w_v);
    EXPECT_EQ(std::vector<float>(got.b_k.data(), got.b_k.data() + got.b_k.size()), expect.b_k);
  }
}

TEST(convert_eigen, errors_name_the_argument) {
  const mat w = random_matrix(10, 4, 102);
  EXPECT_THROWS_WITH((void)gqa::eigen::mean_pool_heads(w, 4, 2),
                     "gqa::eigen::mean_pool_heads: w.rows() = 10: must be a positive multiple of heads = 4");
  EXPECT_THROWS_WITH((void)gqa::eigen::mean_pool_heads(w, 0, 1), "gqa::eigen::mean_pool_heads: heads = 0: must be positive");
  EXPECT_THROWS_WITH((void)gqa::eigen::mean_pool_heads(w, 5, 2), "gqa::mean_pool_heads: groups = 2: must divide heads = 5");
  EXPECT_THROWS_WITH((void)gqa::eigen::mean_pool_heads(mat(10, 0), 5, 1), "gqa::eigen::mean_pool_heads: w.cols() = 0: must be positive");
  mat bad = w;
  bad(1, 2) = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROWS_WITH((void)gqa::eigen::mean_pool_heads(bad, 5, 1), "gqa::mean_pool_heads: w[6] = nan: must be finite");
  EXPECT_THROWS_WITH((void)gqa::eigen::mean_pool_bias(w, 5, 1), "gqa::eigen::mean_pool_bias: b is 10 x 4: must be a vector");
  EXPECT_THROWS_WITH((void)gqa::eigen::mean_pool_bias(Eigen::VectorXf::Ones(7), 2, 1),
                     "gqa::eigen::mean_pool_bias: b.rows() = 7: must be a positive multiple of heads = 2");

  gqa::eigen::kv_projection m{random_matrix(8, 3, 103), random_matrix(8, 4, 104), {}, {}};
  EXPECT_THROWS_WITH((void)gqa::eigen::convert_mha_to_gqa(m, 4, 2),
                     "gqa::eigen::convert_mha_to_gqa: mha.w_v is 8 x 4: must match mha.w_k (8 x 3)");
  m.w_v = random_matrix(8, 3, 104);
  m.b_k = Eigen::VectorXf::Ones(3);
  EXPECT_THROWS_WITH((void)gqa::eigen::convert_mha_to_gqa(m, 4, 2), "gqa::convert_mha_to_gqa: mha.b_k.size() = 3");
  EXPECT_THROWS_WITH((void)gqa::eigen::convert_mha_to_gqa(m, 3, 1), "gqa::eigen::convert_mha_to_gqa: mha.w_k.rows() = 8: must be a positive multiple of heads = 3");

  const auto wt = gqa::wgqa_weights::mean_init(gqa::wgqa_kind::scalar, 4, 2, 2, 5);
  m.b_k.resize(0);
  EXPECT_THROWS_WITH((void)gqa::eigen::wgqa_fold(m, wt),
                     "gqa::eigen::wgqa_fold: per_head.w_k is 8 x 3: must be weights.hq * weights.d x weights.model_dim = 8 x 5");
  auto wn = wt;
  wn.v[1] = std::numeric_limits<float>::infinity();
  EXPECT_THROWS_WITH((void)gqa::eigen::wgqa_fold(m, wn), "gqa::eigen::wgqa_fold: weights.v[1] = inf: must be finite");
}

}  // namespace

#endif  // __has_include(<Eigen/Core>)
