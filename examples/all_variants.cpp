// examples/all_variants.cpp: one causal attention layer run with every head-grouping scheme on the same
// random activations through gqa::forward, printing each scheme's head assignment (query heads per KV
// head) and the max abs difference to a naive double-precision attention with the same map.
// MHA, MQA, GQA and the SQA family are static maps (a policy whose plan() returns a fixed head_map, as
// below). KDGQA and DGQA produce unequal, possibly empty contiguous groups from the keys; here their
// allocation shape is shown with a fixed example allocation (spec §5.3(c)). The library's variant policies
// (gqa/variants.hpp, docs/variants.md) plug into the same gqa::forward call.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <gqa/gqa.hpp>

namespace {

using gqa::index_t;

// Activations of one layer in BSHD layout: Q with hq heads, K/V with hkv heads.
struct activations {
  index_t b, s, hq, hkv, d;
  std::vector<float> q, k, v, o;
  gqa::tensor_view<const float> qv() const { return gqa::bshd<const float>(q.data(), b, s, hq, d); }
  gqa::tensor_view<const float> kv() const { return gqa::bshd<const float>(k.data(), b, s, hkv, d); }
  gqa::tensor_view<const float> vv() const { return gqa::bshd<const float>(v.data(), b, s, hkv, d); }
  gqa::tensor_view<float> ov() { return gqa::bshd(o.data(), b, s, hq, d); }
};

std::vector<float> random_values(index_t n, unsigned seed) {
  std::vector<float> x(static_cast<std::size_t>(n));
  unsigned st = seed * 2654435761u + 12345u;
  for (auto& val : x) {  // xorshift32, uniform in [-1, 1)
    st ^= st << 13;
    st ^= st >> 17;
    st ^= st << 5;
    val = static_cast<float>(st >> 8) * 0x1p-23f - 1.0f;
  }
  return x;
}

activations make_layer(index_t b, index_t s, index_t hq, index_t hkv, index_t d, unsigned seed) {
  activations a{b, s, hq, hkv, d, random_values(b * s * hq * d, seed), random_values(b * s * hkv * d, seed + 1),
                random_values(b * s * hkv * d, seed + 2), std::vector<float>(static_cast<std::size_t>(b * s * hq * d))};
  return a;
}

// Naive causal attention in double with an explicit map: the definition every variant reduces to.
double max_diff_to_naive(const gqa::tensor_view<const float>& q, const gqa::tensor_view<const float>& k,
                         const gqa::tensor_view<const float>& v, const gqa::tensor_view<float>& o,
                         const gqa::head_map& map) {
  double worst = 0.0;
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.d));
  std::vector<double> p(static_cast<std::size_t>(k.s)), acc(static_cast<std::size_t>(v.d));
  for (index_t ib = 0; ib < q.b; ++ib)
    for (index_t i = 0; i < q.s; ++i)
      for (index_t h = 0; h < q.h; ++h) {
        const index_t g = map.kv_of(h), visible = i + (k.s - q.s) + 1;
        double m = -INFINITY, l = 0.0;
        for (index_t j = 0; j < visible; ++j) {
          double dot = 0.0;
          for (index_t c = 0; c < q.d; ++c) dot += double(q(ib, i, h, c)) * double(k(ib, j, g, c));
          p[static_cast<std::size_t>(j)] = dot * scale;
          m = std::max(m, dot * scale);
        }
        std::fill(acc.begin(), acc.end(), 0.0);
        for (index_t j = 0; j < visible; ++j) {
          const double w = std::exp(p[static_cast<std::size_t>(j)] - m);
          l += w;
          for (index_t c = 0; c < v.d; ++c) acc[static_cast<std::size_t>(c)] += w * double(v(ib, j, g, c));
        }
        for (index_t c = 0; c < v.d; ++c)
          worst = std::max(worst, std::abs(acc[static_cast<std::size_t>(c)] / l - double(o(ib, i, h, c))));
      }
  return worst;
}

std::string allocation_string(const gqa::head_map& m) {
  std::string out = "[";
  for (int a : m.allocation()) out += (out.size() > 1 ? "," : "") + std::to_string(a);
  return out + "]";
}

// The simplest policy: a fixed map. Any type with plan(q, k) -> head_map is a policy (variants/policy.hpp).
struct fixed_map {
  gqa::head_map map;
  gqa::head_map plan(const gqa::tensor_view<const float>&, const gqa::tensor_view<const float>&) const {
    return map;
  }
};

struct scheme {
  const char* name;
  const char* how;
  index_t hq, hkv;
  gqa::head_map map;
};

}  // namespace

int main() {
  const index_t b = 2, s = 29, d = 16, heads = 12;  // 12 baseline heads (MHA), odd sequence length
  const int kd_alloc[] = {0, 1, 2, 2, 3, 4};         // spec §5.3(c): a KDGQA allocation, H = 12, G = 6
  const std::vector<scheme> schemes = {
      {"MHA", "hkv = hq", heads, heads, gqa::head_map::uniform(heads, heads)},
      {"MQA", "one KV head", heads, 1, gqa::head_map::uniform(heads, 1)},
      {"GQA", "uniform groups of 3", heads, 4, gqa::head_map::uniform(heads, 4)},
      {"SQA", "hq = H/2, hkv = H/4", heads / 2, heads / 4, gqa::head_map::uniform(heads / 2, heads / 4)},
      {"sSQA", "hq = hkv = H/2", heads / 2, heads / 2, gqa::head_map::uniform(heads / 2, heads / 2)},
      {"xSQA", "hq = hkv = H/4", heads / 4, heads / 4, gqa::head_map::uniform(heads / 4, heads / 4)},
      {"xSMQA", "hq = H/4, hkv = 1", heads / 4, 1, gqa::head_map::uniform(heads / 4, 1)},
      {"KDGQA/DGQA-shaped", "unequal groups, KV head 0 unused", heads, 6, gqa::head_map::from_allocation(kd_alloc)},
  };

  gqa::attention_options opt;
  opt.causal = true;
  opt.num_threads = 0;  // all cores; the result is bitwise the same for any count
  std::printf("b = %lld, s = %lld, d = %lld, baseline heads H = %lld, ISA = %s\n", (long long)b, (long long)s,
              (long long)d, (long long)heads, gqa::isa::native::name.data());
  std::printf("%-18s %-34s %4s %4s  %-28s %s\n", "scheme", "map", "hq", "hkv", "allocation", "max|gqa - naive|");
  int failures = 0;
  unsigned seed = 1;
  for (const scheme& sc : schemes) {
    activations a = make_layer(b, s, sc.hq, sc.hkv, d, seed += 3);
    fixed_map policy{sc.map};
    gqa::forward(policy, a.qv(), a.kv(), a.vv(), a.ov(), opt);
    const double err = max_diff_to_naive(a.qv(), a.kv(), a.vv(), a.ov(), sc.map);
    std::printf("%-18s %-34s %4lld %4lld  %-28s %.2e\n", sc.name, sc.how, (long long)sc.hq, (long long)sc.hkv,
                allocation_string(sc.map).c_str(), err);
    if (!(err <= 1e-5)) ++failures;
  }
  std::printf("%s\n", failures == 0 ? "all schemes match the naive attention (tolerance 1e-5)" : "MISMATCH");
  return failures == 0 ? 0 : 1;
}
