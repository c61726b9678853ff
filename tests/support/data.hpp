// tests/support/data.hpp: deterministic test data shared by every test TU, the uniform head map written
// out by hand, and a view's elements in logical order. Everything has internal linkage (anonymous
// namespace): this header is compiled into TUs with different ISA flags.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include <gqa/numeric.hpp>
#include <gqa/random.hpp>
#include <gqa/tensor.hpp>

#ifndef GQA_TEST_REDUCED
#define GQA_TEST_REDUCED 0  // 1 in the sanitizer and NEON (qemu) builds: smaller shape lists
#endif

namespace gqa::test {
namespace {

/// True in the sanitizer and qemu builds, which run a reduced shape list.
constexpr bool reduced = GQA_TEST_REDUCED != 0;

/// n floats uniform in [lo, hi), a pure function of (seed, index).
[[maybe_unused]] std::vector<float> random_floats(std::size_t n, std::uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::vector<float> x(n);
  for (std::size_t i = 0; i < n; ++i)
    // In double, rounded once: a float `lo + (hi - lo) * u` may be fused into an FMA in some ISA TUs and
    // not in others, which would give different test data per ISA.
    x[i] = static_cast<float>(static_cast<double>(lo) + (static_cast<double>(hi) - static_cast<double>(lo)) *
                                                             static_cast<double>(gqa::random::to_unit_float(
                                                                 gqa::random::hash(seed, {0x7e57, i}))));
  return x;
}

/// x rounded to T (bf16 or f16; nearest even), element by element.
template <class T>
[[maybe_unused]] std::vector<T> narrowed(const std::vector<float>& x) {
  std::vector<T> r(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) r[i] = T(x[i]);
  return r;
}

/// x (bf16 or f16) widened to float (exact).
template <class T>
[[maybe_unused]] std::vector<float> widened(const std::vector<T>& x) {
  std::vector<float> r(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) r[i] = gqa::to_float(x[i]);
  return r;
}

/// The uniform contiguous GQA map, map[h] = h / (hq / hkv), written out independently of
/// gqa::head_map so that tests can hand it to the reference. hkv must divide hq.
[[maybe_unused]] std::vector<gqa::index_t> uniform_kv_of_q(gqa::index_t hq, gqa::index_t hkv) {
  std::vector<gqa::index_t> m(static_cast<std::size_t>(hq));
  for (gqa::index_t h = 0; h < hq; ++h) m[static_cast<std::size_t>(h)] = h / (hq / hkv);
  return m;
}

/// A view's elements in logical [b][s][h][d] order, whatever its strides (reference::attention's layout).
template <class T>
std::vector<std::remove_const_t<T>> logical_order(const gqa::tensor_view<T>& t) {
  std::vector<std::remove_const_t<T>> out;
  out.reserve(static_cast<std::size_t>(t.b * t.s * t.h * t.d));
  for (gqa::index_t ib = 0; ib < t.b; ++ib)
    for (gqa::index_t is = 0; is < t.s; ++is)
      for (gqa::index_t ih = 0; ih < t.h; ++ih)
        for (gqa::index_t c = 0; c < t.d; ++c) out.push_back(t(ib, is, ih, c));
  return out;
}

}  // namespace
}  // namespace gqa::test
