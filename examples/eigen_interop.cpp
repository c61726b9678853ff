// examples/eigen_interop.cpp: one GQA self-attention layer where the projections are Eigen matrix
// products and the attention is gqa, with no copies in between: X (seq × model) -> Q, K, V as row-major
// (seq × heads·d) matrices -> gqa::attend on views of them -> O (seq × hq·d) -> output projection.
#include <cmath>
#include <cstdio>

#include <gqa/gqa.hpp>
#include <gqa/interop/eigen.hpp>

using mat = gqa::eigen::row_matrix<float>;

int main() {
  const int seq = 37, model = 96, hq = 8, hkv = 2, d = 12;  // 8 query heads share 2 KV heads
  const mat x = mat::Random(seq, model);
  const mat wq = mat::Random(model, hq * d) / std::sqrt(float(model));
  const mat wk = mat::Random(model, hkv * d) / std::sqrt(float(model));
  const mat wv = mat::Random(model, hkv * d) / std::sqrt(float(model));
  const mat wo = mat::Random(hq * d, model) / std::sqrt(float(hq * d));

  // Projections: plain Eigen. Each row is one token; the heads' vectors sit side by side.
  const mat q = x * wq, k = x * wk, v = x * wv;
  mat o(seq, hq * d);

  // Attention: causal GQA, reading Q/K/V and writing O in place.
  gqa::attention_options opt;
  opt.causal = true;
  gqa::attend(gqa::eigen::input(q, hq, d), gqa::eigen::input(k, hkv, d), gqa::eigen::input(v, hkv, d),
              gqa::eigen::output(o, hq, d), gqa::head_map::uniform(hq, hkv), opt);

  const mat y = o * wo;  // output projection: Eigen again
  std::printf("gqa runs on: %s\n", gqa::runtime_info(opt).to_string().c_str());
  std::printf("x (%d x %d) -> q (%d x %d), k/v (%d x %d) -> o (%d x %d) -> y (%d x %d)\n", seq, model, seq,
              hq * d, seq, hkv * d, seq, hq * d, int(y.rows()), int(y.cols()));

  // Check head 5 (served by KV head 5 / 4 = 1) against Eigen math: softmax(q_h k_gᵀ / sqrt(d) + causal) v_g.
  const int h = 5, g = h / (hq / hkv);
  const auto qh = gqa::eigen::head(gqa::eigen::input(q, hq, d), 0, h);  // (seq × d) Map, no copy
  const auto kg = gqa::eigen::head(gqa::eigen::input(k, hkv, d), 0, g);
  const auto vg = gqa::eigen::head(gqa::eigen::input(v, hkv, d), 0, g);
  Eigen::MatrixXf s = (qh * kg.transpose()) / std::sqrt(float(d));
  for (int i = 0; i < seq; ++i) {
    for (int j = i + 1; j < seq; ++j) s(i, j) = -INFINITY;
    s.row(i).array() = (s.row(i).array() - s.row(i).maxCoeff()).exp();
    s.row(i) /= s.row(i).sum();
  }
  const Eigen::MatrixXf want = s * vg;
  const float err = (want - gqa::eigen::head(gqa::eigen::output(o, hq, d), 0, h)).cwiseAbs().maxCoeff();
  std::printf("head %d vs Eigen softmax(q k^T / sqrt(d)) v: max abs diff %.2e\n", h, double(err));
  return err <= 1e-5f ? 0 : 1;
}
