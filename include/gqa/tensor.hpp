// gqa/tensor.hpp: tensor_view<T>, a non-owning 4-D strided view over caller memory.
// Logical order is always (batch, seq, heads, head_dim); strides are in elements and arbitrary, so
// BSHD (fused QKV projections) and BHSD (PyTorch SDPA) buffers are both viewed without copies.
#pragma once

#include <string>
#include <type_traits>

#include "config.hpp"
#include "errors.hpp"

GQA_BEGIN_NAMESPACE

/// A view of `b × s × h × d` elements of type T (use `const float` for inputs).
/// Element (ib, is, ih, id) lives at `data[ib*stride_b + is*stride_s + ih*stride_h + id*stride_d]`.
/// The attention entry points require `stride_d == 1` (contiguous head vectors).
template <class T>
struct tensor_view {
  T* data = nullptr;
  index_t b = 0, s = 0, h = 0, d = 0;
  index_t stride_b = 0, stride_s = 0, stride_h = 0, stride_d = 1;

  /// Pointer to the head vector (ib, is, ih, 0).
  T* row(index_t ib, index_t is, index_t ih) const noexcept {
    return data + ib * stride_b + is * stride_s + ih * stride_h;
  }
  T& operator()(index_t ib, index_t is, index_t ih, index_t id) const noexcept {
    return row(ib, is, ih)[id * stride_d];
  }
  /// tensor_view<float> converts to tensor_view<const float>.
  template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
  tensor_view(const tensor_view<U>& o) noexcept  // NOLINT(google-explicit-constructor)
      : data(o.data), b(o.b), s(o.s), h(o.h), d(o.d),
        stride_b(o.stride_b), stride_s(o.stride_s), stride_h(o.stride_h), stride_d(o.stride_d) {}
  tensor_view() = default;
  tensor_view(T* p, index_t b_, index_t s_, index_t h_, index_t d_, index_t sb, index_t ss, index_t sh,
              index_t sd = 1) noexcept
      : data(p), b(b_), s(s_), h(h_), d(d_), stride_b(sb), stride_s(ss), stride_h(sh), stride_d(sd) {}
};

/// View a contiguous buffer laid out as [b][s][h][d] (what a fused QKV projection produces).
template <class T>
tensor_view<T> bshd(T* p, index_t b, index_t s, index_t h, index_t d) noexcept {
  return {p, b, s, h, d, s * h * d, h * d, d, 1};
}
/// View a contiguous buffer laid out as [b][h][s][d] (what PyTorch SDPA takes). Note the argument order
/// follows the memory layout; the view is still indexed (b, s, h, d).
template <class T>
tensor_view<T> bhsd(T* p, index_t b, index_t h, index_t s, index_t d) noexcept {
  return {p, b, s, h, d, h * s * d, d, s * d, 1};
}

namespace detail {
/// Validates a view passed as argument `name` of function `where`: non-null data, positive extents and,
/// when `unit_stride_d`, contiguous head vectors (what every kernel entry point requires).
template <class T>
inline void check_view(const tensor_view<T>& t, const char* name, const char* where = "gqa::attend",
                       bool unit_stride_d = true) {
  const std::string n(name);
  require(t.data != nullptr, where, (n + ".data").c_str(), "nullptr", "must not be null");
  require(t.b > 0, where, (n + ".b").c_str(), t.b, "batch must be positive");
  require(t.s > 0, where, (n + ".s").c_str(), t.s, "sequence length must be positive");
  require(t.h > 0, where, (n + ".h").c_str(), t.h, "head count must be positive");
  require(t.d > 0, where, (n + ".d").c_str(), t.d, "head dim must be positive");
  if (unit_stride_d)
    require(t.stride_d == 1, where, (n + ".stride_d").c_str(), t.stride_d,
            "head_dim stride must be 1 (each head vector contiguous); copy or re-view the tensor");
}
}  // namespace detail

GQA_END_NAMESPACE
