// gqa/detail/core/backward.hpp: the backward pass of the attention core (FlashAttention-2's algorithm on
// the core's register tile and packing): P recomputed from Q, K and the forward's LSE, D = rowsum(dO∘O),
// dV += Pᵀ·dO, dS = P∘(dP − D), dQ = scale·dS·K, dK += scale·dSᵀ·Q; with the forward's masks (padding,
// causal, sliding window) and score modifiers (softcap, ALiBi, sinks and their gradient). Invariants:
// never materialises Sq×Skv; every output element is written by one task or reduced in a fixed order, so
// results are bitwise identical for any thread count; extra memory is O(tile) per thread plus the dK/dV
// accumulators (Note [backward tasks]).
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_DETAIL_CORE_BACKWARD_HPP
#define GQA_DETAIL_CORE_BACKWARD_HPP

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <vector>

#include "../../head_map.hpp"
#include "../../isa/cpu.hpp"
#include "../../isa/vec.hpp"
#include "../../isa/vec_math.hpp"
#include "../../numeric.hpp"
#include "../../options.hpp"
#include "../../tensor.hpp"
#include "../../threading/parallel.hpp"
#include "bf16_tiles.hpp"
#include "common.hpp"
#include "packed.hpp"
#include "tile.hpp"

GQA_BEGIN_NAMESPACE
namespace detail::core {

// Note [backward tasks]
// A task takes one (batch, KV head) and a range of query positions; its rows are the group's heads at
// those positions, in the forward's tile order (Note [tile rows]), walked a query block at a time. For
// each query block it packs Q and dO as rows and transposed (Qᵀ, dOᵀ), computes D = rowsum(dO∘O) and −LSE
// per row once, and keeps dQ of the block in scratch; then for each visible KV block it runs the five
// products on the register tile with the block's KEYS as the tile's rows, so K and V are never
// transposed, only copied row by row (Note [backward K/V copy]; Qᵀ and dOᵀ, packed once per query block,
// serve every KV block):
//   Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ                          (K, V rows broadcast from the copy)
//   Pᵀ = 2^((Sᵀ·scale − LSE)·log2e), dSᵀ = scale·Pᵀ∘(dPᵀ − D)   (key by key over vectors of rows)
//   dV_j += Pᵀ·dO, dK_j += dSᵀ·Q                     (K loop over the block's rows)
//   dQ += dS·K_j                                     (dSᵀ read transposed; the copy's K rows, padded)
// dQ rows are final when the block's KV loop ends and go straight to dq. dK/dV of the KV head sum over
// every row of every query block, i.e. over all of the group's query heads and positions: they
// accumulate, in the order the task walks its blocks, in an fp32 accumulator of skv × (d + d_v) (padded to
// the vector width) for the task's (batch, KV head, range). With one range per (batch, KV head) and rows
// that need no padding that is dk/dv itself; else the R accumulators are added in range order by a last
// pass. R depends only on the shapes (enough tasks for k_backward_min_tasks), never on the thread count, so the
// result is the same bits for any thread count and executor, and no two tasks write the same memory.
// Memory: R·b·(active KV heads)·skv·(d_pad + d_v,pad) floats of accumulators plus O(tile) scratch per
// thread; dQ needs none (P1 on AVX-512: 2 ranges, 32 MiB).
// Masked tiles are skipped exactly as in the forward, and blocks that a mask edge cuts run their products
// as bands (Note [backward masks]); keys past kv_lengths are never read. A row whose LSE is −inf saw no
// key in the forward; it is treated as seeing none here (P = 0), so it contributes nothing and gets
// dQ = 0 whatever its scores.

// Note [backward task order]
// Two tasks of one sequence write interleaved memory: in BSHD, dQ rows of neighbouring groups' heads lie
// side by side in every position's row, and so do dK/dV rows of neighbouring KV heads. The tasks of a
// (sequence, KV head) pair are therefore dealt so that the tasks running at the same time belong to
// different sequences: with T threads (num_threads, at most the batch), the sequences go in sets of T,
// and within a set task w takes sequence w mod T and the set's KV head w / T; one thread walks the
// sequences in order, KV head by KV head. Measured on P3 (the ViT backward: 8 sequences, 4 KV heads,
// 32 tasks of ~0.5 ms; 2 vCPUs of an AMD EPYC, AVX-512, 2026-12-03, an ad-hoc program, medians of 41
// calls, the two builds' processes alternating): two-thread calls 8.58-8.76 ms against 9.23-9.70 ms
// with the tasks of one sequence side by side (4 runs each, 1.07x faster); one thread (T = 1) keeps the
// old order. The order decides only who computes what when: every task writes its own memory, so the
// results are the same bits for any order and thread count.

// Note [backward K/V copy]
// Each KV block's K and V rows are copied into the task's scratch (rows of dp and dvp floats, zero-padded)
// before its products, although the tile could read them where they are. In a BSHD cache a KV head's rows
// are Hkv · d floats apart (4 KB for 8 heads of 128), so every row starts a new page and all of them fall
// in the same few L1 sets: dQ += dS·K streams the block's K rows as the tile's B operand once per column
// block and row tile, and from 4 KB-strided rows each of those loads missed L1. The copy reads each row
// once, and the products then run on rows 512 bytes apart. The values, and so the bits, are the same.
// Measured (2 vCPUs of an Intel Xeon, AVX-512, one thread, 2026-12-02; the same binary alternating the
// two versions call by call, median of the per-pair ratios): P1 1.078x faster (15 pairs), P2 1.066x (11),
// P3 (d 64, 4 KV heads: 1 KB apart) 1.015x (199).

// Note [backward numerics]
// Two choices keep the kernel as accurate as a naive fp32 backward (Note [backward tolerance]):
// * P = 2^((s·scale − LSE)·log2e): the difference is one fused multiply-add in natural units, so it is
//   exact up to one rounding of a number near 0 for the keys that matter, and only then scaled into log2
//   units. Scaling the LSE into log2 units first (as the forward's max is) rounds a number of the scores'
//   magnitude and shifts every P of the row by up to u·|LSE·log2e|: at scale 10 that was 200 times the
//   naive code's error.
// * D = dO·O is summed like one lane of the tile's dP = dO·Vᵀ (one mul_add per element, in order). With
//   one visible key O = V exactly, so D == dP bit for bit and dS = P·(dP − D) is exactly 0, as it is in
//   exact arithmetic; a differently ordered sum left ~1e-7 per row, which dK summed over thousands of
//   rows into errors of 4e-6 where the gradient is 0.

inline constexpr index_t k_backward_min_tasks = 16;

// Note [backward masks]
// The backward sees exactly the (row, key) pairs the forward saw: visible_key_range() gives each position
// its keys [lo, hi) (padding, causal and the sliding window; lo and hi non-decreasing in the position), so
// key j of a KV block is seen by a contiguous range of the query block's rows [f_j, e_j) (f and e
// non-decreasing in j). A query block visits the KV blocks from its first row's lo to its last row's hi
// only (a window costs O(window) per row, as in the forward); a block inside [last row's lo, first row's
// hi) is seen whole by every row and runs the five products as plain tiles. A block that some row's edge
// cuts computes Sᵀ and dPᵀ whole (K, V and Q are read, as the forward reads them), forms P and dS only
// where they are seen, and runs the three products that consume them as bands (band(), Note [causal
// staircase]): dV_j and dK_j sum over rows [f_j, e_j), dQ_r over keys [lo_r, hi_r), so no pair a mask
// hides enters a product, not even with a zero weight. Hence the non-finite rules of the forward (Note
// [non-finite inputs]) hold for the gradients: a NaN in dO, V, or in a K row or Q row that a mask hides
// reaches exactly the gradients a naive backward over the visible pairs gives it. Keys that no row sees
// keep dK = dV = 0; rows that see none keep dQ = 0.

// Note [softcap gradient]
// With the logit softcap the forward's logit is x = cap·tanh(u), u = scale·q·k / cap. The backward
// recomputes u from the raw score s = q·k (the Sᵀ tile) as s·(scale/cap), which is the forward's argument
// of tanh: in the forward's log2 units it is s₂/c₂ = (s·scale·log2e)/(cap·log2e) (Note [softcap in log2
// units]), the same number, since log2(e) cancels inside tanh. So neither tanh nor its derivative needs a
// change of units: t = tanh(u) is unit-free, x = cap·t is the natural-unit logit (subtracting the natural
// LSE gives the exponent, moved to log2 units only for exp2, as Note [backward numerics] does), and
// dx/ds = scale·(1 − t²), so dS = scale·(1 − t²)·P·(dP − D), with 1 − t² formed as one fused
// multiply-add. ALiBi's bias −slope·|p − j| is added to x after the cap (the forward's order); it is a
// constant of the scores, with no gradient of its own (the slopes get none).

// Note [sink gradient]
// A sink is a logit with no value row (Note [sinks as a state]): it joins the softmax's denominator, so
// the forward's LSE includes it and P_ij = exp(s_ij − LSE_i) needs nothing new; dQ, dK and dV are the
// usual ones. Its own gradient: with P_sink,i = exp(sink_h − LSE_i), ∂O_i/∂sink_h = −P_sink,i·O_i, so
// dsink_h = −Σ_i P_sink,i·D_i, D_i = dO_i·O_i, over every row i of head h (all batch elements and
// positions) that sees a key; a row that sees none is O = 0 whatever the sink, so it adds nothing. One
// task per head sums its rows in order (batch, then position) in double and rounds once: the same bits
// for any thread count. D_i is dot_row(), the kernel's own.

// Note [16-bit backward]
// The backward takes Q, K, V, O and dO stored in bf16 or f16 (T) with gradients dQ, dK, dV of the same type
// (G = T) or float, as FlashAttention's backward does for its 16-bit inputs: every input element is widened
// (exact) where it is read — Q and dO as the task packs them (rows and transposed), O in D = rowsum(dO∘O),
// K and V as the block's rows are copied (packed::pack_v's widening loads) — and the five products, the
// probabilities and every accumulator are the fp32 core's on the widened values; each gradient element is
// rounded once to G where it leaves the core: dQ as its rows are written, dK and dV after the sum over
// the query ranges (their accumulators stay fp32; the direct accumulation into dk/dv is for G = float
// only). So a 16-bit call gives, bit for bit, the fp32 call on the widened inputs with its gradients
// rounded to G (tests: backward_suite), and reads half the input bytes. With bf16 inputs and
// options.bf16_products on a CPU where VDPBF16PS is the engine, the blocks no mask edge cuts multiply in
// bf16 instead (Note [bf16 backward]); options.bf16_products = false keeps the rule above on every CPU.

/// Everything a backward task needs, fixed for the call. T: the inputs' element type (float, bf16, f16);
/// G: the gradients' (float, or T).
template <class T = float, class G = float>
struct backward_problem {
  tensor_view<const T> q, k, v, o, dout;
  std::span<const float> lse;
  tensor_view<G> dq;
  const head_map* map;
  const index_t* active;  // KV heads that serve at least one query head
  float scale;
  bool causal;
  index_t window_left, window_right;  // window_side(): -1 unbounded
  float softcap;                      // natural units, 0: off (Note [softcap gradient])
  std::span<const float> alibi;       // ALiBi slopes (natural units) per query head, or empty
  std::span<const index_t> kv_lengths;
  index_t dp, dvp;  // d and d_v rounded up to the vector width
  // A ragged batch (Note [ragged backward]): sequence ib's query rows are [cu_q[ib], cu_q[ib + 1]) and its
  // keys [cu_k[ib], cu_k[ib + 1]) of views with b = 1; empty for a dense call, whose sequence ib is batch
  // element ib.
  std::span<const index_t> cu_q, cu_k;
  // bf16 inputs whose products run on VDPBF16PS (Note [bf16 backward]).
  bool bf16_products = false;

