// gqa/detail/core/forward.hpp: THE blocked attention core (flash-style, one pass, online softmax): the
// problem, the tasks, one task's walk over key blocks, and the scheduler. The parts it composes: tile.hpp
// (the register tile), packed.hpp (tiled path), dot.hpp + direct.hpp (direct path), decode.hpp (decode
// tasks), softmax.hpp (online softmax and split-KV merge), common.hpp (ISA-independent helpers).
// Invariants: never materialises Sq×Skv; each task owns disjoint output rows (or a private partial that
// is merged in a fixed order), so results are bitwise identical for any thread count; extra memory is
// O(tile) per thread, plus the packed K/V blocks of one KV head in prefill (at most 16 MiB per thread, Note
// [packed K/V reuse]), plus O(chunks × rows × d_v) partials when a decode call splits the KV range.
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_DETAIL_CORE_FORWARD_HPP
#define GQA_DETAIL_CORE_FORWARD_HPP

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <new>
#include <numeric>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../head_map.hpp"
#include "../../isa/cpu.hpp"
#include "../../isa/vec.hpp"
#include "../../options.hpp"
#include "../../tensor.hpp"
#include "../../threading/parallel.hpp"
#include "bf16_tiles.hpp"
#include "common.hpp"
#include "decode.hpp"
#include "direct.hpp"
#include "layout.hpp"
#include "modifiers.hpp"
#include "packed.hpp"
#include "softmax.hpp"

GQA_BEGIN_NAMESPACE
namespace detail::core {

/// Everything a task needs, fixed for the call. Lay: where the rows are (Note [layouts]).
template <class Lay>
struct problem {
  Lay lay;
  index_t d, dv, skv;     // skv: the longest key range of a sequence (what chunks cut)
  const head_map* map;
  const index_t* active;  // KV heads that serve at least one query head
  float qscale;           // scale · log2(e)
  bool causal;
  index_t window_left, window_right;  // window_side(): -1 unbounded
  float softcap;                      // in log2 units, 0: off (Note [softcap in log2 units])
  std::span<const float> sinks;       // natural log, per query head, or empty (Note [sinks as a state])
  std::span<const float> alibi;       // ALiBi slopes (natural units), per query head, or empty
  std::span<float> lse;
  index_t block_kv;  // keys per block
  index_t chunk;     // keys per KV chunk (== skv when the call does not split KV)
  bool bf16_tiles;   // prefill products in bf16 (Note [bf16 tiles])
  bool bf16_amx;     // and on AMX tiles (else VDPBF16PS register tiles)
  std::uint64_t call;  // this call's number (next_call_serial), naming what a thread's kept blocks belong to
  index_t keep_blocks; // K/V blocks of a KV head a thread keeps packed, 0: none (Note [packed K/V reuse])
  bool keep_ring;      // and block i in slot i mod keep_blocks (Note [kept blocks as a ring])
  bool decode_loads;   // decode steps' first loads / next-step prefetches (Note [decode first loads])
  index_t decode_ahead;  // 16-bit and int8 decode: keys ahead of each step loaded, 0: none (Note [decode loads ahead])
  bool decode_prefetch;  // 16-bit and int8 decode steps prefetch their lines first (Note [decode prefetches in cache])
  bool i8_products;    // decode's Q·Kᵀ on int8 K by VPDPBUSD, Q quantised (Note [int8 decode products])
  bool pv_key_chunks;  // the tiles' P·V in key chunks where the V slab outgrows L1 (Note [P·V in key chunks])
};

/// One unit of work: batch ib, KV heads active[g0 .. g1), query positions [q0, q1), KV chunk `chunk`.
/// Tiled (prefill) tasks have one KV head; decode tasks take every KV head so that a BSHD cache is read
/// in address order (see Note [decode tasks]).
struct task {
  index_t ib, g0, g1, q0, q1, chunk;
};

template <class Isa, class Lay = dense_layout<>>
struct kernel {
  using problem = core::problem<Lay>;
  using V = isa::vec<Isa>;
  using shape = typename V::tile_shape;
  using tiled = packed<Isa>;
  using softmax = online_softmax<Isa>;
  using tiles16 = bf16_tiles<Isa>;
  static constexpr int L = V::lanes;
  static constexpr index_t cols = tiled::cols;
  static_assert(shape::mr >= 1 && shape::nr >= 1 && shape::rows >= 1 && shape::block_kv >= 1 &&
                    shape::block_kv_large_l2 >= 1 && shape::block_kv_decode >= 1 && shape::direct_qk_rows >= 1 &&
                        (shape::direct_qk_keys == 2 || shape::direct_qk_keys == 4) && shape::direct_acc >= 2,
                "isa::vec<Isa>::tile_shape: see Note [tile shape]");

  /// A task's scratch, in floats from the thread's scratch (every array 64-byte aligned): packed Q, the
  /// packed K/V block, the scores, the rows' state and their key edges in a cut block (edges); with 16-bit
  /// K/V also the block's K rows widened before packing (kw; empty for float K/V); on the bf16 tiles (t16,
  /// Note [bf16 tiles]) the bf16 Q rows (q16), K and V pairs (k16, v16), the rounded weights (p16, row
  /// stride p16_ld bf16) and a 16-row O tail (tail), and the scores padded to whole tiles of rows. bk:
  /// block_kv rounded to whole tiles and whole direct-path key steps; dvp: d_v rounded to the vector width.
  /// total = -1 if the scratch would hold more than max_elements<float> floats (Note [scratch size]).
  struct layout {
    index_t dvp, bk, qp, kp, vp, s, o, m, l, edges, kw, q16, k16, v16, p16, p16_ld, tail, q8, q8m, q8b, total;
  };
  static constexpr bool widens_kv = !std::is_same_v<typename Lay::kv_type, float>;
  /// Whether this core may take the bf16 tiles: bf16 Q and K/V on an ISA that has them.
  static constexpr bool bf16_capable = tiles16::available && std::is_same_v<typename Lay::kv_type, bf16> &&
                                       std::is_same_v<typename Lay::q_type, bf16>;
  /// Whether this core may take the int8 decode products: int8 K/V on an ISA that has them.
  static constexpr bool i8_capable =
      i8_decode<Isa>::available && std::is_same_v<typename Lay::kv_type, std::int8_t>;

  // Note [scratch size]
  // The arrays' sizes are products of user extents (rows · d, bk · d, ...). Each factor is bounded by a
  // view's element count (Note [view sizes]), but a product of two need not be: d = 2^60 passes
  // check_view and bk · d does not fit index_t. So plan_scratch forms every product and sum with checked
  // arithmetic; forward() plans its largest task before any work and throws std::bad_alloc (memory that
  // no allocator could provide) if it does not fit, so run() plans only layouts that fit.
  static layout plan_scratch(index_t rows, index_t d, index_t dv, index_t block_kv, bool t16 = false,
                             bool i8 = false) noexcept {
    constexpr index_t M = max_elements<float>;
    layout s{};
    s.dvp = round_up(dv, L);  // dv <= M - L: a view's count; no overflow
    s.bk = round_up(block_kv, std::lcm(cols, k_direct_keys));
    index_t off = 0;
    bool fits = true;
    auto carve = [&](index_t a, index_t b) {
      const index_t at = off;
      index_t n = 0;
      fits = fits && checked_mul(a, b, M - 16, n) && checked_add(off, round_up(n, 16), M, off);
      return at;
    };
    s.qp = carve(rows, d);
    s.kp = carve(s.bk, d);
    s.vp = carve(s.bk, s.dvp);
    // bf16 tiles: rows padded to 16, d to 32 and keys to 32 (each bf16 array in floats: half its elements).
    const index_t rows16 = t16 ? round_up(rows, 16) : rows, d32 = t16 ? round_up(d, 32) : 0;
    s.p16_ld = t16 ? round_up(s.bk, 32) : 0;
    s.s = carve(rows16, s.bk);
    s.o = carve(rows, s.dvp);
    s.m = carve(rows, 1);
    s.l = carve(rows, 1);
    s.edges = carve(rows, 2);  // two std::int32_t per row (Note [row edges of a cut block])
    s.kw = carve(widens_kv ? s.bk : 0, d);
    s.q16 = carve(t16 ? rows16 : 0, d32 / 2);
    s.k16 = carve(t16 ? s.bk : 0, d32 / 2);
    s.v16 = carve(t16 ? s.p16_ld / 2 : 0, s.dvp);
    s.p16 = carve(t16 ? rows16 : 0, s.p16_ld / 2);
    s.tail = carve(t16 ? 16 : 0, s.dvp);
    // int8 decode products: the rows quantised (d padded to 64 bytes, in floats a quarter), factors, biases.
    s.q8 = carve(i8 ? rows : 0, round_up(d, 64) / 4);
    s.q8m = carve(i8 ? rows : 0, 1);
    s.q8b = carve(i8 ? rows : 0, 1);
    s.total = fits ? off : -1;
    return s;
  }

  // Note [tile rows]
  // A task takes one (batch, KV head) and a block of query positions, and makes every query head of that
  // KV head's group a row of the same tile: row r is (position q0 + r / G, head r % G). Each K/V block is
  // then packed once and used by G·block_q rows, which is what makes GQA cheaper than MHA in memory
  // traffic and what lets decode (block_q = 1) still fill the register tile's rows with the group's
  // heads. A decode task stacks the rows of its KV heads g0, g0 + 1, … in that order.

  /// Rows of a task: for each KV head in [g0, g1), its group's heads × the task's positions.
  static index_t task_rows(const problem& pb, const task& t) noexcept {
    index_t rows = 0;
    for (index_t gi = t.g0; gi < t.g1; ++gi) rows += pb.map->group_size(pb.active[gi]) * (t.q1 - t.q0);
    return rows;
  }

  /// fn(row, position, query head) for every row of task t, in tile order (Note [tile rows]).
  template <class Fn>
  static void for_each_row(const problem& pb, const task& t, Fn&& fn) noexcept {
    index_t row = 0;
    for (index_t gi = t.g0; gi < t.g1; ++gi) {
      const auto heads = pb.map->q_heads(pb.active[gi]);
      const index_t G = static_cast<index_t>(heads.size());
      for (index_t r = 0; r < G * (t.q1 - t.q0); ++r, ++row)
        fn(row, t.q0 + r / G, heads[static_cast<std::size_t>(r % G)]);
    }
  }

  /// The keys query position pos of sequence ib sees (visible_key_range() with the sequence's key count,
  /// Lay::kv_len: kv_lengths, else skv, for dense views, and its query count). lo and hi are non-decreasing
  /// in pos.
  static key_range visible_keys(const problem& pb, index_t ib, index_t pos) noexcept {
    return visible_key_range(pos, pb.lay.q_len(ib), pb.lay.kv_len(ib), pb.causal, pb.window_left, pb.window_right);
  }

