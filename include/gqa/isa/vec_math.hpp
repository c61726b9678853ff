// gqa/isa/vec_math.hpp: exp2 written once on top of the primitive set, for every ISA.
#pragma once

#include "vec.hpp"

GQA_BEGIN_NAMESPACE
namespace isa {

// Note [exp accuracy]
// exp2(x) = 2^n · 2^f with n = round(x), f = x − n ∈ [−0.5, 0.5]. 2^f is the degree-7 Taylor polynomial
// of e^(f·ln2) (coefficients ln2^k/k! rounded to float), whose truncation error is below 5.3e-9 on that
// interval, so float rounding dominates. Horner steps use mul_add: fused wherever the target has FMA
// (AVX2, AVX-512, NEON), a multiply and an add on targets without it (the x86-64 baseline, where a libm
// fmaf call per step would dominate the scalar core). Measured maximum relative error against std::exp2
// in double, over EVERY float: fused 7.34e-8 (1.23 u, u = 2⁻²⁴) on [−126, 0] (worst at x = −0.499839)
// and 7.29e-8 on [0, 127]; unfused 9.69e-8 (1.63 u) on [−126, 0] (worst at x = −0.498324) and on
// [0, 127] (x = 0.501676). Within a translation unit every ISA computes the scalar helper's value bit
// for bit.
// tests/suites/vec_suite.hpp (exp2_accuracy) re-measures it on a dense grid and asserts ≤ 1e-7.
// x is clamped to [−127, 127]; every x < −126.5 returns exactly 0 (n = −127 makes the biased exponent
// 0), so masked scores (−inf) get weight exactly 0. NaN passes the clamp and gives NaN (the constant is
// the first operand of max/min, whose lane semantics `a > b ? a : b` return the second when either is
// NaN): a NaN score gives a NaN weight and the row becomes NaN, as in a naive softmax (Note [non-finite
// inputs]). The core computes softmax in base 2 with log2(e) folded into the query scale, so this is the
// only exp it needs.
template <class Isa>
GQA_FORCEINLINE typename vec<Isa>::reg exp2(typename vec<Isa>::reg x) noexcept {
  using V = vec<Isa>;
  x = V::min(V::set1(127.0f), V::max(V::set1(-127.0f), x));  // NaN stays NaN (see above)
  const auto n = V::round(x);
  const auto f = V::sub(x, n);
  auto p = V::set1(0x1.ffcbfcp-17f);
  p = V::mul_add(p, f, V::set1(0x1.430912p-13f));
  p = V::mul_add(p, f, V::set1(0x1.5d87fep-10f));
  p = V::mul_add(p, f, V::set1(0x1.3b2ab6p-7f));
  p = V::mul_add(p, f, V::set1(0x1.c6b08ep-5f));
  p = V::mul_add(p, f, V::set1(0x1.ebfbe0p-3f));
  p = V::mul_add(p, f, V::set1(0x1.62e430p-1f));
  p = V::mul_add(p, f, V::set1(1.0f));
  return V::mul(p, V::pow2i(n));
}

/// Scalar helper with the exact semantics of exp2<Isa> lane by lane.
inline float exp2_scalar(float x) noexcept { return exp2<scalar>(x); }

}  // namespace isa
GQA_END_NAMESPACE