  bool ragged() const noexcept { return !cu_q.empty(); }
  /// Sequences: batch elements, or the ragged batch's.
  index_t sequences() const noexcept { return ragged() ? static_cast<index_t>(cu_q.size()) - 1 : q.b; }
  /// Query positions of sequence ib.
  index_t sq_of(index_t ib) const noexcept { return ragged() ? at(cu_q, ib + 1) - at(cu_q, ib) : q.s; }
  /// Key rows of sequence ib (its dK/dV rows), and the keys it attends to (kv_lengths of a dense call).
  index_t skv_of(index_t ib) const noexcept { return ragged() ? at(cu_k, ib + 1) - at(cu_k, ib) : k.s; }
  index_t kv_len(index_t ib) const noexcept {
    return ragged() ? skv_of(ib) : kv_lengths.empty() ? k.s : at(kv_lengths, ib);
  }
  /// Row (position pos, head h) of sequence ib of a query-side view (q, o, dout, dq), and of a key-side one.
  template <class X>
  X* q_row(const tensor_view<X>& t, index_t ib, index_t pos, index_t h) const noexcept {
    return ragged() ? t.row(0, at(cu_q, ib) + pos, h) : t.row(ib, pos, h);
  }
  template <class X>
  X* k_row(const tensor_view<X>& t, index_t ib, index_t j, index_t g) const noexcept {
    return ragged() ? t.row(0, at(cu_k, ib) + j, g) : t.row(ib, j, g);
  }
  /// The forward's LSE of (sequence ib, head h, position pos): [b][hq][sq], or [hq][total_q] when ragged.
  float lse_of(index_t ib, index_t h, index_t pos) const noexcept {
    return ragged() ? lse[static_cast<std::size_t>(h * q.s + at(cu_q, ib) + pos)]
                    : lse[static_cast<std::size_t>((ib * q.h + h) * q.s + pos)];
  }
  /// The keys position pos of sequence ib sees (Note [backward masks]).
  key_range keys_of(index_t ib, index_t pos) const noexcept {
    return visible_key_range(pos, sq_of(ib), kv_len(ib), causal, window_left, window_right);
  }