  /// Most keys in a block (the paged path's row pointers live on the stack).
  static constexpr index_t max_block = std::max({shape::block_kv, shape::block_kv_large_l2, shape::block_kv_decode}) +
                                       std::lcm(cols, k_direct_keys);

  /// Row pointers of one block's keys, on the stack: needed only when rows are listed (paged).
  struct no_row_pointers {};
  struct row_pointers {
    const typename Lay::kv_type* k[max_block];
    const typename Lay::kv_type* v[max_block];
  };
  struct q8_row_pointers : row_pointers {  // int8 pages: each key's scales too (KV head 0's)
    const float* ks[max_block];
    const float* vs[max_block];
  };
  using block_pointers = std::conditional_t<
      Lay::paged, std::conditional_t<quantised_kv<typename Lay::kv_type>, q8_row_pointers, row_pointers>,
      no_row_pointers>;

  /// A paged block lists its keys' rows of KV head 0 in `ptr` (once per block; the heads add their offset).
  static GQA_FORCEINLINE void list_rows(const problem& pb, index_t ib, index_t j0, index_t nb,
                                        block_pointers& ptr) noexcept {
    if constexpr (Lay::paged) {
      auto cur = pb.lay.kv_cursor(ib, j0);
      for (index_t j = 0; j < nb; ++j, cur.next()) {
        const kv_loc at = cur.loc();
        ptr.k[j] = pb.lay.k.row(at.b, at.s, 0);
        ptr.v[j] = pb.lay.v.row(at.b, at.s, 0);
        if constexpr (quantised_kv<typename Lay::kv_type>) {
          ptr.ks[j] = pb.lay.scales.k.row(at.b, at.s, 0);
          ptr.vs[j] = pb.lay.scales.v.row(at.b, at.s, 0);
        }
      }
    }
  }

  /// The K and V row sources (Note [key runs]) of the block's keys from j0 of KV head g of sequence ib (a
  /// paged block's rows as list_rows() left them in `ptr`).
  static GQA_FORCEINLINE auto block_rows(const problem& pb, index_t ib, index_t g, index_t j0,
                                         const block_pointers& ptr) noexcept {
    using T = typename Lay::kv_type;  // named, not deduced: clang 14 has no aggregate deduction
    const auto& k = pb.lay.k;
    const auto& v = pb.lay.v;
    if constexpr (Lay::paged && quantised_kv<T>) {  // Note [int8 K/V]
      const auto& sc = pb.lay.scales;
      return std::pair{paged_q8_rows{{ptr.k, g * k.stride_h}, ptr.ks, g * sc.k.stride_h},
                       paged_q8_rows{{ptr.v, g * v.stride_h}, ptr.vs, g * sc.v.stride_h}};
    } else if constexpr (Lay::paged) {
      return std::pair{paged_rows<T>{ptr.k, g * k.stride_h}, paged_rows<T>{ptr.v, g * v.stride_h}};
    } else if constexpr (quantised_kv<T>) {  // Note [int8 K/V]
      const kv_loc at = pb.lay.kv_cursor(ib, j0).loc();
      const auto& sc = pb.lay.scales;
      return std::pair{q8_rows{{k.row(at.b, at.s, g), k.stride_s}, sc.k.row(at.b, at.s, g), sc.k.stride_s},
                       q8_rows{{v.row(at.b, at.s, g), v.stride_s}, sc.v.row(at.b, at.s, g), sc.v.stride_s}};
    } else {
      const kv_loc at = pb.lay.kv_cursor(ib, j0).loc();
      return std::pair{strided_rows<T>{k.row(at.b, at.s, g), k.stride_s},
                       strided_rows<T>{v.row(at.b, at.s, g), v.stride_s}};
    }
  }

  /// A prefetch_rows over the n keys from j0 of KV head g of sequence ib (n <= 0: none), in `steps` steps;
  /// no_prefetch for a paged layout, whose next block's rows are not listed yet (Note [prefetch next block]).
  static GQA_FORCEINLINE auto next_block(const problem& pb, index_t ib, index_t g, index_t j0, index_t n,
                                         const block_pointers& ptr, index_t steps) noexcept {
    if constexpr (Lay::paged) {
      return no_prefetch{};
    } else {
      using rows = decltype(block_rows(pb, ib, g, j0, ptr));
      if (n <= 0) return prefetch_rows<typename rows::first_type, typename rows::second_type>{};
      const auto [k, v] = block_rows(pb, ib, g, j0, ptr);
      constexpr auto e = static_cast<index_t>(sizeof(typename Lay::kv_type));
      const index_t kb = pb.d * e, vb = pb.dv * e;
      const index_t lines = n * ((kb + 63) / 64 + (vb + 63) / 64 + 2);  // + 2: rows may straddle a line
      using list = kv_row_list<typename rows::first_type, typename rows::second_type>;
      return prefetch_rows<typename rows::first_type, typename rows::second_type>{list{k, v, n, kb, vb},
                                                                                  (lines + steps - 1) / steps};
    }
  }

  // Note [prefetch next Q]
  // A prefill task starts by packing its Q rows, G · block_q rows of d elements hq · d elements apart in a
  // BSHD view: each position's rows start a new stride the hardware prefetcher does not follow, so the
  // packing waited on L3 or memory for every position (perf, P3 on AVX-512: the Q pack ~4% of the time). So
  // during its KV block a task of one KV block prefetches (into L2) the Q rows of the task that usually
  // follows it on the same thread: the next query block of its KV head, or, after the last, the first
  // query block of the next KV head (Note [forward task order]). A hint only: another thread may take that
  // task. When that task is of the next KV head, whose K and V blocks this thread has not packed yet, the
  // task also prefetches that head's K and V rows of its own key range (the next task usually sees the
  // same keys: all of them, for P3). Measured (2 vCPUs of an AMD EPYC, one thread, 2026-12-04, two builds
  // alternating): P3 1.009x (Q), then 1.005x and 1.007x (K and V; two threads 1.007x); on P2 (a task of
  // many KV blocks, whose Q pack is a small part of it) prefetching Q during the first block made it 1.6%
  // slower, so tasks of several blocks do not.
  /// The Q rows (or, when `out`, the O rows) of positions [pos, pos_end) × `heads`, position by position
  /// (the rows prefetch_q walks).
  struct q_row_list {
    const problem* pb = nullptr;
    index_t ib = 0, pos = 0, pos_end = 0, hi = 0, row_bytes = 0;
    std::span<const index_t> heads;
    bool out = false;
    byte_span next() noexcept {
      if (pos >= pos_end) return {};
      const index_t h = heads[static_cast<std::size_t>(hi)];
      const auto* p = out ? reinterpret_cast<const char*>(pb->lay.o_row(ib, pos, h))
                          : reinterpret_cast<const char*>(pb->lay.q_row(ib, pos, h));
      if (++hi == static_cast<index_t>(heads.size())) hi = 0, ++pos;
      return {p, row_bytes};
    }
  };
  using prefetch_q = prefetch_row_lines<q_row_list>;
  /// Where the task after t (one KV head g) usually starts on the same thread (Note [forward task order]):
  /// KV head g at t.q1, or, after g's last query block, the next KV head that serves a query head at 0;
  /// g = −1 when there is none.
  struct next_start {
    index_t g, q0;
  };
  static next_start next_task_start(const problem& pb, const task& t, index_t g) noexcept {
    if (t.q1 < pb.lay.q_len(t.ib)) return {g, t.q1};
    index_t ng = g + 1;
    while (ng < pb.map->hkv() && pb.map->group_size(ng) == 0) ++ng;
    return {ng < pb.map->hkv() ? ng : -1, 0};
  }
  /// The prefetch of the Q rows (or, when `out`, the O rows) of positions [pos, pos_end) of sequence ib ×
  /// the query heads of KV head g, spread over `steps` calls.
  static prefetch_q row_prefetch(const problem& pb, index_t ib, index_t g, index_t pos, index_t pos_end, bool out,
                                 index_t steps) noexcept {
    prefetch_q p;
    q_row_list& r = p.rows;
    r.pb = &pb;
    r.ib = ib;
    r.pos = pos;
    r.pos_end = pos_end;
    r.heads = pb.map->q_heads(g);
    r.out = out;
    r.row_bytes = out ? pb.dv * static_cast<index_t>(sizeof(*pb.lay.o_row(0, 0, 0)))
                      : pb.d * static_cast<index_t>(sizeof(*pb.lay.q_row(0, 0, 0)));
    const index_t lines = (r.pos_end - r.pos) * static_cast<index_t>(r.heads.size()) * (r.row_bytes / 64 + 2);
    p.per_step = (lines + steps - 1) / std::max<index_t>(steps, 1);
    return p;
  }
  /// The prefetch_q of the npos query positions from `next` (next_task_start), spread over `steps` calls.
  static prefetch_q next_q_rows(const problem& pb, index_t ib, index_t npos, next_start next, index_t steps) noexcept {
    if (next.g < 0) return {};
    return row_prefetch(pb, ib, next.g, next.q0, std::min(pb.lay.q_len(ib), next.q0 + npos), false, steps);
  }

  // Note [prefetch O rows]
  // write_rows stores a task's O rows, G · block_q rows of dv elements hq · dv elements apart: each store
  // misses, and the stores wait for their lines one after another at the task's end (perf, P2's heads at S
  // 4096 with a 512-key window on an Intel Xeon: write_rows 5.8% of the time for 64 MiB of O). So a tiled
  // task's last block prefetches (into L2) the task's O rows over its score tiles and softmax rows, like
  // the next task's Q rows (Note [prefetch next Q]). Measured (Intel Xeon, 2026-12-04, one thread, call by
  // call, both link orders): window 512 1.007x and 1.028x (write_rows 5.8% -> 1% of the time), P1 1.003x
  // and 1.001x.

  /// p[0, n) = −inf, a vector at a time (std::fill stored one float at a time: 2% of P3's time for the
  /// 11 padding scores of each row).
  static GQA_FORCEINLINE void fill_neg_inf(float* p, index_t n) noexcept {
    const auto v = V::set1(k_neg_inf);
    index_t c = 0;
    for (; c + L <= n; c += L) V::store(p + c, v);
    if (c < n) V::store_partial(p + c, v, static_cast<int>(n - c));
  }

  /// Row r (of KV head g's rows, Note [tile rows]) of a block's scores from key j0, srow its columns: the
  /// softcap and then ALiBi (options.hpp; relative to the row's diagonal key) on columns [c0, c1), then
  /// −inf on [f0, a) and [b, f1), the columns outside the row's keys [a, b) (masked keys, padding).
  static GQA_FORCEINLINE void modify_scores(const problem& pb, const task& t, index_t g, index_t j0, index_t r, float* srow,
                                            index_t c0, index_t c1, index_t f0, index_t a, index_t b,
                                            index_t f1) noexcept {
    if (pb.softcap > 0.0f) score_modifiers<Isa>::softcap(srow + c0, c1 - c0, pb.softcap);
    if (!pb.alibi.empty()) {
      const index_t G = pb.map->group_size(g);
      const index_t diag = t.q0 + r / G + (pb.lay.kv_len(t.ib) - pb.lay.q_len(t.ib));
      const index_t h = pb.map->q_heads(g)[static_cast<std::size_t>(r % G)];
      score_modifiers<Isa>::alibi(srow + c0, c1 - c0, pb.alibi[static_cast<std::size_t>(h)] * k_log2e,
                                  static_cast<float>(diag - j0 - c0));
    }
    fill_neg_inf(srow + f0, a - f0);
    fill_neg_inf(srow + b, f1 - b);
  }

