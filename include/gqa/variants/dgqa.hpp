// gqa/variants/dgqa.hpp: Dynamic Key-Distributed GQA as a policy over caller-owned state
// {cache, splits, rng counter}: allocations follow the change (diff) or a mix (ema) of the key norms,
// updated every `window` training steps and on every eval call. Invariant: state.splits is always a valid
// allocation of q.h query heads (checked before use); the policy never reads a hidden global.
#pragma once

#include <climits>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../random.hpp"
#include "allocation.hpp"
#include "model_shape.hpp"
#include "policy.hpp"

GQA_BEGIN_NAMESPACE

/// How a KV head's score is formed from the cache c and the current magnitude m.
enum class dgqa_kind {
  diff,  ///< |c - m|
  ema,   ///< beta · m + (1 - beta) · c (reference: beta = 0.9 weights the CURRENT magnitude; not recursive)
};
enum class dgqa_mode { train, eval };
/// How the rounded shares are repaired to sum to q.h.
enum class dgqa_repair {
  reference_random,  ///< the reference's random retry loops, drawing from gqa's seeded stream
  hamilton,          ///< non-reference: largest remainder, ties to the lower index (deterministic)
};
/// What the cache becomes after an update.
enum class dgqa_cache_update {
  reference,    ///< train: (c + m) / window; eval: m (exactly the reference code)
  prev_window,  ///< non-reference: m (the last update's magnitudes), in train and eval
  true_ema,     ///< non-reference: beta · c + (1 - beta) · m (a recursive EMA), in train and eval
};

constexpr std::string_view to_string(dgqa_kind k) noexcept {
  return k == dgqa_kind::diff ? "diff" : k == dgqa_kind::ema ? "ema" : "unknown";
}
constexpr std::string_view to_string(dgqa_mode m) noexcept {
  return m == dgqa_mode::train ? "train" : m == dgqa_mode::eval ? "eval" : "unknown";
}
constexpr std::string_view to_string(dgqa_repair r) noexcept {
  return r == dgqa_repair::reference_random ? "reference_random" : r == dgqa_repair::hamilton ? "hamilton" : "unknown";
}
constexpr std::string_view to_string(dgqa_cache_update u) noexcept {
  switch (u) {
    case dgqa_cache_update::reference: return "reference";
    case dgqa_cache_update::prev_window: return "prev_window";
    case dgqa_cache_update::true_ema: return "true_ema";
  }
  return "unknown";
}

struct dgqa_options {
  dgqa_kind kind = dgqa_kind::diff;
  /// Training updates happen when step % window == 0 (window >= 1; the reference's W).
  index_t window = 1;
  dgqa_repair repair = dgqa_repair::reference_random;
  dgqa_cache_update cache_update = dgqa_cache_update::reference;
  /// Reference: true (an eval call overwrites cache, splits and the rng counter). false: eval calls are
  /// pure functions of (state, keys) and leave the state untouched.
  bool eval_updates_state = true;
  /// In [0, 1]. The ema score weight on the current magnitude, and true_ema's weight on the old cache.
  /// A double like the authors' Python constant: the weights used are float(beta) and float(1 - beta),
  /// as torch rounds 0.9 and 1. - 0.9 to float32 (0.9f and 0.1f).
  double beta = 0.9;
  /// float32 (the authors', default) or float64 (departure) scores, shares and reference cache update:
  /// Note [allocation arithmetic], Note [dgqa arithmetic].
  allocation_arithmetic arithmetic = allocation_arithmetic::float32;
  std::uint64_t seed = 0;   ///< seed of the reference_random repair draws
  std::uint64_t layer = 0;  ///< layer id: distinct layers draw distinct streams from one seed
};

/// DGQA's persistent state, owned by the caller: plain data, save it with the model and restore it to
/// replay exactly (including the repair draws, which continue from rng_counter).
struct dgqa_state {
  std::vector<float> cache;      ///< one per KV head, >= 0 (+inf tolerated), never NaN
  std::vector<int> splits;       ///< the current allocation: one per KV head, >= 0, sum q.h
  std::uint64_t rng_counter = 0; ///< draws consumed so far by the reference_random repair

  /// cache zeros; splits hq / hkv each, plus one for the first hq % hkv KV heads (the reference uses
  /// (hq // hkv,) * hkv, which does not sum to hq when hkv does not divide it and then fails in
  /// torch.split; gqa takes the balanced allocation instead). Requires 1 <= hkv <= hq <= INT_MAX.
  static dgqa_state initial(index_t hq, index_t hkv) {
    detail::check_grouping_heads(hq, hkv, "gqa::dgqa_state::initial", "hq", "hkv");
    dgqa_state s;
    s.cache.assign(static_cast<std::size_t>(hkv), 0.0f);
    s.splits = balanced_allocation(hq, hkv);
    return s;
  }
};

