// gqa/convert.hpp: checkpoint conversion: MHA -> GQA/MQA mean pooling of K/V projections, the WGQA
// inference fold (docs/variants.md, "Checkpoint conversion" and "WGQA") and its gradient (training WGQA
// through folded projections). Weights are PyTorch nn.Linear (out, in) row-major; head j of a K or V
// projection is the row block [j·d, (j+1)·d); groups are contiguous (group g = heads [g·s, (g+1)·s)).
// Invariant: every output value is one index-order double sum of exact float products, rounded once.
#pragma once

#include <algorithm>
#include <cmath>
#include <span>
#include <string>
#include <vector>

#include "config.hpp"
#include "detail/overflow.hpp"
#include "errors.hpp"
#include "variants/wgqa_weights.hpp"

GQA_BEGIN_NAMESPACE

namespace detail {

inline void check_finite(std::span<const float> x, const char* where, const std::string& name) {
  for (std::size_t i = 0; i < x.size(); ++i)
    if (!std::isfinite(x[i])) fail(where, ": ", name, "[", i, "] = ", x[i], ": must be finite");
}

inline void check_pool_shape(index_t heads, index_t groups, index_t d, const char* where) {
  require(heads > 0, where, "heads", heads, "must be positive");
  require(groups > 0, where, "groups", groups, "must be positive");
  if (heads % groups != 0)
    fail(where, ": groups = ", groups, ": must divide heads = ", heads,
         " (uniform GQA groups: every group pools the same number of heads)");
  require(d > 0, where, "d", d, "must be positive");
}

/// x holds `heads` blocks of `block` values; block g of the result is the mean of blocks [g·s, (g+1)·s).
inline std::vector<float> mean_pool_blocks(std::span<const float> x, index_t heads, index_t groups, index_t block) {
  const index_t s = heads / groups;
  std::vector<float> out(static_cast<std::size_t>(groups * block));
  std::vector<double> acc(static_cast<std::size_t>(block));
  for (index_t g = 0; g < groups; ++g) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (index_t j = g * s; j < (g + 1) * s; ++j) {
      const float* src = x.data() + j * block;
      for (index_t e = 0; e < block; ++e) acc[static_cast<std::size_t>(e)] += static_cast<double>(src[e]);
    }
    // torch's mean divides the sum by the count; so do we (not a multiply by 1/s, which rounds twice).
    for (index_t e = 0; e < block; ++e)
      out[static_cast<std::size_t>(g * block + e)] = static_cast<float>(acc[static_cast<std::size_t>(e)] / static_cast<double>(s));
  }
  return out;
}

inline void check_size(std::size_t got, index_t need, const char* where, const std::string& name, const char* formula) {
  if (static_cast<index_t>(got) != need) fail(where, ": ", name, ".size() = ", got, ": must equal ", formula, " = ", need);
}

inline void check_bias(std::span<const float> b, index_t heads, index_t d, const char* where, const std::string& name) {
  if (b.empty()) return;
  check_size(b.size(), heads * d, where, name, "heads * d (or 0 for no bias)");
  check_finite(b, where, name);
}

}  // namespace detail

/// MHA -> GQA mean pooling of one K or V projection weight, as the GQA paper converts checkpoints: w is
/// (heads·d × in_dim) row-major; the result is (groups·d × in_dim), block g = (1/s)·Σ_{j∈g} W[j], s = heads
/// / groups. groups = 1 gives MQA. Throws gqa::invalid_argument for a bad size, groups not dividing heads,
/// or a non-finite weight.
inline std::vector<float> mean_pool_heads(std::span<const float> w, index_t heads, index_t groups, index_t d,
                                          index_t in_dim) {
  constexpr const char* where = "gqa::mean_pool_heads";
  detail::check_pool_shape(heads, groups, d, where);
  detail::require(in_dim > 0, where, "in_dim", in_dim, "must be positive");
  const index_t block = detail::checked_mul(d, in_dim, where, "d * in_dim");
  detail::check_size(w.size(), detail::checked_mul(heads, block, where, "heads * d * in_dim"), where, "w",
                     "heads * d * in_dim");
  detail::check_finite(w, where, "w");
  return detail::mean_pool_blocks(w, heads, groups, block);
}

