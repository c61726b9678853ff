// tests/suites/nonfinite_suite.hpp: non-finite inputs and masks (docs/design.md, "Non-finite inputs"), per
// ISA, on every path of the core: prefill (packed tiles, its last query block on the direct path), direct
// (decode with one KV head), decode tasks (key-major over several KV heads) and split KV. Each case puts
// NaN or ±inf into chosen elements of Q, K or V and compares every output element and LSE with the naive
// double reference (reference/attention.hpp), class by class: NaN where it has NaN, the same infinity
// where it has one, a fully masked row (+0, LSE −inf) where it has one, and within 1e-5 elsewhere (inputs
// in [−1, 1], |O| <= 1: a naive fp32 softmax is within ~1e-6 of it; accuracy itself is attention_suite's).
// Compiled once per ISA: helpers stay in `namespace {}`.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <gqa/attention.hpp>
#include <gqa/reference/attention.hpp>

#include "support/isa_suite.hpp"

namespace {

using gqa::index_t;

constexpr float k_nan = std::numeric_limits<float>::quiet_NaN();
constexpr float k_inf = std::numeric_limits<float>::infinity();
constexpr double k_tol = 1e-5;

/// One call of the core: shapes and mask, with the path it is meant to take named.
struct nf_case {
  const char* path;
  index_t b, sq, skv, hq, hkv, d, dv;
  bool causal = false;
  std::vector<index_t> kv_lengths;
  gqa::reference::modifiers mods = {};  // window
};

/// The four paths (Note [direct path], Note [decode tasks], Note [decode split]). Lengths are not
/// multiples of the key block or of the vector width; prefill's query blocks end with a short one.
std::vector<nf_case> paths(bool causal) {
  std::vector<nf_case> c = {
      {"prefill", 1, 70, 150, 8, 2, 20, 24, causal, {}},  // G·sq = 280 rows: packed tiles
      {"direct", 1, 3, 150, 4, 1, 20, 12, causal, {}},    // one KV head, 12 rows: direct, not key-major
      {"decode", 2, 2, 150, 8, 4, 20, 12, causal, {}},    // four KV heads × 4 rows: key-major decode tasks
      {"split-KV", 1, 2, 2100, 4, 2, 8, 8, causal, {}},   // 1 task, skv >= 2048: KV cut into chunks, merged
  };
  return c;
}

/// Buffers of one case (BSHD), inputs uniform in [−1, 1), output and LSE NaN before the call.
struct nf_data {
  nf_case c;
  std::vector<float> q, k, v, o, lse;
  gqa::head_map map;

  explicit nf_data(nf_case c_, std::uint64_t seed)
      : c(std::move(c_)),
        q(gqa::test::random_floats(static_cast<std::size_t>(c.b * c.sq * c.hq * c.d), seed)),
        k(gqa::test::random_floats(static_cast<std::size_t>(c.b * c.skv * c.hkv * c.d), seed + 1)),
        v(gqa::test::random_floats(static_cast<std::size_t>(c.b * c.skv * c.hkv * c.dv), seed + 2)),
        o(static_cast<std::size_t>(c.b * c.sq * c.hq * c.dv), k_nan),
        lse(static_cast<std::size_t>(c.b * c.hq * c.sq), k_nan),
        map(gqa::head_map::uniform(c.hq, c.hkv)) {}

  gqa::tensor_view<float> qv() { return gqa::bshd(q.data(), c.b, c.sq, c.hq, c.d); }
  gqa::tensor_view<float> kv() { return gqa::bshd(k.data(), c.b, c.skv, c.hkv, c.d); }
  gqa::tensor_view<float> vv() { return gqa::bshd(v.data(), c.b, c.skv, c.hkv, c.dv); }
  gqa::tensor_view<float> ov() { return gqa::bshd(o.data(), c.b, c.sq, c.hq, c.dv); }
  float& lse_at(index_t ib, index_t h, index_t i) { return lse[static_cast<std::size_t>((ib * c.hq + h) * c.sq + i)]; }

  index_t visible(index_t ib, index_t i) const {
    const index_t len = c.kv_lengths.empty() ? c.skv : c.kv_lengths[static_cast<std::size_t>(ib)];
    return c.causal ? std::clamp<index_t>(i + (len - c.sq) + 1, 0, len) : len;
  }

