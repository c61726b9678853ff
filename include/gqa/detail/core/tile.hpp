// gqa/detail/core/tile.hpp: THE register tile, C[MR rows][NR vectors] (= or +=) Σ_k A(r, k) · B(k, vector n),
// its table for tails (one instantiation per width, any rows), and band_product (rows over their own k
// ranges).
// Every matrix product of the core is this tile:
// Q·Kᵀ and P·V on packed operands, P·V on V read in place (run_partial for a d_v tail). Invariant: a tile
// reads and writes only inside the extents it is given; a column tail takes a narrower instantiation or
// masked loads, a row tail re-reads its last row (Note [row tails]), never an over-read.
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
    body<false>(a, lda, strided_b<float>{b, ldb}, kn, c, ldc, NR, L, MR, U == update::accumulate);
  }
  /// run() for C's first `rows` rows only (1 <= rows <= MR), the row tails' tile (tile_table): the rows past
  /// them are computed again from the last of them and never stored, so nothing outside those rows of A
  /// and C is read or written, and each stored element is the same chain of FMAs as in run(). C = A·B or,
  /// if `accumulate`, C += A·B, whatever U is (Note [one table for = and +=]).
  static void run_upto(const float* GQA_RESTRICT a, index_t lda, const float* GQA_RESTRICT b, index_t ldb, index_t kn,
                       float* GQA_RESTRICT c, index_t ldc, int rows, bool accumulate) noexcept {
    body<false>(a, lda, strided_b<float>{b, ldb}, kn, c, ldc, NR, L, rows, accumulate);
  }
  /// run() with B's rows found by `b` (strided_b or listed_b: b.row(k) is row k of B, of floats or of a
  /// 16-bit type that the loads widen).
  template <class B>
  static void run_rows(const float* GQA_RESTRICT a, index_t lda, const B& b, index_t kn, float* GQA_RESTRICT c,
                       index_t ldc) noexcept {
    body<false>(a, lda, b, kn, c, ldc, NR, L, MR, U == update::accumulate);
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
    body<true>(a, lda, b, kn, c, ldc, nvec, static_cast<int>(width - (nvec - 1) * L), MR, U == update::accumulate);
  }

 private:
  static GQA_FORCEINLINE float a_at(const float* a, index_t lda, index_t r, index_t k) noexcept {
    if constexpr (AO == a_order::row_major) {
      return a[r * lda + k];
    } else {
      return a[k * lda + r];
    }
  }

  /// nvec: vectors of B and C with data; last: lanes of B's last such vector (both compile-time NR, L
  /// when !Partial); rows: rows of A and C with data (compile-time MR but in run_upto), tile row r reads
  /// row min(r, rows - 1) and is stored only if r < rows; accumulate: C += A·B, else C = A·B (compile-time
  /// U but in run_upto).
  template <bool Partial, class B>
  static GQA_FORCEINLINE void body(const float* GQA_RESTRICT a, index_t lda, const B& b, index_t kn,
                                   float* GQA_RESTRICT c, index_t ldc, int nvec, int last, int rows,
                                   bool accumulate) noexcept {
    index_t at[MR];  // the row of A and C that tile row r reads
    GQA_UNROLL for (int r = 0; r < MR; ++r) at[r] = r < rows ? r : rows - 1;
    reg acc[MR][NR];
    GQA_UNROLL for (int r = 0; r < MR; ++r)
      GQA_UNROLL for (int n = 0; n < NR; ++n)
        acc[r][n] = accumulate && (!Partial || n < nvec) ? V::load(c + at[r] * ldc + n * L) : V::zero();
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
        const auto va = V::set1(a_at(a, lda, at[r], k));
        GQA_UNROLL for (int n = 0; n < NR; ++n) acc[r][n] = V::mul_add(va, vb[n], acc[r][n]);
      }
    }
    GQA_UNROLL for (int r = 0; r < MR; ++r)
      if (r < rows)
        GQA_UNROLL for (int n = 0; n < NR; ++n)
          if (!Partial || n < nvec) V::store(c + r * ldc + n * L, acc[r][n]);
  }
};

