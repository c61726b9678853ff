// gqa/detail/core/direct.hpp: the direct path for few rows (decode): scores as dot products read straight
// from K, and P·V by the register tile reading V rows in place. Invariant: K and V are read only inside
// their nb rows of d (d_v) floats; register blocks are sized by the row count, never padded with rows.
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_DETAIL_CORE_DIRECT_HPP
#define GQA_DETAIL_CORE_DIRECT_HPP

#include <algorithm>

#include "../../isa/vec.hpp"
#include "common.hpp"
#include "dot.hpp"
#include "layout.hpp"
#include "tile.hpp"

GQA_BEGIN_NAMESPACE
namespace detail::core {

// Note [direct path]
// With few rows (decode: one position, the group's heads), packing K/V costs more than the math it
// feeds. The direct path reads K and V rows where they are: scores are dot products over d (vector
// partial sums, then one horizontal sum per (row, key)), and P·V streams V rows with tail-masked loads.
// The cut-off, k_direct_rows = 32 rows per KV head, is measured: decode of 32 query heads over 16384
// keys (d 128, AVX-512, one thread) with 1, 2, 4 KV heads ran at 197, 110, 80 GFLOP/s on the direct
// path against 149, 79, 80 on the packed one (packing transposes every K row with scalar stores).
inline constexpr index_t k_direct_rows = 32;
/// Keys per step of direct::scores; score rows must have room for a whole step past the last key.
inline constexpr index_t k_direct_keys = 8;

template <class Isa>
struct direct {
  using V = isa::vec<Isa>;
  using shape = typename V::tile_shape;
  using D = dot<Isa>;
  static constexpr int L = V::lanes;

  /// S[r][j] = Qp[r] · K[j] for j < nb (Qp row stride d; key j at k(j), Note [key runs]), k_direct_keys keys per
  /// step. Rows go through the widest register block that fits (tile_shape::direct_qk_rows rows ×
  /// direct_qk_keys keys, so K loads are shared by the rows and Q loads by the keys), then pairs × 4 keys,
  /// then single rows × 8 keys: every block keeps >= 8 independent FMA chains. s rows (stride lds) need
  /// room up to round_up(nb, k_direct_keys).
  template <class Rows>
  static void scores(const Rows& k, index_t d, index_t nb, const float* qp, index_t rows, float* s,
                     index_t lds) noexcept {
    const typename D::extent de(d);
    for (index_t j = 0; j < nb; j += k_direct_keys) {
      // Keys past nb repeat the last valid row (their scores land in s's padding and are masked).
      const typename Rows::element* kr[k_direct_keys];
      for (index_t u = 0; u < k_direct_keys; ++u) kr[u] = k(std::min(j + u, nb - 1));
      score_step(kr, de, qp, rows, s + j, lds);
    }
  }

  /// One step of scores(): S[r][u] = Qp[r] · K[u] for r < rows and the k_direct_keys keys at kr[u] (Qp
  /// row stride d = de's; s row stride lds).
  template <class K>
  static GQA_FORCEINLINE void score_step(const K* const* rows_at, typename D::extent de, const float* qp,
                                         index_t rows, float* s, index_t lds) noexcept {
    constexpr int RB = shape::direct_qk_rows, KB = shape::direct_qk_keys;
    static_assert(k_direct_keys == 8, "the blocks below are written for 8 keys per step");
    // Note [row pointers in registers]
    // The eight K row addresses are computed by the caller as eight similar expressions, which g++ 12
    // turns into vector arithmetic: the addresses then live in a vector register through the blocks'
    // loops, and (AVX-512, the 4 × 4 block of 16 accumulators) one accumulator was spilled to the stack
    // in the innermost loop, an FMA reading and a store writing it on every iteration. Each address
    // goes through GQA_IN_GPR here, so it is taken out of the vector once, before the loops, and no
    // accumulator is spilled (checked in the disassembly of gqa_bench's decode walks, fp32 and int8).
    // Measured (Intel Xeon, 2026-12-04, one thread, the two versions interleaved call by call, D1's
    // heads): 256 keys fp32 1.025x, int8 1.029x; 16384 keys int8 1.022x, fp32 1.000x.
    const K* kr[k_direct_keys];
    GQA_UNROLL for (int u = 0; u < k_direct_keys; ++u) {
      kr[u] = rows_at[u];
      GQA_IN_GPR(kr[u]);
    }
    const index_t d = de.full + de.tail;
    index_t r = 0;
    for (; r + RB <= rows; r += RB)
      GQA_UNROLL for (int u = 0; u < k_direct_keys; u += KB)
        D::template scores<RB, KB>(qp + r * d, d, kr + u, de, s + r * lds + u, lds);
    if constexpr (RB > 2) {
      for (; r + 2 <= rows; r += 2) {
        D::template scores<2, 4>(qp + r * d, d, kr, de, s + r * lds, lds);
        D::template scores<2, 4>(qp + r * d, d, kr + 4, de, s + r * lds + 4, lds);
      }
    }
    for (; r < rows; ++r) D::template scores<1, 8>(qp + r * d, d, kr, de, s + r * lds, lds);
  }

