// gqa/isa/vec_neon.hpp: the vector primitive set on AArch64 Advanced SIMD (4 floats per float32x4_t).
// Same meaning lane by lane as vec<scalar> (vec_scalar.hpp); only compiled when GQA_HAS_NEON.
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_ISA_VEC_NEON_HPP
#define GQA_ISA_VEC_NEON_HPP

#include "../config.hpp"
#include "tags.hpp"
#include "vec_scalar.hpp"

#if GQA_HAS_NEON
#include <arm_neon.h>

#include <cstdint>
#include <cstring>

GQA_BEGIN_NAMESPACE
namespace isa {

template <>
struct vec<neon> {
  using reg = float32x4_t;
  static constexpr int lanes = 4;
  /// See Note [tile shape] (vec_scalar.hpp).
  struct tile_shape {
    static constexpr int mr = 6, nr = 4;  // 24 acc + 4 K/V + 1 broadcast = 29 of 32 q registers
    static constexpr int block_kv = 64, block_kv_large_l2 = 64, block_kv_backward = 64, block_kv_tiles16 = 64;
    static constexpr int block_kv_decode = 64;
    static constexpr int rows = 96, rows_large_l2 = 96;  // not measured with a larger L2
    static constexpr int direct_qk_rows = 4, direct_qk_keys = 4, direct_acc = 16;
  };

