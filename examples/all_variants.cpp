// examples/all_variants.cpp: one causal attention layer run with every head-grouping scheme through
// gqa::forward on the same random activations. For each scheme it prints the head assignment (query
// heads per KV head) and the largest difference to gqa::reference, the naive double-precision code
// (for KDGQA/DGQA the reference also recomputes the grouping; for PGQA it applies the noise; for WGQA it
// combines the per-head K/V). Exit status 1 if any difference exceeds 1e-4.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <gqa/gqa.hpp>
#include <gqa/reference/attention.hpp>
#include <gqa/reference/grouping.hpp>
#include <gqa/reference/pgqa.hpp>
#include <gqa/reference/wgqa.hpp>

namespace {

using gqa::index_t;

constexpr index_t b = 2, s = 33, d = 32;  // batch, tokens (odd on purpose), head dim
constexpr index_t hq = 8;                 // query heads of the baseline (MHA) layer

std::vector<float> random_values(index_t n, std::uint64_t seed, float scale = 1.0f) {
  std::vector<float> x(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < x.size(); ++i)
    x[i] = scale * (2.0f * gqa::random::to_unit_float(gqa::random::hash(seed, {i})) - 1.0f);
  return x;
}

std::vector<double> widen(const std::vector<float>& x) { return {x.begin(), x.end()}; }
std::vector<float> narrow(const std::vector<double>& x) {
  std::vector<float> y(x.size());
  std::transform(x.begin(), x.end(), y.begin(), [](double v) { return static_cast<float>(v); });
  return y;
}

std::string show(const std::vector<int>& alloc) {
  std::string out = "[";
  for (std::size_t g = 0; g < alloc.size(); ++g) {
    if (g > 0) out += ',';
    out += std::to_string(alloc[g]);  // not `"," + to_string(...)`: GCC 12's -Wrestrict false positive
  }
  return out + "]";
}

double max_diff(const std::vector<float>& o, const std::vector<double>& ref) {
  double worst = 0.0;
  for (std::size_t i = 0; i < o.size(); ++i) worst = std::max(worst, std::abs(static_cast<double>(o[i]) - ref[i]));
  return worst;
}

int failures = 0;

void report(const char* scheme, index_t q_heads, index_t kv_heads, const std::vector<int>& alloc, double diff) {
  const bool ok = diff <= 1e-4;
  if (!ok) ++failures;
  std::printf("%-18s hq=%-2lld hkv=%-2lld heads per KV head %-22s max |gqa - reference| = %.2e%s\n", scheme,
              static_cast<long long>(q_heads), static_cast<long long>(kv_heads), show(alloc).c_str(), diff,
              ok ? "" : "  FAILED");
}

/// Runs `policy` on (q with qh heads, k/v with kvh heads), and compares with reference attention under
/// the map the policy chose (or `ref_map` when given: the reference's own grouping).
template <class Policy>
std::vector<float> run(Policy& policy, const std::vector<float>& q, index_t qh, const std::vector<float>& k,
                       const std::vector<float>& v, index_t kvh, gqa::head_map* chosen = nullptr) {
  std::vector<float> o(static_cast<std::size_t>(b * s * qh * d));
  gqa::attention_options opt;
  opt.causal = true;
  const auto qv = gqa::bshd<const float>(q.data(), b, s, qh, d);
  const auto kv = gqa::bshd<const float>(k.data(), b, s, kvh, d);
  const auto vv = gqa::bshd<const float>(v.data(), b, s, kvh, d);
  gqa::forward(policy, qv, kv, vv, gqa::bshd(o.data(), b, s, qh, d), opt);
  if (chosen) *chosen = policy.plan(qv, kv);
  return o;
}

std::vector<double> reference_attention(const std::vector<float>& q, index_t qh, const std::vector<float>& k,
                                        const std::vector<float>& v, index_t kvh, std::span<const index_t> map) {
  return gqa::reference::attention(gqa::bshd<const float>(q.data(), b, s, qh, d),
                                   gqa::bshd<const float>(k.data(), b, s, kvh, d),
                                   gqa::bshd<const float>(v.data(), b, s, kvh, d), map,
                                   1.0 / std::sqrt(static_cast<double>(d)), true)
      .o;
}

/// Static schemes: the policy's map is the whole story.
template <class Policy>
void static_scheme(const char* scheme, Policy policy, index_t qh, index_t kvh) {
  const auto q = random_values(b * s * qh * d, 1), k = random_values(b * s * kvh * d, 2),
             v = random_values(b * s * kvh * d, 3);
  gqa::head_map map;
  const auto o = run(policy, q, qh, k, v, kvh, &map);
  report(scheme, qh, kvh, map.allocation(), max_diff(o, reference_attention(q, qh, k, v, kvh, map.kv_of_q())));
}

/// Keys whose per-head magnitudes differ, so KDGQA/DGQA groups are unequal (head g scaled by 0.5 + g/4).
std::vector<float> uneven_keys(index_t kvh) {
  auto k = random_values(b * s * kvh * d, 2);
  for (std::size_t i = 0; i < k.size(); ++i) k[i] *= 0.5f + 0.25f * static_cast<float>((i / d) % kvh);
  return k;
}

}  // namespace

