// gqa/varlen.hpp: attention over a ragged batch (FlashAttention's varlen): sequences of different query
// and key counts packed back to back without padding, given by cumulative offsets. The one core walks each
// sequence's rows through per-sequence offsets (ragged_layout, Note [layouts] in detail/core/layout.hpp);
// an empty sequence costs nothing. Invariant: every argument, the offsets included, is checked before any
// work.
#pragma once

#include <algorithm>
#include <span>
#include <type_traits>
#include <vector>

#include "attention.hpp"
#include "detail/core/targets.hpp"
#include "integer_span.hpp"
#include "kv_cache.hpp"
#include "paged.hpp"
#include "variants/allocation.hpp"
#include "variants/policy.hpp"

GQA_BEGIN_NAMESPACE

namespace detail {

/// Offsets `cu` (named `name`) of a ragged batch over `rows` rows: size b + 1 >= 2, cu[0] = 0,
/// non-decreasing, cu[b] = rows.
inline void check_offsets(const integer_span& cu, const char* name, index_t rows, const char* rows_name,
                          const char* where) {
  require(cu.size() >= 2, where, field{name, "size()"}, cu.size(), "must be batch + 1 >= 2");
  if (cu[0] != 0) fail(where, ": ", name, "[0] = ", cu.at(0), ": must be 0");
  for (std::size_t i = 1; i < cu.size(); ++i)
    if (cu[i] < cu[i - 1] || cu[i] > rows)
      fail(where, ": ", name, "[", i, "] = ", cu.at(i), ": offsets must be non-decreasing and within ", rows_name,
           " = ", rows, " (", name, "[", i - 1, "] = ", cu.at(i - 1), ")");
  if (cu[cu.size() - 1] != rows)
    fail(where, ": ", name, "[", cu.size() - 1, "] = ", cu.at(cu.size() - 1), ": the last offset must equal ",
         rows_name, " = ", rows, " (every row belongs to a sequence)");
}

/// Everything a ragged call needs checked, before any work: the views (b = 1, rows in s), their extents
/// against each other, the options (options.kv_lengths must be empty: the key counts are the offsets'),
/// the offsets and aliasing. options.lse, if given, is laid out [hq][total_q].
template <class Q, class KV, class O>
void check_varlen(const tensor_view<const Q>& q, const tensor_view<const KV>& k, const tensor_view<const KV>& v,
                  const tensor_view<O>& o, const varlen& seqs, const attention_options& opt, const char* where) {
  check_views(q, k, v, o, where);
  require(q.b == 1, where, "q.b", q.b, "must be 1: a ragged batch holds its sequences' rows in s (see gqa::thd)");
  require(opt.kv_lengths.empty(), where, "options.kv_lengths.size()", opt.kv_lengths.size(),
          "must be 0 for a ragged batch: each sequence's keys are given by cu_seqlens_k");
  check_shapes(q, k, v, o, opt, where);  // k.b, v.b, o.b == q.b = 1; heads, dims; lse size hq·total_q
  require(seqs.cu_seqlens_k.size() == seqs.cu_seqlens_q.size(), where, "seqs.cu_seqlens_k.size()",
          seqs.cu_seqlens_k.size(), "must equal seqs.cu_seqlens_q.size() = ", seqs.cu_seqlens_q.size());
  check_offsets(seqs.cu_seqlens_q, "seqs.cu_seqlens_q", q.s, "q.s", where);
  check_offsets(seqs.cu_seqlens_k, "seqs.cu_seqlens_k", k.s, "k.s", where);
  check_aliasing(q, k, v, o, opt, where);
  const integer_span& cu_q = seqs.cu_seqlens_q;
  const integer_span& cu_k = seqs.cu_seqlens_k;
  require_outside_outputs(cu_q.data(), cu_q.size_bytes(), "seqs.cu_seqlens_q", o, opt.lse, where);
  require_outside_outputs(cu_k.data(), cu_k.size_bytes(), "seqs.cu_seqlens_k", o, opt.lse, where);
}

/// The core on a validated ragged call, on target `on` (core::target_of's result), for the sequences whose
/// offsets are cu_q, cu_k (all of the call's, or a run of them: offsets into the packed views). KV: float,
/// bf16 or f16; QO: float or KV's 16-bit type.
template <class On, class KV, class QO>
void run_varlen(On on, const tensor_view<const QO>& q, const tensor_view<const KV>& k,
                const tensor_view<const KV>& v, const tensor_view<QO>& o, std::span<const index_t> cu_q,
                std::span<const index_t> cu_k, const head_map& map, const attention_options& opt) {
  index_t sq = 0, skv = 0;
  for (std::size_t i = 0; i + 1 < cu_q.size(); ++i) {
    sq = std::max(sq, cu_q[i + 1] - cu_q[i]);
    skv = std::max(skv, cu_k[i + 1] - cu_k[i]);
  }
  core::forward_ragged_on(on, q, k, v, o, cu_q, cu_k, sq, skv, map, opt);
}

/// attend(varlen) for K/V of element type KV, Q/O of QO.
template <class Isa, class KV, class QO>
void attend_varlen(const tensor_view<const QO>& q, const tensor_view<const KV>& k, const tensor_view<const KV>& v,
                   const tensor_view<QO>& o, const head_map& map, const varlen& seqs,
                   const attention_options& opt) {
  static_assert(isa::dispatched<Isa> || isa::compiled<Isa>, "gqa::attend<Isa>: this translation unit is not compiled with flags for Isa");
  constexpr const char* where = "gqa::attend(varlen)";
  check_varlen(q, k, v, o, seqs, opt, where);
  check_map(map, q, k, where);
  const auto on = core::target_of<Isa>(opt);  // a bad options.isa / GQA_ISA throws here
  check_finite(q, k, v, opt, where);          // every key belongs to a sequence: all of k and v are read
  const std::vector<index_t> cu_q = to_indices(seqs.cu_seqlens_q), cu_k = to_indices(seqs.cu_seqlens_k);
  run_varlen(on, q, k, v, o, cu_q, cu_k, map, opt);
}

/// The keys of the sequences with offsets cu_k (into the packed k), as the key-norm walk's row source
/// (detail::key_norms_walk).
struct ragged_key_rows {
  const tensor_view<const float>& k;
  std::span<const index_t> cu_k;
  index_t length(index_t ib) const noexcept {
    return cu_k[static_cast<std::size_t>(ib) + 1] - cu_k[static_cast<std::size_t>(ib)];
  }
  const float* operator()(index_t ib, index_t j, index_t g) const noexcept {
    return k.row(0, cu_k[static_cast<std::size_t>(ib)] + j, g);
  }
};

/// The key norms of the sequences with offsets cu_k of a validated ragged batch: per KV head, the sum over
/// them of the Frobenius norm of each one's keys (Note [key norm order]).
inline std::vector<double> ragged_key_norms(const tensor_view<const float>& k, std::span<const index_t> cu_k) {
  return key_norms_walk(static_cast<index_t>(cu_k.size()) - 1, k.h, k.d, k.stride_d, ragged_key_rows{k, cu_k});
}

}  // namespace detail

