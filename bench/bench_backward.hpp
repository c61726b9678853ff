// bench/bench_backward.hpp: the backward benchmarks of one ISA: every variant's gqa::backward (after one
// untimed gqa::forward_train) and the Eigen GEMM backward baseline, named "<variant|eigen>/<isa>/<shape
// key>_bwd_T<threads>", for every variant of the registry (gqa::variant_names, through the bench case's
// model like the forward entries). Included at the end of bench_isa.hpp (same ISA flags, same anonymous namespace);
// run_case() sends every case with bench_case::backward here.
// FLOPs are 2.5× the forward's (FlashAttention's convention: five products of Sq·Skv·d instead of two),
// halved when causal like the forward's; peak_frac is against the same FMA probe.
#pragma once

#ifndef GQA_BENCH_ISA
#error "bench_backward.hpp is part of bench_isa.hpp"
#endif

namespace gqa_bench {
namespace {

/// ∂L/∂O and the gradient buffers of one backward case: dout like o (values in [−1, 1), fixed), dq, dk,
/// dv like q, k, v (k, v with the inputs' KV heads: WGQA's per-head gradients).
struct backward_buffers {
  std::vector<float> dout, dq, dk, dv;
  backward_buffers(const shape& s, std::int64_t kv_heads)
      : dout(static_cast<std::size_t>(s.b * s.sq * s.hq * s.d)), dq(dout.size()),
        dk(static_cast<std::size_t>(s.b * s.skv * kv_heads * s.d)), dv(dk.size()) {
    for (std::size_t i = 0; i < dout.size(); ++i)
      dout[i] = 2.0f * gqa::random::to_unit_float(gqa::random::hash(7, {i})) - 1.0f;
  }
};

/// One untimed call first unless a call takes seconds (scalar P1/P2): unlike the forward's 50 ms, the
/// backward's first call also faults in its dK/dV accumulators (tens of MiB at P1), ~10% of a call.
bool warm_up_backward(const shape& s) { return 2.5 * estimated_seconds(isa_name, "variant", s) < 2.0; }

void backward_counters(benchmark::State& st, const shape& s, double seconds) {
  const double gflops = 2.5 * flops(s) / seconds * 1e-9;
  set_counter(st, "GFLOPS", gflops);
  set_counter(st, "peak_frac", gflops / fma_peak(isa_name, s.threads));
}

/// The fp32 forward whose o (x.o) and LSE a core backward case takes; false (the case skipped with the
/// error) when it throws.
bool forward_for_backward(benchmark::State& st, const views& x, const gqa::head_map& map,
                          const gqa::attention_options& opt, std::vector<float>& lse) {
  try {
    gqa::attention_options fwd = opt;
    fwd.lse = lse;
    gqa::attend<Isa>(x.q, x.k, x.v, x.o, map, fwd);
    return true;
  } catch (const std::exception& e) {
    st.SkipWithError(e.what());
    return false;
  }
}

/// The timed loop of a backward case: one untimed step (warm_up_backward), then `step` per iteration on
/// the case's clock (out: the first gradient, kept alive); sets the backward's counters and returns the
/// time per call.
template <class Step, class Out>
double timed_backward(benchmark::State& st, const shape& s, const Step& step, const Out* out) {
  if (warm_up_backward(s)) step();  // thread pool, scratch (the dK/dV accumulators), caches
  const double t0 = clock_for(s.threads);
  for (auto _ : st) {
    step();
    benchmark::DoNotOptimize(out);
    benchmark::ClobberMemory();
  }
  const double per_call = (clock_for(s.threads) - t0) / static_cast<double>(st.iterations());
  backward_counters(st, s, per_call);
  return per_call;
}

#if GQA_BENCH_HAS_EIGEN
#if defined(__GNUC__) && !defined(__clang__)  // see bench_isa.hpp's eigen_baseline
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
/// What a user would write with Eigen alone, given the forward's output and LSE: per (batch, KV head) task,
/// for each query head h of its group, S = Q_h·Kᵀ, P = exp(scale·S − LSE) (causal: hidden keys 0),
/// dP = dO_h·Vᵀ, D = rowsum(dO_h∘O_h), dS = scale·P∘(dP − D), dQ_h = dS·K, dK += dSᵀ·Q_h, dV += Pᵀ·dO_h, with
/// Eigen's GEMMs on row-major maps of the BSHD buffers. Tasks are spread over the threads (each owns its
/// two Sq×Skv matrices); Eigen runs single-threaded.
class eigen_backward {
 public:
  explicit eigen_backward(const shape& s)
      : s_(s), in_(get_inputs(s, s.hkv)), g_(s, s.hkv), lse_(static_cast<std::size_t>(s.b * s.hq * s.sq)),
        p_(static_cast<std::size_t>(s.threads)), dp_(static_cast<std::size_t>(s.threads)) {
    for (auto& m : p_) m.resize(s.sq, s.skv);
    for (auto& m : dp_) m.resize(s.sq, s.skv);
    // The forward's output and LSE, once (gqa's: the baseline times the backward alone).
    gqa::attention_options opt;
    opt.causal = s.causal;
    opt.lse = lse_;
    const views x = make_views(s, in_);
    gqa::attend<Isa>(x.q, x.k, x.v, x.o, gqa::head_map::uniform(s.hq, s.hkv), opt);
  }

