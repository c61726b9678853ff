// gqa/detail/core/common.hpp: the core's ISA-independent constants and index arithmetic.
// Invariant: nothing here depends on the ISA or includes an ISA header, so a translation unit that builds
// the core once per ISA (run-time dispatch) can include this once, outside any per-ISA region.
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_DETAIL_CORE_COMMON_HPP
#define GQA_DETAIL_CORE_COMMON_HPP

#include <limits>

#include "../../config.hpp"

GQA_BEGIN_NAMESPACE
namespace detail::core {

inline constexpr float k_log2e = 1.4426950408889634f;
inline constexpr float k_ln2 = 0.6931471805599453f;
inline constexpr float k_neg_inf = -std::numeric_limits<float>::infinity();

/// x rounded up to a multiple of m (x >= 0, m >= 1).
constexpr index_t round_up(index_t x, index_t m) noexcept { return (x + m - 1) / m * m; }
/// Largest power of two <= x (x >= 1).
constexpr int pow2_floor(int x) noexcept { return x < 2 ? 1 : 2 * pow2_floor(x / 2); }

// Note [causal staircase]
// Inside a key block cut by the causal horizon, row r sees only the block's first lim(r) keys, and lim is
// non-decreasing in r (rows go by position). P·V must not merely weight the hidden keys by 0: a NaN or
// infinite V element times 0 is NaN, which would cross the mask. So the rows' P·V runs as a staircase:
// keys [0, lim(0)) for rows [0, n), then keys [lim(0), lim(1)) for rows [1, n), and so on. Every output
// element is still one chain over its keys in ascending order, so for finite V the result is bitwise that
// of the full block with zero weights (fma(0, v, acc) = acc), and it skips the hidden keys' FMAs.

/// For rows [0, n) with non-decreasing key limits lim(r): fn(first, k_lo, k_hi) for each step of the
/// staircase, meaning rows [first, n) take keys [k_lo, k_hi) (k_lo < k_hi, steps in ascending key order).
template <class Lim, class Fn>
GQA_FORCEINLINE void staircase(index_t n, Lim&& lim, Fn&& fn) {
  index_t k_lo = 0;
  for (index_t first = 0; first < n; ++first) {
    const index_t k_hi = lim(first);
    if (k_hi > k_lo) {
      fn(first, k_lo, k_hi);
      k_lo = k_hi;
    }
  }
}

/// B operands of the register tile (tile.hpp), by how their rows are found: at one stride (every product
/// of the core, V read in place from a dense view) or listed one pointer per row (V read in place from a
/// paged cache, Note [key runs]); col is the first column of the slab the tile computes.
struct strided_b {
  const float* base;
  index_t ld;
  const float* row(index_t k) const noexcept { return base + k * ld; }
};
struct listed_b {
  const float* const* rows;
  index_t col;
  const float* row(index_t k) const noexcept { return rows[k] + col; }
};

/// A real load of *p whose value is discarded (the compiler may not drop it; unlike a prefetch hint it
/// is never ignored by the CPU and trains the hardware prefetcher).
GQA_FORCEINLINE void touch(const float* p) noexcept {
  const float x = *static_cast<const volatile float*>(p);
  static_cast<void>(x);
}
/// touch() of one float per 64-byte cache line of the n floats at p.
GQA_FORCEINLINE void touch_lines(const float* p, index_t n) noexcept {
  for (index_t x = 0; x < n; x += 16) touch(p + x);
}

}  // namespace detail::core
GQA_END_NAMESPACE

#endif  // GQA_DETAIL_CORE_COMMON_HPP
