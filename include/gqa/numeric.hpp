// gqa/numeric.hpp: gqa's 16-bit storage types, gqa::bf16 (bfloat16) and gqa::f16 (IEEE binary16), their
// exact scalar conversions from and to float, and the element types a K/V view may have.
// Invariant: to_float is exact (every 16-bit value is a float); from_float rounds to nearest, ties to even,
// overflows to ±inf, and keeps NaN a NaN with its sign and payload, so every one of the 65,536 bit patterns
// of either type goes to float and back unchanged (Note [16-bit conversions]). ISA-independent: plain
// integer code, constexpr, included once per TU outside any per-target region.
#pragma once

#include <bit>
#include <cstdint>
#include <type_traits>

#include "config.hpp"

GQA_BEGIN_NAMESPACE

// Note [16-bit conversions]
// bf16 is the top half of a float (1 sign, 8 exponent, 7 mantissa bits): widening shifts the bits left by
// 16, narrowing rounds the low 16 bits away (add 0x7FFF plus the kept half's lowest bit, then shift: round
// to nearest, ties to even, and a carry into the exponent is the correct result, up to +inf).
// f16 has 5 exponent bits (bias 15) and 10 mantissa bits: normal values from 2^-14 to 65504, subnormals
// down to 2^-24. Narrowing a float: |x| >= 65520 (65504 plus half an ulp, which ties to even: to 65536,
// an overflow) gives ±inf; normal results rebias the exponent and round 13 mantissa bits away as bf16
// does; below 2^-14 the 24-bit significand is shifted right by 14 to 24 places and rounded to nearest
// even by its remainder (|x| <= 2^-25 gives ±0; results may round up into the smallest normal).
// NaN: narrowing keeps the sign and the payload's top bits (setting the quiet bit only when those bits
// are all zero, which would read as infinity), widening keeps all of them, so a NaN of either type goes to
// float and back bit for bit. The vector widening loads (isa/vec*.hpp) give the same floats for every
// pattern, except that F16C's and NEON's f16 conversions quiet a signalling NaN (set the top payload
// bit): a NaN still, as the attention's rules need (docs/design.md, "Non-finite inputs").

/// bfloat16: the top 16 bits of a float32. A trivially copyable 2-byte value type for storage (K/V
/// caches); arithmetic happens after widening to float. `bf16(x)` rounds x to nearest even,
/// `float(b)` is exact (Note [16-bit conversions]).
struct bf16 {
  std::uint16_t bits;  ///< the encoding: sign, 8 exponent bits, 7 mantissa bits

  bf16() = default;  // trivial: like float, uninitialised unless value-initialised (then +0)
  constexpr explicit bf16(float x) noexcept;
  constexpr explicit operator float() const noexcept;
  static constexpr bf16 from_bits(std::uint16_t b) noexcept {
    bf16 r;
    r.bits = b;
    return r;
  }
};

/// IEEE 754 binary16 ("half"): 1 sign, 5 exponent, 10 mantissa bits, subnormals, inf and NaN. A trivially
/// copyable 2-byte value type for storage; `f16(x)` rounds x to nearest even, `float(h)` is exact.
struct f16 {
  std::uint16_t bits;  ///< the encoding: sign, 5 exponent bits, 10 mantissa bits

  f16() = default;
  constexpr explicit f16(float x) noexcept;
  constexpr explicit operator float() const noexcept;
  static constexpr f16 from_bits(std::uint16_t b) noexcept {
    f16 r;
    r.bits = b;
    return r;
  }
};

static_assert(sizeof(bf16) == 2 && alignof(bf16) == 2 && std::is_trivially_copyable_v<bf16> && std::is_trivial_v<bf16>);
static_assert(sizeof(f16) == 2 && alignof(f16) == 2 && std::is_trivially_copyable_v<f16> && std::is_trivial_v<f16>);