/// Mean pooling of one K or V projection bias (heads·d values) into groups·d values: b_g = (1/s)·Σ_{j∈g} b_j.
inline std::vector<float> mean_pool_bias(std::span<const float> b, index_t heads, index_t groups, index_t d) {
  constexpr const char* where = "gqa::mean_pool_bias";
  detail::check_pool_shape(heads, groups, d, where);
  detail::check_size(b.size(), detail::checked_mul(heads, d, where, "heads * d"), where, "b", "heads * d");
  detail::check_finite(b, where, "b");
  return detail::mean_pool_blocks(b, heads, groups, d);
}

/// The K and V projections of one attention module (nn.Linear layout). Biases may be empty (no bias).
struct kv_projection {
  std::vector<float> w_k, b_k, w_v, b_v;
};

/// Converts an MHA module's K/V projections (heads·d × in_dim each) to GQA with `groups` KV heads by mean
/// pooling weights and biases; Q and the output projection are unchanged and not taken.
/// groups = 1 converts to MQA.
inline kv_projection convert_mha_to_gqa(const kv_projection& mha, index_t heads, index_t groups, index_t d,
                                        index_t in_dim) {
  constexpr const char* where = "gqa::convert_mha_to_gqa";
  detail::check_pool_shape(heads, groups, d, where);
  detail::require(in_dim > 0, where, "in_dim", in_dim, "must be positive");
  const index_t block = detail::checked_mul(d, in_dim, where, "d * in_dim");
  const index_t need = detail::checked_mul(heads, block, where, "heads * d * in_dim");
  detail::check_size(mha.w_k.size(), need, where, "mha.w_k", "heads * d * in_dim");
  detail::check_size(mha.w_v.size(), need, where, "mha.w_v", "heads * d * in_dim");
  detail::check_finite(mha.w_k, where, "mha.w_k");
  detail::check_finite(mha.w_v, where, "mha.w_v");
  detail::check_bias(mha.b_k, heads, d, where, "mha.b_k");
  detail::check_bias(mha.b_v, heads, d, where, "mha.b_v");
  kv_projection out;
  out.w_k = detail::mean_pool_blocks(mha.w_k, heads, groups, block);
  out.w_v = detail::mean_pool_blocks(mha.w_v, heads, groups, block);
  if (!mha.b_k.empty()) out.b_k = detail::mean_pool_blocks(mha.b_k, heads, groups, d);
  if (!mha.b_v.empty()) out.b_v = detail::mean_pool_blocks(mha.b_v, heads, groups, d);
  return out;
}

namespace detail {

/// W̃_g[k, c] = Σ_{j∈g} weight_j(k, c) · W_j[k, c] for one projection, weight per kind.
inline std::vector<float> wgqa_fold_weight(const std::vector<float>& wp, const std::vector<float>& ww, const wgqa_weights& w) {
  const index_t s = w.hq / w.hkv, d = w.d, in = w.model_dim;
  std::vector<float> out(static_cast<std::size_t>(w.hkv * d * in));
  std::vector<double> acc(static_cast<std::size_t>(in));
  for (index_t g = 0; g < w.hkv; ++g)
    for (index_t k = 0; k < d; ++k) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (index_t j = g * s; j < (g + 1) * s; ++j) {
        const float* row = wp.data() + (j * d + k) * in;
        // Exact float × float products in double: contraction into FMAs cannot change the sum.
        if (w.kind == wgqa_kind::row) {
          const float* r = ww.data() + j * in;
          for (index_t c = 0; c < in; ++c) acc[static_cast<std::size_t>(c)] += static_cast<double>(r[c]) * static_cast<double>(row[c]);
        } else {
          const double f = w.kind == wgqa_kind::scalar ? ww[static_cast<std::size_t>(j)] : ww[static_cast<std::size_t>(j * d + k)];
          for (index_t c = 0; c < in; ++c) acc[static_cast<std::size_t>(c)] += f * static_cast<double>(row[c]);
        }
      }
      float* dst = out.data() + (g * d + k) * in;
      for (index_t c = 0; c < in; ++c) dst[c] = static_cast<float>(acc[static_cast<std::size_t>(c)]);
    }
  return out;
}

