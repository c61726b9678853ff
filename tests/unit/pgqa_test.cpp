// pgqa_test.cpp: PGQA outside the ISA sweep: the properties of the noise step (zero-mean rows, std ratio
// √2, the standardised "diagonal", noise shared across the batch), its edge cases (constant rows,
// s > N, P·d_v = 1), the modes and the call counter, agreement with the literal double transcription
// (gqa/reference/pgqa.hpp) and every error message. Also defines gqa::test::pgqa_perturb_baseline, this
// TU's pgqa_perturb (and pgqa_noise_baseline), which the per-ISA suite (suites/pgqa_suite.hpp) compares bitwise against its own.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <gqa/gqa.hpp>
#include <gqa/reference/attention.hpp>
#include <gqa/reference/pgqa.hpp>

#include "support/data.hpp"
#include "support/expect.hpp"

namespace gqa::test {
/// pgqa_perturb as compiled in this (baseline-flag) translation unit, on a BSHD buffer.
void pgqa_perturb_baseline(std::vector<float>& o, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d,
                           std::int64_t hkv, std::uint64_t seed, std::uint64_t layer, std::uint64_t call) {
  gqa::pgqa_perturb(gqa::bshd(o.data(), b, s, h, d), hkv, seed, layer, call);
}
/// pgqa_standardised_noise as compiled in this TU.
std::vector<double> pgqa_noise_baseline(std::int64_t n, std::uint64_t seed, std::uint64_t layer, std::uint64_t call,
                                        std::int64_t group, std::int64_t head_in_group) {
  return gqa::pgqa_standardised_noise(n, seed, layer, call, group, head_in_group);
}
}  // namespace gqa::test

