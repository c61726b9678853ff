// gqa/detail/core/backward.hpp: the backward pass of the attention core.
// PLACEHOLDER (plain loops, serial) until the core's register tiles land; replaced by the blocked kernel.
#pragma once

#include <algorithm>
#include <cmath>
#include <span>
#include <vector>

#include "../../head_map.hpp"
#include "../../options.hpp"
#include "../../tensor.hpp"

GQA_BEGIN_NAMESPACE
namespace detail::core {

template <class Isa>
void backward(tensor_view<const float> q, tensor_view<const float> k, tensor_view<const float> v,
              tensor_view<const float> o, tensor_view<const float> dout, std::span<const float> lse,
              tensor_view<float> dq, tensor_view<float> dk, tensor_view<float> dv, const head_map& map,
              const attention_options& opt) {
  const float scale = opt.scale ? *opt.scale : 1.0f / std::sqrt(static_cast<float>(q.d));
  for (index_t ib = 0; ib < k.b; ++ib)
    for (index_t j = 0; j < k.s; ++j)
      for (index_t g = 0; g < k.h; ++g) {
        std::fill(dk.row(ib, j, g), dk.row(ib, j, g) + k.d, 0.0f);
        std::fill(dv.row(ib, j, g), dv.row(ib, j, g) + v.d, 0.0f);
      }
  std::vector<float> p(static_cast<std::size_t>(k.s)), dp(static_cast<std::size_t>(k.s));
  for (index_t ib = 0; ib < q.b; ++ib) {
    const index_t len = opt.kv_lengths.empty() ? k.s : opt.kv_lengths[static_cast<std::size_t>(ib)];
    for (index_t h = 0; h < q.h; ++h) {
      const index_t g = map.kv_of(h);
      for (index_t i = 0; i < q.s; ++i) {
        float* dqr = dq.row(ib, i, h);
        std::fill(dqr, dqr + q.d, 0.0f);
        const float m = lse[static_cast<std::size_t>((ib * q.h + h) * q.s + i)];
        if (std::isinf(m)) continue;
        const index_t vis = opt.causal ? std::clamp<index_t>(i + (len - q.s) + 1, 0, len) : len;
        const float* qr = q.row(ib, i, h);
        const float* dor = dout.row(ib, i, h);
        const float* orow = o.row(ib, i, h);
        float dsum = 0.0f;
        for (index_t c = 0; c < v.d; ++c) dsum += dor[c] * orow[c];
        for (index_t j = 0; j < vis; ++j) {
          float s = 0.0f, t = 0.0f;
          for (index_t c = 0; c < q.d; ++c) s += qr[c] * k.row(ib, j, g)[c];
          for (index_t c = 0; c < v.d; ++c) t += dor[c] * v.row(ib, j, g)[c];
          p[static_cast<std::size_t>(j)] = std::exp(s * scale - m);
          dp[static_cast<std::size_t>(j)] = p[static_cast<std::size_t>(j)] * (t - dsum) * scale;
        }
        for (index_t j = 0; j < vis; ++j) {
          const float pj = p[static_cast<std::size_t>(j)], dsj = dp[static_cast<std::size_t>(j)];
          for (index_t c = 0; c < q.d; ++c) {
            dqr[c] += dsj * k.row(ib, j, g)[c];
            dk.row(ib, j, g)[c] += dsj * qr[c];
          }
          for (index_t c = 0; c < v.d; ++c) dv.row(ib, j, g)[c] += pj * dor[c];
        }
      }
    }
  }
}

}  // namespace detail::core
GQA_END_NAMESPACE
