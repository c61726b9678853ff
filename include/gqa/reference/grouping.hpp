// gqa/reference/grouping.hpp: plain transcriptions of the KDGQA allocation (spec §5.2, §5.6.1, §5.8) and of
// one DGQA update (§6.3, §6.8), written from the spec and docs/variants.md, not from gqa/variants/*: no
// policy helper is called. Only gqa/random.hpp is shared, because its stream *defines* DGQA's repair draws.
// Not part of gqa/gqa.hpp; test code, so preconditions are not checked. Calls inside are qualified
// (reference::) so argument-dependent lookup never picks a policy's same-named gqa:: function.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "../config.hpp"
#include "../random.hpp"
#include "../tensor.hpp"

GQA_BEGIN_NAMESPACE
namespace reference {

/// One grouping decision. status/fallback use the spelling of gqa::to_string(grouping_status /
/// grouping_fallback) so tests can compare them with a policy's last().
struct grouping {
  std::vector<int> alloc;         // query heads per KV head
  std::vector<index_t> kv_of_q;   // the contiguous map those sizes give
  std::string status = "ok";
  std::string fallback = "none";
  bool updated = true;
};

/// n[g] = Σ_b sqrt(Σ_{token, channel} k[b, token, g, channel]²), in double, loops in (g, b, token, channel)
/// order.
inline std::vector<double> key_norms(const tensor_view<const float>& k) {
  std::vector<double> n(static_cast<std::size_t>(k.h), 0.0);
  for (index_t g = 0; g < k.h; ++g)
    for (index_t b = 0; b < k.b; ++b) {
      double sum_sq = 0.0;
      for (index_t s = 0; s < k.s; ++s)
        for (index_t c = 0; c < k.d; ++c) {
          const double x = k(b, s, g, c);
          sum_sq += x * x;
        }
      n[static_cast<std::size_t>(g)] += std::sqrt(sum_sq);
    }
  return n;
}

/// KV head g serves the next alloc[g] query heads.
inline std::vector<index_t> map_of(const std::vector<int>& alloc) {
  std::vector<index_t> m;
  for (std::size_t g = 0; g < alloc.size(); ++g)
    for (int j = 0; j < alloc[g]; ++j) m.push_back(static_cast<index_t>(g));
  return m;
}

/// Round half to even by hand (independent of std::nearbyint and of the FP environment): x - floor(x)
/// is exact for x >= 0, so the three-way comparison with 0.5 is exact.
inline int round_half_even(double x) {
  const double f = std::floor(x);
  const double frac = x - f;
  int r = static_cast<int>(f);
  if (frac > 0.5 || (frac == 0.5 && r % 2 != 0)) ++r;
  return r;
}

inline int total_of(const std::vector<int>& a) {
  int s = 0;
  for (int x : a) s += x;
  return s;
}

/// hq / hkv each, one more for the first hq % hkv KV heads.
inline std::vector<int> balanced(index_t hq, index_t hkv) {
  std::vector<int> a;
  for (index_t g = 0; g < hkv; ++g) a.push_back(static_cast<int>(hq / hkv + (g < hq % hkv ? 1 : 0)));
  return a;
}

/// Largest remainder: min_per each, then floor((w/Σw)·rest), then one more seat at a time to the largest
/// remaining fraction (first index on ties), each fraction used once.
inline std::vector<int> hamilton(const std::vector<double>& w, index_t total, int min_per) {
  const index_t rest = total - static_cast<index_t>(min_per) * static_cast<index_t>(w.size());
  double sum = 0.0;
  for (double x : w) sum += x;
  std::vector<int> a(w.size());
  std::vector<double> frac(w.size());
  index_t given = 0;
  for (std::size_t g = 0; g < w.size(); ++g) {
    const double quota = w[g] / sum * static_cast<double>(rest);
    a[g] = static_cast<int>(std::floor(quota));
    frac[g] = quota - std::floor(quota);
    given += a[g];
  }
  for (; given < rest; ++given) {
    std::size_t best = 0;
    for (std::size_t g = 1; g < w.size(); ++g)
      if (frac[g] > frac[best]) best = g;
    ++a[best];
    frac[best] = -1.0;
  }
  for (int& x : a) x += min_per;
  return a;
}

struct kdgqa_setup {
  bool hamilton = false;  // false: the reference rule
  int min_per_kv = 0;     // hamilton only
};

/// KDGQA's grouping of one call from its keys: norms, the three fallbacks (one KV head, a non-finite
/// norm, max - min <= 1e-6·max) taking uniform (balanced) groups when hkv divides hq and otherwise a valid
/// `previous`; else min-max scaling and the reference rule (round half even of (n̂/Σn̂)·hq, then first
/// arg-max decrements / first arg-min increments) or the hamilton rule.
inline grouping kdgqa(const tensor_view<const float>& k, index_t hq, const kdgqa_setup& setup = {},
                      const std::vector<int>& previous = {}) {
  const std::vector<double> n = reference::key_norms(k);
  const index_t hkv = k.h;
  const int min_per = setup.hamilton ? setup.min_per_kv : 0;
  grouping out;
  auto fall_back = [&](const char* why) {
    out.status = why;
    bool previous_ok = static_cast<index_t>(previous.size()) == hkv && total_of(previous) == hq;
    for (int x : previous) previous_ok = previous_ok && x >= min_per && x >= 0;
    if (hq % hkv != 0 && previous_ok) {
      out.alloc = previous;
      out.fallback = "previous";
    } else {
      out.alloc = reference::balanced(hq, hkv);
      out.fallback = "uniform";
    }
    out.kv_of_q = reference::map_of(out.alloc);
    return out;
  };
  if (hkv == 1) return fall_back("fallback_single_kv");
  for (double x : n)
    if (!std::isfinite(x)) return fall_back("fallback_nonfinite");
  double lo = n[0], hi = n[0];
  for (double x : n) {
    if (x < lo) lo = x;
    if (x > hi) hi = x;
  }
  if (hi - lo <= 1e-6 * hi) return fall_back("fallback_equal_norms");

  std::vector<double> scaled;
  double sum = 0.0;
  for (double x : n) {
    scaled.push_back((x - lo) / (hi - lo));
    sum += scaled.back();
  }
  if (setup.hamilton) {
    out.alloc = reference::hamilton(scaled, hq, setup.min_per_kv);
  } else {
    for (double x : scaled) out.alloc.push_back(reference::round_half_even(x / sum * static_cast<double>(hq)));
    while (total_of(out.alloc) > hq) {
      std::size_t at = 0;
      for (std::size_t g = 1; g < out.alloc.size(); ++g)
        if (out.alloc[g] > out.alloc[at]) at = g;
      out.alloc[at] -= 1;
    }
    while (total_of(out.alloc) < hq) {
      std::size_t at = 0;
      for (std::size_t g = 1; g < out.alloc.size(); ++g)
        if (out.alloc[g] < out.alloc[at]) at = g;
      out.alloc[at] += 1;
    }
  }
  out.kv_of_q = reference::map_of(out.alloc);
  return out;
}

/// DGQA's persistent state (the same three fields as gqa::dgqa_state).
struct dgqa_memory {
  std::vector<float> cache;
  std::vector<int> splits;
  std::uint64_t rng_counter = 0;
};

struct dgqa_setup {
  bool ema = false;                          // false: diff
  index_t window = 1;
  bool hamilton = false;                     // false: the reference's random repair
  std::string cache_update = "reference";    // "reference", "prev_window" or "true_ema"
  bool eval_updates_state = true;
  float beta = 0.9f;
  std::uint64_t seed = 0;
  std::uint64_t layer = 0;
};

/// One DGQA call (spec §6.3 with gqa's documented choices, docs/variants.md):
/// train and step % window != 0: the state's splits, not updated. Otherwise m[g] = float(norm), then
/// any non-finite m: previous splits, state untouched; score = |c - m| or beta·m + (1-beta)·c in double
/// (1 - beta in float); non-finite score: previous; Σscore == 0: previous; else round half even of
/// (score/Σ)·hq repaired by the retry loops with draws i = uniform_int(hkv) of the stream
/// (seed, hash(layer, {"dgqarepa"}), rng_counter) (64·hkv misses in a row: first arg-max instead), or
/// hamilton. In train, or eval with eval_updates_state: splits, cache and rng_counter are written.
inline grouping dgqa_step(dgqa_memory& state, const tensor_view<const float>& k, index_t hq, const dgqa_setup& setup,
                          bool train, std::uint64_t step) {
  grouping out;
  const index_t hkv = k.h;
  if (train && step % static_cast<std::uint64_t>(setup.window) != 0) {
    out.alloc = state.splits;
    out.updated = false;
    out.kv_of_q = reference::map_of(out.alloc);
    return out;
  }
  const std::vector<double> n = reference::key_norms(k);
  std::vector<float> m;
  for (double x : n) m.push_back(static_cast<float>(x));
  for (float x : m)
    if (!std::isfinite(x)) {
      out.alloc = state.splits;
      out.status = "fallback_nonfinite";
      out.fallback = "previous";
      out.kv_of_q = reference::map_of(out.alloc);
      return out;
    }
  const float one_minus_beta_f = 1.0f - setup.beta;
  const double beta = setup.beta, one_minus_beta = one_minus_beta_f;
  std::vector<double> score;
  double sum = 0.0;
  bool finite = true;
  for (index_t g = 0; g < hkv; ++g) {
    const double c = state.cache[static_cast<std::size_t>(g)], x = m[static_cast<std::size_t>(g)];
    score.push_back(setup.ema ? beta * x + one_minus_beta * c : std::fabs(c - x));
    if (!std::isfinite(score.back())) finite = false;
    sum += score.back();
  }
  random::stream rng{setup.seed, random::hash(setup.layer, {0x6467716172657061ULL}), state.rng_counter};
  if (!finite || !std::isfinite(sum)) {
    out.alloc = state.splits;
    out.status = "fallback_nonfinite";
    out.fallback = "previous";
  } else if (sum == 0.0) {
    out.alloc = state.splits;
    out.status = "fallback_zero_score";
    out.fallback = "previous";
  } else if (setup.hamilton) {
    out.alloc = reference::hamilton(score, hq, 0);
  } else {
    for (double s : score) out.alloc.push_back(reference::round_half_even(s / sum * static_cast<double>(hq)));
    const auto draws = static_cast<std::uint32_t>(hkv);
    while (total_of(out.alloc) > hq) {
      bool hit = false;
      for (index_t tries = 0; tries < 64 * hkv && !hit; ++tries) {
        const std::uint32_t i = rng.uniform_int(draws);
        if (out.alloc[i] > 0) {
          out.alloc[i] -= 1;
          hit = true;
        }
      }
      if (!hit) {
        std::size_t at = 0;
        for (std::size_t g = 1; g < out.alloc.size(); ++g)
          if (out.alloc[g] > out.alloc[at]) at = g;
        out.alloc[at] -= 1;
      }
    }
    while (total_of(out.alloc) < hq) out.alloc[rng.uniform_int(draws)] += 1;
  }
  if (train || setup.eval_updates_state) {
    state.splits = out.alloc;
    state.rng_counter = rng.counter;
    for (std::size_t g = 0; g < m.size(); ++g) {
      const float c = state.cache[g];
      if (setup.cache_update == "prev_window") {
        state.cache[g] = m[g];
      } else if (setup.cache_update == "true_ema") {
        state.cache[g] = static_cast<float>(beta * static_cast<double>(c) + one_minus_beta * static_cast<double>(m[g]));
      } else {
        state.cache[g] = train ? static_cast<float>((static_cast<double>(c) + m[g]) / static_cast<double>(setup.window))
                               : m[g];
      }
    }
  }
  out.kv_of_q = reference::map_of(out.alloc);
  return out;
}

}  // namespace reference
GQA_END_NAMESPACE
