// gqa/isa/i8_dot.hpp: decode's Q·Kᵀ on an int8 K cache by VPDPBUSD, on Q rows quantised to int8 (Note [int8
// decode products] in detail/core/decode.hpp): x86-64 with GCC or clang; i8_dot (AVX512-VNNI, 64 bytes an
// instruction) in a TU or region that compiles vec<avx512>, i8_dot_avx2 (AVX-VNNI, VEX, 32 bytes) where
// AVX2 is compiled, and the quantiser both share (quantize_q8_row, AVX2). The functions that hold VNNI
// instructions are marked GQA_TARGET_VNNI / GQA_TARGET_AVXVNNI, so they are never inlined into code compiled
// without them, and the core calls them only when isa::cpu().avx512_vnni / avx_vnni; i8_dot_avx2 has the
// same products without VNNI for every other AVX2 CPU (Note [int8 products without VNNI]).
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

/// What decode_pv's rounding made of a row's weights (Note [int8 decode P·V] in detail/core/decode.hpp).
enum class pv_weights { rounded, zero, not_finite };

/// decode_pv's loops, shared by both ISAs' products (K: i8_dot or i8_dot_avx2, whose round_weights and
/// pv_slab do the arithmetic, on slabs of K::slab_cols columns).
template <class K>
struct i8_pv {
  /// Rows in groups of four, each row's weights rounded first; the rounded rows of a group go through one
  /// block, rows of zero weights add nothing, and the rest are returned (bit r).
  static std::uint64_t decode(int rows, const float* p, index_t ldp, index_t n, const std::int8_t* v, index_t ldv,
                              const float* vs, index_t dv, float* o, index_t ldo) noexcept {
    std::uint64_t left = 0;
    alignas(64) std::int32_t w[4][K::pv_chunk / 2];
    alignas(16) float f[4];
    for (int r = 0; r < rows; r += 4) {
      const int R = std::min(4, rows - r);
      int live = 0;  // rows of the four whose weights were rounded, packed to the front
      float* orow[4];
      for (int i = 0; i < R; ++i) {
        switch (K::round_weights(p + (r + i) * ldp, vs, n, w[live], f[live])) {
          case pv_weights::rounded: orow[live++] = o + (r + i) * ldo; break;
          case pv_weights::zero: break;  // every weight 0: nothing to add
          default: left |= std::uint64_t{1} << (r + i); break;
        }
      }
      switch (live) {
        case 0: break;
        case 1: slabs<1>(w, f, n, v, ldv, dv, orow); break;
        case 2: slabs<2>(w, f, n, v, ldv, dv, orow); break;
        case 3: slabs<3>(w, f, n, v, ldv, dv, orow); break;
        default: slabs<4>(w, f, n, v, ldv, dv, orow); break;
      }
    }
    return left;
  }

