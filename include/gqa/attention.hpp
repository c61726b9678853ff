// gqa/attention.hpp: attend(), the public entry to the blocked attention core, with validation: on the
// best ISA the running CPU supports (chosen at run time), or on an explicit ISA chosen at compile time.
// Invariant: every argument is checked here, once, before any work (Note [validation once]); below this
// nothing throws or allocates per tile.
#pragma once

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include "config.hpp"
#include "detail/check_finite.hpp"
#include "detail/core/forward.hpp"
#include "detail/core/targets.hpp"
#include "detail/overlap.hpp"
#include "errors.hpp"
#include "head_map.hpp"
#include "isa/select.hpp"
#include "isa/tags.hpp"
#include "numeric.hpp"
#include "options.hpp"
#include "quantized.hpp"
#include "tensor.hpp"

GQA_BEGIN_NAMESPACE

namespace detail {

// Note [validation once]
// attend() checks its arguments once, in three parts: check_views (each view on its own), check_call (the
// views against each other, the options, aliasing) and check_map (the head map against the views); then
// the core runs with no further checks. gqa::forward runs the same parts once too, split around the
// policy: views first (the policy's own work reads them), the policy's check, the call before plan() (a
// stateful policy never updates its state for a call that then throws), the map after plan(). No part
// allocates unless it throws (Note [lazy messages]).

/// Each of q, k, v, o on its own: non-null, positive extents, unit stride_d, sizes (Note [view sizes]).
/// KV: K and V's element type (float, bf16, f16); Q, O: Q's and O's (float, or K/V's 16-bit type).
template <class Q, class KV, class O>
void check_views(const tensor_view<const Q>& q, const tensor_view<const KV>& k, const tensor_view<const KV>& v,
                 const tensor_view<O>& o, const char* where) {
  check_view(q, "q", where);
  check_view(k, "k", where);
  check_view(v, "v", where);
  check_view(o, "o", where);
}

/// Throws unless `r` is overlap::none: `out` (an output) shares an element with `in`.
inline void require_disjoint(overlap r, const char* where, const char* out, const void* out_data, const char* in) {
  if (r == overlap::shared)
    fail(where, ": ", out, " (data = ", out_data, ") overlaps ", in, "; output must not alias an input or another output");
  if (r == overlap::unknown)
    fail(where, ": ", out, " (data = ", out_data, ") may overlap ", in,
         ": the strides are too irregular for the exact check (Note [exact overlap]); output must not alias an "
         "input or another output");
}

/// Throws unless output `t` (named `name`, of any element type) reaches every element through one index only.
template <class T>
void require_no_repeats(const tensor_view<T>& t, const char* name, const char* where) {
  static constexpr const char* stride_name[4] = {"stride_b", "stride_s", "stride_h", "stride_d"};
  int dim = 0;
  const overlap self = repeated_element(t, &dim);
  if (self != overlap::none) {
    const index_t str[4] = {t.stride_b, t.stride_s, t.stride_h, t.stride_d};
    fail(where, ": ", field{name, stride_name[dim]}, " = ", str[dim], ": ", name, " ",
         self == overlap::shared ? "overlaps itself" : "may overlap itself (strides too irregular for the exact check)",
         ": two indices reach the same element, and every output element needs its own");
  }
}

/// A view and its name in messages.
template <class T>
struct named_view {
  tensor_view<T> view;
  const char* name;
};

/// Each output (of element type Out) repeats no element and shares none with an input (of element type
/// In) or a later output (Note [exact overlap]; across element sizes, no byte).
template <class In = const float, class Out = float>
void require_outputs_disjoint(std::initializer_list<named_view<Out>> outs, std::initializer_list<named_view<In>> ins,
                              const char* where) {
  for (auto a = outs.begin(); a != outs.end(); ++a) {
    require_no_repeats(a->view, a->name, where);
    const void* ad = a->view.data;
    for (const auto& in : ins) require_disjoint(shared_element(a->view, in.view), where, a->name, ad, in.name);
    for (auto b = a + 1; b != outs.end(); ++b)
      require_disjoint(shared_element(a->view, b->view), where, a->name, ad, b->name);
  }
}

/// Throws unless the n bytes at p (an array the call reads: lengths, offsets, a page table) lie outside the
/// output t (named tname), which the call writes while it reads them: conservative against a strided t
/// (its whole byte range; T: its element type).
template <class T>
void require_outside_output(const void* p, std::size_t n, const char* name, const tensor_view<T>& t, const char* tname,
                            const char* where) {
  if (n == 0) return;
  const auto lo = reinterpret_cast<std::uintptr_t>(p), hi = lo + n;
  const offset_range r = offsets(t);
  const auto tb = reinterpret_cast<std::uintptr_t>(t.data);
  const auto t_lo = tb - static_cast<std::uintptr_t>(-r.lo) * sizeof(T);
  const auto t_hi = tb + static_cast<std::uintptr_t>(r.hi + 1) * sizeof(T);
  if (lo < t_hi && t_lo < hi)
    fail(where, ": ", name, " (data = ", p, ") overlaps ", tname, ", which the call writes while it reads ", name);
}

/// require_outside_output() for o and options.lse (exact against the contiguous lse).
template <class O>
void require_outside_outputs(const void* p, std::size_t n, const char* name, const tensor_view<O>& o,
                             std::span<float> lse, const char* where) {
  if (n == 0) return;
  require_outside_output(p, n, name, o, "o", where);
  const auto lo = reinterpret_cast<std::uintptr_t>(p), hi = lo + n;
  const auto l_lo = reinterpret_cast<std::uintptr_t>(lse.data()), l_hi = l_lo + lse.size_bytes();
  if (!lse.empty() && lo < l_hi && l_lo < hi)
    fail(where, ": ", name, " (data = ", p, ") overlaps options.lse, which the call writes while it reads ", name);
}

/// options.lse (non-empty) as a view of its floats, for shared_element().
inline tensor_view<const float> lse_view(const attention_options& opt) noexcept {
  return {opt.lse.data(), 1, 1, 1, static_cast<index_t>(opt.lse.size()), 0, 0, 0, 1};
}

/// Outputs never alias: o repeats no element and shares none with q, k, v; options.lse shares none with
/// q, k, v, o; options.kv_lengths (read while o is written) lies outside o and lse. See Note [exact overlap]
/// (between views of different element sizes: no shared byte).
template <class Q, class KV, class O>
void check_aliasing(const tensor_view<const Q>& q, const tensor_view<const KV>& k, const tensor_view<const KV>& v,
                    const tensor_view<O>& o, const attention_options& opt, const char* where) {
  require_outputs_disjoint<const Q, O>({{o, "o"}}, {{q, "q"}}, where);
  require_outputs_disjoint<const KV, O>({{o, "o"}}, {{k, "k"}, {v, "v"}}, where);
  if (!opt.lse.empty()) {  // its size was checked against b·hq·sq
    const tensor_view<const float> lse = lse_view(opt);
    const void* ld = opt.lse.data();
    require_disjoint(shared_element(lse, q), where, "options.lse", ld, "q");
    require_disjoint(shared_element(lse, k), where, "options.lse", ld, "k");
    require_disjoint(shared_element(lse, v), where, "options.lse", ld, "v");
    require_disjoint(shared_element(lse, o), where, "options.lse", ld, "o");
  }
  require_outside_outputs(opt.kv_lengths.data(), opt.kv_lengths.size_bytes(), "options.kv_lengths", o, opt.lse, where);
}

/// The mask and score modifiers of the options (window, ...), each on its own.
inline void check_modifiers(const attention_options& opt, index_t hq, const char* where) {
  require(opt.window_left >= -1, where, "options.window_left", opt.window_left, "must be >= -1 (-1: unbounded)");
  require(opt.window_right >= -1, where, "options.window_right", opt.window_right, "must be >= -1 (-1: unbounded)");
  require(opt.softcap == 0.0f || (opt.softcap >= 1e-30f && opt.softcap <= 1e30f), where, "options.softcap", opt.softcap,
          "must be 0 (off) or in [1e-30, 1e30]");
  if (!opt.sinks.empty()) {
    require(std::cmp_equal(opt.sinks.size(), hq), where, "options.sinks.size()", opt.sinks.size(), "must equal hq = ", hq,
            " (or 0: no sinks)");
    for (std::size_t h = 0; h < opt.sinks.size(); ++h)
      if (!(std::fabs(opt.sinks[h]) <= 1e30f))
        fail(where, ": options.sinks[", h, "] = ", opt.sinks[h], ": must be finite, at most 1e30 in magnitude");
  }
  if (!opt.alibi_slopes.empty()) {
    require(std::cmp_equal(opt.alibi_slopes.size(), hq), where, "options.alibi_slopes.size()", opt.alibi_slopes.size(),
            "must equal hq = ", hq, " (or 0: no ALiBi)");
    for (std::size_t h = 0; h < opt.alibi_slopes.size(); ++h)
      if (!(std::fabs(opt.alibi_slopes[h]) <= 1e30f))
        fail(where, ": options.alibi_slopes[", h, "] = ", opt.alibi_slopes[h],
             ": must be finite, at most 1e30 in magnitude");
  }
}

/// The views' extents against each other and the options (no aliasing); requires views that passed
/// check_view. O is float (attend's output), const float (the forward's output, attend_backward's input)
/// or 16-bit (Note [16-bit Q/O]); KV is K and V's element type, Q is Q's.
template <class O, class KV = float, class Q = float>
inline void check_shapes(const tensor_view<const Q>& q, const tensor_view<const KV>& k,
                         const tensor_view<const KV>& v, const tensor_view<O>& o, const attention_options& opt,
                         const char* where) {
  require(k.b == q.b, where, "k.b", k.b, "must equal q.b = ", q.b);
  require(v.b == q.b, where, "v.b", v.b, "must equal q.b = ", q.b);
  require(o.b == q.b, where, "o.b", o.b, "must equal q.b = ", q.b);
  require(v.s == k.s, where, "v.s", v.s, "must equal k.s = ", k.s);
  require(o.s == q.s, where, "o.s", o.s, "must equal q.s = ", q.s);
  require(k.d == q.d, where, "k.d", k.d, "must equal q.d = ", q.d, " (d_qk)");
  require(o.d == v.d, where, "o.d", o.d, "must equal v.d = ", v.d, " (d_v)");
  require(v.h == k.h, where, "v.h", v.h, "must equal k.h = ", k.h);
  require(o.h == q.h, where, "o.h", o.h, "must equal q.h = ", q.h);
  if (opt.scale) require(std::isfinite(*opt.scale), where, "options.scale", *opt.scale, "must be finite");
  if (!opt.kv_lengths.empty()) {
    require(std::cmp_equal(opt.kv_lengths.size(), q.b), where, "options.kv_lengths.size()", opt.kv_lengths.size(),
            "must equal batch = ", q.b);
    for (std::size_t i = 0; i < opt.kv_lengths.size(); ++i)
      if (opt.kv_lengths[i] < 0 || opt.kv_lengths[i] > k.s)
        fail(where, ": options.kv_lengths[", i, "] = ", opt.kv_lengths.at(i), ": must be in [0, skv = ", k.s, "]");
  }
  if (!opt.lse.empty()) {
    const index_t need = q.b * q.h * q.s;  // <= q's element count, which check_view bounded
    require(std::cmp_equal(opt.lse.size(), need), where, "options.lse.size()", opt.lse.size(),
            "must equal b*hq*sq = ", need);
  }
  require(opt.num_threads >= 0, where, "options.num_threads", opt.num_threads, "must be >= 0");
  check_modifiers(opt, q.h, where);
}

/// The views against each other, the options, and aliasing; requires views that passed check_views.
template <class Q, class KV, class O>
void check_call(const tensor_view<const Q>& q, const tensor_view<const KV>& k, const tensor_view<const KV>& v,
                const tensor_view<O>& o, const attention_options& opt, const char* where) {
  check_shapes(q, k, v, o, opt, where);
  check_aliasing(q, k, v, o, opt, where);
}

/// The head map against the views: map.hq() == q.h, map.hkv() == k.h.
template <class Q, class KV>
void check_map(const head_map& map, const tensor_view<const Q>& q, const tensor_view<const KV>& k,
               const char* where) {
  require(map.hq() == q.h, where, "map.hq()", map.hq(), "must equal q.h = ", q.h);
  require(map.hkv() == k.h, where, "map.hkv()", map.hkv(), "must equal k.h = ", k.h);
}

// The checks above for an int8 K/V cache (gqa::q8_view): the values as K/V views of element type int8,
// and the scales as inputs of their own. Q, O: float, or one 16-bit type.

template <class Q, class O>
void check_views(const tensor_view<const Q>& q, const q8_view& k, const q8_view& v, const tensor_view<O>& o,
                 const char* where) {
  check_view(q, "q", where);
  check_q8(k, "k", "k.scales", where);
  check_q8(v, "v", "v.scales", where);
  check_view(o, "o", where);
}
/// The values' shapes and aliasing (check_call), and no output sharing an element with the scales.
template <class Q, class O>
void check_call(const tensor_view<const Q>& q, const q8_view& k, const q8_view& v, const tensor_view<O>& o,
                const attention_options& opt, const char* where) {
  check_call(q, k.values, v.values, o, opt, where);
  require_outputs_disjoint<const float, O>({{o, "o"}}, {{k.scales, "k.scales"}, {v.scales, "v.scales"}}, where);
  if (!opt.lse.empty()) {
    const tensor_view<const float> lse = lse_view(opt);
    require_disjoint(shared_element(lse, k.scales), where, "options.lse", opt.lse.data(), "k.scales");
    require_disjoint(shared_element(lse, v.scales), where, "options.lse", opt.lse.data(), "v.scales");
  }
}
template <class Q>
void check_map(const head_map& map, const tensor_view<const Q>& q, const q8_view& k, const char* where) {
  check_map(map, q, k.values, where);
}

/// attend() for K and V given as KVView: tensor_view<const KV> (KV float, bf16, f16) or q8_view (int8),
/// Q and O of element type QO (float, or KV's 16-bit type): validation (Note [validation once]), then the
/// core.
template <class Isa, class KVView, class QO>
void attend_kv(const tensor_view<const QO>& q, const KVView& k, const KVView& v, const tensor_view<QO>& o,
               const head_map& map, const attention_options& opt) {
  static_assert(isa::dispatched<Isa> || isa::compiled<Isa>,
                "gqa::attend<Isa>: this translation unit is not compiled with flags for Isa");
  constexpr const char* where = "gqa::attend";  // See Note [validation once]
  check_views(q, k, v, o, where);
  check_call(q, k, v, o, opt, where);
  check_map(map, q, k, where);
  const auto on = core::target_of<Isa>(opt);  // a bad options.isa / GQA_ISA throws here
  check_finite(q, k, v, opt, where);           // opt-in: Note [non-finite inputs]
  core::forward_on(on, q, k, v, o, map, opt);
}

/// K and V views of one 16-bit element type (bf16 or f16; each const or not): what the 16-bit attend()
/// and forward() take.
template <class K, class V>
concept half_kv = std::is_same_v<std::remove_const_t<K>, std::remove_const_t<V>> &&
                  (std::is_same_v<std::remove_const_t<K>, bf16> || std::is_same_v<std::remove_const_t<K>, f16>);

/// Q, K, V views of one 16-bit element type (each const or not) and an O view of it (not const): what the
/// all-16-bit attend() and forward() take (Note [16-bit Q/O] in detail/core/layout.hpp).
template <class Q, class K, class V, class O>
concept half_qkvo = half_kv<K, V> && std::is_same_v<std::remove_const_t<Q>, std::remove_const_t<K>> &&
                    std::is_same_v<O, std::remove_const_t<K>>;

/// A Q view of a 16-bit element type (const or not) and an O view of the same type (not const): what the
/// 16-bit Q/O attend() and forward() on an int8 cache take.
template <class Q, class O>
concept half_qo = half_kv<Q, Q> && std::is_same_v<O, std::remove_const_t<Q>>;

}  // namespace detail

