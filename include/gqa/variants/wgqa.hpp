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

#include "../threading/parallel.hpp"
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
/// Inference: Note [wgqa with rope]. Without RoPE (T5) fold once; with RoPE applied to K after the
/// projection, `col` weights do not fold: combine each new token's rows once, with combine_rows(), as
/// they are written to the KV cache. The reference model (T5) applies no 1/sqrt(d) scale: pass
/// attention_options::scale = 1 to reproduce it.
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

  template <class Q, class K, class V, class O>
  void check(const tensor_view<Q>& q, const tensor_view<K>& k, const tensor_view<V>& v,
             const tensor_view<O>&) const {
    check_kv(k, v);
    if (q.h % w_.hkv != 0)
      detail::fail("gqa::wgqa_policy: q.h = ", q.h, ": must be a multiple of weights.hkv = ", w_.hkv,
                   " (uniform groups over the combined heads)");
  }

  /// Combines K and V (hq heads each) into the policy's buffers (hkv heads, BSHD); the views stay valid
  /// until the next prepare() or the policy's destruction. K and V may be float, bf16 or f16: WGQA
  /// computes in fp32, so the combined heads are float whatever the input (each a double sum of the
  /// widened values, rounded once) and the core then runs on float K/V.
  template <class T>
  kv_views prepare(const tensor_view<const T>& k, const tensor_view<const T>& v) {
    check_kv(k, v);
    k_buf_.resize(static_cast<std::size_t>(k.b * k.s * w_.hkv * w_.d));
    v_buf_.resize(static_cast<std::size_t>(v.b * v.s * w_.hkv * w_.d));
    const auto kb = bshd(k_buf_.data(), k.b, k.s, w_.hkv, w_.d), vb = bshd(v_buf_.data(), v.b, v.s, w_.hkv, w_.d);
    combine(k, w_.k, kb);
    combine(v, w_.v, vb);
    return {kb, vb};
  }

  template <class Q, class K>
  head_map plan(const tensor_view<Q>& q, const tensor_view<K>&) const {
    return head_map::uniform(q.h, w_.hkv);
  }

  /// The backward of prepare() (gqa::backward calls it): from the caller's per-head k, v and the gradients
  /// dk_comb, dv_comb with respect to the combined heads (b, s, hkv, d), writes dk, dv (like k, v):
  /// ∂L/∂K_j = w_j ⊙ ∂L/∂K̃_g (each a float product, rounded once), and keeps the weights' gradient in
  /// weight_grad(): scalar ∂L/∂w_j = Σ_{b,t,c} ∂L/∂K̃_g[b,t,c]·K_j[b,t,c], col ∂L/∂c_j[c] = Σ_{b,t} ∂L/∂K̃_g[b,t,c]
  /// ·K_j[b,t,c] (likewise V). Each weight's gradient is a double sum of exact float products in (b, t, c)
  /// order, rounded once: the same bits for any thread count and ISA. Heads run as tasks on `ex`.
  void prepare_backward(const tensor_view<const float>& k, const tensor_view<const float>& v,
                        const tensor_view<const float>& dk_comb, const tensor_view<const float>& dv_comb,
                        const tensor_view<float>& dk, const tensor_view<float>& dv, const executor& ex) {
    check_kv(k, v);
    grad_.k.assign(w_.k.size(), 0.0f);
    grad_.v.assign(w_.v.size(), 0.0f);
    combine_backward(k, dk_comb, w_.k, dk, grad_.k, ex);
    combine_backward(v, dv_comb, w_.v, dv, grad_.v, ex);
  }

  /// ∂L/∂weights of the last backward, laid out like weights().k and .v (overwritten by every backward).
  struct weight_gradient {
    std::vector<float> k, v;
  };
  const weight_gradient& weight_grad() const noexcept { return grad_; }

  // Note [wgqa with rope]
  // wgqa_fold turns the trained weights into plain GQA projections, W̃_g[k, :] = Σ_{j∈g} c_j[k]·W_j[k, :]
  // (col), which is exact when K goes from the projection to attention unchanged (T5, the authors'
  // model). With RoPE applied to each head's K after the projection, the trained model computes
  // Σ_j c_j ⊙ R_t(X W_jᵀ) while the folded one computes R_t(Σ_j c_j ⊙ X W_jᵀ); R_t rotates channel pairs
  // (k, k') by a position-dependent angle, so the two agree only if c_j[k] = c_j[k'] for every pair:
  // col weights do not fold (measured in tests/unit/wgqa_rope_test.cpp: the folded layer's keys and
  // output are far from the trained ones). Scalar weights (one per head) commute with the rotation and
  // row weights act before the projection, so both still fold exactly; V carries no rotation and always
  // folds. The exact inference form for col: keep the H per-head K/V projections, rotate each new
  // token's K heads, and combine them once into the G cached heads with combine_rows() (new rows only:
  // the cache holds G heads, as GQA's, and nothing is recombined at later steps).

  /// The exact inference form of WGQA with a KV cache (Note [wgqa with rope]): combines the per-head K
  /// and V rows of n new tokens, k_new and v_new (b, n, weights.hq, weights.d, after any RoPE), into the
  /// weights.hkv group heads and writes them to k_dst and v_dst (b, n, weights.hkv, weights.d), typically
  /// views of the cache rows those tokens occupy (any batch/sequence/head strides). The values are those
  /// prepare() computes for the same rows, bit for bit. Throws gqa::invalid_argument (before writing)
  /// for row weights, mismatched shapes, a non-unit head_dim stride or destinations overlapping sources.
  void combine_rows(const tensor_view<const float>& k_new, const tensor_view<const float>& v_new,
                    const tensor_view<float>& k_dst, const tensor_view<float>& v_dst) const {
    constexpr const char* where = "gqa::wgqa_policy::combine_rows";
    check_kv(k_new, v_new);
    const std::pair<const tensor_view<float>*, const char*> dsts[2] = {{&k_dst, "k_dst"}, {&v_dst, "v_dst"}};
    for (const auto& [dst, name] : dsts) {
      detail::check_view(*dst, name, where);
      detail::require(dst->b == k_new.b, where, detail::field{name, "b"}, dst->b, "must equal k_new.b = ", k_new.b);
      detail::require(dst->s == k_new.s, where, detail::field{name, "s"}, dst->s, "must equal k_new.s = ", k_new.s);
      detail::require(dst->h == w_.hkv, where, detail::field{name, "h"}, dst->h, "must equal weights.hkv = ", w_.hkv);
      detail::require(dst->d == w_.d, where, detail::field{name, "d"}, dst->d, "must equal weights.d = ", w_.d);
      detail::require_disjoint(detail::shared_element(k_new, *dst), where, name, dst->data, "k_new");
      detail::require_disjoint(detail::shared_element(v_new, *dst), where, name, dst->data, "v_new");
    }
    detail::require_disjoint(detail::shared_element(v_dst, k_dst), where, "k_dst", k_dst.data, "v_dst");
    combine(k_new, w_.k, k_dst);
    combine(v_new, w_.v, v_dst);
  }

 private:
  template <class K, class V>
  void check_kv(const tensor_view<K>& k, const tensor_view<V>& v) const {
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

  /// out(b, t, g, :) = Σ_{j∈g} w_j ⊙ x(b, t, j, :); out has x's b and s, hkv heads, unit head_dim stride.
  /// T: float, bf16 or f16 (widened exactly).
  template <class T>
  void combine(const tensor_view<const T>& x, const std::vector<float>& w, const tensor_view<float>& out) const {
    const index_t grp = w_.hq / w_.hkv, d = w_.d;
    std::vector<double> acc_buf(static_cast<std::size_t>(d));
    double* acc = acc_buf.data();
    // acc[c] += weight(c) · x[c] over c < d, in runs of 16 (a trip count the compiler knows, so GCC's -O2
    // cost model vectorises them: bf16 WGQA decode took 52-55 ms at -O2 against 19-21 ms at -O3 with one
    // loop over d, 2026-12-02), then the rest. Every element's sum is the same, in the same order, either way.
    const auto add_row = [&](const T* src, auto weight) {
      constexpr index_t run = 16;
      index_t c = 0;
      for (; c + run <= d; c += run)
        for (index_t l = 0; l < run; ++l) acc[c + l] += weight(c + l) * static_cast<double>(to_float(src[c + l]));
      for (; c < d; ++c) acc[c] += weight(c) * static_cast<double>(to_float(src[c]));
    };
    for (index_t ib = 0; ib < x.b; ++ib)
      for (index_t t = 0; t < x.s; ++t)
        for (index_t g = 0; g < w_.hkv; ++g) {
          float* dst = out.row(ib, t, g);
          std::fill(acc, acc + d, 0.0);
          for (index_t j = g * grp; j < (g + 1) * grp; ++j) {
            const T* src = x.row(ib, t, j);
            // A float × float product is exact in double (48 significant bits), so this sum is the same
            // whether or not the compiler contracts it into FMAs: the result is ISA-independent.
            if (w_.kind == wgqa_kind::scalar) {
              const double wj = w[static_cast<std::size_t>(j)];
              add_row(src, [wj](index_t) { return wj; });
            } else {
              const float* cj = w.data() + j * d;
              add_row(src, [cj](index_t c) { return static_cast<double>(cj[c]); });
            }
          }
          for (index_t c = 0; c < d; ++c) dst[c] = static_cast<float>(acc[c]);
        }
  }

  /// dx[.., j, c] = w_j(c)·dcomb[.., g(j), c] and dw (see prepare_backward), one task per head j.
  void combine_backward(const tensor_view<const float>& x, const tensor_view<const float>& dcomb,
                        const std::vector<float>& w, const tensor_view<float>& dx, std::vector<float>& dw,
                        const executor& ex) const {
    const index_t grp = w_.hq / w_.hkv, d = w_.d;
    const bool scalar = w_.kind == wgqa_kind::scalar;
    detail::run_tasks(w_.hq, ex, [&](index_t j) {
      const index_t g = j / grp;
      const float* wj = scalar ? w.data() + j : w.data() + j * d;
      thread_local std::vector<double> acc;
      acc.assign(static_cast<std::size_t>(scalar ? 1 : d), 0.0);
      for (index_t ib = 0; ib < x.b; ++ib)
        for (index_t t = 0; t < x.s; ++t) {
          const float* xr = x.row(ib, t, j);
          const float* gr = dcomb.row(ib, t, g);
          float* dxr = dx.row(ib, t, j);
          for (index_t c = 0; c < d; ++c) {
            dxr[c] = (scalar ? wj[0] : wj[c]) * gr[c];
            // Exact float × float products in double: contraction cannot change the sum.
            acc[static_cast<std::size_t>(scalar ? 0 : c)] += static_cast<double>(gr[c]) * static_cast<double>(xr[c]);
          }
        }
      for (std::size_t c = 0; c < acc.size(); ++c) dw[static_cast<std::size_t>(scalar ? j : j * d) + c] = static_cast<float>(acc[c]);
    });
  }

  wgqa_weights w_;
  std::vector<float> k_buf_, v_buf_;
  weight_gradient grad_;
};

GQA_END_NAMESPACE