/// gqa::attend over a ragged batch: for each sequence i, its query rows attend to its keys only,
/// O = softmax(scale · Q_i · K_iᵀ + mask) · V_i, causal bottom-right per sequence (query r of a sequence
/// with n_q queries and n_k keys sees keys j <= r + (n_k − n_q)). q (1, total_q, hq, d_qk), k
/// (1, total_k, hkv, d_qk), v (1, total_k, hkv, d_v), o (1, total_q, hq, d_v): gqa::thd views of
/// [total][heads][dim] buffers, or any strides. options.lse, if given, is [hq][total_q] (FlashAttention's
/// varlen softmax_lse). A query row of a sequence without keys is zeros with LSE −inf.
/// Throws gqa::invalid_argument before any work for a bad view, extent, offset, option or overlap.
template <class Isa = isa::dispatch>
void attend(tensor_view<const float> q, tensor_view<const float> k, tensor_view<const float> v, tensor_view<float> o,
            const head_map& map, const varlen& seqs, const attention_options& opt = {}) {
  detail::attend_varlen<Isa>(q, k, v, o, map, seqs, opt);
}
/// attend(varlen) with K and V stored in 16 bits (both bf16 or both f16), as attend() takes them.
template <class Isa = isa::dispatch, class K, class V>
  requires detail::half_kv<K, V>
void attend(tensor_view<const float> q, tensor_view<K> k, tensor_view<V> v, tensor_view<float> o, const head_map& map,
            const varlen& seqs, const attention_options& opt = {}) {
  using T = std::remove_const_t<K>;
  detail::attend_varlen<Isa, T>(q, tensor_view<const T>(k), tensor_view<const T>(v), o, map, seqs, opt);
}
/// attend(varlen) with Q, K, V and O all in one 16-bit type (bf16 or f16): as attend() with 16-bit Q/O,
/// the fp32 result on the widened values rounded once per output element (Note [16-bit Q/O]).
template <class Isa = isa::dispatch, class Q, class K, class V, class O>
  requires detail::half_qkvo<Q, K, V, O>
void attend(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> o, const head_map& map,
            const varlen& seqs, const attention_options& opt = {}) {
  using T = std::remove_const_t<K>;
  detail::attend_varlen<Isa>(tensor_view<const T>(q), tensor_view<const T>(k), tensor_view<const T>(v), o, map, seqs,
                             opt);
}