/// O[b, i, h] = softmax(scale · Q[b, i, h] · K[b, :, map(h)]ᵀ + mask) · V[b, :, map(h)].
/// Shapes: q (b, sq, hq, d_qk), k (b, skv, hkv, d_qk), v (b, skv, hkv, d_v), o (b, sq, hq, d_v).
/// Isa: isa::dispatch (the default) runs the best ISA the running CPU supports, whatever this TU's flags
/// (or opt.isa / GQA_ISA, see isa::resolve); an ISA tag (isa::avx2, ...) runs that ISA's kernels as this
/// TU's flags compile them, with no run-time check.
/// Throws gqa::invalid_argument (a std::invalid_argument) naming the bad argument and its value, also for
/// an options.isa or GQA_ISA naming an ISA that cannot run here (Isa = isa::dispatch).
template <class Isa = isa::dispatch>
void attend(tensor_view<const float> q, tensor_view<const float> k, tensor_view<const float> v,
            tensor_view<float> o, const head_map& map, const attention_options& opt = {}) {
  detail::attend_kv<Isa>(q, k, v, o, map, opt);
}

/// attend() with K and V stored in 16 bits: both bf16 or both f16 (gqa/numeric.hpp), Q and O float (Q and
/// O in the same 16-bit type: the overload after this one). The
/// same result as attend() on K and V widened to float, bit for bit (widening is exact, and the core
/// computes in fp32: Note [16-bit K/V] in detail/core/layout.hpp), reading half the K/V bytes. The same
/// checks and errors; the 16-bit core is compiled only in TUs that call this.
template <class Isa = isa::dispatch, class K, class V>
  requires detail::half_kv<K, V>
