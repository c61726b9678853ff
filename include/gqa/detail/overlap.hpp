// gqa/detail/overlap.hpp: whether two strided views share an element, and whether one view reaches the same
// element through two indices. Exact for the layouts in use (dense, padded, permuted, interleaved views of
// one buffer); beyond a fixed search budget the answer is "unknown", which callers treat as overlapping.
// Invariant: inputs are views that passed detail::check_view, so no sum below overflows (Note [view sizes]).
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>

#include "../config.hpp"
#include "../tensor.hpp"

GQA_BEGIN_NAMESPACE
namespace detail {

// Note [exact overlap]
// Element (i_b, i_s, i_h, i_d) of a view sits at data + Σ i_k · stride_k. Two views a and b share an element
// iff Σ a.stride_k · x_k − Σ b.stride_k · y_k = b.data − a.data (in elements) has an integer solution with
// every index in its range; a view repeats an element iff Σ stride_k · z_k = 0 has a solution with
// z_k ∈ [−(n_k − 1), n_k − 1] not all zero (z = the difference of two indices; taking the first non-zero
// z_k positive, one equation per leading dimension k). Both are bounded linear equations Σ c_i·x_i = t,
// solved by a depth-first search over the terms in decreasing |c|: terms with equal |c| are merged first
// (a sum of two integer ranges is one range: that is what makes views interleaved in one buffer, which
// share every stride, cost a handful of steps), and a branch is cut when t is outside what the remaining
// terms reach or is not a multiple of their gcd. For nested strides (each stride steps over everything the
// smaller ones span: any dense or padded layout, dimensions in any order) each term admits at most two
// values, so the search visits a few dozen nodes. Strides that defeat the pruning could make it exponential,
// so it stops after k_overlap_budget nodes and answers `unknown`; the caller then rejects the call as
// "may overlap", documented as the one conservative case.
inline constexpr long k_overlap_budget = 1L << 14;

enum class overlap { none, shared, unknown };

/// Σ c_i·x_i = t over integer x_i in [lo_i, hi_i]: the bounded search of Note [exact overlap].
class bounded_sum {
 public:
  static constexpr int max_terms = 9;  // two views' four dimensions, and a byte offset (shared_element)

  /// Adds the term c·x, x in [lo, hi] (lo <= hi). |c| · max(|lo|, |hi|) must fit a view's span.
  void add(index_t c, index_t lo, index_t hi) noexcept {
    if (c < 0) {
      c = -c;
      const index_t l = lo;
      lo = -hi;
      hi = -l;
    }
    if (c == 0) return;  // contributes 0 whatever x is (its range is never empty)
    for (int i = 0; i < n_; ++i)
      if (term_[i].c == c) {
        term_[i].lo += lo;
        term_[i].hi += hi;
        return;
      }
    term_[n_++] = {c, lo, hi};
  }

  /// `shared` if a solution exists, `none` if none does, `unknown` if the search budget ran out.
  overlap solve(index_t target) noexcept {
    std::sort(term_, term_ + n_, [](const term& a, const term& b) { return a.c > b.c; });
    rest_lo_[n_] = rest_hi_[n_] = gcd_[n_] = 0;
    for (int i = n_ - 1; i >= 0; --i) {
      rest_lo_[i] = rest_lo_[i + 1] + term_[i].c * term_[i].lo;
      rest_hi_[i] = rest_hi_[i + 1] + term_[i].c * term_[i].hi;
      gcd_[i] = std::gcd(term_[i].c, gcd_[i + 1]);
    }
    budget_ = k_overlap_budget;
    return search(0, target);
  }

 private:
  struct term {
    index_t c, lo, hi;
  };

  static index_t floor_div(index_t a, index_t b) noexcept { return a / b - ((a % b != 0) && (a < 0)); }
  static index_t ceil_div(index_t a, index_t b) noexcept { return a / b + ((a % b != 0) && (a > 0)); }

  overlap search(int k, index_t t) noexcept {
    if (k == n_) return t == 0 ? overlap::shared : overlap::none;
    if (t < rest_lo_[k] || t > rest_hi_[k] || t % gcd_[k] != 0) return overlap::none;
    const term& tk = term_[k];
    // c·x must leave a remainder that the terms after k can still reach.
    const index_t x_lo = std::max(tk.lo, ceil_div(t - rest_hi_[k + 1], tk.c));
    const index_t x_hi = std::min(tk.hi, floor_div(t - rest_lo_[k + 1], tk.c));
    for (index_t x = x_lo; x <= x_hi; ++x) {
      if (--budget_ < 0) return overlap::unknown;
      const overlap r = search(k + 1, t - tk.c * x);
      if (r != overlap::none) return r;
    }
    return overlap::none;
  }

