// bench/bench_scalar.cpp: gqa_bench's scalar translation unit (compiled with gqa_isa_compile_options(scalar)):
// exposes gqa_bench::hooks_scalar(), the probes and benchmarks of bench_isa.hpp for this ISA.
#define GQA_BENCH_ISA scalar
#include "bench_isa.hpp"
