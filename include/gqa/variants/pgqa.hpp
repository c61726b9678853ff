// gqa/variants/pgqa.hpp: Perturbed GQA (Khan et al., arXiv 2408.08454; docs/variants.md, "PGQA") as a
// policy: uniform GQA groups, then standardised uniform noise, scaled by each output row's mean and std, is
// subtracted from the attention output. Invariant: the noise is a pure function of (seed, layer, call,
// group, head-in-group, flat index), and every step is computed in double in a fixed order with explicit
// FMAs, so the perturbed output is bitwise the same for any thread count, ISA and tile size.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../random.hpp"
#include "../threading/parallel.hpp"
#include "model_shape.hpp"
#include "policy.hpp"

GQA_BEGIN_NAMESPACE

/// When pgqa_policy perturbs its output.
enum class pgqa_noise {
  always,      ///< as the authors' code: every call, training or not
  train_only,  ///< departure from the reference: only while training() is true
  off,         ///< never (plain GQA); the call counter still advances
};

/// "always", "train_only" or "off".
constexpr std::string_view to_string(pgqa_noise m) noexcept {
  return m == pgqa_noise::always ? "always" : m == pgqa_noise::train_only ? "train_only" : m == pgqa_noise::off ? "off" : "unknown";
}

struct pgqa_options {
  std::uint64_t seed = 0;   ///< the generator seed (the reference uses torch's global RNG instead)
  std::uint64_t layer = 0;  ///< this attention module's layer index: a key of the noise
  pgqa_noise noise = pgqa_noise::always;
};

// Note [PGQA noise]
// The authors' code (pgqa.py) draws, per group g and forward call, a fresh matrix R (s × N), N = seq·d_v,
// of U[0,1) values, sets the "diagonal" R[i][i] (i < min(s, N)) to 0, and standardises each row to zero
// mean and unit unbiased std. gqa draws R[i][n] = random::to_unit_float(random::hash(seed, {layer, call, g,
// i, n})), which replaces torch.rand's global stream with a keyed counter, so any element can be drawn by
// any thread in any order. The zeroed diagonal is zero only before standardisation: afterwards it sits at
// -ρμ/ρσ ≈ -√3 (-1.744 measured with the authors' code).

