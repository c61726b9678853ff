// gqa/variants/policy.hpp: the policy concept, gqa::forward(), which runs any variant on the one core, and
// its training pair gqa::forward_train() / gqa::backward(). A policy decides the query-head -> KV-head map
// (plan), may transform K/V first (prepare) and may post-process the output (finish); for training it may
// record what its backward needs (finish_train) and differentiate its own steps (finish_backward,
// prepare_backward). It never has its own kernel.
#pragma once

#include <algorithm>
#include <concepts>
#include <functional>
#include <optional>
#include <ostream>
#include <span>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "../attention.hpp"
#include "../backward.hpp"
#include "allocation.hpp"

GQA_BEGIN_NAMESPACE

/// K/V views to hand to the core (a policy's prepare() may point them into its own buffers: float, also
/// when the caller's K/V are 16-bit).
struct kv_views {
  tensor_view<const float> k;
  tensor_view<const float> v;
};

// The concepts below take KV, the element type of the caller's K and V (float, bf16, f16; gqa/numeric.hpp),
// and QO, that of its Q and O (float, or KV's 16-bit type): gqa::forward with 16-bit K/V needs a policy
// whose plan() (and check(), prepare(), when it has them) accept tensor_view<const KV>, and with 16-bit
// Q/O one whose plan() and check() accept tensor_view<const QO> q and tensor_view<QO> o. Every built-in
// policy takes any element type (its members are templates; they read only the shapes of q and o).

/// Every policy: `plan(q, k)` returns the head map for this call (k after prepare()).
template <class P, class KV = float, class QO = float>
concept attention_policy = requires(P& p, const tensor_view<const QO>& q, const tensor_view<const KV>& k) {
  { p.plan(q, k) } -> std::convertible_to<head_map>;
};
/// Optional: validate everything the policy needs before any work is done.
template <class P, class KV = float, class QO = float>
concept policy_with_check = requires(P& p, const tensor_view<const QO>& q, const tensor_view<const KV>& k,
                                     const tensor_view<const KV>& v, const tensor_view<QO>& o) {
  p.check(q, k, v, o);
};
/// Optional: transform K/V before the core (WGQA combines H heads into G); returns float views.
template <class P, class KV = float>
concept policy_with_prepare = requires(P& p, const tensor_view<const KV>& k, const tensor_view<const KV>& v) {
  { p.prepare(k, v) } -> std::convertible_to<kv_views>;
};
/// Optional: post-process the output (PGQA subtracts noise); the second form also receives the call's
/// executor (its threads), and is preferred when a policy has both.
template <class P>
concept policy_with_finish = requires(P& p, const tensor_view<float>& o, const head_map& m) { p.finish(o, m); };
template <class P>
concept policy_with_finish_executor = requires(P& p, const tensor_view<float>& o, const head_map& m,
                                               const executor& ex) { p.finish(o, m, ex); };

namespace detail {
template <class P>
void finish(P& p, const tensor_view<float>& o, const head_map& map, const executor& ex) {
  if constexpr (policy_with_finish_executor<P>) {
    p.finish(o, map, ex);
  } else if constexpr (policy_with_finish<P>) {
    p.finish(o, map);
  }
}
}  // namespace detail

/// Optional: `per_sample()` true asks for one plan per batch element (e.g. KDGQA's per-sample mode):
/// forward() then runs plan -> core -> finish once per sample, on single-sample views.
template <class P>
concept policy_with_per_sample = requires(const P& p) {
  { p.per_sample() } -> std::convertible_to<bool>;
};

/// Optional: `plans_from_keys` true says plan() reads K's values (KDGQA's and DGQA's key norms), not only
/// its shape. On a paged cache or a ragged batch, which are no dense K, such a policy needs
/// plan_from_norms (below); without it the paged and ragged entry points reject it.
template <class P>
concept policy_plans_from_keys = requires {
  { P::plans_from_keys } -> std::convertible_to<bool>;
} && P::plans_from_keys;

/// The key norms of a call, computed when called (a plan that does not need them, DGQA's between two
/// training updates, never pays for them): per KV head g, Σ over the call's sequences of the Frobenius
/// norm of that sequence's keys of head g (Note [key norm order]).
using key_norms_source = std::function<std::vector<double>()>;

/// Optional, for a policy that plans from keys: `plan_from_norms(hq, hkv, norms)` is its plan from the
/// key norms `norms()` gives (called at most once) rather than from a dense K; plan(q, k) is then
/// plan_from_norms(q.h, k.h, key_norms(k)). The paged and ragged forward() give it the norms of each
/// sequence's valid keys.
template <class P>
concept policy_plans_from_norms = policy_plans_from_keys<P> &&
    requires(P& p, index_t hq, index_t hkv, const key_norms_source& norms) {
      { p.plan_from_norms(hq, hkv, norms) } -> std::convertible_to<head_map>;
    };

/// Optional, for a policy with a finish step: that step on a ragged batch, whose output o (1, total_q, hq,
/// dv) holds sequence i in rows [cu_q[i], cu_q[i + 1]). `check_ragged(o, cu_q)` validates before any work;
/// `finish_ragged(o, cu_q, map, executor)` applies the step per sequence. Without them, the ragged
/// forward() rejects a policy with a finish step.
template <class P>
concept policy_with_ragged_finish =
    requires(P& p, const tensor_view<float>& o, std::span<const index_t> cu_q, const head_map& m, const executor& ex) {
      p.check_ragged(o, cu_q);
      p.finish_ragged(o, cu_q, m, ex);
    };

