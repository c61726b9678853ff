// gqa/threading/parallel.hpp: the built-in parallel loop (OpenMP when compiled with it, else a persistent
// std::thread pool, threading/pool.hpp) and per-thread scratch. Invariant: each task index runs exactly once; results never depend on which
// thread ran it, so output is bitwise identical for any thread count.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdlib>
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

/// Calls fn(i) for every i in [0, n): through ex.parallel_for if the caller gave one, else on
/// min(n, threads) threads pulling tasks dynamically (OpenMP, or the calling thread and threads - 1
/// workers of the persistent pool).
template <class Fn>
void run_tasks(index_t n, const executor& ex, Fn&& fn) {
  if (n <= 0) return;
  if (ex.parallel_for != nullptr && *ex.parallel_for) {
    (*ex.parallel_for)(n, [&fn](index_t i) { fn(i); });
    return;
  }
  const int threads = static_cast<int>(std::min<index_t>(n, resolve_threads(ex.num_threads)));
  if (threads <= 1) {
    for (index_t i = 0; i < n; ++i) fn(i);
    return;
  }
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (index_t i = 0; i < n; ++i) fn(i);
#else
  // The persistent pool (Note [thread pool]); fresh threads only when it is busy (concurrent or nested).
  auto call = [](void* f, index_t i) { (*static_cast<std::remove_reference_t<Fn>*>(f))(i); };
  if (thread_pool::instance().try_run(n, threads - 1, call, static_cast<void*>(std::addressof(fn)))) return;
  std::atomic<index_t> next{0};
  auto worker = [&] {
    for (index_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i);
  };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<std::size_t>(threads - 1));
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
#endif
}

/// Per-thread, 64-byte aligned float scratch that only grows. O(tile) per thread; reused across calls.
inline float* thread_scratch(std::size_t floats) {
  struct buffer {
    float* p = nullptr;
    std::size_t cap = 0;
    ~buffer() { ::operator delete[](p, std::align_val_t{64}); }
  };
  thread_local buffer buf;
  if (buf.cap < floats) {
    ::operator delete[](buf.p, std::align_val_t{64});
    buf.p = nullptr;
    buf.cap = 0;
    buf.p = static_cast<float*>(::operator new[](floats * sizeof(float), std::align_val_t{64}));
    buf.cap = floats;
  }
  return buf.p;
}

}  // namespace detail
GQA_END_NAMESPACE
