// gqa/detail/core/microkernels.hpp: register-blocked Q·Kᵀ and P·V tiles on vec<Isa>, and their
// dispatch by (rows, vectors) for tails. Invariant: no tile reads or writes outside the extents it is
// given; all tails are handled by choosing a smaller instantiation, never by over-reading.
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_DETAIL_CORE_MICROKERNELS_HPP
#define GQA_DETAIL_CORE_MICROKERNELS_HPP

#include <array>
#include <utility>

#include "../../isa/vec.hpp"
#include "tile_shape.hpp"

GQA_BEGIN_NAMESPACE
namespace detail::core {

/// S[r][n·L .. n·L+L) = Σ_c Q[r][c] · Kp[c][n·L .. n·L+L) for r < MR, n < NR.
/// q: MR rows of d floats (row stride ldq); kp: packed Kᵀ slice [d][ldk] (ldk >= NR·L); s: row stride lds.
template <class Isa, int MR, int NR>
struct qk_tile {
  static void run(const float* GQA_RESTRICT q, index_t ldq, const float* GQA_RESTRICT kp, index_t ldk, index_t d,
                  float* GQA_RESTRICT s, index_t lds) noexcept {
    using V = isa::vec<Isa>;
    constexpr int L = V::lanes;
    typename V::reg acc[MR][NR];
    for (int r = 0; r < MR; ++r)
      for (int n = 0; n < NR; ++n) acc[r][n] = V::zero();
    for (index_t c = 0; c < d; ++c) {
      typename V::reg vk[NR];
      for (int n = 0; n < NR; ++n) vk[n] = V::load(kp + c * ldk + n * L);
      for (int r = 0; r < MR; ++r) {
        const auto vq = V::set1(q[r * ldq + c]);
        for (int n = 0; n < NR; ++n) acc[r][n] = V::mul_add(vq, vk[n], acc[r][n]);
      }
    }
    for (int r = 0; r < MR; ++r)
      for (int n = 0; n < NR; ++n) V::store(s + r * lds + n * L, acc[r][n]);
  }
};

/// O[r][n·L ..) += Σ_{j<nk} P[r][j] · Vp[j][n·L ..) for r < MR, n < NR.
/// p: row stride ldp; vp: packed V rows (stride ldv); o: accumulator rows (stride ldo).
template <class Isa, int MR, int NR>
struct pv_tile {
  static void run(const float* GQA_RESTRICT p, index_t ldp, const float* GQA_RESTRICT vp, index_t ldv, index_t nk,
                  float* GQA_RESTRICT o, index_t ldo) noexcept {
    using V = isa::vec<Isa>;
    constexpr int L = V::lanes;
    typename V::reg acc[MR][NR];
    for (int r = 0; r < MR; ++r)
      for (int n = 0; n < NR; ++n) acc[r][n] = V::load(o + r * ldo + n * L);
    for (index_t j = 0; j < nk; ++j) {
      typename V::reg vv[NR];
      for (int n = 0; n < NR; ++n) vv[n] = V::load(vp + j * ldv + n * L);
      for (int r = 0; r < MR; ++r) {
        const auto vp_r = V::set1(p[r * ldp + j]);
        for (int n = 0; n < NR; ++n) acc[r][n] = V::mul_add(vp_r, vv[n], acc[r][n]);
      }
    }
    for (int r = 0; r < MR; ++r)
      for (int n = 0; n < NR; ++n) V::store(o + r * ldo + n * L, acc[r][n]);
  }
};

/// Table of Tile<Isa, mr, nr>::run for mr in [1, MR], nr in [1, NR]: tails pick a smaller tile.
template <class Isa, template <class, int, int> class Tile, int MR, int NR>
struct tile_table {
  using fn = decltype(&Tile<Isa, 1, 1>::run);
  template <int... I>
  static constexpr std::array<fn, sizeof...(I)> make(std::integer_sequence<int, I...>) {
    return {&Tile<Isa, I / NR + 1, I % NR + 1>::run...};
  }
  static constexpr std::array<fn, MR * NR> table = make(std::make_integer_sequence<int, MR * NR>{});
  static fn get(int mr, int nr) noexcept { return table[static_cast<std::size_t>((mr - 1) * NR + (nr - 1))]; }
};

}  // namespace detail::core
GQA_END_NAMESPACE

#endif  // GQA_DETAIL_CORE_MICROKERNELS_HPP