  /// R rows (weights w[i], factor f[i], output row o[i]) × n <= pv_chunk keys: slabs of S · slab_cols
  /// columns (S so that a block keeps 8 or more accumulators: VPDPWSSD's latency needs that many chains),
  /// then of slab_cols, then a last shorter one.
  template <int R>
  static void slabs(const std::int32_t (*w)[K::pv_chunk / 2], const float* f, index_t n, const std::int8_t* v,
                    index_t ldv, index_t dv, float* const* o) noexcept {
    constexpr int S = K::template slabs_for<R>;
    constexpr index_t C = K::slab_cols;
    index_t c0 = 0;
    for (; c0 + C * S <= dv; c0 += C * S) K::template pv_slab<R, S, true>(w, f, n, v + c0, ldv, C * S, o, c0);
    for (; c0 + C <= dv; c0 += C) K::template pv_slab<R, 1, true>(w, f, n, v + c0, ldv, C, o, c0);
    if (c0 < dv) K::template pv_slab<R, 1, false>(w, f, n, v + c0, ldv, dv - c0, o, c0);
  }
};

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

  /// s[r·lds + u] = (mul[r] · (Σ_c q_r[c] · k_u[c])) · ks[u] for r < rows (rows >= 1) and the 4 keys u, q_r
  /// = q + r·ldq (int8, padded_d(d) bytes, zeros past d), k[u] int8 rows of d elements (read only inside
  /// them), ks[u] their scales, bias[r] = 128 · Σ_c q_r[c]. VPDPBUSD multiplies unsigned by signed bytes, so
  /// K's bytes are flipped to k + 128 (an XOR with 0x80, once per K load, shared by the rows) and 128 · Σ q_r
  /// is taken off the exact int32 sums. K rows by plain loads when d is a multiple of 64, else the last by a
  /// masked one.
  static void decode_scores(int rows, const std::int8_t* q, index_t ldq, const std::int8_t* const* k, index_t d,
                            const float* mul, const std::int32_t* bias, const float* ks, float* s,
                            index_t lds) noexcept {
    for (int r = 0; r < rows; r += 4) {
      const int n = std::min(4, rows - r);
      const std::int8_t* qr = q + r * ldq;
      float* sr = s + r * lds;
      if (d % 64 == 0) {
        switch (n) {
          case 1: body<1, true>(qr, ldq, k, d, mul + r, bias + r, ks, sr, lds); break;
          case 2: body<2, true>(qr, ldq, k, d, mul + r, bias + r, ks, sr, lds); break;
          case 3: body<3, true>(qr, ldq, k, d, mul + r, bias + r, ks, sr, lds); break;
          default: body<4, true>(qr, ldq, k, d, mul + r, bias + r, ks, sr, lds); break;
        }
      } else {
        switch (n) {
          case 1: body<1, false>(qr, ldq, k, d, mul + r, bias + r, ks, sr, lds); break;
          case 2: body<2, false>(qr, ldq, k, d, mul + r, bias + r, ks, sr, lds); break;
          case 3: body<3, false>(qr, ldq, k, d, mul + r, bias + r, ks, sr, lds); break;
          default: body<4, false>(qr, ldq, k, d, mul + r, bias + r, ks, sr, lds); break;
        }
      }
    }
  }

  /// Keys per chunk of decode_pv: the weights of each row are rounded to int16 relative to their largest
  /// magnitude within each chunk, a decode block (Note [int8 decode P·V] in detail/core/decode.hpp). The
  /// int32 sums stay exact: 64 · 32767 · 128 < 2^31.
  static constexpr index_t pv_chunk = 64;

  /// o[r·ldo + c] += Σ_{j<n} (p[r·ldp + j] · vs[j]) · v_j[c] for r < rows (rows <= 64) and c < dv, over one
  /// chunk of n <= pv_chunk keys, v_j = v + j·ldv (int8 rows of dv elements, read only inside them) with
  /// scales vs[j], in integers (Note [int8 decode P·V] in detail/core/decode.hpp): per row, with p'_j = p_j ·
  /// vs[j] (fp32), w_j = p'_j · (32767 / max|p'|) rounded to nearest even, Σ_j w_j · v_j[c] exact in int32
  /// (VPDPWSSD on two keys' values at a time), then times max|p'| / 32767 and added to o in fp32. Returns
  /// the rows (bit r) left to the caller, untouched: those whose p' hold a NaN or an infinity, or are so
  /// small that 32767 / max|p'| overflows (the fp32 products then keep the naive softmax's rules and every
  /// bit of a tiny weight).
  static std::uint64_t decode_pv(int rows, const float* p, index_t ldp, index_t n, const std::int8_t* v, index_t ldv,
                                 const float* vs, index_t dv, float* o, index_t ldo) noexcept {
    return i8_pv<i8_dot>::decode(rows, p, ldp, n, v, ldv, vs, dv, o, ldo);
  }

 private:
  friend struct i8_pv<i8_dot>;
  using weights = pv_weights;

  /// With p'_j = p_j · vs_j: w (as int16 pairs, key 2i in the low half of w[i]; zeros past n) = p'[0, n) ·
  /// (32767 / max|p'|) rounded to nearest even, f = max|p'| / 32767 (n <= pv_chunk).
  GQA_TARGET_VNNI static weights round_weights(const float* p, const float* vs, index_t n, std::int32_t* w,
                                               float& f) noexcept {
    static_assert(pv_chunk == 64);
    const __m512 inf = _mm512_set1_ps(__builtin_inff());
    __m512 x[4];
    __m512 amax = _mm512_setzero_ps();
    GQA_UNROLL
    for (int i = 0; i < 4; ++i) {
      const index_t lo = 16 * i;
      const auto m = static_cast<__mmask16>(n >= lo + 16 ? 0xFFFF : n > lo ? (1U << (n - lo)) - 1 : 0);
      x[i] = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p + lo), _mm512_maskz_loadu_ps(m, vs + lo));
      const __m512 ax = _mm512_abs_ps(x[i]);
      // Ordered comparison: false for NaN.
      if (_mm512_cmp_ps_mask(ax, inf, _CMP_LT_OQ) != 0xFFFF) return weights::not_finite;
      amax = _mm512_max_ps(amax, ax);
    }
    const float mx = _mm512_reduce_max_ps(amax);
    if (mx == 0.0f) return weights::zero;
    const float up = 32767.0f / mx;
    if (!(up < __builtin_inff())) return weights::not_finite;
    const __m512 upv = _mm512_set1_ps(up);
    // |p' · up| <= 32767 (+ rounding) and the conversion saturates: every word in range.
    GQA_UNROLL
    for (int i = 0; i < 4; i += 2) {
      const __m256i wa = _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(x[i], upv)));
      const __m256i wb = _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(x[i + 1], upv)));
      _mm512_store_si512(w + 8 * i, _mm512_inserti64x4(_mm512_castsi256_si512(wa), wb, 1));
    }
    f = mx / 32767.0f;
    return weights::rounded;
  }

  /// VPDPWSSD, as asm for the reason of Note [VPDPBUSD by asm].
  GQA_TARGET_VNNI static GQA_FORCEINLINE void dpwssd(__m512i& acc, __m512i a, __m512i b) noexcept {
    __asm__("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  }

  /// decode_pv's slabs (i8_pv::slabs): 64 columns, two of them at a time for 1-2 rows.
  static constexpr index_t slab_cols = 64;
  template <int R>
  static constexpr int slabs_for = R <= 2 ? 2 : 1;

  /// Columns [c0, c0 + width) of i8_pv::slabs (v at column c0), S parts of 64; Full: width is S · 64, else S is 1
  /// and width < 64: the values then go through zero-padded copies and the sums through a buffer (g++ 12
  /// kept every accumulator on the stack through the loop over keys when masked loads or stores were in
  /// the function).
  template <int R, int S, bool Full>
  GQA_TARGET_VNNI static void pv_slab(const std::int32_t (*w)[pv_chunk / 2], const float* f, index_t n,
                                      const std::int8_t* v, index_t ldv, index_t width, float* const* o,
                                      index_t c0) noexcept {
    static_assert(Full || S == 1);
    // Two keys' values interleaved by word (unpack lo/hi within 128-bit lanes) put the columns of each 32 in
    // the order 0-3 8-11 16-19 24-27 | 4-7 12-15 20-23 28-31; these restore it.
    const __m512i lo_idx = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i hi_idx = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    alignas(64) std::int8_t ta[64], tb[64];
    constexpr int A = 4 * S;  // accumulators per row: 16 columns each
    __m512i acc[R][A];
    GQA_UNROLL
    for (int r = 0; r < R; ++r)
      GQA_UNROLL
      for (int i = 0; i < A; ++i) acc[r][i] = _mm512_setzero_si512();
    for (index_t j = 0; j < n; j += 2) {
      const std::int8_t* a = v + j * ldv;
      const std::int8_t* b = j + 1 < n ? a + ldv : a;  // an odd last key pairs with itself, weight 0
      if constexpr (!Full) {
        std::memset(ta, 0, sizeof ta);
        std::memset(tb, 0, sizeof tb);
        std::memcpy(ta, a, static_cast<std::size_t>(width));
        std::memcpy(tb, b, static_cast<std::size_t>(width));
        a = ta;
        b = tb;
      }
      const auto load = [](const std::int8_t* x) GQA_TARGET_VNNI {
        return _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
      };
      __m512i wv[R];
      GQA_UNROLL
      for (int r = 0; r < R; ++r) wv[r] = _mm512_set1_epi32(w[r][j / 2]);
      GQA_UNROLL
      for (int h = 0; h < 2 * S; ++h) {  // 32 columns of the two keys
        const __m512i av = load(a + 32 * h), bv = load(b + 32 * h);
        const __m512i x0 = _mm512_unpacklo_epi16(av, bv), x1 = _mm512_unpackhi_epi16(av, bv);
        GQA_UNROLL
        for (int r = 0; r < R; ++r) {
          dpwssd(acc[r][2 * h], x0, wv[r]);
          dpwssd(acc[r][2 * h + 1], x1, wv[r]);
        }
      }
    }
    // The sums in column order, times the row's factor, added to O.
    alignas(64) float t[32];
    GQA_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m512 fr = _mm512_set1_ps(f[r]);
      GQA_UNROLL
      for (int h = 0; h < 2 * S; ++h) {
        const index_t cols = width - 32 * h;  // of this 32 (Full: all)
        if (!Full && cols <= 0) break;
        const __m512 y0 = _mm512_cvtepi32_ps(acc[r][2 * h]), y1 = _mm512_cvtepi32_ps(acc[r][2 * h + 1]);
        const __m512 z0 = _mm512_permutex2var_ps(y0, lo_idx, y1), z1 = _mm512_permutex2var_ps(y0, hi_idx, y1);
        float* oc = o[r] + c0 + 32 * h;
        if (Full || cols >= 32) {
          _mm512_storeu_ps(oc, _mm512_fmadd_ps(fr, z0, _mm512_loadu_ps(oc)));
          _mm512_storeu_ps(oc + 16, _mm512_fmadd_ps(fr, z1, _mm512_loadu_ps(oc + 16)));
        } else {
          _mm512_store_ps(t, z0);
          _mm512_store_ps(t + 16, z1);
          for (index_t c = 0; c < cols; ++c) oc[c] = std::fma(f[r], t[c], oc[c]);
        }
      }
    }
  }

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
                                   const float* mul, const std::int32_t* bias, const float* ks, float* s,
                                   index_t lds) noexcept {
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
      _mm_storeu_ps(s + r * lds, _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(dotv), _mm_set1_ps(mul[r])), _mm_loadu_ps(ks)));
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

