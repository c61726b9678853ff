// gqa/isa/select.hpp: choosing an ISA at run time, by name: the one a call without an explicit ISA runs
// (resolve: attention_options::isa, else the GQA_ISA environment variable, else the best this TU has and
// the CPU supports), and, for programs that compile one translation unit per ISA themselves (each with
// gqa_isa_compile_options(<isa>)), which of those TUs the running CPU can execute.
#pragma once

#include <array>
#include <cstdlib>
#include <string>
#include <span>
#include <string_view>

#include "../config.hpp"
#include "../errors.hpp"
#include "tags.hpp"

GQA_BEGIN_NAMESPACE
namespace isa {

/// The name of every ISA gqa knows, best first: a CPU that runs several prefers the earlier one.
inline constexpr std::array<std::string_view, 4> names_by_preference = {avx512::name, avx2::name, neon::name,
                                                                        scalar::name};

/// True when the running CPU can execute the ISA called `name` (cpu_supports<Isa>() by name); false for
/// a name gqa does not know.
inline bool cpu_supports(std::string_view name) noexcept {
  if (name == scalar::name) return cpu_supports<scalar>();
  if (name == avx2::name) return cpu_supports<avx2>();
  if (name == avx512::name) return cpu_supports<avx512>();
  if (name == neon::name) return cpu_supports<neon>();
  return false;
}

/// The best of `candidates` (ISA names, any order, e.g. the ISAs a program has TUs for) that the running
/// CPU supports, in the order of names_by_preference; empty when it supports none of them.
inline std::string_view best_supported(std::span<const std::string_view> candidates) noexcept {
  for (const std::string_view isa : names_by_preference)
    for (const std::string_view c : candidates)
      if (c == isa && cpu_supports(isa)) return isa;
  return {};
}

/// True when a call without an explicit ISA can run the ISA called `name` in this translation unit: its
/// own best ISA (isa::native), or (GCC and clang on x86-64) one above it, compiled in a per-target region
/// (Note [per-target kernels]). ISAs below the TU's own are left out (a TU built for AVX-512 only runs
/// where AVX-512 is), which keeps such a TU's compile time what it was without dispatch.
constexpr bool runnable(std::string_view name) noexcept {
  if (name == native::name) return true;
  const bool above_native = (name == avx2::name && !GQA_HAS_AVX2 && !GQA_HAS_NEON) ||
                            (name == avx512::name && !GQA_HAS_AVX512 && !GQA_HAS_NEON);
  return above_native && GQA_DISPATCH_X86;
}

/// The best ISA this translation unit can run on the running CPU; chosen once per process.
inline std::string_view best_runnable() noexcept {
  static const std::string_view best = [] {
    for (const std::string_view isa : names_by_preference)
      if (runnable(isa) && cpu_supports(isa)) return isa;
    return native::name;  // the TU's flags already require it
  }();
  return best;
}


}  // namespace isa

namespace detail {
/// Space-separated names of isa::names_by_preference that satisfy pred (for messages and reports).
template <class Pred>
std::string names_where(Pred pred) {
  std::string out;
  for (const std::string_view isa : isa::names_by_preference)
    if (pred(isa)) out.append(out.empty() ? "" : " ").append(isa);
  return out;
}

/// `name` as the static string of isa::names_by_preference, checked: throws gqa::invalid_argument naming
/// `what` (e.g. "options.isa") and the value when gqa does not know it, this TU has no kernels for it,
/// or the running CPU lacks it (`cpu_has`: isa::cpu_supports, or a stand-in CPU in tests).
inline std::string_view checked_isa(std::string_view name, const char* what,
                                    bool (*cpu_has)(std::string_view) noexcept = isa::cpu_supports) {
  for (const std::string_view isa : isa::names_by_preference) {
    if (isa != name) continue;
    if (!isa::runnable(isa))
      fail("gqa: ", what, " = \"", name, "\": this translation unit has no ", name, " kernels (it has: ",
           names_where([](std::string_view i) { return isa::runnable(i); }), ")");
    if (!cpu_has(isa))
      fail("gqa: ", what, " = \"", name, "\": the running CPU lacks ", name, " (it supports: ",
           names_where([cpu_has](std::string_view i) { return isa::runnable(i) && cpu_has(i); }), ")");
    return isa;
  }
  fail("gqa: ", what, " = \"", name, "\": not an ISA gqa knows (one of: ",
       names_where([](std::string_view) { return true; }), ")");
}

/// The GQA_ISA environment variable, read once per process (empty when unset).
inline std::string_view isa_from_environment() noexcept {
  static const std::string_view env = [] {
    const char* e = std::getenv("GQA_ISA");
    return e ? std::string_view(e) : std::string_view();
  }();
  return env;
}
}  // namespace detail

namespace isa {
/// The ISA a call without an explicit ISA runs: `requested` when not empty (attention_options::isa), else
/// the environment variable GQA_ISA when set and not empty, else best_runnable(). Throws
/// gqa::invalid_argument for a requested or GQA_ISA name that is unknown, has no kernels in this TU, or
/// that the running CPU lacks (never falls back silently).
inline std::string_view resolve(std::string_view requested) {
  if (!requested.empty()) return detail::checked_isa(requested, "options.isa");
  if (const std::string_view env = detail::isa_from_environment(); !env.empty())
    return detail::checked_isa(env, "GQA_ISA (environment)");
  return best_runnable();
}

}  // namespace isa
GQA_END_NAMESPACE
