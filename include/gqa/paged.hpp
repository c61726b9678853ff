// gqa/paged.hpp: attention over a paged KV cache (vLLM / llama.cpp style): K and V live in pools of
// fixed-size pages, and each sequence's keys are the pages its row of a page table names, in order. The
// one core reads K/V rows through the table (Note [layouts] in detail/core/layout.hpp): no gather copy.
// Invariant: every argument, the table's page ids and the lengths included, is checked before any work.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <utility>
#include <vector>

#include "attention.hpp"
#include "detail/core/targets.hpp"
#include "integer_span.hpp"
#include "kv_cache.hpp"
#include "variants/allocation.hpp"
#include "variants/policy.hpp"

GQA_BEGIN_NAMESPACE

namespace detail {

/// Everything a paged call needs checked, before any work: the views, their extents against each other
/// (kv.k.b pages of kv.k.s slots), the table's size and every page id a sequence uses, the lengths, the
/// options (options.kv_lengths must be empty: the lengths are kv.lengths) and aliasing. QO: Q's and O's
/// element type (float, or the pages' 16-bit type). PKV: basic_paged_kv<T>, or paged_values<std::int8_t>
/// (an int8 cache's values, below).
template <class PKV, class QO>
void check_paged(const tensor_view<const QO>& q, const PKV& kv, const tensor_view<QO>& o,
                 const attention_options& opt, const char* where) {
  check_view(q, "q", where);
  check_view(kv.k, "kv.k", where);
  check_view(kv.v, "kv.v", where);
  check_view(o, "o", where);
  require(kv.v.b == kv.k.b, where, "kv.v.b", kv.v.b, "must equal kv.k.b = ", kv.k.b, " (pages in the pools)");
  require(kv.v.s == kv.k.s, where, "kv.v.s", kv.v.s, "must equal kv.k.s = ", kv.k.s, " (slots per page)");
  require(kv.v.h == kv.k.h, where, "kv.v.h", kv.v.h, "must equal kv.k.h = ", kv.k.h);
  require(kv.k.d == q.d, where, "kv.k.d", kv.k.d, "must equal q.d = ", q.d, " (d_qk)");
  require(o.b == q.b, where, "o.b", o.b, "must equal q.b = ", q.b);
  require(o.s == q.s, where, "o.s", o.s, "must equal q.s = ", q.s);
  require(o.h == q.h, where, "o.h", o.h, "must equal q.h = ", q.h);
  require(o.d == kv.v.d, where, "o.d", o.d, "must equal kv.v.d = ", kv.v.d, " (d_v)");
  require(opt.kv_lengths.empty(), where, "options.kv_lengths.size()", opt.kv_lengths.size(),
          "must be 0 for a paged call: each sequence's length is kv.lengths");
  if (opt.scale) require(std::isfinite(*opt.scale), where, "options.scale", *opt.scale, "must be finite");
  require(opt.num_threads >= 0, where, "options.num_threads", opt.num_threads, "must be >= 0");
  check_modifiers(opt, q.h, where);  // window, softcap, sinks, ALiBi: as for attend
  if (!opt.lse.empty())
    require(std::cmp_equal(opt.lse.size(), q.b * q.h * q.s), where, "options.lse.size()", opt.lse.size(),
            "must equal b*hq*sq = ", q.b * q.h * q.s);
  require(kv.max_pages >= 0, where, "kv.max_pages", kv.max_pages, "must be >= 0");
  index_t entries = 0, capacity = 0;
  if (!checked_mul(q.b, kv.max_pages, max_elements<std::int32_t>, entries) ||
      !std::cmp_equal(kv.page_table.size(), entries))
    fail(where, ": kv.page_table.size() = ", kv.page_table.size(), ": must equal b*max_pages = ", q.b, "*",
         kv.max_pages);
  if (!checked_mul(kv.max_pages, kv.k.s, std::numeric_limits<index_t>::max(), capacity))
    capacity = std::numeric_limits<index_t>::max();
  require(std::cmp_equal(kv.lengths.size(), q.b), where, "kv.lengths.size()", kv.lengths.size(),
          "must equal batch = ", q.b);
  for (std::size_t ib = 0; ib < kv.lengths.size(); ++ib) {
    const index_t len = kv.lengths[ib];
    if (len < 0 || len > capacity)
      fail(where, ": kv.lengths[", ib, "] = ", kv.lengths.at(ib), ": must be in [0, max_pages*page_size = ",
           kv.max_pages, "*", kv.k.s, "]");
    const index_t used = (len + kv.k.s - 1) / kv.k.s;  // the pages the sequence reads
    for (index_t i = 0; i < used; ++i) {
      const auto e = static_cast<std::size_t>(static_cast<index_t>(ib) * kv.max_pages + i);
      const std::int32_t page = kv.page_table[e];
      if (page < 0 || page >= kv.k.b)
        fail(where, ": kv.page_table[", ib, "*max_pages + ", i, "] = ", page, ": sequence ", ib, " (length ", len,
             ") reads this page, so it must be a page of the pools, in [0, num_pages = ", kv.k.b, ")");
    }
  }
  check_aliasing(q, kv.k, kv.v, o, opt, where);
  require_outside_outputs(kv.page_table.data(), kv.page_table.size_bytes(), "kv.page_table", o, opt.lse, where);
  require_outside_outputs(kv.lengths.data(), kv.lengths.size_bytes(), "kv.lengths", o, opt.lse, where);
}

/// The pools, table and lengths of a paged cache with pools of element type T, as check_paged reads them.
template <class T>
struct paged_values {
  tensor_view<const T> k, v;
  std::span<const std::int32_t> page_table;
  index_t max_pages;
  integer_span lengths;
};

/// options.check_finite for a paged call: all of q, then the keys each sequence reads of K, then of V (for
/// an int8 cache, their scales: kv holds the scale pools, named `k_name`, `v_name`).
template <class T, class QO>
void check_finite_paged(const tensor_view<const QO>& q, const basic_paged_kv<T>& kv, const attention_options& opt,
                        const char* where, const char* k_name = "kv.k", const char* v_name = "kv.v") {
  if (!opt.check_finite) return;
  require_finite(q, "q", where, [&](index_t) { return q.s; });
  const char* names[2] = {k_name, v_name};
  const tensor_view<const T>* pools[2] = {&kv.k, &kv.v};
  for (int t = 0; t < 2; ++t) {
    const tensor_view<const T>& p = *pools[t];
    for (index_t ib = 0; ib < q.b; ++ib)
      for (index_t j = 0; j < kv.lengths[static_cast<std::size_t>(ib)]; ++j) {
        const index_t page = kv.page_table[static_cast<std::size_t>(ib * kv.max_pages + j / p.s)];
        for (index_t g = 0; g < p.h; ++g)
          for (index_t c = 0; c < p.d; ++c)
            if (!std::isfinite(to_float(p(page, j % p.s, g, c))))
              fail(where, ": ", names[t], "[page ", page, ", slot ", j % p.s, ", ", g, ", ", c, "] = ",
                   to_float(p(page, j % p.s, g, c)), " (sequence ", ib, ", key ", j,
                   "): options.check_finite is set and every input element the call reads must be finite");
      }
  }
}

/// check_paged for an int8 cache (paged_q8_kv): each value pool as a view (named kv.k.values, kv.v.values)
/// and then as check_paged checks float pools (named kv.k, kv.v), each scale pool against its values
/// (kv.k.scales, kv.v.scales: (num_pages, page_size, hkv, 1)), and no output sharing an element with the
/// scales.
template <class QO>
void check_paged(const tensor_view<const QO>& q, const paged_q8_kv& kv, const tensor_view<QO>& o,
                 const attention_options& opt, const char* where) {
  check_q8(kv.k, "kv.k.values", "kv.k.scales", where);
  check_q8(kv.v, "kv.v.values", "kv.v.scales", where);
  check_paged(q, paged_values<std::int8_t>{kv.k.values, kv.v.values, kv.page_table, kv.max_pages, kv.lengths}, o,
              opt, where);
  require_outputs_disjoint<const float, QO>({{o, "o"}}, {{kv.k.scales, "kv.k.scales"}, {kv.v.scales, "kv.v.scales"}}, where);
  if (!opt.lse.empty()) {
    const tensor_view<const float> lse = lse_view(opt);
    require_disjoint(shared_element(lse, kv.k.scales), where, "options.lse", opt.lse.data(), "kv.k.scales");
    require_disjoint(shared_element(lse, kv.v.scales), where, "options.lse", opt.lse.data(), "kv.v.scales");
  }
}

/// check_finite_paged for an int8 cache: the scales of the rows the sequences read (an int8 row's values
/// are finite; it is non-finite exactly when its scale is, Note [int8 quantisation]).
template <class QO>
void check_finite_paged(const tensor_view<const QO>& q, const paged_q8_kv& kv, const attention_options& opt,
                        const char* where) {
  check_finite_paged(q, paged_kv{kv.k.scales, kv.v.scales, kv.page_table, kv.max_pages, kv.lengths}, opt, where,
                     "kv.k.scales", "kv.v.scales");
}

/// The core on a validated paged call, on target `on` (core::target_of's result), for sequences [ib0,
/// ib0 + count) of it (q, o and options.lse their rows; the table and `lengths`, kv.lengths as indices,
/// their entries). PKV: basic_paged_kv<T> or paged_q8_kv. Q, O: float or T (a 16-bit Q with a float O: a
/// policy's fp32 copy of O, Note [16-bit Q/O policies]).
template <class On, class PKV, class Q, class O>
void run_paged(On on, const tensor_view<const Q>& q, const PKV& kv, const tensor_view<O>& o,
               std::span<const index_t> lengths, const head_map& map, const attention_options& opt, index_t ib0,
               index_t count) {
  tensor_view<const Q> qs = q;
  tensor_view<O> os = o;
  attention_options so = opt;
  qs.data += ib0 * q.stride_b;
  os.data += ib0 * o.stride_b;
  qs.b = os.b = count;
  const auto per = static_cast<std::size_t>(q.h * q.s);  // LSE entries of one sequence
  if (!opt.lse.empty()) so.lse = opt.lse.subspan(static_cast<std::size_t>(ib0) * per, static_cast<std::size_t>(count) * per);
  const std::span<const index_t> mine = lengths.subspan(static_cast<std::size_t>(ib0), static_cast<std::size_t>(count));
  index_t longest = 0;
  for (const index_t n : mine) longest = std::max(longest, n);
  core::forward_paged_on(on, qs, kv.k, kv.v, os, kv.page_table.data() + ib0 * kv.max_pages, kv.max_pages, mine,
                         longest, map, so);
}

/// The core on a whole validated paged call.
template <class On, class PKV, class QO>
void run_paged(On on, const tensor_view<const QO>& q, const PKV& kv, const tensor_view<QO>& o, const head_map& map,
               const attention_options& opt) {
  const std::vector<index_t> lengths = to_indices(kv.lengths);
  run_paged(on, q, kv, o, lengths, map, opt, 0, q.b);
}

/// The keys of sequences [ib0, ...) of a validated paged cache, as the key-norm walk's row source
/// (detail::key_norms_walk): sequence ib has lengths[ib0 + ib] keys, read through its row of the table.
template <class T>
struct paged_key_rows {
  const basic_paged_kv<T>& kv;
  std::span<const index_t> lengths;
  index_t ib0 = 0;
  index_t length(index_t ib) const noexcept { return lengths[static_cast<std::size_t>(ib0 + ib)]; }
  const T* operator()(index_t ib, index_t j, index_t g) const noexcept {
    const std::int32_t page = kv.page_table[static_cast<std::size_t>((ib0 + ib) * kv.max_pages + j / kv.k.s)];
    return kv.k.row(page, j % kv.k.s, g);
  }
};

/// The key norms of sequences [ib0, ib0 + count) of a validated paged cache: per KV head, the sum over
/// those sequences of the Frobenius norm of each one's lengths[ib] keys (Note [key norm order]); an
/// unwritten slot or another sequence's page is never read.
template <class T>
std::vector<double> paged_key_norms(const basic_paged_kv<T>& kv, std::span<const index_t> lengths, index_t ib0,
                                    index_t count) {
  return key_norms_walk(count, kv.k.h, kv.k.d, kv.k.stride_d, paged_key_rows<T>{kv, lengths, ib0});
}

/// attend(paged) on a paged cache PKV (basic_paged_kv<T> or paged_q8_kv) for Q/O of element type QO (float, or
/// T).
template <class Isa, class PKV, class QO>
void attend_paged(const tensor_view<const QO>& q, const PKV& kv, const tensor_view<QO>& o, const head_map& map,
                  const attention_options& opt) {
  static_assert(isa::dispatched<Isa> || isa::compiled<Isa>, "gqa::attend<Isa>: this translation unit is not compiled with flags for Isa");
  constexpr const char* where = "gqa::attend(paged)";
  check_paged(q, kv, o, opt, where);
  check_map(map, q, kv.k, where);
  const auto on = core::target_of<Isa>(opt);  // a bad options.isa / GQA_ISA throws here
  check_finite_paged(q, kv, opt, where);
  run_paged(on, q, kv, o, map, opt);
}

/// The keys of sequences [ib0, ...) of a validated paged int8 cache as their fp32 values (q8_row: scale ·
/// value, the bits the kernels and dequantize_q8 compute), for the key-norm walk.
struct paged_q8_key_rows {
  const paged_q8_kv& kv;
  std::span<const index_t> lengths;
  index_t ib0 = 0;
  index_t length(index_t ib) const noexcept { return lengths[static_cast<std::size_t>(ib0 + ib)]; }
  q8_row operator()(index_t ib, index_t j, index_t g) const noexcept {
    const index_t ps = kv.k.values.s;
    const std::int32_t page = kv.page_table[static_cast<std::size_t>((ib0 + ib) * kv.max_pages + j / ps)];
    return {kv.k.values.row(page, j % ps, g), *kv.k.scales.row(page, j % ps, g)};
  }
};

/// paged_key_norms of an int8 cache: the norms of its valid keys' fp32 values.
inline std::vector<double> paged_key_norms(const paged_q8_kv& kv, std::span<const index_t> lengths, index_t ib0,
                                           index_t count) {
  return key_norms_walk(count, kv.k.values.h, kv.k.values.d, kv.k.values.stride_d,
                        paged_q8_key_rows{kv, lengths, ib0});
}

/// What forward(paged) needs of a policy, checked before any work: a plan from keys through plan_from_norms
/// (Note [policies on a paged cache]).
template <class Policy>
void check_paged_policy(const char* where) {
  if constexpr (policy_plans_from_keys<std::remove_cv_t<Policy>> && !policy_plans_from_norms<Policy>)
    fail(where, ": policy = ", std::remove_cv_t<Policy>::name,
         ": its plan reads the keys of a dense K and it has no plan_from_norms (a non-const policy's) to "
         "plan from a paged cache's key norms");
}

}  // namespace detail