  template <class Isa>
  void run() {
    gqa::attention_options opt;
    opt.causal = c.causal;
    opt.kv_lengths = c.kv_lengths;
    opt.lse = lse;
    opt.window_left = c.mods.window_left;
    opt.window_right = c.mods.window_right;
    gqa::attend<Isa>(qv(), kv(), vv(), ov(), map, opt);
  }

  gqa::reference::attention_result reference() {
    return gqa::reference::attention(qv(), kv(), vv(), map.kv_of_q(), 1.0 / std::sqrt(static_cast<double>(c.d)),
                                     c.causal, c.kv_lengths, c.mods);
  }

  /// `bad` at key j of batch ib in every KV head g: in V's column g % d_v (in_v), else in all of K's row.
  void poison_key(index_t ib, index_t j, bool in_v, float bad) {
    for (index_t g = 0; g < c.hkv; ++g) {
      if (in_v) {
        vv()(ib, j, g, g % c.dv) = bad;
      } else {
        for (index_t x = 0; x < c.d; ++x) kv()(ib, j, g, x) = bad;
      }
    }
  }

  /// Keys [lo, hi) position i of batch ib sees.
  gqa::reference::key_range keys(index_t ib, index_t i) const {
    const index_t len = c.kv_lengths.empty() ? c.skv : c.kv_lengths[static_cast<std::size_t>(ib)];
    return gqa::reference::visible_keys(i, c.sq, len, c.causal, c.mods);
  }
};

/// Counts of the classes of the reference's rows, so a case can require that it tested something.
struct row_classes {
  index_t nan_rows = 0, finite_rows = 0, masked_rows = 0, nan_elements = 0, inf_elements = 0;
};

bool is_plus_zero(float x) { return x == 0.0f && !std::signbit(x); }

/// Every output element and LSE of the run against the reference, class by class (see the file comment).
/// `skip(ib, i, h)` excludes rows checked otherwise (float overflow, which double does not have).
row_classes compare(nf_data& p, const std::string& what,
                    const std::function<bool(index_t, index_t, index_t)>& skip = {}) {
  SCOPED_TRACE(::testing::Message() << p.c.path << (p.c.causal ? " causal" : "") << ": " << what);
  const auto ref = p.reference();
  row_classes n;
  const auto o = p.ov();
  for (index_t ib = 0; ib < p.c.b; ++ib)
    for (index_t h = 0; h < p.c.hq; ++h)
      for (index_t i = 0; i < p.c.sq; ++i) {
        if (skip && skip(ib, i, h)) continue;
        const double want_lse = ref.log_sum_exp(ib, h, i);
        const float got_lse = p.lse_at(ib, h, i);
        const auto where = [&] {
          std::ostringstream os;
          os << "row (b " << ib << ", pos " << i << ", head " << h << ")";
          return os.str();
        };
        if (std::isnan(want_lse)) {
          ++n.nan_rows;
          EXPECT_TRUE(std::isnan(got_lse)) << where() << ": LSE " << got_lse << ", reference NaN";
        } else if (want_lse == -std::numeric_limits<double>::infinity()) {
          ++n.masked_rows;
          EXPECT_EQ(got_lse, -k_inf) << where() << ": fully masked row, LSE must be -inf";
        } else {
          ++n.finite_rows;
          EXPECT_NEAR(got_lse, want_lse, k_tol * std::max(1.0, std::fabs(want_lse))) << where() << ": LSE";
        }
        for (index_t x = 0; x < p.c.dv; ++x) {
          const double want = ref.out(ib, i, h, x);
          const float got = o(ib, i, h, x);
          if (std::isnan(want)) {
            ++n.nan_elements;
            EXPECT_TRUE(std::isnan(got)) << where() << " O[" << x << "] = " << got << ", reference NaN";
          } else if (want_lse == -std::numeric_limits<double>::infinity()) {
            EXPECT_TRUE(is_plus_zero(got)) << where() << " O[" << x << "] = " << got << ": fully masked row, must be +0";
          } else if (std::isinf(want)) {
            ++n.inf_elements;
            EXPECT_EQ(got, static_cast<float>(want)) << where() << " O[" << x << "]";
          } else {
            EXPECT_NEAR(got, want, k_tol) << where() << " O[" << x << "]";
          }
        }
      }
  return n;
}

/// Element (ib, is, ih, x) of a BSHD buffer with extents (s, h, d).
float& at(std::vector<float>& t, index_t s, index_t h, index_t d, index_t ib, index_t is, index_t ih, index_t x) {
  return t[static_cast<std::size_t>(((ib * s + is) * h + ih) * d + x)];
}

}  // namespace

