// gqa/detail/core/targets.hpp: the core (forward and backward) for every ISA this translation unit can
// run, whatever its flags, and forward_on()/backward_on(), which run it on an ISA tag chosen at compile
// time or on the ISA a name picks at run time (the public entry points without an ISA, through
// isa::resolve in isa/select.hpp).
// Invariant: a per-target copy is compiled only for ISAs above the TU's own (isa::native), lives in its
// own namespace (gqa::<ABI>::target_<isa>), and shares every type with the native code.
#pragma once

#include <concepts>
#include <cstdint>
#include <span>
#include <string_view>

#include "../../config.hpp"
#include "../../isa/select.hpp"
#include "../../quantized.hpp"
#include "backward.hpp"  // the native copy first: it includes every standard header the core uses
#include "forward.hpp"
#include "key_norms.hpp"

// Note [per-target kernels]
// GCC and clang attach a target (`#pragma GCC target("avx2,fma")`, `#pragma clang attribute push(
// __attribute__((target("avx2,fma"))), apply_to = function)`) to every function DEFINED inside a region,
// templates and lambdas included, and their instantiations keep it wherever they are instantiated. So a
// TU without ISA flags gets AVX2 and AVX-512 kernels by compiling the core again inside such regions
// (target_pass.hpp), the way Highway's dynamic dispatch does, while staying header-only. Three rules:
//  - The whole core must be defined inside the region: a template defined outside it (the native copy)
//    and instantiated with vec<avx2> fails with "inlining failed in call to always_inline ... target
//    specific option mismatch". Hence a second copy of the ISA-dependent headers, in its own namespace
//    (target_avx2, target_avx512) inside the TU's ABI namespace, with plain include guards that
//    target_pass.hpp resets; everything else (views, head maps, the thread loop, the ISA tags) is shared.
//  - Standard headers and <immintrin.h> are included before any region, so their templates keep the
//    default target: a std:: instantiation made from AVX-512 code is baseline code, and the link-order
//    hazard of per-ISA translation units (Note [link order] in cmake/gqa_build_helpers.cmake) cannot
//    arise on this path. Baseline code may be inlined into a region's functions, never the reverse.
//  - Inside a region GCC defines __AVX2__/__FMA__ and clang does not; gqa's code tests only its own
//    macros (GQA_HAS_AVX2/AVX512, pushed to 1 by target_pass.hpp, GQA_TARGET_FMA and GQA_TARGET_F16C).
//  - GCC 12 warns (-Wpsabi: "AVX512F vector return without AVX512F enabled changes the ABI") about
//    lambdas returning a vector inside a region, although it compiles them for the region's target (else
//    inlining the intrinsics would fail); they never cross a TU boundary, so the warning is silenced there.
// The AVX-512 region enables exactly what gqa_isa_compile_options(avx512) does (F, VL, BW, DQ, AVX2,
// FMA, F16C; the AVX2 region AVX2, FMA, F16C), and isa::cpu() checks all of it, so the per-target copy computes what a TU compiled with those
// flags computes, bit for bit (tests/unit/dispatch_test.cpp). Templates are instantiated only for what a
// call reaches: one forward<Isa> per ISA for a TU that calls the forward without an ISA, one
// backward<Isa> per ISA for a TU that calls the backward so; a TU that names its ISA compiles one.
#if GQA_DISPATCH_X86
#include <immintrin.h>

#define GQA_TARGET_FMA 1
#define GQA_TARGET_F16C 1
#if !GQA_HAS_AVX2
#define GQA_TARGET_NS target_avx2
#define GQA_TARGET_SPEC "avx2,fma,f16c"
#define GQA_TARGET_AVX512 0
#include "target_pass.hpp"
#endif
#if !GQA_HAS_AVX512
#define GQA_TARGET_NS target_avx512
#define GQA_TARGET_SPEC "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq"
#define GQA_TARGET_AVX512 1
#include "target_pass.hpp"
#endif
#undef GQA_TARGET_FMA
#undef GQA_TARGET_F16C
#endif  // GQA_DISPATCH_X86