namespace detail {
/// True when p asks for one plan per batch element (policy_with_per_sample) and the batch has several.
template <class P>
bool plans_per_sample(const P& p, index_t batch) {
  if constexpr (policy_with_per_sample<P>) {
    return p.per_sample() && batch > 1;
  } else {
    return false;
  }
}

/// The plan of a call whose keys are not one dense view (a paged cache, a ragged batch): from `norms`
/// (the norms of the call's valid keys) for a policy that plans from norms, else plan(q, k), which then
/// reads only the shapes.
template <class P, class Q, class T, class Norms>
head_map plan_without_dense_keys(P& p, const tensor_view<const Q>& q, const tensor_view<const T>& k,
                                 Norms&& norms) {
  if constexpr (policy_plans_from_norms<P>) {
    return p.plan_from_norms(q.h, k.h, key_norms_source(std::forward<Norms>(norms)));
  } else {
    return p.plan(q, k);
  }
}

/// The single-sample view of batch element ib (b = 1, same strides).
template <class T>
tensor_view<T> sample(const tensor_view<T>& t, index_t ib) noexcept {
  tensor_view<T> s = t;
  s.data = t.data + ib * t.stride_b;
  s.b = 1;
  return s;
}
/// Batch element ib of an int8 cache: its values' and its scales' samples.
inline q8_view sample(const q8_view& t, index_t ib) noexcept { return {sample(t.values, ib), sample(t.scales, ib)}; }

// gqa::forward takes K and V as a KVView: tensor_view<const KV> (float, bf16, f16) or q8_view (int8).
// values_of() is its values as a tensor_view (what a policy's check() and a shape-only plan() read).
template <class T>
const tensor_view<T>& values_of(const tensor_view<T>& t) noexcept {
  return t;
}
inline const tensor_view<const std::int8_t>& values_of(const q8_view& t) noexcept { return t.values; }
/// The element type of a KVView: T of tensor_view<const T>, std::int8_t of q8_view.
template <class V>
struct view_element;
template <class T>
struct view_element<tensor_view<T>> {
  using type = std::remove_const_t<T>;
};
template <>
struct view_element<q8_view> {
  using type = std::int8_t;
};
template <class V>
using view_element_t = typename view_element<V>::type;

/// The plan of a call on K view k: p.plan(q, k); for an int8 cache, a policy that plans from the keys
/// plans from the norms of its fp32 values (key_norms(q8_view): the bits of the dequantised K's), and
/// any other plans from the values' shape.
template <class P, class Q, class T>
head_map plan_of(P& p, const tensor_view<const Q>& q, const tensor_view<const T>& k) {
  return p.plan(q, k);
}
template <class P, class Q>
head_map plan_of(P& p, const tensor_view<const Q>& q, const q8_view& k) {
  static_assert(!policy_plans_from_keys<P> || policy_plans_from_norms<P>,
                "gqa::forward: a policy that plans from the keys needs plan_from_norms() to run on an int8 cache");
  if constexpr (policy_plans_from_norms<P>) {
    return p.plan_from_norms(q.h, k.values.h, key_norms_source([&k] { return key_norms(k); }));
  } else {
    return p.plan(q, k.values);
  }
}
}  // namespace detail

// --- Training: what a policy adds for the backward pass (all optional). ---

/// The forward's output and the gradient with respect to it, as the core saw them (a policy whose
/// finish() changed the output hands back the core's output and the gradient before that change).
struct output_grad_views {
  tensor_view<const float> o;
  tensor_view<const float> dout;
};

/// Optional: `typename P::saved` (what the policy's backward needs from the forward, e.g. PGQA's call
/// index and row statistics) and `finish_train(saved, o, map, executor)`, which forward_train() calls
/// instead of finish(): it does what finish() does and records, in the same step, what it did (a policy
/// shared between threads cannot be asked afterwards; Note [PGQA training call]).
template <class P>
concept policy_with_finish_train = requires { typename P::saved; } &&
    requires(P& p, typename P::saved& s, const tensor_view<float>& o, const head_map& m, const executor& ex) {
      p.finish_train(s, o, m, ex);
    };
/// Optional: the backward of finish(): from the final output o and dout = ∂L/∂o, the core's output and
/// ∂L/∂(core output), either o and dout themselves or views into `buffer` (which backward() owns).
template <class P>
concept policy_with_finish_backward = requires { typename P::saved; } &&
    requires(P& p, const typename P::saved& s, const tensor_view<const float>& o, const tensor_view<const float>& dout,
             const head_map& m, const executor& ex, std::vector<float>& buffer) {
      { p.finish_backward(s, o, dout, m, ex, buffer) } -> std::convertible_to<output_grad_views>;
    };
/// Optional: the backward of prepare(): from the caller's k, v and the gradients with respect to the
/// prepared K/V (dk_core, dv_core, shaped like prepare()'s views), the gradients with respect to k and v
/// (written to dk, dv) and to the policy's own parameters (kept by the policy, e.g. WGQA's weight_grad()).
template <class P>
concept policy_with_prepare_backward =
    requires(P& p, const tensor_view<const float>& k, const tensor_view<const float>& v,
             const tensor_view<const float>& dk_core, const tensor_view<const float>& dv_core,
             const tensor_view<float>& dk, const tensor_view<float>& dv, const executor& ex) {
      p.prepare_backward(k, v, dk_core, dv_core, dk, dv, ex);
    };

/// Optional, for forward_train/backward on a ragged batch of a policy with finish_ragged (PGQA):
/// `finish_ragged_train(saved, o, cu_q, map, executor)` (finish_ragged that records what it did) and
/// `finish_ragged_backward(saved, o, dout, cu_q, map, executor, buffer) -> output_grad_views` (its backward).
template <class P>
concept policy_with_ragged_training =
    requires { typename P::saved; } &&
    requires(P& p, typename P::saved& s, const typename P::saved& cs, const tensor_view<float>& o,
             const tensor_view<const float>& co, std::span<const index_t> cu_q, const head_map& m, const executor& ex,
             std::vector<float>& buffer) {
      p.finish_ragged_train(s, o, cu_q, m, ex);
      { p.finish_ragged_backward(cs, co, co, cu_q, m, ex, buffer) } -> std::convertible_to<output_grad_views>;
    };

/// What P records, or nothing.
struct no_saved_state {};
namespace detail {
template <class P, class = void>
struct saved_of {
  using type = no_saved_state;
};
template <class P>
struct saved_of<P, std::void_t<typename P::saved>> {
  using type = typename P::saved;
};
}  // namespace detail
template <class P>
using policy_saved_t = typename detail::saved_of<P>::type;

/// What forward_train() keeps for backward(), like a framework's saved tensors: the head map(s) the
/// forward used (never re-planned: KDGQA/DGQA's allocation has no gradient, and a later plan could
/// differ), the LSE, what the policy recorded, and the call's shapes and mask options (backward() checks
/// that it is given the same). The caller keeps q, k, v and o themselves, as for attend_backward().
template <class P>
struct saved_forward {
  std::vector<head_map> maps;  ///< the plan, or one per batch element when the policy planned per sample
  std::vector<float> lse;      ///< [b][hq][sq], natural log, −inf for rows that saw no key
  policy_saved_t<P> policy;    ///< what P::record() kept (PGQA: row statistics)
  // The call: the caller's q, k, v, o extents (k/v before prepare()) and the options that change the math
  // (the sinks' and ALiBi slopes' values, copied).
  index_t extents[4][4] = {};
  std::optional<float> scale;
  bool causal = false;
  std::vector<index_t> kv_lengths;
  index_t window_left = -1, window_right = -1;
  float softcap = 0.0f;
  std::vector<float> sinks, alibi_slopes;
  /// A ragged batch's offsets (forward_train on a gqa::varlen), empty for dense views; the LSE is then
  /// laid out [hq][total_q] and maps has one map, or one per sequence for a per-sample plan.
  std::vector<index_t> cu_q, cu_k;
  /// True once forward_train() has filled it.
  bool valid() const noexcept { return !maps.empty(); }
};

