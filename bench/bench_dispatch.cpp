// bench/bench_dispatch.cpp: gqa as a consumer gets it: this TU is compiled WITHOUT ISA flags and calls
// gqa::forward without an ISA, so the ISA is chosen at run time (Note [per-target kernels]). Pair
// dispatch/<shape> with gqa/<isa>/<shape> of the same run (gqa::runtime_info() is in the context).
// Thread backends on 2 threads: dispatch/... uses the built-in loop (OpenMP in an OpenMP build), and
// dispatch_pool/... hands the same calls to gqa's persistent std::thread pool through
// attention_options::parallel_for, so both backends are measured in one binary; decode at Skv = 16384
// (D1, bandwidth-bound) and Skv = 256 (latency-bound).
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include <gqa/gqa.hpp>
#include <gqa/threading/pool.hpp>

#include "bench.hpp"

namespace gqa_bench {
namespace {

struct dispatch_case {
  std::string name;
  shape s;
  bool pool;  // through the std::thread pool (parallel_for) instead of the built-in loop
};

/// The std::thread pool as a caller-supplied loop (falls back to a plain loop if the pool is busy,
/// which never happens here: one benchmark runs at a time).
const gqa::parallel_for_fn& pool_loop() {
  static const gqa::parallel_for_fn fn = [](gqa::index_t n, const std::function<void(gqa::index_t)>& task) {
    auto call = [](void* t, gqa::index_t i) { (*static_cast<const std::function<void(gqa::index_t)>*>(t))(i); };
    // The calling thread and one pool worker: the 2-thread cases.
    if (!gqa::detail::thread_pool::instance().try_run(n, 1, call, const_cast<void*>(static_cast<const void*>(&task))))
      for (gqa::index_t i = 0; i < n; ++i) task(i);
  };
  return fn;
}

void run(benchmark::State& st, const dispatch_case& c) {
  const shape& s = c.s;
  const inputs& in = get_inputs(s, s.hkv);
  const auto q = gqa::bshd<const float>(in.q, s.b, s.sq, s.hq, s.d);
  const auto k = gqa::bshd<const float>(in.k, s.b, s.skv, s.hkv, s.d);
  const auto v = gqa::bshd<const float>(in.v, s.b, s.skv, s.hkv, s.d);
  const auto o = gqa::bshd<float>(in.o, s.b, s.sq, s.hq, s.d);
  gqa::attention_options opt;
  opt.causal = s.causal;
  opt.num_threads = s.threads;
  if (c.pool) opt.parallel_for = pool_loop();
  gqa::gqa_policy p;
  try {
    if (estimated_seconds("avx512", "variant", s) < 0.05) gqa::forward(p, q, k, v, o, opt);  // warm-up
    const double t0 = clock_for(s.threads);
    for (auto _ : st) {
      gqa::forward(p, q, k, v, o, opt);
      benchmark::DoNotOptimize(o.data);
      benchmark::ClobberMemory();
    }
    const double per_call = (clock_for(s.threads) - t0) / static_cast<double>(st.iterations());
    st.counters["GFLOPS"] = flops(s) / per_call * 1e-9;
    st.counters["GBps"] = kv_bytes(s) / per_call * 1e-9;
    st.SetLabel(std::string(gqa::runtime_info(opt).isa));
  } catch (const std::exception& e) {
    st.SkipWithError(e.what());
  }
}

}  // namespace

void register_dispatch_cases() {
  std::vector<dispatch_case> cases;
  for (main_shape m : main_shapes)
    for (int t : {1, 2}) {
      const shape s = make_main_shape(m, t);
      cases.push_back({"dispatch/" + shape_name(s), s, false});
    }
  const shape d256{1, 32, 8, 128, 1, 256, false, 2};
  cases.push_back({"dispatch/" + shape_name(d256), d256, false});
  for (const shape& s : {make_main_shape(main_shape::d1, 2), d256, make_main_shape(main_shape::p1, 2)})
    cases.push_back({"dispatch_pool/" + shape_name(s), s, true});
  for (const dispatch_case& c : cases) {
    auto* b = benchmark::RegisterBenchmark(c.name.c_str(), [c](benchmark::State& st) { run(st, c); });
    b->Unit(estimated_seconds("avx512", "variant", c.s) > 0.01 ? benchmark::kMillisecond : benchmark::kMicrosecond);
    if (c.s.threads > 1) b->UseRealTime();
  }
}

}  // namespace gqa_bench
