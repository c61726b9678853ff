// gqa/interop/eigen.hpp: zero-copy bridges between Eigen row-major matrices and gqa::tensor_view.
// With gqa/interop/eigen_convert.hpp, the only gqa headers that include <Eigen/Core>; neither is part of
// gqa/gqa.hpp. A view adapter only: it includes no kernel and no policy (tests/CMakeLists.txt checks it).
// Invariant: no view copies. A view aliases the matrix's storage, so the matrix must outlive it, and
// only layouts that need no copy are accepted (row-major, unit inner stride); anything else throws
// gqa::invalid_argument, never silently converts into a temporary.
#pragma once

#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "../config.hpp"
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
