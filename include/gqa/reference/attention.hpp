// gqa/reference/attention.hpp: the naive reference attention every kernel is tested against, and its
// gradients. Plain loops, double accumulation, the full score row materialised, an explicit per-query-head
// KV index: written independently of the core (no head_map, no tiles, no exp2, no online softmax, no LSE).
// Not part of gqa/gqa.hpp; slow by design (O(b·hq·sq·skv·d) with no blocking).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <vector>

#include "../config.hpp"
#include "../tensor.hpp"

GQA_BEGIN_NAMESPACE
namespace reference {

/// Output of reference::attention, in double. o is laid out [b][sq][hq][dv]; lse is [b][hq][sq]
/// (natural log; -inf for rows that see no key).
struct attention_result {
  index_t b = 0, sq = 0, hq = 0, dv = 0;
  std::vector<double> o;
  std::vector<double> lse;
  double out(index_t ib, index_t i, index_t h, index_t c) const {
    return o[static_cast<std::size_t>(((ib * sq + i) * hq + h) * dv + c)];
  }
  double log_sum_exp(index_t ib, index_t h, index_t i) const {
    return lse[static_cast<std::size_t>((ib * hq + h) * sq + i)];
  }
};

/// The optional masks and score modifiers of attention() (gqa::attention_options' fields of the same
/// names and meanings).
struct modifiers {
  index_t window_left = -1, window_right = -1;  ///< sliding window; -1: that side unbounded
  double softcap = 0.0;                          ///< logit s -> softcap·tanh(s / softcap); 0: off
  std::span<const float> sinks;                  ///< per query head: a logit in the denominator; empty: none
  std::span<const float> alibi_slopes;           ///< per query head: logit -= slope·|i + (L - sq) - j|; empty: none
};

/// The logit of scaled score s of query head h at `distance` = |p − j| (p the row's diagonal key, j the
/// key) after the modifiers: softcap·tanh(s / softcap) when softcap is on, then minus ALiBi's
/// slope·distance (after the softcap, bottom-right like causal).
inline double modified_logit(double s, const modifiers& mods, index_t h, index_t distance) {
  if (mods.softcap > 0.0) s = mods.softcap * std::tanh(s / mods.softcap);
  if (!mods.alibi_slopes.empty())
    s -= static_cast<double>(mods.alibi_slopes[static_cast<std::size_t>(h)]) * static_cast<double>(distance);
  return s;
}

/// Keys [lo, hi) that query i (of sq) sees among len valid keys: with p = i + (len - sq) (bottom-right),
/// j <= p when causal, p - window_left <= j <= p + window_right for each bounded side. hi <= lo: none.
struct key_range {
  index_t lo, hi;
};
inline key_range visible_keys(index_t i, index_t sq, index_t len, bool causal, const modifiers& mods) {
  const index_t p = i + (len - sq);
  index_t lo = 0, hi = 0;  // plainly, key by key: the first and one past the last visible key
  bool any = false;
  for (index_t j = 0; j < len; ++j) {
    const bool seen = (!causal || j <= p) && (mods.window_left < 0 || j >= p - mods.window_left) &&
                      (mods.window_right < 0 || j <= p + mods.window_right);
    if (seen && !any) lo = j;
    if (seen) hi = j + 1;
    any = any || seen;
  }
  return {lo, hi};
}

/// Implements attention() below: O[b,i,h] = Σ_j softmax_j(scale · Q[b,i,h]·K[b,j,kv_of_q[h]]) ·
/// V[b,j,kv_of_q[h]] over the visible keys j: j < L_b (L_b = kv_lengths[b], or skv when kv_lengths is empty) and, when causal, j <= i + (L_b - sq)
/// (bottom-right alignment), and inside the window of `mods` (visible_keys). Rows with no visible key are zero with LSE -inf.
/// Preconditions (not checked: this is test code): shapes consistent, kv_of_q.size() == q.h.
/// T is const float (the kernels' inputs) or const double (finite differences in double).
template <class T>
attention_result attention_impl(const tensor_view<T>& q, const tensor_view<T>& k, const tensor_view<T>& v,
                                std::span<const index_t> kv_of_q, double scale, bool causal,
                                std::span<const index_t> kv_lengths, const modifiers& mods) {
  attention_result r;
  r.b = q.b;
  r.sq = q.s;
  r.hq = q.h;
  r.dv = v.d;
  r.o.assign(static_cast<std::size_t>(q.b * q.s * q.h * v.d), 0.0);
  r.lse.assign(static_cast<std::size_t>(q.b * q.h * q.s), -std::numeric_limits<double>::infinity());
  std::vector<double> s(static_cast<std::size_t>(k.s)), acc(static_cast<std::size_t>(v.d));
  for (index_t ib = 0; ib < q.b; ++ib) {
    const index_t len = kv_lengths.empty() ? k.s : kv_lengths[static_cast<std::size_t>(ib)];
    for (index_t h = 0; h < q.h; ++h) {
      const index_t g = kv_of_q[static_cast<std::size_t>(h)];
      for (index_t i = 0; i < q.s; ++i) {
        const auto [lo, hi] = visible_keys(i, q.s, len, causal, mods);
        // A sink: a logit with no value row, in the max and the denominator only.
        const bool has_sink = !mods.sinks.empty();
        const double sink = has_sink ? static_cast<double>(mods.sinks[static_cast<std::size_t>(h)]) : 0.0;
        if (hi <= lo) {
          if (has_sink) r.lse[static_cast<std::size_t>((ib * q.h + h) * q.s + i)] = sink;
          continue;
        }
        double m = has_sink ? sink : -std::numeric_limits<double>::infinity();
        for (index_t j = lo; j < hi; ++j) {
          double dot = 0.0;
          for (index_t c = 0; c < q.d; ++c) dot += static_cast<double>(q(ib, i, h, c)) * static_cast<double>(k(ib, j, g, c));
          const double logit = modified_logit(dot * scale, mods, h, std::abs(i + (len - q.s) - j));
          s[static_cast<std::size_t>(j)] = logit;
          m = std::max(m, logit);
        }
        double l = has_sink ? std::exp(sink - m) : 0.0;
        for (index_t j = lo; j < hi; ++j) l += (s[static_cast<std::size_t>(j)] = std::exp(s[static_cast<std::size_t>(j)] - m));
        // Key by key over whole V rows: every output element sums its keys in the same order as a loop over
        // the keys per element, but V is read once, row after row (a column walk per element missed the
        // cache on every key of a wide V).
        std::fill(acc.begin(), acc.end(), 0.0);
        for (index_t j = lo; j < hi; ++j) {
          const double w = s[static_cast<std::size_t>(j)];
          for (index_t c = 0; c < v.d; ++c) acc[static_cast<std::size_t>(c)] += w * static_cast<double>(v(ib, j, g, c));
        }
        for (index_t c = 0; c < v.d; ++c)
          r.o[static_cast<std::size_t>(((ib * q.s + i) * q.h + h) * v.d + c)] = acc[static_cast<std::size_t>(c)] / l;
        r.lse[static_cast<std::size_t>((ib * q.h + h) * q.s + i)] = m + std::log(l);
      }
    }
  }
  return r;
}

/// O[b,i,h] = Σ_j softmax_j(scale · Q[b,i,h]·K[b,j,kv_of_q[h]]) · V[b,j,kv_of_q[h]] over the visible keys
/// (see attention_impl), on float inputs.
inline attention_result attention(const tensor_view<const float>& q, const tensor_view<const float>& k,
                                  const tensor_view<const float>& v, std::span<const index_t> kv_of_q, double scale,
                                  bool causal, std::span<const index_t> kv_lengths = {}, const modifiers& mods = {}) {
  return attention_impl(q, k, v, kv_of_q, scale, causal, kv_lengths, mods);
}
/// The same on double inputs (finite differences).
inline attention_result attention(const tensor_view<const double>& q, const tensor_view<const double>& k,
                                  const tensor_view<const double>& v, std::span<const index_t> kv_of_q, double scale,
                                  bool causal, std::span<const index_t> kv_lengths = {}, const modifiers& mods = {}) {
  return attention_impl(q, k, v, kv_of_q, scale, causal, kv_lengths, mods);
}

/// Gradients of reference::attention, in double, each laid out like its tensor in logical order:
/// dq [b][sq][hq][d], dk [b][skv][hkv][d], dv [b][skv][hkv][dv], and dsinks [hq] (empty without sinks); and,
/// in the same layouts, the sum of the magnitudes of the terms summed into each element (a floating-point
/// sum's rounding scales with these, not with the result when its terms cancel): dq Σ_j |scale|·P_j·
/// (|dP_j| + |D|)·c_j·|K_j| (c_j = 1 − tanh² of the softcap's argument, else 1), dk the same over rows with
/// |Q|, dv Σ P·|dout|, dsinks Σ_i P_sink,i·Σ_c |dout_ic·O_ic|.
struct attention_grads {
  std::vector<double> dq, dk, dv, dsinks;
  std::vector<double> dq_terms, dk_terms, dv_terms, dsinks_terms;
};

/// ∂L/∂Q, ∂L/∂K, ∂L/∂V (and ∂L/∂sinks) of O = attention(q, k, v, kv_of_q, scale, causal, kv_lengths, mods)
/// for L = Σ dout ∘ O, by the textbook softmax derivative, row by row over the row's visible keys
/// (visible_keys): z_j = scale·Q·K_j, the logit x_j = softcap·tanh(z_j / softcap) (or z_j) − slope·|p − j|,
/// P recomputed exactly as attention() does (max subtracted, normalised by the row sum, the sink in both),
/// O = P·V, D = dout·O, dP_j = dout·V_j, dx_j = P_j·(dP_j − D), dz_j = dx_j·(1 − tanh²(z_j / softcap)) (or
/// dx_j), dQ = scale·Σ_j dz_j K_j, dK_j += scale·dz_j·Q, dV_j += P_j·dout, dsinks[h] −= P_sink·D with
/// P_sink = e^(sink − m) / l. Nothing is shared with the kernel (no LSE input, no blocks, no exp2). Rows that
/// see no key contribute nothing (their O is 0 whatever the sink); KV heads no query head maps to, and keys
/// no row sees, get zero; the ALiBi slopes get no gradient. dout is (b, sq, hq, dv) like O. Preconditions
/// as attention() (not checked: test code).
inline attention_grads attention_backward(const tensor_view<const double>& q, const tensor_view<const double>& k,
                                          const tensor_view<const double>& v, const tensor_view<const double>& dout,
                                          std::span<const index_t> kv_of_q, double scale, bool causal,
                                          std::span<const index_t> kv_lengths = {}, const modifiers& mods = {}) {
  attention_grads r;
  r.dq.assign(static_cast<std::size_t>(q.b * q.s * q.h * q.d), 0.0);
  r.dk.assign(static_cast<std::size_t>(k.b * k.s * k.h * k.d), 0.0);
  r.dv.assign(static_cast<std::size_t>(v.b * v.s * v.h * v.d), 0.0);
  r.dsinks.assign(mods.sinks.size(), 0.0);
  r.dq_terms = r.dq;
  r.dk_terms = r.dk;
  r.dv_terms = r.dv;
  r.dsinks_terms = r.dsinks;
  auto at = [](index_t ib, index_t is, index_t ih, index_t c, index_t s, index_t h, index_t d) {
    return static_cast<std::size_t>(((ib * s + is) * h + ih) * d + c);
  };
  const bool has_sink = !mods.sinks.empty();
  std::vector<double> z(static_cast<std::size_t>(k.s)), p(static_cast<std::size_t>(k.s)), o(static_cast<std::size_t>(v.d));
  for (index_t ib = 0; ib < q.b; ++ib) {
    const index_t len = kv_lengths.empty() ? k.s : kv_lengths[static_cast<std::size_t>(ib)];
    for (index_t h = 0; h < q.h; ++h) {
      const index_t g = kv_of_q[static_cast<std::size_t>(h)];
      const double sink = has_sink ? static_cast<double>(mods.sinks[static_cast<std::size_t>(h)]) : 0.0;
      for (index_t i = 0; i < q.s; ++i) {
        const auto [lo, hi] = visible_keys(i, q.s, len, causal, mods);
        if (hi <= lo) continue;
        double m = has_sink ? sink : -std::numeric_limits<double>::infinity();
        for (index_t j = lo; j < hi; ++j) {
          double dot = 0.0;
          for (index_t c = 0; c < q.d; ++c) dot += q(ib, i, h, c) * k(ib, j, g, c);
          const auto jj = static_cast<std::size_t>(j);
          z[jj] = dot * scale;
          const double logit = modified_logit(z[jj], mods, h, std::abs(i + (len - q.s) - j));
          p[jj] = logit;
          m = std::max(m, logit);
        }
        double l = has_sink ? std::exp(sink - m) : 0.0;
        for (index_t j = lo; j < hi; ++j) l += (p[static_cast<std::size_t>(j)] = std::exp(p[static_cast<std::size_t>(j)] - m));
        for (index_t j = lo; j < hi; ++j) p[static_cast<std::size_t>(j)] /= l;
        double dsum = 0.0, dsum_terms = 0.0;  // dout · O, and Σ |dout ∘ O|
        std::fill(o.begin(), o.end(), 0.0);  // O row, key by key over the V rows (as in attention_impl)
        for (index_t j = lo; j < hi; ++j) {
          const double pj = p[static_cast<std::size_t>(j)];
          for (index_t c = 0; c < v.d; ++c) o[static_cast<std::size_t>(c)] += pj * v(ib, j, g, c);
        }
        for (index_t c = 0; c < v.d; ++c) {
          const double oc = o[static_cast<std::size_t>(c)];
          dsum += dout(ib, i, h, c) * oc;
          dsum_terms += std::fabs(dout(ib, i, h, c) * oc);
        }
        if (has_sink) {
          const double psink = std::exp(sink - m) / l;
          r.dsinks[static_cast<std::size_t>(h)] -= psink * dsum;
          r.dsinks_terms[static_cast<std::size_t>(h)] += psink * dsum_terms;
        }
        for (index_t j = lo; j < hi; ++j) {
          const double pj = p[static_cast<std::size_t>(j)];
          double dp = 0.0;
          for (index_t c = 0; c < v.d; ++c) dp += dout(ib, i, h, c) * v(ib, j, g, c);
          double dz = pj * (dp - dsum);  // ∂L/∂z_j
          double cap = 1.0;              // ∂x_j/∂z_j
          if (mods.softcap > 0.0) {
            const double t = std::tanh(z[static_cast<std::size_t>(j)] / mods.softcap);
            cap = 1.0 - t * t;
            dz *= cap;
          }
          const double ds_terms = std::fabs(scale) * pj * (std::fabs(dp) + std::fabs(dsum)) * cap;
          for (index_t c = 0; c < q.d; ++c) {
            r.dq[at(ib, i, h, c, q.s, q.h, q.d)] += scale * dz * k(ib, j, g, c);
            r.dk[at(ib, j, g, c, k.s, k.h, k.d)] += scale * dz * q(ib, i, h, c);
            r.dq_terms[at(ib, i, h, c, q.s, q.h, q.d)] += ds_terms * std::fabs(k(ib, j, g, c));
            r.dk_terms[at(ib, j, g, c, k.s, k.h, k.d)] += ds_terms * std::fabs(q(ib, i, h, c));
          }
          for (index_t c = 0; c < v.d; ++c) {
            r.dv[at(ib, j, g, c, v.s, v.h, v.d)] += pj * dout(ib, i, h, c);
            r.dv_terms[at(ib, j, g, c, v.s, v.h, v.d)] += pj * std::fabs(dout(ib, i, h, c));
          }
        }
      }
    }
  }
  return r;
}

}  // namespace reference
GQA_END_NAMESPACE
