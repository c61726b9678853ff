// threads_test.cpp: policies and concurrent callers (issue 9). Stateless policies are usable as temporaries
// and as const objects shared by threads; kdgqa_policy and pgqa_policy may be shared (their state is
// guarded); dgqa_policy and wgqa_policy are one per thread, and copies used that way give the serial
// results. Each threaded result is compared bitwise with the same call made serially. The ThreadSanitizer
// stage of scripts/test.sh runs these tests: that is where a data race shows up.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <set>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include <gqa/gqa.hpp>

#include "support/data.hpp"

namespace {

using gqa::index_t;
constexpr int k_threads = 4;
constexpr int k_calls = 6;  // per thread

/// Buffers of one attention call: q (b, sq, hq, d), k and v (b, skv, hkv, d), o (b, sq, hq, d); the
/// contents depend on `seed`, so every thread computes something different.
struct call_data {
  index_t b, sq, skv, hq, hkv, d;
  std::vector<float> q, k, v, o;
  call_data(index_t b_, index_t sq_, index_t skv_, index_t hq_, index_t hkv_, index_t d_, std::uint64_t seed)
      : b(b_), sq(sq_), skv(skv_), hq(hq_), hkv(hkv_), d(d_),
        q(gqa::test::random_floats(static_cast<std::size_t>(b * sq * hq * d), seed)),
        k(gqa::test::random_floats(static_cast<std::size_t>(b * skv * hkv * d), seed + 1000, -2.0f, 2.0f)),
        v(gqa::test::random_floats(static_cast<std::size_t>(b * skv * hkv * d), seed + 2000)),
        o(static_cast<std::size_t>(b * sq * hq * d)) {}
  gqa::tensor_view<const float> qv() const { return gqa::bshd<const float>(q.data(), b, sq, hq, d); }
  gqa::tensor_view<const float> kv() const { return gqa::bshd<const float>(k.data(), b, skv, hkv, d); }
  gqa::tensor_view<const float> vv() const { return gqa::bshd<const float>(v.data(), b, skv, hkv, d); }
  gqa::tensor_view<float> ov() { return gqa::bshd(o.data(), b, sq, hq, d); }
};

/// Runs body(thread) on k_threads threads at once and joins them.
void on_threads(const std::function<void(int)>& body) {
  std::vector<std::thread> pool;
  for (int t = 0; t < k_threads; ++t) pool.emplace_back(body, t);
  for (auto& th : pool) th.join();
}

// Issue 9: forward took P&, so a temporary policy did not compile. It takes P&& now; a const policy works
// when the members it needs are const.
TEST(threads, forward_takes_temporary_and_const_policies) {
  call_data c(2, 3, 17, 8, 2, 16, 1);
  std::vector<float> via_attend(c.o.size());
  gqa::attend(c.qv(), c.kv(), c.vv(), gqa::bshd(via_attend.data(), c.b, c.sq, c.hq, c.d), gqa::head_map::uniform(8, 2));
  gqa::forward(gqa::gqa_policy{}, c.qv(), c.kv(), c.vv(), c.ov());
  EXPECT_EQ(c.o, via_attend);
  std::fill(c.o.begin(), c.o.end(), 0.0f);
  const gqa::gqa_policy shared;
  gqa::forward(shared, c.qv(), c.kv(), c.vv(), c.ov());
  EXPECT_EQ(c.o, via_attend);
  std::fill(c.o.begin(), c.o.end(), 0.0f);
  gqa::forward(gqa::sqa_policy{gqa::sqa_config::standard(16, 8, 2)}, c.qv(), c.kv(), c.vv(), c.ov());
  EXPECT_EQ(c.o, via_attend);
  std::fill(c.o.begin(), c.o.end(), 0.0f);
  gqa::forward(gqa::kdgqa_policy{}, c.qv(), c.kv(), c.vv(), c.ov());  // stateful, but a temporary is fine
  EXPECT_NE(c.o, std::vector<float>(c.o.size(), 0.0f));
}

/// Each thread makes k_calls calls with its own data through `run(thread, data)`; every output must equal
/// the same call made serially beforehand.
void expect_threads_match_serial(index_t hq, index_t hkv, const std::function<void(int, call_data&)>& run) {
  std::vector<call_data> serial, threaded;
  for (int t = 0; t < k_threads; ++t) {
    serial.emplace_back(2, 2, 40, hq, hkv, 12, 100 + static_cast<std::uint64_t>(t));
    threaded.emplace_back(2, 2, 40, hq, hkv, 12, 100 + static_cast<std::uint64_t>(t));
  }
  for (int t = 0; t < k_threads; ++t) run(t, serial[static_cast<std::size_t>(t)]);
  on_threads([&](int t) {
    for (int i = 0; i < k_calls; ++i) run(t, threaded[static_cast<std::size_t>(t)]);
  });
  for (int t = 0; t < k_threads; ++t) EXPECT_EQ(threaded[static_cast<std::size_t>(t)].o, serial[static_cast<std::size_t>(t)].o) << t;
}

TEST(threads, stateless_policies_are_shared) {
  const gqa::gqa_policy gqa_p;
  const gqa::mha_policy mha_p;
  const gqa::mqa_policy mqa_p;
  const gqa::sqa_policy sqa_p{gqa::sqa_config::standard(12, 6, 3)};
  expect_threads_match_serial(6, 3, [&](int, call_data& c) { gqa::forward(gqa_p, c.qv(), c.kv(), c.vv(), c.ov()); });
  expect_threads_match_serial(6, 6, [&](int, call_data& c) { gqa::forward(mha_p, c.qv(), c.kv(), c.vv(), c.ov()); });
  expect_threads_match_serial(6, 1, [&](int, call_data& c) { gqa::forward(mqa_p, c.qv(), c.kv(), c.vv(), c.ov()); });
  expect_threads_match_serial(6, 3, [&](int, call_data& c) { gqa::forward(sqa_p, c.qv(), c.kv(), c.vv(), c.ov()); });
  // Also with threads inside each call (the built-in loop), from several callers at once.
  gqa::attention_options two;
  two.num_threads = 2;
  expect_threads_match_serial(6, 3, [&](int, call_data& c) { gqa::forward(gqa_p, c.qv(), c.kv(), c.vv(), c.ov(), two); });
}

// Issue 9: ThreadSanitizer reported 7 races on a shared kdgqa_policy (the allocation_result move-assignment
// and operator delete among them). Its last allocation is now guarded. With distinct key norms and hkv
// dividing hq no fallback uses `previous`, so each call's map depends on its own keys only.
TEST(threads, kdgqa_policy_is_shared) {
  for (const bool per_sample : {false, true}) {
    gqa::kdgqa_options opt;
    opt.per_sample = per_sample;
    gqa::kdgqa_policy shared(opt);
    expect_threads_match_serial(8, 4, [&](int, call_data& c) { gqa::forward(shared, c.qv(), c.kv(), c.vv(), c.ov()); });
    // last() is one of the calls' allocations: a valid allocation of 8 query heads.
    const gqa::allocation_result last = shared.last();
    ASSERT_EQ(last.alloc.size(), 4u);
    int sum = 0;
    for (const int a : last.alloc) sum += a;
    EXPECT_EQ(sum, 8);
    // Copies are independent policies with the same options and last allocation.
    gqa::kdgqa_policy copy = shared;
    EXPECT_EQ(copy.last().alloc, last.alloc);
    EXPECT_EQ(copy.per_sample(), per_sample);
  }
}

// Issue 9: pgqa_policy's call counter raced. Shared between threads, every call now takes its own index:
// the outputs are exactly the serial outputs of calls 0 .. T·N − 1, each index used once.
TEST(threads, pgqa_policy_is_shared) {
  constexpr index_t hq = 4, hkv = 2;
  constexpr int total = k_threads * k_calls;
  call_data c(1, 3, 10, hq, hkv, 8, 7);
  gqa::pgqa_options opt;
  opt.seed = 42;
  std::vector<std::vector<float>> by_call(total);
  gqa::pgqa_policy serial(opt);
  for (auto& out : by_call) {
    gqa::forward(serial, c.qv(), c.kv(), c.vv(), c.ov());
    out = c.o;
  }
  gqa::pgqa_policy shared(opt);
  std::vector<std::vector<std::vector<float>>> got(k_threads);
  on_threads([&](int t) {
    std::vector<float> o(c.o.size());
    for (int i = 0; i < k_calls; ++i) {
      gqa::forward(shared, c.qv(), c.kv(), c.vv(), gqa::bshd(o.data(), c.b, c.sq, c.hq, c.d));
      got[static_cast<std::size_t>(t)].push_back(o);
    }
  });
  EXPECT_EQ(shared.calls(), static_cast<std::uint64_t>(total));
  std::set<std::size_t> used;
  for (const auto& outs : got)
    for (const auto& o : outs) {
      const auto it = std::find(by_call.begin(), by_call.end(), o);
      ASSERT_NE(it, by_call.end()) << "an output is not the serial output of any call index";
      EXPECT_TRUE(used.insert(static_cast<std::size_t>(it - by_call.begin())).second) << "a call index was used twice";
    }
}

// Training through a shared pgqa_policy: forward_train records the call index its own finish took (Note
// [PGQA training call]), so each thread's backward uses its forward's noise: every (index, output,
// gradients) equals the serial forward_train + backward of that index, and no index is used twice.
TEST(threads, pgqa_policy_shared_in_training) {
  constexpr index_t hq = 4, hkv = 2;
  constexpr int total = k_threads * k_calls;
  call_data c(1, 3, 10, hq, hkv, 8, 9);
  const auto dout = gqa::test::random_floats(c.o.size(), 99);
  const auto doutv = gqa::bshd<const float>(dout.data(), c.b, c.sq, c.hq, c.d);
  struct step {
    std::vector<float> o, dq, dk, dv;
  };
  // One training step of call index `call` (the policy's counter at entry).
  auto train = [&](gqa::pgqa_policy& p, std::uint64_t* call) {
    step r{std::vector<float>(c.o.size()), std::vector<float>(c.q.size()), std::vector<float>(c.k.size()),
           std::vector<float>(c.v.size())};
    const auto ov = gqa::bshd(r.o.data(), c.b, c.sq, c.hq, c.d);
    const auto saved = gqa::forward_train(p, c.qv(), c.kv(), c.vv(), ov);
    gqa::backward(p, saved, c.qv(), c.kv(), c.vv(), gqa::tensor_view<const float>(ov), doutv,
                  gqa::bshd(r.dq.data(), c.b, c.sq, c.hq, c.d), gqa::bshd(r.dk.data(), c.b, c.skv, c.hkv, c.d),
                  gqa::bshd(r.dv.data(), c.b, c.skv, c.hkv, c.d));
    *call = saved.policy.call;
    return r;
  };
  gqa::pgqa_options opt;
  opt.seed = 43;
  std::vector<step> by_call;
  gqa::pgqa_policy serial(opt);
  for (int i = 0; i < total; ++i) {
    std::uint64_t call = 0;
    by_call.push_back(train(serial, &call));
    ASSERT_EQ(call, static_cast<std::uint64_t>(i));
  }
  gqa::pgqa_policy shared(opt);
  std::vector<std::vector<std::pair<std::uint64_t, step>>> got(k_threads);
  on_threads([&](int t) {
    for (int i = 0; i < k_calls; ++i) {
      std::uint64_t call = 0;
      step r = train(shared, &call);
      got[static_cast<std::size_t>(t)].emplace_back(call, std::move(r));
    }
  });
  EXPECT_EQ(shared.calls(), static_cast<std::uint64_t>(total));
  std::set<std::uint64_t> used;
  for (const auto& steps : got)
    for (const auto& [call, r] : steps) {
      ASSERT_LT(call, static_cast<std::uint64_t>(total));
      EXPECT_TRUE(used.insert(call).second) << "call index " << call << " was used twice";
      const step& want = by_call[static_cast<std::size_t>(call)];
      EXPECT_EQ(r.o, want.o) << "call " << call;
      EXPECT_EQ(r.dq, want.dq) << "call " << call;
      EXPECT_EQ(r.dk, want.dk) << "call " << call;
      EXPECT_EQ(r.dv, want.dv) << "call " << call;
    }
}

// dgqa_policy is one per thread (its caller-owned state is one sequence of steps): policies and states
// made per thread give, per thread, exactly the serial sequence.
TEST(threads, dgqa_policy_one_per_thread) {
  constexpr index_t hq = 8, hkv = 4;
  auto run_sequence = [](call_data& c, gqa::dgqa_state& state) {
    gqa::dgqa_policy p(gqa::dgqa_options{}, state);
    p.set_mode(gqa::dgqa_mode::train);
    for (int step = 0; step < k_calls; ++step) {
      p.set_step(static_cast<std::uint64_t>(step));
      for (float& x : c.k) x *= 1.25f;  // the norms change every step
      gqa::forward(p, c.qv(), c.kv(), c.vv(), c.ov());
    }
  };
  std::vector<call_data> serial, threaded;
  std::vector<gqa::dgqa_state> serial_state, threaded_state;
  for (int t = 0; t < k_threads; ++t) {
    serial.emplace_back(1, 2, 20, hq, hkv, 8, 300 + static_cast<std::uint64_t>(t));
    threaded.emplace_back(1, 2, 20, hq, hkv, 8, 300 + static_cast<std::uint64_t>(t));
    serial_state.push_back(gqa::dgqa_state::initial(hq, hkv));
    threaded_state.push_back(gqa::dgqa_state::initial(hq, hkv));
  }
  for (int t = 0; t < k_threads; ++t) run_sequence(serial[static_cast<std::size_t>(t)], serial_state[static_cast<std::size_t>(t)]);
  on_threads([&](int t) { run_sequence(threaded[static_cast<std::size_t>(t)], threaded_state[static_cast<std::size_t>(t)]); });
  for (std::size_t t = 0; t < static_cast<std::size_t>(k_threads); ++t) {
    EXPECT_EQ(threaded[t].o, serial[t].o) << t;
    EXPECT_EQ(threaded_state[t].splits, serial_state[t].splits) << t;
    EXPECT_EQ(threaded_state[t].cache, serial_state[t].cache) << t;
    EXPECT_EQ(threaded_state[t].rng_counter, serial_state[t].rng_counter) << t;
  }
}

// wgqa_policy is one per thread (prepare() writes the policy's own K/V buffers): copies made per thread
// give the serial results.
TEST(threads, wgqa_policy_one_per_thread) {
  constexpr index_t hq = 6, hkv = 2, d = 12;
  const gqa::wgqa_policy prototype(gqa::wgqa_weights::random_init(gqa::wgqa_kind::col, hq, hkv, d, hq * d, 5));
  // K/V have hq heads (WGQA combines them); call_data's hkv is the K/V head count.
  expect_threads_match_serial(hq, hq, [&](int, call_data& c) {
    gqa::wgqa_policy mine = prototype;  // one per thread: a copy
    gqa::forward(mine, c.qv(), c.kv(), c.vv(), c.ov());
  });
}

// Issue 9: an exception thrown by a task (the core's std::bad_alloc when a thread's scratch cannot grow)
// escaped a worker thread or an OpenMP region and ended the process. run_tasks now rethrows the first one
// in the calling thread once every task has returned, skips the tasks not yet started, and is reusable
// afterwards (Note [task exceptions]).
TEST(threads, a_task_exception_reaches_the_caller) {
  gqa::attention_options one, built_in, caller_loop;
  built_in.num_threads = k_threads;
  caller_loop.parallel_for = [](index_t n, const std::function<void(index_t)>& task) {
    std::atomic<index_t> next{0};
    on_threads([&](int) {
      for (index_t i = next++; i < n; i = next++) task(i);
    });
  };
  constexpr index_t n = 200, bad = 7;
  for (const auto* opt : {&one, &built_in, &caller_loop}) {
    std::atomic<index_t> ran{0};
    auto task = [&](index_t i) {
      ++ran;
      if (i == bad) throw std::runtime_error("task 7");
    };
    try {
      gqa::detail::run_tasks(n, gqa::executor_of(*opt), task);
      ADD_FAILURE() << "no exception";
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(), "task 7");
    }
    EXPECT_GE(ran.load(), 1);  // task 7; on threads, others may have been skipped or have run
    EXPECT_LE(ran.load(), n);
    if (opt == &one) {
      EXPECT_EQ(ran.load(), bad + 1);  // the serial loop stops at once
    }
    // The next call runs every task exactly once.
    std::vector<std::atomic<int>> hits(n);
    gqa::detail::run_tasks(n, gqa::executor_of(*opt), [&](index_t i) { ++hits[static_cast<std::size_t>(i)]; });
    for (const auto& h : hits) EXPECT_EQ(h.load(), 1);
  }
}

}  // namespace