namespace detail {

// Note [PGQA reductions]
// Every mean and sum of squares of PGQA is a double sum in a fixed order that does not depend on the ISA:
// 16 lanes, lane l taking the terms with index n % 16 == l in index order, then the lanes added in a
// fixed tree. The terms are exact or use explicit std::fma (with -mfma the compiler would contract a*b+c
// in some ISA TUs only), so every build gives the same bits; the 16 independent chains let the compiler
// vectorise what a single chain would serialise on the add latency.
inline constexpr index_t k_pgqa_lanes = 16;

// Note [PGQA loops]
// g++ 12 at -O2 vectorises only loops it needs no remainder code for, so an element-wise loop over a
// run-time count stays scalar: PGQA's draw (integer hashing), standardisation (a vdivsd per value) and
// subtraction (a scalar fma) ran one value at a time. Such loops go in blocks of k_pgqa_lanes, an inner
// loop of constant count that it does vectorise, then a scalar tail; the operations per element are
// unchanged, and integer hashing, IEEE division and fma round the same at any width, so the bits are too
// (the same output hashes before and after, g++ baseline, AVX2 and AVX-512 builds, and clang). Measured
// (Intel Xeon, 2026-12-04, one thread, three alternations): pgqa_perturb on P2's output (2048 positions
// × 32 heads × 128) 55 -> 32.5 ms compiled for AVX-512, 60 -> 50 ms for AVX2, 95 -> 89 ms for the x86-64
// baseline (whose std::fma is a libm call); pgqa_perturb_backward (1024 × 32 × 72) 35-40 -> 24-26 ms
// (AVX-512), 37-38 -> 28-30 ms (AVX2).

/// f(c, l) for c = 0 .. n − 1 with lane l = c % k_pgqa_lanes: blocks of k_pgqa_lanes (an inner loop of
/// constant count, which g++ vectorises at -O2), then the tail (Note [PGQA loops]).
template <class F>
GQA_FORCEINLINE void pgqa_in_lanes(index_t n, F&& f) {
  index_t c0 = 0;
  for (; c0 + k_pgqa_lanes <= n; c0 += k_pgqa_lanes)
    for (index_t l = 0; l < k_pgqa_lanes; ++l) f(c0 + l, l);
  for (index_t l = 0; c0 + l < n; ++l) f(c0 + l, l);
}

inline double pgqa_fold_lanes(double* acc) noexcept {
  for (index_t half = k_pgqa_lanes / 2; half > 0; half /= 2)
    for (index_t l = 0; l < half; ++l) acc[l] += acc[l + half];
  return acc[0];
}

/// Σ x[n] over n < count (fixed lane order, Note [PGQA reductions]); T is float or double.
template <class T>
double pgqa_sum(const T* x, index_t count) noexcept {
  double acc[k_pgqa_lanes] = {};
  index_t n = 0;
  for (; n + k_pgqa_lanes <= count; n += k_pgqa_lanes)
    for (index_t l = 0; l < k_pgqa_lanes; ++l) acc[l] += static_cast<double>(x[n + l]);
  for (index_t l = 0; n + l < count; ++l) acc[l] += static_cast<double>(x[n + l]);
  return pgqa_fold_lanes(acc);
}

/// Σ (x[n] − mu)² over n < count (fixed lane order, explicit fma).
template <class T>
double pgqa_sum_sq_dev(const T* x, index_t count, double mu) noexcept {
  double acc[k_pgqa_lanes] = {};
  index_t n = 0;
  for (; n + k_pgqa_lanes <= count; n += k_pgqa_lanes)
    for (index_t l = 0; l < k_pgqa_lanes; ++l) {
      const double dx = static_cast<double>(x[n + l]) - mu;
      acc[l] = std::fma(dx, dx, acc[l]);
    }
  for (index_t l = 0; n + l < count; ++l) {
    const double dx = static_cast<double>(x[n + l]) - mu;
    acc[l] = std::fma(dx, dx, acc[l]);
  }
  return pgqa_fold_lanes(acc);
}

/// μ and unbiased σ of the row X = o[ib, :, h, :] (N = s·d values, token-major), in one pass shifted by
/// its first value x0 (the "shifted data" form of the sum / sum-of-squares formula): Σ(x − x0) and
/// Σ(x − x0)² in fixed lanes (lane = channel % 16, token order; Note [PGQA reductions]). The shift keeps
/// cancellation at the scale of the row's spread, and a constant row gives exactly 0 for both sums, so
/// σ = 0 and μ = x0 exactly. N >= 2.
struct pgqa_stats {  // not std::pair: GCC notes on AArch64 that its argument passing changed in GCC 10.1 (-Wpsabi)
  double mu, sigma;
};
template <class T>
pgqa_stats pgqa_row_stats(const tensor_view<T>& o, index_t ib, index_t h) noexcept {
  const index_t n = o.s * o.d;
  const double x0 = static_cast<double>(o.row(ib, 0, h)[0]);
  double acc1[k_pgqa_lanes] = {}, acc2[k_pgqa_lanes] = {};
  for (index_t p = 0; p < o.s; ++p) {
    const T* src = o.row(ib, p, h);
    auto add = [&](index_t c, index_t l) {
      const double dx = static_cast<double>(src[c]) - x0;
      acc1[l] += dx;
      acc2[l] = std::fma(dx, dx, acc2[l]);  // explicit: see Note [PGQA reductions]
    };
    pgqa_in_lanes(o.d, add);
  }
  const double s1 = pgqa_fold_lanes(acc1), s2 = pgqa_fold_lanes(acc2);
  const double mu = x0 + s1 / static_cast<double>(n);
  const double var = (s2 - (s1 * s1) / static_cast<double>(n)) / static_cast<double>(n - 1);
  return {mu, std::sqrt(std::max(var, 0.0))};
}

}  // namespace detail

/// The standardised noise row Z[i, ·] of group `group`, head-in-group `head_in_group` (Note [PGQA noise]):
/// R drawn, R[i][i] zeroed (when i < n), then (R - mean) / std_unbiased, with std := 1 if it is 0. Sums in
/// double in a fixed order (Note [PGQA reductions]). `n` = seq·d_v must be >= 2. PGQA's gradient,
/// ∂X'/∂X = I − (1/N)·𝟙𝟙ᵀ − Z (∂σ/∂X)ᵀ with ∂σ/∂X = (X − μ)/((N−1)σ), needs exactly this Z.
inline void pgqa_standardised_noise(std::span<double> z, std::uint64_t seed, std::uint64_t layer, std::uint64_t call,
                                    index_t group, index_t head_in_group) {
  const index_t n = static_cast<index_t>(z.size());
  detail::require(n >= 2, "gqa::pgqa_standardised_noise", "z.size()", n, "must be >= 2 (unbiased std)");
  detail::require(group >= 0, "gqa::pgqa_standardised_noise", "group", group, "must be >= 0");
  detail::require(head_in_group >= 0, "gqa::pgqa_standardised_noise", "head_in_group", head_in_group, "must be >= 0");
  const auto g = static_cast<std::uint64_t>(group), i = static_cast<std::uint64_t>(head_in_group);
  // hash(seed, {layer, call, g, i, c}) with the four shared keys absorbed once per row.
  using random::hash_absorb;
  const std::uint64_t prefix = hash_absorb(hash_absorb(hash_absorb(hash_absorb(random::hash_start(seed), layer, 1), call, 2), g, 3), i, 4);
  // In lanes (Note [PGQA loops]): integer hashing and, below, IEEE division are exact at any width.
  detail::pgqa_in_lanes(n, [&](index_t c, index_t) {
    z[static_cast<std::size_t>(c)] = random::to_unit_float(hash_absorb(prefix, static_cast<std::uint64_t>(c), 5));
  });
  if (head_in_group < n) z[static_cast<std::size_t>(head_in_group)] = 0.0;  // the "diagonal": row i, column i
  const double mean = detail::pgqa_sum(z.data(), n) / static_cast<double>(n);
  double sd = std::sqrt(detail::pgqa_sum_sq_dev(z.data(), n, mean) / static_cast<double>(n - 1));
  if (sd == 0.0) sd = 1.0;  // as the authors' code: ρσ := 1 when the row is constant
  detail::pgqa_in_lanes(n, [&](index_t c, index_t) {
    double& r = z[static_cast<std::size_t>(c)];
    r = (r - mean) / sd;
  });
}

