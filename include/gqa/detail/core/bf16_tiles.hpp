// gqa/detail/core/bf16_tiles.hpp: the tiled (prefill) path's two products in bf16 (Note [bf16 tiles]), on
// AMX tiles or on AVX512-BF16 register tiles: Q rows packed as bf16, K and V packed as bf16 pairs, S = Q·Kᵀ
// (unscaled) and O += P·V with P rounded to bf16, fp32 sums. bf16_tiles<Isa>::available is true only for
// AVX-512 on x86-64 GCC/clang; kernel::run takes this path only for bf16 Q and K/V and
// options.bf16_products, on AMX where isa::amx_tiles_granted(), else where isa::bf16_dot_fast().
// Invariant: packed buffers are fully written (padding is zero) and tiles read only inside them.
// Decode tasks of such a call take VDPBF16PS on the rows where they lie (Note [bf16 decode]).
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_DETAIL_CORE_BF16_TILES_HPP
#define GQA_DETAIL_CORE_BF16_TILES_HPP

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "../../isa/amx_bf16.hpp"
#include "../../isa/bf16_dot.hpp"
#include "../../isa/vec.hpp"
#include "../../numeric.hpp"
#include "common.hpp"

GQA_BEGIN_NAMESPACE
namespace detail::core {

// Note [bf16 tiles]
// With bf16 Q, K and V the fp32 core widens every element and spends ~70% of a prefill in the fp32
// register tile (§2.10 of docs/design.md), so bf16 inputs ran at fp32's speed. On a CPU with AMX-BF16
// (Intel Sapphire Rapids and later) the two products of a key block run on AMX tiles instead: TDPBF16PS
// multiplies 16 × 32 bf16 by 32 × 16 bf16 into 16 × 16 fp32 sums (16K FLOPs an instruction; an Intel
// Xeon: 3.1 TFLOP/s of tile products against 215 GFLOP/s of fp32 FMA on one core). AVX512-BF16's
// VDPBF16PS (16 lanes × 2 bf16 products, added to fp32 sums) is no faster than fp32 on that Xeon:
// 108 GFLOP/s (0.5 instructions a cycle, against two FMAs a cycle), so it does not run there. On the AMD
// EPYC (Zen 5: AVX512-BF16, no AMX) it issues like an FMA: 406 GFLOP/s against 218 of fp32 FMA (one
// core, 12 independent sums each, 2026-12-05). So an AMD CPU with AVX512-BF16 (isa::bf16_dot_fast(); no
// AMD CPU has AMX) runs the same two products as VDPBF16PS register tiles (isa/bf16_dot.hpp) on the same
// packed operands, and an Intel CPU without AMX tile state (Cooper Lake, a hypervisor that hides AMX)
// keeps the fp32 products, which its VDPBF16PS would not beat. The register tile: 6 rows × 4 vectors of
// 16 fp32 sums (24 of the 32 zmm registers; each step loads 4 vectors of pairs and broadcasts one pair
// per row); the score tiles walk a slice of 64 keys of packed Kᵀ over d/2 steps, the P·V tiles 64
// columns of packed V over the block's key pairs; one instantiation per width (1-4 vectors), a last group
// of fewer than 6 rows runs the 6-row tile on its rows (Note [row tails] in tile.hpp). Blocks as the fp32
// core's (forward_block_kv; 128 on AMX): on the EPYC P1/P2/P3 1.56/1.55/1.34x fp32 at 128 keys,
// 1.61/1.60/1.44x at 256; 512 against 256 (2026-12-07, Zen 5) P1 1.055x, P2 1.048x.
//   * Q·Kᵀ: Q rows packed as they are (bf16, zero-padded to a multiple of 32 elements and of 16 rows),
//     NOT pre-scaled: the scores come out as the exact-input dot products q·k summed in fp32, and
//     kernel::run multiplies each score row by scale·log2(e) (scale_row, its own vector loop over the row
//     while it is in L1) first in the per-row loop that applies softcap, ALiBi and the mask. Rounding
//     scale·q back to bf16 would add an error of 2^-9 per element.
//     K is packed like the fp32 Kᵀ slices (pack_k), in pairs of elements: slice [d/2][keys], each 32-bit
//     entry elements 2c and 2c + 1 of one key's row (AMX's B layout), built by the same 16 × 16 register
//     transposition of 32-bit entries (a pair is moved, never converted); an odd d pads a zero element.
//   * P·V: after the online softmax (fp32, unchanged) each row's P is rounded to bf16 (VCVTNE2PS2BF16,
//     nearest even); V is packed in pairs of keys, [keys/2][d_v], each entry element c of keys 2i and 2i + 1;
//     the products accumulate into the fp32 O rows. The row sum l stays that of the fp32 P (as
//     FlashAttention does): measured on P1-like random inputs, the output's error against the double
//     reference was the same either way (l from fp32 P, or from the rounded P).
//   * Masks: a block cut by a mask edge runs its P·V on the whole block, the hidden keys with weight
//     exactly 0 (their scores are −inf), which adds exactly 0 when their V rows are finite. The packing of
//     V notes whether any element of the block is infinite or NaN; only then does the block take the fp32
//     band (Note [causal staircase]) on its fp32 P and V widened into the fp32 buffer, so a non-finite V
//     row that a row does not see never reaches it (0 · NaN), as on the fp32 path.
// Accuracy: the products of bf16 inputs are exact in fp32, so Q·Kᵀ differs from the fp32 core only in the
// order of its fp32 sums; P·V adds one rounding of each weight to bf16 (relative 2^-9), which dominates
// (Note [bf16 products tolerance] in tests/support/tolerance.hpp). AMX and VDPBF16PS read bf16 denormals
// as zero and flush denormal sums to zero: a weight below 2^-126 counts as 0, and an infinite V element
// that meets such a weight gives NaN (0 · inf) where the fp32 core gives ±inf. Results are the same for
// any thread count (each row's sums are the same instructions whatever the thread); they are not the
// fp32 core's bits, which options.bf16_products = false restores, and the two engines add in different
// orders (each row's sums are the same on a given CPU).

// Note [bf16 decode]
// Decode tasks (the direct path's key-major walk, Note [decode tasks]) of a call with bf16 Q, K and V and
// options.bf16_products, whose KV heads have 4 rows or more each (the blocks' 4 rows; with fewer a block
// computes rows it does not store: MHA decode, 1 row per head, ran 0.77x in L2 and 0.82x at 8192 keys),
// run their two products on VDPBF16PS too, where it is the engine (isa::bf16_dot_fast():
// AVX512-BF16 on an AMD CPU; with AMX granted, or on Intel, decode keeps the fp32 products: not measured
// there, and VDPBF16PS issued at half fp32 FMA's rate on the Sapphire Rapids Xeon of Note [bf16 tiles]).
// Nothing is packed: each task keeps its
// rows' bf16 Q (zero-padded to a multiple of 32 elements), and K and V are read where they lie, as the fp32
// direct path reads them (Note [direct path]: for a few rows, packing costs more than the products it
// feeds), which is why decode has kernels of its own rather than the register tiles above, whose operands
// are packed (Kᵀ and V in pairs):
//   * Q·Kᵀ (isa::bf16_dot::decode_scores): blocks of 4 rows × 4 keys, one VDPBF16PS per (row, key) and 32
//     elements, read from the K rows where they lie, then the walk's horizontal sums; the unscaled sums are
//     multiplied by scale·log2(e) as they are stored (the prefill's scale_row, done there). The products of
//     bf16 inputs are exact, so the scores differ from the fp32 core's in the order of their sums only.
//   * P·V (isa::bf16_dot::decode_pv): after each head's online softmax on a unit of 32 keys (fp32,
//     unchanged; l sums the fp32 weights), the unit's weights are rounded to bf16 (VCVTNE2PS2BF16) and each
//     pair of keys' V rows is interleaved in registers, so one VDPBF16PS adds both keys' products to 16 sums;
//     the sums live in the interleave's lane order between the unit's loads and stores of O. A unit some row
//     of the task does not see whole (a cut block: causal rows, windows) takes the fp32 band on the fp32
//     weights (Note [causal staircase]), so a key a row does not see never meets it, NaN or not; in the
//     units no mask cuts every row sees every key, and 0 · NaN is the naive softmax's NaN too.
// The accuracy, the denormal flushing and the thread-count rule are Note [bf16 tiles]'s: a weight below
// 2^-126 counts as 0 (an infinite V element meeting it gives NaN where the fp32 core gives ±inf). Measured
// (AMD EPYC, family 26 model 2, 2026-12-05, one thread pinned, D1's heads: 32 query heads on 8 KV heads,
// d 128; the build before and after called alternately in one process): with the cache in L2 (256 keys)
// 1.20x; at 16384 keys, where the steps' loads of Note [decode first loads] carry most of the gain, bf16
// Q/K/V 1.23x against bf16 K/V with fp32 Q 1.12x. First written with masked loads for every row, bf16 ran
// 0.87-0.92x at 16384 keys (Note [plain loads from memory] in isa/bf16_dot.hpp).

// Note [bf16 tiles for few rows]
// A task of one KV head with 32 rows or fewer takes the direct path (Note [direct path]): K and V read in
// place, every element widened to fp32 for fp32 products. That is decode of MQA (32 query heads on one KV
// head) and of any call whose KV heads serving queries are one. Where VDPBF16PS is the engine (not with
// AMX: not measured there), such a task with k_tiles16_min_rows rows or more takes the bf16 tiles above
// instead: K and V are packed into pairs once per block, which its 20 or more rows share, and the products
// run at VDPBF16PS's rate. Measured (AMD EPYC, family 26 model 2, 2026-12-05, one thread pinned, bf16 Q/K/V,
// one query on one KV head of d 128; the two builds' processes in turn at 23:03-23:05 UTC, then the two
// called alternately in one process at 23:25, 11 pairs), with K/V in L2 (512 keys) and at 16384 keys:
// 32 rows 1.18-1.24x and 1.24-1.27x; 24 rows 1.13-1.24x and 1.21-1.29x; 20 rows 1.01-1.10x and 1.03-1.13x;
// 16 rows 0.96-1.06x and 1.01-1.12x; 12 rows 1.00x; 8 rows 0.73-0.77x; 4 rows 0.52-0.60x. The 6-row tile
// groups compute padding rows (16 rows run as 6 + 6 + 4 of 6), and the per-block packing needs rows to
// repay it. Several KV heads (decode tasks) keep the walk of Note [bf16 decode]. Such a decode call takes
// the tiles' blocks (forward_block_kv: 512 keys, 256 with a large L2; 256 when measured), not decode's 64
// (block_kv_decode, sized for the walk's bytes in flight): 256 against 64, called alternately (2026-12-06
// 00:30 UTC, 11 pairs), 32 rows 1.15x in L2 and 1.08x at 16384 keys, 24 rows 1.08x, 20 rows 1.15x and
// 1.09x (blocks of 128: 1.07-1.08x); 512 against 256 (2026-12-07), MQA bf16 decode (32 rows, 8192 keys)
// 1.03x. The rows above are with 64.
/// The fewest rows of a one-KV-head task that the bf16 tiles take on VDPBF16PS (Note [bf16 tiles for few rows]).
inline constexpr index_t k_tiles16_min_rows = 20;
/// Whether a one-KV-head task of `rows` rows that the direct path would take (rows <= k_direct_rows) takes
/// the bf16 tiles instead, on a call with them (Note [bf16 tiles for few rows]): on VDPBF16PS (amx false)
/// from k_tiles16_min_rows rows. The task's choice (kernel::run) and the decode call's block length
/// (forward_layout) both ask this.
constexpr bool few_rows_take_tiles16(index_t rows, bool amx) noexcept { return !amx && rows >= k_tiles16_min_rows; }

/// No bf16 tiles: the primary template (every ISA but AVX-512 on x86-64 GCC/clang).
template <class Isa>
struct bf16_tiles {
  static constexpr bool available = false;
};

#if GQA_HAS_AVX512 && GQA_X86_CPUID
template <>
struct bf16_tiles<isa::avx512> {
  static constexpr bool available = true;
  using V = isa::vec<isa::avx512>;
  using amx = isa::amx_bf16;
  using dot = isa::bf16_dot;
  static constexpr int L = V::lanes;  // 16: rows and fp32 columns of a tile
  /// Keys per packed slice of Kᵀ (as packed<avx512>::cols).
  static constexpr index_t cols = 64;