namespace {

using gqa::index_t;
using gqa::test::expect_invalid;

struct row_stats {
  double mean, sd;
};
// Mean and unbiased std of O[ib, :, h, :] (BSHD), in double.
row_stats stats(const std::vector<float>& o, index_t ib, index_t h, index_t s, index_t hq, index_t d) {
  const auto v = gqa::bshd<const float>(o.data(), ib + 1, s, hq, d);
  double sum = 0.0;
  for (index_t p = 0; p < s; ++p)
    for (index_t c = 0; c < d; ++c) sum += v(ib, p, h, c);
  const double n = static_cast<double>(s * d), mean = sum / n;
  double ss = 0.0;
  for (index_t p = 0; p < s; ++p)
    for (index_t c = 0; c < d; ++c) ss += (v(ib, p, h, c) - mean) * (v(ib, p, h, c) - mean);
  return {mean, std::sqrt(ss / (n - 1.0))};
}

double max_abs(const std::vector<float>& x) {
  double m = 0.0;
  for (const float v : x) m = std::max(m, static_cast<double>(std::fabs(v)));
  return m;
}

// Every output row has zero mean (as measured with the authors' code).
TEST(pgqa, rows_have_zero_mean) {
  const index_t b = 2, s = 50, hq = 6, hkv = 3, d = 32;
  auto o = gqa::test::random_floats(static_cast<std::size_t>(b * s * hq * d), 11, -2.0f, 3.0f);
  gqa::pgqa_perturb(gqa::bshd(o.data(), b, s, hq, d), hkv, 7, 1, 0);
  // X' = (X − μ) − σZ has exactly zero mean in exact arithmetic (Z has zero mean); what is left is the final
  // rounding to float of each element (≤ 2⁻²⁴·|X'|), which averages to at most 2⁻²⁴·max|X'|, plus double
  // rounding (~1e-16·N); 2⁻²³·max|X'| covers both.
  const double tol = 0x1p-23 * max_abs(o);
  for (index_t ib = 0; ib < b; ++ib)
    for (index_t h = 0; h < hq; ++h) EXPECT_LE(std::fabs(stats(o, ib, h, s, hq, d).mean), tol) << ib << " " << h;
}

// Row std of X' ≈ √2 × row std of X (1.406-1.421 measured with the authors' code).
TEST(pgqa, row_std_grows_by_sqrt2) {
  const index_t b = 2, s = 197, hq = 4, hkv = 2, d = 64;  // the ViT shape: N = 12,608 per row
  auto o = gqa::test::random_floats(static_cast<std::size_t>(b * s * hq * d), 12, -1.0f, 1.0f);
  const auto before = o;
  gqa::pgqa_perturb(gqa::bshd(o.data(), b, s, hq, d), hkv, 3, 0, 0);
  // var(X') = 2σ²(1 − ρ) with ρ = corr(X, Z) ~ N(0, 1/N) for independent X and Z, so the ratio is
  // √2·(1 − ρ/2 + O(ρ²)); |ρ| < 4/√N = 0.036 except with probability 6e-5 gives |ratio − √2| < 0.026.
  for (index_t ib = 0; ib < b; ++ib)
    for (index_t h = 0; h < hq; ++h) {
      const double ratio = stats(o, ib, h, s, hq, d).sd / stats(before, ib, h, s, hq, d).sd;
      EXPECT_NEAR(ratio, std::sqrt(2.0), 0.03) << ib << " " << h;
    }
}

// The standardised noise row has zero mean and unit unbiased std; the "diagonal" R[i][i] = 0 becomes
// exactly −ρμ/ρσ (≈ −√3: ρμ ≈ 1/2, ρσ ≈ 1/√12), computed here from the documented draws.
TEST(pgqa, standardised_noise_and_its_diagonal) {
  const index_t n = 197 * 64;
  for (index_t i : {0, 1, 5}) {
    const auto z = gqa::pgqa_standardised_noise(n, 42, 3, 9, 2, i);
    double sum = 0.0, ss = 0.0;
    for (const double v : z) sum += v;
    for (const double v : z) ss += (v - sum / n) * (v - sum / n);
    EXPECT_NEAR(sum / n, 0.0, 1e-12);  // double rounding only
    EXPECT_NEAR(std::sqrt(ss / (n - 1)), 1.0, 1e-12);
    // R as documented in Note [PGQA noise], the diagonal zeroed, standardised by hand.
    double rsum = 0.0;
    std::vector<double> r(static_cast<std::size_t>(n));
    for (index_t c = 0; c < n; ++c) {
      r[static_cast<std::size_t>(c)] = c == i ? 0.0 : gqa::random::to_unit_float(gqa::random::hash(42, {3, 9, 2, static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(c)}));
      rsum += r[static_cast<std::size_t>(c)];
    }
    const double rmu = rsum / n;
    double rss = 0.0;
    for (const double v : r) rss += (v - rmu) * (v - rmu);
    const double rsd = std::sqrt(rss / (n - 1));
    EXPECT_NEAR(z[static_cast<std::size_t>(i)], -rmu / rsd, 1e-12);
    EXPECT_NEAR(z[static_cast<std::size_t>(i)], -std::sqrt(3.0), 0.05);  // ρμ, ρσ within ~1% of 1/2, 1/√12
    for (index_t c = 0; c < n; c += 997)
      EXPECT_NEAR(z[static_cast<std::size_t>(c)], (r[static_cast<std::size_t>(c)] - rmu) / rsd, 1e-12) << c;
  }
}

// When the group is larger than N, only rows i < N have a diagonal; the others are plain standardised
// uniforms. N = 2 also checks the smallest legal row.
TEST(pgqa, no_diagonal_beyond_the_row_length) {
  const auto z_in = gqa::pgqa_standardised_noise(2, 5, 0, 0, 0, 1);   // i = 1 < N = 2: R[1][1] = 0
  const auto z_out = gqa::pgqa_standardised_noise(2, 5, 0, 0, 0, 3);  // i = 3 >= N: nothing zeroed
  // Two values standardised with the unbiased std are always ±1/√2; the zeroed one is the smaller.
  EXPECT_NEAR(z_in[1], -std::sqrt(0.5), 1e-15);
  EXPECT_NEAR(z_in[0], std::sqrt(0.5), 1e-15);
  const double r0 = gqa::random::to_unit_float(gqa::random::hash(5, {0, 0, 0, 3, 0}));
  const double r1 = gqa::random::to_unit_float(gqa::random::hash(5, {0, 0, 0, 3, 1}));
  EXPECT_NEAR(z_out[0], r0 < r1 ? -std::sqrt(0.5) : std::sqrt(0.5), 1e-15);
}

// After standardisation the noise is the same for every batch element. Each sample's row is
// inverted back to its noise, Z = (X − μ − X')/σ, and compared with the documented Z.
TEST(pgqa, noise_is_shared_across_the_batch) {
  const index_t b = 3, s = 9, hq = 4, hkv = 2, d = 8;
  auto o = gqa::test::random_floats(static_cast<std::size_t>(b * s * hq * d), 13, -1.0f, 1.0f);
  const auto before = o;
  gqa::pgqa_perturb(gqa::bshd(o.data(), b, s, hq, d), hkv, 21, 4, 6);
  const auto x = gqa::bshd<const float>(before.data(), b, s, hq, d), y = gqa::bshd<const float>(o.data(), b, s, hq, d);
  for (index_t h = 0; h < hq; ++h) {
    const auto z = gqa::pgqa_standardised_noise(s * d, 21, 4, 6, h / 2, h % 2);
    for (index_t ib = 0; ib < b; ++ib) {
      const row_stats st = stats(before, ib, h, s, hq, d);
      for (index_t p = 0; p < s; ++p)
        for (index_t c = 0; c < d; ++c) {
          // X' is rounded to float (error ≤ 2⁻²⁴·|X'| ≤ 2⁻²⁴·4σ·… for these rows), so the recovered Z is
          // within 2⁻²⁴·|X'|/σ of the true one: 1e-5 is ample for |X'|/σ < 10.
          const double zr = (x(ib, p, h, c) - st.mean - y(ib, p, h, c)) / st.sd;
          ASSERT_NEAR(zr, z[static_cast<std::size_t>(p * d + c)], 1e-5) << ib << " " << p << " " << h << " " << c;
        }
    }
  }
}

// The noise is keyed by (seed, layer, call, group, head-in-group): changing any key changes it.
TEST(pgqa, every_key_changes_the_noise) {
  const auto base = gqa::pgqa_standardised_noise(64, 1, 2, 3, 4, 5);
  EXPECT_EQ(base, gqa::pgqa_standardised_noise(64, 1, 2, 3, 4, 5));  // a pure function
  EXPECT_NE(base, gqa::pgqa_standardised_noise(64, 9, 2, 3, 4, 5));
  EXPECT_NE(base, gqa::pgqa_standardised_noise(64, 1, 9, 3, 4, 5));
  EXPECT_NE(base, gqa::pgqa_standardised_noise(64, 1, 2, 9, 4, 5));
  EXPECT_NE(base, gqa::pgqa_standardised_noise(64, 1, 2, 3, 9, 5));
  EXPECT_NE(base, gqa::pgqa_standardised_noise(64, 1, 2, 3, 4, 9));
}

// A constant O row (σ = 0) gives noise = μ and X' = 0 exactly, without NaN; other rows are untouched
// by it. Includes an all-zero row and a large constant.
TEST(pgqa, constant_rows_become_zero) {
  const index_t b = 2, s = 5, hq = 3, hkv = 1, d = 4;
  auto o = gqa::test::random_floats(static_cast<std::size_t>(b * s * hq * d), 14);
  auto v = gqa::bshd(o.data(), b, s, hq, d);
  const float consts[3] = {0.37f, 0.0f, -12345.678f};
  for (index_t p = 0; p < s; ++p)
    for (index_t c = 0; c < d; ++c) {
      v(0, p, 0, c) = consts[0];
      v(0, p, 2, c) = consts[1];
      v(1, p, 1, c) = consts[2];
    }
  auto ref_in = o;
  gqa::pgqa_perturb(v, hkv, 1, 0, 0);
  for (index_t p = 0; p < s; ++p)
    for (index_t c = 0; c < d; ++c) {
      EXPECT_EQ(v(0, p, 0, c), 0.0f);
      EXPECT_EQ(v(0, p, 2, c), 0.0f);
      EXPECT_EQ(v(1, p, 1, c), 0.0f);
    }
  for (const float x : o) EXPECT_TRUE(std::isfinite(x));
  // The non-constant rows are what they would be without the constant ones (rows are independent).
  auto other = gqa::test::random_floats(static_cast<std::size_t>(b * s * hq * d), 14);
  gqa::pgqa_perturb(gqa::bshd(other.data(), b, s, hq, d), hkv, 1, 0, 0);
  for (index_t p = 0; p < s; ++p)
    for (index_t c = 0; c < d; ++c) EXPECT_EQ(v(0, p, 1, c), other[static_cast<std::size_t>(((0 * s + p) * hq + 1) * d + c)]);
}

// pgqa_perturb against the literal double transcription of the noise step (gqa/reference/pgqa.hpp) on the
// same float input, including a group larger than N (s = 8 > N = 3) and MQA-sized groups.
TEST(pgqa, matches_reference_transcription) {
  struct shape {
    index_t b, s, hq, hkv, d;
  };
  for (const shape sh : {shape{2, 7, 4, 2, 5}, shape{1, 1, 8, 1, 3}, shape{3, 4, 6, 6, 2}, shape{2, 13, 6, 2, 16}}) {
    SCOPED_TRACE(testing::Message() << "b " << sh.b << " s " << sh.s << " hq " << sh.hq << " hkv " << sh.hkv << " d " << sh.d);
    auto o = gqa::test::random_floats(static_cast<std::size_t>(sh.b * sh.s * sh.hq * sh.d), 15, -1.0f, 2.0f);
    const std::vector<double> od(o.begin(), o.end());
    gqa::pgqa_perturb(gqa::bshd(o.data(), sh.b, sh.s, sh.hq, sh.d), sh.hkv, 77, 2, 5);
    const auto ref = gqa::reference::pgqa(od, sh.b, sh.s, sh.hq, sh.d, sh.hkv, 77, 2, 5);
    // Both compute in double (they differ only in fma vs separate rounding and summation details, ~1e-15
    // relative); the library then rounds once to float: ≤ 2⁻²⁴·|ref|. Bound: 2⁻²³·|ref| + 1e-12.
    for (std::size_t i = 0; i < o.size(); ++i) ASSERT_NEAR(o[i], ref[i], 0x1p-23 * std::fabs(ref[i]) + 1e-12) << i;
  }
}

// A strided (BHSD) output view is perturbed element for element like the same data in BSHD.
TEST(pgqa, strided_view_equals_contiguous) {
  const index_t b = 2, s = 6, hq = 4, hkv = 2, d = 5;
  auto bshd_buf = gqa::test::random_floats(static_cast<std::size_t>(b * s * hq * d), 16);
  std::vector<float> bhsd_buf(bshd_buf.size());
  const auto vs = gqa::bshd(bshd_buf.data(), b, s, hq, d);
  const auto vh = gqa::bhsd(bhsd_buf.data(), b, hq, s, d);
  for (index_t ib = 0; ib < b; ++ib)
    for (index_t p = 0; p < s; ++p)
      for (index_t h = 0; h < hq; ++h)
        for (index_t c = 0; c < d; ++c) vh(ib, p, h, c) = vs(ib, p, h, c);
  gqa::pgqa_perturb(vs, hkv, 3, 3, 3);
  gqa::pgqa_perturb(vh, hkv, 3, 3, 3);
  for (index_t ib = 0; ib < b; ++ib)
    for (index_t p = 0; p < s; ++p)
      for (index_t h = 0; h < hq; ++h)
        for (index_t c = 0; c < d; ++c) ASSERT_EQ(vh(ib, p, h, c), vs(ib, p, h, c));
}

// --- the policy: modes and the call counter ---

struct problem {
  index_t b = 2, sq = 6, skv = 9, hq = 4, hkv = 2, d = 8;
  std::vector<float> q, k, v;
  problem() {
    q = gqa::test::random_floats(static_cast<std::size_t>(b * sq * hq * d), 21);
    k = gqa::test::random_floats(static_cast<std::size_t>(b * skv * hkv * d), 22);
    v = gqa::test::random_floats(static_cast<std::size_t>(b * skv * hkv * d), 23);
  }
  auto qv() const { return gqa::bshd<const float>(q.data(), b, sq, hq, d); }
  auto kv() const { return gqa::bshd<const float>(k.data(), b, skv, hkv, d); }
  auto vv() const { return gqa::bshd<const float>(v.data(), b, skv, hkv, d); }
  std::vector<float> run(gqa::pgqa_policy& p) const {
    std::vector<float> o(q.size());
    gqa::forward(p, qv(), kv(), vv(), gqa::bshd(o.data(), b, sq, hq, d));
    return o;
  }
  std::vector<float> plain() const {  // GQA without noise
    std::vector<float> o(q.size());
    gqa::attend(qv(), kv(), vv(), gqa::bshd(o.data(), b, sq, hq, d), gqa::head_map::uniform(hq, hkv));
    return o;
  }
  std::vector<float> perturbed(std::uint64_t seed, std::uint64_t layer, std::uint64_t call) const {
    auto o = plain();
    gqa::pgqa_perturb(gqa::bshd(o.data(), b, sq, hq, d), hkv, seed, layer, call);
    return o;
  }
};

TEST(pgqa_policy, always_perturbs_with_the_call_counter_as_key) {
  const problem pr;
  gqa::pgqa_policy p({.seed = 5, .layer = 2, .noise = gqa::pgqa_noise::always});
  EXPECT_EQ(gqa::pgqa_policy::name, "pgqa");
  EXPECT_EQ(p.calls(), 0u);
  const auto o0 = pr.run(p);
  EXPECT_EQ(p.calls(), 1u);
  p.set_training(false);  // always ignores the training flag (the reference has no self.training check)
  const auto o1 = pr.run(p);
  EXPECT_EQ(p.calls(), 2u);
  EXPECT_EQ(o0, pr.perturbed(5, 2, 0));
  EXPECT_EQ(o1, pr.perturbed(5, 2, 1));
  EXPECT_NE(o0, o1);  // the call counter changes the noise
  p.set_calls(0);     // replay
  EXPECT_EQ(pr.run(p), o0);
  EXPECT_EQ(p.calls(), 1u);
}

TEST(pgqa_policy, off_is_plain_gqa_and_still_counts) {
  const problem pr;
  gqa::pgqa_policy p({.seed = 5, .layer = 0, .noise = gqa::pgqa_noise::off});
  EXPECT_FALSE(p.perturbs());
  EXPECT_EQ(pr.run(p), pr.plain());
  EXPECT_EQ(p.calls(), 1u);
}

TEST(pgqa_policy, train_only_follows_the_training_flag) {
  const problem pr;
  gqa::pgqa_policy p({.seed = 8, .layer = 1, .noise = gqa::pgqa_noise::train_only});
  EXPECT_TRUE(p.training());  // like a new torch.nn.Module
  EXPECT_TRUE(p.perturbs());
  EXPECT_EQ(pr.run(p), pr.perturbed(8, 1, 0));
  p.set_training(false);
  EXPECT_FALSE(p.perturbs());
  EXPECT_EQ(pr.run(p), pr.plain());
  p.set_training(true);
  EXPECT_EQ(pr.run(p), pr.perturbed(8, 1, 2));  // call 1 (eval) was counted
  EXPECT_EQ(p.calls(), 3u);
}

TEST(pgqa_policy, seed_and_layer_select_the_noise) {
  const problem pr;
  gqa::pgqa_policy a({.seed = 1, .layer = 0}), b({.seed = 2, .layer = 0}), c({.seed = 1, .layer = 1});
  const auto oa = pr.run(a), ob = pr.run(b), oc = pr.run(c);
  EXPECT_NE(oa, ob);
  EXPECT_NE(oa, oc);
  EXPECT_EQ(gqa::to_string(gqa::pgqa_noise::train_only), "train_only");
}

// --- errors: every message names the function, the argument and its value ---

TEST(pgqa_errors, perturb_rejects_bad_arguments_before_touching_o) {
  std::vector<float> buf(2 * 3 * 4 * 5, 0.5f);
  const auto o = gqa::bshd(buf.data(), 2, 3, 4, 5);
  expect_invalid([&] { gqa::pgqa_perturb(o, 3, 0, 0, 0); }, "gqa::pgqa_perturb: hkv = 3: must divide o.h = 4");
  expect_invalid([&] { gqa::pgqa_perturb(o, 0, 0, 0, 0); }, "gqa::pgqa_perturb: hkv = 0: must be positive");
  auto one = gqa::bshd(buf.data(), 2, 1, 4, 1);
  expect_invalid([&] { gqa::pgqa_perturb(one, 2, 0, 0, 0); }, "gqa::pgqa_perturb: o.s * o.d = 1: must be > 1");
  auto null = o;
  null.data = nullptr;
  expect_invalid([&] { gqa::pgqa_perturb(null, 2, 0, 0, 0); }, "gqa::pgqa_perturb: o.data = nullptr");
  auto empty = o;
  empty.b = 0;
  expect_invalid([&] { gqa::pgqa_perturb(empty, 2, 0, 0, 0); }, "gqa::pgqa_perturb: o.b = 0: batch must be positive");
  expect_invalid([&] { gqa::pgqa_perturb(o, 2, 0, 0, 0, gqa::executor{-2}); },
                 "gqa::pgqa_perturb: executor.num_threads = -2: must be >= 0");
}

// pgqa_perturb runs its (group, head) rows on the executor it is given: a caller parallel_for (here in
// reverse order, counting its tasks) or the built-in loop on 2 threads give the serial result bit for bit.
// A NaN or an infinity in a (sample, head) row X makes its statistics NaN, so all of X' is NaN (every token
// and channel of that sample and head), as the naive math gives; every other row gets the same bits as
// without it. Nothing is rejected: the value comes from the attention (a NaN input, an overflowing score).
TEST(pgqa_perturb, a_non_finite_value_makes_its_whole_row_nan) {
  const index_t b = 2, s = 3, hq = 4, d = 5, hkv = 2;
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity()}) {
    auto clean = gqa::test::random_floats(static_cast<std::size_t>(b * s * hq * d), 31, -2.0f, 3.0f);
    auto dirty = clean;
    const auto o_clean = gqa::bshd(clean.data(), b, s, hq, d), o_dirty = gqa::bshd(dirty.data(), b, s, hq, d);
    o_dirty(1, 2, 3, 4) = bad;
    gqa::pgqa_perturb(o_clean, hkv, 5, 1, 2);
    gqa::pgqa_perturb(o_dirty, hkv, 5, 1, 2);
    for (index_t ib = 0; ib < b; ++ib)
      for (index_t p = 0; p < s; ++p)
        for (index_t h = 0; h < hq; ++h)
          for (index_t c = 0; c < d; ++c) {
            if (ib == 1 && h == 3)
              EXPECT_TRUE(std::isnan(o_dirty(ib, p, h, c))) << bad << " at " << ib << "," << p << "," << h << "," << c;
            else
              EXPECT_EQ(o_clean(ib, p, h, c), o_dirty(ib, p, h, c)) << ib << "," << p << "," << h << "," << c;
          }
    // The backward of that row: its statistics are NaN, so x and dx are NaN there and exact elsewhere.
    auto x0 = gqa::test::random_floats(static_cast<std::size_t>(b * s * hq * d), 32, -2.0f, 3.0f);
    x0[static_cast<std::size_t>(((1 * s + 2) * hq + 3) * d + 4)] = bad;
    const auto xv = gqa::bshd(x0.data(), b, s, hq, d);
    const auto st = gqa::pgqa_row_statistics(gqa::tensor_view<const float>(xv));
    EXPECT_TRUE(std::isnan(st.mu[1 * hq + 3]) && std::isnan(st.sigma[1 * hq + 3]));
    gqa::pgqa_perturb(xv, hkv, 5, 1, 2);
    const auto g = gqa::test::random_floats(x0.size(), 33, -1.0f, 1.0f);
    std::vector<float> x(x0.size()), dx(x0.size());
    gqa::pgqa_perturb_backward(gqa::bshd(x0.data(), b, s, hq, d), gqa::bshd(g.data(), b, s, hq, d), st, hkv, 5, 1,
                               2, gqa::bshd(x.data(), b, s, hq, d), gqa::bshd(dx.data(), b, s, hq, d));
    for (index_t p = 0; p < s; ++p)
      for (index_t c = 0; c < d; ++c) {
        const auto at = static_cast<std::size_t>(((1 * s + p) * hq + 3) * d + c);
        EXPECT_TRUE(std::isnan(x[at]) && std::isnan(dx[at])) << p << "," << c;
      }
    for (std::size_t i = 0; i < dx.size(); ++i)
      if (i / static_cast<std::size_t>(d) % static_cast<std::size_t>(hq) != 3 || i < x.size() / 2)
        EXPECT_TRUE(std::isfinite(dx[i]) && std::isfinite(x[i])) << i;
  }
}