int main() {
  std::printf("gqa %s: one causal layer, batch %lld, %lld tokens, head dim %lld, %lld query heads\n",
              gqa::version_string.data(), static_cast<long long>(b), static_cast<long long>(s),
              static_cast<long long>(d), static_cast<long long>(hq));
  std::printf("runs on: %s\n\n", gqa::runtime_info().to_string().c_str());

  static_scheme("MHA", gqa::mha_policy{}, hq, hq);
  static_scheme("MQA", gqa::mqa_policy{}, hq, 1);
  static_scheme("GQA", gqa::gqa_policy{}, hq, 2);
  static_scheme("sSQA", gqa::sqa_policy{gqa::sqa_config::symmetric(hq)}, hq / 2, hq / 2);
  static_scheme("xSMQA", gqa::sqa_policy{gqa::sqa_config::extreme_mqa(hq)}, hq / 4, 1);

  const index_t g = 4;  // KV heads of the dynamic, perturbed and weighted schemes
  const auto q = random_values(b * s * hq * d, 1), v = random_values(b * s * g * d, 3);
  const auto k = uneven_keys(g);
  const auto kview = gqa::bshd<const float>(k.data(), b, s, g, d);

  {  // KDGQA: groups from the min-max scaled key norms of this call.
    gqa::kdgqa_policy policy;
    gqa::head_map map;
    const auto o = run(policy, q, hq, k, v, g, &map);
    const auto ref = gqa::reference::kdgqa(kview, hq);
    const bool same_map = std::vector<index_t>(map.kv_of_q().begin(), map.kv_of_q().end()) == ref.kv_of_q;
    report("KDGQA", hq, g, policy.last().alloc,
           same_map ? max_diff(o, reference_attention(q, hq, k, v, g, ref.kv_of_q)) : 1.0);
  }
  {  // DGQA (ema kind, training step 0): groups from the key norms blended with the caller-owned cache.
    gqa::dgqa_options opt;
    opt.kind = gqa::dgqa_kind::ema;
    gqa::dgqa_state state = gqa::dgqa_state::initial(hq, g);
    gqa::dgqa_policy policy(opt, state);
    policy.set_mode(gqa::dgqa_mode::train);
    policy.set_step(0);
    const auto o = run(policy, q, hq, k, v, g);
    gqa::reference::dgqa_memory memory{std::vector<float>(static_cast<std::size_t>(g), 0.0f), {2, 2, 2, 2}, 0};
    gqa::reference::dgqa_setup setup;
    setup.ema = true;
    const auto ref = gqa::reference::dgqa_step(memory, kview, hq, setup, true, 0);
    report("DGQA (ema)", hq, g, policy.last().alloc,
           ref.alloc == policy.last().alloc ? max_diff(o, reference_attention(q, hq, k, v, g, ref.kv_of_q)) : 1.0);
  }
  {  // PGQA: uniform groups, then seeded noise subtracted from each group's output.
    gqa::pgqa_options opt;
    opt.seed = 7;
    gqa::pgqa_policy policy(opt);
    gqa::head_map map;
    const auto o = run(policy, q, hq, k, v, g, &map);
    const auto ref = gqa::reference::pgqa(reference_attention(q, hq, k, v, g, map.kv_of_q()), b, s, hq, d, g, 7, 0, 0);
    report("PGQA", hq, g, map.allocation(), max_diff(o, ref));
  }
  {  // WGQA: per-head K/V (hq heads) combined into g heads with learned (here: seeded random) weights.
    const auto w = gqa::wgqa_weights::random_init(gqa::wgqa_kind::col, hq, g, d, hq * d, 11);
    gqa::wgqa_policy policy(w);
    const auto k_full = random_values(b * s * hq * d, 4), v_full = random_values(b * s * hq * d, 5);
    gqa::head_map map;
    const auto o = run(policy, q, hq, k_full, v_full, hq, &map);
    const auto k_ref = narrow(gqa::reference::wgqa_combine(widen(k_full), b, s, hq, g, d, "col", widen(w.k)));
    const auto v_ref = narrow(gqa::reference::wgqa_combine(widen(v_full), b, s, hq, g, d, "col", widen(w.v)));
    report("WGQA (col)", hq, g, map.allocation(), max_diff(o, reference_attention(q, hq, k_ref, v_ref, g, map.kv_of_q())));
  }
  std::printf("\n%s\n", failures == 0 ? "all schemes match the reference" : "MISMATCH");
  return failures == 0 ? 0 : 1;
}
