// gqa/quantized.hpp: the int8 K/V cache (q8_view: int8 values with one fp32 scale per (token, head) row),
// quantize_q8(), which writes float rows (new tokens) into such a cache, and dequantize_q8(), its exact
// fp32 values. Invariant: the value of element (b, s, h, c) is, everywhere in gqa, the float product
// scales(b, s, h, 0) · float(values(b, s, h, c)) (one fp32 rounding); the kernels compute with exactly
// that (Note [int8 K/V] in detail/core/layout.hpp). ISA-independent plain code.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "config.hpp"
#include "detail/overlap.hpp"
#include "errors.hpp"
#include "tensor.hpp"

GQA_BEGIN_NAMESPACE

/// An int8 K or V cache, symmetric per-row quantisation: `values` (b, s, h, d) int8 in [-127, 127] and
/// `scales` (b, s, h, 1), one fp32 scale per (batch, position, head) row; element (b, s, h, c) stands
/// for scales(b, s, h, 0) · values(b, s, h, c), computed in fp32. Both views take any layout the float
/// views take (bshd/bhsd, with a capacity; scales as a view with d = 1, e.g. bshd(scales, b, s, h, 1)).
/// This is ONNX Runtime's per-row int8 cache layout; llama.cpp's q8_0 differs (one f16 scale per 32
/// values). Q and O stay float.
struct q8_view {
  tensor_view<const std::int8_t> values;  ///< (b, s, h, d), unit stride_d for attention
  tensor_view<const float> scales;        ///< (b, s, h, 1)
};

namespace detail {

/// Validates q8_view `x` passed as argument `name` of `where` (its scales named `scales_name`, e.g. "k" and
/// "k.scales"): both views (check_view; values with unit stride_d when `unit_stride_d`) and the scales'
/// shape, (values.b, values.s, values.h, 1). Allocates nothing unless it throws.
inline void check_q8(const q8_view& x, const char* name, const char* scales_name, const char* where,
                     bool unit_stride_d = true) {
  check_view(x.values, name, where, unit_stride_d);
  check_view(x.scales, scales_name, where, false);
  const tensor_view<const float>& s = x.scales;
  require(s.b == x.values.b, where, field{scales_name, "b"}, s.b, "must equal ", field{name, "b"}, " = ", x.values.b);
  require(s.s == x.values.s, where, field{scales_name, "s"}, s.s, "must equal ", field{name, "s"}, " = ", x.values.s);
  require(s.h == x.values.h, where, field{scales_name, "h"}, s.h, "must equal ", field{name, "h"}, " = ", x.values.h);
  require(s.d == 1, where, field{scales_name, "d"}, s.d, "must be 1 (one scale per row)");
}

/// The fp32 value an int8 cache element stands for: scale · q, one fp32 product (what dequantize_q8()
/// writes, the key norms read and the kernels' packing computes; Note [int8 K/V]).
inline float dequantised(float scale, std::int8_t q) noexcept { return scale * static_cast<float>(q); }

/// The quantised row of the n floats x[0], x[stride], ...: writes q[c] (stride qs) and returns the scale
/// (Note [int8 quantisation]).
template <class Out>
inline float quantize_row(const float* x, index_t stride, index_t n, Out q) noexcept {
  float m = 0.0f;
  bool finite = true;
  for (index_t c = 0; c < n; ++c) {
    const float a = std::fabs(x[c * stride]);
    finite = finite && std::isfinite(a);
    m = a > m ? a : m;
  }
  const float scale = finite ? m / 127.0f : std::numeric_limits<float>::quiet_NaN();
  for (index_t c = 0; c < n; ++c) {
    float r = 0.0f;
    if (finite && scale > 0.0f) r = std::fmin(127.0f, std::fmax(-127.0f, std::nearbyint(x[c * stride] / scale)));
    q(c, static_cast<std::int8_t>(r));
  }
  return scale;
}

}  // namespace detail

// Note [int8 quantisation]
// quantize_q8 quantises each row of d floats on its own (symmetric, no zero point):
//   scale = max_c |x_c| / 127 (one fp32 division), q_c = round(x_c / scale) to nearest, ties to even (the
//   current rounding mode, which gqa never changes), clamped to [-127, 127] (-128 is never written).
// Special rows:
//   * all zeros (or every |x_c| so small that max/127 underflows to 0, below ~1.1e-43): scale 0, q 0; the
//     row's values are exact zeros.
//   * any NaN or ±inf: scale NaN, q 0. Every element of the row then reads as NaN (NaN · 0), so attention
//     over that key gives NaN in the rows that see it, as a float cache holding a non-finite value does
//     (docs/design.md, "Non-finite inputs"); options.check_finite rejects such a scale.
// The error per element is at most scale / 2 (half a step), with the row's largest magnitude exact up to
// the rounding of scale · 127.

