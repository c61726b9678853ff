// gqa/variants/kdgqa.hpp: Key-Distributed GQA as a policy: on every call, query heads are shared out to KV
// heads in proportion to their min-max-scaled key norms (contiguous, possibly empty groups).
// Invariant: stateless apart from the last allocation (kept for logging and the `previous` fallback), which
// a mutex guards, so one policy may be shared between threads.
#pragma once

#include <algorithm>
#include <climits>
#include <cmath>
#include <mutex>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "allocation.hpp"
#include "model_shape.hpp"
#include "policy.hpp"

GQA_BEGIN_NAMESPACE

/// How KDGQA turns scaled norms into an allocation.
enum class allocation_rule {
  reference,  ///< the authors': round half to even, then fix the sum by first arg-max / first arg-min
  hamilton,   ///< non-reference: largest remainder, ties to the lower index, optional minimum
};
/// "reference" or "hamilton".
constexpr std::string_view to_string(allocation_rule r) noexcept {
  return r == allocation_rule::reference ? "reference" : r == allocation_rule::hamilton ? "hamilton" : "unknown";
}

struct kdgqa_options {
  allocation_rule rule = allocation_rule::reference;
  /// Non-reference: one allocation per batch element (gqa::forward plans each sample on its own), so a
  /// sample's output no longer depends on the rest of the batch. Equals the reference for b = 1.
  bool per_sample = false;
  /// Non-reference, hamilton only: every KV head serves at least this many query heads (no dead heads).
  int min_per_kv = 0;
  /// float32 (the authors', bit for bit) or float64 (departure): Note [allocation arithmetic]. It applies
  /// to the norms' rounding and the min-max scaling for both rules, and to the reference rule's shares.
  allocation_arithmetic arithmetic = allocation_arithmetic::float32;
};

namespace detail {
inline void check_kdgqa_options(const kdgqa_options& opt, const char* where) {
  if (opt.rule != allocation_rule::reference && opt.rule != allocation_rule::hamilton)
    fail(where, ": options.rule = ", static_cast<int>(opt.rule), ": must be allocation_rule::reference or hamilton");
  require(opt.min_per_kv >= 0, where, "options.min_per_kv", opt.min_per_kv, "must be >= 0");
  if (opt.min_per_kv > 0 && opt.rule != allocation_rule::hamilton)
    fail(where, ": options.min_per_kv = ", opt.min_per_kv,
         ": a minimum per KV head needs options.rule = allocation_rule::hamilton (the reference rule has none)");
  if (to_string(opt.arithmetic) == "unknown")
    fail(where, ": options.arithmetic = ", static_cast<int>(opt.arithmetic),
         ": must be allocation_arithmetic::float32 or float64");
}

/// n̂[g] = (n[g] - min n) / (max n - min n) in the chosen arithmetic (Note [allocation arithmetic]; float32
/// results are returned widened, exactly). Requires finite n with max > min (float32: n already rounded).
inline std::vector<double> min_max_scaled(std::span<const double> n, allocation_arithmetic a) {
  std::vector<double> out(n.size());
  if (a == allocation_arithmetic::float32) {
    std::vector<float> f(n.begin(), n.end());  // exact: the caller rounded n to float
    const float lo = *std::min_element(f.begin(), f.end()), hi = *std::max_element(f.begin(), f.end());
    const float range = hi - lo;
    for (std::size_t g = 0; g < f.size(); ++g) out[g] = (f[g] - lo) / range;
  } else {
    const double lo = *std::min_element(n.begin(), n.end()), hi = *std::max_element(n.begin(), n.end());
    for (std::size_t g = 0; g < n.size(); ++g) out[g] = (n[g] - lo) / (hi - lo);
  }
  return out;
}

inline allocation_result kdgqa_fallback(grouping_status why, index_t hq, std::size_t hkv,
                                        std::span<const int> previous, int min_per_kv) {
  allocation_result r;
  r.status = why;
  const auto g = static_cast<index_t>(hkv);
  if (hq % g != 0 && is_allocation(previous, hq, g, min_per_kv)) {
    r.alloc.assign(previous.begin(), previous.end());
    r.fallback = grouping_fallback::previous;
  } else {
    r.alloc = balanced_allocation(hq, g);
    r.fallback = grouping_fallback::uniform;
  }
  return r;
}
}  // namespace detail

