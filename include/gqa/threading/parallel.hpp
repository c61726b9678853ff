// gqa/threading/parallel.hpp: the built-in parallel loop (OpenMP when compiled with it, else std::thread)
// and per-thread scratch. Invariant: each task index runs exactly once; results never depend on which
// thread ran it, so output is bitwise identical for any thread count.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <new>
#include <thread>
#include <vector>

#include "../options.hpp"

#if defined(_OPENMP)
#include <omp.h>
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

/// Calls fn(i) for every i in [0, n): through opt.parallel_for if the caller gave one, else on
/// min(n, threads) threads pulling tasks dynamically.
template <class Fn>
void run_tasks(index_t n, const attention_options& opt, Fn&& fn) {
  if (n <= 0) return;
  if (opt.parallel_for) {
    opt.parallel_for(n, [&fn](index_t i) { fn(i); });
    return;
  }
  const int threads = static_cast<int>(std::min<index_t>(n, resolve_threads(opt.num_threads)));
  if (threads <= 1) {
    for (index_t i = 0; i < n; ++i) fn(i);
    return;
  }
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (index_t i = 0; i < n; ++i) fn(i);
#else
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

/// Per-thread, 64-byte aligned float scratch that only grows; reused across calls. Slot 0 is a task's
/// O(tile) scratch; slot 1 holds what a whole call needs beyond its tasks' (the backward's dK/dV
/// accumulators, taken by the calling thread before its tasks run), so the two never alias.
inline float* thread_scratch(std::size_t floats, int slot = 0) {
  struct buffer {
    float* p = nullptr;
    std::size_t cap = 0;
    ~buffer() { ::operator delete[](p, std::align_val_t{64}); }
  };
  thread_local buffer bufs[2];
  buffer& buf = bufs[slot];
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
