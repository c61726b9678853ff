// bench/bench_neon.cpp: gqa_bench's neon translation unit (compiled with gqa_isa_compile_options(neon)):
// exposes gqa_bench::hooks_neon(), the probes and benchmarks of bench_isa.hpp for this ISA.
#define GQA_BENCH_ISA neon
#include "bench_isa.hpp"
