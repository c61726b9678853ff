// gqa/detail/core/modifiers.hpp: the score modifiers of the core (logit softcap, ALiBi), applied to one
// row's block of scores in log2 units between the scores and the mask, on the vector primitives.
// Invariant: a pure function of the score, the row's parameters and the key index, so every path (tiled,
// direct, decode, split KV) modifies a given score identically; masked scores are overwritten afterwards.
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_DETAIL_CORE_MODIFIERS_HPP
#define GQA_DETAIL_CORE_MODIFIERS_HPP

#include <cmath>

#include "../../isa/vec.hpp"
#include "../../isa/vec_math.hpp"
#include "common.hpp"

GQA_BEGIN_NAMESPACE
namespace detail::core {

// Note [softcap in log2 units]
// The logit softcap (Gemma 2) replaces the natural-unit logit s = scale·q·k by cap·tanh(s / cap). The
// core's scores are s₂ = s·log2(e) (Note [base-2 softmax]), and the cap carries over unchanged in form:
// cap·tanh(s / cap)·log2(e) = c₂·tanh(s₂ / c₂) with c₂ = cap·log2(e). So the core caps its log2-unit
// scores at c₂ and needs no conversion back and forth; the result is the natural-unit capped logit in
// log2 units, exactly what the softmax, the LSE (natural log, m·ln2 + ln l) and ALiBi then expect.
// tanh is isa::tanh (Note [tanh accuracy]). An infinite score caps to ±c₂ (finite, as in a naive
// softcapped softmax), a NaN stays NaN.

// Note [one rounding for ALiBi]
// A far row's ALiBi bias is large (slope · distance: tens of log2 units when the queries lie far past the
// keys, sq > skv bottom-right), and the biased score, of the same size, keeps only float's ~7 digits of
// it, which is all the precision the row's weights then have. So the bias and the score are summed with
// one rounding: a fused multiply-add on the vector ISAs, and on the scalar one (whose mul_add is a
// multiply and an add where the target has no FMA, Note [exp accuracy]) a sum in double of the exact
// product, then rounded to float. With two roundings the scalar core's error reached 2.8 times a naive
// float attention's (d 1, 63 keys, 278 queries, slope 0.109: the random sweep, seed 7, case 18826), past
// the tests' bound of twice (Note [attention tolerance] in tests/support/tolerance.hpp).

template <class Isa>
struct score_modifiers {
  using V = isa::vec<Isa>;
  static constexpr int L = V::lanes;

  /// s[j] -= slope2·|diag − j| for j < n (n a multiple of L): ALiBi in log2 units (slope2 = slope·log2(e)),
  /// diag = the row's diagonal key minus the block's first key (exact in float: |diag| < 2^24), rounded
  /// once (Note [one rounding for ALiBi]).
  static void alibi(float* s, index_t n, float slope2, float diag) noexcept {
    if constexpr (L == 1) {
      for (index_t j = 0; j < n; ++j) {
        const double a = std::fabs(static_cast<double>(diag) - static_cast<double>(j));
        s[j] = static_cast<float>(static_cast<double>(s[j]) - static_cast<double>(slope2) * a);
      }
      return;
    }
    alignas(64) static constexpr float iota[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    static_assert(L <= 16, "iota holds 16 lanes");
    const auto neg_slope = V::set1(-slope2), step = V::set1(static_cast<float>(L)), zero = V::zero();
    auto dist = V::sub(V::set1(diag), V::load(iota));  // diag − j
    for (index_t j = 0; j < n; j += L) {
      const auto a = V::max(dist, V::sub(zero, dist));
      V::store(s + j, V::mul_add(neg_slope, a, V::load(s + j)));
      dist = V::sub(dist, step);
    }
  }

  /// s[0, n) = c₂·tanh(s / c₂) (n a multiple of L; cap2 = c₂ > 0).
  static void softcap(float* s, index_t n, float cap2) noexcept {
    const auto c = V::set1(cap2), inv = V::set1(1.0f / cap2);
    for (index_t j = 0; j < n; j += L) V::store(s + j, V::mul(c, isa::tanh<Isa>(V::mul(V::load(s + j), inv))));
  }
};

}  // namespace detail::core
GQA_END_NAMESPACE

#endif  // GQA_DETAIL_CORE_MODIFIERS_HPP
