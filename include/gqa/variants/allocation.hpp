// gqa/variants/allocation.hpp: query-head allocations shared by KDGQA and DGQA: key norms, the arithmetic
// of the shares (the authors' float32 or double), half-to-even share rounding, the reference sum fix-ups,
// the largest-remainder rule, and the result types.
// Invariant: every allocation these helpers return has one entry per KV head, entries >= 0, summing to hq.
#pragma once

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <string_view>
#include <type_traits>
#include <vector>

#include "../config.hpp"
#include "../detail/core/targets.hpp"
#include "../errors.hpp"
#include "../random.hpp"
#include "../numeric.hpp"
#include "../quantized.hpp"
#include "../tensor.hpp"

GQA_BEGIN_NAMESPACE

/// Why a plan() took the allocation it took.
enum class grouping_status {
  ok,                    ///< computed from the keys by the selected rule
  fallback_single_kv,    ///< KDGQA with one KV head (min-max scaling is 0/0)
  fallback_equal_norms,  ///< KDGQA: max - min <= 1e-6 · max (min-max scaling is 0/0 or noise)
  fallback_nonfinite,    ///< a norm, magnitude or score was NaN or infinite
  fallback_zero_score,   ///< DGQA: Σ score == 0 (e.g. diff of an exactly repeated batch)
};
/// Which allocation a fallback used.
enum class grouping_fallback {
  none,      ///< no fallback: the allocation was computed
  uniform,   ///< balanced contiguous groups (exactly uniform when hkv divides hq), see balanced_allocation
  previous,  ///< the previous allocation (KDGQA: the one passed in; DGQA: the state's splits)
};

/// "ok", "fallback_single_kv", ... (the enumerator's name).
constexpr std::string_view to_string(grouping_status s) noexcept {
  switch (s) {
    case grouping_status::ok: return "ok";
    case grouping_status::fallback_single_kv: return "fallback_single_kv";
    case grouping_status::fallback_equal_norms: return "fallback_equal_norms";
    case grouping_status::fallback_nonfinite: return "fallback_nonfinite";
    case grouping_status::fallback_zero_score: return "fallback_zero_score";
  }
  return "unknown";
}
/// "none", "uniform" or "previous".
constexpr std::string_view to_string(grouping_fallback f) noexcept {
  switch (f) {
    case grouping_fallback::none: return "none";
    case grouping_fallback::uniform: return "uniform";
    case grouping_fallback::previous: return "previous";
  }
  return "unknown";
}

/// The arithmetic of an allocation after the key norms: KDGQA's min-max scaling and shares, DGQA's scores,
/// shares and reference cache update (Note [allocation arithmetic]).
enum class allocation_arithmetic {
  float32,  ///< the authors' (default): norms rounded to float32, then every step in float32, sums in index order
  float64,  ///< departure: norms, scaling and shares in double (differs only within rounding of a .5 tie)
};
/// "float32" or "float64".
constexpr std::string_view to_string(allocation_arithmetic a) noexcept {
  return a == allocation_arithmetic::float32 ? "float32" : a == allocation_arithmetic::float64 ? "float64" : "unknown";
}

