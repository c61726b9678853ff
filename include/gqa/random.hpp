// gqa/random.hpp: gqa's seeded, counter-based random numbers (DGQA's sum repair, PGQA's noise, WGQA's
// random initialisation). Every draw is a pure function of (seed, key...), so results never depend on the
// thread count, the ISA, the tile size or the standard library (std:: distributions are never used: their
// output is not specified by the C++ standard and differs between libstdc++, libc++ and MSVC).
#pragma once

#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "config.hpp"

GQA_BEGIN_NAMESPACE
namespace random {

/// SplitMix64's output function: a bijective 64-bit mixer with full avalanche.
constexpr std::uint64_t mix64(std::uint64_t z) noexcept {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

inline constexpr std::uint64_t k_golden = 0x9e3779b97f4a7c15ULL;

/// The state of hash(seed, ...) before any key.
constexpr std::uint64_t hash_start(std::uint64_t seed) noexcept { return mix64(seed + k_golden); }
/// The state after absorbing `key` as the `position`-th key (1-based) into state h.
constexpr std::uint64_t hash_absorb(std::uint64_t h, std::uint64_t key, std::uint64_t position) noexcept {
  return mix64(h ^ mix64(key + k_golden * position));
}

/// 64 random bits keyed by (seed, keys...): each key is absorbed by one mix64 round, with its position
/// folded in so that (1, 2) and (2, 1) differ. A caller drawing many values that share leading keys can
/// absorb the shared prefix once: hash(s, {a, b, n}) == hash_absorb(hash_absorb(hash_absorb(
/// hash_start(s), a, 1), b, 2), n, 3).
constexpr std::uint64_t hash(std::uint64_t seed, std::initializer_list<std::uint64_t> keys) noexcept {
  std::uint64_t h = hash_start(seed);
  std::uint64_t i = 1;
  for (const std::uint64_t k : keys) h = hash_absorb(h, k, i++);
  return h;
}

/// A float in [0, 1) from the top 24 bits of u: (u >> 40) · 2⁻²⁴ (exactly representable, never 1).
constexpr float to_unit_float(std::uint64_t u) noexcept {
  return static_cast<float>(static_cast<std::uint32_t>(u >> 40)) * 0x1p-24f;
}

/// A double in (0, 1) from the top 53 bits of u, offset by half a step so it is never 0 (safe for log).
constexpr double to_open_unit_double(std::uint64_t u) noexcept {
  return (static_cast<double>(u >> 11) + 0.5) * 0x1p-53;
}

/// A sequential stream over a fixed key: draw i is hash(seed, {key, i}). Copyable state: (seed, key,
/// counter); saving and restoring `counter` replays the same draws.
struct stream {
  std::uint64_t seed = 0;
  std::uint64_t key = 0;
  std::uint64_t counter = 0;

  constexpr std::uint64_t next_u64() noexcept { return hash(seed, {key, counter++}); }
  constexpr std::uint32_t next_u32() noexcept { return static_cast<std::uint32_t>(next_u64() >> 32); }
  constexpr float next_float() noexcept { return to_unit_float(next_u64()); }

  /// Uniform integer in [0, n), n >= 1: Lemire's multiply-shift with rejection, so it is exactly
  /// uniform; a rejection consumes another draw.
  constexpr std::uint32_t uniform_int(std::uint32_t n) noexcept {
    std::uint64_t m = static_cast<std::uint64_t>(next_u32()) * n;
    auto low = static_cast<std::uint32_t>(m);
    if (low < n) {
      const std::uint32_t threshold = static_cast<std::uint32_t>(-n) % n;
      while (low < threshold) {
        m = static_cast<std::uint64_t>(next_u32()) * n;
        low = static_cast<std::uint32_t>(m);
      }
    }
    return static_cast<std::uint32_t>(m >> 32);
  }

  /// Standard normal N(0, 1) by Box-Muller in double (one pair of uniforms per draw, the sine half is
  /// discarded so every draw consumes exactly two counters).
  double next_normal() noexcept {
    const double u1 = to_open_unit_double(next_u64());
    const double u2 = to_open_unit_double(next_u64());
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
};

}  // namespace random
GQA_END_NAMESPACE
