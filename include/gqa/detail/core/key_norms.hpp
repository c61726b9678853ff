// gqa/detail/core/key_norms.hpp: the key-norm walk (KDGQA's and DGQA's per-KV-head key norms), compiled
// for every ISA like the kernels (Note [dispatched key norms]). Invariant: its bits do not depend on the
// ISA (Note [key norm order]). Re-included per target by gqa/detail/core/targets.hpp (Note [per-target
// kernels]): a guard, no pragma once.
#ifndef GQA_DETAIL_CORE_KEY_NORMS_HPP
#define GQA_DETAIL_CORE_KEY_NORMS_HPP

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../../config.hpp"
#include "../../numeric.hpp"

GQA_BEGIN_NAMESPACE
namespace detail::core {

// Note [dispatched key norms]
// KDGQA (every call) and DGQA (every training window) read all of K once more for its per-head norms
// before the attention reads it: on D1's cache (16384 keys × 8 heads × 128) that walk is ~3 ms of
// memory time. A TU compiled without ISA flags used to run it as baseline x86-64 code, which the
// auto-vectoriser can only give SSE2: 6.6 ms for fp32 K, 6.2 ms for int8, 5.6 ms for bf16, against 3.0,
// 5.3 and 3.1 ms compiled for AVX-512 (Intel Xeon, 2026-12-04, one thread). gqa_bench, whose policies are
// compiled with each ISA's flags, did not show it. So the walk is compiled per target like the kernels
// and runs on the best ISA the CPU has (isa::best_runnable). Its result has the same bits on every ISA,
// so it ignores attention_options::isa and GQA_ISA, which choose the kernels' ISA for tests and
// comparisons: a norm walk can then neither throw for them nor differ with them.
/// Per KV head g: Σ_{ib in [0, seqs)} ||K_ib[:, g, :]||_F (Note [key norm order]), where sequence ib has
/// rows.length(ib) keys and key `is` of KV head g is the d elements at rows(ib, is, g) (stride `stride_d`;
/// read as floats through to_float). Isa only selects the per-target copy: the arithmetic is the same
/// plain loop on every ISA. The dense key_norms (every length k.s),
/// the paged cache's and the ragged batch's norms (each sequence's valid keys only) are this one loop, so
/// a sequence's keys give the same bits whichever form holds them.
template <class Isa, class Rows>
std::vector<double> key_norms_walk(index_t seqs, index_t h, index_t d, index_t stride_d, const Rows& rows) {
  // Note [key norm order]
  // Each (sequence, g) sum of squares is kept in 16 double lanes: lane l takes channels c with c % 16 == l
  // of every token, in token order; the lanes are then added in a fixed tree, and the sequences' square
  // roots in sequence order. A float squared is exact in double (24 + 24 < 53 bits), so each term costs one
  // rounding whether or not the compiler fuses it into an FMA, and the order is fixed by this code, not by
  // the ISA or the vectoriser: every build (scalar, AVX2, AVX-512, NEON, any thread count) gives the same
  // bits. A key that is not read adds nothing, and a zero key adds exactly +0 to every lane, so a sequence
  // zero-padded to any length has the bits of its valid keys alone. Sixteen independent chains also let
  // the compiler vectorise the loop: one sequential chain cost ~10 ms on a decode-sized cache (8192 tokens
  // × 8 heads × 128), more than the attention itself.
  constexpr index_t lanes = 16;
  const auto hkv = static_cast<std::size_t>(h);
  std::vector<double> norms(hkv, 0.0), sum_sq(hkv * lanes);
  const index_t dfull = d / lanes * lanes;
  for (index_t ib = 0; ib < seqs; ++ib) {
    std::fill(sum_sq.begin(), sum_sq.end(), 0.0);
    // Token-major walk: a BSHD cache (or a page) is read in address order.
    const index_t len = rows.length(ib);
    for (index_t is = 0; is < len; ++is)
      for (index_t g = 0; g < h; ++g) {
        const auto row = rows(ib, is, g);  // const float*, a 16-bit type widened by to_float, or q8_row
        double acc[lanes];
        std::copy_n(sum_sq.begin() + g * lanes, lanes, acc);
        auto add_squares = [&](auto stride) {  // stride: 1 (a constant, so the loop vectorises) or stride_d
          for (index_t c0 = 0; c0 < dfull; c0 += lanes)
            for (index_t l = 0; l < lanes; ++l) {
              const double x = static_cast<double>(to_float(row[(c0 + l) * stride]));
              acc[l] += x * x;
            }
          for (index_t l = 0; l < d - dfull; ++l) {
            const double x = static_cast<double>(to_float(row[(dfull + l) * stride]));
            acc[l] += x * x;
          }
        };
        if (stride_d == 1) {
          add_squares(std::integral_constant<index_t, 1>{});
        } else {
          add_squares(stride_d);
        }
        std::copy_n(acc, lanes, sum_sq.begin() + g * lanes);
      }
    for (std::size_t g = 0; g < hkv; ++g) {
      double t[lanes];
      std::copy_n(sum_sq.begin() + static_cast<std::ptrdiff_t>(g * lanes), lanes, t);
      for (index_t half = lanes / 2; half > 0; half /= 2)
        for (index_t l = 0; l < half; ++l) t[l] += t[l + half];
      norms[g] += std::sqrt(t[0]);
    }
  }
  return norms;
}

}  // namespace detail::core
GQA_END_NAMESPACE

#endif  // GQA_DETAIL_CORE_KEY_NORMS_HPP