namespace detail {
/// The float32 product a·b, materialised: the volatile store keeps the compiler from fusing it into a
/// following sum (an FMA rounds once where the authors' torch code rounds twice; GCC contracts across
/// statements and even narrows a double product of floats back to a float one first).
inline float mul_f32(float a, float b) noexcept {
  volatile float p = a * b;
  return p;
}
}  // namespace detail

/// Key of the random::stream DGQA's repair draws from: draw i of layer L is
/// random::hash(seed, {dgqa_stream_key(L), i}) with i = state.rng_counter, rng_counter + 1, ...
constexpr std::uint64_t dgqa_stream_key(std::uint64_t layer) noexcept {
  return random::hash(layer, {0x6467716172657061ULL});  // "dgqarepa": separates DGQA from other streams
}

/// DGQA policy. Per call, with m[g] = key_norms(k)[g] rounded to float (the reference's and the cache's
/// dtype) and c = state.cache:
///   train mode, step % window != 0: reuse state.splits (last().updated = false), state untouched;
///   train mode, step % window == 0, and every eval call: score[g] = |c - m| (diff) or beta·m + (1-beta)·c
///   (ema); a = round_half_even((score / Σscore) · q.h), repaired by fix_sum_random (reference_random) or
///   a = hamilton_allocation(score, q.h); then, in train or when eval_updates_state, state.splits = a,
///   state.cache = the cache_update rule, state.rng_counter advances past the draws used.
/// Fallbacks: a non-finite magnitude keeps the previous splits and leaves the whole state untouched (one
/// bad batch does not poison the cache); a non-finite score or Σscore == 0 keeps the previous splits and
/// still updates the cache. Both are reported in last().
/// Thread safety: none. plan() reads and updates the caller's state, which describes one sequence of
/// training steps or eval calls; use one policy, with its own dgqa_state, per thread (or serialise the
/// calls: a policy and its state may move between threads, never be used by two at once).
class dgqa_policy {
 public:
  static constexpr std::string_view name = "dgqa";
  /// Registry (variants/registry.hpp): H query heads shared out to G KV heads. A DGQA policy needs
  /// caller-owned state, so the registry's factory is with(): it calls fn(policy) on a policy over a fresh
  /// dgqa_state::initial(hq, hkv), in eval mode (every call recomputes the allocation, as inference does),
  /// kind ema (diff on an exactly repeated batch, as in repeated timing calls, scores 0 and takes the
  /// zero-score fallback; both kinds do the same work), repair draws seeded by the model's seed.
  static constexpr variant_heads heads_for(const model_shape& m) noexcept { return {m.heads, m.groups, m.groups}; }
  template <class Fn>
  static decltype(auto) with(const model_shape& m, const variant_heads& h, Fn&& fn) {
    dgqa_state state = dgqa_state::initial(h.hq, h.hkv);
    dgqa_options o;
    o.kind = dgqa_kind::ema;
    o.seed = m.seed;
    dgqa_policy p(o, state);
    p.set_mode(dgqa_mode::eval);
    return fn(p);
  }

  /// Keeps a reference to `state` (which must outlive the policy). Starts in dgqa_mode::eval with no step.
  /// Throws gqa::invalid_argument for invalid options.
  dgqa_policy(dgqa_options opt, dgqa_state& state) : opt_(opt), state_(&state) {
    constexpr const char* where = "gqa::dgqa_policy";
    detail::require(opt_.window >= 1, where, "options.window", opt_.window, "must be >= 1");
    detail::require(std::isfinite(opt_.beta) && opt_.beta >= 0.0f && opt_.beta <= 1.0f, where, "options.beta",
                    opt_.beta, "must be in [0, 1]");
    if (to_string(opt_.kind) == "unknown")
      detail::fail(where, ": options.kind = ", static_cast<int>(opt_.kind), ": must be dgqa_kind::diff or ema");
    if (to_string(opt_.repair) == "unknown")
      detail::fail(where, ": options.repair = ", static_cast<int>(opt_.repair),
                   ": must be dgqa_repair::reference_random or hamilton");
    if (to_string(opt_.cache_update) == "unknown")
      detail::fail(where, ": options.cache_update = ", static_cast<int>(opt_.cache_update),
                   ": must be dgqa_cache_update::reference, prev_window or true_ema");
    if (to_string(opt_.arithmetic) == "unknown")
      detail::fail(where, ": options.arithmetic = ", static_cast<int>(opt_.arithmetic),
                   ": must be allocation_arithmetic::float32 or float64");
  }

