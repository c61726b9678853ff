// examples/uptrain/interim_backward.hpp: TEMPORARY. A stand-in for gqa's training pair (issue 10:
// gqa::forward_train / gqa::backward, with PGQA's and WGQA's own backward steps) until it lands on main;
// then attention.cpp calls gqa's (same names and arguments, gqa:: instead of interim::) and this file is
// deleted. Deliberately plain: one (batch, query head) at a time with Eigen, no causal mask or padding (a
// ViT needs neither), serial. tests/attention_test.cpp checks it against finite differences of a
// double-precision reference layer.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

#include <gqa/gqa.hpp>

namespace uptrain::interim {

using row_major = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using strided = Eigen::Map<row_major, Eigen::Unaligned, Eigen::OuterStride<>>;
using const_strided = Eigen::Map<const row_major, Eigen::Unaligned, Eigen::OuterStride<>>;

/// The (tokens × d) rows of head h of batch element b of a view (stride between tokens: stride_s).
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
                            const gqa::tensor_view<const float>& dout, std::span<const float> lse,
                            const gqa::tensor_view<float>& dq, const gqa::tensor_view<float>& dk,
                            const gqa::tensor_view<float>& dv, const gqa::head_map& map, float scale) {
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
      const auto oh = head_rows(o, b, h), doh = head_rows(dout, b, h);
      const float* l = lse.data() + (b * q.h + h) * q.s;
      p.noalias() = scale * (qh * kg.transpose());
      for (gqa::index_t i = 0; i < q.s; ++i) p.row(i) = (p.row(i).array() - l[i]).exp();  // softmax via the saved LSE
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
/// `o_pre` is the output before the perturbation; `d` holds dX' on entry and dX on return.
inline void pgqa_backward(const gqa::tensor_view<const float>& o_pre, const gqa::tensor_view<float>& d, gqa::index_t hkv,
                          std::uint64_t seed, std::uint64_t layer, std::uint64_t call) {
  const gqa::index_t s = o_pre.h / hkv, n = o_pre.s * o_pre.d;
  std::vector<double> z(static_cast<std::size_t>(n));
  for (gqa::index_t h = 0; h < o_pre.h; ++h) {
    gqa::pgqa_standardised_noise(z, seed, layer, call, h / s, h % s);
    for (gqa::index_t b = 0; b < o_pre.b; ++b) {
      const auto x = head_rows(o_pre, b, h);
      auto dx = head_rows(d, b, h);
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
/// writes `d_per_head` (b, s, H, d) and `d_weights` (H or H·d values, the layout of gqa::wgqa_weights::k).
inline void wgqa_backward(gqa::wgqa_kind kind, std::span<const float> weights,
                          const gqa::tensor_view<const float>& per_head, const gqa::tensor_view<const float>& d_combined,
                          const gqa::tensor_view<float>& d_per_head, std::vector<float>& d_weights) {
  const gqa::index_t hq = per_head.h, s = hq / d_combined.h, d = per_head.d;
  d_weights.assign(weights.size(), 0.0f);
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

/// What forward_train keeps for backward (gqa's saved_forward<P> holds the maps, the LSE and the policy's
/// own record; this stand-in also keeps the K/V the core saw and its output before finish()).
template <class P>
struct saved_forward {
  gqa::head_map map;             ///< the map plan() chose (KDGQA/DGQA: this call's allocation)
  std::vector<float> lse;        ///< [b][hq][sq]
  std::vector<float> k, v;       ///< prepare()'s output (WGQA: the combined heads), BSHD; empty without prepare()
  std::vector<float> o_core;     ///< the core's output before finish() (PGQA: before the noise), BSHD
  std::uint64_t pgqa_call = 0;   ///< PGQA: the call key of the noise
};

/// WGQA's weight gradient (gqa keeps it in the policy: wgqa_policy::weight_grad()).
struct weight_gradient {
  std::vector<float> k, v;
};

namespace detail {

inline std::vector<float> copy_bshd(const gqa::tensor_view<const float>& t) {
  std::vector<float> out(static_cast<std::size_t>(t.b * t.s * t.h * t.d));
  for (gqa::index_t b = 0; b < t.b; ++b)
    for (gqa::index_t s = 0; s < t.s; ++s)
      for (gqa::index_t h = 0; h < t.h; ++h) std::copy_n(t.row(b, s, h), t.d, out.data() + ((b * t.s + s) * t.h + h) * t.d);
  return out;
}

/// Wraps a policy to record, during gqa::forward, what its backward needs: the K/V the core saw (when
/// prepare() made them), the map plan() chose and the output before finish() (PGQA). Forwards
/// check/prepare/plan/finish unchanged; the backward then uses exactly the forward's map, never a re-plan.
template <class P>
struct recorder {
  P& inner;
  saved_forward<P>& rec;

  void check(const gqa::tensor_view<const float>& q, const gqa::tensor_view<const float>& k,
             const gqa::tensor_view<const float>& v, const gqa::tensor_view<float>& o) {
    if constexpr (gqa::policy_with_check<P>) inner.check(q, k, v, o);
  }
  gqa::kv_views prepare(const gqa::tensor_view<const float>& k, const gqa::tensor_view<const float>& v) {
    if constexpr (gqa::policy_with_prepare<P>) {
      const gqa::kv_views kv = inner.prepare(k, v);  // in the policy's buffers: keep a copy
      rec.k = copy_bshd(kv.k);
      rec.v = copy_bshd(kv.v);
      return kv;
    } else {
      return {k, v};
    }
  }
  gqa::head_map plan(const gqa::tensor_view<const float>& q, const gqa::tensor_view<const float>& k) {
    rec.map = inner.plan(q, k);
    return rec.map;
  }
  void finish(const gqa::tensor_view<float>& o, const gqa::head_map& m, const gqa::attention_options& opt) {
    if constexpr (std::is_same_v<P, gqa::pgqa_policy>) {
      rec.o_core = copy_bshd(o);
      rec.pgqa_call = inner.calls();
      inner.finish(o, m, opt);
    }
  }
};

}  // namespace detail

/// gqa::forward(p, ...) that also returns what backward() needs (o is BSHD, as everywhere in this example).
template <class P>
saved_forward<P> forward_train(P& p, gqa::tensor_view<const float> q, gqa::tensor_view<const float> k,
                               gqa::tensor_view<const float> v, gqa::tensor_view<float> o, gqa::attention_options opt) {
  saved_forward<P> saved;
  saved.lse.resize(static_cast<std::size_t>(q.b * q.h * q.s));
  opt.lse = saved.lse;
  detail::recorder<P> rec{p, saved};
  gqa::forward(rec, q, k, v, o, opt);
  return saved;
}

/// The gradients of the forward_train() call that returned `saved`: dq, dk, dv like q, k, v (WGQA: the
/// per-head K/V, through the combination), from dout = ∂L/∂o; `p` is a policy with the forward's options
/// and weights. Returns WGQA's weight gradient (empty for the other policies). Default scale 1/√d.
template <class P>
weight_gradient backward(P& p, const saved_forward<P>& saved, gqa::tensor_view<const float> q,
                         gqa::tensor_view<const float> k, gqa::tensor_view<const float> v, gqa::tensor_view<const float> o,
                         gqa::tensor_view<const float> dout, gqa::tensor_view<float> dq, gqa::tensor_view<float> dk,
                         gqa::tensor_view<float> dv, const gqa::attention_options&) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(q.d));
  weight_gradient wg;
  gqa::tensor_view<const float> o_core = o, d_core = dout;
  std::vector<float> d_buf;
  if constexpr (std::is_same_v<P, gqa::pgqa_policy>) {  // through the perturbation to the core's output
    d_buf = detail::copy_bshd(dout);
    const auto d = gqa::bshd(d_buf.data(), o.b, o.s, o.h, o.d);
    o_core = gqa::bshd<const float>(saved.o_core.data(), o.b, o.s, o.h, o.d);
    pgqa_backward(o_core, d, saved.map.hkv(), p.options().seed, p.options().layer, saved.pgqa_call);
    d_core = d;
  }
  if constexpr (std::is_same_v<P, gqa::wgqa_policy>) {  // the core saw the combined heads
    const gqa::index_t g = saved.map.hkv();
    const auto kc = gqa::bshd<const float>(saved.k.data(), k.b, k.s, g, k.d);
    const auto vc = gqa::bshd<const float>(saved.v.data(), v.b, v.s, g, v.d);
    std::vector<float> dkc(saved.k.size()), dvc(saved.v.size());
    attend_backward(q, kc, vc, o_core, d_core, saved.lse, dq, gqa::bshd(dkc.data(), k.b, k.s, g, k.d),
                    gqa::bshd(dvc.data(), v.b, v.s, g, v.d), saved.map, scale);
    wgqa_backward(p.weights().kind, p.weights().k, k, gqa::bshd<const float>(dkc.data(), k.b, k.s, g, k.d), dk, wg.k);
    wgqa_backward(p.weights().kind, p.weights().v, v, gqa::bshd<const float>(dvc.data(), v.b, v.s, g, v.d), dv, wg.v);
  } else {
    attend_backward(q, k, v, o_core, d_core, saved.lse, dq, dk, dv, saved.map, scale);
  }
  return wg;
}

}  // namespace uptrain::interim
