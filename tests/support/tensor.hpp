// tests/support/tensor.hpp: a 4-D float tensor in its own buffer, laid out BSHD, BHSD or with padded
// strides whose gaps hold NaN (so a kernel that reads past a head vector produces NaN and one that writes
// there is caught). Internal linkage (anonymous namespace): suite headers include this once per ISA.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include <gqa/tensor.hpp>

#include "data.hpp"

namespace gqa::test {
namespace {

enum class layout { bshd, bhsd, padded };

[[maybe_unused]] const char* layout_name(layout l) {
  switch (l) {
    case layout::bshd: return "bshd";
    case layout::bhsd: return "bhsd";
    case layout::padded: return "padded";
  }
  return "?";
}

/// A 4-D tensor in its own buffer. `padded` puts gaps between heads, positions and batches
/// (stride_h = d + 3 > d, stride_s and stride_b not multiples of anything); every gap holds NaN, so a
/// kernel that reads past a head vector produces NaN and one that writes there is caught.
struct tensor {
  std::unique_ptr<float[]> buf;
  std::size_t size = 0;
  gqa::tensor_view<float> view;

  tensor(layout l, gqa::index_t b, gqa::index_t s, gqa::index_t h, gqa::index_t d) {
    gqa::index_t sb = 0, ss = 0, sh = 0;
    switch (l) {
      case layout::bshd: sh = d, ss = h * d, sb = s * h * d; break;
      case layout::bhsd: ss = d, sh = s * d, sb = h * s * d; break;
      case layout::padded: sh = d + 3, ss = h * (d + 3) + 5, sb = s * (h * (d + 3) + 5) + 7; break;
    }
    size = static_cast<std::size_t>(b * sb);
    buf = std::make_unique<float[]>(size);
    std::fill(buf.get(), buf.get() + size, std::numeric_limits<float>::quiet_NaN());
    view = gqa::tensor_view<float>(buf.get(), b, s, h, d, sb, ss, sh, 1);
  }
  gqa::tensor_view<const float> cview() const { return view; }

  /// Fills the view's elements (not the gaps) with uniform [lo, hi) floats, a pure function of seed.
  void fill(std::uint64_t seed, float lo, float hi) {
    const auto x = random_floats(static_cast<std::size_t>(view.b * view.s * view.h * view.d), seed, lo, hi);
    std::size_t i = 0;
    for (gqa::index_t ib = 0; ib < view.b; ++ib)
      for (gqa::index_t is = 0; is < view.s; ++is)
        for (gqa::index_t ih = 0; ih < view.h; ++ih)
          for (gqa::index_t c = 0; c < view.d; ++c) view(ib, is, ih, c) = x[i++];
  }
  /// Number of buffer elements outside the view that are no longer NaN (the output's gaps).
  std::size_t gaps_written() const {
    std::vector<char> inside(size, 0);
    for (gqa::index_t ib = 0; ib < view.b; ++ib)
      for (gqa::index_t is = 0; is < view.s; ++is)
        for (gqa::index_t ih = 0; ih < view.h; ++ih)
          for (gqa::index_t c = 0; c < view.d; ++c) inside[static_cast<std::size_t>(&view(ib, is, ih, c) - buf.get())] = 1;
    std::size_t n = 0;
    for (std::size_t i = 0; i < size; ++i) n += !inside[i] && !std::isnan(buf[i]);
    return n;
  }
};

}  // namespace
}  // namespace gqa::test