 private:
  static index_t at(std::span<const index_t> a, index_t i) noexcept { return a[static_cast<std::size_t>(i)]; }
};

template <class Isa>
struct backward_kernel {
  using V = isa::vec<Isa>;
  using shape = typename V::tile_shape;
  using tiled = packed<Isa>;
  static constexpr int L = V::lanes;
  static constexpr int MR = shape::mr, NR = shape::nr;
  static constexpr index_t cols = tiled::cols;
  /// Keys per KV block: the keys are the tile's rows, so whole tiles but for the last block.
  static constexpr index_t block_keys = shape::block_kv_backward / MR * MR;

  using assign_tile = tile_table<Isa, MR, NR, a_order::row_major, update::assign>;
  using acc_tile = tile_table<Isa, MR, NR, a_order::row_major, update::accumulate>;
  using acc_tile_t = tile_table<Isa, MR, NR, a_order::transposed, update::accumulate>;

  /// A task's scratch, in floats (every array 64-byte aligned), for a query block of `rows` rows (rp: rows
  /// rounded to the vector width) and a KV block of bk keys: Qᵀ and dOᵀ (d × rp, d_v × rp), Q and dO
  /// (rows padded to dp, dvp), Sᵀ/Pᵀ and dPᵀ/dSᵀ (bk × rp), dQ (rows × dp), per row the LSE, D, −slope and
  /// the diagonal's offset in the KV block (ALiBi), the block's K and V rows padded to dp and dvp (Note
  /// [backward K/V copy]), and row_dots()' widened rows and transposed blocks.
  /// With bf16 products (Note [bf16 backward]) also, as 32-bit pairs or bf16: Qᵀ and dOᵀ in pairs of
  /// elements (d2 × rp, dv2 × rp), Q and dO rows in pairs of rows (rp/2 × dp, dvp), the block's K and V rows
  /// (d2, dv2 pairs each), its K rows in pairs of keys (bk/2 × dp), Pᵀ and dSᵀ rounded (bk × ldp bf16), dS
  /// transposed (rp × bk16 floats) and rounded (rp × ldq bf16).
  struct layout {
    index_t bk, rp, qt, dot, qr, dor, s, ds, dqa, lse, dd, nsl, rel, kr, vr, dw;
    index_t d2, dv2, ldp, bk16, ldq, qp, dop, qr2, dor2, kb, vb, kp, p16, ds16, dst, dq16;
    index_t total;
  };

  static layout plan_scratch(index_t rows, index_t d, index_t dv, index_t dp, index_t dvp, bool bf16) noexcept {
    layout s{};
    s.bk = block_keys;
    s.rp = round_up(rows, L);
    index_t off = 0;
    auto carve = [&off](index_t n) {
      const index_t at = off;
      off += round_up(n, 16);
      return at;
    };
    s.qt = carve(dp * s.rp);
    s.dot = carve(dvp * s.rp);
    s.qr = carve(rows * dp);
    s.dor = carve(rows * dvp);
    s.s = carve(s.bk * s.rp);
    s.ds = carve(s.bk * s.rp);
    s.dqa = carve(rows * dp);
    s.lse = carve(s.rp);
    s.dd = carve(s.rp);
    s.nsl = carve(s.rp);
    s.rel = carve(s.rp);
    s.kr = carve(s.bk * dp);
    s.vr = carve(s.bk * dvp);
    s.dw = carve(2 * L * dvp + 2 * L * L);
    if (bf16) {
      s.d2 = (d + 1) / 2;
      s.dv2 = (dv + 1) / 2;
      s.ldp = round_up(s.rp, 32);
      s.bk16 = round_up(s.bk, 16);
      s.ldq = round_up(s.bk, 32);
      s.qp = carve(s.d2 * s.rp);
      s.dop = carve(s.dv2 * s.rp);
      s.qr2 = carve(s.rp / 2 * dp);
      s.dor2 = carve(s.rp / 2 * dvp);
      s.kb = carve(s.bk * s.d2);
      s.vb = carve(s.bk * s.dv2);
      s.kp = carve((s.bk + 1) / 2 * dp);
      s.p16 = carve(s.bk * s.ldp / 2);
      s.ds16 = carve(s.bk * s.ldp / 2);
      s.dst = carve(s.rp * s.bk16);
      s.dq16 = carve(s.rp * s.ldq / 2);
    }
    s.total = off;
    return s;
  }

  /// Positions per query block for a group of G heads: the forward's tile rows (Note [tile rows]).
  static index_t block_positions(index_t G) noexcept { return std::max<index_t>(1, shape::rows / G); }

  /// C (rows × width, stride ldc) (=|+=) A·B where A(r, k) is a[r·lda + k] (or a[k·lda + r] for a Table
  /// that reads A transposed) over k < kn and B is kn rows of `width` floats (stride ldb); width a multiple
  /// of L.
  template <class Table>
  static void product(const float* a, index_t lda, index_t rows, const float* b, index_t ldb, index_t width,
                      index_t kn, float* c, index_t ldc) noexcept {
    constexpr bool transposed = Table::order == a_order::transposed;
    for (index_t c0 = 0; c0 < width; c0 += cols) {
      const int nr = static_cast<int>(std::min(cols, width - c0) / L);
      for (index_t r0 = 0; r0 < rows; r0 += MR) {
        const int mr = static_cast<int>(std::min<index_t>(MR, rows - r0));
        const float* ar = transposed ? a + r0 : a + r0 * lda;
        Table::get(mr, nr)(ar, lda, b + c0, ldb, kn, c + r0 * ldc + c0, ldc);
      }
    }
  }

  /// The score modifiers of a call as probabilities() applies them (Note [softcap gradient]).
  struct score_mods {
    float scale;
    float cap, scale_over_cap;  // softcap (natural units) and scale / cap
    const float* nslope;        // per row: −ALiBi slope (natural units)
    const float* rel;           // per row: its diagonal key minus the KV block's first key
  };

  /// Calls fn(std::bool_constant<softcap>, std::bool_constant<alibi>): one instantiation per combination.
  template <class Fn>
  static GQA_FORCEINLINE void with_modifiers(bool softcap, bool alibi, Fn&& fn) {
    if (softcap) {
      if (alibi) fn(std::true_type{}, std::true_type{});
      else fn(std::true_type{}, std::false_type{});
    } else {
      if (alibi) fn(std::false_type{}, std::true_type{});
      else fn(std::false_type{}, std::false_type{});
    }
  }