namespace detail {

/// finish(), or finish_train() when forward_train() keeps what the policy records.
template <class P, class S>
void finish(P& p, const tensor_view<float>& o, const head_map& map, const executor& ex, S* saved) {
  if constexpr (policy_with_finish_train<P>) {
    if (saved) {
      p.finish_train(saved->policy, o, map, ex);
      return;
    }
  }
  finish(p, o, map, ex);
}

/// dequantize_q8(x) into buf (grown as needed), as a BSHD float view of x's shape (Note [int8 policies]).
inline tensor_view<const float> dequantised_copy(const q8_view& x, std::vector<float>& buf) {
  const auto& t = x.values;
  buf.resize(static_cast<std::size_t>(t.b * t.s * t.h * t.d));
  const tensor_view<float> out = bshd(buf.data(), t.b, t.s, t.h, t.d);
  dequantize_q8(x, out);
  return out;
}

// Note [16-bit Q/O policies]
// gqa::forward with Q and O in a 16-bit type (and K/V in the same type) runs every policy's steps in
// fp32, as with 16-bit K/V: check() and plan() read only the shapes of q and o; KDGQA's and DGQA's key
// norms are those of the widened keys; WGQA combines the widened heads into float K/V, and the core then
// runs on 16-bit Q with float K/V (the widened Q times the fp32 combined heads) into the 16-bit O. A policy
// with a finish step (PGQA) must see the fp32 output: the core writes an fp32 copy of O (b·sq·hq·d_v
// floats in a buffer the calling thread keeps and reuses, as the int8 copies of Note [int8 policies]),
// finish() perturbs it, and each element is then rounded once to O's type.
// So every output element is rounded exactly once, after every fp32 step of the variant. The paged and
// ragged forward() (gqa/paged.hpp, gqa/varlen.hpp) follow the same rules with the same helpers
// (buffered_output, core_output, round_into): PGQA's ragged finish perturbs the fp32 copy per sequence.

/// Writes each element of the fp32 view `from` to `to` (same extents) rounded to T (nearest even; NaN stays
/// NaN), row by row with the core's store_rounded. Serial: O(b·sq·hq·d_v), beside the attention's
/// O(b·sq·skv·hq·d).
template <class T>
void round_into(const tensor_view<const float>& from, const tensor_view<T>& to) noexcept {
  for (index_t ib = 0; ib < from.b; ++ib)
    for (index_t is = 0; is < from.s; ++is)
      for (index_t ih = 0; ih < from.h; ++ih) detail::core::store_rounded(from.row(ib, is, ih), from.d, to.row(ib, is, ih));
}

/// Whether a call with Q/O of type QO gives Policy's finish step (a dense, paged or ragged one) an fp32 copy
/// of O to work on: 16-bit O and a finish step (Note [16-bit Q/O policies]).
template <class Policy, class QO>
constexpr bool buffered_output = !std::is_same_v<QO, float> &&
                                 (policy_with_finish<Policy> || policy_with_finish_executor<Policy> ||
                                  policy_with_ragged_finish<Policy>);

/// The view the core and the finish step write for the call's O: o itself, or where Buffered an fp32 view of
/// o's extents (BSHD) over a buffer the calling thread keeps and reuses (one per O type), whose elements
/// round_into() then rounds into o.
template <bool Buffered, class QO>
auto core_output(const tensor_view<QO>& o) {
  if constexpr (Buffered) {
    thread_local std::vector<float> o_buf;  // only in the instantiations that buffer
    o_buf.resize(static_cast<std::size_t>(o.b * o.s * o.h * o.d));
    return bshd(o_buf.data(), o.b, o.s, o.h, o.d);
  } else {
    return o;
  }
}

/// Starts what a training forward keeps: the call's extents (k, v: the caller's) and options, no map yet, an
/// LSE of b·hq·sq floats (zeroed), which it returns for the call's options.lse.
template <class S, class Q, class K, class V, class O>
std::span<float> begin_saved(S& saved, const tensor_view<Q>& q, const tensor_view<K>& k, const tensor_view<V>& v,
                             const tensor_view<O>& o, const attention_options& opt) {
  saved.maps.clear();
  saved.lse.assign(static_cast<std::size_t>(q.b * q.h * q.s), 0.0f);
  const index_t e[4][4] = {{q.b, q.s, q.h, q.d}, {k.b, k.s, k.h, k.d}, {v.b, v.s, v.h, v.d}, {o.b, o.s, o.h, o.d}};
  for (int t = 0; t < 4; ++t) std::copy(e[t], e[t] + 4, saved.extents[t]);
  saved.scale = opt.scale;
  saved.causal = opt.causal;
  saved.kv_lengths = to_indices(opt.kv_lengths);
  saved.window_left = opt.window_left;
  saved.window_right = opt.window_right;
  saved.softcap = opt.softcap;
  saved.sinks.assign(opt.sinks.begin(), opt.sinks.end());
  saved.alibi_slopes.assign(opt.alibi_slopes.begin(), opt.alibi_slopes.end());
  saved.cu_q.clear();
  saved.cu_k.clear();
  saved.policy = {};
  return saved.lse;
}

/// run_forward()'s steps after prepare(): the call's checks, plan -> core -> finish, on the core's K/V ck,
/// cv (the caller's k, v, or prepare()'s float views); k, v are the caller's (their extents are saved).
/// QO: Q's and O's element type (Note [16-bit Q/O policies]).
template <class Isa, class Policy, class S, class KVView, class CKView, class QO>
void run_planned(Policy& p, const tensor_view<const QO>& q, const KVView& k_in, const KVView& v_in,
                 const CKView& ck, const CKView& cv, const tensor_view<QO>& o_out, const attention_options& opt,
                 S* saved, const char* where) {
  const auto& k = values_of(k_in);
  const auto& v = values_of(v_in);
  // The whole call (shapes, options, aliasing) before plan(): a bad argument throws before a stateful
  // policy (DGQA) updates its state or any sample is computed.
  check_call(q, ck, cv, o_out, opt, where);
  // 16-bit O with a finish step: the core and finish() work on an fp32 copy (Note [16-bit Q/O policies]).
  constexpr bool buffered = buffered_output<Policy, QO>;
  const auto o = core_output<buffered>(o_out);
  // A 16-bit o here means the policy has no finish step.
  constexpr bool float_out = std::is_same_v<std::remove_const_t<decltype(o)>, tensor_view<float>>;
  const auto on = core::target_of<Isa>(opt);  // the ISA (a bad options.isa / GQA_ISA throws here)
  attention_options call = opt;
  if (saved) call.lse = begin_saved(*saved, q, k, v, o, opt);
  const executor ex = executor_of(opt);
  bool done = false;
  if constexpr (policy_with_per_sample<Policy>) {
    static_assert(!policy_with_finish_train<Policy> && !policy_with_finish_backward<Policy>,
                  "gqa: a policy that plans per sample cannot finish_train() or finish_backward() (not supported yet)");
    if (plans_per_sample(p, q.b)) {
      const auto per = static_cast<std::size_t>(q.h * q.s);  // LSE entries of one sample
      for (index_t ib = 0; ib < q.b; ++ib) {
        const auto qs = sample(q, ib);
        const auto ks = sample(ck, ib), vs = sample(cv, ib);  // K/V's element type, maybe not q's
        const auto os = sample(o, ib);
        attention_options so = call;
        if (!call.kv_lengths.empty()) so.kv_lengths = call.kv_lengths.subspan(static_cast<std::size_t>(ib), 1);
        if (!call.lse.empty()) so.lse = call.lse.subspan(static_cast<std::size_t>(ib) * per, per);
        const head_map map = plan_of(p, qs, ks);
        check_map(map, qs, ks, where);
        core::forward_on(on, qs, ks, vs, os, map, so);
        if constexpr (float_out) finish(p, os, map, ex);
        if (saved) saved->maps.push_back(map);
      }
      done = true;
    }
  }
  if (!done) {
    const head_map map = plan_of(p, q, ck);
    check_map(map, q, ck, where);
    core::forward_on(on, q, ck, cv, o, map, call);
    if constexpr (float_out) finish(p, o, map, ex, saved);
    if (saved) saved->maps.push_back(map);
  }
  if constexpr (buffered) round_into(tensor_view<const float>(o), o_out);
  if (saved && !opt.lse.empty()) std::copy(saved->lse.begin(), saved->lse.end(), opt.lse.begin());
}

/// forward() and forward_train(): check -> prepare -> plan -> core -> finish (Note [validation once]).
/// With `saved` (S = saved_forward<...>), the LSE goes to saved->lse (and to opt.lse too when given), the
/// plan(s) are kept and finish_train() replaces finish(). KVView: the caller's K/V, tensor_view<const KV>
/// or q8_view (KV int8); the core runs on them, or on float when prepare() made the policy's own (fp32)
/// K/V. prepare() takes the caller's element type, or, for an int8 cache, its fp32 values (Note [int8
/// policies]).
template <class Isa, class Policy, class S, class KVView, class QO>
void run_forward(Policy& p, const tensor_view<const QO>& q, const KVView& k, const KVView& v,
                 const tensor_view<QO>& o, const attention_options& opt, S* saved, const char* where) {
  using KV = view_element_t<KVView>;
  constexpr bool int8 = std::is_same_v<KVView, q8_view>;
  using PrepareKV = std::conditional_t<int8, float, KV>;  // what prepare() is given
  static_assert(attention_policy<Policy, KV, QO>,
                "gqa::forward: this policy's plan() does not take this K (or Q) element type");
  static_assert(std::is_same_v<QO, float> || !policy_with_check<Policy> || policy_with_check<Policy, KV, QO>,
                "gqa::forward: this policy's check() takes float Q/O only; make it a template over the element "
                "types to run it on 16-bit Q/O");
  static_assert((policy_with_check<Policy, KV, QO> || !policy_with_check<Policy>) &&
                    (policy_with_prepare<Policy, PrepareKV> || !policy_with_prepare<Policy>),
                "gqa::forward: this policy's check()/prepare() takes float K/V only; make it a template over the "
                "element type to run it on 16-bit K/V");
  // Memory safety first: a policy's own work (norms, noise) reads these views.
  check_views(q, k, v, o, where);
  check_finite(q, k, v, opt, where);  // opt-in; before the policy's own work
  if constexpr (policy_with_check<Policy, KV, QO>) p.check(q, values_of(k), values_of(v), o);
  if constexpr (policy_with_prepare<Policy, PrepareKV>) {
    // Note [int8 policies]
    // A policy's prepare() (WGQA's head combination) reads every K/V element and writes its own fp32
    // K/V, so on an int8 cache it is given the cache's fp32 values: dequantize_q8 into an fp32 copy (the
    // combine's own cost order, O(b·s·h·d)), and its fp32 result runs on the float core. A policy that
    // plans from the keys plans from the norms of the same fp32 values (plan_of), and a finish() step
    // sees the fp32 output: every step of every policy computes in fp32 on the dequantised values.
    // The copies live in buffers the calling thread keeps for its next call (grown, never shrunk): fresh
    // buffers per call were zero-filled and page-faulted every time, which made WGQA decode on an int8
    // cache (32 heads × 8192 keys × 128: 2 × 128 MiB) take 1.36 s a call instead of tens of ms
    // (gqa-compare llama-decode, 2026-12-02). The memory is that of an fp32 copy of the largest int8
    // K/V the thread has prepared.
    const auto prepared = [&]() -> kv_views {
      if constexpr (int8) {
        thread_local std::vector<float> kf, vf;  // only in the int8 instantiations
        return p.prepare(dequantised_copy(k, kf), dequantised_copy(v, vf));
      } else {
        return p.prepare(k, v);
      }
    };
    const kv_views kv = prepared();
    check_view(kv.k, "prepare().k", where);
    check_view(kv.v, "prepare().v", where);
    run_planned<Isa>(p, q, k, v, kv.k, kv.v, o, opt, saved, where);
  } else {
    run_planned<Isa>(p, q, k, v, k, v, o, opt, saved, where);
  }
}

}  // namespace detail

