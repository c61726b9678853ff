// examples/uptrain/tests/finite_differences.hpp: central finite differences in double, the yardstick of
// every gradient test of the example.
#pragma once

#include <functional>

#include "layers.hpp"

namespace uptrain::test {

/// g[i] = (loss(x + h·e_i) − loss(x − h·e_i)) / 2h for every `stride`-th entry i of x (the others 0); x is
/// restored. In double with h = 1e-5 the truncation error O(h²) and the rounding error O(ε/h) are both
/// about 1e-10 of the loss's scale.
inline matrix<double> numeric_gradient(matrix<double>& x, const std::function<double()>& loss, index stride = 1,
                                       double h = 1e-5) {
  matrix<double> g = matrix<double>::Zero(x.rows(), x.cols());
  for (index i = 0; i < x.size(); i += stride) {
    const double keep = x.data()[i];
    x.data()[i] = keep + h;
    const double up = loss();
    x.data()[i] = keep - h;
    const double down = loss();
    x.data()[i] = keep;
    g.data()[i] = (up - down) / (2 * h);
  }
  return g;
}

}  // namespace uptrain::test