void attend(tensor_view<const float> q, tensor_view<K> k, tensor_view<V> v, tensor_view<float> o,
            const head_map& map, const attention_options& opt = {}) {
  using T = std::remove_const_t<K>;
  detail::attend_kv<Isa>(q, tensor_view<const T>(k), tensor_view<const T>(v), o, map, opt);
}

/// attend() with Q, K, V and O all stored in one 16-bit type (bf16 or f16; gqa/numeric.hpp): the core
/// widens Q and K/V (exact), computes in fp32 as for float views, and rounds each output element once to
/// the 16-bit type (nearest even; NaN stays NaN). So O is, bit for bit, attend() on the widened Q, K, V
/// with its float output rounded to T (Note [16-bit Q/O] in detail/core/layout.hpp); options.lse stays
/// float. The same checks and errors (aliasing of o with q, k, v and options.lse by bytes). Mixing element
/// types (16-bit Q or O with float or other-typed K/V) does not compile.
template <class Isa = isa::dispatch, class Q, class K, class V, class O>
  requires detail::half_qkvo<Q, K, V, O>
void attend(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> o, const head_map& map,
            const attention_options& opt = {}) {
  using T = std::remove_const_t<K>;
  detail::attend_kv<Isa>(tensor_view<const T>(q), tensor_view<const T>(k), tensor_view<const T>(v), o, map, opt);
}

