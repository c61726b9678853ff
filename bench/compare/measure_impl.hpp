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
#include <utility>

#include <gqa/gqa.hpp>

#include "measure.hpp"

namespace gqa_compare {
namespace {

using isa_tag = gqa::isa::GQA_COMPARE_ISA;
static_assert(gqa::isa::compiled<isa_tag>, "measure_<isa>.cpp must be compiled with its ISA's flags");

/// Warm-up calls, then `reps` timed calls of gqa::forward; every call goes through the policy's whole
/// pipeline (check, prepare, plan, core, finish), so its own work is timed with the attention.
template <class Policy>
measurement time_calls(Policy& policy, const measure_request& r) {
  const auto q = gqa::bshd<const float>(r.q, r.batch, r.seq_q, r.hq, r.head_dim);
  const auto k = gqa::bshd<const float>(r.k, r.batch, r.seq_kv, r.kv_in, r.head_dim);
  const auto v = gqa::bshd<const float>(r.v, r.batch, r.seq_kv, r.kv_in, r.head_dim);
  const auto o = gqa::bshd(r.o, r.batch, r.seq_q, r.hq, r.head_dim);
  gqa::attention_options opt;
  opt.causal = r.causal;
  opt.num_threads = r.threads;
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

/// The uniform allocation of a static scheme (hq / hkv query heads per KV head).
std::vector<int> uniform_allocation(const measure_request& r) {
  return std::vector<int>(static_cast<std::size_t>(r.hkv), static_cast<int>(r.hq / r.hkv));
}

/// KDGQA/DGQA: the last plan's allocation, and its status when it was a fallback or ran as MQA (KDGQA with
/// two KV heads always does).
template <class Policy>
void record_allocation(const Policy& policy, measurement& m) {
  const gqa::allocation_result& last = policy.last();
  m.allocation = last.alloc;
  if (last.status != gqa::grouping_status::ok)
    m.status = std::string(gqa::to_string(last.status)) + " (" + std::string(gqa::to_string(last.fallback)) + ")";
  else if (last.runs_as_mqa())
    m.status = "runs as MQA (every query head on one KV head)";
}

measurement run(const measure_request& r) {
  // The static schemes differ only in their policy; their allocation is the uniform one.
  auto uniform = [&r](auto policy) {
    measurement m = time_calls(policy, r);
    m.allocation = uniform_allocation(r);
    return m;
  };
  switch (r.kind) {
    case scheme_kind::mha: return uniform(gqa::mha_policy{});
    case scheme_kind::mqa: return uniform(gqa::mqa_policy{});
    case scheme_kind::gqa: return uniform(gqa::gqa_policy{});
    case scheme_kind::sqa: return uniform(gqa::sqa_policy{gqa::sqa_config::standard(r.heads, r.hq, r.hkv)});
    case scheme_kind::kdgqa: {
      gqa::kdgqa_policy p;  // the reference rule, one allocation for the whole batch (spec §5.2)
      measurement m = time_calls(p, r);
      record_allocation(p, m);
      return m;
    }
    case scheme_kind::dgqa: {
      // Inference: eval mode, where every call recomputes the allocation. Kind ema, because diff on an
      // exactly repeated batch (what repeated timing calls are) scores 0 and takes the documented
      // fallback (spec §6.4(e)); both kinds do the same work.
      gqa::dgqa_state state = gqa::dgqa_state::initial(r.hq, r.hkv);
      gqa::dgqa_options o;
      o.kind = gqa::dgqa_kind::ema;
      o.seed = r.seed;
      gqa::dgqa_policy p(o, state);
      p.set_mode(gqa::dgqa_mode::eval);
      measurement m = time_calls(p, r);
      record_allocation(p, m);
      return m;
    }
    case scheme_kind::pgqa: {
      gqa::pgqa_options o;  // noise `always`, as the reference (spec §7.2)
      o.seed = r.seed;
      gqa::pgqa_policy p(o);
      measurement m = time_calls(p, r);
      m.allocation = uniform_allocation(r);
      return m;
    }
    case scheme_kind::wgqa_scalar:
    case scheme_kind::wgqa_col: {
      // Mean-pooling initialisation (1/s, spec §8.2); the weights' values do not change the work.
      const auto kind = r.kind == scheme_kind::wgqa_scalar ? gqa::wgqa_kind::scalar : gqa::wgqa_kind::col;
      gqa::wgqa_policy p(gqa::wgqa_weights::mean_init(kind, r.heads, r.hkv, r.head_dim, r.heads * r.head_dim));
      measurement m = time_calls(p, r);
      m.allocation = uniform_allocation(r);
      return m;
    }
  }
  measurement m;
  m.error = "unknown scheme kind";
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