/// Same, returning the row.
inline std::vector<double> pgqa_standardised_noise(index_t n, std::uint64_t seed, std::uint64_t layer,
                                                   std::uint64_t call, index_t group, index_t head_in_group) {
  detail::require(n >= 2, "gqa::pgqa_standardised_noise", "n", n, "must be >= 2 (unbiased std)");
  std::vector<double> z(static_cast<std::size_t>(n));
  pgqa_standardised_noise(z, seed, layer, call, group, head_in_group);
  return z;
}

namespace detail {
/// Row X = o[ib, :, h, :] becomes X − (Z·σ + μ), μ and σ its own (pgqa_row_stats), z the noise row.
inline void pgqa_subtract_noise(const tensor_view<float>& o, index_t ib, index_t h, const std::vector<double>& z) {
  const auto stats = pgqa_row_stats(o, ib, h);
  const double mu = stats.mu, sigma = stats.sigma;  // plain names: a lambda below captures them
  for (index_t p = 0; p < o.s; ++p) {
    float* dst = o.row(ib, p, h);
    const double* zr = z.data() + p * o.d;
    // noise = Z·σ + μ, as one explicit fma (ISA-independent). A constant row has σ = 0 and μ == x
    // exactly, so it becomes exactly 0. In lanes (Note [PGQA loops]).
    pgqa_in_lanes(o.d, [&](index_t c, index_t) {
      dst[c] = static_cast<float>(static_cast<double>(dst[c]) - std::fma(zr[c], sigma, mu));
    });
  }
}

/// What pgqa_perturb and pgqa_perturb_ragged check of their groups and threads: hkv > 0, the executor's
/// thread count, and hkv dividing o.h (PGQA's groups are uniform).
inline void check_pgqa_heads(const tensor_view<float>& o, index_t hkv, const executor& ex, const char* where) {
  require(hkv > 0, where, "hkv", hkv, "must be positive");
  require(ex.num_threads >= 0, where, "executor.num_threads", ex.num_threads, "must be >= 0");
  if (o.h % hkv != 0) fail(where, ": hkv = ", hkv, ": must divide o.h = ", o.h, " (PGQA uses uniform GQA groups)");
}

/// The query offsets of a ragged PGQA call: at least two, non-decreasing within o.s, and no sequence of
/// exactly one value per (sequence, head) row (n_q·dv == 1: no unbiased std).
inline void check_pgqa_sequences(const tensor_view<float>& o, std::span<const index_t> cu_q, const char* where) {
  require(cu_q.size() >= 2, where, "cu_q.size()", cu_q.size(), "must be >= 2");
  for (std::size_t i = 0; i < cu_q.size(); ++i)
    if (cu_q[i] < (i ? cu_q[i - 1] : 0) || cu_q[i] > o.s)
      fail(where, ": cu_q[", i, "] = ", cu_q[i], ": offsets must be non-decreasing and within o.s = ", o.s);
  for (std::size_t i = 0; i + 1 < cu_q.size(); ++i)
    if ((cu_q[i + 1] - cu_q[i]) * o.d == 1)
      fail(where, ": sequence ", i, " has n_q * d_v = 1 * 1 = 1 output value per head: must be > 1 (the unbiased std "
           "of a single value is undefined)");
}

/// The (group, head) rows of PGQA's noise as tasks on `ex`, one per query head h = g·(heads/hkv) + i:
/// draws Z = pgqa_standardised_noise(n, seed, layer, call, g, i) once into a per-thread buffer and calls
/// fn(h, Z), which applies it to that head of every batch element (pgqa_perturb and its backward).
template <class F>
void pgqa_noise_rows(index_t heads, index_t hkv, index_t n, std::uint64_t seed, std::uint64_t layer,
                     std::uint64_t call, const executor& ex, F&& fn) {
  const index_t grp = heads / hkv;
  run_tasks(hkv * grp, ex, [&](index_t task) {
    const index_t g = task / grp, i = task % grp;
    thread_local std::vector<double> z;
    z.resize(static_cast<std::size_t>(n));
    pgqa_standardised_noise(z, seed, layer, call, g, i);
    fn(g * grp + i, z);
  });
}
}  // namespace detail

