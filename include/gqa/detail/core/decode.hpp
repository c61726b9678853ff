// gqa/detail/core/decode.hpp: the scores of a decode task, which covers every KV head of a batch element,
// computed eight keys at a time and within them head by head, so that a BSHD cache is read in address order.
// Invariant: reads only the given keys' rows of K and V (and, with adjacent heads, the lines of unused KV
// heads among them); each score is a pure function of its row and key (and the call's shape).
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_DETAIL_CORE_DECODE_HPP
#define GQA_DETAIL_CORE_DECODE_HPP

#include <algorithm>
#include <cstdint>
#include <span>
#include <type_traits>

#include "../../head_map.hpp"
#include "../../isa/i8_dot.hpp"
#include "../../isa/vec.hpp"
#include "../../tensor.hpp"
#include "bf16_tiles.hpp"
#include "common.hpp"
#include "direct.hpp"
#include "dot.hpp"
#include "layout.hpp"

GQA_BEGIN_NAMESPACE
namespace detail::core {

// Note [decode tasks]
// When every KV head's group times the query length fits the direct path (decode: sq small), a task
// takes ALL KV heads of a batch element for a range of keys. Per block of keys it computes the scores
// eight keys at a time and, within them, head by head (decode::walk; Note [keys per step]): in a BSHD
// cache the heads of one position are adjacent, so K is read in address order; each head's softmax and
// P·V then take the keys 32 at a time, reading V in the same order (Note [fused decode walk] in
// forward.hpp). Why: measured on this project's 2-core AVX-512 machine, reading a 128 MiB BSHD cache (16384
// keys × 8 heads × 128) one head at a time (a 4 KB stride per key) streams at ~18-23 GB/s whatever the
// software prefetch distance, while the same bytes in address order stream at ~38-50 GB/s: the hardware prefetcher
// follows sequential demand loads, not strided ones, and software prefetches alone reached ~25 GB/s.
// D1 (1 × 32/8 heads × 128, 16384 keys) went from 18.6 to ~24 GB/s on one thread.

// Note [int8 decode products]
// With an int8 cache, decode's scores were fp32 dot products on the widened int8 K rows (Note [int8 K/V] in
// layout.hpp): per key and head two conversions per 16 elements (vpmovsxbd, vcvtdq2ps), shared by the
// head's rows, then one FMA per row and 16 elements. A profile of int8 D1 with the cache in L2 (AMD EPYC,
// 2026-12-06) put half of the time in those scores. Where the CPU has AVX512-VNNI (the AVX-512 core) or
// AVX-VNNI (the AVX2 core: VPDPBUSD on 32 bytes, VEX-encoded) and the call allows it
// (options.int8_products, on by default), a task of a decode call (the walk over several KV heads, Note
// [decode tasks], or one KV head's direct path: MQA decode) quantises
// each of its Q rows by gqa::quantize_q8's rule (scale = max|q| / 127, q / scale rounded to nearest even;
// isa::quantize_q8_row, the same bits as that rule's scalar code) and the walk's scores are integer
// dot products: VPDPBUSD multiplies 64 unsigned by 64 signed bytes and adds each four products to one of
// 16 int32 sums. K's bytes are made unsigned by flipping their top bit (k + 128, one XOR per 64 bytes,
// shared by the rows) and 128 · Σ q, kept per row, is subtracted from the exact int32 sum afterwards; the
// score is that sum times the row's factor (scale · log2(e) · Q's scale), then times K's scale (as the
// scores are stored, since 2026-12-06; the same two products as direct::scale_columns's pass made). Blocks
// of up to 4 rows × 4 keys, 16 sums, reduced together (AVX2, with 16 registers: 4 rows × 2 keys).
// Accuracy: the int32 sums are exact (d <= 65536: |sum| < 2^31), so the one new error is Q's rounding, as
// coarse as the cache's own rounding of K (Note [int8 products tolerance] in tests/support/tolerance.hpp);
// P·V, since 2026-12-06 in integers too, rounds the weights to 16 bits (Note [int8 decode P·V], below).
// A task whose Q holds a NaN or an infinity keeps the fp32
// products for all its rows (quantize_q8 would give such a row a NaN scale, not the naive softmax's
// NaN-where-the-math-gives-NaN). Prefill calls (K dequantised while packing) keep the fp32 products, and
// so do scalar, NEON (its SDOT is not used yet) and the AVX-512 core on CPUs without AVX512-VNNI. The AVX2
// core takes them on every CPU: without AVX-VNNI by the pre-VNNI instructions, the same sums (Note [int8
// products without VNNI] in isa/i8_dot.hpp).
// Measured (AMD EPYC, family 26 model 2, 2026-12-06, one thread pinned, the build before and after called
// alternately in one process, medians of 11-101 pairs, 32 query heads, d 128): 8 KV heads (4 rows each)
// 16384 keys 1.18x (2.80 against 3.26 ms), 512 keys (in L2) 1.24x; 16 KV heads 1.14x; 4 KV heads 1.22x;
// MHA (32 KV heads, one row each) 1.03x at 4096 keys, 1.08x at 256. On the way (8 KV heads): with a
// scalar quantiser and the intrinsic _mm512_dpbusd_epi32, 1.10x at 16384 keys and 1.02x at 256; with the
// vector quantiser 1.15x and 1.20x (512 keys); with VPDPBUSD as asm (GCC 12 had copied every accumulator
// per iteration of the intrinsic's loop: Note [VPDPBUSD by asm] in isa/i8_dot.hpp) 1.21x and 1.23x.
// AVX2 with AVX-VNNI (same machine and method): 8 KV heads 1.12x at 16384 keys and 1.20x at 512; 4 KV
// heads 1.10x; MQA 1.14x; MHA 1.08x.

// Note [int8 decode P·V]
// With the integer scores above, what remained of int8 decode with the cache in L2 was P·V (a third of the
// time: each V vector widened by two conversions, vpmovsxbd and vcvtdq2ps, then one FMA per row and 16
// values), the softmax and the two passes of K's and V's scales. Under the same option (int8_products) a
// unit's P·V (Note [fused decode walk] in forward.hpp) is also integer arithmetic (i8_decode::decode_pv),
// and a unit is the whole decode block (64 keys, not 32: the softmax's and the rounding's work per row and
// unit is then shared by twice the keys; 1.06-1.11x): per row, each weight times its V row's scale,
// p'_j = p_j · s_j (fp32, the product the scale pass made), is rounded to a 16-bit integer relative to the
// unit's largest, w_j = round(p'_j · 32767 / max|p'|); VPDPWSSD multiplies two keys' values at a time
// (each V row sign-extended to 16 bits, two keys' words interleaved: four instructions per 32 values and
// two keys, shared by the rows) by the row's pair (w_j, w_j+1) and adds both products to an int32 sum,
// exact (|w| <= 32767, |v| <= 128, 64 keys: below 2^28); the sums come back to fp32 times max|p'| / 32767
// and are added to O.
// Per row, two keys and 16 values: one instruction, where the fp32 products took two FMAs and their share
// of four conversions. K's scales now multiply the integer scores as they are stored (the same two fp32
// products as the scale pass made, so the scores keep their bits) and V's are taken in the rounding, so
// both scale passes are gone. A row whose unit's p' holds a NaN or an infinity (a NaN score, an infinite
// scale), or whose max|p'| is so small that 32767 / max|p'| overflows, takes the fp32 products for that
// unit (the naive softmax's rules hold exactly there); a unit of zero weights adds nothing; a cut unit
// (a causal or window edge inside it) takes the fp32 band, as before. decode_pv reads V at one stride, so a
// paged cache's chunk takes these products when it lies in one page (every chunk when the page size is a
// multiple of 64: the dense call's bits) and the fp32 products otherwise (kernel::pv_int8). Measured (AMD
// EPYC, 2026-12-06, one thread, D1's heads, pages of 16 slots, the two versions alternating): integer
// products page by page, each page's 16 weights rounded relative to their own largest, ran 0.98x the fp32
// products at 16384 keys (AVX2 0.93x), so smaller pages keep the fp32 products.
// Accuracy: each weight moves by at most half a step, max|p'| / 65534 of its unit, ~2^-16 relative to the
// unit's largest: bf16 decode rounds its weights to 2^-9 of their own size (Note [bf16 decode]), and the
// int8 cache itself holds V to 1/254 of each row's largest. Tests budget it by a bound (Note [int8 P·V
// tolerance] in tests/support/tolerance.hpp) and check the kernel against its definition exactly
// (int8_pv_matches_rounded_weights). Measured (AMD EPYC, family 26 model 2, 2026-12-06, one thread pinned,
// the build before and after called alternately in one process, medians of 21-41 pairs, 32 query heads, d
// 128): see design.md §2.9.

/// A decode task's Q rows quantised to int8 for VPDPBUSD (Note [int8 decode products]): row r at q + r·ld
/// (i8_decode<Isa>::padded_d(d) bytes), its scores' factor mul[r] = scale·log2(e)·(its quantisation scale) and
/// bias[r] = 128·Σ of its bytes.
struct q8_query {
  const std::int8_t* q;
  index_t ld;
  const float* mul;
  const std::int32_t* bias;
};

/// The int8 decode products of an ISA (Note [int8 decode products]): on x86-64 GCC/clang, AVX-512's
/// (isa::i8_dot) where the CPU has AVX512-VNNI (supported(): the run-time check) and AVX2's
/// (isa::i8_dot_avx2, with or without AVX-VNNI) everywhere; none elsewhere.
template <class Isa>
struct i8_decode {
  static constexpr bool available = false;
  static bool supported() noexcept { return false; }
};
#if GQA_HAS_AVX512 && GQA_X86_CPUID
template <>
struct i8_decode<isa::avx512> : isa::i8_dot {
  static constexpr bool available = true;
  static bool supported() noexcept { return ::gqa::isa::cpu().avx512_vnni; }
};
#endif
#if GQA_HAS_AVX2 && GQA_X86_CPUID
template <>
struct i8_decode<isa::avx2> : isa::i8_dot_avx2 {
  static constexpr bool available = true;
  static bool supported() noexcept { return true; }  // AVX-VNNI or not (Note [int8 products without VNNI])
};
#endif

/// S[r][u] = (scores of the task's rows r0 + r, r < rows, with the keys kr[u], u < n) times ks[u], n a
/// multiple of 4, through i8_decode::decode_scores four keys at a time (Note [int8 decode products]); s rows
/// at stride lds. The walk's step and one KV head's direct path both take it.
template <class Isa>
inline void q8_scores(index_t rows, const q8_query& q8, index_t r0, const std::int8_t* const* kr, const float* ks,
                      index_t n, index_t d, float* s, index_t lds) noexcept {
  if constexpr (i8_decode<Isa>::available) {
    for (index_t u = 0; u < n; u += 4)
      i8_decode<Isa>::decode_scores(static_cast<int>(rows), q8.q + r0 * q8.ld, q8.ld, kr + u, d, q8.mul + r0,
                                    q8.bias + r0, ks + u, s + u, lds);
  }
}

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
  // head-by-head order reads in order, and the same loads made D1 0.96x: fp32's V is read by each unit's
  // P·V right after the unit's scores, in the same order (Note [fused decode walk] in forward.hpp).
  // (Medians of 9 alternations, 16384 keys.) AVX2, with 16 registers, takes blocks of 4 rows ×
  // 2 keys (tile_shape::direct_qk_keys), so that a 16-bit or int8 K row is widened once per four rows, not
  // once per pair: at 16384 keys bf16 0.94x -> 0.99x and int8 0.98x -> 1.01x of the key-by-key walk
  // (fp32 1.04-1.07x); with the cache in L1/L2 AVX2 stays 3-9% behind the key-by-key walk for fp32 and
  // bf16 (int8 1.11x ahead), which is the price of one walk for every ISA.
  // Since 2026-12-05 the narrow steps' first accesses are prefetches into L1 (prefetch_lines_l1), every line as
  // before, not loads: a load that misses holds up every instruction after it until its line comes, a prefetch
  // does not, so the step's first dot products start on the lines that have come. Measured (Intel Xeon, one
  // thread, the two versions called alternately in one process, medians of 5-21 pairs, same bits): from DRAM
  // (bf16 D1 heads at 65536 keys, int8 at 131072) bf16 1.016-1.041x, int8 1.037-1.045x (AVX2 1.023x, 0.997x);
  // at 16384 keys (64 and 32 MiB, partly in this Xeon's L3) bf16 1.012-1.034x, int8 1.018-1.022x (AVX2 1.042x,
  // 1.014x); MHA (32 KV heads, 8192 keys) bf16 1.082x, int8 1.066x; in L2 (256 keys) 1.001x and 0.978x. Fewer
  // first loads (one per key row, or one per two lines) cost up to 0.65x from DRAM (design.md §2.4, "Where the
  // cache lies").

