// examples/uptrain/tests/attention_test.cpp: the attention layer of every scheme (float, gqa::forward and
// the backward attention.cpp uses) against a double-precision reference layer written here from the
// definitions, with gqa's naive references for PGQA's noise: forward values, and every gradient (input,
// Q/K/V/O projections, WGQA weights) against central finite differences of the reference. KDGQA and DGQA
// are differentiated through the allocation the forward chose (it has no gradient). Also the MHA
// conversions (mean pool, first head, SQA's pooled queries), the patch layout and a whole-model gradient
// check.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include <gqa/reference/pgqa.hpp>

#include "attention.hpp"
#include "finite_differences.hpp"
#include "model.hpp"
#include "protocol.hpp"

namespace uptrain {
namespace {

using dmat = matrix<double>;
using test::numeric_gradient;

constexpr index batch = 2, tokens = 5, width = 16, heads = 4;  // d = 4

/// A layer of scheme `s` with weights large enough (std 0.4) that attention is far from uniform.
attention_layer make_layer(const scheme& s) {
  attention_layer a(s.attn, 11, 3);
  std::uint64_t key = 0;
  for (linear<float>* l : {&a.q, &a.k, &a.v, &a.o}) {
    init_truncated_normal(l->w.value, 0.4, 5, ++key);
    init_truncated_normal(l->b.value, 0.1, 6, key);
  }
  if (s.attn.kind == grouping::wgqa) {
    init_truncated_normal(a.mix_k.value, 0.5, 7, 1);
    init_truncated_normal(a.mix_v.value, 0.5, 7, 2);
  }
  return a;
}

/// The reference: the same layer in double, from the definitions, with the head map fixed to `map`
/// (KDGQA/DGQA: the one the float forward chose) and PGQA's draw fixed to call `call`.
struct reference_layer {
  attention_spec spec;
  dmat wq, bq, wk, bk, wv, bv, wo, bo, mk, mv;
  std::vector<gqa::index_t> kv_of;  // query head -> KV head
  std::uint64_t seed = 0, layer = 0, call = 0;