namespace detail {
/// gqa::forward: a const policy must not silently skip a step that only its non-const members implement.
template <class Isa, class P, class KVView, class QO>
void forward_policy(P&& policy, const tensor_view<const QO>& q, const KVView& k, const KVView& v,
                    const tensor_view<QO>& o, const attention_options& opt) {
  using KV = view_element_t<KVView>;
  static_assert(isa::dispatched<Isa> || isa::compiled<Isa>,
                "gqa::forward<Isa>: this translation unit is not compiled with flags for Isa");
  using Policy = std::remove_reference_t<P>;
  using Mutable = std::remove_cv_t<Policy>;
  static_assert((policy_with_check<Policy, KV, QO> || !policy_with_check<Mutable, KV, QO>) &&
                    (policy_with_prepare<Policy, KV> || !policy_with_prepare<Mutable, KV>) &&
                    (policy_with_finish<Policy> || policy_with_finish_executor<Policy> ||
                     !(policy_with_finish<Mutable> || policy_with_finish_executor<Mutable>)),
                "gqa::forward: this policy's check/prepare/finish is not const; pass a non-const policy");
  Policy& p = policy;
  run_forward<Isa>(p, q, k, v, o, opt, static_cast<saved_forward<Mutable>*>(nullptr), "gqa::forward");
}
}  // namespace detail

