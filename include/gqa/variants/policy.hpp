// gqa/variants/policy.hpp: the policy concept, gqa::forward(), which runs any variant on the one core, and
// its training pair gqa::forward_train() / gqa::backward(). A policy decides the query-head -> KV-head map
// (plan), may transform K/V first (prepare) and may post-process the output (finish); for training it may
// record what its backward needs (record) and differentiate its own steps (finish_backward,
// prepare_backward). It never has its own kernel.
#pragma once

#include <algorithm>
#include <concepts>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "../attention.hpp"
#include "../backward.hpp"

GQA_BEGIN_NAMESPACE

/// K/V views to hand to the core (a policy's prepare() may point them into its own buffers).
struct kv_views {
  tensor_view<const float> k;
  tensor_view<const float> v;
};

/// Every policy: `plan(q, k)` returns the head map for this call (k after prepare()).
template <class P>
concept attention_policy = requires(P& p, const tensor_view<const float>& q, const tensor_view<const float>& k) {
  { p.plan(q, k) } -> std::convertible_to<head_map>;
};
/// Optional: validate everything the policy needs before any work is done.
template <class P>
concept policy_with_check = requires(P& p, const tensor_view<const float>& q, const tensor_view<const float>& k,
                                     const tensor_view<const float>& v, const tensor_view<float>& o) {
  p.check(q, k, v, o);
};
/// Optional: transform K/V before the core (WGQA combines H heads into G).
template <class P>
concept policy_with_prepare = requires(P& p, const tensor_view<const float>& k, const tensor_view<const float>& v) {
  { p.prepare(k, v) } -> std::convertible_to<kv_views>;
};
/// Optional: post-process the output (PGQA subtracts noise); the second form also receives the call's
/// options (threads), and is preferred when a policy has both.
template <class P>
concept policy_with_finish = requires(P& p, const tensor_view<float>& o, const head_map& m) { p.finish(o, m); };
template <class P>
concept policy_with_finish_options = requires(P& p, const tensor_view<float>& o, const head_map& m,
                                              const attention_options& opt) { p.finish(o, m, opt); };

