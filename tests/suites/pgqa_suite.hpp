// tests/suites/pgqa_suite.hpp: PGQA end to end on every ISA: gqa::forward with pgqa_policy against
// reference::attention followed by the literal transcription of the noise step (reference::pgqa); the
// perturbation step bitwise equal to the baseline TU's (tests/unit/pgqa_test.cpp) on the same input; and
// bitwise equal results for 1 and 2 threads (gqa's promise: the noise and the output are the same for any
// thread count, ISA and tile size). Compiled once per ISA: helpers stay in `namespace {}`.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include <gqa/gqa.hpp>
#include <gqa/reference/attention.hpp>
#include <gqa/reference/pgqa.hpp>

#include "support/isa_suite.hpp"
#include "support/tolerance.hpp"

namespace gqa::test {
/// Defined in tests/unit/pgqa_test.cpp, compiled with the baseline flags: that TU's pgqa_perturb.
void pgqa_perturb_baseline(std::vector<float>& o, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d,
                           std::int64_t hkv, std::uint64_t seed, std::uint64_t layer, std::uint64_t call);
/// Same TU: its pgqa_standardised_noise.
std::vector<double> pgqa_noise_baseline(std::int64_t n, std::uint64_t seed, std::uint64_t layer, std::uint64_t call,
                                        std::int64_t group, std::int64_t head_in_group);
}  // namespace gqa::test

