// gqa/reference/convert.hpp: a literal double-precision transcription of the reference MHA -> GQA
// conversion (the GQA authors' gqa.py:86-89): x.view(H, d, D) -> torch.split(x, s, dim=0) -> .mean(dim=0) ->
// torch.cat. Independent of gqa/convert.hpp; no validation (test code).
#pragma once

#include <vector>

#include "../config.hpp"

GQA_BEGIN_NAMESPACE
namespace reference {

/// w is (h·d × in) row-major (a bias: in = 1); returns (g·d × in): the mean over each chunk of s = h/g heads.
inline std::vector<double> mean_pool(const std::vector<double>& w, index_t h, index_t g, index_t d, index_t in) {
  const index_t s = h / g;
  // view(H, d, D): heads[j][k][c]
  std::vector<std::vector<double>> heads(static_cast<std::size_t>(h));
  for (index_t j = 0; j < h; ++j)
    heads[static_cast<std::size_t>(j)].assign(w.begin() + j * d * in, w.begin() + (j + 1) * d * in);
  std::vector<double> out;
  out.reserve(static_cast<std::size_t>(g * d * in));
  for (index_t chunk = 0; chunk < g; ++chunk) {  // split(s, dim=0), then mean(dim=0), then cat
    std::vector<double> sum(static_cast<std::size_t>(d * in), 0.0);
    for (index_t j = chunk * s; j < chunk * s + s; ++j)
      for (std::size_t e = 0; e < sum.size(); ++e) sum[e] += heads[static_cast<std::size_t>(j)][e];
    for (const double v : sum) out.push_back(v / static_cast<double>(s));
  }
  return out;
}

}  // namespace reference
GQA_END_NAMESPACE
