// gqa/threading/pool.hpp: the persistent thread pool behind the built-in loop when it is not OpenMP.
// Threads are created on first need and reused by every later call (with their thread-local scratch);
// a call with one thread never touches the pool. Invariant: one call at a time owns the pool; a call that
// finds it busy (another thread's call, or a nested one) gets false and runs elsewhere.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "../config.hpp"

GQA_BEGIN_NAMESPACE
namespace detail {

// Note [thread pool]
// Every worker waits on its own counter (`go`), so a call wakes only the workers it uses. The job (task
// function, count, next-task counter) is written before a worker is marked assigned and woken (release)
// and read after it claims the job (acquire: assigned -> running). When the caller has taken the last
// task it withdraws every worker that has not claimed the job yet (assigned -> idle) and waits only for
// the running ones, so a worker the OS has not scheduled yet never delays a call (on an oversubscribed
// machine a short decode would otherwise wait for it), and no worker reads a job after its call has
// returned. Waiting spins for a short while (k_spin) before sleeping in std::atomic::wait (a futex on
// Linux): back-to-back decode calls find their workers awake, as OpenMP's do, and an idle process does
// not burn its cores.
class thread_pool {
 public:
  using task_fn = void (*)(void* ctx, index_t task);

  /// The process's pool (one per ABI namespace), created on first use, joined at exit.
  static thread_pool& instance() {
    static thread_pool pool;
    return pool;
  }

  thread_pool() = default;
  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;
  ~thread_pool() {
    stop_.store(true, std::memory_order_release);
    for (auto& w : workers_) {
      w->go.fetch_add(1, std::memory_order_release);
      w->go.notify_one();
    }
    for (auto& w : workers_) w->thread.join();
  }

  /// Worker threads created so far (they live until the pool is destroyed). Not synchronised with a
  /// call in flight.
  std::size_t workers() const noexcept { return workers_.size(); }

  /// Calls fn(ctx, i) for every i in [0, n) on the calling thread and `helpers` pool threads, tasks
  /// pulled dynamically; returns when all are done. Returns false without running anything when the pool
  /// is busy (a concurrent or nested call).
  bool try_run(index_t n, int helpers, task_fn fn, void* ctx) {
    std::unique_lock<std::mutex> lock(mutex_, std::try_to_lock);
    if (!lock.owns_lock()) return false;
    try {
      while (static_cast<int>(workers_.size()) < helpers) {
        workers_.reserve(workers_.size() + 1);                       // may throw: nothing started yet
        auto w = std::make_unique<worker>();                         // may throw
        w->thread = std::thread([this, p = w.get()] { loop(*p); });  // may throw: w has no thread then
        workers_.push_back(std::move(w));                            // cannot throw (reserved)
      }
    } catch (const std::exception&) {
      // No more threads (std::system_error) or memory (std::bad_alloc): run on the workers there are, as
      // the fresh-thread loop does (Note [task exceptions] in parallel.hpp).
    }
    helpers = std::min(helpers, static_cast<int>(workers_.size()));
    fn_ = fn;
    ctx_ = ctx;
    n_ = n;
    next_.store(0, std::memory_order_relaxed);
    for (int i = 0; i < helpers; ++i) {
      worker& w = *workers_[static_cast<std::size_t>(i)];
      w.state.store(k_assigned, std::memory_order_release);
      w.go.fetch_add(1, std::memory_order_release);
      w.go.notify_one();
    }
    work();
    // Every task is taken. A worker that has not started yet is withdrawn (it would find nothing to do);
    // one that has is waited for.
    for (int i = 0; i < helpers; ++i) {
      worker& w = *workers_[static_cast<std::size_t>(i)];
      std::uint32_t st = k_assigned;
      if (w.state.compare_exchange_strong(st, k_idle, std::memory_order_acq_rel)) continue;
      for (st = w.state.load(std::memory_order_acquire); st != k_idle; st = w.state.load(std::memory_order_acquire))
        wait_while(w.state, st);
    }
    return true;
  }

 private:
  static constexpr std::uint32_t k_idle = 0, k_assigned = 1, k_running = 2;
  struct alignas(64) worker {
    std::atomic<std::uint32_t> go{0};              // bumped to wake the worker
    std::atomic<std::uint32_t> state{k_idle};      // idle -> assigned (caller) -> running (worker) -> idle
    std::thread thread;
  };

  static constexpr std::chrono::microseconds k_spin{100};

  static void pause() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
  }

  /// Returns once a != old: spins for up to k_spin, then sleeps in atomic::wait.
  template <class T>
  static void wait_while(const std::atomic<T>& a, T old) noexcept {
    const auto until = std::chrono::steady_clock::now() + k_spin;
    for (int i = 0;; ++i) {
      if (a.load(std::memory_order_acquire) != old) return;
      if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) break;
      pause();
    }
    a.wait(old, std::memory_order_acquire);
  }

  void work() {
    for (index_t i = next_.fetch_add(1, std::memory_order_relaxed); i < n_;
         i = next_.fetch_add(1, std::memory_order_relaxed))
      fn_(ctx_, i);
  }

  void loop(worker& w) {
    std::uint32_t seen = 0;
    for (;;) {
      wait_while(w.go, seen);
      seen = w.go.load(std::memory_order_acquire);
      if (stop_.load(std::memory_order_acquire)) return;
      std::uint32_t st = k_assigned;
      if (!w.state.compare_exchange_strong(st, k_running, std::memory_order_acq_rel)) continue;  // withdrawn
      work();
      w.state.store(k_idle, std::memory_order_release);
      w.state.notify_one();
    }
  }

  std::mutex mutex_;  // held by the call that owns the pool
  std::vector<std::unique_ptr<worker>> workers_;
  std::atomic<bool> stop_{false};
  // The current job (see Note [thread pool]).
  task_fn fn_ = nullptr;
  void* ctx_ = nullptr;
  index_t n_ = 0;
  alignas(64) std::atomic<index_t> next_{0};
};

}  // namespace detail
GQA_END_NAMESPACE
