// gqa::head_map: the builders (general map, uniform, from_allocation), every accessor, and every error
// path (gqa::invalid_argument, also a std::invalid_argument, naming the argument and its value).
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include <gqa/head_map.hpp>

#include "support/expect.hpp"

namespace {

using gqa::head_map;
using gqa::index_t;
using gqa::test::expect_invalid;  // gqa::invalid_argument, also a std::invalid_argument

std::vector<index_t> to_vector(std::span<const index_t> s) { return {s.begin(), s.end()}; }

TEST(head_map, uniform_groups_are_contiguous) {
  const auto m = head_map::uniform(12, 4);
  EXPECT_EQ(m.hq(), 12);
  EXPECT_EQ(m.hkv(), 4);
  EXPECT_EQ(to_vector(m.kv_of_q()), (std::vector<index_t>{0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3}));
  for (index_t h = 0; h < 12; ++h) EXPECT_EQ(m.kv_of(h), h / 3);
  EXPECT_EQ(to_vector(m.q_heads(2)), (std::vector<index_t>{6, 7, 8}));
  EXPECT_EQ(m.group_size(1), 3);
  EXPECT_EQ(m.max_group_size(), 3);
  EXPECT_EQ(m.allocation(), (std::vector<int>{3, 3, 3, 3}));
  EXPECT_TRUE(m.contiguous());
  // MHA and MQA are the two ends.
  EXPECT_EQ(head_map::uniform(5, 5).max_group_size(), 1);
  EXPECT_EQ(to_vector(head_map::uniform(5, 1).q_heads(0)), (std::vector<index_t>{0, 1, 2, 3, 4}));
}

TEST(head_map, allocation_with_empty_groups) {
  const auto m = head_map::from_allocation(std::vector<int>{0, 3, 5, 0});
  EXPECT_EQ(m.hq(), 8);
  EXPECT_EQ(m.hkv(), 4);
  EXPECT_EQ(to_vector(m.kv_of_q()), (std::vector<index_t>{1, 1, 1, 2, 2, 2, 2, 2}));
  EXPECT_TRUE(m.q_heads(0).empty());
  EXPECT_EQ(to_vector(m.q_heads(1)), (std::vector<index_t>{0, 1, 2}));
  EXPECT_EQ(to_vector(m.q_heads(2)), (std::vector<index_t>{3, 4, 5, 6, 7}));
  EXPECT_TRUE(m.q_heads(3).empty());
  EXPECT_EQ(m.group_size(0), 0);
  EXPECT_EQ(m.max_group_size(), 5);
  EXPECT_EQ(m.allocation(), (std::vector<int>{0, 3, 5, 0}));
  EXPECT_TRUE(m.contiguous());
}

TEST(head_map, general_map_lists_each_group_in_increasing_order) {
  const std::vector<index_t> kv = {2, 0, 1, 0, 2, 2, 1, 0};
  const head_map m(kv, 4);  // KV head 3 unused
  EXPECT_EQ(m.hq(), 8);
  EXPECT_EQ(m.hkv(), 4);
  EXPECT_EQ(to_vector(m.kv_of_q()), kv);
  EXPECT_EQ(to_vector(m.q_heads(0)), (std::vector<index_t>{1, 3, 7}));
  EXPECT_EQ(to_vector(m.q_heads(1)), (std::vector<index_t>{2, 6}));
  EXPECT_EQ(to_vector(m.q_heads(2)), (std::vector<index_t>{0, 4, 5}));
  EXPECT_TRUE(m.q_heads(3).empty());
  EXPECT_EQ(m.allocation(), (std::vector<int>{3, 2, 3, 0}));
  EXPECT_EQ(m.max_group_size(), 3);
  EXPECT_FALSE(m.contiguous());
  for (index_t h = 0; h < 8; ++h) EXPECT_EQ(m.kv_of(h), kv[static_cast<std::size_t>(h)]);
}

TEST(head_map, contiguous_means_non_decreasing) {
  EXPECT_TRUE(head_map(std::vector<index_t>{0, 0, 2, 2, 3}, 4).contiguous());
  EXPECT_FALSE(head_map(std::vector<index_t>{0, 1, 0}, 2).contiguous());
  EXPECT_FALSE(head_map(std::vector<index_t>{1, 0}, 2).contiguous());
  EXPECT_TRUE(head_map(std::vector<index_t>{1}, 2).contiguous());
}

TEST(head_map, equality_compares_the_map_and_hkv) {
  EXPECT_EQ(head_map::uniform(8, 2), head_map::from_allocation(std::vector<int>{4, 4}));
  EXPECT_EQ(head_map::uniform(8, 2), head_map(std::vector<index_t>{0, 0, 0, 0, 1, 1, 1, 1}, 2));
  EXPECT_FALSE(head_map::uniform(8, 2) == head_map::uniform(8, 4));
  // Same kv_of_q, different hkv (an extra unused KV head) is a different map.
  EXPECT_FALSE(head_map(std::vector<index_t>{0, 1}, 2) == head_map(std::vector<index_t>{0, 1}, 3));
  EXPECT_FALSE(head_map::from_allocation(std::vector<int>{1, 3}) == head_map::from_allocation(std::vector<int>{3, 1}));
  const head_map copy = head_map::from_allocation(std::vector<int>{0, 3, 5, 0});
  EXPECT_EQ(copy, head_map::from_allocation(std::vector<int>{0, 3, 5, 0}));
}

TEST(head_map, errors_name_the_argument) {
  expect_invalid([] { head_map(std::vector<index_t>{0, 1}, 0); }, {"head_map", "hkv = 0"});
  expect_invalid([] { head_map(std::vector<index_t>{0}, -2); }, {"hkv = -2"});
  expect_invalid([] { head_map(std::vector<index_t>{}, 2); }, {"hq = 0"});
  expect_invalid([] { head_map(std::vector<index_t>{0, 1, 5, 0}, 3); }, {"kv_of_q[2] = 5", "hkv = 3"});
  expect_invalid([] { head_map(std::vector<index_t>{0, -1}, 3); }, {"kv_of_q[1] = -1"});
  expect_invalid([] { head_map::uniform(0, 1); }, {"head_map::uniform", "hq = 0"});
  expect_invalid([] { head_map::uniform(-4, 2); }, {"hq = -4"});
  expect_invalid([] { head_map::uniform(4, 0); }, {"hkv = 0"});
  expect_invalid([] { head_map::uniform(4, -1); }, {"hkv = -1"});
  expect_invalid([] { head_map::uniform(12, 5); }, {"hq = 12", "hkv = 5", "multiple"});
  expect_invalid([] { head_map::uniform(2, 4); }, {"hq = 2", "hkv = 4"});  // more KV heads than query heads
  expect_invalid([] { head_map::from_allocation(std::vector<int>{}); }, {"head_map::from_allocation", "alloc.size() = 0"});
  expect_invalid([] { head_map::from_allocation(std::vector<int>{2, -1, 3}); }, {"alloc[1] = -1"});
  expect_invalid([] { head_map::from_allocation(std::vector<int>{0, 0}); }, {"sum(alloc) = 0"});
}

TEST(head_map, default_constructed_is_empty) {
  const head_map m;
  EXPECT_EQ(m.hq(), 0);
  EXPECT_EQ(m.hkv(), 0);
  EXPECT_TRUE(m.allocation().empty());
  EXPECT_TRUE(m.contiguous());
}

}  // namespace