/// The same products for the AVX2 core: on a CPU with AVX-VNNI by VPDPBUSD and VPDPWSSD with a VEX encoding
/// (32 bytes an instruction), on any other AVX2 CPU by their pre-VNNI equivalents (Note [int8 products
/// without VNNI]), the same integer sums, so the same bits. 16 ymm registers hold blocks of up to 4 rows × 2
/// keys.
struct i8_dot_avx2 {
  // Note [int8 products without VNNI]
  // AVX2 CPUs without AVX-VNNI (AMD Zen 2 to Zen 4, Intel client cores before Alder Lake) take the integer
  // products too (since 2026-12-06): a score's Σ_c q_c · k_c by VPSIGNB, VPMADDUBSW, VPMADDWD and VPADDD per
  // 32 bytes, row and key, with |k| as the unsigned operand (VPABSB, once per K load, shared by the rows: k =
  // -128 gives 128, exact) and q with k's sign as the signed one (|q| <= 127 from the quantiser, so the sign
  // change is exact): each pair of products is at most 2 · 128 · 127 = 32512, inside VPMADDUBSW's int16
  // without saturation, and VPMADDWD by ones widens the pairs to int32, exact. P·V's VPDPWSSD is VPMADDWD
  // then VPADDD (|w| <= 32767: no pair of -32768s, no saturation). The sums are the VNNI path's integers
  // exactly, so results keep its bits. Measured (AMD EPYC, family 25 model 17, which has AVX512-VNNI but no
  // AVX-VNNI, the AVX2 core forced; 2026-12-06, one thread pinned, the build before (fp32 products on the
  // widened int8 K and V) and after called alternately in one process, medians of 15 pairs, 32 query heads,
  // d 128): D1's 8 KV heads 1.10x at 256 keys (in L2), 1.13x at 2048, 1.16x at 16384, 1.15x at 65536; MHA
  // 1.14-1.26x; 16 KV heads 1.03-1.04x; MQA 1.09x (docs/design.md §2.9). The walk's loads ahead (Note
  // [decode loads ahead] in detail/core/decode.hpp) run for them only where a step's rows exceed 32 KiB.
  /// A quantised Q row: d bytes zero-padded to whole 32-byte loads.
  static constexpr index_t padded_d(index_t d) noexcept { return (d + 31) / 32 * 32; }

