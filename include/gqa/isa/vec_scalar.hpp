// gqa/isa/vec_scalar.hpp: the vector primitive set, and its defining semantics on one float lane, plus
// the meaning of `tile_shape`, the core's register-tile and block sizes. Every ISA file (vec_avx2.hpp,
// vec_avx512.hpp, vec_neon.hpp) provides exactly these members with the same meaning lane by lane and
// its own tile_shape; nothing else in gqa is ISA-specific (adding an ISA touches no file of the core).
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_ISA_VEC_SCALAR_HPP
#define GQA_ISA_VEC_SCALAR_HPP

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "../config.hpp"
#include "../numeric.hpp"
#include "tags.hpp"

GQA_BEGIN_NAMESPACE
namespace isa {

/// 1.5·2^23 + 127: a float n in [−127, 127] plus it is exact and holds n + 127 in its low mantissa bits
/// (Note [pow2i by addition]).
inline constexpr float k_pow2i_bias = 0x1.8p23f + 127.0f;

/// vec<Isa>: `reg` holds `lanes` floats. Primary template is left undefined: an ISA without a
/// specialisation is a compile error naming vec<Isa>.
template <class Isa>
struct vec;

template <>
struct vec<scalar> {
  using reg = float;
  static constexpr int lanes = 1;

  // Note [tile shape]
  // The core's sizes for this ISA (detail/core reads them, never defines them):
  // * mr × nr vectors: the register tile's accumulator block (detail/core/tile.hpp). mr·nr accumulators
  //   + nr vectors of B + 1 broadcast of A must fit the register file (16 on AVX2, 32 on AVX-512/NEON).
  // * block_kv: keys per block on the tiled (prefill) path, a multiple of nr·lanes; block_kv_large_l2:
  //   the same where the forward takes rows_large_l2 rows (below); block_kv_decode: keys per block of
  //   decode tasks, which walk every KV head per block (Note [decode tasks]); block_kv_backward: keys per
  //   block of the backward (Note [backward tasks]); block_kv_tiles16: keys per block on the AMX tiles
  //   (Note [bf16 tiles]; AVX-512 only). Longer blocks share each row's per-block softmax work (two
  //   horizontal reductions, the rescale of O) among more keys but need more scratch per row; AVX-512's
  //   forward takes 512 (256 with rows_large_l2), AVX2's 256 (Note [forward block length] in
  //   detail/core/forward.hpp), NEON and scalar 64, the values they were tuned at.
  // * rows: the target number of query rows (group heads × positions) per prefill task. Every task
  //   streams its KV head's K/V from L2/L3 once and packs it, so more rows amortise that (P1 on AVX-512
  //   measured 144 -> 185-200 GFLOP/s going from 48 to 192 rows; AVX2 90 -> 104); 192 rows keep the
  //   task's scratch (~0.4 MB at d = 128) inside L2. rows_large_l2: the forward's rows where L2 holds
  //   at least 2 MiB (Note [rows by L2] in detail/core/forward.hpp); the backward keeps rows.
  // * direct_qk_rows, direct_qk_keys, direct_acc: the direct path's register blocks (Note [direct path]):
  //   Q·K in blocks of direct_qk_rows rows × direct_qk_keys keys (4 or 2), P·V in blocks of about
  //   direct_acc accumulator vectors.
  struct tile_shape {
    static constexpr int mr = 4, nr = 4;  // 16 accumulators: the compiler keeps them in registers
    static constexpr int block_kv = 64, block_kv_large_l2 = 64, block_kv_decode = 64, block_kv_backward = 64, block_kv_tiles16 = 64;
    static constexpr int rows = 32, rows_large_l2 = 32;  // not measured with a larger L2
    static constexpr int direct_qk_rows = 2, direct_qk_keys = 4, direct_acc = 8;
  };

