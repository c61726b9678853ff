// gqa/variants/model_shape.hpp: the two shapes the registry of variants speaks in (variants/registry.hpp):
// the attention layer of a model, and the heads one variant runs on it. Plain data.
#pragma once

#include <cstdint>

#include "../config.hpp"

GQA_BEGIN_NAMESPACE

/// An attention layer, as the registry's factories take it.
struct model_shape {
  index_t heads = 0;        ///< H: the layer's query heads (its MHA form; WGQA's per-head K/V; SQA's baseline)
  index_t groups = 0;       ///< G: the KV heads of its grouped (GQA) form, 1 <= G <= H
  index_t d = 0;            ///< head dim (d_qk = d_v)
  std::uint64_t seed = 0;   ///< seeds what a variant draws (PGQA's noise, DGQA's repair)
};

/// The heads one variant runs on a layer.
struct variant_heads {
  index_t hq = 0;     ///< query heads the core computes
  index_t hkv = 0;    ///< KV heads the core attends to
  index_t kv_in = 0;  ///< K/V heads handed to gqa::forward: hkv, except WGQA (H, combined into hkv by prepare)
  friend constexpr bool operator==(const variant_heads&, const variant_heads&) = default;
};

GQA_END_NAMESPACE
