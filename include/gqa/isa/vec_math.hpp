// gqa/isa/vec_math.hpp: exp2 and tanh written once on top of the primitive set, for every ISA.
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_ISA_VEC_MATH_HPP
#define GQA_ISA_VEC_MATH_HPP

#include "vec.hpp"

GQA_BEGIN_NAMESPACE
namespace isa {

// Note [exp accuracy]
// exp2(x) = 2^n · 2^f with n the integer nearest x, f = x − n ∈ [−0.5, 0.5] (Note [exp2 reduction by
// addition]). 2^f is a degree-6 polynomial: a
// Chebyshev fit of 2^f on [−0.5, 0.5] (mpmath `chebyfit`, error 2e-9 before rounding), its coefficients
// rounded to float and then moved by a few ulps each (a coordinate search minimising the maximum error of
// the fused Horner evaluation on every 2⁻²⁰ of the interval). One FMA fewer than the degree-7 Taylor
// polynomial it replaced (truncation 5.3e-9, maximum error 7.34e-8). Horner steps use mul_add: fused
// wherever the target has FMA (AVX2, AVX-512, NEON), a multiply and an add on targets without it (the
// x86-64 baseline, where a libm fmaf call per step would dominate the scalar core). Measured maximum
// relative error against std::exp2 in double, over EVERY float: fused 6.56e-8 (1.10 u, u = 2⁻²⁴) on
// [−126, 0] (worst at x = −0.499227) and on [0, 127] (x = 0.318308); unfused 8.91e-8 (1.50 u) on both
// (x = −0.497987, 0.502013); the Taylor polynomial gave 7.34e-8 and 9.69e-8. Within a translation unit
// every ISA computes the scalar helper's value bit for bit.
// tests/suites/vec_suite.hpp (exp2_accuracy) re-measures it on a dense grid and asserts ≤ 1e-7.
// x is clamped to [−127, 127]; every x < −126.5 returns exactly 0 (n = −127 makes the biased exponent
// 0), so masked scores (−inf) get weight exactly 0. NaN passes the clamp and gives NaN (the constant is
// the first operand of max/min, whose lane semantics `a > b ? a : b` return the second when either is
// NaN): a NaN score gives a NaN weight and the row becomes NaN, as in a naive softmax (Note [non-finite
// inputs]). The core computes softmax in base 2 with log2(e) folded into the query scale, so this is the
// only exp it needs. exp2_nonpositive is the same function without the upper clamp, for the online
// softmax, whose arguments s − m are never above 0 (Note [softmax exp2]).

// Note [softmax exp2]
// The online softmax's arguments are s − m with m the row's running max, so never above 0 (or NaN, or
// −inf − 0 for a row that has seen no finite score); there the upper clamp of exp2 is one vector operation
// per 16 scores that never changes a result. exp2_nonpositive(x) is exp2(x), bit for bit, for every x ≤ 127
// and NaN (exp2 is exp2_nonpositive after the clamp); above 127 (+inf included) its value is unspecified,
// but it is an ordinary computation on every ISA (no conversion to an integer: Note [pow2i by addition]).
// The softmax does pass such arguments in one case: the max pass may drop a NaN score (the lane max
// `a > b ? a : b` returns b when either is NaN), and then the max it finds can lie below a larger score of
// the same row, even +inf, or stay −inf (the row then uses m = 0). Such a row holds a NaN score, whose
// weight is NaN, so its l and O are NaN whatever the larger scores' weights are (Note [non-finite
// inputs]). tests/suites/core_suite.hpp (online_softmax_keeps_nan) builds this case on every ISA (under
// the sanitizers on AVX2 and AVX-512), tests/unit/nonfinite_test.cpp (core_baseline) through gqa::attend
// on the scalar baseline (under the sanitizers too, whose UBSan names float-cast-overflow), and the
// fuzzer's seed corpus holds the call through which it found the scalar pow2i converting +inf to an
// integer (tests/fuzz/corpus/ce1408b3…, replayed under UBSan by every CI run).
// Note [exp2 reduction by addition]
// n and 2^n come from one sum, y = x + (1.5·2^23 + 127) (k_pow2i_bias): for x in [−127, 127], y lies in
// [2^23, 2^24), where floats are the integers, so the addition rounds x + 127 to the nearest integer, ties
// to even (the rounding mode gqa never changes), and y = n + k_pow2i_bias exactly, with n the integer
// nearest x and, at a tie (x = k + 0.5), the odd one (127 is odd). Then n = y − k_pow2i_bias exactly, f =
// x − n lies in [−0.5, 0.5], the polynomial's interval, and 2^n is y's bits shifted left by 23 (Note
// [pow2i by addition]). Against the rounding instruction it replaces (round to nearest, ties to even) only
// the ties differ: there f is +0.5 instead of −0.5 or the reverse, an equally accurate reduction whose
// last bit may differ, and exp2(−126.5) is now 0 like every x below it. Every ISA computes the same n, so
// vectors still match the scalar helper bit for bit. An add and a subtract take the place of the rounding
// instruction and of pow2i's add. Measured (Intel Xeon, 2026-12-05, one thread, the two versions call by
// call in one process, both link orders; output bits the same on P1's, P2's and P3's random inputs): P3
// 1.007x and 1.008x (again: 1.007x and 1.002x), P1 1.001x and 1.008x, P2 0.997x and 1.011x: small, and
// two primitives (round, pow2i) replaced by one (exponent_bits).
template <class Isa>
GQA_FORCEINLINE typename vec<Isa>::reg exp2_nonpositive(typename vec<Isa>::reg x) noexcept {
  using V = vec<Isa>;
  x = V::max(V::set1(-127.0f), x);  // NaN stays NaN (Note [exp accuracy])
  const auto bias = V::set1(k_pow2i_bias);
  const auto y = V::add(x, bias);  // n + k_pow2i_bias, n nearest x (Note [exp2 reduction by addition])
  const auto n = V::sub(y, bias);
  const auto f = V::sub(x, n);
  auto p = V::set1(0x1.444p-13f);
  p = V::mul_add(p, f, V::set1(0x1.5f48cp-10f));
  p = V::mul_add(p, f, V::set1(0x1.3b2a28p-7f));
  p = V::mul_add(p, f, V::set1(0x1.c6aee4p-5f));
  p = V::mul_add(p, f, V::set1(0x1.ebfbdcp-3f));
  p = V::mul_add(p, f, V::set1(0x1.62e43p-1f));
  p = V::mul_add(p, f, V::set1(1.0f));
  return V::mul(p, V::exponent_bits(y));
}

template <class Isa>
GQA_FORCEINLINE typename vec<Isa>::reg exp2(typename vec<Isa>::reg x) noexcept {
  using V = vec<Isa>;
  return exp2_nonpositive<Isa>(V::min(V::set1(127.0f), x));  // NaN stays NaN (Note [exp accuracy])
}

/// Scalar helper with the exact semantics of exp2<Isa> lane by lane.
inline float exp2_scalar(float x) noexcept { return exp2<scalar>(x); }

// Note [tanh accuracy]
// tanh(x) = sign(x) · t(|x|), with t(a) for a = |x| in two pieces, both on the vector primitives:
// * a < 0.65: the odd Taylor polynomial a + a³·P(a²) through a¹⁹ (coefficients the series' own, rounded
//   to float); its truncation error is below 2e-8 relative at a = 0.65, so float rounding dominates, and
//   the relative error stays small down to a = 0 (no cancellation: tanh(x) ≈ x there);
// * a >= 0.65: t = 1 − 2 / (2^(2a·log2 e) + 1) with the core's exp2 (Note [exp accuracy]); t >= 0.5 there,
//   so the subtraction loses no relative accuracy; from a ≈ 9 on the result is exactly 1 (exp2 clamps
//   at 2^127, so +inf gives 1 too).
// The pieces meet where both are worst, near the cut: measured maximum relative error against std::tanh
// in double, every 2⁻¹⁵ of [−20, 20]: 1.37e-7 (2.30 u, at x = −0.684) scalar, 1.39e-7 AVX-512, fused or not
// alike; below the cut it is at most 5.9e-8 (1 u) down to 1e-30. tests/suites/vec_suite.hpp
// (tanh_accuracy) re-measures it on every ISA and asserts ≤ 1.5e-7.
// NaN stays NaN (the comparisons are false for NaN and every step keeps it). The core's logit softcap
// (Note [softcap in log2 units]) is its only user.
template <class Isa>
GQA_FORCEINLINE typename vec<Isa>::reg tanh(typename vec<Isa>::reg x) noexcept {
  using V = vec<Isa>;
  const auto zero = V::zero();
  const auto a = V::max(x, V::sub(zero, x));  // |x| (NaN stays NaN)
  // Small |x|: a + a·a²·P(a²), P the series tanh(a)/a − 1 over a² (−1/3, 2/15, −17/315, ...).
  const auto a2 = V::mul(a, a);
  auto p = V::set1(-2.3912911e-4f);                        // −443861162/1856156927625
  p = V::mul_add(p, a2, V::set1(5.9002744e-4f));           // 6404582/10854718875
  p = V::mul_add(p, a2, V::set1(-1.4558344e-3f));          // −929569/638512875
  p = V::mul_add(p, a2, V::set1(3.5921280e-3f));           // 21844/6081075
  p = V::mul_add(p, a2, V::set1(-8.8632355e-3f));          // −1382/155925
  p = V::mul_add(p, a2, V::set1(2.1869489e-2f));           // 62/2835
  p = V::mul_add(p, a2, V::set1(-5.3968254e-2f));          // −17/315
  p = V::mul_add(p, a2, V::set1(1.3333334e-1f));           // 2/15
  p = V::mul_add(p, a2, V::set1(-3.3333334e-1f));          // −1/3
  const auto small = V::mul_add(V::mul(a, a2), p, a);
  // Large |x|: 1 − 2 / (e^(2a) + 1).
  const auto e = exp2<Isa>(V::mul(a, V::set1(2.8853900817779268f)));  // 2·log2(e)
  const auto one = V::set1(1.0f);
  const auto large = V::sub(one, V::div(V::set1(2.0f), V::add(e, one)));
  const auto t = V::select_lt(a, V::set1(0.65f), small, large);
  return V::select_lt(x, zero, V::sub(zero, t), t);
}

/// Scalar helper with the exact semantics of tanh<Isa> lane by lane.
inline float tanh_scalar(float x) noexcept { return tanh<scalar>(x); }

}  // namespace isa
GQA_END_NAMESPACE

#endif  // GQA_ISA_VEC_MATH_HPP