  // Note [decode first loads]
  // On AMD CPUs a decode call whose fp32 K and V reach 24 MiB first loads one element per cache line of
  // each step's K rows, all heads, in address order, and before each unit's P·V the same of the unit's V
  // rows (touch_lines: real loads; decode_first_loads in forward.hpp decides, per call). The eight-key walk
  // reads a step's K as 8 streams, one per key's page, head by head, and each unit's P·V reads V as 32 such
  // streams: the Xeon's hardware prefetcher follows that, the AMD EPYC's does not, and software prefetches
  // do not train it; demand loads in address order do. Measured (AMD EPYC, family 26 model 2, 2026-12-05,
  // one thread pinned, the two versions called alternately in one process, medians of 7-21 pairs, D1's
  // heads, AVX-512, the same bits; this host's memory is shared, and gains move with what its other guests
  // leave): against the walk without the loads, 16384 keys (128 MiB) 1.27x, 4096 keys (32 MiB) 1.27x, 65536
  // 1.29x, AVX2 1.09x (the walk at 13-18 GB/s); K's and V's lines both loaded at each step's start instead
  // gave 1.20-1.40x with the memory free but 0.98-1.05x contended, and 0.85-0.94x against these loads.
  // Below 24 MiB loads cost where the cache holds K/V (a step's first loads evict L1): 2048 keys (16 MiB)
  // 0.90x, 256 keys (L2) 0.77-0.80x. 16-bit and int8 K/V of 24 MiB or more on AMD CPUs, whose step (8 keys'
  // K and V rows, every KV head) fits in 32 KiB (since 2026-12-05, evening; MHA decode's 128 KiB steps of
  // bf16 evicted L1 before their arithmetic: 0.84x at 8192 keys, so larger steps keep the prefetches):
  // each step loaded one element per line of its keys' K and V rows, all heads, in address order
  // (their units follow the block's scores, so V's loads cannot wait for a unit), and while each head's
  // scores run it prefetches (into L1) that head's K and V rows of the next step's keys, so that those misses
  // are under way during the step's arithmetic and the next step's loads mostly hit. Measured (AMD EPYC,
  // one thread pinned, D1's heads at 16384 keys; the processes of the variants alternating, 3 runs of 60
  // calls each): against the prefetches of Note [keys per step] the loads alone gave bf16 K/V with bf16 Q
  // (VDPBF16PS, Note [bf16 decode]) 1.25x, with fp32 Q 1.15-1.2x, int8 1.05x; the prefetch of the next step
  // on top 1.10x, 1.05x and 1.29x. Against the build before (the two called alternately in one process, 11
  // pairs): bf16 Q/K/V 1.23x (with the VDPBF16PS engine), bf16 K/V 1.12x, int8 1.11x, fp32 0.98x (its code
  // unchanged). Earlier the same day the loads alone had made bf16 1.08-1.18x with the memory free but
  // 0.85x contended. Since 2026-12-06 the last step of a block prefetches the first keys of the task's next
  // block the same way, where two steps fit in 32 KiB (int8 D1: 16 KiB a step): before, each block's first
  // step found none of its lines on the way. int8 D1 (16384 keys) 1.03-1.05x, at 65536 keys 1.06x, AVX2
  // 1.03x (the two versions called alternately in one process, medians of 15-21 pairs, same bits); bf16
  // D1's 32 KiB steps 0.98-1.00x, so they stop at the block's end as before. Later on 2026-12-06, with those
  // prefetches of the next step in place, a narrow step's own first pass became prefetches into L1 too (as
  // without first_loads), not loads: bf16 Q/K/V 1.066-1.088x, bf16 K/V 1.084-1.093x, int8 1.028-1.088x
  // (six runs; the host's other guests move it) at 16384 keys, 1.084x and 1.080x at 65536; AVX2 1.042x
  // (bf16) and 1.026-1.028x (int8); with a process reading 1 GiB in a loop on the other vCPU, bf16 1.079x
  // and int8 1.066x (the two versions called alternately in one process, medians of 15-25 pairs, same
  // bits). V's lines alone as prefetches gave 1.01-1.03x, as L2
  // prefetches 0.96-0.99x. fp32 keeps its loads: its K lines as L1 prefetches ran 0.85x, with V's 0.74x.
  // Not kept: the next step's lines loaded (not prefetched) at each step's start instead
  // of the current step's (0.93x); the next step's lines prefetched at the step's start (0.95x); fp32 with
  // the per-head prefetch of the next step (0.80x). Tried, fp32: the
  // lines prefetched into L1 or L2 instead (1.09-1.10x), loads of every second or fourth line (0.81-0.91x),
  // prefetches 16-64 keys ahead (0.94-1.08x), the next step's lines loaded a part after each head of the
  // current step (0.76-0.79x). On the Intel Xeon loads of every line cost 0.83-0.90x from DRAM (design.md
  // §2.4), so other CPUs keep the walk as it was. The loads read nothing the scores and P·V do not read and
  // change no value.

