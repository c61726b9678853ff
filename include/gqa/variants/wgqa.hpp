// gqa/variants/wgqa.hpp: Weighted GQA (spec §8) as a policy: learned per-head weights combine the H
// per-head K/V heads into G group heads (scalar or per-channel weights), then plain GQA runs on them.
// Invariant: a wgqa_policy's weights are validated once (sizes, finiteness) and never change.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../random.hpp"
#include "../threading/parallel.hpp"
#include "policy.hpp"

GQA_BEGIN_NAMESPACE

/// The three WGQA weight shapes of spec §8.2 (named as in the reference code's `weight_row_column`).
enum class wgqa_kind {
  scalar,  ///< one weight per head, w ∈ R^H:            K̃_g = Σ_{j∈g} w_j · K_j
  col,     ///< one weight per head and channel, c ∈ R^{H×d}: K̃_g[:, k] = Σ_{j∈g} c_j[k] · K_j[:, k]
  row,     ///< one weight per head and input feature, r ∈ R^{H×D}: W̃_g[k, c] = Σ_{j∈g} r_j[c] · W_j[k, c]
           ///< (acts on the projection's input, so it exists only as folded weights: gqa::wgqa_fold)
};

/// "scalar", "col" or "row".
constexpr std::string_view to_string(wgqa_kind k) noexcept {
  return k == wgqa_kind::scalar ? "scalar" : k == wgqa_kind::col ? "col" : k == wgqa_kind::row ? "row" : "unknown";
}

/// WGQA weights added to one attention module: per-head parameters (spec §8.2) for K (w_k) and V (w_v).
/// 2·hq for scalar, 2·hq·d for col, 2·hq·model_dim for row. T5-base decoder (24 modules, hq = 12, d = 64,
/// D = 768): 576, 36,864 and 442,368 in total.
constexpr index_t wgqa_parameter_count(wgqa_kind kind, index_t hq, index_t d, index_t model_dim) noexcept {
  return kind == wgqa_kind::scalar ? 2 * hq : kind == wgqa_kind::col ? 2 * hq * d : 2 * hq * model_dim;
}

/// The learned weights of one WGQA attention module.
/// Layout: `k` and `v` hold hq values (scalar), hq × d values row-major (col: c_j[k] at j·d + k) or
/// hq × model_dim values row-major (row: r_j[c] at j·model_dim + c). Query head groups are contiguous:
/// group g holds heads [g·s, (g+1)·s), s = hq / hkv.
struct wgqa_weights {
  wgqa_kind kind = wgqa_kind::scalar;
  index_t hq = 0;         ///< per-head K/V heads H (the MHA head count)
  index_t hkv = 0;        ///< group heads G; must divide hq
  index_t d = 0;          ///< head dim of K and V
  index_t model_dim = 0;  ///< D, the projections' input width
  std::vector<float> k;   ///< weights applied to the K heads
  std::vector<float> v;   ///< weights applied to the V heads

  /// Number of values `k` (and `v`) must hold for this kind: hq, hq·d or hq·model_dim.
  index_t size_per_projection() const noexcept {
    return kind == wgqa_kind::scalar ? hq : kind == wgqa_kind::col ? hq * d : hq * model_dim;
  }
  /// k.size() + v.size() once valid: wgqa_parameter_count(kind, hq, d, model_dim).
  index_t parameter_count() const noexcept { return wgqa_parameter_count(kind, hq, d, model_dim); }

  /// Every weight 1/s (s = hq / hkv): at step 0 WGQA is exactly GQA mean pooling (spec §8.2).
  static wgqa_weights mean_init(wgqa_kind kind, index_t hq, index_t hkv, index_t d, index_t model_dim);
  /// Every weight drawn from N(0, 1) (the reference's `torch.randn` init, spec §8.2) by gqa's counter-based
  /// generator: k[i] = random::stream{seed, 0}'s i-th next_normal(), v[i] = random::stream{seed, 1}'s i-th,
  /// rounded to float. The same on every platform, compiler and thread count.
  static wgqa_weights random_init(wgqa_kind kind, index_t hq, index_t hkv, index_t d, index_t model_dim,
                                  std::uint64_t seed);
};