  void set_mode(dgqa_mode m) {
    if (to_string(m) == "unknown")
      detail::fail("gqa::dgqa_policy::set_mode: mode = ", static_cast<int>(m), ": must be dgqa_mode::train or eval");
    mode_ = m;
  }
  dgqa_mode mode() const noexcept { return mode_; }
  /// The training step of the next plans (explicit: no hidden global). Required before a train-mode
  /// plan; it stays until changed, so call it once per training step.
  void set_step(std::uint64_t step) noexcept { step_ = step; }
  std::optional<std::uint64_t> step() const noexcept { return step_; }

  /// k.h <= q.h; state.cache and state.splits have k.h entries; splits is an allocation of q.h heads;
  /// cache entries are >= 0 and not NaN; a step is set in train mode.
  template <class Q, class K, class V, class O>
  void check(const tensor_view<Q>& q, const tensor_view<K>& k, const tensor_view<V>&,
             const tensor_view<O>&) const {
    check_call(q.h, k.h);
  }

  /// plan() reads the key norms of K (a dense K: policy_plans_from_keys).
  static constexpr bool plans_from_keys = true;

  /// This call's map, per the class comment; updates the caller's state as described there.
  /// plan_from_norms(q.h, k.h, key_norms(k)).
  template <class Q, class K>
  head_map plan(const tensor_view<Q>& q, const tensor_view<K>& k) {
    return plan_from_norms(q.h, k.h, [&] { return key_norms(k); });
  }

  /// plan() from the hkv key norms `norms()` gives (a paged cache's or a ragged batch's: each sequence's
  /// valid keys), called only when this call updates the allocation; the state advances exactly as for
  /// plan(). Throws as check() does, and if norms() does not give hkv norms (state untouched).
  head_map plan_from_norms(index_t hq, index_t hkv_heads, const key_norms_source& norms_of_call) {
    check_call(hq, hkv_heads);
    dgqa_state& st = *state_;
    const bool train = mode_ == dgqa_mode::train;
    if (train && *step_ % static_cast<std::uint64_t>(opt_.window) != 0) {
      last_ = allocation_result{st.splits, grouping_status::ok, grouping_fallback::none, false, {}};
      return head_map::from_allocation(st.splits);
    }
    const std::vector<double> norms = norms_of_call();
    detail::require(std::cmp_equal(norms.size(), hkv_heads), "gqa::dgqa_policy", "norms().size()", norms.size(),
                    "must equal k.h = ", hkv_heads);
    const std::size_t hkv = norms.size();
    std::vector<float> m(hkv);
    bool finite = true;
    for (std::size_t g = 0; g < hkv; ++g) {
      m[g] = static_cast<float>(norms[g]);
      finite = finite && std::isfinite(m[g]);
    }
    allocation_result r{st.splits, grouping_status::ok, grouping_fallback::none, true, {}};
    if (!finite) {
      r.status = grouping_status::fallback_nonfinite;
      r.fallback = grouping_fallback::previous;
      last_ = std::move(r);
      return head_map::from_allocation(st.splits);
    }
    // Note [dgqa arithmetic]
    // float32 (the authors'): score = |c - m| or float(w_now·m) + float(w_old·c), then Σ in index order
    // and score / Σ · hq, each a float operation, as torch evaluates dgqa.py:105-108 / 124-127 on float32
    // tensors with the Python constants rounded to float. Each product is materialised in a float
    // (detail::mul_f32) before the sum, so no FMA contraction can fuse it (measured: the AVX-512 build
    // fused the true_ema update and changed its bits), and every ISA gives the same bits. float64: the
    // same expressions in double from the same float inputs and weights (products exact, each sum rounded
    // once, so an FMA changes nothing).
    const bool f32 = opt_.arithmetic == allocation_arithmetic::float32;
    const float w_now = static_cast<float>(opt_.beta), w_old = static_cast<float>(1.0 - opt_.beta);
    std::vector<double> score(hkv);
    double sum = 0.0;
    float sum_f = 0.0f;
    bool score_finite = true;
    for (std::size_t g = 0; g < hkv; ++g) {
      const float c = st.cache[g], mg = m[g];
      if (f32) {
        const float s = opt_.kind == dgqa_kind::diff ? std::fabs(c - mg) : detail::mul_f32(w_now, mg) + detail::mul_f32(w_old, c);
        score[g] = s;
        sum_f += s;
      } else {
        const double cd = c, md = mg;
        score[g] = opt_.kind == dgqa_kind::diff ? std::fabs(cd - md)
                                                : static_cast<double>(w_now) * md + static_cast<double>(w_old) * cd;
        sum += score[g];
      }
      score_finite = score_finite && std::isfinite(score[g]);
    }
    if (f32) sum = sum_f;
    random::stream rng{opt_.seed, dgqa_stream_key(opt_.layer), st.rng_counter};
    if (!score_finite || !std::isfinite(sum)) {
      r.status = grouping_status::fallback_nonfinite;
      r.fallback = grouping_fallback::previous;
    } else if (sum == 0.0) {
      // The authors' code divides 0 by 0 here and then loops ~2^31 times.
      r.status = grouping_status::fallback_zero_score;
      r.fallback = grouping_fallback::previous;
    } else if (opt_.repair == dgqa_repair::reference_random) {
      r.shares = detail::shares_of(score, hq, opt_.arithmetic, "gqa::dgqa_policy");
      r.alloc = round_half_even(r.shares);
      fix_sum_random(r.alloc, hq, rng);
    } else {
      r.alloc = hamilton_allocation(score, hq);
    }
    if (train || opt_.eval_updates_state) {
      st.splits = r.alloc;
      st.rng_counter = rng.counter;
      for (std::size_t g = 0; g < hkv; ++g) st.cache[g] = updated_cache(st.cache[g], m[g], train);
    }
    head_map map = head_map::from_allocation(r.alloc);
    last_ = std::move(r);
    return map;
  }

