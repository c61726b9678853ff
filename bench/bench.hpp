// bench/bench.hpp: what gqa_bench's translation units share: shapes and their names, the case list, the
// caches of machine probes and Eigen baselines, the input buffers, clocks. Declarations only (defined in
// bench_common.cpp, compiled with the baseline flags): this header is included by the per-ISA TUs too, and
// an inline function compiled with -mavx512f must never be the copy the linker keeps for the others.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace gqa_bench {

/// The element type of K and V in a benchmark (Q and O are float): float, gqa::bf16, gqa::f16, or int8
/// (gqa::q8_view: int8 values and one fp32 scale per (token, KV head) row of each of K and V).
enum class kv_type { f32, bf16, f16, i8 };
/// Bytes per K/V element: 4, 2, or 1 (int8; its scales are counted by kv_bytes).
std::int64_t kv_element_bytes(kv_type t);

/// One attention problem as the core runs it: `hkv` is the KV head count the core sees (after a policy's
/// prepare()), `threads` goes to attention_options::num_threads.
struct shape {
  std::int64_t b = 1, hq = 1, hkv = 1, d = 1, sq = 1, skv = 1;
  bool causal = false;
  int threads = 1;
  std::int64_t window_left = -1;  // attention_options::window_left; >= 0 adds "_w<n>" to the name
  kv_type kv = kv_type::f32;      // K/V storage; bf16, f16, int8 add "_kv-bf16" / "_kv-f16" / "_kv-i8" to the name
  bool qo16 = false;  // Q and O in K/V's 16-bit type too (kv bf16 or f16): "_qkv-bf16" / "_qkv-f16" instead
};

/// "B1_Hq32_Hkv8_D128_Sq2048_Skv2048_full_T1" (16-bit K/V: "..._full_kv-bf16_T1").
std::string shape_name(const shape& s);
/// The same without the "_T<threads>" suffix (identifies the shape regardless of threads).
std::string shape_key(const shape& s);
/// 4·B·Hq·Sq·Skv·D, halved when causal with Sq = Skv (the same formula for decode); with a window, or causal
/// with Sq < Skv (chunked prefill), 4·B·Hq·D times the (query, key) pairs the window and mask leave visible.
double flops(const shape& s);
/// K/V bytes one pass reads: B·Hkv·Skv·(D_qk + D_v)·(4, or 2 for 16-bit K/V), plus with qo16 the Q read
/// and O written, B·Sq·Hq·(D_qk + D_v)·2 (with float Q/O these are not counted: docs/benchmarks.md).
double kv_bytes(const shape& s);

/// The four shapes of the table with the baseline heads (Hq, Hkv) of the GQA model.
enum class main_shape { p1, p2, p3, d1 };
inline constexpr main_shape main_shapes[] = {main_shape::p1, main_shape::p2, main_shape::p3, main_shape::d1};
std::string_view main_shape_label(main_shape m);
shape make_main_shape(main_shape m, int threads);

/// The shape the core runs for variant `v` on `model`, a layer with H = model.hq query heads and
/// G = model.hkv KV groups: (hq, hkv) = the registry's default heads (gqa::variant_heads_for, e.g. MHA
/// (H, H), MQA (H, 1), SQA's symmetric configuration (H/2, H/2), the others (H, G)).
shape variant_shape(std::string_view variant, shape model);
/// K/V heads of the input tensors for variant `v` on `model` (the registry's kv_in: H for WGQA, whose
/// prepare() combines them into G; the core's hkv for the others).
std::int64_t input_kv_heads(std::string_view variant, const shape& model);

/// One benchmark to register. kind: "variant" (variant = a registered name), "eigen", "reference" or
/// "kvcache" (variant = the K/V form: kv_dense, kv_paged16, kv_paged256, kv_ragged; GQA heads).
struct bench_case {
  std::string kind;     // "variant", "eigen" or "reference"
  std::string variant;  // for kind "variant": a name of gqa::variant_names
  std::string isa;
  shape s;              // what the core runs (variant_shape(variant, model))
  shape model;          // the layer the variant is built for (the registry's model shape)
  bool backward = false;  // the backward pass (variant: gqa::backward; eigen: its GEMM backward)
  /// "<variant|eigen|reference|form>/<isa>/<shape_name>", or "<variant|eigen>/<isa>/<shape_key>_bwd_T<threads>".
  std::string name() const;
};
/// Every case of ISA `isa`, in registration order: Eigen baselines first (so that the variants' vs_eigen
/// finds them measured), then the reference (scalar only), then the variants, then the sweeps.
/// `variants` is the list of variant names this build benchmarks.
std::vector<bench_case> cases_for(std::string_view isa, const std::vector<std::string_view>& variants);
/// Whether gqa_bench runs the Eigen baseline (forward, or backward) for s: false where its Sq×Skv score
/// matrix would be unreasonably large, for a sliding window (it has none), and for the backward at S 4096.
bool eigen_feasible(const shape& s, bool backward = false);

/// Rough seconds per call, used to decide warm-up calls (never to set iteration counts).
double estimated_seconds(std::string_view isa, std::string_view kind, const shape& s);

// --- Clocks. T1 benchmarks report CPU time of the calling thread (Google Benchmark's default), threaded
// ones real time (UseRealTime); counters are computed from the same clock the library reports. ---
double thread_cpu_seconds();
double wall_seconds();
/// thread_cpu_seconds() when threads == 1, else wall_seconds().
double clock_for(int threads);

