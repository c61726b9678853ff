// gqa/detail/core/layout.hpp: where the core finds its rows. A layout answers, for a batch element (a
// sequence) ib: how many queries and keys it has, where query row (ib, pos, h) of Q and O lives, where key
// j of K and V lives, and where its LSE entries go. The core is one kernel templated on the layout
// (Note [layouts]); dense_layout is the 4-D views of gqa::attend and compiles to the same loads as before.
// Invariant: no ISA header (yet compiled once per dispatch target with the rest of detail/core: its plain
// include guard is reset by target_pass.hpp, Note [per-target kernels]), and every member is a pure
// function of the call's arguments, validated before the core runs (page ids in range, offsets non-decreasing and within the views).
#ifndef GQA_DETAIL_CORE_LAYOUT_HPP
#define GQA_DETAIL_CORE_LAYOUT_HPP

#include <concepts>
#include <cstdint>
#include <span>
#include <type_traits>

#include "../../config.hpp"
#include "../../tensor.hpp"
#include "common.hpp"

GQA_BEGIN_NAMESPACE
namespace detail::core {

// Note [layouts]
// The core addresses K and V through a layout, never through a view's strides directly:
//   * dense_layout: q, k, v, o are (b, s, h, d) views; sequence ib has q.s queries and kv_lengths[ib]
//     (else k.s) keys. Key j of (ib, g) is k.row(ib, j, g).
//   * paged_layout: K and V are pools of pages, viewed as (num_pages, page_size, hkv, d), and key j of
//     sequence ib is slot j % page_size of page page_table[ib][j / page_size]. Keys are at a uniform stride
//     only within a page, so the kernel lists a block's rows, one pointer per key (Note [key runs]).
//   * ragged_layout: q, o (1, total_q, h, d) and k, v (1, total_k, h, d) hold the sequences back to back;
//     sequence ib is rows [cu_q[ib], cu_q[ib + 1]) of q and [cu_k[ib], cu_k[ib + 1]) of k (FlashAttention's
//     varlen). Keys of a sequence are contiguous, so this is dense addressing with per-sequence offsets.
// A layout's kv_cursor walks the keys of one sequence from a start key in order, giving each key's
// (b, s) in the K/V views (a page and a slot when paged) with no division per key; the kernel builds its
// per-block row pointers and the decode walk with it. Dense and ragged cursors add one to s, so the
// contiguous path's loads are the same expressions as before the layouts existed.

// Note [16-bit K/V]
// K and V may be stored as float, bf16 or f16 (gqa/numeric.hpp): the layouts carry the element type
// (kv_type), and every read of a K/V row goes through one of two places, so the rest of the core (the
// scores, the online softmax, the P·V accumulators, the LSE) is fp32 whatever the storage:
//   * packing (tiled path, prefill): packed::pack_v widens while it copies the block into the task's fp32
//     scratch, pack_k widens the block's K rows into a staging area and transposes from there, a vector
//     at a time (isa::vec's widening loads). The register tile then runs on the packed floats exactly as
//     before: the inner kernels do not know the storage type. Packing is O(block · d) per task against
//     the tile's O(rows · block · d), so converting there is nearly free.
//   * in place (direct path, decode): dot::partials loads K rows and the tile loads V rows (its B operand,
//     strided_b<T>/listed_b<T>) with the widening loads, so decode reads 2 bytes per element from memory,
//     which is what a bandwidth-bound decode gains from 16-bit storage.
// Each widening is exact (every bf16 and f16 value is a float), so a 16-bit call computes what the fp32
// core computes on the widened K/V, bit for bit (tests: lowp_suite).
// Element type is a template parameter, instantiated only by a call that passes 16-bit views: a TU that
// never does compiles only the float core.

// Note [16-bit Q/O]
// Q and O may be stored in the 16-bit type of the K/V (bf16 or f16; the layouts carry q_type and o_type
// as they carry kv_type). Q is read in one place: the task's Q pack (kernel::run in forward.hpp) widens
// each row with isa::vec's widening loads and multiplies it by scale·log2(e), one fp32 product per
// element, exactly the fp32 core's pack on the widened row; every later read of Q (the tiled scores, the
// direct path, decode::walk) reads the packed fp32 rows. O is written in one place:
// online_softmax::finish_row computes the fp32 row as for a float O (o · (1/l)) and rounds each element
// once to O's type (from_float: nearest even, overflow to ±inf, NaN stays NaN). The running state, the
// split-KV partials and the LSE (always float) are fp32. So a call with 16-bit Q, K, V, O gives, bit for
// bit, the fp32 call on the widened Q, K, V, rounded once to the 16-bit type (tests: lowp_suite). Q and
// O may also differ (16-bit Q, float O): gqa::forward uses that for a policy that post-processes the
// fp32 output before the single rounding (PGQA; Note [16-bit Q/O policies] in variants/policy.hpp).

// Note [int8 K/V]
// An int8 cache (gqa::q8_view) is the element type std::int8_t plus one fp32 scale per (key, KV head) row
// for each of K and V (kv_scales); a key's values are scale · q, one fp32 product each. The scale is
// applied where it costs least, and nowhere else:
//   * tiled path: pack_k/pack_v widen each row and multiply it by its scale while packing, so the packed
//     block holds exactly the dequantised floats, and the scores, softmax and P·V are the fp32 core's on
//     the dequantised K/V, bit for bit.
//   * direct and decode paths: the dot products run on the widened int8 rows (dot::partials, with the
//     int8 widening loads), then each key's column of scores is multiplied by its K scale
//     (direct::scale_columns: s = sk · (q · k8), rows × keys products against the rows × keys × d FMAs of
//     the dot products); after the softmax each probability is multiplied by its key's V scale, and the
//     register tile accumulates (p · sv) · v8 with V widened as it is loaded. The bytes read per key are
//     d (+ 4 for the scale) instead of 4d, which is what decode, bound by the cache it reads, gains.
//     These products are ordered differently from the fp32 core's (sk · Σ q·k8 against Σ q·(sk·k8)), so
//     a direct-path result agrees with the fp32 call on the dequantised K/V to rounding, not bit for bit
//     (tests: lowp_suite, Note [int8 K/V tolerance]).
// A NaN scale (quantize_q8's mark of a non-finite row) makes that key's scores or products NaN, which
// propagate exactly as a NaN in a float cache does; keys masked out never enter a product (the band of
// Note [causal staircase] skips their P·V, and masking overwrites their scores).

/// The place of a key row in the K/V views: batch (or page) b, position (or slot) s.
struct kv_loc {
  index_t b, s;
};

/// Keys of a dense or ragged sequence: consecutive positions of batch element b.
struct linear_cursor {
  kv_loc at;
  kv_loc loc() const noexcept { return at; }
  void next() noexcept { ++at.s; }
};

/// The scales of K's and V's rows: none for float and 16-bit K/V; (b, s, h, 1) views for int8 (Note [int8
/// K/V]).
template <class KV>
struct kv_scales {};
template <>
struct kv_scales<std::int8_t> {
  tensor_view<const float> k, v;
};
/// True for the element types whose rows carry a scale (int8).
template <class KV>
inline constexpr bool quantised_kv = std::is_same_v<KV, std::int8_t>;

/// The 4-D views of gqa::attend: every sequence has sq queries; keys past kv_lengths[ib] are padding.
/// KV: the element type of K and V (float, bf16, f16, or int8 with `scales`; Note [16-bit K/V], Note
/// [int8 K/V]); Q, O: those of Q and O (float, or bf16/f16: Note [16-bit Q/O]).
template <class KV = float, class Q = float, class O = Q>
struct dense_layout {
  using kv_type = KV;
  using q_type = Q;
  using o_type = O;
  static constexpr bool paged = false;
  static constexpr bool ragged = false;
  tensor_view<const Q> q;
  tensor_view<const KV> k, v;
  tensor_view<O> o;
  std::span<const index_t> kv_lengths;  // empty: every sequence has k.s keys
  [[no_unique_address]] kv_scales<KV> scales;