  /// One task: batch ib, KV head active[gi], query positions [p0, p1); dK/dV accumulate into skv rows of
  /// acc_k (stride ldk, dp floats each) and acc_v (stride ldv, dvp floats), zeroed here first.
  template <class In, class Out>
  static void run(const backward_problem<In, Out>& pb, index_t ib, index_t gi, index_t p0, index_t p1, float* acc_k,
                  index_t ldk, float* acc_v, index_t ldv) noexcept {
    const index_t g = pb.active[gi];
    const auto heads = pb.map->q_heads(g);
    const index_t G = static_cast<index_t>(heads.size());
    const index_t d = pb.q.d, dv = pb.v.d, dp = pb.dp, dvp = pb.dvp, sq = pb.sq_of(ib), skv = pb.skv_of(ib);
    const index_t block_q = block_positions(G);
    const index_t rows_max = G * std::min(block_q, p1 - p0);
    constexpr bool can16 = bf16_tiles<Isa>::available && std::is_same_v<In, bf16>;
    const bool use16 = can16 && pb.bf16_products;
    const layout lay = plan_scratch(rows_max, d, dv, dp, dvp, use16);
    float* ws = thread_scratch(static_cast<std::size_t>(lay.total));
    float* qt = ws + lay.qt;
    float* dot = ws + lay.dot;
    float* qr = ws + lay.qr;
    float* dor = ws + lay.dor;
    float* st = ws + lay.s;
    float* dst = ws + lay.ds;
    float* dqa = ws + lay.dqa;
    float* nlse = ws + lay.lse;
    float* dd = ws + lay.dd;
    float* nsl = ws + lay.nsl;
    float* rel = ws + lay.rel;
    float* kr = ws + lay.kr;
    float* vr = ws + lay.vr;
    for (index_t j = 0; j < skv; ++j) {
      std::fill(acc_k + j * ldk, acc_k + j * ldk + dp, 0.0f);
      std::fill(acc_v + j * ldv, acc_v + j * ldv + dvp, 0.0f);
    }

    const index_t kv_len = pb.kv_len(ib);
    const bool capped = pb.softcap > 0.0f, alibi = !pb.alibi.empty();
    const score_mods mods{pb.scale, pb.softcap, capped ? pb.scale / pb.softcap : 0.0f, nsl, rel};
    // Rows seeing each key of a cut block, [kf[j], ke[j]) (Note [backward masks]).
    index_t kf[block_keys], ke[block_keys];

    for (index_t q0 = p0; q0 < p1; q0 += block_q) {
      const index_t q1 = std::min(p1, q0 + block_q);
      const index_t rows = G * (q1 - q0), rp = round_up(rows, L);
      // Keys [first.lo, last.hi) hold every key a row of the block sees; every row sees [last.lo, first.hi).
      const key_range first = pb.keys_of(ib, q0), last = pb.keys_of(ib, q1 - 1);
      // Per row −LSE, D = dO·O and the ALiBi slope. A row that saw no key in the forward (LSE −inf), and the
      // padding, get −LSE = −inf: P = 2^(−inf) = 0 whatever its scores (Note [backward tasks]).
      bool any_row = false;
      for (index_t r = 0; r < rp; ++r) {
        if (r >= rows) {
          nlse[r] = k_neg_inf;
          nsl[r] = 0.0f;
          continue;
        }
        const index_t pos = q0 + r / G, h = heads[static_cast<std::size_t>(r % G)];
        const float l = pb.lse_of(ib, h, pos);
        nlse[r] = l == k_neg_inf ? k_neg_inf : -l;
        const key_range keys = pb.keys_of(ib, pos);
        any_row = any_row || (l != k_neg_inf && keys.hi > keys.lo);
        nsl[r] = alibi ? -pb.alibi[static_cast<std::size_t>(h)] : 0.0f;
      }
      row_dots(pb, ib, q0, rows, rp, heads, ws + lay.dw, dd);
      // Q and dO as fp32 rows (widened; padded to dp, dvp) and transposed (padded to rp columns), for the fp32
      // products: every block's, or with bf16 products only the cut blocks' (none when every row of the
      // query block sees the same keys).
      if (!use16 || first.lo != last.lo || first.hi != last.hi) {
        for (index_t r = 0; r < rows; ++r) {
          const index_t pos = q0 + r / G, h = heads[static_cast<std::size_t>(r % G)];
          // Widened as they are packed (Note [16-bit backward]; a copy for float).
          const In* qs = pb.q_row(pb.q, ib, pos, h);
          const In* ds = pb.q_row(pb.dout, ib, pos, h);
          widen(qs, d, dp, qr + r * dp);
          widen(ds, dv, dvp, dor + r * dvp);
        }
        transpose_rows(qr, dp, dp, rows, qt, rp);
        transpose_rows(dor, dvp, dvp, rows, dot, rp);
      }
      std::fill(dqa, dqa + rows * dp, 0.0f);
      if constexpr (can16) {
        if (use16) pack_rows16(pb, ib, q0, rows, rp, heads, lay, ws);
      }
      const index_t kv_hi = any_row ? last.hi : first.lo;

      for (index_t j0 = first.lo; j0 < kv_hi; j0 += lay.bk) {
        const index_t nb = std::min(lay.bk, kv_hi - j0);
        const bool cut = j0 < last.lo || j0 + nb > first.hi;  // some row's mask edge cuts inside the block
        // bf16 products in the blocks no mask edge cuts (Note [bf16 backward]).
        const bool block16 = use16 && !cut;
        if (!block16) {
          // The block's K and V rows, copied into the task's scratch, padded to dp and dvp (Note [backward
          // K/V copy]).
          tiled::pack_v(strided_rows<In>{pb.k_row(pb.k, ib, j0, g), pb.k.stride_s}, d, nb, dp, kr);
          tiled::pack_v(strided_rows<In>{pb.k_row(pb.v, ib, j0, g), pb.v.stride_s}, dv, nb, dvp, vr);
          // Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ: the block's keys are the tile's rows.
          product<assign_tile>(kr, dp, nb, qt, rp, rp, d, st, rp);
          product<assign_tile>(vr, dvp, nb, dot, rp, rp, dv, dst, rp);
        } else if constexpr (can16) {
          scores16(pb, ib, g, j0, nb, rp, lay, ws);
        }
        if (alibi)  // exact in float while |the diagonal's offset| < 2^24, as the forward's; padding rows 0
          for (index_t r = 0; r < rp; ++r)
            rel[r] = r < rows ? static_cast<float>(q0 + r / G + (kv_len - sq) - j0) : 0.0f;
        if (cut) {
          // Positions [pf, pe) see key j0 + j: those past its hi, before its lo (both monotone).
          index_t pf = q0, pe = q0;
          for (index_t j = 0; j < nb; ++j) {
            while (pf < q1 && pb.keys_of(ib, pf).hi <= j0 + j) ++pf;
            while (pe < q1 && pb.keys_of(ib, pe).lo <= j0 + j) ++pe;
            kf[j] = (pf - q0) * G;
            ke[j] = std::max(kf[j], (pe - q0) * G);
          }
        }
        // Pᵀ and dSᵀ, key by key over the rows that see it (all rows and the padding in a block no edge cuts).
        with_modifiers(capped, alibi, [&](auto cap, auto ali) noexcept {
          for (index_t j = 0; j < nb; ++j) {
            const index_t r0 = cut ? kf[j] : 0, r1 = cut ? ke[j] : rp;
            if (r0 < r1)
              probabilities<decltype(cap)::value, decltype(ali)::value>(st + j * rp, dst + j * rp, r0, r1,
                                                                         static_cast<float>(j), mods, nlse, dd);
          }
        });
        if (block16) {
          if constexpr (can16) gradients16(nb, rows, rp, lay, ws, acc_k + j0 * ldk, ldk, acc_v + j0 * ldv, ldv, dqa, dp, dvp);
        } else if (!cut) {
          // dV_j += Pᵀ·dO and dK_j += dSᵀ·Q (the block's keys are C's rows), dQ += dS·K_j (dSᵀ read
          // transposed).
          product<acc_tile>(st, rp, nb, dor, dvp, dvp, rows, acc_v + j0 * ldv, ldv);
          product<acc_tile>(dst, rp, nb, qr, dp, dp, rows, acc_k + j0 * ldk, ldk);
          product<acc_tile_t>(dst, rp, rows, kr, dp, dp, nb, dqa, dp);
        } else {
          // The same three as bands: key j over its rows [kf, ke), row r over its keys (Note [backward masks]).
          const auto f = [&](index_t j) noexcept { return kf[j]; };
          const auto e = [&](index_t j) noexcept { return ke[j]; };
          const auto in_block = [&](index_t x) noexcept { return std::clamp<index_t>(x - j0, 0, nb); };
          const auto lo = [&](index_t r) noexcept { return in_block(pb.keys_of(ib, q0 + r / G).lo); };
          const auto hi = [&](index_t r) noexcept { return in_block(pb.keys_of(ib, q0 + r / G).hi); };
          band_product<acc_tile>(st, rp, nb, dor, dvp, dvp, f, e, acc_v + j0 * ldv, ldv);
          band_product<acc_tile>(dst, rp, nb, qr, dp, dp, f, e, acc_k + j0 * ldk, ldk);
          band_product<acc_tile_t>(dst, rp, rows, kr, dp, dp, lo, hi, dqa, dp);
        }
      }
      for (index_t r = 0; r < rows; ++r) {
        const index_t pos = q0 + r / G, h = heads[static_cast<std::size_t>(r % G)];
        store_rounded(dqa + r * dp, d, pb.q_row(pb.dq, ib, pos, h));  // rounded once (Out 16-bit)
      }
    }
  }