  /// Quantises x[0, d) into padded_d(d) bytes: quantize_q8_row (above).
  static bool quantize_row(const float* x, index_t d, std::int8_t* dst, float& scale, std::int32_t& sum) noexcept {
    return quantize_q8_row(x, d, dst, padded_d(d), scale, sum);
  }

  /// As i8_dot::decode_scores: s[r·lds + u] = (mul[r] · (Σ_c q_r[c] · k_u[c])) · ks[u] for r < rows and the
  /// 4 keys u, q rows of padded_d(d) bytes, bias[r] = 128 · Σ_c q_r[c] (used by VPDPBUSD only). A row's last
  /// part, when d is not a multiple of 32, is copied into a zero-padded buffer first (AVX2 has no masked byte
  /// load).
  static void decode_scores(int rows, const std::int8_t* q, index_t ldq, const std::int8_t* const* k, index_t d,
                            const float* mul, const std::int32_t* bias, const float* ks, float* s,
                            index_t lds) noexcept {
    if (!::gqa::isa::cpu().avx_vnni) {
      scores_by<false>(rows, q, ldq, k, d, mul, bias, ks, s, lds);
      return;
    }
    scores_by<true>(rows, q, ldq, k, d, mul, bias, ks, s, lds);
  }

  /// Keys per chunk of decode_pv (as i8_dot's).
  static constexpr index_t pv_chunk = 64;