/// PGQA's post-step, a pure function. `o` holds the attention output (b, s, hq, dv); the
/// query heads form hkv uniform contiguous groups. For every head h = g·(hq/hkv) + i and batch element b,
/// the row X = O[b, :, h, :] flattened token-major (n = p·dv + c, N = s·dv values) becomes
///   X' = X − (Z[i, ·]·σ + μ),   μ = mean(X), σ = unbiased std(X),
/// with Z = pgqa_standardised_noise(N, seed, layer, call, g, i), shared across the batch. Every reduction
/// is in double in a fixed order (Note [PGQA reductions]); the result is rounded to float once. A constant
/// row becomes 0. The (group, head) rows run as tasks on `ex` (pass gqa::executor_of(options) to use an
/// attention call's threads); the result is the same bits for any thread count.
/// Non-finite values follow the math, as in a naive implementation: a row X holding a NaN or an infinity
/// has NaN statistics (μ, σ), so all of X' (every token of that sample and head) is NaN; other rows are
/// unaffected (Note [non-finite inputs] in detail/core/softmax.hpp: such an X comes from a NaN input or
/// an overflowing score).
/// Throws gqa::invalid_argument (before touching o) if hkv does not divide hq, s·dv == 1 or
/// o.stride_d != 1.
inline void pgqa_perturb(const tensor_view<float>& o, index_t hkv, std::uint64_t seed, std::uint64_t layer,
                         std::uint64_t call, const executor& ex = {}) {
  constexpr const char* where = "gqa::pgqa_perturb";
  detail::check_view(o, "o", where);
  detail::check_pgqa_heads(o, hkv, ex, where);
  const index_t n = o.s * o.d;
  if (n < 2)
    detail::fail(where, ": o.s * o.d = ", n, ": must be > 1 (the unbiased std of a single value is undefined)");

  detail::pgqa_noise_rows(o.h, hkv, n, seed, layer, call, ex, [&](index_t h, const std::vector<double>& z) {
    for (index_t ib = 0; ib < o.b; ++ib) detail::pgqa_subtract_noise(o, ib, h, z);
  });
}

// Note [PGQA on a ragged batch]
// A ragged batch has no (b, sq) output: sequence i is rows [cu_q[i], cu_q[i + 1]) of a packed output. PGQA
// acts on each (sequence, head) row X = O_i[:, h, :] of N_i = n_q(i)·dv values as on a dense sample: its
// own μ and σ, and the noise row Z = pgqa_standardised_noise(N_i, seed, layer, call, g, j) for head
// h = g·(hq/hkv) + j, where `call` is the ragged call's one index (the counter advances once per call, as
// for a dense batch). So the draw R[j][n] = hash(seed, {layer, call, g, j, n}) is shared by every sequence, as the authors share it
// across a batch, and only its standardisation depends on a sequence's N_i: sequences of equal length get
// the same Z, a ragged batch of equal lengths gives the dense batch's noise, and sequence i of a ragged
// call equals a dense call on that sequence alone with the counter at `call` (set_calls). A sequence
// without queries has no row; one whose N_i is 1 (one query, dv = 1) has no unbiased std and is rejected.

/// pgqa_perturb over a ragged batch (Note [PGQA on a ragged batch]): o (1, total, h, dv) packed, the
/// sequences' rows [cu_q[i], cu_q[i + 1]) (any offsets within o.s, non-decreasing). Each (sequence, head)
/// row becomes X − (Z·σ + μ) with its own μ, σ and Z = pgqa_standardised_noise(n_q·dv, seed, layer, call,
/// g, j) (head h = g·(o.h/hkv) + j), the same bits as pgqa_perturb on that sequence's rows alone. Throws gqa::invalid_argument (before
/// touching o) as pgqa_perturb does, for offsets outside o.s or decreasing, and for a sequence of exactly
/// one value per row (n_q·dv == 1).
inline void pgqa_perturb_ragged(const tensor_view<float>& o, std::span<const index_t> cu_q, index_t hkv,
                                std::uint64_t seed, std::uint64_t layer, std::uint64_t call, const executor& ex = {}) {
  constexpr const char* where = "gqa::pgqa_perturb_ragged";
  detail::check_view(o, "o", where);
  detail::require(o.b == 1, where, "o.b", o.b, "must be 1 (a ragged batch's packed rows)");
  detail::check_pgqa_heads(o, hkv, ex, where);
  detail::check_pgqa_sequences(o, cu_q, where);
  // One noise draw per distinct length, applied to every sequence of that length.
  std::vector<index_t> lengths;
  for (std::size_t i = 0; i + 1 < cu_q.size(); ++i)
    if (cu_q[i + 1] > cu_q[i]) lengths.push_back(cu_q[i + 1] - cu_q[i]);
  std::sort(lengths.begin(), lengths.end());
  lengths.erase(std::unique(lengths.begin(), lengths.end()), lengths.end());
  for (const index_t len : lengths)
    detail::pgqa_noise_rows(o.h, hkv, len * o.d, seed, layer, call, ex, [&](index_t h, const std::vector<double>& z) {
      for (std::size_t i = 0; i + 1 < cu_q.size(); ++i) {
        if (cu_q[i + 1] - cu_q[i] != len) continue;
        tensor_view<float> seq = o;
        seq.data += cu_q[i] * o.stride_s;
        seq.s = len;
        detail::pgqa_subtract_noise(seq, 0, h, z);
      }
    });
}

