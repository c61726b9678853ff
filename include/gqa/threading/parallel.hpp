// gqa/threading/parallel.hpp: the built-in parallel loop (OpenMP when compiled with it, else a persistent
// std::thread pool, threading/pool.hpp) and per-thread scratch. Invariant: each task index runs at most
// once (exactly once unless a task throws); results never depend on which thread ran it, so output is
// bitwise identical for any thread count; an exception thrown by a task reaches the caller's thread
// (Note [task exceptions]).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <memory>
#include <new>
#include <thread>
#include <type_traits>
#include <vector>

#include "executor.hpp"

#if defined(_OPENMP)
#include <omp.h>
#else
#include "pool.hpp"
#endif

GQA_BEGIN_NAMESPACE
namespace detail {

/// Threads the built-in loop uses for `requested` (0 = all available).
inline int resolve_threads(int requested) noexcept {
  if (requested > 0) return requested;
#if defined(_OPENMP)
  return std::max(1, omp_get_max_threads());
#else
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
#endif
}

// Note [task exceptions]
// A task may throw (the core's tasks throw std::bad_alloc when a thread's scratch cannot grow; PGQA's
// noise rows allocate too), but an exception must never leave an OpenMP region, a std::thread's function
// or a caller's parallel_for (whose pool may not expect one): any of those would end the process. So every
// task runs inside task_errors::run, which keeps the first exception, makes the tasks not yet started
// return at once, and lets run_tasks rethrow it in the calling thread once every task has returned. A
// thread that cannot be started (std::system_error) is not an error: the loop runs on the threads it has.

/// The first exception thrown by any task of one run_tasks call (Note [task exceptions]).
class task_errors {
 public:
  template <class Fn>
  void run(Fn& fn, index_t i) noexcept {
    if (failed_.load(std::memory_order_relaxed)) return;
    try {
      fn(i);
    } catch (...) {
      bool expected = false;
      if (failed_.compare_exchange_strong(expected, true)) first_ = std::current_exception();
    }
  }
  /// Rethrows the kept exception; call after every task has returned (the joins order first_'s write).
  void rethrow_if_failed() const {
    if (failed_.load()) std::rethrow_exception(first_);
  }