// Note [allocation arithmetic]
// Allocation boundaries sit on .5 ties of the shares, and the authors' torch code computes the shares in
// float32: a float32 share can land exactly on .5 where the double one does not. With norms [2, 1, 1.6f]
// and 12 query heads, float32 min-max scaling gives n̂ = [1, 0, 0.6f] and shares exactly [7.5, 0, 4.5],
// which round half to even to [8, 0, 4]; in double the same norms give 7.4999999 and 4.5000001, hence
// [7, 0, 5]. And a true norm of 1.59999999974 is 1.6f in float32 but moves a double share from 1.5 to
// 1.49999997. So the default arithmetic, float32, is the authors' step by step: gqa's norm (a double
// sum, Note [key norm order]) rounded to float32, then (n - min) / (max - min), Σ n̂ in index order,
// n̂ / Σ · hq, each one float32 operation (DGQA: |c - m| or β·m + (1 - β)·c, then the same shares). It
// reproduces the allocation of all 33 golden KDGQA cases, ties included (tests/data/golden), and their
// shares bit for bit. Σ is added in index order; torch's CPU sum kernel uses that order for up to 4
// values and for 8 (AVX2 build) but not for 5-7 (it starts with x[0] + x[4]), and CUDA has its own, so
// for such G a share can differ from the authors' in its last bits (2 ulps at most in the golden DGQA
// calls), which moves an allocation only for a share that close to a .5 tie. Every one of these steps
// is a single IEEE float operation whose input is not a product, so no FMA contraction can change a bit
// and every ISA build gives the same result; where a product feeds a sum (DGQA's ema), the product is
// materialised first (Note [dgqa arithmetic]). float64 keeps every step in double: a departure that
// differs from the authors only where a share is within rounding of a .5 tie.

/// What a plan() decided, for logging and tests.
struct allocation_result {
  std::vector<int> alloc;  ///< query heads per KV head (contiguous groups in KV-head order, may contain 0)
  grouping_status status = grouping_status::ok;
  grouping_fallback fallback = grouping_fallback::none;
  bool updated = true;  ///< DGQA: false when the splits were reused (training step % window != 0)
  /// The shares the reference rule rounded (KDGQA n̂/Σn̂·hq, DGQA score/Σscore·hq; float32 values when the
  /// arithmetic is float32). Empty for a fallback, a stale DGQA call and the hamilton rule.
  std::vector<double> shares;

  /// KV heads that serve at least one query head (the others' K and V are not read in that call).
  index_t kv_heads_used() const noexcept {
    index_t n = 0;
    for (const int a : alloc) n += a > 0 ? 1 : 0;
    return n;
  }
  /// True when there are several KV heads but one serves every query head: the call ran as MQA. KDGQA's
  /// reference rule does this on EVERY call with two KV heads: min-max scaling maps two distinct norms
  /// to {0, 1}, so the shares are {0, hq} or {hq, 0}.
  bool runs_as_mqa() const noexcept { return alloc.size() > 1 && kv_heads_used() == 1; }
};

namespace detail {

/// The key-norm walk (Note [key norm order]; detail/core/key_norms.hpp) over any row source, run on the best
/// ISA the CPU and this TU allow (Note [dispatched key norms]).
template <class Rows>
std::vector<double> key_norms_walk(index_t seqs, index_t h, index_t d, index_t stride_d, const Rows& rows) {
  return core::key_norms_on(core::named_target{isa::best_runnable()}, seqs, h, d, stride_d, rows);
}

/// The rows of a dense view: every batch element has k.s keys.
template <class T>
struct dense_key_rows {
  const tensor_view<T>& k;
  index_t length(index_t) const noexcept { return k.s; }
  const T* operator()(index_t ib, index_t is, index_t g) const noexcept { return k.row(ib, is, g); }
};

/// Row (ib, is, g) of an int8 cache read as its fp32 values: scale · q, one fp32 product per element, as
/// the kernels compute them (Note [int8 K/V]).
struct q8_row {
  const std::int8_t* q;
  float scale;
  float operator[](index_t c) const noexcept { return dequantised(scale, q[c]); }
};
/// The rows of an int8 cache (every batch element has k.values.s keys), as q8_rows.
struct q8_key_rows {
  const q8_view& k;
  index_t length(index_t) const noexcept { return k.values.s; }
  q8_row operator()(index_t ib, index_t is, index_t g) const noexcept {
    return {k.values.row(ib, is, g), *k.scales.row(ib, is, g)};
  }
};

}  // namespace detail