/// KDGQA's allocation from per-KV-head key norms, a pure function. With float32 arithmetic (the default)
/// the norms are first rounded to float32 and every step below is float32 (Note [allocation arithmetic]).
/// reference rule: n̂ = (n - min n) / (max n - min n); a = round_half_even((n̂ / Σn̂) · hq); then while
/// Σa > hq decrement the first arg-max, while Σa < hq increment the first arg-min. hamilton rule:
/// hamilton_allocation(n̂, hq, min_per_kv). Fallbacks (the authors' code divides 0 by 0 there and then
/// loops about 2^31 times), checked in this order: one KV head (fallback_single_kv), a non-finite norm
/// (fallback_nonfinite; in float32 also a norm above FLT_MAX), max - min <= 1e-6 · max
/// (fallback_equal_norms); each takes uniform groups when hkv divides hq, else `previous` when it is a
/// valid allocation (size hkv, entries >= min_per_kv, sum hq), else balanced_allocation (reported as
/// `uniform`). An invalid or empty `previous` is simply not used. With two KV heads the reference rule
/// always gives every query head to the larger norm (result.runs_as_mqa()).
/// Throws for: no norms, a negative finite norm, hq outside [hkv, INT_MAX], invalid options.
inline allocation_result kdgqa_allocate(std::span<const double> norms, index_t hq, const kdgqa_options& opt = {},
                                        std::span<const int> previous = {}) {
  constexpr const char* where = "gqa::kdgqa_allocate";
  detail::check_kdgqa_options(opt, where);
  detail::require(!norms.empty(), where, "norms.size()", norms.size(), "must be positive (one norm per KV head)");
  const auto hkv = static_cast<index_t>(norms.size());
  detail::require(hq >= 1 && hq <= INT_MAX, where, "hq", hq, "must be in [1, INT_MAX]");
  if (hkv > hq) detail::fail(where, ": norms.size() = ", hkv, ": must be <= hq = ", hq, " (more KV heads than query heads)");
  if (static_cast<index_t>(opt.min_per_kv) * hkv > hq)
    detail::fail(where, ": options.min_per_kv = ", opt.min_per_kv, ": min_per_kv · hkv = ",
                 static_cast<index_t>(opt.min_per_kv) * hkv, " exceeds hq = ", hq);
  std::vector<double> n(norms.begin(), norms.end());
  bool finite = true;
  for (std::size_t g = 0; g < n.size(); ++g) {
    if (std::isfinite(n[g]) && n[g] < 0.0) detail::fail(where, ": norms[", g, "] = ", n[g], ": must be >= 0");
    if (opt.arithmetic == allocation_arithmetic::float32) n[g] = static_cast<float>(n[g]);
    finite = finite && std::isfinite(n[g]);
  }
  const int min_per = opt.rule == allocation_rule::hamilton ? opt.min_per_kv : 0;
  if (hkv == 1) return detail::kdgqa_fallback(grouping_status::fallback_single_kv, hq, norms.size(), previous, min_per);
  if (!finite) return detail::kdgqa_fallback(grouping_status::fallback_nonfinite, hq, norms.size(), previous, min_per);
  const double lo = *std::min_element(n.begin(), n.end());
  const double hi = *std::max_element(n.begin(), n.end());
  // Equal (or all-zero) norms make min-max scaling 0/0: the authors' code turns that NaN into INT32_MIN
  // and then loops ~2^31 times. A relative 1e-6 band also catches norms equal up to rounding.
  if (hi - lo <= 1e-6 * hi)
    return detail::kdgqa_fallback(grouping_status::fallback_equal_norms, hq, norms.size(), previous, min_per);

  const std::vector<double> scaled = detail::min_max_scaled(n, opt.arithmetic);
  allocation_result r;
  if (opt.rule == allocation_rule::reference) {
    // n̂ ∈ [0, 1] with n̂ = 1 at the max, so Σn̂ >= 1 and every share is finite and in [0, hq].
    r.shares = detail::shares_of(scaled, hq, opt.arithmetic, where);
    r.alloc = round_half_even(r.shares);
    fix_sum_first_extreme(r.alloc, hq);
  } else {
    r.alloc = hamilton_allocation(scaled, hq, opt.min_per_kv);
  }
  return r;
}

