// tests/support/tolerance.hpp: the error budget of every attention test against the double reference
// (Note [attention tolerance]; Note [16-bit K/V tolerance] for bf16/f16 K and V, Note [int8 K/V
// tolerance] for an int8 cache; Note [bf16 products tolerance] for bf16 Q/K/V on the bf16 tiles; Note
// [backward tolerance] for gradients): a naive fp32 attention (and
// backward) on the same inputs, and the bound it gives.
// Internal linkage (anonymous namespace): suite headers include this once per ISA, with that ISA's flags
// (the functions are [[maybe_unused]]: not every suite calls each).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <vector>

#include <gqa/numeric.hpp>
#include <gqa/reference/attention.hpp>
#include <gqa/tensor.hpp>

namespace gqa::test {
namespace {

// Note [attention tolerance]
// flash-attn's error budget (STYLE Part 2, item 10): for each case, the kernel's largest absolute error
// against the double reference may be at most twice that of a naive fp32 attention on the same inputs
// (naive_fp32 below: float dot products summed in order, std::exp after subtracting the row max, float
// sums), plus a floor:
//   max|O − O_ref| ≤ 2 · max|O_naive − O_ref| + 1e-6 · max(1, max|V|)
//   max|LSE − LSE_ref| ≤ 2 · max|LSE_naive − LSE_ref| + 1e-6 · max(1, max|LSE_ref|)
// Why this is the right yardstick: both errors come from the same fp32 roundings (a dot product over
// d_qk, a softmax sum and a P·V sum over the visible keys), so they grow together with d, skv and the
// score magnitude, and the bound follows them from d = 1 to the MLA shape and to scale-10 scores. The
// factor 2 covers the kernel's different but equally long sums (blocked, rescaled, merged across split-KV
// chunks) and its exp2 (≤ 1.23 u, Note [exp accuracy], against std::exp's 0.5 u). The floor is ~17 u of
// the output's scale: it only matters when the naive error happens to be tiny (d = 1, one key), where
// the kernel's few extra roundings (q pre-scaled by scale·log2e, the exp2 polynomial) are all it has.
// Every real bug seen so far (a row masked one key too early or late, a wrong head, a missed rescale)
// makes errors of 1e-3 or more, far above both terms.
// Ill-conditioned cases (scores of magnitude 1e4 and more: any fp32 score is then off by ~u·|s|·√d, i.e.
// 1e-3 or more, and near-ties turn that into output errors of ~1e-3·max|V| in a few rows for the kernel
// and the naive code alike, at different rows) compare MEAN absolute errors with the same factor and
// floor, since the maximum is a lottery over those few rows, and a factor 4 instead of 2: the kernel
// holds scores in log2 units (Note [base-2 softmax]), 1.44× larger than the naive code's, so up to one
// binade coarser in fp32, which doubles the score rounding that dominates these cases (measured: a naive
// code that pre-scales q by scale·log2(e) and uses exp2 has exactly the kernel's errors). They also
// require every output to lie in the range of the visible values (a convex combination), which any
// rescaling bug breaks.
constexpr double k_error_factor = 2.0;
constexpr double k_error_factor_ill_conditioned = 4.0;
constexpr double k_error_floor = 1e-6;

// Note [16-bit K/V tolerance]
// With K and V stored as bf16 or f16 (gqa/numeric.hpp) the rule above is extended, not loosened: the
// double reference and the naive fp32 yardstick are fed the SAME rounded K/V, i.e. the 16-bit values
// widened to float (exact: every bf16 and f16 value is a float; rounded_kv() below), and the kernel's
// output must lie within 2 · (naive error) + floor of that reference, as in Note [attention tolerance].
// This is FlashAttention's low-precision rule (a multiple of a naive same-precision attention's error,
// the naive attention fed the same low-precision inputs) with gqa's precision split: storage 16-bit,
// arithmetic fp32 (Note [16-bit K/V] in detail/core/layout.hpp), so the same-precision naive attention is
// naive_fp32 on the widened values and the factor and floor stay 2 and 1e-6. The error of rounding K/V
// to 16 bits (up to 2^-9 relative per element for bf16, 2^-12 for f16, carried into the scores through
// a d-long dot product) is the caller's choice of storage, not the kernel's: it is not part of the
// budget. The tests also require the stronger property the core's design gives: a 16-bit call returns
// bit for bit what the same call returns on the widened float K/V, on every ISA and path (so the fp32
// tests cover the 16-bit calls too, and NaN/inf behave as Note [non-finite inputs] says for fp32).

// Note [int8 K/V tolerance]
// An int8 cache (gqa::q8_view) is tested the same way: the double reference and the naive fp32 yardstick
// are fed the floats the cache stands for, scale · q rounded once to fp32 (gqa::dequantize_q8), and the
// int8 call must lie within 2 · (naive error) + floor of that reference. The quantisation error (up to
// half a step, scale / 2, per element) is the caller's choice of storage, as rounding to 16 bits is.
// Against the fp32 call on the dequantised K/V the int8 call is held to the same budget, 2 · (naive
// error) + floor, on every path: the direct and decode paths apply the scales to the int8 dot product
// (sk · Σ q·k8) and to the probability ((p · sv) · v8), one rounding each that the fp32 call spends
// elsewhere (Σ q·(sk·k8)), so they agree to rounding, not bit for bit; the tiled path dequantises while
// packing, and there the two calls are equal bit for bit, which the tests require for shapes whose every
// task is tiled (Note [int8 K/V] in detail/core/layout.hpp).

// Note [int8 products tolerance]
// With options.int8_products (on by default) a decode call on an int8 cache quantises each Q row by
// gqa::quantize_q8's rule and multiplies it with the int8 K rows in integers (Note [int8 decode products] in
// detail/core/decode.hpp). That rounding of Q (up to half a step, max|q| / 254, per element) is, like the
// cache's, a choice of storage precision, not the kernel's arithmetic: the reference and the naive yardstick
// are fed the quantised Q (quantize_q8 then dequantize_q8 on Q's rows) and the dequantised K/V, and the
// call must lie within 2 · (naive error) + floor of that reference, Note [int8 K/V tolerance]'s rule
// unchanged. The integer sums are exact; the scores take one fp32 product of the sum by the row's factor
// (scale · log2(e) · Q's scale) and one by K's scale, against the d roundings of the naive fp32 dot
// product, so the budget is no looser than the fp32 products'. Where the products do not run (prefill
// tasks, one serving KV head, other ISAs, a task whose Q holds NaN or inf) the call must return the bits of
// the same call with the option off.

// Note [int8 P·V tolerance]
// With options.int8_products a decode call on an int8 cache also computes P·V in integers (Note [int8 decode
// P·V] in detail/core/decode.hpp): per row and chunk of at most 64 consecutive keys, each weight times its
// V row's scale, p_j·s_j, is rounded to a multiple of δ = max_chunk |p·s| / 32767 (half a step at most),
// the int8 values are multiplied by those integers exactly and the sum comes back times δ. Like the rounding
// of Q, that is a choice of precision, not arithmetic error, so it is budgeted as a bound on top of Note
// [int8 products tolerance]'s rule: in the row's final weights a_k (softmax, double), the error it adds to
// an output is at most Σ_j (δ_j / 2) · |q_j[c]| with q_j the int8 values (|q_j[c]| · s_j = |V_j[c]|), and
// δ_j ≤ max_{k visible, |k − j| < 64} a_k·s_k / 32767 whichever 64-key chunk holds j. So each row may add
//   Σ_j max_{k visible, |k − j| < 64} a_k · max_c |V_k[c]| / 32767
// (twice the half step: room for the fp32 roundings of the scale, the factor and the int32 sum's
// conversion). With flat weights over n keys that is a few times 2^-15 · max|V|, against the fp32
// products' ~2^-24 · √n; a key masked off by one in a row of 2100 keys (~1/2100 of |V|) stays above it.

/// The bound of Note [int8 P·V tolerance], the largest over every row (batch, query position, query head
/// h) and KV head kv_of_q[h] (every KV head when kv_of_q is empty: a policy may allocate any), with the
/// reference's masks and modifiers, on the values the call multiplies (the quantised Q, the dequantised
/// K/V). Non-finite scores or values add nothing (their rows' rules are exact, not budgeted).
[[maybe_unused]] double int8_pv_bound(const gqa::tensor_view<const float>& q, const gqa::tensor_view<const float>& k,
                                      const gqa::tensor_view<const float>& v, std::span<const gqa::index_t> kv_of_q,
                                      double scale, bool causal = false, std::span<const gqa::index_t> kv_lengths = {},
                                      const gqa::reference::modifiers& mods = {}) {
  using gqa::index_t;
  constexpr index_t W = 64;  // the chunk: i8_decode's pv_chunk
  double worst = 0.0;
  std::vector<double> a(static_cast<std::size_t>(k.s)), vmax(static_cast<std::size_t>(k.s));
  for (index_t ib = 0; ib < q.b; ++ib) {
    const index_t len = kv_lengths.empty() ? k.s : kv_lengths[static_cast<std::size_t>(ib)];
    for (index_t h = 0; h < q.h; ++h)
      for (index_t g = 0; g < k.h; ++g) {
        if (!kv_of_q.empty() && kv_of_q[static_cast<std::size_t>(h)] != g) continue;
        for (index_t i = 0; i < q.s; ++i) {
          const auto [lo, hi] = gqa::reference::visible_keys(i, q.s, len, causal, mods);
          if (hi <= lo) continue;
          double m = mods.sinks.empty() ? -std::numeric_limits<double>::infinity()
                                        : static_cast<double>(mods.sinks[static_cast<std::size_t>(h)]);
          for (index_t j = lo; j < hi; ++j) {
            double dot = 0.0;
            for (index_t x = 0; x < q.d; ++x) dot += static_cast<double>(q(ib, i, h, x)) * static_cast<double>(k(ib, j, g, x));
            a[static_cast<std::size_t>(j)] = gqa::reference::modified_logit(dot * scale, mods, h, std::abs(i + (len - q.s) - j));
            if (std::isfinite(a[static_cast<std::size_t>(j)])) m = std::max(m, a[static_cast<std::size_t>(j)]);
            double vm = 0.0;
            for (index_t x = 0; x < v.d; ++x) {
              const double e = std::fabs(static_cast<double>(v(ib, j, g, x)));
              if (std::isfinite(e)) vm = std::max(vm, e);
            }
            vmax[static_cast<std::size_t>(j)] = vm;
          }
          if (!std::isfinite(m)) continue;
          double l = mods.sinks.empty() ? 0.0 : std::exp(static_cast<double>(mods.sinks[static_cast<std::size_t>(h)]) - m);
          for (index_t j = lo; j < hi; ++j) {
            double& x = a[static_cast<std::size_t>(j)];
            x = std::isfinite(x) ? std::exp(x - m) : 0.0;
            l += x;
          }
          double sum = 0.0;
          for (index_t j = lo; j < hi; ++j) {
            double mj = 0.0;
            for (index_t kk = std::max(lo, j - W + 1); kk < std::min(hi, j + W); ++kk)
              mj = std::max(mj, a[static_cast<std::size_t>(kk)] / l * vmax[static_cast<std::size_t>(kk)]);
            sum += mj;
          }
          worst = std::max(worst, sum / 32767.0);
        }
      }
  }
  return worst;
}

// Note [bf16 products tolerance]
// With bf16 Q, K, V and O on a CPU with AMX-BF16, the AVX-512 core's prefill multiplies in bf16 (Note [bf16
// tiles] in detail/core/bf16_tiles.hpp): Q·Kᵀ of the bf16 inputs summed in fp32 (the same products as
// fp32's, exactly, in another order), then P rounded to bf16 for P·V (relative error up to 2^-9 per
// weight), fp32 sums, l from the fp32 P. The same-precision naive attention is therefore naive_fp32 on the
// widened inputs with each weight rounded to bf16 before its product with V (`bf16_weights`), and the rule
// of Note [attention tolerance] applies to it unchanged: the call's fp32 result may be off the double
// reference by 2 · max|O_naive − O_ref| + 1e-6 · max(1, max|V|). The call returns that result rounded
// once to bf16, which adds at most half a bf16 unit in the last place of each output (the caller's choice
// of storage, as rounding K/V is): each output element's error is taken net of half its ulp
// (bf16_output_excess). The LSE (fp32, from the fp32 l) keeps Note [attention tolerance]'s rule. The
// naive error here is ~2^-9 · |V| / √(visible keys) (the rounded weights) against ~2^-24 · √d for
// naive_fp32, so these tests are ~10^3 times looser than the fp32 products' bitwise ones, which still
// run with options.bf16_products = false; every bug the fp32 tests have caught (a row masked one key off,
// a wrong head, a missed rescale) gives errors of 1e-2 or more here, above the bound.

/// x rounded to element type T (bf16 or f16) and widened back to float: the values a 16-bit K/V holds.
template <class T>
[[maybe_unused]] std::vector<float> rounded_kv(const std::vector<float>& x) {
  std::vector<float> r(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) r[i] = gqa::to_float(T(x[i]));
  return r;
}

/// Output of naive_fp32, laid out like reference::attention_result: o [b][sq][hq][dv], lse [b][hq][sq]
/// (natural log; rows that see no key are 0 with LSE -inf).
struct naive_attention {
  std::vector<float> o;
  std::vector<float> lse;
};

/// The naive fp32 attention of Note [attention tolerance], written like reference::attention (same
/// arguments, same masks and modifiers) but in float: dot products summed in order, std::exp after subtracting the row
/// max, float sums. Any strides; reads only the views' elements.
[[maybe_unused]] naive_attention naive_fp32(const gqa::tensor_view<const float>& q, const gqa::tensor_view<const float>& k,
                           const gqa::tensor_view<const float>& v, std::span<const gqa::index_t> kv_of_q, float scale,
                           bool causal = false, std::span<const gqa::index_t> kv_lengths = {},
                           const gqa::reference::modifiers& mods = {}, bool bf16_weights = false) {
  using gqa::index_t;
  naive_attention r;
  r.o.assign(static_cast<std::size_t>(q.b * q.s * q.h * v.d), 0.0f);
  r.lse.assign(static_cast<std::size_t>(q.b * q.h * q.s), -std::numeric_limits<float>::infinity());
  std::vector<float> s(static_cast<std::size_t>(k.s)), acc(static_cast<std::size_t>(v.d));
  for (index_t ib = 0; ib < q.b; ++ib) {
    const index_t len = kv_lengths.empty() ? k.s : kv_lengths[static_cast<std::size_t>(ib)];
    for (index_t h = 0; h < q.h; ++h) {
      const index_t g = kv_of_q[static_cast<std::size_t>(h)];
      for (index_t i = 0; i < q.s; ++i) {
        const auto [lo, hi] = gqa::reference::visible_keys(i, q.s, len, causal, mods);
        const bool has_sink = !mods.sinks.empty();
        const float sink = has_sink ? mods.sinks[static_cast<std::size_t>(h)] : 0.0f;
        if (hi <= lo) {
          if (has_sink) r.lse[static_cast<std::size_t>((ib * q.h + h) * q.s + i)] = sink;
          continue;
        }
        float m = has_sink ? sink : -std::numeric_limits<float>::infinity();
        for (index_t j = lo; j < hi; ++j) {
          float dot = 0.0f;
          for (index_t x = 0; x < q.d; ++x) dot += q(ib, i, h, x) * k(ib, j, g, x);
          float logit = dot * scale;
          if (mods.softcap > 0.0) {
            const auto cap = static_cast<float>(mods.softcap);
            logit = cap * std::tanh(logit / cap);
          }
          if (!mods.alibi_slopes.empty())
            logit -= mods.alibi_slopes[static_cast<std::size_t>(h)] * static_cast<float>(std::abs(i + (len - q.s) - j));
          s[static_cast<std::size_t>(j)] = logit;
          m = std::max(m, logit);
        }
        float l = has_sink ? std::exp(sink - m) : 0.0f;
        for (index_t j = lo; j < hi; ++j) l += (s[static_cast<std::size_t>(j)] = std::exp(s[static_cast<std::size_t>(j)] - m));
        // Key by key over whole V rows (per element the same order as a loop over the keys; V read once)
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (index_t j = lo; j < hi; ++j) {
          const float p = s[static_cast<std::size_t>(j)];  // bf16_weights: Note [bf16 products tolerance]
          const float w = bf16_weights ? gqa::to_float(gqa::bf16(p)) : p;
          for (index_t x = 0; x < v.d; ++x) acc[static_cast<std::size_t>(x)] += w * v(ib, j, g, x);
        }
        for (index_t x = 0; x < v.d; ++x)
          r.o[static_cast<std::size_t>(((ib * q.s + i) * q.h + h) * v.d + x)] = acc[static_cast<std::size_t>(x)] / l;
        r.lse[static_cast<std::size_t>((ib * q.h + h) * q.s + i)] = m + std::log(l);
      }
    }
  }
  return r;
}

/// The largest error of the bf16 outputs o (widened) against ref, each net of half a bf16 unit in the last
/// place of the output (Note [bf16 products tolerance]); 0 when every output is within its rounding.
[[maybe_unused]] double bf16_output_excess(const std::vector<float>& o, const std::vector<double>& ref) {
  double worst = 0.0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double a = std::fabs(static_cast<double>(o[i]));
    const double half_ulp = a > 0.0 ? std::ldexp(1.0, std::ilogb(a) - 8) : 0.0;  // bf16: 8 significant bits
    worst = std::max(worst, std::fabs(static_cast<double>(o[i]) - ref[i]) - half_ulp);
  }
  return worst;
}

/// Rows that see no key must be exactly +0 (not -0, not NaN): true for +0 only.
[[maybe_unused]] bool is_plus_zero(float x) { return x == 0.0f && !std::signbit(x); }

/// Note [attention tolerance] for an output: 2 · max|O_naive − O_ref| + 1e-6 · max(1, max|V|), with
/// naive and ref in the same layout and v every value the attention may read.
[[maybe_unused]] double attention_tolerance(const std::vector<float>& naive, const std::vector<double>& ref, const std::vector<float>& v) {
  double err = 0.0, vmax = 1.0;
  for (std::size_t i = 0; i < ref.size(); ++i) err = std::max(err, std::fabs(static_cast<double>(naive[i]) - ref[i]));
  for (const float x : v) vmax = std::max(vmax, static_cast<double>(std::fabs(x)));
  return k_error_factor * err + k_error_floor * vmax;
}

// Note [backward tolerance]
// The same budget as Note [attention tolerance], for gradients, plus a floor per element for sums whose
// terms cancel. Each element of dQ, dK, dV may be off the double reference (reference::attention_backward,
// which recomputes everything exactly from q, k, v, dout) by at most
//   2 · max|dX_naive − dX_ref| + 1e-6 · max(1, max|dX_ref|) + 2u · T,
// with dX_naive a naive fp32 backward's gradient on the same inputs, u = 2⁻²⁴ and T the sum of the
// magnitudes of the terms summed into that element (attention_grads::*_terms; e.g. Σ P·|dO| for dV).
// The naive backward (naive_fp32_backward below) is what the kernel computes, written plainly: it takes
// the forward's fp32 O and LSE, as the kernel does, and in float recomputes P = exp(scale·q·k − LSE),
// dP = dO·V, D = dO·O, dS = P·(dP − D), then sums dQ = scale·Σ dS·K, dK = scale·Σ dS·Q and dV = Σ P·dO in
// index order. Both inherit the forward's rounding (O and LSE are fp32) and make the same kinds of
// roundings after it (dot products over d and d_v, a subtraction dP − D that cancels when P is peaked,
// sums over the rows or keys), so their errors grow together with d, the sequence lengths and the score
// magnitude; the factor 2 covers the kernel's different but equally long sums (blocked over KV blocks and
// query blocks) and its exp2. The first floor (~17 u of the gradient's scale) matters when the naive
// error happens to be tiny. The second covers cancellation: a gradient summed over many rows (dV of one
// key over 1040 rows, ~1 while its partial sums reach ~20) is off by the rounding of its partial sums,
// which two summation orders hit differently; with few elements to take the maximum over, the naive
// order can be several times luckier than the kernel's (measured: 4.7× on one such element), and 2u·T is
// the size of those roundings, far below any real bug. Every real bug (a wrong row's LSE, a mask one key
// off, a group summed into the wrong KV head, a missed scale) gives errors of 1e-3 of the gradient's
// scale or more. The sinks' gradient (dsinks, one sum per head over its rows) takes the same bound, its
// naive value summed in float in index order and T = Σ_i P_sink,i·Σ_c |dO_ic·O_ic|.

// Note [bf16 backward tolerance]
// With bf16 Q, K, V, O and dO and options.bf16_products, where VDPBF16PS is the engine, the backward runs
// its five products in bf16 with fp32 sums (Note [bf16 backward] in detail/core/backward.hpp): S and dP on
// the inputs as they are (exact products, another order of fp32 sums), dV from P rounded to bf16, dK and
// dQ from scale·dS rounded to bf16 (relative error up to 2^-9 per term). The same-precision naive backward
// is therefore naive_fp32_backward on the widened inputs with those two roundings (`bf16_weights`). But a
// call with bf16_products need not take them everywhere: an ISA or CPU without a fast bf16 product keeps
// the fp32 products, and the one that has it takes fp32 for the blocks a mask cuts. So the bound covers
// either computation and any mix of the two, by the triangle inequality: with n32 and n16 the naive
// backward without and with the two roundings,
//   2 · (max|n32 − ref| + max|n16 − n32|) + 1e-6 of the gradient's scale + 2u · the terms,
// which is at least 2 · max|n16 − ref| (the bf16 products' own bound) and at least 2 · max|n32 − ref|
// (the fp32 products', Note [backward tolerance]). n16's error alone is not enough: it need not exceed
// n32's. With 16-bit O, the D = dO·O both inherit carries O's bf16 rounding, which the
// fp32 products keep whole while n16's roundings may partly cancel it: the fuzzer found a call (causal,
// ALiBi, 2 keys, d 32, d_v 128) whose fp32 dQ was off by 6.0e-4, with n16 off by at most 1.1e-4 (2026-12-07;
// the bound on n16 alone failed it). |n16 − n32| is ~2^-9 of a gradient's terms over √(terms) against
// ~2^-24 · √d for n32's error, so the bound is ~10^3 looser than the fp32 products' bitwise check (which
// runs with options.bf16_products = false); a row masked one key off, a wrong head's LSE or a missed scale
// gives errors of 1e-2 of the gradient's scale or more, above it.

/// Output of naive_fp32_backward, each in logical [b][s][h][d] order of its tensor, and dsinks [hq].
struct naive_gradients {
  std::vector<float> dq, dk, dv, dsinks;
};

/// The naive fp32 backward of Note [backward tolerance]: from q, k, v, the forward's o and lse (laid out
/// [b][hq][sq]) and dout, in float, plain loops in index order over each row's visible keys, with the
/// modifiers as reference::attention_backward applies them (logit = softcap·tanh(scale·q·k / softcap) −
/// slope·|p − j|, P = exp(logit − LSE), dS = P·(dP − D)·(1 − tanh²)), and dsinks[h] = −Σ exp(sink − LSE)·D
/// summed in float. Any strides. bf16_weights: P and scale·dS rounded to bf16 before their products (Note
/// [bf16 backward tolerance]).
[[maybe_unused]] naive_gradients naive_fp32_backward(const gqa::tensor_view<const float>& q, const gqa::tensor_view<const float>& k,
                                    const gqa::tensor_view<const float>& v, const gqa::tensor_view<const float>& o,
                                    const gqa::tensor_view<const float>& dout, std::span<const float> lse,
                                    std::span<const gqa::index_t> kv_of_q, float scale, bool causal = false,
                                    std::span<const gqa::index_t> kv_lengths = {},
                                    const gqa::reference::modifiers& mods = {}, bool bf16_weights = false) {
  using gqa::index_t;
  const auto weight = [bf16_weights](float x) { return bf16_weights ? gqa::to_float(gqa::bf16(x)) : x; };
  naive_gradients r;
  r.dq.assign(static_cast<std::size_t>(q.b * q.s * q.h * q.d), 0.0f);
  r.dk.assign(static_cast<std::size_t>(k.b * k.s * k.h * k.d), 0.0f);
  r.dv.assign(static_cast<std::size_t>(v.b * v.s * v.h * v.d), 0.0f);
  r.dsinks.assign(mods.sinks.size(), 0.0f);
  auto at = [](index_t ib, index_t is, index_t ih, index_t c, index_t s, index_t h, index_t d) {
    return static_cast<std::size_t>(((ib * s + is) * h + ih) * d + c);
  };
  const auto cap = static_cast<float>(mods.softcap);
  for (index_t ib = 0; ib < q.b; ++ib) {
    const index_t len = kv_lengths.empty() ? k.s : kv_lengths[static_cast<std::size_t>(ib)];
    for (index_t h = 0; h < q.h; ++h) {
      const index_t g = kv_of_q[static_cast<std::size_t>(h)];
      for (index_t i = 0; i < q.s; ++i) {
        const float m = lse[static_cast<std::size_t>((ib * q.h + h) * q.s + i)];
        const auto [lo, hi] = gqa::reference::visible_keys(i, q.s, len, causal, mods);
        if (hi <= lo || std::isinf(m)) continue;
        float dsum = 0.0f;
        for (index_t x = 0; x < v.d; ++x) dsum += dout(ib, i, h, x) * o(ib, i, h, x);
        if (!mods.sinks.empty()) r.dsinks[static_cast<std::size_t>(h)] -= std::exp(mods.sinks[static_cast<std::size_t>(h)] - m) * dsum;
        for (index_t j = lo; j < hi; ++j) {
          float dot = 0.0f, dp = 0.0f;
          for (index_t x = 0; x < q.d; ++x) dot += q(ib, i, h, x) * k(ib, j, g, x);
          for (index_t x = 0; x < v.d; ++x) dp += dout(ib, i, h, x) * v(ib, j, g, x);
          float logit = dot * scale, dcap = 1.0f;
          if (cap > 0.0f) {
            const float t = std::tanh(logit / cap);
            logit = cap * t;
            dcap = 1.0f - t * t;
          }
          if (!mods.alibi_slopes.empty())
            logit -= mods.alibi_slopes[static_cast<std::size_t>(h)] * static_cast<float>(std::abs(i + (len - q.s) - j));
          const float p = std::exp(logit - m);
          const float ds = p * (dp - dsum) * dcap;
          const float sds = weight(scale * ds), pw = weight(p);  // sds · k: scale · ds · k, left to right
          for (index_t x = 0; x < q.d; ++x) {
            r.dq[at(ib, i, h, x, q.s, q.h, q.d)] += sds * k(ib, j, g, x);
            r.dk[at(ib, j, g, x, k.s, k.h, k.d)] += sds * q(ib, i, h, x);
          }
          for (index_t x = 0; x < v.d; ++x) r.dv[at(ib, j, g, x, v.s, v.h, v.d)] += pw * dout(ib, i, h, x);
        }
      }
    }
  }
  return r;
}

/// Note [backward tolerance] for one gradient, without its per-element term (naive and ref in the same
/// layout): 2 · max|naive − ref| + 1e-6 · max(1, max|ref|).
[[maybe_unused]] double gradient_tolerance(const std::vector<float>& naive, const std::vector<double>& ref) {
  double err = 0.0, scale = 1.0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    err = std::max(err, std::fabs(static_cast<double>(naive[i]) - ref[i]));
    scale = std::max(scale, std::fabs(ref[i]));
  }
  return k_error_factor * err + k_error_floor * scale;
}

/// Note [bf16 backward tolerance] for one gradient, without its per-element term: naive and naive16 the naive
/// backward without and with the bf16 roundings (the same layout as ref), 2 · (max|naive − ref| +
/// max|naive16 − naive|) + 1e-6 · max(1, max|ref|).
[[maybe_unused]] double gradient_tolerance(const std::vector<float>& naive, const std::vector<float>& naive16,
                                           const std::vector<double>& ref) {
  double rounding = 0.0;
  for (std::size_t i = 0; i < ref.size(); ++i)
    rounding = std::max(rounding, std::fabs(static_cast<double>(naive16[i]) - static_cast<double>(naive[i])));
  return gradient_tolerance(naive, ref) + k_error_factor * rounding;
}

/// The per-element term of Note [backward tolerance]: 2u times the sum of the terms' magnitudes.
[[maybe_unused]] double cancellation_floor(double terms) { return 2.0 * 0x1p-24 * terms; }

}  // namespace
}  // namespace gqa::test
