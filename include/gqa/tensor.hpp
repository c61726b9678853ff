// gqa/tensor.hpp: tensor_view<T>, a non-owning 4-D strided view over caller memory, and the checks every
// entry point runs on a view. Logical order is always (batch, seq, heads, head_dim); strides are in
// elements and arbitrary, so BSHD (fused QKV projections) and BHSD (PyTorch SDPA) buffers are both viewed
// without copies. Invariant: a view that passed detail::check_view has an element count and a memory span
// that fit in std::ptrdiff_t, so every index expression on it is free of overflow (Note [view sizes]).
#pragma once

#include <cstdint>
#include <limits>
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

namespace detail {
/// a · b with two's-complement wrap-around instead of undefined behaviour. The view builders use it so that
/// absurd extents give absurd strides, which check_view then rejects, rather than undefined behaviour.
constexpr index_t wrapping_mul(index_t a, index_t b) noexcept {
  return static_cast<index_t>(static_cast<std::uint64_t>(a) * static_cast<std::uint64_t>(b));
}
}  // namespace detail

/// View a contiguous buffer laid out as [b][s][h][d] (what a fused QKV projection produces).
template <class T>
tensor_view<T> bshd(T* p, index_t b, index_t s, index_t h, index_t d) noexcept {
  using detail::wrapping_mul;
  return {p, b, s, h, d, wrapping_mul(wrapping_mul(s, h), d), wrapping_mul(h, d), d, 1};
}
/// View a contiguous buffer laid out as [b][h][s][d] (what PyTorch SDPA takes). Note the argument order
/// follows the memory layout; the view is still indexed (b, s, h, d).
template <class T>
tensor_view<T> bhsd(T* p, index_t b, index_t h, index_t s, index_t d) noexcept {
  using detail::wrapping_mul;
  return {p, b, s, h, d, wrapping_mul(wrapping_mul(h, s), d), d, wrapping_mul(s, d), 1};
}

/// View the first s positions of a KV cache allocated as [b][capacity][h][d] (capacity positions per
/// sequence, filled to a per-sequence length): the batch stride is capacity·h·d, so batch > 1 needs no
/// stride by hand. Pass s = capacity (or the longest length) and each sequence's length in
/// attention_options::kv_lengths. Throws gqa::invalid_argument unless 0 <= s <= capacity.
template <class T>
tensor_view<T> bshd(T* p, index_t b, index_t s, index_t h, index_t d, index_t capacity) {
  detail::require(s >= 0 && s <= capacity, "gqa::bshd", "s", s, "must be in [0, capacity = ", capacity, "]");
  tensor_view<T> t = bshd(p, b, s, h, d);
  t.stride_b = detail::wrapping_mul(detail::wrapping_mul(capacity, h), d);
  return t;
}
/// The same for a cache allocated as [b][h][capacity][d]: the first s positions of each (batch, head).
template <class T>
tensor_view<T> bhsd(T* p, index_t b, index_t h, index_t s, index_t d, index_t capacity) {
  detail::require(s >= 0 && s <= capacity, "gqa::bhsd", "s", s, "must be in [0, capacity = ", capacity, "]");
  tensor_view<T> t = bhsd(p, b, h, s, d);
  t.stride_b = detail::wrapping_mul(detail::wrapping_mul(h, capacity), d);
  t.stride_h = detail::wrapping_mul(capacity, d);
  return t;
}

