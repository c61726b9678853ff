// gqa/detail/core/targets.hpp: the core for every ISA this translation unit can run, whatever its flags,
// and forward_named(), which runs the one a name picks (gqa::attend without an ISA, through
// isa::resolve in isa/select.hpp).
// Invariant: a per-target copy is compiled only for ISAs above the TU's own (isa::native), lives in its
// own namespace (gqa::<ABI>::target_<isa>), and shares every type with the native code.
#pragma once

#include <string_view>

#include "../../config.hpp"
#include "../../isa/select.hpp"
#include "forward.hpp"  // the native copy first: it includes every standard header the core uses

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
//    macros (GQA_HAS_AVX2/AVX512, pushed to 1 by target_pass.hpp, and GQA_TARGET_FMA).
//  - GCC 12 warns (-Wpsabi: "AVX512F vector return without AVX512F enabled changes the ABI") about
//    lambdas returning a vector inside a region, although it compiles them for the region's target (else
//    inlining the intrinsics would fail); they never cross a TU boundary, so the warning is silenced there.
// The AVX-512 region enables exactly what gqa_isa_compile_options(avx512) does (F, VL, BW, DQ, AVX2,
// FMA), and isa::cpu() checks all of it, so the per-target copy computes what a TU compiled with those
// flags computes, bit for bit (tests/unit/dispatch_test.cpp). Templates are instantiated only for what a
// call reaches: one forward<Isa> per ISA.
#if GQA_DISPATCH_X86
#include <immintrin.h>

#define GQA_TARGET_FMA 1
#if !GQA_HAS_AVX2
#define GQA_TARGET_NS target_avx2
#define GQA_TARGET_SPEC "avx2,fma"
#define GQA_TARGET_AVX512 0
#include "target_pass.hpp"
#endif
#if !GQA_HAS_AVX512
#define GQA_TARGET_NS target_avx512
#define GQA_TARGET_SPEC "avx2,fma,avx512f,avx512vl,avx512bw,avx512dq"
#define GQA_TARGET_AVX512 1
#include "target_pass.hpp"
#endif
#undef GQA_TARGET_FMA
#endif  // GQA_DISPATCH_X86

GQA_BEGIN_NAMESPACE
namespace detail::core {

/// The core on the ISA called `isa`, which must be isa::runnable (isa::resolve's result): the TU's own
/// best ISA, or one above it through a per-target region (only these are instantiated).
inline void forward_named(std::string_view isa, tensor_view<const float> q, tensor_view<const float> k,
                          tensor_view<const float> v, tensor_view<float> o, const head_map& map,
                          const attention_options& opt) {
#if GQA_DISPATCH_X86 && !GQA_HAS_AVX512
  if (isa == isa::avx512::name) return target_avx512::detail::core::forward<isa::avx512>(q, k, v, o, map, opt);
#endif
#if GQA_DISPATCH_X86 && !GQA_HAS_AVX2
  if (isa == isa::avx2::name) return target_avx2::detail::core::forward<isa::avx2>(q, k, v, o, map, opt);
#endif
  static_cast<void>(isa);
  forward<isa::native>(q, k, v, o, map, opt);
}

}  // namespace detail::core
GQA_END_NAMESPACE
