// tests/support/data.hpp: deterministic test data shared by every test TU. Everything has internal
// linkage (anonymous namespace): this header is compiled into TUs with different ISA flags.
#pragma once

#include <cstdint>
#include <vector>

#include <gqa/random.hpp>

#ifndef GQA_TEST_REDUCED
#define GQA_TEST_REDUCED 0  // 1 in the sanitizer and NEON (qemu) builds: smaller shape lists
#endif

namespace gqa::test {
namespace {

/// True in the sanitizer and qemu builds, which run a reduced shape list.
constexpr bool reduced = GQA_TEST_REDUCED != 0;

/// n floats uniform in [lo, hi), a pure function of (seed, index).
std::vector<float> random_floats(std::size_t n, std::uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::vector<float> x(n);
  for (std::size_t i = 0; i < n; ++i)
    // In double, rounded once: a float `lo + (hi - lo) * u` may be fused into an FMA in some ISA TUs and
    // not in others, which would give different test data per ISA.
    x[i] = static_cast<float>(static_cast<double>(lo) + (static_cast<double>(hi) - static_cast<double>(lo)) *
                                                             static_cast<double>(gqa::random::to_unit_float(
                                                                 gqa::random::hash(seed, {0x7e57, i}))));
  return x;
}

}  // namespace
}  // namespace gqa::test
