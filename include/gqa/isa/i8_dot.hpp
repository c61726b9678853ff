// gqa/isa/i8_dot.hpp: decode's Q·Kᵀ on an int8 K cache by VPDPBUSD, on Q rows quantised to int8 (Note [int8
// decode products] in detail/core/decode.hpp): x86-64 with GCC or clang; i8_dot (AVX512-VNNI, 64 bytes an
// instruction) in a TU or region that compiles vec<avx512>, i8_dot_avx2 (AVX-VNNI, VEX, 32 bytes) where
// AVX2 is compiled, and the quantiser both share (quantize_q8_row, AVX2). The functions that hold VNNI
// instructions are marked GQA_TARGET_VNNI / GQA_TARGET_AVXVNNI, so they are never inlined into code compiled
// without them, and the core calls them only when isa::cpu().avx512_vnni / avx_vnni.
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_ISA_I8_DOT_HPP
#define GQA_ISA_I8_DOT_HPP

#include <algorithm>
#include <cstdint>

#include "../config.hpp"
#include "cpu.hpp"
#include "vec_avx512.hpp"

#if (GQA_HAS_AVX2 || GQA_HAS_AVX512) && GQA_X86_CPUID
#include <cmath>
#include <cstring>
#include <immintrin.h>
#endif

#if GQA_HAS_AVX2 && GQA_X86_CPUID
// AVX2 without VNNI: what quantize_q8_row needs, on every CPU either core's products run on.
#ifndef GQA_TARGET_AVX2_PLAIN
#define GQA_TARGET_AVX2_PLAIN __attribute__((target("avx2,fma,f16c")))
#endif

GQA_BEGIN_NAMESPACE
namespace isa {

/// Quantises x[0, d) to dst[0, dp) (dp >= d; the rest zeros) by gqa::quantize_q8's rule (Note [int8
/// quantisation] in gqa/quantized.hpp): scale = max_c |x_c| / 127, q_c = x_c / scale rounded to nearest
/// even (|q_c| <= 127), q = 0 when scale is 0; and sum = Σ q_c. The same IEEE operations as that rule's
/// scalar code, so the same bytes and scale. Returns false (dst, scale, sum unspecified) when some x_c is
/// not finite: the caller keeps the fp32 products then (where quantize_q8 would write a NaN scale). AVX2
/// (8 lanes) for both cores' products: a task quantises its rows once, a small part of its time.
GQA_TARGET_AVX2_PLAIN inline bool quantize_q8_row(const float* x, index_t d, std::int8_t* dst, index_t dp, float& scale,
                                                std::int32_t& sum) noexcept {
  const __m256 inf = _mm256_set1_ps(__builtin_inff());
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 amax = _mm256_setzero_ps();
  int finite = 0xFF;
  index_t c = 0;
  for (; c + 8 <= d; c += 8) {
    const __m256 ax = _mm256_and_ps(_mm256_loadu_ps(x + c), abs_mask);
    finite &= _mm256_movemask_ps(_mm256_cmp_ps(ax, inf, _CMP_LT_OQ));  // false for ±inf and NaN
    amax = _mm256_max_ps(amax, ax);
  }
  alignas(32) float m8[8];
  _mm256_store_ps(m8, amax);
  float a = 0.0f;
  for (const float m : m8) a = m > a ? m : a;
  for (; c < d; ++c) {
    const float ax = std::fabs(x[c]);
    if (!(ax < __builtin_inff())) return false;
    a = ax > a ? ax : a;
  }
  if (finite != 0xFF) return false;
  const float sc = a / 127.0f;
  std::int32_t total = 0;
  const __m256 scv = _mm256_set1_ps(sc);
  __m256i acc = _mm256_setzero_si256();
  c = 0;
  for (; c + 8 <= d && sc != 0.0f; c += 8) {
    const __m256 r =
        _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + c), scv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256i q = _mm256_cvtps_epi32(r);  // exact: |r| <= 127
    acc = _mm256_add_epi32(acc, q);
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + c), _mm_packs_epi16(w, w));
  }
  for (; c < d; ++c) {
    const float r = sc > 0.0f ? std::fmin(127.0f, std::fmax(-127.0f, std::nearbyint(x[c] / sc))) : 0.0f;
    dst[c] = static_cast<std::int8_t>(r);
    total += dst[c];
  }
  std::memset(dst + d, 0, static_cast<std::size_t>(dp - d));
  alignas(32) std::int32_t s8[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(s8), acc);
  for (const std::int32_t v : s8) total += v;
  scale = sc;
  sum = total;
  return true;
}

}  // namespace isa
GQA_END_NAMESPACE
#endif  // GQA_HAS_AVX2 && GQA_X86_CPUID

