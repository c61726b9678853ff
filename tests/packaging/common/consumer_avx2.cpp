// consumer_avx2.cpp: compiled with the flags from gqa_isa_compile_options(avx2 ...). Proves a consumer can
// mix per-ISA TUs: this TU's gqa lives in inline namespace v0_avx2, the main TU's in v0_scalar.
#include "consumer_check.hpp"

static_assert(GQA_HAS_AVX2, "gqa_isa_compile_options(avx2) did not enable AVX2 for this TU");

double consumer_avx2_max_error() { return consumer_max_error<gqa::isa::avx2>(); }
