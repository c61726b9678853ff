// gqa/isa/bf16_dot.hpp: the AVX512-BF16 register-tile product and the rounding of fp32 rows to bf16 that the
// AVX-512 core's bf16 prefill reads on CPUs without AMX (Note [bf16 tiles] in detail/core/bf16_tiles.hpp):
// x86-64 with GCC or clang, in a TU or region that compiles vec<avx512>. Every function that holds
// AVX512-BF16 instructions is marked GQA_TARGET_BF16, so it is never inlined into code compiled without
// them, and the core calls it only when isa::cpu().avx512_bf16 (where isa::bf16_dot_fast()).
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_ISA_BF16_DOT_HPP
#define GQA_ISA_BF16_DOT_HPP

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "../config.hpp"
#include "cpu.hpp"
#include "vec_avx512.hpp"

#if GQA_HAS_AVX512 && GQA_X86_CPUID
#include <immintrin.h>

// The full target list, not only the addition: a function's own target attribute replaces the region's
// under clang (GCC adds to it), and this list holds the AVX-512 region's (Note [per-target kernels]).
#ifndef GQA_TARGET_BF16
#define GQA_TARGET_BF16 __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq,avx512bf16")))
#endif

GQA_BEGIN_NAMESPACE
namespace isa {

/// VDPBF16PS register tiles: R rows × NT vectors of 16 fp32 sums, each step one pair of bf16 products per
/// lane (Note [bf16 tiles]).
struct bf16_dot {
  /// Rows and vectors of 16 columns of the largest tile: 24 accumulators, NT vectors of B and one
  /// broadcast pair in the 32 zmm registers.
  static constexpr int max_rows = 6, max_vectors = 4;

  /// C (rows × NT·16 fp32 columns, 1 <= rows <= max_rows, row stride ldc floats; = or += per `accumulate`)
  /// = Σ over `steps` steps k of A_k · B_k. A: rows of bf16 (row stride lda elements), step k reads
  /// elements 2k and 2k + 1 of each row as one pair; B: step k is the NT·16 32-bit entries at b + k·ldb,
  /// each a pair of bf16 (the element of the two reduction indices 2k, 2k + 1 for one column). Each step is
  /// one VDPBF16PS per vector of C: the two products of bf16 pairs added to the fp32 sum (inputs that are
  /// bf16 denormals read as zero, denormal results flushed to zero, round to nearest even). As the core's
  /// register tile (Note [row tails] in detail/core/tile.hpp): one instantiation per width, the tile's
  /// max_rows rows always computed, row r from A's row min(r, rows − 1), only the first `rows` stored.
  template <int NT>
  GQA_TARGET_BF16 static void product(int rows, const std::uint16_t* a, index_t lda, const std::uint32_t* b,
                                      index_t ldb, index_t steps, float* c, index_t ldc, bool accumulate) noexcept {
    static_assert(NT >= 1 && NT <= max_vectors);
    constexpr int R = max_rows;
    const std::uint16_t* arow[R];
    GQA_UNROLL
    for (int r = 0; r < R; ++r) arow[r] = a + std::min(r, rows - 1) * lda;
    __m512 acc[R][NT];
    GQA_UNROLL
    for (int r = 0; r < R; ++r) {
      GQA_UNROLL
      for (int n = 0; n < NT; ++n)
        acc[r][n] = accumulate ? _mm512_loadu_ps(c + std::min(r, rows - 1) * ldc + 16 * n) : _mm512_setzero_ps();
    }
    for (index_t k = 0; k < steps; ++k) {
      __m512bh bv[NT];
      GQA_UNROLL
      for (int n = 0; n < NT; ++n) bv[n] = (__m512bh)_mm512_loadu_si512(b + k * ldb + 16 * n);
      GQA_UNROLL
      for (int r = 0; r < R; ++r) {
        std::uint32_t pair;
        std::memcpy(&pair, arow[r] + 2 * k, sizeof pair);
        const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
        GQA_UNROLL
        for (int n = 0; n < NT; ++n) acc[r][n] = _mm512_dpbf16_ps(acc[r][n], av, bv[n]);
      }
    }
    GQA_UNROLL
    for (int r = 0; r < R; ++r) {
      if (r < rows) {
        GQA_UNROLL
        for (int n = 0; n < NT; ++n) _mm512_storeu_ps(c + r * ldc + 16 * n, acc[r][n]);
      }
    }
  }