#if GQA_HAS_AVX512 && GQA_X86_CPUID
// The full target list (see GQA_TARGET_BF16 in bf16_dot.hpp for why).
#ifndef GQA_TARGET_VNNI
#define GQA_TARGET_VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq,avx512vnni")))
#endif

// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), a false (maybe-)uninitialized warning once
// inlined (as in vec_avx512.hpp).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

GQA_BEGIN_NAMESPACE
namespace isa {

/// VPDPBUSD dot products of int8 Q rows with int8 K rows for the decode walk.
struct i8_dot {
  /// A quantised Q row: d bytes zero-padded to whole 64-byte loads.
  static constexpr index_t padded_d(index_t d) noexcept { return (d + 63) / 64 * 64; }

  /// Quantises x[0, d) into padded_d(d) bytes: quantize_q8_row (above).
  static bool quantize_row(const float* x, index_t d, std::int8_t* dst, float& scale, std::int32_t& sum) noexcept {
    return quantize_q8_row(x, d, dst, padded_d(d), scale, sum);
  }

  /// s[r·lds + u] = mul[r] · (Σ_c q_r[c] · k_u[c]) for r < rows (rows >= 1) and the 4 keys u, q_r = q +
  /// r·ldq (int8, padded_d(d) bytes, zeros past d), k[u] int8 rows of d elements (read only inside them),
  /// bias[r] = 128 · Σ_c q_r[c]. VPDPBUSD multiplies unsigned by signed bytes, so K's bytes are flipped
  /// to k + 128 (an XOR with 0x80, once per K load, shared by the rows) and 128 · Σ q_r is taken off the
  /// exact int32 sums. K rows by plain loads when d is a multiple of 64, else the last by a masked one.
  static void decode_scores(int rows, const std::int8_t* q, index_t ldq, const std::int8_t* const* k, index_t d,
                            const float* mul, const std::int32_t* bias, float* s, index_t lds) noexcept {
    for (int r = 0; r < rows; r += 4) {
      const int n = std::min(4, rows - r);
      const std::int8_t* qr = q + r * ldq;
      float* sr = s + r * lds;
      if (d % 64 == 0) {
        switch (n) {
          case 1: body<1, true>(qr, ldq, k, d, mul + r, bias + r, sr, lds); break;
          case 2: body<2, true>(qr, ldq, k, d, mul + r, bias + r, sr, lds); break;
          case 3: body<3, true>(qr, ldq, k, d, mul + r, bias + r, sr, lds); break;
          default: body<4, true>(qr, ldq, k, d, mul + r, bias + r, sr, lds); break;
        }
      } else {
        switch (n) {
          case 1: body<1, false>(qr, ldq, k, d, mul + r, bias + r, sr, lds); break;
          case 2: body<2, false>(qr, ldq, k, d, mul + r, bias + r, sr, lds); break;
          case 3: body<3, false>(qr, ldq, k, d, mul + r, bias + r, sr, lds); break;
          default: body<4, false>(qr, ldq, k, d, mul + r, bias + r, sr, lds); break;
        }
      }
    }
  }