/// attend() with an int8 K/V cache (gqa::q8_view: int8 values and one fp32 scale per (token, KV head)
/// row, gqa/quantized.hpp), Q and O float: attention over K and V dequantised to fp32 (scale · value),
/// dequantised inside the kernel (Note [int8 K/V] in detail/core/layout.hpp), reading about a quarter of
/// the float cache's bytes. Agrees with attend() on dequantize_q8's floats to fp32 rounding (bit for bit
/// on the tiled prefill path). The same checks and errors, the scales named "k.scales", "v.scales"; the
/// int8 core is compiled only in TUs that call this.
template <class Isa = isa::dispatch>
void attend(tensor_view<const float> q, const q8_view& k, const q8_view& v, tensor_view<float> o,
            const head_map& map, const attention_options& opt = {}) {
  detail::attend_kv<Isa>(q, k, v, o, map, opt);
}

/// attend() with an int8 K/V cache and Q and O in one 16-bit type (bf16 or f16): the core widens Q (exact)
/// as it packs it and rounds each output element once to the 16-bit type (Note [16-bit Q/O]), so O is,
/// bit for bit, attend(q8_view) on the widened Q with its float output rounded to T; the decode products
/// (Note [int8 decode products]) quantise the same widened rows. options.lse stays float. The same checks
/// and errors (aliasing by bytes).
template <class Isa = isa::dispatch, class Q, class O>
  requires detail::half_qo<Q, O>
void attend(tensor_view<Q> q, const q8_view& k, const q8_view& v, tensor_view<O> o, const head_map& map,
            const attention_options& opt = {}) {
  using T = std::remove_const_t<Q>;
  detail::attend_kv<Isa>(tensor_view<const T>(q), k, v, o, map, opt);
}

GQA_END_NAMESPACE
