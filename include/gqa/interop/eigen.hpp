// gqa/interop/eigen.hpp: zero-copy bridges between Eigen row-major matrices and gqa::tensor_view.
// The only gqa header that includes <Eigen/Core>; it is not part of gqa/gqa.hpp.
// Invariant: no view copies. A view aliases the matrix's storage, so the matrix must outlive it, and
// only layouts that need no copy are accepted (row-major, unit inner stride); anything else throws
// gqa::invalid_argument, never silently converts into a temporary. (The checkpoint-conversion overloads at
// the end produce new matrices; they are not views.)
#pragma once

#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "../config.hpp"
#include "../convert.hpp"
#include "../errors.hpp"
#include "../tensor.hpp"

GQA_BEGIN_NAMESPACE
namespace eigen {

/// The matrix type of one activation: rows are tokens, columns are heads·head_dim (head-major).
template <class T>
using row_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// What head() and batch_matrix() return: a row-major Map with a runtime row stride.
template <class T>
using row_map = Eigen::Map<std::conditional_t<std::is_const_v<T>, const row_matrix<std::remove_const_t<T>>,
                                              row_matrix<std::remove_const_t<T>>>,
                           Eigen::Unaligned, Eigen::OuterStride<>>;

namespace detail {

// Eigen expressions with storage we can point into (Matrix, Map, Ref, Block of those).
template <class M>
concept direct_access = std::is_base_of_v<Eigen::DenseBase<std::remove_cvref_t<M>>, std::remove_cvref_t<M>> &&
                        ((Eigen::internal::traits<std::remove_cvref_t<M>>::Flags & Eigen::DirectAccessBit) != 0);

template <class M>
auto checked_view(M& m, index_t batch, index_t heads, index_t d, const char* where) {
  using D = std::remove_cvref_t<M>;
  using gqa::detail::fail;
  using gqa::detail::require;
  const index_t rows = static_cast<index_t>(m.rows()), cols = static_cast<index_t>(m.cols());
  require(batch > 0, where, "batch", batch, "must be positive");
  require(heads > 0, where, "heads", heads, "must be positive");
  require(d > 0, where, "d", d, "must be positive");
  if (cols != heads * d)
    fail(where, ": matrix.cols() = ", cols, ": must equal heads * d = ", heads, " * ", d, " = ", heads * d);
  if (rows % batch != 0 || rows == 0)
    fail(where, ": matrix.rows() = ", rows, ": must be a positive multiple of batch = ", batch);
  require(D::IsRowMajor, where, "matrix storage", "column-major",
          "must be row-major (Eigen::RowMajor, e.g. gqa::eigen::row_matrix<float>): tokens are rows");
  const index_t inner = static_cast<index_t>(m.innerStride());
  require(inner == 1 || cols == 1, where, "matrix.innerStride()", inner, "must be 1 (contiguous rows)");
  const index_t row_stride = static_cast<index_t>(m.outerStride());
  const index_t s = rows / batch;
  auto* p = m.data();
  using T = std::remove_pointer_t<decltype(p)>;
  return tensor_view<T>{p, batch, s, heads, d, s * row_stride, row_stride, d, 1};
}

}  // namespace detail

/// View a (seq × heads·d) row-major matrix (one batch element: row i is token i, columns are the heads'
/// vectors one after another) as a read-only tensor_view with b = 1. Use for Q, K and V.
template <class M>
  requires detail::direct_access<M>
tensor_view<const typename std::remove_cvref_t<M>::Scalar> input(const M& m, index_t heads, index_t d) {
  return detail::checked_view(m, 1, heads, d, "gqa::eigen::input");
}

/// View a (batch·seq × heads·d) row-major matrix, batch elements stacked in row blocks of seq rows, as a
/// read-only tensor_view with b = batch.
template <class M>
  requires detail::direct_access<M>
tensor_view<const typename std::remove_cvref_t<M>::Scalar> input(const M& m, index_t batch, index_t heads,
                                                                   index_t d) {
  return detail::checked_view(m, batch, heads, d, "gqa::eigen::input");
}

/// Writable view of a (seq × heads·d) row-major matrix (b = 1); size it before, e.g.
/// `row_matrix<float> o(sq, hq * dv)`. Accepts lvalue matrices and (temporary) Maps.
template <class M>
  requires detail::direct_access<M> && (!std::is_const_v<std::remove_reference_t<M>>)
auto output(M&& m, index_t heads, index_t d) {
  static_assert(!std::is_const_v<std::remove_pointer_t<decltype(m.data())>>,
                "gqa::eigen::output: the matrix is read-only (a Map of a const matrix?)");
  return detail::checked_view(m, 1, heads, d, "gqa::eigen::output");
}

/// Writable view of a (batch·seq × heads·d) row-major matrix with batch elements stacked by rows.
template <class M>
  requires detail::direct_access<M> && (!std::is_const_v<std::remove_reference_t<M>>)
auto output(M&& m, index_t batch, index_t heads, index_t d) {
  static_assert(!std::is_const_v<std::remove_pointer_t<decltype(m.data())>>,
                "gqa::eigen::output: the matrix is read-only (a Map of a const matrix?)");
  return detail::checked_view(m, batch, heads, d, "gqa::eigen::output");
}

/// One head of one batch element as an (s × d) Eigen matrix, without copying (any tensor_view layout
/// with stride_d == 1: BSHD, BHSD, or views made by input()/output()).
template <class T>
row_map<T> head(const tensor_view<T>& t, index_t ib, index_t ih) {
  using gqa::detail::require;
  require(t.stride_d == 1, "gqa::eigen::head", "view.stride_d", t.stride_d, "must be 1");
  require(ib >= 0 && ib < t.b, "gqa::eigen::head", "ib", ib, "must be in [0, view.b)");
  require(ih >= 0 && ih < t.h, "gqa::eigen::head", "ih", ih, "must be in [0, view.h)");
  require(t.s <= 1 || t.stride_s > 0, "gqa::eigen::head", "view.stride_s", t.stride_s, "must be positive");
  return row_map<T>(t.row(ib, 0, ih), t.s, t.d, Eigen::OuterStride<>(t.s <= 1 ? t.d : t.stride_s));
}

/// One batch element as an (s × h·d) Eigen matrix, without copying. Needs each token's heads to be
/// adjacent (stride_h == d, stride_d == 1), as in BSHD buffers and in views made by input()/output().
template <class T>
row_map<T> batch_matrix(const tensor_view<T>& t, index_t ib) {
  using gqa::detail::require;
  require(t.stride_d == 1, "gqa::eigen::batch_matrix", "view.stride_d", t.stride_d, "must be 1");
  require(t.h <= 1 || t.stride_h == t.d, "gqa::eigen::batch_matrix", "view.stride_h", t.stride_h,
          "must equal d (heads of a token adjacent, as in BSHD); use gqa::eigen::head() per head instead");
  require(ib >= 0 && ib < t.b, "gqa::eigen::batch_matrix", "ib", ib, "must be in [0, view.b)");
  require(t.s <= 1 || t.stride_s > 0, "gqa::eigen::batch_matrix", "view.stride_s", t.stride_s, "must be positive");
  const index_t width = t.h * t.d;
  return row_map<T>(t.row(ib, 0, 0), t.s, width, Eigen::OuterStride<>(t.s <= 1 ? width : t.stride_s));
}

}  // namespace eigen
GQA_END_NAMESPACE

