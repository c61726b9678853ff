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
#include "backward.hpp"
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

/// check_varlen for an int8 K/V cache: the values as check_varlen checks K/V views, the scales as
/// attend(q8_view) checks them (their shapes, and no output sharing an element with them).
template <class QO>
void check_varlen(const tensor_view<const QO>& q, const q8_view& k, const q8_view& v, const tensor_view<QO>& o,
                  const varlen& seqs, const attention_options& opt, const char* where) {
  check_q8(k, "k", "k.scales", where);
  check_q8(v, "v", "v.scales", where);
  check_varlen(q, k.values, v.values, o, seqs, opt, where);
  check_call(q, k, v, o, opt, where);  // the scales against the outputs
}

/// The core on a validated ragged call, on target `on` (core::target_of's result), for the sequences whose
/// offsets are cu_q, cu_k (all of the call's, or a run of them: offsets into the packed views). KVView:
/// tensor_view<const KV> (KV float, bf16 or f16) or q8_view (int8); Q, O: float or KV's 16-bit type (a
/// 16-bit Q with a float O: a policy's fp32 copy of O, Note [16-bit Q/O policies]).
template <class On, class KVView, class Q, class O>
void run_varlen(On on, const tensor_view<const Q>& q, const KVView& k, const KVView& v, const tensor_view<O>& o,
                std::span<const index_t> cu_q, std::span<const index_t> cu_k, const head_map& map,
                const attention_options& opt) {
  const core::longest_sequence l = core::longest_of(cu_q, cu_k);
  core::forward_ragged_on(on, q, k, v, o, cu_q, cu_k, l.sq, l.skv, map, opt);
}

/// attend(varlen) for K/V given as KVView (tensor_view<const KV>, KV float, bf16 or f16, or q8_view), Q/O
/// of QO.
template <class Isa, class KVView, class QO>
void attend_varlen(const tensor_view<const QO>& q, const KVView& k, const KVView& v, const tensor_view<QO>& o,
                   const head_map& map, const varlen& seqs, const attention_options& opt) {
  static_assert(isa::dispatched<Isa> || isa::compiled<Isa>, "gqa::attend<Isa>: this translation unit is not compiled with flags for Isa");
  constexpr const char* where = "gqa::attend(varlen)";
  check_varlen(q, k, v, o, seqs, opt, where);
  check_map(map, q, k, where);
  const auto on = core::target_of<Isa>(opt);  // a bad options.isa / GQA_ISA throws here
  check_finite(q, k, v, opt, where);  // every key belongs to a sequence: all of k and v (int8: their scales) are read
  const std::vector<index_t> cu_q = to_indices(seqs.cu_seqlens_q), cu_k = to_indices(seqs.cu_seqlens_k);
  run_varlen(on, q, k, v, o, cu_q, cu_k, map, opt);
}

/// The fp32 values of the keys of the sequences with offsets cu_k of a packed int8 K (q8_row: scale ·
/// value), as the key-norm walk's row source.
struct ragged_q8_key_rows {
  const q8_view& k;
  std::span<const index_t> cu_k;
  index_t length(index_t ib) const noexcept {
    return cu_k[static_cast<std::size_t>(ib) + 1] - cu_k[static_cast<std::size_t>(ib)];
  }
  q8_row operator()(index_t ib, index_t j, index_t g) const noexcept {
    const index_t s = cu_k[static_cast<std::size_t>(ib)] + j;
    return {k.values.row(0, s, g), *k.scales.row(0, s, g)};
  }
};

/// The keys of the sequences with offsets cu_k (into the packed k; T float, bf16 or f16), as the key-norm
/// walk's row source (detail::key_norms_walk).
template <class T>
struct ragged_key_rows {
  const tensor_view<const T>& k;
  std::span<const index_t> cu_k;
  index_t length(index_t ib) const noexcept {
    return cu_k[static_cast<std::size_t>(ib) + 1] - cu_k[static_cast<std::size_t>(ib)];
  }
  const T* operator()(index_t ib, index_t j, index_t g) const noexcept {
    return k.row(0, cu_k[static_cast<std::size_t>(ib)] + j, g);
  }
};