  void run() {
    // Slot t takes the (batch, KV head) pairs t, t + threads, ... and owns the matrices p_[t], dp_[t].
    run_in_slots(s_.b * s_.hkv, s_.threads, [this](index_t task, int t) { group(task / s_.hkv, task % s_.hkv, t); });
  }

 private:
  void group(index_t ib, index_t g, int t) {
    const index_t d = s_.d, hq = s_.hq, hkv = s_.hkv, sq = s_.sq, skv = s_.skv, gs = hq / hkv;
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    const_map k(in_.k + (ib * skv * hkv + g) * d, skv, d, Eigen::OuterStride<>(hkv * d));
    const_map v(in_.v + (ib * skv * hkv + g) * d, skv, d, Eigen::OuterStride<>(hkv * d));
    out_map dk(g_.dk.data() + (ib * skv * hkv + g) * d, skv, d, Eigen::OuterStride<>(hkv * d));
    out_map dv(g_.dv.data() + (ib * skv * hkv + g) * d, skv, d, Eigen::OuterStride<>(hkv * d));
    row_matrix& p = p_[static_cast<std::size_t>(t)];
    row_matrix& dp = dp_[static_cast<std::size_t>(t)];
    dk.setZero();
    dv.setZero();
    for (index_t h = g * gs; h < (g + 1) * gs; ++h) {
      const index_t row0 = (ib * sq * hq + h) * d;
      const_map q(in_.q + row0, sq, d, Eigen::OuterStride<>(hq * d));
      const_map o(in_.o + row0, sq, d, Eigen::OuterStride<>(hq * d));
      const_map dout(g_.dout.data() + row0, sq, d, Eigen::OuterStride<>(hq * d));
      out_map dq(g_.dq.data() + row0, sq, d, Eigen::OuterStride<>(hq * d));
      const Eigen::Map<const Eigen::VectorXf> lse(lse_.data() + (ib * hq + h) * sq, sq);
      p.noalias() = q * k.transpose();
      p.array() = ((p * scale).colwise() - lse).array().exp();
      if (s_.causal)  // bottom-right aligned, as gqa: query i sees keys j <= i + (skv - sq)
        for (index_t i = 0; i < sq; ++i) {
          const index_t visible = std::clamp<index_t>(i + (skv - sq) + 1, 0, skv);
          p.row(i).tail(skv - visible).setZero();
        }
      dp.noalias() = dout * v.transpose();
      const Eigen::VectorXf dsum = (dout.array() * o.array()).rowwise().sum();
      dp.array() = p.array() * (dp.colwise() - dsum).array() * scale;
      dq.noalias() = dp * k;
      dk.noalias() += dp.transpose() * q;
      dv.noalias() += p.transpose() * dout;
    }
  }

