// gqa/isa/select.hpp: choosing an ISA at run time, by name. A program that compiles one translation unit
// per ISA (each with gqa_isa_compile_options(<isa>)) asks here which of them the running CPU can execute
// and which is best, then calls into that TU.
#pragma once

#include <array>
#include <span>
#include <string_view>

#include "../config.hpp"
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

}  // namespace isa
GQA_END_NAMESPACE
