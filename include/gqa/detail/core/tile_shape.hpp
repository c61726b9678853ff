// gqa/detail/core/tile_shape.hpp: register-tile and block sizes per ISA.
// mr × nr vectors is the microkernel's accumulator block: mr·nr + nr + 1 registers must fit the register
// file (16 on AVX2, 32 on AVX-512 and NEON). block_kv is the KV block (a multiple of nr·lanes), rows the
// target number of query rows (group heads × positions) per task: every task streams its KV head's K/V
// from L2/L3 once and packs it, so more rows per task amortise that (P1 on AVX-512 measured 144 -> 185-200
// GFLOP/s going from 48 to 192 rows; AVX2 90 -> 104); 192 rows keep the task's scratch (~0.4 MB at d = 128)
// inside L2; block_kv_decode is the KV block of
// decode tasks, which walk every KV head per block (see Note [decode tasks]).
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_DETAIL_CORE_TILE_SHAPE_HPP
#define GQA_DETAIL_CORE_TILE_SHAPE_HPP

#include "../../isa/vec.hpp"

GQA_BEGIN_NAMESPACE
namespace detail::core {

template <class Isa>
struct tile_shape {
  static constexpr int mr = 4, nr = 4;  // scalar: 16 accumulators, the compiler keeps them in registers
  static constexpr int block_kv = 64;
  static constexpr int block_kv_decode = 64;
  static constexpr int rows = 32;
  // Direct (decode) path: Q·K blocks of direct_qk_rows rows × 4 keys; P·V blocks of ~direct_acc vectors.
  static constexpr int direct_qk_rows = 2, direct_acc = 8;
};

template <>
struct tile_shape<isa::avx2> {
  static constexpr int mr = 6, nr = 2;  // 12 acc + 2 K/V + 1 broadcast = 15 of 16 ymm
  static constexpr int block_kv = 128;
  static constexpr int block_kv_decode = 64;  // all heads of 64 positions: 64 x Hkv x d x 8 bytes in flight
  static constexpr int rows = 192;
  static constexpr int direct_qk_rows = 2, direct_acc = 8;  // Q·K: 8 acc + 4 K + 1 Q; P·V: 8 acc + V + 1
};

template <>
struct tile_shape<isa::avx512> {
  static constexpr int mr = 6, nr = 4;  // 24 acc + 4 K/V + 1 broadcast = 29 of 32 zmm
  static constexpr int block_kv = 128;
  static constexpr int block_kv_decode = 64;  // all heads of 64 positions: 64 x Hkv x d x 8 bytes in flight
  static constexpr int rows = 192;
  static constexpr int direct_qk_rows = 4, direct_acc = 16;  // Q·K: 16 acc + 4 K + 1 Q; P·V: 16 acc + V + 1
};

template <>
struct tile_shape<isa::neon> {
  static constexpr int mr = 6, nr = 4;  // 24 acc + 4 K/V + 1 broadcast = 29 of 32 q registers
  static constexpr int block_kv = 64;
  static constexpr int block_kv_decode = 64;
  static constexpr int rows = 96;
  static constexpr int direct_qk_rows = 4, direct_acc = 16;
};

}  // namespace detail::core
GQA_END_NAMESPACE

#endif  // GQA_DETAIL_CORE_TILE_SHAPE_HPP