 private:
  // Note [VPDPBUSD by asm]
  // GCC 12 compiles _mm512_dpbusd_epi32 in a loop with a copy of every accumulator per iteration (and a
  // spill of two of the 16): the builtin's tied accumulator is not allocated in place. The same
  // instruction written as asm with the accumulator as an in-out operand is allocated in place.
  GQA_TARGET_VNNI static GQA_FORCEINLINE void dpbusd(__m512i& acc, __m512i u8, __m512i s8) noexcept {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8));
  }

  /// R rows × 4 keys; Full: d is a multiple of 64.
  template <int R, bool Full>
  GQA_TARGET_VNNI static void body(const std::int8_t* q, index_t ldq, const std::int8_t* const* k, index_t d,
                                   const float* mul, const std::int32_t* bias, float* s, index_t lds) noexcept {
    constexpr int U = 4;
    const std::int8_t* kr[U];
    GQA_UNROLL
    for (int u = 0; u < U; ++u) {
      kr[u] = k[u];
      GQA_IN_GPR(kr[u]);
    }
    __m512i acc[R][U];
    GQA_UNROLL
    for (int r = 0; r < R; ++r) {
      GQA_UNROLL
      for (int u = 0; u < U; ++u) acc[r][u] = _mm512_setzero_si512();
    }
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    const index_t parts = (d + 63) / 64;
    for (index_t i = 0; i < parts; ++i) {
      const index_t c = 64 * i;
      const __mmask64 m = c + 64 <= d ? ~__mmask64{0} : (__mmask64{1} << (d - c)) - 1;
      __m512i kv[U];
      GQA_UNROLL
      for (int u = 0; u < U; ++u) {
        // A masked-off byte reads 0 and flips to 128, which meets Q's zero padding.
        const __m512i raw = Full ? _mm512_loadu_si512(kr[u] + c) : _mm512_maskz_loadu_epi8(m, kr[u] + c);
        kv[u] = _mm512_xor_si512(raw, flip);
      }
      GQA_UNROLL
      for (int r = 0; r < R; ++r) {
        const __m512i qv = _mm512_loadu_si512(q + r * ldq + c);
        GQA_UNROLL
        for (int u = 0; u < U; ++u) dpbusd(acc[r][u], kv[u], qv);
      }
    }
    GQA_UNROLL
    for (int r = 0; r < R; ++r) {
      // The four keys' sums, each of 16 lanes, into one vector of 4 (exact int32 additions).
      const __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(acc[r][0], acc[r][1]),
                                          _mm512_unpackhi_epi32(acc[r][0], acc[r][1]));  // a02 b02 a13 b13
      const __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(acc[r][2], acc[r][3]),
                                          _mm512_unpackhi_epi32(acc[r][2], acc[r][3]));  // c02 d02 c13 d13
      const __m512i abcd = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd),
                                            _mm512_unpackhi_epi64(ab, cd));  // a b c d per 128-bit lane
      const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(abcd), _mm512_extracti64x4_epi64(abcd, 1));
      const __m128i t = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
      const __m128i dotv = _mm_sub_epi32(t, _mm_set1_epi32(bias[r]));
      _mm_storeu_ps(s + r * lds, _mm_mul_ps(_mm_cvtepi32_ps(dotv), _mm_set1_ps(mul[r])));
    }
  }
};

}  // namespace isa
GQA_END_NAMESPACE

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // GQA_HAS_AVX512 && GQA_X86_CPUID

#if GQA_HAS_AVX2 && GQA_X86_CPUID
#ifndef GQA_TARGET_AVXVNNI
#define GQA_TARGET_AVXVNNI __attribute__((target("avx2,fma,f16c,avxvnni")))
#endif

GQA_BEGIN_NAMESPACE
namespace isa {

/// The same products for the AVX2 core on a CPU with AVX-VNNI (VPDPBUSD with a VEX encoding, 32 bytes an
/// instruction): 16 ymm registers hold blocks of up to 4 rows × 2 keys.
struct i8_dot_avx2 {
  /// A quantised Q row: d bytes zero-padded to whole 32-byte loads.
  static constexpr index_t padded_d(index_t d) noexcept { return (d + 31) / 32 * 32; }

  /// Quantises x[0, d) into padded_d(d) bytes: quantize_q8_row (above).
  static bool quantize_row(const float* x, index_t d, std::int8_t* dst, float& scale, std::int32_t& sum) noexcept {
    return quantize_q8_row(x, d, dst, padded_d(d), scale, sum);
  }

