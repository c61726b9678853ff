// gqa/detail/core/forward.hpp: THE blocked attention core (flash-style, one pass, online softmax).
// Invariants: never materialises Sq×Skv; each task owns disjoint output rows (or a private partial that
// is merged in a fixed order), so results are bitwise identical for any thread count; extra memory is
// O(tile) per thread (plus O(chunks × rows × d_v) partials when a decode call splits the KV range).
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_DETAIL_CORE_FORWARD_HPP
#define GQA_DETAIL_CORE_FORWARD_HPP

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../../head_map.hpp"
#include "../../isa/vec.hpp"
#include "../../isa/vec_math.hpp"
#include "../../options.hpp"
#include "../../tensor.hpp"
#include "../../threading/parallel.hpp"
#include "microkernels.hpp"
#include "tile_shape.hpp"

GQA_BEGIN_NAMESPACE
namespace detail::core {

// Note [tile rows]
// A task takes one (batch, KV head) and a block of query positions, and makes every query head of that
// KV head's group a row of the same tile: row r is (position q0 + r / G, head r % G). Each K/V block is
// then packed once and used by G·block_q rows, which is what makes GQA cheaper than MHA in memory traffic
// and what lets decode (block_q = 1) still fill the microkernel's rows with the group's heads.
//
// Note [base-2 softmax]
// Q is packed pre-multiplied by scale·log2(e), so scores are in log2 units and the softmax needs only
// exp2 (isa::exp2): p = 2^(s − m). The natural-log LSE is m·ln2 + ln(l).
//
// Note [fully masked rows]
// A row whose running max is still −inf has seen no visible key; its p stays 0 (we never form
// −inf − (−inf)). At the end l == 0 marks such rows: they are written as zeros and their LSE is −inf.

inline constexpr float k_log2e = 1.4426950408889634f;
inline constexpr float k_ln2 = 0.6931471805599453f;
inline constexpr float k_neg_inf = -std::numeric_limits<float>::infinity();
inline constexpr index_t k_direct_rows = 32;  // See Note [direct path]

inline index_t round_up(index_t x, index_t m) noexcept { return (x + m - 1) / m * m; }
/// A real load of *p whose value is discarded (the compiler may not drop it, unlike a prefetch hint it
/// is never ignored by the CPU and trains the hardware prefetcher).
GQA_FORCEINLINE void touch(const float* p) noexcept {
  const float x = *static_cast<const volatile float*>(p);
  static_cast<void>(x);
}
/// Largest power of two <= x (x >= 1).
constexpr int pow2_floor(int x) noexcept { return x < 2 ? 1 : 2 * pow2_floor(x / 2); }

/// Everything a task needs, fixed for the call.
struct problem {
  tensor_view<const float> q, k, v;
  tensor_view<float> o;
  const head_map* map;
  const index_t* active;  // KV heads that serve at least one query head
  float qscale;  // scale · log2(e)
  bool causal;
  std::span<const index_t> kv_lengths;
  std::span<float> lse;
  index_t block_q;   // query positions per task
  index_t block_kv;  // keys per block
  index_t chunk;    // KV keys per chunk (== skv rounded up when not split)
  index_t n_chunks;
};

/// One unit of work: batch ib, KV heads active[g0 .. g1), query positions [q0, q1), KV chunk `chunk`.
/// Tiled (prefill) tasks have one KV head; decode tasks take every KV head so that a BSHD cache is read
/// in address order (see Note [decode tasks]).
struct task {
  index_t ib, g0, g1, q0, q1, chunk;
};

/// Output of a task that covers only part of the KV range: per row m (log2 units), l, unnormalised O.
struct partial_out {
  float* m;
  float* l;
  float* o;  // rows × dvp
};

template <class Isa>
struct kernel {
  using V = isa::vec<Isa>;
  using shape = tile_shape<Isa>;
  static constexpr int L = V::lanes;
  static constexpr int MR = shape::mr, NR = shape::nr;
  static constexpr index_t cols = static_cast<index_t>(NR) * L;

  struct layout {
    index_t rows, d, dv, dvp, bk;  // bk: block_kv rounded to cols
    index_t qp, kp, vp, s, oacc, m, l, total;
  };

  static layout plan_scratch(index_t rows, index_t d, index_t dv, index_t block_kv) noexcept {
    layout s{};
    s.rows = rows;
    s.d = d;
    s.dv = dv;
    s.dvp = round_up(dv, L);
    s.bk = round_up(block_kv, cols);
    index_t off = 0;
    auto carve = [&off](index_t n) {
      const index_t at = off;
      off += round_up(n, 16);  // keep every array 64-byte aligned
      return at;
    };
    s.qp = carve(rows * d);
    s.kp = carve(s.bk * d);
    s.vp = carve(s.bk * s.dvp);
    s.s = carve(rows * s.bk);
    s.oacc = carve(rows * s.dvp);
    s.m = carve(rows);
    s.l = carve(rows);
    s.total = off;
    return s;
  }

