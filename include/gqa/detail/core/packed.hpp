// gqa/detail/core/packed.hpp: the tiled (prefill) path: a block of K packed transposed and V packed with
// padded rows, then S = Qp·Kp and O += P·Vp by the register tile over MR × NR-vector blocks.
// Invariant: packed buffers are fully written (padding is zero), so tiles read only initialised floats.
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_DETAIL_CORE_PACKED_HPP
#define GQA_DETAIL_CORE_PACKED_HPP

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../../isa/vec.hpp"
#include "common.hpp"
#include "layout.hpp"
#include "tile.hpp"

GQA_BEGIN_NAMESPACE
namespace detail::core {

// Note [prefetch next block]
// A prefill task packs every K/V block of its KV head, and in a BSHD cache the rows of one head are
// Hkv · d elements apart (4 KB for 8 heads of 128 floats): each row starts on a new page, which the
// hardware prefetcher does not follow, so packing waited on L3 for every row (perf, P1 on AVX-512,
// 2026-12-02: the K transposition ~8% of the time whether scalar or in registers, the V copy ~4%, both
// load-bound). So while the tiles of block n compute its scores, prefetch_rows walks the K and V rows of
// block n + 1 a few cache lines per tile (software prefetch into L2, which holds the block's 2 · bk · d ·
// 4 bytes, 128 KB at bk = d = 128): the lines arrive during ~10^5 cycles of FMAs instead of stalling the
// packing. Paged blocks list their rows per block (no next-block list yet) and are not prefetched. A
// next block that the thread keeps packed already (Note [packed K/V reuse] in forward.hpp) is fetched as
// its contiguous packed lines instead (prefetch_lines): the kept blocks of a KV head outgrow L2.

/// Where a row lies: its first byte and its size (bytes 0 for none).
struct byte_span {
  const char* p = nullptr;
  index_t bytes = 0;
};

/// Prefetch (for reading, into L2) of every cache line of a sequence of rows, `per_step` lines per call:
/// rows.next() gives the next row, or bytes 0 after the last.
template <class Rows>
struct prefetch_row_lines {
  Rows rows{};
  index_t per_step = 0;
  const char* at = nullptr;  // the next line to prefetch; end: one past the current row's last byte
  const char* end = nullptr;
  void operator()() noexcept {
    for (index_t i = 0; i < per_step; ++i) {
      if (at >= end) {
        const byte_span r = rows.next();
        if (r.bytes <= 0) return;
        end = r.p + r.bytes;
        at = reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(r.p) & ~std::uintptr_t{63});
      }
      GQA_PREFETCH_L2(at);
      at += 64;
    }
  }
};

/// Rows 0 .. n − 1 of the row sources k and v (k_bytes and v_bytes each), as k(0), v(0), k(1), v(1), ...
template <class KRows, class VRows>
struct kv_row_list {
  KRows k{};
  VRows v{};
  index_t n = 0, k_bytes = 0, v_bytes = 0;
  index_t row = 0, side = 0;  // the next row and which of k (0), v (1)
  byte_span next() noexcept {
    if (row >= n) return {};
    const byte_span r = side == 0 ? byte_span{reinterpret_cast<const char*>(k(row)), k_bytes}
                                  : byte_span{reinterpret_cast<const char*>(v(row)), v_bytes};
    if (side == 1) ++row;
    side ^= 1;
    return r;
  }
};

/// The K and V rows of a block, prefetched a few lines per step (Note [prefetch next block]).
template <class KRows, class VRows>
using prefetch_rows = prefetch_row_lines<kv_row_list<KRows, VRows>>;

/// Prefetch (into L2) of the cache lines of `floats` contiguous floats from `p`, spread over `steps`
/// steps: the next kept block of a KV head (Note [packed K/V reuse] in forward.hpp).
struct prefetch_lines {
  const char* at = nullptr;
  const char* end = nullptr;
  index_t per_step = 0;
  prefetch_lines() = default;
  prefetch_lines(const float* p, index_t floats, index_t steps) noexcept
      : at(reinterpret_cast<const char*>(p)), end(reinterpret_cast<const char*>(p + floats)),
        per_step((floats * 4 / 64 + steps) / std::max<index_t>(steps, 1)) {}
  void operator()() noexcept {
    for (index_t i = 0; i < per_step && at < end; ++i, at += 64) GQA_PREFETCH_L2(at);
  }
};

/// A step that does nothing (no next block, or rows not known in advance).
struct no_prefetch {
  void operator()() const noexcept {}
};

template <class Isa>
struct packed {
  using V = isa::vec<Isa>;
  using shape = typename V::tile_shape;
  static constexpr int L = V::lanes;
  static constexpr int MR = shape::mr, NR = shape::nr;
  /// Keys per packed slice of Kᵀ: the columns of one tile.
  static constexpr index_t cols = static_cast<index_t>(NR) * L;