namespace detail {
template <class P>
void finish(P& p, const tensor_view<float>& o, const head_map& map, const attention_options& opt) {
  if constexpr (policy_with_finish_options<P>) {
    p.finish(o, map, opt);
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

namespace detail {
/// The single-sample view of batch element ib (b = 1, same strides).
template <class T>
tensor_view<T> sample(const tensor_view<T>& t, index_t ib) noexcept {
  tensor_view<T> s = t;
  s.data = t.data + ib * t.stride_b;
  s.b = 1;
  return s;
}
}  // namespace detail

// --- Training: what a policy adds for the backward pass (all optional). ---

/// The forward's output and the gradient with respect to it, as the core saw them (a policy whose
/// finish() changed the output hands back the core's output and the gradient before that change).
struct output_grad_views {
  tensor_view<const float> o;
  tensor_view<const float> dout;
};

/// Optional: `typename P::saved` (what the policy's backward needs from the forward, e.g. PGQA's row
/// statistics) and `record(saved, o, map, options)`, called by forward_train() right before each
/// finish() with the same arguments (o still the core's output).
template <class P>
concept policy_with_record = requires { typename P::saved; } &&
    requires(P& p, typename P::saved& s, const tensor_view<const float>& o, const head_map& m,
             const attention_options& opt) { p.record(s, o, m, opt); };
/// Optional: the backward of finish(): from the final output o and dout = ∂L/∂o, the core's output and
/// ∂L/∂(core output), in the policy's own buffers (valid until its next call).
template <class P>
concept policy_with_finish_backward = requires { typename P::saved; } &&
    requires(P& p, const typename P::saved& s, const tensor_view<const float>& o, const tensor_view<const float>& dout,
             const head_map& m, const attention_options& opt) {
      { p.finish_backward(s, o, dout, m, opt) } -> std::convertible_to<output_grad_views>;
    };
/// Optional: the backward of prepare(): from the caller's k, v and the gradients with respect to the
/// prepared K/V (dk_core, dv_core, shaped like prepare()'s views), the gradients with respect to k and v
/// (written to dk, dv) and to the policy's own parameters (kept by the policy, e.g. WGQA's weight_grad()).
template <class P>
concept policy_with_prepare_backward =
    requires(P& p, const tensor_view<const float>& k, const tensor_view<const float>& v,
             const tensor_view<const float>& dk_core, const tensor_view<const float>& dv_core,
             const tensor_view<float>& dk, const tensor_view<float>& dv, const attention_options& opt) {
      p.prepare_backward(k, v, dk_core, dv_core, dk, dv, opt);
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
  // The call: the caller's q, k, v, o extents (k/v before prepare()) and the options that change the math.
  index_t extents[4][4] = {};
  std::optional<float> scale;
  bool causal = false;
  std::vector<index_t> kv_lengths;
  /// True once forward_train() has filled it.
  bool valid() const noexcept { return !maps.empty(); }
};

namespace detail {

template <class P>
void record(P& p, saved_forward<P>* saved, const tensor_view<float>& o, const head_map& map,
            const attention_options& opt) {
  if constexpr (policy_with_record<P>) {
    if (saved) p.record(saved->policy, o, map, opt);
  }
}

/// forward() and forward_train(): check -> prepare -> validate -> plan -> core -> (record) -> finish.
/// With `saved`, the LSE goes to saved->lse (and to opt.lse too when given) and the plan(s) are kept.
template <class Isa, class P>
void run_forward(P& p, const tensor_view<const float>& q, const tensor_view<const float>& k,
                 const tensor_view<const float>& v, const tensor_view<float>& o, const attention_options& opt,
                 saved_forward<P>* saved) {
  // Memory safety first: a policy's own work (norms, noise) reads these views.
  check_view(q, "q");
  check_view(k, "k");
  check_view(v, "v");
  check_view(o, "o");
  if constexpr (policy_with_check<P>) p.check(q, k, v, o);
  kv_views kv{k, v};
  if constexpr (policy_with_prepare<P>) kv = p.prepare(k, v);
  // Validate the whole call (shapes, options, aliasing) before plan(): a bad argument throws before a
  // stateful policy (DGQA) updates its state or any sample is computed.
  validate_call(q, kv.k, kv.v, o, opt);
  attention_options call = opt;
  if (saved) {
    saved->maps.clear();
    saved->lse.assign(static_cast<std::size_t>(q.b * q.h * q.s), 0.0f);
    call.lse = saved->lse;
    const tensor_view<const float> views[4] = {q, k, v, o};
    for (int t = 0; t < 4; ++t) {
      const index_t e[4] = {views[t].b, views[t].s, views[t].h, views[t].d};
      std::copy(e, e + 4, saved->extents[t]);
    }
    saved->scale = opt.scale;
    saved->causal = opt.causal;
    saved->kv_lengths.assign(opt.kv_lengths.begin(), opt.kv_lengths.end());
    saved->policy = policy_saved_t<P>{};
  }
  bool done = false;
  if constexpr (policy_with_per_sample<P>) {
    static_assert(!policy_with_record<P> && !policy_with_finish_backward<P>,
                  "gqa: a policy that plans per sample cannot record() or finish_backward() (not supported yet)");
    if (p.per_sample() && q.b > 1) {
      head_map map = p.plan(sample(q, 0), sample(kv.k, 0));
      const auto per = static_cast<std::size_t>(q.h * q.s);  // LSE entries of one sample
      for (index_t ib = 0; ib < q.b; ++ib) {
        const auto qs = sample(q, ib), ks = sample(kv.k, ib), vs = sample(kv.v, ib);
        const auto os = sample(o, ib);
        attention_options so = call;
        if (!call.kv_lengths.empty()) so.kv_lengths = call.kv_lengths.subspan(static_cast<std::size_t>(ib), 1);
        if (!call.lse.empty()) so.lse = call.lse.subspan(static_cast<std::size_t>(ib) * per, per);
        if (ib > 0) map = p.plan(qs, ks);
        attend<Isa>(qs, ks, vs, os, map, so);
        finish(p, os, map, so);
        if (saved) saved->maps.push_back(map);
      }
      done = true;
    }
  }
  if (!done) {
    const head_map map = p.plan(q, kv.k);
    attend<Isa>(q, kv.k, kv.v, o, map, call);
    record(p, saved, o, map, call);
    finish(p, o, map, call);
    if (saved) saved->maps.push_back(map);
  }
  if (saved && !opt.lse.empty()) std::copy(saved->lse.begin(), saved->lse.end(), opt.lse.begin());
}

}  // namespace detail

/// Runs one attention call of variant `p`: check -> prepare -> plan -> core -> finish.
template <class Isa = isa::native, attention_policy P>
void forward(P& p, tensor_view<const float> q, tensor_view<const float> k, tensor_view<const float> v,
             tensor_view<float> o, const attention_options& opt = {}) {
  detail::run_forward<Isa>(p, q, k, v, o, opt, static_cast<saved_forward<P>*>(nullptr));
}

/// forward() for training: the same call (same output, same policy state changes), which also returns
/// what backward() needs. Keep q, k, v and o unchanged until backward() has run.
template <class Isa = isa::native, attention_policy P>
saved_forward<P> forward_train(P& p, tensor_view<const float> q, tensor_view<const float> k,
                               tensor_view<const float> v, tensor_view<float> o, const attention_options& opt = {}) {
  saved_forward<P> saved;
  detail::run_forward<Isa>(p, q, k, v, o, opt, &saved);
  return saved;
}

namespace detail {

/// Everything backward() checks before any work: `saved` filled, views, extents equal to the forward's,
/// dout/dq/dk/dv like o/q/k/v, the forward's mask options, threads, and no gradient aliasing anything.
template <class P>
void check_backward_call(const saved_forward<P>& saved, const tensor_view<const float>& q,
                         const tensor_view<const float>& k, const tensor_view<const float>& v,
                         const tensor_view<const float>& o, const tensor_view<const float>& dout,
                         const tensor_view<float>& dq, const tensor_view<float>& dk, const tensor_view<float>& dv,
                         const attention_options& opt) {
  constexpr const char* where = "gqa::backward";
  if (!saved.valid()) fail(where, ": saved = (empty): pass what gqa::forward_train returned for this call");
  const auto& extents = saved.extents;
  const auto& scale = saved.scale;
  const bool causal = saved.causal;
  const std::span<const index_t> kv_lengths = saved.kv_lengths;
  const std::pair<tensor_view<const float>, const char*> in[5] = {{q, "q"}, {k, "k"}, {v, "v"}, {o, "o"}, {dout, "dout"}};
  for (const auto& [t, name] : in) check_view(t, name, where);
  check_view(dq, "dq", where);
  check_view(dk, "dk", where);
  check_view(dv, "dv", where);
  const char* names[4] = {"q", "k", "v", "o"};
  const char* ext[4] = {"b", "s", "h", "d"};
  for (int t = 0; t < 4; ++t) {
    const index_t got[4] = {in[t].first.b, in[t].first.s, in[t].first.h, in[t].first.d};
    for (int e = 0; e < 4; ++e)
      if (got[e] != extents[t][e])
        fail(where, ": ", names[t], ".", ext[e], " = ", got[e], ": must equal the forward's ", names[t], ".", ext[e],
             " = ", extents[t][e]);
  }
  require_same_extents(dout, "dout", o, "o", where);
  require_same_extents(dq, "dq", q, "q", where);
  require_same_extents(dk, "dk", k, "k", where);
  require_same_extents(dv, "dv", v, "v", where);
  if (opt.scale != scale)
    fail(where, ": options.scale = ", opt.scale ? std::to_string(*opt.scale) : std::string("(default)"),
         ": must equal the forward's (", scale ? std::to_string(*scale) : std::string("default"), ")");
  if (opt.causal != causal)
    fail(where, ": options.causal = ", opt.causal ? "true" : "false", ": must equal the forward's (",
         causal ? "true" : "false", ")");
  if (!std::equal(opt.kv_lengths.begin(), opt.kv_lengths.end(), kv_lengths.begin(), kv_lengths.end()))
    fail(where, ": options.kv_lengths (size ", opt.kv_lengths.size(), "): must equal the forward's (size ",
         kv_lengths.size(), ")");
  require(opt.num_threads >= 0, where, "options.num_threads", opt.num_threads, "must be >= 0");
  const std::pair<tensor_view<float>, const char*> outs[3] = {{dq, "dq"}, {dk, "dk"}, {dv, "dv"}};
  for (std::size_t a = 0; a < 3; ++a) {
    for (const auto& [t, name] : in)
      if (overlaps(outs[a].first, t))
        fail(where, ": ", outs[a].second, " (data = ", static_cast<const void*>(outs[a].first.data), ") overlaps ",
             name, "; an output must not alias an input");
    for (std::size_t b = a + 1; b < 3; ++b)
      if (overlaps(outs[a].first, outs[b].first))
        fail(where, ": ", outs[a].second, " (data = ", static_cast<const void*>(outs[a].first.data), ") overlaps ",
             outs[b].second, "; the three gradients need separate memory");
  }
}

}  // namespace detail

/// The gradients of the forward_train() call that returned `saved`: dq, dk, dv (like q, k, v: the caller's
/// tensors, before any prepare()) from dout = ∂L/∂o, the same q, k, v, o and the same options (threads
/// may differ). Runs finish_backward -> attend_backward on the recorded map(s) -> prepare_backward, so
/// each variant differentiates its own steps; its parameter gradients (WGQA's weights) stay in the policy.
/// dq, dk, dv are overwritten. Bitwise identical for any thread count and executor.
/// Throws gqa::invalid_argument before any work for: an empty `saved`, extents different from the
/// forward's, dout/dq/dk/dv extents different from o/q/k/v, options (scale, causal, kv_lengths) different
/// from the forward's, and any overlap of dq, dk, dv with an input or each other.
template <class Isa = isa::native, attention_policy P>
void backward(P& p, const saved_forward<P>& saved, tensor_view<const float> q, tensor_view<const float> k,
              tensor_view<const float> v, tensor_view<const float> o, tensor_view<const float> dout,
              tensor_view<float> dq, tensor_view<float> dk, tensor_view<float> dv, const attention_options& opt = {}) {
  detail::check_backward_call(saved, q, k, v, o, dout, dq, dk, dv, opt);
  kv_views kv{k, v};
  if constexpr (policy_with_prepare<P>) kv = p.prepare(k, v);  // recomputed: see Note [backward recomputes prepare]
  // The core's dK/dV: the caller's dk, dv, or (when prepare() changed K/V) buffers shaped like kv.
  std::vector<float> dk_buf, dv_buf;
  tensor_view<float> dk_core = dk, dv_core = dv;
  if constexpr (policy_with_prepare_backward<P>) {
    dk_buf.resize(static_cast<std::size_t>(kv.k.b * kv.k.s * kv.k.h * kv.k.d));
    dv_buf.resize(static_cast<std::size_t>(kv.v.b * kv.v.s * kv.v.h * kv.v.d));
    dk_core = bshd(dk_buf.data(), kv.k.b, kv.k.s, kv.k.h, kv.k.d);
    dv_core = bshd(dv_buf.data(), kv.v.b, kv.v.s, kv.v.h, kv.v.d);
  }
  const std::span<const float> lse = saved.lse;
  attention_options call = opt;
  call.lse = {};  // the LSE is saved.lse; a caller's options.lse (sized for the forward) is not used here
  if (saved.maps.size() == 1) {
    output_grad_views og{o, dout};
    if constexpr (policy_with_finish_backward<P>) og = p.finish_backward(saved.policy, o, dout, saved.maps[0], call);
    attend_backward<Isa>(q, kv.k, kv.v, og.o, og.dout, lse, dq, dk_core, dv_core, saved.maps[0], call);
  } else {
    // Planned per sample: one core call per batch element with its own map.
    const auto per = static_cast<std::size_t>(q.h * q.s);
    for (index_t ib = 0; ib < q.b; ++ib) {
      attention_options so = call;
      if (!call.kv_lengths.empty()) so.kv_lengths = call.kv_lengths.subspan(static_cast<std::size_t>(ib), 1);
      attend_backward<Isa>(detail::sample(q, ib), detail::sample(kv.k, ib), detail::sample(kv.v, ib),
                           detail::sample(o, ib), detail::sample(dout, ib),
                           lse.subspan(static_cast<std::size_t>(ib) * per, per), detail::sample(dq, ib),
                           detail::sample(dk_core, ib), detail::sample(dv_core, ib),
                           saved.maps[static_cast<std::size_t>(ib)], so);
    }
  }
  if constexpr (policy_with_prepare_backward<P>) p.prepare_backward(k, v, dk_core, dv_core, dk, dv, call);
}

// Note [backward recomputes prepare]
// backward() calls prepare(k, v) again rather than keeping its output from the forward: WGQA's combined
// K/V are O(b·skv·hkv·d) to rebuild (well under 1% of the attention's work on every benchmark shape), a
// pure function of (k, v, weights) whose weights a policy never changes, and rounded once per value, so
// the rebuilt K̃, Ṽ are the forward's bits exactly; keeping them would cost that memory per layer for the
// whole step, as a framework's saved tensors do.

GQA_END_NAMESPACE