  /// A row of d elements padded to whole steps of the reduction (32 bf16 per tile row).
  static constexpr index_t padded_d(index_t d) noexcept { return round_up(d, 32); }
  /// Rows padded to whole tiles.
  static constexpr index_t padded_rows(index_t rows) noexcept { return round_up(rows, 16); }
  /// Keys of a block padded to whole steps of P·V's reduction.
  static constexpr index_t padded_keys(index_t nb) noexcept { return round_up(nb, 32); }

  /// Starts and ends the AMX tile state of one task (amx_bf16::configure, release); the register tiles need none.
  struct session {
    session() noexcept { amx::configure(); }
    ~session() { amx::release(); }
    session(const session&) = delete;
    session& operator=(const session&) = delete;
  };

  /// dst[0, padded_d(d)) = the d elements of src, then zeros.
  static void pack_q_row(const bf16* src, index_t d, std::uint16_t* dst) noexcept {
    std::memcpy(dst, src, static_cast<std::size_t>(d) * sizeof(bf16));
    std::fill(dst + d, dst + padded_d(d), std::uint16_t{0});
  }

  /// kp = Kᵀ of the nb bf16 keys of row source `k` (d elements each) in pairs, slices of `cols` keys: slice
  /// s0 is [padded_d(d) / 2][w] 32-bit entries (entry (c, j): elements 2c, 2c + 1 of key s0 + j, zero past
  /// d), w its width; keys nb .. nbp − 1 are zero. Whole 16 × 16 blocks of entries are transposed in
  /// registers (vec::transpose moves 32-bit lanes, never converts), the rest entry by entry.
  template <class Rows>
  static void pack_k(const Rows& k, index_t d, index_t nb, index_t nbp, std::uint32_t* kp) noexcept {
    alignas(64) static constexpr float zero_row[L] = {};
    const index_t d2 = d / 2, d2_full = d2 - d2 % L, d2p = padded_d(d) / 2;
    for (index_t s0 = 0; s0 < nbp; s0 += cols) {
      const index_t w = std::min(cols, nbp - s0);  // a multiple of L, as nbp is
      std::uint32_t* slice = kp + s0 * d2p;
      for (index_t j = 0; j < w; j += L) {
        const index_t real = std::clamp<index_t>(nb - s0 - j, 0, L);
        const bf16* row[L];
        for (int i = 0; i < L; ++i) row[i] = i < real ? k(s0 + j + i) : nullptr;
        const float* src[L];
        for (index_t c0 = 0; c0 < d2_full; c0 += L) {
          for (int i = 0; i < L; ++i) src[i] = i < real ? reinterpret_cast<const float*>(row[i] + 2 * c0) : zero_row;
          V::transpose(src, reinterpret_cast<float*>(slice + c0 * w + j), w);
        }
        for (index_t c = d2_full; c < d2p; ++c)
          for (int i = 0; i < L; ++i) {
            std::uint32_t x = 0;
            if (i < real) {
              const std::uint32_t lo = 2 * c < d ? row[i][2 * c].bits : 0u, hi = 2 * c + 1 < d ? row[i][2 * c + 1].bits : 0u;
              x = lo | hi << 16;
            }
            slice[c * w + j + i] = x;
          }
      }
    }
  }

