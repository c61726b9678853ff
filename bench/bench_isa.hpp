// bench/bench_isa.hpp: the benchmarks of one ISA: every variant through gqa::forward, the Eigen baseline,
// the naive reference, and the probe kernels. Included once by each generated bench_<isa>.cpp, which defines
// GQA_BENCH_ISA (scalar, avx2, avx512, neon) and is compiled with that ISA's flags. Everything here has
// internal linkage (anonymous namespace) except hooks_<isa>(), and Eigen is renamed per ISA (see
// Note [one Eigen per ISA]), so no code compiled with one ISA's flags can be linked into another's.
#pragma once

#ifndef GQA_BENCH_ISA
#error "define GQA_BENCH_ISA (scalar, avx2, avx512, neon) before including bench_isa.hpp"
#endif

#define GQA_BENCH_CAT2(a, b) a##b
#define GQA_BENCH_CAT(a, b) GQA_BENCH_CAT2(a, b)

#if GQA_BENCH_HAS_EIGEN
// Note [one Eigen per ISA]
// Eigen is header-only and its kernels (gebp, gemv, the packet math) are templates with the same mangled
// names in every TU. Linked together, the linker would keep ONE copy for all ISA TUs, so eigen/avx2 and
// eigen/avx512 would silently run the same code. Renaming the namespace per TU keeps them apart (the
// header names in #include <Eigen/...> are not macro-expanded, only the identifier Eigen in the code).
// EIGEN_DONT_PARALLELIZE: the baseline is single-threaded per head; T2 parallelises over heads itself.
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*() (`__m512 __Y = __Y;`), which -Wall reports as
// (maybe-)uninitialized once Eigen's packet math is inlined into the baseline: a false positive, silenced
// for Eigen and the baseline only (popped after class eigen_baseline).
#define EIGEN_DONT_PARALLELIZE
#define Eigen GQA_BENCH_CAT(gqa_bench_eigen_, GQA_BENCH_ISA)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <Eigen/Core>
#endif

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <benchmark/benchmark.h>

#include <gqa/gqa.hpp>
#include <gqa/paged.hpp>
#include <gqa/varlen.hpp>
#include <gqa/reference/attention.hpp>
#include <gqa/threading/parallel.hpp>

#include "bench.hpp"