  index_t q_len(index_t) const noexcept { return q.s; }
  index_t kv_len(index_t ib) const noexcept {
    return kv_lengths.empty() ? k.s : kv_lengths[static_cast<std::size_t>(ib)];
  }
  const Q* q_row(index_t ib, index_t pos, index_t h) const noexcept { return q.row(ib, pos, h); }
  O* o_row(index_t ib, index_t pos, index_t h) const noexcept { return o.row(ib, pos, h); }
  linear_cursor kv_cursor(index_t ib, index_t j) const noexcept { return {{ib, j}}; }
  /// Index of LSE entry (ib, h, pos): [b][hq][sq].
  index_t lse_at(index_t ib, index_t h, index_t pos) const noexcept { return (ib * q.h + h) * q.s + pos; }
};

/// Keys of a paged sequence: slot `slot` of the page at *entry, then the next entry of the table. It
/// reads an entry only in loc(), so walking to one past the last key reads nothing past the table.
struct page_cursor {
  const std::int32_t* entry;  // this sequence's table entry of the current page
  index_t slot, page_size;
  kv_loc loc() const noexcept { return {*entry, slot}; }
  void next() noexcept {
    if (++slot == page_size) {
      slot = 0;
      ++entry;
    }
  }
};

/// Q and O dense (b, sq, hq, d); K and V pools of pages (num_pages, page_size, hkv, d) through a table.
/// Element types as dense_layout's.
template <class KV = float, class Q = float, class O = Q>
struct paged_layout {
  using kv_type = KV;
  using q_type = Q;
  using o_type = O;
  static constexpr bool paged = true;
  static constexpr bool ragged = false;
  tensor_view<const Q> q;
  tensor_view<const KV> k, v;  // the pools
  tensor_view<O> o;
  const std::int32_t* page_table;      // [b][max_pages]
  index_t max_pages;
  std::span<const index_t> kv_lengths;  // [b], each <= max_pages · page_size
  [[no_unique_address]] kv_scales<KV> scales;  // int8: pools of scales (num_pages, page_size, hkv, 1)