 private:
  std::atomic<bool> failed_{false};
  std::exception_ptr first_;
};

/// A task loop's body with its type erased: call(ctx, i). run_tasks hands every task type to the loop
/// below as this one type, so the loop (OpenMP region, pool hand-off, caller's parallel_for) is compiled
/// once per translation unit rather than once per kind of task, and once for all the ISAs a dispatching
/// TU compiles (Note [per-target kernels]).
struct erased_task {
  void (*call)(void*, index_t);
  void* ctx;
  void operator()(index_t i) const { call(ctx, i); }
};

/// run_tasks's loop for n > 0 tasks (Note [task exceptions]): through ex.parallel_for if the caller gave
/// one, else on min(n, threads) threads pulling tasks dynamically (OpenMP, or the calling thread and
/// threads - 1 workers of the persistent pool); one thread runs them in a plain loop.
inline void run_erased_tasks(index_t n, const executor& ex, erased_task fn) {
  task_errors errors;
  if (ex.parallel_for != nullptr && *ex.parallel_for) {
    (*ex.parallel_for)(n, [&fn, &errors](index_t i) { errors.run(fn, i); });
    errors.rethrow_if_failed();
    return;
  }
  const int threads = static_cast<int>(std::min<index_t>(n, resolve_threads(ex.num_threads)));
  if (threads <= 1) {
    for (index_t i = 0; i < n; ++i) fn(i);  // exceptions propagate directly
    return;
  }
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (index_t i = 0; i < n; ++i) errors.run(fn, i);
#else
  // The persistent pool (Note [thread pool]); fresh threads only when it is busy (concurrent or nested).
  // Pool threads run the tasks through `errors` too (Note [task exceptions]).
  struct job {
    erased_task* fn;
    task_errors* errors;
  } j{&fn, &errors};
  auto call = [](void* c, index_t i) noexcept {
    auto& jb = *static_cast<job*>(c);
    jb.errors->run(*jb.fn, i);
  };
  if (thread_pool::instance().try_run(n, threads - 1, call, &j)) {
    errors.rethrow_if_failed();
    return;
  }
  std::atomic<index_t> next{0};
  auto worker = [&]() noexcept {
    for (index_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) errors.run(fn, i);
  };
  std::vector<std::thread> pool;
  try {
    pool.reserve(static_cast<std::size_t>(threads - 1));
    for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
  } catch (const std::exception&) {
    // No more threads (std::system_error) or no room to list them (std::bad_alloc): run on those started.
  }
  worker();
  for (auto& t : pool) t.join();
#endif
  errors.rethrow_if_failed();
}

/// Calls fn(i) for every i in [0, n): through ex.parallel_for if the caller gave one, else on
/// min(n, threads) threads pulling tasks dynamically (OpenMP, or the calling thread and threads - 1
/// workers of the persistent pool). If a task throws, the remaining tasks are skipped and the first
/// exception is rethrown here (Note [task exceptions]).
template <class Fn>
void run_tasks(index_t n, const executor& ex, Fn&& fn) {
  if (n <= 0) return;
  using F = std::remove_reference_t<Fn>;
  run_erased_tasks(n, ex, {[](void* c, index_t i) { (*static_cast<F*>(c))(i); }, std::addressof(fn)});
}

/// Per-thread, 64-byte aligned float scratch that only grows; reused across calls. Slot 0 is a task's
/// O(tile) scratch; slot 1 holds what a whole call needs beyond its tasks' (the backward's dK/dV
/// accumulators, taken by the calling thread before its tasks run), so the two never alias; slot 2 the
/// forward's packed K/V blocks of the KV head a thread last worked on (packed_kv_owner below).
/// Throws std::bad_alloc if it cannot grow (the slot then holds no scratch); `floats` <= PTRDIFF_MAX / 4.
inline float* thread_scratch(std::size_t floats, int slot = 0) {
  struct buffer {
    float* p = nullptr;
    std::size_t cap = 0;
    ~buffer() { ::operator delete[](p, std::align_val_t{64}); }
  };
  thread_local buffer bufs[3];
  buffer& buf = bufs[slot];
  if (buf.cap < floats) {
    ::operator delete[](buf.p, std::align_val_t{64});
    buf.p = nullptr;
    buf.cap = 0;
    // nothrow + throw: the same std::bad_alloc, but also under AddressSanitizer (with
    // allocator_may_return_null=1), whose throwing operator new aborts instead of throwing.
    buf.p = static_cast<float*>(::operator new[](floats * sizeof(float), std::align_val_t{64}, std::nothrow));
    if (buf.p == nullptr) throw std::bad_alloc();
    buf.cap = floats;
  }
  return buf.p;
}

/// What slot 2 of this thread's scratch holds (Note [packed K/V reuse] in detail/core/forward.hpp): the
/// packed K/V blocks of KV head g of sequence ib in the call numbered `call`, at `at`; slot i holds block
/// held[i] packed with keys[i] keys (0: none). A new call (next_call_serial) never matches an old tag.
struct packed_kv_owner {
  std::uint64_t call = 0;
  index_t ib = -1, g = -1;
  const float* at = nullptr;
  std::vector<index_t> keys, held;
};
inline packed_kv_owner& thread_packed_kv() noexcept {
  thread_local packed_kv_owner owner;
  return owner;
}
/// A number no earlier call of this process got (from 1 up).
inline std::uint64_t next_call_serial() noexcept {
  static std::atomic<std::uint64_t> serial{0};
  return serial.fetch_add(1, std::memory_order_relaxed) + 1;
}

}  // namespace detail
GQA_END_NAMESPACE
