// gqa/threading/executor.hpp: gqa::executor, where the parallel tasks of one call run: a thread count for
// gqa's built-in loop, or the caller's own parallel loop. Plain data: it starts no threads and owns nothing.
#pragma once

#include <functional>

#include "../config.hpp"

GQA_BEGIN_NAMESPACE

/// A caller-owned parallel loop: must call `task(i)` exactly once for every i in [0, n_tasks), from any
/// threads, and return when all calls have returned. gqa's results do not depend on the order.
using parallel_for_fn = std::function<void(index_t n_tasks, const std::function<void(index_t task)>& task)>;

/// Where a call's tasks run: through `*parallel_for` when it is set (non-null and non-empty), else on
/// `num_threads` threads of the built-in loop (OpenMP when compiled with it, else std::thread; 0 = all
/// available). Non-owning: the function `parallel_for` points to must outlive the executor.
struct executor {
  int num_threads = 1;
  const parallel_for_fn* parallel_for = nullptr;
};

GQA_END_NAMESPACE