  // Note [bf16 backward]
  // With bf16 Q, K, V, O and dO and options.bf16_products, where VDPBF16PS is the engine (isa::bf16_dot_fast():
  // AVX512-BF16 on an AMD CPU; Note [bf16 tiles]), the blocks no mask edge cuts run the five products on
  // VDPBF16PS register tiles (bf16_tiles<avx512>::register_product: 6 rows × 4 vectors, fp32 sums), as
  // FlashAttention's backward runs its GEMMs on 16-bit inputs:
  //   Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ   the inputs as they are (exact products, fp32 sums): K and V rows copied
  //                            (padded to pairs), Qᵀ and dOᵀ packed once per query block in pairs of elements;
  //   Pᵀ, dSᵀ                  formed in fp32 from those sums exactly as the fp32 path forms them;
  //   dV_j += Pᵀ·dO            Pᵀ rounded to bf16 (nearest even), dO rows in pairs of rows;
  //   dK_j += dSᵀ·Q            dSᵀ rounded to bf16, Q rows in pairs of rows;
  //   dQ += dS·K_j             dSᵀ transposed in fp32 (16 × 16 register blocks), rounded; K in pairs of keys.
  // The accumulators (dQ of the query block, dK/dV over the task) stay fp32, and the gradients are rounded
  // once where they leave the core (Note [16-bit backward]). Blocks that a mask edge cuts keep the fp32
  // path's bands on the widened inputs, so no pair a mask hides enters a product (Note [backward masks]);
  // in the other blocks every row sees every key, so a NaN meets exactly the products a naive backward
  // gives it, and the odd row or key that pads a pair has weight 0 against a zero row. Rounding P and dS
  // adds a relative 2^-9 per term (Note [bf16 backward tolerance] in tests/support/tolerance.hpp), and
  // VDPBF16PS reads bf16 denormals as zero (Note [bf16 tiles]). Results are the same for any thread count;
  // options.bf16_products = false gives the fp32 path's bits (Note [16-bit backward]).

  /// The query block's bf16 operands (Note [bf16 backward]): Qᵀ and dOᵀ in pairs of elements (entry (c, r):
  /// elements 2c, 2c + 1 of row r; zero past d and for the padding rows r >= rows), and Q and dO in pairs
  /// of rows (entry (i, c): element c of rows 2i, 2i + 1; zero past d and for an odd last row's partner).
  template <class In, class Out>
  static void pack_rows16(const backward_problem<In, Out>& pb, index_t ib, index_t q0, index_t rows, index_t rp,
                          std::span<const index_t> heads, const layout& lay, float* ws) noexcept {
    using T16 = bf16_tiles<Isa>;
    const index_t d = pb.q.d, dv = pb.v.d, G = static_cast<index_t>(heads.size());
    auto* qp = reinterpret_cast<std::uint32_t*>(ws + lay.qp);
    auto* dop = reinterpret_cast<std::uint32_t*>(ws + lay.dop);
    const auto q_of = [&](index_t r) noexcept {
      return pb.q_row(pb.q, ib, q0 + r / G, heads[static_cast<std::size_t>(r % G)]);
    };
    const auto do_of = [&](index_t r) noexcept {
      return pb.q_row(pb.dout, ib, q0 + r / G, heads[static_cast<std::size_t>(r % G)]);
    };
    // t[c·rp + r] = row r's elements 2c and 2c + 1 (0 past n and for the padding rows r >= rows): the pairs
    // that lie whole in L × L blocks transposed in registers (each pair's 32 bits moved as a float), the
    // rest one by one. Against the element-by-element loop (AMD EPYC Zen 5, one thread, the two called
    // alternately, the same bits): bf16 backward P3 1.03-1.04x, ViT's MHA heads 1.03x, P1 1.02x.
    const auto pairs = [&](const auto& row_of, index_t n, index_t n2, std::uint32_t* t) noexcept {
      const index_t whole = n / 2 / L * L;
      transpose_rows_of([&](index_t r) noexcept { return reinterpret_cast<const float*>(row_of(r)); }, whole, rows, rp,
                        reinterpret_cast<float*>(t), rp);
      for (index_t r = 0; r < rp; ++r) {
        const In* x = r < rows ? row_of(r) : nullptr;
        for (index_t c = whole; c < n2; ++c) {
          const std::uint32_t lo = x ? x[2 * c].bits : 0u, hi = x && 2 * c + 1 < n ? x[2 * c + 1].bits : 0u;
          t[c * rp + r] = lo | hi << 16;
        }
      }
    };
    pairs(q_of, d, lay.d2, qp);
    pairs(do_of, dv, lay.dv2, dop);
    T16::pair_rows(q_of, rows, d, pb.dp, reinterpret_cast<std::uint32_t*>(ws + lay.qr2), pb.dp);
    T16::pair_rows(do_of, rows, dv, pb.dvp, reinterpret_cast<std::uint32_t*>(ws + lay.dor2), pb.dvp);
  }

