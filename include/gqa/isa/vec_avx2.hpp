// gqa/isa/vec_avx2.hpp: the vector primitive set on AVX2 + FMA (8 floats per __m256).
// Same meaning lane by lane as vec<scalar> (vec_scalar.hpp); only compiled when GQA_HAS_AVX2.
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_ISA_VEC_AVX2_HPP
#define GQA_ISA_VEC_AVX2_HPP

#include "../config.hpp"
#include "tags.hpp"
#include "vec_scalar.hpp"

#include <cstdint>
#include <cstring>
#include <type_traits>

#if GQA_HAS_AVX2
#include <immintrin.h>

// F16C (vcvtph2ps) converts f16 to float in hardware. Every AVX2 CPU has it and gqa's AVX2 flags and
// per-target region enable it (-mf16c; GQA_TARGET_F16C, Note [per-target kernels]); a TU built with
// only -mavx2 -mfma converts f16 lane by lane instead.
#undef GQA_AVX2_F16C  // the per-target copy re-includes this header with GQA_TARGET_F16C
#if defined(__F16C__) || defined(GQA_TARGET_F16C) || (defined(_MSC_VER) && !defined(__clang__))
#define GQA_AVX2_F16C 1
#else
#define GQA_AVX2_F16C 0
#endif

GQA_BEGIN_NAMESPACE
namespace isa {

template <>
struct vec<avx2> {
  using reg = __m256;
  static constexpr int lanes = 8;
  /// See Note [tile shape] (vec_scalar.hpp).
  struct tile_shape {
    static constexpr int mr = 6, nr = 2;  // 12 acc + 2 K/V + 1 broadcast = 15 of 16 ymm
    // Note [forward block length] (forward.hpp)
    static constexpr int block_kv = 256, block_kv_large_l2 = 256, block_kv_backward = 128, block_kv_tiles16 = 128;
    static constexpr int block_kv_decode = 64;  // all heads of 64 positions: 64 x Hkv x d x 8 bytes in flight
    static constexpr int rows = 192, rows_large_l2 = 384;  // Note [rows by L2] (forward.hpp)
    static constexpr int direct_qk_rows = 4, direct_qk_keys = 2;  // Q·K: 8 acc + 2 K + 1 Q (Note [keys per step])
    static constexpr int direct_acc = 8;                           // P·V: 8 acc + V + 1
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
  /// Widening loads (vec_scalar.hpp): bf16 by zero-extending to 32 bits and shifting left by 16, f16 by
  /// F16C's vcvtph2ps. Partial loads copy the n elements to a zeroed buffer first (no 16-bit masked load).
  static GQA_FORCEINLINE reg load(const bf16* p) noexcept { return widen(load8(p)); }
  static GQA_FORCEINLINE reg load(const f16* p) noexcept { return widen(load8(p)); }
  static GQA_FORCEINLINE reg load_partial(const bf16* p, int n) noexcept { return widen(load8_partial(p, n)); }
  static GQA_FORCEINLINE reg load_partial(const f16* p, int n) noexcept { return widen(load8_partial(p, n)); }
  /// int8: eight bytes sign-extended to 32 bits (vpmovsxbd) and converted (vcvtdq2ps); a partial load
  /// copies the n bytes to a zeroed 8-byte buffer first.
  static GQA_FORCEINLINE reg load(const std::int8_t* p) noexcept {
    return widen_i8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  }
  static GQA_FORCEINLINE reg load_partial(const std::int8_t* p, int n) noexcept {
    std::int8_t t[16] = {};
    std::memcpy(t, p, static_cast<std::size_t>(std::clamp(n, 0, 8)));
    return widen_i8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(t)));
  }
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
  /// See vec<scalar>::transpose. An 8 × 8 block in 24 shuffles: rows interleaved in pairs (unpack), then
  /// quads (shuffle_ps), which leaves in 128-bit lane k of b[4q + c] rows 4q .. 4q + 3 of column 4k + c;
  /// permute2f128 joins lane k of b[c] and b[4 + c].
  static GQA_FORCEINLINE void transpose(const float* const* src, float* dst, std::ptrdiff_t ldd) noexcept {
    reg a[8], b[8];
    for (int i = 0; i < 8; i += 2) {
      const reg r0 = load(src[i]), r1 = load(src[i + 1]);
      a[i] = _mm256_unpacklo_ps(r0, r1);
      a[i + 1] = _mm256_unpackhi_ps(r0, r1);
    }
    for (int q = 0; q < 8; q += 4) {
      b[q] = _mm256_shuffle_ps(a[q], a[q + 2], 0x44);
      b[q + 1] = _mm256_shuffle_ps(a[q], a[q + 2], 0xEE);
      b[q + 2] = _mm256_shuffle_ps(a[q + 1], a[q + 3], 0x44);
      b[q + 3] = _mm256_shuffle_ps(a[q + 1], a[q + 3], 0xEE);
    }
    for (int c = 0; c < 4; ++c) {
      store(dst + c * ldd, _mm256_permute2f128_ps(b[c], b[4 + c], 0x20));
      store(dst + (4 + c) * ldd, _mm256_permute2f128_ps(b[c], b[4 + c], 0x31));
    }
  }
  /// See vec<scalar>::exponent_bits.
  static GQA_FORCEINLINE reg exponent_bits(reg y) noexcept {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(y), 23));
  }

 private:
  /// Eight 16-bit elements of type T, as bits.
  struct bf16x8 {
    __m128i bits;
  };
  struct f16x8 {
    __m128i bits;
  };
  template <class T>
  using x8 = std::conditional_t<std::is_same_v<T, bf16>, bf16x8, f16x8>;
  template <class T>
  static GQA_FORCEINLINE x8<T> load8(const T* p) noexcept {
    return {_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))};
  }
  template <class T>
  static GQA_FORCEINLINE x8<T> load8_partial(const T* p, int n) noexcept {
    std::uint16_t t[8] = {};
    std::memcpy(t, p, sizeof(T) * static_cast<std::size_t>(std::clamp(n, 0, 8)));
    return {_mm_loadu_si128(reinterpret_cast<const __m128i*>(t))};
  }
  static GQA_FORCEINLINE reg widen_i8(__m128i x) noexcept { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(x)); }
  static GQA_FORCEINLINE reg widen(bf16x8 x) noexcept {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(x.bits), 16));
  }
  static GQA_FORCEINLINE reg widen(f16x8 x) noexcept {
#if GQA_AVX2_F16C
    return _mm256_cvtph_ps(x.bits);
#else
    alignas(16) std::uint16_t h[8];
    alignas(32) float f[8];
    _mm_store_si128(reinterpret_cast<__m128i*>(h), x.bits);
    for (int i = 0; i < 8; ++i) f[i] = detail::f16_to_float(h[i]);
    return _mm256_load_ps(f);
#endif
  }
};

}  // namespace isa
GQA_END_NAMESPACE
#endif  // GQA_HAS_AVX2

#endif  // GQA_ISA_VEC_AVX2_HPP
