// The persistent std::thread pool (gqa/threading/pool.hpp, Note [thread pool]), tested directly: the
// built-in loop uses it only in builds without OpenMP, and this test binary may be built with OpenMP.
// Every task runs exactly once, on the caller and the requested workers only; workers are reused; a busy
// pool (nested or concurrent call) says so instead of running; gqa::attend through it is bitwise the
// one-thread result.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include <gqa/gqa.hpp>
#include <gqa/threading/pool.hpp>

#include "support/data.hpp"

namespace {

using gqa::index_t;
using gqa::detail::thread_pool;

/// Runs fn(i) for i < n on the pool with `helpers` workers; returns whether the pool ran it.
template <class Fn>
bool pool_run(thread_pool& pool, index_t n, int helpers, Fn& fn) {
  return pool.try_run(n, helpers, [](void* f, index_t i) { (*static_cast<Fn*>(f))(i); }, &fn);
}

TEST(thread_pool, every_task_runs_once_on_at_most_helpers_plus_one_threads) {
  thread_pool pool;
  for (const int helpers : {1, 3, 2, 0, 5}) {
    for (const index_t n : {index_t{0}, index_t{1}, index_t{7}, index_t{1000}}) {
      std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
      std::mutex m;
      std::set<std::thread::id> threads;
      auto fn = [&](index_t i) {
        hits[static_cast<std::size_t>(i)].fetch_add(1);
        std::lock_guard<std::mutex> lock(m);
        threads.insert(std::this_thread::get_id());
      };
      ASSERT_TRUE(pool_run(pool, n, helpers, fn));
      for (index_t i = 0; i < n; ++i) EXPECT_EQ(hits[static_cast<std::size_t>(i)].load(), 1) << "task " << i;
      EXPECT_LE(threads.size(), static_cast<std::size_t>(helpers + 1)) << helpers << " helpers, n = " << n;
    }
  }
}

TEST(thread_pool, workers_are_created_once_and_reused) {
  thread_pool pool;
  std::atomic<int> ran{0};
  auto fn = [&](index_t) { ran.fetch_add(1); };
  EXPECT_EQ(pool.workers(), 0u);
  for (int call = 0; call < 50; ++call) ASSERT_TRUE(pool_run(pool, 8, 2, fn));
  EXPECT_EQ(pool.workers(), 2u) << "threads are created on first need, then reused";
  ASSERT_TRUE(pool_run(pool, 8, 4, fn));
  EXPECT_EQ(pool.workers(), 4u);
  ASSERT_TRUE(pool_run(pool, 8, 1, fn));
  EXPECT_EQ(pool.workers(), 4u) << "a call with fewer threads creates none";
  EXPECT_EQ(ran.load(), 52 * 8);
}

TEST(thread_pool, a_nested_call_finds_the_pool_busy) {
  thread_pool pool;
  std::atomic<int> nested_ran{0}, busy{0};
  auto inner = [&](index_t) { nested_ran.fetch_add(1); };
  auto outer = [&](index_t) {
    if (!pool_run(pool, 4, 1, inner)) busy.fetch_add(1);
  };
  ASSERT_TRUE(pool_run(pool, 3, 1, outer));
  EXPECT_EQ(busy.load(), 3);
  EXPECT_EQ(nested_ran.load(), 0);
}

TEST(thread_pool, concurrent_callers_each_get_all_their_tasks_run) {
  thread_pool pool;
  constexpr int callers = 3, calls = 200;
  std::atomic<long> total{0};
  std::vector<std::thread> ts;
  for (int c = 0; c < callers; ++c)
    ts.emplace_back([&] {
      for (int k = 0; k < calls; ++k) {
        std::atomic<int> done{0};
        auto fn = [&](index_t) { done.fetch_add(1); };
        if (!pool_run(pool, 16, 1, fn))
          for (index_t i = 0; i < 16; ++i) fn(i);  // busy: what run_tasks does with fresh threads
        total.fetch_add(done.load());
      }
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(total.load(), long{callers} * calls * 16);
}

// gqa::attend with the pool as its parallel loop gives the one-thread bits.
TEST(thread_pool, attend_through_the_pool_is_bitwise_one_thread) {
  const index_t b = 2, sq = 33, skv = 300, hq = 8, hkv = 2, d = 40;
  const auto q = gqa::test::random_floats(static_cast<std::size_t>(b * sq * hq * d), 1);
  const auto k = gqa::test::random_floats(static_cast<std::size_t>(b * skv * hkv * d), 2);
  const auto v = gqa::test::random_floats(static_cast<std::size_t>(b * skv * hkv * d), 3);
  auto run = [&](const gqa::attention_options& opt) {
    std::vector<float> o(static_cast<std::size_t>(b * sq * hq * d));
    gqa::attend(gqa::bshd<const float>(q.data(), b, sq, hq, d), gqa::bshd<const float>(k.data(), b, skv, hkv, d),
                gqa::bshd<const float>(v.data(), b, skv, hkv, d), gqa::bshd<float>(o.data(), b, sq, hq, d),
                gqa::head_map::uniform(hq, hkv), opt);
    return o;
  };
  gqa::attention_options one;
  one.causal = true;
  const std::vector<float> want = run(one);
  gqa::attention_options pooled = one;
  pooled.parallel_for = [](index_t n, const std::function<void(index_t)>& task) {
    auto call = [](void* t, index_t i) { (*static_cast<const std::function<void(index_t)>*>(t))(i); };
    ASSERT_TRUE(thread_pool::instance().try_run(n, 2, call, const_cast<void*>(static_cast<const void*>(&task))));
  };
  for (int rep = 0; rep < 3; ++rep) {
    const std::vector<float> got = run(pooled);
    EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0) << "call " << rep;
  }
}

}  // namespace