  /// Sᵀ and dPᵀ of the KV block [j0, j0 + nb) of sequence ib, KV head g on VDPBF16PS (Note [bf16 backward]),
  /// K and V rows read where they lie (an odd d's or d_v's rows copied, padded to whole pairs); also packs
  /// its K rows in pairs of keys for dQ.
  template <class In, class Out>
  static void scores16(const backward_problem<In, Out>& pb, index_t ib, index_t g, index_t j0, index_t nb, index_t rp,
                       const layout& lay, float* ws) noexcept {
    using T16 = bf16_tiles<Isa>;
    // The block's rows of t: in place when they hold whole pairs, else copied into the scratch at `at`
    // with a zero to pad the last pair. Against copying every row (AMD EPYC Zen 5, one thread, the two
    // called alternately, the same bits): ViT's MHA heads (d 64, 197 keys) 1.05-1.08x, P3 1.00-1.02x, P1
    // 1.00x: a row copy per key and block is a larger share where each KV head serves one query head.
    const auto rows_of = [&](const tensor_view<const In>& t, index_t n, index_t at) noexcept {
      const In* first = pb.k_row(t, ib, j0, g);
      if (n % 2 == 0) return std::pair{reinterpret_cast<const std::uint16_t*>(first), t.stride_s};
      auto* copy = reinterpret_cast<std::uint16_t*>(ws + at);
      for (index_t j = 0; j < nb; ++j) {
        std::memcpy(copy + j * (n + 1), first + j * t.stride_s, static_cast<std::size_t>(n) * sizeof(In));
        copy[j * (n + 1) + n] = 0;
      }
      return std::pair{static_cast<const std::uint16_t*>(copy), n + 1};
    };
    const auto [ka, lda] = rows_of(pb.k, pb.q.d, lay.kb);
    const auto [va, ldv] = rows_of(pb.v, pb.v.d, lay.vb);
    T16::pair_rows([&](index_t x) noexcept { return pb.k_row(pb.k, ib, j0 + x, g); }, nb, pb.q.d, pb.dp,
                   reinterpret_cast<std::uint32_t*>(ws + lay.kp), pb.dp);
    T16::register_product(ka, lda, nb, reinterpret_cast<const std::uint32_t*>(ws + lay.qp), rp, rp, lay.d2,
                          ws + lay.s, rp, false);
    T16::register_product(va, ldv, nb, reinterpret_cast<const std::uint32_t*>(ws + lay.dop), rp, rp, lay.dv2,
                          ws + lay.ds, rp, false);
  }

  /// dV_j += Pᵀ·dO, dK_j += dSᵀ·Q (acc_k, acc_v: the block's first key) and dQ += dS·K_j (dqa) on VDPBF16PS,
  /// Pᵀ and dSᵀ (the scratch's fp32 rows) rounded to bf16 (Note [bf16 backward]).
  static void gradients16(index_t nb, index_t rows, index_t rp, const layout& lay, float* ws, float* acc_k,
                          index_t ldk, float* acc_v, index_t ldv, float* dqa, index_t dp, index_t dvp) noexcept {
    using T16 = bf16_tiles<Isa>;
    auto* p16 = reinterpret_cast<std::uint16_t*>(ws + lay.p16);
    auto* ds16 = reinterpret_cast<std::uint16_t*>(ws + lay.ds16);
    const float* st = ws + lay.s;
    const float* dst = ws + lay.ds;
    for (index_t j = 0; j < nb; ++j) {
      T16::round_row(st + j * rp, rp, p16 + j * lay.ldp);
      T16::round_row(dst + j * rp, rp, ds16 + j * lay.ldp);
      if (rows % 2 != 0) p16[j * lay.ldp + rows] = ds16[j * lay.ldp + rows] = 0;  // the odd row's partner
    }
    const index_t row_pairs = (rows + 1) / 2;
    T16::register_product(p16, lay.ldp, nb, reinterpret_cast<const std::uint32_t*>(ws + lay.dor2), dvp, dvp,
                          row_pairs, acc_v, ldv, true);
    T16::register_product(ds16, lay.ldp, nb, reinterpret_cast<const std::uint32_t*>(ws + lay.qr2), dp, dp,
                          row_pairs, acc_k, ldk, true);
    float* dt = ws + lay.dst;
    auto* dq16 = reinterpret_cast<std::uint16_t*>(ws + lay.dq16);
    transpose_rows(dst, rp, rp, nb, dt, lay.bk16);  // dS: rows of the block's keys, padded with zero keys
    const index_t nb16 = round_up(nb, 16);
    for (index_t r = 0; r < rows; ++r) T16::round_row(dt + r * lay.bk16, nb16, dq16 + r * lay.ldq);
    T16::register_product(dq16, lay.ldq, rows, reinterpret_cast<const std::uint32_t*>(ws + lay.kp), dp, dp,
                          (nb + 1) / 2, dqa, dp, true);
  }

  /// One key j of a block over the query rows [r0, r1) (rounded out to whole vectors; lanes outside are
  /// written but never read): s (its raw scores K·Q) becomes P = e^(x − LSE) (nlse = −LSE per row) with x
  /// the logit (scale·s, softcapped, minus ALiBi's bias: Note [softcap gradient]), and dp (V·dO) becomes
  /// dS = ∂x/∂s·P·(dP − D). See Note [backward numerics].
  template <bool Cap, bool Alibi>
  static GQA_FORCEINLINE void probabilities(float* s, float* dp, index_t r0, index_t r1, float j, const score_mods& m,
                                            const float* nlse, const float* dd) noexcept {
    const auto vsc = V::set1(m.scale), vlog2e = V::set1(k_log2e);
    [[maybe_unused]] const auto vcap = V::set1(m.cap), vu = V::set1(m.scale_over_cap), one = V::set1(1.0f);
    [[maybe_unused]] const auto vj = V::set1(j), zero = V::zero();
    for (index_t r = r0 / L * L; r < r1; r += L) {
      const auto vs = V::load(s + r);
      typename V::reg x, grad;  // x − LSE, and ∂x/∂s
      if constexpr (Cap) {
        const auto t = isa::tanh<Isa>(V::mul(vs, vu));
        x = V::mul_add(vcap, t, V::load(nlse + r));
        grad = V::mul(vsc, V::mul_add(V::sub(zero, t), t, one));
      } else {
        x = V::mul_add(vs, vsc, V::load(nlse + r));
        grad = vsc;
      }
      if constexpr (Alibi) {
        const auto dist = V::sub(V::load(m.rel + r), vj);
        x = V::mul_add(V::load(m.nslope + r), V::max(dist, V::sub(zero, dist)), x);
      }
      const auto p = isa::exp2<Isa>(V::mul(x, vlog2e));
      V::store(s + r, p);
      V::store(dp + r, V::mul(V::mul(p, grad), V::sub(V::load(dp + r), V::load(dd + r))));
    }
  }

  /// dst[0, np) = the n elements of src widened to float (a vector copy for float), then zeros.
  template <class In>
  static void widen(const In* src, index_t n, index_t np, float* dst) noexcept {
    tiled::pack_v(strided_rows<In>{src, 0}, n, 1, np, dst);
  }

