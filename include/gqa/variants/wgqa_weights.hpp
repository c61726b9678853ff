// gqa/variants/wgqa_weights.hpp: the learned weights of Weighted GQA (Chinnakonduru and
// Mohapatra, arXiv 2407.10855; docs/variants.md, "WGQA") as plain data: their kinds, sizes, validation
// and initialisers. Shared by the WGQA policy (variants/wgqa.hpp) and the checkpoint fold (convert.hpp);
// includes no kernel.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../config.hpp"
#include "../detail/overflow.hpp"
#include "../errors.hpp"
#include "../random.hpp"

GQA_BEGIN_NAMESPACE

/// The three WGQA weight shapes (named as in the authors' code's `weight_row_column`).
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

/// WGQA weights added to one attention module: per-head parameters for K (w_k) and V (w_v).
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

  /// Every weight 1/s (s = hq / hkv): at step 0 WGQA is exactly GQA mean pooling (the authors' init).
  static wgqa_weights mean_init(wgqa_kind kind, index_t hq, index_t hkv, index_t d, index_t model_dim);
  /// Every weight drawn from N(0, 1) (the authors' other init, `torch.randn`) by gqa's counter-based
  /// generator: k[i] = random::stream{seed, 0}'s i-th next_normal(), v[i] = random::stream{seed, 1}'s i-th,
  /// rounded to float. The same on every platform, compiler and thread count.
  static wgqa_weights random_init(wgqa_kind kind, index_t hq, index_t hkv, index_t d, index_t model_dim,
                                  std::uint64_t seed);
};

namespace detail {

inline void check_wgqa_shape(wgqa_kind kind, index_t hq, index_t hkv, index_t d, index_t model_dim,
                             const char* where, const char* prefix) {
  const std::string p(prefix);
  if (kind != wgqa_kind::scalar && kind != wgqa_kind::col && kind != wgqa_kind::row)
    fail(where, ": ", p, "kind = ", static_cast<int>(kind), ": must be wgqa_kind::scalar, col or row");
  require(hq > 0, where, (p + "hq").c_str(), hq, "must be positive");
  require(hkv > 0, where, (p + "hkv").c_str(), hkv, "must be positive");
  if (hq % hkv != 0)
    fail(where, ": ", p, "hkv = ", hkv, ": must divide ", p, "hq = ", hq,
         " (WGQA groups are uniform: each combines s = hq / hkv heads)");
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

GQA_END_NAMESPACE