  // Note [decode prefetches in cache]
  // On an AMD EPYC of family 25 model 17 (Zen 4, 2 vCPUs, 2026-12-06) the prefetches of Note [keys per step]
  // cost time where the caches hold K and V: a prefetch that finds its line in L2 or L3 still takes an L1
  // miss buffer and an issue slot, and the walk issues one per line of every step (D1's int8 steps: 256).
  // There, 16-bit and int8 decode calls whose K and V come to 8 MiB or less skip them (decode_step_prefetches
  // in forward.hpp decides, per call). Measured (that machine, one thread pinned, the two versions called
  // alternately in one process, medians of 15-21 pairs, AVX-512, the same bits): int8 D1's heads at 256,
  // 1024, 2048 and 4096 keys (0.5-8 MiB) 1.055x, 1.064x, 1.070x, 1.038x; bf16 K/V at 256 and 2048 keys 1.141x
  // and 1.060x; bf16 Q/K/V at 512 and 2048 keys 1.153x and 1.118x; MHA int8 (32 KV heads) at 256 keys 1.126x;
  // AVX2 int8 at 256 keys 1.041x, bf16 at 2048 1.012x. At 16 MiB they still pay: bf16 K/V at 4096 keys 0.80x
  // without them, MHA bf16 at 1024 keys 0.65x, int8 at 8192 keys 0.99x (AVX2 0.91x), MHA int8 at 2048 keys
  // 0.98x; from 24 MiB up the first loads and the loads ahead replace them (Notes [decode first loads],
  // [decode loads ahead]). On the Intel Xeon the same prefetches cost nothing measurable in L2 (Note [keys per
  // step]), so other CPUs keep them.

