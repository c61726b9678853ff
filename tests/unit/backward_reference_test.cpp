// backward_reference_test.cpp: the gradients every backward test trusts, checked against central finite
// differences in double on tiny shapes: reference::attention_backward (masks both ways, padding, rows that
// see nothing, unequal, empty and interleaved groups, d_v != d_qk, an explicit scale; the sliding window,
// softcap, ALiBi and sinks with the sinks' own gradient, alone and together), reference::
// pgqa_backward (PGQA's noise with the draw held fixed and the gradient through μ and σ, alone and after
// attention), reference::wgqa_combine_backward (scalar and col weights, alone and through attention), and
// gqa::wgqa_fold_backward (all three kinds, with biases) against the reference fold. Also gqa::
// pgqa_perturb_backward (the library's float version) against reference::pgqa_backward.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <gqa/gqa.hpp>
#include <gqa/reference/attention.hpp>
#include <gqa/reference/pgqa.hpp>
#include <gqa/reference/wgqa.hpp>

#include "support/data.hpp"
#include "support/expect.hpp"

namespace {

using gqa::index_t;

/// A BSHD double tensor with its view.
struct dtensor {
  index_t b, s, h, d;
  std::vector<double> x;
  dtensor(index_t b_, index_t s_, index_t h_, index_t d_, std::uint64_t seed)
      : b(b_), s(s_), h(h_), d(d_), x(static_cast<std::size_t>(b_ * s_ * h_ * d_)) {
    const auto f = gqa::test::random_floats(x.size(), seed);
    std::copy(f.begin(), f.end(), x.begin());
  }
  gqa::tensor_view<const double> view() const { return gqa::bshd<const double>(x.data(), b, s, h, d); }
};

constexpr double k_step = 1e-5;  // central differences: truncation ~1e-10·f''', rounding ~1e-11·|L|
constexpr double k_fd_tol = 1e-7;

/// Checks grad against central differences (step h) of loss() over every element of x (x is restored).
void expect_matches_fd(std::vector<double>& x, const std::vector<double>& grad, const std::function<double()>& loss,
                       const std::string& what, double h = k_step) {
  ASSERT_EQ(x.size(), grad.size()) << what;
  double scale = 1.0;
  for (const double g : grad) scale = std::max(scale, std::fabs(g));
  double worst = 0.0;
  std::size_t at = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double keep = x[i];
    x[i] = keep + h;
    const double up = loss();
    x[i] = keep - h;
    const double down = loss();
    x[i] = keep;
    const double fd = (up - down) / (2.0 * h);
    if (std::fabs(fd - grad[i]) > worst) {
      worst = std::fabs(fd - grad[i]);
      at = i;
    }
  }
  EXPECT_LE(worst, k_fd_tol * scale) << what << ": worst |fd - analytic| at element " << at << " (analytic "
                                     << grad[at] << ")";
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

struct core_case {
  std::string name;
  index_t b = 2, sq = 3, skv = 5, hq = 4, hkv = 2, d = 3, dv = 2;
  std::vector<index_t> kv_of_q;  // empty: uniform
  bool causal = false;
  std::vector<index_t> kv_lengths;
  double scale = 0.0;  // 0: 1/sqrt(d)
};

std::vector<index_t> map_of(const core_case& c) {
  return c.kv_of_q.empty() ? gqa::test::uniform_kv_of_q(c.hq, c.hkv) : c.kv_of_q;
}

TEST(reference_backward, attention_matches_finite_differences) {
  const std::vector<core_case> cases = {
      {"uniform groups", 2, 3, 5, 4, 2, 3, 2, {}, false, {}, 0.0},
      {"causal, sq < skv (bottom-right)", 2, 3, 5, 4, 2, 3, 2, {}, true, {}, 0.0},
      {"causal, sq > skv: the first rows see nothing", 2, 5, 3, 4, 2, 3, 2, {}, true, {}, 0.0},
      {"kv_lengths with a 0", 2, 3, 5, 4, 2, 3, 2, {}, false, {5, 0}, 0.0},
      {"kv_lengths and causal", 2, 4, 5, 4, 2, 2, 3, {}, true, {2, 4}, 0.0},
      {"unequal groups, KV head 1 unused", 2, 3, 4, 4, 3, 3, 2, {0, 0, 0, 2}, false, {}, 0.0},
      {"interleaved map", 1, 3, 4, 4, 2, 2, 2, {1, 0, 1, 0}, false, {}, 0.0},
      {"d_v != d_qk, explicit scale", 1, 2, 6, 2, 1, 4, 1, {}, false, {}, 0.7},
      {"d = 1", 2, 3, 3, 2, 2, 1, 1, {}, true, {}, 0.0},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    dtensor q(c.b, c.sq, c.hq, c.d, 1), k(c.b, c.skv, c.hkv, c.d, 2), v(c.b, c.skv, c.hkv, c.dv, 3),
        dout(c.b, c.sq, c.hq, c.dv, 4);
    const auto kv_of_q = map_of(c);
    const double scale = c.scale != 0.0 ? c.scale : 1.0 / std::sqrt(static_cast<double>(c.d));
    auto loss = [&] {
      return dot(dout.x, gqa::reference::attention(q.view(), k.view(), v.view(), kv_of_q, scale, c.causal, c.kv_lengths).o);
    };
    const auto g = gqa::reference::attention_backward(q.view(), k.view(), v.view(), dout.view(), kv_of_q, scale,
                                                      c.causal, c.kv_lengths);
    expect_matches_fd(q.x, g.dq, loss, "dq");
    expect_matches_fd(k.x, g.dk, loss, "dk");
    expect_matches_fd(v.x, g.dv, loss, "dv");
    // What no query sees has exactly zero gradient (not merely a tiny one).
    const auto fwd = gqa::reference::attention(q.view(), k.view(), v.view(), kv_of_q, scale, c.causal, c.kv_lengths);
    for (index_t ib = 0; ib < c.b; ++ib)
      for (index_t h = 0; h < c.hq; ++h)
        for (index_t i = 0; i < c.sq; ++i) {
          if (!std::isinf(fwd.log_sum_exp(ib, h, i))) continue;
          for (index_t x = 0; x < c.d; ++x)
            EXPECT_EQ(g.dq[static_cast<std::size_t>(((ib * c.sq + i) * c.hq + h) * c.d + x)], 0.0);
        }
    for (index_t g_kv = 0; g_kv < c.hkv; ++g_kv) {
      if (std::count(kv_of_q.begin(), kv_of_q.end(), g_kv) != 0) continue;
      for (index_t ib = 0; ib < c.b; ++ib)
        for (index_t j = 0; j < c.skv; ++j)
          for (index_t x = 0; x < c.dv; ++x)
            EXPECT_EQ(g.dv[static_cast<std::size_t>(((ib * c.skv + j) * c.hkv + g_kv) * c.dv + x)], 0.0);
    }
  }
}

/// A case of the score modifiers: the core_case's shape and masks plus reference::modifiers' settings
/// (sinks and ALiBi slopes per query head when set).
struct modifier_case {
  core_case shape;
  index_t window_left = -1, window_right = -1;
  double softcap = 0.0;
  bool sinks = false, alibi = false;
};

// The modifiers' gradients: the window (one side, both, a single key, with causal and padding), the
// softcap (mild and saturating), ALiBi (no gradient of its own: it shifts the scores), the sinks (dq, dk,
// dv through the denominator, and dsinks by differences of the sink logits themselves), and all four
// together with causal, padding and unequal groups.
TEST(reference_backward, modifiers_match_finite_differences) {
  const core_case base{"", 2, 4, 6, 4, 2, 3, 2, {}, false, {}, 0.0};
  core_case causal = base;
  causal.causal = true;
  core_case padded_causal = causal;
  padded_causal.kv_lengths = {6, 3};
  core_case tall = base;  // sq > skv: under causal the first rows see nothing
  tall.sq = 6;
  tall.skv = 4;
  tall.causal = true;
  core_case empty_batch = base;
  empty_batch.kv_lengths = {6, 0};
  core_case unequal = padded_causal;
  unequal.hq = 4;
  unequal.hkv = 3;
  unequal.kv_of_q = {0, 0, 0, 2};
  const std::vector<std::pair<std::string, modifier_case>> cases = {
      {"window left 2", {base, 2, -1}},
      {"window right 1, causal off", {base, -1, 1}},
      {"window (1, 1) with padding", {padded_causal, 1, 1}},
      {"window of one key (0, 0)", {base, 0, 0}},
      {"window left 1, causal, sq > skv", {tall, 1, -1}},
      {"softcap 2", {base, -1, -1, 2.0}},
      {"softcap 0.3 (saturating), causal", {causal, -1, -1, 0.3}},
      {"alibi, causal", {causal, -1, -1, 0.0, false, true}},
      {"alibi with padding, sq > skv", {tall, -1, -1, 0.0, false, true}},
      {"sinks", {base, -1, -1, 0.0, true}},
      {"sinks, causal, sq > skv (rows with no key)", {tall, -1, -1, 0.0, true}},
      {"sinks with a kv_length of 0", {empty_batch, -1, -1, 0.0, true}},
      {"all four, causal, padding", {padded_causal, 2, -1, 1.5, true, true}},
      {"all four, unequal groups, both window sides", {unequal, 2, 1, 0.8, true, true}},
  };
  for (const auto& [name, mc] : cases) {
    SCOPED_TRACE(name);
    const core_case& c = mc.shape;
    dtensor q(c.b, c.sq, c.hq, c.d, 5), k(c.b, c.skv, c.hkv, c.d, 6), v(c.b, c.skv, c.hkv, c.dv, 7),
        dout(c.b, c.sq, c.hq, c.dv, 8);
    const auto kv_of_q = map_of(c);
    const double scale = c.scale != 0.0 ? c.scale : 1.0 / std::sqrt(static_cast<double>(c.d));
    // Sinks are floats (as the API's): multiples of 2^-4 stepped by 2^-17, both exact in float, so the
    // differences below perturb them exactly.
    std::vector<double> sinks_d;
    for (index_t h = 0; h < c.hq && mc.sinks; ++h) sinks_d.push_back(0.0625 * static_cast<double>((h * 7) % 11) - 0.25);
    std::vector<float> sinks_f(sinks_d.begin(), sinks_d.end()), slopes;
    for (index_t h = 0; h < c.hq && mc.alibi; ++h) slopes.push_back(std::exp2(-static_cast<float>(h + 1)));
    auto mods = [&] {
      std::copy(sinks_d.begin(), sinks_d.end(), sinks_f.begin());
      return gqa::reference::modifiers{mc.window_left, mc.window_right, mc.softcap, sinks_f, slopes};
    };
    auto loss = [&] {
      return dot(dout.x, gqa::reference::attention(q.view(), k.view(), v.view(), kv_of_q, scale, c.causal, c.kv_lengths,
                                                   mods()).o);
    };
    const auto g = gqa::reference::attention_backward(q.view(), k.view(), v.view(), dout.view(), kv_of_q, scale, c.causal,
                                                      c.kv_lengths, mods());
    expect_matches_fd(q.x, g.dq, loss, "dq");
    expect_matches_fd(k.x, g.dk, loss, "dk");
    expect_matches_fd(v.x, g.dv, loss, "dv");
    ASSERT_EQ(g.dsinks.size(), sinks_d.size());
    if (mc.sinks) expect_matches_fd(sinks_d, g.dsinks, loss, "dsinks", 0x1p-17);
  }
}

// PGQA alone: X' = X − μ − σZ per row, Z fixed by the seed; the gradient through μ and σ (Note [PGQA
// gradient]). s = 2 heads per group with N = 6 exercises the zeroed "diagonal".
TEST(reference_backward, pgqa_matches_finite_differences) {
  const index_t b = 2, p = 3, hq = 4, hkv = 2, dv = 2;
  dtensor o(b, p, hq, dv, 10), dout(b, p, hq, dv, 11);
  auto loss = [&] { return dot(dout.x, gqa::reference::pgqa(o.x, b, p, hq, dv, hkv, 7, 2, 5)); };
  const auto dx = gqa::reference::pgqa_backward(o.x, dout.x, b, p, hq, dv, hkv, 7, 2, 5);
  expect_matches_fd(o.x, dx, loss, "do");
  // A constant row (σ = 0: no derivative) takes the σ term as 0: what remains is the mean's, g − mean(g).
  for (index_t t = 0; t < p; ++t)
    for (index_t c = 0; c < dv; ++c) o.x[static_cast<std::size_t>(((0 * p + t) * hq + 1) * dv + c)] = 0.25;
  const auto dc = gqa::reference::pgqa_backward(o.x, dout.x, b, p, hq, dv, hkv, 7, 2, 5);
  double gmean = 0.0;
  for (index_t t = 0; t < p; ++t)
    for (index_t c = 0; c < dv; ++c) gmean += dout.x[static_cast<std::size_t>((t * hq + 1) * dv + c)] / (p * dv);
  for (index_t t = 0; t < p; ++t)
    for (index_t c = 0; c < dv; ++c) {
      const auto e = static_cast<std::size_t>((t * hq + 1) * dv + c);
      EXPECT_NEAR(dc[e], dout.x[e] - gmean, 1e-15);
    }
}

// PGQA after attention: L = Σ dout ∘ pgqa(attention(q, k, v)), differentiated by the chain
// pgqa_backward -> attention_backward, against differences in q, k and v.
TEST(reference_backward, pgqa_after_attention_matches_finite_differences) {
  const index_t b = 2, sq = 3, skv = 4, hq = 4, hkv = 2, d = 3, dv = 2;
  dtensor q(b, sq, hq, d, 20), k(b, skv, hkv, d, 21), v(b, skv, hkv, dv, 22), dout(b, sq, hq, dv, 23);
  const auto kv_of_q = gqa::test::uniform_kv_of_q(hq, hkv);
  const double scale = 1.0 / std::sqrt(3.0);
  for (const bool causal : {false, true}) {
    SCOPED_TRACE(causal ? "causal" : "non-causal");
    auto forward = [&] { return gqa::reference::attention(q.view(), k.view(), v.view(), kv_of_q, scale, causal).o; };
    auto loss = [&] { return dot(dout.x, gqa::reference::pgqa(forward(), b, sq, hq, dv, hkv, 9, 0, 1)); };
    const auto dcore = gqa::reference::pgqa_backward(forward(), dout.x, b, sq, hq, dv, hkv, 9, 0, 1);
    const auto dcore_view = gqa::bshd<const double>(dcore.data(), b, sq, hq, dv);
    const auto g = gqa::reference::attention_backward(q.view(), k.view(), v.view(), dcore_view, kv_of_q, scale, causal);
    expect_matches_fd(q.x, g.dq, loss, "dq");
    expect_matches_fd(k.x, g.dk, loss, "dk");
    expect_matches_fd(v.x, g.dv, loss, "dv");
  }
}

// The library's float pgqa_perturb_backward against the double reference on the same output: the rebuilt
// output and the gradient agree to float rounding (a few ulps of the row's scale).
TEST(reference_backward, library_pgqa_perturb_backward_matches_reference) {
  const index_t b = 3, p = 5, hq = 6, hkv = 2, dv = 7;
  const auto x0 = gqa::test::random_floats(static_cast<std::size_t>(b * p * hq * dv), 30);
  const auto g = gqa::test::random_floats(x0.size(), 31);
  std::vector<float> o = x0;
  const auto ov = gqa::bshd(o.data(), b, p, hq, dv);
  const auto st = gqa::pgqa_row_statistics(ov);
  gqa::pgqa_perturb(ov, hkv, 4, 1, 8);
  std::vector<float> x(o.size()), dx(o.size());
  gqa::pgqa_perturb_backward(ov, gqa::bshd<const float>(g.data(), b, p, hq, dv), st, hkv, 4, 1, 8,
                             gqa::bshd(x.data(), b, p, hq, dv), gqa::bshd(dx.data(), b, p, hq, dv));
  const std::vector<double> xd(x0.begin(), x0.end()), gd(g.begin(), g.end());
  const auto ref = gqa::reference::pgqa_backward(xd, gd, b, p, hq, dv, hkv, 4, 1, 8);
  for (std::size_t i = 0; i < x.size(); ++i) {
    EXPECT_NEAR(x[i], x0[i], 4e-7) << i;       // |X'| + |X| <= ~4, so an ulp of it is ~5e-7 at most
    EXPECT_NEAR(dx[i], ref[i], 2e-6) << i;     // |dx| <= ~3; its rounding plus X's, scaled by GZ/((N−1)σ)
  }
}

// WGQA's combination alone, w.r.t. the per-head activations and the weights, scalar and col.
TEST(reference_backward, wgqa_combine_matches_finite_differences) {
  const index_t b = 2, t = 3, h = 4, g = 2, d = 3;
  for (const std::string kind : {"scalar", "col"}) {
    SCOPED_TRACE(kind);
    dtensor x(b, t, h, d, 40), dout(b, t, g, d, 41);
    const auto wf = gqa::test::random_floats(static_cast<std::size_t>(kind == "scalar" ? h : h * d), 42);
    std::vector<double> w(wf.begin(), wf.end());
    auto loss = [&] { return dot(dout.x, gqa::reference::wgqa_combine(x.x, b, t, h, g, d, kind, w)); };
    const auto r = gqa::reference::wgqa_combine_backward(x.x, dout.x, b, t, h, g, d, kind, w);
    expect_matches_fd(x.x, r.dx, loss, "dx");
    expect_matches_fd(w, r.dw, loss, "dw");
  }
}

// WGQA through attention: L = Σ dout ∘ attention(q, combine(k, w_k), combine(v, w_v)); the chain
// attention_backward -> wgqa_combine_backward gives the per-head dk, dv and the weights' gradients.
TEST(reference_backward, wgqa_after_attention_matches_finite_differences) {
  const index_t b = 1, sq = 3, skv = 4, hq = 4, hkv = 2, d = 3;
  const auto kv_of_q = gqa::test::uniform_kv_of_q(hq, hkv);
  const double scale = 0.6;
  for (const std::string kind : {"scalar", "col"}) {
    SCOPED_TRACE(kind);
    dtensor q(b, sq, hq, d, 50), k(b, skv, hq, d, 51), v(b, skv, hq, d, 52), dout(b, sq, hq, d, 53);
    const std::size_t nw = static_cast<std::size_t>(kind == "scalar" ? hq : hq * d);
    const auto wkf = gqa::test::random_floats(nw, 54), wvf = gqa::test::random_floats(nw, 55);
    std::vector<double> wk(wkf.begin(), wkf.end()), wv(wvf.begin(), wvf.end());
    auto combined = [&](const dtensor& x, const std::vector<double>& w) {
      return gqa::reference::wgqa_combine(x.x, b, skv, hq, hkv, d, kind, w);
    };
    auto loss = [&] {
      const auto kc = combined(k, wk), vc = combined(v, wv);
      return dot(dout.x, gqa::reference::attention(q.view(), gqa::bshd<const double>(kc.data(), b, skv, hkv, d),
                                                   gqa::bshd<const double>(vc.data(), b, skv, hkv, d), kv_of_q, scale,
                                                   true).o);
    };
    const auto kc = combined(k, wk), vc = combined(v, wv);
    const auto g = gqa::reference::attention_backward(q.view(), gqa::bshd<const double>(kc.data(), b, skv, hkv, d),
                                                      gqa::bshd<const double>(vc.data(), b, skv, hkv, d), dout.view(),
                                                      kv_of_q, scale, true);
    const auto gk = gqa::reference::wgqa_combine_backward(k.x, g.dk, b, skv, hq, hkv, d, kind, wk);
    const auto gv = gqa::reference::wgqa_combine_backward(v.x, g.dv, b, skv, hq, hkv, d, kind, wv);
    expect_matches_fd(q.x, g.dq, loss, "dq");
    expect_matches_fd(k.x, gk.dx, loss, "dk (per head)");
    expect_matches_fd(v.x, gv.dx, loss, "dv (per head)");
    expect_matches_fd(wk, gk.dw, loss, "d weights.k");
    expect_matches_fd(wv, gv.dw, loss, "d weights.v");
  }
}

// gqa::wgqa_fold_backward (all kinds; biases for scalar and col) against differences of the reference fold:
// L = Σ Γ ∘ W̃(W, w) + Σ β ∘ b̃(b, w), b̃_g[k] = Σ_{j∈g} f_j(k)·b_j[k].
TEST(reference_backward, wgqa_fold_backward_matches_finite_differences) {
  const index_t h = 4, g = 2, d = 3, in = 5;
  for (const auto kind : {gqa::wgqa_kind::scalar, gqa::wgqa_kind::col, gqa::wgqa_kind::row}) {
    const std::string name(gqa::to_string(kind));
    SCOPED_TRACE(name);
    const bool bias = kind != gqa::wgqa_kind::row;
    auto w = gqa::wgqa_weights::random_init(kind, h, g, d, in, 60);
    gqa::kv_projection per_head{gqa::test::random_floats(static_cast<std::size_t>(h * d * in), 61),
                                bias ? gqa::test::random_floats(static_cast<std::size_t>(h * d), 62) : std::vector<float>{},
                                gqa::test::random_floats(static_cast<std::size_t>(h * d * in), 63),
                                bias ? gqa::test::random_floats(static_cast<std::size_t>(h * d), 64) : std::vector<float>{}};
    gqa::kv_projection grad{gqa::test::random_floats(static_cast<std::size_t>(g * d * in), 65),
                            bias ? gqa::test::random_floats(static_cast<std::size_t>(g * d), 66) : std::vector<float>{},
                            gqa::test::random_floats(static_cast<std::size_t>(g * d * in), 67),
                            bias ? gqa::test::random_floats(static_cast<std::size_t>(g * d), 68) : std::vector<float>{}};
    const auto got = gqa::wgqa_fold_backward(per_head, w, grad);
    // One projection at a time (K, then V), in double.
    const std::vector<float>* wp[2] = {&per_head.w_k, &per_head.w_v};
    const std::vector<float>* bp[2] = {&per_head.b_k, &per_head.b_v};
    const std::vector<float>* ww[2] = {&w.k, &w.v};
    const std::vector<float>* gw[2] = {&grad.w_k, &grad.w_v};
    const std::vector<float>* gb[2] = {&grad.b_k, &grad.b_v};
    const std::vector<float>* got_w[2] = {&got.per_head.w_k, &got.per_head.w_v};
    const std::vector<float>* got_b[2] = {&got.per_head.b_k, &got.per_head.b_v};
    const std::vector<float>* got_ww[2] = {&got.k, &got.v};
    for (int p = 0; p < 2; ++p) {
      std::vector<double> W(wp[p]->begin(), wp[p]->end()), B(bp[p]->begin(), bp[p]->end()),
          wt(ww[p]->begin(), ww[p]->end()), G(gw[p]->begin(), gw[p]->end()), beta(gb[p]->begin(), gb[p]->end());
      auto loss = [&] {
        double l = dot(G, gqa::reference::wgqa_fold(W, h, g, d, in, name, wt));
        for (index_t j = 0; j < h && bias; ++j)
          for (index_t x = 0; x < d; ++x)
            l += beta[static_cast<std::size_t>((j / (h / g)) * d + x)] *
                 gqa::reference::wgqa_weight_at(name, wt, j, x, 0, d, in) * B[static_cast<std::size_t>(j * d + x)];
        return l;
      };
      const std::vector<double> dW(got_w[p]->begin(), got_w[p]->end()), dB(got_b[p]->begin(), got_b[p]->end()),
          dw(got_ww[p]->begin(), got_ww[p]->end());
      // The library rounds each gradient to float once: allow that on top of the differences' error.
      auto check = [&](std::vector<double>& x, const std::vector<double>& an, const char* what) {
        double scale = 1.0;
        for (const double a : an) scale = std::max(scale, std::fabs(a));
        for (std::size_t i = 0; i < x.size(); ++i) {
          const double keep = x[i];
          x[i] = keep + k_step;
          const double up = loss();
          x[i] = keep - k_step;
          const double down = loss();
          x[i] = keep;
          EXPECT_NEAR((up - down) / (2.0 * k_step), an[i], 1e-6 * scale) << what << "[" << i << "]";
        }
      };
      check(W, dW, p == 0 ? "d per_head.w_k" : "d per_head.w_v");
      if (bias) check(B, dB, p == 0 ? "d per_head.b_k" : "d per_head.b_v");
      check(wt, dw, p == 0 ? "d weights.k" : "d weights.v");
    }
  }
}

}  // namespace