  static GQA_FORCEINLINE reg zero() noexcept { return vdupq_n_f32(0.0f); }
  static GQA_FORCEINLINE reg set1(float x) noexcept { return vdupq_n_f32(x); }
  static GQA_FORCEINLINE reg load(const float* p) noexcept { return vld1q_f32(p); }
  static GQA_FORCEINLINE void store(float* p, reg v) noexcept { vst1q_f32(p, v); }
  /// NEON has no masked loads: lanes are moved one by one, so nothing past p[n) is touched.
  static GQA_FORCEINLINE reg load_partial(const float* p, int n) noexcept {
    float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int i = 0; i < n && i < 4; ++i) t[i] = p[i];
    return vld1q_f32(t);
  }
  static GQA_FORCEINLINE void store_partial(float* p, reg v, int n) noexcept {
    float t[4];
    vst1q_f32(t, v);
    for (int i = 0; i < n && i < 4; ++i) p[i] = t[i];
  }
  /// Widening loads (vec_scalar.hpp): bf16 by a widening shift left by 16 (vshll), f16 by fcvtl
  /// (vcvt_f32_f16); partial loads move the n elements to a zeroed buffer first.
  static GQA_FORCEINLINE reg load(const bf16* p) noexcept { return widen_bf16(vld1_u16(bits_at(p))); }
  static GQA_FORCEINLINE reg load(const f16* p) noexcept { return widen_f16(vld1_u16(bits_at(p))); }
  static GQA_FORCEINLINE reg load_partial(const bf16* p, int n) noexcept { return widen_bf16(load4_partial(p, n)); }
  static GQA_FORCEINLINE reg load_partial(const f16* p, int n) noexcept { return widen_f16(load4_partial(p, n)); }
  /// int8: four bytes sign-extended twice (vmovl_s8, vmovl_s16) and converted (vcvtq_f32_s32); the four
  /// bytes are read as one 32-bit word (never more), a partial load moves the n bytes to a zeroed word.
  static GQA_FORCEINLINE reg load(const std::int8_t* p) noexcept {
    std::int32_t w;
    std::memcpy(&w, p, 4);
    return widen_i8(w);
  }
  static GQA_FORCEINLINE reg load_partial(const std::int8_t* p, int n) noexcept {
    std::int32_t w = 0;
    std::memcpy(&w, p, static_cast<std::size_t>(n < 0 ? 0 : n > 4 ? 4 : n));
    return widen_i8(w);
  }
  static GQA_FORCEINLINE reg add(reg a, reg b) noexcept { return vaddq_f32(a, b); }
  static GQA_FORCEINLINE reg sub(reg a, reg b) noexcept { return vsubq_f32(a, b); }
  static GQA_FORCEINLINE reg mul(reg a, reg b) noexcept { return vmulq_f32(a, b); }
  static GQA_FORCEINLINE reg fma(reg a, reg b, reg c) noexcept { return vfmaq_f32(c, a, b); }
  static GQA_FORCEINLINE reg mul_add(reg a, reg b, reg c) noexcept { return fma(a, b, c); }
  static GQA_FORCEINLINE reg max(reg a, reg b) noexcept { return vmaxq_f32(a, b); }
  static GQA_FORCEINLINE reg min(reg a, reg b) noexcept { return vminq_f32(a, b); }
  static GQA_FORCEINLINE reg div(reg a, reg b) noexcept { return vdivq_f32(a, b); }
  static GQA_FORCEINLINE reg select_lt(reg a, reg b, reg x, reg y) noexcept { return vbslq_f32(vcltq_f32(a, b), x, y); }
  static GQA_FORCEINLINE float reduce_sum(reg a) noexcept { return vaddvq_f32(a); }
  static GQA_FORCEINLINE float reduce_max(reg a) noexcept { return vmaxvq_f32(a); }
  static GQA_FORCEINLINE void reduce_sum4(reg a, reg b, reg c, reg d, float* out) noexcept {
    // Pairwise adds: [a0+a1, a2+a3, b0+b1, b2+b3], then [a, b, c, d] sums.
    vst1q_f32(out, vpaddq_f32(vpaddq_f32(a, b), vpaddq_f32(c, d)));
  }
  /// See vec<scalar>::transpose. A 4 × 4 block: trn1/trn2 on 32-bit pairs, then on 64-bit halves.
  static GQA_FORCEINLINE void transpose(const float* const* src, float* dst, std::ptrdiff_t ldd) noexcept {
    const reg r0 = load(src[0]), r1 = load(src[1]), r2 = load(src[2]), r3 = load(src[3]);
    const float64x2_t t0 = vreinterpretq_f64_f32(vtrn1q_f32(r0, r1)), t1 = vreinterpretq_f64_f32(vtrn2q_f32(r0, r1));
    const float64x2_t t2 = vreinterpretq_f64_f32(vtrn1q_f32(r2, r3)), t3 = vreinterpretq_f64_f32(vtrn2q_f32(r2, r3));
    store(dst, vreinterpretq_f32_f64(vtrn1q_f64(t0, t2)));
    store(dst + ldd, vreinterpretq_f32_f64(vtrn1q_f64(t1, t3)));
    store(dst + 2 * ldd, vreinterpretq_f32_f64(vtrn2q_f64(t0, t2)));
    store(dst + 3 * ldd, vreinterpretq_f32_f64(vtrn2q_f64(t1, t3)));
  }
  /// See vec<scalar>::exponent_bits.
  static GQA_FORCEINLINE reg exponent_bits(reg y) noexcept {
    return vreinterpretq_f32_u32(vshlq_n_u32(vreinterpretq_u32_f32(y), 23));
  }

 private:
  template <class T>
  static GQA_FORCEINLINE const std::uint16_t* bits_at(const T* p) noexcept {
    return reinterpret_cast<const std::uint16_t*>(p);
  }
  template <class T>
  static GQA_FORCEINLINE uint16x4_t load4_partial(const T* p, int n) noexcept {
    std::uint16_t t[4] = {0, 0, 0, 0};
    for (int i = 0; i < n && i < 4; ++i) t[i] = p[i].bits;
    return vld1_u16(t);
  }
  static GQA_FORCEINLINE reg widen_i8(std::int32_t w) noexcept {
    const int8x8_t b = vreinterpret_s8_s32(vdup_n_s32(w));
    return vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(b))));
  }
  static GQA_FORCEINLINE reg widen_bf16(uint16x4_t x) noexcept { return vreinterpretq_f32_u32(vshll_n_u16(x, 16)); }
  static GQA_FORCEINLINE reg widen_f16(uint16x4_t x) noexcept { return vcvt_f32_f16(vreinterpret_f16_u16(x)); }
};

}  // namespace isa
GQA_END_NAMESPACE
#endif  // GQA_HAS_NEON

#endif  // GQA_ISA_VEC_NEON_HPP
