// gqa/variants/policy.hpp: the policy concept and gqa::forward(), which runs any variant on the one core.
// A policy decides the query-head -> KV-head map (plan), may transform K/V first (prepare) and may
// post-process the output (finish). It never has its own kernel.
#pragma once

#include <concepts>
#include <string_view>

#include "../attention.hpp"

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

/// Runs one attention call of variant `p`: check -> prepare -> plan -> core -> finish. Isa as for attend():
/// isa::dispatch (the default) picks the ISA at run time.
template <class Isa = isa::dispatch, attention_policy P>
void forward(P& p, tensor_view<const float> q, tensor_view<const float> k, tensor_view<const float> v,
             tensor_view<float> o, const attention_options& opt = {}) {
  // Memory safety first: a policy's own work (norms, noise) reads these views.
  detail::check_view(q, "q");
  detail::check_view(k, "k");
  detail::check_view(v, "v");
  detail::check_view(o, "o");
  if constexpr (policy_with_check<P>) p.check(q, k, v, o);
  kv_views kv{k, v};
  if constexpr (policy_with_prepare<P>) kv = p.prepare(k, v);
  // Validate the whole call (shapes, options, aliasing) before plan(): a bad argument throws before a
  // stateful policy (DGQA) updates its state or any sample is computed.
  detail::validate_call(q, kv.k, kv.v, o, opt);
  if constexpr (std::is_same_v<Isa, isa::dispatch>) isa::resolve(opt.isa);  // a bad ISA throws here too
  if constexpr (policy_with_per_sample<P>) {
    if (p.per_sample() && q.b > 1) {
      head_map map = p.plan(detail::sample(q, 0), detail::sample(kv.k, 0));
      const auto per = static_cast<std::size_t>(q.h * q.s);  // LSE entries of one sample
      for (index_t ib = 0; ib < q.b; ++ib) {
        const auto qs = detail::sample(q, ib), ks = detail::sample(kv.k, ib), vs = detail::sample(kv.v, ib);
        const auto os = detail::sample(o, ib);
        attention_options so = opt;
        if (!opt.kv_lengths.empty()) so.kv_lengths = opt.kv_lengths.subspan(static_cast<std::size_t>(ib), 1);
        if (!opt.lse.empty()) so.lse = opt.lse.subspan(static_cast<std::size_t>(ib) * per, per);
        if (ib > 0) map = p.plan(qs, ks);
        attend<Isa>(qs, ks, vs, os, map, so);
        detail::finish(p, os, map, executor_of(so));
      }
      return;
    }
  }
  const head_map map = p.plan(q, kv.k);
  attend<Isa>(q, kv.k, kv.v, o, map, opt);
  detail::finish(p, o, map, executor_of(opt));
}

GQA_END_NAMESPACE