// Note [row tails]
// A tile_table holds one function per width (nr = 1 .. NR vectors), each the MR-row tile with the row
// count a run-time argument (run_upto): a row tail of mr < MR rows runs all MR rows, tile row r reading A's
// and C's row min(r, mr − 1), and stores only its mr rows. Each stored element is the same chain of FMAs,
// in the same order, as in an mr-row instantiation, so the bits are those of the full table it replaces,
// and nothing outside the given rows is read or written. The cost is the discarded rows' FMAs, only in
// row tails: the last rows of a block (fewer than MR per column block) and the short steps of a band
// (Note [causal staircase]), which span a key or two.
// Why: the full table (MR × NR instantiations, 24 on AVX-512) was 39% of the code of each ISA's core in
// a translation unit, and a dispatching TU compiles three cores (Note [per-target kernels]).
// Measured (g++ 12 -O2, a TU with one dispatched gqa::forward): the AVX-512 copy's tile code 24.5 -> 15.4 KB,
// the TU's text 210 -> 196 KB; P1, P2, P3 forward and P1, P3 backward, AVX-512 and AVX2, one thread, the two
// builds alternating (Intel Xeon, 2026-12-02): medians within 0.97-1.07 of before, the same bits.

// Note [one table for = and +=]
// Q·Kᵀ overwrites its tiles (C = A·B) and P·V accumulates (C += A·B), so the forward needs both tables of
// a shape, and the backward both of each of its shapes. Their entries are one function per width, the
// update a run-time argument (a branch before the k loop, once per tile): tile_table<…, assign> and
// tile_table<…, accumulate> point to the same functions. Why: a translation unit that calls the dispatched
// forward compiles both tables for three cores (8 functions on AVX-512 and scalar, 4 on AVX2), and the
// second table was 3% of its compile work (1.07 G of 34.8 G instructions, g++ 12 -O2). Measured: P1, P3
// forward and backward, AVX-512 and AVX2, one thread, the two builds alternating (Intel Xeon, 2026-12-03):
// medians 0.99-1.02 of before, the same bits.

/// The tile of mr rows (1 <= mr <= MR) and nr vectors (1 <= nr <= NR) at run time, get(mr, nr)(a, lda, b, ldb,
/// kn, c, ldc): tile<Isa, MR, nr, AO>::run_upto with rows = mr, accumulating if U is update::accumulate (Note
/// [one table for = and +=]). A column tail takes the instantiation of its width; a row tail (the last rows
/// of a block, a band's steps) runs the MR-row tile on its rows (Note [row tails]).
template <class Isa, int MR, int NR, a_order AO = a_order::row_major, update U = update::assign>
struct tile_table {
  static constexpr int mr = MR, nr = NR, lanes = isa::vec<Isa>::lanes;
  static constexpr a_order order = AO;
  using fn = decltype(&tile<Isa, MR, 1, AO>::run_upto);
  template <int... I>
  static constexpr std::array<fn, sizeof...(I)> make(std::integer_sequence<int, I...>) {
    return {&tile<Isa, MR, I + 1, AO>::run_upto...};
  }
  static constexpr std::array<fn, NR> table = make(std::make_integer_sequence<int, NR>{});
  /// table's entry for nr vectors, bound to mr rows.
  struct bound {
    fn run;
    int rows;
    void operator()(const float* a, index_t lda, const float* b, index_t ldb, index_t kn, float* c,
                    index_t ldc) const noexcept {
      run(a, lda, b, ldb, kn, c, ldc, rows, U == update::accumulate);
    }
  };
  static bound get(int mr, int nr) noexcept { return {table[static_cast<std::size_t>(nr - 1)], mr}; }
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