/// The row statistics pgqa_perturb uses, per (sample, head) row X = o[b, :, h, :]: mean μ and unbiased
/// std σ, laid out [b][h] (index b·h_count + h).
struct pgqa_statistics {
  std::vector<double> mu, sigma;
};

/// μ and σ of every (sample, head) row of o, exactly as pgqa_perturb computes them (same bits): what a
/// training forward keeps for pgqa_perturb_backward. o: the attention output before pgqa_perturb, s·d >= 2.
/// Heads run as tasks on `ex` (pass gqa::executor_of(options) to use an attention call's threads).
inline pgqa_statistics pgqa_row_statistics(const tensor_view<const float>& o, const executor& ex = {}) {
  constexpr const char* where = "gqa::pgqa_row_statistics";
  detail::check_view(o, "o", where);
  if (o.s * o.d < 2)
    detail::fail(where, ": o.s * o.d = ", o.s * o.d, ": must be > 1 (the unbiased std of a single value is undefined)");
  detail::require(ex.num_threads >= 0, where, "executor.num_threads", ex.num_threads, "must be >= 0");
  pgqa_statistics st;
  st.mu.resize(static_cast<std::size_t>(o.b * o.h));
  st.sigma.resize(st.mu.size());
  detail::run_tasks(o.h, ex, [&](index_t h) {
    for (index_t ib = 0; ib < o.b; ++ib) {
      const auto [mu, sigma] = detail::pgqa_row_stats(o, ib, h);
      st.mu[static_cast<std::size_t>(ib * o.h + h)] = mu;
      st.sigma[static_cast<std::size_t>(ib * o.h + h)] = sigma;
    }
  });
  return st;
}

// Note [PGQA gradient]
// What is differentiated: X' = X − μ(X) − σ(X)·Z per (sample, head) row of N = s·dv values, with Z (the
// standardised draw, a function of the seed and keys only) held fixed and μ, σ the row's mean and
// unbiased std, not detached (as in the reference, where they are tensors of the graph). With g = ∂L/∂X':
//   ∂L/∂X_n = g_n − (1/N)·Σ_m g_m − (X_n − μ)/((N − 1)·σ) · Σ_m g_m·Z_m,
// from ∂μ/∂X_n = 1/N and ∂σ/∂X_n = (X_n − μ)/((N − 1)σ). At σ = 0 (a constant row, where σ has no
// derivative and torch returns NaN) the σ term is taken as 0: the row's X' is 0 whatever it was, and the
// gradient that remains is the mean's. X is not kept: X_n − μ = X'_n + σ·Z_n is rebuilt from the perturbed
// output and the saved (μ, σ) (in double, one fma), and the core's output X = that + μ is rounded to float
// once, so it differs from the forward's by at most an ulp of |X'| + |X|. The sums Σg and Σg·Z are double
// sums in fixed lanes with explicit fma (Note [PGQA reductions]): bitwise the same for any thread count
// and ISA.