/// gqa::attend over a paged int8 KV cache (gqa::paged_q8_kv: pools of int8 values and their per-row fp32
/// scales), Q and O float: attention over the dequantised keys and values (scale · value), as attend() on
/// a dense q8_view computes it (Note [int8 K/V] in detail/core/layout.hpp), read through the page table as
/// attend(paged) reads float pages. The decode products run in integers as on a dense int8 cache where
/// options.int8_products allows it; with a page size that is a multiple of 64 the result is the dense int8
/// call's, bit for bit, while P·V over keys on several pages takes the fp32 products (Note [int8 decode
/// P·V]), so the two differ by the dense call's rounding of the weights to 16 bits. The same checks and
/// errors as attend(paged) (the value pools named kv.k, kv.v, or kv.k.values where the int8 view itself is
/// checked), the scale pools named kv.k.scales, kv.v.scales; options.check_finite checks the scales of the
/// rows the sequences read.
template <class Isa = isa::dispatch>
void attend(tensor_view<const float> q, const paged_q8_kv& kv, tensor_view<float> o, const head_map& map,
            const attention_options& opt = {}) {
  detail::attend_paged<Isa>(q, kv, o, map, opt);
}
/// attend(paged_q8_kv) with Q and O in one 16-bit type (bf16 or f16): the float call on the widened Q with
/// its output rounded once to T, bit for bit (Note [16-bit Q/O]). options.lse stays float.
template <class Isa = isa::dispatch, class Q, class O>
  requires detail::half_qo<Q, O>