  index_t page_size() const noexcept { return k.s; }
  index_t q_len(index_t) const noexcept { return q.s; }
  index_t kv_len(index_t ib) const noexcept { return kv_lengths[static_cast<std::size_t>(ib)]; }
  const Q* q_row(index_t ib, index_t pos, index_t h) const noexcept { return q.row(ib, pos, h); }
  O* o_row(index_t ib, index_t pos, index_t h) const noexcept { return o.row(ib, pos, h); }
  /// Key j of sequence ib; loc() is valid for j < kv_len(ib), whose pages are validated.
  page_cursor kv_cursor(index_t ib, index_t j) const noexcept {
    return {page_table + ib * max_pages + j / k.s, j % k.s, k.s};
  }
  index_t lse_at(index_t ib, index_t h, index_t pos) const noexcept { return (ib * q.h + h) * q.s + pos; }
};

/// Sequences packed back to back (FlashAttention varlen): cu_q, cu_k are the b + 1 offsets. Element
/// types as dense_layout's.
template <class KV = float, class Q = float, class O = Q>
struct ragged_layout {
  using kv_type = KV;
  using q_type = Q;
  using o_type = O;
  static constexpr bool paged = false;
  static constexpr bool ragged = true;
  tensor_view<const Q> q;           // (1, total, h, d)
  tensor_view<const KV> k, v;       // (1, total, h, d)
  tensor_view<O> o;
  std::span<const index_t> cu_q, cu_k;
  [[no_unique_address]] kv_scales<KV> scales;  // int8: (1, total, h, 1)