  /// Rows of a task: for each KV head in [g0, g1), its group's heads × the task's positions, head-major.
  /// Row r of head gi is (position q0 + r / G, query head q_heads(g)[r % G]).
  static index_t task_rows(const problem& pb, const task& t) noexcept {
    index_t rows = 0;
    for (index_t gi = t.g0; gi < t.g1; ++gi) rows += pb.map->group_size(pb.active[gi]) * (t.q1 - t.q0);
    return rows;
  }

  /// Runs one task; writes final rows to o (and lse), or, if part != nullptr, the partial state.
  static void run(const problem& pb, const task& t, const partial_out* part) noexcept {
    const index_t npos = t.q1 - t.q0;
    const index_t rows = task_rows(pb, t);
    const index_t d = pb.q.d, dv = pb.v.d, sq = pb.q.s;
    const layout lay = plan_scratch(rows, d, dv, pb.block_kv);
    float* ws = thread_scratch(static_cast<std::size_t>(lay.total));
    float* qp = ws + lay.qp;
    float* kp = ws + lay.kp;
    float* vp = ws + lay.vp;
    float* sc = ws + lay.s;
    float* oacc = part ? part->o : ws + lay.oacc;
    float* mrow = part ? part->m : ws + lay.m;
    float* lrow = part ? part->l : ws + lay.l;

    // Visible keys: [0, L) with L the valid length; causal rows see j <= pos + (L - sq).
    const index_t kv_len = pb.kv_lengths.empty() ? pb.k.s : pb.kv_lengths[static_cast<std::size_t>(t.ib)];
    auto row_limit = [&](index_t pos) noexcept -> index_t {
      if (!pb.causal) return kv_len;
      return std::clamp<index_t>(pos + (kv_len - sq) + 1, 0, kv_len);
    };
    const index_t c_lo = t.chunk * pb.chunk;
    const index_t c_hi = std::min<index_t>(c_lo + pb.chunk, pb.k.s);
    const index_t kv_hi = std::min(c_hi, row_limit(t.q1 - 1));   // no row sees past this
    const index_t kv_unmasked = row_limit(t.q0);                 // every row sees below this

    // Pack Q (scaled into log2 units, see Note [base-2 softmax]) and reset the running state.
    for (index_t gi = t.g0, r0 = 0; gi < t.g1; ++gi) {
      const auto heads = pb.map->q_heads(pb.active[gi]);
      const index_t G = static_cast<index_t>(heads.size());
      for (index_t r = 0; r < G * npos; ++r) {
        const float* src = pb.q.row(t.ib, t.q0 + r / G, heads[static_cast<std::size_t>(r % G)]);
        float* dst = qp + (r0 + r) * d;
        for (index_t c = 0; c < d; ++c) dst[c] = src[c] * pb.qscale;
      }
      r0 += G * npos;
    }
    std::fill(mrow, mrow + rows, k_neg_inf);
    std::fill(lrow, lrow + rows, 0.0f);
    std::fill(oacc, oacc + rows * lay.dvp, 0.0f);

    // A task is either one KV head on the tiled path (prefill) or several KV heads that all take the
    // direct path (decode). Decode tasks compute the scores of all their heads key by key, in address
    // order, and P·V head by head from cache (Note [decode tasks]).
    const bool key_major = t.g1 - t.g0 > 1;
    for (index_t j0 = c_lo; j0 < kv_hi; j0 += lay.bk) {
      const index_t nb = std::min(lay.bk, kv_hi - j0);
      const index_t nbp = round_up(nb, L);
      const bool partial_block = (j0 + nb > kv_unmasked) || nbp != nb;
      if (key_major) scores_key_major(pb, t, j0, nb, qp, sc, lay.bk);
      for (index_t gi = t.g0, r0 = 0; gi < t.g1; ++gi) {
        const index_t g = pb.active[gi];
        const index_t G = pb.map->group_size(g);
        const index_t grow = G * npos;
        float* srow0 = sc + r0 * lay.bk;
        const bool direct = grow <= k_direct_rows;  // See Note [direct path]
        const float* kb = pb.k.row(t.ib, j0, g);
        const float* vb = pb.v.row(t.ib, j0, g);
        const index_t ks = pb.k.stride_s, vs = pb.v.stride_s;
        if (direct && !key_major) {
          scores_direct(kb, ks, d, nb, qp + r0 * d, grow, srow0, lay.bk);
        } else if (!direct) {
          pack_k(pb, t.ib, g, j0, nb, nbp, kp);
          pack_v(pb, t.ib, g, j0, nb, lay.dvp, vp);
          scores(qp + r0 * d, grow, d, kp, nbp, srow0, lay.bk);
        }
        // Mask: columns past nb are padding; with causal, row limits may cut inside the block.
        for (index_t r = 0; r < grow; ++r) {
          float* srow = srow0 + r * lay.bk;
          if (partial_block) {
            const index_t lim = std::clamp<index_t>(row_limit(t.q0 + r / G) - j0, 0, nb);
            for (index_t j = lim; j < nbp; ++j) srow[j] = k_neg_inf;
          }
          softmax_update(srow, nbp, mrow[r0 + r], lrow[r0 + r], oacc + (r0 + r) * lay.dvp, lay.dvp);
        }
        if (direct) {
          accumulate_pv_direct(vb, vs, dv, nb, srow0, grow, lay.bk, lay.dvp, oacc + r0 * lay.dvp);
        } else {
          accumulate_pv(srow0, grow, lay.bk, vp, nb, lay.dvp, oacc + r0 * lay.dvp);
        }
        r0 += grow;
      }
    }

    if (part) return;
    write_rows(pb, t, oacc, lay.dvp, mrow, lrow);
  }

