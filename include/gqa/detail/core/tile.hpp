// gqa/detail/core/tile.hpp: THE register tile, C[MR rows][NR vectors] (= or +=) Σ_k A(r, k) · B(k, vector n),
// its table of (rows, vectors) instantiations for tails, and band_product (rows over their own k ranges).
// Every matrix product of the core is this tile:
// Q·Kᵀ and P·V on packed operands, P·V on V read in place (run_partial for a d_v tail). Invariant: a tile
// reads and writes only inside the extents it is given; tails take a smaller instantiation or masked
// loads, never an over-read.
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_DETAIL_CORE_TILE_HPP
#define GQA_DETAIL_CORE_TILE_HPP

#include <algorithm>
#include <array>
#include <utility>

#include "../../isa/vec.hpp"
#include "common.hpp"

GQA_BEGIN_NAMESPACE
namespace detail::core {

/// How the tile reads A(r, k): from rows (a[r·lda + k]: Q·Kᵀ, P·V) or transposed (a[k·lda + r]: products
/// with a transposed left operand, such as dSᵀ·Q in a backward pass). A compile-time choice: the inner
/// loop is the same broadcast either way.
enum class a_order { row_major, transposed };
/// Whether the tile overwrites C (C = A·B, e.g. scores) or accumulates into it (C += A·B, e.g. P·V).
enum class update { assign, accumulate };

/// C[r][n·L .. n·L+L) (=|+=) Σ_{k<kn} A(r, k) · B[k][n·L .. n·L+L) for r < MR, n < NR.
/// b: rows of B (stride ldb), vector n of row k at b + k·ldb + n·L; c: rows of C (stride ldc).
/// The k loop loads NR vectors of B once and broadcasts one A element per row into MR·NR independent FMA
/// chains (MR·NR + NR + 1 registers, see Note [tile shape]); each C element is one chain over k in order.
template <class Isa, int MR, int NR, a_order AO = a_order::row_major, update U = update::assign>
struct tile {
  using V = isa::vec<Isa>;
  using reg = typename V::reg;
  static constexpr int L = V::lanes;

  /// Every one of the NR vectors of B and C exists.
  static void run(const float* GQA_RESTRICT a, index_t lda, const float* GQA_RESTRICT b, index_t ldb, index_t kn,
                  float* GQA_RESTRICT c, index_t ldc) noexcept {
    body<false>(a, lda, strided_b<float>{b, ldb}, kn, c, ldc, NR, L);
  }
  /// run() with B's rows found by `b` (strided_b or listed_b: b.row(k) is row k of B, of floats or of a
  /// 16-bit type that the loads widen).
  template <class B>
  static void run_rows(const float* GQA_RESTRICT a, index_t lda, const B& b, index_t kn, float* GQA_RESTRICT c,
                       index_t ldc) noexcept {
    body<false>(a, lda, b, kn, c, ldc, NR, L);
  }

  /// Only the first `width` columns of B exist (0 < width <= NR·L): the vector holding the last of them is
  /// read with a masked load and the vectors past it are zero. C is read and written for the vectors
  /// holding those columns, whole (C rows must be padded to a multiple of L, as the core's accumulators are).
  static void run_partial(const float* GQA_RESTRICT a, index_t lda, const float* GQA_RESTRICT b, index_t ldb,
                          index_t kn, float* GQA_RESTRICT c, index_t ldc, index_t width) noexcept {
    run_rows_partial(a, lda, strided_b<float>{b, ldb}, kn, c, ldc, width);
  }
  /// run_partial() with B's rows found by `b`, as run_rows().
  template <class B>
  static void run_rows_partial(const float* GQA_RESTRICT a, index_t lda, const B& b, index_t kn,
                               float* GQA_RESTRICT c, index_t ldc, index_t width) noexcept {
    const int nvec = static_cast<int>((width + L - 1) / L);
    body<true>(a, lda, b, kn, c, ldc, nvec, static_cast<int>(width - (nvec - 1) * L));
  }

 private:
  static GQA_FORCEINLINE float a_at(const float* a, index_t lda, int r, index_t k) noexcept {
    if constexpr (AO == a_order::row_major) {
      return a[r * lda + k];
    } else {
      return a[k * lda + r];
    }
  }