  index_t q_len(index_t ib) const noexcept { return at(cu_q, ib + 1) - at(cu_q, ib); }
  index_t kv_len(index_t ib) const noexcept { return at(cu_k, ib + 1) - at(cu_k, ib); }
  const Q* q_row(index_t ib, index_t pos, index_t h) const noexcept { return q.row(0, at(cu_q, ib) + pos, h); }
  O* o_row(index_t ib, index_t pos, index_t h) const noexcept { return o.row(0, at(cu_q, ib) + pos, h); }
  linear_cursor kv_cursor(index_t ib, index_t j) const noexcept { return {{0, at(cu_k, ib) + j}}; }
  /// [hq][total_q], as FlashAttention's varlen softmax_lse.
  index_t lse_at(index_t ib, index_t h, index_t pos) const noexcept { return h * q.s + at(cu_q, ib) + pos; }

 private:
  static index_t at(std::span<const index_t> s, index_t i) noexcept { return s[static_cast<std::size_t>(i)]; }
};

// Note [key runs]
// The packers and the direct path take the keys of one block of one (sequence, KV head) as a row source:
// src(j) is the row of the block's key j, and src.b_at(j0, c0) the register tile's B operand for keys
// j0, j0 + 1, ... from column c0 (common.hpp): at one stride for dense and ragged rows, listed one pointer
// per key for a paged block, whose keys are at one stride only within a page. P·V streams V in place
// through that operand, so a block spanning pages is still one run of the tile: each output element sums
// its keys in ascending order in one chain, the same operations as on the dense rows, hence the same bits.

/// Rows of a block at one stride (dense and ragged): row j at base + j·stride. T: the rows' element type.
template <class T>
struct strided_rows {
  using element = T;
  const T* base;
  index_t stride;
  const T* operator()(index_t j) const noexcept { return base + j * stride; }
  strided_b<T> b_at(index_t j0, index_t c0) const noexcept { return {base + j0 * stride + c0, stride}; }
};

/// int8 rows at one stride with one scale each (Note [int8 K/V]): row j's values at values(j), its scale
/// at scale(j).
struct q8_rows {
  using element = std::int8_t;
  strided_rows<std::int8_t> values;
  const float* scales;
  index_t scale_stride;
  const std::int8_t* operator()(index_t j) const noexcept { return values(j); }
  float scale(index_t j) const noexcept { return scales[j * scale_stride]; }
  strided_b<std::int8_t> b_at(index_t j0, index_t c0) const noexcept { return values.b_at(j0, c0); }
};
/// A row source whose rows carry scales (q8_rows).
template <class Rows>
concept scaled_rows = requires(const Rows& r, index_t j) {
  { r.scale(j) } -> std::convertible_to<float>;
};

/// Rows of a block that spans pages: row j at rows[j] + head (rows lists KV head 0's; head is the offset
/// of the KV head at hand).
template <class T>
struct paged_rows {
  using element = T;
  const T* const* rows;
  index_t head;
  const T* operator()(index_t j) const noexcept { return rows[j] + head; }
  listed_b<T> b_at(index_t j0, index_t c0) const noexcept { return {rows + j0, head + c0}; }
};

/// int8 rows of a block that spans pages, with their scales (Note [int8 K/V]): row j's values at
/// values(j), its scale at scales[j][scale_head] (scales lists KV head 0's; scale_head is the KV head's
/// offset in the scale pool).
struct paged_q8_rows {
  using element = std::int8_t;
  paged_rows<std::int8_t> values;
  const float* const* scales;
  index_t scale_head;
  const std::int8_t* operator()(index_t j) const noexcept { return values(j); }
  float scale(index_t j) const noexcept { return scales[j][scale_head]; }
  listed_b<std::int8_t> b_at(index_t j0, index_t c0) const noexcept { return values.b_at(j0, c0); }
};

}  // namespace detail::core
GQA_END_NAMESPACE

#endif  // GQA_DETAIL_CORE_LAYOUT_HPP