  /// One row's score against key row k: the dot product as a vector of partial sums (two chains).
  static GQA_FORCEINLINE typename V::reg dot_partial(const float* q, const float* k, index_t dfull, int tail) noexcept {
    auto a0 = V::zero(), a1 = V::zero();
    index_t c = 0;
    for (; c + 2 * L <= dfull; c += 2 * L) {
      a0 = V::mul_add(V::load(q + c), V::load(k + c), a0);
      a1 = V::mul_add(V::load(q + c + L), V::load(k + c + L), a1);
    }
    if (c < dfull) a0 = V::mul_add(V::load(q + c), V::load(k + c), a0);
    if (tail) a1 = V::mul_add(V::load_partial(q + dfull, tail), V::load_partial(k + dfull, tail), a1);
    return V::add(a0, a1);
  }

  /// Four rows against one key row k: S[r][0] for r < 4 (row stride lds). K is loaded once for the rows.
  static GQA_FORCEINLINE void dot_rows4(const float* q, index_t d, const float* k, index_t dfull, int tail, float* s,
                                        index_t lds) noexcept {
    typename V::reg acc[4][2];
    for (int r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = V::zero();
    index_t c = 0;
    for (; c + 2 * L <= dfull; c += 2 * L) {
      const auto vk0 = V::load(k + c), vk1 = V::load(k + c + L);
      for (int r = 0; r < 4; ++r) {
        acc[r][0] = V::mul_add(V::load(q + r * d + c), vk0, acc[r][0]);
        acc[r][1] = V::mul_add(V::load(q + r * d + c + L), vk1, acc[r][1]);
      }
    }
    if (c < dfull) {
      const auto vk = V::load(k + c);
      for (int r = 0; r < 4; ++r) acc[r][0] = V::mul_add(V::load(q + r * d + c), vk, acc[r][0]);
    }
    if (tail) {
      const auto vk = V::load_partial(k + dfull, tail);
      for (int r = 0; r < 4; ++r) acc[r][1] = V::mul_add(V::load_partial(q + r * d + dfull, tail), vk, acc[r][1]);
    }
    float out[4];
    V::reduce_sum4(V::add(acc[0][0], acc[0][1]), V::add(acc[1][0], acc[1][1]), V::add(acc[2][0], acc[2][1]),
                   V::add(acc[3][0], acc[3][1]), out);
    for (int r = 0; r < 4; ++r) s[r * lds] = out[r];
  }

  /// Loads one float per cache line of KV head g's K and V rows at key j (see scores_key_major).
  static void touch_head(const problem& pb, index_t ib, index_t j, index_t g) noexcept {
    const float* kr = pb.k.row(ib, j, g);
    const float* vr = pb.v.row(ib, j, g);
    for (index_t x = 0; x < pb.k.d; x += 16) touch(kr + x);
    for (index_t x = 0; x < pb.v.d; x += 16) touch(vr + x);
  }

  /// Scores of every row of decode task t against keys [j0, j0 + nb), key by key and, within a key, KV
  /// head by KV head: in a BSHD cache that reads K in address order, which the hardware prefetcher
  /// streams at full bandwidth. The same walk loads one float of every cache line of the V rows, so the
  /// head-by-head P·V that follows finds them in cache. See Note [decode tasks].
  static void scores_key_major(const problem& pb, const task& t, index_t j0, index_t nb, const float* qp, float* s,
                               index_t lds) noexcept {
    const index_t d = pb.k.d, dv = pb.v.d, npos = t.q1 - t.q0;
    const index_t dfull = d / L * L;
    const int tail = static_cast<int>(d - dfull);
    const bool heads_adjacent = pb.k.stride_h == d && pb.v.stride_h == dv;
    for (index_t j = 0; j < nb; ++j) {
      // Rows left over from groups of four wait here (up to three) and are reduced four at a time.
      typename V::reg pend[4];
      float* pend_dst[4];
      int npend = 0;
      auto flush = [&]() noexcept {
        float out[4];
        for (int i = npend; i < 4; ++i) pend[i] = V::zero();
        V::reduce_sum4(pend[0], pend[1], pend[2], pend[3], out);
        for (int i = 0; i < npend; ++i) *pend_dst[i] = out[i];
        npend = 0;
      };
      for (index_t gi = t.g0, r0 = 0; gi < t.g1; ++gi) {
        const index_t g = pb.active[gi];
        // KV heads that serve no query head (KDGQA/DGQA may leave some) would leave holes in the address-
        // order stream, and a stream with holes is not followed by the hardware prefetcher (decode with
        // one unused head of 8 measured 2x slower): when heads are adjacent in memory, load one float
        // per cache line of the unused heads before this one too.
        for (index_t u = (gi == t.g0 ? 0 : pb.active[gi - 1] + 1); u < g && heads_adjacent; ++u) touch_head(pb, t.ib, j0 + j, u);
        const index_t rows = pb.map->group_size(g) * npos;
        const float* k = pb.k.row(t.ib, j0 + j, g);
        index_t r = 0;
        for (; r + 4 <= rows; r += 4) dot_rows4(qp + (r0 + r) * d, d, k, dfull, tail, s + (r0 + r) * lds + j, lds);
        for (; r < rows; ++r) {
          pend[npend] = dot_partial(qp + (r0 + r) * d, k, dfull, tail);
          pend_dst[npend++] = s + (r0 + r) * lds + j;
          if (npend == 4) flush();
        }
        const float* vr = pb.v.row(t.ib, j0 + j, g);
        for (index_t x = 0; x < dv; x += 16) touch(vr + x);
        r0 += rows;
      }
      for (index_t u = pb.active[t.g1 - 1] + 1; u < pb.k.h && heads_adjacent; ++u) touch_head(pb, t.ib, j0 + j, u);
      if (npend > 0) flush();
    }
  }

  /// Normalises and writes every row of task t from (acc, m, l) laid out as in run().
  static void write_rows(const problem& pb, const task& t, const float* acc, index_t dvp, const float* m,
                         const float* l) noexcept {
    const index_t npos = t.q1 - t.q0;
    for (index_t gi = t.g0, r0 = 0; gi < t.g1; ++gi) {
      const auto heads = pb.map->q_heads(pb.active[gi]);
      const index_t G = static_cast<index_t>(heads.size());
      for (index_t r = 0; r < G * npos; ++r, ++r0)
        write_row(pb, t.ib, t.q0 + r / G, heads[static_cast<std::size_t>(r % G)], acc + r0 * dvp, m[r0], l[r0]);
    }
  }

  static void write_row(const problem& pb, index_t ib, index_t pos, index_t h, const float* acc, float m,
                        float l) noexcept {
    float* dst = pb.o.row(ib, pos, h);
    const index_t dv = pb.v.d;
    if (l > 0.0f) {
      const float inv = 1.0f / l;
      for (index_t c = 0; c < dv; ++c) dst[c] = acc[c] * inv;
    } else {
      for (index_t c = 0; c < dv; ++c) dst[c] = 0.0f;
    }
    if (!pb.lse.empty()) {
      pb.lse[static_cast<std::size_t>((ib * pb.q.h + h) * pb.q.s + pos)] =
          l > 0.0f ? m * k_ln2 + std::log(l) : k_neg_inf;
    }
  }

  // Note [direct path]
  // With few rows (decode: one position, the group's heads), packing K/V costs more than the math it
  // feeds. The direct path reads K and V rows where they are: scores are dot products over d (vector
  // partial sums, then one horizontal sum per (row, key)), and P·V streams V rows with tail-masked loads.
  // The cut-off, k_direct_rows = 32 rows per KV head, is measured: decode of 32 query heads over 16384
  // keys (d 128, AVX-512, one thread) with 1, 2, 4 KV heads ran at 197, 110, 80 GFLOP/s on the direct
  // path against 149, 79, 80 on the packed one (packing transposes every K row with scalar stores).

  /// RB rows × KU keys of scores: S[r][u] = Qp[r] · K[kr[u]] (vector partial sums over d, then one
  /// horizontal sum per (row, key), four keys per reduce_sum4). The d tail uses masked loads.
  template <int RB, int KU>
  static GQA_FORCEINLINE void dot_block(const float* qp, index_t d, index_t dfull, int tail, const float* const* kr,
                                        float* s, index_t lds) noexcept {
    typename V::reg acc[RB][KU];
    for (int r = 0; r < RB; ++r)
      for (int u = 0; u < KU; ++u) acc[r][u] = V::zero();
    for (index_t c = 0; c < dfull; c += L) {
      typename V::reg vk[KU];
      for (int u = 0; u < KU; ++u) vk[u] = V::load(kr[u] + c);
      for (int r = 0; r < RB; ++r) {
        const auto vq = V::load(qp + r * d + c);
        for (int u = 0; u < KU; ++u) acc[r][u] = V::mul_add(vq, vk[u], acc[r][u]);
      }
    }
    if (tail) {
      typename V::reg vk[KU];
      for (int u = 0; u < KU; ++u) vk[u] = V::load_partial(kr[u] + dfull, tail);
      for (int r = 0; r < RB; ++r) {
        const auto vq = V::load_partial(qp + r * d + dfull, tail);
        for (int u = 0; u < KU; ++u) acc[r][u] = V::mul_add(vq, vk[u], acc[r][u]);
      }
    }
    for (int r = 0; r < RB; ++r)
      for (int u = 0; u < KU; u += 4) V::reduce_sum4(acc[r][u], acc[r][u + 1], acc[r][u + 2], acc[r][u + 3], s + r * lds + u);
  }

  /// S[r][j] = Qp[r] · K[j0 + j] for j < nb (Qp row stride d), eight keys per step. Rows go through the
  /// widest register block that fits (tile_shape::direct_qk_rows rows × 4 keys, so K loads are shared by
  /// the rows), then pairs, then single rows × 8 keys: every block keeps >= 8 independent FMA chains.
  /// kbase: the block's first key row, ks: row stride (the caller's K, or the decode copy).
  static void scores_direct(const float* kbase, index_t ks, index_t d, index_t nb, const float* qp, index_t rows,
                            float* s, index_t lds) noexcept {
    constexpr index_t KU = 8;
    constexpr int RB = shape::direct_qk_rows;
    const index_t dfull = d / L * L;
    const int tail = static_cast<int>(d - dfull);
    for (index_t j = 0; j < nb; j += KU) {
      // Keys past nb repeat the last valid row (their scores land in s's padding and are masked).
      const float* kr[KU];
      for (index_t u = 0; u < KU; ++u) kr[u] = kbase + std::min(j + u, nb - 1) * ks;
      float* sj = s + j;  // s has room for KU columns past nb: the block is padded to a multiple of 8
      index_t r = 0;
      for (; r + RB <= rows; r += RB) {
        dot_block<RB, 4>(qp + r * d, d, dfull, tail, kr, sj + r * lds, lds);
        dot_block<RB, 4>(qp + r * d, d, dfull, tail, kr + 4, sj + r * lds + 4, lds);
      }
      if constexpr (RB > 2) {
        for (; r + 2 <= rows; r += 2) {
          dot_block<2, 4>(qp + r * d, d, dfull, tail, kr, sj + r * lds, lds);
          dot_block<2, 4>(qp + r * d, d, dfull, tail, kr + 4, sj + r * lds + 4, lds);
        }
      }
      for (; r < rows; ++r) dot_block<1, 8>(qp + r * d, d, dfull, tail, kr, sj + r * lds, lds);
    }
  }

  /// DR rows of Oacc[r][c0 ..) += Σ_{j<nb} P[r][j] · V[j][c0 ..) over DN vectors of columns, V read in
  /// place. `nvec`/`last`: vectors with data and lanes in the last one (a d_v tail uses masked loads).
  template <int DR, int DN>
  static GQA_FORCEINLINE void pv_block(const float* vbase, index_t vs, index_t nb, const float* p, index_t ldp, int nvec,
                                       int last, float* oacc, index_t dvp) noexcept {
    typename V::reg acc[DR][DN];
    for (int r = 0; r < DR; ++r)
      for (int n = 0; n < DN; ++n) acc[r][n] = n < nvec ? V::load(oacc + r * dvp + n * L) : V::zero();
    if (nvec == DN && last == L) {  // full vectors: the common case, no per-key tail logic
      for (index_t j = 0; j < nb; ++j) {
        const float* vrow = vbase + j * vs;
        typename V::reg vv[DN];
        for (int n = 0; n < DN; ++n) vv[n] = V::load(vrow + n * L);
        for (int r = 0; r < DR; ++r) {
          const auto w = V::set1(p[r * ldp + j]);
          for (int n = 0; n < DN; ++n) acc[r][n] = V::mul_add(w, vv[n], acc[r][n]);
        }
      }
    } else {
      for (index_t j = 0; j < nb; ++j) {
        const float* vrow = vbase + j * vs;
        typename V::reg vv[DN];
        for (int n = 0; n < DN; ++n)
          vv[n] = n >= nvec ? V::zero()
                  : (n == nvec - 1 && last != L) ? V::load_partial(vrow + n * L, last)
                                                 : V::load(vrow + n * L);
        for (int r = 0; r < DR; ++r) {
          const auto w = V::set1(p[r * ldp + j]);
          for (int n = 0; n < DN; ++n) acc[r][n] = V::mul_add(w, vv[n], acc[r][n]);
        }
      }
    }
    for (int r = 0; r < DR; ++r)
      for (int n = 0; n < nvec; ++n) V::store(oacc + r * dvp + n * L, acc[r][n]);
  }

  /// Columns [0, dv) of DR rows in slabs of DN vectors.
  template <int DR, int DN>
  static void pv_rows(const float* vbase, index_t vs, index_t dv, index_t nb, const float* p, index_t ldp, float* oacc,
                      index_t dvp) noexcept {
    for (index_t c0 = 0; c0 < dv; c0 += DN * L) {
      const index_t width = std::min<index_t>(DN * L, dv - c0);
      const int nvec = static_cast<int>((width + L - 1) / L);
      const int last = static_cast<int>(width - (nvec - 1) * L);  // lanes in the last vector
      pv_block<DR, DN>(vbase + c0, vs, nb, p, ldp, nvec, last, oacc + c0, dvp);
    }
  }

  /// Oacc[r] += Σ_{j<nb} P[r][j] · V[j0 + j] read in place. Rows go in blocks of 4, then the remainder as
  /// one block of 3, 2 or 1 rows; fewer rows get more column vectors so every block keeps about
  /// tile_shape::direct_acc accumulators (no FMA is spent on padding rows).
  /// vbase: the block's first value row, vs: row stride (the caller's V, or the decode copy).
  static void accumulate_pv_direct(const float* vbase, index_t vs, index_t dv, index_t nb, const float* p, index_t rows,
                                   index_t ldp, index_t dvp, float* oacc) noexcept {
    constexpr int A = shape::direct_acc;
    index_t r = 0;
    for (; r + 4 <= rows; r += 4) pv_rows<4, pow2_floor(A / 4)>(vbase, vs, dv, nb, p + r * ldp, ldp, oacc + r * dvp, dvp);
    switch (rows - r) {
      case 3: pv_rows<3, pow2_floor(A / 3)>(vbase, vs, dv, nb, p + r * ldp, ldp, oacc + r * dvp, dvp); break;
      case 2: pv_rows<2, pow2_floor(A / 2)>(vbase, vs, dv, nb, p + r * ldp, ldp, oacc + r * dvp, dvp); break;
      case 1: pv_rows<1, pow2_floor(A / 2)>(vbase, vs, dv, nb, p + r * ldp, ldp, oacc + r * dvp, dvp); break;
      default: break;
    }
  }

  /// Kp = Kᵀ of keys [j0, j0+nb) in slices of `cols` keys: slice n is [d][w_n], w_n = its width.
  static void pack_k(const problem& pb, index_t ib, index_t g, index_t j0, index_t nb, index_t nbp, float* kp) noexcept {
    // Columns of 8 at a time, keys inner: each K row is read 32 bytes at a time and the 8 destination
    // rows are written sequentially, so both sides stay on a few cache lines (a plain scatter of every
    // key's d values across d destination lines made packing cost more than the tile's math).
    constexpr index_t CB = 8;
    const index_t d = pb.k.d;
    const float* kbase = pb.k.row(ib, j0, g);
    const index_t ks = pb.k.stride_s;
    for (index_t s0 = 0; s0 < nbp; s0 += cols) {
      const index_t w = std::min(cols, nbp - s0);
      const index_t wv = std::min(w, nb - s0);  // keys with data; the rest of the slice is zero padding
      float* slice = kp + s0 * d;
      for (index_t c0 = 0; c0 < d; c0 += CB) {
        const index_t cn = std::min(CB, d - c0);
        for (index_t j = 0; j < wv; ++j) {
          const float* src = kbase + (s0 + j) * ks + c0;
          float* dst = slice + c0 * w + j;
          for (index_t c = 0; c < cn; ++c) dst[c * w] = src[c];
        }
        for (index_t j = wv; j < w; ++j)
          for (index_t c = 0; c < cn; ++c) slice[(c0 + c) * w + j] = 0.0f;
      }
    }
  }

  /// Vp rows j < nb: V[j0 + j] padded with zeros to dvp.
  static void pack_v(const problem& pb, index_t ib, index_t g, index_t j0, index_t nb, index_t dvp, float* vp) noexcept {
    const index_t dv = pb.v.d;
    for (index_t j = 0; j < nb; ++j) {
      const float* src = pb.v.row(ib, j0 + j, g);
      float* dst = vp + j * dvp;
      std::copy(src, src + dv, dst);
      std::fill(dst + dv, dst + dvp, 0.0f);
    }
  }

  /// S[rows][nbp] (row stride lds) = Qp · Kp.
  static void scores(const float* qp, index_t rows, index_t d, const float* kp, index_t nbp, float* s,
                     index_t lds) noexcept {
    using table = tile_table<Isa, qk_tile, MR, NR>;
    for (index_t s0 = 0; s0 < nbp; s0 += cols) {
      const index_t w = std::min(cols, nbp - s0);
      const int nr = static_cast<int>(w / L);
      for (index_t r0 = 0; r0 < rows; r0 += MR) {
        const int mr = static_cast<int>(std::min<index_t>(MR, rows - r0));
        table::get(mr, nr)(qp + r0 * d, d, kp + s0 * d, w, d, s + r0 * lds + s0, lds);
      }
    }
  }

  /// One row's online-softmax step over a block: updates (m, l), rescales the row's accumulator, and
  /// overwrites s with p = 2^(s − m_new). See Note [fully masked rows].
  static void softmax_update(float* s, index_t n, float& m, float& l, float* orow, index_t dvp) noexcept {
    auto vmax = V::set1(k_neg_inf);
    for (index_t j = 0; j < n; j += L) vmax = V::max(vmax, V::load(s + j));
    const float m_new = std::max(m, V::reduce_max(vmax));
    if (m_new == k_neg_inf) {
      std::fill(s, s + n, 0.0f);
      return;
    }
    const float alpha = m == k_neg_inf ? 0.0f : isa::exp2_scalar(m - m_new);
    const auto vm = V::set1(m_new);
    auto vsum = V::zero();
    for (index_t j = 0; j < n; j += L) {
      const auto p = isa::exp2<Isa>(V::sub(V::load(s + j), vm));
      V::store(s + j, p);
      vsum = V::add(vsum, p);
    }
    l = l * alpha + V::reduce_sum(vsum);
    m = m_new;
    if (alpha != 1.0f) {
      const auto va = V::set1(alpha);
      for (index_t c = 0; c < dvp; c += L) V::store(orow + c, V::mul(V::load(orow + c), va));
    }
  }

  /// Oacc[rows][dvp] += P[rows][nb] · Vp[nb][dvp].
  static void accumulate_pv(const float* p, index_t rows, index_t ldp, const float* vp, index_t nb, index_t dvp,
                            float* oacc) noexcept {
    using table = tile_table<Isa, pv_tile, MR, NR>;
    for (index_t c0 = 0; c0 < dvp; c0 += cols) {
      const int nr = static_cast<int>(std::min(cols, dvp - c0) / L);
      for (index_t r0 = 0; r0 < rows; r0 += MR) {
        const int mr = static_cast<int>(std::min<index_t>(MR, rows - r0));
        table::get(mr, nr)(p + r0 * ldp, ldp, vp + c0, dvp, nb, oacc + r0 * dvp + c0, dvp);
      }
    }
  }
};

// Note [decode tasks]
// When every KV head's group times the query length fits the direct path (decode: sq small), a task
// takes ALL KV heads of a batch element for a range of keys. Per block of keys it computes the scores
// key by key and, within a key, head by head (scores_key_major): in a BSHD cache the heads of one
// position are adjacent, so K is read in address order, and the same walk loads one float per cache
// line of V. Then softmax and P·V run head by head, with V already in cache. Why: measured on this
// project's 2-core AVX-512 machine, reading a 128 MiB BSHD cache (16384 keys × 8 heads × 128) one
// head at a time (a 4 KB stride per key) streams at ~18-23 GB/s whatever the software prefetch
// distance, while the same bytes in address order stream at ~38-50 GB/s: the hardware prefetcher
// follows sequential demand loads, not strided ones, and software prefetches alone reached ~25 GB/s.
// D1 (1 × 32/8 heads × 128, 16384 keys) went from 18.6 to ~24 GB/s on one thread.
//
// Note [decode split]
// When a call has few tasks and a long KV range (decode), the KV range is cut into chunks that run as
// separate tasks and are merged in chunk order. The decision depends only on the shapes, never on the
// thread count, so results are identical for 1 and N threads.
inline constexpr index_t k_split_min_tasks = 16;
inline constexpr index_t k_split_min_chunk = 1024;

template <class Isa>
void forward(tensor_view<const float> q, tensor_view<const float> k, tensor_view<const float> v,
             tensor_view<float> o, const head_map& map, const attention_options& opt) {
  using K = kernel<Isa>;
  const float scale = opt.scale ? *opt.scale : 1.0f / std::sqrt(static_cast<float>(q.d));
  const index_t sq = q.s, skv = k.s;

  // KV heads that serve no query head get no work.
  std::vector<index_t> active;
  for (index_t g = 0; g < map.hkv(); ++g)
    if (map.group_size(g) > 0) active.push_back(g);
  const index_t n_active = static_cast<index_t>(active.size());
  const index_t gmax = std::max<index_t>(1, map.max_group_size());
  const bool decode = gmax * sq <= k_direct_rows;  // See Note [decode tasks]
  const index_t block_q = decode ? sq : std::max<index_t>(1, tile_shape<Isa>::rows / gmax);
  const index_t n_qblocks = (sq + block_q - 1) / block_q;
  const index_t head_tasks = decode ? 1 : n_active;  // tasks per (batch, query block)
  const index_t base_tasks = q.b * head_tasks * n_qblocks;

  index_t n_chunks = 1;
  if (base_tasks < k_split_min_tasks && skv >= 2 * k_split_min_chunk) {
    n_chunks = std::min((skv + k_split_min_chunk - 1) / k_split_min_chunk,
                        (k_split_min_tasks + base_tasks - 1) / base_tasks);
  }
  const index_t chunk = n_chunks == 1 ? skv : round_up((skv + n_chunks - 1) / n_chunks, K::cols);
  n_chunks = (skv + chunk - 1) / chunk;

  problem pb{q, k, v, o, &map, active.data(), scale * k_log2e, opt.causal, opt.kv_lengths, opt.lse, block_q,
             decode ? tile_shape<Isa>::block_kv_decode : tile_shape<Isa>::block_kv, chunk, n_chunks};

  auto make_task = [&](index_t i) {
    const index_t c = i % n_chunks;
    i /= n_chunks;
    const index_t qb = i % n_qblocks;
    i /= n_qblocks;
    const index_t gi = i % head_tasks;
    const index_t ib = i / head_tasks;
    const index_t q0 = qb * block_q;
    const index_t g0 = decode ? 0 : gi, g1 = decode ? n_active : gi + 1;
    return task{ib, g0, g1, q0, std::min(sq, q0 + block_q), c};
  };
  const index_t n_tasks = base_tasks * n_chunks;

  if (n_chunks == 1) {
    run_tasks(n_tasks, executor_of(opt), [&](index_t i) { K::run(pb, make_task(i), nullptr); });
    return;
  }

  // Split KV: every task writes a private partial, then each row merges its chunks in order.
  const index_t rows_max = decode ? map.hq() * sq : gmax * block_q;
  const index_t dvp = round_up(v.d, K::L);
  const index_t per_task = rows_max * (2 + dvp);
  std::vector<float> partials(static_cast<std::size_t>(n_tasks * per_task));
  auto partial_of = [&](index_t i) {
    float* base = partials.data() + i * per_task;
    return partial_out{base, base + rows_max, base + 2 * rows_max};
  };
  run_tasks(n_tasks, executor_of(opt), [&](index_t i) {
    const partial_out part = partial_of(i);
    K::run(pb, make_task(i), &part);
  });
  run_tasks(base_tasks, executor_of(opt), [&](index_t bi) {
    const task t = make_task(bi * n_chunks);
    const index_t rows = K::task_rows(pb, t);
    const std::size_t need = static_cast<std::size_t>(rows * (2 + dvp));
    float* acc = thread_scratch(need);
    float* m = acc + rows * dvp;
    float* l = m + rows;
    for (index_t r = 0; r < rows; ++r) {
      m[r] = k_neg_inf;
      for (index_t c = 0; c < n_chunks; ++c) m[r] = std::max(m[r], partial_of(bi * n_chunks + c).m[r]);
      l[r] = 0.0f;
      float* ar = acc + r * dvp;
      std::fill(ar, ar + dvp, 0.0f);
      if (m[r] == k_neg_inf) continue;
      for (index_t c = 0; c < n_chunks; ++c) {
        const partial_out p = partial_of(bi * n_chunks + c);
        if (p.m[r] == k_neg_inf) continue;
        const float w = std::exp2(p.m[r] - m[r]);
        l[r] += p.l[r] * w;
        const float* orow = p.o + r * dvp;
        for (index_t x = 0; x < dvp; ++x) ar[x] += orow[x] * w;
      }
    }
    K::write_rows(pb, t, acc, dvp, m, l);
  });
}

}  // namespace detail::core
GQA_END_NAMESPACE

#endif  // GQA_DETAIL_CORE_FORWARD_HPP