namespace gqa_bench {
namespace {

using Isa = gqa::isa::GQA_BENCH_ISA;
using gqa::index_t;
constexpr std::string_view isa_name = Isa::name;

// --- Probe kernels. ---

// Independent FMA chains: at least FMA latency (4 cycles) × FMA pipes (2) so the pipes never wait, and
// few enough to stay in registers with the two constants (16 xmm/ymm on x86 scalar and AVX2; 32 zmm or
// NEON q registers). Scalar: 12 multiply-add chains of 6 cycles' latency keep 2 multiply + 2 add pipes busy.
constexpr int fma_chains = std::is_same_v<Isa, gqa::isa::avx2> || std::is_same_v<Isa, gqa::isa::scalar> ? 12 : 24;

/// Keeps x in a register and opaque to the optimiser (stops the scalar chains being auto-vectorised).
GQA_FORCEINLINE void opaque(float& x) {
#if defined(__x86_64__) || defined(__i386__)
  asm("" : "+x"(x));
#elif defined(__aarch64__)
  asm("" : "+w"(x));
#else
  volatile float y = x;
  x = y;
#endif
}

template <std::size_t... I>
float fma_rounds_impl(std::int64_t steps, std::index_sequence<I...>) {
  using V = gqa::isa::vec<Isa>;
  typename V::reg acc[sizeof...(I)] = {V::set1(1e-3f * static_cast<float>(I))...};
  // acc = acc·m + c converges to c / (1 − m) = 1: no overflow, no denormals, and each step depends on the
  // last, so the compiler can neither drop nor merge rounds.
  const auto m = V::set1(0.999f);
  const auto c = V::set1(1e-3f);
  if constexpr (std::is_same_v<Isa, gqa::isa::scalar>) {
    // The scalar peak is the hardware's scalar multiply + add (fused where the baseline ISA has FMA, as on
    // AArch64). Not vec<scalar>::fma: without -mfma, std::fma is a call into libm's fmaf on x86-64.
    for (std::int64_t s = 0; s < steps; ++s) ((acc[I] = acc[I] * m + c, opaque(acc[I])), ...);
  } else {
    for (std::int64_t s = 0; s < steps; ++s) ((acc[I] = V::fma(acc[I], m, c)), ...);
  }
  auto sum = V::zero();
  ((sum = V::add(sum, acc[I])), ...);
  return V::reduce_sum(sum);
}

float fma_rounds(std::int64_t steps) { return fma_rounds_impl(steps, std::make_index_sequence<fma_chains>{}); }

float read_sum(const float* p, std::size_t n) {
  using V = gqa::isa::vec<Isa>;
  constexpr std::size_t L = V::lanes;
  auto a0 = V::zero(), a1 = V::zero(), a2 = V::zero(), a3 = V::zero();
  for (std::size_t i = 0; i + 4 * L <= n; i += 4 * L) {
    a0 = V::add(a0, V::load(p + i));
    a1 = V::add(a1, V::load(p + i + L));
    a2 = V::add(a2, V::load(p + i + 2 * L));
    a3 = V::add(a3, V::load(p + i + 3 * L));
  }
  return V::reduce_sum(V::add(V::add(a0, a1), V::add(a2, a3)));
}

float read_fma_sum(const float* p, std::size_t n) {
  using V = gqa::isa::vec<Isa>;
  constexpr std::size_t L = V::lanes;
  constexpr std::size_t row = 8 * 128;  // one key's K (or V) rows of D1's 8 KV heads of 128: 4 KiB
  const std::size_t half = n / 2 / row * row;
  const float* k = p;
  const float* v = p + half;
  const typename V::reg w[4] = {V::set1(0.5f), V::set1(0.25f), V::set1(0.125f), V::set1(0.0625f)};
  typename V::reg acc[2][4];  // 8 independent chains (registers for AVX2's 16 too)
  GQA_UNROLL for (int u = 0; u < 2; ++u)
    GQA_UNROLL for (int r = 0; r < 4; ++r) acc[u][r] = V::zero();
  const auto rows = [&](const float* x) {
    for (std::size_t i = 0; i + 2 * L <= row; i += 2 * L)
      GQA_UNROLL for (int u = 0; u < 2; ++u) {
        const auto y = V::load(x + i + static_cast<std::size_t>(u) * L);
        GQA_UNROLL for (int r = 0; r < 4; ++r) acc[u][r] = V::mul_add(y, w[r], acc[u][r]);
      }
  };
  for (std::size_t j = 0; j < half; j += row) {  // key by key: its K rows, then its V rows
    rows(k + j);
    rows(v + j);
  }
  auto sum = V::zero();
  GQA_UNROLL for (int u = 0; u < 2; ++u)
    GQA_UNROLL for (int r = 0; r < 4; ++r) sum = V::add(sum, acc[u][r]);
  return V::reduce_sum(sum);
}

// --- Tensor views of the shared inputs. ---

struct views {
  gqa::tensor_view<const float> q, k, v;
  gqa::tensor_view<float> o;
};

views make_views(const shape& s, const inputs& in) {
  return {gqa::bshd<const float>(in.q, s.b, s.sq, s.hq, s.d),
          gqa::bshd<const float>(in.k, s.b, s.skv, in.kv_heads, s.d),
          gqa::bshd<const float>(in.v, s.b, s.skv, in.kv_heads, s.d), gqa::bshd<float>(in.o, s.b, s.sq, s.hq, s.d)};
}

// --- The Eigen baseline. ---

#if GQA_BENCH_HAS_EIGEN
using row_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using const_map = Eigen::Map<const row_matrix, Eigen::Unaligned, Eigen::OuterStride<>>;
using out_map = Eigen::Map<row_matrix, Eigen::Unaligned, Eigen::OuterStride<>>;

/// The Eigen baselines' parallel loop: `threads` slots on gqa's own loop, slot t running fn(task, t) for
/// tasks t, t + threads, ... of [0, n) (the slot owns its scratch matrices).
template <class Fn>
void run_in_slots(index_t n, int threads, Fn&& fn) {
  const index_t slots = threads;
  gqa::detail::run_tasks(slots, gqa::executor{threads}, [&fn, n, slots](index_t t) {
    for (index_t task = t; task < n; task += slots) fn(task, static_cast<int>(t));
  });
}

/// What a user would write with Eigen alone: per (batch, query head), S = Q·Kᵀ with Eigen's GEMM over
/// row-major maps of the BSHD buffers, a row softmax with the causal mask, O = P·V. Heads are spread
/// over the threads (each thread owns its score matrix); Eigen itself runs single-threaded.
class eigen_baseline {
 public:
  explicit eigen_baseline(const shape& s)
      : s_(s), in_(get_inputs(s, s.hkv)), scores_(static_cast<std::size_t>(s.threads)),
        row_max_(static_cast<std::size_t>(s.threads)), row_sum_(static_cast<std::size_t>(s.threads)) {
    for (auto& m : scores_) m.resize(s.sq, s.skv);
    for (auto& m : row_max_) m.resize(s.sq);
    for (auto& m : row_sum_) m.resize(s.sq);
  }