// Note [policies on a ragged batch]
// gqa::forward(policy, q, k, v, o, varlen) runs check and prepare on the packed views (b = 1, total rows
// in s): a plan from head counts (MHA, MQA, GQA, SQA) and WGQA's row-by-row prepare are the same on
// packed rows. A plan from the keys (KDGQA, DGQA: policy_plans_from_norms) gets the norms of the batch's
// sequences (ragged_key_norms): the sum over the sequences of the Frobenius norm of each one's keys, as a
// dense batch of the same sequences zero-padded to one length gives. A policy that plans per sample
// (KDGQA's per_sample) plans each sequence from its own norms and runs the core on that sequence alone.
// A finish step runs per sequence through policy_with_ragged_finish (PGQA: per (sequence, head) over that
// sequence's rows, Note [PGQA on a ragged batch]). Rejected: a plan that reads a dense K without
// plan_from_norms, and a finish step without finish_ragged.

/// A policy's call (gqa::forward) on a ragged batch; see Note [policies on a ragged batch]. Throws
/// gqa::invalid_argument as attend(varlen) does, for what the policy's check and check_ragged reject, and
/// for a policy that plans from keys without plan_from_norms or finishes without finish_ragged.
template <class Isa = isa::dispatch, class P>
  requires attention_policy<std::remove_reference_t<P>>
void forward(P&& policy, tensor_view<const float> q, tensor_view<const float> k, tensor_view<const float> v,
             tensor_view<float> o, const varlen& seqs, const attention_options& opt = {}) {
  static_assert(isa::dispatched<Isa> || isa::compiled<Isa>, "gqa::forward<Isa>: this translation unit is not compiled with flags for Isa");
  using Policy = std::remove_reference_t<P>;
  using Plain = std::remove_cv_t<Policy>;
  constexpr const char* where = "gqa::forward(varlen)";
  if constexpr (policy_plans_from_keys<Plain> && !policy_plans_from_norms<Policy>)
    detail::fail(where, ": policy = ", Plain::name,
                 ": its plan reads the keys of a dense K and it has no plan_from_norms (a non-const policy's) to "
                 "plan from a ragged batch's key norms");
  constexpr bool finishes = policy_with_finish<Plain> || policy_with_finish_executor<Plain>;
  if constexpr (finishes && !policy_with_ragged_finish<Policy>)
    detail::fail(where, ": policy = ", Plain::name,
                 ": its finish step works per (sample, head) over a (b, sq, hq, dv) output and it has no "
                 "finish_ragged (a non-const policy's) for a ragged batch; pad the sequences into a dense batch");
  Policy& p = policy;
  detail::check_varlen(q, k, v, o, seqs, opt, where);  // everything before the policy's own work
  const auto on = detail::core::target_of<Isa>(opt);
  detail::check_finite(q, k, v, opt, where);
  const std::vector<index_t> cu_q = detail::to_indices(seqs.cu_seqlens_q), cu_k = detail::to_indices(seqs.cu_seqlens_k);
  if constexpr (policy_with_check<Policy>) p.check(q, k, v, o);
  if constexpr (policy_with_ragged_finish<Policy>) p.check_ragged(o, cu_q);
  kv_views kv{k, v};
  if constexpr (policy_with_prepare<Policy>) {
    kv = p.prepare(k, v);
    detail::check_varlen(q, kv.k, kv.v, o, seqs, opt, where);
  }
  const executor ex = executor_of(opt);
  // One plan for the batch, or one per sequence (Note [policies on a ragged batch]).
  const auto b = static_cast<index_t>(cu_q.size()) - 1;
  const bool per_sample = detail::plans_per_sample(p, b);
  const index_t runs = per_sample ? b : 1, per_run = per_sample ? 1 : b;
  for (index_t r = 0; r < runs; ++r) {
    const auto first = static_cast<std::size_t>(r * per_run), n = static_cast<std::size_t>(per_run) + 1;
    const std::span<const index_t> rq = std::span<const index_t>(cu_q).subspan(first, n);
    const std::span<const index_t> rk = std::span<const index_t>(cu_k).subspan(first, n);
    const head_map map = detail::plan_without_dense_keys(p, q, kv.k, [&] { return detail::ragged_key_norms(kv.k, rk); });
    detail::check_map(map, q, kv.k, where);
    detail::run_varlen(on, q, kv.k, kv.v, o, rq, rk, map, opt);
    if constexpr (policy_with_ragged_finish<Policy>) p.finish_ragged(o, rq, map, ex);
  }
}

/// forward(policy, ..., varlen) with 16-bit Q/O: not provided (a compile-time error). Use float Q/O with
/// 16-bit K/V, or attend(varlen) with 16-bit Q/O and a head map.
template <class Isa = isa::dispatch, class P, class Q, class K, class V, class O>
  requires detail::half_qkvo<Q, K, V, O>
void forward(P&&, tensor_view<Q>, tensor_view<K>, tensor_view<V>, tensor_view<O>, const varlen&,
             const attention_options& = {}) {
  static_assert(sizeof(Q) == 0,
                "gqa::forward(policy, varlen): 16-bit Q/O is not supported on a ragged batch; pass float Q/O (16-bit "
                "K/V are fine) or call gqa::attend(varlen) with 16-bit Q/O");
}

GQA_END_NAMESPACE