  /// vp rows i < padded_keys(nb) / 2: for each column c < dvp, element c of keys 2i and 2i + 1 of row source
  /// `v` (bf16, dv elements each) as one 32-bit entry, zero past nb and past dv. Returns whether any element
  /// read is infinite or NaN.
  template <class Rows>
  static bool pack_v(const Rows& v, index_t dv, index_t nb, index_t dvp, std::uint32_t* vp) noexcept {
    bool nonfinite = false;
    const index_t pairs = padded_keys(nb) / 2;
    for (index_t i = 0; i < pairs; ++i) {
      const index_t j = 2 * i;
      std::uint32_t* dst = vp + i * dvp;
      if (j >= nb) {
        std::fill(dst, dst + dvp, 0u);
        continue;
      }
      const auto* a = reinterpret_cast<const std::uint16_t*>(v(j));
      const auto* b = j + 1 < nb ? reinterpret_cast<const std::uint16_t*>(v(j + 1)) : nullptr;
      nonfinite |= amx::interleave(a, b, dv, dvp, dst);
    }
    return nonfinite;
  }

  /// One tile product of (mt, nt) ∈ {1, 2}² tiles (amx_bf16::product).
  static void product(int mt, int nt, const void* a, index_t lda, index_t a_step, const void* b, index_t ldb,
                      index_t b_step, index_t b_col, index_t steps, float* c, index_t ldc, bool acc) noexcept {
    if (mt == 2) {
      if (nt == 2) {
        amx::product<2, 2>(a, lda, a_step, b, ldb, b_step, b_col, steps, c, ldc, acc);
      } else {
        amx::product<2, 1>(a, lda, a_step, b, ldb, b_step, b_col, steps, c, ldc, acc);
      }
    } else if (nt == 2) {
      amx::product<1, 2>(a, lda, a_step, b, ldb, b_step, b_col, steps, c, ldc, acc);
    } else {
      amx::product<1, 1>(a, lda, a_step, b, ldb, b_step, b_col, steps, c, ldc, acc);
    }
  }

