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
};

}  // namespace isa
GQA_END_NAMESPACE
#endif  // GQA_HAS_AVX512 && GQA_X86_CPUID

#endif  // GQA_ISA_BF16_DOT_HPP
