// static_variants_test.cpp: the static variants outside the ISA sweep: every error path of mha_policy,
// mqa_policy, gqa_policy (GQA requires H_kv to divide H_q, else a clear error), sqa_policy and sqa_config
// (the SQA paper's configurations), each thrown by gqa::forward before any work; the head counts
// of the named SQA configurations worked by hand; and each policy's plan. The outputs against the reference
// on every ISA are in suites/static_variants_suite.hpp; the registry of variants in registry_test.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include <gqa/variants.hpp>

#include "support/expect.hpp"

namespace {

using gqa::index_t;
using gqa::sqa_config;
using gqa::test::expect_invalid;

constexpr float k_sentinel = 7.0f;

/// Inputs of one forward() call with hq query heads and hkv KV heads (b = 1, sq = 2, skv = 3, d = 4), and
/// an output filled with a sentinel, to check that a rejected call writes nothing.
struct call {
  index_t hq, hkv;
  std::vector<float> q, kv, o;
  call(index_t hq_, index_t hkv_)
      : hq(hq_), hkv(hkv_), q(static_cast<std::size_t>(2 * hq * 4), 0.5f), kv(static_cast<std::size_t>(3 * hkv * 4), 0.25f),
        o(q.size(), k_sentinel) {}
  template <class Policy>
  void forward(Policy& p) {
    const auto kvv = gqa::bshd<const float>(kv.data(), 1, 3, hkv, 4);
    gqa::forward(p, gqa::bshd<const float>(q.data(), 1, 2, hq, 4), kvv, kvv, gqa::bshd(o.data(), 1, 2, hq, 4));
  }
  bool output_untouched() const {
    return std::all_of(o.begin(), o.end(), [](float x) { return x == k_sentinel; });
  }
};

/// Expects forward(policy) with (hq, hkv) heads to throw naming every part, with the output untouched.
template <class Policy>
void expect_rejected(Policy p, index_t hq, index_t hkv, std::initializer_list<std::string> parts) {
  SCOPED_TRACE(std::string(Policy::name) + " hq " + std::to_string(hq) + " hkv " + std::to_string(hkv));
  call c(hq, hkv);
  expect_invalid([&] { c.forward(p); }, parts);
  EXPECT_TRUE(c.output_untouched()) << "forward() wrote the output before rejecting the call";
}

/// Expects forward(policy) with (hq, hkv) heads to run and write every output (all inputs are 0.25 for V,
/// so every output is 0.25 whatever the weights).
template <class Policy>
void expect_runs(Policy p, index_t hq, index_t hkv) {
  SCOPED_TRACE(std::string(Policy::name) + " hq " + std::to_string(hq) + " hkv " + std::to_string(hkv));
  call c(hq, hkv);
  ASSERT_NO_THROW(c.forward(p));
  for (const float x : c.o) ASSERT_FLOAT_EQ(x, 0.25f);
}

std::vector<index_t> kv_of_q(const gqa::head_map& m) { return {m.kv_of_q().begin(), m.kv_of_q().end()}; }

// MHA needs k.h == q.h.
TEST(static_variants, mha_needs_one_kv_head_per_query_head) {
  expect_rejected(gqa::mha_policy{}, 8, 2,
                  {"gqa::mha_policy: k.h = 2: MHA needs one KV head per query head (q.h = 8)"});
  expect_rejected(gqa::mha_policy{}, 8, 1, {"gqa::mha_policy", "k.h = 1", "q.h = 8"});
  expect_rejected(gqa::mha_policy{}, 4, 8, {"gqa::mha_policy", "k.h = 8", "q.h = 4"});  // more KV heads than query heads
  expect_runs(gqa::mha_policy{}, 8, 8);
  expect_runs(gqa::mha_policy{}, 1, 1);
}

// MQA needs exactly one KV head.
TEST(static_variants, mqa_needs_exactly_one_kv_head) {
  expect_rejected(gqa::mqa_policy{}, 8, 2, {"gqa::mqa_policy: k.h = 2: MQA has exactly one KV head"});
  expect_rejected(gqa::mqa_policy{}, 8, 8, {"gqa::mqa_policy", "k.h = 8"});
  expect_rejected(gqa::mqa_policy{}, 1, 3, {"gqa::mqa_policy", "k.h = 3"});
  expect_runs(gqa::mqa_policy{}, 8, 1);
  expect_runs(gqa::mqa_policy{}, 1, 1);
}

// GQA: H_kv must divide H_q, and the message names the argument and its value.
TEST(static_variants, gqa_needs_kv_heads_dividing_query_heads) {
  expect_rejected(gqa::gqa_policy{}, 8, 3,
                  {"gqa::gqa_policy: k.h = 3: the number of KV heads must divide q.h = 8 (uniform GQA groups)",
                   "use KDGQA/DGQA or head_map::from_allocation for unequal groups"});
  expect_rejected(gqa::gqa_policy{}, 12, 5, {"gqa::gqa_policy: k.h = 5", "q.h = 12"});
  expect_rejected(gqa::gqa_policy{}, 4, 8, {"gqa::gqa_policy: k.h = 8", "q.h = 4"});  // 4 % 8 != 0
  expect_rejected(gqa::gqa_policy{}, 1, 2, {"gqa::gqa_policy: k.h = 2", "q.h = 1"});
  for (const index_t hkv : {1, 2, 3, 4, 6, 12}) expect_runs(gqa::gqa_policy{}, 12, hkv);
}

// The SQA configurations by hand for H = 16: SQA(16, 8, 4), sSQA = H/2 both, xSQA = H/4 both, xSMQA = H/4
// and 1.
TEST(static_variants, sqa_configurations_by_hand) {
  struct expected {
    sqa_config got;
    index_t baseline, hq, hkv;
    std::string_view name;
  };
  const expected cases[] = {
      {sqa_config::standard(16, 8, 4), 16, 8, 4, "sqa"},  {sqa_config::symmetric(16), 16, 8, 8, "ssqa"},
      {sqa_config::extreme(16), 16, 4, 4, "xsqa"},        {sqa_config::extreme_mqa(16), 16, 4, 1, "xsmqa"},
      // Odd or small H: H/2 and H/4 round down.
      {sqa_config::symmetric(2), 2, 1, 1, "ssqa"},        {sqa_config::symmetric(7), 7, 3, 3, "ssqa"},
      {sqa_config::extreme(4), 4, 1, 1, "xsqa"},          {sqa_config::extreme(11), 11, 2, 2, "xsqa"},
      {sqa_config::extreme_mqa(4), 4, 1, 1, "xsmqa"},     {sqa_config::standard(2, 1, 1), 2, 1, 1, "sqa"},
      {sqa_config::standard(32, 31, 1), 32, 31, 1, "sqa"},
  };
  for (const expected& e : cases) {
    SCOPED_TRACE(std::string(e.name) + " H " + std::to_string(e.baseline));
    EXPECT_EQ(e.got.baseline_heads, e.baseline);
    EXPECT_EQ(e.got.hq, e.hq);
    EXPECT_EQ(e.got.hkv, e.hkv);
    EXPECT_EQ(e.got.name, e.name);
    expect_runs(gqa::sqa_policy{e.got}, e.hq, e.hkv);
  }
}

// sqa_config's bounds (hq < H, 1 <= hkv <= hq, hkv divides hq; H >= 2), each naming the
// constructor, the argument and its value.
TEST(static_variants, sqa_config_rejects_bad_head_counts) {
  // H < 2.
  expect_invalid([] { sqa_config::symmetric(1); }, "gqa::sqa_config::ssqa: baseline_heads = 1: must be >= 2");
  expect_invalid([] { sqa_config::standard(0, 1, 1); }, "gqa::sqa_config::sqa: baseline_heads = 0: must be >= 2");
  expect_invalid([] { sqa_config::extreme(-4); }, "gqa::sqa_config::xsqa: baseline_heads = -4: must be >= 2");
  expect_invalid([] { sqa_config::extreme_mqa(1); }, "gqa::sqa_config::xsmqa: baseline_heads = 1: must be >= 2");
  // H/4 == 0: no query head left.
  expect_invalid([] { sqa_config::extreme(2); }, "gqa::sqa_config::xsqa: hq = 0: must be in [1, baseline_heads = 2)");
  expect_invalid([] { sqa_config::extreme(3); }, "gqa::sqa_config::xsqa: hq = 0: must be in [1, baseline_heads = 3)");
  expect_invalid([] { sqa_config::extreme_mqa(3); }, "gqa::sqa_config::xsmqa: hq = 0: must be in [1, baseline_heads = 3)");
  // hq must be in [1, H).
  expect_invalid([] { sqa_config::standard(16, 16, 4); }, "gqa::sqa_config::sqa: hq = 16: must be in [1, baseline_heads = 16)");
  expect_invalid([] { sqa_config::standard(16, 20, 4); }, "gqa::sqa_config::sqa: hq = 20");
  expect_invalid([] { sqa_config::standard(16, 0, 1); }, "gqa::sqa_config::sqa: hq = 0");
  // hkv must be in [1, hq] and divide hq.
  expect_invalid([] { sqa_config::standard(16, 8, 0); }, "gqa::sqa_config::sqa: hkv = 0: must be in [1, hq = 8]");
  expect_invalid([] { sqa_config::standard(16, 8, 9); }, "gqa::sqa_config::sqa: hkv = 9: must be in [1, hq = 8]");
  expect_invalid([] { sqa_config::standard(16, 8, 3); }, "gqa::sqa_config::sqa: hkv = 3: must divide hq = 8");
  expect_invalid([] { sqa_config::standard(24, 12, 5); }, "gqa::sqa_config::sqa: hkv = 5: must divide hq = 12");
}

// sqa_policy checks q.h and k.h against its configuration, before any work.
TEST(static_variants, sqa_policy_needs_the_configured_head_counts) {
  const gqa::sqa_policy ssqa{sqa_config::symmetric(16)};  // 8/8
  expect_rejected(ssqa, 16, 8, {"gqa::sqa_policy(ssqa): q.h = 16: must equal the configuration's hq = 8"});
  expect_rejected(ssqa, 8, 4, {"gqa::sqa_policy(ssqa): k.h = 4: must equal the configuration's hkv = 8"});
  const gqa::sqa_policy xsmqa{sqa_config::extreme_mqa(16)};  // 4/1
  expect_rejected(xsmqa, 4, 2, {"gqa::sqa_policy(xsmqa): k.h = 2: must equal the configuration's hkv = 1"});
  expect_rejected(xsmqa, 16, 1, {"gqa::sqa_policy(xsmqa): q.h = 16: must equal the configuration's hq = 4"});
  const gqa::sqa_policy sqa{sqa_config::standard(16, 8, 4)};
  expect_rejected(sqa, 8, 2, {"gqa::sqa_policy(sqa): k.h = 2", "hkv = 4"});
  // A policy without a configuration (hq = hkv = 0) rejects every call.
  expect_rejected(gqa::sqa_policy{}, 8, 8, {"gqa::sqa_policy(sqa): q.h = 8: must equal the configuration's hq = 0"});
}

// Each plan is the uniform contiguous map h / (hq / hkv), written out by hand.
TEST(static_variants, plans_are_the_uniform_maps) {
  std::vector<float> buf(12 * 4);
  const auto view = [&](index_t h) { return gqa::bshd<const float>(buf.data(), 1, 1, h, 4); };
  EXPECT_EQ(kv_of_q(gqa::mha_policy{}.plan(view(5), view(5))), (std::vector<index_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(kv_of_q(gqa::mqa_policy{}.plan(view(5), view(1))), (std::vector<index_t>{0, 0, 0, 0, 0}));
  EXPECT_EQ(kv_of_q(gqa::gqa_policy{}.plan(view(12), view(4))),
            (std::vector<index_t>{0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3}));
  EXPECT_EQ(kv_of_q(gqa::gqa_policy{}.plan(view(6), view(2))), (std::vector<index_t>{0, 0, 0, 1, 1, 1}));
  EXPECT_EQ(kv_of_q(gqa::sqa_policy{sqa_config::standard(16, 8, 4)}.plan(view(8), view(4))),
            (std::vector<index_t>{0, 0, 1, 1, 2, 2, 3, 3}));
  EXPECT_EQ(kv_of_q(gqa::sqa_policy{sqa_config::extreme_mqa(16)}.plan(view(4), view(1))),
            (std::vector<index_t>{0, 0, 0, 0}));
}

}  // namespace
