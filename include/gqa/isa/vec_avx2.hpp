// gqa/isa/vec_avx2.hpp: the vector primitive set on AVX2 + FMA (8 floats per __m256).
// Same meaning lane by lane as vec<scalar> (vec_scalar.hpp); only compiled when GQA_HAS_AVX2.
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_ISA_VEC_AVX2_HPP
#define GQA_ISA_VEC_AVX2_HPP

#include "../config.hpp"
#include "tags.hpp"
#include "vec_scalar.hpp"

#if GQA_HAS_AVX2
#include <immintrin.h>

GQA_BEGIN_NAMESPACE
namespace isa {

template <>
struct vec<avx2> {
  using reg = __m256;
  static constexpr int lanes = 8;
  /// See Note [tile shape] (vec_scalar.hpp).
  struct tile_shape {
    static constexpr int mr = 6, nr = 2;  // 12 acc + 2 K/V + 1 broadcast = 15 of 16 ymm
    static constexpr int block_kv = 128;
    static constexpr int block_kv_decode = 64;  // all heads of 64 positions: 64 x Hkv x d x 8 bytes in flight
    static constexpr int rows = 192;
    static constexpr int direct_qk_rows = 2, direct_acc = 8;  // Q·K: 8 acc + 4 K + 1 Q; P·V: 8 acc + V + 1
  };

  static GQA_FORCEINLINE reg zero() noexcept { return _mm256_setzero_ps(); }
  static GQA_FORCEINLINE reg set1(float x) noexcept { return _mm256_set1_ps(x); }
  static GQA_FORCEINLINE reg load(const float* p) noexcept { return _mm256_loadu_ps(p); }
  static GQA_FORCEINLINE void store(float* p, reg v) noexcept { _mm256_storeu_ps(p, v); }
  /// Lane i is active iff i < n. vmaskmov never touches (or faults on) inactive lanes' memory.
  static GQA_FORCEINLINE __m256i mask(int n) noexcept {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static GQA_FORCEINLINE reg load_partial(const float* p, int n) noexcept { return _mm256_maskload_ps(p, mask(n)); }
  static GQA_FORCEINLINE void store_partial(float* p, reg v, int n) noexcept { _mm256_maskstore_ps(p, mask(n), v); }
  static GQA_FORCEINLINE reg add(reg a, reg b) noexcept { return _mm256_add_ps(a, b); }
  static GQA_FORCEINLINE reg sub(reg a, reg b) noexcept { return _mm256_sub_ps(a, b); }
  static GQA_FORCEINLINE reg mul(reg a, reg b) noexcept { return _mm256_mul_ps(a, b); }
  static GQA_FORCEINLINE reg fma(reg a, reg b, reg c) noexcept { return _mm256_fmadd_ps(a, b, c); }
  static GQA_FORCEINLINE reg mul_add(reg a, reg b, reg c) noexcept { return fma(a, b, c); }
  // max/min: `a > b ? a : b` semantics (vmaxps returns the second operand when either is NaN).
  static GQA_FORCEINLINE reg max(reg a, reg b) noexcept { return _mm256_max_ps(a, b); }
  static GQA_FORCEINLINE reg min(reg a, reg b) noexcept { return _mm256_min_ps(a, b); }
  static GQA_FORCEINLINE reg div(reg a, reg b) noexcept { return _mm256_div_ps(a, b); }
  static GQA_FORCEINLINE reg select_lt(reg a, reg b, reg x, reg y) noexcept {
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(a, b, _CMP_LT_OQ));
  }
  static GQA_FORCEINLINE __m128 half_sum(reg a) noexcept {
    return _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  }
  static GQA_FORCEINLINE float reduce_sum(reg a) noexcept {
    __m128 x = half_sum(a);
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
  }
  static GQA_FORCEINLINE float reduce_max(reg a) noexcept {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
  }
  /// Four horizontal sums by a transpose-add tree (no hadd, which is microcoded on some cores): interleave
  /// pairs and add, so each 128-bit lane holds [a, b, c, d] partial sums, then fold the two lanes.
  static GQA_FORCEINLINE void reduce_sum4(reg a, reg b, reg c, reg d, float* out) noexcept {
    const reg ab = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));  // a02 b02 a13 b13
    const reg cd = _mm256_add_ps(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));  // c02 d02 c13 d13
    const reg abcd = _mm256_add_ps(_mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));  // a b c d per lane
    _mm_storeu_ps(out, half_sum(abcd));
  }
  static GQA_FORCEINLINE reg round(reg a) noexcept {
    return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static GQA_FORCEINLINE reg pow2i(reg n) noexcept {
    const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
};

}  // namespace isa
GQA_END_NAMESPACE
#endif  // GQA_HAS_AVX2

#endif  // GQA_ISA_VEC_AVX2_HPP