/// b̃_g[k] = Σ_{j∈g} w_j b_j[k] (scalar) or Σ_{j∈g} c_j[k] b_j[k] (col).
inline std::vector<float> wgqa_fold_bias(const std::vector<float>& b, const std::vector<float>& ww, const wgqa_weights& w) {
  const index_t s = w.hq / w.hkv, d = w.d;
  std::vector<float> out(static_cast<std::size_t>(w.hkv * d));
  for (index_t g = 0; g < w.hkv; ++g)
    for (index_t k = 0; k < d; ++k) {
      double acc = 0.0;
      for (index_t j = g * s; j < (g + 1) * s; ++j) {
        const double f = w.kind == wgqa_kind::scalar ? ww[static_cast<std::size_t>(j)] : ww[static_cast<std::size_t>(j * d + k)];
        acc += f * static_cast<double>(b[static_cast<std::size_t>(j * d + k)]);
      }
      out[static_cast<std::size_t>(g * d + k)] = static_cast<float>(acc);
    }
  return out;
}

}  // namespace detail

/// The WGQA inference fold: from the per-head projections (w.hq·w.d × w.model_dim each) and
/// trained WGQA weights, the plain GQA projections (w.hkv·w.d × w.model_dim) whose output equals the
/// weighted combination, for every kind: W̃_g[k, c] = Σ_{j∈g} w_j W_j[k, c] (scalar), c_j[k] W_j[k, c]
/// (col), r_j[c] W_j[k, c] (row). Biases fold as b̃_g = Σ w_j ⊙ b_j for scalar and col; row weights
/// have no bias fold, so their biases must be empty. Run the result with gqa_policy (map h / s).
/// Exact when K reaches attention as projected (T5). With RoPE applied to K after the projection, col
/// weights do not fold (the rotation mixes channel pairs with different weights; scalar and row still
/// fold, and V always does): use wgqa_policy::combine_rows on each new token instead, Note [wgqa with rope].
inline kv_projection wgqa_fold(const kv_projection& per_head, const wgqa_weights& w) {
  constexpr const char* where = "gqa::wgqa_fold";
  detail::check_wgqa_weights(w, where);
  const index_t need = w.hq * w.d * w.model_dim;  // overflow checked by check_wgqa_weights
  detail::check_size(per_head.w_k.size(), need, where, "per_head.w_k", "weights.hq * weights.d * weights.model_dim");
  detail::check_size(per_head.w_v.size(), need, where, "per_head.w_v", "weights.hq * weights.d * weights.model_dim");
  detail::check_finite(per_head.w_k, where, "per_head.w_k");
  detail::check_finite(per_head.w_v, where, "per_head.w_v");
  if (w.kind == wgqa_kind::row) {
    if (!per_head.b_k.empty())
      detail::fail(where, ": per_head.b_k.size() = ", per_head.b_k.size(),
                   ": must be 0 for row weights (r_j scales input features; a bias has none to scale, so it has "
                   "no fold; the reference T5 model has no projection biases)");
    if (!per_head.b_v.empty())
      detail::fail(where, ": per_head.b_v.size() = ", per_head.b_v.size(),
                   ": must be 0 for row weights (r_j scales input features; a bias has none to scale, so it has "
                   "no fold; the reference T5 model has no projection biases)");
  } else {
    detail::check_bias(per_head.b_k, w.hq, w.d, where, "per_head.b_k");
    detail::check_bias(per_head.b_v, w.hq, w.d, where, "per_head.b_v");
  }
  kv_projection out;
  out.w_k = detail::wgqa_fold_weight(per_head.w_k, w.k, w);
  out.w_v = detail::wgqa_fold_weight(per_head.w_v, w.v, w);
  if (!per_head.b_k.empty()) out.b_k = detail::wgqa_fold_bias(per_head.b_k, w.k, w);
  if (!per_head.b_v.empty()) out.b_v = detail::wgqa_fold_bias(per_head.b_v, w.v, w);
  return out;
}

