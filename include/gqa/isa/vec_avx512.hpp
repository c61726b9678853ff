// gqa/isa/vec_avx512.hpp: the vector primitive set on AVX-512F (16 floats per __m512).
// Same meaning lane by lane as vec<scalar> (vec_scalar.hpp); uses AVX-512F instructions only.
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_ISA_VEC_AVX512_HPP
#define GQA_ISA_VEC_AVX512_HPP

#include "../config.hpp"
#include "tags.hpp"
#include "vec_scalar.hpp"

#if GQA_HAS_AVX512
#include <immintrin.h>

// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*() (`__m512 __Y = __Y;`), which -Wall reports
// as (maybe-)uninitialized once inlined into a caller; a false positive we silence for our wrappers.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

GQA_BEGIN_NAMESPACE
namespace isa {

template <>
struct vec<avx512> {
  using reg = __m512;
  static constexpr int lanes = 16;
  /// See Note [tile shape] (vec_scalar.hpp).
  struct tile_shape {
    static constexpr int mr = 6, nr = 4;  // 24 acc + 4 K/V + 1 broadcast = 29 of 32 zmm
    static constexpr int block_kv = 512, block_kv_large_l2 = 256;  // Note [forward block length] (forward.hpp)
    static constexpr int block_kv_backward = 128, block_kv_tiles16 = 128;
    static constexpr int block_kv_decode = 64;  // all heads of 64 positions: 64 x Hkv x d x 8 bytes in flight
    static constexpr int rows = 192, rows_large_l2 = 384;  // Note [rows by L2] (forward.hpp)
    static constexpr int direct_qk_rows = 4, direct_qk_keys = 4;  // Q·K: 16 acc + 4 K + 1 Q
    static constexpr int direct_acc = 16;                          // P·V: 16 acc + V + 1
  };