  term term_[max_terms] = {};
  int n_ = 0;
  index_t rest_lo_[max_terms + 1] = {}, rest_hi_[max_terms + 1] = {}, gcd_[max_terms + 1] = {};
  long budget_ = 0;
};

/// Whether views a and b have an element in common (for elements of different sizes, as an fp32 output
/// and a 16-bit K: whether any byte of one is a byte of the other). The byte ranges decide most calls; the
/// search of Note [exact overlap] runs only when they intersect.
template <class A, class B>
overlap shared_element(const tensor_view<A>& a, const tensor_view<B>& b) noexcept {
  constexpr auto size_a = static_cast<std::intptr_t>(sizeof(A)), size_b = static_cast<std::intptr_t>(sizeof(B));
  const offset_range ra = offsets(a), rb = offsets(b);
  const auto pa = reinterpret_cast<std::uintptr_t>(a.data), pb = reinterpret_cast<std::uintptr_t>(b.data);
  // Byte ranges [lo, hi): both lie in the address space and span at most PTRDIFF_MAX (check_view).
  const auto alo = pa - static_cast<std::uintptr_t>(-ra.lo * size_a);
  const auto ahi = pa + static_cast<std::uintptr_t>((ra.hi + 1) * size_a);
  const auto blo = pb - static_cast<std::uintptr_t>(-rb.lo * size_b);
  const auto bhi = pb + static_cast<std::uintptr_t>((rb.hi + 1) * size_b);
  if (ahi <= blo || bhi <= alo) return overlap::none;
  // The ranges intersect, so the bases are at most two spans apart (far below 2^63 bytes on any real
  // address space): the modular difference converts to the true signed one.
  const auto diff = static_cast<std::intptr_t>(pb - pa);
  const index_t ea[4] = {a.b, a.s, a.h, a.d}, sa[4] = {a.stride_b, a.stride_s, a.stride_h, a.stride_d};
  const index_t eb[4] = {b.b, b.s, b.h, b.d}, sb[4] = {b.stride_b, b.stride_s, b.stride_h, b.stride_d};
  if constexpr (size_a != size_b) {
    // In bytes: element x of a covers [A, A + size_a), element y of b covers [B, B + size_b) with
    // A = Σ size_a·stride·x, B = diff + Σ size_b·stride·y; they share a byte iff B − A = e for some
    // e in [−(size_b − 1), size_a − 1], one more bounded term of the same equation. The byte terms and
    // their sums fit: both views lie in the address space (check_view), below 2^57 bytes on any 64-bit CPU.
    bounded_sum eq;
    for (int i = 0; i < 4; ++i) {
      if (ea[i] > 1) eq.add(sa[i] * size_a, 0, ea[i] - 1);
      if (eb[i] > 1) eq.add(sb[i] * size_b, -(eb[i] - 1), 0);
    }
    eq.add(1, -(size_a - 1), size_b - 1);
    return eq.solve(static_cast<index_t>(diff));
  } else {
    constexpr auto size = size_a;
    if (diff % size != 0) return overlap::unknown;  // misaligned elements: only a byte-level test would do
    bounded_sum eq;
    for (int i = 0; i < 4; ++i) {
      if (ea[i] > 1) eq.add(sa[i], 0, ea[i] - 1);
      if (eb[i] > 1) eq.add(sb[i], -(eb[i] - 1), 0);
    }
    return eq.solve(static_cast<index_t>(diff / size));
  }
}

/// Whether two different indices of view t reach the same element. On `shared` or `unknown`, `*dim` is a
/// dimension (0 b, 1 s, 2 h, 3 d) whose stride takes part.
template <class T>
overlap repeated_element(const tensor_view<T>& t, int* dim) noexcept {
  const index_t ext[4] = {t.b, t.s, t.h, t.d}, str[4] = {t.stride_b, t.stride_s, t.stride_h, t.stride_d};
  // Fast path: dimensions sorted by |stride|, each stepping over all smaller ones (nested strides).
  int order[4] = {0, 1, 2, 3};
  // |stride|; 0 for a dimension of extent 1, whose stride is never used (and may be anything).
  auto mag = [&](int i) { return ext[i] == 1 ? index_t{0} : str[i] < 0 ? -str[i] : str[i]; };
  std::sort(order, order + 4, [&](int x, int y) { return mag(x) < mag(y); });
  index_t covered = 0;  // span of the dimensions checked so far
  bool nested = true;
  for (const int i : order) {
    if (ext[i] == 1) continue;
    if (mag(i) <= covered) {
      nested = false;
      break;
    }
    covered += (ext[i] - 1) * mag(i);
  }
  if (nested) return overlap::none;
  for (int k = 0; k < 4; ++k) {
    if (ext[k] == 1) continue;
    bounded_sum eq;
    eq.add(str[k], 1, ext[k] - 1);
    for (int j = k + 1; j < 4; ++j)
      if (ext[j] > 1) eq.add(str[j], -(ext[j] - 1), ext[j] - 1);
    const overlap r = eq.solve(0);
    if (r != overlap::none) {
      *dim = k;
      return r;
    }
  }
  return overlap::none;
}

}  // namespace detail
GQA_END_NAMESPACE
