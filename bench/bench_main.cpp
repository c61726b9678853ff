// bench/bench_main.cpp: gqa_bench's main: gqa_bench's own flags, the run's context, the machine probes
// (registered first, so they run first), then every ISA's cases. Compiled with the baseline flags.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include <gqa/gqa.hpp>

#include "bench.hpp"

namespace gqa_bench {

const std::vector<isa_hooks>& all_isas() {
  static const std::vector<isa_hooks> isas = [] {
    std::vector<isa_hooks> v;
#if GQA_ISA_TU_SCALAR
    v.push_back(hooks_scalar());
#endif
#if GQA_ISA_TU_AVX2
    v.push_back(hooks_avx2());
#endif
#if GQA_ISA_TU_AVX512
    v.push_back(hooks_avx512());
#endif
#if GQA_ISA_TU_NEON
    v.push_back(hooks_neon());
#endif
    return v;
  }();
  return isas;
}

namespace {

std::vector<std::string_view> built_variants() {
  return {gqa::variant_names.begin(), gqa::variant_names.end()};
}

std::string join(const std::vector<std::string_view>& parts) {
  std::string s;
  for (std::string_view p : parts) {
    if (!s.empty()) s += ',';
    s += p;
  }
  return s;
}

void add_context() {
  std::vector<std::string_view> built, cpu;
  for (const isa_hooks& h : all_isas()) {
    built.push_back(h.isa);
    if (h.cpu_supported()) cpu.push_back(h.isa);
  }
  benchmark::AddCustomContext("gqa_version", GQA_VERSION_STRING);
  benchmark::AddCustomContext("gqa_isas_built", join(built));
  benchmark::AddCustomContext("gqa_isas_cpu", join(cpu));
  benchmark::AddCustomContext("gqa_variants", join(built_variants()));
  benchmark::AddCustomContext("gqa_runtime_info", gqa::runtime_info().to_string());
  benchmark::AddCustomContext("gqa_huge_pages", options().huge_pages ? "on" : "off");
#if defined(__clang__)
  benchmark::AddCustomContext("gqa_compiler", "clang " __clang_version__);
#elif defined(__GNUC__)
  benchmark::AddCustomContext("gqa_compiler", "gcc " __VERSION__);
#else
  benchmark::AddCustomContext("gqa_compiler", "unknown");
#endif
#if defined(_OPENMP)
  benchmark::AddCustomContext("gqa_openmp", "on");
#else
  benchmark::AddCustomContext("gqa_openmp", "off (std::thread)");
#endif
#if GQA_BENCH_HAS_EIGEN
  benchmark::AddCustomContext("gqa_eigen", GQA_BENCH_EIGEN_VERSION
                              " (one call per batch x query head, heads spread over the threads; "
                              "EIGEN_DONT_PARALLELIZE)");
#else
  benchmark::AddCustomContext("gqa_eigen", "off");
#endif
  benchmark::AddCustomContext("gqa_bw_frac_bytes", std::to_string(bw_reference_bytes()));
}

// --- Probes: probe/fma_peak/<isa> and probe/read_bw/<bytes>. Each also measures its 2-thread value
// (counter GFLOPS_T2 / GBps_T2), which the T2 benchmarks' peak_frac / bw_frac use. ---

void run_fma_probe(benchmark::State& st, const isa_hooks& h) {
  if (!h.cpu_supported()) {
    st.SkipWithError(("CPU lacks " + std::string(h.isa)).c_str());
    return;
  }
  constexpr std::int64_t rounds = 1 << 14;
  float sink = h.fma_rounds(rounds);  // warm-up (clock ramp-up)
  const double t0 = thread_cpu_seconds();
  for (auto _ : st) {
    sink += h.fma_rounds(rounds);
    benchmark::DoNotOptimize(sink);
  }
  const double per_call = (thread_cpu_seconds() - t0) / static_cast<double>(st.iterations());
  const double t1 = h.flops_per_round * rounds / per_call * 1e-9;
  const double t2 = measure_fma_peak(h, 2);
  store_fma_peak(h.isa, 1, t1);
  store_fma_peak(h.isa, 2, t2);
  st.counters["GFLOPS"] = t1;
  st.counters["GFLOPS_T2"] = t2;
}

/// GB/s of read(buf, n) over the probe buffer of `bytes` (n: its floats, a multiple of 64), timed by st's
/// loop on this thread's CPU clock after one warm-up call.
double timed_read_gbps(benchmark::State& st, std::size_t bytes, float (*read)(const float*, std::size_t)) {
  const float* buf = probe_buffer(bytes);
  const std::size_t n = bytes / sizeof(float) / 64 * 64;
  float sink = read(buf, n);  // warm-up
  const double t0 = thread_cpu_seconds();
  for (auto _ : st) {
    sink += read(buf, n);
    benchmark::DoNotOptimize(sink);
  }
  const double per_call = (thread_cpu_seconds() - t0) / static_cast<double>(st.iterations());
  return static_cast<double>(n * sizeof(float)) / per_call * 1e-9;
}

void run_read_probe(benchmark::State& st, std::size_t bytes) {
  const double t1 = timed_read_gbps(st, bytes, best_isa().read_sum);
  const double t2 = measure_read_bw_best(bytes, 2);
  store_read_bw(bytes, 1, t1);
  store_read_bw(bytes, 2, t2);
  st.counters["GBps"] = t1;
  st.counters["GBps_T2"] = t2;
}

// probe/read_fma/<bytes>: the read probe's bytes walked as fp32 D1 walks its cache, with D1's multiply-adds
// per byte and nothing else (read_fma_sum, best ISA), one thread: what a decode kernel could stream if the
// multiply-adds were all its work. of_read: its GB/s over the read probe's (probe/read_bw, the same bytes,
// the same run), a ceiling for fp32 D1's bw_frac.
void run_read_fma_probe(benchmark::State& st, std::size_t bytes) {
  const double gbps = timed_read_gbps(st, bytes, best_isa().read_fma_sum);
  st.counters["GBps"] = gbps;
  st.counters["of_read"] = gbps / read_bw(bytes, 1);
}

void register_all() {
  for (const isa_hooks& h : all_isas())
    benchmark::RegisterBenchmark(("probe/fma_peak/" + std::string(h.isa)).c_str(),
                                 [&h](benchmark::State& st) { run_fma_probe(st, h); })
        ->Unit(benchmark::kMicrosecond);
  // D1's K + V (the bw_frac reference, larger than most LLCs), 16 MiB (decode at Skv 2048: L3-sized) and
  // 1 GiB (beyond any L3 measured on, the Intel Xeon's 480 MiB included: DRAM alone, docs/benchmarks.md).
  for (std::size_t bytes : {bw_reference_bytes(), std::size_t{16} << 20, std::size_t{1} << 30})
    benchmark::RegisterBenchmark(("probe/read_bw/" + std::to_string(bytes)).c_str(),
                                 [bytes](benchmark::State& st) { run_read_probe(st, bytes); })
        ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark(("probe/read_fma/" + std::to_string(bw_reference_bytes())).c_str(),
                               [](benchmark::State& st) { run_read_fma_probe(st, bw_reference_bytes()); })
      ->Unit(benchmark::kMillisecond);
  const std::vector<std::string_view> variants = built_variants();
  for (const isa_hooks& h : all_isas()) h.register_cases(cases_for(h.isa, variants));
  register_dispatch_cases();
}

constexpr const char* usage_extra =
    "gqa_bench's own flags:\n"
    "  --gqa_table=<file.json>  print the P1/P2/P3/D1 table from a JSON result file, then exit\n"
    "  --gqa_no_lazy            do not measure probes / Eigen baselines that the filter excluded\n"
    "                           (peak_frac, bw_frac, vs_eigen are then omitted where unknown)\n"
    "  --gqa_huge_pages         inputs, K/V copies and probe buffers on huge pages (gqa::huge_page_allocator;\n"
    "                           context gqa_huge_pages); default: plain 64-byte aligned allocations\n";

}  // namespace
}  // namespace gqa_bench

int main(int argc, char** argv) {
  using namespace gqa_bench;
  // Our own flags first (Google Benchmark would report them as unrecognised).
  std::string table;
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--gqa_table=", 12) == 0) {
      table = argv[i] + 12;
    } else if (std::strcmp(argv[i], "--gqa_no_lazy") == 0) {
      options().lazy_baselines = false;
    } else if (std::strcmp(argv[i], "--gqa_huge_pages") == 0) {
      options().huge_pages = true;
    } else if (std::strcmp(argv[i], "--help") == 0) {
      std::cout << usage_extra << "\n";
      argv[kept++] = argv[i];
    } else {
      argv[kept++] = argv[i];
    }
  }
  argc = kept;
  if (!table.empty()) return print_table(table);

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
    std::cerr << usage_extra;
    return 1;
  }
  add_context();
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