/// Per KV head g: Σ_b ||k[b, :, g, :]||_F (unscaled keys, Frobenius over tokens × head_dim, summed over
/// the batch), accumulated in double in a fixed order (Note [key norm order]: identical bits for any
/// ISA or thread count).
/// Every key position of the view counts, including padding past an attention call's kv_lengths. (A
/// paged cache or a ragged batch counts each sequence's valid keys only: docs/api.md.)
/// T: float, bf16 or f16 (each element widened exactly: a 16-bit K's norms are those of its floats).
/// Runs on the best ISA the CPU has (Note [dispatched key norms]; the bits are the same on every ISA).
/// Throws gqa::invalid_argument for a null or empty view.
template <class T>
std::vector<double> key_norms(const tensor_view<T>& k) {
  detail::check_view(k, "k", "gqa::key_norms", /*unit_stride_d=*/false);
  return detail::key_norms_walk(k.b, k.h, k.d, k.stride_d, detail::dense_key_rows<T>{k});
}
/// key_norms() of an int8 cache: the norms of its fp32 values (scale · q; dequantize_q8's floats, so the
/// bits of key_norms() on them). Throws gqa::invalid_argument for a bad view or scales' shape.
inline std::vector<double> key_norms(const q8_view& k) {
  detail::check_q8(k, "k.values", "k.scales", "gqa::key_norms", /*unit_stride_d=*/false);
  return detail::key_norms_walk(k.values.b, k.values.h, k.values.d, k.values.stride_d, detail::q8_key_rows{k});
}

namespace detail {
/// proportional_shares in T (double, or float for the float32 arithmetic): every operation rounds to T.
template <class T>
std::vector<T> shares_in(std::span<const T> w, index_t total, const char* where) {
  require(!w.empty(), where, "w.size()", w.size(), "must be positive");
  require(total >= 0, where, "total", total, "must be >= 0");
  T sum = 0;
  for (std::size_t g = 0; g < w.size(); ++g) {
    if (!std::isfinite(w[g]) || w[g] < T(0)) fail(where, ": w[", g, "] = ", w[g], ": must be finite and >= 0");
    sum += w[g];
  }
  require(sum > T(0) && std::isfinite(sum), where, "sum(w)", sum, "must be positive and finite");
  const T t = static_cast<T>(total);  // torch multiplies by the Python int hq converted to the tensor's dtype
  std::vector<T> s(w.size());
  for (std::size_t g = 0; g < w.size(); ++g) s[g] = w[g] / sum * t;
  return s;
}

/// (w / Σw) · total in the chosen arithmetic, widened exactly; each share clamped to total (a float32
/// total above 2^24 may round up past it).
inline std::vector<double> shares_of(std::span<const double> w, index_t total, allocation_arithmetic a, const char* where) {
  std::vector<double> out;
  if (a == allocation_arithmetic::float32) {
    const std::vector<float> f(w.begin(), w.end());  // exact: float32 values
    const std::vector<float> s = shares_in<float>(f, total, where);
    out.assign(s.begin(), s.end());
  } else {
    out = shares_in<double>(w, total, where);
  }
  for (double& x : out) x = std::min(x, static_cast<double>(total));
  return out;
}
}  // namespace detail

/// shares[g] = (w[g] / Σ w) · total in double, Σ taken sequentially in index order, divide first (the
/// authors' operation order). Requires finite w[g] >= 0 with Σ w > 0 and total >= 0.
inline std::vector<double> proportional_shares(std::span<const double> w, index_t total) {
  return detail::shares_in(w, total, "gqa::proportional_shares");
}

/// Rounds each share half to even (torch.round semantics: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2).
/// std::nearbyint under the default FE_TONEAREST mode (gqa never changes the rounding mode); std::round
/// (half away from zero) would differ from the reference on every tie. Requires finite shares in
/// [0, INT_MAX]: NaN is never converted to an integer.
inline std::vector<int> round_half_even(std::span<const double> shares) {
  std::vector<int> a(shares.size());
  for (std::size_t g = 0; g < shares.size(); ++g) {
    if (!(shares[g] >= 0.0 && shares[g] <= static_cast<double>(INT_MAX)))
      detail::fail("gqa::round_half_even: shares[", g, "] = ", shares[g], ": must be finite and in [0, INT_MAX]");
    a[g] = static_cast<int>(std::nearbyint(shares[g]));
  }
  return a;
}