namespace detail {

/// float -> bf16 bits, round to nearest even (Note [16-bit conversions]).
constexpr std::uint16_t bf16_bits(float x) noexcept {
  const auto u = std::bit_cast<std::uint32_t>(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) {  // NaN: keep sign and top payload; never let it read as inf
    const auto h = static_cast<std::uint16_t>(u >> 16);
    return (h & 0x007Fu) != 0 ? h : static_cast<std::uint16_t>(h | 0x0040u);
  }
  return static_cast<std::uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/// bf16 bits -> float, exact.
constexpr float bf16_to_float(std::uint16_t b) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

/// float -> f16 bits, round to nearest even (Note [16-bit conversions]).
constexpr std::uint16_t f16_bits(float x) noexcept {
  const auto u = std::bit_cast<std::uint32_t>(x);
  const auto sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) {  // NaN
    const auto payload = static_cast<std::uint16_t>((a >> 13) & 0x03FFu);
    return static_cast<std::uint16_t>(sign | 0x7C00u | (payload != 0 ? payload : 0x0200u));
  }
  if (a >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // >= 65520: inf (and inf itself)
  if (a >= 0x38800000u) {                                                    // >= 2^-14: a normal f16
    const std::uint32_t r = a - 0x38000000u;                                 // exponent rebiased, 127 -> 15
    return static_cast<std::uint16_t>(sign | ((r + 0x0FFFu + ((r >> 13) & 1u)) >> 13));
  }
  if (a <= 0x33000000u) return sign;  // <= 2^-25: ±0 (2^-25 itself ties to the even 0)
  // A subnormal result: value = m · 2^(e - 150) = (m >> (126 - e)) units of 2^-24, rounded.
  const std::uint32_t e = a >> 23;                     // 102 .. 112
  const std::uint32_t m = (a & 0x007FFFFFu) | 0x00800000u;  // 24-bit significand
  const std::uint32_t shift = 126 - e;                  // 14 .. 24
  std::uint32_t q = m >> shift;
  const std::uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1u) != 0)) ++q;  // may carry into the smallest normal: correct
  return static_cast<std::uint16_t>(sign | q);
}

/// f16 bits -> float, exact. Normal numbers, inf and NaN rebias the exponent (31 becomes 255, so inf and
/// every NaN payload are kept); zero and subnormals are m · 2^-24 = 2^-14 · (1 + m/1024) − 2^-14, exact.
/// Integer selects and one subtraction, no branches, so loops over f16 rows (the policies' key norms and
/// WGQA's combination) vectorise: measured 6x faster there than a branching conversion.
constexpr float f16_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x03FFu;
  const std::uint32_t normal = ((e == 0x1Fu ? 0xFFu : e + 112u) << 23) | (m << 13);
  const float small = std::bit_cast<float>((113u << 23) | (m << 13)) - 0x1p-14f;
  return std::bit_cast<float>(sign | (e == 0 ? std::bit_cast<std::uint32_t>(small) : normal));
}

}  // namespace detail

constexpr bf16::bf16(float x) noexcept : bits(detail::bf16_bits(x)) {}
constexpr bf16::operator float() const noexcept { return detail::bf16_to_float(bits); }
constexpr f16::f16(float x) noexcept : bits(detail::f16_bits(x)) {}
constexpr f16::operator float() const noexcept { return detail::f16_to_float(bits); }

/// The value as a float: exact for every element type gqa stores (identity for float).
constexpr float to_float(float x) noexcept { return x; }
constexpr float to_float(bf16 x) noexcept { return detail::bf16_to_float(x.bits); }
constexpr float to_float(f16 x) noexcept { return detail::f16_to_float(x.bits); }

/// x rounded to element type T (float: x itself; bf16, f16: to nearest even).
template <class T>
constexpr T from_float(float x) noexcept {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    return T(x);
  }
}

/// The element types a K/V view (tensor_view<const T>) may have: float, bf16, f16. Q and O are float, or
/// the K/V's 16-bit type (Note [16-bit Q/O] in detail/core/layout.hpp).
template <class T>
concept kv_element = std::is_same_v<T, float> || std::is_same_v<T, bf16> || std::is_same_v<T, f16>;

/// The name of element type T in messages and benchmark names: "f32", "bf16", "f16".
template <kv_element T>
inline constexpr const char* element_name = std::is_same_v<T, float> ? "f32" : std::is_same_v<T, bf16> ? "bf16" : "f16";

GQA_END_NAMESPACE