void attend(tensor_view<Q> q, const paged_q8_kv& kv, tensor_view<O> o, const head_map& map,
            const attention_options& opt = {}) {
  detail::attend_paged<Isa>(tensor_view<const std::remove_const_t<Q>>(q), kv, o, map, opt);
}

/// gqa::attend over a paged KV cache: O[b, i, h] = softmax(scale · Q[b, i, h] · K_bᵀ + mask) · V_b, where
/// K_b, V_b are sequence b's kv.lengths[b] keys read through the page table. q (b, sq, hq, d_qk) and o
/// (b, sq, hq, d_v) are ordinary views; options as for attend (causal is bottom-right per sequence: query
/// i of sequence b sees keys j <= i + (lengths[b] − sq)), except options.kv_lengths, which must be empty.
/// Prefill (sq > 1) and decode (sq = 1, split KV included) run the same core as attend.
/// Throws gqa::invalid_argument before any work for a bad view, extent, table size, page id (of a page a
/// sequence reads), length, option or overlap. Pages of bf16 or f16 (basic_paged_kv<bf16>, <f16>) are
/// read as attend() reads 16-bit K/V (Note [16-bit K/V]).
template <class Isa = isa::dispatch, class T>
void attend(tensor_view<const float> q, const basic_paged_kv<T>& kv, tensor_view<float> o, const head_map& map,
            const attention_options& opt = {}) {
  detail::attend_paged<Isa>(q, kv, o, map, opt);
}

