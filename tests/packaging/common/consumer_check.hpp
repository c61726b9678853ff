// consumer_check.hpp: what every packaging consumer runs: one gqa::attend call on a small odd-sized GQA
// problem (b=2, sq=3, skv=5, hq=4, hkv=2, d=7, dv=5, causal) checked against a naive double loop, plus a
// hand-computable case (q = 0: every row is the mean of the visible V rows).
// Everything here has internal linkage: this header is compiled into TUs with different ISA flags.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include <gqa/gqa.hpp>

namespace {

// Max |gqa - naive| over the output of the odd-sized causal problem, for ISA Isa.
template <class Isa>
double consumer_max_error() {
  const gqa::index_t b = 2, sq = 3, skv = 5, hq = 4, hkv = 2, d = 7, dv = 5;
  std::vector<float> q(b * sq * hq * d), k(b * skv * hkv * d), v(b * skv * hkv * dv), o(b * sq * hq * dv);
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = static_cast<float>(std::sin(0.37 * static_cast<double>(i)));
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = static_cast<float>(std::cos(0.53 * static_cast<double>(i)));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(std::sin(0.71 * static_cast<double>(i) + 1.0));
  gqa::attention_options opt;
  opt.causal = true;
  gqa::attend<Isa>(gqa::bshd<const float>(q.data(), b, sq, hq, d), gqa::bshd<const float>(k.data(), b, skv, hkv, d),
                   gqa::bshd<const float>(v.data(), b, skv, hkv, dv), gqa::bshd(o.data(), b, sq, hq, dv),
                   gqa::head_map::uniform(hq, hkv), opt);
  double err = 0.0;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  for (gqa::index_t ib = 0; ib < b; ++ib)
    for (gqa::index_t i = 0; i < sq; ++i)
      for (gqa::index_t h = 0; h < hq; ++h) {
        const gqa::index_t g = h / (hq / hkv);
        const gqa::index_t visible = i + (skv - sq) + 1;  // bottom-right causal
        std::vector<double> s(static_cast<std::size_t>(visible));
        double m = -1e300, l = 0.0;
        for (gqa::index_t j = 0; j < visible; ++j) {
          double dot = 0.0;
          for (gqa::index_t c = 0; c < d; ++c)
            dot += double(q[((ib * sq + i) * hq + h) * d + c]) * double(k[((ib * skv + j) * hkv + g) * d + c]);
          s[static_cast<std::size_t>(j)] = dot * scale;
          m = std::max(m, dot * scale);
        }
        for (double& x : s) l += (x = std::exp(x - m));
        for (gqa::index_t c = 0; c < dv; ++c) {
          double acc = 0.0;
          for (gqa::index_t j = 0; j < visible; ++j)
            acc += s[static_cast<std::size_t>(j)] * double(v[((ib * skv + j) * hkv + g) * dv + c]);
          err = std::max(err, std::abs(acc / l - double(o[((ib * sq + i) * hq + h) * dv + c])));
        }
      }
  return err;
}

// q = 0 makes every score equal, so each output row is the plain mean of V over the keys: with
// V[j] = j (one head, d = 1, 4 keys) the answer is 1.5 exactly.
template <class Isa>
float consumer_mean_of_v() {
  std::vector<float> q(1, 0.0f), k(4, 1.0f), v{0.0f, 1.0f, 2.0f, 3.0f}, o(1, -1.0f);
  gqa::attend<Isa>(gqa::bshd<const float>(q.data(), 1, 1, 1, 1), gqa::bshd<const float>(k.data(), 1, 4, 1, 1),
                   gqa::bshd<const float>(v.data(), 1, 4, 1, 1), gqa::bshd(o.data(), 1, 1, 1, 1),
                   gqa::head_map::uniform(1, 1));
  return o[0];
}

}  // namespace