  // Note [balanced slices]
  // A block's nbp keys (a multiple of L) are cut into ceil(nbp / cols) slices of Kᵀ, each the columns of one
  // register tile, of near-equal width: 13 vectors (P3's 197 keys, padded to 208 on AVX-512) as 4 + 3 + 3 + 3
  // vectors rather than 4 + 4 + 4 + 1. A one-vector tile does MR FMAs per loaded K vector and MR broadcasts,
  // and ran at about half the wider tiles' rate (perf, P3 on AVX-512: the 6 × 1 tile 3.6% of the time for
  // 1/13 of Q·Kᵀ). Each score is the same chain of FMAs over d whatever its tile's width, so the slicing
  // changes no bit. pack_k and scores() take their slices from here, so they always agree.
  /// fn(s0, w) for each slice of a block of nbp keys: keys [s0, s0 + w), in order.
  template <class Fn>
  static GQA_FORCEINLINE void for_each_slice(index_t nbp, Fn&& fn) noexcept {
    const index_t nv = nbp / L, ns = (nv + NR - 1) / NR;
    for (index_t i = 0, s0 = 0; i < ns; ++i) {
      const index_t w = (nv / ns + (i < nv % ns ? 1 : 0)) * L;
      fn(s0, w);
      s0 += w;
    }
  }

  /// The first key of the slice that holds key x of a block of nbp keys (x < nbp): where scores() may start
  /// (Note [windows on the block grid] in forward.hpp).
  static index_t slice_at(index_t nbp, index_t x) noexcept {
    index_t at = 0;
    for_each_slice(nbp, [&](index_t s0, index_t) noexcept {
      if (s0 <= x) at = s0;
    });
    return at;
  }

  /// dst[0 .. n) = the n elements at src (float, bf16 or f16) as floats, widened a vector at a time.
  template <class T>
  static GQA_FORCEINLINE void widen(const T* src, index_t n, float* dst) noexcept {
    index_t c = 0;
    for (; c + L <= n; c += L) V::store(dst + c, V::load(src + c));
    if (c < n) V::store_partial(dst + c, V::load_partial(src + c, static_cast<int>(n - c)), static_cast<int>(n - c));
  }

  /// dst[0 .. n) = scale · the n elements at src (any element type), one fp32 product each: an int8 row times
  /// its scale (Note [int8 K/V]), a query row times scale·log2(e) (Note [base-2 softmax]).
  template <class T>
  static GQA_FORCEINLINE void widen(const T* src, index_t n, float scale, float* dst) noexcept {
    const auto vs = V::set1(scale);
    index_t c = 0;
    for (; c + L <= n; c += L) V::store(dst + c, V::mul(V::load(src + c), vs));
    if (c < n) {
      const int t = static_cast<int>(n - c);
      V::store_partial(dst + c, V::mul(V::load_partial(src + c, t), vs), t);
    }
  }

  /// Row j of row source `rows` (n elements) as floats at dst: widened, and multiplied by the row's scale
  /// when the rows carry one (int8).
  template <class Rows>
  static GQA_FORCEINLINE void widen_row(const Rows& rows, index_t j, index_t n, float* dst) noexcept {
    if constexpr (scaled_rows<Rows>) {
      widen(rows(j), n, rows.scale(j), dst);
    } else {
      widen(rows(j), n, dst);
    }
  }

  /// kp = Kᵀ of the nb keys of row source `k` (key j at k(j), d elements; Note [key runs]) in slices of
  /// `cols` keys: slice n is [d][w_n] with w_n its width (the last may be narrower); keys nb .. nbp − 1
  /// are zero. 16-bit and int8 rows are first widened (int8 times its row's scale), a row at a time, into
  /// `stage` (nb × d floats; unused for float rows), then transposed from there (Note [16-bit K/V]). Widening inside the transpose instead,
  /// 8 elements at a time through a small buffer read back as scalars, made 16-bit P1 on AVX-512 7-17%
  /// slower than fp32 (shared machine, 2026-12-01); staged, it runs at fp32's speed (0.99-1.02x).
  template <class Rows>
  static void pack_k(const Rows& k, index_t d, index_t nb, index_t nbp, float* kp, float* stage = nullptr) noexcept {
    if constexpr (std::is_same_v<typename Rows::element, float>) {
      transpose_k(k, d, nb, nbp, kp);
    } else {
      for (index_t j = 0; j < nb; ++j) widen_row(k, j, d, stage + j * d);
      transpose_k(strided_rows<float>{stage, d}, d, nb, nbp, kp);
    }
  }

