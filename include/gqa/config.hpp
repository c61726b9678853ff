// gqa/config.hpp: ISA detection from the compiler's target macros, the ABI namespace, small macros.
// Invariant: every header of gqa includes this first; all library code lives in GQA_BEGIN_NAMESPACE.
#pragma once

#include <cstddef>
#include <cstdint>

#define GQA_VERSION_MAJOR 0
#define GQA_VERSION_MINOR 1
#define GQA_VERSION_PATCH 0

// ISA detection. Each is 1 when the translation unit is compiled with flags that allow that ISA.
#if defined(__AVX2__) && defined(__FMA__)
#define GQA_HAS_AVX2 1
#else
#define GQA_HAS_AVX2 0
#endif
#if defined(__AVX512F__) && GQA_HAS_AVX2
#define GQA_HAS_AVX512 1
#else
#define GQA_HAS_AVX512 0
#endif
#if defined(__ARM_NEON) && defined(__aarch64__)
#define GQA_HAS_NEON 1
#else
#define GQA_HAS_NEON 0
#endif

// Run-time dispatch (Note [per-target kernels] in gqa/detail/core/targets.hpp): with GCC or clang on
// x86-64, every translation unit also compiles the AVX2 and AVX-512 kernels in per-target regions, whatever
// its flags, and calls without an explicit ISA pick the best one the running CPU supports. Define
// GQA_NO_DISPATCH to compile only what the TU's flags allow (MSVC always does: its kernels are the
// compile-time ones, /arch:AVX2 or /arch:AVX512).
#if !defined(GQA_NO_DISPATCH) && (defined(__GNUC__) || defined(__clang__)) && \
    (defined(__x86_64__) || defined(__i386__))
#define GQA_DISPATCH_X86 1
#else
#define GQA_DISPATCH_X86 0
#endif

// Note [ABI namespace]
// Translation units compiled with different ISA flags may be linked into one program (the test binary
// does exactly that). Inline functions compiled with -mavx512f must never be picked by the linker for a
// scalar TU, so every gqa entity lives in an inline namespace named after the best ISA of the TU. A TU
// with GQA_NO_DISPATCH gets a namespace of its own too (v0_scalar_nodispatch, ...): its run-time choice
// (isa::runnable, the dispatching entry points) has fewer ISAs than a dispatching TU's of the same flags,
// and the linker must not hand one TU's inline functions to the other.
#ifndef GQA_ABI_NS
#if defined(GQA_NO_DISPATCH)
#define GQA_ABI_SUFFIX _nodispatch
#else
#define GQA_ABI_SUFFIX
#endif
#define GQA_ABI_CAT2(a, b) a##b
#define GQA_ABI_CAT(a, b) GQA_ABI_CAT2(a, b)
#if GQA_HAS_AVX512
#define GQA_ABI_NS GQA_ABI_CAT(v0_avx512, GQA_ABI_SUFFIX)
#elif GQA_HAS_AVX2
#define GQA_ABI_NS GQA_ABI_CAT(v0_avx2, GQA_ABI_SUFFIX)
#elif GQA_HAS_NEON
#define GQA_ABI_NS GQA_ABI_CAT(v0_neon, GQA_ABI_SUFFIX)
#else
#define GQA_ABI_NS GQA_ABI_CAT(v0_scalar, GQA_ABI_SUFFIX)
#endif
#endif

#define GQA_BEGIN_NAMESPACE \
  namespace gqa {           \
  inline namespace GQA_ABI_NS {
#define GQA_END_NAMESPACE \
  }                       \
  }

// GQA_UNROLL: unroll the next loop completely (its trip count is a compile-time constant: a register
// block). GCC unrolls such loops by itself only at -O3; at -O2 the block would stay in memory.
#if defined(__clang__)
#define GQA_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define GQA_UNROLL _Pragma("GCC unroll 32")
#else
#define GQA_UNROLL
#endif

#if defined(__GNUC__) || defined(__clang__)
#define GQA_FORCEINLINE inline __attribute__((always_inline))
#define GQA_RESTRICT __restrict__
#define GQA_PREFETCH_L2(p) __builtin_prefetch((p), 0, 2)  // a read hint for the outer caches
#define GQA_PREFETCH_L1(p) __builtin_prefetch((p), 0, 3)  // a read hint for every level, L1 included
// GQA_IN_GPR(x): from here on the compiler knows nothing of x's value, so it keeps x (a pointer) in a
// general register instead of computing it as a lane of a vector (Note [row pointers in registers]).
#define GQA_IN_GPR(x) __asm__("" : "+r"(x))
#else
#define GQA_FORCEINLINE inline
#define GQA_RESTRICT
#define GQA_PREFETCH_L2(p) static_cast<void>(p)  // a hint only: compilers without the builtin skip it
#define GQA_PREFETCH_L1(p) static_cast<void>(p)
#define GQA_IN_GPR(x) static_cast<void>(x)
#endif

GQA_BEGIN_NAMESPACE
/// Signed index type for every extent and stride (strides are in elements, may be any sign).
using index_t = std::int64_t;
GQA_END_NAMESPACE