/// The gradient of wgqa_fold: with respect to the per-head projections (biases empty when per_head's are)
/// and to the WGQA weights (laid out like weights.k and weights.v).
struct wgqa_fold_gradient {
  kv_projection per_head;
  std::vector<float> k, v;
};

namespace detail {

/// One projection's share of wgqa_fold_backward: dwp = ∂L/∂W (like wp), dww += ∂L/∂weights (double),
/// db = ∂L/∂b when b is not empty.
inline void wgqa_fold_weight_backward(const std::vector<float>& wp, const std::vector<float>& b,
                                      const std::vector<float>& ww, const std::vector<float>& gw,
                                      const std::vector<float>& gb, const wgqa_weights& w, std::vector<float>& dwp,
                                      std::vector<float>& db, std::vector<float>& dww) {
  const index_t s = w.hq / w.hkv, d = w.d, in = w.model_dim;
  std::vector<double> acc(ww.size(), 0.0);
  dwp.resize(wp.size());
  for (index_t j = 0; j < w.hq; ++j) {
    const index_t g = j / s;
    for (index_t k = 0; k < d; ++k) {
      const float* row = wp.data() + (j * d + k) * in;
      const float* grow = gw.data() + (g * d + k) * in;
      float* drow = dwp.data() + (j * d + k) * in;
      for (index_t c = 0; c < in; ++c) {
        const std::size_t wi = static_cast<std::size_t>(w.kind == wgqa_kind::scalar ? j : w.kind == wgqa_kind::col ? j * d + k : j * in + c);
        drow[c] = ww[wi] * grow[c];
        // Exact float × float products in double, summed in (k, c) order: contraction cannot change it.
        acc[wi] += static_cast<double>(grow[c]) * static_cast<double>(row[c]);
      }
    }
  }
  if (!b.empty()) {  // scalar and col only: b̃_g[k] = Σ_{j∈g} f_j(k)·b_j[k]
    db.resize(b.size());
    for (index_t j = 0; j < w.hq; ++j)
      for (index_t k = 0; k < d; ++k) {
        const std::size_t wi = static_cast<std::size_t>(w.kind == wgqa_kind::scalar ? j : j * d + k);
        const float gk = gb[static_cast<std::size_t>((j / s) * d + k)];
        db[static_cast<std::size_t>(j * d + k)] = ww[wi] * gk;
        acc[wi] += static_cast<double>(gk) * static_cast<double>(b[static_cast<std::size_t>(j * d + k)]);
      }
  }
  dww.resize(acc.size());
  for (std::size_t i = 0; i < acc.size(); ++i) dww[i] = static_cast<float>(acc[i]);
}

}  // namespace detail