  /// Row c of t (row stride ldt) = column c of the rows row_of(r) (each a pointer to its first float) for
  /// the n columns (a multiple of L) of rows r < rows, and zeros for rows <= r < r_end (r0 < r_end is
  /// walked in steps of L): L × L blocks transposed in registers (the same values moved; a 16-bit row's
  /// whole pairs move as floats, Note [bf16 backward]).
  template <class RowOf>
  static void transpose_rows_of(const RowOf& row_of, index_t n, index_t rows, index_t r_end, float* t, index_t ldt) noexcept {
    alignas(64) static constexpr float zero_row[L] = {};
    const float* src[L];
    for (index_t r0 = 0; r0 < r_end; r0 += L)
      for (index_t c0 = 0; c0 < n; c0 += L) {
        for (int i = 0; i < L; ++i) src[i] = r0 + i < rows ? row_of(r0 + i) + c0 : zero_row;
        V::transpose(src, t + c0 * ldt + r0, ldt);
      }
  }
  /// The same for the rows of x (row stride ldx), padded with zero rows up to a multiple of L.
  static void transpose_rows(const float* x, index_t ldx, index_t n, index_t rows, float* t, index_t ldt) noexcept {
    transpose_rows_of([x, ldx](index_t r) noexcept { return x + r * ldx; }, n, rows, rows, t, ldt);
  }

  /// dd[r] = D of the query block's row r (dot_row(dO_r, O_r, d_v): the same multiply-adds in the same
  /// order, so the same bits) for r < rows, 0 for the padding up to rp; L rows at a time, each lane one
  /// row: the rows' dO and O are widened into w (2·L rows of dvp floats), and each L × L block of them
  /// transposed, so that a lane's chain runs over its row's elements in order.
  template <class In, class Out>
  static void row_dots(const backward_problem<In, Out>& pb, index_t ib, index_t q0, index_t rows, index_t rp,
                       std::span<const index_t> heads, float* w, float* dd) noexcept {
    const index_t dv = pb.v.d, dvp = pb.dvp, G = static_cast<index_t>(heads.size());
    float* wd = w;
    float* wo = w + L * dvp;
    float* td = w + 2 * L * dvp;
    float* to = td + L * L;
    const float* src[L];
    for (index_t r0 = 0; r0 < rp; r0 += L) {
      for (int i = 0; i < L; ++i) {
        float* a = wd + i * dvp;
        float* b = wo + i * dvp;
        if (r0 + i < rows) {
          const index_t r = r0 + i, pos = q0 + r / G, h = heads[static_cast<std::size_t>(r % G)];
          const In* ds = pb.q_row(pb.dout, ib, pos, h);
          const In* os = pb.q_row(pb.o, ib, pos, h);
          widen(ds, dv, dvp, a);
          widen(os, dv, dvp, b);
        } else {
          std::fill(a, a + dvp, 0.0f);
          std::fill(b, b + dvp, 0.0f);
        }
      }
      auto acc = V::zero();
      for (index_t c0 = 0; c0 < dv; c0 += L) {
        for (int i = 0; i < L; ++i) src[i] = wd + i * dvp + c0;
        V::transpose(src, td, L);
        for (int i = 0; i < L; ++i) src[i] = wo + i * dvp + c0;
        V::transpose(src, to, L);
        const index_t n = std::min<index_t>(L, dv - c0);
        for (index_t c = 0; c < n; ++c) acc = V::mul_add(V::load(td + c * L), V::load(to + c * L), acc);
      }
      V::store(dd + r0, acc);
    }
  }