  /// pack_k of float rows: each slice's keys in groups of L, each group's columns in L × L blocks
  /// transposed in registers (isa::vec::transpose), the last d % L columns one element at a time; keys
  /// nb .. nbp − 1 read as zero rows. The scalar transposition it replaced (8 columns at a time, keys
  /// inner) took ~8% of P1's time on AVX-512 (perf, 2026-12-02: 42% of kernel::run's samples).
  template <class Rows>
  static void transpose_k(const Rows& k, index_t d, index_t nb, index_t nbp, float* kp) noexcept {
    if constexpr (L == 1) {
      transpose_k_scalar(k, d, nb, nbp, kp);
    } else {
      alignas(64) static constexpr float zero_row[L] = {};
      const index_t d_full = d - d % L;
      for_each_slice(nbp, [&](index_t s0, index_t w) noexcept {  // w: a multiple of L, as nbp is
        float* slice = kp + s0 * d;
        for (index_t j = 0; j < w; j += L) {
          const index_t real = std::clamp<index_t>(nb - s0 - j, 0, L);  // keys of the group with data
          const float* row[L];
          for (int i = 0; i < L; ++i) row[i] = i < real ? k(s0 + j + i) : nullptr;
          const float* src[L];
          for (index_t c0 = 0; c0 < d_full; c0 += L) {
            for (int i = 0; i < L; ++i) src[i] = i < real ? row[i] + c0 : zero_row;
            V::transpose(src, slice + c0 * w + j, w);
          }
          for (index_t c = d_full; c < d; ++c)
            for (int i = 0; i < L; ++i) slice[c * w + j + i] = i < real ? row[i][c] : 0.0f;
        }
      });
    }
  }

  /// transpose_k with one lane: 8 columns at a time, keys inner, so that both sides stay on a few cache
  /// lines (a lanes × lanes block is one float here; through transpose() the scalar core's P2 ran 3.5%
  /// slower, 2026-12-02).
  template <class Rows>
  static void transpose_k_scalar(const Rows& k, index_t d, index_t nb, index_t nbp, float* kp) noexcept {
    constexpr index_t CB = 8;
    for_each_slice(nbp, [&](index_t s0, index_t w) noexcept {
      const index_t wv = std::min(w, nb - s0);  // keys with data; the rest of the slice is zero padding
      float* slice = kp + s0 * d;
      for (index_t c0 = 0; c0 < d; c0 += CB) {
        const index_t cn = std::min(CB, d - c0);
        for (index_t j = 0; j < wv; ++j) {
          const float* src = k(s0 + j) + c0;
          float* dst = slice + c0 * w + j;
          for (index_t c = 0; c < cn; ++c) dst[c * w] = src[c];
        }
        for (index_t j = wv; j < w; ++j)
          for (index_t c = 0; c < cn; ++c) slice[(c0 + c) * w + j] = 0.0f;
      }
    });
  }

  /// vp rows j < nb: the value row v(j) (dv elements, widened to float, int8 times its scale), padded with
  /// zeros to dvp.
  template <class Rows>
  static void pack_v(const Rows& v, index_t dv, index_t nb, index_t dvp, float* vp) noexcept {
    for (index_t j = 0; j < nb; ++j) {
      float* dst = vp + j * dvp;
      if constexpr (std::is_same_v<typename Rows::element, float>) {
        std::copy(v(j), v(j) + dv, dst);
      } else {
        widen_row(v, j, dv, dst);
      }
      std::fill(dst + dv, dst + dvp, 0.0f);
    }
  }

  /// Tiles scores() runs for `rows` rows and nbp keys.
  static index_t score_tiles(index_t rows, index_t nbp) noexcept {
    return ((rows + MR - 1) / MR) * ((nbp + cols - 1) / cols);
  }

  /// S[rows][c1 − c0] (row stride lds) = Qp · the keys [c0, c1) of Kp, a block packed with nbl keys (Qp row
  /// stride d; c0 a slice start, slice_at; c1 <= nbl a multiple of L): each slice of the block that holds
  /// keys of the range, cut at c1, through one register tile per MR rows, between() after each (a
  /// prefetch_rows step, Note [prefetch next block]). A tile of rows [r0, r1) and range keys [a, b) with
  /// hidden(r0, r1, a, b) is not computed: its scores are left as they were (Note [hidden tiles]).
  template <class Between, class Hidden>
  static void scores(const float* qp, index_t rows, index_t d, const float* kp, index_t nbl, index_t c0, index_t c1,
                     float* s, index_t lds, Between&& between, const Hidden& hidden) noexcept {
    using table = tile_table<Isa, MR, NR, a_order::row_major, update::assign>;
    for_each_slice(nbl, [&](index_t s0, index_t w) noexcept {
      if (s0 < c0 || s0 >= c1) return;
      const index_t a = s0 - c0, b = std::min(s0 + w, c1) - c0;  // the slice's keys of the range
      const int nr = static_cast<int>((b - a) / L);
      for (index_t r0 = 0; r0 < rows; r0 += MR) {
        const int mr = static_cast<int>(std::min<index_t>(MR, rows - r0));
        if (!hidden(r0, r0 + mr, a, b)) table::get(mr, nr)(qp + r0 * d, d, kp + s0 * d, w, d, s + r0 * lds + a, lds);
        between();
      }
    });
  }