/// The backward of pgqa_perturb(o, hkv, seed, layer, call), which used the row statistics `st`
/// (pgqa_row_statistics of its input): from the perturbed output o_perturbed (what pgqa_perturb wrote) and
/// dout = ∂L/∂o', writes x, the unperturbed output rebuilt, and dx = ∂L/∂x (Note [PGQA gradient]). Rows run
/// as tasks on `ex`; the same bits for any thread count.
/// Throws gqa::invalid_argument for bad views, extents of dout, x, dx different from o_perturbed's, hkv not
/// dividing o.h, s·d < 2, statistics of the wrong size or with a negative σ, and x or dx
/// overlapping an input or each other.
inline void pgqa_perturb_backward(const tensor_view<const float>& o_perturbed, const tensor_view<const float>& dout,
                                  const pgqa_statistics& st, index_t hkv, std::uint64_t seed, std::uint64_t layer,
                                  std::uint64_t call, const tensor_view<float>& x, const tensor_view<float>& dx,
                                  const executor& ex = {}) {
  constexpr const char* where = "gqa::pgqa_perturb_backward";
  const auto& o = o_perturbed;
  detail::check_view(o, "o_perturbed", where);
  detail::check_view(dout, "dout", where);
  detail::check_view(x, "x", where);
  detail::check_view(dx, "dx", where);
  detail::require_same_extents(dout, "dout", o, "o_perturbed", where);
  detail::require_same_extents(x, "x", o, "o_perturbed", where);
  detail::require_same_extents(dx, "dx", o, "o_perturbed", where);
  detail::require(hkv > 0, where, "hkv", hkv, "must be positive");
  if (o.h % hkv != 0) detail::fail(where, ": hkv = ", hkv, ": must divide o_perturbed.h = ", o.h);
  const index_t n = o.s * o.d;
  if (n < 2) detail::fail(where, ": o_perturbed.s * o_perturbed.d = ", n, ": must be > 1");
  const auto rows = static_cast<std::size_t>(o.b * o.h);
  detail::require(st.mu.size() == rows, where, "statistics.mu.size()", st.mu.size(), "must equal b*h = ", rows);
  detail::require(st.sigma.size() == rows, where, "statistics.sigma.size()", st.sigma.size(), "must equal b*h = ", rows);
  // A NaN or infinite μ or σ is the statistics of a non-finite row (pgqa_row_statistics of an output
  // holding a NaN or an infinity): that row's x and dx are then NaN, as the math gives.
  for (std::size_t r = 0; r < rows; ++r)
    if (st.sigma[r] < 0.0) detail::fail(where, ": statistics.sigma[", r, "] = ", st.sigma[r], ": must be >= 0");
  detail::require(ex.num_threads >= 0, where, "executor.num_threads", ex.num_threads, "must be >= 0");
  detail::require_outputs_disjoint({{x, "x"}, {dx, "dx"}}, {{o, "o_perturbed"}, {dout, "dout"}}, where);

  detail::pgqa_noise_rows(o.h, hkv, n, seed, layer, call, ex, [&](index_t h, const std::vector<double>& z) {
    for (index_t ib = 0; ib < o.b; ++ib) {
      const double mu = st.mu[static_cast<std::size_t>(ib * o.h + h)];
      const double sigma = st.sigma[static_cast<std::size_t>(ib * o.h + h)];
      // Σg and Σg·Z in fixed lanes (Note [PGQA reductions]).
      double acc1[detail::k_pgqa_lanes] = {}, acc2[detail::k_pgqa_lanes] = {};
      for (index_t p = 0; p < o.s; ++p) {
        const float* gr = dout.row(ib, p, h);
        const double* zr = z.data() + p * o.d;
        detail::pgqa_in_lanes(o.d, [&](index_t c, index_t l) {
          acc1[l] += static_cast<double>(gr[c]);
          acc2[l] = std::fma(static_cast<double>(gr[c]), zr[c], acc2[l]);
        });
      }
      const double gmean = detail::pgqa_fold_lanes(acc1) / static_cast<double>(n);
      const double gz = detail::pgqa_fold_lanes(acc2);
      const double coef = sigma > 0.0 ? gz / (static_cast<double>(n - 1) * sigma) : 0.0;  // Note [PGQA gradient]
      for (index_t p = 0; p < o.s; ++p) {
        const float* src = o.row(ib, p, h);
        const float* gr = dout.row(ib, p, h);
        const double* zr = z.data() + p * o.d;
        float* xr = x.row(ib, p, h);
        float* dxr = dx.row(ib, p, h);
        detail::pgqa_in_lanes(o.d, [&](index_t c, index_t) {
          const double centred = std::fma(zr[c], sigma, static_cast<double>(src[c]));  // X − μ
          xr[c] = static_cast<float>(centred + mu);
          dxr[c] = static_cast<float>(static_cast<double>(gr[c]) - gmean - centred * coef);
        });
      }
    }
  });
}

/// PGQA as a policy: static uniform groups (hkv must divide hq); after the core, finish()
/// applies pgqa_perturb keyed by (options.seed, options.layer, calls()) when the mode asks for it, then
/// advances the call counter (always, also when no noise is applied, so the noise of call t does not
/// depend on the modes of earlier calls). Save calls() and restore it with set_calls() to replay a call.
/// Thread safety: one policy may serve concurrent calls. The counter and the training flag are atomics,
/// and each finish() takes its own call index, so no two calls draw the same noise; which call gets which
/// index then follows the order in which concurrent calls reach finish(). For noise that replays exactly,
/// give each stream of calls (thread) its own policy.
class pgqa_policy {
 public:
  static constexpr std::string_view name = "pgqa";
  /// Registry (variants/registry.hpp): H query heads in G uniform groups; noise `always`, seeded by the
  /// model's seed.
  static constexpr variant_heads heads_for(const model_shape& m) noexcept { return {m.heads, m.groups, m.groups}; }
  static pgqa_policy make(const model_shape& m, const variant_heads&) { return pgqa_policy({.seed = m.seed}); }

  explicit pgqa_policy(pgqa_options opt = {}) : opt_(opt) {
    if (opt_.noise != pgqa_noise::always && opt_.noise != pgqa_noise::train_only && opt_.noise != pgqa_noise::off)
      detail::fail("gqa::pgqa_policy: options.noise = ", static_cast<int>(opt_.noise),
                   ": must be pgqa_noise::always, train_only or off");
  }
  /// Copies the options, the training flag and the call counter.
  pgqa_policy(const pgqa_policy& other) noexcept
      : opt_(other.opt_), training_(other.training()), calls_(other.calls()) {}
  pgqa_policy& operator=(const pgqa_policy& other) noexcept {
    opt_ = other.opt_;
    training_ = other.training();
    calls_ = other.calls();
    return *this;
  }