/// Runs one attention call of variant `p`: check -> prepare -> plan -> core -> finish. `p` may be a
/// temporary (`forward(gqa_policy{}, ...)`) or a const policy whose members are const; see the README for
/// which policies may be shared between threads. Isa as for attend(): isa::dispatch (the default) picks
/// the ISA at run time (options.isa, GQA_ISA, the CPU), an ISA tag at compile time.
template <class Isa = isa::dispatch, class P>
  requires attention_policy<std::remove_reference_t<P>>
void forward(P&& policy, tensor_view<const float> q, tensor_view<const float> k, tensor_view<const float> v,
             tensor_view<float> o, const attention_options& opt = {}) {
  detail::forward_policy<Isa>(std::forward<P>(policy), q, k, v, o, opt);
}

/// forward() with K and V stored in 16 bits (both bf16 or both f16; gqa/numeric.hpp), Q and O float (all
/// four 16-bit: the overload after this one): the
/// same as forward() on K/V widened to float. Every built-in policy takes them; the core computes in
/// fp32 (Note [16-bit K/V]), and so do the policies' own steps: KDGQA's and DGQA's key norms of the
/// widened keys, WGQA's combined heads (float buffers, so its core runs on float K/V), PGQA's noise on
/// the fp32 output.
template <class Isa = isa::dispatch, class P, class K, class V>
  requires detail::half_kv<K, V> && attention_policy<std::remove_reference_t<P>, std::remove_const_t<K>>
void forward(P&& policy, tensor_view<const float> q, tensor_view<K> k, tensor_view<V> v, tensor_view<float> o,
             const attention_options& opt = {}) {
  using T = std::remove_const_t<K>;
  detail::forward_policy<Isa>(std::forward<P>(policy), q, tensor_view<const T>(k), tensor_view<const T>(v), o, opt);
}

/// forward() with Q, K, V and O all stored in one 16-bit type (bf16 or f16): the variant computed in fp32
/// on the widened Q, K, V, each output element rounded once to the 16-bit type (nearest even), after
/// every fp32 step of the policy: Note [16-bit Q/O policies]. Every built-in policy takes them; WGQA's
/// combined heads and PGQA's perturbed output are fp32 before that single rounding. options.lse stays
/// float. Mixed element types do not compile. forward_train() and backward() take the same types (Note
/// [16-bit training]).
template <class Isa = isa::dispatch, class P, class Q, class K, class V, class O>
  requires detail::half_qkvo<Q, K, V, O> &&
           attention_policy<std::remove_reference_t<P>, std::remove_const_t<K>, std::remove_const_t<K>>
void forward(P&& policy, tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> o,
             const attention_options& opt = {}) {
  using T = std::remove_const_t<K>;
  detail::forward_policy<Isa>(std::forward<P>(policy), tensor_view<const T>(q), tensor_view<const T>(k),
                              tensor_view<const T>(v), o, opt);
}

/// forward() with an int8 K/V cache (gqa::q8_view, gqa/quantized.hpp), Q and O float: the variant over K
/// and V dequantised to fp32 (scale · value), dequantised inside the core (Note [int8 K/V]). Every
/// built-in policy takes it and computes in fp32 on the dequantised values: KDGQA's and DGQA's key norms
/// (key_norms(q8_view)), WGQA's combined heads (its prepare() on an fp32 copy of K and V kept by the calling thread: Note
/// [int8 policies]), PGQA's noise on the fp32 output. Agrees with forward() on dequantize_q8's floats to
/// fp32 rounding (bit for bit where every task takes the tiled path).
template <class Isa = isa::dispatch, class P>
  requires attention_policy<std::remove_reference_t<P>, std::int8_t>
void forward(P&& policy, tensor_view<const float> q, const q8_view& k, const q8_view& v, tensor_view<float> o,
             const attention_options& opt = {}) {
  detail::forward_policy<Isa>(std::forward<P>(policy), q, k, v, o, opt);
}

/// forward() with an int8 K/V cache and Q and O in one 16-bit type (bf16 or f16): every step in fp32 as
/// for float Q/O (Note [16-bit Q/O policies]: PGQA's noise on an fp32 copy of O, WGQA's combined heads of
/// the dequantised values in float), each output element rounded once, so the float call on the widened Q
/// with its output rounded to T, bit for bit.
template <class Isa = isa::dispatch, class P, class Q, class O>
  requires detail::half_qo<Q, O> && attention_policy<std::remove_reference_t<P>, std::int8_t, std::remove_const_t<Q>>
void forward(P&& policy, tensor_view<Q> q, const q8_view& k, const q8_view& v, tensor_view<O> o,
             const attention_options& opt = {}) {
  using T = std::remove_const_t<Q>;
  detail::forward_policy<Isa>(std::forward<P>(policy), tensor_view<const T>(q), k, v, o, opt);
}

/// forward() for training: the same call (same output, same policy state changes), which also returns
/// what backward() needs. Keep q, k, v and o unchanged until backward() has run. Isa as for forward().
template <class Isa = isa::dispatch, attention_policy P>
saved_forward<P> forward_train(P& p, tensor_view<const float> q, tensor_view<const float> k,
                               tensor_view<const float> v, tensor_view<float> o, const attention_options& opt = {}) {
  static_assert(isa::dispatched<Isa> || isa::compiled<Isa>,
                "gqa::forward_train<Isa>: this translation unit is not compiled with flags for Isa");
  saved_forward<P> saved;
  detail::run_forward<Isa>(p, q, k, v, o, opt, &saved, "gqa::forward_train");
  return saved;
}