  static GQA_FORCEINLINE reg zero() noexcept { return _mm512_setzero_ps(); }
  static GQA_FORCEINLINE reg set1(float x) noexcept { return _mm512_set1_ps(x); }
  static GQA_FORCEINLINE reg load(const float* p) noexcept { return _mm512_loadu_ps(p); }
  static GQA_FORCEINLINE void store(float* p, reg v) noexcept { _mm512_storeu_ps(p, v); }
  /// Masked lanes are neither read nor written (no fault past the end of a buffer).
  static GQA_FORCEINLINE __mmask16 mask(int n) noexcept {
    return static_cast<__mmask16>(n >= 16 ? 0xFFFFu : ((1u << (n > 0 ? n : 0)) - 1u));
  }
  static GQA_FORCEINLINE reg load_partial(const float* p, int n) noexcept { return _mm512_maskz_loadu_ps(mask(n), p); }
  static GQA_FORCEINLINE void store_partial(float* p, reg v, int n) noexcept { _mm512_mask_storeu_ps(p, mask(n), v); }
  /// Widening loads (vec_scalar.hpp): bf16 by zero-extending to 32 bits and shifting left by 16, f16 by
  /// vcvtph2ps (AVX-512F); partial loads by a masked 16-bit load (AVX-512BW + VL), which never touches
  /// the masked elements.
  static GQA_FORCEINLINE reg load(const bf16* p) noexcept { return widen_bf16(_mm256_loadu_si256(bits_at(p))); }
  static GQA_FORCEINLINE reg load(const f16* p) noexcept { return _mm512_cvtph_ps(_mm256_loadu_si256(bits_at(p))); }
  static GQA_FORCEINLINE reg load_partial(const bf16* p, int n) noexcept {
    return widen_bf16(_mm256_maskz_loadu_epi16(mask(n), bits_at(p)));
  }
  static GQA_FORCEINLINE reg load_partial(const f16* p, int n) noexcept {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask(n), bits_at(p)));
  }
  /// int8: sixteen bytes sign-extended to 32 bits (vpmovsxbd) and converted (vcvtdq2ps); a partial load
  /// by a masked byte load (AVX-512BW + VL).
  static GQA_FORCEINLINE reg load(const std::int8_t* p) noexcept {
    return widen_i8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static GQA_FORCEINLINE reg load_partial(const std::int8_t* p, int n) noexcept {
    return widen_i8(_mm_maskz_loadu_epi8(mask(n), p));
  }
  static GQA_FORCEINLINE reg add(reg a, reg b) noexcept { return _mm512_add_ps(a, b); }
  static GQA_FORCEINLINE reg sub(reg a, reg b) noexcept { return _mm512_sub_ps(a, b); }
  static GQA_FORCEINLINE reg mul(reg a, reg b) noexcept { return _mm512_mul_ps(a, b); }
  static GQA_FORCEINLINE reg fma(reg a, reg b, reg c) noexcept { return _mm512_fmadd_ps(a, b, c); }
  static GQA_FORCEINLINE reg mul_add(reg a, reg b, reg c) noexcept { return fma(a, b, c); }
  static GQA_FORCEINLINE reg max(reg a, reg b) noexcept { return _mm512_max_ps(a, b); }
  static GQA_FORCEINLINE reg min(reg a, reg b) noexcept { return _mm512_min_ps(a, b); }
  static GQA_FORCEINLINE reg div(reg a, reg b) noexcept { return _mm512_div_ps(a, b); }
  static GQA_FORCEINLINE reg select_lt(reg a, reg b, reg x, reg y) noexcept {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_LT_OQ), y, x);
  }
  /// Low 256 + high 256 bits (AVX-512F only: the 64x4 extract, not the DQ 32x8 one).
  static GQA_FORCEINLINE __m256 half_sum(reg a) noexcept {
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
    return _mm256_add_ps(_mm512_castps512_ps256(a), hi);
  }
  static GQA_FORCEINLINE float reduce_sum(reg a) noexcept { return _mm512_reduce_add_ps(a); }
  static GQA_FORCEINLINE float reduce_max(reg a) noexcept { return _mm512_reduce_max_ps(a); }
  /// Four horizontal sums by a transpose-add tree (13 uops, no hadd): interleave pairs and add, so each
  /// 128-bit lane holds [a, b, c, d] partial sums, then fold the four lanes.
  static GQA_FORCEINLINE void reduce_sum4(reg a, reg b, reg c, reg d, float* out) noexcept {
    const reg ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));  // a02 b02 a13 b13
    const reg cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));  // c02 d02 c13 d13
    const reg abcd = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));  // a b c d per lane
    const __m256 h = half_sum(abcd);
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
  }
  /// See vec<scalar>::transpose. A 16 × 16 block in 64 shuffles: pairs of rows interleaved (unpack), then
  /// quads (shuffle_ps), which leaves in 128-bit lane k of b[4q + c] rows 4q .. 4q + 3 of column 4k + c;
  /// two rounds of shuffle_f32x4 then gather lane k of b[c], b[4 + c], b[8 + c], b[12 + c].
  static GQA_FORCEINLINE void transpose(const float* const* src, float* dst, std::ptrdiff_t ldd) noexcept {
    reg a[16], b[16];
    for (int i = 0; i < 16; i += 2) {
      const reg r0 = load(src[i]), r1 = load(src[i + 1]);
      a[i] = _mm512_unpacklo_ps(r0, r1);
      a[i + 1] = _mm512_unpackhi_ps(r0, r1);
    }
    for (int q = 0; q < 16; q += 4) {
      b[q] = _mm512_shuffle_ps(a[q], a[q + 2], 0x44);
      b[q + 1] = _mm512_shuffle_ps(a[q], a[q + 2], 0xEE);
      b[q + 2] = _mm512_shuffle_ps(a[q + 1], a[q + 3], 0x44);
      b[q + 3] = _mm512_shuffle_ps(a[q + 1], a[q + 3], 0xEE);
    }
    for (int c = 0; c < 4; ++c) {
      const reg e0 = _mm512_shuffle_f32x4(b[c], b[4 + c], 0x88), e1 = _mm512_shuffle_f32x4(b[c], b[4 + c], 0xDD);
      const reg e2 = _mm512_shuffle_f32x4(b[8 + c], b[12 + c], 0x88), e3 = _mm512_shuffle_f32x4(b[8 + c], b[12 + c], 0xDD);
      store(dst + (0 + c) * ldd, _mm512_shuffle_f32x4(e0, e2, 0x88));
      store(dst + (4 + c) * ldd, _mm512_shuffle_f32x4(e1, e3, 0x88));
      store(dst + (8 + c) * ldd, _mm512_shuffle_f32x4(e0, e2, 0xDD));
      store(dst + (12 + c) * ldd, _mm512_shuffle_f32x4(e1, e3, 0xDD));
    }
  }
  /// See vec<scalar>::exponent_bits.
  static GQA_FORCEINLINE reg exponent_bits(reg y) noexcept {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_castps_si512(y), 23));
  }

 private:
  template <class T>
  static GQA_FORCEINLINE const __m256i* bits_at(const T* p) noexcept {
    return reinterpret_cast<const __m256i*>(p);
  }
  static GQA_FORCEINLINE reg widen_i8(__m128i x) noexcept { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(x)); }
  static GQA_FORCEINLINE reg widen_bf16(__m256i x) noexcept {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(x), 16));
  }
};

}  // namespace isa
GQA_END_NAMESPACE

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // GQA_HAS_AVX512

#endif  // GQA_ISA_VEC_AVX512_HPP
