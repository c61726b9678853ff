// gqa/detail/core/target_pass.hpp: one more copy of the ISA-dependent core (isa/vec*.hpp, isa/vec_math.hpp,
// every detail/core/*.hpp but targets.hpp and this file) in namespace gqa::<ABI>::GQA_TARGET_NS, compiled
// for target GQA_TARGET_SPEC (GQA_TARGET_AVX512: whether vec<avx512> is part of it). No include guard:
// gqa/detail/core/targets.hpp defines the three macros and includes it once per target, after the
// native copy; it undefines them at the end. Included anywhere else (GQA_TARGET_NS undefined) it
// declares nothing. See Note [per-target kernels].

#ifdef GQA_TARGET_NS

// The region: every function defined from here to its end is compiled for GQA_TARGET_SPEC.
#define GQA_TARGET_PRAGMA_STR(x) _Pragma(#x)
#define GQA_TARGET_PRAGMA(x) GQA_TARGET_PRAGMA_STR(x)  // expands GQA_TARGET_SPEC first
#if defined(__clang__)
GQA_TARGET_PRAGMA(clang attribute push(__attribute__((target(GQA_TARGET_SPEC))), apply_to = function))
#else
#pragma GCC push_options
GQA_TARGET_PRAGMA(GCC target(GQA_TARGET_SPEC))
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // see Note [per-target kernels]
#endif

#pragma push_macro("GQA_BEGIN_NAMESPACE")
#pragma push_macro("GQA_END_NAMESPACE")
#pragma push_macro("GQA_HAS_AVX2")
#pragma push_macro("GQA_HAS_AVX512")
#undef GQA_BEGIN_NAMESPACE
#undef GQA_END_NAMESPACE
#undef GQA_HAS_AVX2
#undef GQA_HAS_AVX512
#define GQA_BEGIN_NAMESPACE \
  namespace gqa {           \
  inline namespace GQA_ABI_NS { namespace GQA_TARGET_NS {
#define GQA_END_NAMESPACE \
  }                       \
  }                       \
  }
// The vec headers compile vec<avx2> (and vec<avx512>) when these are 1.
#define GQA_HAS_AVX2 1
#define GQA_HAS_AVX512 GQA_TARGET_AVX512

// The copy shares everything that is not ISA-dependent with the native code: the ISA tags (so
// forward<isa::avx2> names the same type everywhere), and detail's views, head maps, thread loop and
// scratch (found through the using-directive; the copy's own detail::core hides the native one).
namespace gqa {
inline namespace GQA_ABI_NS {
namespace GQA_TARGET_NS {
namespace isa {
using ::gqa::GQA_ABI_NS::isa::avx2;
using ::gqa::GQA_ABI_NS::isa::avx512;
using ::gqa::GQA_ABI_NS::isa::neon;
using ::gqa::GQA_ABI_NS::isa::scalar;
}  // namespace isa
namespace detail {
using namespace ::gqa::GQA_ABI_NS::detail;
}  // namespace detail
}  // namespace GQA_TARGET_NS
}  // namespace GQA_ABI_NS
}  // namespace gqa

// Reset the guards of the ISA-dependent headers (the native copy set them) and include them again.
#undef GQA_ISA_VEC_SCALAR_HPP
#undef GQA_ISA_VEC_AVX2_HPP
#undef GQA_ISA_VEC_AVX512_HPP
#undef GQA_ISA_VEC_NEON_HPP
#undef GQA_ISA_VEC_HPP
#undef GQA_ISA_VEC_MATH_HPP
#undef GQA_ISA_AMX_BF16_HPP
#undef GQA_ISA_BF16_DOT_HPP
#undef GQA_ISA_I8_DOT_HPP
#undef GQA_DETAIL_CORE_BF16_TILES_HPP
#undef GQA_DETAIL_CORE_COMMON_HPP
#undef GQA_DETAIL_CORE_LAYOUT_HPP
#undef GQA_DETAIL_CORE_MODIFIERS_HPP
#undef GQA_DETAIL_CORE_TILE_HPP
#undef GQA_DETAIL_CORE_DOT_HPP
#undef GQA_DETAIL_CORE_SOFTMAX_HPP
#undef GQA_DETAIL_CORE_PACKED_HPP
#undef GQA_DETAIL_CORE_DIRECT_HPP
#undef GQA_DETAIL_CORE_DECODE_HPP
#undef GQA_DETAIL_CORE_FORWARD_HPP
#undef GQA_DETAIL_CORE_BACKWARD_HPP
#undef GQA_DETAIL_CORE_KEY_NORMS_HPP
#include "../../isa/vec.hpp"
#include "../../isa/vec_math.hpp"
#include "forward.hpp"
#include "backward.hpp"
#include "key_norms.hpp"

#pragma pop_macro("GQA_HAS_AVX512")
#pragma pop_macro("GQA_HAS_AVX2")
#pragma pop_macro("GQA_END_NAMESPACE")
#pragma pop_macro("GQA_BEGIN_NAMESPACE")

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
#undef GQA_TARGET_PRAGMA
#undef GQA_TARGET_PRAGMA_STR
#undef GQA_TARGET_AVX512
#undef GQA_TARGET_SPEC
#undef GQA_TARGET_NS

#endif  // GQA_TARGET_NS