/// KDGQA policy: plan() computes key_norms(k), then kdgqa_allocate(norms, q.h, options, previous = the
/// last plan's allocation), and returns head_map::from_allocation. No RNG, no state that changes the
/// result except through the `previous` fallback. With options.per_sample, gqa::forward calls plan() once
/// per batch element (on single-sample views). last().runs_as_mqa() reports a call that gave every query
/// head to one KV head: always so with two KV heads (min-max scaling maps two norms to {0, 1}).
/// Thread safety: one policy may serve concurrent calls. The last allocation is read and replaced under a
/// mutex, so the plans form one sequence in which each sees its predecessor's allocation as `previous`;
/// with concurrent calls that order, and so last(), follows the threads' timing (it matters only for
/// the `previous` fallback: equal or non-finite norms when hkv does not divide hq).
class kdgqa_policy {
 public:
  static constexpr std::string_view name = "kdgqa";
  /// Registry (variants/registry.hpp): H query heads shared out to G KV heads; the reference rule.
  static constexpr variant_heads heads_for(const model_shape& m) noexcept { return {m.heads, m.groups, m.groups}; }
  static kdgqa_policy make(const model_shape&, const variant_heads&) { return kdgqa_policy{}; }

  /// Throws gqa::invalid_argument for invalid options.
  explicit kdgqa_policy(kdgqa_options opt = {}) : opt_(opt) { detail::check_kdgqa_options(opt_, "gqa::kdgqa_policy"); }
  /// Copies the options and the other policy's last allocation (the mutex is not copied).
  kdgqa_policy(const kdgqa_policy& other) : opt_(other.opt_), last_(other.last()) {}
  kdgqa_policy& operator=(const kdgqa_policy& other) {
    if (this != &other) {
      allocation_result l = other.last();
      const std::lock_guard<std::mutex> lock(mutex_);
      opt_ = other.opt_;
      last_ = std::move(l);
    }
    return *this;
  }

  /// k.h <= q.h and min_per_kv · k.h <= q.h.
  template <class Q, class K, class V, class O>
  void check(const tensor_view<Q>& q, const tensor_view<K>& k, const tensor_view<V>&,
             const tensor_view<O>&) const {
    check_heads(q.h, k.h);
  }

  /// The allocation for this call's keys (see kdgqa_allocate); last() keeps it.
  /// plan() reads the key norms of K (policy_plans_from_keys): plan_from_norms(q.h, k.h, key_norms(k)).
  static constexpr bool plans_from_keys = true;
  template <class Q, class K>
  head_map plan(const tensor_view<Q>& q, const tensor_view<K>& k) {
    return plan_from_norms(q.h, k.h, [&] { return key_norms(k); });
  }
  /// The allocation for hq query heads from the hkv key norms `norms()` gives (a paged cache's or a
  /// ragged batch's: each sequence's valid keys); last() keeps it. Throws as check() does, and if
  /// norms() does not give hkv norms.
  head_map plan_from_norms(index_t hq, index_t hkv, const key_norms_source& norms) {
    check_heads(hq, hkv);
    const std::vector<double> n = norms();
    detail::require(std::cmp_equal(n.size(), hkv), "gqa::kdgqa_policy", "norms().size()", n.size(),
                    "must equal k.h = ", hkv);
    allocation_result r;
    {
      // Read `previous` and publish this plan's allocation in one step (see Thread safety above).
      const std::lock_guard<std::mutex> lock(mutex_);
      r = kdgqa_allocate(n, hq, opt_, last_.alloc);
      last_ = r;
    }
    return head_map::from_allocation(r.alloc);
  }

  bool per_sample() const noexcept { return opt_.per_sample; }
  const kdgqa_options& options() const noexcept { return opt_; }
  /// A copy of the last plan's allocation and status (empty alloc before the first plan); a copy, because
  /// another thread's plan may replace it at any time.
  allocation_result last() const {
    const std::lock_guard<std::mutex> lock(mutex_);
    return last_;
  }

 private:
  void check_heads(index_t hq, index_t hkv) const {
    detail::check_grouping_heads(hq, hkv, "gqa::kdgqa_policy");
    if (static_cast<index_t>(opt_.min_per_kv) * hkv > hq)
      detail::fail("gqa::kdgqa_policy: options.min_per_kv = ", opt_.min_per_kv, ": min_per_kv · k.h = ",
                   static_cast<index_t>(opt_.min_per_kv) * hkv, " exceeds q.h = ", hq);
  }

  kdgqa_options opt_;
  mutable std::mutex mutex_;  // guards last_
  allocation_result last_;
};

GQA_END_NAMESPACE
