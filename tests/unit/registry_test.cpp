// registry_test.cpp: the registry of variants (gqa/variants/registry.hpp): names in registry order and
// unique, lookup by name, every variant's default heads on a range of layers (worked out by hand for the
// eight documented variants), factories for non-default heads, and their errors. Every registered variant
// through gqa::forward on every ISA against the reference: suites/registry_suite.hpp. That every one is
// benchmarked and compared: bench/check_registry.cmake.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <gqa/variants.hpp>

#include "support/expect.hpp"

namespace {

using gqa::index_t;
using gqa::model_shape;
using gqa::variant_heads;

const model_shape k_layers[] = {{8, 2, 16, 0}, {12, 4, 64, 0}, {32, 8, 128, 0}, {6, 3, 8, 0}, {4, 1, 4, 0}, {2, 2, 5, 7}};

TEST(registry, names_follow_the_registry_in_order_and_are_unique) {
  std::vector<std::string_view> in_order;
  gqa::for_each_variant([&](auto t) { in_order.push_back(decltype(t)::type::name); });
  ASSERT_EQ(in_order.size(), gqa::variant_names.size());
  EXPECT_TRUE(std::equal(in_order.begin(), in_order.end(), gqa::variant_names.begin()));
  std::vector<std::string_view> sorted = in_order;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(std::adjacent_find(sorted.begin(), sorted.end()), sorted.end());
  // The variants the docs describe are all registered (others may join).
  for (const std::string_view v : {"mha", "mqa", "gqa", "sqa", "kdgqa", "dgqa", "pgqa", "wgqa"})
    EXPECT_NE(std::find(in_order.begin(), in_order.end(), v), in_order.end()) << v;
}

TEST(registry, lookup_by_name) {
  for (const std::string_view v : gqa::variant_names) {
    std::string_view seen;
    EXPECT_TRUE(gqa::visit_variant(v, [&](auto t) { seen = decltype(t)::type::name; }));
    EXPECT_EQ(seen, v);
    EXPECT_TRUE(gqa::variant_heads_for(v, k_layers[0]).has_value()) << v;
  }
  int calls = 0;
  EXPECT_FALSE(gqa::visit_variant("nope", [&](auto) { ++calls; }));
  EXPECT_FALSE(gqa::visit_variant("", [&](auto) { ++calls; }));
  EXPECT_EQ(calls, 0);
  EXPECT_FALSE(gqa::variant_heads_for("MHA", k_layers[0]).has_value());  // names are case-sensitive
}

// The default heads of the documented variants on a layer of H query heads and G groups, by hand.
TEST(registry, default_heads_of_the_documented_variants) {
  for (const model_shape& m : k_layers) {
    const index_t H = m.heads, G = m.groups;
    const std::map<std::string_view, variant_heads> want = {
        {"mha", {H, H, H}},         {"mqa", {H, 1, 1}},   {"gqa", {H, G, G}},   {"sqa", {H / 2, H / 2, H / 2}},
        {"kdgqa", {H, G, G}},       {"dgqa", {H, G, G}},  {"pgqa", {H, G, G}},  {"wgqa", {H, G, H}}};
    for (const auto& [name, heads] : want) {
      const auto got = gqa::variant_heads_for(name, m);
      ASSERT_TRUE(got.has_value()) << name;
      EXPECT_EQ(*got, heads) << name << " on H = " << H << ", G = " << G;
    }
  }
}

// Every registered variant: the default heads are a valid attention shape, and the default factory builds
// a policy (with the registry's own callback form for DGQA) whose plan has exactly those heads.
TEST(registry, every_default_policy_plans_its_default_heads) {
  for (const model_shape& m : k_layers) {
    gqa::for_each_variant([&](auto t) {
      using P = typename decltype(t)::type;
      SCOPED_TRACE(std::string(P::name) + " on H = " + std::to_string(m.heads) + ", G = " + std::to_string(m.groups));
      const variant_heads h = P::heads_for(m);
      EXPECT_GE(h.hkv, 1);
      EXPECT_LE(h.hkv, h.hq);
      EXPECT_TRUE(h.kv_in == h.hkv || h.kv_in == m.heads);
      // Inputs with the shapes the registry announces: q (1, 3, hq, d), k and v (1, 4, kv_in, d).
      std::vector<float> q(static_cast<std::size_t>(3 * h.hq * m.d), 0.5f), kv(static_cast<std::size_t>(4 * h.kv_in * m.d));
      for (std::size_t i = 0; i < kv.size(); ++i) kv[i] = 0.125f * static_cast<float>(i % 7);
      const auto qv = gqa::bshd<const float>(q.data(), 1, 3, h.hq, m.d);
      const auto kvv = gqa::bshd<const float>(kv.data(), 1, 4, h.kv_in, m.d);
      bool ran = false;
      gqa::with_default_policy<P>(m, [&](P& p) {
        gqa::kv_views prepared{kvv, kvv};
        if constexpr (gqa::policy_with_prepare<P>) prepared = p.prepare(kvv, kvv);
        EXPECT_EQ(prepared.k.h, h.hkv);
        const gqa::head_map map = p.plan(qv, prepared.k);
        EXPECT_EQ(map.hq(), h.hq);
        EXPECT_EQ(map.hkv(), h.hkv);
        ran = true;
      });
      EXPECT_TRUE(ran);
    });
  }
}

// Factories for heads other than the defaults: what gqa-compare builds for its rows.
TEST(registry, factories_take_other_heads) {
  const model_shape m{16, 4, 8, 3};
  gqa::with_policy<gqa::sqa_policy>(m, {8, 2, 2}, [](gqa::sqa_policy& p) {  // standard SQA, hq = H/2, hkv = H/8
    EXPECT_EQ(p.config.baseline_heads, 16);
    EXPECT_EQ(p.config.hq, 8);
    EXPECT_EQ(p.config.hkv, 2);
  });
  gqa::with_policy<gqa::wgqa_policy>(m, {16, 2, 16}, [](gqa::wgqa_policy& p) {
    EXPECT_EQ(p.weights().hq, 16);
    EXPECT_EQ(p.weights().hkv, 2);
    EXPECT_EQ(p.weights().kind, gqa::wgqa_kind::scalar);
  });
  gqa::with_policy<gqa::dgqa_policy>(m, {16, 8, 8}, [](gqa::dgqa_policy& p) {
    EXPECT_EQ(p.state().splits, (std::vector<int>(8, 2)));
    EXPECT_EQ(p.mode(), gqa::dgqa_mode::eval);
    EXPECT_EQ(p.options().seed, 3u);
  });
  gqa::with_default_policy<gqa::pgqa_policy>(m, [](gqa::pgqa_policy& p) { EXPECT_EQ(p.options().seed, 3u); });
  // The callback's result is returned, whatever the factory's form.
  EXPECT_EQ(gqa::with_default_policy<gqa::mha_policy>(m, [](gqa::mha_policy&) { return 41; }), 41);
  EXPECT_EQ(gqa::with_default_policy<gqa::dgqa_policy>(m, [](gqa::dgqa_policy&) { return 42; }), 42);
}

TEST(registry, factories_reject_heads_a_variant_does_not_have) {
  using gqa::test::expect_invalid;
  expect_invalid([] { gqa::with_policy<gqa::sqa_policy>({8, 2, 4, 0}, {8, 2, 2}, [](auto&) {}); },
                 {"gqa::sqa_config::sqa", "hq = 8", "must be in [1, baseline_heads = 8)"});
  expect_invalid([] { gqa::with_default_policy<gqa::wgqa_policy>({8, 3, 4, 0}, [](auto&) {}); },
                 {"gqa::wgqa_weights::mean_init", "hkv = 3: must divide hq = 8"});
  expect_invalid([] { gqa::with_default_policy<gqa::dgqa_policy>({2, 3, 4, 0}, [](auto&) {}); },
                 {"gqa::dgqa_state::initial"});
}

}  // namespace
