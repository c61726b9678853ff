// gqa/detail/core/decode.hpp: the scores of a decode task, which covers every KV head of a batch element,
// computed eight keys at a time and within them head by head, so that a BSHD cache is read in address order.
// Invariant: reads only the given keys' rows of K and V (one float per cache line of V, and of unused KV
// heads lying between used ones); each score is a pure function of its row and key (and the call's shape).
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_DETAIL_CORE_DECODE_HPP
#define GQA_DETAIL_CORE_DECODE_HPP

#include <algorithm>
#include <span>

#include "../../head_map.hpp"
#include "../../isa/vec.hpp"
#include "../../tensor.hpp"
#include "common.hpp"
#include "direct.hpp"
#include "dot.hpp"
#include "layout.hpp"

GQA_BEGIN_NAMESPACE
namespace detail::core {

// Note [decode tasks]
// When every KV head's group times the query length fits the direct path (decode: sq small), a task
// takes ALL KV heads of a batch element for a range of keys. Per block of keys it computes the scores
// eight keys at a time and, within them, head by head (decode::scores_key_major; Note [keys per step]):
// in a BSHD cache the heads of one position are adjacent, so K is read in address order, and the same
// walk loads one float per cache line of V. Then softmax and P·V run head by head, with V already in
// cache. Why: measured on this project's 2-core AVX-512 machine, reading a 128 MiB BSHD cache (16384
// keys × 8 heads × 128) one head at a time (a 4 KB stride per key) streams at ~18-23 GB/s whatever the
// software prefetch distance, while the same bytes in address order stream at ~38-50 GB/s: the hardware prefetcher
// follows sequential demand loads, not strided ones, and software prefetches alone reached ~25 GB/s.
// D1 (1 × 32/8 heads × 128, 16384 keys) went from 18.6 to ~24 GB/s on one thread.

template <class Isa>
struct decode {
  using D = dot<Isa>;
  /// Keys per step of the walk (Note [keys per step]).
  static constexpr index_t step_keys = k_direct_keys;

  // Note [keys per step]
  // The walk takes k_direct_keys (8) keys at a time and, within them, KV head by KV head: the group's rows
  // times the eight keys' K rows of that head, through direct::score_step (the direct path's own step:
  // blocks of direct_qk_rows rows × direct_qk_keys keys), so each Q vector loaded serves two to eight
  // keys, not one, and a row's scores are reduced together. Before, the walk went key by key (rows × 1
  // key, four rows reduced together): Q was loaded again for every key, and decode was
  // bound by those loads and the reductions, not by memory. The eight K rows of a head lie one key's stride
  // apart (all heads of a key are adjacent in a BSHD cache), so the walk still covers the cache in address
  // order, eight keys (32 KiB of fp32 K and V for 8 heads of d 128) at a time. The last step of a block
  // repeats its last key in the missing slots (their scores land in padding, as in direct::scores), so
  // every score comes from the same block shape. Measured (Intel Xeon, 2026-12-04, AVX-512, one thread,
  // the two versions alternating): with the cache in L1/L2 (D1's heads, 256 keys) fp32 1.04x, bf16 1.40x,
  // int8 1.21x faster; at 16384 keys, design.md §2.4.
  // One more rule for K/V narrower than fp32: there several keys share a 4 KiB page (2 for bf16, 4 for
  // int8 with 8 heads of d 128), so visiting the step head by head reads each page out of order (key j's
  // head 0, key j + 1's head 0, key j's head 1, ...), which the hardware prefetcher follows badly: bf16
  // D1 at 16384 keys ran 0.87x the key-by-key walk. So a step with adjacent heads first loads one element
  // per cache line of its keys' K and V rows, all heads, in address order (and the scores then find
  // them in cache): bf16 1.13x the key-by-key walk. For fp32 each key's heads fill one page, which the
  // head-by-head order reads in order, and the same loads made D1 0.96x: fp32 touches V during the scores,
  // as before. (Medians of 9 alternations, 16384 keys.) AVX2, with 16 registers, takes blocks of 4 rows ×
  // 2 keys (tile_shape::direct_qk_keys), so that a 16-bit or int8 K row is widened once per four rows, not
  // once per pair: at 16384 keys bf16 0.94x -> 0.99x and int8 0.98x -> 1.01x of the key-by-key walk
  // (fp32 1.04-1.07x); with the cache in L1/L2 AVX2 stays 3-9% behind the key-by-key walk for fp32 and
  // bf16 (int8 1.11x ahead), which is the price of one walk for every ISA.

