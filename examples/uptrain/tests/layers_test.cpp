// examples/uptrain/tests/layers_test.cpp: every dense layer's backward against central finite differences
// in double (linear, LayerNorm, GELU, softmax cross-entropy), and AdamW's first step and the schedule.
// Loss for a layer with output y: L = Σ R ⊙ y with a fixed random R, so dL/dy = R.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "finite_differences.hpp"
#include "layers.hpp"
#include "optimiser.hpp"

namespace uptrain {
namespace {

using mat = matrix<double>;
using test::numeric_gradient;

mat random_matrix(index rows, index cols, std::uint64_t key, double scale = 1.0) {
  mat m(rows, cols);
  init_truncated_normal(m, scale, 42, key);
  return m;
}

/// Analytic and numeric gradients agree to 1e-7 relative to the largest entry.
void expect_close(const mat& analytic, const mat& numeric, const char* what) {
  ASSERT_EQ(analytic.rows(), numeric.rows()) << what;
  ASSERT_EQ(analytic.cols(), numeric.cols()) << what;
  const double scale = std::max(1.0, numeric.cwiseAbs().maxCoeff());
  EXPECT_LE((analytic - numeric).cwiseAbs().maxCoeff(), 1e-7 * scale) << what;
}

TEST(layers, linear_backward_matches_finite_differences) {
  linear<double> lin(7, 5);
  lin.w.value = random_matrix(5, 7, 1);
  lin.b.value = random_matrix(1, 5, 2);
  mat x = random_matrix(6, 7, 3);
  const mat r = random_matrix(6, 5, 4);
  auto loss = [&] {
    mat y;
    lin.forward(x, y);
    return y.cwiseProduct(r).sum();
  };
  mat dx;
  lin.backward(x, r, &dx);
  expect_close(dx, numeric_gradient(x, loss), "dx");
  expect_close(lin.w.grad, numeric_gradient(lin.w.value, loss), "dW");
  expect_close(lin.b.grad, numeric_gradient(lin.b.value, loss), "db");
}

TEST(layers, layer_norm_backward_matches_finite_differences) {
  layer_norm<double> ln(9);
  ln.gamma.value = random_matrix(1, 9, 5);
  ln.beta.value = random_matrix(1, 9, 6);
  mat x = random_matrix(4, 9, 7, 3.0);
  x.row(2).array() += 10.0;  // an offset row: the mean must cancel exactly
  const mat r = random_matrix(4, 9, 8);
  auto loss = [&] {
    mat y;
    ln.forward(x, y);
    return y.cwiseProduct(r).sum();
  };
  loss();  // forward saves x̂ and 1/σ for the backward
  mat dx;
  ln.backward(r, dx);
  expect_close(dx, numeric_gradient(x, loss), "dx");
  expect_close(ln.gamma.grad, numeric_gradient(ln.gamma.value, loss), "dgamma");
  expect_close(ln.beta.grad, numeric_gradient(ln.beta.value, loss), "dbeta");
  // Forward: each row of x̂ has mean 0 and (biased) variance 1 up to ε.
  mat y;
  ln.forward(x, y);
  for (index i = 0; i < x.rows(); ++i) {
    EXPECT_NEAR(ln.xhat.row(i).mean(), 0.0, 1e-12);
    EXPECT_NEAR(ln.xhat.row(i).squaredNorm() / 9.0, 1.0, 1e-5);
  }
}

TEST(layers, gelu_matches_erf_form_and_finite_differences) {
  mat x = random_matrix(5, 8, 9, 2.0);
  x(0, 0) = 0.0;
  x(0, 1) = -6.0;
  x(0, 2) = 6.0;
  const mat r = random_matrix(5, 8, 10);
  mat y;
  gelu<double>::forward(x, y);
  for (index i = 0; i < x.size(); ++i) {
    const double v = x.data()[i];
    EXPECT_NEAR(y.data()[i], 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))), 1e-15 * std::max(1.0, std::fabs(v)));
  }
  auto loss = [&] {
    mat out;
    gelu<double>::forward(x, out);
    return out.cwiseProduct(r).sum();
  };
  mat dx;
  gelu<double>::backward(x, r, dx);
  expect_close(dx, numeric_gradient(x, loss), "dx");
}

TEST(layers, softmax_cross_entropy_matches_finite_differences) {
  mat z = random_matrix(6, 10, 11, 3.0);
  z(1, 4) = 500.0;  // large logits must not overflow
  const std::vector<std::uint8_t> labels{3, 4, 0, 9, 9, 1};
  softmax_cross_entropy<double> ce;
  auto loss = [&] { return ce.forward(z, labels); };
  const double l = loss();
  double expect = 0;
  for (index i = 0; i < z.rows(); ++i) {
    const double m = z.row(i).maxCoeff();
    expect += std::log((z.row(i).array() - m).exp().sum()) + m - z(i, labels[static_cast<std::size_t>(i)]);
  }
  EXPECT_NEAR(l, expect / 6.0, 1e-12);
  EXPECT_GE(ce.correct, 1);  // row 1 predicts its label 4
  mat dz;
  ce.backward(labels, dz);
  expect_close(dz, numeric_gradient(z, loss), "dlogits");
}

TEST(optimiser, adamw_first_step_and_schedule) {
  // Step 1: m̂ = g and v̂ = g², so θ ← θ(1 − lr·λ) − lr·g/(|g| + ε) for decayed parameters.
  param<float> w(1, 3, true), b(1, 3, false);
  w.value << 1.0f, -2.0f, 0.5f;
  b.value << 1.0f, -2.0f, 0.5f;
  w.grad << 0.1f, -3.0f, 0.0f;
  b.grad = w.grad;
  std::vector<param<float>*> params{&w, &b};
  adamw opt(params, {0.01, 0.9, 0.999, 1e-8, 0.1});
  opt.step(params, 0.01);
  const float lr = 0.01f;
  EXPECT_NEAR(w.value(0), 1.0f * (1 - lr * 0.1f) - lr, 1e-6);
  EXPECT_NEAR(w.value(1), -2.0f * (1 - lr * 0.1f) + lr, 1e-6);
  EXPECT_NEAR(w.value(2), 0.5f * (1 - lr * 0.1f), 1e-6);
  EXPECT_NEAR(b.value(0), 1.0f - lr, 1e-6);  // not decayed
  EXPECT_NEAR(b.value(2), 0.5f, 1e-7);

  EXPECT_DOUBLE_EQ(scheduled_lr(1.0, 0, 10, 100), 0.1);
  EXPECT_DOUBLE_EQ(scheduled_lr(1.0, 9, 10, 100), 1.0);
  EXPECT_DOUBLE_EQ(scheduled_lr(1.0, 10, 10, 100), 1.0);
  EXPECT_NEAR(scheduled_lr(1.0, 55, 10, 100), 0.5, 1e-12);
  EXPECT_NEAR(scheduled_lr(1.0, 100, 10, 100), 0.0, 1e-12);

  w.grad << 3.0f, 4.0f, 0.0f;
  b.grad << 0.0f, 0.0f, 0.0f;
  EXPECT_NEAR(clip_gradients(params, 1.0), 5.0, 1e-6);
  EXPECT_NEAR(w.grad.norm(), 1.0f, 1e-6);
}

}  // namespace
}  // namespace uptrain