template <class Isa>
class nonfinite_suite : public gqa::test::isa_test<Isa> {};
TYPED_TEST_SUITE_P(nonfinite_suite);

// A NaN in a visible Q, K or V element makes NaN exactly what a naive softmax makes NaN: a Q element its
// row (output and LSE), a K element every row that sees that key, a V element that column of every row
// that sees the key (LSE finite). Rows that do not read it stay finite and accurate.
TYPED_TEST_P(nonfinite_suite, nan_in_q_k_or_v_reaches_exactly_the_outputs_that_read_it) {
  std::uint64_t seed = 100;
  for (const bool causal : {false, true})
    for (const auto& c : paths(causal)) {
      const index_t ib = c.b - 1, j = c.skv / 3;
      {
        nf_data p(c, seed += 3);
        at(p.q, c.sq, c.hq, c.d, ib, c.sq / 2, 1, c.d - 1) = k_nan;
        p.template run<TypeParam>();
        const auto n = compare(p, "NaN in Q");
        EXPECT_EQ(n.nan_rows, 1);
        EXPECT_GT(n.finite_rows, 0);
      }
      {
        nf_data p(c, seed += 3);
        at(p.k, c.skv, c.hkv, c.d, ib, j, 0, 1) = k_nan;
        p.template run<TypeParam>();
        const auto n = compare(p, "NaN in K");
        EXPECT_GT(n.nan_rows, 0);
        if (c.b * c.hkv > 1) {
          EXPECT_GT(n.finite_rows, 0);  // other KV heads
        }
      }
      {
        nf_data p(c, seed += 3);
        at(p.v, c.skv, c.hkv, c.dv, ib, j, c.hkv - 1, c.dv - 1) = k_nan;
        p.template run<TypeParam>();
        const auto n = compare(p, "NaN in V");
        EXPECT_EQ(n.nan_rows, 0);
        EXPECT_GT(n.nan_elements, 0);
      }
    }
}

// Infinite scores as in a naive fp32 softmax: a +inf score makes its row NaN (inf − inf), a −inf score
// is a weight of 0, a row whose visible scores are all −inf is NaN (not "fully masked"), and a finite
// score that overflows float (q = k = 1e20) is +inf, hence NaN: never zeros with LSE −inf.
TYPED_TEST_P(nonfinite_suite, infinite_scores_follow_a_naive_softmax) {
  std::uint64_t seed = 200;
  for (const bool causal : {false, true})
    for (const auto& c : paths(causal)) {
      const index_t ib = c.b - 1, j = c.skv / 4;
      for (const float inf : {k_inf, -k_inf}) {
        {  // ±inf in one K element: score ±inf for each row, by the sign of its Q element
          nf_data p(c, seed += 3);
          at(p.k, c.skv, c.hkv, c.d, ib, j, c.hkv - 1, 0) = inf;
          for (index_t h = 0; h < c.hq; ++h) {  // the last position's scores of key j +inf, the first's −inf
            at(p.q, c.sq, c.hq, c.d, ib, c.sq - 1, h, 0) = inf > 0 ? 0.5f : -0.5f;
            at(p.q, c.sq, c.hq, c.d, ib, 0, h, 0) = inf > 0 ? -0.5f : 0.5f;
          }
          p.template run<TypeParam>();
          const auto n = compare(p, inf > 0 ? "+inf in K" : "-inf in K");
          EXPECT_GT(n.nan_rows, 0);  // rows with +inf scores
          EXPECT_GT(n.finite_rows, 0);
        }
        {
          nf_data p(c, seed += 3);
          at(p.q, c.sq, c.hq, c.d, ib, c.sq - 1, 0, 2) = inf;
          p.template run<TypeParam>();
          const auto n = compare(p, inf > 0 ? "+inf in Q" : "-inf in Q");
          EXPECT_EQ(n.nan_rows, 1);  // some keys give +inf (K elements of both signs): the row is NaN
        }
      }
      {  // every visible score of one row −inf: K[., ., g, 0] > 0 and that row's Q[0] = −inf
        nf_data p(c, seed += 3);
        for (index_t jj = 0; jj < c.skv; ++jj) {
          float& x = at(p.k, c.skv, c.hkv, c.d, ib, jj, 0, 0);
          x = std::fabs(x) + 0.25f;
        }
        at(p.q, c.sq, c.hq, c.d, ib, c.sq - 1, 0, 0) = -k_inf;
        p.template run<TypeParam>();
        const auto n = compare(p, "all scores of a row -inf");
        EXPECT_EQ(n.nan_rows, 1);
        EXPECT_TRUE(std::isnan(p.lse_at(ib, 0, c.sq - 1)));
      }
      {  // q = k = 1e20 (one element each): the score overflows float (double does not: that row is checked
         // here, not by the reference); other rows see a score of ~±1e20 at key 0 (well conditioned)
        nf_data p(c, seed += 3);
        for (index_t x = 0; x < c.d; ++x) at(p.q, c.sq, c.hq, c.d, ib, c.sq - 1, 0, x) = x == 0 ? 1e20f : 0.0f;
        at(p.k, c.skv, c.hkv, c.d, ib, 0, 0, 0) = 1e20f;
        p.template run<TypeParam>();
        const auto overflowed = [ib, last = c.sq - 1](index_t b, index_t i, index_t h) {
          return b == ib && i == last && h == 0;
        };
        compare(p, "q = k = 1e20", overflowed);
        EXPECT_TRUE(std::isnan(p.lse_at(ib, 0, c.sq - 1))) << "overflowed score: LSE " << p.lse_at(ib, 0, c.sq - 1);
        for (index_t x = 0; x < c.dv; ++x)
          EXPECT_TRUE(std::isnan(p.ov()(ib, c.sq - 1, 0, x))) << "overflowed score: O[" << x << "]";
      }
    }
}

