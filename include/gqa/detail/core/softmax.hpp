// gqa/detail/core/softmax.hpp: the online softmax: per-row running state (m, l, unnormalised O), its update
// by one block of scores, the merge of states computed over separate KV chunks, and the final row.
// Invariant: m is in log2 units (Note [base-2 softmax]); a row with m = −inf has seen no finite score and
// has l = 0 and O = 0 unless a NaN reached it (Note [fully masked rows]); −inf − (−inf) is never formed;
// nothing here drops a NaN (Note [non-finite inputs]).
// Re-included per target by gqa/detail/core/targets.hpp (Note [per-target kernels]): a guard, no pragma once.
#ifndef GQA_DETAIL_CORE_SOFTMAX_HPP
#define GQA_DETAIL_CORE_SOFTMAX_HPP

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "../../isa/vec.hpp"
#include "../../isa/vec_math.hpp"
#include "../../numeric.hpp"
#include "common.hpp"

GQA_BEGIN_NAMESPACE
namespace detail::core {

// Note [base-2 softmax]
// Q is packed pre-multiplied by scale·log2(e), so scores are in log2 units and the softmax needs only
// exp2 (isa::exp2): p = 2^(s − m). The natural-log LSE is m·ln2 + ln(l).
//
// Note [fully masked rows]
// A row whose running max is still −inf has seen no finite score (masked scores are −inf); its p is
// 2^(s − 0) instead of 2^(s − m), which is 0 for −inf and NaN for NaN, so −inf − (−inf) is never formed
// and a NaN is not lost. Whether a row is fully masked is decided from the mask alone (the row's count of
// visible keys, `visible` below), never from l: a row with visible keys whose scores are all −inf ends
// with l = 0 and is NaN, as in a naive softmax; a row without visible keys is written as zeros with LSE
// −inf.
//
// Note [non-finite inputs]
// The core needs no test of its own for NaN or infinity: a NaN in Q or K makes a NaN score; a score of
// +inf makes the row max +inf and its own weight 2^(inf − inf) = NaN; exp2 keeps NaN (Note [exp
// accuracy]), sums and products keep it, so l and O of the row become NaN and stay NaN through every
// rescale and merge (rescale of a NaN or +inf max is NaN; a merge adds every chunk's l and O with
// weight 0 or more, never skipping one). A NaN in V reaches the output columns it is in through P·V
// (NaN·p is NaN even for p = 0, as in a naive softmax). What keeps a NaN from crossing a mask is that
// masked keys are never read or never enter P·V (Note [causal staircase]). The running max may or may
// not drop a NaN score (x86 max returns its second operand when either is NaN, NEON's propagates NaN),
// which changes nothing: the NaN score's weight is NaN either way.

// Note [softmax pipeline]
// The forward's row pass (tiled, direct and decode alike) runs the online softmax on a block's rows as a
// pipeline (update_rows): the max pass of row i + 4 runs inside the loop of row i's exp2 pass. The exp2
// pass keeps the two FMA pipes busy with its polynomial, and the max pass's loads and maxima fill the other
// pipes beside it, where alone they were a pass of their own on the path to every exp2 of the row. Each
// row computes exactly what it computed alone (update<1>: the same operations in the same order, so the
// same bits). Measured on the AMD EPYC (2 vCPUs, family 26, 2026-12-04, one thread): the softmax of 192
// rows of 208 scores timed alone, alternating 2000 times with the scheme it replaced, 1.20× faster (27.9 →
// 23.2 ns per row); the forward, two builds alternating process by process (same output bits): P3 1.035×
// (AVX-512, 11 pairs), 1.014× (AVX2, 9), two threads 1.022×, P1 1.016×, P2 1.017× (7 each), D1 1.005×
// (15). The scheme it replaced ran four rows at a time (their four max passes first, then each row's
// exp2 pass), which had made P3 1.02-1.04× faster than one row at a time on an Intel Xeon.

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

  /// Rows 0 .. R − 1 of a block of n scores each (row r at s + r·lds; n a multiple of L; masked scores
  /// −inf): updates (m[r], l[r]), rescales row r's accumulator o + r·dvp and overwrites its scores with
  /// p = 2^(s − m_new). See Note [fully masked rows] and Note [non-finite inputs]. update_rows with R rows.
  template <int R>
  static void update(float* s, index_t lds, index_t n, float* m, float* l, float* o, index_t dvp) noexcept {
    update_rows(s, lds, n, R, m, l, o, dvp, [](index_t) noexcept {}, [](index_t) noexcept {});
  }

