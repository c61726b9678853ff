// tests/sweep/runner.hpp: one API call of the random sweep and the fuzzer (tests/sweep/case.hpp builds it),
// and the per-ISA entry that runs it. tests/CMakeLists.txt generates one translation unit per ISA that
// includes this header with that ISA's flags and calls GQA_SWEEP_RUNNER(<isa>); the baseline code (the case
// generator, the reference, the checks) sees only the declarations below, guarded by GQA_ISA_TU_<ISA>.
#pragma once

#include <string_view>

#include <gqa/head_map.hpp>
#include <gqa/kv_cache.hpp>
#include <gqa/options.hpp>
#include <gqa/tensor.hpp>
#include <gqa/variants/model_shape.hpp>

namespace gqa::sweep {

/// One call: gqa::attend<Isa> with `map` (variant < 0), or gqa::forward<Isa> of the registered variant
/// number `variant` (registry order) built by with_policy(layer, heads); on the dense views k, v, on the
/// paged cache *paged (gqa/paged.hpp), or on the ragged batch *seqs (gqa/varlen.hpp: q, k, v, o packed).
struct call {
  int variant = -1;
  gqa::model_shape layer;
  gqa::variant_heads heads;
  const gqa::head_map* map = nullptr;
  gqa::tensor_view<const float> q, k, v;
  gqa::tensor_view<float> o;
  gqa::attention_options opt;
  const gqa::paged_kv* paged = nullptr;
  const gqa::varlen* seqs = nullptr;
};

/// An ISA the sweep can run: its name, whether this CPU runs it, and the call on it.
struct runner {
  std::string_view name;
  bool (*supported)();
  void (*run)(const call&);
};

#if GQA_ISA_TU_SCALAR
runner runner_scalar();
#endif
#if GQA_ISA_TU_AVX2
runner runner_avx2();
#endif
#if GQA_ISA_TU_AVX512
runner runner_avx512();
#endif
#if GQA_ISA_TU_NEON
runner runner_neon();
#endif

}  // namespace gqa::sweep

#ifdef GQA_SWEEP_DEFINE_RUNNER
#include <gqa/attention.hpp>
#include <gqa/paged.hpp>
#include <gqa/varlen.hpp>
#include <gqa/variants/registry.hpp>

/// Defines gqa::sweep::runner_<isa>() in a translation unit compiled with that ISA's flags.
#define GQA_SWEEP_RUNNER(isa_name)                                                                             \
  namespace gqa::sweep {                                                                                       \
  namespace {                                                                                                  \
  void run_##isa_name(const call& c) {                                                                         \
    using Isa = ::gqa::isa::isa_name;                                                                          \
    if (c.variant < 0) {                                                                                       \
      if (c.paged) ::gqa::attend<Isa>(c.q, *c.paged, c.o, *c.map, c.opt);                                      \
      else if (c.seqs) ::gqa::attend<Isa>(c.q, c.k, c.v, c.o, *c.map, *c.seqs, c.opt);                         \
      else ::gqa::attend<Isa>(c.q, c.k, c.v, c.o, *c.map, c.opt);                                              \
      return;                                                                                                  \
    }                                                                                                          \
    int i = 0;                                                                                                 \
    ::gqa::for_each_variant([&](auto t) {                                                                      \
      using P = typename decltype(t)::type;                                                                    \
      if (i++ == c.variant)                                                                                    \
        ::gqa::with_policy<P>(c.layer, c.heads, [&](P& p) {                                                    \
          if (c.paged) ::gqa::forward<Isa>(p, c.q, *c.paged, c.o, c.opt);                                      \
          else if (c.seqs) ::gqa::forward<Isa>(p, c.q, c.k, c.v, c.o, *c.seqs, c.opt);                         \
          else ::gqa::forward<Isa>(p, c.q, c.k, c.v, c.o, c.opt);                                              \
        });                                                                                                    \
    });                                                                                                        \
  }                                                                                                            \
  bool supported_##isa_name() { return ::gqa::isa::cpu_supports<::gqa::isa::isa_name>(); }                    \
  }                                                                                                            \
  runner runner_##isa_name() { return {::gqa::isa::isa_name::name, &supported_##isa_name, &run_##isa_name}; } \
  }
#endif