/// attend(paged) with Q, O and the pages all in one 16-bit type (bf16 or f16): as attend() with 16-bit
/// Q/O, the fp32 result on the widened values rounded once per output element (Note [16-bit Q/O]).
template <class Isa = isa::dispatch, class Q, class T, class O>
  requires detail::half_qkvo<Q, T, T, O>
void attend(tensor_view<Q> q, const basic_paged_kv<T>& kv, tensor_view<O> o, const head_map& map,
            const attention_options& opt = {}) {
  detail::attend_paged<Isa>(tensor_view<const T>(q), kv, o, map, opt);
}

// Note [policies on a paged cache]
// gqa::forward(policy, q, paged_kv, o) runs a variant's steps around the paged core: check sees the
// pools as K/V (b = num_pages, s = page_size), which is all a plan from head counts needs (MHA, MQA, GQA,
// SQA); WGQA's prepare combines heads row by row, so it runs on the pools and the table then addresses
// the combined pools; PGQA's finish works on o as usual (one call index, noise shared by the batch, as on
// a dense batch). A plan from the keys (KDGQA, DGQA: policy_plans_from_norms) gets the norms of each
// sequence's valid keys, read through the table (paged_key_norms): the sum over the sequences of the
// Frobenius norm of each one's kv.lengths[ib] keys, the dense definition with every padding key left out,
// so an unwritten slot, a spare page or another sequence's keys never reach the plan, and the call gives
// the bits of the dense call on the same keys zero-padded. A policy that plans per sample (KDGQA's
// per_sample) plans each sequence from its own norms and runs the core on that sequence alone, as the
// dense forward() does per batch element. A policy whose plan reads a dense K and that has no
// plan_from_norms is rejected.