  /// As i8_dot::decode_scores: s[r·lds + u] = mul[r] · (Σ_c q_r[c] · k_u[c]) for r < rows and the 4 keys u,
  /// q rows of padded_d(d) bytes, bias[r] = 128 · Σ_c q_r[c]. A row's last part, when d is not a multiple
  /// of 32, is copied into a zero-padded buffer first (AVX2 has no masked byte load).
  static void decode_scores(int rows, const std::int8_t* q, index_t ldq, const std::int8_t* const* k, index_t d,
                            const float* mul, const std::int32_t* bias, float* s, index_t lds) noexcept {
    for (int r = 0; r < rows; r += 4) {
      const int n = std::min(4, rows - r);
      for (int u = 0; u < 4; u += 2) {
        const std::int8_t* const* ku = k + u;
        const std::int8_t* qr = q + r * ldq;
        float* sr = s + r * lds + u;
        switch (n) {
          case 1: body<1>(qr, ldq, ku, d, mul + r, bias + r, sr, lds); break;
          case 2: body<2>(qr, ldq, ku, d, mul + r, bias + r, sr, lds); break;
          case 3: body<3>(qr, ldq, ku, d, mul + r, bias + r, sr, lds); break;
          default: body<4>(qr, ldq, ku, d, mul + r, bias + r, sr, lds); break;
        }
      }
    }
  }

 private:
  /// VPDPBUSD (VEX), written as asm for the reason of Note [VPDPBUSD by asm].
  GQA_TARGET_AVXVNNI static GQA_FORCEINLINE void dpbusd(__m256i& acc, __m256i u8, __m256i s8) noexcept {
    __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u8), "x"(s8));
  }

  /// R rows × 2 keys.
  template <int R>
  GQA_TARGET_AVXVNNI static void body(const std::int8_t* q, index_t ldq, const std::int8_t* const* k, index_t d,
                                      const float* mul, const std::int32_t* bias, float* s, index_t lds) noexcept {
    const std::int8_t* k0 = k[0];
    const std::int8_t* k1 = k[1];
    __m256i acc[R][2];
    GQA_UNROLL
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
    alignas(32) std::int8_t t0[32], t1[32];  // a last part shorter than 32 bytes, zero-padded
    const index_t parts = (d + 31) / 32;
    for (index_t i = 0; i < parts; ++i) {
      const index_t c = 32 * i;
      const std::int8_t* p0 = k0 + c;
      const std::int8_t* p1 = k1 + c;
      if (c + 32 > d) {  // its padding meets Q's zeros
        std::memset(t0, 0, sizeof t0);
        std::memset(t1, 0, sizeof t1);
        std::memcpy(t0, p0, static_cast<std::size_t>(d - c));
        std::memcpy(t1, p1, static_cast<std::size_t>(d - c));
        p0 = t0;
        p1 = t1;
      }
      const __m256i ka = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p0)), flip);
      const __m256i kb = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p1)), flip);
      GQA_UNROLL
      for (int r = 0; r < R; ++r) {
        const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + r * ldq + c));
        dpbusd(acc[r][0], ka, qv);
        dpbusd(acc[r][1], kb, qv);
      }
    }
    GQA_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m256i h = _mm256_hadd_epi32(acc[r][0], acc[r][1]);  // a01 a23 b01 b23 | a45 a67 b45 b67
      const __m256i h2 = _mm256_hadd_epi32(h, h);                   // a0-3 b0-3 . . | a4-7 b4-7 . .
      const __m128i t = _mm_add_epi32(_mm256_castsi256_si128(h2), _mm256_extracti128_si256(h2, 1));  // a b a b
      const __m128i dotv = _mm_sub_epi32(t, _mm_set1_epi32(bias[r]));
      const __m128 v = _mm_mul_ps(_mm_cvtepi32_ps(dotv), _mm_set1_ps(mul[r]));
      _mm_storel_pi(reinterpret_cast<__m64*>(s + r * lds), v);
    }
  }
};

}  // namespace isa
GQA_END_NAMESPACE
#endif  // GQA_HAS_AVX2 && GQA_X86_CPUID

#endif  // GQA_ISA_I8_DOT_HPP