GQA_BEGIN_NAMESPACE
namespace detail::core {

/// Where a call without an ISA runs: the name isa::resolve returned (one of isa::runnable's).
struct named_target {
  std::string_view isa;
};

/// Where a call with ISA tag Isa runs: Isa itself (chosen at compile time, no run-time check), or, for
/// isa::dispatch, the ISA isa::resolve picks from opt.isa, GQA_ISA and the CPU. Throws like isa::resolve.
template <class Isa>
auto target_of(const attention_options& opt) {
  if constexpr (isa::dispatched<Isa>) {
    return named_target{isa::resolve(opt.isa)};
  } else {
    return Isa{};
  }
}

// The ladder of a named target: the TU's own best ISA, or one above it through a per-target region (only
// these are instantiated). GQA_CORE_ON(on, fn, args) runs detail::core::fn<Isa>(args) on `on`.
#if GQA_DISPATCH_X86 && !GQA_HAS_AVX512
#define GQA_CORE_ON_AVX512(on, fn, ...) \
  if ((on).isa == isa::avx512::name) return target_avx512::detail::core::fn<isa::avx512>(__VA_ARGS__);
#else
#define GQA_CORE_ON_AVX512(on, fn, ...)
#endif
#if GQA_DISPATCH_X86 && !GQA_HAS_AVX2
#define GQA_CORE_ON_AVX2(on, fn, ...) \
  if ((on).isa == isa::avx2::name) return target_avx2::detail::core::fn<isa::avx2>(__VA_ARGS__);
#else
#define GQA_CORE_ON_AVX2(on, fn, ...)
#endif
#define GQA_CORE_ON(on, fn, ...)             \
  GQA_CORE_ON_AVX512(on, fn, __VA_ARGS__)    \
  GQA_CORE_ON_AVX2(on, fn, __VA_ARGS__)      \
  static_cast<void>(on);                     \
  return fn<isa::native>(__VA_ARGS__);

// The forward entry points are templates over K/V's element type KV (float, bf16, f16; Note [16-bit
// K/V]) and Q's and O's (Note [16-bit Q/O]): a TU instantiates the 16-bit cores, in every per-target
// copy, only if it calls them.

/// The forward core on `on` (target_of's result). Q, O: float, or 16-bit (Note [16-bit Q/O]).
template <class Isa, class KV, class Q, class O>
void forward_on(Isa, tensor_view<const Q> q, tensor_view<const KV> k, tensor_view<const KV> v, tensor_view<O> o,
                const head_map& map, const attention_options& opt) {
  forward<Isa>(q, k, v, o, map, opt);
}
template <class KV, class Q, class O>
void forward_on(named_target on, tensor_view<const Q> q, tensor_view<const KV> k, tensor_view<const KV> v,
                tensor_view<O> o, const head_map& map, const attention_options& opt) {
  GQA_CORE_ON(on, forward, q, k, v, o, map, opt)
}

/// The forward core on an int8 K/V cache (forward_q8, Note [int8 K/V]) on `on`.
/// (Templates over Q8 = q8_view, like the ones above over KV, so that only a TU that calls them compiles them.)
template <class Isa, std::same_as<q8_view> Q8, class Q, class O>
void forward_on(Isa, tensor_view<const Q> q, const Q8& k, const Q8& v, tensor_view<O> o, const head_map& map,
                const attention_options& opt) {
  forward_q8<Isa>(q, k.values, k.scales, v.values, v.scales, o, map, opt);
}
template <std::same_as<q8_view> Q8, class Q, class O>
void forward_on(named_target on, tensor_view<const Q> q, const Q8& k, const Q8& v, tensor_view<O> o,
                const head_map& map, const attention_options& opt) {
  GQA_CORE_ON(on, forward_q8, q, k.values, k.scales, v.values, v.scales, o, map, opt)
}

/// The paged forward core (forward_paged) on `on`.
template <class Isa, class KV, class Q, class O>
void forward_paged_on(Isa, tensor_view<const Q> q, tensor_view<const KV> k, tensor_view<const KV> v,
                      tensor_view<O> o, const std::int32_t* table, index_t max_pages,
                      std::span<const index_t> lengths, index_t longest, const head_map& map,
                      const attention_options& opt) {
  forward_paged<Isa>(q, k, v, o, table, max_pages, lengths, longest, map, opt);
}
template <class KV, class Q, class O>
void forward_paged_on(named_target on, tensor_view<const Q> q, tensor_view<const KV> k, tensor_view<const KV> v,
                      tensor_view<O> o, const std::int32_t* table, index_t max_pages,
                      std::span<const index_t> lengths, index_t longest, const head_map& map,
                      const attention_options& opt) {
  GQA_CORE_ON(on, forward_paged, q, k, v, o, table, max_pages, lengths, longest, map, opt)
}

/// The paged forward core on int8 pools (forward_paged_q8; k, v: the pools as q8_views) on `on`.
template <class Isa, std::same_as<q8_view> Q8, class Q, class O>
void forward_paged_on(Isa, tensor_view<const Q> q, const Q8& k, const Q8& v, tensor_view<O> o,
                      const std::int32_t* table, index_t max_pages, std::span<const index_t> lengths, index_t longest,
                      const head_map& map, const attention_options& opt) {
  forward_paged_q8<Isa>(q, k.values, k.scales, v.values, v.scales, o, table, max_pages, lengths, longest, map, opt);
}
template <std::same_as<q8_view> Q8, class Q, class O>
void forward_paged_on(named_target on, tensor_view<const Q> q, const Q8& k, const Q8& v, tensor_view<O> o,
                      const std::int32_t* table, index_t max_pages, std::span<const index_t> lengths, index_t longest,
                      const head_map& map, const attention_options& opt) {
  GQA_CORE_ON(on, forward_paged_q8, q, k.values, k.scales, v.values, v.scales, o, table, max_pages, lengths, longest,
              map, opt)
}

/// The ragged forward core on int8 K/V (forward_ragged_q8) on `on`.
template <class Isa, std::same_as<q8_view> Q8, class Q, class O>
void forward_ragged_on(Isa, tensor_view<const Q> q, const Q8& k, const Q8& v, tensor_view<O> o,
                       std::span<const index_t> cu_q, std::span<const index_t> cu_k, index_t sq, index_t skv,
                       const head_map& map, const attention_options& opt) {
  forward_ragged_q8<Isa>(q, k.values, k.scales, v.values, v.scales, o, cu_q, cu_k, sq, skv, map, opt);
}
template <std::same_as<q8_view> Q8, class Q, class O>
void forward_ragged_on(named_target on, tensor_view<const Q> q, const Q8& k, const Q8& v, tensor_view<O> o,
                       std::span<const index_t> cu_q, std::span<const index_t> cu_k, index_t sq, index_t skv,
                       const head_map& map, const attention_options& opt) {
  GQA_CORE_ON(on, forward_ragged_q8, q, k.values, k.scales, v.values, v.scales, o, cu_q, cu_k, sq, skv, map, opt)
}

/// The ragged forward core (forward_ragged) on `on`.
template <class Isa, class KV, class Q, class O>
void forward_ragged_on(Isa, tensor_view<const Q> q, tensor_view<const KV> k, tensor_view<const KV> v,
                       tensor_view<O> o, std::span<const index_t> cu_q, std::span<const index_t> cu_k,
                       index_t sq, index_t skv, const head_map& map, const attention_options& opt) {
  forward_ragged<Isa>(q, k, v, o, cu_q, cu_k, sq, skv, map, opt);
}
template <class KV, class Q, class O>
void forward_ragged_on(named_target on, tensor_view<const Q> q, tensor_view<const KV> k, tensor_view<const KV> v,
                       tensor_view<O> o, std::span<const index_t> cu_q, std::span<const index_t> cu_k, index_t sq,
                       index_t skv, const head_map& map, const attention_options& opt) {
  GQA_CORE_ON(on, forward_ragged, q, k, v, o, cu_q, cu_k, sq, skv, map, opt)
}

/// The backward core on `on` (target_of's result). T: the inputs' element type, G: the gradients' (Note
/// [16-bit backward]); cu_q, cu_k: a ragged batch's offsets, or empty (Note [ragged backward]).
template <class Isa, class T, class G>
void backward_on(Isa, tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v, tensor_view<const T> o,
                 tensor_view<const T> dout, std::span<const float> lse, tensor_view<G> dq, tensor_view<G> dk,
                 tensor_view<G> dv, const head_map& map, const attention_options& opt,
                 std::span<const index_t> cu_q = {}, std::span<const index_t> cu_k = {}) {
  backward<Isa>(q, k, v, o, dout, lse, dq, dk, dv, map, opt, cu_q, cu_k);
}
/// A template, so that a translation unit that never calls the backward never instantiates it (three
/// cores' worth of template instantiation in a dispatching TU otherwise).
template <class T, class G>
void backward_on(named_target on, tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v,
                 tensor_view<const T> o, tensor_view<const T> dout, std::span<const float> lse, tensor_view<G> dq,
                 tensor_view<G> dk, tensor_view<G> dv, const head_map& map, const attention_options& opt,
                 std::span<const index_t> cu_q = {}, std::span<const index_t> cu_k = {}) {
  GQA_CORE_ON(on, backward, q, k, v, o, dout, lse, dq, dk, dv, map, opt, cu_q, cu_k)
}

/// The key-norm walk (key_norms.hpp) on `on` (Note [dispatched key norms]).
template <class Rows>
std::vector<double> key_norms_on(named_target on, index_t seqs, index_t h, index_t d, index_t stride_d,
                                 const Rows& rows) {
  GQA_CORE_ON(on, key_norms_walk, seqs, h, d, stride_d, rows)
}

#undef GQA_CORE_ON
#undef GQA_CORE_ON_AVX2
#undef GQA_CORE_ON_AVX512

}  // namespace detail::core
GQA_END_NAMESPACE
