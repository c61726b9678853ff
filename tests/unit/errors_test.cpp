// Every error path of gqa::attend() and gqa::forward(): each bad argument throws gqa::invalid_argument
// (also catchable as std::invalid_argument) whose what() names the argument and its value, before any
// work: the output is untouched and a policy's plan() is never called.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <gqa/attention.hpp>
#include <gqa/variants/policy.hpp>

#include "support/expect.hpp"

namespace {

using gqa::index_t;
using gqa::test::expect_invalid;  // gqa::invalid_argument, also a std::invalid_argument

/// Arguments of one call; each test starts from a valid call and breaks one thing.
struct call_args {
  gqa::tensor_view<const float> q, k, v;
  gqa::tensor_view<float> o;
  gqa::head_map map;
  gqa::attention_options opt;
};

constexpr index_t b = 2, sq = 3, skv = 5, hq = 4, hkv = 2, d = 8, dv = 6;
constexpr float k_sentinel = 7.0f;

class errors_test : public ::testing::Test {
 protected:
  // k and then o share one arena so that aliasing tests can overlap them by a single float.
  std::vector<float> q_buf = std::vector<float>(static_cast<std::size_t>(b * sq * hq * d), 0.5f);
  // v has room past its view so that an output placed inside it stays inside the allocation.
  std::vector<float> v_buf = std::vector<float>(static_cast<std::size_t>(b * skv * hkv * dv + b * sq * hq * dv), 0.25f);
  static constexpr std::size_t k_size = static_cast<std::size_t>(b * skv * hkv * d);
  static constexpr std::size_t o_size = static_cast<std::size_t>(b * sq * hq * dv);
  std::vector<float> arena = std::vector<float>(k_size + o_size, 0.0f);
  std::vector<float> lse_buf = std::vector<float>(static_cast<std::size_t>(b * hq * sq));

  void SetUp() override {
    std::fill(arena.begin(), arena.begin() + static_cast<std::ptrdiff_t>(k_size), -0.5f);
    std::fill(arena.begin() + static_cast<std::ptrdiff_t>(k_size), arena.end(), k_sentinel);
  }

  float* o_data() { return arena.data() + k_size; }

  call_args valid() {
    call_args a;
    a.q = gqa::bshd<const float>(q_buf.data(), b, sq, hq, d);
    a.k = gqa::bshd<const float>(arena.data(), b, skv, hkv, d);
    a.v = gqa::bshd<const float>(v_buf.data(), b, skv, hkv, dv);
    a.o = gqa::bshd(o_data(), b, sq, hq, dv);
    a.map = gqa::head_map::uniform(hq, hkv);
    a.opt.lse = lse_buf;
    return a;
  }

  bool output_untouched() const {
    return std::all_of(arena.begin() + static_cast<std::ptrdiff_t>(k_size), arena.end(),
                       [](float x) { return x == k_sentinel; });
  }