  const pgqa_options& options() const noexcept { return opt_; }
  /// Used by pgqa_noise::train_only only. Starts true, like a freshly built torch.nn.Module.
  void set_training(bool on) noexcept { training_.store(on); }
  bool training() const noexcept { return training_.load(); }
  /// Number of finish() calls so far: the `call` key of the next call's noise.
  std::uint64_t calls() const noexcept { return calls_.load(); }
  void set_calls(std::uint64_t c) noexcept { calls_.store(c); }
  /// True when the next finish() perturbs.
  bool perturbs() const noexcept {
    return opt_.noise == pgqa_noise::always || (opt_.noise == pgqa_noise::train_only && training());
  }

  template <class Q, class K, class V, class O>
  void check(const tensor_view<Q>& q, const tensor_view<K>& k, const tensor_view<V>&,
             const tensor_view<O>& o) const {
    detail::require(k.h > 0, "gqa::pgqa_policy", "k.h", k.h, "must be positive");
    if (q.h % k.h != 0)
      detail::fail("gqa::pgqa_policy: k.h = ", k.h, ": the number of KV heads must divide q.h = ", q.h,
                   " (PGQA uses uniform GQA groups)");
    if (o.s * o.d < 2)
      detail::fail("gqa::pgqa_policy: o.s * o.d = ", o.s * o.d,
                   ": must be > 1 (the unbiased std of a single value is undefined)");
  }

  template <class Q, class K>
  head_map plan(const tensor_view<Q>& q, const tensor_view<K>& k) const {
    return head_map::uniform(q.h, k.h);
  }

  /// For a ragged batch (o packed, sequence i rows [cu_q[i], cu_q[i + 1])): no sequence of one output value
  /// per head (n_q·dv == 1).
  void check_ragged(const tensor_view<float>& o, std::span<const index_t> cu_q) const {
    detail::check_pgqa_sequences(o, cu_q, "gqa::pgqa_policy");
  }
  /// finish() on a ragged batch: takes the next call index (one per call) and, per the mode, perturbs each
  /// (sequence, head) row with it (pgqa_perturb_ragged, Note [PGQA on a ragged batch]).
  void finish_ragged(const tensor_view<float>& o, std::span<const index_t> cu_q, const head_map& map,
                     const executor& ex = {}) {
    check_finish_map(o, map);
    const std::uint64_t call = calls_.fetch_add(1);
    if (perturbs()) pgqa_perturb_ragged(o, cu_q, map.hkv(), opt_.seed, opt_.layer, call, ex);
  }

  /// What a training forward keeps (gqa::forward_train): whether and with which call index the output was
  /// perturbed, and the row statistics of the core's output ([b][h]; on a ragged batch [sequence][h] over
  /// the sequences with queries).
  struct saved {
    bool perturbed = false;
    std::uint64_t call = 0;
    pgqa_statistics statistics;
  };

  /// finish_ragged() for gqa::forward_train on a ragged batch: the same, recording in `s` the call index
  /// and the perturbs() decision it took and, when it perturbs, μ and σ of every (sequence, head) row of
  /// the core's output (pgqa_row_statistics of each sequence's rows, the bits pgqa_perturb_ragged uses).
  void finish_ragged_train(saved& s, const tensor_view<float>& o, std::span<const index_t> cu_q, const head_map& map,
                           const executor& ex = {}) {
    check_finish_map(o, map);
    const std::uint64_t call = calls_.fetch_add(1);
    const bool perturb = perturbs();
    s.perturbed = perturb;
    s.call = call;
    s.statistics = {};
    if (!perturb) return;
    for (std::size_t i = 0; i + 1 < cu_q.size(); ++i) {
      if (cu_q[i + 1] == cu_q[i]) continue;
      const pgqa_statistics st = pgqa_row_statistics(sequence_rows(tensor_view<const float>(o), cu_q, i), ex);
      s.statistics.mu.insert(s.statistics.mu.end(), st.mu.begin(), st.mu.end());
      s.statistics.sigma.insert(s.statistics.sigma.end(), st.sigma.begin(), st.sigma.end());
    }
    pgqa_perturb_ragged(o, cu_q, map.hkv(), opt_.seed, opt_.layer, call, ex);
  }
  /// The backward of finish_ragged() (finish_backward per sequence): sequence i's rows of a ragged call are
  /// a dense call on them alone with the same call index (Note [PGQA on a ragged batch]), so each sequence
  /// with queries runs pgqa_perturb_backward on its rows with its saved statistics.
  output_grad_views finish_ragged_backward(const saved& s, const tensor_view<const float>& o,
                                           const tensor_view<const float>& dout, std::span<const index_t> cu_q,
                                           const head_map& map, const executor& ex, std::vector<float>& buffer) const {
    if (!s.perturbed) return {o, dout};
    const auto n = static_cast<std::size_t>(o.b * o.s * o.h * o.d);
    buffer.resize(2 * n);
    const auto x = bshd(buffer.data(), o.b, o.s, o.h, o.d), dx = bshd(buffer.data() + n, o.b, o.s, o.h, o.d);
    std::size_t row = 0;  // statistics of the sequences with queries, in order
    const auto h = static_cast<std::size_t>(o.h);
    for (std::size_t i = 0; i + 1 < cu_q.size(); ++i) {
      if (cu_q[i + 1] == cu_q[i]) continue;
      pgqa_statistics st;
      st.mu.assign(s.statistics.mu.begin() + static_cast<std::ptrdiff_t>(row * h),
                   s.statistics.mu.begin() + static_cast<std::ptrdiff_t>((row + 1) * h));
      st.sigma.assign(s.statistics.sigma.begin() + static_cast<std::ptrdiff_t>(row * h),
                      s.statistics.sigma.begin() + static_cast<std::ptrdiff_t>((row + 1) * h));
      ++row;
      pgqa_perturb_backward(sequence_rows(o, cu_q, i), sequence_rows(dout, cu_q, i), st, map.hkv(), opt_.seed,
                            opt_.layer, s.call, sequence_rows(x, cu_q, i), sequence_rows(dx, cu_q, i), ex);
    }
    return {x, dx};
  }