  static GQA_FORCEINLINE reg zero() noexcept { return 0.0f; }
  static GQA_FORCEINLINE reg set1(float x) noexcept { return x; }
  /// Loads/stores need no alignment.
  static GQA_FORCEINLINE reg load(const float* p) noexcept { return *p; }
  static GQA_FORCEINLINE void store(float* p, reg v) noexcept { *p = v; }
  /// First n lanes (0 <= n <= lanes) from p, the rest zero; never touches p[n..lanes).
  static GQA_FORCEINLINE reg load_partial(const float* p, int n) noexcept { return n > 0 ? *p : 0.0f; }
  /// Writes only the first n lanes.
  static GQA_FORCEINLINE void store_partial(float* p, reg v, int n) noexcept {
    if (n > 0) *p = v;
  }
  /// Widening loads: `lanes` (or the first n) 16-bit elements from p as floats, exactly (Note [16-bit
  /// conversions] in numeric.hpp); the same contract as load/load_partial. Every ISA has these four.
  static GQA_FORCEINLINE reg load(const bf16* p) noexcept { return to_float(*p); }
  static GQA_FORCEINLINE reg load(const f16* p) noexcept { return to_float(*p); }
  static GQA_FORCEINLINE reg load_partial(const bf16* p, int n) noexcept { return n > 0 ? to_float(*p) : 0.0f; }
  static GQA_FORCEINLINE reg load_partial(const f16* p, int n) noexcept { return n > 0 ? to_float(*p) : 0.0f; }
  /// Widening loads of int8 (an int8 K/V cache's values, Note [int8 K/V] in detail/core/layout.hpp):
  /// `lanes` (or the first n) signed bytes from p as floats, exactly; the same contract as load/load_partial.
  static GQA_FORCEINLINE reg load(const std::int8_t* p) noexcept { return static_cast<float>(*p); }
  static GQA_FORCEINLINE reg load_partial(const std::int8_t* p, int n) noexcept {
    return n > 0 ? static_cast<float>(*p) : 0.0f;
  }
  static GQA_FORCEINLINE reg add(reg a, reg b) noexcept { return a + b; }
  static GQA_FORCEINLINE reg sub(reg a, reg b) noexcept { return a - b; }
  static GQA_FORCEINLINE reg mul(reg a, reg b) noexcept { return a * b; }
  /// a*b + c, fused (one rounding).
  static GQA_FORCEINLINE reg fma(reg a, reg b, reg c) noexcept { return std::fma(a, b, c); }
  /// a*b + c as fast as the target allows: fused when it has an FMA instruction, else a multiply and an
  /// add (two roundings). The core's dot products use this; without FMA hardware (x86-64 baseline)
  /// std::fma is a libm call per element, which held the scalar core to ~1.6 GFLOP/s. GQA_TARGET_FMA: set
  /// inside a per-target region with FMA (clang does not define __FMA__ there; Note [per-target kernels]).
  static GQA_FORCEINLINE reg mul_add(reg a, reg b, reg c) noexcept {
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA) || defined(FP_FAST_FMAF) || defined(GQA_TARGET_FMA)
    return std::fma(a, b, c);
#else
    return a * b + c;
#endif
  }
  static GQA_FORCEINLINE reg max(reg a, reg b) noexcept { return a > b ? a : b; }
  static GQA_FORCEINLINE reg min(reg a, reg b) noexcept { return a < b ? a : b; }
  /// a / b, correctly rounded (IEEE division).
  static GQA_FORCEINLINE reg div(reg a, reg b) noexcept { return a / b; }
  /// Lane by lane a < b ? x : y (false, hence y, when a or b is NaN).
  static GQA_FORCEINLINE reg select_lt(reg a, reg b, reg x, reg y) noexcept { return a < b ? x : y; }
  static GQA_FORCEINLINE float reduce_sum(reg a) noexcept { return a; }
  static GQA_FORCEINLINE float reduce_max(reg a) noexcept { return a; }
  /// out[0..4) = reduce_sum(a), reduce_sum(b), reduce_sum(c), reduce_sum(d) (summation order may differ).
  static GQA_FORCEINLINE void reduce_sum4(reg a, reg b, reg c, reg d, float* out) noexcept {
    out[0] = a;
    out[1] = b;
    out[2] = c;
    out[3] = d;
  }
  /// The lanes × lanes block whose row i is the `lanes` floats at src[i], transposed: dst + c·ldd receives
  /// column c (src[0][c], …, src[lanes − 1][c]). Exact (moves only). The tiled path packs Kᵀ with it.
  static GQA_FORCEINLINE void transpose(const float* const* src, float* dst, std::ptrdiff_t /*ldd*/) noexcept {
    dst[0] = src[0][0];
  }
  // Note [pow2i by addition]
  // For an integer n in [−127, 127], y = n + (1.5·2^23 + 127) is exact and lies in [2^23, 2^24), where
  // floats are the integers: its 23 mantissa bits hold 2^22 + 127 + n. Shifted left by 23 in 32 bits, the
  // 2^22 leaves and 127 + n ∈ [0, 254] lands in the exponent field with sign and mantissa 0: the float
  // 2^n, and +0 for n = −127. One add and one shift, where converting to int32, adding the bias and
  // shifting took three vector operations; exp2 forms y from its argument directly (Note [exp2 reduction
  // by addition]), once per score.
  /// The float whose bits are y's shifted left by 23 (in 32 bits): for y = n + k_pow2i_bias with an
  /// integer-valued n in [-127, 127], 2^n, and exactly 0 for n = -127 (biased exponent 0). For any other y
  /// (NaN, ±inf, beyond the range) the value is unspecified but the operation is defined: exp2 multiplies
  /// it by a NaN polynomial for NaN and ±inf, and exp2_nonpositive's callers get such a y only in a row
  /// that is NaN anyway (Note [softmax exp2]). Every ISA computes it as in Note [pow2i by addition], so the
  /// bits agree for every input; a cast to int32 (undefined behaviour for ±inf and beyond ±2^31) is never
  /// formed.
  static GQA_FORCEINLINE reg exponent_bits(reg y) noexcept {
    std::uint32_t bits;
    std::memcpy(&bits, &y, sizeof bits);
    bits <<= 23;
    float r;
    std::memcpy(&r, &bits, sizeof r);
    return r;
  }
};

}  // namespace isa
GQA_END_NAMESPACE

#endif  // GQA_ISA_VEC_SCALAR_HPP
