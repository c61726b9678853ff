// tests/suites/wgqa_suite.hpp: WGQA on every ISA: prepare() against the double transcription of the
// authors' weighted combination (reference::wgqa_combine), gqa::forward(wgqa_policy) against
// reference::attention on the reference-combined heads, and the inference fold end to end: projecting X
// with wgqa_fold's weights and running plain GQA gives the output of the unfolded per-head form (scalar and
// col through wgqa_policy, row through its definition), for mean and random weights. Helpers stay in
// `namespace {}`.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string_view>
#include <vector>

#include <gqa/gqa.hpp>
#include <gqa/reference/attention.hpp>
#include <gqa/reference/wgqa.hpp>

#include "support/isa_suite.hpp"
#include "support/tolerance.hpp"

namespace {

using gqa::index_t;
using gqa::test::attention_tolerance;  // Note [attention tolerance], tests/support/tolerance.hpp
using gqa::test::naive_fp32;
using gqa::test::uniform_kv_of_q;
using gqa::wgqa_kind;
using gqa::wgqa_weights;

template <class Isa>
class wgqa_suite : public gqa::test::isa_test<Isa> {};
TYPED_TEST_SUITE_P(wgqa_suite);

std::vector<double> widen(const std::vector<float>& x) { return {x.begin(), x.end()}; }

std::vector<double> abs_of(const std::vector<float>& x) {
  std::vector<double> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = std::fabs(static_cast<double>(x[i]));
  return out;
}

std::vector<float> narrow(const std::vector<double>& x) {
  std::vector<float> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = static_cast<float>(x[i]);
  return out;
}

double max_abs(const std::vector<float>& x) {
  double m = 0.0;
  for (const float v : x) m = std::max(m, static_cast<double>(std::fabs(v)));
  return m;
}

wgqa_weights make_weights(wgqa_kind kind, bool random, index_t hq, index_t hkv, index_t d, index_t dm, std::uint64_t seed) {
  return random ? wgqa_weights::random_init(kind, hq, hkv, d, dm, seed) : wgqa_weights::mean_init(kind, hq, hkv, d, dm);
}

struct wgqa_shape {
  index_t b, sq, skv, hq, hkv, d;
};

std::vector<wgqa_shape> wgqa_shapes() {
  std::vector<wgqa_shape> v = {{1, 1, 7, 4, 2, 8}, {2, 9, 33, 12, 4, 16}, {2, 17, 5, 6, 1, 12}, {1, 3, 64, 8, 8, 32}};
  if (!gqa::test::reduced) v.push_back({2, 40, 129, 12, 6, 64});
  return v;
}

// prepare() == the weighted combination in double, rounded once (exact float products summed in double: the
// only error is that final rounding, ≤ 2⁻²⁴·|ref|; bound 2⁻²⁴·Σ|w_j K_j| covers any summation order).
// Then forward() == reference::attention on those combined heads, within Note [attention tolerance].
TYPED_TEST_P(wgqa_suite, forward_matches_reference_combination_and_attention) {
  for (const wgqa_shape& sh : wgqa_shapes())
    for (const wgqa_kind kind : {wgqa_kind::scalar, wgqa_kind::col})
      for (const bool random : {false, true}) {
        SCOPED_TRACE(testing::Message() << gqa::to_string(kind) << (random ? " random" : " mean") << " b " << sh.b << " sq "
                                        << sh.sq << " skv " << sh.skv << " hq " << sh.hq << " hkv " << sh.hkv << " d " << sh.d);
        const auto w = make_weights(kind, random, sh.hq, sh.hkv, sh.d, 16, 51);
        const auto q = gqa::test::random_floats(static_cast<std::size_t>(sh.b * sh.sq * sh.hq * sh.d), 52);
        const auto k = gqa::test::random_floats(static_cast<std::size_t>(sh.b * sh.skv * sh.hq * sh.d), 53);
        const auto v = gqa::test::random_floats(static_cast<std::size_t>(sh.b * sh.skv * sh.hq * sh.d), 54);
        gqa::wgqa_policy p(w);
        const auto kv = p.prepare(gqa::bshd<const float>(k.data(), sh.b, sh.skv, sh.hq, sh.d),
                                  gqa::bshd<const float>(v.data(), sh.b, sh.skv, sh.hq, sh.d));
        const std::string_view name = kind == wgqa_kind::scalar ? "scalar" : "col";
        const auto ref_k = gqa::reference::wgqa_combine(widen(k), sh.b, sh.skv, sh.hq, sh.hkv, sh.d, name, widen(w.k));
        const auto ref_v = gqa::reference::wgqa_combine(widen(v), sh.b, sh.skv, sh.hq, sh.hkv, sh.d, name, widen(w.v));
        // Σ|w_j K_j| per combined element, for the bound.
        const auto mag_k = gqa::reference::wgqa_combine(abs_of(k), sh.b, sh.skv, sh.hq, sh.hkv, sh.d, name, abs_of(w.k));
        const auto mag_v = gqa::reference::wgqa_combine(abs_of(v), sh.b, sh.skv, sh.hq, sh.hkv, sh.d, name, abs_of(w.v));
        std::size_t i = 0;
        for (index_t ib = 0; ib < sh.b; ++ib)
          for (index_t t = 0; t < sh.skv; ++t)
            for (index_t g = 0; g < sh.hkv; ++g)
              for (index_t c = 0; c < sh.d; ++c, ++i) {
                ASSERT_NEAR(kv.k(ib, t, g, c), ref_k[i], 0x1p-24 * mag_k[i]) << i;
                ASSERT_NEAR(kv.v(ib, t, g, c), ref_v[i], 0x1p-24 * mag_v[i]) << i;
              }

        std::vector<float> o(q.size());
        gqa::forward<TypeParam>(p, gqa::bshd<const float>(q.data(), sh.b, sh.sq, sh.hq, sh.d),
                                gqa::bshd<const float>(k.data(), sh.b, sh.skv, sh.hq, sh.d),
                                gqa::bshd<const float>(v.data(), sh.b, sh.skv, sh.hq, sh.d), gqa::bshd(o.data(), sh.b, sh.sq, sh.hq, sh.d));
        const auto kf = narrow(ref_k), vf = narrow(ref_v);
        const double scale = 1.0 / std::sqrt(static_cast<double>(sh.d));
        const auto att = gqa::reference::attention(gqa::bshd<const float>(q.data(), sh.b, sh.sq, sh.hq, sh.d),
                                                   gqa::bshd<const float>(kf.data(), sh.b, sh.skv, sh.hkv, sh.d),
                                                   gqa::bshd<const float>(vf.data(), sh.b, sh.skv, sh.hkv, sh.d),
                                                   uniform_kv_of_q(sh.hq, sh.hkv), scale, false);
        const auto qv = gqa::bshd<const float>(q.data(), sh.b, sh.sq, sh.hq, sh.d);
        const auto naive = naive_fp32(qv, gqa::bshd<const float>(kf.data(), sh.b, sh.skv, sh.hkv, sh.d),
                                      gqa::bshd<const float>(vf.data(), sh.b, sh.skv, sh.hkv, sh.d), uniform_kv_of_q(sh.hq, sh.hkv),
                                      static_cast<float>(scale));
        const double tol = attention_tolerance(naive.o, att.o, vf);
        for (std::size_t e = 0; e < o.size(); ++e) ASSERT_NEAR(o[e], att.o[e], tol) << e;
      }
}

// y = x·Wᵀ + b for x (rows × in), W (out × in), optional b; in double, rounded to float (a projection layer).
std::vector<float> project(const std::vector<float>& x, index_t rows, const std::vector<float>& w, const std::vector<float>& b,
                           index_t out, index_t in) {
  std::vector<float> y(static_cast<std::size_t>(rows * out));
  for (index_t r = 0; r < rows; ++r)
    for (index_t o = 0; o < out; ++o) {
      double acc = b.empty() ? 0.0 : b[static_cast<std::size_t>(o)];
      for (index_t c = 0; c < in; ++c)
        acc += static_cast<double>(x[static_cast<std::size_t>(r * in + c)]) * static_cast<double>(w[static_cast<std::size_t>(o * in + c)]);
      y[static_cast<std::size_t>(r * out + o)] = static_cast<float>(acc);
    }
  return y;
}

// The inference fold: X projected with wgqa_fold's (hkv·d × D) weights, then plain GQA, equals the unfolded
// per-head form. The two paths round differently (folded: W̃ once, then the projection; unfolded: each K_j,
// then the combination), so their K/V are not bitwise equal; each is within 4u·M of the exact (double)
// unfolded form, M = Σ_j Σ_c |w_j x_c W_j[k, c]| + Σ_j |w_j b_j[k]| (folded: W̃ and b̃ rounded, then the
// projection rounded: ≤ 3u·M; unfolded: each K_j rounded, then the combination rounded: ≤ 2u·M). Each
// path's output is then checked against reference::attention on its own K/V (Note [attention tolerance]),
// and the two double references against each other: to first order a key change δK moves a score by ≤
// scale·‖q‖₁·δK and the output by ≤ 2·max|δs|·max|v| + δV (10% slack for second-order terms).
TYPED_TEST_P(wgqa_suite, fold_matches_the_unfolded_form) {
  const index_t b = 2, t = 11, hq = 6, d = 8, dm = 24;
  const auto x = gqa::test::random_floats(static_cast<std::size_t>(b * t * dm), 61);
  const auto q = gqa::test::random_floats(static_cast<std::size_t>(b * t * hq * d), 62);
  gqa::kv_projection per_head{gqa::test::random_floats(static_cast<std::size_t>(hq * d * dm), 63, -0.3f, 0.3f),
                              gqa::test::random_floats(static_cast<std::size_t>(hq * d), 64, -0.1f, 0.1f),
                              gqa::test::random_floats(static_cast<std::size_t>(hq * d * dm), 65, -0.3f, 0.3f),
                              gqa::test::random_floats(static_cast<std::size_t>(hq * d), 66, -0.1f, 0.1f)};
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  const auto qv = gqa::bshd<const float>(q.data(), b, t, hq, d);
  for (const index_t hkv : {1, 2, 3})
    for (const wgqa_kind kind : {wgqa_kind::scalar, wgqa_kind::col, wgqa_kind::row})
      for (const bool random : {false, true}) {
        SCOPED_TRACE(testing::Message() << gqa::to_string(kind) << (random ? " random" : " mean") << " hkv " << hkv);
        const auto w = make_weights(kind, random, hq, hkv, d, dm, 67 + static_cast<std::uint64_t>(hkv));
        gqa::kv_projection ph = per_head;
        if (kind == wgqa_kind::row) ph.b_k.clear(), ph.b_v.clear();  // row has no bias fold
        const std::string_view name = gqa::to_string(kind);

        // Path A: fold, project to hkv heads, plain GQA.
        const auto folded = gqa::wgqa_fold(ph, w);
        const auto ka = project(x, b * t, folded.w_k, folded.b_k, hkv * d, dm);
        const auto va = project(x, b * t, folded.w_v, folded.b_v, hkv * d, dm);
        std::vector<float> oa(q.size()), ob(q.size());
        gqa::gqa_policy gp;
        gqa::forward<TypeParam>(gp, qv, gqa::bshd<const float>(ka.data(), b, t, hkv, d), gqa::bshd<const float>(va.data(), b, t, hkv, d),
                                gqa::bshd(oa.data(), b, t, hq, d));

        // Path B: the unfolded form. scalar/col: project every head, then wgqa_policy combines them; row: its
        // definition Σ_j X diag(r_j) W_jᵀ (reference), rounded to float, then plain GQA.
        std::vector<float> kb, vb;
        if (kind == wgqa_kind::row) {
          kb = narrow(gqa::reference::wgqa_unfolded_projection(widen(x), b * t, widen(ph.w_k), {}, hq, hkv, d, dm, name, widen(w.k)));
          vb = narrow(gqa::reference::wgqa_unfolded_projection(widen(x), b * t, widen(ph.w_v), {}, hq, hkv, d, dm, name, widen(w.v)));
          gqa::forward<TypeParam>(gp, qv, gqa::bshd<const float>(kb.data(), b, t, hkv, d), gqa::bshd<const float>(vb.data(), b, t, hkv, d),
                                  gqa::bshd(ob.data(), b, t, hq, d));
        } else {
          const auto kh = project(x, b * t, ph.w_k, ph.b_k, hq * d, dm);
          const auto vh = project(x, b * t, ph.w_v, ph.b_v, hq * d, dm);
          gqa::wgqa_policy wp(w);
          const auto kv = wp.prepare(gqa::bshd<const float>(kh.data(), b, t, hq, d), gqa::bshd<const float>(vh.data(), b, t, hq, d));
          kb.assign(kv.k.data, kv.k.data + ka.size());
          vb.assign(kv.v.data, kv.v.data + va.size());
          gqa::forward<TypeParam>(wp, qv, gqa::bshd<const float>(kh.data(), b, t, hq, d), gqa::bshd<const float>(vh.data(), b, t, hq, d),
                                  gqa::bshd(ob.data(), b, t, hq, d));
        }

        // K/V of both paths against the exact unfolded form, then their largest differences.
        const auto exact_k = gqa::reference::wgqa_unfolded_projection(widen(x), b * t, widen(ph.w_k), widen(ph.b_k), hq, hkv, d, dm, name, widen(w.k));
        const auto mag_k = gqa::reference::wgqa_unfolded_projection(abs_of(x), b * t, abs_of(ph.w_k), abs_of(ph.b_k), hq, hkv, d, dm, name, abs_of(w.k));
        const auto exact_v = gqa::reference::wgqa_unfolded_projection(widen(x), b * t, widen(ph.w_v), widen(ph.b_v), hq, hkv, d, dm, name, widen(w.v));
        const auto mag_v = gqa::reference::wgqa_unfolded_projection(abs_of(x), b * t, abs_of(ph.w_v), abs_of(ph.b_v), hq, hkv, d, dm, name, abs_of(w.v));
        double dk = 0.0, dv = 0.0;
        for (std::size_t i = 0; i < ka.size(); ++i) {
          ASSERT_NEAR(ka[i], exact_k[i], 4 * 0x1p-24 * mag_k[i]) << "folded K " << i;
          ASSERT_NEAR(kb[i], exact_k[i], 4 * 0x1p-24 * mag_k[i]) << "unfolded K " << i;
          ASSERT_NEAR(va[i], exact_v[i], 4 * 0x1p-24 * mag_v[i]) << "folded V " << i;
          ASSERT_NEAR(vb[i], exact_v[i], 4 * 0x1p-24 * mag_v[i]) << "unfolded V " << i;
          dk = std::max(dk, std::fabs(double(ka[i]) - double(kb[i])));
          dv = std::max(dv, std::fabs(double(va[i]) - double(vb[i])));
        }

        // Each path against the double attention of its own K/V.
        const auto map = uniform_kv_of_q(hq, hkv);
        const auto kav = gqa::bshd<const float>(ka.data(), b, t, hkv, d), vav = gqa::bshd<const float>(va.data(), b, t, hkv, d);
        const auto kbv = gqa::bshd<const float>(kb.data(), b, t, hkv, d), vbv = gqa::bshd<const float>(vb.data(), b, t, hkv, d);
        const auto ref_a = gqa::reference::attention(qv, kav, vav, map, scale, false);
        const auto ref_b = gqa::reference::attention(qv, kbv, vbv, map, scale, false);
        const double tol_a = attention_tolerance(naive_fp32(qv, kav, vav, map, static_cast<float>(scale)).o, ref_a.o, va);
        const double tol_b = attention_tolerance(naive_fp32(qv, kbv, vbv, map, static_cast<float>(scale)).o, ref_b.o, vb);
        double q1 = 0.0;  // max_row ‖q‖₁
        for (index_t r = 0; r < b * t * hq; ++r) {
          double n1 = 0.0;
          for (index_t c = 0; c < d; ++c) n1 += std::fabs(q[static_cast<std::size_t>(r * d + c)]);
          q1 = std::max(q1, n1);
        }
        const double tol_ab = 1.1 * (2.0 * scale * q1 * dk * std::max(max_abs(va), max_abs(vb)) + dv);
        for (std::size_t i = 0; i < oa.size(); ++i) {
          ASSERT_NEAR(oa[i], ref_a.o[i], tol_a) << "folded " << i;
          ASSERT_NEAR(ob[i], ref_b.o[i], tol_b) << "unfolded " << i;
          ASSERT_NEAR(ref_a.o[i], ref_b.o[i], tol_ab) << "references " << i;
        }
      }
}

REGISTER_TYPED_TEST_SUITE_P(wgqa_suite, forward_matches_reference_combination_and_attention, fold_matches_the_unfolded_form);

}  // namespace
