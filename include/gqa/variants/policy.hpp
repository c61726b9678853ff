// gqa/variants/policy.hpp: the policy concept and gqa::forward(), which runs any variant on the one core.
// A policy decides the query-head -> KV-head map (plan), may transform K/V first (prepare) and may
// post-process the output (finish). It never has its own kernel.
#pragma once

#include <concepts>

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
/// Optional: post-process the output (PGQA subtracts noise).
template <class P>
concept policy_with_finish = requires(P& p, const tensor_view<float>& o, const head_map& m) { p.finish(o, m); };

/// Runs one attention call of variant `p`: check -> prepare -> plan -> core -> finish.
template <class Isa = isa::native, attention_policy P>
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
  const head_map map = p.plan(q, kv.k);
  attend<Isa>(q, kv.k, kv.v, o, map, opt);
  if constexpr (policy_with_finish<P>) p.finish(o, map);
}

GQA_END_NAMESPACE