  void run() {
    // Slot t takes heads t, t + threads, ... (all heads cost the same) and owns the scratch scores_[t].
    run_in_slots(s_.b * s_.hq, s_.threads, [this](index_t task, int t) { head(task / s_.hq, task % s_.hq, t); });
  }

 private:
  void head(index_t ib, index_t h, int t) {
    const index_t d = s_.d, hq = s_.hq, hkv = s_.hkv, sq = s_.sq, skv = s_.skv;
    const index_t g = h / (hq / hkv);
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    const_map q(in_.q + (ib * sq * hq + h) * d, sq, d, Eigen::OuterStride<>(hq * d));
    const_map k(in_.k + (ib * skv * hkv + g) * d, skv, d, Eigen::OuterStride<>(hkv * d));
    const_map v(in_.v + (ib * skv * hkv + g) * d, skv, d, Eigen::OuterStride<>(hkv * d));
    out_map o(in_.o + (ib * sq * hq + h) * d, sq, d, Eigen::OuterStride<>(hq * d));
    row_matrix& p = scores_[static_cast<std::size_t>(t)];
    Eigen::VectorXf& m = row_max_[static_cast<std::size_t>(t)];
    Eigen::VectorXf& l = row_sum_[static_cast<std::size_t>(t)];
    p.noalias() = q * k.transpose();
    if (s_.causal) {
      // Bottom-right aligned, as gqa: query i sees keys j <= i + (skv - sq).
      for (index_t i = 0; i < sq; ++i) {
        const index_t visible = std::min(skv, i + (skv - sq) + 1);
        p.row(i).tail(skv - visible).setConstant(-std::numeric_limits<float>::infinity());
      }
    }
    m = p.rowwise().maxCoeff();
    p.array() = ((p.colwise() - m) * scale).array().exp();
    l = p.rowwise().sum();
    p.array().colwise() /= l.array();
    o.noalias() = p * v;
  }