  /// Tile products scores() runs for `rows` rows and nbp keys (the steps between() is called): AMX tiles
  /// (amx), or register tiles of dot::max_rows rows per slice of `cols` keys.
  static index_t score_steps(index_t rows, index_t nbp, bool amx) noexcept {
    if (!amx) return ((rows + dot::max_rows - 1) / dot::max_rows) * ((nbp + cols - 1) / cols);
    return ((padded_rows(rows) + 31) / 32) * ((nbp + 31) / 32);
  }

  /// S[rows][nbp] (row stride lds; on AMX padded_rows(rows) rows) = Q16 · Kp: the unscaled scores; Q16 rows
  /// of padded_d(d) bf16 (padded_rows(rows) of them), Kp as pack_k left it; on AMX tiles (amx) or VDPBF16PS
  /// register tiles. between() after each tile product (a prefetch_rows step, Note [prefetch next block]).
  template <class Between>
  static void scores(const std::uint16_t* q16, index_t rows, index_t d, const std::uint32_t* kp, index_t nbp,
                     float* s, index_t lds, Between&& between, bool amx) noexcept {
    const index_t dp = padded_d(d), rows_p = padded_rows(rows);
    for (index_t s0 = 0; s0 < nbp; s0 += cols) {
      const index_t w = std::min(cols, nbp - s0);
      const std::uint32_t* slice = kp + s0 * (dp / 2);
      if (!amx) {
        const int nt = static_cast<int>(w / L);
        for (index_t r0 = 0; r0 < rows; r0 += dot::max_rows) {
          const int mr = static_cast<int>(std::min<index_t>(dot::max_rows, rows - r0));
          dot::product(mr, nt, q16 + r0 * dp, dp, slice, w, dp / 2, s + r0 * lds + s0, lds, false);
          between();
        }
        continue;
      }
      for (index_t r0 = 0; r0 < rows_p; r0 += 32) {
        const int mt = r0 + 32 <= rows_p ? 2 : 1;
        for (index_t c0 = 0; c0 < w; c0 += 32) {
          const int nt = c0 + 32 <= w ? 2 : 1;
          product(mt, nt, q16 + r0 * dp, dp * 2, 64, slice + c0, w * 4, 16 * w * 4, 64, dp / 32,
                  s + r0 * lds + s0 + c0, lds * 4, false);
          between();
        }
      }
    }
  }