  shape s_;
  const inputs& in_;
  backward_buffers g_;
  std::vector<float> lse_;
  std::vector<row_matrix> p_, dp_;
};
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

double measure_eigen_backward(const shape& s) {
#if GQA_BENCH_HAS_EIGEN
  if (!gqa::isa::cpu_supports<Isa>()) return -1;
  eigen_backward e(s);
  return time_baseline(e, s.threads, 2.5 * estimated_seconds(isa_name, "eigen", s) > 0.3);
#else
  (void)s;
  return -1;
#endif
}

void run_eigen_backward(benchmark::State& st, const bench_case& c) {
#if GQA_BENCH_HAS_EIGEN
  const shape& s = c.s;
  eigen_backward e(s);
  if (warm_up_backward(s)) e.run();
  const double t0 = clock_for(s.threads);
  for (auto _ : st) {
    e.run();
    benchmark::ClobberMemory();
  }
  const double per_call = (clock_for(s.threads) - t0) / static_cast<double>(st.iterations());
  store_eigen_seconds(isa_name, s, per_call, true);
  backward_counters(st, s, per_call);
#else
  (void)c;
  st.SkipWithError("built without Eigen");
#endif
}

/// The core's backward with 16-bit inputs (the shape's qo16: q, k, v, o and dout in T, gradients in T;
/// Note [16-bit backward]; default options, so bf16 products where VDPBF16PS is the engine: Note [bf16
/// backward]), gqa::attend_backward on GQA's uniform map: "gqa/<isa>/<shape key>_qkv-bf16_bwd_T<n>",
/// to set beside the fp32 gqa entry of the same shape and run. o and the LSE come from one fp32 forward on
/// the same inputs; everything is rounded to T outside the timing.
template <class T>
void run_half_backward(benchmark::State& st, const bench_case& c) {
  const shape& s = c.s;
  const views x = make_views(s, get_inputs(s, s.hkv));
  backward_buffers g(s, s.hkv);
  const gqa::head_map map = gqa::head_map::uniform(s.hq, s.hkv);
  gqa::attention_options opt;
  opt.causal = s.causal;
  opt.window_left = s.window_left;
  opt.num_threads = s.threads;
  std::vector<float> lse(static_cast<std::size_t>(s.b * s.hq * s.sq));
  if (!forward_for_backward(st, x, map, opt, lse)) return;
  bench_vector<T> qb, kb, vb, ob, db;
  const auto q = rounded_view(x.q, qb), k = rounded_view(x.k, kb), v = rounded_view(x.v, vb);
  const auto o = rounded_view(gqa::tensor_view<const float>(x.o), ob);
  const auto dout = rounded_view(gqa::bshd<const float>(g.dout.data(), s.b, s.sq, s.hq, s.d), db);
  bench_vector<T> dqb(qb.size()), dkb(kb.size()), dvb(vb.size());
  const auto dq = gqa::bshd(dqb.data(), s.b, s.sq, s.hq, s.d);
  const auto dk = gqa::bshd(dkb.data(), s.b, s.skv, s.hkv, s.d);
  const auto dv = gqa::bshd(dvb.data(), s.b, s.skv, s.hkv, s.d);
  const auto call_with = [&](const gqa::attention_options& o_) {
    gqa::attend_backward<Isa>(q, k, v, o, dout, lse, dq, dk, dv, map, o_);
  };
  const auto step = [&] { call_with(opt); };
  try {
    const double per_call = timed_backward(st, s, step, dqb.data());
    shape fp32 = s;  // vs_eigen: against the fp32 Eigen backward of the same shape, when this run has it
    fp32.kv = kv_type::f32;
    fp32.qo16 = false;
    set_counter(st, "vs_eigen", nan_if_negative(eigen_seconds_cached(isa_name, fp32, true)) / per_call);
    set_counter(st, "vs_T1", speedup_over_one_thread([&] { call_with(one_thread(opt)); }, step, s.threads, per_call));
  } catch (const std::exception& e) {
    st.SkipWithError(e.what());
  }
}

void run_variant_backward(benchmark::State& st, const bench_case& c) {
  const shape& s = c.s;
  if (s.qo16) {  // bf16 (the only 16-bit backward entries: bench_common.cpp)
    run_half_backward<gqa::bf16>(st, c);
    return;
  }
  const std::int64_t kv_heads = input_kv_heads(c.variant, c.model);
  const views x = make_views(s, get_inputs(s, kv_heads));
  backward_buffers g(s, kv_heads);
  const auto dout = gqa::bshd<const float>(g.dout.data(), s.b, s.sq, s.hq, s.d);
  const auto dq = gqa::bshd<float>(g.dq.data(), s.b, s.sq, s.hq, s.d);
  const auto dk = gqa::bshd<float>(g.dk.data(), s.b, s.skv, kv_heads, s.d);
  const auto dv = gqa::bshd<float>(g.dv.data(), s.b, s.skv, kv_heads, s.d);
  gqa::attention_options opt;
  opt.causal = s.causal;
  opt.window_left = s.window_left;
  opt.num_threads = s.threads;
  with_bench_policy(st, c, [&](auto& p) {
    try {
      const auto saved = gqa::forward_train<Isa>(p, x.q, x.k, x.v, x.o, opt);
      const auto step = [&] { gqa::backward<Isa>(p, saved, x.q, x.k, x.v, x.o, dout, dq, dk, dv, opt); };
      const double per_call = timed_backward(st, s, step, g.dq.data());
      double eigen = eigen_seconds_cached(isa_name, s, true);
      if (eigen < 0 && options().lazy_baselines && eigen_feasible(s, true)) {
        eigen = measure_eigen_backward(s);
        if (eigen > 0) store_eigen_seconds(isa_name, s, eigen, true);
      }
      set_counter(st, "vs_eigen", nan_if_negative(eigen) / per_call);
      const gqa::attention_options one = one_thread(opt);
      set_counter(st, "vs_T1", speedup_over_one_thread(
                                   [&] { gqa::backward<Isa>(p, saved, x.q, x.k, x.v, x.o, dout, dq, dk, dv, one); },
                                   step, s.threads, per_call));
    } catch (const std::exception& e) {
      st.SkipWithError(e.what());
    }
  });
}

/// kv_ragged's backward: gqa::attend_backward(varlen) on the shape's batch as s.b packed sequences of sq
/// queries and skv keys (the same buffers, the LSE in the ragged layout [hq][b·sq]), GQA's uniform map:
/// "kv_ragged/<isa>/<shape key>_bwd_T<n>". vs_dense: the dense attend_backward on the same buffers over
/// this one, timed in pairs (1 when the ragged walk costs nothing).
void run_ragged_backward(benchmark::State& st, const bench_case& c) {
  const shape& s = c.s;
  const inputs& in = get_inputs(s, s.hkv);
  const views x = make_views(s, in);
  backward_buffers g(s, s.hkv);
  const gqa::head_map map = gqa::head_map::uniform(s.hq, s.hkv);
  gqa::attention_options opt;
  opt.causal = s.causal;
  opt.num_threads = s.threads;
  std::vector<float> lse(static_cast<std::size_t>(s.b * s.hq * s.sq)), lse_r(lse.size());
  if (!forward_for_backward(st, x, map, opt, lse)) return;
  const index_t tq = s.b * s.sq, tk = s.b * s.skv;
  for (index_t ib = 0; ib < s.b; ++ib)  // [b][hq][sq] -> [hq][b·sq]
    for (index_t h = 0; h < s.hq; ++h)
      for (index_t p = 0; p < s.sq; ++p)
        lse_r[static_cast<std::size_t>(h * tq + ib * s.sq + p)] = lse[static_cast<std::size_t>((ib * s.hq + h) * s.sq + p)];
  std::vector<index_t> cu_q(static_cast<std::size_t>(s.b) + 1), cu_k(cu_q.size());
  for (index_t i = 0; i <= s.b; ++i) {
    cu_q[static_cast<std::size_t>(i)] = i * s.sq;
    cu_k[static_cast<std::size_t>(i)] = i * s.skv;
  }
  const auto dout = gqa::bshd<const float>(g.dout.data(), s.b, s.sq, s.hq, s.d);
  const auto dq = gqa::bshd(g.dq.data(), s.b, s.sq, s.hq, s.d);
  const auto dk = gqa::bshd(g.dk.data(), s.b, s.skv, s.hkv, s.d), dv = gqa::bshd(g.dv.data(), s.b, s.skv, s.hkv, s.d);
  const auto ragged_with = [&](const gqa::attention_options& o_) {
    gqa::attend_backward<Isa>(gqa::thd(in.q, tq, s.hq, s.d), gqa::thd(in.k, tk, s.hkv, s.d), gqa::thd(in.v, tk, s.hkv, s.d),
                              gqa::thd<const float>(in.o, tq, s.hq, s.d), gqa::thd<const float>(g.dout.data(), tq, s.hq, s.d),
                              lse_r, gqa::thd(g.dq.data(), tq, s.hq, s.d), gqa::thd(g.dk.data(), tk, s.hkv, s.d),
                              gqa::thd(g.dv.data(), tk, s.hkv, s.d), map, gqa::varlen{cu_q, cu_k}, o_);
  };
  const auto step = [&] { ragged_with(opt); };
  const auto dense = [&] { gqa::attend_backward<Isa>(x.q, x.k, x.v, x.o, dout, lse, dq, dk, dv, map, opt); };
  try {
    const double per_call = timed_backward(st, s, step, g.dq.data());
    set_counter(st, "vs_dense", paired_ratio(dense, step, s.threads, per_call));
    set_counter(st, "vs_T1", speedup_over_one_thread([&] { ragged_with(one_thread(opt)); }, step, s.threads, per_call));
  } catch (const std::exception& e) {
    st.SkipWithError(e.what());
  }
}

void run_backward(benchmark::State& st, const bench_case& c) {
  if (c.kind == "kvcache") {
    run_ragged_backward(st, c);
  } else if (c.kind == "eigen") {
    run_eigen_backward(st, c);
  } else {
    run_variant_backward(st, c);
  }
}

}  // namespace
}  // namespace gqa_bench