  shape s_;
  const inputs& in_;
  std::vector<row_matrix> scores_;
  std::vector<Eigen::VectorXf> row_max_, row_sum_;
};
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

// --- Counters. ---

double nan_if_negative(double x) { return x < 0 ? std::numeric_limits<double>::quiet_NaN() : x; }

/// Sets a counter unless the value is unknown (NaN: a probe could not be measured).
void set_counter(benchmark::State& st, const char* name, double value) {
  if (std::isfinite(value)) st.counters[name] = benchmark::Counter(value);
}

/// GFLOPS, peak_frac, GBps, bw_frac for one call of `seconds` on shape s.
void throughput_counters(benchmark::State& st, const shape& s, double seconds) {
  const double gflops = flops(s) / seconds * 1e-9;
  const double gbps = kv_bytes(s) / seconds * 1e-9;
  set_counter(st, "GFLOPS", gflops);
  set_counter(st, "peak_frac", gflops / fma_peak(isa_name, s.threads));
  set_counter(st, "GBps", gbps);
  set_counter(st, "bw_frac", gbps / read_bw(bw_reference_bytes(), s.threads));
}

/// Measures the Eigen baseline of `s` now (a few calls): seconds per call; negative without Eigen.
double measure_eigen(const shape& s);

/// Seconds per call of the Eigen baseline of s on this ISA: measured by its eigen/ benchmark earlier in
/// this run, else measured now (unless disabled); negative when unavailable.
double eigen_seconds(const shape& s) {
  double t = eigen_seconds_cached(isa_name, s);
  if (t < 0 && options().lazy_baselines && eigen_feasible(s)) {
    t = measure_eigen(s);
    if (t > 0) store_eigen_seconds(isa_name, s, t);
  }
  return t;
}

void skip_if_unsupported(benchmark::State& st) {
  if (!gqa::isa::cpu_supports<Isa>()) st.SkipWithError(("CPU lacks " + std::string(isa_name)).c_str());
}

// --- Policies. ---

/// One call of the policy's own steps, as gqa::forward runs them, without the core: check, prepare
/// (WGQA's combine), plan (KDGQA/DGQA's norms and allocation), finish (PGQA's noise).
template <class P>
void policy_steps(P& p, const views& x) {
  if constexpr (gqa::policy_with_check<P>) p.check(x.q, x.k, x.v, x.o);
  gqa::kv_views kv{x.k, x.v};
  if constexpr (gqa::policy_with_prepare<P>) kv = p.prepare(x.k, x.v);
  const gqa::head_map map = p.plan(x.q, kv.k);
  if constexpr (gqa::policy_with_finish<P>) p.finish(x.o, map);
  benchmark::DoNotOptimize(kv);
  benchmark::DoNotOptimize(map.hkv());
}

/// Seconds per call of policy_steps, timed on the benchmark's clock: repeated for >= 20 ms (at least 3
/// and at most 1000 calls). A policy with finish() (PGQA) changes the output in place, so for it the
/// output is restored between calls (untimed, each call timed on its own): perturbing an already
/// perturbed output over and over would grow it without bound.
template <class P>
double policy_seconds(P& p, const views& x, int threads) {
  policy_steps(p, x);
  int calls = 0;
  double elapsed = 0;
  if constexpr (gqa::policy_with_finish<P>) {
    const std::vector<float> saved(x.o.data, x.o.data + x.o.b * x.o.s * x.o.h * x.o.d);
    while (calls < 3 || (elapsed < 0.02 && calls < 1000)) {
      std::copy(saved.begin(), saved.end(), x.o.data);
      const double t0 = clock_for(threads);
      policy_steps(p, x);
      elapsed += clock_for(threads) - t0;
      ++calls;
    }
    std::copy(saved.begin(), saved.end(), x.o.data);
  } else {
    const double t0 = clock_for(threads);
    while (calls < 3 || (elapsed < 0.02 && calls < 1000)) {
      policy_steps(p, x);
      ++calls;
      elapsed = clock_for(threads) - t0;
    }
  }
  return elapsed / calls;
}

// --- Run functions. ---

/// Calls fn(policy) with the registry's default policy of `variant` for the bench case's model (a fresh
/// one per benchmark); false for an unregistered name. A policy that cannot be built for the model throws.
template <class Fn>
bool with_registered_policy(const bench_case& c, Fn&& fn) {
  const gqa::model_shape model{c.model.hq, c.model.hkv, c.model.d, 0};
  return gqa::visit_variant(c.variant, [&](auto t) {
    using P = typename decltype(t)::type;
    gqa::with_default_policy<P>(model, [&](P& p) { fn(p); });
  });
}

/// with_registered_policy for a benchmark: an unknown variant, or a policy that cannot be built for the
/// case's model, skips `st` with the reason.
template <class Fn>
void with_bench_policy(benchmark::State& st, const bench_case& c, Fn&& fn) {
  bool known = true;
  try {
    known = with_registered_policy(c, std::forward<Fn>(fn));
  } catch (const std::exception& e) {
    st.SkipWithError(e.what());  // the policy could not be built for this model
    return;
  }
  if (!known) st.SkipWithError(("unknown variant: " + c.variant).c_str());
}

/// The float view x rounded to T in `store` (which owns the elements), as a BSHD view of the same shape.
template <class T>
gqa::tensor_view<const T> rounded_view(const gqa::tensor_view<const float>& x, bench_vector<T>& store) {
  const auto n = static_cast<std::size_t>(x.b * x.s * x.h * x.d);  // x is a dense BSHD input buffer
  store.resize(n);
  for (std::size_t i = 0; i < n; ++i) store[i] = T(x.data[i]);
  return gqa::bshd<const T>(store.data(), x.b, x.s, x.h, x.d);
}

/// An int8 K or V: its values and scales.
struct q8_store {
  bench_vector<std::int8_t> values;
  bench_vector<float> scales;
};
/// The float view x (a dense BSHD input buffer) quantised into `store`, as a BSHD q8_view of the same shape.
gqa::q8_view quantized_view(const gqa::tensor_view<const float>& x, q8_store& store) {
  store.values.resize(static_cast<std::size_t>(x.b * x.s * x.h * x.d));
  store.scales.resize(static_cast<std::size_t>(x.b * x.s * x.h));
  const auto values = gqa::bshd(store.values.data(), x.b, x.s, x.h, x.d);
  const auto scales = gqa::bshd(store.scales.data(), x.b, x.s, x.h, 1);
  gqa::quantize_q8(x, values, scales);
  return {values, scales};
}

/// t(a) / t(b) measured in pairs after a benchmark's timed loop: each pair times one call of a and one of b
/// back to back, in alternating order (a b, then b a, ...), and the result is the median of the pairs'
/// ratios, so that the host's speed drifting between seconds (which moves two separately timed benchmarks
/// of one run by 5-15% on a shared VM) cancels within a pair. per_call: b's time per call from the timed
/// loop; about 0.4 s of pairs, at least 3, at most 51.
template <class A, class B>
double paired_ratio(const A& a, const B& b, int threads, double per_call) {
  const int pairs = static_cast<int>(std::clamp(0.2 / std::max(per_call, 1e-9), 3.0, 51.0));
  std::vector<double> ratios;
  const auto timed = [&](const auto& f) {
    const double t0 = clock_for(threads);
    f();
    return clock_for(threads) - t0;
  };
  for (int i = 0; i < pairs; ++i) {
    double ta = 0, tb = 0;
    if (i % 2 == 0) {
      ta = timed(a);
      tb = timed(b);
    } else {
      tb = timed(b);
      ta = timed(a);
    }
    if (ta > 0 && tb > 0) ratios.push_back(ta / tb);
  }
  if (ratios.empty()) return std::numeric_limits<double>::quiet_NaN();
  const auto mid = ratios.begin() + static_cast<std::ptrdiff_t>(ratios.size() / 2);
  std::nth_element(ratios.begin(), mid, ratios.end());
  return *mid;
}

/// The same options on one thread.
gqa::attention_options one_thread(gqa::attention_options o) {
  o.num_threads = 1;
  return o;
}

/// A T<t> case's speed-up over the same call on one thread, paired_ratio(one, call) in wall time (NaN,
/// i.e. no counter, on one thread, or when the t-thread call takes over 4 s: the scalar prefills).
template <class One, class Call>
double speedup_over_one_thread(const One& one, const Call& call, int threads, double per_call) {
  if (threads == 1 || per_call > 4.0) return std::numeric_limits<double>::quiet_NaN();
  return paired_ratio(one, call, threads, per_call);
}

void run_variant(benchmark::State& st, const bench_case& c) {
  const shape& s = c.s;
  const views x = make_views(s, get_inputs(s, input_kv_heads(c.variant, c.model)));
  gqa::attention_options opt;
  opt.causal = s.causal;
  opt.window_left = s.window_left;
  opt.num_threads = s.threads;
  // 16-bit K/V: the float inputs rounded once, outside the timing.
  bench_vector<gqa::bf16> kb, vb;
  bench_vector<gqa::f16> kh, vh;
  gqa::tensor_view<const gqa::bf16> kbv, vbv;
  gqa::tensor_view<const gqa::f16> khv, vhv;
  if (s.kv == kv_type::bf16) kbv = rounded_view(x.k, kb), vbv = rounded_view(x.v, vb);
  if (s.kv == kv_type::f16) khv = rounded_view(x.k, kh), vhv = rounded_view(x.v, vh);
  // 16-bit Q and O (qo16): Q rounded once outside the timing, O a 16-bit buffer of the same shape.
  bench_vector<gqa::bf16> qb, ob;
  bench_vector<gqa::f16> qh, oh;
  gqa::tensor_view<const gqa::bf16> qbv;
  gqa::tensor_view<const gqa::f16> qhv;
  const auto no = static_cast<std::size_t>(x.o.b * x.o.s * x.o.h * x.o.d);
  if (s.qo16 && s.kv == kv_type::bf16) qbv = rounded_view(x.q, qb), ob.resize(no);
  if (s.qo16 && s.kv == kv_type::f16) qhv = rounded_view(x.q, qh), oh.resize(no);
  const auto obv = gqa::bshd(ob.data(), x.o.b, x.o.s, x.o.h, x.o.d);
  const auto ohv = gqa::bshd(oh.data(), x.o.b, x.o.s, x.o.h, x.o.d);
  // int8 K/V: the float inputs quantised once (gqa::quantize_q8), outside the timing.
  q8_store k8, v8;
  gqa::q8_view k8v, v8v;
  if (s.kv == kv_type::i8) k8v = quantized_view(x.k, k8), v8v = quantized_view(x.v, v8);
  with_bench_policy(st, c, [&](auto& p) {
    const auto call_with = [&](const gqa::attention_options& o) {
      switch (s.kv) {
        case kv_type::bf16:
          s.qo16 ? gqa::forward<Isa>(p, qbv, kbv, vbv, obv, o) : gqa::forward<Isa>(p, x.q, kbv, vbv, x.o, o);
          break;
        case kv_type::f16:
          s.qo16 ? gqa::forward<Isa>(p, qhv, khv, vhv, ohv, o) : gqa::forward<Isa>(p, x.q, khv, vhv, x.o, o);
          break;
        case kv_type::i8: gqa::forward<Isa>(p, x.q, k8v, v8v, x.o, o); break;
        case kv_type::f32: gqa::forward<Isa>(p, x.q, x.k, x.v, x.o, o); break;
      }
    };
    const auto call = [&] { call_with(opt); };
    try {
      // Warm-up call for cheap cases (thread pool, scratch, caches); expensive ones are timed cold, where
      // one call dwarfs these effects.
      if (estimated_seconds(isa_name, c.kind, s) < 0.05) call();
    } catch (const std::exception& e) {
      st.SkipWithError(e.what());
      return;
    }
    const double t0 = clock_for(s.threads);
    for (auto _ : st) {
      try {
        call();
      } catch (const std::exception& e) {
        st.SkipWithError(e.what());
        break;
      }
      benchmark::DoNotOptimize(x.o.data);
      benchmark::ClobberMemory();
    }
    if (st.error_occurred()) return;
    const double per_call = (clock_for(s.threads) - t0) / static_cast<double>(st.iterations());
    throughput_counters(st, s, per_call);
    shape fp32 = s;  // vs_eigen: against the fp32 Eigen baseline of the same shape
    fp32.kv = kv_type::f32;
    fp32.qo16 = false;
    set_counter(st, "vs_eigen", nan_if_negative(eigen_seconds(fp32)) / per_call);
    try {
      const gqa::attention_options one = one_thread(opt);
      set_counter(st, "vs_T1", speedup_over_one_thread([&] { call_with(one); }, call, s.threads, per_call));
      const double policy = policy_seconds(p, x, s.threads);
      set_counter(st, "policy_frac", policy / per_call);
      set_counter(st, "policy_us", policy * 1e6);
    } catch (const std::exception& e) {
      st.SkipWithError(e.what());
    }
  });
}

void run_eigen(benchmark::State& st, const bench_case& c) {
#if GQA_BENCH_HAS_EIGEN
  const shape& s = c.s;
  eigen_baseline e(s);
  if (estimated_seconds(isa_name, c.kind, s) < 0.05) e.run();
  const double t0 = clock_for(s.threads);
  for (auto _ : st) {
    e.run();
    benchmark::ClobberMemory();
  }
  const double per_call = (clock_for(s.threads) - t0) / static_cast<double>(st.iterations());
  store_eigen_seconds(isa_name, s, per_call);
  throughput_counters(st, s, per_call);
#else
  (void)c;
  st.SkipWithError("built without Eigen");
#endif
}

/// Seconds per call of baseline.run(): one call when a call is long (`expensive`: the scalar P1 baseline
/// takes seconds), else a warm-up and >= 0.2 s of calls.
template <class Baseline>
double time_baseline(Baseline& baseline, int threads, bool expensive) {
  if (!expensive) baseline.run();
  int calls = 0;
  const double t0 = clock_for(threads);
  double elapsed = 0;
  do {
    baseline.run();
    ++calls;
    elapsed = clock_for(threads) - t0;
  } while (!expensive && elapsed < 0.2);
  return elapsed / calls;
}

double measure_eigen(const shape& s) {
#if GQA_BENCH_HAS_EIGEN
  if (!gqa::isa::cpu_supports<Isa>()) return -1;
  eigen_baseline e(s);
  return time_baseline(e, s.threads, estimated_seconds(isa_name, "eigen", s) > 0.3);
#else
  (void)s;
  return -1;
#endif
}

void run_reference(benchmark::State& st, const bench_case& c) {
  const shape& s = c.s;
  const views x = make_views(s, get_inputs(s, s.hkv));
  std::vector<index_t> kv_of_q(static_cast<std::size_t>(s.hq));
  for (index_t h = 0; h < s.hq; ++h) kv_of_q[static_cast<std::size_t>(h)] = h / (s.hq / s.hkv);
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.d));
  const double t0 = clock_for(s.threads);
  for (auto _ : st) {
    auto r = gqa::reference::attention(x.q, x.k, x.v, kv_of_q, scale, s.causal);
    benchmark::DoNotOptimize(r.o.data());
    benchmark::ClobberMemory();
  }
  const double per_call = (clock_for(s.threads) - t0) / static_cast<double>(st.iterations());
  throughput_counters(st, s, per_call);
  set_counter(st, "vs_eigen", nan_if_negative(eigen_seconds(s)) / per_call);
}

