// gqa/detail/core/softmax.hpp: the online softmax: per-row running state (m, l, unnormalised O), its update
// by one block of scores, the merge of states computed over separate KV chunks, and the final row.
// Invariant: m is in log2 units (Note [base-2 softmax]); a row with m = −inf has seen no visible key and
// has l = 0 and O = 0 (Note [fully masked rows]); −inf − (−inf) is never formed.
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_DETAIL_CORE_SOFTMAX_HPP
#define GQA_DETAIL_CORE_SOFTMAX_HPP

#include <algorithm>
#include <cmath>

#include "../../isa/vec.hpp"
#include "../../isa/vec_math.hpp"
#include "common.hpp"

GQA_BEGIN_NAMESPACE
namespace detail::core {

// Note [base-2 softmax]
// Q is packed pre-multiplied by scale·log2(e), so scores are in log2 units and the softmax needs only
// exp2 (isa::exp2): p = 2^(s − m). The natural-log LSE is m·ln2 + ln(l).
//
// Note [fully masked rows]
// A row whose running max is still −inf has seen no visible key; its p stays 0 (we never form
// −inf − (−inf)). At the end l == 0 marks such rows: they are written as zeros and their LSE is −inf.

/// The running state of a set of rows: per row r the max m[r] (log2 units), the sum l[r] and the
/// unnormalised output o[r·dvp ..) (dvp: d_v padded to the vector width).
struct row_state {
  float* m;
  float* l;
  float* o;
};

template <class Isa>
struct online_softmax {
  using V = isa::vec<Isa>;
  static constexpr int L = V::lanes;

  /// 2^(m_old − m_new), the factor that carries a state whose max was m_old over to the max m_new >= m_old;
  /// 0 for a state that has seen no key (m_old = −inf, Note [fully masked rows]). The update (block to
  /// block) and the merge (chunk to chunk) both use it, so a chunk boundary rescales exactly like a block
  /// boundary, with the core's own exp2 (Note [exp accuracy]), never the C library's (whose last bit may
  /// differ between platforms).
  static float rescale(float m_old, float m_new) noexcept {
    return m_old == k_neg_inf ? 0.0f : isa::exp2_scalar(m_old - m_new);
  }

  /// One row's step over a block of n scores (n a multiple of L, masked scores −inf): updates (m, l),
  /// rescales the row's accumulator, and overwrites s with p = 2^(s − m_new). See Note [fully masked rows].
  static void update(float* s, index_t n, float& m, float& l, float* orow, index_t dvp) noexcept {
    auto vmax = V::set1(k_neg_inf);
    for (index_t j = 0; j < n; j += L) vmax = V::max(vmax, V::load(s + j));
    const float m_new = std::max(m, V::reduce_max(vmax));
    if (m_new == k_neg_inf) {
      std::fill(s, s + n, 0.0f);
      return;
    }
    const float alpha = rescale(m, m_new);
    const auto vm = V::set1(m_new);
    auto vsum = V::zero();
    for (index_t j = 0; j < n; j += L) {
      const auto p = isa::exp2<Isa>(V::sub(V::load(s + j), vm));
      V::store(s + j, p);
      vsum = V::add(vsum, p);
    }
    l = l * alpha + V::reduce_sum(vsum);
    m = m_new;
    if (alpha != 1.0f) {
      const auto va = V::set1(alpha);
      for (index_t c = 0; c < dvp; c += L) V::store(orow + c, V::mul(V::load(orow + c), va));
    }
  }

  /// out = the merge of the states part(0), …, part(n − 1) of the same `rows` rows, each over its own KV
  /// chunk, taken in chunk order (so the result does not depend on which thread computed which chunk):
  /// m = max_c m_c, l = Σ_c l_c·2^(m_c − m), O = Σ_c O_c·2^(m_c − m). See Note [decode split].
  template <class Part>
  static void merge(const Part& part, index_t n, index_t rows, index_t dvp, row_state out) noexcept {
    for (index_t r = 0; r < rows; ++r) {
      float& m = out.m[r];
      float& l = out.l[r];
      float* orow = out.o + r * dvp;
      m = k_neg_inf;
      for (index_t c = 0; c < n; ++c) m = std::max(m, part(c).m[r]);
      l = 0.0f;
      std::fill(orow, orow + dvp, 0.0f);
      if (m == k_neg_inf) continue;
      for (index_t c = 0; c < n; ++c) {
        const row_state p = part(c);
        if (p.m[r] == k_neg_inf) continue;  // saw no key: contributes nothing
        const float w = rescale(p.m[r], m);
        l += p.l[r] * w;
        const float* prow = p.o + r * dvp;
        for (index_t x = 0; x < dvp; ++x) orow[x] += prow[x] * w;
      }
    }
  }

  /// dst[0, dv) = the row's output o / l, or zeros for a fully masked row (l == 0).
  static void finish_row(const float* o, float l, index_t dv, float* dst) noexcept {
    if (l > 0.0f) {
      const float inv = 1.0f / l;
      for (index_t c = 0; c < dv; ++c) dst[c] = o[c] * inv;
    } else {
      for (index_t c = 0; c < dv; ++c) dst[c] = 0.0f;
    }
  }

  /// The row's natural-log log-sum-exp, −inf for a fully masked row.
  static float lse(float m, float l) noexcept { return l > 0.0f ? m * k_ln2 + std::log(l) : k_neg_inf; }
};

}  // namespace detail::core
GQA_END_NAMESPACE

#endif  // GQA_DETAIL_CORE_SOFTMAX_HPP
