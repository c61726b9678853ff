// gqa/runtime_info.hpp: what a call without an explicit ISA runs here: the ISA chosen (and why), the ISAs
// this translation unit holds kernels for, the threads and the thread backend. Tools and examples print
// it so a user sees what ran.
#pragma once

#include <string>
#include <string_view>

#include "config.hpp"
#include "isa/select.hpp"
#include "isa/tags.hpp"
#include "options.hpp"
#include "threading/parallel.hpp"

GQA_BEGIN_NAMESPACE

struct runtime_report {
  /// The ISA calls without an explicit one run (isa::resolve of the options' isa).
  std::string_view isa;
  /// Why: "options.isa", "GQA_ISA" (the environment variable) or "best supported".
  std::string_view chosen_by;
  /// ISAs this translation unit has kernels for, best first (space separated).
  std::string compiled;
  /// ISAs of `compiled` the running CPU supports, best first.
  std::string supported;
  /// Threads of the built-in loop for the options' num_threads (0 = all available).
  int threads = 1;
  /// "OpenMP" or "std::thread pool" (the built-in loop), or "caller's parallel_for".
  std::string_view backend;
  /// Whether bf16 Q/K/V prefill multiplies on AMX-BF16 tiles here (isa avx512 and isa::cpu().amx_bf16; the
  /// call's options.bf16_products, on by default, decides per call; docs/design.md, Note [bf16 tiles]).
  bool bf16_tiles = false;
  /// Whether it multiplies with AVX512-BF16's VDPBF16PS instead (isa avx512, no AMX-BF16, and
  /// isa::bf16_dot_fast(): AVX512-BF16 on an AMD CPU), under the same option; decode then does too (Note
  /// [bf16 decode]).
  bool bf16_dot = false;
  /// Whether int8-cache decode computes its products in integers here (options.int8_products, on by default,
  /// decides per call): isa avx512 with AVX512-VNNI, or avx2 (by AVX-VNNI where the CPU has it, else by the
  /// pre-VNNI instructions: Notes [int8 decode products], [int8 products without VNNI]).
  bool int8_dot = false;

  /// "isa avx512 (best supported; compiled: avx512 avx2 scalar; CPU: avx512 avx2 scalar), 2 threads (OpenMP)".
  std::string to_string() const {
    std::string s = "isa ";
    s.append(isa).append(" (").append(chosen_by).append("; compiled: ").append(compiled);
    s.append("; CPU: ").append(supported).append("), ").append(std::to_string(threads));
    s.append(threads == 1 ? " thread (" : " threads (").append(backend).append(")");
    if (bf16_tiles) s.append(", bf16 prefill on AMX tiles");
    if (bf16_dot) s.append(", bf16 prefill and decode on AVX512-BF16");
    if (int8_dot) s.append(", int8 decode products in integers");
    return s;
  }
};

/// What a call with options `opt` and no explicit ISA would run. Throws gqa::invalid_argument like the
/// call would when opt.isa or GQA_ISA names an ISA that cannot run.
inline runtime_report runtime_info(const attention_options& opt = {}) {
  runtime_report r;
  r.isa = isa::resolve(opt.isa);
  r.chosen_by = !opt.isa.empty()                           ? std::string_view("options.isa")
                : !detail::isa_from_environment().empty() ? std::string_view("GQA_ISA")
                                                          : std::string_view("best supported");
  r.compiled = detail::names_where([](std::string_view i) { return isa::runnable(i); });
  r.supported = detail::names_where([](std::string_view i) { return isa::runnable(i) && isa::cpu_supports(i); });
  r.threads = detail::resolve_threads(opt.num_threads);
#if defined(_OPENMP)
  r.backend = "OpenMP";
#else
  r.backend = "std::thread pool";
#endif
  if (opt.parallel_for) r.backend = "caller's parallel_for";
  r.bf16_tiles = r.isa == isa::avx512::name && isa::cpu().amx_bf16;  // the grant is asked for by the first such call
  r.bf16_dot = r.isa == isa::avx512::name && !isa::cpu().amx_bf16 && isa::bf16_dot_fast();
  r.int8_dot = GQA_X86_CPUID && ((r.isa == isa::avx512::name && isa::cpu().avx512_vnni) || r.isa == isa::avx2::name);
  return r;
}

GQA_END_NAMESPACE
