// tests/sweep/runner.hpp: one API call of the random sweep and the fuzzer, forward (any element type) or
// backward (tests/sweep/case.hpp builds them), and the per-ISA entries that run them. tests/CMakeLists.txt generates one translation unit per ISA that
// includes this header with that ISA's flags and calls GQA_SWEEP_RUNNER(<isa>); the baseline code (the case
// generator, the reference, the checks) sees only the declarations below, guarded by GQA_ISA_TU_<ISA>.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <type_traits>

#include <gqa/head_map.hpp>
#include <gqa/kv_cache.hpp>
#include <gqa/numeric.hpp>
#include <gqa/options.hpp>
#include <gqa/quantized.hpp>
#include <gqa/tensor.hpp>
#include <gqa/variants/model_shape.hpp>

namespace gqa::sweep {

/// The views of a call with 16-bit elements T (bf16 or f16): K and V (dense or ragged, or the pages of
/// *paged), and Q and O when the call's Q and O are 16-bit too (qo16).
template <class T>
struct half_views {
  gqa::tensor_view<const T> q, k, v;
  gqa::tensor_view<T> o;
  const gqa::basic_paged_kv<T>* paged = nullptr;
};

/// The K/V element types of a call (Note [sweep element types] in case.hpp).
enum class kv_type : int { f32 = 0, bf16 = 1, f16 = 2, i8 = 3 };

/// One forward call: gqa::attend<Isa> with `map` (variant < 0), or gqa::forward<Isa> of the registered variant
/// number `variant` (registry order) built by with_policy(layer, heads); on the dense views k, v, on the
/// paged cache *paged (gqa/paged.hpp), or on the ragged batch *seqs (gqa/varlen.hpp: q, k, v, o packed).
/// K and V are float (q, k, v, o, paged), 16-bit (`bf16` or `f16`: K/V and the paged cache of that type,
/// Q and O too when `qo16`, else q and o) or int8 (`k8`, `v8`: the dense views or the packed rows of a
/// ragged batch; `paged8` for a paged cache; q and o float).
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
  kv_type kv = kv_type::f32;
  bool qo16 = false;
  half_views<gqa::bf16> bf16;
  half_views<gqa::f16> f16;
  gqa::q8_view k8, v8;
  const gqa::paged_q8_kv* paged8 = nullptr;
};

/// The 16-bit inputs of a backward call: q, k, v, o and dout in T.
template <class T>
struct half_backward_views {
  gqa::tensor_view<const T> q, k, v, o, dout;
};

/// One backward call: gqa::attend_backward<Isa> with `map`, on dense views or (seqs) a ragged batch; the
/// inputs float (q, k, v, o, dout) or, when kv is bf16 or f16, of that type (`bf16`, `f16`); the gradients
/// float.
struct backward_call {
  gqa::tensor_view<const float> q, k, v, o, dout;
  std::span<const float> lse;
  gqa::tensor_view<float> dq, dk, dv;
  const gqa::head_map* map = nullptr;
  gqa::attention_options opt;
  const gqa::varlen* seqs = nullptr;
  kv_type kv = kv_type::f32;
  half_backward_views<gqa::bf16> bf16;
  half_backward_views<gqa::f16> f16;
};

