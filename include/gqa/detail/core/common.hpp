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
