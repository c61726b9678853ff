// gqa/variants/gqa.hpp: grouped-query attention (Ainslie et al. 2023) as a policy: uniform contiguous
// groups. Checkpoint conversion (MHA -> GQA mean pooling) is in gqa/convert.hpp.
#pragma once

#include "model_shape.hpp"
#include "policy.hpp"

GQA_BEGIN_NAMESPACE

/// GQA (Ainslie et al. 2023): hkv divides hq, map[h] = floor(h / (hq / hkv)). MHA and MQA are its two ends.
struct gqa_policy {
  static constexpr std::string_view name = "gqa";
  /// Registry (variants/registry.hpp): H query heads in G uniform groups.
  static constexpr variant_heads heads_for(const model_shape& m) noexcept { return {m.heads, m.groups, m.groups}; }
  static gqa_policy make(const model_shape&, const variant_heads&) { return {}; }
  template <class Q, class K, class V, class O>
  void check(const tensor_view<Q>& q, const tensor_view<K>& k, const tensor_view<V>&,
             const tensor_view<O>&) const {
    detail::require(k.h > 0, "gqa::gqa_policy", "k.h", k.h, "must be positive");
    if (q.h % k.h != 0)
      detail::fail("gqa::gqa_policy: k.h = ", k.h, ": the number of KV heads must divide q.h = ", q.h,
                   " (uniform GQA groups); use KDGQA/DGQA or head_map::from_allocation for unequal groups");
  }
  template <class Q, class K>
  head_map plan(const tensor_view<Q>& q, const tensor_view<K>& k) const {
    return head_map::uniform(q.h, k.h);
  }
};

GQA_END_NAMESPACE
