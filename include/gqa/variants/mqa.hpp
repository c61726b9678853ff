// gqa/variants/mqa.hpp: multi-query attention as a policy: every query head shares the one KV head.
#pragma once

#include "model_shape.hpp"
#include "policy.hpp"

GQA_BEGIN_NAMESPACE

/// MQA (Shazeer 2019): hkv == 1, map[h] = 0.
struct mqa_policy {
  static constexpr std::string_view name = "mqa";
  /// Registry (variants/registry.hpp): all H query heads share one KV head.
  static constexpr variant_heads heads_for(const model_shape& m) noexcept { return {m.heads, 1, 1}; }
  static mqa_policy make(const model_shape&, const variant_heads&) { return {}; }
  template <class Q, class K, class V, class O>
  void check(const tensor_view<Q>&, const tensor_view<K>& k, const tensor_view<V>&,
             const tensor_view<O>&) const {
    if (k.h != 1) detail::fail("gqa::mqa_policy: k.h = ", k.h, ": MQA has exactly one KV head");
  }
  template <class Q, class K>
  head_map plan(const tensor_view<Q>& q, const tensor_view<K>&) const {
    return head_map::uniform(q.h, 1);
  }
};

GQA_END_NAMESPACE
