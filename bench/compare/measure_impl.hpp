// bench/compare/measure_impl.hpp: times one scheme's gqa::forward calls for ISA GQA_COMPARE_ISA. Included
// once by each generated TU measure_<isa>.cpp (compiled with that ISA's flags), which defines
// GQA_COMPARE_ISA first. Everything but the exported measure_<isa>() has internal linkage, so no inline
// function compiled with one ISA's flags can be picked by the linker for another TU.
#pragma once

#ifndef GQA_COMPARE_ISA
#error "measure_impl.hpp: define GQA_COMPARE_ISA (scalar, avx2, avx512 or neon) before including it"
#endif

#include <chrono>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <gqa/gqa.hpp>

#include "measure.hpp"

namespace gqa_compare {
namespace {

using isa_tag = gqa::isa::GQA_COMPARE_ISA;
static_assert(gqa::isa::compiled<isa_tag>, "measure_<isa>.cpp must be compiled with its ISA's flags");

/// The options of r's calls: its mask and thread count.
gqa::attention_options options_of(const measure_request& r) {
  gqa::attention_options opt;
  opt.causal = r.causal;
  opt.num_threads = r.threads;
  return opt;
}

/// A training step per call: gqa::forward_train, then gqa::backward of it (the policy's own backward steps
/// included), timed apart; warm-up steps first. T: the element type of q, k, v, o, dout and the gradients
/// (float, or bf16/f16 for a 16-bit step: r's values rounded once, outside the timing, into buffers of T).
template <class T, class Policy>
measurement time_training(Policy& policy, const measure_request& r, const gqa::attention_options& opt) {
  measurement m;
  const std::int64_t b = r.batch, sq = r.seq_q, skv = r.seq_kv, hq = r.hq, hk = r.kv_in, d = r.head_dim;
  const auto nq = static_cast<std::size_t>(b * sq * hq * d), nk = static_cast<std::size_t>(b * skv * hk * d);
  // Buffers of T: r's own for float, rounded copies (T(float): to nearest even) and fresh gradients else.
  std::vector<T> own[8];
  const auto input = [&](const float* x, std::size_t n, std::vector<T>& buf) -> const T* {
    if constexpr (std::is_same_v<T, float>) {
      return x;
    } else {
      buf = std::vector<T>(x, x + n);  // T(float): round to nearest even
      return buf.data();
    }
  };
  const auto output = [&](float* x, std::size_t n, std::vector<T>& buf) -> T* {
    if constexpr (std::is_same_v<T, float>) {
      return x;
    } else {
      buf.resize(n);
      return buf.data();
    }
  };
  const auto q = gqa::bshd<const T>(input(r.q, nq, own[0]), b, sq, hq, d);
  const auto k = gqa::bshd<const T>(input(r.k, nk, own[1]), b, skv, hk, d);
  const auto v = gqa::bshd<const T>(input(r.v, nk, own[2]), b, skv, hk, d);
  const auto dout = gqa::bshd<const T>(input(r.dout, nq, own[3]), b, sq, hq, d);
  const auto o = gqa::bshd(output(r.o, nq, own[4]), b, sq, hq, d);
  const auto dq = gqa::bshd(output(r.dq, nq, own[5]), b, sq, hq, d);
  const auto dk = gqa::bshd(output(r.dk, nk, own[6]), b, skv, hk, d);
  const auto dv = gqa::bshd(output(r.dv, nk, own[7]), b, skv, hk, d);
  const gqa::tensor_view<const T> o_read = o;
  for (int i = 0; i < r.warmup + r.reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto saved = gqa::forward_train<isa_tag>(policy, q, k, v, o, opt);
    const auto t1 = std::chrono::steady_clock::now();
    gqa::backward<isa_tag>(policy, saved, q, k, v, o_read, dout, dq, dk, dv, opt);
    const auto t2 = std::chrono::steady_clock::now();
    if (i < r.warmup) continue;
    m.seconds.push_back(std::chrono::duration<double>(t1 - t0).count());
    m.backward_seconds.push_back(std::chrono::duration<double>(t2 - t1).count());
  }
  return m;
}

/// Warm-up calls, then `reps` timed calls of gqa::forward on the K/V views k, v (float, 16-bit or int8
/// views of r.k and r.v); every call goes through the policy's whole pipeline (check, prepare, plan,
/// core, finish), so its own work is timed with the attention.
template <class KV, class Policy>
measurement time_calls(Policy& policy, const measure_request& r, const KV& k, const KV& v) {
  const auto q = gqa::bshd<const float>(r.q, r.batch, r.seq_q, r.hq, r.head_dim);
  const auto o = gqa::bshd(r.o, r.batch, r.seq_q, r.hq, r.head_dim);
  const gqa::attention_options opt = options_of(r);
  measurement m;
  for (int i = 0; i < r.warmup; ++i) gqa::forward<isa_tag>(policy, q, k, v, o, opt);
  m.seconds.reserve(static_cast<std::size_t>(r.reps));
  for (int i = 0; i < r.reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    gqa::forward<isa_tag>(policy, q, k, v, o, opt);
    const auto t1 = std::chrono::steady_clock::now();
    m.seconds.push_back(std::chrono::duration<double>(t1 - t0).count());
  }
  return m;
}

/// r's K/V as r.dtype, made outside the timing: r.k and r.v themselves for f32, rounded copies for bf16
/// and f16, gqa::quantize_q8's values and per-row scales for i8. With r.train, a training step per call
/// in r.dtype instead (time_training; f32, bf16 or f16, as the CLI ensures).
template <class Policy>
measurement time_calls(Policy& policy, const measure_request& r) {
  if (r.train) {
    switch (r.dtype) {
      case kv_dtype::f32: return time_training<float>(policy, r, options_of(r));
      case kv_dtype::bf16: return time_training<gqa::bf16>(policy, r, options_of(r));
      case kv_dtype::f16: return time_training<gqa::f16>(policy, r, options_of(r));
      default: {
        measurement m;
        m.error = "--train takes f32, bf16 or f16";
        return m;
      }
    }
  }
  const std::int64_t b = r.batch, s = r.seq_kv, h = r.kv_in, d = r.head_dim;
  const auto n = static_cast<std::size_t>(b * s * h * d);
  const auto k = gqa::bshd<const float>(r.k, b, s, h, d);
  const auto v = gqa::bshd<const float>(r.v, b, s, h, d);
  const auto rounded = [&]<class T>() {
    const std::vector<T> k16(r.k, r.k + n), v16(r.v, r.v + n);  // T(float): round to nearest even
    return time_calls(policy, r, gqa::bshd<const T>(k16.data(), b, s, h, d), gqa::bshd<const T>(v16.data(), b, s, h, d));
  };
  switch (r.dtype) {
    case kv_dtype::bf16: return rounded.template operator()<gqa::bf16>();
    case kv_dtype::f16: return rounded.template operator()<gqa::f16>();
    case kv_dtype::i8: {
      std::vector<std::int8_t> k8(n), v8(n);
      std::vector<float> ks(n / static_cast<std::size_t>(d)), vs(ks.size());
      gqa::quantize_q8(k, gqa::bshd(k8.data(), b, s, h, d), gqa::bshd(ks.data(), b, s, h, 1));
      gqa::quantize_q8(v, gqa::bshd(v8.data(), b, s, h, d), gqa::bshd(vs.data(), b, s, h, 1));
      const gqa::q8_view kq{gqa::bshd<const std::int8_t>(k8.data(), b, s, h, d), gqa::bshd<const float>(ks.data(), b, s, h, 1)};
      const gqa::q8_view vq{gqa::bshd<const std::int8_t>(v8.data(), b, s, h, d), gqa::bshd<const float>(vs.data(), b, s, h, 1)};
      return time_calls(policy, r, kq, vq);
    }
    default: return time_calls(policy, r, k, v);
  }
}

/// The allocation of the last call: a policy that plans from the keys reports it (last(), with its status
/// when it was a fallback or ran as MQA, as KDGQA with two KV heads always does: KDGQA, DGQA); a static
/// one runs uniform groups (hq / hkv query heads each).
template <class Policy>
void record_allocation(const Policy& policy, const measure_request& r, measurement& m) {
  if constexpr (requires { policy.last().alloc; }) {
    const gqa::allocation_result& last = policy.last();
    m.allocation = last.alloc;
    if (last.status != gqa::grouping_status::ok)
      m.status = std::string(gqa::to_string(last.status)) + " (" + std::string(gqa::to_string(last.fallback)) + ")";
    else if (last.runs_as_mqa())
      m.status = "runs as MQA (every query head on one KV head)";
  } else {
    m.allocation.assign(static_cast<std::size_t>(r.hkv), static_cast<int>(r.hq / r.hkv));
  }
}

template <class Policy>
measurement time_and_record(Policy& policy, const measure_request& r) {
  measurement m = time_calls(policy, r);
  record_allocation(policy, r, m);
  return m;
}

measurement run(const measure_request& r) {
  if (r.kind == scheme_kind::wgqa_col) {
    // The one row that is not a registry default: WGQA with per-channel weights, mean-initialised (1/s;
    // the weights' values do not change the work).
    gqa::wgqa_policy p(gqa::wgqa_weights::mean_init(gqa::wgqa_kind::col, r.heads, r.hkv, r.head_dim, r.heads * r.head_dim));
    return time_and_record(p, r);
  }
  // Every other row is its variant's registry policy built for the row's heads on the layer (H heads,
  // groups = the row's hkv); see the factories in gqa/variants/*.hpp (e.g. DGQA: eval mode, kind ema).
  const gqa::model_shape model{r.heads, r.hkv, r.head_dim, r.seed};
  const gqa::variant_heads heads{r.hq, r.hkv, r.kv_in};
  measurement m;
  const bool known = gqa::visit_variant(r.variant, [&](auto t) {
    using P = typename decltype(t)::type;
    m = gqa::with_policy<P>(model, heads, [&](P& p) { return time_and_record(p, r); });
  });
  if (!known) m.error = "unknown variant '" + r.variant + "'";
  return m;
}

}  // namespace

#define GQA_COMPARE_CONCAT2(a, b) a##b
#define GQA_COMPARE_CONCAT(a, b) GQA_COMPARE_CONCAT2(a, b)

measurement GQA_COMPARE_CONCAT(measure_, GQA_COMPARE_ISA)(const measure_request& r) {
  try {
    return run(r);
  } catch (const gqa::invalid_argument& e) {
    measurement m;
    m.error = e.what();
    return m;
  }
}

}  // namespace gqa_compare