  /// As i8_dot::decode_pv (VPDPWSSD, VEX-encoded, or VPMADDWD and VPADDD, on 16 columns of two keys at a time).
  static std::uint64_t decode_pv(int rows, const float* p, index_t ldp, index_t n, const std::int8_t* v, index_t ldv,
                                 const float* vs, index_t dv, float* o, index_t ldo) noexcept {
    return i8_pv<i8_dot_avx2>::decode(rows, p, ldp, n, v, ldv, vs, dv, o, ldo);
  }

 private:
  friend struct i8_pv<i8_dot_avx2>;

  /// decode_scores on VPDPBUSD (Vnni: blocks of up to 4 rows × 2 keys) or on its pre-VNNI equivalent (1-2
  /// rows × 4 keys, 3-4 rows × 2 keys: 1.03-1.10x against 2 keys for every row count).
  template <bool Vnni>
  static void scores_by(int rows, const std::int8_t* q, index_t ldq, const std::int8_t* const* k, index_t d,
                        const float* mul, const std::int32_t* bias, const float* ks, float* s, index_t lds) noexcept {
    for (int r = 0; r < rows; r += 4) {
      const int n = std::min(4, rows - r);
      const std::int8_t* qr = q + r * ldq;
      float* sr = s + r * lds;
      if constexpr (!Vnni) {
        if (n <= 2) {
          if (n == 1)
            body_plain<1, 4>(qr, ldq, k, d, mul + r, ks, sr, lds);
          else
            body_plain<2, 4>(qr, ldq, k, d, mul + r, ks, sr, lds);
          continue;
        }
      }
      for (int u = 0; u < 4; u += 2) {
        const std::int8_t* const* ku = k + u;
        if constexpr (Vnni) {
          switch (n) {
            case 1: body<1>(qr, ldq, ku, d, mul + r, bias + r, ks + u, sr + u, lds); break;
            case 2: body<2>(qr, ldq, ku, d, mul + r, bias + r, ks + u, sr + u, lds); break;
            case 3: body<3>(qr, ldq, ku, d, mul + r, bias + r, ks + u, sr + u, lds); break;
            default: body<4>(qr, ldq, ku, d, mul + r, bias + r, ks + u, sr + u, lds); break;
          }
        } else if (n == 3) {
          body_plain<3, 2>(qr, ldq, ku, d, mul + r, ks + u, sr + u, lds);
        } else {
          body_plain<4, 2>(qr, ldq, ku, d, mul + r, ks + u, sr + u, lds);
        }
      }
    }
  }