TEST(pgqa_perturb, runs_on_the_given_executor) {
  const index_t b = 2, s = 9, hq = 6, hkv = 2, d = 7;
  const auto input = gqa::test::random_floats(static_cast<std::size_t>(b * s * hq * d), 61, -2.0f, 2.0f);
  auto serial = input, two = input, caller = input;
  gqa::pgqa_perturb(gqa::bshd(serial.data(), b, s, hq, d), hkv, 5, 1, 2);
  gqa::pgqa_perturb(gqa::bshd(two.data(), b, s, hq, d), hkv, 5, 1, 2, gqa::executor{2});
  index_t tasks = 0;
  const gqa::parallel_for_fn reverse = [&tasks](index_t n, const std::function<void(index_t)>& task) {
    tasks += n;
    for (index_t i = n - 1; i >= 0; --i) task(i);
  };
  gqa::attention_options opt;
  opt.parallel_for = reverse;
  gqa::pgqa_perturb(gqa::bshd(caller.data(), b, s, hq, d), hkv, 5, 1, 2, gqa::executor_of(opt));
  EXPECT_EQ(tasks, hq);  // one task per (group, head-in-group) noise row
  ASSERT_NE(serial, input);
  EXPECT_EQ(0, std::memcmp(serial.data(), two.data(), serial.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(serial.data(), caller.data(), serial.size() * sizeof(float)));
}

TEST(pgqa_errors, standardised_noise_needs_two_values) {
  expect_invalid([] { (void)gqa::pgqa_standardised_noise(1, 0, 0, 0, 0, 0); },
                 "gqa::pgqa_standardised_noise: n = 1: must be >= 2");
  std::vector<double> z(4);
  expect_invalid([&] { gqa::pgqa_standardised_noise(z, 0, 0, 0, -1, 0); },
                 "gqa::pgqa_standardised_noise: group = -1: must be >= 0");
  expect_invalid([&] { gqa::pgqa_standardised_noise(z, 0, 0, 0, 0, -2); },
                 "gqa::pgqa_standardised_noise: head_in_group = -2: must be >= 0");
}

TEST(pgqa_errors, policy_rejects_bad_calls) {
  const index_t b = 1, sq = 1, skv = 3, hq = 4, d = 1;
  const auto q = gqa::test::random_floats(static_cast<std::size_t>(b * sq * hq * d), 1);
  const auto k = gqa::test::random_floats(static_cast<std::size_t>(b * skv * 3 * 2), 2);
  std::vector<float> o(static_cast<std::size_t>(b * sq * hq * 2));
  gqa::pgqa_policy p;
  // P·d_v == 1 (one query token, d_v = 1): rejected before any work, counter untouched.
  expect_invalid([&] {
    gqa::forward(p, gqa::bshd<const float>(q.data(), b, sq, hq, d), gqa::bshd<const float>(k.data(), b, skv, 2, d),
                 gqa::bshd<const float>(k.data(), b, skv, 2, d), gqa::bshd(o.data(), b, sq, hq, d));
  }, "gqa::pgqa_policy: o.s * o.d = 1: must be > 1");
  EXPECT_EQ(p.calls(), 0u);
  // hkv = 3 does not divide hq = 4.
  std::vector<float> q2(static_cast<std::size_t>(hq * 2), 0.1f);
  expect_invalid([&] {
    gqa::forward(p, gqa::bshd<const float>(q2.data(), 1, 1, hq, 2), gqa::bshd<const float>(k.data(), 1, 1, 3, 2),
                 gqa::bshd<const float>(k.data(), 1, 1, 3, 2), gqa::bshd(o.data(), 1, 1, hq, 2));
  }, "gqa::pgqa_policy: k.h = 3: the number of KV heads must divide q.h = 4");
  expect_invalid([] { gqa::pgqa_policy bad({.noise = static_cast<gqa::pgqa_noise>(7)}); },
                 "gqa::pgqa_policy: options.noise = 7: must be pgqa_noise::always, train_only or off");
  // finish() with a non-uniform map.
  std::vector<float> ob(8, 1.0f);
  const std::vector<int> alloc = {3, 1};
  expect_invalid([&] { p.finish(gqa::bshd(ob.data(), 1, 2, 4, 1), gqa::head_map::from_allocation(alloc)); },
                 "gqa::pgqa_policy::finish: map: must be uniform contiguous groups");
  expect_invalid([&] { p.finish(gqa::bshd(ob.data(), 1, 2, 4, 1), gqa::head_map::uniform(2, 1)); },
                 "gqa::pgqa_policy::finish: map.hq() = 2: must equal o.h = 4");
}

}  // namespace