/// Quantises the float rows x (b, s, h, d) into `values` (b, s, h, d) and `scales` (b, s, h, 1), row by
/// row (Note [int8 quantisation]): e.g. the new tokens of a step, written into an int8 cache's views of
/// those positions. Any strides (stride_d too). Throws gqa::invalid_argument naming the argument and
/// its value for a bad view, shapes that differ, or outputs that overlap x or each other.
inline void quantize_q8(tensor_view<const float> x, tensor_view<std::int8_t> values, tensor_view<float> scales) {
  constexpr const char* where = "gqa::quantize_q8";
  detail::check_view(x, "x", where, false);
  const q8_view out{values, scales};
  detail::check_q8(out, "values", "scales", where, false);
  detail::require(values.b == x.b, where, "values.b", values.b, "must equal x.b = ", x.b);
  detail::require(values.s == x.s, where, "values.s", values.s, "must equal x.s = ", x.s);
  detail::require(values.h == x.h, where, "values.h", values.h, "must equal x.h = ", x.h);
  detail::require(values.d == x.d, where, "values.d", values.d, "must equal x.d = ", x.d);
  const auto disjoint = [&](detail::overlap r, const char* a, const void* ad, const char* b) {
    if (r != detail::overlap::none)
      detail::fail(where, ": ", a, " (data = ", ad, ") ", r == detail::overlap::shared ? "overlaps " : "may overlap ", b,
                   "; outputs must not alias the input or each other");
  };
  disjoint(detail::shared_element(values, x), "values", values.data, "x");
  disjoint(detail::shared_element(scales, x), "scales", scales.data, "x");
  disjoint(detail::shared_element(scales, values), "scales", scales.data, "values");
  for (index_t ib = 0; ib < x.b; ++ib)
    for (index_t is = 0; is < x.s; ++is)
      for (index_t ih = 0; ih < x.h; ++ih) {
        std::int8_t* q = values.row(ib, is, ih);
        const auto put = [&](index_t c, std::int8_t v) noexcept { q[c * values.stride_d] = v; };
        *scales.row(ib, is, ih) = detail::quantize_row(x.row(ib, is, ih), x.stride_d, x.d, put);
      }
}

/// The fp32 values of an int8 cache: out(b, s, h, c) = scales(b, s, h, 0) · values(b, s, h, c), one fp32
/// multiplication each, exactly what the kernels compute with (Note [int8 K/V]). out (b, s, h, d) must not
/// overlap x. Throws gqa::invalid_argument like quantize_q8.
inline void dequantize_q8(const q8_view& x, tensor_view<float> out) {
  constexpr const char* where = "gqa::dequantize_q8";
  detail::check_q8(x, "x.values", "x.scales", where, false);
  detail::check_view(out, "out", where, false);
  detail::require(out.b == x.values.b, where, "out.b", out.b, "must equal x.values.b = ", x.values.b);
  detail::require(out.s == x.values.s, where, "out.s", out.s, "must equal x.values.s = ", x.values.s);
  detail::require(out.h == x.values.h, where, "out.h", out.h, "must equal x.values.h = ", x.values.h);
  detail::require(out.d == x.values.d, where, "out.d", out.d, "must equal x.values.d = ", x.values.d);
  if (detail::shared_element(out, x.values) != detail::overlap::none ||
      detail::shared_element(out, x.scales) != detail::overlap::none)
    detail::fail(where, ": out (data = ", static_cast<const void*>(out.data), ") overlaps (or may overlap) x",
                 "; the output must not alias the input");
  for (index_t ib = 0; ib < out.b; ++ib)
    for (index_t is = 0; is < out.s; ++is)
      for (index_t ih = 0; ih < out.h; ++ih) {
        const float s = *x.scales.row(ib, is, ih);
        const std::int8_t* q = x.values.row(ib, is, ih);
        float* o = out.row(ib, is, ih);
        for (index_t c = 0; c < out.d; ++c) o[c * out.stride_d] = detail::dequantised(s, q[c * x.values.stride_d]);
      }
}

GQA_END_NAMESPACE