  /// The last plan's allocation and status (empty alloc before the first plan).
  const allocation_result& last() const noexcept { return last_; }
  const dgqa_options& options() const noexcept { return opt_; }
  dgqa_state& state() const noexcept { return *state_; }

 private:
  float updated_cache(float c, float m, bool train) const noexcept {
    const bool f32 = opt_.arithmetic == allocation_arithmetic::float32;  // See Note [dgqa arithmetic]
    switch (opt_.cache_update) {
      case dgqa_cache_update::reference:
        // The reference's "window average" (c + m) / W: a running sum for W = 1, fixed point m/(W-1)
        // for W > 1; eval stores m undivided. float32: torch's float add, then float divide by W.
        if (!train) return m;
        if (f32) return (c + m) / static_cast<float>(opt_.window);
        return static_cast<float>((static_cast<double>(c) + static_cast<double>(m)) / static_cast<double>(opt_.window));
      case dgqa_cache_update::prev_window: return m;
      case dgqa_cache_update::true_ema: {
        const float w_old = static_cast<float>(opt_.beta), w_new = static_cast<float>(1.0 - opt_.beta);
        if (f32) return detail::mul_f32(w_old, c) + detail::mul_f32(w_new, m);
        return static_cast<float>(static_cast<double>(w_old) * c + static_cast<double>(w_new) * m);
      }
    }
    return m;
  }

  void check_call(index_t hq, index_t hkv) const {
    constexpr const char* where = "gqa::dgqa_policy";
    detail::check_grouping_heads(hq, hkv, where);
    const dgqa_state& st = *state_;
    detail::require(static_cast<index_t>(st.cache.size()) == hkv, where, "state.cache.size()", st.cache.size(),
                    "must equal k.h = ", hkv);
    detail::require(static_cast<index_t>(st.splits.size()) == hkv, where, "state.splits.size()", st.splits.size(),
                    "must equal k.h = ", hkv);
    index_t sum = 0;
    for (std::size_t g = 0; g < st.splits.size(); ++g) {
      if (st.splits[g] < 0) detail::fail(where, ": state.splits[", g, "] = ", st.splits[g], ": must be >= 0");
      sum += st.splits[g];
    }
    if (sum != hq)
      detail::fail(where, ": sum(state.splits) = ", sum, ": must equal q.h = ", hq,
                   " (a state saved for other head counts?)");
    for (std::size_t g = 0; g < st.cache.size(); ++g)
      if (!(st.cache[g] >= 0.0f)) detail::fail(where, ": state.cache[", g, "] = ", st.cache[g], ": must be >= 0 (not NaN)");
    if (mode_ == dgqa_mode::train && !step_)
      detail::fail(where, ": step = (unset): call set_step(step) before planning in dgqa_mode::train");
  }

  dgqa_options opt_;
  dgqa_state* state_;
  dgqa_mode mode_ = dgqa_mode::eval;
  std::optional<std::uint64_t> step_;
  allocation_result last_;
};

GQA_END_NAMESPACE