// Masked keys are never read or never contribute: a NaN or ±inf in K or V at a key beyond a row's causal
// horizon leaves that row finite (the rows that see the key are NaN), and the padding past kv_lengths
// (an unwritten cache slot) may hold anything.
TYPED_TEST_P(nonfinite_suite, masked_keys_never_contribute) {
  std::uint64_t seed = 300;
  for (const auto& c : paths(true)) {
    for (const bool in_v : {true, false})
      for (const float bad : {k_nan, k_inf, -k_inf}) {
        nf_data p(c, seed += 3);
        const index_t ib = c.b - 1;
        const index_t j = p.visible(ib, c.sq - 1) - 1;  // seen by the last position only
        p.poison_key(ib, j, in_v, bad);
        p.template run<TypeParam>();
        std::ostringstream what;
        what << bad << " in " << (in_v ? "V" : "K") << " at key " << j << " (causal horizon)";
        const auto n = compare(p, what.str());
        EXPECT_GT(n.finite_rows, 0);
        EXPECT_GT(n.nan_elements + n.inf_elements, 0);  // in the rows that see the key
        for (index_t h = 0; h < c.hq && c.sq > 1; ++h)
          for (index_t x = 0; x < c.dv; ++x) {
            EXPECT_TRUE(std::isfinite(p.ov()(ib, c.sq - 2, h, x))) << "NaN crossed the causal mask";
          }
      }
  }
  for (const bool causal : {false, true})
    for (auto c : paths(causal)) {
      c.kv_lengths.assign(static_cast<std::size_t>(c.b), c.skv - 37);
      nf_data p(c, seed += 3);
      for (index_t ib = 0; ib < c.b; ++ib)
        for (index_t jj = c.skv - 37; jj < c.skv; ++jj)
          for (index_t g = 0; g < c.hkv; ++g) {
            for (index_t x = 0; x < c.d; ++x) at(p.k, c.skv, c.hkv, c.d, ib, jj, g, x) = jj % 2 ? k_nan : k_inf;
            for (index_t x = 0; x < c.dv; ++x) at(p.v, c.skv, c.hkv, c.dv, ib, jj, g, x) = jj % 2 ? -k_inf : k_nan;
          }
      p.template run<TypeParam>();
      const auto n = compare(p, "NaN and inf in the padding past kv_lengths");
      EXPECT_EQ(n.nan_rows, 0);
      EXPECT_EQ(n.nan_elements + n.inf_elements, 0);
    }
}