  // Note [row edges of a cut block]
  // In a cut block the score tiles (hidden), the mask (modify_row) and P·V's band read the rows' key
  // edges again and again: band() alone asks for a few per tile of rows and key chunk (Note [P·V in key
  // chunks]), and each was a division r / G and visible_keys. They are computed once per position into
  // the task's scratch (block-relative, so they fit 32 bits) and read from there. Measured (Intel Xeon,
  // 2026-12-05, one thread, call by call, both link orders, same bits): P2 AVX-512 1.003-1.014x, AVX2
  // 1.012-1.019x, P2's heads at S 4096 with a 512-key window 1.036-1.065x.
  /// edges[2r], edges[2r + 1] = the keys [lo, hi) of the block [j0, j0 + nb) that row r of task t sees,
  /// relative to j0 (non-decreasing in r within a KV head's rows: rows go by position, Note [tile rows]).
  static void set_edges(const problem& pb, const task& t, index_t j0, index_t nb, std::int32_t* edges) noexcept {
    const auto in_block = [&](index_t x) noexcept { return static_cast<std::int32_t>(std::clamp<index_t>(x - j0, 0, nb)); };
    index_t r = 0;
    for (index_t gi = t.g0; gi < t.g1; ++gi) {
      const index_t G = pb.map->group_size(pb.active[gi]);
      for (index_t pos = t.q0; pos < t.q1; ++pos) {
        const key_range kr = visible_keys(pb, t.ib, pos);
        const std::int32_t a = in_block(kr.lo), b = in_block(kr.hi);
        for (index_t x = 0; x < G; ++x, ++r) {
          edges[2 * r] = a;
          edges[2 * r + 1] = b;
        }
      }
    }
  }

  // Note [fused decode walk]
  // A decode task's block went in two passes: the walk computed the scores of every KV head for the
  // block's 64 keys (and loaded one float per cache line of V), then each head ran its online softmax and
  // P·V on the block, reading its V rows again from L2. While P·V ran no load went to memory, and while
  // the walk waited for memory no P·V could run: their times added up (design.md §2.4). Now each head's
  // softmax and P·V take the keys a unit of 32 at a time (decode::unit_keys), and with fp32 K/V a unit's
  // run right after its scores (decode::walk): P·V reads the unit's V rows from memory in the walk's
  // address order, and its FMAs sit between the stream's loads, where the out-of-order core overlaps
  // them with the misses. 16-bit and int8 decode is bound by its arithmetic, not by memory, and each
  // extra pass over the block costs it: there the units' softmax and P·V follow the whole block's scores,
  // as before. Either way a row's state goes through the same updates, unit by unit in key order, so a
  // 16-bit or int8 call gives the bits of the fp32 call on the widened values (the low-precision suite
  // asserts it), on every path. The online softmax's unit is the 32-key unit instead of the block: the
  // same update (the row's max, p = 2^(s − m), l and O rescaled only when the max moved), so Notes [fully
  // masked rows] and [non-finite inputs] hold as before; l and O round differently in their last bits.
  // Masks and modifiers apply to the unit's columns as they applied to the block's: a cut block's rows
  // take only their keys of the unit into P·V (a band over the unit, Note [causal staircase]), and the
  // columns past the block's last key are −inf and enter no product.
  // Measured (Intel Xeon, 2026-12-05, one thread, the two versions call by call in one process, D1's
  // heads, 16384 keys): fp32 AVX-512 1.136x (16-key units 1.145x, the whole block 1.015x), AVX2 1.26x;
  // bf16 0.971x and int8 0.967x (AVX2 0.978x, 0.986x): their softmax makes twice as many row passes as
  // with 64-key units. With the softmax and P·V fused for bf16 and int8 too (16-key units), 0.88x.
  // gqa_bench, the builds before and after alternating: fp32 D1 1.04-1.20x (AVX2 1.24-1.47x), at 0.74 of
  // the read probe; bf16, f16 and int8 0.95-1.00x (docs/benchmarks.md).
  /// One block of a decode task (keys [j0, j0 + nb) of every KV head of task t, `after` more keys of the
  /// task past it; lo/hi: the task's rows' edges when the block is cut, Note [row edges of a cut block]),
  /// through decode::walk (Note [fused decode walk]).
  template <class Lo, class Hi>
  static void decode_block(const problem& pb, const task& t, index_t npos, index_t j0, index_t nb, index_t after,
                           bool cut,
                           const block_pointers& ptr, const float* qp, const std::uint16_t* q16, const q8_query* q8,
                           [[maybe_unused]] std::uint16_t* p16, float* sc, row_state st, const layout& lay,
                           const Lo& lo, const Hi& hi) noexcept {
    // The walk's whole units of scores fit the block's rows (lay.bk).
    static_assert(round_up(shape::block_kv_decode, std::lcm(cols, k_direct_keys)) % decode<Isa>::unit_keys == 0);
    const std::span<const index_t> heads{pb.active + t.g0, pb.active + t.g1};
    decode<Isa>::walk(pb.lay, t.ib, *pb.map, heads, npos, j0, nb, after, pb.decode_loads, pb.decode_ahead,
                      pb.decode_prefetch, qp, q16, q8, pb.qscale, sc, lay.bk,
                      [&](index_t i, index_t r0, index_t x, index_t n) noexcept {
      const index_t g = heads[static_cast<std::size_t>(i)];
      const index_t G = pb.map->group_size(g), rows = G * npos;
      const index_t nw = round_up(n, L);  // the unit's columns the softmax reads; past n they are −inf
      float* const srow0 = sc + r0 * lay.bk;
      float* const orow0 = st.o + r0 * lay.dvp;
      const auto [kb, vb] = block_rows(pb, t.ib, g, j0, ptr);
      // This head's rows' keys of the unit (a cut block's edges clamped to [x, x + n)).
      const auto klo = [&](index_t r) noexcept { return std::clamp(lo(r0 + r), x, x + n); };
      const auto khi = [&](index_t r) noexcept { return std::clamp(hi(r0 + r), x, x + n); };
      // int8 K: the scores times their K scales (the walk's integer products applied them already).
      if constexpr (scaled_rows<decltype(kb)>) {
        if (q8 == nullptr) direct<Isa>::scale_columns(kb, x, x + n, srow0, rows, lay.bk);
      }
      const auto modify_row = [&](index_t r) noexcept {  // the unit's columns [x, x + nw)
        const index_t a = cut ? klo(r) : x, b = cut ? std::max(klo(r), khi(r)) : x + n;
        modify_scores(pb, t, g, j0, r, srow0 + r * lay.bk, x, x + nw, x, a, b, x + nw);
      };
      softmax::update_rows(srow0 + x, lay.bk, nw, rows, st.m + r0, st.l + r0, orow0, lay.dvp, modify_row,
                           [](index_t) noexcept {});
      if constexpr (i8_capable && integer_pv<decltype(vb)>) {
        if (q8 != nullptr && !cut) {  // Note [int8 decode P·V] (V's scales applied there); a cut unit: below
          pv_int8(vb, pb.dv, x, x + n, srow0, rows, lay.bk, lay.dvp, orow0);
          return;
        }
      }
      if constexpr (scaled_rows<decltype(vb)>) direct<Isa>::scale_columns(vb, x, x + n, srow0, rows, lay.bk);
      if constexpr (bf16_capable) {
        if (q16 != nullptr && !cut) {  // Note [bf16 decode]; a cut unit takes the fp32 band below
          for (index_t r = 0; r < rows; ++r) tiles16::round_row(srow0 + r * lay.bk + x, nw, p16 + r * lay.p16_ld);
          tiles16::decode_pv(vb, pb.dv, x, n, p16, rows, lay.p16_ld, lay.dvp, orow0);
          return;
        }
      }
      if (cut) {
        direct<Isa>::accumulate_pv_cut(vb, pb.dv, klo, khi, srow0, rows, lay.bk, lay.dvp, orow0);
      } else {
        direct<Isa>::accumulate_pv(vb, pb.dv, x, x + n, srow0, rows, lay.bk, lay.dvp, orow0);
      }
    });
  }

  /// Whether pv_int8 takes these V rows: int8 rows, at one stride (dense and ragged) or listed one pointer
  /// per key (paged: a chunk across pages takes the fp32 products there).
  template <class Rows>
  static constexpr bool integer_pv = std::is_same_v<std::remove_cvref_t<Rows>, q8_rows> ||
                                     std::is_same_v<std::remove_cvref_t<Rows>, paged_q8_rows>;

  /// direct::scale_columns and accumulate_pv of an int8 V (v: q8_rows or paged_q8_rows) in integers, in
  /// i8_decode's chunks of keys (Note [int8 decode P·V]): O[r] += Σ_{lo<=j<hi} (P[r][j] · scale_j) · V[j]
  /// for r < rows (<= 64); a row whose chunk of weights cannot be rounded, and every row of a chunk whose V
  /// rows are not at one stride, take that chunk's fp32 products (P scaled in place).
  template <class Rows>
  static void pv_int8(const Rows& v, index_t dv, index_t lo, index_t hi, float* p, index_t rows, index_t ldp,
                      index_t dvp, float* o) noexcept {
    constexpr index_t C = i8_decode<Isa>::pv_chunk;
    alignas(64) float vs[C];
    for (index_t c = lo; c < hi; c += C) {
      const index_t nc = std::min(C, hi - c);
      for (index_t j = 0; j < nc; ++j) vs[j] = v.scale(c + j);
      // The chunk's V rows at one stride: always for dense and ragged rows, for a paged block's when the
      // chunk lies in one page (every chunk when the page size is a multiple of 64). A chunk across pages
      // takes the fp32 products (Note [int8 decode P·V]).
      index_t ldv = 0;
      bool strided = true;
      if constexpr (std::is_same_v<Rows, q8_rows>) {
        ldv = v.values.stride;
      } else {
        ldv = nc > 1 ? static_cast<index_t>(v(c + 1) - v(c)) : 0;
        for (index_t j = 2; j < nc && strided; ++j) strided = v(c + j) == v(c + j - 1) + ldv;
      }
      if (!strided) {
        for (index_t r = 0; r < rows; ++r)
          for (index_t j = 0; j < nc; ++j) p[r * ldp + c + j] *= vs[j];
        direct<Isa>::accumulate_pv(v, dv, c, c + nc, p, rows, ldp, dvp, o);
        continue;
      }
      std::uint64_t left = i8_decode<Isa>::decode_pv(static_cast<int>(rows), p + c, ldp, nc, v(c), ldv, vs, dv, o, dvp);
      for (; left != 0; left &= left - 1) {
        const auto r = static_cast<index_t>(std::countr_zero(left));
        for (index_t j = 0; j < nc; ++j) p[r * ldp + c + j] *= vs[j];
        direct<Isa>::accumulate_pv(v, dv, c, c + nc, p + r * ldp, 1, ldp, dvp, o + r * dvp);
      }
    }
  }

