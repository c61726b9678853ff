// gqa/variants/sqa.hpp: Sparse Query Attention (Filipek 2025, arXiv 2510.01817) and its named configurations.
// SQA is a projection-shape choice: fewer query heads (hq < H, the baseline model's heads) with
// d = D / H kept, so attention FLOPs scale with hq. The kernel is plain GQA over (hq, hkv).
#pragma once

#include <string>

#include "model_shape.hpp"
#include "policy.hpp"

GQA_BEGIN_NAMESPACE

/// Head counts of one SQA configuration, derived from the baseline head count H.
struct sqa_config {
  index_t baseline_heads = 0;  // H: the MHA baseline (fixes d = D / H)
  index_t hq = 0;              // query heads actually computed, hq < H (sSQA/xSQA: hq <= H/2)
  index_t hkv = 0;             // KV heads, 1 <= hkv <= hq, hkv divides hq
  std::string_view name = "sqa";

  /// Standard SQA: free hq < H, hkv <= hq (experiments use hq = H/2).
  static sqa_config standard(index_t H, index_t hq, index_t hkv) { return make(H, hq, hkv, "sqa"); }
  /// sSQA (symmetric): hq = hkv = H/2.
  static sqa_config symmetric(index_t H) { return make(H, H / 2, H / 2, "ssqa"); }
  /// xSQA (extreme): hq = hkv = H/4.
  static sqa_config extreme(index_t H) { return make(H, H / 4, H / 4, "xsqa"); }
  /// xSMQA: hq = H/4, hkv = 1.
  static sqa_config extreme_mqa(index_t H) { return make(H, H / 4, 1, "xsmqa"); }

 private:
  static sqa_config make(index_t H, index_t hq, index_t hkv, std::string_view name) {
    const std::string where = "gqa::sqa_config::" + std::string(name);
    detail::require(H >= 2, where.c_str(), "baseline_heads", H, "must be >= 2");
    detail::require(hq >= 1 && hq < H, where.c_str(), "hq", hq,
                    ("must be in [1, baseline_heads = " + std::to_string(H) + ")").c_str());
    detail::require(hkv >= 1 && hkv <= hq, where.c_str(), "hkv", hkv,
                    ("must be in [1, hq = " + std::to_string(hq) + "]").c_str());
    detail::require(hq % hkv == 0, where.c_str(), "hkv", hkv,
                    ("must divide hq = " + std::to_string(hq)).c_str());
    return sqa_config{H, hq, hkv, name};
  }
};

/// SQA policy: checks that q and k have the configuration's head counts, then plans uniform groups.
struct sqa_policy {
  static constexpr std::string_view name = "sqa";
  sqa_config config;

  /// Registry (variants/registry.hpp): by default sSQA, hq = hkv = H/2 (sqa_config::symmetric); make()
  /// builds any configuration of the layer's H: sqa_config::standard(H, hq, hkv).
  static constexpr variant_heads heads_for(const model_shape& m) noexcept {
    return {m.heads / 2, m.heads / 2, m.heads / 2};
  }
  static sqa_policy make(const model_shape& m, const variant_heads& h) {
    return {sqa_config::standard(m.heads, h.hq, h.hkv)};
  }

  template <class Q, class K, class V, class O>
  void check(const tensor_view<Q>& q, const tensor_view<K>& k, const tensor_view<V>&,
             const tensor_view<O>&) const {
    if (q.h != config.hq)
      detail::fail("gqa::sqa_policy(", config.name, "): q.h = ", q.h, ": must equal the configuration's hq = ", config.hq);
    if (k.h != config.hkv)
      detail::fail("gqa::sqa_policy(", config.name, "): k.h = ", k.h, ": must equal the configuration's hkv = ",
                   config.hkv);
  }
  template <class Q, class K>
  head_map plan(const tensor_view<Q>& q, const tensor_view<K>& k) const {
    return head_map::uniform(q.h, k.h);
  }
};

GQA_END_NAMESPACE