  dmat forward(const dmat& x) const {
    const index d = spec.head_dim(), hq = spec.q_heads, hkv = spec.kv_heads, hp = spec.kv_proj_heads();
    auto project = [&](const dmat& w, const dmat& b) {
      dmat y = x * w.transpose();
      y.rowwise() += b.row(0);
      return y;
    };
    const dmat q = project(wq, bq);
    dmat k = project(wk, bk), v = project(wv, bv);
    if (spec.kind == grouping::wgqa) {  // K̃_g = Σ_{j∈g} w_j ⊙ K_j
      const index s = hp / hkv;
      auto combine = [&](const dmat& per_head, const dmat& w) {
        dmat out = dmat::Zero(per_head.rows(), hkv * d);
        for (index j = 0; j < hp; ++j)
          for (index c = 0; c < d; ++c) {
            const double wj = spec.wgqa_kind == gqa::wgqa_kind::scalar ? w(0, j) : w(j, c);
            out.col((j / s) * d + c) += wj * per_head.col(j * d + c);
          }
        return out;
      };
      k = combine(k, mk);
      v = combine(v, mv);
    }
    std::vector<double> o(static_cast<std::size_t>(x.rows() * hq * d), 0.0);  // [b][t][h][c]
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    for (index b = 0; b < batch; ++b)
      for (index h = 0; h < hq; ++h) {
        const index g = kv_of[static_cast<std::size_t>(h)];
        for (index i = 0; i < tokens; ++i) {
          std::vector<double> p(tokens);
          double m = -1e300, sum = 0;
          for (index j = 0; j < tokens; ++j) {
            p[static_cast<std::size_t>(j)] = scale * q.row(b * tokens + i).segment(h * d, d).dot(k.row(b * tokens + j).segment(g * d, d));
            m = std::max(m, p[static_cast<std::size_t>(j)]);
          }
          for (double& e : p) sum += (e = std::exp(e - m));
          for (index j = 0; j < tokens; ++j)
            for (index c = 0; c < d; ++c)
              o[static_cast<std::size_t>(((b * tokens + i) * hq + h) * d + c)] += p[static_cast<std::size_t>(j)] / sum * v(b * tokens + j, g * d + c);
        }
      }
    if (spec.kind == grouping::pgqa) o = gqa::reference::pgqa(o, batch, tokens, hq, d, hkv, seed, layer, call);
    const dmat om = Eigen::Map<const dmat>(o.data(), x.rows(), hq * d);
    dmat y = om * wo.transpose();
    y.rowwise() += bo.row(0);
    return y;
  }
};

reference_layer reference_of(const attention_layer& a) {
  reference_layer r;
  r.spec = a.spec();
  r.wq = a.q.w.value.cast<double>();
  r.bq = a.q.b.value.cast<double>();
  r.wk = a.k.w.value.cast<double>();
  r.bk = a.k.b.value.cast<double>();
  r.wv = a.v.w.value.cast<double>();
  r.bv = a.v.b.value.cast<double>();
  r.wo = a.o.w.value.cast<double>();
  r.bo = a.o.b.value.cast<double>();
  r.mk = a.mix_k.value.cast<double>();
  r.mv = a.mix_v.value.cast<double>();
  const gqa::head_map map = a.last_allocation().empty()
                                ? gqa::head_map::uniform(r.spec.q_heads, r.spec.kv_heads)
                                : gqa::head_map::from_allocation(a.last_allocation());
  r.kv_of.assign(map.kv_of_q().begin(), map.kv_of_q().end());
  r.seed = a.seed;
  r.layer = a.layer;
  r.call = a.pgqa_calls - 1;  // the forward just made
  return r;
}

/// The float analytic gradient agrees with the double numeric one, on the entries that were perturbed,
/// to 2e-4 of the largest numeric entry (float rounding of the layer's ~1e-6 relative error, amplified
/// by sums over tokens and heads), or of 0.05 when all are smaller: the K bias's gradient is exactly 0
/// (adding a vector to every key adds the same q·b to a whole score row, which softmax ignores), and its
/// float value is the rounding of sums of terms the size of the other gradients.
void expect_gradient(const matrix<float>& analytic, const dmat& numeric, index stride, const std::string& what) {
  ASSERT_EQ(analytic.rows(), numeric.rows()) << what;
  ASSERT_EQ(analytic.cols(), numeric.cols()) << what;
  const double scale = std::max(0.05, numeric.cwiseAbs().maxCoeff());
  double worst = 0;
  for (index i = 0; i < numeric.size(); i += stride) worst = std::max(worst, std::fabs(analytic.data()[i] - numeric.data()[i]));
  EXPECT_LE(worst, 2e-4 * scale) << what << ": largest |analytic − numeric| " << worst << " of max |gradient| " << scale;
}

std::vector<scheme> layer_schemes() {
  std::vector<scheme> out;
  for (const scheme& s : all_schemes(width, heads, 2, 1))
    if (s.group != "conversion" && s.id != "wgqa-scalar-rand" && s.id != "wgqa-col-rand") out.push_back(s);
  return out;
}

}  // namespace

void PrintTo(const scheme& s, std::ostream* os) { *os << s.id; }

namespace {

class attention_gradients : public ::testing::TestWithParam<scheme> {};

TEST_P(attention_gradients, match_a_double_reference_and_finite_differences) {
  const scheme& s = GetParam();
  attention_layer layer = make_layer(s);
  matrix<float> x(batch * tokens, width);
  init_truncated_normal(x, 1.0, 8, 1);
  x.row(3) *= 3.0f;  // uneven key norms, so KDGQA's allocation is not uniform
  matrix<float> r(batch * tokens, width);
  init_truncated_normal(r, 1.0, 8, 2);

  matrix<float> y, dx;
  layer.forward(x, y, {true, 0, tokens});
  layer.backward(r, dx);
  reference_layer ref = reference_of(layer);
  if (s.attn.kind == grouping::kdgqa || s.attn.kind == grouping::dgqa) {
    const auto& a = layer.last_allocation();
    ASSERT_EQ(static_cast<index>(a.size()), s.attn.kv_heads);
  }

  dmat xd = x.cast<double>();
  const dmat rd = r.cast<double>();
  const dmat y_ref = ref.forward(xd);
  EXPECT_LE((y.cast<double>() - y_ref).cwiseAbs().maxCoeff(), 2e-5 * std::max(1.0, y_ref.cwiseAbs().maxCoeff())) << "forward";

  auto loss = [&] { return ref.forward(xd).cwiseProduct(rd).sum(); };
  expect_gradient(dx, numeric_gradient(xd, loss), 1, "dx");
  const std::pair<const char*, std::pair<param<float>*, dmat*>> params[] = {
      {"dWq", {&layer.q.w, &ref.wq}}, {"dbq", {&layer.q.b, &ref.bq}}, {"dWk", {&layer.k.w, &ref.wk}},
      {"dbk", {&layer.k.b, &ref.bk}}, {"dWv", {&layer.v.w, &ref.wv}}, {"dbv", {&layer.v.b, &ref.bv}},
      {"dWo", {&layer.o.w, &ref.wo}}, {"dbo", {&layer.o.b, &ref.bo}}};
  for (const auto& [name, pr] : params) expect_gradient(pr.first->grad, numeric_gradient(*pr.second, loss, 3), 3, name);
  if (s.attn.kind == grouping::wgqa) {
    expect_gradient(layer.mix_k.grad, numeric_gradient(ref.mk, loss), 1, "dweights_k");
    expect_gradient(layer.mix_v.grad, numeric_gradient(ref.mv, loss), 1, "dweights_v");
  }
}

INSTANTIATE_TEST_SUITE_P(every_scheme, attention_gradients, ::testing::ValuesIn(layer_schemes()),
                         [](const ::testing::TestParamInfo<scheme>& info) {
                           std::string n = info.param.id;
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

TEST(attention_layer, kdgqa_idle_kv_heads_get_zero_gradient) {
  // KDGQA with 4 KV heads: min-max scaling gives the smallest-norm head no queries before the fix-up, and
  // a head with no queries must get exactly zero K/V gradient.
  const scheme s = all_schemes(width, heads, 4, 1)[3];
  ASSERT_EQ(s.attn.kind, grouping::kdgqa);
  for (std::uint64_t trial = 0; trial < 20; ++trial) {
    attention_layer layer = make_layer(s);
    matrix<float> x(batch * tokens, width), r(batch * tokens, width), y, dx;
    init_truncated_normal(x, 1.0, 9, trial);
    init_truncated_normal(r, 1.0, 10, trial);
    layer.forward(x, y, {true, 0, tokens});
    layer.backward(r, dx);
    const std::vector<int>& a = layer.last_allocation();
    for (std::size_t g = 0; g < a.size(); ++g)
      if (a[g] == 0) {
        const index d = s.attn.head_dim();
        EXPECT_EQ(layer.k.w.grad.middleRows(static_cast<index>(g) * d, d).cwiseAbs().maxCoeff(), 0.0f);
        EXPECT_EQ(layer.v.w.grad.middleRows(static_cast<index>(g) * d, d).cwiseAbs().maxCoeff(), 0.0f);
        return;
      }
  }
  GTEST_SKIP() << "no allocation with an idle KV head in 20 trials";
}

TEST(conversion, mean_pool_first_head_and_sqa_queries) {
  const vit_config cfg{width, heads, 1, 2};
  vit mha(cfg, mha_spec(width, heads), 3);
  init_truncated_normal(mha.blocks[0].attn.k.b.value, 0.5, 4, 1);
  const attention_layer& src = mha.blocks[0].attn;
  const index d = width / heads;
  for (const scheme& s : all_schemes(width, heads, 2, 1)) {
    SCOPED_TRACE(s.id);
    const vit out = convert(mha, s, 5);
    const attention_layer& a = out.blocks[0].attn;
    EXPECT_EQ(a.spec().kind, s.attn.kind);
    EXPECT_EQ(out.blocks[0].fc1.w.value, mha.blocks[0].fc1.w.value);
    const index s_kv = heads / s.attn.kv_heads, s_q = heads / s.attn.q_heads;
    if (s.conv == conversion::mean_pool) {
      const matrix<float> expect = 0.5f * (src.k.w.value.middleRows(2 * d, d) + src.k.w.value.middleRows(3 * d, d));
      if (s_kv == 2) {
        EXPECT_LE((a.k.w.value.middleRows(d, d) - expect).cwiseAbs().maxCoeff(), 1e-7);
      }
      matrix<float> mean_b = matrix<float>::Zero(1, d);
      for (index j = 0; j < s_kv; ++j) mean_b += src.k.b.value.middleCols(j * d, d) / static_cast<float>(s_kv);
      EXPECT_LE((a.k.b.value.leftCols(d) - mean_b).cwiseAbs().maxCoeff(), 1e-6);
    }
    if (s.conv == conversion::first_head) {
      EXPECT_EQ(a.k.w.value, src.k.w.value.topRows(d));
      EXPECT_EQ(a.v.b.value, src.v.b.value.leftCols(d));
    }
    if (s.conv == conversion::per_head) {
      EXPECT_EQ(a.k.w.value, src.k.w.value);
      if (!s.wgqa_random_init) {
        EXPECT_EQ(a.mix_k.value(0, 0), 1.0f / static_cast<float>(s_kv));
      }
    }
    if (s.attn.q_heads < heads) {
      // Query head 0 is the mean of heads [0, s_q); its output block the sum of theirs.
      matrix<float> q0 = matrix<float>::Zero(d, width), o0 = matrix<float>::Zero(width, d);
      for (index j = 0; j < s_q; ++j) {
        q0 += src.q.w.value.middleRows(j * d, d) / static_cast<float>(s_q);
        o0 += src.o.w.value.middleCols(j * d, d);
      }
      EXPECT_LE((a.q.w.value.topRows(d) - q0).cwiseAbs().maxCoeff(), 1e-6);
      EXPECT_LE((a.o.w.value.leftCols(d) - o0).cwiseAbs().maxCoeff(), 1e-6);
    } else {
      EXPECT_EQ(a.q.w.value, src.q.w.value);
    }
  }
}

TEST(conversion, mean_pooled_gqa_of_equal_heads_is_the_mha_model) {
  // When every head of a group has the same K/V projection, mean pooling changes nothing: the GQA
  // model's logits equal the MHA model's.
  const vit_config cfg{width, heads, 2, 2};
  vit mha(cfg, mha_spec(width, heads), 3);
  const index d = width / heads;
  for (block& b : mha.blocks)
    for (linear<float>* l : {&b.attn.k, &b.attn.v})
      for (index j = 1; j < heads; j += 2) {
        l->w.value.middleRows(j * d, d) = l->w.value.middleRows((j - 1) * d, d);
        l->b.value.middleCols(j * d, d) = l->b.value.middleCols((j - 1) * d, d);
      }
  image_set set;
  set.images.resize(3 * 784);
  for (std::size_t i = 0; i < set.images.size(); ++i) set.images[i] = static_cast<std::uint8_t>((i * 37) % 256);
  set.labels = {1, 2, 3};
  const std::uint32_t ids[] = {0, 1, 2};
  const matrix<float> before = mha.forward(set, ids, {});
  vit gqa_model = convert(mha, all_schemes(width, heads, 4, 1)[1], 1);
  ASSERT_EQ(gqa_model.blocks[0].attn.spec().kind, grouping::gqa);
  const matrix<float> after = gqa_model.forward(set, ids, {});
  EXPECT_LE((before - after).cwiseAbs().maxCoeff(), 1e-5);
}

TEST(patchify, layout) {
  image_set s;
  s.images.resize(2 * 784);
  for (std::size_t i = 0; i < s.images.size(); ++i) s.images[i] = static_cast<std::uint8_t>(i % 251);
  s.labels = {0, 1};
  const std::uint32_t ids[] = {1, 0};
  const matrix<float> p = patchify(s, ids);
  ASSERT_EQ(p.rows(), 2 * 49);
  ASSERT_EQ(p.cols(), 16);
  // Patch (row 2, column 5) of image 1 (first in ids), pixel (1, 3) within it: image row 9, column 23.
  const std::size_t pixel = 784 + 9 * 28 + 23;
  EXPECT_FLOAT_EQ(p(2 * 7 + 5, 1 * 4 + 3), (static_cast<float>(s.images[pixel]) / 255.0f - pixel_mean) / pixel_std);
  EXPECT_FLOAT_EQ(p(49, 0), (static_cast<float>(s.images[0]) / 255.0f - pixel_mean) / pixel_std);
}

TEST(model, whole_vit_gradient_matches_finite_differences) {
  // The model's backward chains the layers correctly: a few parameters of every kind, float central
  // differences (h = 1e-2 on a smooth loss) at a loose tolerance.
  const vit_config cfg{width, heads, 2, 2};
  for (const scheme& s : {scheme{"gqa", "", "", all_schemes(width, heads, 2, 1)[1].attn}, scheme{"mha", "", "", mha_spec(width, heads)}}) {
    SCOPED_TRACE(s.id);
    vit model(cfg, s.attn, 7);
    std::uint64_t key = 0;
    for (param<float>* p : model.parameters()) init_truncated_normal(p->value, 0.3, 8, ++key);
    image_set set;
    set.images.resize(4 * 784);
    for (std::size_t i = 0; i < set.images.size(); ++i) set.images[i] = static_cast<std::uint8_t>((i * 53) % 256);
    set.labels = {1, 7, 3, 0};
    const std::uint32_t ids[] = {0, 1, 2, 3};
    softmax_cross_entropy<float> ce;
    auto loss = [&] { return ce.forward(model.forward(set, ids, {true, 0, 0}), set.labels); };
    model.zero_grad();
    loss();
    matrix<float> dl;
    ce.backward(set.labels, dl);
    model.backward(dl);
    for (param<float>* p : model.parameters()) {
      for (index i = 0; i < p->value.size(); i += std::max<index>(1, p->value.size() / 3)) {
        const float keep = p->value.data()[i], h = 1e-2f;
        p->value.data()[i] = keep + h;
        const double up = loss();
        p->value.data()[i] = keep - h;
        const double down = loss();
        p->value.data()[i] = keep;
        const double numeric = (up - down) / (2.0 * h);
        EXPECT_NEAR(p->grad.data()[i], numeric, 2e-3 + 2e-2 * std::fabs(numeric)) << "parameter entry " << i;
      }
    }
  }
}

}  // namespace
}  // namespace uptrain