  /// Runs one task; writes final rows to o (and lse), or, if part != nullptr, its state over its chunk.
  /// Throws only std::bad_alloc, when the thread's scratch cannot grow, before it writes anything.
  static void run(const problem& pb, const task& t, const row_state* part) {
    const index_t npos = t.q1 - t.q0;
    const index_t rows = task_rows(pb, t);
    const index_t d = pb.d, dv = pb.dv;
    // The bf16 tiles take the tiled tasks of a call that allows them (Note [bf16 tiles]), and on VDPBF16PS
    // a one-KV-head task of 20 rows or more that the direct path would take (Note [bf16 tiles for few rows]).
    const bool t16 = bf16_capable && pb.bf16_tiles && t.g1 - t.g0 == 1 &&
                     (rows > k_direct_rows || few_rows_take_tiles16(rows, pb.bf16_amx));
    // Decode tasks (several KV heads) of such a call take VDPBF16PS where it is the engine, when every head has
    // 4 rows or more (Note [bf16 decode]).
    bool d16 = bf16_capable && pb.bf16_tiles && !pb.bf16_amx && t.g1 - t.g0 > 1;
    for (index_t gi = t.g0; gi < t.g1 && d16; ++gi) d16 = pb.map->group_size(pb.active[gi]) * npos >= 4;
    // The tasks of an int8 decode call (the walk's, or one KV head's on the direct path) take VPDPBUSD for
    // Q·Kᵀ where the call allows it (Note [int8 decode products]).
    bool d8 = i8_capable && pb.i8_products;
    const layout lay = plan_scratch(rows, d, dv, pb.block_kv, t16 || d16, d8);
    float* ws = thread_scratch(static_cast<std::size_t>(lay.total));
    float* qp = ws + lay.qp;
    float* kp = ws + lay.kp;
    float* vp = ws + lay.vp;
    float* sc = ws + lay.s;
    const row_state st = part ? *part : row_state{ws + lay.m, ws + lay.l, ws + lay.o};

    const key_range first = visible_keys(pb, t.ib, t.q0), last = visible_keys(pb, t.ib, t.q1 - 1);
    const index_t c_lo = t.chunk * pb.chunk;
    const index_t c_hi = std::min<index_t>(c_lo + pb.chunk, pb.skv);
    const index_t kv_lo = std::max(c_lo, first.lo);  // no row sees before this (window: O(window) per row)
    const index_t kv_hi = std::min(c_hi, last.hi);   // nor past this
    // Every row sees [last.lo, first.hi) (empty if first.hi <= last.lo): blocks inside it need no mask.

    // Pack Q (scaled into log2 units, see Note [base-2 softmax]) and reset the running state. 16-bit Q is
    // widened a vector at a time and then scaled: the same fp32 product per element (Note [16-bit Q/O]).
    // The bf16 tiles take Q's bf16 rows as they are (padded with zeros to whole tiles; the weights' padding
    // rows are zero too) and scale the scores instead (Note [bf16 tiles]).
    auto* q16 = reinterpret_cast<std::uint16_t*>(ws + lay.q16);
    auto* k16 = reinterpret_cast<std::uint32_t*>(ws + lay.k16);
    auto* v16 = reinterpret_cast<std::uint32_t*>(ws + lay.v16);
    auto* p16 = reinterpret_cast<std::uint16_t*>(ws + lay.p16);
    auto* edges = reinterpret_cast<std::int32_t*>(ws + lay.edges);  // Note [row edges of a cut block]
    if constexpr (bf16_capable) {
      if (t16 || d16) {
        const index_t dp = tiles16::padded_d(d), rows16 = tiles16::padded_rows(rows);
        for_each_row(pb, t, [&](index_t row, index_t pos, index_t h) noexcept {
          tiles16::pack_q_row(pb.lay.q_row(t.ib, pos, h), d, q16 + row * dp);
        });
        std::fill(q16 + rows * dp, q16 + rows16 * dp, std::uint16_t{0});
        std::fill(p16 + rows * lay.p16_ld, p16 + rows16 * lay.p16_ld, std::uint16_t{0});
      }
    }
    // int8 decode products: each row widened unscaled, then quantised; a row that cannot be (a non-finite
    // element) sends the task back to the fp32 products (Note [int8 decode products]).
    q8_query q8{};
    if constexpr (i8_capable) {
      if (d8) {
        auto* q8q = reinterpret_cast<std::int8_t*>(ws + lay.q8);
        auto* q8m = ws + lay.q8m;
        auto* q8b = reinterpret_cast<std::int32_t*>(ws + lay.q8b);
        const index_t ld = i8_decode<Isa>::padded_d(d);
        q8 = q8_query{q8q, ld, q8m, q8b};
        for_each_row(pb, t, [&](index_t row, index_t pos, index_t h) noexcept {
          tiled::widen(pb.lay.q_row(t.ib, pos, h), d, 1.0f, qp + row * d);
          float sq = 0.0f;
          std::int32_t sum = 0;
          d8 = d8 && i8_decode<Isa>::quantize_row(qp + row * d, d, q8q + row * ld, sq, sum);
          q8m[row] = pb.qscale * sq;
          q8b[row] = 128 * sum;
        });
      }
    }
    // (A task whose rows were all quantised reads no qp: its rows stay unscaled there.)
    if (!t16 && !d16 && !d8) {
      for_each_row(pb, t, [&](index_t row, index_t pos, index_t h) noexcept {
        tiled::widen(pb.lay.q_row(t.ib, pos, h), d, pb.qscale, qp + row * d);  // q · qscale, vector by vector
      });
    }
    std::fill(st.m, st.m + rows, k_neg_inf);
    std::fill(st.l, st.l + rows, 0.0f);
    std::fill(st.o, st.o + rows * lay.dvp, 0.0f);
    // Note [sinks as a state]
    // A sink is a key with score sink·log2(e) and a zero value row, so it is simply the state of a row
    // that has seen it: m = sink·log2(e), l = 1, O = 0. The first KV chunk of a row starts from it
    // (later chunks of a split row start empty, and the merge adds the sink once); everything after is
    // the ordinary online softmax, the LSE includes it, and a row that sees no key ends as O = 0 / 1 = 0
    // with LSE = sink (write_rows writes the sink itself there, exactly).
    if (!pb.sinks.empty() && t.chunk == 0) {
      for_each_row(pb, t, [&](index_t row, index_t, index_t h) noexcept {
        st.m[row] = pb.sinks[static_cast<std::size_t>(h)] * k_log2e;
        st.l[row] = 1.0f;
      });
    }

    // A task is either one KV head on the tiled path (prefill) or several KV heads that all take the
    // direct path (decode). Decode tasks walk their keys in address order, eight at a time, and run each
    // head's softmax and P·V on 32 keys at a time, for fp32 K/V right after their scores (Notes [decode
    // tasks], [fused decode walk]).
    const bool key_major = t.g1 - t.g0 > 1;
    const kept_blocks keep = keep_for(pb, t, rows, t16, lay);
    block_pointers ptr;
    prefetch_q pf_q;  // the next query block's Q rows (Note [prefetch next Q])
    [[maybe_unused]] const auto tile_state = tile_session(t16 && pb.bf16_amx);
    // Note [windows on the block grid]
    // A task's blocks start at its first visible key, kv_lo. With a sliding window that key is q0 − window,
    // not a multiple of bk, so no block was ever the one a thread keeps (Note [packed K/V reuse]) and every
    // task packed its whole range again (P2's heads at S 4096, window 512, AVX-512: K transposition and V
    // copies 8% of the time). So when a task keeps blocks and its range spans two blocks or more, its
    // blocks lie on the grid of multiples of bk, as the kept ones do; the first is computed from the
    // slice (packed::slice_at) holding kv_lo, so it scores at most one slice of keys no row sees. Shorter
    // ranges keep their one block from kv_lo: with window 100 the rounding cost more than the packing it
    // saved (0.91x). Measured (Intel Xeon,
    // 2026-12-04, P2's heads at S 4096, causal + window, one thread, the two versions alternating call by
    // call, medians): AVX-512 window 512 1.033-1.042x, 1024 1.079x, 2048 1.075x, windows of 384 and less
    // unchanged; AVX2 (bk 128) window 300 1.010x, 512 1.028x, 1024 1.038x; with the builds linked in the
    // other order (code placement, Note [hidden tiles]) window 512 1.056x, 1024 1.12x, AVX2 512 1.029x.
    // For windowed calls longer than the kept blocks see Note [kept blocks as a ring]. The blocks' edges
    // move, so the last bits of a windowed result changed (they depend on the shapes only, as before).
    const bool on_grid = keep.at != nullptr && kv_hi - kv_lo >= 2 * lay.bk;
    // Note [whole kept blocks]
    // A kept block is packed with every key the sequence has in it, not only the keys of the task that
    // packs it: a causal or windowed task's last block is cut at its last row's diagonal, and packed that
    // short it was packed again by each later task that needed more of it (2-3 times per block with 96
    // positions per task and 256 keys per block). scores() computes a key range of the packed block (its
    // slices cut at the range's end), so the same scores come from it (same bits); keys past a task's
    // range are scored only up to the end of its last vector (then masked) and never read from V. Measured (Intel Xeon, 2026-12-04, one thread, call by call,
    // both link orders): AVX-512 P2's heads causal S 2048 1.022x and 1.014x, window 512 at S 4096 1.038x
    // and 0.994x; AVX2 0.997-1.004x. Any other block holds the task's keys only.
    const index_t kv_len = pb.lay.kv_len(t.ib);
    const auto packed_keys = [&](index_t jb) noexcept {
      return std::min(lay.bk, (keep.slot(jb, lay.bk) >= 0 ? kv_len : kv_hi) - jb);
    };
    // Blocks of keys [jb, jb + nbb) (nbk of them packed); the work of each starts skip keys in, at j0.
    for (index_t jb = on_grid ? kv_lo / lay.bk * lay.bk : kv_lo; jb < kv_hi; jb += lay.bk) {
      const index_t nbb = std::min(lay.bk, kv_hi - jb), nbk = packed_keys(jb), nbl = round_up(nbk, L);
      const index_t skip = jb < kv_lo ? tiled::slice_at(nbl, kv_lo - jb) : 0;
      const index_t j0 = jb + skip, nb = nbb - skip;  // the keys this block computes
      const index_t nbp = round_up(nb, L);
      const bool cut = j0 < last.lo || j0 + nb > first.hi;  // some row's mask edge cuts inside the block
      list_rows(pb, t.ib, jb, nbk, ptr);
      // Keys [lo(r), hi(r)) of the block row r (of the task) sees: set only in a cut block, the only one
      // that reads them (Note [row edges of a cut block]).
      const auto lo = [edges](index_t r) noexcept { return index_t{edges[2 * r]}; };
      const auto hi = [edges](index_t r) noexcept { return index_t{edges[2 * r + 1]}; };
      if (cut) set_edges(pb, t, j0, nb, edges);
      if (key_major) {
        decode_block(pb, t, npos, j0, nb, kv_hi - (j0 + nb), cut, ptr, qp, d16 ? q16 : nullptr, d8 ? &q8 : nullptr,
                     p16, sc, st, lay, lo, hi);
        continue;
      }
      // A task of one KV head (tiled, or direct for few rows): its rows are the task's.
      for (index_t gi = t.g0, r0 = 0; gi < t.g1; ++gi) {
        const index_t g = pb.active[gi];
        const index_t G = pb.map->group_size(g);
        const index_t grow = G * npos;
        float* srow0 = sc + r0 * lay.bk;
        float* orow0 = st.o + r0 * lay.dvp;
        const bool direct_path = !t16 && grow <= k_direct_rows;  // See Note [direct path]
        const auto [kb, vb] = block_rows(pb, t.ib, g, jb, ptr);  // its nbb keys from jb
        // The tiled path's packed block: kept from an earlier task of this thread, or packed now (into the
        // kept blocks, or into the task's scratch); Note [packed K/V reuse]. Its work starts skip keys in.
        const index_t slot = keep.slot(jb, lay.bk);
        float* const kpb = slot >= 0 ? keep.k(slot) : kp;
        float* const vpb = slot >= 0 ? keep.v(slot) : vp;
        const bool pack_now = slot < 0 || !keep.holds(slot, jb, lay.bk, nbk);
        // The tiled path's next block, prefetched over this block's score tiles and softmax rows unless it
        // is kept packed already (Note [prefetch next block]).
        const index_t next_nb = jb + lay.bk < kv_hi ? packed_keys(jb + lay.bk) : 0;
        const index_t next_slot = keep.slot(jb + lay.bk, lay.bk);
        const bool next_kept = next_slot >= 0 && keep.holds(next_slot, jb + lay.bk, lay.bk, next_nb);
        const index_t steps = score_steps(t16, pb.bf16_amx, grow, nbp) + grow;
        auto pf_rows = next_block(pb, t.ib, g, jb + lay.bk, direct_path || next_kept ? 0 : next_nb, ptr, steps);
        prefetch_lines pf_kept;
        if (next_kept) pf_kept = prefetch_lines(keep.k(next_slot), keep.k_floats + keep.v_floats, steps);
        if (jb <= kv_lo && jb + nbb >= kv_hi && !direct_path) {  // the task's only block
          const next_start next = next_task_start(pb, t, g);
          pf_q = next_q_rows(pb, t.ib, t.q1 - t.q0, next, steps);
          // A next task of another KV head packs that head's block (Note [prefetch next Q]).
          if (next.g >= 0 && next.g != g) pf_rows = next_block(pb, t.ib, next.g, j0, nb, ptr, steps);
        }
        // The task's last block: its O rows too (Note [prefetch O rows]).
        prefetch_q pf_o;
        if (jb + nbb >= kv_hi && part == nullptr && !direct_path)
          pf_o = row_prefetch(pb, t.ib, g, t.q0, t.q1, true, steps);
        const auto pf = [&]() noexcept {
          pf_rows();
          pf_kept();
          pf_q();
          pf_o();
        };
        // Note [hidden tiles]
        // In a cut block a score tile (MR rows × one slice of keys) can lie wholly outside its rows' keys:
        // left of a window's lower edge or right of the causal diagonal, which move by one key per
        // position across the task's rows. Such a tile is not computed (its scores would all be masked
        // to -inf), and the modifiers and the mask of each row read only the whole vectors that hold its
        // keys, so no score a tile did not write is read. Same bits as computing them. P2's heads at S
        // 4096 with a 512-key window leave 9.6% of the score tiles hidden (1.5% without a window).
        // Measured (Intel Xeon, 2026-12-04, one thread, call by call, medians, each pair of builds linked
        // in both orders because the tile's code placement alone moved AVX2 by 3-5%): window 512 1.033-
        // 1.035x and 1.042x (AVX-512, the two orders), AVX2 1.000-1.004x and 1.092x; causal without a
        // window 1.011x and 0.997x (AVX-512, S 2048), AVX2 0.974x and 1.055x.
        const auto hidden = [&](index_t r0, index_t r1, index_t c0, index_t c1) noexcept {
          return cut && (hi(r1 - 1) <= c0 || lo(r0) >= c1);
        };
        bool v_nonfinite = false;  // bf16 tiles: some element of the block's V is infinite or NaN
        if (direct_path && d8) {
          if constexpr (i8_capable) {  // Note [int8 decode products]
            for (index_t j = 0; j < nb; j += 4) {
              const std::int8_t* kr[4];  // keys past nb repeat the last (their scores land in padding)
              float ks[4];
              for (index_t u = 0; u < 4; ++u) {
                kr[u] = kb(std::min(j + u, nb - 1));
                ks[u] = kb.scale(std::min(j + u, nb - 1));
              }
              q8_scores<Isa>(grow, q8, r0, kr, ks, 4, d, srow0 + j, lay.bk);
            }
          }
        } else if (direct_path) {
          direct<Isa>::scores(kb, d, nb, qp + r0 * d, grow, srow0, lay.bk);
        } else if (t16) {
          if constexpr (bf16_capable) {
            tiles16::pack_k(kb, d, nb, nbp, k16);
            v_nonfinite = tiles16::pack_v(vb, dv, nb, lay.dvp, v16);
            tiles16::scores(q16, grow, d, k16, nbp, srow0, lay.bk, pf, pb.bf16_amx);
          }
        } else if (!direct_path) {
          if (pack_now) {
            tiled::pack_k(kb, d, nbk, nbl, kpb, ws + lay.kw);
            tiled::pack_v(vb, dv, nbk, lay.dvp, vpb);
            if (slot >= 0) keep.mark(slot, jb, lay.bk, nbk);
          }
          tiled::scores(qp + r0 * d, grow, d, kpb, nbl, skip, skip + nbp, srow0, lay.bk, pf, hidden);
        }
        // int8 on the direct path: the scores of int8 keys times their K scales (packing applied them on the
        // tiled path, the integer products as they stored them; Note [int8 K/V]).
        if constexpr (scaled_rows<decltype(kb)>) {
          if (direct_path && !d8) direct<Isa>::scale_columns(kb, 0, nb, srow0, grow, lay.bk);
        }
        // Mask: columns past nb are padding; causal and window edges may cut inside the block. The row's
        // keys [a, b) lie in the whole vectors [a / L · L, round_up(b, L)) of tiles that were computed: the
        // modifiers read only those (a hidden tile's scores were never written), the mask sets everything
        // else to -inf.
        const auto modify_row = [&](index_t r) noexcept {
          float* srow = srow0 + r * lay.bk;
          // The row's keys; a block without a cut edge hides its padding only.
          const index_t a = cut ? lo(r) : 0, b = cut ? std::max(a, hi(r)) : nb;
          if (t16) scale_row(srow, nbp, pb.qscale);  // into log2 units (Note [bf16 tiles])
          modify_scores(pb, t, g, j0, r, srow, a / L * L, round_up(b, L), 0, a, b, nbp);
        };
        const auto finish_row = [&](index_t r) noexcept {
          if constexpr (bf16_capable) {
            if (t16) tiles16::round_row(srow0 + r * lay.bk, nbp, p16 + r * lay.p16_ld);
          }
          pf();
        };
        // The online softmax of the block's rows, pipelined (Note [softmax pipeline]).
        softmax::update_rows(srow0, lay.bk, nbp, grow, st.m + r0, st.l + r0, orow0, lay.dvp, modify_row, finish_row);
        // P·V; a cut block as a band, so that no hidden V row enters a product (Note [causal staircase]).
        if (direct_path) {
          if constexpr (i8_capable && integer_pv<decltype(vb)>) {
            if (d8 && !cut) {  // Note [int8 decode P·V] (V's scales applied there)
              pv_int8(vb, dv, 0, nb, srow0, grow, lay.bk, lay.dvp, orow0);
              r0 += grow;
              continue;
            }
          }
          if constexpr (scaled_rows<decltype(vb)>) direct<Isa>::scale_columns(vb, 0, nb, srow0, grow, lay.bk);
          if (cut) {
            direct<Isa>::accumulate_pv_cut(vb, dv, lo, hi, srow0, grow, lay.bk, lay.dvp, orow0);
          } else {
            direct<Isa>::accumulate_pv(vb, dv, 0, nb, srow0, grow, lay.bk, lay.dvp, orow0);
          }
        } else if (t16 && !(cut && v_nonfinite)) {
          // A cut block too: its hidden keys' weights are 0 and their V rows finite (Note [bf16 tiles]).
          if constexpr (bf16_capable)
            tiles16::accumulate_pv(p16, grow, lay.p16_ld, v16, tiles16::padded_keys(nb), lay.dvp, orow0, ws + lay.tail,
                                   pb.bf16_amx);
        } else {
          if (t16) tiled::pack_v(vb, dv, nb, lay.dvp, vp);  // a cut bf16 block with a non-finite V: the fp32 band
          const float* vw = vpb + skip * lay.dvp;  // V rows of the keys from j0
          if (cut) {
            tiled::accumulate_pv_cut(srow0, grow, lay.bk, vw, lo, hi, lay.dvp, orow0, pb.pv_key_chunks);
          } else {
            tiled::accumulate_pv(srow0, grow, lay.bk, vw, nb, lay.dvp, orow0, pb.pv_key_chunks);
          }
        }
        r0 += grow;
      }
    }

    if (part) return;
    write_rows(pb, t, st, lay.dvp);
  }

