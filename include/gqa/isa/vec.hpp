// gqa/isa/vec.hpp: includes the primitive set of every ISA this translation unit is compiled for.
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_ISA_VEC_HPP
#define GQA_ISA_VEC_HPP

#include "vec_scalar.hpp"
#if GQA_HAS_AVX2
#include "vec_avx2.hpp"
#endif
#if GQA_HAS_AVX512
#include "vec_avx512.hpp"
#endif
#if GQA_HAS_NEON
#include "vec_neon.hpp"
#endif

#endif  // GQA_ISA_VEC_HPP