  /// S[r][j] *= rows.scale(j) for r < nrows, j in [j0, j1) (row stride lds): an int8 block's scores times
  /// their keys' K scales, or its probabilities times their V scales (Note [int8 K/V]).
  /// The scales are gathered once per 64 keys (they lie a key's stride apart), then each row is multiplied
  /// a vector at a time: the same products as one at a time (the scalar loop was 11% of int8 decode).
  template <scaled_rows Rows>
  static void scale_columns(const Rows& rows, index_t j0, index_t j1, float* s, index_t nrows, index_t lds) noexcept {
    constexpr index_t C = 64;
    alignas(64) float col[C];
    for (index_t c0 = j0; c0 < j1; c0 += C) {
      const index_t n = std::min(C, j1 - c0);
      for (index_t j = 0; j < n; ++j) col[j] = rows.scale(c0 + j);
      for (index_t r = 0; r < nrows; ++r) {
        float* sr = s + r * lds + c0;
        index_t j = 0;
        for (; j + L <= n; j += L) V::store(sr + j, V::mul(V::load(sr + j), V::load(col + j)));
        if (j < n) {
          const int t = static_cast<int>(n - j);
          V::store_partial(sr + j, V::mul(V::load_partial(sr + j, t), V::load_partial(col + j, t)), t);
        }
      }
    }
  }

  /// O[r] += Σ_{lo<=j<hi} P[r][j] · V[j] for r < rows, V row j at v(j) read in place (dv floats; O rows
  /// padded to dvp; Note [key runs]).
  template <class Rows>
  static void accumulate_pv(const Rows& v, index_t dv, index_t lo, index_t hi, const float* p, index_t rows,
                            index_t ldp, index_t dvp, float* o) noexcept {
    pv_keys(v, dv, lo, hi, p, rows, ldp, dvp, o);
  }

  /// accumulate_pv where row r sees only keys [lo(r), hi(r)) (both non-decreasing in r), as a band (Note
  /// [causal staircase]): V rows a row does not see never enter its products.
  template <class Rows, class Lo, class Hi>
  static void accumulate_pv_cut(const Rows& v, index_t dv, const Lo& lo, const Hi& hi, const float* p, index_t rows,
                                index_t ldp, index_t dvp, float* o) noexcept {
    band(rows, lo, hi, [&](index_t r0, index_t r1, index_t a, index_t b) noexcept {
      pv_keys(v, dv, a, b, p + r0 * ldp, r1 - r0, ldp, dvp, o + r0 * dvp);
    });
  }

 private:
  /// O[r] += Σ_{lo<=j<hi} P[r][j] · V[j] for r < rows, V row j at v(j) (dv floats; O rows padded to dvp).
  /// Rows go in blocks of 4, then the remainder as one block of 3, 2 or 1 rows; fewer rows get more column
  /// vectors so every block keeps about tile_shape::direct_acc accumulators (no FMA is spent on padding rows).
  template <class Rows>
  static void pv_keys(const Rows& v, index_t dv, index_t lo, index_t hi, const float* p, index_t rows, index_t ldp,
                      index_t dvp, float* o) noexcept {
    constexpr int A = shape::direct_acc;
    const index_t nb = hi - lo;
    p += lo;
    index_t r = 0;
    for (; r + 4 <= rows; r += 4) pv_rows<4, pow2_floor(A / 4)>(v, lo, dv, nb, p + r * ldp, ldp, o + r * dvp, dvp);
    switch (rows - r) {
      case 3: pv_rows<3, pow2_floor(A / 3)>(v, lo, dv, nb, p + r * ldp, ldp, o + r * dvp, dvp); break;
      case 2: pv_rows<2, pow2_floor(A / 2)>(v, lo, dv, nb, p + r * ldp, ldp, o + r * dvp, dvp); break;
      case 1: pv_rows<1, pow2_floor(A / 2)>(v, lo, dv, nb, p + r * ldp, ldp, o + r * dvp, dvp); break;
      default: break;
    }
  }

  // Note [one tile per block shape]
  // On a vector ISA every slab goes through run_rows_partial, whole slabs included (all their vectors
  // present: plain loads behind branches that the predictor learns), so each block shape is one function
  // instead of two (run_rows for whole slabs, run_rows_partial for a d_v tail). Measured (Intel Xeon,
  // 2026-12-03, each block shape of AVX-512 and AVX2, V in L1 and in L2, the two alternating): 0.98-1.02
  // of run_rows' time per key. Why: a translation unit that calls the dispatched forward compiles the
  // direct path for three cores, and the second function of each shape was 2% of its compile work (0.75 G
  // of 35.6 G instructions, g++ 12 -O2). Scalar keeps both (there they differ by up to 1.3x either way).

  /// Columns [0, dv) of DR rows in slabs of DN vectors over keys lo, lo + 1, ... of v; the last slab of a
  /// d_v tail reads V with masked loads (Note [one tile per block shape]).
  template <int DR, int DN, class Rows>
  static void pv_rows(const Rows& v, index_t lo, index_t dv, index_t nb, const float* p, index_t ldp, float* o,
                      index_t dvp) noexcept {
    using T = tile<Isa, DR, DN, a_order::row_major, update::accumulate>;
    for (index_t c0 = 0; c0 < dv; c0 += DN * L) {
      const index_t width = std::min<index_t>(DN * L, dv - c0);
      if constexpr (L == 1) {
        if (width == DN * L) {
          T::run_rows(p, ldp, v.b_at(lo, c0), nb, o + c0, dvp);
          continue;
        }
      }
      T::run_rows_partial(p, ldp, v.b_at(lo, c0), nb, o + c0, dvp, width);
    }
  }
};

}  // namespace detail::core
GQA_END_NAMESPACE

#endif  // GQA_DETAIL_CORE_DIRECT_HPP