namespace detail {
inline void check_sum_fix_args(std::span<const int> a, index_t total, const char* where) {
  require(!a.empty(), where, "a.size()", a.size(), "must be positive");
  require(total >= 0 && total <= INT_MAX, where, "total", total, "must be in [0, INT_MAX]");
  for (std::size_t g = 0; g < a.size(); ++g)
    if (a[g] < 0) fail(where, ": a[", g, "] = ", a[g], ": must be >= 0");
}
inline index_t sum_of(std::span<const int> a) noexcept {
  index_t s = 0;
  for (const int x : a) s += x;
  return s;
}
inline std::size_t first_argmax(std::span<const int> a) noexcept {
  std::size_t best = 0;
  for (std::size_t g = 1; g < a.size(); ++g)
    if (a[g] > a[best]) best = g;
  return best;
}
/// hq and hkv of one KDGQA/DGQA allocation: hkv <= hq (more KV heads than query heads leaves
/// some unused by construction; rejected) and hq fits the int entries of an allocation.
inline void check_grouping_heads(index_t hq, index_t hkv, const char* where, const char* hq_name = "q.h",
                                 const char* hkv_name = "k.h") {
  require(hq >= 1 && hq <= INT_MAX, where, hq_name, hq, "must be in [1, INT_MAX]");
  require(hkv >= 1, where, hkv_name, hkv, "must be positive");
  if (hkv > hq)
    fail(where, ": ", hkv_name, " = ", hkv, ": must be <= ", hq_name, " = ", hq, " (more KV heads than query heads)");
}
inline std::size_t first_argmin(std::span<const int> a) noexcept {
  std::size_t best = 0;
  for (std::size_t g = 1; g < a.size(); ++g)
    if (a[g] < a[best]) best = g;
  return best;
}
}  // namespace detail

/// KDGQA's reference sum fix-up: while Σa > total decrement the FIRST arg-max, while
/// Σa < total increment the FIRST arg-min (torch.argmax/argmin pick the first index). Each iteration
/// moves Σa one step toward total, so it runs exactly |Σa - total| times; entries stay >= 0 because
/// the arg-max of a sum above total >= 0 is >= 1. Requires a[g] >= 0 and total in [0, INT_MAX].
inline void fix_sum_first_extreme(std::vector<int>& a, index_t total) {
  detail::check_sum_fix_args(a, total, "gqa::fix_sum_first_extreme");
  index_t sum = detail::sum_of(a);
  for (; sum > total; --sum) --a[detail::first_argmax(a)];
  for (; sum < total; ++sum) ++a[detail::first_argmin(a)];
}

/// Draws after which fix_sum_random stops retrying one decrement (see there): 64 · G.
constexpr index_t random_fix_miss_limit(std::size_t g) noexcept { return 64 * static_cast<index_t>(g); }

/// DGQA's reference sum repair with the reference's retry semantics: while Σa > total,
/// draw i uniform in [0, G) and decrement a[i] only if a[i] > 0 (a miss draws again); while Σa < total,
/// draw i and increment a[i]. Draws come from `rng` (gqa's counter-based stream, never std::
/// distributions), so saving and restoring rng.counter replays them. Termination: one decrement hits a
/// positive slot with probability >= 1/G per draw; after random_fix_miss_limit(G) misses in a row
/// (probability < e^-64) the first arg-max is decremented instead, so the loop provably ends.
/// Requires a[g] >= 0, total in [0, INT_MAX] and G <= UINT32_MAX.
inline void fix_sum_random(std::vector<int>& a, index_t total, random::stream& rng) {
  detail::check_sum_fix_args(a, total, "gqa::fix_sum_random");
  detail::require(a.size() <= UINT32_MAX, "gqa::fix_sum_random", "a.size()", a.size(), "must be <= UINT32_MAX");
  const auto n = static_cast<std::uint32_t>(a.size());
  index_t sum = detail::sum_of(a);
  while (sum > total) {
    bool done = false;
    for (index_t miss = 0; miss < random_fix_miss_limit(a.size()) && !done; ++miss) {
      const std::uint32_t i = rng.uniform_int(n);
      if (a[i] > 0) {
        --a[i];
        done = true;
      }
    }
    if (!done) --a[detail::first_argmax(a)];
    --sum;
  }
  for (; sum < total; ++sum) ++a[rng.uniform_int(n)];
}