  /// The packed K/V blocks a thread keeps for one KV head (Note [packed K/V reuse]): n slots, slot s at k(s),
  /// v(s), holding block held[s] (keys from held[s] · bk) packed with counts[s] keys (0: none); block i goes
  /// to slot i (blocks past n are not kept), or to slot i mod n when `ring` (Note [kept blocks as a
  /// ring]). None when `at` is null.
  struct kept_blocks {
    /// Floats of one kept block's Kᵀ (bk · d) and V (bk · dvp), each 64-byte aligned.
    static index_t k_size(index_t bk, index_t d) noexcept { return round_up(bk * d, 16); }
    static index_t v_size(index_t bk, index_t dvp) noexcept { return round_up(bk * dvp, 16); }
    float* at = nullptr;
    index_t n = 0, k_floats = 0, v_floats = 0;
    index_t* counts = nullptr;
    index_t* held = nullptr;
    bool ring = false;
    /// The slot of the block from key j0, or -1 (no kept blocks, j0 off the grid, or past the slots).
    index_t slot(index_t j0, index_t bk) const noexcept {
      if (at == nullptr || j0 % bk != 0) return -1;
      const index_t i = j0 / bk;
      return ring ? i % n : i < n ? i : -1;
    }
    /// Whether slot s holds the block from j0 packed with nk keys; mark(): it does now.
    bool holds(index_t s, index_t j0, index_t bk, index_t nk) const noexcept {
      return counts[s] == nk && held[s] == j0 / bk;
    }
    void mark(index_t s, index_t j0, index_t bk, index_t nk) const noexcept {
      counts[s] = nk;
      held[s] = j0 / bk;
    }
    float* k(index_t s) const noexcept { return at + s * (k_floats + v_floats); }
    float* v(index_t s) const noexcept { return k(s) + k_floats; }
  };

