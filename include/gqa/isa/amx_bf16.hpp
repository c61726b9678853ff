// gqa/isa/amx_bf16.hpp: the AMX-BF16 tile product and the packing of bf16 pairs the AVX-512 core's bf16
// prefill reads (Note [bf16 tiles] in detail/core/bf16_tiles.hpp): x86-64 with GCC or clang, in a TU or
// region that compiles vec<avx512>. Every function that holds AMX instructions is marked GQA_TARGET_AMX,
// so it is never inlined into code compiled without them, and the core calls it only when
// isa::amx_tiles_granted() (the CPU has the instructions and the OS granted the tile state).
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_ISA_AMX_BF16_HPP
#define GQA_ISA_AMX_BF16_HPP

#include <cstdint>

#include "../config.hpp"
#include "cpu.hpp"
#include "vec_avx512.hpp"

#if GQA_HAS_AVX512 && GQA_X86_CPUID
#include <immintrin.h>

// The full target list, not only the additions: a function's own target attribute replaces the region's
// under clang (GCC adds to it), and this list holds the AVX-512 region's (Note [per-target kernels]).
#ifndef GQA_TARGET_AMX
#define GQA_TARGET_AMX \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,amx-tile,amx-bf16")))
#endif

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

GQA_BEGIN_NAMESPACE
namespace isa {

/// AMX-BF16 with one tile configuration: all eight tile registers 16 rows × 64 bytes (16 fp32 or 32 bf16).
struct amx_bf16 {
  /// Loads the configuration into this thread's tile state (palette 1, tmm0-7 16 × 64 bytes).
  GQA_TARGET_AMX static void configure() noexcept {
    alignas(64) unsigned char cfg[64] = {};
    cfg[0] = 1;  // palette 1
    for (int t = 0; t < 8; ++t) {
      cfg[16 + 2 * t] = 64;  // bytes per row (little-endian 16 bits)
      cfg[48 + t] = 16;      // rows
    }
    // Not _tile_loadconfig: GCC 12's asm declares a read of 8 bytes, so the stores of the rows and
    // column widths were removed as dead at -O2 (and TILEZERO then faulted); this operand is the 64 bytes.
    __asm__ volatile("ldtilecfg %0" : : "m"(*reinterpret_cast<const unsigned char(*)[64]>(cfg)));
  }
  /// Returns the thread's tile state to its initial (unused) state.
  GQA_TARGET_AMX static void release() noexcept { _tile_release(); }

  /// C (MT·16 rows × NT·16 fp32 columns, row stride ldc bytes; = or += per `accumulate`) = Σ over `steps`
  /// steps k of A_k · B_k. A: MT tiles of 16 rows × 32 bf16, tile m of step k at a + m·16·lda + k·a_step
  /// bytes (row stride lda); B: NT tiles of 16 rows of bf16 pairs (the "VNNI" layout: row i holds elements
  /// 2i and 2i + 1 of the reduction for 16 columns), tile n of step k at b + n·b_col + k·b_step (row stride
  /// ldb). Each step is one TDPBF16PS per C tile: products of bf16 pairs summed in fp32 (inputs that are
  /// bf16 denormals read as zero, denormal results flushed to zero, round to nearest even).
  template <int MT, int NT>
  GQA_TARGET_AMX static void product(const void* a, index_t lda, index_t a_step, const void* b, index_t ldb,
                                     index_t b_step, index_t b_col, index_t steps, float* c, index_t ldc,
                                     bool accumulate) noexcept {
    static_assert(MT >= 1 && MT <= 2 && NT >= 1 && NT <= 2);
    const char* ab = static_cast<const char*>(a);
    const char* bb = static_cast<const char*>(b);
    char* cb = reinterpret_cast<char*>(c);
    if (accumulate) {
      _tile_loadd(0, cb, ldc);
      if constexpr (NT > 1) _tile_loadd(1, cb + 64, ldc);
      if constexpr (MT > 1) _tile_loadd(2, cb + 16 * ldc, ldc);
      if constexpr (MT > 1 && NT > 1) _tile_loadd(3, cb + 16 * ldc + 64, ldc);
    } else {
      _tile_zero(0);
      if constexpr (NT > 1) _tile_zero(1);
      if constexpr (MT > 1) _tile_zero(2);
      if constexpr (MT > 1 && NT > 1) _tile_zero(3);
    }
    for (index_t k = 0; k < steps; ++k) {
      _tile_loadd(4, ab + k * a_step, lda);
      if constexpr (MT > 1) _tile_loadd(5, ab + 16 * lda + k * a_step, lda);
      _tile_loadd(6, bb + k * b_step, ldb);
      if constexpr (NT > 1) _tile_loadd(7, bb + b_col + k * b_step, ldb);
      _tile_dpbf16ps(0, 4, 6);
      if constexpr (NT > 1) _tile_dpbf16ps(1, 4, 7);
      if constexpr (MT > 1) _tile_dpbf16ps(2, 5, 6);
      if constexpr (MT > 1 && NT > 1) _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, cb, ldc);
    if constexpr (NT > 1) _tile_stored(1, cb + 64, ldc);
    if constexpr (MT > 1) _tile_stored(2, cb + 16 * ldc, ldc);
    if constexpr (MT > 1 && NT > 1) _tile_stored(3, cb + 16 * ldc + 64, ldc);
  }

  /// dst[c] = a[c] | b[c] << 16 for c < n (16-bit elements into 32-bit pairs; b = nullptr reads zeros), and
  /// zeros for c in [n, np), np a multiple of 16. Returns whether any of the n elements of a or b is a
  /// bf16 infinity or NaN (exponent all ones). AVX-512F/BW only.
  static GQA_FORCEINLINE bool interleave(const std::uint16_t* a, const std::uint16_t* b, index_t n, index_t np,
                                         std::uint32_t* dst) noexcept {
    const __m512i vexp = _mm512_set1_epi32(0x7F807F80);
    __mmask32 bad = 0;
    for (index_t c = 0; c < np; c += 16) {
      const auto m = vec<avx512>::mask(static_cast<int>(n - c));
      const __m512i va = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, a + c));
      const __m512i vb = b ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, b + c)) : _mm512_setzero_si512();
      const __m512i v = _mm512_or_si512(va, _mm512_slli_epi32(vb, 16));
      bad |= _mm512_cmpeq_epi16_mask(_mm512_and_si512(v, vexp), _mm512_set1_epi16(0x7F80));
      _mm512_storeu_si512(dst + c, v);
    }
    return bad != 0;
  }
};

}  // namespace isa
GQA_END_NAMESPACE

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // GQA_HAS_AVX512 && GQA_X86_CPUID

#endif  // GQA_ISA_AMX_BF16_HPP