namespace detail {

/// a · b for positive extents, failing instead of overflowing.
inline index_t checked_mul(index_t a, index_t b, const char* where, const char* what) {
  if (a != 0 && b > std::numeric_limits<index_t>::max() / a) fail(where, ": ", what, " overflows (", a, " * ", b, ")");
  return a * b;
}

inline void check_wgqa_shape(wgqa_kind kind, index_t hq, index_t hkv, index_t d, index_t model_dim,
                             const char* where, const char* prefix) {
  const std::string p(prefix);
  if (kind != wgqa_kind::scalar && kind != wgqa_kind::col && kind != wgqa_kind::row)
    fail(where, ": ", p, "kind = ", static_cast<int>(kind), ": must be wgqa_kind::scalar, col or row");
  require(hq > 0, where, (p + "hq").c_str(), hq, "must be positive");
  require(hkv > 0, where, (p + "hkv").c_str(), hkv, "must be positive");
  if (hq % hkv != 0)
    fail(where, ": ", p, "hkv = ", hkv, ": must divide ", p, "hq = ", hq, " (WGQA groups are uniform, spec §8.4)");
  require(d > 0, where, (p + "d").c_str(), d, "must be positive");
  require(model_dim > 0, where, (p + "model_dim").c_str(), model_dim, "must be positive");
  checked_mul(checked_mul(hq, d, where, "hq * d"), model_dim, where, "hq * d * model_dim");
}

/// Validates a whole wgqa_weights: shape, sizes of k and v, every weight finite.
inline void check_wgqa_weights(const wgqa_weights& w, const char* where) {
  check_wgqa_shape(w.kind, w.hq, w.hkv, w.d, w.model_dim, where, "weights.");
  const index_t need = w.size_per_projection();
  const std::pair<const std::vector<float>*, const char*> parts[2] = {{&w.k, "k"}, {&w.v, "v"}};
  for (const auto& [vec, name] : parts) {
    if (static_cast<index_t>(vec->size()) != need)
      fail(where, ": weights.", name, ".size() = ", vec->size(), ": must be ", need, " for kind ", to_string(w.kind),
           w.kind == wgqa_kind::scalar ? " (hq)" : w.kind == wgqa_kind::col ? " (hq * d)" : " (hq * model_dim)");
    for (std::size_t i = 0; i < vec->size(); ++i)
      if (!std::isfinite((*vec)[i])) fail(where, ": weights.", name, "[", i, "] = ", (*vec)[i], ": must be finite");
  }
}

}  // namespace detail

inline wgqa_weights wgqa_weights::mean_init(wgqa_kind kind, index_t hq, index_t hkv, index_t d, index_t model_dim) {
  detail::check_wgqa_shape(kind, hq, hkv, d, model_dim, "gqa::wgqa_weights::mean_init", "");
  wgqa_weights w{kind, hq, hkv, d, model_dim, {}, {}};
  // The reference fills kv_heads / n_heads (= 1/s), rounded to float once.
  const auto mean = static_cast<float>(static_cast<double>(hkv) / static_cast<double>(hq));
  w.k.assign(static_cast<std::size_t>(w.size_per_projection()), mean);
  w.v = w.k;
  return w;
}

inline wgqa_weights wgqa_weights::random_init(wgqa_kind kind, index_t hq, index_t hkv, index_t d, index_t model_dim,
                                              std::uint64_t seed) {
  detail::check_wgqa_shape(kind, hq, hkv, d, model_dim, "gqa::wgqa_weights::random_init", "");
  wgqa_weights w{kind, hq, hkv, d, model_dim, {}, {}};
  random::stream sk{seed, 0, 0}, sv{seed, 1, 0};
  w.k.resize(static_cast<std::size_t>(w.size_per_projection()));
  w.v.resize(w.k.size());
  for (float& x : w.k) x = static_cast<float>(sk.next_normal());
  for (float& x : w.v) x = static_cast<float>(sv.next_normal());
  return w;
}

/// WGQA (spec §8) for scalar and col weights on activations: `prepare` combines the hq per-head K and V
/// heads into hkv group heads, K̃_g = Σ_{j∈g} w_j ⊙ K_j (likewise V with weights.v), in the policy's own
/// buffers; `plan` returns uniform groups over them. Row weights act on the projection input and cannot be
/// applied to K/V: fold them into plain GQA weights with gqa::wgqa_fold (gqa/convert.hpp).
/// Inputs to gqa::forward: q (b, sq, hq_q, d) with hkv dividing hq_q, k and v (b, skv, weights.hq,
/// weights.d). Each combined value is Σ of exact float products accumulated in double and rounded once,
/// so it does not depend on the ISA.
class wgqa_policy {
 public:
  static constexpr std::string_view name = "wgqa";

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

