// examples/uptrain/layers.hpp: the dense layers of the ViT with hand-written backward passes: linear,
// LayerNorm, GELU and softmax cross-entropy. Templates on the scalar type: the model trains in float, the
// tests check every gradient against central finite differences in double.
// Layout: activations are row-major (rows = batch × tokens, columns = features), as a fused projection
// produces them, so a (rows × heads·d) matrix is exactly gqa's BSHD layout.
#pragma once

#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>

#include <cmath>
#include <cstdint>
#include <span>
#include <string>

#include <gqa/random.hpp>

namespace uptrain {

template <class T>
using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using index = Eigen::Index;

/// A trainable tensor, its gradient, and whether AdamW decays it (weight matrices only; biases, norms,
/// the class token and the position table are not decayed, as in timm's ViT recipe).
template <class T>
struct param {
  matrix<T> value, grad;
  bool decay = false;

  param() = default;
  param(index rows, index cols, bool decay_) : value(matrix<T>::Zero(rows, cols)), grad(matrix<T>::Zero(rows, cols)), decay(decay_) {}
  void zero_grad() { grad.setZero(value.rows(), value.cols()); }
};

/// Fills x with N(0, std²) draws from gqa's counter-based generator keyed by (seed, key): the same
/// values on every platform (std:: distributions differ between standard libraries). Draws beyond two
/// standard deviations are redrawn (the truncated normal timm initialises ViT weights with).
template <class T>
void init_truncated_normal(matrix<T>& x, double std, std::uint64_t seed, std::uint64_t key) {
  gqa::random::stream rng{seed, key};
  for (index i = 0; i < x.size(); ++i) {
    double z;
    do z = rng.next_normal();
    while (std::fabs(z) > 2.0);
    x.data()[i] = static_cast<T>(z * std);
  }
}

/// y = x Wᵀ + b with W (out × in), nn.Linear's layout, so head j of a K or V projection is the row block
/// W[j·d, (j+1)·d) that gqa's conversion helpers (gqa/convert.hpp) pool.
/// Backward: dx = dy W, dW += dyᵀ x, db += Σ_rows dy.
template <class T>
struct linear {
  param<T> w, b;

  linear() = default;
  linear(index in, index out) : w(out, in, true), b(1, out, false) {}
  index in() const { return w.value.cols(); }
  index out() const { return w.value.rows(); }

  void forward(const matrix<T>& x, matrix<T>& y) const {
    y.noalias() = x * w.value.transpose();
    y.rowwise() += b.value.row(0);
  }
  /// Accumulates dW and db; writes dx when asked (nullptr: the input needs no gradient).
  void backward(const matrix<T>& x, const matrix<T>& dy, matrix<T>* dx) {
    w.grad.noalias() += dy.transpose() * x;
    b.grad.row(0) += dy.colwise().sum();
    if (dx) dx->noalias() = dy * w.value;
  }
};

/// LayerNorm over the features of each row: x̂ = (x − μ) / sqrt(σ² + ε) with the biased variance,
/// y = γ ⊙ x̂ + β (PyTorch's nn.LayerNorm, ε = 1e-6 as in timm's ViT). Keeps x̂ and 1/sqrt(σ² + ε) for
/// the backward: with g = dy ⊙ γ, dx = rstd · (g − mean(g) − x̂ ⊙ mean(g ⊙ x̂)) per row,
/// dγ += Σ_rows dy ⊙ x̂, dβ += Σ_rows dy.
template <class T>
struct layer_norm {
  param<T> gamma, beta;
  T eps = T(1e-6);
  matrix<T> xhat;                                  // saved by forward
  Eigen::Matrix<T, Eigen::Dynamic, 1> rstd;        // saved by forward

  layer_norm() = default;
  explicit layer_norm(index dim) : gamma(1, dim, false), beta(1, dim, false) { gamma.value.setOnes(); }

