// bench/bench_common.cpp: gqa_bench's ISA-independent parts: shape names, the case list, the probe and
// Eigen caches (with on-demand measurement), the input buffers. Compiled with the baseline flags only.
#include "bench.hpp"

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <new>
#include <set>
#include <thread>
#include <utility>

#include <gqa/isa/select.hpp>
#include <gqa/memory.hpp>
#include <gqa/random.hpp>
#include <gqa/variants.hpp>

namespace gqa_bench {

std::string shape_key(const shape& s) {
  std::string k = "B";
  k += std::to_string(s.b);
  k += "_Hq";
  k += std::to_string(s.hq);
  k += "_Hkv";
  k += std::to_string(s.hkv);
  k += "_D";
  k += std::to_string(s.d);
  k += "_Sq";
  k += std::to_string(s.sq);
  k += "_Skv";
  k += std::to_string(s.skv);
  k += s.causal ? "_causal" : "_full";
  if (s.window_left >= 0) k += "_w" + std::to_string(s.window_left);
  if (s.kv == kv_type::bf16) k += s.qo16 ? "_qkv-bf16" : "_kv-bf16";
  if (s.kv == kv_type::f16) k += s.qo16 ? "_qkv-f16" : "_kv-f16";
  if (s.kv == kv_type::i8) k += "_kv-i8";
  return k;
}

std::int64_t kv_element_bytes(kv_type t) { return t == kv_type::f32 ? 4 : t == kv_type::i8 ? 1 : 2; }

std::string shape_name(const shape& s) { return shape_key(s) + "_T" + std::to_string(s.threads); }

double flops(const shape& s) {
  const double full = 4.0 * static_cast<double>(s.b) * static_cast<double>(s.hq) * static_cast<double>(s.sq) *
                      static_cast<double>(s.skv) * static_cast<double>(s.d);
  // Causal with Sq = Skv: half the pairs (the usual convention). A window, or a causal chunk of Sq < Skv
  // queries at the end of its keys (chunked prefill, where nearly every pair is visible): the pairs counted.
  if (s.window_left < 0 && (!s.causal || s.sq == s.skv)) return s.causal ? full / 2 : full;
  double pairs = 0.0;  // visible (query, key) pairs, bottom-right aligned like the core
  for (std::int64_t i = 0; i < s.sq; ++i) {
    const std::int64_t p = i + (s.skv - s.sq);
    const std::int64_t hi = s.causal ? std::min(s.skv, p + 1) : s.skv;
    const std::int64_t lo = s.window_left < 0 ? 0 : std::max<std::int64_t>(0, p - s.window_left);
    pairs += static_cast<double>(std::max<std::int64_t>(0, hi - lo));
  }
  return full / static_cast<double>(s.sq) / static_cast<double>(s.skv) * pairs;
}

double kv_bytes(const shape& s) {
  // Per (key, KV head): d values of K and of V, and with int8 one fp32 scale each.
  const std::int64_t row = 2 * s.d * kv_element_bytes(s.kv) + (s.kv == kv_type::i8 ? 2 * 4 : 0);
  const double kv = static_cast<double>(s.b) * static_cast<double>(s.hkv) * static_cast<double>(s.skv) *
                    static_cast<double>(row);
  // 16-bit Q and O: Q read and O written once per call, 2 bytes each (d_qk = d_v = d here).
  const double qo = s.qo16 ? static_cast<double>(s.b) * static_cast<double>(s.sq) * static_cast<double>(s.hq) *
                                 static_cast<double>(2 * s.d * 2)
                           : 0.0;
  return kv + qo;
}

std::string_view main_shape_label(main_shape m) {
  switch (m) {
    case main_shape::p1: return "P1";
    case main_shape::p2: return "P2";
    case main_shape::p3: return "P3";
    case main_shape::d1: return "D1";
  }
  return "?";
}

shape make_main_shape(main_shape m, int threads) {
  switch (m) {
    case main_shape::p1: return {1, 32, 8, 128, 2048, 2048, false, threads};
    case main_shape::p2: return {1, 32, 8, 128, 2048, 2048, true, threads};
    case main_shape::p3: return {8, 12, 4, 64, 197, 197, false, threads};
    case main_shape::d1: return {1, 32, 8, 128, 1, 16384, false, threads};
  }
  return {};
}

namespace {
gqa::variant_heads registry_heads(std::string_view variant, const shape& model) {
  const auto h = gqa::variant_heads_for(variant, {model.hq, model.hkv, model.d, 0});
  return h ? *h : gqa::variant_heads{model.hq, model.hkv, model.hkv};  // unknown: run_variant reports it
}
}  // namespace

shape variant_shape(std::string_view variant, shape model) {
  const gqa::variant_heads h = registry_heads(variant, model);
  model.hq = h.hq;
  model.hkv = h.hkv;
  return model;
}

std::int64_t input_kv_heads(std::string_view variant, const shape& model) { return registry_heads(variant, model).kv_in; }

std::string bench_case::name() const {
  const std::string shape_part = backward ? shape_key(s) + "_bwd_T" + std::to_string(s.threads) : shape_name(s);
  return (kind == "variant" || kind == "kvcache" ? variant : kind) + "/" + isa + "/" + shape_part;
}

bool eigen_feasible(const shape& s, bool backward) {
  // The baseline materialises S = Q·Kᵀ (Sq × Skv floats) per thread: cap it at 64 MiB. It has no window
  // (its time would be of other work), and its backward at S 4096 (full Sq×Skv products per head, no
  // causal skipping) would take ~10 s per call.
  return s.sq * s.skv <= (std::int64_t{1} << 24) && s.window_left < 0 && !(backward && s.sq > 2048);
}

namespace {

// The sweeps (variant gqa, T1 but where noted; see docs/benchmarks.md): decode over Skv, prefill-causal over
// Sq = Skv, and KV heads 32 .. 1 at decode Skv 8192 and prefill-causal 1024. Their base shapes differ from
// P1/P2/D1 where a main shape would otherwise also match the KV sweep, so that filters on the main shapes
// select them only.
std::vector<shape> sweep_shapes(std::string_view isa) {
  std::vector<shape> out;
  // Skv 16: a decode whose time is mostly per-call overhead (validation, planning, task setup).
  for (std::int64_t skv : {16, 128, 512, 2048, 8192, 16384}) out.push_back({1, 32, 8, 128, 1, skv, false, 1});
  for (std::int64_t n : {128, 512, 2048, 8192}) {
    // Scalar prefill at 2048 already takes seconds per call; 8192 would take minutes.
    if (isa == "scalar" && n > 512) continue;
    out.push_back({1, 32, 8, 128, n, n, true, 1});
  }
  for (std::int64_t hkv : {32, 16, 8, 4, 2, 1}) out.push_back({1, 32, hkv, 128, 1, 8192, false, 1});
  for (std::int64_t hkv : {32, 16, 8, 4, 2, 1}) out.push_back({1, 32, hkv, 128, 1024, 1024, true, 1});
  // Sliding window (issue 13): a P2-like shape at S 4096, causal against causal with a 512-key window.
  if (isa != "scalar")
    for (int t : {1, 2})
      for (std::int64_t w : {-1, 512}) out.push_back({1, 32, 8, 128, 4096, 4096, true, t, w});
  // Short sequences and chunked prefill, one and two threads, not scalar: ViT-S, -B and -L
  // attention (batch 8, d 64, 197 and 577 tokens; 6/2, 12/4 and 16/4 heads: the B shape at 197 is P3), and
  // prefill chunks of 16 .. 256 queries at the end of an 8192-key cache (P1's heads, causal).
  if (isa != "scalar")
    for (int t : {1, 2}) {
      for (const auto& [hq, hkv] : {std::pair<std::int64_t, std::int64_t>{6, 2}, {12, 4}, {16, 4}})
        for (std::int64_t n : {197, 577}) out.push_back({8, hq, hkv, 64, n, n, false, t});
      for (std::int64_t sq : {16, 32, 64, 128, 256}) out.push_back({1, 32, 8, 128, sq, 8192, true, t});
    }
  return out;
}

}  // namespace

std::vector<bench_case> cases_for(std::string_view isa, const std::vector<std::string_view>& variants) {
  std::vector<bench_case> var, eig, ref;
  std::set<std::string> seen;
  auto add = [&](std::vector<bench_case>& to, std::string kind, std::string variant, const shape& s,
                 const shape& model, bool backward = false) {
    bench_case c{std::move(kind), std::move(variant), std::string(isa), s, model, backward};
    if (seen.insert(c.name()).second) to.push_back(std::move(c));
  };
  for (std::string_view v : variants)
    for (main_shape m : main_shapes)
      for (int t : {1, 2}) {
        const shape model = make_main_shape(m, t);
        add(var, "variant", std::string(v), variant_shape(v, model), model);
      }
  for (const shape& s : sweep_shapes(isa)) add(var, "variant", "gqa", s, s);
  // 16-bit and int8 K/V (gqa::bf16, gqa::f16, gqa::q8_view; Q and O float), GQA heads: D1 on one and two
  // threads, P1 on one (not scalar, whose f16 conversion is software and whose P1 takes seconds a call).
  // The same with Q and O in the 16-bit type too (_qkv-bf16, _qkv-f16).
  if (std::find(variants.begin(), variants.end(), "gqa") != variants.end())
    for (const kv_type t : {kv_type::bf16, kv_type::f16, kv_type::i8})
      for (const bool qo16 : {false, true}) {
        if (qo16 && t == kv_type::i8) continue;  // int8 K/V: benchmarked with float Q/O
        for (int th : {1, 2}) {
          shape s = make_main_shape(main_shape::d1, th);
          s.kv = t;
          s.qo16 = qo16;
          add(var, "variant", "gqa", s, s);
        }
        if (isa != "scalar") {
          shape s = make_main_shape(main_shape::p1, 1);
          s.kv = t;
          s.qo16 = qo16;
          add(var, "variant", "gqa", s, s);
        }
        // bf16 Q/K/V prefill (the bf16 tiles where the CPU has AMX-BF16, Note [bf16 tiles]): P1 and P2 on one
        // and two threads, to compare with the fp32 P1/P2 of the same run.
        if (isa != "scalar" && qo16 && t == kv_type::bf16)
          for (main_shape m : {main_shape::p1, main_shape::p2})
            for (int th : {1, 2}) {
              shape s = make_main_shape(m, th);
              s.kv = t;
              s.qo16 = qo16;
              add(var, "variant", "gqa", s, s);
            }
      }
  // Long-context decode: D1's heads against 65536 and 131072 keys (512 MiB and 1 GiB of fp32 K/V; half in
  // bf16), fp32 and bf16, one and two threads (not scalar).
  if (isa != "scalar" && std::find(variants.begin(), variants.end(), "gqa") != variants.end())
    for (const std::int64_t skv : {65536, 131072})
      for (const kv_type t : {kv_type::f32, kv_type::bf16})
        for (int th : {1, 2}) {
          shape s = make_main_shape(main_shape::d1, th);
          s.skv = skv;
          s.kv = t;
          add(var, "variant", "gqa", s, s);
        }
  // MQA decode with bf16 Q/K/V and with an int8 cache: D1 with its 32 query heads on one KV head, one and
  // two threads (not scalar); mqa/<isa>/B1_Hq32_Hkv1_D128_Sq1_Skv16384_full is the fp32 call
  // (docs/benchmarks.md).
  if (isa != "scalar" && std::find(variants.begin(), variants.end(), "gqa") != variants.end())
    for (const kv_type t : {kv_type::bf16, kv_type::i8})
      for (int th : {1, 2}) {
        shape s = make_main_shape(main_shape::d1, th);
        s.hkv = 1;
        s.kv = t;
        s.qo16 = t == kv_type::bf16;
        add(var, "variant", "gqa", s, s);
      }
  // The K/V forms of gqa/paged.hpp and gqa/varlen.hpp against the dense views, on P1, P3 and D1 with the
  // GQA heads, one thread: kv_dense (gqa::attend on the BSHD buffers), kv_paged16 and kv_paged256 (the same
  // keys in shuffled pages of 16 and 256 slots), kv_ragged (the same buffers as packed sequences).
  // Also D1's heads against 65536 keys (512 MiB of K/V), not scalar: a cache larger than a large server
  // L3, where D1's 128 MiB may partly sit (docs/benchmarks.md, "K/V forms").
  for (const char* form : {"kv_dense", "kv_paged16", "kv_paged256", "kv_ragged"}) {
    for (main_shape m : {main_shape::p1, main_shape::p3, main_shape::d1}) {
      const shape s = make_main_shape(m, 1);
      add(var, "kvcache", form, s, s);
    }
    if (isa != "scalar") {
      shape s = make_main_shape(main_shape::d1, 1);
      s.skv = 65536;
      add(var, "kvcache", form, s, s);
      // The same forms of an int8 cache (gqa::paged_q8_kv, q8_view in a ragged batch) on D1.
      s = make_main_shape(main_shape::d1, 1);
      s.kv = kv_type::i8;
      add(var, "kvcache", form, s, s);
    }
  }
  // The ragged batch's backward (gqa::attend_backward(varlen)) on P3's 8 sequences, one and two threads,
  // against the dense backward on the same buffers (vs_dense).
  for (int t : {1, 2}) {
    const shape s = make_main_shape(main_shape::p3, t);
    add(var, "kvcache", "kv_ragged", s, s, true);
  }
  // The backward (training) of every registered variant on the prefill shapes.
  for (std::string_view v : variants)
    for (main_shape m : {main_shape::p1, main_shape::p2, main_shape::p3})
      for (int t : {1, 2}) {
        const shape model = make_main_shape(m, t);
        add(var, "variant", std::string(v), variant_shape(v, model), model, true);
      }
  // The core's backward on bf16 inputs and gradients (gqa::attend_backward, GQA's map): P1 and P2, one and
  // two threads, beside the fp32 gqa entries above.
  if (isa != "scalar" && std::find(variants.begin(), variants.end(), "gqa") != variants.end())
    for (main_shape m : {main_shape::p1, main_shape::p2})
      for (int t : {1, 2}) {
        shape s = make_main_shape(m, t);
        s.kv = kv_type::bf16;
        s.qo16 = true;
        add(var, "variant", "gqa", s, s, true);
      }
  // The backward with a sliding window, like the forward's pair: P2's heads at S 4096 causal, with and
  // without a 512-key window, one thread.
  if (isa != "scalar")
    for (std::int64_t w : {-1, 512}) {
      const shape s{1, 32, 8, 128, 4096, 4096, true, 1, w};
      add(var, "variant", "gqa", s, s, true);
    }
  for (const bench_case& c : std::vector<bench_case>(var))
    if (eigen_feasible(c.s, c.backward) && c.s.kv == kv_type::f32)  // Eigen: fp32 (and no window)
      add(eig, "eigen", "", c.s, c.s, c.backward);
  if (isa == "scalar") {
    // The naive reference (double, unblocked) only on small shapes: P3 and the small end of the sweeps.
    for (const shape& s : {make_main_shape(main_shape::p3, 1), shape{1, 32, 8, 128, 128, 128, true, 1},
                           shape{1, 32, 8, 128, 1, 128, false, 1}})
      add(ref, "reference", "", s, s);
  }
  std::vector<bench_case> all = std::move(eig);
  all.insert(all.end(), ref.begin(), ref.end());
  all.insert(all.end(), var.begin(), var.end());
  return all;
}

double estimated_seconds(std::string_view isa, std::string_view kind, const shape& s) {
  // Single-thread GFLOP/s, order of magnitude only (measured on the development machine).
  double rate = 5;
  if (kind == "reference") {
    rate = 0.5;
  } else if (isa == "avx512") {
    rate = kind == "eigen" ? 60 : 150;
  } else if (isa == "avx2") {
    rate = kind == "eigen" ? 40 : 80;
  } else if (isa == "neon") {
    rate = 20;
  } else {
    rate = kind == "eigen" ? 8 : 5;
  }
  return flops(s) / (rate * 1e9 * s.threads) + kv_bytes(s) / 10e9;
}

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

double wall_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double clock_for(int threads) { return threads == 1 ? thread_cpu_seconds() : wall_seconds(); }

run_options& options() {
  static run_options o;
  return o;
}

// --- Probes. ---

namespace {

constexpr double nan = std::numeric_limits<double>::quiet_NaN();

std::map<std::string, double>& fma_cache() {
  static std::map<std::string, double> c;
  return c;
}
std::map<std::string, double>& bw_cache() {
  static std::map<std::string, double> c;
  return c;
}
std::map<std::string, double>& eigen_cache() {
  static std::map<std::string, double> c;
  return c;
}

std::string fma_key(std::string_view isa, int threads) { return std::string(isa) + "/T" + std::to_string(threads); }
std::string bw_key(std::size_t bytes, int threads) { return std::to_string(bytes) + "/T" + std::to_string(threads); }

/// Runs fn(thread_index) on `threads` threads (the caller's thread is index 0) and returns the seconds
/// on the clock the benchmarks use for that thread count.
template <class Fn>
double timed_on_threads(int threads, Fn&& fn) {
  const double t0 = clock_for(threads);
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back([&fn, t] { fn(t); });
  fn(0);
  for (auto& th : pool) th.join();
  return clock_for(threads) - t0;
}

}  // namespace

double measure_fma_peak(const isa_hooks& h, int threads) {
  // A peak: the best of five ~10 ms trials, so that a trial sharing its core with another process (the
  // T2 trials run on real time) does not lower it. Each thread runs a whole trial, so thread start-up is
  // negligible.
  constexpr std::int64_t rounds = 1 << 12;
  volatile float sink = h.fma_rounds(rounds * 16);  // warm-up (clock ramp-up)
  const double t0 = wall_seconds();
  sink = h.fma_rounds(rounds);
  const double one = std::max(wall_seconds() - t0, 1e-7);
  const auto reps = static_cast<std::int64_t>(std::clamp(0.01 / one, 1.0, 1e6));
  double best = 0;
  for (int trial = 0; trial < 5; ++trial) {
    const double seconds = timed_on_threads(threads, [&](int) {
      float acc = 0;
      for (std::int64_t r = 0; r < reps; ++r) acc += h.fma_rounds(rounds);
      sink = acc;
    });
    best = std::max(best, h.flops_per_round * static_cast<double>(rounds * reps * threads) / seconds * 1e-9);
  }
  return best;
}

void* bench_alloc(std::size_t bytes, bool huge) {
  if (huge) return gqa::huge_page_allocator<unsigned char>{}.allocate(bytes);
  return ::operator new(std::max<std::size_t>(bytes, 1), std::align_val_t{64});
}
void bench_free(void* p, std::size_t bytes, bool huge) noexcept {
  if (huge)
    gqa::huge_page_allocator<unsigned char>{}.deallocate(static_cast<unsigned char*>(p), bytes);
  else
    ::operator delete(p, std::align_val_t{64});
}

namespace {

/// `n` floats, 64-byte aligned (bench_vector: on huge pages with --gqa_huge_pages), zeros.
struct aligned_floats {
  bench_vector<float> buf;
  float* p;
  std::size_t n = 0;
  explicit aligned_floats(std::size_t count) : buf(std::max<std::size_t>(count, 1)), p(buf.data()), n(count) {}
};

}  // namespace

const isa_hooks& best_isa() {
  std::vector<std::string_view> built;
  for (const isa_hooks& h : all_isas()) built.push_back(h.isa);
  const isa_hooks* best = find_isa(gqa::isa::best_supported(built));
  return best != nullptr ? *best : all_isas().front();
}

void store_fma_peak(std::string_view isa, int threads, double gflops) { fma_cache()[fma_key(isa, threads)] = gflops; }

double fma_peak(std::string_view isa, int threads) {
  const auto it = fma_cache().find(fma_key(isa, threads));
  if (it != fma_cache().end()) return it->second;
  const isa_hooks* h = find_isa(isa);
  if (!options().lazy_baselines || h == nullptr || !h->cpu_supported()) return nan;
  const double g = measure_fma_peak(*h, threads);
  store_fma_peak(isa, threads, g);
  return g;
}

std::size_t bw_reference_bytes() {
  return static_cast<std::size_t>(kv_bytes(make_main_shape(main_shape::d1, 1)));
}

void store_read_bw(std::size_t bytes, int threads, double gbps) { bw_cache()[bw_key(bytes, threads)] = gbps; }

/// The streaming-read probe: `passes` reads of a `bytes` buffer split into `threads` contiguous parts.
double measure_read_bw(std::size_t bytes, int threads, const float* buf, int passes) {
  const isa_hooks& h = best_isa();
  const std::size_t n = bytes / sizeof(float);
  const std::size_t part = n / static_cast<std::size_t>(threads) / 64 * 64;
  volatile float sink = 0;
  const double s = timed_on_threads(threads, [&](int t) {
    float acc = 0;
    for (int p = 0; p < passes; ++p) acc += h.read_sum(buf + static_cast<std::size_t>(t) * part, part);
    sink = acc;
  });
  return static_cast<double>(part * sizeof(float)) * threads * passes / s * 1e-9;
}

const float* probe_buffer(std::size_t bytes) {
  static std::map<std::size_t, aligned_floats> buffers;
  auto it = buffers.find(bytes);
  if (it == buffers.end()) {
    it = buffers.emplace(bytes, aligned_floats(bytes / sizeof(float))).first;
    std::fill(it->second.p, it->second.p + it->second.n, 1.0f);
  }
  return it->second.p;
}

double measure_read_bw_best(std::size_t bytes, int threads) {
  const float* buf = probe_buffer(bytes);
  measure_read_bw(bytes, threads, buf, 1);  // warm-up: page tables, clocks
  // Trials of >= ~10 ms (at ~20 GB/s), so thread start-up is negligible; best of three.
  const int passes = static_cast<int>(std::clamp(0.01 / (static_cast<double>(bytes) / 20e9), 1.0, 1000.0));
  double best = 0;
  for (int i = 0; i < 3; ++i) best = std::max(best, measure_read_bw(bytes, threads, buf, passes));
  return best;
}

double read_bw(std::size_t bytes, int threads) {
  const auto it = bw_cache().find(bw_key(bytes, threads));
  if (it != bw_cache().end()) return it->second;
  if (!options().lazy_baselines) return nan;
  const double best = measure_read_bw_best(bytes, threads);
  store_read_bw(bytes, threads, best);
  return best;
}

double eigen_seconds_cached(std::string_view isa, const shape& s, bool backward) {
  const auto it = eigen_cache().find(bench_case{"eigen", "", std::string(isa), s, backward}.name());
  return it == eigen_cache().end() ? -1.0 : it->second;
}

void store_eigen_seconds(std::string_view isa, const shape& s, double seconds, bool backward) {
  eigen_cache()[bench_case{"eigen", "", std::string(isa), s, backward}.name()] = seconds;
}

const isa_hooks* find_isa(std::string_view isa) {
  for (const isa_hooks& h : all_isas())
    if (h.isa == isa) return &h;
  return nullptr;
}

// --- Inputs. ---

namespace {

struct input_entry {
  std::string key;
  aligned_floats q, k, v, o;
  inputs view;
  input_entry(std::string key_, const shape& s, std::int64_t kv_heads)
      : key(std::move(key_)),
        q(static_cast<std::size_t>(s.b * s.sq * s.hq * s.d)),
        k(static_cast<std::size_t>(s.b * s.skv * kv_heads * s.d)),
        v(static_cast<std::size_t>(s.b * s.skv * kv_heads * s.d)),
        o(static_cast<std::size_t>(s.b * s.sq * s.hq * s.d)) {
    fill(q, 1);
    fill(k, 2);
    fill(v, 3);
    view = {q.p, k.p, v.p, o.p, kv_heads};  // every page touched (zeros, then the fill) before timing
  }
  static void fill(aligned_floats& x, std::uint64_t seed) {
    for (std::size_t i = 0; i < x.n; ++i)
      x.p[i] = 2.0f * gqa::random::to_unit_float(gqa::random::hash(seed, {i})) - 1.0f;
  }
};

}  // namespace

const inputs& get_inputs(const shape& s, std::int64_t kv_heads) {
  static std::vector<std::unique_ptr<input_entry>> entries;  // most recently used last
  shape key_shape = s;
  key_shape.threads = 1;
  key_shape.kv = kv_type::f32;  // the float inputs are the same; 16-bit cases round copies of them
  const std::string key = shape_name(key_shape) + "_kv" + std::to_string(kv_heads);
  for (std::size_t i = 0; i < entries.size(); ++i) {
    if (entries[i]->key == key) {
      const auto it = entries.begin() + static_cast<std::ptrdiff_t>(i);
      std::rotate(it, it + 1, entries.end());
      return entries.back()->view;
    }
  }
  if (entries.size() >= 4) entries.erase(entries.begin());
  entries.push_back(std::make_unique<input_entry>(key, s, kv_heads));
  return entries.back()->view;
}

}  // namespace gqa_bench