  /// Rows of the task: for each KV head heads[i], its group's query heads × npos positions, head-major
  /// (Note [tile rows]), Qp row stride d. For keys j0 .. j0 + nb − 1 of batch element ib (its K/V rows
  /// found through the layout, Note [layouts]), writes S[row][j] (row stride lds, room for
  /// round_up(nb, step_keys) columns), step_keys keys at a time and, within them, KV head by KV head; the same
  /// walk loads one float of every cache line of the V rows, so the head-by-head P·V that follows finds
  /// them in cache.
  template <class Lay>
  static void scores_key_major(const Lay& lay, index_t ib, const head_map& map, std::span<const index_t> heads,
                               index_t npos, index_t j0, index_t nb, const float* qp, float* s, index_t lds) noexcept {
    using T = typename Lay::kv_type;
    constexpr index_t KU = step_keys;
    const auto& k = lay.k;  // tensor_view<const T>
    const auto& v = lay.v;
    const index_t d = k.d;
    const typename D::extent de(d);
    const bool heads_adjacent = k.stride_h == d && v.stride_h == v.d;
    const bool touch_first = heads_adjacent && sizeof(T) < sizeof(float);  // Note [keys per step]
    const auto touch_head = [&](kv_loc at, index_t g) noexcept {
      touch_lines(k.row(at.b, at.s, g), k.d);
      touch_lines(v.row(at.b, at.s, g), v.d);
    };
    auto cur = lay.kv_cursor(ib, j0);
    for (index_t j = j0; j < j0 + nb; j += KU) {
      const index_t keys = std::min(KU, j0 + nb - j);  // real keys of this step; the rest repeat the last
      kv_loc at[KU];
      for (index_t u = 0; u < KU; ++u) {
        at[u] = u < keys ? cur.loc() : at[keys - 1];
        if (u < keys) cur.next();
      }
      // Narrow K/V: the step's rows in address order first (Note [keys per step]).
      for (index_t e = 0; e < keys && touch_first; ++e) {
        touch_lines(k.row(at[e].b, at[e].s, 0), k.h * d);
        touch_lines(v.row(at[e].b, at[e].s, 0), v.h * v.d);
      }
      index_t r0 = 0;
      for (std::size_t i = 0; i < heads.size(); ++i) {
        const index_t g = heads[i];
        // KV heads that serve no query head (KDGQA/DGQA may leave some) would leave holes in the address-
        // order stream, and a stream with holes is not followed by the hardware prefetcher (decode with
        // one unused head of 8 measured 2x slower): when heads are adjacent in memory, load one float
        // per cache line of the unused heads before this one too (narrow K/V: the step's first pass did).
        for (index_t u = (i == 0 ? 0 : heads[i - 1] + 1); u < g && heads_adjacent && !touch_first; ++u)
          for (index_t e = 0; e < keys; ++e) touch_head(at[e], u);
        const index_t rows = map.group_size(g) * npos;
        const T* kr[KU];
        for (index_t u = 0; u < KU; ++u) kr[u] = k.row(at[u].b, at[u].s, g);
        direct<Isa>::score_step(kr, de, qp + r0 * d, rows, s + r0 * lds + (j - j0), lds);
        for (index_t e = 0; e < keys && !touch_first; ++e) touch_lines(v.row(at[e].b, at[e].s, g), v.d);
        r0 += rows;
      }
      for (index_t u = heads.back() + 1; u < k.h && heads_adjacent && !touch_first; ++u)
        for (index_t e = 0; e < keys; ++e) touch_head(at[e], u);
    }
  }
};

}  // namespace detail::core
GQA_END_NAMESPACE

#endif  // GQA_DETAIL_CORE_DECODE_HPP