// A row that sees no key (causal with sq > visible keys, kv_lengths 0) is +0 with LSE −inf whatever its Q
// holds, and stays distinguishable from a NaN row (LSE NaN) of a row that sees keys.
TYPED_TEST_P(nonfinite_suite, fully_masked_rows_are_distinguishable_from_nan_rows) {
  std::uint64_t seed = 400;
  for (auto c : paths(true)) {
    // The first position of the last batch sees no key; the first batch (if any) has kv_lengths 0.
    c.kv_lengths.assign(static_cast<std::size_t>(c.b), c.sq - 1);
    c.kv_lengths[0] = c.b > 1 ? 0 : c.sq - 1;
    if (c.sq < 2) continue;
    nf_data p(c, seed += 3);
    const index_t ib = c.b - 1;
    for (index_t h = 0; h < c.hq; ++h) {
      at(p.q, c.sq, c.hq, c.d, ib, 0, h, 0) = k_nan;      // masked row: its NaN must not show
      at(p.q, c.sq, c.hq, c.d, ib, c.sq - 1, h, 0) = k_nan;  // visible row: NaN
    }
    p.template run<TypeParam>();
    const auto n = compare(p, "NaN in Q of a masked and of a visible row");
    EXPECT_GT(n.masked_rows, 0);
    EXPECT_EQ(n.nan_rows, c.hq);
    for (index_t h = 0; h < c.hq; ++h) {
      EXPECT_EQ(p.lse_at(ib, h, 0), -k_inf);
      EXPECT_TRUE(std::isnan(p.lse_at(ib, h, c.sq - 1)));
    }
  }
}

// A sliding window's edges are masks like the causal horizon: a NaN or ±inf in K or V at a key just
// below the last position's window (seen by earlier positions only), or just above the first position's
// right edge (seen by later positions only), never reaches the rows that do not see it, on every path;
// and on the kept-block grid (Note [windows on the block grid]: 700 positions in several query blocks, a
// 600-key window), where such a key lies inside a block packed whole and is scored, then masked (Note
// [whole kept blocks], Note [hidden tiles]).
TYPED_TEST_P(nonfinite_suite, keys_outside_the_window_never_contribute) {
  std::uint64_t seed = 500;
  const auto check_edge = [&](const nf_case& c, bool lower) {
    for (const bool in_v : {true, false})
      for (const float bad : {k_nan, k_inf, -k_inf}) {
        nf_data p(c, seed += 3);
        const index_t ib = c.b - 1;
        // Lower: the key just before the last position's window. Upper: just past the first's.
        const index_t edge = lower ? p.keys(ib, c.sq - 1).lo - 1 : p.keys(ib, 0).hi;
        const index_t blind = lower ? c.sq - 1 : 0;  // the position that must not see it
        p.poison_key(ib, edge, in_v, bad);
        p.template run<TypeParam>();
        std::ostringstream what;
        what << c.path << ": " << bad << " in " << (in_v ? "V" : "K") << " at key " << edge << " (window "
             << (lower ? "lower" : "upper") << " edge)";
        const auto n = compare(p, what.str());
        EXPECT_GT(n.finite_rows, 0);
        EXPECT_GT(n.nan_elements + n.inf_elements, 0);  // in the rows that see the key
        for (index_t h = 0; h < c.hq; ++h)
          for (index_t x = 0; x < c.dv; ++x)
            EXPECT_TRUE(std::isfinite(p.ov()(ib, blind, h, x))) << "a non-finite value crossed the window's edge";
      }
  };
  for (const bool lower : {true, false})
    for (auto c : paths(lower)) {
      if (c.sq < 2) continue;
      c.mods.window_left = lower ? 40 : 3;  // lower edge: causal + left window; upper: left and right
      c.mods.window_right = lower ? -1 : c.sq > 2 ? 1 : 0;  // the first position's right edge inside skv
      check_edge(c, lower);
    }
  for (const bool lower : {true, false}) {  // causal: the upper edge is the first position's diagonal
    nf_case c{"grid", 1, 700, 700, 8, 2, 20, 24, true, {}};
    c.mods.window_left = 600;
    check_edge(c, lower);
  }
}

REGISTER_TYPED_TEST_SUITE_P(nonfinite_suite, nan_in_q_k_or_v_reaches_exactly_the_outputs_that_read_it,
                            infinite_scores_follow_a_naive_softmax, masked_keys_never_contribute,
                            fully_masked_rows_are_distinguishable_from_nan_rows,
                            keys_outside_the_window_never_contribute);