  /// As i8_dot's round_weights.
  GQA_TARGET_AVX2_PLAIN static pv_weights round_weights(const float* p, const float* vs, index_t n, std::int32_t* w,
                                                 float& f) noexcept {
    alignas(32) float x[pv_chunk] = {}, y[pv_chunk] = {};
    std::memcpy(x, p, static_cast<std::size_t>(n) * sizeof(float));
    std::memcpy(y, vs, static_cast<std::size_t>(n) * sizeof(float));
    const __m256 inf = _mm256_set1_ps(__builtin_inff());
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    constexpr int NV = pv_chunk / 8;
    __m256 xv[NV];
    __m256 amax = _mm256_setzero_ps();
    int finite = 0xFF;
    GQA_UNROLL
    for (int i = 0; i < NV; ++i) {
      xv[i] = _mm256_mul_ps(_mm256_load_ps(x + 8 * i), _mm256_load_ps(y + 8 * i));
      const __m256 ax = _mm256_and_ps(xv[i], abs_mask);
      finite &= _mm256_movemask_ps(_mm256_cmp_ps(ax, inf, _CMP_LT_OQ));  // false for ±inf and NaN
      amax = _mm256_max_ps(amax, ax);
    }
    if (finite != 0xFF) return pv_weights::not_finite;
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    const float mx = _mm_cvtss_f32(_mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1)));
    if (mx == 0.0f) return pv_weights::zero;
    const float up = 32767.0f / mx;
    if (!(up < __builtin_inff())) return pv_weights::not_finite;
    const __m256 upv = _mm256_set1_ps(up);
    // packs works within 128-bit lanes: the permute puts each vector's eight words back in order.
    GQA_UNROLL
    for (int i = 0; i < NV; i += 2) {
      const __m256i q0 = _mm256_cvtps_epi32(_mm256_mul_ps(xv[i], upv));
      const __m256i q1 = _mm256_cvtps_epi32(_mm256_mul_ps(xv[i + 1], upv));
      const __m256i q01 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q0, q1), 0xD8);
      _mm256_store_si256(reinterpret_cast<__m256i*>(w + 4 * i), q01);
    }
    f = mx / 32767.0f;
    return pv_weights::rounded;
  }

  /// acc += the sums of a's and b's word pairs: VPDPWSSD (VEX; as asm for the reason of Note [VPDPBUSD by
  /// asm]) where Vnni, which only AVX-VNNI CPUs reach (pv_slab), else VPMADDWD and VPADDD.
  template <bool Vnni>
  GQA_TARGET_AVX2_PLAIN static GQA_FORCEINLINE void dpwssd(__m256i& acc, __m256i a, __m256i b) noexcept {
    if constexpr (Vnni)
      __asm__("%{vex%} vpdpwssd %2, %1, %0" : "+x"(acc) : "x"(a), "x"(b));
    else
      acc = _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
  }

  /// decode_pv's slabs (i8_pv::slabs): 16 columns, S of them at a time so that a block keeps 8 accumulators.
  static constexpr index_t slab_cols = 16;
  template <int R>
  static constexpr int slabs_for = R == 1 ? 4 : R == 2 ? 2 : 1;

  /// Columns [c0, c0 + width) of i8_pv::slabs, S parts of 16; Full: width is S · 16, else S is 1 and width < 16
  /// (zero-padded copies of the values, the sums through a buffer). VPDPWSSD where the CPU has AVX-VNNI.
  template <int R, int S, bool Full>
  static void pv_slab(const std::int32_t (*w)[pv_chunk / 2], const float* f, index_t n, const std::int8_t* v,
                      index_t ldv, index_t width, float* const* o, index_t c0) noexcept {
    if (::gqa::isa::cpu().avx_vnni)
      pv_slab_vnni<R, S, Full>(w, f, n, v, ldv, width, o, c0);
    else
      pv_slab_by<false, R, S, Full>(w, f, n, v, ldv, width, o, c0);
  }

  /// pv_slab on VPDPWSSD, a function of its own (both inlined into pv_slab made the pre-VNNI one 0.91x).
  template <int R, int S, bool Full>
  GQA_TARGET_AVXVNNI static void pv_slab_vnni(const std::int32_t (*w)[pv_chunk / 2], const float* f, index_t n,
                                              const std::int8_t* v, index_t ldv, index_t width, float* const* o,
                                              index_t c0) noexcept {
    pv_slab_by<true, R, S, Full>(w, f, n, v, ldv, width, o, c0);
  }

  template <bool Vnni, int R, int S, bool Full>
  GQA_TARGET_AVX2_PLAIN static GQA_FORCEINLINE void pv_slab_by(const std::int32_t (*w)[pv_chunk / 2], const float* f,
                                                               index_t n, const std::int8_t* v, index_t ldv,
                                                               index_t width, float* const* o, index_t c0) noexcept {
    static_assert(Full || S == 1);
    alignas(16) std::int8_t ta[16], tb[16];
    __m256i acc[R][2 * S];
    GQA_UNROLL
    for (int r = 0; r < R; ++r)
      GQA_UNROLL
      for (int i = 0; i < 2 * S; ++i) acc[r][i] = _mm256_setzero_si256();
    for (index_t j = 0; j < n; j += 2) {
      const std::int8_t* a = v + j * ldv;
      const std::int8_t* b = j + 1 < n ? a + ldv : a;  // an odd last key pairs with itself, weight 0
      if constexpr (!Full) {
        std::memset(ta, 0, sizeof ta);
        std::memset(tb, 0, sizeof tb);
        std::memcpy(ta, a, static_cast<std::size_t>(width));
        std::memcpy(tb, b, static_cast<std::size_t>(width));
        a = ta;
        b = tb;
      }
      GQA_UNROLL
      for (int h = 0; h < S; ++h) {
        const __m256i av = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + 16 * h)));
        const __m256i bv = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16 * h)));
        const __m256i x0 = _mm256_unpacklo_epi16(av, bv);  // columns 0-3 | 8-11
        const __m256i x1 = _mm256_unpackhi_epi16(av, bv);  // columns 4-7 | 12-15
        GQA_UNROLL
        for (int r = 0; r < R; ++r) {
          const __m256i wv = _mm256_set1_epi32(w[r][j / 2]);
          dpwssd<Vnni>(acc[r][2 * h], x0, wv);
          dpwssd<Vnni>(acc[r][2 * h + 1], x1, wv);
        }
      }
    }
    alignas(32) float t[16];
    GQA_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m256 fr = _mm256_set1_ps(f[r]);
      GQA_UNROLL
      for (int h = 0; h < S; ++h) {
        const __m256 y0 = _mm256_cvtepi32_ps(acc[r][2 * h]), y1 = _mm256_cvtepi32_ps(acc[r][2 * h + 1]);
        const __m256 z0 = _mm256_permute2f128_ps(y0, y1, 0x20);  // columns 0-7
        const __m256 z1 = _mm256_permute2f128_ps(y0, y1, 0x31);  // columns 8-15
        float* oc = o[r] + c0 + 16 * h;
        if constexpr (Full) {
          _mm256_storeu_ps(oc, _mm256_fmadd_ps(fr, z0, _mm256_loadu_ps(oc)));
          _mm256_storeu_ps(oc + 8, _mm256_fmadd_ps(fr, z1, _mm256_loadu_ps(oc + 8)));
        } else {
          _mm256_store_ps(t, z0);
          _mm256_store_ps(t + 8, z1);
          for (index_t c = 0; c < width; ++c) oc[c] = std::fma(f[r], t[c], oc[c]);
        }
      }
    }
  }

  /// VPDPBUSD (VEX), written as asm for the reason of Note [VPDPBUSD by asm].
  GQA_TARGET_AVXVNNI static GQA_FORCEINLINE void dpbusd(__m256i& acc, __m256i u8, __m256i s8) noexcept {
    __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u8), "x"(s8));
  }

  /// R rows × U keys (2 or 4) without VNNI (Note [int8 products without VNNI]): the sums Σ_c q_r[c] · k_u[c]
  /// directly (no bias).
  template <int R, int U>
  GQA_TARGET_AVX2_PLAIN static void body_plain(const std::int8_t* q, index_t ldq, const std::int8_t* const* k,
                                               index_t d, const float* mul, const float* ks, float* s,
                                               index_t lds) noexcept {
    const std::int8_t* kr[U];
    GQA_UNROLL
    for (int u = 0; u < U; ++u) kr[u] = k[u];
    __m256i acc[R][U];
    GQA_UNROLL
    for (int r = 0; r < R; ++r)
      GQA_UNROLL
      for (int u = 0; u < U; ++u) acc[r][u] = _mm256_setzero_si256();
    const __m256i ones = _mm256_set1_epi16(1);
    alignas(32) std::int8_t t[U][32];  // a last part shorter than 32 bytes, zero-padded
    const index_t parts = (d + 31) / 32;
    for (index_t i = 0; i < parts; ++i) {
      const index_t c = 32 * i;
      const std::int8_t* p[U];
      GQA_UNROLL
      for (int u = 0; u < U; ++u) p[u] = kr[u] + c;
      if (c + 32 > d) {
        std::memset(t, 0, sizeof t);
        GQA_UNROLL
        for (int u = 0; u < U; ++u) {
          std::memcpy(t[u], p[u], static_cast<std::size_t>(d - c));
          p[u] = t[u];
        }
      }
      GQA_UNROLL
      for (int u = 0; u < U; ++u) {
        const __m256i kv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p[u]));
        const __m256i uk = _mm256_abs_epi8(kv);  // unsigned |k|: 128 for -128
        GQA_UNROLL
        for (int r = 0; r < R; ++r) {
          const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + r * ldq + c));
          const __m256i pr = _mm256_maddubs_epi16(uk, _mm256_sign_epi8(qv, kv));  // |k| · (q · sign k), pairs
          acc[r][u] = _mm256_add_epi32(acc[r][u], _mm256_madd_epi16(pr, ones));
        }
      }
    }
    GQA_UNROLL
    for (int r = 0; r < R; ++r)
      GQA_UNROLL
      for (int u = 0; u < U; u += 2) store_scores(acc[r][u], acc[r][u + 1], 0, mul[r], ks + u, s + r * lds + u);
  }

  /// s[0, 2) = (mul · (the 8 sums of a − bias, the 8 of b − bias)) · ks[0, 2).
  GQA_TARGET_AVX2_PLAIN static GQA_FORCEINLINE void store_scores(__m256i a, __m256i b, std::int32_t bias, float mul,
                                                                 const float* ks, float* s) noexcept {
    const __m256i h = _mm256_hadd_epi32(a, b);  // a01 a23 b01 b23 | a45 a67 b45 b67
    const __m256i h2 = _mm256_hadd_epi32(h, h);  // a0-3 b0-3 . . | a4-7 b4-7 . .
    const __m128i t = _mm_add_epi32(_mm256_castsi256_si128(h2), _mm256_extracti128_si256(h2, 1));  // a b a b
    const __m128i dotv = _mm_sub_epi32(t, _mm_set1_epi32(bias));
    const __m128 ksv = _mm_setr_ps(ks[0], ks[1], ks[0], ks[1]);
    const __m128 v = _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(dotv), _mm_set1_ps(mul)), ksv);
    _mm_storel_pi(reinterpret_cast<__m64*>(s), v);
  }

  /// R rows × 2 keys.
  template <int R>
  GQA_TARGET_AVXVNNI static void body(const std::int8_t* q, index_t ldq, const std::int8_t* const* k, index_t d,
                                      const float* mul, const std::int32_t* bias, const float* ks, float* s,
                                      index_t lds) noexcept {
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
    for (int r = 0; r < R; ++r) store_scores(acc[r][0], acc[r][1], bias[r], mul[r], ks, s + r * lds);
  }
};

}  // namespace isa
GQA_END_NAMESPACE
#endif  // GQA_HAS_AVX2 && GQA_X86_CPUID

#endif  // GQA_ISA_I8_DOT_HPP