  /// nvec: vectors of B and C with data; last: lanes of B's last such vector (both compile-time NR, L
  /// when !Partial).
  template <bool Partial, class B>
  static GQA_FORCEINLINE void body(const float* GQA_RESTRICT a, index_t lda, const B& b, index_t kn,
                                   float* GQA_RESTRICT c, index_t ldc, int nvec, int last) noexcept {
    reg acc[MR][NR];
    GQA_UNROLL for (int r = 0; r < MR; ++r)
      GQA_UNROLL for (int n = 0; n < NR; ++n)
        acc[r][n] = U == update::accumulate && (!Partial || n < nvec) ? V::load(c + r * ldc + n * L) : V::zero();
    for (index_t k = 0; k < kn; ++k) {
      const auto* GQA_RESTRICT brow = b.row(k);
      reg vb[NR];
      GQA_UNROLL for (int n = 0; n < NR; ++n) {
        if constexpr (Partial) {
          vb[n] = n >= nvec ? V::zero()
                  : (n == nvec - 1 && last != L) ? V::load_partial(brow + n * L, last)
                                                 : V::load(brow + n * L);
        } else {
          vb[n] = V::load(brow + n * L);
        }
      }
      GQA_UNROLL for (int r = 0; r < MR; ++r) {
        const auto va = V::set1(a_at(a, lda, r, k));
        GQA_UNROLL for (int n = 0; n < NR; ++n) acc[r][n] = V::mul_add(va, vb[n], acc[r][n]);
      }
    }
    GQA_UNROLL for (int r = 0; r < MR; ++r)
      GQA_UNROLL for (int n = 0; n < NR; ++n)
        if (!Partial || n < nvec) V::store(c + r * ldc + n * L, acc[r][n]);
  }
};

/// tile<Isa, mr, nr, AO, U>::run for mr in [1, MR], nr in [1, NR]: row and column tails pick a smaller
/// tile at run time.
template <class Isa, int MR, int NR, a_order AO = a_order::row_major, update U = update::assign>
struct tile_table {
  static constexpr int mr = MR, nr = NR, lanes = isa::vec<Isa>::lanes;
  static constexpr a_order order = AO;
  using fn = decltype(&tile<Isa, 1, 1, AO, U>::run);
  template <int... I>
  static constexpr std::array<fn, sizeof...(I)> make(std::integer_sequence<int, I...>) {
    return {&tile<Isa, I / NR + 1, I % NR + 1, AO, U>::run...};
  }
  static constexpr std::array<fn, MR * NR> table = make(std::make_integer_sequence<int, MR * NR>{});
  static fn get(int mr, int nr) noexcept { return table[static_cast<std::size_t>((mr - 1) * NR + (nr - 1))]; }
};

/// C[r] += Σ_{k ∈ [lo(r), hi(r))} A(r, k) · B[k] for the rows r < rows (lo and hi non-decreasing in r; a row
/// with lo >= hi takes none), over `width` columns of B (stride ldb) and C (stride ldc), a multiple of the
/// vector width, by the tiles of Table (a tile_table that accumulates): each tile of Table::mr rows runs as
/// a band (band(), Note [causal staircase]), so no A(r, k) outside a row's range is read and no B row
/// enters a row that does not take it (the forward's P·V of a cut block; the backward's products of one).
template <class Table, class Lo, class Hi>
void band_product(const float* a, index_t lda, index_t rows, const float* b, index_t ldb, index_t width, const Lo& lo,
                  const Hi& hi, float* c, index_t ldc) noexcept {
  constexpr index_t cols = static_cast<index_t>(Table::nr) * Table::lanes;
  for (index_t c0 = 0; c0 < width; c0 += cols) {
    const int nr = static_cast<int>(std::min(cols, width - c0) / Table::lanes);
    for (index_t r0 = 0; r0 < rows; r0 += Table::mr) {
      band(std::min<index_t>(Table::mr, rows - r0), [&](index_t r) noexcept { return lo(r0 + r); },
           [&](index_t r) noexcept { return hi(r0 + r); },
           [&](index_t f, index_t e, index_t x, index_t y) noexcept {
             const float* ar = Table::order == a_order::transposed ? a + x * lda + r0 + f : a + (r0 + f) * lda + x;
             Table::get(static_cast<int>(e - f), nr)(ar, lda, b + x * ldb + c0, ldb, y - x, c + (r0 + f) * ldc + c0, ldc);
           });
    }
  }
}

}  // namespace detail::core
GQA_END_NAMESPACE

#endif  // GQA_DETAIL_CORE_TILE_HPP