  /// Takes the next call index (advancing the counter) and perturbs o with it (per the mode), with the
  /// uniform groups of `map`. gqa::forward passes the call's executor, so the perturbation runs on the same
  /// threads as the attention.
  void finish(const tensor_view<float>& o, const head_map& map, const executor& ex = {}) {
    finish_impl(o, map, ex, nullptr);
  }
  /// finish() for gqa::forward_train: the same, and records in `s` the call index and the perturbs()
  /// decision this call took (Note [PGQA training call]) and, when it perturbs, μ and σ of every row of the
  /// core's output.
  void finish_train(saved& s, const tensor_view<float>& o, const head_map& map, const executor& ex = {}) {
    finish_impl(o, map, ex, &s);
  }
  /// The backward of finish(): when the forward perturbed, the core's output rebuilt and the gradient
  /// through the perturbation (pgqa_perturb_backward, Note [PGQA gradient]) in `buffer`; else o and dout
  /// unchanged. Reads only `s` and the options, so concurrent backward calls may share the policy.
  output_grad_views finish_backward(const saved& s, const tensor_view<const float>& o,
                                    const tensor_view<const float>& dout, const head_map& map, const executor& ex,
                                    std::vector<float>& buffer) const {
    if (!s.perturbed) return {o, dout};
    const auto n = static_cast<std::size_t>(o.b * o.s * o.h * o.d);
    buffer.resize(2 * n);
    const auto x = bshd(buffer.data(), o.b, o.s, o.h, o.d), dx = bshd(buffer.data() + n, o.b, o.s, o.h, o.d);
    pgqa_perturb_backward(o, dout, s.statistics, map.hkv(), opt_.seed, opt_.layer, s.call, x, dx, ex);
    return {x, dx};
  }

 private:
  // Note [PGQA training call]
  // The call index and the mode are read once per call, inside finish(): the counter is an atomic that
  // concurrent calls advance, and training() may be switched by another thread. A training forward's
  // backward must use the noise that forward drew, so finish_train() records the index its own fetch_add
  // returned and the perturbs() value it acted on, rather than reading calls() or training() before or
  // after the call (either may already belong to another call).
  static void check_finish_map(const tensor_view<float>& o, const head_map& map) {
    if (!is_uniform(map))
      detail::fail("gqa::pgqa_policy::finish: map: must be uniform contiguous groups (head_map::uniform(", map.hq(),
                   ", ", map.hkv(), "))");
    detail::require(map.hq() == o.h, "gqa::pgqa_policy::finish", "map.hq()", map.hq(),
                    "must equal o.h = ", o.h);
  }

  void finish_impl(const tensor_view<float>& o, const head_map& map, const executor& ex, saved* s) {
    check_finish_map(o, map);
    const std::uint64_t call = calls_.fetch_add(1);
    const bool perturb = perturbs();
    if (s) {
      s->perturbed = perturb;
      s->call = call;
      if (perturb) s->statistics = pgqa_row_statistics(o, ex);
    }
    if (perturb) pgqa_perturb(o, map.hkv(), opt_.seed, opt_.layer, call, ex);
  }

  /// Rows [cu_q[i], cu_q[i + 1]) of the packed view t (b = 1), as a view of their own.
  template <class T>
  static tensor_view<T> sequence_rows(const tensor_view<T>& t, std::span<const index_t> cu_q, std::size_t i) noexcept {
    tensor_view<T> r = t;
    r.data += cu_q[i] * t.stride_s;
    r.s = cu_q[i + 1] - cu_q[i];
    return r;
  }

  /// map == head_map::uniform(map.hq(), map.hkv()), without building one (finish() runs on every call).
  static bool is_uniform(const head_map& map) noexcept {
    if (map.hq() % map.hkv() != 0) return false;
    const index_t group = map.hq() / map.hkv();
    for (index_t h = 0; h < map.hq(); ++h)
      if (map.kv_of(h) != h / group) return false;
    return true;
  }

  pgqa_options opt_;
  std::atomic<bool> training_{true};
  std::atomic<std::uint64_t> calls_{0};
};

GQA_END_NAMESPACE