  // Note [decode loads ahead]
  // On an AMD EPYC of family 25 model 17 (Zen 4: 32 KiB of L1d, 1 MiB of L2, AVX-512 on 256-bit units;
  // 2 vCPUs, 2026-12-06) neither the prefetches of Note [keys per step] nor the first loads and next-step
  // prefetches of Note [decode first loads] let 16-bit and int8 decode overlap its arithmetic with memory:
  // D1's heads ran 242 ns per key with bf16 K/V in L2 or L3 (256 and 2048 keys) and 484-532 from DRAM
  // (16384 keys), int8 158 and 347-430 ns, more than the arithmetic plus the bytes at the read probe's rate
  // (int8: 158 + 85). There, 16-bit and int8 decode calls whose K and V reach 24 MiB load one element of
  // every cache line of the keys `ahead` keys past each step, all heads, in address order (as many keys as
  // hold 16 KiB of K: 16 for int8 D1, 8 for bf16, 2-4 for MHA's 32 heads), and nothing else: the step's own
  // lines then mostly hit. decode_ahead_keys in forward.hpp decides, per call; fp32 and other CPUs keep
  // the walk as it was. Measured (that machine, one thread pinned, the two versions called alternately in
  // one process, medians of 5-15 pairs, AVX-512, the same bits): int8 D1 at 16384 keys 1.27-1.33x (seven
  // runs), at 65536 1.16-1.27x, MHA int8 (32 KV heads, 8192 keys) 1.33-1.38x; bf16 K/V 1.08-1.22x, bf16
  // Q/K/V 1.13-1.23x, MHA bf16 1.08-1.18x; AVX2 bf16 1.07-1.14x. Not kept: the same for int8 K whose
  // products are fp32 (AVX2 without AVX-VNNI, 0.93x: the widening conversions make that step compute-bound)
  // and for fp32 K/V (against its first loads 0.96-1.13x at 16384 keys and 1.04x at 4096; below 24 MiB
  // 1.26-1.29x at 2048 keys but 0.70-0.74x at 512 and 1024); a load of every second, fourth or sixteenth
  // line (0.93-1.01x: every line must be asked for; the hardware prefetcher does not fill the gaps), the
  // lines prefetched into L1 or L2 32 keys ahead instead of loaded (0.79x and 1.0x), and the loads ahead on
  // top of the step's own prefetches (1.12-1.14x for int8, 0.98x bf16). Since the AVX2 core's int8 products
  // run without AVX-VNNI (Note [int8 products without VNNI] in isa/i8_dot.hpp), they load ahead only where
  // a step is too large for the first loads of Note [decode first loads] (MHA's 32 heads: 1.33-1.44x against
  // no loads ahead); with the first loads the loads ahead ran 0.84x (D1) and 0.85-0.91x (16 KV heads; 11
  // pairs each). The loads read nothing the walk does not read (up to the task's last key) and change no
  // value.