namespace detail {
/// What forward() on a paged cache or a ragged batch requires at compile time: an Isa this TU can run, and
/// a policy whose check() and prepare(), where it has them, take K/V of element type KV and Q/O of QO
/// (prepare() is given an int8 cache's fp32 values: Note [int8 policies]).
template <class Isa, class Policy, class KV, class QO = float>
constexpr void require_forward_types() noexcept {
  static_assert(isa::dispatched<Isa> || isa::compiled<Isa>,
                "gqa::forward<Isa>: this translation unit is not compiled with flags for Isa");
  using PrepareKV = std::conditional_t<std::is_same_v<KV, std::int8_t>, float, KV>;
  static_assert(policy_with_check<Policy, KV, QO> || !policy_with_check<Policy>,
                "gqa::forward: this policy's check() takes float Q/K/V/O only; make it a template over the element "
                "types to run it on 16-bit or int8 inputs");
  static_assert(policy_with_prepare<Policy, PrepareKV> || !policy_with_prepare<Policy>,
                "gqa::forward: this policy's prepare() takes float K/V only; make it a template over the element "
                "type to run it on 16-bit K/V");
}

/// forward(paged) on a paged cache PKV: basic_paged_kv<T>, or paged_q8_kv, and Q/O of QO (float, or T's
/// 16-bit type). The policy's steps run in fp32 (Notes [16-bit Q/O policies], [int8 policies]): prepare()
/// is given the caller's pools, or fp32 copies of an int8 cache's pools (kept by the calling thread), and
/// the core then runs on its combined float pools; a finish step on a 16-bit O works on an fp32 copy of O,
/// rounded into O at the end.
template <class Isa, class Policy, class PKV, class QO>
void forward_paged_policy(Policy& p, const tensor_view<const QO>& q, const PKV& kv, const tensor_view<QO>& o_out,
                          const attention_options& opt) {
  using KV = view_element_t<std::remove_cvref_t<decltype(kv.k)>>;
  constexpr bool int8 = std::is_same_v<KV, std::int8_t>;
  constexpr const char* where = "gqa::forward(paged)";
  check_paged_policy<Policy>(where);
  check_paged(q, kv, o_out, opt, where);
  const auto on = core::target_of<Isa>(opt);  // before the policy's own work
  check_finite_paged(q, kv, opt, where);
  if constexpr (policy_with_check<Policy, KV, QO>) p.check(q, values_of(kv.k), values_of(kv.v), o_out);
  constexpr bool buffered = buffered_output<Policy, QO>;
  const auto o = core_output<buffered>(o_out);  // float where a finish step meets a 16-bit O
  const std::vector<index_t> lengths = to_indices(kv.lengths);
  const executor ex = executor_of(opt);
  auto run = [&](const auto& call) {
    // One plan for the call, or one per sequence (Note [policies on a paged cache]).
    const bool per_sample = plans_per_sample(p, q.b);
    const index_t runs = per_sample ? q.b : 1, per_run = per_sample ? 1 : q.b;
    for (index_t r = 0; r < runs; ++r) {
      const index_t ib0 = r * per_run;
      const tensor_view<const QO> qs = per_sample ? sample(q, ib0) : q;
      const auto os = per_sample ? sample(o, ib0) : o;
      const head_map map = plan_without_dense_keys(p, qs, values_of(call.k),
                                                   [&] { return paged_key_norms(call, lengths, ib0, per_run); });
      check_map(map, q, call.k, where);
      run_paged(on, q, call, o, lengths, map, opt, ib0, per_run);
      if constexpr (std::is_same_v<std::remove_const_t<decltype(os)>, tensor_view<float>>) finish(p, os, map, ex);
    }
  };
  if constexpr (policy_with_prepare<Policy, std::conditional_t<int8, float, KV>>) {
    const kv_views pools = [&] {
      if constexpr (int8) {
        thread_local std::vector<float> kf, vf;  // only in the int8 instantiations
        return p.prepare(dequantised_copy(kv.k, kf), dequantised_copy(kv.v, vf));
      } else {
        return p.prepare(kv.k, kv.v);
      }
    }();
    const paged_kv call{pools.k, pools.v, kv.page_table, kv.max_pages, kv.lengths};
    check_paged(q, call, o_out, opt, where);
    run(call);
  } else {
    run(kv);
  }
  if constexpr (buffered) round_into(tensor_view<const float>(o), o_out);
}
}  // namespace detail