/// Largest-remainder (Hamilton) allocation, non-reference: every KV head first gets
/// `min_per` seats; the other total - G·min_per seats are split by quotas (w[g] / Σw) · (total - G·min_per):
/// each gets the floor of its quota, and the seats left go one each to the largest fractional parts,
/// ties to the lower index. Requires finite w >= 0 with Σw > 0, 0 <= min_per and G·min_per <= total.
inline std::vector<int> hamilton_allocation(std::span<const double> w, index_t total, int min_per = 0) {
  constexpr const char* where = "gqa::hamilton_allocation";
  detail::require(!w.empty(), where, "w.size()", w.size(), "must be positive");
  detail::require(total >= 0 && total <= INT_MAX, where, "total", total, "must be in [0, INT_MAX]");
  detail::require(min_per >= 0, where, "min_per", min_per, "must be >= 0");
  const auto g_count = static_cast<index_t>(w.size());
  if (static_cast<index_t>(min_per) * g_count > total)
    detail::fail(where, ": min_per = ", min_per, ": min_per · G = ", static_cast<index_t>(min_per) * g_count,
                 " exceeds total = ", total);
  const index_t free_seats = total - static_cast<index_t>(min_per) * g_count;
  const std::vector<double> quota = proportional_shares(w, free_seats);
  std::vector<int> a(w.size());
  std::vector<double> frac(w.size());
  index_t given = 0;
  for (std::size_t g = 0; g < w.size(); ++g) {
    // quota <= free_seats up to rounding, so the floor fits an int; clamp guards the last ulp.
    const double f = std::min(std::floor(quota[g]), static_cast<double>(free_seats));
    a[g] = static_cast<int>(f);
    frac[g] = quota[g] - f;
    given += a[g];
  }
  std::vector<std::size_t> order(w.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t x, std::size_t y) { return frac[x] > frac[y]; });
  // Σ floor(quota) lies in (free_seats - G, free_seats], so at most G seats remain; the modulo only makes
  // an impossible overshoot of the floating-point quotas harmless.
  for (index_t r = 0; given + r < free_seats; ++r) ++a[order[static_cast<std::size_t>(r) % order.size()]];
  if (given > free_seats) fix_sum_first_extreme(a, free_seats);
  for (auto& x : a) x += min_per;
  return a;
}

/// The most even contiguous allocation: hq / hkv each, plus one for the first hq % hkv KV heads
/// (exactly uniform GQA when hkv divides hq). Used by the "uniform" fallback and dgqa_state::initial.
inline std::vector<int> balanced_allocation(index_t hq, index_t hkv) {
  constexpr const char* where = "gqa::balanced_allocation";
  detail::require(hq >= 1 && hq <= INT_MAX, where, "hq", hq, "must be in [1, INT_MAX]");
  detail::require(hkv >= 1, where, "hkv", hkv, "must be positive");
  std::vector<int> a(static_cast<std::size_t>(hkv));
  for (index_t g = 0; g < hkv; ++g) a[static_cast<std::size_t>(g)] = static_cast<int>(hq / hkv + (g < hq % hkv ? 1 : 0));
  return a;
}

/// True when `a` is an allocation of hq query heads to hkv KV heads with at least min_per each.
inline bool is_allocation(std::span<const int> a, index_t hq, index_t hkv, int min_per = 0) noexcept {
  if (static_cast<index_t>(a.size()) != hkv || hq < 1) return false;
  for (const int x : a)
    if (x < min_per || x < 0) return false;
  return detail::sum_of(a) == hq;
}

GQA_END_NAMESPACE
