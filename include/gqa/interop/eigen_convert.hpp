// gqa/interop/eigen_convert.hpp: checkpoint conversion (gqa/convert.hpp) on Eigen matrices. Unlike the views
// of gqa/interop/eigen.hpp these produce new matrices. Not part of gqa/gqa.hpp.
#pragma once

#include <cstddef>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../config.hpp"
#include "../convert.hpp"
#include "../errors.hpp"
#include "eigen.hpp"

// A projection weight is the nn.Linear weight as a matrix, w(r, c) = output feature r, input feature c, so
// head j is the row block [j·d, (j+1)·d). Any Eigen storage order and any dense expression is accepted (the
// values are read by (row, col)); results are row-major.
GQA_BEGIN_NAMESPACE
namespace eigen {

/// The K and V projections of one attention module as Eigen objects; a bias of size 0 means no bias.
struct kv_projection {
  row_matrix<float> w_k, w_v;
  Eigen::VectorXf b_k, b_v;
};

namespace detail {

template <class M>
concept float_dense = std::is_base_of_v<Eigen::DenseBase<M>, M> && std::is_same_v<typename M::Scalar, float>;

template <class M>
std::vector<float> to_row_major(const Eigen::DenseBase<M>& m) {
  std::vector<float> out(static_cast<std::size_t>(m.rows() * m.cols()));
  std::size_t i = 0;
  for (Eigen::Index r = 0; r < m.rows(); ++r)
    for (Eigen::Index c = 0; c < m.cols(); ++c) out[i++] = m(r, c);
  return out;
}

template <class M>
std::vector<float> bias_values(const Eigen::DenseBase<M>& b, const char* where, const char* name) {
  if (b.size() != 0 && b.rows() != 1 && b.cols() != 1)
    gqa::detail::fail(where, ": ", name, " is ", b.rows(), " x ", b.cols(), ": must be a vector");
  return to_row_major(b);
}

inline row_matrix<float> to_matrix(const std::vector<float>& v, index_t rows, index_t cols) {
  return Eigen::Map<const row_matrix<float>>(v.data(), rows, cols);
}

inline Eigen::VectorXf to_vector(const std::vector<float>& v) {
  return Eigen::Map<const Eigen::VectorXf>(v.data(), static_cast<Eigen::Index>(v.size()));
}

/// d = rows / heads, failing unless heads divides a positive row count.
inline index_t head_dim_of(index_t rows, index_t heads, const char* where, const char* name) {
  gqa::detail::require(heads > 0, where, "heads", heads, "must be positive");
  if (rows <= 0 || rows % heads != 0)
    gqa::detail::fail(where, ": ", name, ".rows() = ", rows, ": must be a positive multiple of heads = ", heads,
                      " (heads·d output rows, nn.Linear (out, in) layout)");
  return rows / heads;
}

}  // namespace detail

/// mean_pool_heads (MHA -> GQA mean pooling) on an Eigen matrix: w is (heads·d × in_dim); returns (groups·d
/// × in_dim).
template <class M>
  requires detail::float_dense<M>
row_matrix<float> mean_pool_heads(const Eigen::DenseBase<M>& w, index_t heads, index_t groups) {
  constexpr const char* where = "gqa::eigen::mean_pool_heads";
  const index_t d = detail::head_dim_of(static_cast<index_t>(w.rows()), heads, where, "w");
  const auto in_dim = static_cast<index_t>(w.cols());
  gqa::detail::require(in_dim > 0, where, "w.cols()", in_dim, "must be positive");
  gqa::detail::require(groups > 0, where, "groups", groups, "must be positive");
  return detail::to_matrix(gqa::mean_pool_heads(detail::to_row_major(w), heads, groups, d, in_dim), groups * d, in_dim);
}

/// mean_pool_bias on an Eigen vector of heads·d values; returns groups·d values.
template <class M>
  requires detail::float_dense<M>
Eigen::VectorXf mean_pool_bias(const Eigen::DenseBase<M>& b, index_t heads, index_t groups) {
  constexpr const char* where = "gqa::eigen::mean_pool_bias";
  const std::vector<float> values = detail::bias_values(b, where, "b");
  const index_t d = detail::head_dim_of(static_cast<index_t>(values.size()), heads, where, "b");
  return detail::to_vector(gqa::mean_pool_bias(values, heads, groups, d));
}

/// convert_mha_to_gqa on Eigen matrices: d = mha.w_k.rows() / heads, in_dim = mha.w_k.cols().
inline kv_projection convert_mha_to_gqa(const kv_projection& mha, index_t heads, index_t groups) {
  constexpr const char* where = "gqa::eigen::convert_mha_to_gqa";
  const index_t d = detail::head_dim_of(static_cast<index_t>(mha.w_k.rows()), heads, where, "mha.w_k");
  const auto in_dim = static_cast<index_t>(mha.w_k.cols());
  gqa::detail::require(in_dim > 0, where, "mha.w_k.cols()", in_dim, "must be positive");
  if (mha.w_v.rows() != mha.w_k.rows() || mha.w_v.cols() != mha.w_k.cols())
    gqa::detail::fail(where, ": mha.w_v is ", mha.w_v.rows(), " x ", mha.w_v.cols(), ": must match mha.w_k (",
                      mha.w_k.rows(), " x ", mha.w_k.cols(), ")");
  gqa::kv_projection flat{detail::to_row_major(mha.w_k), detail::to_row_major(mha.b_k), detail::to_row_major(mha.w_v),
                          detail::to_row_major(mha.b_v)};
  const gqa::kv_projection r = gqa::convert_mha_to_gqa(flat, heads, groups, d, in_dim);
  return {detail::to_matrix(r.w_k, groups * d, in_dim), detail::to_matrix(r.w_v, groups * d, in_dim),
          detail::to_vector(r.b_k), detail::to_vector(r.b_v)};
}

/// wgqa_fold (the WGQA inference fold) on Eigen matrices: per_head.w_k and w_v are (w.hq·w.d ×
/// w.model_dim); returns the (w.hkv·w.d × w.model_dim) plain-GQA projections (biases folded for scalar/col;
/// empty for row). Like gqa::wgqa_fold, col weights do not fold when RoPE follows the projection
/// (Note [wgqa with rope]).
inline kv_projection wgqa_fold(const kv_projection& per_head, const wgqa_weights& w) {
  constexpr const char* where = "gqa::eigen::wgqa_fold";
  gqa::detail::check_wgqa_weights(w, where);
  const std::pair<const row_matrix<float>*, const char*> mats[2] = {{&per_head.w_k, "per_head.w_k"},
                                                                    {&per_head.w_v, "per_head.w_v"}};
  for (const auto& [m, name] : mats)
    if (m->rows() != w.hq * w.d || m->cols() != w.model_dim)
      gqa::detail::fail(where, ": ", name, " is ", m->rows(), " x ", m->cols(), ": must be weights.hq * weights.d x ",
                        "weights.model_dim = ", w.hq * w.d, " x ", w.model_dim);
  gqa::kv_projection flat{detail::to_row_major(per_head.w_k), detail::to_row_major(per_head.b_k),
                          detail::to_row_major(per_head.w_v), detail::to_row_major(per_head.b_v)};
  const gqa::kv_projection r = gqa::wgqa_fold(flat, w);
  return {detail::to_matrix(r.w_k, w.hkv * w.d, w.model_dim), detail::to_matrix(r.w_v, w.hkv * w.d, w.model_dim),
          detail::to_vector(r.b_k), detail::to_vector(r.b_v)};
}

}  // namespace eigen
GQA_END_NAMESPACE