// --- Probe caches. Filled by the probe/* benchmarks (registered first); when a filter excludes them,
// the first benchmark that needs a value measures it (quickly) through the hooks below. ---
/// GFLOP/s of the FMA probe of `isa` on `threads` threads.
double fma_peak(std::string_view isa, int threads);
void store_fma_peak(std::string_view isa, int threads, double gflops);
/// GB/s of the streaming-read probe over `bytes` on `threads` threads.
double read_bw(std::size_t bytes, int threads);
void store_read_bw(std::size_t bytes, int threads, double gbps);
/// The buffer size bw_frac is relative to: D1's K + V (the decode working set, larger than most LLCs).
std::size_t bw_reference_bytes();

/// Seconds per call of the Eigen baseline (its backward when `backward`) for (isa, shape incl. threads);
/// negative when unknown.
double eigen_seconds_cached(std::string_view isa, const shape& s, bool backward = false);
void store_eigen_seconds(std::string_view isa, const shape& s, double seconds, bool backward = false);

/// What each per-ISA translation unit (the generated bench_<isa>.cpp) provides.
struct isa_hooks {
  std::string_view isa;
  bool (*cpu_supported)() = nullptr;
  /// Runs `steps` rounds of the FMA chains; returns a checksum. One round is flops_per_round flops.
  float (*fma_rounds)(std::int64_t steps) = nullptr;
  double flops_per_round = 0;
  /// Sum of n floats (n a multiple of 64), read once front to back.
  float (*read_sum)(const float* p, std::size_t n) = nullptr;
  /// The n floats read as fp32 decode's key-major walk reads D1's cache (Note [decode tasks]): the first
  /// half as K and the second as V, one key's 4 KiB of K rows, then its 4 KiB of V rows, key by key, with
  /// D1's arithmetic per byte, four multiply-adds per loaded vector (its four query heads per KV head).
  float (*read_fma_sum)(const float* p, std::size_t n) = nullptr;
  /// Registers this ISA's cases (cases_for) with Google Benchmark.
  void (*register_cases)(const std::vector<bench_case>& cases) = nullptr;
};
// One per ISA translation unit (generated bench_<isa>.cpp, compiled with gqa_isa_compile_options(<isa>)).
isa_hooks hooks_scalar();
isa_hooks hooks_avx2();
isa_hooks hooks_avx512();
isa_hooks hooks_neon();
/// Registers the dispatch/... and dispatch_pool/... cases (bench_dispatch.cpp: no ISA flags, the ISA is
/// chosen at run time).
void register_dispatch_cases();
/// Every ISA translation unit this binary contains, scalar first.
const std::vector<isa_hooks>& all_isas();
const isa_hooks* find_isa(std::string_view isa);
/// The best ISA of all_isas() the CPU supports (gqa::isa::best_supported): the read probe's widest loads.
const isa_hooks& best_isa();

/// Measures the FMA probe of `h` now on `threads` threads (best of five ~10 ms trials): GFLOP/s.
double measure_fma_peak(const isa_hooks& h, int threads);
/// A 64-byte aligned buffer of `bytes` (filled once, kept for the run) for the read probe.
const float* probe_buffer(std::size_t bytes);
/// `passes` streaming reads of `bytes` from `buf`, split in contiguous parts over `threads` threads
/// (with the widest ISA the CPU supports): GB/s on the clock of that thread count.
double measure_read_bw(std::size_t bytes, int threads, const float* buf, int passes);
/// The read probe as the benchmarks use it: best of three trials of >= ~10 ms each.
double measure_read_bw_best(std::size_t bytes, int threads);

// --- Inputs: random BSHD buffers, allocated and filled once per shape, reused by consecutive benchmarks
// of the same shape (the last few are kept). ---
struct inputs {
  float* q = nullptr;  // b × sq × hq × d
  float* k = nullptr;  // b × skv × kv_heads × d
  float* v = nullptr;  // b × skv × kv_heads × d
  float* o = nullptr;  // b × sq × hq × d
  std::int64_t kv_heads = 0;
};
/// Buffers for `s` with `kv_heads` K/V heads. Valid until four other shapes have been requested.
const inputs& get_inputs(const shape& s, std::int64_t kv_heads);

/// Options of this run (set by main from gqa_bench's own flags).
struct run_options {
  bool lazy_baselines = true;  // measure missing probes / Eigen baselines on demand
  bool huge_pages = false;     // --gqa_huge_pages: large buffers on huge pages (gqa::huge_page_allocator)
};
run_options& options();

/// `bytes` of 64-byte aligned memory from operator new (what a caller's plain allocation gets), or, when
/// `huge`, gqa::huge_page_allocator's (2 MiB pages from 2 MiB up); bench_free returns it.
void* bench_alloc(std::size_t bytes, bool huge);
void bench_free(void* p, std::size_t bytes, bool huge) noexcept;

/// The allocator of the benchmarks' inputs, K/V copies and probe buffers (bench_alloc), on huge pages with
/// --gqa_huge_pages: the choice is made when the allocator is constructed (after the flags).
template <class T>
struct bench_allocator {
  using value_type = T;
  bool huge = options().huge_pages;
  bench_allocator() = default;
  template <class U>
  bench_allocator(const bench_allocator<U>& o) noexcept : huge(o.huge) {}  // NOLINT(google-explicit-constructor)
  T* allocate(std::size_t n) { return static_cast<T*>(bench_alloc(n * sizeof(T), huge)); }
  void deallocate(T* p, std::size_t n) noexcept { bench_free(p, n * sizeof(T), huge); }
};
template <class T, class U>
bool operator==(const bench_allocator<T>& a, const bench_allocator<U>& b) noexcept {
  return a.huge == b.huge;
}
/// A std::vector on bench_allocator.
template <class T>
using bench_vector = std::vector<T, bench_allocator<T>>;

/// Reads a Google Benchmark JSON file written by gqa_bench and prints the P1/P2/P3/D1 table
/// (markdown) to stdout. Returns the process exit code.
int print_table(const std::string& json_path);

}  // namespace gqa_bench
