// gqa/reference/grouping.hpp: plain transcriptions of the KDGQA allocation and of one DGQA update, written
// from docs/variants.md and the authors' code, not from gqa/variants/*: no policy helper is called. Only gqa/random.hpp is shared, because its stream *defines* DGQA's repair draws.
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

/// The key norms of a paged cache or a ragged batch: n[g] = Σ_i sqrt(Σ_{token, channel} K_i[token, g,
/// channel]²) over the sequences, each given as a dense view of its valid keys alone (b = 1, s = its
/// length; a sequence without keys adds 0 and is left out).
inline std::vector<double> key_norms(const std::vector<tensor_view<const float>>& sequences, index_t hkv) {
  std::vector<double> n(static_cast<std::size_t>(hkv), 0.0);
  for (const auto& k : sequences) {
    const std::vector<double> one = reference::key_norms(k);
    for (std::size_t g = 0; g < n.size(); ++g) n[g] += one[g];
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
  bool float64 = false;   // false: the authors' float32 arithmetic after the norms
};

/// The authors' float32 steps (kdgqa.py:49-53 in torch float32): norms rounded to float, min-max scaling,
/// a sum in index order, then scaled / sum * hq, every operation a float one. Returns n̂ and the shares.
inline void kdgqa_float32_steps(const std::vector<double>& n, index_t hq, std::vector<double>& scaled,
                                std::vector<double>& shares) {
  std::vector<float> f;
  for (double x : n) f.push_back(static_cast<float>(x));
  float lo = f[0], hi = f[0];
  for (float x : f) {
    if (x < lo) lo = x;
    if (x > hi) hi = x;
  }
  std::vector<float> sc;
  float sum = 0.0f;
  for (float x : f) {
    const float range = hi - lo;
    sc.push_back((x - lo) / range);
    sum = sum + sc.back();
  }
  scaled.clear();
  shares.clear();
  const float h = static_cast<float>(hq);
  for (float x : sc) {
    scaled.push_back(x);
    const float share = x / sum * h;
    shares.push_back(share > static_cast<float>(hq) ? static_cast<double>(hq) : static_cast<double>(share));
  }
}

/// KDGQA's grouping of one call from its key norms n (one per KV head; rounded to float unless
/// setup.float64), the three
/// fallbacks (one KV head, a non-finite norm, max - min <= 1e-6·max) taking uniform (balanced) groups when
/// hkv divides hq and otherwise a valid `previous`; else min-max scaling and the reference rule (round
/// half even of (n̂/Σn̂)·hq, then first arg-max decrements / first arg-min increments) or the hamilton
/// rule. With float32, the scaling and the reference rule's shares are the authors' float32 steps.
inline grouping kdgqa(std::vector<double> n, index_t hq, const kdgqa_setup& setup = {},
                      const std::vector<int>& previous = {}) {
  if (!setup.float64)
    for (double& x : n) x = static_cast<float>(x);
  const auto hkv = static_cast<index_t>(n.size());
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

  std::vector<double> scaled, shares;
  if (setup.float64) {
    double sum = 0.0;
    for (double x : n) {
      scaled.push_back((x - lo) / (hi - lo));
      sum += scaled.back();
    }
    for (double x : scaled) shares.push_back(x / sum * static_cast<double>(hq));
  } else {
    reference::kdgqa_float32_steps(n, hq, scaled, shares);
  }
  if (setup.hamilton) {
    out.alloc = reference::hamilton(scaled, hq, setup.min_per_kv);
  } else {
    for (double x : shares) out.alloc.push_back(reference::round_half_even(x));
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

/// kdgqa() on the norms of k (reference::key_norms).
inline grouping kdgqa(const tensor_view<const float>& k, index_t hq, const kdgqa_setup& setup = {},
                      const std::vector<int>& previous = {}) {
  return reference::kdgqa(reference::key_norms(k), hq, setup, previous);
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
  double beta = 0.9;                         // weights float(beta) and float(1 - beta)
  bool float64 = false;                      // false: the authors' float32 score, shares and cache
  std::uint64_t seed = 0;
  std::uint64_t layer = 0;
};

/// One DGQA call (the authors' dgqa.py with gqa's documented choices, docs/variants.md):
/// train and step % window != 0: the state's splits, not updated. Otherwise m[g] = float(norm), then
/// any non-finite m: previous splits, state untouched; score = |c - m| or b·m + w·c with b = float(beta),
/// w = float(1 - beta), in float (each product rounded to float) or in double (setup.float64);
/// non-finite score or sum: previous; Σscore == 0: previous; else round half even of (score/Σ)·hq
/// (in float or double) repaired by the retry loops with draws i = uniform_int(hkv) of the stream
/// (seed, hash(layer, {"dgqarepa"}), rng_counter) (64·hkv misses in a row: first arg-max instead), or
/// hamilton. In train, or eval with eval_updates_state: splits, cache and rng_counter are written.
/// `norms` gives the call's key norms (called only when the call updates).
template <class Norms>
grouping dgqa_step_from(dgqa_memory& state, index_t hkv, Norms&& norms, index_t hq, const dgqa_setup& setup, bool train,
                        std::uint64_t step) {
  grouping out;
  if (train && step % static_cast<std::uint64_t>(setup.window) != 0) {
    out.alloc = state.splits;
    out.updated = false;
    out.kv_of_q = reference::map_of(out.alloc);
    return out;
  }
  const std::vector<double> n = norms();
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
  const float b = static_cast<float>(setup.beta), w = static_cast<float>(1.0 - setup.beta);
  std::vector<double> score;
  double sum = 0.0;
  float sum_f = 0.0f;
  bool finite = true;
  for (index_t g = 0; g < hkv; ++g) {
    const float c = state.cache[static_cast<std::size_t>(g)], x = m[static_cast<std::size_t>(g)];
    if (setup.float64) {
      score.push_back(setup.ema ? static_cast<double>(b) * x + static_cast<double>(w) * c
                                : std::fabs(static_cast<double>(c) - static_cast<double>(x)));
      sum += score.back();
    } else {
      // volatile: each float product is rounded before the sum, never fused into an FMA.
      const volatile float bx = b * x;
      const volatile float wc = w * c;
      const float sf = setup.ema ? bx + wc : std::fabs(c - x);
      score.push_back(sf);
      sum_f = sum_f + sf;
    }
    if (!std::isfinite(score.back())) finite = false;
  }
  if (!setup.float64) sum = sum_f;
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
    for (double s : score) {
      double share = s / sum * static_cast<double>(hq);
      if (!setup.float64) share = static_cast<float>(s) / sum_f * static_cast<float>(hq);
      out.alloc.push_back(reference::round_half_even(share > static_cast<double>(hq) ? static_cast<double>(hq) : share));
    }
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
        if (setup.float64) {
          state.cache[g] = static_cast<float>(static_cast<double>(b) * c + static_cast<double>(w) * m[g]);
        } else {
          const volatile float old_part = b * c;
          const volatile float new_part = w * m[g];
          state.cache[g] = old_part + new_part;
        }
      } else if (!train) {
        state.cache[g] = m[g];
      } else if (setup.float64) {
        state.cache[g] = static_cast<float>((static_cast<double>(c) + m[g]) / static_cast<double>(setup.window));
      } else {
        const float added = c + m[g];
        state.cache[g] = added / static_cast<float>(setup.window);
      }
    }
  }
  out.kv_of_q = reference::map_of(out.alloc);
  return out;
}

/// One DGQA call on the keys k (reference::key_norms(k)).
inline grouping dgqa_step(dgqa_memory& state, const tensor_view<const float>& k, index_t hq, const dgqa_setup& setup,
                          bool train, std::uint64_t step) {
  return reference::dgqa_step_from(state, k.h, [&] { return reference::key_norms(k); }, hq, setup, train, step);
}

/// One DGQA call on a paged cache or ragged batch: the norms of its sequences' valid keys (each a dense view
/// of its keys alone, reference::key_norms(sequences, hkv)).
inline grouping dgqa_step(dgqa_memory& state, const std::vector<tensor_view<const float>>& sequences, index_t hkv,
                          index_t hq, const dgqa_setup& setup, bool train, std::uint64_t step) {
  return reference::dgqa_step_from(state, hkv, [&] { return reference::key_norms(sequences, hkv); }, hq, setup, train,
                                   step);
}

}  // namespace reference
GQA_END_NAMESPACE
