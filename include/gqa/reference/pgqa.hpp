// gqa/reference/pgqa.hpp: a literal transcription of PGQA's noise step (the authors'
// pgqa.py; docs/variants.md, "PGQA") in double, for tests.
// Shares nothing with gqa/variants/pgqa.hpp except the documented draw R[i][n] = to_unit_float(hash(seed,
// {layer, call, g, i, n})) (Note [PGQA noise]). Plain loops, materialised tensors, no validation.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../config.hpp"
#include "../random.hpp"

GQA_BEGIN_NAMESPACE
namespace reference {

/// The U[0,1) draw R[i][n] of group g (before the diagonal is zeroed), as documented in Note [PGQA noise].
inline double pgqa_uniform(std::uint64_t seed, std::uint64_t layer, std::uint64_t call, index_t g, index_t i,
                           index_t n) {
  return static_cast<double>(random::to_unit_float(random::hash(
      seed, {layer, call, static_cast<std::uint64_t>(g), static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(n)})));
}

/// Row i of group g's standardised noise Z (N = n_flat values): R drawn, R[i][i] = 0 when i < min(s, N),
/// then (R − ρμ)/ρσ with the unbiased ρσ (1 if 0).
inline std::vector<double> pgqa_noise_row(std::uint64_t seed, std::uint64_t layer, std::uint64_t call, index_t g,
                                          index_t i, index_t s, index_t n_flat) {
  std::vector<double> r(static_cast<std::size_t>(n_flat));
  for (index_t n = 0; n < n_flat; ++n) r[static_cast<std::size_t>(n)] = pgqa_uniform(seed, layer, call, g, i, n);
  if (i < std::min(s, n_flat)) r[static_cast<std::size_t>(i)] = 0.0;
  double rmu = 0.0;
  for (const double v : r) rmu += v;
  rmu /= static_cast<double>(n_flat);
  double rvar = 0.0;
  for (const double v : r) rvar += (v - rmu) * (v - rmu);
  double rsd = std::sqrt(rvar / static_cast<double>(n_flat - 1));
  if (rsd == 0.0) rsd = 1.0;
  for (double& v : r) v = (v - rmu) / rsd;
  return r;
}

/// The noise step for the whole output: `o` is the attention output laid out [b][p][hq][dv] (as
/// reference::attention_result::o); hq/hkv uniform contiguous groups of s heads. Returns O' in the same
/// layout. Per group: O_g (B, s, P, d) -> X (B, s, N) -> μ, σ (unbiased) per row; R (s, N) drawn, R[i][i] = 0
/// for i < min(s, N); ρμ, ρσ per row (ρσ := 1 if 0); Z = (R − ρμ)/ρσ; noise = Z·σ + μ; X' = X − noise.
inline std::vector<double> pgqa(const std::vector<double>& o, index_t b, index_t p, index_t hq, index_t dv, index_t hkv,
                                std::uint64_t seed, std::uint64_t layer, std::uint64_t call) {
  const index_t s = hq / hkv, n_flat = p * dv;
  auto at = [&](index_t ib, index_t t, index_t h, index_t c) {
    return static_cast<std::size_t>(((ib * p + t) * hq + h) * dv + c);
  };
  std::vector<double> out(o.size());
  for (index_t g = 0; g < hkv; ++g) {
    // X = O_g.view(B, s, N), N = P·d, n = t·d + c.
    std::vector<std::vector<std::vector<double>>> x(
        static_cast<std::size_t>(b), std::vector<std::vector<double>>(static_cast<std::size_t>(s),
                                                                       std::vector<double>(static_cast<std::size_t>(n_flat))));
    for (index_t ib = 0; ib < b; ++ib)
      for (index_t i = 0; i < s; ++i)
        for (index_t t = 0; t < p; ++t)
          for (index_t c = 0; c < dv; ++c)
            x[static_cast<std::size_t>(ib)][static_cast<std::size_t>(i)][static_cast<std::size_t>(t * dv + c)] =
                o[at(ib, t, g * s + i, c)];
    // R (s, N), shared by the batch; the "diagonal" zeroed; standardised per row.
    std::vector<std::vector<double>> z;
    for (index_t i = 0; i < s; ++i) z.push_back(pgqa_noise_row(seed, layer, call, g, i, s, n_flat));
    for (index_t ib = 0; ib < b; ++ib)
      for (index_t i = 0; i < s; ++i) {
        const auto& row = x[static_cast<std::size_t>(ib)][static_cast<std::size_t>(i)];
        double mu = 0.0;
        for (const double v : row) mu += v;
        mu /= static_cast<double>(n_flat);
        double var = 0.0;
        for (const double v : row) var += (v - mu) * (v - mu);
        const double sigma = std::sqrt(var / static_cast<double>(n_flat - 1));
        for (index_t t = 0; t < p; ++t)
          for (index_t c = 0; c < dv; ++c) {
            const index_t n = t * dv + c;
            const double noise = z[static_cast<std::size_t>(i)][static_cast<std::size_t>(n)] * sigma + mu;
            out[at(ib, t, g * s + i, c)] = row[static_cast<std::size_t>(n)] - noise;
          }
      }
  }
  return out;
}

/// ∂L/∂X of pgqa() for L = Σ dout ∘ X', X = o, with the noise Z held fixed (R has no gradient) and the
/// gradient flowing through the row statistics μ and σ: per (sample, head) row of N = p·dv values,
///   ∂L/∂X_n = g_n − (1/N)·Σ_m g_m − (X_n − μ)/((N − 1)·σ) · Σ_m g_m·Z_m,   g = dout's row,
/// from X' = X − μ − σ·Z, ∂μ/∂X_n = 1/N, ∂σ/∂X_n = (X_n − μ)/((N − 1)σ). A constant row (σ = 0, where σ
/// is not differentiable) takes the σ term as 0. Same layout and arguments as pgqa().
inline std::vector<double> pgqa_backward(const std::vector<double>& o, const std::vector<double>& dout, index_t b,
                                         index_t p, index_t hq, index_t dv, index_t hkv, std::uint64_t seed,
                                         std::uint64_t layer, std::uint64_t call) {
  const index_t s = hq / hkv, n_flat = p * dv;
  auto at = [&](index_t ib, index_t t, index_t h, index_t c) {
    return static_cast<std::size_t>(((ib * p + t) * hq + h) * dv + c);
  };
  std::vector<double> dx(o.size());
  for (index_t g = 0; g < hkv; ++g)
    for (index_t i = 0; i < s; ++i) {
      const std::vector<double> z = pgqa_noise_row(seed, layer, call, g, i, s, n_flat);
      const index_t h = g * s + i;
      for (index_t ib = 0; ib < b; ++ib) {
        double mu = 0.0, gsum = 0.0, gz = 0.0;
        for (index_t t = 0; t < p; ++t)
          for (index_t c = 0; c < dv; ++c) {
            mu += o[at(ib, t, h, c)];
            gsum += dout[at(ib, t, h, c)];
            gz += dout[at(ib, t, h, c)] * z[static_cast<std::size_t>(t * dv + c)];
          }
        mu /= static_cast<double>(n_flat);
        double var = 0.0;
        for (index_t t = 0; t < p; ++t)
          for (index_t c = 0; c < dv; ++c) var += (o[at(ib, t, h, c)] - mu) * (o[at(ib, t, h, c)] - mu);
        const double sigma = std::sqrt(var / static_cast<double>(n_flat - 1));
        for (index_t t = 0; t < p; ++t)
          for (index_t c = 0; c < dv; ++c) {
            const double dsigma = sigma > 0.0 ? (o[at(ib, t, h, c)] - mu) / (static_cast<double>(n_flat - 1) * sigma) : 0.0;
            dx[at(ib, t, h, c)] = dout[at(ib, t, h, c)] - gsum / static_cast<double>(n_flat) - dsigma * gz;
          }
      }
    }
  return dx;
}

}  // namespace reference
GQA_END_NAMESPACE