/// An ISA the sweep can run: its name, whether this CPU runs it, and the forward and backward calls on it.
struct runner {
  std::string_view name;
  bool (*supported)();
  void (*run)(const call&);
  void (*backward)(const backward_call&);
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
#include <stdexcept>

#include <gqa/attention.hpp>
#include <gqa/backward.hpp>
#include <gqa/paged.hpp>
#include <gqa/varlen.hpp>
#include <gqa/variants/registry.hpp>

namespace gqa::sweep {
namespace {  // per translation unit: each is compiled for its own ISA

/// The call c on Isa with Q/O views q, o and K/V views k, v (tensor views of one element type, or q8_views:
/// dense, or the packed rows when c.seqs is set), or the paged cache *paged (of K/V's element type: a
/// basic_paged_kv, or a paged_q8_kv) when it is not null. The sweep draws only the combinations gqa
/// provides (Note [sweep element types] in case.hpp); any other throws std::logic_error.
template <class Isa, class Q, class O, class KV, class Paged>
void run_views(const call& c, const Q& q, const O& o, const KV& k, const KV& v, const Paged* paged) {
  constexpr bool int8 = std::is_same_v<KV, ::gqa::q8_view>;
  constexpr bool float_qo = std::is_same_v<Q, ::gqa::tensor_view<const float>>;
  constexpr bool float_kv = std::is_same_v<KV, ::gqa::tensor_view<const float>>;
  const auto unsupported = [] { throw std::logic_error("the sweep drew a form gqa does not provide for these element types"); };
  if (c.variant < 0) {
    if (paged) return ::gqa::attend<Isa>(q, *paged, o, *c.map, c.opt);
    if (c.seqs) return ::gqa::attend<Isa>(q, k, v, o, *c.map, *c.seqs, c.opt);
    return ::gqa::attend<Isa>(q, k, v, o, *c.map, c.opt);
  }
  int i = 0;
  ::gqa::for_each_variant([&](auto t) {
    using P = typename decltype(t)::type;
    if (i++ != c.variant) return;
    ::gqa::with_policy<P>(c.layer, c.heads, [&](P& p) {
      if (paged) {
        if constexpr (float_qo) return ::gqa::forward<Isa>(p, q, *paged, o, c.opt);  // float, 16-bit or int8 pages
        else return unsupported();
      }
      if (c.seqs) {
        if constexpr (float_kv || int8) return ::gqa::forward<Isa>(p, q, k, v, o, *c.seqs, c.opt);
        else return unsupported();
      }
      ::gqa::forward<Isa>(p, q, k, v, o, c.opt);
    });
  });
}

/// The call c on Isa, with the views of its element types.
template <class Isa>
void run_call(const call& c) {
  const auto half = [&](const auto& h) {
    if (c.qo16) run_views<Isa>(c, h.q, h.o, h.k, h.v, h.paged);
    else run_views<Isa>(c, c.q, c.o, h.k, h.v, h.paged);
  };
  switch (c.kv) {
    case kv_type::f32: return run_views<Isa>(c, c.q, c.o, c.k, c.v, c.paged);
    case kv_type::bf16: return half(c.bf16);
    case kv_type::f16: return half(c.f16);
    case kv_type::i8: return run_views<Isa>(c, c.q, c.o, c.k8, c.v8, c.paged8);
  }
}

/// The backward call c on Isa, with the views of its element type.
template <class Isa>
void run_backward(const backward_call& c) {
  const auto views = [&](const auto& q, const auto& k, const auto& v, const auto& o, const auto& dout) {
    if (c.seqs) return ::gqa::attend_backward<Isa>(q, k, v, o, dout, c.lse, c.dq, c.dk, c.dv, *c.map, *c.seqs, c.opt);
    ::gqa::attend_backward<Isa>(q, k, v, o, dout, c.lse, c.dq, c.dk, c.dv, *c.map, c.opt);
  };
  const auto half = [&](const auto& h) { views(h.q, h.k, h.v, h.o, h.dout); };
  switch (c.kv) {
    case kv_type::bf16: return half(c.bf16);
    case kv_type::f16: return half(c.f16);
    default: return views(c.q, c.k, c.v, c.o, c.dout);
  }
}

}  // namespace
}  // namespace gqa::sweep

/// Defines gqa::sweep::runner_<isa>() in a translation unit compiled with that ISA's flags.
#define GQA_SWEEP_RUNNER(isa_name)                                                                             \
  namespace gqa::sweep {                                                                                       \
  namespace {                                                                                                  \
  void run_##isa_name(const call& c) { run_call<::gqa::isa::isa_name>(c); }                                   \
  void backward_##isa_name(const backward_call& c) { run_backward<::gqa::isa::isa_name>(c); }                   \
  bool supported_##isa_name() { return ::gqa::isa::cpu_supports<::gqa::isa::isa_name>(); }                    \
  }                                                                                                            \
  runner runner_##isa_name() {                                                                                 \
    return {::gqa::isa::isa_name::name, &supported_##isa_name, &run_##isa_name, &backward_##isa_name};         \
  }                                                                                                            \
  }
#endif
