// tests/suites/kdgqa_suite.hpp: gqa::forward<Isa>(kdgqa_policy, ...) against reference::kdgqa (the map,
// exactly) and reference::attention (the output) over unequal and empty groups, masks, padding, head dims
// and lengths (the reference rule, per-sample planning, the hamilton rule); key norms bit-identical to the
// scalar build (summed in double in a fixed order, so the allocation never depends on the ISA). Compiled
// once per ISA: every helper stays in `namespace {}`.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include <gqa/reference/attention.hpp>
#include <gqa/reference/grouping.hpp>
#include <gqa/variants/kdgqa.hpp>

#include "support/isa_suite.hpp"

namespace gqa::test {
// Defined in tests/unit/allocation_test.cpp (a baseline-flags TU).
std::vector<double> scalar_build_key_norms(const float* k, index_t b, index_t s, index_t h, index_t d);
}  // namespace gqa::test

namespace {

using gqa::index_t;

struct kd_case {
  index_t b, sq, skv, hq, hkv, d;
  bool causal, padded;
  std::vector<float> head_scale;  // K head g is multiplied by head_scale[g]: spreads the norms
  bool expect_empty;              // the reference rule must leave some KV head without query heads
  std::string name() const {
    std::ostringstream os;
    os << "b" << b << " sq" << sq << " skv" << skv << " hq" << hq << " hkv" << hkv << " d" << d
       << (causal ? " causal" : "") << (padded ? " padded" : "");
    return os.str();
  }
};

// (hq, hkv) = 6/4, 12/4, 8/2; d ∈ {17, 64}; sq, skv ∈ {1, 63, 65, 200}. The scales make the min-norm
// head's n̂ = 0 (so it gets no query heads before the fix-up), e.g. 6/4 with {1, .6, 1.4, 1.2}:
// n̂ ≈ {.5, 0, 1, .75}, shares ≈ {1.3, 0, 2.7, 2} -> {1, 0, 3, 2}; 8/2 always gives {0, 8} or {8, 0}.
// With {.7, 1.3, 1, .9} the rounded shares ≈ {0, 6.4, 3.3, 2.3} -> {0, 6, 3, 2} sum 11, and the fix-up
// gives the empty head its query head back ({1, 6, 3, 2}): no empty group, on purpose.
std::vector<kd_case> kd_cases() {
  const std::vector<float> a = {1.0f, 0.6f, 1.4f, 1.2f}, a2 = {1.2f, 1.0f, 0.8f, 1.3f};
  const std::vector<float> c = {0.7f, 1.3f, 1.0f, 0.9f}, e = {1.0f, 1.5f};
  std::vector<kd_case> v = {
      {2, 63, 65, 6, 4, 17, false, false, a, true},   {1, 65, 63, 12, 4, 64, true, false, a, true},
      {2, 1, 200, 8, 2, 64, false, true, e, true},    {1, 200, 1, 12, 4, 17, false, false, c, false},
  };
  if (!gqa::test::reduced) {
    v.push_back({2, 200, 200, 6, 4, 64, true, true, a2, true});
    v.push_back({3, 63, 200, 8, 2, 17, true, true, e, true});
    v.push_back({1, 1, 63, 12, 4, 17, true, false, a, true});
    v.push_back({2, 65, 65, 6, 4, 64, false, false, a, true});
  }
  return v;
}

struct kd_data {
  std::vector<float> q, k, v, o;
  std::vector<index_t> kv_lengths;
  kd_data(const kd_case& c, std::uint64_t seed)
      : q(gqa::test::random_floats(static_cast<std::size_t>(c.b * c.sq * c.hq * c.d), seed)),
        k(gqa::test::random_floats(static_cast<std::size_t>(c.b * c.skv * c.hkv * c.d), seed + 1)),
        v(gqa::test::random_floats(static_cast<std::size_t>(c.b * c.skv * c.hkv * c.d), seed + 2)),
        o(q.size(), -7.0f) {
    for (std::size_t i = 0; i < k.size(); ++i)
      k[i] *= c.head_scale[(i / static_cast<std::size_t>(c.d)) % static_cast<std::size_t>(c.hkv)];
    // Right padding: the last batch element sees about half its keys (at least one).
    if (c.padded)
      for (index_t ib = 0; ib < c.b; ++ib) kv_lengths.push_back(ib + 1 == c.b ? c.skv / 2 + 1 : c.skv);
  }
  gqa::tensor_view<const float> qv(const kd_case& c) const { return gqa::bshd<const float>(q.data(), c.b, c.sq, c.hq, c.d); }
  gqa::tensor_view<const float> kv(const kd_case& c) const { return gqa::bshd<const float>(k.data(), c.b, c.skv, c.hkv, c.d); }
  gqa::tensor_view<const float> vv(const kd_case& c) const { return gqa::bshd<const float>(v.data(), c.b, c.skv, c.hkv, c.d); }
  gqa::tensor_view<float> ov(const kd_case& c) { return gqa::bshd(o.data(), c.b, c.sq, c.hq, c.d); }
  /// forward<Isa>(p) on these inputs with the case's mask and padding.
  template <class Isa>
  void forward(gqa::kdgqa_policy& p, const kd_case& c) {
    gqa::attention_options ao;
    ao.causal = c.causal;
    ao.kv_lengths = kv_lengths;
    gqa::forward<Isa>(p, qv(c), kv(c), vv(c), ov(c), ao);
  }
};

// Note [grouping suite tolerance]
// These suites test the grouping, not the core's accuracy (attention_suite does, Note [attention
// tolerance]). Inputs are uniform in [-1, 1], so every output is a mean of values in [-1, 1]. On these
// shapes the core's largest error against the double reference measures 1.4e-7 (about 2.3 u, u = 2^-24)
// on scalar, AVX2 and AVX-512 alike, while a wrong map or a group boundary off by one head puts another
// KV head's values in a row and moves it by 1e-2 or more. The bound 1e-6 (about 17 u, the attention
// suite's floor) separates the two with 7x headroom for rounding differences between ISAs.
constexpr double k_grouping_tolerance = 1e-6;

// Compares o (b, sq, hq, d) with the reference output; returns the largest error.
double kd_max_error(const std::vector<float>& o, const gqa::reference::attention_result& r) {
  double worst = 0.0;
  for (std::size_t i = 0; i < o.size(); ++i) worst = std::max(worst, std::fabs(static_cast<double>(o[i]) - r.o[i]));
  return worst;
}

template <class Isa>
class kdgqa_suite : public gqa::test::isa_test<Isa> {};
TYPED_TEST_SUITE_P(kdgqa_suite);

// The batch-global reference rule and hamilton with a minimum, through gqa::forward<Isa>.
TYPED_TEST_P(kdgqa_suite, forward_matches_reference_grouping_and_attention) {
  int empty_groups = 0;
  for (const kd_case& c : kd_cases())
    for (int rule = 0; rule < 2; ++rule) {
      SCOPED_TRACE(c.name() + (rule ? " hamilton min 1" : " reference"));
      kd_data data(c, 40 + static_cast<std::uint64_t>(c.sq + c.skv));
      gqa::kdgqa_options opt;
      gqa::reference::kdgqa_setup setup;
      if (rule == 1) {
        opt.rule = gqa::allocation_rule::hamilton;
        opt.min_per_kv = setup.min_per_kv = 1;
        setup.hamilton = true;
      }
      gqa::kdgqa_policy p(opt);
      data.forward<TypeParam>(p, c);
      const auto ref = gqa::reference::kdgqa(data.kv(c), c.hq, setup);
      ASSERT_EQ(p.last().alloc, ref.alloc);
      ASSERT_EQ(gqa::to_string(p.last().status), ref.status);
      const gqa::head_map map = gqa::head_map::from_allocation(p.last().alloc);
      ASSERT_EQ(std::vector<index_t>(map.kv_of_q().begin(), map.kv_of_q().end()), ref.kv_of_q);
      const bool has_empty = std::count(ref.alloc.begin(), ref.alloc.end(), 0) > 0;
      if (rule == 0 && c.expect_empty) {
        EXPECT_TRUE(has_empty) << "allocation has no empty group";
      }
      if (rule == 1) {
        EXPECT_FALSE(has_empty);
      }
      empty_groups += has_empty;
      const auto r = gqa::reference::attention(data.qv(c), data.kv(c), data.vv(c), ref.kv_of_q,
                                               1.0 / std::sqrt(static_cast<double>(c.d)), c.causal, data.kv_lengths);
      EXPECT_LE(kd_max_error(data.o, r), k_grouping_tolerance);  // Note [grouping suite tolerance]
    }
  EXPECT_GT(empty_groups, 0);
}

// per_sample: one allocation per batch element, each equal to the reference on that sample alone.
TYPED_TEST_P(kdgqa_suite, per_sample_matches_reference_per_sample) {
  for (const kd_case& c : kd_cases()) {
    if (c.b == 1) continue;
    SCOPED_TRACE(c.name());
    kd_data data(c, 90 + static_cast<std::uint64_t>(c.d));
    // Rescale each sample's heads differently, so the per-sample allocations differ.
    for (std::size_t i = 0; i < data.k.size(); ++i) {
      const auto ib = i / static_cast<std::size_t>(c.skv * c.hkv * c.d);
      const auto g = (i / static_cast<std::size_t>(c.d)) % static_cast<std::size_t>(c.hkv);
      data.k[i] *= 1.0f + 0.3f * static_cast<float>((ib + g) % 3);
    }
    gqa::kdgqa_options opt;
    opt.per_sample = true;
    gqa::kdgqa_policy p(opt);
    data.forward<TypeParam>(p, c);
    for (index_t ib = 0; ib < c.b; ++ib) {
      const auto qs = gqa::detail::sample(data.qv(c), ib), ks = gqa::detail::sample(data.kv(c), ib);
      const auto vs = gqa::detail::sample(data.vv(c), ib);
      const auto ref = gqa::reference::kdgqa(ks, c.hq);
      if (ib + 1 == c.b) {
        EXPECT_EQ(p.last().alloc, ref.alloc);
      }
      std::vector<index_t> len;
      if (c.padded) len.push_back(data.kv_lengths[static_cast<std::size_t>(ib)]);
      const auto r = gqa::reference::attention(qs, ks, vs, ref.kv_of_q, 1.0 / std::sqrt(static_cast<double>(c.d)), c.causal, len);
      const auto per = static_cast<std::size_t>(c.sq * c.hq * c.d);
      const std::vector<float> os(data.o.begin() + static_cast<std::ptrdiff_t>(ib * static_cast<index_t>(per)),
                                  data.o.begin() + static_cast<std::ptrdiff_t>((ib + 1) * static_cast<index_t>(per)));
      EXPECT_LE(kd_max_error(os, r), k_grouping_tolerance) << "sample " << ib;  // Note [grouping suite tolerance]
    }
  }
}

// Norms are summed in double in a fixed order: identical for any thread count or ISA.
TYPED_TEST_P(kdgqa_suite, norms_bitwise_equal_to_scalar_build) {
  for (const kd_case& c : kd_cases()) {
    kd_data data(c, 7);
    const auto here = gqa::key_norms(data.kv(c));
    const auto base = gqa::test::scalar_build_key_norms(data.k.data(), c.b, c.skv, c.hkv, c.d);
    ASSERT_EQ(here.size(), base.size());
    EXPECT_EQ(0, std::memcmp(here.data(), base.data(), here.size() * sizeof(double))) << c.name();
  }
}

REGISTER_TYPED_TEST_SUITE_P(kdgqa_suite, forward_matches_reference_grouping_and_attention,
                            per_sample_matches_reference_per_sample, norms_bitwise_equal_to_scalar_build);

}  // namespace
