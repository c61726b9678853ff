// gqa/detail/core/decode.hpp: the scores of a decode task, which covers every KV head of a batch element,
// computed key by key and within a key head by head, so that a BSHD cache is read in address order.
// Invariant: reads only the given keys' rows of K and V (one float per cache line of V, and of unused KV
// heads lying between used ones); each score is a pure function of its row and key.
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_DETAIL_CORE_DECODE_HPP
#define GQA_DETAIL_CORE_DECODE_HPP

#include <span>

#include "../../head_map.hpp"
#include "../../isa/vec.hpp"
#include "../../tensor.hpp"
#include "common.hpp"
#include "dot.hpp"
#include "layout.hpp"

GQA_BEGIN_NAMESPACE
namespace detail::core {

// Note [decode tasks]
// When every KV head's group times the query length fits the direct path (decode: sq small), a task
// takes ALL KV heads of a batch element for a range of keys. Per block of keys it computes the scores
// key by key and, within a key, head by head (decode::scores_key_major): in a BSHD cache the heads of
// one position are adjacent, so K is read in address order, and the same walk loads one float per cache
// line of V. Then softmax and P·V run head by head, with V already in cache. Why: measured on this
// project's 2-core AVX-512 machine, reading a 128 MiB BSHD cache (16384 keys × 8 heads × 128) one
// head at a time (a 4 KB stride per key) streams at ~18-23 GB/s whatever the software prefetch
// distance, while the same bytes in address order stream at ~38-50 GB/s: the hardware prefetcher
// follows sequential demand loads, not strided ones, and software prefetches alone reached ~25 GB/s.
// D1 (1 × 32/8 heads × 128, 16384 keys) went from 18.6 to ~24 GB/s on one thread.

template <class Isa>
struct decode {
  using D = dot<Isa>;

  /// Rows of the task: for each KV head heads[i], its group's query heads × npos positions, head-major
  /// (Note [tile rows]), Qp row stride d. For keys j0 .. j0 + nb − 1 of batch element ib (its K/V rows
  /// found through the layout, Note [layouts]), writes S[row][j] (row stride lds), key by key and, within
  /// a key, KV head by KV head; the same walk loads one float of every cache line of the V rows, so the
  /// head-by-head P·V that follows finds them in cache.
  template <class Lay>
  static void scores_key_major(const Lay& lay, index_t ib, const head_map& map, std::span<const index_t> heads,
                               index_t npos, index_t j0, index_t nb, const float* qp, float* s, index_t lds) noexcept {
    const auto& k = lay.k;  // tensor_view<const typename Lay::kv_type>
    const auto& v = lay.v;
    const index_t d = k.d;
    const typename D::extent de(d);
    const bool heads_adjacent = k.stride_h == d && v.stride_h == v.d;
    const auto touch_head = [&](kv_loc at, index_t g) noexcept {
      touch_lines(k.row(at.b, at.s, g), k.d);
      touch_lines(v.row(at.b, at.s, g), v.d);
    };
    auto cur = lay.kv_cursor(ib, j0);
    for (index_t j = j0; j < j0 + nb; ++j, cur.next()) {
      const kv_loc at = cur.loc();
      typename D::pending single;  // rows left over from blocks of four, reduced four at a time
      index_t r0 = 0;
      for (std::size_t i = 0; i < heads.size(); ++i) {
        const index_t g = heads[i];
        // KV heads that serve no query head (KDGQA/DGQA may leave some) would leave holes in the address-
        // order stream, and a stream with holes is not followed by the hardware prefetcher (decode with
        // one unused head of 8 measured 2x slower): when heads are adjacent in memory, load one float
        // per cache line of the unused heads before this one too.
        for (index_t u = (i == 0 ? 0 : heads[i - 1] + 1); u < g && heads_adjacent; ++u) touch_head(at, u);
        const index_t rows = map.group_size(g) * npos;
        const typename Lay::kv_type* kr[1] = {k.row(at.b, at.s, g)};
        float* sj = s + r0 * lds + (j - j0);
        const float* q = qp + r0 * d;
        index_t r = 0;
        for (; r + 4 <= rows; r += 4) D::template scores<4, 1>(q + r * d, d, kr, de, sj + r * lds, lds);
        for (; r < rows; ++r) {
          typename D::reg p[1][1];
          D::template partials<1, 1>(q + r * d, d, kr, de, p);
          single.push(p[0][0], sj + r * lds);
        }
        touch_lines(v.row(at.b, at.s, g), v.d);
        r0 += rows;
      }
      for (index_t u = heads.back() + 1; u < k.h && heads_adjacent; ++u) touch_head(at, u);
      single.flush();
    }
  }
};

}  // namespace detail::core
GQA_END_NAMESPACE

#endif  // GQA_DETAIL_CORE_DECODE_HPP