  void forward(const matrix<T>& x, matrix<T>& y) {
    const index n = x.cols();
    xhat.resize(x.rows(), n);
    rstd.resize(x.rows());
    y.resize(x.rows(), n);
    for (index r = 0; r < x.rows(); ++r) {
      const T mu = x.row(r).mean();
      const T var = (x.row(r).array() - mu).square().sum() / T(n);
      rstd(r) = T(1) / std::sqrt(var + eps);
      xhat.row(r) = (x.row(r).array() - mu) * rstd(r);
      y.row(r) = xhat.row(r).cwiseProduct(gamma.value.row(0)) + beta.value.row(0);
    }
  }
  void backward(const matrix<T>& dy, matrix<T>& dx) {
    gamma.grad.row(0) += dy.cwiseProduct(xhat).colwise().sum();
    beta.grad.row(0) += dy.colwise().sum();
    dx.resize(dy.rows(), dy.cols());
    for (index r = 0; r < dy.rows(); ++r) {
      const auto g = (dy.row(r).cwiseProduct(gamma.value.row(0))).eval();
      const T mean_g = g.mean(), mean_gx = g.cwiseProduct(xhat.row(r)).mean();
      dx.row(r) = rstd(r) * (g.array() - mean_g - xhat.row(r).array() * mean_gx).matrix();
    }
  }
};

/// GELU, the exact (erf) form PyTorch and timm use: gelu(x) = x·Φ(x) = x/2 · (1 + erf(x/√2)), whose
/// derivative is Φ(x) + x·φ(x) with φ(x) = exp(−x²/2)/√(2π). Eigen's erf and exp are vectorised for
/// float (std::erf per element cost as much as the MLP's GEMMs).
template <class T>
struct gelu {
  static void forward(const matrix<T>& x, matrix<T>& y) {
    y = (T(0.5) * x.array() * (T(1) + (x.array() * T(M_SQRT1_2)).erf())).matrix();
  }
  static void backward(const matrix<T>& x, const matrix<T>& dy, matrix<T>& dx) {
    const auto v = x.array();
    const auto cdf = T(0.5) * (T(1) + (v * T(M_SQRT1_2)).erf());
    const auto pdf = (T(-0.5) * v.square()).exp() * T(0.3989422804014327);  // 1/√(2π)
    dx = (dy.array() * (cdf + v * pdf)).matrix();
  }
};

/// Mean cross-entropy of the softmax of `logits` (rows = examples) against integer labels:
/// L = (1/B) Σ_b [log Σ_c exp(z_bc) − z_b,y_b], computed with the row max subtracted (no overflow).
/// dL/dz = (softmax(z) − onehot(y)) / B. Also counts correct arg-max predictions (first max wins).
template <class T>
struct softmax_cross_entropy {
  matrix<T> prob;  // saved by forward: softmax(z)
  index correct = 0;

  double forward(const matrix<T>& logits, std::span<const std::uint8_t> labels) {
    prob.resize(logits.rows(), logits.cols());
    double loss = 0.0;
    correct = 0;
    for (index r = 0; r < logits.rows(); ++r) {
      index arg = 0;
      const T m = logits.row(r).maxCoeff(&arg);
      prob.row(r) = (logits.row(r).array() - m).exp();
      const T sum = prob.row(r).sum();
      prob.row(r) /= sum;
      const auto y = static_cast<index>(labels[static_cast<std::size_t>(r)]);
      loss += static_cast<double>(std::log(sum) + m - logits(r, y));
      correct += arg == y;
    }
    return loss / static_cast<double>(logits.rows());
  }
  void backward(std::span<const std::uint8_t> labels, matrix<T>& dlogits) const {
    dlogits = prob / T(prob.rows());
    for (index r = 0; r < prob.rows(); ++r) dlogits(r, labels[static_cast<std::size_t>(r)]) -= T(1) / T(prob.rows());
  }
};

}  // namespace uptrain
