// bench/bench_avx512.cpp: gqa_bench's avx512 translation unit (compiled with gqa_isa_compile_options(avx512)):
// exposes gqa_bench::hooks_avx512(), the probes and benchmarks of bench_isa.hpp for this ISA.
#define GQA_BENCH_ISA avx512
#include "bench_isa.hpp"