  /// Decode's scores on AVX512-BF16 (Note [bf16 decode]): S[r][u] = scale · Q16[r] · K[u] for r < rows and the
  /// k_direct_keys (8) bf16 K rows kr[u] of d elements; Q16 rows of padded_d(d) (row stride ldq), s row stride
  /// lds.
  static void decode_scores(index_t rows, const std::uint16_t* q16, index_t ldq, const bf16* const* kr, index_t d,
                            float scale, float* s, index_t lds) noexcept {
    const auto* k = reinterpret_cast<const std::uint16_t* const*>(kr);
    for (index_t r = 0; r < rows; r += 4) {
      const int mr = static_cast<int>(std::min<index_t>(4, rows - r));
      dot::decode_scores(mr, q16 + r * ldq, ldq, k, d, scale, s + r * lds, lds);
      dot::decode_scores(mr, q16 + r * ldq, ldq, k + 4, d, scale, s + r * lds + 4, lds);
    }
  }

  /// Decode's P·V on AVX512-BF16 (Note [bf16 decode]): O[r] += Σ_{x<=j<x+n} P16[r][j] · V[j] for r < rows
  /// (n <= 32; P16 rows of ldp bf16 weights, the unit's from column 0, the one past an odd n zero; V row j
  /// at v(j), dv elements; O rows padded to dvp).
  template <class Rows>
  static void decode_pv(const Rows& v, index_t dv, index_t x, index_t n, const std::uint16_t* p16, index_t rows,
                        index_t ldp, index_t dvp, float* o) noexcept {
    const std::uint16_t* vr[32];
    for (index_t j = 0; j < n; ++j) vr[j] = reinterpret_cast<const std::uint16_t*>(v(x + j));
    for (index_t r = 0; r < rows; r += 4) {
      const int mr = static_cast<int>(std::min<index_t>(4, rows - r));
      dot::decode_pv(mr, p16 + r * ldp, ldp, vr, n, dv, o + r * dvp, dvp);
    }
  }

  /// p16 row = the nbp weights of s rounded to bf16, then zeros to padded_keys(nbp).
  static void round_row(const float* s, index_t nbp, std::uint16_t* p16) noexcept { dot::round_row(s, nbp, p16); }