  /// O[rows][dvp] += P[rows][nb] (row stride ldp) · Vp[nb][dvp]; key_chunks: as in accumulate_pv_cut.
  static void accumulate_pv(const float* p, index_t rows, index_t ldp, const float* vp, index_t nb, index_t dvp,
                            float* o, bool key_chunks) noexcept {
    const auto zero = [](index_t) noexcept { return index_t{0}; };
    accumulate_pv_cut(p, rows, ldp, vp, zero, [nb](index_t) noexcept { return nb; }, dvp, o, key_chunks);
  }

  // Note [P·V in key chunks]
  // band_product runs P·V slab by slab of `cols` output columns, every tile of rows over the block's keys,
  // so each tile of rows reads the slab's V rows again. On AVX-512 a slab is 64 of d_v's columns: for d_v
  // 128 and a 256-key block, 64 KB whose rows lie 512 bytes apart, so its lines fall in half of L1's sets
  // (24 KB of a 48 KB L1) and every tile of rows read the slab from L2. When a slab is narrower than the
  // padded V row and larger than 32 KB, the keys go in chunks of 16 KB of slab (64 keys on AVX-512), each
  // chunk through every tile of rows before the next: the chunk stays in L1. Each output element is still
  // one chain over its keys in ascending order (the tile accumulates into O, which holds the chain between
  // chunks), so the bits are the same. Measured (Intel Xeon, 2026-12-05, one thread, the two versions
  // alternating call by call in one process, both link orders): P1 AVX-512 1.018x and 1.028x, P2 1.000x
  // and 1.014x. Not chunked: AVX2's slab (16 columns: 8 KB for 128 keys, 0.98-0.99x when chunked; 16 KB
  // for its 256-key blocks since 2026-12-06, under the 32 KB from which slabs go in chunks), and
  // a slab as wide as the V row (d_v 64 on AVX-512, P3: 0.97x when chunked, the extra tile calls cost
  // more than L1 saves); 128-key chunks (32 KB, more than the half of L1 the slab can use) made P1 0.98x.
  // Not on AMD's family 26 (Zen 5; problem::pv_key_chunks in forward.hpp): there the same change, against
  // the slab read whole from L2, made P1 0.965-0.973x and P2 0.963x (2026-12-07, one thread, the two
  // versions alternating call by call in one process, the same bits).
  static constexpr index_t pv_chunk_bytes = 16 * 1024, pv_chunk_over = 32 * 1024;

  /// O[r][dvp] += Σ_{lo(r) <= j < hi(r)} P[r][j] · Vp[j] for r < rows, lo and hi non-decreasing in r: each
  /// tile of rows runs as a band (Note [causal staircase]), so no row multiplies a V row it does not see;
  /// in key chunks when key_chunks is set and the V slab outgrows L1 (Note [P·V in key chunks]); the same
  /// bits either way.
  template <class Lo, class Hi>
  static void accumulate_pv_cut(const float* p, index_t rows, index_t ldp, const float* vp, const Lo& lo, const Hi& hi,
                                index_t dvp, float* o, bool key_chunks) noexcept {
    using table = tile_table<Isa, MR, NR, a_order::row_major, update::accumulate>;
    if (rows <= 0) return;
    const index_t k_begin = lo(0), k_end = hi(rows - 1);  // lo and hi are non-decreasing
    constexpr index_t slab_row = cols * static_cast<index_t>(sizeof(float));
    if (!key_chunks || cols >= dvp || (k_end - k_begin) * slab_row <= pv_chunk_over) {
      band_product<table>(p, ldp, rows, vp, dvp, dvp, lo, hi, o, dvp);
      return;
    }
    constexpr index_t chunk = std::max<index_t>(pv_chunk_bytes / slab_row, L);
    for (index_t k0 = k_begin; k0 < k_end; k0 += chunk) {
      const index_t k1 = std::min(k0 + chunk, k_end);
      band_product<table>(
          p, ldp, rows, vp, dvp, dvp, [&](index_t r) noexcept { return std::clamp(lo(r), k0, k1); },
          [&](index_t r) noexcept { return std::clamp(hi(r), k0, k1); }, o, dvp);
    }
  }
};

}  // namespace detail::core
GQA_END_NAMESPACE

#endif  // GQA_DETAIL_CORE_PACKED_HPP