  /// The kept blocks of task t (a tiled task of one KV head, not on the bf16 tiles, in a call that keeps
  /// blocks): this thread's, reset when they belonged to another call or KV head. Where their memory
  /// cannot be had, none: the task packs every block in its own scratch, as without them.
  static kept_blocks keep_for(const problem& pb, const task& t, index_t rows, bool t16, const layout& lay) noexcept {
    if (pb.keep_blocks <= 0 || t.g1 - t.g0 != 1 || t16 || rows <= k_direct_rows) return {};
    kept_blocks kb{nullptr, pb.keep_blocks, kept_blocks::k_size(lay.bk, pb.d), kept_blocks::v_size(lay.bk, lay.dvp),
                   nullptr, nullptr, pb.keep_ring};
    packed_kv_owner& own = thread_packed_kv();
    float* at = nullptr;
    const index_t g = pb.active[t.g0];
    try {
      at = thread_scratch(static_cast<std::size_t>(kb.n * (kb.k_floats + kb.v_floats)), 2);
      if (own.call != pb.call || own.ib != t.ib || own.g != g || own.at != at) {
        own.call = 0;
        own.keys.assign(static_cast<std::size_t>(kb.n), 0);
        own.held.assign(static_cast<std::size_t>(kb.n), -1);
      }
    } catch (const std::bad_alloc&) {
      own.call = 0;
      return {};
    }
    if (own.call == 0) {
      own.call = pb.call;
      own.ib = t.ib;
      own.g = g;
      own.at = at;
    }
    kb.at = at;
    kb.counts = own.keys.data();
    kb.held = own.held.data();
    return kb;
  }

  /// Steps of the score tiles of `rows` rows and nbp keys (one prefetch step after each, Note [prefetch next
  /// block]): the register tile's, or the bf16 tiles' when t16 (on AMX when amx).
  static index_t score_steps(bool t16, bool amx, index_t rows, index_t nbp) noexcept {
    if constexpr (bf16_capable) {
      if (t16) return tiles16::score_steps(rows, nbp, amx);
    }
    return tiled::score_tiles(rows, nbp);
  }

  /// The AMX tile state of a task on the bf16 tiles (configured here, released at the end of the task);
  /// nothing otherwise.
  struct no_session {};
  static auto tile_session(bool t16) noexcept {
    if constexpr (bf16_capable) {
      using session = std::optional<typename tiles16::session>;
      if (t16) return session(std::in_place);
      return session();
    } else {
      return no_session{};
    }
  }

  /// s[0, n) *= scale, a vector at a time (n a multiple of L): the bf16 tiles' scores into log2 units.
  static void scale_row(float* s, index_t n, float scale) noexcept {
    const auto vs = V::set1(scale);
    for (index_t j = 0; j < n; j += L) V::store(s + j, V::mul(V::load(s + j), vs));
  }