// Checkpoint conversion with Eigen matrices (gqa/convert.hpp): a projection weight is the nn.Linear weight as
// a matrix, w(r, c) = output feature r, input feature c, so head j is the row block [j·d, (j+1)·d). Any
// Eigen storage order and any dense expression is accepted (the values are read by (row, col)); results
// are row-major.
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

/// mean_pool_heads (spec §4.2) on an Eigen matrix: w is (heads·d × in_dim); returns (groups·d × in_dim).
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

/// mean_pool_bias (spec §4.2) on an Eigen vector of heads·d values; returns groups·d values.
template <class M>
  requires detail::float_dense<M>
Eigen::VectorXf mean_pool_bias(const Eigen::DenseBase<M>& b, index_t heads, index_t groups) {
  constexpr const char* where = "gqa::eigen::mean_pool_bias";
  const std::vector<float> values = detail::bias_values(b, where, "b");
  const index_t d = detail::head_dim_of(static_cast<index_t>(values.size()), heads, where, "b");
  return detail::to_vector(gqa::mean_pool_bias(values, heads, groups, d));
}

/// convert_mha_to_gqa (spec §4.2) on Eigen matrices: d = mha.w_k.rows() / heads, in_dim = mha.w_k.cols().
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

/// wgqa_fold (spec §8.2) on Eigen matrices: per_head.w_k and w_v are (w.hq·w.d × w.model_dim); returns the
/// (w.hkv·w.d × w.model_dim) plain-GQA projections (biases folded for scalar/col; empty for row). Like
/// gqa::wgqa_fold, col weights do not fold when RoPE follows the projection (Note [wgqa with rope]).
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