  /// D = Σ a[c]·b[c] over c < n, one multiply-add at a time in c order with the tile's mul_add: the
  /// rounding of one lane of dP = V·dOᵀ (Note [backward numerics]). A, B: float, bf16 or f16 (widened).
  template <class A, class B>
  static float dot_row(const A* a, const B* b, index_t n) noexcept {
    auto acc = V::zero();
    for (index_t c = 0; c < n; ++c) acc = V::mul_add(V::set1(to_float(a[c])), V::set1(to_float(b[c])), acc);
    float out[L];
    V::store(out, acc);
    return out[0];
  }
};

/// The backward core. T: the inputs' element type (float, bf16, f16), G: the gradients' (float, or T; Note
/// [16-bit backward]). cu_q, cu_k: a ragged batch's offsets (Note [ragged backward]), or empty (dense).
template <class Isa, class T, class G>
void backward(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v, tensor_view<const T> o,
              tensor_view<const T> dout, std::span<const float> lse, tensor_view<G> dq, tensor_view<G> dk,
              tensor_view<G> dv, const head_map& map, const attention_options& opt,
              std::span<const index_t> cu_q = {}, std::span<const index_t> cu_k = {}) {
  using K = backward_kernel<Isa>;
  const float scale = opt.scale ? *opt.scale : 1.0f / std::sqrt(static_cast<float>(q.d));
  const index_t dp = round_up(q.d, K::L), dvp = round_up(v.d, K::L);

  std::vector<index_t> active;
  for (index_t g = 0; g < map.hkv(); ++g)
    if (map.group_size(g) > 0) active.push_back(g);
  const index_t n_active = static_cast<index_t>(active.size());
  const std::vector<index_t> kv_lengths = to_indices(opt.kv_lengths);  // read per row: no switch on the type
  backward_problem<T, G> pb{q, k, v, o, dout, lse, dq, &map, active.data(), scale, opt.causal, -1, -1,
                            opt.softcap, opt.alibi_slopes, kv_lengths, dp, dvp, cu_q, cu_k};
  // bf16 products where VDPBF16PS is the engine (Note [bf16 backward]; on AMX the backward keeps fp32).
  pb.bf16_products = bf16_tiles<Isa>::available && std::is_same_v<T, bf16> && opt.bf16_products &&
                     ::gqa::isa::bf16_dot_fast();
  const index_t n_seq = pb.sequences();
  const longest_sequence longest = pb.ragged() ? longest_of(cu_q, cu_k) : longest_sequence{q.s, k.s};
  const index_t sq = longest.sq, skv = longest.skv;
  pb.window_left = window_side(opt.window_left, sq, skv);
  pb.window_right = window_side(opt.window_right, sq, skv);
  const index_t base_tasks = n_seq * n_active;
  // Query ranges per (sequence, KV head): enough tasks, whole query blocks of the largest group, shapes
  // only; a sequence of n positions has ceil(n / range) of them.
  const index_t block_q = K::block_positions(std::max<index_t>(1, map.max_group_size()));
  const index_t n_qblocks = (sq + block_q - 1) / block_q;
  index_t n_ranges = 1;
  if (base_tasks > 0 && base_tasks < k_backward_min_tasks)
    n_ranges = std::min(n_qblocks, (k_backward_min_tasks + base_tasks - 1) / base_tasks);
  const index_t range = std::max<index_t>(1, (n_qblocks + n_ranges - 1) / n_ranges * block_q);
  n_ranges = (sq + range - 1) / range;
  const auto ranges_of = [&](index_t ib) { return (pb.sq_of(ib) + range - 1) / range; };

  // dK/dV accumulate straight into dk, dv when one task owns a KV head's keys and rows need no padding;
  // else into accumulators (kept by the calling thread for its next call: a fresh buffer of this size
  // costs a page fault per 4 KiB, measured at ~10% of P1's time), added in range order at the end.
  // Sequence ib's accumulators start at floats seq_acc[ib]: one slot of skv_of(ib)·(dp + dvp) per (active
  // KV head gi, range r), at (gi·ranges_of(ib) + r) slots.
  const bool direct = std::is_same_v<G, float> && n_ranges <= 1 && dp == k.d && dvp == v.d;
  std::vector<index_t> seq_acc(static_cast<std::size_t>(n_seq) + 1, 0);
  for (index_t ib = 0; ib < n_seq; ++ib)
    seq_acc[static_cast<std::size_t>(ib) + 1] =
        seq_acc[static_cast<std::size_t>(ib)] +
        (direct ? 0 : n_active * ranges_of(ib) * pb.skv_of(ib) * (dp + dvp));
  float* acc = direct ? nullptr : thread_scratch(static_cast<std::size_t>(seq_acc.back()), 1);
  const auto slot_of = [&](index_t ib, index_t gi, index_t r) {
    return acc + seq_acc[static_cast<std::size_t>(ib)] + (gi * ranges_of(ib) + r) * pb.skv_of(ib) * (dp + dvp);
  };
  const auto run_task = [&](index_t ib, index_t gi, index_t r) {
    const index_t p0 = r * range, p1 = std::min(pb.sq_of(ib), p0 + range), nk = pb.skv_of(ib);
    if constexpr (std::is_same_v<G, float>) {
      if (direct) {
        const index_t g = active[static_cast<std::size_t>(gi)];
        K::run(pb, ib, gi, p0, p1, pb.k_row(dk, ib, 0, g), dk.stride_s, pb.k_row(dv, ib, 0, g), dv.stride_s);
        return;
      }
    }
    float* a = slot_of(ib, gi, r);
    K::run(pb, ib, gi, p0, p1, a, dp, a + nk * dp, dvp);
  };
  if (!pb.ragged()) {
    // Task i: range n_ranges − 1 − i / base_tasks of (batch, active KV head) pair bg = i % base_tasks,
    // last ranges first: under a causal mask later positions see more keys, and the built-in loop hands
    // out tasks in index order, so the longest go first and the short ones even out the end. Pair bg
    // takes its sequence ib and KV head gi as Note [backward task order] says.
    const index_t lanes = std::min<index_t>(q.b, resolve_threads(opt.num_threads));
    run_tasks(n_ranges * base_tasks, executor_of(opt), [&](index_t i) {
      const index_t r = n_ranges - 1 - i / base_tasks;
      const dealt_task dt = deal_sequences(i % base_tasks, n_active, lanes, q.b);
      run_task(dt.seq, dt.local, r);
    });
  } else {
    // A ragged batch: the (sequence, KV head, range) tasks that exist, last ranges first (only sequences
    // long enough have them), sequences in order within a range (Note [ragged backward]).
    struct task {
      index_t ib, gi, r;
    };
    std::vector<task> tasks;
    for (index_t r = n_ranges - 1; r >= 0; --r)
      for (index_t ib = 0; ib < n_seq; ++ib)
        if (r < ranges_of(ib))
          for (index_t gi = 0; gi < n_active; ++gi) tasks.push_back({ib, gi, r});
    run_tasks(static_cast<index_t>(tasks.size()), executor_of(opt), [&](index_t i) {
      const task& t = tasks[static_cast<std::size_t>(i)];
      run_task(t.ib, t.gi, t.r);
    });
  }

  // KV heads that serve no query head get 0, and so do the keys of a sequence without queries; accumulated
  // ones, their ranges added in range order.
  run_tasks(n_seq * map.hkv(), executor_of(opt), [&](index_t t) {
    const index_t ib = t / map.hkv(), g = t % map.hkv(), nr = ranges_of(ib);
    const auto it = std::lower_bound(active.begin(), active.end(), g);
    const bool used = it != active.end() && *it == g && nr > 0;
    if (used && direct) return;
    const index_t nk = pb.skv_of(ib);
    if (!used) {
      for (index_t j = 0; j < nk; ++j) {
        G* dkr = pb.k_row(dk, ib, j, g);
        G* dvr = pb.k_row(dv, ib, j, g);
        std::fill(dkr, dkr + k.d, from_float<G>(0.0f));
        std::fill(dvr, dvr + v.d, from_float<G>(0.0f));
      }
      return;
    }
    // The ranges' sums in range order, in fp32 (into the first range's accumulator, which only this task
    // reads), then each element rounded once to G (a copy for float).
    const index_t slot = nk * (dp + dvp);
    float* const a0 = slot_of(ib, it - active.begin(), 0);
    for (index_t j = 0; j < nk; ++j) {
      float* ak = a0 + j * dp;
      float* av = a0 + nk * dp + j * dvp;
      for (index_t r = 1; r < nr; ++r) {
        const float* ark = ak + r * slot;
        const float* arv = av + r * slot;
        for (index_t c = 0; c < k.d; ++c) ak[c] += ark[c];
        for (index_t c = 0; c < v.d; ++c) av[c] += arv[c];
      }
      store_rounded(ak, k.d, pb.k_row(dk, ib, j, g));
      store_rounded(av, v.d, pb.k_row(dv, ib, j, g));
    }
  });

  // The sinks' gradient, one task per query head (Note [sink gradient]).
  if (!opt.dsinks.empty()) {
    run_tasks(q.h, executor_of(opt), [&](index_t h) {
      const double sink = opt.sinks[static_cast<std::size_t>(h)];
      double sum = 0.0;
      for (index_t ib = 0; ib < n_seq; ++ib)
        for (index_t pos = 0; pos < pb.sq_of(ib); ++pos) {
          const key_range keys = pb.keys_of(ib, pos);
          const float l = pb.lse_of(ib, h, pos);
          if (keys.hi <= keys.lo || l == k_neg_inf) continue;  // O = 0 whatever the sink
          sum += std::exp(sink - static_cast<double>(l)) *
                 static_cast<double>(K::dot_row(pb.q_row(dout, ib, pos, h), pb.q_row(o, ib, pos, h), v.d));
        }
      opt.dsinks[static_cast<std::size_t>(h)] = static_cast<float>(-sum);
    });
  }
}

// Note [ragged backward]
// The backward of a ragged batch (FlashAttention's varlen backward) is the dense backward's tasks with a
// sequence in place of a batch element: backward_problem maps (sequence, position, head) to a row of the
// packed views through the offsets (q_row, k_row), reads the LSE laid out [hq][total_q] (the ragged
// forward's), and masks each sequence by its own query and key counts (causal bottom-right per sequence,
// as the ragged forward). The query ranges have one length for the call, chosen from the longest
// sequence as the dense rule chooses it from sq, so a sequence of n positions has ceil(n / range) of
// them and its dK/dV accumulators are its own keys' rows only; the tasks that exist are listed last
// ranges first (so the longest sequences' tasks lead), sequences in order within a range. A sequence
// without queries gets dK = dV = 0 for its keys; one without keys has no rows that see a key (dQ = 0).
// The same bits for any thread count; a sequence's gradients are the dense backward's of that sequence
// alone whenever both calls have the same ranges (one range each: every task sees the same rows in the
// same order).

}  // namespace detail::core
GQA_END_NAMESPACE

#endif  // GQA_DETAIL_CORE_BACKWARD_HPP