  /// The backward of prepare() (gqa::backward calls it): from the caller's per-head k, v and the gradients
  /// dk_comb, dv_comb with respect to the combined heads (b, s, hkv, d), writes dk, dv (like k, v):
  /// ∂L/∂K_j = w_j ⊙ ∂L/∂K̃_g (each a float product, rounded once), and keeps the weights' gradient in
  /// weight_grad(): scalar ∂L/∂w_j = Σ_{b,t,c} ∂L/∂K̃_g[b,t,c]·K_j[b,t,c], col ∂L/∂c_j[c] = Σ_{b,t} ∂L/∂K̃_g[b,t,c]
  /// ·K_j[b,t,c] (likewise V). Each weight's gradient is a double sum of exact float products in (b, t, c)
  /// order, rounded once: the same bits for any thread count and ISA. Heads run as tasks on opt's threads.
  void prepare_backward(const tensor_view<const float>& k, const tensor_view<const float>& v,
                        const tensor_view<const float>& dk_comb, const tensor_view<const float>& dv_comb,
                        const tensor_view<float>& dk, const tensor_view<float>& dv, const attention_options& opt) {
    check_kv(k, v);
    grad_.k.assign(w_.k.size(), 0.0f);
    grad_.v.assign(w_.v.size(), 0.0f);
    combine_backward(k, dk_comb, w_.k, dk, grad_.k, opt);
    combine_backward(v, dv_comb, w_.v, dv, grad_.v, opt);
  }

  /// ∂L/∂weights of the last backward, laid out like weights().k and .v (overwritten by every backward).
  struct weight_gradient {
    std::vector<float> k, v;
  };
  const weight_gradient& weight_grad() const noexcept { return grad_; }

 private:
  void check_kv(const tensor_view<const float>& k, const tensor_view<const float>& v) const {
    if (w_.kind == wgqa_kind::row)
      detail::fail("gqa::wgqa_policy: weights.kind = row: row weights scale the projection's input features "
                   "(W̃_g[k, c] = Σ r_j[c] W_j[k, c]), which cannot be applied to K/V activations; fold them "
                   "into plain GQA projection weights with gqa::wgqa_fold and run gqa_policy");
    detail::check_view(k, "k", "gqa::wgqa_policy");
    detail::check_view(v, "v", "gqa::wgqa_policy");
    detail::require(k.h == w_.hq, "gqa::wgqa_policy", "k.h", k.h,
                    ("must equal weights.hq = " + std::to_string(w_.hq) + " (one K head per MHA head)").c_str());
    detail::require(v.h == w_.hq, "gqa::wgqa_policy", "v.h", v.h,
                    ("must equal weights.hq = " + std::to_string(w_.hq) + " (one V head per MHA head)").c_str());
    detail::require(k.d == w_.d, "gqa::wgqa_policy", "k.d", k.d, ("must equal weights.d = " + std::to_string(w_.d)).c_str());
    detail::require(v.d == w_.d, "gqa::wgqa_policy", "v.d", v.d, ("must equal weights.d = " + std::to_string(w_.d)).c_str());
    detail::require(v.b == k.b, "gqa::wgqa_policy", "v.b", v.b, ("must equal k.b = " + std::to_string(k.b)).c_str());
    detail::require(v.s == k.s, "gqa::wgqa_policy", "v.s", v.s, ("must equal k.s = " + std::to_string(k.s)).c_str());
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

  /// dx[.., j, c] = w_j(c)·dcomb[.., g(j), c] and dw (see prepare_backward), one task per head j.
  void combine_backward(const tensor_view<const float>& x, const tensor_view<const float>& dcomb,
                        const std::vector<float>& w, const tensor_view<float>& dx, std::vector<float>& dw,
                        const attention_options& opt) const {
    const index_t grp = w_.hq / w_.hkv, d = w_.d;
    const bool scalar = w_.kind == wgqa_kind::scalar;
    detail::run_tasks(w_.hq, opt, [&](index_t j) {
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
