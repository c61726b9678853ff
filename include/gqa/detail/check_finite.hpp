// gqa/detail/check_finite.hpp: attention_options::check_finite, the opt-in test that every input element a
// call reads is finite. Invariant: reads only inside the views (kv_lengths clamped to [0, skv], so it may
// run before the lengths are validated) and throws before any work of the call.
#pragma once

#include <algorithm>
#include <cmath>

#include "../config.hpp"
#include "../errors.hpp"
#include "../numeric.hpp"
#include "../options.hpp"
#include "../quantized.hpp"
#include "../tensor.hpp"

GQA_BEGIN_NAMESPACE
namespace detail {

/// The first (b, s, h, d) of t, in that order, with s < len(b), whose element is not finite: throws
/// "<where>: <name>[b, s, h, d] = <value>: ...". len(b) bounds the positions read of batch element b.
/// T: float, bf16 or f16 (a 16-bit element is finite iff its float is).
template <class T, class Len>
inline void require_finite(const tensor_view<const T>& t, const char* name, const char* where, const Len& len) {
  for (index_t ib = 0; ib < t.b; ++ib) {
    const index_t ns = std::clamp<index_t>(len(ib), 0, t.s);
    for (index_t is = 0; is < ns; ++is)
      for (index_t ih = 0; ih < t.h; ++ih) {
        const T* row = t.row(ib, is, ih);
        for (index_t c = 0; c < t.d; ++c)
          if (!std::isfinite(to_float(row[c * t.stride_d])))
            fail(where, ": ", name, "[", ib, ", ", is, ", ", ih, ", ", c, "] = ", to_float(row[c * t.stride_d]),
                 ": options.check_finite is set and every input element the call reads must be finite"
                 " (indices are [batch, position, head, dim])");
      }
  }
}

/// options.check_finite: if set, throws gqa::invalid_argument naming the first non-finite element among
/// those the call reads: all of q, then the keys j < kv_lengths[b] (all skv keys without kv_lengths) of k,
/// then of v (Q, KV: float, bf16 or f16). Called before any work; costs one pass over the inputs, nothing when the option is off.
template <class Q, class KV>
void check_finite(const tensor_view<const Q>& q, const tensor_view<const KV>& k, const tensor_view<const KV>& v,
                  const attention_options& opt, const char* where = "gqa::attend", const char* k_name = "k",
                  const char* v_name = "v") {
  if (!opt.check_finite) return;
  const auto all_q = [&](index_t) { return q.s; };
  const auto kv_len = [&](index_t ib) {
    return opt.kv_lengths.empty() || static_cast<index_t>(opt.kv_lengths.size()) <= ib
               ? k.s
               : opt.kv_lengths[static_cast<std::size_t>(ib)];
  };
  require_finite(q, "q", where, all_q);
  require_finite(k, k_name, where, kv_len);
  require_finite(v, v_name, where, kv_len);
}

/// check_finite for an int8 K/V cache: its values are always finite, so the scales of the rows read
/// (quantize_q8 marks a non-finite row with a NaN scale, Note [int8 quantisation]). Q: float, bf16 or f16.
template <class Q>
void check_finite(const tensor_view<const Q>& q, const q8_view& k, const q8_view& v, const attention_options& opt,
                  const char* where = "gqa::attend") {
  check_finite(q, k.scales, v.scales, opt, where, "k.scales", "v.scales");
}

}  // namespace detail
GQA_END_NAMESPACE