namespace {

using gqa::index_t;
using gqa::test::attention_tolerance;  // Note [attention tolerance], tests/support/tolerance.hpp
using gqa::test::naive_fp32;

template <class Isa>
class pgqa_suite : public gqa::test::isa_test<Isa> {};
TYPED_TEST_SUITE_P(pgqa_suite);

struct pgqa_shape {
  index_t b, sq, skv, hq, hkv, d, dv;
};

std::vector<pgqa_shape> pgqa_shapes() {
  std::vector<pgqa_shape> v = {{1, 1, 5, 4, 2, 8, 8},    {2, 7, 40, 6, 3, 16, 16}, {3, 33, 17, 8, 1, 64, 64},
                               {2, 5, 9, 4, 4, 12, 20},  {1, 1, 3, 2, 1, 4, 2},    {2, 16, 16, 8, 2, 40, 24}};
  if (!gqa::test::reduced) v.push_back({2, 65, 130, 12, 4, 64, 64});
  return v;
}

// forward(pgqa_policy) == reference::attention then reference::pgqa, for every mode-always call.
TYPED_TEST_P(pgqa_suite, matches_reference_attention_and_noise) {
  for (const pgqa_shape& sh : pgqa_shapes()) {
    SCOPED_TRACE(testing::Message() << "b " << sh.b << " sq " << sh.sq << " skv " << sh.skv << " hq " << sh.hq << " hkv "
                                    << sh.hkv << " d " << sh.d << " dv " << sh.dv);
    const auto q = gqa::test::random_floats(static_cast<std::size_t>(sh.b * sh.sq * sh.hq * sh.d), 31);
    const auto k = gqa::test::random_floats(static_cast<std::size_t>(sh.b * sh.skv * sh.hkv * sh.d), 32);
    const auto v = gqa::test::random_floats(static_cast<std::size_t>(sh.b * sh.skv * sh.hkv * sh.dv), 33);
    const auto qv = gqa::bshd<const float>(q.data(), sh.b, sh.sq, sh.hq, sh.d);
    const auto kv = gqa::bshd<const float>(k.data(), sh.b, sh.skv, sh.hkv, sh.d);
    const auto vv = gqa::bshd<const float>(v.data(), sh.b, sh.skv, sh.hkv, sh.dv);
    gqa::pgqa_policy p({.seed = 99, .layer = 3});
    p.set_calls(4);
    std::vector<float> o(static_cast<std::size_t>(sh.b * sh.sq * sh.hq * sh.dv));
    gqa::forward<TypeParam>(p, qv, kv, vv, gqa::bshd(o.data(), sh.b, sh.sq, sh.hq, sh.dv));
    EXPECT_EQ(p.calls(), 5u);

    const std::vector<index_t> kv_of_q = gqa::test::uniform_kv_of_q(sh.hq, sh.hkv);
    const auto att = gqa::reference::attention(qv, kv, vv, kv_of_q, 1.0 / std::sqrt(double(sh.d)), false);
    const auto ref = gqa::reference::pgqa(att.o, sh.b, sh.sq, sh.hq, sh.dv, sh.hkv, 99, 3, 4);
    // Tolerance. The core's output X is within δ = 2·max|X_naive − X_ref| + 1e-6·max(1, max|V|) of the double
    // attention (Note [attention tolerance]). The noise step maps X to X − μ − σZ with |δμ| ≤ δ and
    // |δσ| ≤ δ·√(N/(N−1)) ≤ 1.5δ, so |δX'| ≤ (2 + 1.5·max|Z|)·δ, with max|Z| taken from the documented noise
    // of these rows; the final float rounding adds 2⁻²⁴·|X'|. Bound: (2 + 1.5·max|Z|)·δ + 2⁻²³·|ref|.
    const auto naive = naive_fp32(qv, kv, vv, kv_of_q, static_cast<float>(1.0 / std::sqrt(double(sh.d))));
    const double delta = attention_tolerance(naive.o, att.o, v);
    double zmax = 0.0;
    for (index_t g = 0; g < sh.hkv; ++g)
      for (index_t i = 0; i < sh.hq / sh.hkv; ++i)
        for (const double z : gqa::pgqa_standardised_noise(sh.sq * sh.dv, 99, 3, 4, g, i)) zmax = std::max(zmax, std::fabs(z));
    const double tol = (2.0 + 1.5 * zmax) * delta;
    for (std::size_t i = 0; i < o.size(); ++i) ASSERT_NEAR(o[i], ref[i], tol + 0x1p-23 * std::fabs(ref[i])) << i;
  }
}

// The perturbation alone, on the same float input, is bitwise identical in this ISA's TU and in the baseline
// TU (different compiler flags, different ABI namespace: Note [ABI namespace]). The standardised noise is
// compared in double too: a float output hides most last-bit differences of the double pipeline (such as a
// compiler-contracted FMA on one ISA only), the double noise row does not. Such a difference shows in only
// some rows (an FMA in the variance sum changed ~60% of 64-row samples when tried), hence 64 calls per n.
TYPED_TEST_P(pgqa_suite, perturbation_is_bitwise_identical_across_isas) {
  for (const index_t n : {2, 7, 1000, 12608})
    for (std::uint64_t call = 0; call < 64; ++call) {
      const auto mine = gqa::pgqa_standardised_noise(n, 77, 1, call, 3, 1);
      const auto base = gqa::test::pgqa_noise_baseline(n, 77, 1, call, 3, 1);
      ASSERT_EQ(mine.size(), base.size());
      ASSERT_EQ(0, std::memcmp(mine.data(), base.data(), mine.size() * sizeof(double))) << n << " " << call;
    }
  const index_t b = 3, s = 37, hq = 6, hkv = 2, d = 24;
  const auto input = gqa::test::random_floats(static_cast<std::size_t>(b * s * hq * d), 34, -3.0f, 2.0f);
  auto mine = input, base = input;
  gqa::pgqa_perturb(gqa::bshd(mine.data(), b, s, hq, d), hkv, 1234, 5, 6);
  gqa::test::pgqa_perturb_baseline(base, b, s, hq, d, hkv, 1234, 5, 6);
  ASSERT_NE(mine, input);
  ASSERT_EQ(0, std::memcmp(mine.data(), base.data(), mine.size() * sizeof(float)));
}

// 1 and 2 threads give bitwise identical perturbed outputs (the core is thread-count invariant, and the
// noise is keyed, not streamed).
TYPED_TEST_P(pgqa_suite, one_and_two_threads_are_bitwise_equal) {
  const index_t b = 2, sq = 40, skv = 70, hq = 8, hkv = 2, d = 32;
  const auto q = gqa::test::random_floats(static_cast<std::size_t>(b * sq * hq * d), 35);
  const auto k = gqa::test::random_floats(static_cast<std::size_t>(b * skv * hkv * d), 36);
  const auto v = gqa::test::random_floats(static_cast<std::size_t>(b * skv * hkv * d), 37);
  std::vector<float> o1(q.size()), o2(q.size());
  for (int threads : {1, 2}) {
    gqa::pgqa_policy p({.seed = 3, .layer = 1});
    gqa::attention_options opt;
    opt.num_threads = threads;
    opt.causal = true;
    gqa::forward<TypeParam>(p, gqa::bshd<const float>(q.data(), b, sq, hq, d), gqa::bshd<const float>(k.data(), b, skv, hkv, d),
                            gqa::bshd<const float>(v.data(), b, skv, hkv, d),
                            gqa::bshd((threads == 1 ? o1 : o2).data(), b, sq, hq, d), opt);
  }
  ASSERT_EQ(0, std::memcmp(o1.data(), o2.data(), o1.size() * sizeof(float)));
}

REGISTER_TYPED_TEST_SUITE_P(pgqa_suite, matches_reference_attention_and_noise, perturbation_is_bitwise_identical_across_isas,
                            one_and_two_threads_are_bitwise_equal);

}  // namespace
