// gqa/kv_cache.hpp: the plain descriptions of K/V that are not one dense (b, s, h, d) view per call: a paged
// KV cache (paged_kv: pools of pages and a page table, for gqa/paged.hpp) and a ragged batch (varlen: packed
// sequences and their offsets, for gqa/varlen.hpp). Data only: no kernel, nothing checked here; the entry
// points validate them before any work.
#pragma once

#include <cstdint>
#include <span>

#include "config.hpp"
#include "integer_span.hpp"
#include "numeric.hpp"
#include "quantized.hpp"
#include "tensor.hpp"

GQA_BEGIN_NAMESPACE

/// A paged KV cache. K and V are pools of pages viewed as (num_pages, page_size, hkv, d) and
/// (num_pages, page_size, hkv, d_v): the view's b indexes pages and s the slots of a page (page_pool()
/// views the usual [num_pages][page_size][hkv][d] buffer; any strides with unit stride_d work). Key j of
/// sequence ib is slot j % page_size of page page_table[ib · max_pages + j / page_size]; sequence ib has
/// lengths[ib] keys. Table entries past a sequence's last page are never read (they may hold -1).
/// T: the pools' element type, float (paged_kv) or 16-bit (basic_paged_kv<bf16>, basic_paged_kv<f16>).
template <kv_element T>
struct basic_paged_kv {
  tensor_view<const T> k, v;
  std::span<const std::int32_t> page_table;  ///< [b][max_pages], page ids in [0, num_pages)
  index_t max_pages = 0;                     ///< pages per sequence in the table (its row length)
  integer_span lengths;                      ///< [b]: keys of each sequence, in [0, max_pages · page_size]
};
/// A paged KV cache of float pages.
using paged_kv = basic_paged_kv<float>;

/// A paged int8 KV cache (gqa/quantized.hpp's per-row layout, page by page): k and v are the pools as
/// q8_views, values (num_pages, page_size, hkv, d) int8 and scales (num_pages, page_size, hkv, 1) fp32,
/// one scale per (page, slot, KV head) row; the table and lengths as for basic_paged_kv. A new token is
/// written with quantize_q8 into its page's views of that slot.
struct paged_q8_kv {
  q8_view k, v;
  std::span<const std::int32_t> page_table;  ///< [b][max_pages], page ids in [0, num_pages)
  index_t max_pages = 0;                     ///< pages per sequence in the table (its row length)
  integer_span lengths;                      ///< [b]: keys of each sequence, in [0, max_pages · page_size]
};

/// The pool view of a buffer laid out [num_pages][page_size][h][d].
template <class T>
tensor_view<T> page_pool(T* p, index_t num_pages, index_t page_size, index_t h, index_t d) noexcept {
  return bshd(p, num_pages, page_size, h, d);
}

/// The sequences of a ragged batch: b + 1 non-decreasing offsets each, starting at 0. Sequence i is rows
/// [cu_seqlens_q[i], cu_seqlens_q[i + 1]) of q and o and rows [cu_seqlens_k[i], cu_seqlens_k[i + 1]) of k
/// and v; the last offsets are the views' row counts. A sequence may have no queries or no keys (the
/// batch as a whole has at least one of each: views have positive extents).
/// Built from both spans (`gqa::varlen{cu_q, cu_k}`), never from `{}`: that keeps a call such as
/// `gqa::forward(policy, q, k, v, o, {})` (empty options) unambiguous beside the ragged overloads.
struct varlen {
  constexpr varlen(integer_span cu_q, integer_span cu_k) noexcept : cu_seqlens_q(cu_q), cu_seqlens_k(cu_k) {}
  integer_span cu_seqlens_q;
  integer_span cu_seqlens_k;
};

/// View a buffer laid out [total][h][d] (a ragged batch's packed rows) as (1, total, h, d).
template <class T>
tensor_view<T> thd(T* p, index_t total, index_t h, index_t d) noexcept {
  return bshd(p, 1, total, h, d);
}

GQA_END_NAMESPACE