  /// product<nt> for 1 <= nt <= max_vectors chosen at run time.
  static void product(int rows, int nt, const std::uint16_t* a, index_t lda, const std::uint32_t* b, index_t ldb,
                      index_t steps, float* c, index_t ldc, bool accumulate) noexcept {
    using fn = void (*)(int, const std::uint16_t*, index_t, const std::uint32_t*, index_t, index_t, float*, index_t,
                        bool) noexcept;
    static constexpr fn table[max_vectors] = {&product<1>, &product<2>, &product<3>, &product<4>};
    table[nt - 1](rows, a, lda, b, ldb, steps, c, ldc, accumulate);
  }

  /// Decode's scores (Note [bf16 decode] in detail/core/bf16_tiles.hpp): s[r·lds + u] = scale · Σ_c q_r[c]·k_u[c]
  /// for r < rows (1 <= rows <= 4) and the 4 keys k[u] (bf16 rows of d elements, read only inside them),
  /// q_r = q + r·ldq (bf16 rows zero-padded to a multiple of 32). One VDPBF16PS per (row, key) and 32
  /// elements; K rows by plain loads when d is a multiple of 32, else by masked ones (Note [plain loads from
  /// memory]). As the register tiles: the 4 rows always computed, row r from min(r, rows − 1), only the
  /// first `rows` stored.
  static void decode_scores(int rows, const std::uint16_t* q, index_t ldq, const std::uint16_t* const* k, index_t d,
                            float scale, float* s, index_t lds) noexcept {
    if (d % 32 == 0) {
      decode_scores_body<true>(rows, q, ldq, k, d, scale, s, lds);
    } else {
      decode_scores_body<false>(rows, q, ldq, k, d, scale, s, lds);
    }
  }

  /// Decode's P·V (Note [bf16 decode] in detail/core/bf16_tiles.hpp): O_r[0, dv) += Σ_{j<n} p_r[j] · v_j for
  /// r < rows (1 <= rows <= 4), O_r = o + r·ldo (fp32, rows padded to a multiple of 16 floats), p_r = p + r·ldp
  /// (bf16 weights, n of them, then a zero if n is odd), v_j = v[j] (bf16 rows of dv elements, read only inside
  /// them). Keys go in pairs, the two rows interleaved in registers (VPUNPCKLWD/HWD) so that one VDPBF16PS adds
  /// both keys' products; the sums then sit in the lanes of the interleave's order, which VPERMT2PS maps from
  /// and back to O's at the start and end of each 64 columns. An odd last key pairs with a zero row. n >= 1.
  static void decode_pv(int rows, const std::uint16_t* p, index_t ldp, const std::uint16_t* const* v, index_t n,
                        index_t dv, float* o, index_t ldo) noexcept {
    if (dv % 64 == 0) {
      decode_pv_body<true>(rows, p, ldp, v, n, dv, o, ldo);
    } else {
      decode_pv_body<false>(rows, p, ldp, v, n, dv, o, ldo);
    }
  }