  /// O[rows][dvp] (row stride dvp) += P16 · Vp over nk keys (a multiple of 32): P16 rows of ldp bf16, Vp as
  /// pack_v left it; on AMX tiles (amx) or VDPBF16PS register tiles. On AMX a last group of fewer than 16
  /// rows goes through `tail` (16 × dvp floats), so that no tile reads or writes O past its rows.
  static void accumulate_pv(const std::uint16_t* p16, index_t rows, index_t ldp, const std::uint32_t* vp, index_t nk,
                            index_t dvp, float* o, float* tail, bool amx) noexcept {
    if (!amx) {
      for (index_t r0 = 0; r0 < rows; r0 += dot::max_rows) {
        const int mr = static_cast<int>(std::min<index_t>(dot::max_rows, rows - r0));
        for (index_t c0 = 0; c0 < dvp; c0 += dot::max_vectors * L) {
          const int nt = static_cast<int>(std::min<index_t>(dot::max_vectors, (dvp - c0) / L));
          dot::product(mr, nt, p16 + r0 * ldp, ldp, vp + c0, dvp, nk / 2, o + r0 * dvp + c0, dvp, true);
        }
      }
      return;
    }
    const index_t steps = nk / 32, full = rows - rows % 16;
    const auto columns = [&](const std::uint16_t* a, int mt, float* c) noexcept {
      for (index_t c0 = 0; c0 < dvp; c0 += 32) {
        const int nt = c0 + 32 <= dvp ? 2 : 1;
        product(mt, nt, a, ldp * 2, 64, vp + c0, dvp * 4, 16 * dvp * 4, 64, steps, c + c0, dvp * 4, true);
      }
    };
    for (index_t r0 = 0; r0 < full; r0 += 32) columns(p16 + r0 * ldp, r0 + 32 <= full ? 2 : 1, o + r0 * dvp);
    if (full < rows) {
      const index_t n = rows - full;
      std::copy(o + full * dvp, o + rows * dvp, tail);
      std::fill(tail + n * dvp, tail + 16 * dvp, 0.0f);
      columns(p16 + full * ldp, 1, tail);
      std::copy(tail, tail + n * dvp, o + full * dvp);
    }
  }

  // --- The backward's products on VDPBF16PS (Note [bf16 backward] in backward.hpp) ---

  /// C[rows][width] (row stride ldc) (= or += per `accumulate`) A·B on VDPBF16PS register tiles: A rows of
  /// bf16 (row stride lda; step k reads elements 2k, 2k + 1), B `steps` rows of `width` 32-bit pairs (row
  /// stride ldb); width a multiple of 16. Columns outer, so that a 64-column slice of B serves every row.
  static void register_product(const std::uint16_t* a, index_t lda, index_t rows, const std::uint32_t* b,
                               index_t ldb, index_t width, index_t steps, float* c, index_t ldc,
                               bool accumulate) noexcept {
    for (index_t c0 = 0; c0 < width; c0 += dot::max_vectors * L) {
      const int nt = static_cast<int>(std::min<index_t>(dot::max_vectors, (width - c0) / L));
      for (index_t r0 = 0; r0 < rows; r0 += dot::max_rows) {
        const int mr = static_cast<int>(std::min<index_t>(dot::max_rows, rows - r0));
        dot::product(mr, nt, a + r0 * lda, lda, b + c0, ldb, steps, c + r0 * ldc + c0, ldc, accumulate);
      }
    }
  }

  /// dst row i (stride ldd, np entries, np a multiple of 16) for i < ceil(n / 2): element c < m of rows 2i
  /// and 2i + 1 (bf16 rows at row(x)) as one 32-bit pair, zero past m and for an odd n's missing partner.
  template <class Rows>
  static void pair_rows(const Rows& row, index_t n, index_t m, index_t np, std::uint32_t* dst, index_t ldd) noexcept {
    for (index_t i = 0; 2 * i < n; ++i) {
      const auto* a = reinterpret_cast<const std::uint16_t*>(row(2 * i));
      const auto* b = 2 * i + 1 < n ? reinterpret_cast<const std::uint16_t*>(row(2 * i + 1)) : nullptr;
      amx::interleave(a, b, m, np, dst + i * ldd);
    }
  }
};
#endif  // GQA_HAS_AVX512 && GQA_X86_CPUID

}  // namespace detail::core
GQA_END_NAMESPACE

#endif  // GQA_DETAIL_CORE_BF16_TILES_HPP