/// The gradient of wgqa_fold: given Γ = ∂L/∂(folded projections) (`grad_folded`, shaped like
/// wgqa_fold's result: weights hkv·d × model_dim, biases hkv·d or empty), returns ∂L/∂(per-head
/// projections) and ∂L/∂weights, for every kind, with g the group of head j:
///   scalar: ∂L/∂W_j = w_j·Γ_g,           ∂L/∂w_j = ⟨Γ_g, W_j⟩ (+ ⟨β_g, b_j⟩ with biases);
///   col:    ∂L/∂W_j[k,:] = c_j[k]·Γ_g[k,:], ∂L/∂c_j[k] = Σ_c Γ_g[k,c]·W_j[k,c] (+ β_g[k]·b_j[k]);
///   row:    ∂L/∂W_j[:,c] = r_j[c]·Γ_g[:,c], ∂L/∂r_j[c] = Σ_k Γ_g[k,c]·W_j[k,c];
/// and ∂L/∂b_j = f_j ⊙ β_g for the biases (β = the folded biases' gradient). This is how the `row` kind
/// (which has no form on K/V activations) and any kind trained through folded projections are trained: a
/// framework back-propagates into the folded W̃ (Γ = Σ_t ∂L/∂K̃_tᵀ x_t), then calls this. Weight gradients
/// are double sums of exact float products in index order, rounded once.
/// Throws gqa::invalid_argument for everything wgqa_fold checks, and grad_folded's sizes (biases present
/// exactly when per_head's are) or non-finite values.
inline wgqa_fold_gradient wgqa_fold_backward(const kv_projection& per_head, const wgqa_weights& w,
                                             const kv_projection& grad_folded) {
  constexpr const char* where = "gqa::wgqa_fold_backward";
  detail::check_wgqa_weights(w, where);
  const index_t need = w.hq * w.d * w.model_dim, folded = w.hkv * w.d * w.model_dim;
  detail::check_size(per_head.w_k.size(), need, where, "per_head.w_k", "weights.hq * weights.d * weights.model_dim");
  detail::check_size(per_head.w_v.size(), need, where, "per_head.w_v", "weights.hq * weights.d * weights.model_dim");
  detail::check_finite(per_head.w_k, where, "per_head.w_k");
  detail::check_finite(per_head.w_v, where, "per_head.w_v");
  detail::check_size(grad_folded.w_k.size(), folded, where, "grad_folded.w_k", "weights.hkv * weights.d * weights.model_dim");
  detail::check_size(grad_folded.w_v.size(), folded, where, "grad_folded.w_v", "weights.hkv * weights.d * weights.model_dim");
  detail::check_finite(grad_folded.w_k, where, "grad_folded.w_k");
  detail::check_finite(grad_folded.w_v, where, "grad_folded.w_v");
  const std::vector<float>* biases[2] = {&per_head.b_k, &per_head.b_v};
  const std::vector<float>* grad_biases[2] = {&grad_folded.b_k, &grad_folded.b_v};
  const char* const pb_names[2] = {"per_head.b_k", "per_head.b_v"};
  const char* const gb_names[2] = {"grad_folded.b_k", "grad_folded.b_v"};
  for (int i = 0; i < 2; ++i) {
    const char* pb = pb_names[i];
    const char* gb = gb_names[i];
    if (w.kind == wgqa_kind::row && !biases[i]->empty())
      detail::fail(where, ": ", pb, ".size() = ", biases[i]->size(), ": must be 0 for row weights (no bias fold)");
    detail::check_bias(*biases[i], w.hq, w.d, where, pb);
    if (biases[i]->empty()) {
      if (!grad_biases[i]->empty())
        detail::fail(where, ": ", gb, ".size() = ", grad_biases[i]->size(), ": must be 0 (", pb, " is empty)");
    } else {
      detail::check_size(grad_biases[i]->size(), w.hkv * w.d, where, gb, "weights.hkv * weights.d");
      detail::check_finite(*grad_biases[i], where, gb);
    }
  }
  wgqa_fold_gradient out;
  detail::wgqa_fold_weight_backward(per_head.w_k, per_head.b_k, w.k, grad_folded.w_k, grad_folded.b_k, w,
                                    out.per_head.w_k, out.per_head.b_k, out.k);
  detail::wgqa_fold_weight_backward(per_head.w_v, per_head.b_v, w.v, grad_folded.w_v, grad_folded.b_v, w,
                                    out.per_head.w_v, out.per_head.b_v, out.v);
  return out;
}

GQA_END_NAMESPACE
