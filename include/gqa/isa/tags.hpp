// gqa/isa/tags.hpp: ISA tag types and isa::native, the best ISA this translation unit is compiled for.
// Tags inherit from their fallback parent (avx512 -> avx2 -> scalar; neon -> scalar).
#pragma once

#include <string_view>
#include <type_traits>

#include "../config.hpp"
#include "cpu.hpp"

GQA_BEGIN_NAMESPACE
namespace isa {

struct scalar {
  static constexpr std::string_view name = "scalar";
};
struct avx2 : scalar {
  static constexpr std::string_view name = "avx2";
};
struct avx512 : avx2 {
  static constexpr std::string_view name = "avx512";
};
struct neon : scalar {
  static constexpr std::string_view name = "neon";
};

#if GQA_HAS_AVX512
using native = avx512;
#elif GQA_HAS_AVX2
using native = avx2;
#elif GQA_HAS_NEON
using native = neon;
#else
using native = scalar;
#endif

/// True when this translation unit was compiled with flags that allow Isa.
template <class Isa>
inline constexpr bool compiled = std::is_same_v<Isa, scalar> || (std::is_same_v<Isa, avx2> && GQA_HAS_AVX2) ||
                                 (std::is_same_v<Isa, avx512> && GQA_HAS_AVX512) ||
                                 (std::is_same_v<Isa, neon> && GQA_HAS_NEON);

/// Not an ISA: the default of gqa::attend and gqa::forward, "the best ISA the running CPU supports,
/// chosen at run time" (gqa/detail/core/targets.hpp, Note [per-target kernels]).
struct dispatch {
  static constexpr std::string_view name = "dispatch";
};
/// True for isa::dispatch (a call resolved at run time), false for an ISA tag.
template <class Isa>
inline constexpr bool dispatched = std::is_same_v<Isa, dispatch>;

/// True when the running CPU (and OS) can execute Isa: every feature its code is compiled for, from
/// CPUID and XGETBV (isa/cpu.hpp); checked at run time, tests skip otherwise.
template <class Isa>
inline bool cpu_supports() noexcept {
  if constexpr (std::is_same_v<Isa, scalar>) {
    return true;
  } else if constexpr (std::is_same_v<Isa, neon>) {
    return GQA_HAS_NEON != 0;
  } else if constexpr (std::is_same_v<Isa, avx2>) {
    return cpu().avx2_fma;
  } else {
    static_assert(std::is_same_v<Isa, avx512>, "cpu_supports<Isa>: Isa is not an ISA tag");
    return cpu().avx512;
  }
}

}  // namespace isa
GQA_END_NAMESPACE
