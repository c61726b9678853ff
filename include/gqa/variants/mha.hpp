// gqa/variants/mha.hpp: multi-head attention as a policy: every query head has its own KV head.
#pragma once

#include "model_shape.hpp"
#include "policy.hpp"

GQA_BEGIN_NAMESPACE

/// MHA: hkv == hq, map[h] = h.
struct mha_policy {
  static constexpr std::string_view name = "mha";
  /// Registry (variants/registry.hpp): all H query heads, each with its own KV head.
  static constexpr variant_heads heads_for(const model_shape& m) noexcept { return {m.heads, m.heads, m.heads}; }
  static mha_policy make(const model_shape&, const variant_heads&) { return {}; }
  template <class Q, class K, class V, class O>
  void check(const tensor_view<Q>& q, const tensor_view<K>& k, const tensor_view<V>&,
             const tensor_view<O>&) const {
    if (k.h != q.h) detail::fail("gqa::mha_policy: k.h = ", k.h, ": MHA needs one KV head per query head (q.h = ", q.h, ")");
  }
  template <class Q, class K>
  head_map plan(const tensor_view<Q>& q, const tensor_view<K>&) const {
    return head_map::uniform(q.h, q.h);
  }
};

GQA_END_NAMESPACE