/// forward_train() with Q, K, V and O all stored in one 16-bit type (bf16 or f16): forward() of the same
/// types (each output element rounded once after every fp32 step of the policy) that also returns what
/// backward() needs. The saved LSE, map(s) and policy record are those of forward_train() on the widened
/// Q, K, V (PGQA's row statistics of the fp32 output, before the rounding), bit for bit (Note [16-bit
/// training]).
template <class Isa = isa::dispatch, attention_policy P, class Q, class K, class V, class O>
  requires detail::half_qkvo<Q, K, V, O> && attention_policy<P, std::remove_const_t<K>, std::remove_const_t<K>>
saved_forward<P> forward_train(P& p, tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> o,
                               const attention_options& opt = {}) {
  static_assert(isa::dispatched<Isa> || isa::compiled<Isa>,
                "gqa::forward_train<Isa>: this translation unit is not compiled with flags for Isa");
  using T = std::remove_const_t<K>;
  saved_forward<P> saved;
  detail::run_forward<Isa>(p, tensor_view<const T>(q), tensor_view<const T>(k), tensor_view<const T>(v), o, opt,
                           &saved, "gqa::forward_train");
  return saved;
}

namespace detail {

/// options.scale as a message part: its value or "(default)".
struct scale_text {
  const std::optional<float>& scale;
  friend std::ostream& operator<<(std::ostream& os, const scale_text& s) {
    return s.scale ? os << *s.scale : os << "(default)";
  }
};

/// Everything backward() checks before any work: `saved` filled, views, extents equal to the forward's,
/// dout/dq/dk/dv like o/q/k/v, the forward's mask and modifier options, threads, options.dsinks, and no
/// gradient repeating an element or sharing one with an input or another gradient (Note [exact overlap]).
/// T: the inputs' element type (float, bf16, f16); G: the gradients' (float or T).
/// ragged: the backward of a ragged batch (its offsets are checked by the caller).
template <class P, class T, class G>
void check_backward_call(const saved_forward<P>& saved, const tensor_view<const T>& q, const tensor_view<const T>& k,
                         const tensor_view<const T>& v, const tensor_view<const T>& o,
                         const tensor_view<const T>& dout, const tensor_view<G>& dq, const tensor_view<G>& dk,
                         const tensor_view<G>& dv, const attention_options& opt, bool ragged = false) {
  const char* where = ragged ? "gqa::backward(varlen)" : "gqa::backward";
  if (!saved.valid()) fail(where, ": saved = (empty): pass what gqa::forward_train returned for this call");
  if (ragged && saved.cu_q.empty())
    fail(where, ": saved: from a forward_train on dense views; call backward without a gqa::varlen");
  if (!ragged && !saved.cu_q.empty())
    fail(where, ": saved: from a forward_train on a ragged batch; call backward with the same gqa::varlen");
  const named_view<const T> in[5] = {{q, "q"}, {k, "k"}, {v, "v"}, {o, "o"}, {dout, "dout"}};
  for (const auto& t : in) check_view(t.view, t.name, where);
  check_view(dq, "dq", where);
  check_view(dk, "dk", where);
  check_view(dv, "dv", where);
  static constexpr const char* ext[4] = {"b", "s", "h", "d"};
  for (int t = 0; t < 4; ++t) {
    const index_t got[4] = {in[t].view.b, in[t].view.s, in[t].view.h, in[t].view.d};
    for (int e = 0; e < 4; ++e)
      if (got[e] != saved.extents[t][e])
        fail(where, ": ", field{in[t].name, ext[e]}, " = ", got[e], ": must equal the forward's ",
             field{in[t].name, ext[e]}, " = ", saved.extents[t][e]);
  }
  require_same_extents(dout, "dout", o, "o", where);
  require_same_extents(dq, "dq", q, "q", where);
  require_same_extents(dk, "dk", k, "k", where);
  require_same_extents(dv, "dv", v, "v", where);
  if (opt.scale != saved.scale)
    fail(where, ": options.scale = ", scale_text{opt.scale}, ": must equal the forward's (", scale_text{saved.scale}, ")");
  if (opt.causal != saved.causal)
    fail(where, ": options.causal = ", opt.causal ? "true" : "false", ": must equal the forward's (",
         saved.causal ? "true" : "false", ")");
  bool same_lengths = opt.kv_lengths.size() == saved.kv_lengths.size();
  for (std::size_t i = 0; same_lengths && i < saved.kv_lengths.size(); ++i)
    same_lengths = opt.kv_lengths[i] == saved.kv_lengths[i];
  if (!same_lengths)
    fail(where, ": options.kv_lengths (size ", opt.kv_lengths.size(), "): must equal the forward's (size ",
         saved.kv_lengths.size(), ")");
  if (opt.window_left != saved.window_left)
    fail(where, ": options.window_left = ", opt.window_left, ": must equal the forward's (", saved.window_left, ")");
  if (opt.window_right != saved.window_right)
    fail(where, ": options.window_right = ", opt.window_right, ": must equal the forward's (", saved.window_right, ")");
  if (opt.softcap != saved.softcap)
    fail(where, ": options.softcap = ", opt.softcap, ": must equal the forward's (", saved.softcap, ")");
  const auto same_values = [](std::span<const float> a, const std::vector<float>& b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
  };
  if (!same_values(opt.sinks, saved.sinks))
    fail(where, ": options.sinks (size ", opt.sinks.size(), "): must equal the forward's (size ", saved.sinks.size(), ")");
  if (!same_values(opt.alibi_slopes, saved.alibi_slopes))
    fail(where, ": options.alibi_slopes (size ", opt.alibi_slopes.size(), "): must equal the forward's (size ",
         saved.alibi_slopes.size(), ")");
  require(opt.num_threads >= 0, where, "options.num_threads", opt.num_threads, "must be >= 0");
  require_outputs_disjoint<const T, G>({{dq, "dq"}, {dk, "dk"}, {dv, "dv"}}, {in[0], in[1], in[2], in[3], in[4]},
                                       where);
  check_backward_modifiers(q, k, v, o, dout, saved.lse, dq, dk, dv, opt, where);
}

/// x widened to float into buf (grown as needed), as a BSHD view of x's extents.
template <class T>
tensor_view<const float> widened_copy(const tensor_view<const T>& x, std::vector<float>& buf) {
  buf.resize(static_cast<std::size_t>(x.b * x.s * x.h * x.d));
  const tensor_view<float> out = bshd(buf.data(), x.b, x.s, x.h, x.d);
  for (index_t ib = 0; ib < x.b; ++ib)
    for (index_t is = 0; is < x.s; ++is)
      for (index_t ih = 0; ih < x.h; ++ih) {
        const T* src = x.row(ib, is, ih);
        float* dst = out.row(ib, is, ih);
        for (index_t c = 0; c < x.d; ++c) dst[c] = to_float(src[c]);
      }
  return out;
}

/// Whether backward() of a policy on 16-bit inputs runs on fp32 copies of them (Note [16-bit training]):
/// the policy has its own step around the core (prepare, finish), whose backward takes fp32 views.
template <class P>
constexpr bool trains_on_widened = policy_with_prepare<P> || policy_with_prepare_backward<P> ||
                                   policy_with_finish_backward<P> || policy_with_finish_train<P> ||
                                   policy_with_finish<P> || policy_with_finish_executor<P>;

/// backward() after its checks: finish_backward -> the core's backward on the recorded map(s) ->
/// prepare_backward, for dense views or (a `saved` with offsets) a ragged batch's packed views. T: the
/// inputs' element type, G: the gradients' (Note [16-bit training]).
template <class Isa, class P, class T, class G>
void run_backward(P& p, const saved_forward<P>& saved, const tensor_view<const T>& q, const tensor_view<const T>& k,
                  const tensor_view<const T>& v, const tensor_view<const T>& o, const tensor_view<const T>& dout,
                  const tensor_view<G>& dq, const tensor_view<G>& dk, const tensor_view<G>& dv,
                  const attention_options& opt) {
  if constexpr (!std::is_same_v<T, float> && trains_on_widened<P>) {
    // fp32 copies of the inputs (and of the gradients, for 16-bit ones), kept by the calling thread for
    // its next call (fresh buffers page-fault on every call), then the float backward, rounded once.
    thread_local std::vector<float> wq, wk, wv, wo, wd;
    const auto qf = widened_copy(q, wq), kf = widened_copy(k, wk), vf = widened_copy(v, wv);
    const auto of = widened_copy(o, wo), df = widened_copy(dout, wd);
    if constexpr (std::is_same_v<G, float>) {
      run_backward<Isa>(p, saved, qf, kf, vf, of, df, dq, dk, dv, opt);
    } else {
      thread_local std::vector<float> gq, gk, gv;
      gq.resize(static_cast<std::size_t>(q.b * q.s * q.h * q.d));
      gk.resize(static_cast<std::size_t>(k.b * k.s * k.h * k.d));
      gv.resize(static_cast<std::size_t>(v.b * v.s * v.h * v.d));
      const tensor_view<float> dqf = bshd(gq.data(), q.b, q.s, q.h, q.d);
      const tensor_view<float> dkf = bshd(gk.data(), k.b, k.s, k.h, k.d);
      const tensor_view<float> dvf = bshd(gv.data(), v.b, v.s, v.h, v.d);
      run_backward<Isa>(p, saved, qf, kf, vf, of, df, dqf, dkf, dvf, opt);
      round_into(tensor_view<const float>(dqf), dq);
      round_into(tensor_view<const float>(dkf), dk);
      round_into(tensor_view<const float>(dvf), dv);
    }
    return;
  } else {
    struct {
      tensor_view<const T> k, v;
    } kv{k, v};
    if constexpr (policy_with_prepare<P>) {  // T is float here
      const kv_views prepared = p.prepare(k, v);  // recomputed: see Note [backward recomputes prepare]
      kv = {prepared.k, prepared.v};
    }
    // The core's dK/dV: the caller's dk, dv, or (when prepare() changed K/V) float buffers shaped like kv
    // (G is float then: 16-bit inputs of such a policy are widened above).
    std::vector<float> dk_buf, dv_buf;
    tensor_view<G> dk_core = dk, dv_core = dv;
    if constexpr (policy_with_prepare_backward<P>) {
      dk_buf.resize(static_cast<std::size_t>(kv.k.b * kv.k.s * kv.k.h * kv.k.d));
      dv_buf.resize(static_cast<std::size_t>(kv.v.b * kv.v.s * kv.v.h * kv.v.d));
      dk_core = bshd(dk_buf.data(), kv.k.b, kv.k.s, kv.k.h, kv.k.d);
      dv_core = bshd(dv_buf.data(), kv.v.b, kv.v.s, kv.v.h, kv.v.d);
    }
    const std::span<const float> lse = saved.lse;
    attention_options call = opt;
    call.lse = {};  // the LSE is saved.lse; a caller's options.lse (sized for the forward) is not used here
    const executor ex = executor_of(call);
    const bool ragged = !saved.cu_q.empty();
    const std::span<const index_t> cu_q = saved.cu_q, cu_k = saved.cu_k;
    auto og = std::pair{o, dout};
    std::vector<float> finish_buf;  // the finish step's backward output, when it has one
    if constexpr (policy_with_finish_backward<P>) {
      if (!ragged) {
        const output_grad_views f = p.finish_backward(saved.policy, o, dout, saved.maps[0], ex, finish_buf);
        og = {f.o, f.dout};
      }
    }
    if constexpr (policy_with_ragged_training<P>) {
      if (ragged) {
        const output_grad_views f = p.finish_ragged_backward(saved.policy, o, dout, cu_q, saved.maps[0], ex, finish_buf);
        og = {f.o, f.dout};
      }
    }
    // One core call, or one per batch element (per sequence of a ragged batch) with its own map for a
    // policy that plans per sample: the sinks' gradient is then the sum of the samples', added in order.
    const auto runs = saved.maps.size();
    const auto on = core::target_of<Isa>(call);
    std::vector<float> dsinks_run(call.dsinks.size());
    for (std::size_t r = 0; r < runs; ++r) {
      attention_options ro = call;
      if (r > 0) ro.dsinks = dsinks_run;
      if (ragged) {
        const std::size_t per_run = runs == 1 ? cu_q.size() - 1 : 1;
        core::backward_on(on, q, kv.k, kv.v, og.first, og.second, lse, dq, dk_core, dv_core, saved.maps[r], ro,
                          cu_q.subspan(r * per_run, per_run + 1), cu_k.subspan(r * per_run, per_run + 1));
      } else if (runs == 1) {
        attend_backward<Isa>(q, kv.k, kv.v, og.first, og.second, lse, dq, dk_core, dv_core, saved.maps[0], ro);
      } else {
        const auto ib = static_cast<index_t>(r);
        const auto per = static_cast<std::size_t>(q.h * q.s);  // LSE entries of one sample
        if (!call.kv_lengths.empty()) ro.kv_lengths = call.kv_lengths.subspan(r, 1);
        attend_backward<Isa>(sample(q, ib), sample(kv.k, ib), sample(kv.v, ib), sample(og.first, ib),
                             sample(og.second, ib), lse.subspan(r * per, per), sample(dq, ib), sample(dk_core, ib),
                             sample(dv_core, ib), saved.maps[r], ro);
      }
      if (r > 0)
        for (std::size_t h = 0; h < dsinks_run.size(); ++h) call.dsinks[h] += dsinks_run[h];
    }
    if constexpr (policy_with_prepare_backward<P>) p.prepare_backward(k, v, dk_core, dv_core, dk, dv, ex);
  }
}

}  // namespace detail