/// The backward cases (bench_backward.hpp, included at the end of this file).
void run_backward(benchmark::State& st, const bench_case& c);

/// A kvcache case (bench_case::variant names the form): gqa::attend with the uniform GQA map on the dense
/// BSHD inputs, on the same keys in shuffled pages (page 16 or 256), or on the same buffers as a ragged
/// batch of s.b sequences; with s.kv = i8, the inputs quantised once (gqa::quantize_q8) and the same forms
/// of the int8 cache (q8_view, paged_q8_kv). The pages are built once per benchmark, outside the timing.
void run_kvcache(benchmark::State& st, const bench_case& c) {
  const shape& s = c.s;
  const inputs& in = get_inputs(s, s.hkv);
  const views x = make_views(s, in);
  const gqa::head_map map = gqa::head_map::uniform(s.hq, s.hkv);
  gqa::attention_options opt;
  opt.causal = s.causal;
  opt.num_threads = s.threads;
  bench_vector<float> pk, pv;
  std::vector<std::int32_t> table;
  std::vector<index_t> lengths(static_cast<std::size_t>(s.b), s.skv), cu(static_cast<std::size_t>(s.b) + 1);
  for (index_t i = 0; i <= s.b; ++i) cu[static_cast<std::size_t>(i)] = i * s.skv;
  std::vector<index_t> cu_q(static_cast<std::size_t>(s.b) + 1);
  for (index_t i = 0; i <= s.b; ++i) cu_q[static_cast<std::size_t>(i)] = i * s.sq;
  gqa::paged_kv kv;
  const bool i8 = s.kv == kv_type::i8;
  q8_store k8, v8;  // int8: the dense cache, and its pages
  gqa::q8_view k8v, v8v;
  if (i8) k8v = quantized_view(x.k, k8), v8v = quantized_view(x.v, v8);
  bench_vector<std::int8_t> pk8, pv8;
  bench_vector<float> pks, pvs;
  gqa::paged_q8_kv kv8;
  const index_t page = c.variant == "kv_paged16" ? 16 : 256;
  if (c.variant.rfind("kv_paged", 0) == 0) {
    const index_t per_seq = (s.skv + page - 1) / page, pages = s.b * per_seq, row = s.hkv * s.d;
    const auto n = static_cast<std::size_t>(pages * page * row), ns = static_cast<std::size_t>(pages * page * s.hkv);
    if (i8) {
      pk8.assign(n, 0), pv8.assign(n, 0), pks.assign(ns, 0.0f), pvs.assign(ns, 0.0f);
    } else {
      pk.assign(n, 0.0f), pv.assign(n, 0.0f);
    }
    table.resize(static_cast<std::size_t>(pages));
    // Page i of the pool holds logical page (i · 7919) mod pages: neighbours in a sequence are far apart.
    for (index_t i = 0; i < pages; ++i) table[static_cast<std::size_t>((i * 7919) % pages)] = static_cast<std::int32_t>(i);
    for (index_t ib = 0; ib < s.b; ++ib)
      for (index_t j = 0; j < s.skv; ++j) {
        const index_t p = table[static_cast<std::size_t>(ib * per_seq + j / page)];
        const index_t from = ib * s.skv + j, to = p * page + j % page;
        if (i8) {
          std::copy_n(k8.values.data() + from * row, row, pk8.data() + to * row);
          std::copy_n(v8.values.data() + from * row, row, pv8.data() + to * row);
          std::copy_n(k8.scales.data() + from * s.hkv, s.hkv, pks.data() + to * s.hkv);
          std::copy_n(v8.scales.data() + from * s.hkv, s.hkv, pvs.data() + to * s.hkv);
        } else {
          std::copy_n(in.k + from * row, row, pk.data() + to * row);
          std::copy_n(in.v + from * row, row, pv.data() + to * row);
        }
      }
    if (i8) {
      kv8 = {{gqa::page_pool<const std::int8_t>(pk8.data(), pages, page, s.hkv, s.d),
              gqa::page_pool<const float>(pks.data(), pages, page, s.hkv, 1)},
             {gqa::page_pool<const std::int8_t>(pv8.data(), pages, page, s.hkv, s.d),
              gqa::page_pool<const float>(pvs.data(), pages, page, s.hkv, 1)},
             table, per_seq, lengths};
    } else {
      kv = {gqa::page_pool<const float>(pk.data(), pages, page, s.hkv, s.d),
            gqa::page_pool<const float>(pv.data(), pages, page, s.hkv, s.d), table, per_seq, lengths};
    }
  }
  const auto dense = [&] {
    if (i8) {
      gqa::attend<Isa>(x.q, k8v, v8v, x.o, map, opt);
    } else {
      gqa::attend<Isa>(x.q, x.k, x.v, x.o, map, opt);
    }
  };
  const auto call = [&] {
    if (c.variant == "kv_dense") {
      dense();
    } else if (c.variant == "kv_ragged") {
      const auto q = gqa::thd(in.q, s.b * s.sq, s.hq, s.d);
      const auto o = gqa::thd(in.o, s.b * s.sq, s.hq, s.d);
      const index_t total = s.b * s.skv;
      if (i8) {
        const gqa::q8_view k{gqa::thd<const std::int8_t>(k8.values.data(), total, s.hkv, s.d),
                             gqa::thd<const float>(k8.scales.data(), total, s.hkv, 1)};
        const gqa::q8_view v{gqa::thd<const std::int8_t>(v8.values.data(), total, s.hkv, s.d),
                             gqa::thd<const float>(v8.scales.data(), total, s.hkv, 1)};
        gqa::attend<Isa>(q, k, v, o, map, gqa::varlen{cu_q, cu}, opt);
      } else {
        gqa::attend<Isa>(q, gqa::thd(in.k, total, s.hkv, s.d), gqa::thd(in.v, total, s.hkv, s.d), o, map,
                         gqa::varlen{cu_q, cu}, opt);
      }
    } else if (i8) {
      gqa::attend<Isa>(x.q, kv8, x.o, map, opt);
    } else {
      gqa::attend<Isa>(x.q, kv, x.o, map, opt);
    }
  };
  try {
    if (estimated_seconds(isa_name, c.kind, s) < 0.05) call();
  } catch (const std::exception& e) {
    st.SkipWithError(e.what());
    return;
  }
  const double t0 = clock_for(s.threads);
  for (auto _ : st) {
    call();
    benchmark::DoNotOptimize(x.o.data);
    benchmark::ClobberMemory();
  }
  const double per_call = (clock_for(s.threads) - t0) / static_cast<double>(st.iterations());
  throughput_counters(st, s, per_call);
  set_counter(st, "vs_dense", paired_ratio(dense, call, s.threads, per_call));
}