/// A policy's call (gqa::forward) on a paged KV cache; see Note [policies on a paged cache]. Throws
/// gqa::invalid_argument for a policy that plans from keys without plan_from_norms, and as attend(paged)
/// does. 16-bit pages as for attend(paged); WGQA's prepare() makes float pools (it computes in fp32).
template <class Isa = isa::dispatch, class P, class T>
  requires attention_policy<std::remove_reference_t<P>, T>
void forward(P&& policy, tensor_view<const float> q, const basic_paged_kv<T>& kv, tensor_view<float> o,
             const attention_options& opt = {}) {
  using Policy = std::remove_reference_t<P>;
  detail::require_forward_types<Isa, Policy, T>();
  Policy& p = policy;
  detail::forward_paged_policy<Isa>(p, q, kv, o, opt);
}


/// A policy's call (gqa::forward) on a paged int8 cache (gqa::paged_q8_kv): every step in fp32 on the
/// dequantised values, as forward() on a dense q8_view runs it (Note [int8 policies]), read through the page
/// table as for float pages (Note [policies on a paged cache]): KDGQA and DGQA plan from the norms of each
/// sequence's valid keys' fp32 values; WGQA's prepare() is given fp32 copies of the dequantised pools
/// (kept by the calling thread, as on a dense cache) and the core then runs on its combined float pools;
/// PGQA's noise works on the fp32 output. Throws as attend(paged_q8_kv) does, and for a policy that plans
/// from keys without plan_from_norms.
template <class Isa = isa::dispatch, class P>
  requires attention_policy<std::remove_reference_t<P>, std::int8_t>
