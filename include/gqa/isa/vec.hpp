// gqa/isa/vec.hpp: includes the primitive set of every ISA this translation unit is compiled for.
#pragma once

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
