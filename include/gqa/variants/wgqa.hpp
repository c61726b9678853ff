// gqa/variants/wgqa.hpp: Weighted GQA (arXiv 2407.10855; docs/variants.md, "WGQA") as a policy: learned
// per-head weights combine the H per-head K/V heads into G group heads (scalar or per-channel weights),
// then plain GQA runs on them. Invariant: a wgqa_policy's weights are validated once (sizes, finiteness)
// and never change.
#pragma once

#include <algorithm>
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "model_shape.hpp"
#include "policy.hpp"
#include "wgqa_weights.hpp"

GQA_BEGIN_NAMESPACE

/// WGQA for scalar and col weights on activations: `prepare` combines the hq per-head K and V
/// heads into hkv group heads, K̃_g = Σ_{j∈g} w_j ⊙ K_j (likewise V with weights.v), in the policy's own
/// buffers; `plan` returns uniform groups over them. Row weights act on the projection input and cannot be
/// applied to K/V: fold them into plain GQA weights with gqa::wgqa_fold (gqa/convert.hpp).
/// Inputs to gqa::forward: q (b, sq, hq_q, d) with hkv dividing hq_q, k and v (b, skv, weights.hq,
/// weights.d). Each combined value is Σ of exact float products accumulated in double and rounded once,
/// so it does not depend on the ISA.
/// Thread safety: none; prepare() fills the policy's own buffers, so use one policy (a copy) per thread.
class wgqa_policy {
 public:
  static constexpr std::string_view name = "wgqa";
  /// Registry (variants/registry.hpp): K/V come in with the layer's H heads and are combined into G; by
  /// default scalar weights at their mean initialisation (1/s: GQA mean pooling).
  static constexpr variant_heads heads_for(const model_shape& m) noexcept { return {m.heads, m.groups, m.heads}; }
  static wgqa_policy make(const model_shape& m, const variant_heads& h) {
    return wgqa_policy(wgqa_weights::mean_init(wgqa_kind::scalar, h.kv_in, h.hkv, m.d, h.kv_in * m.d));
  }

  /// Validates the weights (sizes for the kind, hq % hkv, every weight finite).
  explicit wgqa_policy(wgqa_weights w) : w_(std::move(w)) { detail::check_wgqa_weights(w_, "gqa::wgqa_policy"); }

  const wgqa_weights& weights() const noexcept { return w_; }

  void check(const tensor_view<const float>& q, const tensor_view<const float>& k, const tensor_view<const float>& v,
             const tensor_view<float>&) const {
    check_kv(k, v);
    if (q.h % w_.hkv != 0)
      detail::fail("gqa::wgqa_policy: q.h = ", q.h, ": must be a multiple of weights.hkv = ", w_.hkv,
                   " (uniform groups over the combined heads)");
  }

  /// Combines K and V (hq heads each) into the policy's buffers (hkv heads, BSHD); the views stay valid
  /// until the next prepare() or the policy's destruction.
  kv_views prepare(const tensor_view<const float>& k, const tensor_view<const float>& v) {
    check_kv(k, v);
    combine(k, w_.k, k_buf_);
    combine(v, w_.v, v_buf_);
    return {bshd<const float>(k_buf_.data(), k.b, k.s, w_.hkv, w_.d), bshd<const float>(v_buf_.data(), v.b, v.s, w_.hkv, w_.d)};
  }

  head_map plan(const tensor_view<const float>& q, const tensor_view<const float>&) const {
    return head_map::uniform(q.h, w_.hkv);
  }

 private:
  void check_kv(const tensor_view<const float>& k, const tensor_view<const float>& v) const {
    if (w_.kind == wgqa_kind::row)
      detail::fail("gqa::wgqa_policy: weights.kind = row: row weights scale the projection's input features "
                   "(W̃_g[k, c] = Σ r_j[c] W_j[k, c]), which cannot be applied to K/V activations; fold them "
                   "into plain GQA projection weights with gqa::wgqa_fold and run gqa_policy");
    detail::check_view(k, "k", "gqa::wgqa_policy");
    detail::check_view(v, "v", "gqa::wgqa_policy");
    detail::require(k.h == w_.hq, "gqa::wgqa_policy", "k.h", k.h,
                    "must equal weights.hq = ", w_.hq, " (one K head per MHA head)");
    detail::require(v.h == w_.hq, "gqa::wgqa_policy", "v.h", v.h,
                    "must equal weights.hq = ", w_.hq, " (one V head per MHA head)");
    detail::require(k.d == w_.d, "gqa::wgqa_policy", "k.d", k.d, "must equal weights.d = ", w_.d);
    detail::require(v.d == w_.d, "gqa::wgqa_policy", "v.d", v.d, "must equal weights.d = ", w_.d);
    detail::require(v.b == k.b, "gqa::wgqa_policy", "v.b", v.b, "must equal k.b = ", k.b);
    detail::require(v.s == k.s, "gqa::wgqa_policy", "v.s", v.s, "must equal k.s = ", k.s);
  }

  void combine(const tensor_view<const float>& x, const std::vector<float>& w, std::vector<float>& out) const {
    const index_t grp = w_.hq / w_.hkv, d = w_.d;
    out.resize(static_cast<std::size_t>(x.b * x.s * w_.hkv * d));
    std::vector<double> acc(static_cast<std::size_t>(d));
    float* dst = out.data();
    for (index_t ib = 0; ib < x.b; ++ib)
      for (index_t t = 0; t < x.s; ++t)
        for (index_t g = 0; g < w_.hkv; ++g, dst += d) {
          std::fill(acc.begin(), acc.end(), 0.0);
          for (index_t j = g * grp; j < (g + 1) * grp; ++j) {
            const float* src = x.row(ib, t, j);
            // A float × float product is exact in double (48 significant bits), so this sum is the same
            // whether or not the compiler contracts it into FMAs: the result is ISA-independent.
            if (w_.kind == wgqa_kind::scalar) {
              const double wj = w[static_cast<std::size_t>(j)];
              for (index_t c = 0; c < d; ++c) acc[static_cast<std::size_t>(c)] += wj * static_cast<double>(src[c]);
            } else {
              const float* cj = w.data() + j * d;
              for (index_t c = 0; c < d; ++c)
                acc[static_cast<std::size_t>(c)] += static_cast<double>(cj[c]) * static_cast<double>(src[c]);
            }
          }
          for (index_t c = 0; c < d; ++c) dst[c] = static_cast<float>(acc[static_cast<std::size_t>(c)]);
        }
  }

  wgqa_weights w_;
  std::vector<float> k_buf_, v_buf_;
};

GQA_END_NAMESPACE
