// examples/uptrain/interim_backward.hpp: TEMPORARY. A plain backward pass for attention and for the two
// policies whose backward is more than the head map (PGQA, WGQA), used by attention.cpp until gqa's own
// backward (issue 10) lands; then attention.cpp calls gqa's and this file is deleted. Deliberately simple:
// one (batch, query head) at a time with Eigen, no causal mask or padding (a ViT needs neither), serial.
// tests/uptrain_test.cpp checks it against finite differences of a double-precision reference.
#pragma once

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include <gqa/gqa.hpp>

namespace uptrain::interim {

using row_major = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using strided = Eigen::Map<row_major, Eigen::Unaligned, Eigen::OuterStride<>>;
using const_strided = Eigen::Map<const row_major, Eigen::Unaligned, Eigen::OuterStride<>>;

/// The (tokens × d) rows of head h of batch element b of a BSHD view (stride between tokens: stride_s).
inline const_strided head_rows(const gqa::tensor_view<const float>& t, gqa::index_t b, gqa::index_t h) {
  return {t.row(b, 0, h), t.s, t.d, Eigen::OuterStride<>(t.stride_s)};
}
inline strided head_rows(const gqa::tensor_view<float>& t, gqa::index_t b, gqa::index_t h) {
  return {t.row(b, 0, h), t.s, t.d, Eigen::OuterStride<>(t.stride_s)};
}

/// Gradients of O = softmax(scale · Q Kᵀ) V (per query head h, with K, V of KV head map.kv_of(h)) as in
/// FlashAttention-2's backward: P is recomputed from Q, K and the forward's log-sum-exp (lse, laid out
/// [b][hq][sq] as attention_options::lse), then with D = rowsum(dO ∘ O):
///   dV_g += Pᵀ dO,  dP = dO V_gᵀ,  dS = P ∘ (dP − D),  dQ = scale · dS K_g,  dK_g += scale · dSᵀ Q.
/// A KV head's dK, dV sum over every query head mapped to it; unused KV heads get zero. dq, dk, dv are
/// overwritten. No mask: every query sees every key.
inline void attend_backward(const gqa::tensor_view<const float>& q, const gqa::tensor_view<const float>& k,
                            const gqa::tensor_view<const float>& v, const gqa::tensor_view<const float>& o,
                            const gqa::tensor_view<const float>& d_o, std::span<const float> lse, const gqa::head_map& map,
                            float scale, const gqa::tensor_view<float>& dq, const gqa::tensor_view<float>& dk,
                            const gqa::tensor_view<float>& dv) {
  for (gqa::index_t b = 0; b < k.b; ++b)
    for (gqa::index_t g = 0; g < k.h; ++g) {
      head_rows(dk, b, g).setZero();
      head_rows(dv, b, g).setZero();
    }
  row_major p, dp;
  Eigen::VectorXf rowdot;
  for (gqa::index_t b = 0; b < q.b; ++b)
    for (gqa::index_t h = 0; h < q.h; ++h) {
      const gqa::index_t g = map.kv_of(h);
      const auto qh = head_rows(q, b, h), kg = head_rows(k, b, g), vg = head_rows(v, b, g);
      const auto oh = head_rows(o, b, h), doh = head_rows(d_o, b, h);
      const Eigen::Map<const Eigen::VectorXf> l(lse.data() + (b * q.h + h) * q.s, q.s);
      p.noalias() = scale * (qh * kg.transpose());
      for (gqa::index_t i = 0; i < q.s; ++i) p.row(i) = (p.row(i).array() - l(i)).exp();  // softmax via the saved LSE
      head_rows(dv, b, g).noalias() += p.transpose() * doh;
      dp.noalias() = doh * vg.transpose();
      rowdot = doh.cwiseProduct(oh).rowwise().sum();
      dp = p.cwiseProduct((dp.colwise() - rowdot));  // dS
      head_rows(dq, b, h).noalias() = scale * (dp * kg);
      head_rows(dk, b, g).noalias() += scale * (dp.transpose() * qh);
    }
}

/// Backward of PGQA's post-step (gqa::pgqa_perturb): for each row X of head h = g·s + i, batch element b,
/// flattened over tokens × d (N values), X' = X − μ − σ·Z with μ = mean(X), σ = unbiased std(X) and the
/// standardised draw Z = gqa::pgqa_standardised_noise(N, seed, layer, call, g, i) held fixed. Since
/// ∂μ/∂X = 1/N and ∂σ/∂X = (X − μ)/((N − 1)σ):
///   dX = dX' − mean(dX') − (Σ_n dX'_n Z_n) · (X − μ) / ((N − 1)σ)      (the last term is 0 when σ = 0).
/// `o_pre` is the output before the perturbation; `d_o` holds dX' on entry and dX on return.
inline void pgqa_backward(const gqa::tensor_view<const float>& o_pre, const gqa::tensor_view<float>& d_o,
                          gqa::index_t hkv, std::uint64_t seed, std::uint64_t layer, std::uint64_t call) {
  const gqa::index_t s = o_pre.h / hkv, n = o_pre.s * o_pre.d;
  std::vector<double> z(static_cast<std::size_t>(n));
  for (gqa::index_t h = 0; h < o_pre.h; ++h) {
    gqa::pgqa_standardised_noise(z, seed, layer, call, h / s, h % s);
    for (gqa::index_t b = 0; b < o_pre.b; ++b) {
      const auto x = head_rows(o_pre, b, h);
      auto dx = head_rows(d_o, b, h);
      const double mu = x.cast<double>().mean();
      const double sigma = std::sqrt((x.cast<double>().array() - mu).square().sum() / static_cast<double>(n - 1));
      double mean_d = 0.0, dot_z = 0.0;
      for (gqa::index_t t = 0; t < o_pre.s; ++t)
        for (gqa::index_t c = 0; c < o_pre.d; ++c) {
          mean_d += dx(t, c);
          dot_z += dx(t, c) * z[static_cast<std::size_t>(t * o_pre.d + c)];
        }
      mean_d /= static_cast<double>(n);
      const double coef = sigma > 0.0 ? dot_z / (static_cast<double>(n - 1) * sigma) : 0.0;
      for (gqa::index_t t = 0; t < o_pre.s; ++t)
        for (gqa::index_t c = 0; c < o_pre.d; ++c)
          dx(t, c) = static_cast<float>(dx(t, c) - mean_d - coef * (x(t, c) - mu));
    }
  }
}

/// Backward of WGQA's combination K̃_g = Σ_{j∈g} w_j ⊙ K_j (gqa::wgqa_policy::prepare; scalar w_j or
/// per-channel c_j[k]): dK_j = w_j ⊙ dK̃_g, and dw_j = Σ_{b,t,k} dK̃_g[k] K_j[k] (scalar) or
/// dc_j[k] = Σ_{b,t} dK̃_g[k] K_j[k] (col). `per_head` (b, s, H, d), `d_combined` (b, s, G, d);
/// writes `d_per_head` (b, s, H, d) and adds to `d_weights` (H or H·d values, the layout of
/// gqa::wgqa_weights::k).
inline void wgqa_backward(gqa::wgqa_kind kind, std::span<const float> weights,
                          const gqa::tensor_view<const float>& per_head, const gqa::tensor_view<const float>& d_combined,
                          const gqa::tensor_view<float>& d_per_head, std::span<float> d_weights) {
  const gqa::index_t hq = per_head.h, s = hq / d_combined.h, d = per_head.d;
  for (gqa::index_t j = 0; j < hq; ++j) {
    const gqa::index_t g = j / s;
    for (gqa::index_t b = 0; b < per_head.b; ++b) {
      const auto kj = head_rows(per_head, b, j);
      const auto dkg = head_rows(d_combined, b, g);
      auto dkj = head_rows(d_per_head, b, j);
      if (kind == gqa::wgqa_kind::scalar) {
        dkj = weights[static_cast<std::size_t>(j)] * dkg;
        d_weights[static_cast<std::size_t>(j)] += dkg.cwiseProduct(kj).sum();
      } else {
        const Eigen::Map<const Eigen::RowVectorXf> cj(weights.data() + j * d, d);
        Eigen::Map<Eigen::RowVectorXf> dcj(d_weights.data() + j * d, d);
        dkj = dkg.array().rowwise() * cj.array();
        dcj += dkg.cwiseProduct(kj).colwise().sum();
      }
    }
  }
}

}  // namespace uptrain::interim
