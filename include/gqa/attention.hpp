// gqa/attention.hpp: attend(), the public entry to the blocked attention core, with validation: on the
// best ISA the running CPU supports (chosen at run time), or on an explicit ISA chosen at compile time.
// Invariant: every argument is checked here, before any work; below this nothing throws or allocates
// per tile.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "config.hpp"
#include "detail/core/forward.hpp"
#include "detail/core/targets.hpp"
#include "errors.hpp"
#include "head_map.hpp"
#include "isa/select.hpp"
#include "isa/tags.hpp"
#include "options.hpp"
#include "tensor.hpp"

GQA_BEGIN_NAMESPACE

namespace detail {

/// [lo, hi) byte range touched by a view (strides may be negative).
template <class T>
inline std::pair<std::uintptr_t, std::uintptr_t> byte_range(const tensor_view<T>& t) {
  std::intptr_t lo = 0, hi = 0;
  const index_t ext[4] = {t.b, t.s, t.h, t.d};
  const index_t str[4] = {t.stride_b, t.stride_s, t.stride_h, t.stride_d};
  for (int i = 0; i < 4; ++i) {
    const std::intptr_t span = static_cast<std::intptr_t>((ext[i] - 1) * str[i]);
    (span < 0 ? lo : hi) += span;
  }
  const auto base = reinterpret_cast<std::uintptr_t>(t.data);
  return {base + static_cast<std::uintptr_t>(lo * static_cast<std::intptr_t>(sizeof(T))),
          base + static_cast<std::uintptr_t>((hi + 1) * static_cast<std::intptr_t>(sizeof(T)))};
}

template <class A, class B>
inline bool overlaps(const tensor_view<A>& a, const tensor_view<B>& b) {
  const auto [alo, ahi] = byte_range(a);
  const auto [blo, bhi] = byte_range(b);
  return alo < bhi && blo < ahi;
}

/// Everything attend() checks except the head map (policies call this before planning, so a stateful
/// policy never updates its state for a call that then throws).
inline void validate_call(const tensor_view<const float>& q, const tensor_view<const float>& k,
                          const tensor_view<const float>& v, const tensor_view<float>& o,
                          const attention_options& opt) {
  check_view(q, "q");
  check_view(k, "k");
  check_view(v, "v");
  check_view(o, "o");
  require(k.b == q.b, "gqa::attend", "k.b", k.b, ("must equal q.b = " + std::to_string(q.b)).c_str());
  require(v.b == q.b, "gqa::attend", "v.b", v.b, ("must equal q.b = " + std::to_string(q.b)).c_str());
  require(o.b == q.b, "gqa::attend", "o.b", o.b, ("must equal q.b = " + std::to_string(q.b)).c_str());
  require(v.s == k.s, "gqa::attend", "v.s", v.s, ("must equal k.s = " + std::to_string(k.s)).c_str());
  require(o.s == q.s, "gqa::attend", "o.s", o.s, ("must equal q.s = " + std::to_string(q.s)).c_str());
  require(k.d == q.d, "gqa::attend", "k.d", k.d, ("must equal q.d = " + std::to_string(q.d) + " (d_qk)").c_str());
  require(o.d == v.d, "gqa::attend", "o.d", o.d, ("must equal v.d = " + std::to_string(v.d) + " (d_v)").c_str());
  require(v.h == k.h, "gqa::attend", "v.h", v.h, ("must equal k.h = " + std::to_string(k.h)).c_str());
  require(o.h == q.h, "gqa::attend", "o.h", o.h, ("must equal q.h = " + std::to_string(q.h)).c_str());
  if (opt.scale) {
    require(std::isfinite(*opt.scale), "gqa::attend", "options.scale", *opt.scale, "must be finite");
  }
  if (!opt.kv_lengths.empty()) {
    require(static_cast<index_t>(opt.kv_lengths.size()) == q.b, "gqa::attend", "options.kv_lengths.size()",
            opt.kv_lengths.size(), ("must equal batch = " + std::to_string(q.b)).c_str());
    for (std::size_t i = 0; i < opt.kv_lengths.size(); ++i)
      if (opt.kv_lengths[i] < 0 || opt.kv_lengths[i] > k.s)
        fail("gqa::attend: options.kv_lengths[", i, "] = ", opt.kv_lengths[i], ": must be in [0, skv = ", k.s, "]");
  }
  if (!opt.lse.empty()) {
    const index_t need = q.b * q.h * q.s;
    require(static_cast<index_t>(opt.lse.size()) == need, "gqa::attend", "options.lse.size()", opt.lse.size(),
            ("must equal b*hq*sq = " + std::to_string(need)).c_str());
  }
  require(opt.num_threads >= 0, "gqa::attend", "options.num_threads", opt.num_threads, "must be >= 0");
  if (overlaps(o, q)) fail("gqa::attend: o (data = ", static_cast<const void*>(o.data), ") overlaps q; output must not alias an input");
  if (overlaps(o, k)) fail("gqa::attend: o (data = ", static_cast<const void*>(o.data), ") overlaps k; output must not alias an input");
  if (overlaps(o, v)) fail("gqa::attend: o (data = ", static_cast<const void*>(o.data), ") overlaps v; output must not alias an input");
}

inline void validate(const tensor_view<const float>& q, const tensor_view<const float>& k,
                     const tensor_view<const float>& v, const tensor_view<float>& o, const head_map& map,
                     const attention_options& opt) {
  validate_call(q, k, v, o, opt);
  require(map.hq() == q.h, "gqa::attend", "map.hq()", map.hq(),
          ("must equal q.h = " + std::to_string(q.h)).c_str());
  require(map.hkv() == k.h, "gqa::attend", "map.hkv()", map.hkv(),
          ("must equal k.h = " + std::to_string(k.h)).c_str());
}

}  // namespace detail

/// O[b, i, h] = softmax(scale · Q[b, i, h] · K[b, :, map(h)]ᵀ + mask) · V[b, :, map(h)].
/// Shapes: q (b, sq, hq, d_qk), k (b, skv, hkv, d_qk), v (b, skv, hkv, d_v), o (b, sq, hq, d_v).
/// Isa: isa::dispatch (the default) runs the best ISA the running CPU supports, whatever this TU's flags
/// (or opt.isa / GQA_ISA, see isa::resolve); an ISA tag (isa::avx2, ...) runs that ISA's kernels as this
/// TU's flags compile them, with no run-time check.
/// Throws gqa::invalid_argument (a std::invalid_argument) naming the bad argument and its value.
template <class Isa = isa::dispatch>
void attend(tensor_view<const float> q, tensor_view<const float> k, tensor_view<const float> v,
            tensor_view<float> o, const head_map& map, const attention_options& opt = {}) {
  static_assert(std::is_same_v<Isa, isa::dispatch> || isa::compiled<Isa>,
                "gqa::attend<Isa>: this translation unit is not compiled with flags for Isa");
  detail::validate(q, k, v, o, map, opt);
  if constexpr (std::is_same_v<Isa, isa::dispatch>) {
    detail::core::forward_named(isa::resolve(opt.isa), q, k, v, o, map, opt);
  } else {
    detail::core::forward<Isa>(q, k, v, o, map, opt);
  }
}

GQA_END_NAMESPACE