void run_case(benchmark::State& st, const bench_case& c) {
  skip_if_unsupported(st);
  if (st.error_occurred()) return;
  if (c.backward) {
    run_backward(st, c);
  } else if (c.kind == "eigen") {
    run_eigen(st, c);
  } else if (c.kind == "reference") {
    run_reference(st, c);
  } else if (c.kind == "kvcache") {
    run_kvcache(st, c);
  } else {
    run_variant(st, c);
  }
}

void register_cases(const std::vector<bench_case>& cases) {
  for (const bench_case& c : cases) {
    auto* b = benchmark::RegisterBenchmark(c.name().c_str(), [c](benchmark::State& st) { run_case(st, c); });
    const double estimate = estimated_seconds(isa_name, c.kind, c.s) * (c.backward ? 2.5 : 1.0);
    b->Unit(estimate > 0.01 ? benchmark::kMillisecond : benchmark::kMicrosecond);
    if (c.s.threads > 1) b->UseRealTime();
  }
}

bool cpu_supported() { return gqa::isa::cpu_supports<Isa>(); }

}  // namespace
}  // namespace gqa_bench

#include "bench_backward.hpp"

namespace gqa_bench {

isa_hooks GQA_BENCH_CAT(hooks_, GQA_BENCH_ISA)() {
  isa_hooks h;
  h.isa = isa_name;
  h.cpu_supported = &cpu_supported;
  h.fma_rounds = &fma_rounds;
  h.flops_per_round = 2.0 * fma_chains * gqa::isa::vec<Isa>::lanes;
  h.read_sum = &read_sum;
  h.read_fma_sum = &read_fma_sum;
  h.register_cases = &register_cases;
  return h;
}

}  // namespace gqa_bench