void forward(P&& policy, tensor_view<const float> q, const paged_q8_kv& kv, tensor_view<float> o,
             const attention_options& opt = {}) {
  using Policy = std::remove_reference_t<P>;
  detail::require_forward_types<Isa, Policy, std::int8_t>();
  Policy& p = policy;
  detail::forward_paged_policy<Isa>(p, q, kv, o, opt);
}

/// forward(policy, paged_q8_kv) with Q and O in one 16-bit type (bf16 or f16): every step in fp32 as for
/// float Q/O (Note [16-bit Q/O policies]; PGQA's noise on an fp32 copy of O), each output element rounded
/// once, so the float call on the widened Q with its output rounded to T, bit for bit.
template <class Isa = isa::dispatch, class P, class Q, class O>
  requires detail::half_qo<Q, O> && attention_policy<std::remove_reference_t<P>, std::int8_t, std::remove_const_t<Q>>
void forward(P&& policy, tensor_view<Q> q, const paged_q8_kv& kv, tensor_view<O> o, const attention_options& opt = {}) {
  using Policy = std::remove_reference_t<P>;
  using T = std::remove_const_t<Q>;
  detail::require_forward_types<Isa, Policy, std::int8_t, T>();
  Policy& p = policy;
  detail::forward_paged_policy<Isa>(p, tensor_view<const T>(q), kv, o, opt);
}

/// A policy's call (gqa::forward) on a paged cache with Q, O and the pages all in one 16-bit type (bf16 or
/// f16): the variant in fp32 on the widened values, each output element rounded once (Note [16-bit Q/O
/// policies]; PGQA's noise is added to an fp32 copy of O before that rounding; WGQA's combined pools are
/// float), so the float call's output rounded to the 16-bit type, bit for bit. options.lse stays float.
/// Throws as forward(paged) does.
template <class Isa = isa::dispatch, class P, class Q, class T, class O>
  requires detail::half_qkvo<Q, T, T, O> && attention_policy<std::remove_reference_t<P>, T, T>
void forward(P&& policy, tensor_view<Q> q, const basic_paged_kv<T>& kv, tensor_view<O> o,
             const attention_options& opt = {}) {
  using Policy = std::remove_reference_t<P>;
  detail::require_forward_types<Isa, Policy, T, T>();
  Policy& p = policy;
  detail::forward_paged_policy<Isa>(p, tensor_view<const T>(q), kv, o, opt);
}

GQA_END_NAMESPACE