  /// Keys of a unit of the walk, the keys each head's online softmax and P·V take at a time (Note [fused
  /// decode walk] in forward.hpp): whole score steps and whole vectors of scores on every ISA.
  static constexpr index_t unit_keys = 32;
  static_assert(unit_keys % step_keys == 0 && unit_keys % isa::vec<Isa>::lanes == 0);
  /// Whether a unit's softmax and P·V run right after its scores (fp32 K/V), or after the whole block's
  /// scores (16-bit and int8, whose decode is bound by its arithmetic, not by memory).
  template <class T>
  static constexpr bool fused = sizeof(T) == sizeof(float);

  /// Rows of the task: for each KV head heads[i], its group's query heads × npos positions, head-major
  /// (Note [tile rows]), Qp row stride d, head i's rows from row r0_i (the sum of the earlier heads' rows).
  /// For keys j0 .. j0 + nb − 1 of batch element ib (its K/V rows found through the layout, Note
  /// [layouts]): writes S[row][j − j0] (row stride lds), step_keys keys at a time and within them KV head
  /// by KV head, and calls step(i, r0_i, x, n) for each unit of keys [x, x + n) (block-relative, unit_keys
  /// keys but the last; with q8 the whole block) and each head i, in key order: the head's softmax and P·V
  /// on the unit. For fp32
  /// K/V each unit's calls follow its scores (fused<T>), otherwise they follow the whole block's. Keys past
  /// the block's last repeat it up to a whole unit: s rows need room for round_up(nb, unit_keys) columns.
  /// 16-bit and int8 steps (adjacent heads) first prefetch every cache line of their keys' K and V rows,
  /// all heads, in address order (Note [keys per step]), unless prefetch is false (Note [decode prefetches
  /// in cache]). first_loads (adjacent heads; Note [decode first
  /// loads]): fp32 steps first load one element per cache line of their keys' K rows, and each unit the same
  /// of its keys' V rows before its P·V; in 16-bit and int8 steps each head prefetches its rows of the next
  /// step's keys, the task's next block's first ones after the last step (after: the keys the task reads
  /// past this block). ahead (16-bit and int8 K/V; Note [decode loads ahead]): when > 0, each step instead
  /// loads one element per cache line of the K and V rows, all heads, of the keys `ahead` keys past it (up
  /// to the task's last key), and the step's own lines are not prefetched. q16 (bf16 K/V only; else
  /// nullptr): the rows' bf16 Q, padded_d(d) elements each, whose scores are computed by VDPBF16PS and
  /// multiplied by qscale (Note [bf16 decode]); qp then is not read. q8 (int8 K/V only; else nullptr): the
  /// rows quantised to int8, whose scores are computed by VPDPBUSD and multiplied by their keys' K scales
  /// here (Note [int8 decode products]); qp then is not read either.
  template <class Lay, class Step>
  static void walk(const Lay& lay, index_t ib, const head_map& map, std::span<const index_t> heads, index_t npos,
                   index_t j0, index_t nb, index_t after, bool first_loads, index_t ahead, bool prefetch,
                   const float* qp, const std::uint16_t* q16, const q8_query* q8, float qscale, float* s, index_t lds,
                   Step&& step) noexcept {
    using T = typename Lay::kv_type;
    constexpr index_t KU = step_keys;
    const index_t span = fused<T> ? unit_keys : nb;  // keys scored before their units' steps
    const auto& k = lay.k;  // tensor_view<const T>
    const auto& v = lay.v;
    const index_t d = k.d;
    const typename D::extent de(d);
    const bool heads_adjacent = k.stride_h == d && v.stride_h == v.d;
    // Each step's first pass over its keys' rows, all heads, in address order: for fp32 with first_loads,
    // loads of K's (and V's per unit, before its P·V; Note [decode first loads]); for narrow K/V, prefetches
    // (Note [keys per step]), and with first_loads each head's prefetch of its rows of the next step.
    // Narrow K/V on Zen 4: instead, a load of every line of the keys `ahead` keys past each step, all heads
    // (Note [decode loads ahead]); int8 K only with the integer products, and on AVX2 (no AVX-VNNI on those
    // CPUs) only where the steps are too large for first_loads.
    const bool far_int8 = q8 != nullptr && (std::is_same_v<Isa, isa::avx512> || !first_loads);
    const index_t far = heads_adjacent && !fused<T> && (!std::is_same_v<T, std::int8_t> || far_int8) ? ahead : 0;
    const bool loads = heads_adjacent && first_loads && far == 0;
    const bool prefetches = heads_adjacent && !first_loads && !fused<T> && far == 0 && prefetch;
    const bool touch_unused = heads_adjacent && !loads && !prefetches && far == 0;
    const index_t far_end = j0 + nb + after;  // the keys the task reads from this block on
    index_t far_j = std::min(j0 + far, far_end);
    auto far_cur = lay.kv_cursor(ib, far_j);
    const bool cross = 2 * KU * k.h * (d + v.d) * static_cast<index_t>(sizeof(T)) <= 32 * 1024;
    const auto touch_head = [&](kv_loc at, index_t g) noexcept {
      touch_lines(k.row(at.b, at.s, g), k.d);
      touch_lines(v.row(at.b, at.s, g), v.d);
    };
    auto cur = lay.kv_cursor(ib, j0);
    kv_loc last{};
    kv_loc unit_at[unit_keys]{};  // fp32 with loads: the unit's keys, whose V lines are loaded before its P·V
    for (index_t u0 = j0; u0 < j0 + nb; u0 += span) {
      const index_t un = std::min(span, j0 + nb - u0);
      for (index_t j = u0; j < u0 + round_up(un, unit_keys); j += KU) {
        const index_t keys = std::clamp<index_t>(u0 + un - j, 0, KU);  // real keys; the rest repeat the last
        kv_loc at[KU];
        for (index_t u = 0; u < KU; ++u) {
          if (u < keys) {
            last = cur.loc();
            cur.next();
          }
          at[u] = last;
        }
        for (index_t e = 0; e < KU && far > 0 && far_j < far_end; ++e, ++far_j, far_cur.next()) {
          const kv_loc at_far = far_cur.loc();
          touch_lines(k.row(at_far.b, at_far.s, 0), k.h * d);
          touch_lines(v.row(at_far.b, at_far.s, 0), v.h * v.d);
        }
        // The step's first pass: narrow K/V's lines prefetched into L1, fp32's K lines loaded (its V lines
        // before each unit's P·V, below).
        for (index_t e = 0; e < keys && (loads || prefetches); ++e) {
          const T* kr0 = k.row(at[e].b, at[e].s, 0);
          if constexpr (fused<T>) {
            touch_lines(kr0, k.h * d);
            unit_at[j - u0 + e] = at[e];
          } else {
            prefetch_lines_l1(kr0, k.h * d);
            prefetch_lines_l1(v.row(at[e].b, at[e].s, 0), v.h * v.d);
          }
        }
        // Narrow K/V with loads: the next step's keys, whose rows each head prefetches below (past the block's
        // last step, the first of the task's next block, when two steps fit in 32 KiB: Note [decode first loads]).
        kv_loc next_at[KU];
        index_t n_next = 0;
        if (loads && !fused<T>) {
          auto c = cur;
          n_next = std::clamp<index_t>(j0 + nb + (cross ? after : 0) - (j + KU), 0, KU);
          for (index_t e = 0; e < n_next; ++e, c.next()) next_at[e] = c.loc();
        }
        index_t r0 = 0;
        for (std::size_t i = 0; i < heads.size(); ++i) {
          const index_t g = heads[i];
          // KV heads that serve no query head (KDGQA/DGQA may leave some) would leave holes in the address-
          // order stream, and a stream with holes is not followed by the hardware prefetcher (decode with
          // one unused head of 8 measured 2x slower): when heads are adjacent in memory, load one float
          // per cache line of the unused heads before this one too (unless the step's first pass loaded or
          // prefetched them).
          for (index_t u = (i == 0 ? 0 : heads[i - 1] + 1); u < g && touch_unused; ++u)
            for (index_t e = 0; e < keys; ++e) touch_head(at[e], u);
          const index_t rows = map.group_size(g) * npos;
          for (index_t e = 0; e < n_next; ++e) {
            prefetch_lines_l1(k.row(next_at[e].b, next_at[e].s, g), d);
            prefetch_lines_l1(v.row(next_at[e].b, next_at[e].s, g), v.d);
          }
          const T* kr[KU];
          for (index_t u = 0; u < KU; ++u) kr[u] = k.row(at[u].b, at[u].s, g);
          if constexpr (bf16_tiles<Isa>::available && std::is_same_v<T, bf16>) {
            if (q16 != nullptr) {  // Note [bf16 decode]
              const index_t dp = bf16_tiles<Isa>::padded_d(d);
              bf16_tiles<Isa>::decode_scores(rows, q16 + r0 * dp, dp, kr, d, qscale, s + r0 * lds + (j - j0), lds);
              r0 += rows;
              continue;
            }
          }
          if constexpr (i8_decode<Isa>::available && std::is_same_v<T, std::int8_t>) {
            if (q8 != nullptr) {  // Note [int8 decode products]; the scores leave with their K scales
              static_assert(KU % 4 == 0);
              float ks[KU];
              for (index_t u = 0; u < KU; ++u) ks[u] = *lay.scales.k.row(at[u].b, at[u].s, g);
              q8_scores<Isa>(rows, *q8, r0, kr, ks, KU, d, s + r0 * lds + (j - j0), lds);
              r0 += rows;
              continue;
            }
          }
          direct<Isa>::score_step(kr, de, qp + r0 * d, rows, s + r0 * lds + (j - j0), lds);
          r0 += rows;
        }
        for (index_t u = heads.back() + 1; u < k.h && touch_unused; ++u)
          for (index_t e = 0; e < keys; ++e) touch_head(at[e], u);
      }
      // fp32 with loads (span is one unit): the unit's V rows, all heads, in address order.
      for (index_t e = 0; e < un && loads && fused<T>; ++e)
        touch_lines(v.row(unit_at[e].b, unit_at[e].s, 0), v.h * v.d);
      for (index_t i = 0, r0 = 0; i < static_cast<index_t>(heads.size()); ++i) {
        // With the int8 products a unit is the whole block (Note [int8 decode P·V]).
        const index_t uk = q8 != nullptr ? un : unit_keys;
        for (index_t x = u0 - j0; x < u0 - j0 + un; x += uk) step(i, r0, x, std::min(uk, u0 - j0 + un - x));
        r0 += map.group_size(heads[static_cast<std::size_t>(i)]) * npos;
      }
    }
  }
};

}  // namespace detail::core
GQA_END_NAMESPACE

#endif  // GQA_DETAIL_CORE_DECODE_HPP