  /// Normalises and writes every row of task t from its state (O rows of stride dvp), and its LSE.
  static void write_rows(const problem& pb, const task& t, row_state st, index_t dvp) noexcept {
    for_each_row(pb, t, [&](index_t row, index_t pos, index_t h) noexcept {
      const key_range keys = visible_keys(pb, t.ib, pos);
      const bool visible = keys.hi > keys.lo;  // else fully masked: Note [fully masked rows]
      softmax::finish_row(st.o + row * dvp, st.l[row], visible, pb.dv, pb.lay.o_row(t.ib, pos, h));
      if (!pb.lse.empty())
        pb.lse[static_cast<std::size_t>(pb.lay.lse_at(t.ib, h, pos))] =
            !visible && !pb.sinks.empty() ? pb.sinks[static_cast<std::size_t>(h)]  // Note [sinks as a state]
                                          : softmax::lse(st.m[row], st.l[row], visible);
    });
  }
};

// Note [decode split]
// When a call has few tasks and a long KV range (decode), the KV range is cut into chunks that run as
// separate tasks, each writing a private partial state, and the partials are merged in chunk order
// (online_softmax::merge). The decision depends only on the shapes, never on the thread count, so
// results are identical for 1 and N threads.
inline constexpr index_t k_split_min_tasks = 16;
inline constexpr index_t k_split_min_chunk = 1024;

/// At most this many floats (16 MiB) of packed K/V blocks kept per thread (Note [packed K/V reuse]).
inline constexpr index_t k_keep_max_floats = index_t{4} << 20;

// Note [forward block length]
// A prefill task's softmax does some work per row and KV block whatever the block's length: the row's
// max and sum reductions across the vector, the rescale of its O accumulator when the max moved, the
// loop's setup. Longer blocks spread it over more keys; they also need more scratch per row (the scores,
// rows × block_kv floats: 384 KB for 192 rows of 512 keys). AVX-512 takes 512 keys, AVX2 256 (vec_*.hpp),
// and where the forward takes rows_large_l2 rows (384, Note [rows by L2]) AVX-512 keeps 256, so that the
// scores stay at 384 KB (forward_block_kv). History: measured on the development machine (2 vCPUs of an
// AMD EPYC, 1 MiB L2; 2026-12-04 00:20-00:30 UTC, one thread pinned to one vCPU, two builds of an ad-hoc
// driver alternating process by process, medians of the per-pair time ratios) against 128: P1 1.029x
// faster (8 pairs), P2 1.012x (8), P3 1.045x (15;
// its 197 keys are one block); 512 keys: P1 1.036x, P2 1.000x, P3 1.028x. AVX2 at 256 there: P1 0.998x,
// P3 1.013x, so it kept 128 until 2026-12-06, when on a Zen 4 EPYC (family 25 model 17, 1 MiB L2; one
// thread pinned, two builds in one process in their own ABI namespaces, called alternately, medians of
// 9-41 pairs) AVX2 at 256 gave P3 1.069-1.081x (three runs), ViT-L's 577 keys (16 heads, d 64) 1.019x,
// 300 keys 1.019x, P1 1.002x and 1.014x, P2 1.018x, d 64 at 2048 keys 0.993x (9 pairs) and 1.041x (21),
// causal 1024 keys 1.014x: so AVX2 takes 256 too. AVX-512 went to 512 on 2026-12-07 (Zen 5, family 26
// model 2, 1 MiB L2; one thread pinned, the two lengths in one process in their own ABI namespaces, called
// alternately, medians of 7 pairs, after P·V's key chunks were turned off there, Note [P·V in key chunks]):
// P1 1.024x, P2 1.020x, P3 1.00x (197 keys: one block either way), ViT-L's 577 keys 1.030x, causal 512
// keys 1.056x, 64 queries on 8192 keys 1.055x, 256 on 8192 1.024x, 128 causal 1.021x, a 512-key window
// at 4096 keys 0.988x; bf16 Q/K/V on the VDPBF16PS tiles P1 1.055x, P2 1.048x, MQA bf16 decode (Note
// [bf16 tiles for few rows]) 1.030x. AVX2 at 512 there: P1 1.006x, P2 1.010x, P3 0.987x, causal 512
// keys 1.028x, ViT-L 1.006x: kept at 256. A call whose longest key range is shorter than the block takes
// a block of that range (rounded to whole tiles): one block either way, so the same bits, and a task's
// score rows lie closer (P3's 197 keys: 256 floats apart instead of 512; 1.01-1.02x on one and two
// threads, call by call). The backward keeps 128 (block_kv_backward: its P3 was
// ~2% slower at 252 keys), and so do the bf16 tiles (block_kv_tiles16: tuned on an Intel Xeon with AMX;
// the EPYCs have none to measure another length on). The block length changes where the online softmax
// rescales, so the last bits of a result depend on it (and on nothing else here): the same on every
// thread count, as before.

// Note [rows by L2]
// A prefill task's rows (G · block_q) amortise the packing of every K/V block it reads and the prefetch of
// the next (Note [tile shape]); its scratch grows with them (Q rows, scores, O accumulators: ~0.4 MB at
// d = 128 for 192 rows). Where L2 holds at least 2 MiB the forward takes tile_shape::rows_large_l2 rows
// (384 on AVX2 and AVX-512): on an Intel Xeon with 2 MiB of L2 per core (2 vCPUs, family 6 model 207,
// 2026-12-03, one thread, one binary alternating 192 and the other count call by call, medians of the
// time ratios), 384 rows made P1 1.055x and 1.061x faster on AVX-512 (15 and 19 pairs), P2 1.017x, AVX2 P1
// 1.046x, P3 1.032x (AVX-512) and 1.027x (AVX2); 288 rows 1.025x / 1.017x (P1 / P3), 512 1.066x / 1.017x,
// 768 1.033x on P1, 96 0.981x. Smaller L2s (the AMD EPYC the 192 was measured on) keep tile_shape::rows;
// the backward keeps it everywhere. The count depends on the machine, never on the thread count, so
// results stay the same for any number of threads; they may differ in the last bits between machines
// that choose different counts (a query block's tail rows can take the direct path under one count and the
// tiled path under the other).
inline bool forward_large_l2() noexcept { return ::gqa::isa::l2_cache_bytes() >= (index_t{2} << 20); }

template <class Shape>
index_t forward_rows() noexcept {
  return forward_large_l2() ? Shape::rows_large_l2 : Shape::rows;
}

/// Keys per block of the forward's tiled tasks (Note [forward block length]): block_kv, or block_kv_large_l2
/// where the forward takes rows_large_l2 rows (Note [rows by L2]), so that a task's scores (rows × keys)
/// stay at the size measured. Depends on the machine, never on the thread count.
template <class Shape>
index_t forward_block_kv() noexcept {
  return forward_large_l2() ? Shape::block_kv_large_l2 : Shape::block_kv;
}

/// The bytes of a decode call's K and V: b · skv · hkv rows of dqv = d_qk + d_v elements of T (in double:
/// no overflow).
template <class T>
double decode_kv_bytes(index_t b, index_t skv, index_t hkv, index_t dqv) noexcept {
  return static_cast<double>(b) * static_cast<double>(skv) * static_cast<double>(hkv) * static_cast<double>(dqv) *
         static_cast<double>(sizeof(T));
}

/// Whether a decode call runs on an AMD CPU and its K and V (decode_kv_bytes) reach 24 MiB: where AMD CPUs'
/// decode walks change how they load (Notes [decode first loads] and [decode loads ahead] in decode.hpp;
/// below that the cache holds K/V and the loads cost).
template <class T>
bool decode_large_on_amd(index_t b, index_t skv, index_t hkv, index_t dqv) noexcept {
  return ::gqa::isa::amd_cpu() && decode_kv_bytes<T>(b, skv, hkv, dqv) >= 24.0 * 1024.0 * 1024.0;
}

/// Whether a decode call's steps first load their K/V lines (fp32) or prefetch the next step's lines while
/// each head's scores run (16-bit and int8) (Note [decode first loads] in decode.hpp): where
/// decode_large_on_amd holds; for 16-bit and int8 K/V only while a step's K and V rows (k_direct_keys
/// keys, every KV head) fit in 32 KiB. Changes no result.
template <class T>
bool decode_first_loads(index_t b, index_t skv, index_t hkv, index_t dqv) noexcept {
  const double row = static_cast<double>(hkv) * static_cast<double>(dqv) * static_cast<double>(sizeof(T));
  const bool step_fits = std::is_same_v<T, float> || static_cast<double>(k_direct_keys) * row <= 32.0 * 1024.0;
  return step_fits && decode_large_on_amd<T>(b, skv, hkv, dqv);
}

/// Keys ahead of each step whose K and V lines a 16-bit or int8 decode call loads (Note [decode loads
/// ahead] in decode.hpp), 0 for none: on AMD CPUs of family 25 (Zen 3 and Zen 4; measured on Zen 4) where
/// decode_large_on_amd holds, as many keys as hold 16 KiB of K (at least one). fp32 K/V: 0. Changes no
/// result.
template <class T>
index_t decode_ahead_keys(index_t b, index_t skv, index_t hkv, index_t d, index_t dv) noexcept {
  if constexpr (sizeof(T) == sizeof(float)) {
    return 0;
  } else {
    if (!decode_large_on_amd<T>(b, skv, hkv, d + dv) || !::gqa::isa::amd_family_25()) return 0;
    const double key = static_cast<double>(hkv) * static_cast<double>(d) * static_cast<double>(sizeof(T));
    return std::max<index_t>(1, static_cast<index_t>(std::ceil(16384.0 / key)));
  }
}

/// Whether the steps of a 16-bit or int8 decode call prefetch their K and V lines into L1 first (Note [keys
/// per step]): not on AMD CPUs of family 25 (measured on Zen 4) when the call's K and V (decode_kv_bytes)
/// come to 8 MiB or less, which the caches hold (Note [decode prefetches in cache] in decode.hpp). Changes
/// no result.
template <class T>
bool decode_step_prefetches(index_t b, index_t skv, index_t hkv, index_t dqv) noexcept {
  return !(::gqa::isa::amd_family_25() && decode_kv_bytes<T>(b, skv, hkv, dqv) <= 8.0 * 1024.0 * 1024.0);
}

// Note [short last query block]
// When the query blocks of forward_rows() / G positions would leave a last block of less than a quarter
// of one, and spreading its positions over the full blocks adds at most an eighth to each, the full blocks
// take them: P3's 197 queries with 3 heads per KV head are 3 blocks of 66 positions (198 rows) instead of
// 3 × 64 + 5, whose last 15 rows took the direct path (one more task per KV head, its own K and V reads,
// dot products at a fraction of the tile's rate). Measured (P3, AVX-512, one thread, 2 vCPUs of an AMD
// EPYC, 2026-12-04, two builds alternating): 1.011x. The blocks depend on the shapes only, so results are
// the same for any thread count; their last bits moved (the 5 positions' rows now take the tiled path).

// Note [forward task order]
// With T threads (num_threads, at most the batch), the sequences of a call are dealt in sets of T: task w
// of a set takes sequence w mod T, and its KV head and query block from w / T in the usual order (KV
// head, then query block). Threads pulling tasks in turn then work on different sequences, each walking
// one sequence's KV heads and query blocks in order, so a thread's next task is usually of the KV head
// whose packed blocks it keeps (Note [packed K/V reuse]); in the plain order two threads took alternate
// query blocks of the same KV head and each packed every head. One thread keeps the plain order. Which
// thread computes which task changes no result (every task writes its own rows). Measured on P3 (8
// sequences, 2 vCPUs of an AMD EPYC, 2026-12-04, two builds alternating, 15 pairs, same output bits):
// two threads 1.065x faster on AVX-512, 1.053x on AVX2 (docs/design.md §3). Ragged batches keep the plain
// order (their sequences have different numbers of query blocks).

/// The scheduler over any layout (Note [layouts]): `b` sequences of at most `sq` queries and `skv` keys,
/// heads and dims d (Q·K) and dv (V).
template <class Isa, class Lay>
void forward_layout(const Lay& lay, index_t b, index_t sq, index_t skv, index_t d, index_t dv, const head_map& map,
                    const attention_options& opt) {
  using K = kernel<Isa, Lay>;
  using shape = typename K::shape;
  const float scale = opt.scale ? *opt.scale : 1.0f / std::sqrt(static_cast<float>(d));
  sq = std::max<index_t>(sq, 1);
  skv = std::max<index_t>(skv, 1);

  // KV heads that serve no query head get no work.
  std::vector<index_t> active;
  for (index_t g = 0; g < map.hkv(); ++g)
    if (map.group_size(g) > 0) active.push_back(g);
  const index_t n_active = static_cast<index_t>(active.size());
  const index_t gmax = std::max<index_t>(1, map.max_group_size());
  const bool decode = gmax * sq <= k_direct_rows;  // See Note [decode tasks]
  index_t block_q = decode ? sq : std::max<index_t>(1, forward_rows<shape>() / gmax);
  if (!decode && sq > block_q) {  // See Note [short last query block]
    const index_t full = sq / block_q, rest = sq % block_q;
    if (rest != 0 && rest * 4 < block_q && rest * 8 <= full * block_q) block_q = (sq + full - 1) / full;
  }
  const index_t head_tasks = decode ? 1 : n_active;  // tasks per (batch, query block)
  // Query blocks of each sequence: the same for every sequence but a ragged batch's, whose sequences
  // have their own query counts; then qb_before[ib] counts the blocks of the sequences before ib.
  const index_t n_qblocks = (sq + block_q - 1) / block_q;
  std::vector<index_t> qb_before;
  index_t total_qblocks = b * n_qblocks;
  if constexpr (Lay::ragged) {
    qb_before.resize(static_cast<std::size_t>(b) + 1);
    for (index_t ib = 0; ib < b; ++ib)
      qb_before[static_cast<std::size_t>(ib) + 1] =
          qb_before[static_cast<std::size_t>(ib)] + (lay.q_len(ib) + block_q - 1) / block_q;
    total_qblocks = qb_before.back();
  }
  const index_t base_tasks = head_tasks * total_qblocks;
  if (base_tasks == 0) return;  // a ragged batch of empty query ranges

  index_t n_chunks = 1;
  if (base_tasks < k_split_min_tasks && skv >= 2 * k_split_min_chunk) {
    n_chunks = std::min((skv + k_split_min_chunk - 1) / k_split_min_chunk,
                        (k_split_min_tasks + base_tasks - 1) / base_tasks);
  }
  // With int8 K/V a chunk is whole 64-key units (the int8 P·V's chunks, Note [int8 decode P·V]; AVX-512's
  // K::cols already is 64, AVX2's 16), so that in a paged cache whose page size is a multiple of 64 every
  // unit lies in one page and takes the dense call's products.
  constexpr index_t chunk_keys = quantised_kv<typename Lay::kv_type> ? std::lcm(K::cols, index_t{64}) : K::cols;
  const index_t chunk = n_chunks == 1 ? skv : round_up((skv + n_chunks - 1) / n_chunks, chunk_keys);
  n_chunks = (skv + chunk - 1) / chunk;

  // Note [packed K/V reuse]
  // A prefill task packs every K/V block of its KV head (Kᵀ transposed, V padded), and P1's 2048 queries
  // make 43 tasks per KV head, each packing the same blocks again and prefetching their rows through a
  // 4 KB stride first (docs/design.md 2.10: ~6% and ~5% of P1's time). So a thread keeps the packed blocks
  // of the KV head it last worked on (thread_scratch slot 2, named by the call's number, the sequence and
  // the KV head) and its next task of that head packs only blocks it lacks: block i, keys i · bk .., with
  // all the sequence's keys in it (Note [whole kept blocks]). A block is the same floats however often it
  // is packed, so results do not change. Kept when a call's KV heads have two or more query blocks, at most
  // k_keep_max_floats per thread (the blocks past it are packed per task as before, but see Note [kept
  // blocks as a ring]); not for the bf16 tiles.
  index_t keep_blocks = 0;
  bool keep_ring = false;
  // bf16 products (Note [bf16 tiles]): on AMX tiles where the OS grants them, else on VDPBF16PS register tiles
  // where VDPBF16PS is known to issue like an FMA (AMD CPUs).
  const bool bf16_products = K::bf16_capable && opt.bf16_products;
  const bool bf16_amx = bf16_products && ::gqa::isa::amx_tiles_granted();
  const bool tiles16 = bf16_amx || (bf16_products && ::gqa::isa::bf16_dot_fast());
  // A decode call whose one task per sequence takes the bf16 tiles (Note [bf16 tiles for few rows]) takes the
  // tiles' blocks, not decode's.
  const bool few_rows16 = decode && tiles16 && n_active == 1 && few_rows_take_tiles16(gmax * sq, bf16_amx);
  // A block no longer than the longest key range (Note [forward block length]).
  const index_t block_fwd = std::min(forward_block_kv<shape>(), skv);
  const index_t block_kv = few_rows16 ? block_fwd
                           : decode   ? shape::block_kv_decode
                           : bf16_amx ? shape::block_kv_tiles16
                                      : block_fwd;
  if (!decode && n_chunks == 1 && n_qblocks >= 2) {
    const auto lay0 = K::plan_scratch(1, d, dv, block_kv);
    const index_t per_block = K::kept_blocks::k_size(lay0.bk, d) + K::kept_blocks::v_size(lay0.bk, lay0.dvp);
    const index_t n_blocks = (skv + lay0.bk - 1) / lay0.bk;
    if (lay0.total >= 0 && per_block <= k_keep_max_floats)
      keep_blocks = std::min(n_blocks, k_keep_max_floats / per_block);
    // Note [kept blocks as a ring]
    // A windowed call needs only the blocks of its window at a time, but with more blocks than the kept
    // ones (k_keep_max_floats: past 16384 keys at d 128) the blocks past them were packed again by every
    // task, i.e. for long windowed prefill nearly every block by every query block. When a task's keys
    // (its positions plus both bounded window sides) span at most keep_blocks − 2 blocks, block i is kept
    // in slot i mod keep_blocks instead, each slot naming the block it holds: a task's blocks never evict
    // each other, and the next query block finds all but its newest block packed. Which blocks are kept
    // changes no result (a block is the same floats however often it is packed). Measured (Intel Xeon,
    // 2026-12-04, S 24576, window 4096, 4/1 heads, d 128, AVX-512, one thread, call by call, both link
    // orders): 0.999x and 1.039x, about 1.02x; the packing it saves was ~2% of such a call.
    const index_t wl = window_side(opt.window_left, sq, skv), wr = window_side(opt.window_right, sq, skv);
    if (keep_blocks > 0 && keep_blocks < n_blocks && wl >= 0 && (opt.causal || wr >= 0)) {
      const index_t span = wl + (opt.causal ? 0 : wr) + block_q + 1;  // keys a task's rows see, at most
      keep_ring = (span + lay0.bk - 1) / lay0.bk + 2 <= keep_blocks;
    }
  }
  // int8 decode products (Note [int8 decode products]) where the CPU has VPDPBUSD; d <= 65536 keeps every
  // int32 sum of 255 · 127 · d exact.
  const bool i8_products =
      K::i8_capable && decode && opt.int8_products && i8_decode<Isa>::supported() && d <= 65536;
  const auto side = [&](index_t w) { return window_side(w, sq, skv); };
  const core::problem<Lay> pb{lay, d, dv, skv, &map, active.data(), scale * k_log2e, opt.causal,
                              side(opt.window_left), side(opt.window_right), opt.softcap * k_log2e, opt.sinks,
                              opt.alibi_slopes, opt.lse, block_kv, chunk, tiles16, bf16_amx, next_call_serial(),
                              keep_blocks, keep_ring, decode && decode_first_loads<typename Lay::kv_type>(b, skv, map.hkv(), d + dv),
                              decode ? decode_ahead_keys<typename Lay::kv_type>(b, skv, map.hkv(), d, dv) : 0,
                              !decode || decode_step_prefetches<typename Lay::kv_type>(b, skv, map.hkv(), d + dv),
                              i8_products, !::gqa::isa::amd_family_26()};
  // The largest task's rows (hq · sq <= q's element count, gmax · block_q <= max(rows, hq)): its scratch
  // must fit before any task runs (Note [scratch size]).
  const index_t rows_max = decode ? map.hq() * sq : gmax * block_q;
  if (K::plan_scratch(rows_max, d, dv, pb.block_kv, pb.bf16_tiles, i8_products).total < 0) throw std::bad_alloc();

  // Task order: sequence, then KV head, then query block, then KV chunk; with several threads the
  // sequences interleave (Note [forward task order]).
  const index_t lanes = std::min<index_t>(b, resolve_threads(opt.num_threads));
  auto make_task = [&](index_t i) {
    const index_t c = i % n_chunks;
    i /= n_chunks;
    index_t ib, qb, gi, seq_q = sq;
    if constexpr (Lay::ragged) {
      // The sequence whose tasks [qb_before[ib], qb_before[ib + 1]) · head_tasks hold i.
      const auto after = std::upper_bound(qb_before.begin(), qb_before.end(), i / head_tasks);
      ib = static_cast<index_t>(after - qb_before.begin()) - 1;
      const index_t r = i - qb_before[static_cast<std::size_t>(ib)] * head_tasks;
      const index_t nqb = qb_before[static_cast<std::size_t>(ib) + 1] - qb_before[static_cast<std::size_t>(ib)];
      qb = r % nqb;
      gi = r / nqb;
      seq_q = lay.q_len(ib);
    } else {  // sequences dealt in sets of `lanes` (Note [forward task order])
      const dealt_task dt = deal_sequences(i, head_tasks * n_qblocks, lanes, b);
      ib = dt.seq;
      qb = dt.local % n_qblocks;
      gi = dt.local / n_qblocks;
    }
    const index_t q0 = qb * block_q;
    const index_t g0 = decode ? 0 : gi, g1 = decode ? n_active : gi + 1;
    return task{ib, g0, g1, q0, std::min(seq_q, q0 + block_q), c};
  };
  const index_t n_tasks = base_tasks * n_chunks;

  if (n_chunks == 1) {
    run_tasks(n_tasks, executor_of(opt), [&](index_t i) { K::run(pb, make_task(i), nullptr); });
    return;
  }

  // Split KV: every task writes a private partial, then each row merges its chunks in order.
  const index_t dvp = round_up(dv, K::L);
  index_t per_task = 0, n_partials = 0;
  if (!checked_mul(rows_max, 2 + dvp, max_elements<float>, per_task) ||
      !checked_mul(n_tasks, per_task, max_elements<float>, n_partials))
    throw std::bad_alloc();  // more floats than any allocation can hold
  std::vector<float> partials(static_cast<std::size_t>(n_partials));
  auto partial_of = [&](index_t i) {
    float* base = partials.data() + i * per_task;
    return row_state{base, base + rows_max, base + 2 * rows_max};
  };
  run_tasks(n_tasks, executor_of(opt), [&](index_t i) {
    const row_state part = partial_of(i);
    K::run(pb, make_task(i), &part);
  });
  run_tasks(base_tasks, executor_of(opt), [&](index_t bi) {
    const task t = make_task(bi * n_chunks);
    const index_t rows = K::task_rows(pb, t);
    float* acc = thread_scratch(static_cast<std::size_t>(rows * (2 + dvp)));
    const row_state merged{acc + rows * dvp, acc + rows * dvp + rows, acc};
    K::softmax::merge([&](index_t c) { return partial_of(bi * n_chunks + c); }, n_chunks, rows, dvp, merged);
    K::write_rows(pb, t, merged, dvp);
  });
}

/// The core on 4-D views (gqa::attend): dense_layout. KV: K/V's element type (Note [16-bit K/V]); Q, O:
/// Q's and O's (Note [16-bit Q/O]).
template <class Isa, class KV, class Q, class O>
void forward(tensor_view<const Q> q, tensor_view<const KV> k, tensor_view<const KV> v, tensor_view<O> o,
             const head_map& map, const attention_options& opt) {
  const std::vector<index_t> kv_lengths = to_indices(opt.kv_lengths);  // read per row: no switch on the type
  forward_layout<Isa>(dense_layout<KV, Q, O>{q, k, v, o, kv_lengths, {}}, q.b, q.s, k.s, q.d, v.d, map, opt);
}

/// The core on 4-D views with an int8 K/V cache (values and per-row scales; Note [int8 K/V]). Q, O: float,
/// or one 16-bit type (Note [16-bit Q/O]: Q widened as it is packed, O rounded once as it is written).
template <class Isa, class Q, class O>
void forward_q8(tensor_view<const Q> q, tensor_view<const std::int8_t> k, tensor_view<const float> k_scales,
                tensor_view<const std::int8_t> v, tensor_view<const float> v_scales, tensor_view<O> o,
                const head_map& map, const attention_options& opt) {
  const std::vector<index_t> kv_lengths = to_indices(opt.kv_lengths);
  const dense_layout<std::int8_t, Q, O> lay{q, k, v, o, kv_lengths, {k_scales, v_scales}};
  forward_layout<Isa>(lay, q.b, q.s, k.s, q.d, v.d, map, opt);
}

/// forward_paged on int8 pools with their scale pools (num_pages, page_size, hkv, 1) (Note [int8 K/V]); Q, O
/// as forward_q8's.
template <class Isa, class Q, class O>
void forward_paged_q8(tensor_view<const Q> q, tensor_view<const std::int8_t> k, tensor_view<const float> k_scales,
                      tensor_view<const std::int8_t> v, tensor_view<const float> v_scales, tensor_view<O> o,
                      const std::int32_t* table, index_t max_pages, std::span<const index_t> lengths, index_t longest,
                      const head_map& map, const attention_options& opt) {
  const paged_layout<std::int8_t, Q, O> lay{q, k, v, o, table, max_pages, lengths, {k_scales, v_scales}};
  forward_layout<Isa>(lay, q.b, q.s, longest, q.d, v.d, map, opt);
}

/// forward_ragged on int8 K/V with their scales (1, total, hkv, 1) (Note [int8 K/V]); Q, O as forward_q8's.
template <class Isa, class Q, class O>
void forward_ragged_q8(tensor_view<const Q> q, tensor_view<const std::int8_t> k, tensor_view<const float> k_scales,
                       tensor_view<const std::int8_t> v, tensor_view<const float> v_scales, tensor_view<O> o,
                       std::span<const index_t> cu_q, std::span<const index_t> cu_k, index_t sq, index_t skv,
                       const head_map& map, const attention_options& opt) {
  const auto b = static_cast<index_t>(cu_q.size()) - 1;
  const ragged_layout<std::int8_t, Q, O> lay{q, k, v, o, cu_q, cu_k, {k_scales, v_scales}};
  forward_layout<Isa>(lay, b, sq, skv, q.d, v.d, map, opt);
}

/// The core on a validated paged cache (gqa/paged.hpp): paged_layout over pools k, v (num_pages,
/// page_size, hkv, d), `table` [b][max_pages] and per-sequence `lengths`, the longest being `longest`.
/// The layout is built here, in the target's own namespace (Note [per-target kernels]).
template <class Isa, class KV, class Q, class O>
void forward_paged(tensor_view<const Q> q, tensor_view<const KV> k, tensor_view<const KV> v, tensor_view<O> o,
                   const std::int32_t* table, index_t max_pages, std::span<const index_t> lengths, index_t longest,
                   const head_map& map, const attention_options& opt) {
  forward_layout<Isa>(paged_layout<KV, Q, O>{q, k, v, o, table, max_pages, lengths, {}}, q.b, q.s, longest, q.d, v.d,
                      map, opt);
}

/// The core on a validated ragged batch (gqa/varlen.hpp): ragged_layout over the packed views with the
/// b + 1 offsets cu_q, cu_k; sq and skv are the longest sequence's query and key counts.
template <class Isa, class KV, class Q, class O>
void forward_ragged(tensor_view<const Q> q, tensor_view<const KV> k, tensor_view<const KV> v, tensor_view<O> o,
                    std::span<const index_t> cu_q, std::span<const index_t> cu_k, index_t sq, index_t skv,
                    const head_map& map, const attention_options& opt) {
  const auto b = static_cast<index_t>(cu_q.size()) - 1;
  forward_layout<Isa>(ragged_layout<KV, Q, O>{q, k, v, o, cu_q, cu_k, {}}, b, sq, skv, q.d, v.d, map, opt);
}

}  // namespace detail::core
GQA_END_NAMESPACE

#endif  // GQA_DETAIL_CORE_FORWARD_HPP
