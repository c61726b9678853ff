// gqa/detail/core/common.hpp: the core's ISA-independent constants and index arithmetic.
// Invariant: nothing here depends on the ISA or includes an ISA header, so a translation unit that builds
// the core once per ISA (run-time dispatch) can include this once, outside any per-ISA region.
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_DETAIL_CORE_COMMON_HPP
#define GQA_DETAIL_CORE_COMMON_HPP

#include <algorithm>
#include <limits>
#include <span>

#include "../../config.hpp"
#include "../../numeric.hpp"

GQA_BEGIN_NAMESPACE
namespace detail::core {

inline constexpr float k_log2e = 1.4426950408889634f;
inline constexpr float k_ln2 = 0.6931471805599453f;
inline constexpr float k_neg_inf = -std::numeric_limits<float>::infinity();

/// x rounded up to a multiple of m (x >= 0, m >= 1).
constexpr index_t round_up(index_t x, index_t m) noexcept { return (x + m - 1) / m * m; }
/// Largest power of two <= x (x >= 1).
constexpr int pow2_floor(int x) noexcept { return x < 2 ? 1 : 2 * pow2_floor(x / 2); }

/// Task t of a call over b sequences with per_seq tasks each, the sequences dealt in sets of `lanes` (the
/// call's threads, at most b; Notes [forward task order], [backward task order]): task w of a set takes
/// sequence w mod (the set's size) and that sequence's task w / (the set's size). With lanes = 1 this is
/// {t / per_seq, t % per_seq}.
struct dealt_task {
  index_t seq, local;
};
inline dealt_task deal_sequences(index_t t, index_t per_seq, index_t lanes, index_t b) noexcept {
  const index_t per_set = lanes * per_seq, first = t / per_set * lanes;
  const index_t count = std::min(lanes, b - first), w = t % per_set;
  return {first + w % count, w / count};
}

/// The most query positions and the most keys of any sequence of a ragged batch with offsets cu_q, cu_k
/// (what a dense call's sq and skv are to it).
struct longest_sequence {
  index_t sq, skv;
};
inline longest_sequence longest_of(std::span<const index_t> cu_q, std::span<const index_t> cu_k) noexcept {
  longest_sequence l{0, 0};
  for (std::size_t i = 0; i + 1 < cu_q.size(); ++i) {
    l.sq = std::max(l.sq, cu_q[i + 1] - cu_q[i]);
    l.skv = std::max(l.skv, cu_k[i + 1] - cu_k[i]);
  }
  return l;
}

/// Keys [lo, hi) (empty when hi <= lo).
struct key_range {
  index_t lo, hi;
};

/// A window side (options.window_left/right) as the core holds it for a call of at most sq queries and skv
/// keys per sequence: -1 (unbounded) for -1 and for a side of sq + skv or more, which bounds nothing (and
/// keeps p ± side inside index_t).
constexpr index_t window_side(index_t w, index_t sq, index_t skv) noexcept { return w < 0 || w >= sq + skv ? -1 : w; }

/// The keys query position pos of a sequence with q_len queries and kv_len keys sees: j < kv_len and, with
/// the row's diagonal key p = pos + (kv_len - q_len) (bottom-right alignment), j <= p when causal and
/// p - wl <= j <= p + wr for the window's bounded sides (wl, wr from window_side()). lo and hi are
/// non-decreasing in pos; an empty range has hi == lo.
constexpr key_range visible_key_range(index_t pos, index_t q_len, index_t kv_len, bool causal, index_t wl,
                                      index_t wr) noexcept {
  const index_t p = pos + (kv_len - q_len);
  index_t lo = 0, hi = kv_len;
  if (causal) hi = std::min(hi, p + 1);
  if (wr >= 0) hi = std::min(hi, p + wr + 1);
  if (wl >= 0) lo = std::clamp<index_t>(p - wl, 0, kv_len);
  return {lo, std::max(hi, lo)};
}

// Note [causal staircase]
// Inside a key block cut by the causal horizon, row r sees only the block's first lim(r) keys, and lim is
// non-decreasing in r (rows go by position). P·V must not merely weight the hidden keys by 0: a NaN or
// infinite V element times 0 is NaN, which would cross the mask. So the rows' P·V runs as a staircase:
// keys [0, lim(0)) for rows [0, n), then keys [lim(0), lim(1)) for rows [1, n), and so on. Every output
// element is still one chain over its keys in ascending order, so for finite V the result is bitwise that
// of the full block with zero weights (fma(0, v, acc) = acc), and it skips the hidden keys' FMAs.
// A sliding window adds a lower edge: row r sees keys [lo(r), hi(r)), both non-decreasing in r, a band.
// band() cuts it at every distinct edge into rectangles (rows [r0, r1), keys [a, b)) in which every row
// sees every key; a row's rectangles still come in ascending key order, so the same holds. With lo = 0 the
// band is the staircase above, step for step.

/// For rows [0, n) seeing keys [lo(r), hi(r)) (lo and hi non-decreasing in r; a row with lo >= hi sees
/// nothing): fn(r0, r1, k_lo, k_hi) for each rectangle of the band, meaning rows [r0, r1) take keys
/// [k_lo, k_hi) (r0 < r1, k_lo < k_hi, in ascending key order). See Note [causal staircase].
template <class Lo, class Hi, class Fn>
GQA_FORCEINLINE void band(index_t n, Lo&& lo, Hi&& hi, Fn&& fn) {
  if (n <= 0) return;
  index_t k = lo(0);
  index_t r0 = 0, r1 = 0;  // rows [r0, r1) see key k: before r0 ended at or before k, from r1 start after k
  for (;;) {
    while (r1 < n && lo(r1) <= k) ++r1;
    while (r0 < n && hi(r0) <= k) ++r0;
    if (r0 >= n) return;
    if (r0 >= r1) {  // no row sees key k: jump to the next row's first key
      k = lo(r1);
      continue;
    }
    const index_t next = r1 < n ? std::min(lo(r1), hi(r0)) : hi(r0);
    fn(r0, r1, k, next);
    k = next;
  }
}

/// B operands of the register tile (tile.hpp), by how their rows are found: at one stride (every product
/// of the core, V read in place from a dense view) or listed one pointer per row (V read in place from a
/// paged cache, Note [key runs]); col is the first column of the slab the tile computes. T: the element
/// type of B (float; bf16 or f16 for V read in place from a 16-bit cache, widened as it is loaded).
template <class T>
struct strided_b {
  const T* base;
  index_t ld;
  const T* row(index_t k) const noexcept { return base + k * ld; }
};
template <class T>
struct listed_b {
  const T* const* rows;
  index_t col;
  const T* row(index_t k) const noexcept { return rows[k] + col; }
};

/// A real load of a byte at p whose value is discarded (the compiler may not drop it; unlike a prefetch
/// hint it is never ignored by the CPU and trains the hardware prefetcher).
GQA_FORCEINLINE void touch(const void* p) noexcept {
  const unsigned char x = *static_cast<const volatile unsigned char*>(p);
  static_cast<void>(x);
}
/// touch() of one element per 64-byte cache line of the n elements at p.
template <class T>
GQA_FORCEINLINE void touch_lines(const T* p, index_t n) noexcept {
  constexpr index_t per_line = 64 / static_cast<index_t>(sizeof(T));
  for (index_t x = 0; x < n; x += per_line) touch(p + x);
}
/// A prefetch into L1 of each 64-byte cache line of the n elements at p: unlike touch(), it does not hold
/// up the instructions after it while its line comes (Note [keys per step] in decode.hpp).
template <class T>
GQA_FORCEINLINE void prefetch_lines_l1(const T* p, index_t n) noexcept {
  constexpr index_t per_line = 64 / static_cast<index_t>(sizeof(T));
  for (index_t x = 0; x < n; x += per_line) GQA_PREFETCH_L1(p + x);
}

/// dst[0, n) = f(src[c]) rounded once to T (from_float: nearest even; f's value itself for float), in
/// blocks of 16 of a fixed count, which GCC -O2 vectorises (a loop of variable count it does not), then the
/// rest. The forward's 16-bit O rows (f: times 1 / l) and the backward's 16-bit gradients (f: identity).
/// Against element-by-element rounding (std::transform; AMD EPYC Zen 5, one thread, bf16 inputs and
/// gradients, the two called alternately, the same bits): the backward on ViT's MHA heads 1.32x, P3 1.20x.
/// Inlined: a call per row (one per dQ row and per summed dK/dV row) cost that backward 1-2%.
template <class T, class F>
GQA_FORCEINLINE void store_rounded(const float* src, index_t n, T* dst, const F& f) noexcept {
  index_t c = 0;
  for (; c + 16 <= n; c += 16)
    for (int i = 0; i < 16; ++i) dst[c + i] = from_float<T>(f(src[c + i]));
  for (; c < n; ++c) dst[c] = from_float<T>(f(src[c]));
}
template <class T>
GQA_FORCEINLINE void store_rounded(const float* src, index_t n, T* dst) noexcept {
  store_rounded(src, n, dst, [](float x) noexcept { return x; });
}

}  // namespace detail::core
GQA_END_NAMESPACE

#endif  // GQA_DETAIL_CORE_COMMON_HPP
