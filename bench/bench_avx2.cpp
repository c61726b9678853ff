// bench/bench_avx2.cpp: gqa_bench's avx2 translation unit (compiled with gqa_isa_compile_options(avx2)):
// exposes gqa_bench::hooks_avx2(), the probes and benchmarks of bench_isa.hpp for this ISA.
#define GQA_BENCH_ISA avx2
#include "bench_isa.hpp"
