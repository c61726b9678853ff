// tests/support/policy_grads.hpp: what a policy's backward leaves in the policy itself. Internal linkage
// (anonymous namespace), like data.hpp: this header is compiled into TUs with different ISA flags.
#pragma once

#include <vector>

namespace gqa::test {
namespace {

/// A policy's own gradients after its backward (WGQA's weight_grad(): k's, then v's), or nothing for a
/// policy without parameters.
template <class P>
std::vector<float> policy_gradients(const P& p) {
  std::vector<float> g;
  if constexpr (requires { p.weight_grad(); }) {
    g = p.weight_grad().k;
    g.insert(g.end(), p.weight_grad().v.begin(), p.weight_grad().v.end());
  }
  return g;
}

}  // namespace
}  // namespace gqa::test