  /// Breaks a valid call with `breaker` and expects attend() to reject it naming `parts`, writing nothing.
  void expect_attend_rejects(const std::function<void(call_args&)>& breaker, const std::vector<std::string>& parts) {
    call_args a = valid();
    breaker(a);
    expect_invalid([&] { gqa::attend(a.q, a.k, a.v, a.o, a.map, a.opt); }, parts);
    EXPECT_TRUE(output_untouched()) << "attend() wrote the output before rejecting the call";
  }
};

TEST_F(errors_test, valid_call_runs) {
  call_args a = valid();
  EXPECT_NO_THROW(gqa::attend(a.q, a.k, a.v, a.o, a.map, a.opt));
  EXPECT_FALSE(output_untouched());
  // Every value is 0.25, so the output is 0.25 whatever the weights.
  for (std::size_t i = k_size; i < arena.size(); ++i) EXPECT_FLOAT_EQ(arena[i], 0.25f);
}

TEST_F(errors_test, null_data) {
  expect_attend_rejects([](call_args& a) { a.q.data = nullptr; }, {"gqa::attend", "q.data = nullptr"});
  expect_attend_rejects([](call_args& a) { a.k.data = nullptr; }, {"k.data = nullptr"});
  expect_attend_rejects([](call_args& a) { a.v.data = nullptr; }, {"v.data = nullptr"});
  expect_attend_rejects([](call_args& a) { a.o.data = nullptr; }, {"o.data = nullptr"});
}

TEST_F(errors_test, non_positive_extents) {
  expect_attend_rejects([](call_args& a) { a.q.b = 0; }, {"q.b = 0"});
  expect_attend_rejects([](call_args& a) { a.q.s = -3; }, {"q.s = -3"});
  expect_attend_rejects([](call_args& a) { a.q.h = 0; }, {"q.h = 0"});
  expect_attend_rejects([](call_args& a) { a.q.d = 0; }, {"q.d = 0"});
  expect_attend_rejects([](call_args& a) { a.k.b = -1; }, {"k.b = -1"});
  expect_attend_rejects([](call_args& a) { a.k.s = 0; }, {"k.s = 0"});
  expect_attend_rejects([](call_args& a) { a.k.h = 0; }, {"k.h = 0"});
  expect_attend_rejects([](call_args& a) { a.v.d = 0; }, {"v.d = 0"});
  expect_attend_rejects([](call_args& a) { a.v.s = -7; }, {"v.s = -7"});
  expect_attend_rejects([](call_args& a) { a.o.s = 0; }, {"o.s = 0"});
  expect_attend_rejects([](call_args& a) { a.o.h = -2; }, {"o.h = -2"});
  expect_attend_rejects([](call_args& a) { a.o.d = 0; }, {"o.d = 0"});
}

TEST_F(errors_test, head_dim_stride_must_be_one) {
  expect_attend_rejects([](call_args& a) { a.q.stride_d = 2; }, {"q.stride_d = 2"});
  expect_attend_rejects([](call_args& a) { a.k.stride_d = 0; }, {"k.stride_d = 0"});
  expect_attend_rejects([](call_args& a) { a.v.stride_d = -1; }, {"v.stride_d = -1"});
  expect_attend_rejects([](call_args& a) { a.o.stride_d = 3; }, {"o.stride_d = 3"});
}

TEST_F(errors_test, mismatched_extents) {
  expect_attend_rejects([](call_args& a) { a.k.b = 1; }, {"k.b = 1", "q.b = 2"});
  expect_attend_rejects([](call_args& a) { a.v.b = 1; }, {"v.b = 1", "q.b = 2"});
  expect_attend_rejects([](call_args& a) { a.o.b = 1; }, {"o.b = 1", "q.b = 2"});
  expect_attend_rejects([](call_args& a) { a.v.s = 4; }, {"v.s = 4", "k.s = 5"});
  expect_attend_rejects([](call_args& a) { a.o.s = 2; }, {"o.s = 2", "q.s = 3"});
  expect_attend_rejects([](call_args& a) { a.k.d = 7; }, {"k.d = 7", "q.d = 8"});
  expect_attend_rejects([](call_args& a) { a.o.d = 5; }, {"o.d = 5", "v.d = 6"});
  expect_attend_rejects([](call_args& a) { a.v.h = 1; }, {"v.h = 1", "k.h = 2"});
  expect_attend_rejects([](call_args& a) { a.o.h = 3; }, {"o.h = 3", "q.h = 4"});
}

TEST_F(errors_test, head_map_must_match_the_tensors) {
  expect_attend_rejects([](call_args& a) { a.map = gqa::head_map::uniform(8, 2); }, {"map.hq() = 8", "q.h = 4"});
  expect_attend_rejects([](call_args& a) { a.map = gqa::head_map::uniform(4, 4); }, {"map.hkv() = 4", "k.h = 2"});
  expect_attend_rejects([](call_args& a) { a.map = gqa::head_map::from_allocation(std::vector<int>{1, 3, 0}); },
                        {"map.hkv() = 3"});
}

TEST_F(errors_test, kv_lengths) {
  static const std::vector<index_t> too_few = {5}, too_many = {5, 5, 5}, negative = {5, -1}, too_long = {5, 6};
  expect_attend_rejects([](call_args& a) { a.opt.kv_lengths = too_few; }, {"options.kv_lengths.size() = 1", "2"});
  expect_attend_rejects([](call_args& a) { a.opt.kv_lengths = too_many; }, {"options.kv_lengths.size() = 3"});
  expect_attend_rejects([](call_args& a) { a.opt.kv_lengths = negative; }, {"options.kv_lengths[1] = -1"});
  expect_attend_rejects([](call_args& a) { a.opt.kv_lengths = too_long; }, {"options.kv_lengths[1] = 6", "skv = 5"});
  // The bounds themselves are valid: 0 (nothing visible) and skv.
  static const std::vector<index_t> edges = {0, 5};
  call_args a = valid();
  a.opt.kv_lengths = edges;
  EXPECT_NO_THROW(gqa::attend(a.q, a.k, a.v, a.o, a.map, a.opt));
}

TEST_F(errors_test, lse_size) {
  static std::vector<float> small(23), big(25);
  expect_attend_rejects([](call_args& a) { a.opt.lse = small; }, {"options.lse.size() = 23", "b*hq*sq = 24"});
  expect_attend_rejects([](call_args& a) { a.opt.lse = big; }, {"options.lse.size() = 25"});
}

TEST_F(errors_test, threads_and_scale) {
  expect_attend_rejects([](call_args& a) { a.opt.num_threads = -1; }, {"options.num_threads = -1"});
  expect_attend_rejects([](call_args& a) { a.opt.scale = std::numeric_limits<float>::infinity(); },
                        {"options.scale = inf"});
  expect_attend_rejects([](call_args& a) { a.opt.scale = -std::numeric_limits<float>::infinity(); },
                        {"options.scale = -inf"});
  expect_attend_rejects([](call_args& a) { a.opt.scale = std::numeric_limits<float>::quiet_NaN(); },
                        {"options.scale = nan"});
}

TEST_F(errors_test, output_must_not_alias_an_input) {
  const std::string q_at = [&] {
    std::ostringstream os;
    os << static_cast<const void*>(q_buf.data());
    return os.str();
  }();
  // o exactly on q (same pointer), on part of v, and overlapping the last float of k.
  expect_attend_rejects([&](call_args& a) { a.o.data = q_buf.data(); }, {"o (data = " + q_at + ")", "overlaps q"});
  expect_attend_rejects([&](call_args& a) { a.o.data = v_buf.data() + 20; }, {"overlaps v"});
  expect_attend_rejects([&](call_args& a) { a.o.data = o_data() - 1; }, {"overlaps k"});
  // Overlap through a negative stride: o's batch 0 lies after k, its batch 1 inside k.
  expect_attend_rejects(
      [&](call_args& a) {
        a.o.data = o_data();
        a.o.stride_b = -a.o.stride_b;
      },
      {"overlaps k"});
  // Adjacent but not overlapping is fine: o starts right after the last float of k.
  call_args a = valid();
  EXPECT_NO_THROW(gqa::attend(a.q, a.k, a.v, a.o, a.map, a.opt));
}

// gqa::forward() validates the whole call before the policy plans, so a stateful policy never sees a
// call that then throws.
struct counting_policy {
  int plans = 0;
  index_t hq_override = 0;  // > 0: plan a map with this many query heads (a broken policy)
  gqa::head_map plan(const gqa::tensor_view<const float>& q, const gqa::tensor_view<const float>& k) {
    ++plans;
    return gqa::head_map::uniform(hq_override > 0 ? hq_override : q.h, k.h);
  }
};

TEST_F(errors_test, forward_rejects_before_planning) {
  static const std::vector<index_t> negative = {5, -1};
  static std::vector<float> small_lse(3);
  const std::pair<std::function<void(call_args&)>, std::vector<std::string>> cases[] = {
      {[](call_args& a) { a.q.data = nullptr; }, {"q.data = nullptr"}},
      {[](call_args& a) { a.o.d = 0; }, {"o.d = 0"}},
      {[](call_args& a) { a.k.stride_d = 2; }, {"k.stride_d = 2"}},
      {[](call_args& a) { a.v.b = 1; }, {"v.b = 1"}},
      {[](call_args& a) { a.opt.kv_lengths = negative; }, {"options.kv_lengths[1] = -1"}},
      {[](call_args& a) { a.opt.lse = small_lse; }, {"options.lse.size() = 3"}},
      {[](call_args& a) { a.opt.num_threads = -4; }, {"options.num_threads = -4"}},
      {[](call_args& a) { a.opt.scale = std::numeric_limits<float>::quiet_NaN(); }, {"options.scale = nan"}},
      {[this](call_args& a) { a.o.data = o_data() - 3; }, {"overlaps k"}},
  };
  for (const auto& [breaker, parts] : cases) {
    counting_policy p;
    call_args a = valid();
    breaker(a);
    expect_invalid([&] { gqa::forward(p, a.q, a.k, a.v, a.o, a.opt); }, parts);
    EXPECT_EQ(p.plans, 0) << "plan() ran for a call that was then rejected";
    EXPECT_TRUE(output_untouched());
  }
  // A policy whose map does not fit the call is caught by attend()'s own check.
  counting_policy broken;
  broken.hq_override = 8;
  call_args a = valid();
  expect_invalid([&] { gqa::forward(broken, a.q, a.k, a.v, a.o, a.opt); }, {"map.hq() = 8"});
  EXPECT_TRUE(output_untouched());
  // And a valid call plans once and equals attend().
  counting_policy ok;
  std::vector<float> via_attend(o_size);
  gqa::attend(a.q, a.k, a.v, gqa::bshd(via_attend.data(), b, sq, hq, dv), a.map, {});
  gqa::forward(ok, a.q, a.k, a.v, a.o, a.opt);
  EXPECT_EQ(ok.plans, 1);
  EXPECT_TRUE(std::equal(via_attend.begin(), via_attend.end(), arena.begin() + static_cast<std::ptrdiff_t>(k_size)));
}

TEST(errors, invalid_argument_is_a_std_invalid_argument) {
  static_assert(std::is_base_of_v<std::invalid_argument, gqa::invalid_argument>);
  try {
    gqa::head_map::uniform(3, 2);
    FAIL() << "no throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(dynamic_cast<const gqa::invalid_argument*>(&e), nullptr);
  }
}

}  // namespace