  /// update() of rows 0 .. rows − 1, as a pipeline (Note [softmax pipeline]): before(r) runs before row r's
  /// scores are read (the forward's mask and score modifiers), after(r) once row r is done. Each row gets
  /// exactly the bits update<1>() gives it alone.
  template <class Before, class After>
  static void update_rows(float* s, index_t lds, index_t n, index_t rows, float* m, float* l, float* o, index_t dvp,
                          Before&& before, After&& after) noexcept {
    constexpr index_t ahead = 4;
    float m_new[ahead];  // row r's new max at m_new[r % ahead], from its max pass
    const auto max_of = [&](index_t r, typename V::reg vmax) noexcept { return std::max(m[r], V::reduce_max(vmax)); };
    for (index_t r = 0; r < std::min(ahead, rows); ++r) {
      before(r);
      const float* sr = s + r * lds;
      auto vmax = V::set1(k_neg_inf);
      for (index_t j = 0; j < n; j += L) vmax = V::max(vmax, V::load(sr + j));
      m_new[r] = max_of(r, vmax);
    }
    for (index_t r = 0; r < rows; ++r) {
      float* sr = s + r * lds;
      const float mr = m_new[r % ahead];
      const auto vm = V::set1(mr == k_neg_inf ? 0.0f : mr);
      auto vsum = V::zero();
      if (r + ahead < rows) {  // with the max pass of row r + ahead
        before(r + ahead);
        const float* sn = s + (r + ahead) * lds;
        auto vmax = V::set1(k_neg_inf);
        for (index_t j = 0; j < n; j += L) {
          vmax = V::max(vmax, V::load(sn + j));
          const auto p = isa::exp2_nonpositive<Isa>(V::sub(V::load(sr + j), vm));  // s − m ≤ 0 (Note [softmax exp2])
          V::store(sr + j, p);
          vsum = V::add(vsum, p);
        }
        m_new[r % ahead] = max_of(r + ahead, vmax);
      } else {
        for (index_t j = 0; j < n; j += L) {
          const auto p = isa::exp2_nonpositive<Isa>(V::sub(V::load(sr + j), vm));
          V::store(sr + j, p);
          vsum = V::add(vsum, p);
        }
      }
      const float alpha = mr == m[r] ? 1.0f : rescale(m[r], mr);  // exp2(0) is 1 exactly: the same bits
      l[r] = l[r] * alpha + V::reduce_sum(vsum);
      // A row that has seen no finite score (m = −inf, alpha = 0) holds O = +0 or NaN (only zero weights
      // so far: Note [fully masked rows]), which O · 0 leaves as it is: no rescale (the first block of
      // every row).
      const bool unseen = m[r] == k_neg_inf;
      m[r] = mr;
      if (alpha != 1.0f && !unseen) {
        const auto va = V::set1(alpha);
        float* orow = o + r * dvp;
        for (index_t c = 0; c < dvp; c += L) V::store(orow + c, V::mul(V::load(orow + c), va));
      }
      after(r);
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
      for (index_t c = 0; c < n; ++c) {
        const row_state p = part(c);
        const float w = rescale(p.m[r], m);  // 0 for a chunk without finite scores: adds its zeros (or NaN)
        l += p.l[r] * w;
        const float* prow = p.o + r * dvp;
        for (index_t x = 0; x < dvp; ++x) orow[x] += prow[x] * w;
      }
    }
  }

  /// dst[0, dv) = the row's output o / l, or zeros for a fully masked row (visible == false: the row sees
  /// no key). A row with visible keys and l = 0 (all its scores −inf) or l = NaN is NaN (o·(1/0) = 0·inf,
  /// Note [fully masked rows]). T: O's element type; a 16-bit O gets the fp32 value rounded once to
  /// nearest even (from_float; Note [16-bit Q/O]).
  template <class T>
  static void finish_row(const float* o, float l, bool visible, index_t dv, T* dst) noexcept {
    if (visible) {
      const float inv = 1.0f / l;
      if constexpr (std::is_same_v<T, float>) {  // a vector at a time (a plain loop does not vectorise at -O2)
        const auto vi = V::set1(inv);
        index_t c = 0;
        for (; c + L <= dv; c += L) V::store(dst + c, V::mul(V::load(o + c), vi));
        if (c < dv) V::store_partial(dst + c, V::mul(V::load(o + c), vi), static_cast<int>(dv - c));  // o: dvp floats
      } else {
        store_rounded(o, dv, dst, [inv](float x) noexcept { return x * inv; });
      }
    } else {
      for (index_t c = 0; c < dv; ++c) dst[c] = from_float<T>(0.0f);
    }
  }

  /// The row's natural-log log-sum-exp: −inf for a fully masked row, NaN for a row with visible keys and
  /// no positive weight (l = 0 or NaN: a NaN row).
  static float lse(float m, float l, bool visible) noexcept {
    if (!visible) return k_neg_inf;
    return l > 0.0f ? m * k_ln2 + std::log(l) : std::numeric_limits<float>::quiet_NaN();
  }
};

}  // namespace detail::core
GQA_END_NAMESPACE

#endif  // GQA_DETAIL_CORE_SOFTMAX_HPP
