// gqa/reference/wgqa.hpp: literal double-precision transcriptions of WGQA (the authors' t5_WGQA_final.py)
// for tests: the weighted combination of per-head activations, the reference's weight einsums (the fold),
// and the unfolded per-head projection by its definition. Independent of gqa/variants/wgqa.hpp and
// gqa/convert.hpp (kinds are named by string, as in the reference's `weight_row_column`); no validation.
#pragma once

#include <string_view>
#include <vector>

#include "../config.hpp"

GQA_BEGIN_NAMESPACE
namespace reference {

/// The weight of head j at (output channel k, input feature c) for kind "scalar" (w[j]), "col" (w[j·d + k])
/// or "row" (w[j·in + c]).
inline double wgqa_weight_at(std::string_view kind, const std::vector<double>& w, index_t j, index_t k, index_t c,
                             index_t d, index_t in) {
  if (kind == "scalar") return w[static_cast<std::size_t>(j)];
  if (kind == "col") return w[static_cast<std::size_t>(j * d + k)];
  return w[static_cast<std::size_t>(j * in + c)];
}

/// Activations: x is (b, t, h, d) laid out [b][t][h][d]; returns (b, t, g, d) with
/// out[.., gi, k] = Σ_{j in group gi} w_j(k) · x[.., j, k] ("scalar" or "col").
inline std::vector<double> wgqa_combine(const std::vector<double>& x, index_t b, index_t t, index_t h, index_t g,
                                        index_t d, std::string_view kind, const std::vector<double>& w) {
  const index_t s = h / g;
  std::vector<double> out(static_cast<std::size_t>(b * t * g * d), 0.0);
  for (index_t ib = 0; ib < b; ++ib)
    for (index_t it = 0; it < t; ++it)
      for (index_t gi = 0; gi < g; ++gi)
        for (index_t k = 0; k < d; ++k) {
          double acc = 0.0;
          for (index_t j = gi * s; j < gi * s + s; ++j)
            acc += wgqa_weight_at(kind, w, j, k, 0, d, 0) * x[static_cast<std::size_t>(((ib * t + it) * h + j) * d + k)];
          out[static_cast<std::size_t>(((ib * t + it) * g + gi) * d + k)] = acc;
        }
  return out;
}

/// Gradients of wgqa_combine: given x (b, t, h, d) and dout = ∂L/∂out (b, t, g, d), returns
/// ∂L/∂x[.., j, k] = w_j(k)·dout[.., g(j), k] (dx, like x) and ∂L/∂w: scalar Σ_{b,t,k} dout[.., g(j), k]·x[.., j, k]
/// (h values), col Σ_{b,t} dout[.., g(j), k]·x[.., j, k] (h·d values, j·d + k).
struct wgqa_combine_grads {
  std::vector<double> dx, dw;
};
inline wgqa_combine_grads wgqa_combine_backward(const std::vector<double>& x, const std::vector<double>& dout, index_t b,
                                                index_t t, index_t h, index_t g, index_t d, std::string_view kind,
                                                const std::vector<double>& w) {
  const index_t s = h / g;
  wgqa_combine_grads r;
  r.dx.assign(x.size(), 0.0);
  r.dw.assign(w.size(), 0.0);
  for (index_t ib = 0; ib < b; ++ib)
    for (index_t it = 0; it < t; ++it)
      for (index_t j = 0; j < h; ++j)
        for (index_t k = 0; k < d; ++k) {
          const auto xi = static_cast<std::size_t>(((ib * t + it) * h + j) * d + k);
          const double go = dout[static_cast<std::size_t>(((ib * t + it) * g + j / s) * d + k)];
          r.dx[xi] = wgqa_weight_at(kind, w, j, k, 0, d, 0) * go;
          r.dw[static_cast<std::size_t>(kind == "scalar" ? j : j * d + k)] += go * x[xi];
        }
  return r;
}

/// The reference's per-forward weight (t5_WGQA_final.py:222-237): wp is (h·d × in) row-major,
/// viewed (h, d, in); each head block is scaled elementwise (scalar w_j, "nkd,nk->nkd" for col,
/// "nkd,nd->nkd" for row), then summed within each group: returns W̃ (g·d × in).
inline std::vector<double> wgqa_fold(const std::vector<double>& wp, index_t h, index_t g, index_t d, index_t in,
                                     std::string_view kind, const std::vector<double>& w) {
  const index_t s = h / g;
  std::vector<double> scaled(wp.size());
  for (index_t j = 0; j < h; ++j)
    for (index_t k = 0; k < d; ++k)
      for (index_t c = 0; c < in; ++c) {
        const auto e = static_cast<std::size_t>((j * d + k) * in + c);
        scaled[e] = wgqa_weight_at(kind, w, j, k, c, d, in) * wp[e];
      }
  std::vector<double> out(static_cast<std::size_t>(g * d * in), 0.0);
  for (index_t gi = 0; gi < g; ++gi)
    for (index_t j = gi * s; j < gi * s + s; ++j)
      for (index_t e = 0; e < d * in; ++e)
        out[static_cast<std::size_t>(gi * d * in + e)] += scaled[static_cast<std::size_t>(j * d * in + e)];
  return out;
}

/// The unfolded WGQA projection of x (rows × in, row-major) by definition: per head j, K_j = x W_jᵀ + b_j
/// (b empty: no bias), then group heads are combined: scalar Σ w_j K_j, col Σ c_j ⊙ K_j, row
/// Σ x diag(r_j) W_jᵀ (no bias). Returns (rows × g·d).
inline std::vector<double> wgqa_unfolded_projection(const std::vector<double>& x, index_t rows,
                                                    const std::vector<double>& wp, const std::vector<double>& bias,
                                                    index_t h, index_t g, index_t d, index_t in, std::string_view kind,
                                                    const std::vector<double>& w) {
  const index_t s = h / g;
  std::vector<double> out(static_cast<std::size_t>(rows * g * d), 0.0);
  for (index_t r = 0; r < rows; ++r)
    for (index_t gi = 0; gi < g; ++gi)
      for (index_t k = 0; k < d; ++k) {
        double acc = 0.0;
        for (index_t j = gi * s; j < gi * s + s; ++j) {
          if (kind == "row") {
            double kj = 0.0;  // (x diag(r_j) W_jᵀ)[r, k]
            for (index_t c = 0; c < in; ++c)
              kj += x[static_cast<std::size_t>(r * in + c)] * w[static_cast<std::size_t>(j * in + c)] *
                    wp[static_cast<std::size_t>((j * d + k) * in + c)];
            acc += kj;
          } else {
            double kj = bias.empty() ? 0.0 : bias[static_cast<std::size_t>(j * d + k)];  // (x W_jᵀ + b_j)[r, k]
            for (index_t c = 0; c < in; ++c)
              kj += x[static_cast<std::size_t>(r * in + c)] * wp[static_cast<std::size_t>((j * d + k) * in + c)];
            acc += wgqa_weight_at(kind, w, j, k, 0, d, in) * kj;
          }
        }
        out[static_cast<std::size_t>((r * g + gi) * d + k)] = acc;
      }
  return out;
}

}  // namespace reference
GQA_END_NAMESPACE