/// The gradients of the forward_train() call that returned `saved`: dq, dk, dv (like q, k, v: the caller's
/// tensors, before any prepare()) from dout = ∂L/∂o, the same q, k, v, o and the same options (threads
/// may differ). Runs finish_backward -> attend_backward on the recorded map(s) -> prepare_backward, so
/// each variant differentiates its own steps; its parameter gradients (WGQA's weights) stay in the policy.
/// Each step runs on the call's executor (executor_of(options)). Isa as for forward(): isa::dispatch (the
/// default) picks the ISA at run time by the same rules, so with the same options and environment the
/// backward runs the ISA its forward_train() ran.
/// dq, dk, dv are overwritten. Bitwise identical for any thread count and executor.
/// With options.dsinks (size hq, needs sinks) it also gives the sinks' gradient of the whole call (for a
/// policy that plans per sample: the samples' gradients added in sample order).
/// Throws gqa::invalid_argument before any work for: an empty `saved`, extents different from the
/// forward's, dout/dq/dk/dv extents different from o/q/k/v, options (scale, causal, kv_lengths, window,
/// softcap, the values of sinks and alibi_slopes) different from the forward's, a bad options.dsinks, any
/// overlap of dq, dk, dv with an input or each other, and (Isa = isa::dispatch) an options.isa or GQA_ISA
/// naming an ISA that cannot run here.
template <class Isa = isa::dispatch, attention_policy P>
void backward(P& p, const saved_forward<P>& saved, tensor_view<const float> q, tensor_view<const float> k,
              tensor_view<const float> v, tensor_view<const float> o, tensor_view<const float> dout,
              tensor_view<float> dq, tensor_view<float> dk, tensor_view<float> dv, const attention_options& opt = {}) {
  static_assert(isa::dispatched<Isa> || isa::compiled<Isa>,
                "gqa::backward<Isa>: this translation unit is not compiled with flags for Isa");
  detail::check_backward_call(saved, q, k, v, o, dout, dq, dk, dv, opt);
  static_cast<void>(detail::core::target_of<Isa>(opt));  // a bad options.isa / GQA_ISA throws before any work
  detail::run_backward<Isa>(p, saved, q, k, v, o, dout, dq, dk, dv, opt);
}

