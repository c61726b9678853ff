// examples/uptrain/optimiser.hpp: AdamW (Loshchilov & Hutter: decoupled weight decay), the learning-rate
// schedule (linear warm-up, then cosine decay to zero) and global gradient-norm clipping.
#pragma once

#include <cmath>
#include <vector>

#include "layers.hpp"

namespace uptrain {

struct adamw_options {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.05;
};

/// One AdamW state per parameter, in the order of the list it is built from (vit::parameters()).
/// Step t (1-based), gradient g, for each parameter θ:
///   m ← β1 m + (1 − β1) g,   v ← β2 v + (1 − β2) g²,   m̂ = m / (1 − β1ᵗ),   v̂ = v / (1 − β2ᵗ),
///   θ ← θ − lr · (m̂ / (√v̂ + ε) + λ θ)      (λ only for parameters marked `decay`).
class adamw {
 public:
  adamw(const std::vector<param<float>*>& params, adamw_options opt) : opt_(opt) {
    for (const param<float>* p : params) {
      m_.push_back(matrix<float>::Zero(p->value.rows(), p->value.cols()));
      v_.push_back(matrix<float>::Zero(p->value.rows(), p->value.cols()));
    }
  }

  void step(const std::vector<param<float>*>& params, double lr) {
    ++t_;
    const double c1 = 1.0 - std::pow(opt_.beta1, static_cast<double>(t_));
    const double c2 = 1.0 - std::pow(opt_.beta2, static_cast<double>(t_));
    const auto b1 = static_cast<float>(opt_.beta1), b2 = static_cast<float>(opt_.beta2);
    for (std::size_t i = 0; i < params.size(); ++i) {
      param<float>& p = *params[i];
      m_[i] = b1 * m_[i] + (1.0f - b1) * p.grad;
      v_[i] = b2 * v_[i] + (1.0f - b2) * p.grad.cwiseAbs2();
      const auto step_size = static_cast<float>(lr / c1);
      const auto denom = (v_[i].array() / static_cast<float>(c2)).sqrt() + static_cast<float>(opt_.eps);
      if (p.decay) p.value *= 1.0f - static_cast<float>(lr * opt_.weight_decay);
      p.value.array() -= step_size * m_[i].array() / denom;
    }
  }

 private:
  adamw_options opt_;
  std::vector<matrix<float>> m_, v_;
  long t_ = 0;
};

/// Learning rate at step `step` (0-based) of `total`: linear warm-up over `warmup` steps to `peak`, then
/// cosine decay to 0 at `total`.
inline double scheduled_lr(double peak, long step, long warmup, long total) {
  if (step < warmup) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const double progress = static_cast<double>(step - warmup) / static_cast<double>(std::max(1L, total - warmup));
  return peak * 0.5 * (1.0 + std::cos(3.141592653589793 * std::min(1.0, progress)));
}

/// Scales every gradient so that their global L2 norm is at most `max_norm`; returns the norm before.
inline double clip_gradients(const std::vector<param<float>*>& params, double max_norm) {
  double sq = 0.0;
  for (const param<float>* p : params) sq += p->grad.cast<double>().squaredNorm();
  const double norm = std::sqrt(sq);
  if (norm > max_norm) {
    const auto s = static_cast<float>(max_norm / norm);
    for (param<float>* p : params) p->grad *= s;
  }
  return norm;
}

}  // namespace uptrain