namespace detail {

// Note [view sizes]
// A view is only meaningful if it could describe memory, so check_view enforces, for element type T and
// M = PTRDIFF_MAX / sizeof(T) (the most elements any C++ object of T can hold):
//   * count: b · s · h · d <= M, even along zero (broadcast) strides; this bounds every size the core
//     derives from the extents (rows · d, b · hq · sq for the LSE, rounded-up key counts);
//   * span: Σ (extent − 1) · |stride| < M, i.e. the bytes from the lowest to the highest element fit in
//     std::ptrdiff_t; every partial sum of index × stride then fits too, so element addresses computed
//     anywhere in gqa cannot overflow;
//   * address: the lowest and the highest element lie inside the address space (no wrap-around through
//     a negative stride).
// Each product and sum is checked before it is formed (checked_mul / checked_add), so an absurd size is
// reported, naming the extent or stride that broke the rule, instead of wrapping to a plausible one.

/// a · b for a, b >= 0 into `out`; false (out untouched) if the product exceeds `limit`.
constexpr bool checked_mul(index_t a, index_t b, index_t limit, index_t& out) noexcept {
  if (a != 0 && b > limit / a) return false;
  out = a * b;
  return true;
}
/// a + b for a, b >= 0 into `out`; false (out untouched) if the sum exceeds `limit`.
constexpr bool checked_add(index_t a, index_t b, index_t limit, index_t& out) noexcept {
  if (b > limit - a) return false;
  out = a + b;
  return true;
}

/// M of Note [view sizes]: the most elements of type T that one object can hold.
template <class T>
inline constexpr index_t max_elements = static_cast<index_t>(std::numeric_limits<std::ptrdiff_t>::max() / sizeof(T));

/// Lowest and highest element offset of a view, in elements relative to data.
struct offset_range {
  index_t lo = 0, hi = 0;
};
/// The offset_range of a view that passed check_view (which guarantees no overflow here).
template <class T>
constexpr offset_range offsets(const tensor_view<T>& t) noexcept {
  offset_range r;
  const index_t ext[4] = {t.b, t.s, t.h, t.d};
  const index_t str[4] = {t.stride_b, t.stride_s, t.stride_h, t.stride_d};
  for (int i = 0; i < 4; ++i) (str[i] < 0 ? r.lo : r.hi) += (ext[i] - 1) * str[i];
  return r;
}

/// Validates a view passed as argument `name` of function `where`: non-null data, positive extents,
/// sizes within Note [view sizes] and, when `unit_stride_d`, contiguous head vectors (what every kernel
/// entry point requires). Allocates nothing unless it throws.
template <class T>
inline void check_view(const tensor_view<T>& t, const char* name, const char* where = "gqa::attend",
                       bool unit_stride_d = true) {
  require(t.data != nullptr, where, field{name, "data"}, "nullptr", "must not be null");
  require(t.b > 0, where, field{name, "b"}, t.b, "batch must be positive");
  require(t.s > 0, where, field{name, "s"}, t.s, "sequence length must be positive");
  require(t.h > 0, where, field{name, "h"}, t.h, "head count must be positive");
  require(t.d > 0, where, field{name, "d"}, t.d, "head dim must be positive");
  if (unit_stride_d)
    require(t.stride_d == 1, where, field{name, "stride_d"}, t.stride_d,
            "head_dim stride must be 1 (each head vector contiguous); copy or re-view the tensor");

  constexpr index_t M = max_elements<T>;
  static constexpr const char* ext_name[4] = {"b", "s", "h", "d"};
  static constexpr const char* str_name[4] = {"stride_b", "stride_s", "stride_h", "stride_d"};
  const index_t ext[4] = {t.b, t.s, t.h, t.d};
  const index_t str[4] = {t.stride_b, t.stride_s, t.stride_h, t.stride_d};
  index_t count = 1, span = 0;
  for (int i = 0; i < 4; ++i) {
    if (!checked_mul(count, ext[i], M, count))
      fail(where, ": ", field{name, ext_name[i]}, " = ", ext[i], ": ", name, " would have more than ", M,
           " elements (b·s·h·d), more than any buffer can hold");
    // |stride| of INT64_MIN does not exist; any stride beyond M is too large for an extent >= 2 anyway.
    const index_t mag = str[i] == std::numeric_limits<index_t>::min() ? M : (str[i] < 0 ? -str[i] : str[i]);
    index_t term = 0;
    if (!checked_mul(ext[i] - 1, mag, M, term) || !checked_add(span, term, M - 1, span))
      fail(where, ": ", field{name, str_name[i]}, " = ", str[i], ": with ", field{name, ext_name[i]}, " = ", ext[i],
           ", ", name, " would span more than PTRDIFF_MAX bytes");
  }
  const offset_range r = offsets(t);
  const auto base = reinterpret_cast<std::uintptr_t>(t.data);
  const auto below = static_cast<std::uintptr_t>(-r.lo) * sizeof(T);
  const auto above = static_cast<std::uintptr_t>(r.hi) * sizeof(T) + sizeof(T);
  if (base < below || std::numeric_limits<std::uintptr_t>::max() - base < above)
    fail(where, ": ", field{name, "data"}, " = ", static_cast<const void*>(t.data), ": ", name,
         "'s strides reach outside the address space");
}

}  // namespace detail

GQA_END_NAMESPACE