/// backward() of a forward_train() on 16-bit Q, K, V, O: q, k, v, o and dout in that type T (bf16 or
/// f16; each view const or not), the gradients dq, dk, dv in T or float (all three the same). Bit for bit
/// backward() on the widened inputs with its float gradients rounded once to T (the same bits with float
/// gradients), the policy's own gradients (WGQA's weights) those of that call (Note [16-bit training]).
/// The same checks and errors (aliasing across element types by bytes).
template <class Isa = isa::dispatch, attention_policy P, class Q, class K, class V, class O, class DO, class G>
  requires detail::half_backward<Q, K, V, O, DO, G>
void backward(P& p, const saved_forward<P>& saved, tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v,
              tensor_view<O> o, tensor_view<DO> dout, tensor_view<G> dq, tensor_view<G> dk, tensor_view<G> dv,
              const attention_options& opt = {}) {
  static_assert(isa::dispatched<Isa> || isa::compiled<Isa>,
                "gqa::backward<Isa>: this translation unit is not compiled with flags for Isa");
  using T = std::remove_const_t<Q>;
  const tensor_view<const T> qc(q), kc(k), vc(v), oc(o), dc(dout);
  detail::check_backward_call(saved, qc, kc, vc, oc, dc, dq, dk, dv, opt);
  static_cast<void>(detail::core::target_of<Isa>(opt));  // a bad options.isa / GQA_ISA throws before any work
  detail::run_backward<Isa>(p, saved, qc, kc, vc, oc, dc, dq, dk, dv, opt);
}

// Note [16-bit training]
// forward_train() on 16-bit Q, K, V, O is forward() of those types (every policy step in fp32, each
// output element rounded once: Note [16-bit Q/O policies]) and saves what the float call on the widened
// inputs saves: the same map(s), the same LSE bits, PGQA's statistics of the same fp32 output. backward()
// on 16-bit inputs is defined as the float backward() on the widened q, k, v, o (the rounded output) and
// dout, its gradients rounded once to the gradients' type. A policy that only plans (MHA, MQA, GQA, SQA,
// KDGQA, DGQA) gets exactly that from the core's 16-bit backward (Note [16-bit backward] in
// detail/core/backward.hpp), which widens each input where it reads it. A policy with its own steps around
// the core (WGQA's prepare, PGQA's finish) differentiates them on fp32 views, so its backward widens q, k,
// v, o and dout into fp32 copies (5 tensors' floats, in buffers the calling thread keeps, plus dq, dk, dv
// for 16-bit gradients) and runs the float backward: O(size) copies beside the core's O(sq·skv) work.
// A ragged batch (forward_train/backward with a gqa::varlen) follows the same rule on its packed rows:
// run_backward() serves both, the core's ragged backward widening as the dense one does. With bf16 inputs
// and options.bf16_products (on by default) on a CPU where VDPBF16PS is the engine (an AMD one with
// AVX512-BF16), the forward's products are bf16 (Note [bf16 tiles]) and so are a plan-only policy's
// backward products (Note [bf16 backward] in detail/core/backward.hpp): the rule above then holds with
// options.bf16_products = false; WGQA and PGQA, whose backward runs on fp32 copies, keep the fp32 products
// either way.

// Note [backward recomputes prepare]
// backward() calls prepare(k, v) again rather than keeping its output from the forward: WGQA's combined
// K/V are O(b·skv·hkv·d) to rebuild (well under 1% of the attention's work on every benchmark shape), a
// pure function of (k, v, weights) whose weights a policy never changes, and rounded once per value, so
// the rebuilt K̃, Ṽ are the forward's bits exactly; keeping them would cost that memory per layer for the
// whole step, as a framework's saved tensors do.

GQA_END_NAMESPACE