  /// dst[0, n32) = src[0, n) rounded to bf16 (VCVTNE2PS2BF16: nearest even, denormal inputs and results
  /// zero, NaN stays NaN), then zeros: n a multiple of 16, n32 = n rounded up to 32.
  GQA_TARGET_BF16 static void round_row(const float* src, index_t n, std::uint16_t* dst) noexcept {
    index_t j = 0;
    for (; j + 32 <= n; j += 32) {
      const __m512bh r = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + j + 16), _mm512_loadu_ps(src + j));
      _mm512_storeu_si512(dst + j, (__m512i)r);
    }
    if (j < n) {
      const __m512bh r = _mm512_cvtne2ps_pbh(_mm512_setzero_ps(), _mm512_loadu_ps(src + j));
      _mm512_storeu_si512(dst + j, (__m512i)r);
    }
  }

 private:
  // Note [plain loads from memory]
  // The K and V rows of decode come from memory, and on the AMD EPYC (Zen 5) a masked load that misses the
  // cache costs far more than a plain one: the same kernels with every K and V row read through masked
  // loads (full masks) ran bf16 D1 (16384 keys) 0.87-0.92x the fp32-widening walk, with plain loads 1.07x
  // (1.20x either way with the cache in L2; 2026-12-05, one thread, call by call). So rows whose length is a
  // whole number of loads (d a multiple of 32, d_v of 64) take plain loads (Full), others masked ones.
  // With plain loads, an odd last key's partner in P·V is its own row, zeroed in registers (a masked move).

  /// decode_scores; Full: d is a multiple of 32.
  template <bool Full>
  GQA_TARGET_BF16 static void decode_scores_body(int rows, const std::uint16_t* q, index_t ldq,
                                                 const std::uint16_t* const* k, index_t d, float scale, float* s,
                                                 index_t lds) noexcept {
    constexpr int R = 4, U = 4;
    const std::uint16_t* qr[R];
    GQA_UNROLL
    for (int r = 0; r < R; ++r) qr[r] = q + std::min(r, rows - 1) * ldq;
    const std::uint16_t* kr[U];
    GQA_UNROLL
    for (int u = 0; u < U; ++u) {
      kr[u] = k[u];
      GQA_IN_GPR(kr[u]);
    }
    __m512 acc[R][U];
    GQA_UNROLL
    for (int r = 0; r < R; ++r) {
      GQA_UNROLL
      for (int u = 0; u < U; ++u) acc[r][u] = _mm512_setzero_ps();
    }
    // Parts of 32 elements; without Full the last one is read with a masked load (one loop for both: a
    // lambda would not carry this function's target attribute).
    const index_t parts = (d + 31) / 32;
    for (index_t i = 0; i < parts; ++i) {
      const index_t c = 32 * i;
      const __mmask32 m = c + 32 <= d ? ~__mmask32{0} : static_cast<__mmask32>((std::uint64_t{1} << (d - c)) - 1);
      __m512bh kv[U];
      GQA_UNROLL
      for (int u = 0; u < U; ++u)
        kv[u] = (__m512bh)(Full ? _mm512_loadu_si512(kr[u] + c) : _mm512_maskz_loadu_epi16(m, kr[u] + c));
      GQA_UNROLL
      for (int r = 0; r < R; ++r) {
        const __m512bh qv = (__m512bh)_mm512_loadu_si512(qr[r] + c);
        GQA_UNROLL
        for (int u = 0; u < U; ++u) acc[r][u] = _mm512_dpbf16_ps(acc[r][u], qv, kv[u]);
      }
    }
    GQA_UNROLL
    for (int r = 0; r < R; ++r) {
      if (r < rows) {
        alignas(16) float out[4];
        vec<avx512>::reduce_sum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3], out);
        _mm_storeu_ps(s + r * lds, _mm_mul_ps(_mm_load_ps(out), _mm_set1_ps(scale)));
      }
    }
  }

  /// decode_pv; Full: dv is a multiple of 64.
  template <bool Full>
  GQA_TARGET_BF16 static void decode_pv_body(int rows, const std::uint16_t* p, index_t ldp,
                                             const std::uint16_t* const* v, index_t n, index_t dv, float* o,
                                             index_t ldo) noexcept {
    constexpr int R = 4;
    // Lane i of the low interleave holds column 8·(i / 4) + i % 4 of 32, of the high one that + 4.
    alignas(64) static constexpr std::int32_t to_lo[16] = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
    alignas(64) static constexpr std::int32_t to_hi[16] = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
    // And back: O's columns [0, 16) and [16, 32) from the low (0-15) and high (16-31) interleaves' lanes.
    alignas(64) static constexpr std::int32_t back0[16] = {0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23};
    alignas(64) static constexpr std::int32_t back1[16] = {8,  9,  10, 11, 24, 25, 26, 27,
                                                           12, 13, 14, 15, 28, 29, 30, 31};
    const __m512i ilo = _mm512_load_si512(to_lo), ihi = _mm512_load_si512(to_hi);
    const __m512i ib0 = _mm512_load_si512(back0), ib1 = _mm512_load_si512(back1);
    const std::uint16_t* pr[R];
    GQA_UNROLL
    for (int r = 0; r < R; ++r) pr[r] = p + std::min(r, rows - 1) * ldp;
    const index_t dvp = (dv + 15) / 16 * 16;  // O's padded columns
    // Columns [c0, c0 + 64) in two halves h of 32.
    for (index_t c0 = 0; c0 < dvp; c0 += 64) {
      const index_t w = std::min<index_t>(64, dvp - c0);  // 16, 32, 48 or 64 columns of O
      // O's vectors of 16 columns that exist in [c0, c0 + 64), as masks (masked loads and stores: no branch
      // between the sums' loads and stores, so that they stay in registers).
      __mmask16 mo[4];
      GQA_UNROLL
      for (int q = 0; q < 4; ++q) mo[q] = 16 * q < w ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>(0);
      __m512 lo[R][2], hi[R][2];
      GQA_UNROLL
      for (int r = 0; r < R; ++r) {
        const float* orow = o + std::min(r, rows - 1) * ldo + c0;
        GQA_UNROLL
        for (int h = 0; h < 2; ++h) {
          const __m512 a = _mm512_maskz_loadu_ps(mo[2 * h], orow + 32 * h);
          const __m512 b = _mm512_maskz_loadu_ps(mo[2 * h + 1], orow + 32 * h + 16);
          lo[r][h] = _mm512_permutex2var_ps(a, ilo, b);
          hi[r][h] = _mm512_permutex2var_ps(a, ihi, b);
        }
      }
      // V's elements of columns [c0 + 32h, +32) that exist (dv may end inside them), as a mask of 16-bit lanes.
      __mmask32 m[2];
      GQA_UNROLL
      for (int h = 0; h < 2; ++h) {
        const index_t e = std::clamp<index_t>(dv - c0 - 32 * h, 0, 32);
        m[h] = static_cast<__mmask32>((std::uint64_t{1} << e) - 1);
      }
      // A do-while (n >= 1): with a zero-trip path g++ 12 kept the 16 sums in memory, storing them every step.
      index_t j = 0;
      do {
        // An odd last key pairs with zeros: its own row, zeroed (its partner's weight is zero too).
        const bool odd = j + 1 == n;
        const std::uint16_t* va = v[j] + c0;
        const std::uint16_t* vb = v[odd ? j : j + 1] + c0;
        const __mmask32 b0 = odd ? 0 : m[0], b1 = odd ? 0 : m[1];
        __m512i a0, x0, a1, x1;
        if constexpr (Full) {
          a0 = _mm512_loadu_si512(va);
          x0 = _mm512_maskz_mov_epi16(b0, _mm512_loadu_si512(vb));
          a1 = _mm512_loadu_si512(va + 32);
          x1 = _mm512_maskz_mov_epi16(b1, _mm512_loadu_si512(vb + 32));
        } else {
          a0 = _mm512_maskz_loadu_epi16(m[0], va);
          x0 = _mm512_maskz_loadu_epi16(b0, vb);
          a1 = _mm512_maskz_loadu_epi16(m[1], va + 32);
          x1 = _mm512_maskz_loadu_epi16(b1, vb + 32);
        }
        const __m512bh l0 = (__m512bh)_mm512_unpacklo_epi16(a0, x0), h0 = (__m512bh)_mm512_unpackhi_epi16(a0, x0);
        const __m512bh l1 = (__m512bh)_mm512_unpacklo_epi16(a1, x1), h1 = (__m512bh)_mm512_unpackhi_epi16(a1, x1);
        GQA_UNROLL
        for (int r = 0; r < R; ++r) {
          std::uint32_t pair;
          std::memcpy(&pair, pr[r] + j, sizeof pair);
          const __m512bh pw = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
          lo[r][0] = _mm512_dpbf16_ps(lo[r][0], pw, l0);
          hi[r][0] = _mm512_dpbf16_ps(hi[r][0], pw, h0);
          lo[r][1] = _mm512_dpbf16_ps(lo[r][1], pw, l1);
          hi[r][1] = _mm512_dpbf16_ps(hi[r][1], pw, h1);
        }
        j += 2;
      } while (j < n);
      GQA_UNROLL
      for (int r = 0; r < R; ++r) {
        float* orow = o + std::min(r, rows - 1) * ldo + c0;
        const __mmask16 keep = r < rows ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>(0);
        GQA_UNROLL
        for (int h = 0; h < 2; ++h) {
          const __m512 a = _mm512_permutex2var_ps(lo[r][h], ib0, hi[r][h]);
          const __m512 b = _mm512_permutex2var_ps(lo[r][h], ib1, hi[r][h]);
          _mm512_mask_storeu_ps(orow + 32 * h, mo[2 * h] & keep, a);
          _mm512_mask_storeu_ps(orow + 32 * h + 16, mo[2 * h + 1] & keep, b);
        }
      }
    }
  }
};

}  // namespace isa
GQA_END_NAMESPACE
#endif  // GQA_HAS_AVX512 && GQA_X86_CPUID

#endif  // GQA_ISA_BF16_DOT_HPP