/// The key norms of the sequences with offsets cu_k of a validated ragged batch: per KV head, the sum over
/// them of the Frobenius norm of each one's keys (Note [key norm order]; a 16-bit key widened exactly).
template <class T>
std::vector<double> ragged_key_norms(const tensor_view<const T>& k, std::span<const index_t> cu_k) {
  return key_norms_walk(static_cast<index_t>(cu_k.size()) - 1, k.h, k.d, k.stride_d, ragged_key_rows<T>{k, cu_k});
}

/// What forward(varlen) needs of a policy, checked before any work: a plan from keys through
/// plan_from_norms, a finish step through finish_ragged (Note [policies on a ragged batch]).
template <class Policy>
void check_ragged_policy(const char* where) {
  using Plain = std::remove_cv_t<Policy>;
  if constexpr (policy_plans_from_keys<Plain> && !policy_plans_from_norms<Policy>)
    fail(where, ": policy = ", Plain::name,
         ": its plan reads the keys of a dense K and it has no plan_from_norms (a non-const policy's) to "
         "plan from a ragged batch's key norms");
  constexpr bool finishes = policy_with_finish<Plain> || policy_with_finish_executor<Plain>;
  if constexpr (finishes && !policy_with_ragged_finish<Policy>)
    fail(where, ": policy = ", Plain::name,
         ": its finish step works per (sample, head) over a (b, sq, hq, dv) output and it has no "
         "finish_ragged (a non-const policy's) for a ragged batch; pad the sequences into a dense batch");
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
/// attend(varlen) with an int8 K/V cache (gqa::q8_view of the packed rows: values (1, total_k, hkv, d),
/// scales (1, total_k, hkv, 1)), Q and O float: as attend() on a dense q8_view computes it, each sequence
/// over its own keys (the decode products in integers where options.int8_products allows it). The same
/// checks and errors as attend(varlen), the scales named k.scales, v.scales.
template <class Isa = isa::dispatch>
void attend(tensor_view<const float> q, const q8_view& k, const q8_view& v, tensor_view<float> o, const head_map& map,
            const varlen& seqs, const attention_options& opt = {}) {
  detail::attend_varlen<Isa>(q, k, v, o, map, seqs, opt);
}
/// attend(varlen) with an int8 K/V cache and Q and O in one 16-bit type (bf16 or f16): the float call on
/// the widened Q with its output rounded once to T, bit for bit (Note [16-bit Q/O]).
template <class Isa = isa::dispatch, class Q, class O>
  requires detail::half_qo<Q, O>
void attend(tensor_view<Q> q, const q8_view& k, const q8_view& v, tensor_view<O> o, const head_map& map,
            const varlen& seqs, const attention_options& opt = {}) {
  detail::attend_varlen<Isa>(tensor_view<const std::remove_const_t<Q>>(q), k, v, o, map, seqs, opt);
}
/// attend(varlen) with K and V stored in 16 bits (both bf16 or both f16), as attend() takes them.
template <class Isa = isa::dispatch, class K, class V>
  requires detail::half_kv<K, V>
void attend(tensor_view<const float> q, tensor_view<K> k, tensor_view<V> v, tensor_view<float> o, const head_map& map,
            const varlen& seqs, const attention_options& opt = {}) {
  using T = std::remove_const_t<K>;
  detail::attend_varlen<Isa>(q, tensor_view<const T>(k), tensor_view<const T>(v), o, map, seqs, opt);
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

namespace detail {
/// ragged_key_norms of a packed int8 K: the norms of its fp32 values (q8_row: scale · value).
inline std::vector<double> ragged_key_norms(const q8_view& k, std::span<const index_t> cu_k) {
  return key_norms_walk(static_cast<index_t>(cu_k.size()) - 1, k.values.h, k.values.d, k.values.stride_d,
                        ragged_q8_key_rows{k, cu_k});
}

/// forward(varlen) for K/V given as KVView: tensor_view<const KV> (KV float, bf16 or f16) or q8_view, and
/// Q/O of QO (float, or KV's 16-bit type). The policy's steps run in fp32 (Notes [16-bit Q/O policies],
/// [int8 policies]): prepare() is given the caller's K/V, or fp32 copies of an int8 cache's packed K and V
/// (kept by the calling thread), and the core then runs on its float result; a finish step on a 16-bit O
/// works on an fp32 copy of O, rounded into O at the end. With `saved` (forward_train(varlen)): the call,
/// its offsets, its map(s) and its LSE ([hq][total_q]) are kept, and finish_ragged_train replaces
/// finish_ragged.
template <class Isa, class Policy, class KVView, class QO>
void forward_varlen(Policy& p, const tensor_view<const QO>& q, const KVView& k, const KVView& v,
                    const tensor_view<QO>& o_out, const varlen& seqs, const attention_options& opt,
                    saved_forward<std::remove_cv_t<Policy>>* saved = nullptr) {
  using KV = view_element_t<KVView>;
  constexpr bool int8 = std::is_same_v<KV, std::int8_t>;
  using PrepareKV = std::conditional_t<int8, float, KV>;  // what prepare() is given
  const char* where = saved ? "gqa::forward_train(varlen)" : "gqa::forward(varlen)";
  check_ragged_policy<Policy>(where);
  check_varlen(q, k, v, o_out, seqs, opt, where);  // everything before the policy's own work
  const auto on = core::target_of<Isa>(opt);
  check_finite(q, k, v, opt, where);
  const std::vector<index_t> cu_q = to_indices(seqs.cu_seqlens_q), cu_k = to_indices(seqs.cu_seqlens_k);
  if constexpr (policy_with_check<Policy, KV, QO>) p.check(q, values_of(k), values_of(v), o_out);
  constexpr bool buffered = buffered_output<Policy, QO>;
  const auto o = core_output<buffered>(o_out);  // float where a finish step meets a 16-bit O
  if constexpr (policy_with_ragged_finish<Policy>) p.check_ragged(o, cu_q);
  const executor ex = executor_of(opt);
  attention_options call = opt;
  if (saved) {
    call.lse = begin_saved(*saved, q, values_of(k), values_of(v), o_out, opt);
    saved->cu_q = cu_q;
    saved->cu_k = cu_k;
  }
  // One plan for the batch, or one per sequence (Note [policies on a ragged batch]).
  const auto b = static_cast<index_t>(cu_q.size()) - 1;
  const bool per_sample = plans_per_sample(p, b);
  const index_t runs = per_sample ? b : 1, per_run = per_sample ? 1 : b;
  const auto run_on = [&](const auto& kk, const auto& vv) {
    for (index_t r = 0; r < runs; ++r) {
      const auto first = static_cast<std::size_t>(r * per_run), n = static_cast<std::size_t>(per_run) + 1;
      const std::span<const index_t> rq = std::span<const index_t>(cu_q).subspan(first, n);
      const std::span<const index_t> rk = std::span<const index_t>(cu_k).subspan(first, n);
      const head_map map = plan_without_dense_keys(p, q, values_of(kk), [&] { return ragged_key_norms(kk, rk); });
      check_map(map, q, kk, where);
      run_varlen(on, q, kk, vv, o, rq, rk, map, call);
      if constexpr (policy_with_ragged_finish<Policy>) {
        if constexpr (policy_with_ragged_training<std::remove_cv_t<Policy>>) {
          if (saved) {
            p.finish_ragged_train(saved->policy, o, rq, map, ex);
          } else {
            p.finish_ragged(o, rq, map, ex);
          }
        } else {
          p.finish_ragged(o, rq, map, ex);
        }
      }
      if (saved) saved->maps.push_back(map);
    }
  };
  if constexpr (policy_with_prepare<Policy, PrepareKV>) {
    const kv_views kv = [&] {
      if constexpr (int8) {
        thread_local std::vector<float> kf, vf;  // only in the int8 instantiations
        return p.prepare(dequantised_copy(k, kf), dequantised_copy(v, vf));
      } else {
        return p.prepare(k, v);
      }
    }();
    check_varlen(q, kv.k, kv.v, o_out, seqs, opt, where);
    run_on(kv.k, kv.v);
  } else {
    run_on(k, v);
  }
  if (saved && !opt.lse.empty()) std::copy(saved->lse.begin(), saved->lse.end(), opt.lse.begin());
  if constexpr (buffered) round_into(tensor_view<const float>(o), o_out);
}
}  // namespace detail

/// A policy's call (gqa::forward) on a ragged batch; see Note [policies on a ragged batch]. Throws
/// gqa::invalid_argument as attend(varlen) does, for what the policy's check and check_ragged reject, and
/// for a policy that plans from keys without plan_from_norms or finishes without finish_ragged.
template <class Isa = isa::dispatch, class P>
  requires attention_policy<std::remove_reference_t<P>>
void forward(P&& policy, tensor_view<const float> q, tensor_view<const float> k, tensor_view<const float> v,
             tensor_view<float> o, const varlen& seqs, const attention_options& opt = {}) {
  using Policy = std::remove_reference_t<P>;
  detail::require_forward_types<Isa, Policy, float>();  // in paged.hpp
  Policy& p = policy;
  detail::forward_varlen<Isa>(p, q, k, v, o, seqs, opt);
}

/// A policy's call (gqa::forward) on a ragged batch with an int8 K/V cache (q8_views of the packed rows):
/// every step in fp32 on the dequantised values, as forward() on a dense q8_view runs it (Note [int8
/// policies]), per sequence as on a float ragged batch (Note [policies on a ragged batch]): KDGQA and DGQA
/// plan from the norms of the sequences' fp32 key values, WGQA's prepare() is given fp32 copies of the
/// dequantised packed K and V (kept by the calling thread) and the core runs on its float result, PGQA
/// perturbs per (sequence, head). Throws as attend(varlen) with a q8_view does, and as forward(varlen).
template <class Isa = isa::dispatch, class P>
  requires attention_policy<std::remove_reference_t<P>, std::int8_t>
void forward(P&& policy, tensor_view<const float> q, const q8_view& k, const q8_view& v, tensor_view<float> o,
             const varlen& seqs, const attention_options& opt = {}) {
  using Policy = std::remove_reference_t<P>;
  detail::require_forward_types<Isa, Policy, std::int8_t>();  // in paged.hpp
  Policy& p = policy;
  detail::forward_varlen<Isa>(p, q, k, v, o, seqs, opt);
}

/// forward(policy, ..., varlen) on an int8 cache with Q and O in one 16-bit type (bf16 or f16): every step
/// in fp32 as for float Q/O (Note [16-bit Q/O policies]; PGQA's noise per sequence on an fp32 copy of O),
/// each output element rounded once, so the float call on the widened Q with its output rounded to T, bit
/// for bit.
template <class Isa = isa::dispatch, class P, class Q, class O>
  requires detail::half_qo<Q, O> && attention_policy<std::remove_reference_t<P>, std::int8_t, std::remove_const_t<Q>>
void forward(P&& policy, tensor_view<Q> q, const q8_view& k, const q8_view& v, tensor_view<O> o, const varlen& seqs,
             const attention_options& opt = {}) {
  using Policy = std::remove_reference_t<P>;
  using T = std::remove_const_t<Q>;
  detail::require_forward_types<Isa, Policy, std::int8_t, T>();
  Policy& p = policy;
  detail::forward_varlen<Isa>(p, tensor_view<const T>(q), k, v, o, seqs, opt);
}

/// A policy's call (gqa::forward) on a ragged batch with K and V stored in 16 bits (both bf16 or both f16),
/// Q and O float: as forward(varlen) on K/V widened to float, bit for bit. Every built-in policy takes them
/// and computes in fp32 (as forward() with 16-bit K/V): KDGQA's and DGQA's norms of the widened keys,
/// WGQA's combined heads (float), PGQA's noise on the fp32 output. Throws as forward(varlen) does.
template <class Isa = isa::dispatch, class P, class K, class V>
  requires detail::half_kv<K, V> && attention_policy<std::remove_reference_t<P>, std::remove_const_t<K>>
void forward(P&& policy, tensor_view<const float> q, tensor_view<K> k, tensor_view<V> v, tensor_view<float> o,
             const varlen& seqs, const attention_options& opt = {}) {
  using T = std::remove_const_t<K>;
  using Policy = std::remove_reference_t<P>;
  detail::require_forward_types<Isa, Policy, T>();
  Policy& p = policy;
  detail::forward_varlen<Isa>(p, q, tensor_view<const T>(k), tensor_view<const T>(v), o, seqs, opt);
}

/// A policy's call (gqa::forward) on a ragged batch with Q, K, V and O all in one 16-bit type (bf16 or
/// f16): the variant in fp32 on the widened values, each output element rounded once (Note [16-bit Q/O
/// policies]; PGQA's noise is added to an fp32 copy of O before that rounding), so the float call's output
/// rounded to the 16-bit type, bit for bit. options.lse stays float. Throws as forward(varlen) does.
template <class Isa = isa::dispatch, class P, class Q, class K, class V, class O>
  requires detail::half_qkvo<Q, K, V, O> &&
           attention_policy<std::remove_reference_t<P>, std::remove_const_t<K>, std::remove_const_t<K>>
void forward(P&& policy, tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> o, const varlen& seqs,
             const attention_options& opt = {}) {
  using T = std::remove_const_t<K>;
  using Policy = std::remove_reference_t<P>;
  detail::require_forward_types<Isa, Policy, T, T>();
  Policy& p = policy;
  detail::forward_varlen<Isa>(p, tensor_view<const T>(q), tensor_view<const T>(k), tensor_view<const T>(v), o, seqs,
                              opt);
}

namespace detail {

/// The offsets of `seqs` lie outside dq, dk, dv and dsinks, which a backward writes while it reads them.
template <class G>
void require_offsets_outside_gradients(const varlen& seqs, const tensor_view<G>& dq, const tensor_view<G>& dk,
                                       const tensor_view<G>& dv, std::span<float> dsinks, const char* where) {
  const tensor_view<float> ds = span_view(dsinks);
  for (const integer_span* cu : {&seqs.cu_seqlens_q, &seqs.cu_seqlens_k}) {
    const char* name = cu == &seqs.cu_seqlens_q ? "seqs.cu_seqlens_q" : "seqs.cu_seqlens_k";
    for (const auto& [g, gname] : {named_view<G>{dq, "dq"}, {dk, "dk"}, {dv, "dv"}})
      require_outside_output(cu->data(), cu->size_bytes(), name, g, gname, where);
    if (ds.d > 0) require_outside_output(cu->data(), cu->size_bytes(), name, ds, "options.dsinks", where);
  }
}

/// attend_backward(varlen): every check of the dense backward on the packed (b = 1) views, then what a
/// ragged batch adds (Note [validation once]): no options.kv_lengths, the offsets, and no gradient (nor
/// dsinks) over the offsets the call reads while it writes them. Then the core, on the call's ISA.
template <class Isa, class T, class G>
void attend_backward_varlen(const tensor_view<const T>& q, const tensor_view<const T>& k,
                            const tensor_view<const T>& v, const tensor_view<const T>& o,
                            const tensor_view<const T>& dout, std::span<const float> lse, const tensor_view<G>& dq,
                            const tensor_view<G>& dk, const tensor_view<G>& dv, const head_map& map,
                            const varlen& seqs, const attention_options& opt) {
  static_assert(isa::dispatched<Isa> || isa::compiled<Isa>,
                "gqa::attend_backward<Isa>: this translation unit is not compiled with flags for Isa");
  constexpr const char* where = "gqa::attend_backward(varlen)";
  check_view(q, "q", where);
  require(q.b == 1, where, "q.b", q.b, "must be 1: a ragged batch holds its sequences' rows in s (see gqa::thd)");
  require(opt.kv_lengths.empty(), where, "options.kv_lengths.size()", opt.kv_lengths.size(),
          "must be 0 for a ragged batch: each sequence's keys are given by cu_seqlens_k");
  validate_backward(q, k, v, o, dout, lse, dq, dk, dv, map, opt, where);  // k, v, o, dout, grads: b = q.b
  require(seqs.cu_seqlens_k.size() == seqs.cu_seqlens_q.size(), where, "seqs.cu_seqlens_k.size()",
          seqs.cu_seqlens_k.size(), "must equal seqs.cu_seqlens_q.size() = ", seqs.cu_seqlens_q.size());
  check_offsets(seqs.cu_seqlens_q, "seqs.cu_seqlens_q", q.s, "q.s", where);
  check_offsets(seqs.cu_seqlens_k, "seqs.cu_seqlens_k", k.s, "k.s", where);
  require_offsets_outside_gradients(seqs, dq, dk, dv, opt.dsinks, where);
  const auto on = core::target_of<Isa>(opt);  // a bad options.isa / GQA_ISA throws here
  const std::vector<index_t> cu_q = to_indices(seqs.cu_seqlens_q), cu_k = to_indices(seqs.cu_seqlens_k);
  core::backward_on(on, q, k, v, o, dout, lse, dq, dk, dv, map, opt, cu_q, cu_k);
}

}  // namespace detail

/// The gradients of attend(q, k, v, o, map, seqs, opt) over a ragged batch (FlashAttention's varlen
/// backward): q, k, v, o, dout and dq, dk, dv are gqa::thd views (b = 1; each sequence's rows packed back to
/// back at the offsets of `seqs`), lse the forward's options.lse laid out [hq][total_q]. Each sequence's
/// gradients are those of its own attention (causal bottom-right per sequence, as the forward); keys of a
/// sequence without queries get dk = dv = 0, rows of a sequence without keys dq = 0. Everything else as
/// attend_backward(): the options must be the forward's (options.kv_lengths empty), dsinks sums over every
/// sequence, the same bits for any thread count (Note [ragged backward] in detail/core/backward.hpp).
/// Throws gqa::invalid_argument before any work for everything attend_backward() checks, q.b != 1,
/// options.kv_lengths given, offsets as attend(varlen) checks them, and a gradient or dsinks over the
/// offsets.
template <class Isa = isa::dispatch>
void attend_backward(tensor_view<const float> q, tensor_view<const float> k, tensor_view<const float> v,
                     tensor_view<const float> o, tensor_view<const float> dout, std::span<const float> lse,
                     tensor_view<float> dq, tensor_view<float> dk, tensor_view<float> dv, const head_map& map,
                     const varlen& seqs, const attention_options& opt = {}) {
  detail::attend_backward_varlen<Isa>(q, k, v, o, dout, lse, dq, dk, dv, map, seqs, opt);
}

/// attend_backward(varlen) with q, k, v, o and dout in one 16-bit type T (bf16 or f16) and the gradients in T
/// or float, as the dense 16-bit attend_backward(): bit for bit the float call on the widened inputs with
/// its gradients rounded once.
template <class Isa = isa::dispatch, class Q, class K, class V, class O, class DO, class G>
  requires detail::half_backward<Q, K, V, O, DO, G>
void attend_backward(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> o, tensor_view<DO> dout,
                     std::span<const float> lse, tensor_view<G> dq, tensor_view<G> dk, tensor_view<G> dv,
                     const head_map& map, const varlen& seqs, const attention_options& opt = {}) {
  using T = std::remove_const_t<Q>;
  detail::attend_backward_varlen<Isa>(tensor_view<const T>(q), tensor_view<const T>(k), tensor_view<const T>(v),
                                      tensor_view<const T>(o), tensor_view<const T>(dout), lse, dq, dk, dv, map,
                                      seqs, opt);
}

namespace detail {

/// forward_train(varlen) of either element type: forward_varlen() keeping what backward(varlen) needs.
template <class Isa, class P, class T, class O>
saved_forward<P> forward_train_varlen(P& p, const tensor_view<const T>& q, const tensor_view<const T>& k,
                                      const tensor_view<const T>& v, const tensor_view<O>& o, const varlen& seqs,
                                      const attention_options& opt) {
  static_assert(isa::dispatched<Isa> || isa::compiled<Isa>,
                "gqa::forward_train<Isa>: this translation unit is not compiled with flags for Isa");
  static_assert(!policy_with_ragged_finish<P> || policy_with_ragged_training<P>,
                "gqa::forward_train(varlen): this policy's finish_ragged has no finish_ragged_train / "
                "finish_ragged_backward (policy_with_ragged_training)");
  static_assert(!policy_with_ragged_finish<P> || !policy_with_per_sample<P>,
                "gqa::forward_train(varlen): a policy that plans per sample cannot finish (not supported yet)");
  saved_forward<P> saved;
  forward_varlen<Isa>(p, q, k, v, o, seqs, opt, &saved);
  return saved;
}

/// Everything backward(varlen) checks before any work: backward()'s checks on the packed views, the
/// offsets element by element against the forward's, and the offsets outside the gradients.
template <class P, class T, class G>
void check_backward_varlen(const saved_forward<P>& saved, const tensor_view<const T>& q, const tensor_view<const T>& k,
                           const tensor_view<const T>& v, const tensor_view<const T>& o,
                           const tensor_view<const T>& dout, const tensor_view<G>& dq, const tensor_view<G>& dk,
                           const tensor_view<G>& dv, const varlen& seqs, const attention_options& opt) {
  constexpr const char* where = "gqa::backward(varlen)";
  check_backward_call(saved, q, k, v, o, dout, dq, dk, dv, opt, true);
  const auto require_same = [&](const integer_span& a, const std::vector<index_t>& b, const char* name) {
    if (a.size() != b.size()) fail(where, ": ", name, ".size() = ", a.size(), ": must equal the forward's (", b.size(), ")");
    for (std::size_t i = 0; i < b.size(); ++i)
      if (a[i] != b[i]) fail(where, ": ", name, "[", i, "] = ", a[i], ": must equal the forward's (", b[i], ")");
  };
  require_same(seqs.cu_seqlens_q, saved.cu_q, "seqs.cu_seqlens_q");
  require_same(seqs.cu_seqlens_k, saved.cu_k, "seqs.cu_seqlens_k");
  require_offsets_outside_gradients(seqs, dq, dk, dv, opt.dsinks, where);
}

}  // namespace detail

/// forward() on a ragged batch for training: the same call (same output, same policy state changes) that
/// also returns what backward(varlen) needs (its offsets, map(s), the LSE laid out [hq][total_q], what the
/// policy recorded: PGQA's statistics per (sequence, head)). Float Q, K, V, O. Keep q, k, v, o and the
/// offsets unchanged until backward has run. Throws as forward(varlen) does.
template <class Isa = isa::dispatch, attention_policy P>
saved_forward<P> forward_train(P& p, tensor_view<const float> q, tensor_view<const float> k, tensor_view<const float> v,
                               tensor_view<float> o, const varlen& seqs, const attention_options& opt = {}) {
  return detail::forward_train_varlen<Isa>(p, q, k, v, o, seqs, opt);
}

/// forward_train(varlen) with Q, K, V and O all stored in one 16-bit type (bf16 or f16): forward(varlen) of
/// the same types that also returns what backward(varlen) needs, the float call's on the widened Q, K, V
/// (Note [16-bit training] in variants/policy.hpp).
template <class Isa = isa::dispatch, attention_policy P, class Q, class K, class V, class O>
  requires detail::half_qkvo<Q, K, V, O> && attention_policy<P, std::remove_const_t<K>, std::remove_const_t<K>>
saved_forward<P> forward_train(P& p, tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> o,
                               const varlen& seqs, const attention_options& opt = {}) {
  using T = std::remove_const_t<K>;
  return detail::forward_train_varlen<Isa>(p, tensor_view<const T>(q), tensor_view<const T>(k),
                                           tensor_view<const T>(v), o, seqs, opt);
}

/// The gradients of the forward_train(varlen) call that returned `saved`: dq, dk, dv (gqa::thd views like
/// q, k, v: the caller's packed tensors, before any prepare()) from dout = ∂L/∂o, the same q, k, v, o,
/// offsets and options (threads may differ). Runs the policy's backward steps around the ragged core
/// backward (Note [ragged backward] in detail/core/backward.hpp) on the recorded map(s): WGQA's
/// prepare_backward on the packed K/V, PGQA's finish_ragged_backward per sequence, one core call per
/// sequence for a per-sample plan (dsinks summed in sequence order). Everything else as backward(); throws
/// as backward() does, for offsets other than the forward's, and for a `saved` of a dense forward.
template <class Isa = isa::dispatch, attention_policy P>
void backward(P& p, const saved_forward<P>& saved, tensor_view<const float> q, tensor_view<const float> k,
              tensor_view<const float> v, tensor_view<const float> o, tensor_view<const float> dout,
              tensor_view<float> dq, tensor_view<float> dk, tensor_view<float> dv, const varlen& seqs,
              const attention_options& opt = {}) {
  static_assert(isa::dispatched<Isa> || isa::compiled<Isa>,
                "gqa::backward<Isa>: this translation unit is not compiled with flags for Isa");
  detail::check_backward_varlen(saved, q, k, v, o, dout, dq, dk, dv, seqs, opt);
  static_cast<void>(detail::core::target_of<Isa>(opt));  // a bad options.isa / GQA_ISA throws before any work
  detail::run_backward<Isa>(p, saved, q, k, v, o, dout, dq, dk, dv, opt);
}

/// backward(varlen) of a forward_train(varlen) on 16-bit Q, K, V, O: q, k, v, o and dout in that type T
/// (bf16 or f16), the gradients in T or float (all three the same), as the dense 16-bit backward(): bit for
/// bit backward(varlen) on the widened inputs with its float gradients rounded once to T. The same checks
/// and errors.
template <class Isa = isa::dispatch, attention_policy P, class Q, class K, class V, class O, class DO, class G>
  requires detail::half_backward<Q, K, V, O, DO, G>
void backward(P& p, const saved_forward<P>& saved, tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v,
              tensor_view<O> o, tensor_view<DO> dout, tensor_view<G> dq, tensor_view<G> dk, tensor_view<G> dv,
              const varlen& seqs, const attention_options& opt = {}) {
  static_assert(isa::dispatched<Isa> || isa::compiled<Isa>,
                "gqa::backward<Isa>: this translation unit is not compiled with flags for Isa");
  using T = std::remove_const_t<Q>;
  const tensor_view<const T> qc(q), kc(k), vc(v), oc(o), dc(dout);
  detail::check_backward_varlen(saved, qc, kc, vc, oc, dc, dq, dk, dv, seqs, opt);
  static_cast<void>(detail::core::target_of<Isa>(opt));  // a bad options.isa / GQA_ISA throws before any work
  detail::run_backward<Isa>(p, saved, qc, kc, vc, oc, dc, dq, dk, dv, opt);
}

GQA_END_NAMESPACE
