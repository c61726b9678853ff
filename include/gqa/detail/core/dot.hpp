// gqa/detail/core/dot.hpp: the dot-product family of the direct path: RB query rows × KU key rows, each
// score a vector of partial sums over d, a row's keys reduced horizontally four at a time (reduce_sum4). Invariant:
// reads exactly d floats of every row it is given (the d tail with masked loads); a score depends only
// on its row, its key and the block shape, never on the other rows and keys of its block.
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_DETAIL_CORE_DOT_HPP
#define GQA_DETAIL_CORE_DOT_HPP

#include "../../isa/vec.hpp"

GQA_BEGIN_NAMESPACE
namespace detail::core {

template <class Isa>
struct dot {
  using V = isa::vec<Isa>;
  using reg = typename V::reg;
  static constexpr int L = V::lanes;

  /// d split into whole vectors and the lanes of a masked tail.
  struct extent {
    index_t full;
    int tail;
    explicit extent(index_t d) noexcept : full(d / L * L), tail(static_cast<int>(d - d / L * L)) {}
  };

  /// Independent accumulators per (row, key): blocks with fewer than 8 (row, key) pairs split d over two
  /// chains so that at least two FMAs are in flight per pair; larger blocks have enough chains already.
  /// Vector i of d goes to chain i % chains, the tail to the last chain; the chains are added at the end.
  template <int RB, int KU>
  static constexpr int chains = RB * KU >= 8 ? 1 : 2;

  /// out[r][u] = partial sums of Q[r] · K[u] (q + r·ldq, k[u]) as a vector whose lanes add up to the score.
  /// K: float, or bf16/f16 widened as it is loaded (Note [16-bit K/V]).
  template <int RB, int KU, class K>
  static GQA_FORCEINLINE void partials(const float* q, index_t ldq, const K* const* k, extent d,
                                       reg (&out)[RB][KU]) noexcept {
    constexpr int C = chains<RB, KU>;
    reg acc[C][RB][KU];
    GQA_UNROLL for (int ch = 0; ch < C; ++ch)
      GQA_UNROLL for (int r = 0; r < RB; ++r)
        GQA_UNROLL for (int u = 0; u < KU; ++u) acc[ch][r][u] = V::zero();
    auto step = [&](int ch, index_t c, auto load) {
      if constexpr (RB == 1) {
        // One row: each K vector serves one FMA, so it is loaded (widened) right before it; loading all
        // KU first would hold KU + KU accumulators + Q in registers, 17 for 1 × 8, one more than AVX2 has
        // (g++ 12 then kept an accumulator on the stack for 16-bit and int8 K). Same FMAs, same order.
        const auto vq = load(q + c);
        GQA_UNROLL for (int u = 0; u < KU; ++u) acc[ch][0][u] = V::mul_add(vq, load(k[u] + c), acc[ch][0][u]);
      } else {
        reg vk[KU];
        GQA_UNROLL for (int u = 0; u < KU; ++u) vk[u] = load(k[u] + c);
        GQA_UNROLL for (int r = 0; r < RB; ++r) {
          const auto vq = load(q + r * ldq + c);
          GQA_UNROLL for (int u = 0; u < KU; ++u) acc[ch][r][u] = V::mul_add(vq, vk[u], acc[ch][r][u]);
        }
      }
    };
    const auto whole = [](const auto* p) noexcept { return V::load(p); };
    index_t c = 0;
    for (; c + C * L <= d.full; c += C * L)
      GQA_UNROLL for (int ch = 0; ch < C; ++ch) step(ch, c + ch * L, whole);
    GQA_UNROLL for (int ch = 0; ch + 1 < C; ++ch) {  // fewer than C whole vectors left
      if (c < d.full) {
        step(ch, c, whole);
        c += L;
      }
    }
    if (d.tail) step(C - 1, d.full, [t = d.tail](const auto* p) noexcept { return V::load_partial(p, t); });
    GQA_UNROLL for (int r = 0; r < RB; ++r)
      GQA_UNROLL for (int u = 0; u < KU; ++u) {
        out[r][u] = acc[0][r][u];
        GQA_UNROLL for (int ch = 1; ch < C; ++ch) out[r][u] = V::add(out[r][u], acc[ch][r][u]);
      }
  }

  /// S[r][u] = Q[r] · K[u] for r < RB, u < KU, written to s[r·lds + u]. KU a multiple of 4: four keys of
  /// a row are reduced together and stored as one vector of four; KU = 2 (RB even): two keys of two rows.
  template <int RB, int KU, class K>
  static GQA_FORCEINLINE void scores(const float* q, index_t ldq, const K* const* k, extent d, float* s,
                                     index_t lds) noexcept {
    static_assert(KU % 4 == 0 || (KU == 2 && RB % 2 == 0), "dot::scores reduces four scores at a time");
    reg p[RB][KU];
    partials<RB, KU>(q, ldq, k, d, p);
    if constexpr (KU % 4 == 0) {
      GQA_UNROLL for (int r = 0; r < RB; ++r)
        GQA_UNROLL for (int u = 0; u < KU; u += 4) V::reduce_sum4(p[r][u], p[r][u + 1], p[r][u + 2], p[r][u + 3], s + r * lds + u);
    } else {
      GQA_UNROLL for (int r = 0; r < RB; r += 2) {
        float out[4];
        V::reduce_sum4(p[r][0], p[r][1], p[r + 1][0], p[r + 1][1], out);
        s[r * lds] = out[0];
        s[r * lds + 1] = out[1];
        s[(r + 1) * lds] = out[2];
        s[(r + 1) * lds + 1] = out[3];
      }
    }
  }
};

}  // namespace detail::core
GQA_END_NAMESPACE

#endif  // GQA_DETAIL_CORE_DOT_HPP
