// gqa/backward.hpp: attend_backward(), the gradients of attend() (FlashAttention-2's backward on the one
// blocked core), with validation; on the ISA attend() would run (chosen at run time) or an explicit one. Invariant: every argument is checked here, before any work; below
// this nothing throws or allocates per tile.
#pragma once

#include <cmath>
#include <span>
#include <type_traits>
#include <utility>

#include "attention.hpp"
#include "config.hpp"
#include "detail/core/backward.hpp"
#include "detail/core/targets.hpp"
#include "errors.hpp"
#include "head_map.hpp"
#include "isa/tags.hpp"
#include "options.hpp"
#include "tensor.hpp"

GQA_BEGIN_NAMESPACE

namespace detail {

/// Throws unless `got` has the extents of `want` ("<where>: dq.s = 5: must equal q.s = 4").
template <class A, class B>
inline void require_same_extents(const tensor_view<A>& got, const char* got_name, const tensor_view<B>& want,
                                 const char* want_name, const char* where) {
  const index_t g[4] = {got.b, got.s, got.h, got.d};
  const index_t w[4] = {want.b, want.s, want.h, want.d};
  const char* ext[4] = {"b", "s", "h", "d"};
  for (int i = 0; i < 4; ++i)
    if (g[i] != w[i])
      fail(where, ": ", got_name, ".", ext[i], " = ", g[i], ": must equal ", want_name, ".", ext[i], " = ", w[i]);
}

/// The view of a span as a 1-D tensor (for the aliasing checks).
template <class T>
inline tensor_view<T> span_view(std::span<T> s) noexcept {
  return {s.data(), 1, 1, 1, static_cast<index_t>(s.size()), 0, 0, 0, 1};
}

/// The backward's own checks of the score modifiers (check_modifiers() has checked each on its own):
/// options.dsinks needs options.sinks and has hq entries; no gradient (nor dsinks) shares an element with
/// options.sinks or options.alibi_slopes, which the call reads while it writes them; dsinks shares none
/// with any input or gradient.
template <class T, class G>
void check_backward_modifiers(const tensor_view<const T>& q, const tensor_view<const T>& k, const tensor_view<const T>& v,
                              const tensor_view<const T>& o, const tensor_view<const T>& dout,
                              std::span<const float> lse, const tensor_view<G>& dq, const tensor_view<G>& dk,
                              const tensor_view<G>& dv, const attention_options& opt, const char* where) {
  if (!opt.dsinks.empty()) {
    require(!opt.sinks.empty(), where, "options.dsinks.size()", opt.dsinks.size(),
            "needs options.sinks (dsinks is the gradient of the sinks)");
    require(std::cmp_equal(opt.dsinks.size(), q.h), where, "options.dsinks.size()", opt.dsinks.size(),
            "must equal hq = ", q.h, " (or 0: not computed)");
  }
  const tensor_view<float> ds = span_view(opt.dsinks);
  const named_view<const float> params[2] = {{span_view(opt.sinks), "options.sinks"},
                                             {span_view(opt.alibi_slopes), "options.alibi_slopes"}};
  const named_view<G> grads[3] = {{dq, "dq"}, {dk, "dk"}, {dv, "dv"}};
  for (const auto& [out, name] : grads) {
    for (const auto& in : params)
      if (in.view.d > 0) require_disjoint(shared_element(out, in.view), where, name, out.data, in.name);
  }
  if (ds.d > 0) {
    // dsinks repeats no element and shares none with q, k, v, o, dout (one call), then the float inputs
    // (sinks, ALiBi slopes, the LSE) and the gradients, each once.
    require_outputs_disjoint<const T, float>({{ds, "options.dsinks"}},
                                             {{q, "q"}, {k, "k"}, {v, "v"}, {o, "o"}, {dout, "dout"}}, where);
    const named_view<const float> floats[3] = {params[0], params[1], {span_view(lse), "lse"}};
    for (const auto& in : floats)
      if (in.view.d > 0) require_disjoint(shared_element(ds, in.view), where, "options.dsinks", ds.data, in.name);
    for (const auto& [g, name] : grads)
      require_disjoint(shared_element(ds, g), where, "options.dsinks", ds.data, name);
  }
}

/// Everything attend_backward() checks, once, before any work (Note [validation once]): the forward's
/// checks of q, k, v, o, options and map, the extents of dout and the gradients, the LSE, and that no
/// gradient repeats an element or shares one with an input or another gradient (Note [exact overlap]).
template <class T, class G>
void validate_backward(const tensor_view<const T>& q, const tensor_view<const T>& k, const tensor_view<const T>& v,
                       const tensor_view<const T>& o, const tensor_view<const T>& dout, std::span<const float> lse,
                       const tensor_view<G>& dq, const tensor_view<G>& dk, const tensor_view<G>& dv,
                       const head_map& map, const attention_options& opt, const char* where = "gqa::attend_backward") {
  check_view(q, "q", where);
  check_view(k, "k", where);
  check_view(v, "v", where);
  check_view(o, "o", where);
  check_view(dout, "dout", where);
  check_view(dq, "dq", where);
  check_view(dk, "dk", where);
  check_view(dv, "dv", where);
  check_shapes(q, k, v, o, opt, where);
  require_same_extents(dout, "dout", o, "o", where);
  require_same_extents(dq, "dq", q, "q", where);
  require_same_extents(dk, "dk", k, "k", where);
  require_same_extents(dv, "dv", v, "v", where);
  check_map(map, q, k, where);
  const index_t need = q.b * q.h * q.s;  // <= q's element count, which check_view bounded
  require(std::cmp_equal(lse.size(), need), where, "lse.size()", lse.size(), "must equal b*hq*sq = ", need,
          " (the forward's options.lse)");
  for (std::size_t i = 0; i < lse.size(); ++i)
    if (std::isnan(lse[i]) || (std::isinf(lse[i]) && lse[i] > 0))
      fail(where, ": lse[", i, "] = ", lse[i], ": must be finite or -inf (the forward's LSE of that row)");
  require_outputs_disjoint<const T, G>({{dq, "dq"}, {dk, "dk"}, {dv, "dv"}},
                                       {{q, "q"}, {k, "k"}, {v, "v"}, {o, "o"}, {dout, "dout"}}, where);
  const tensor_view<const float> lv = span_view(lse);  // float whatever T is: checked apart, once per gradient
  for (const auto& [g, name] : {named_view<G>{dq, "dq"}, {dk, "dk"}, {dv, "dv"}})
    require_disjoint(shared_element(g, lv), where, name, g.data, "lse");
  check_backward_modifiers(q, k, v, o, dout, lse, dq, dk, dv, opt, where);
}

/// The element types of a 16-bit backward: q, k, v, o and dout in one 16-bit type T (bf16 or f16; each
/// const or not), the gradients dq, dk, dv all in T or all in float.
template <class Q, class K, class V, class O, class DO, class G>
concept half_backward = half_kv<Q, K> && half_kv<K, V> && half_kv<V, O> && half_kv<O, DO> &&
                        (std::is_same_v<G, float> || std::is_same_v<G, std::remove_const_t<Q>>);

}  // namespace detail

/// The gradients of O = attend(q, k, v, map, opt) with respect to q, k and v, given dout = ∂L/∂O, the
/// forward's output o and its LSE (options.lse of the forward call, laid out [b][hq][sq]).
/// Shapes: dq like q (b, sq, hq, d_qk), dk like k (b, skv, hkv, d_qk), dv like v (b, skv, hkv, d_v), any
/// strides with stride_d = 1. The options must be the forward's (scale, causal, kv_lengths, window,
/// softcap, sinks, alibi_slopes), applied as the forward applied them; threads and parallel_for may
/// differ; options.lse is not used (the LSE is the `lse` argument). options.dsinks (optional, size hq,
/// needs sinks) receives the sinks' gradient (docs/design.md §8.7).
/// dq, dk and dv are overwritten, not accumulated. A KV head's dk/dv is the sum over every query head the
/// map assigns to it (zero for a KV head that serves none); keys no query sees (past kv_lengths, after
/// every causal row, outside every window) get zero; rows that see no key (or whose LSE is −inf)
/// contribute nothing and get dq = 0. Results are bitwise identical for any thread count and executor.
/// Isa as for attend(): isa::dispatch (the default) picks the ISA at run time (options.isa, GQA_ISA, the
/// CPU), so a backward runs the ISA its forward ran; an ISA tag picks it at compile time.
/// Throws gqa::invalid_argument (naming the argument and its value) before any work for: any check of
/// attend(), dout/dq/dk/dv extents different from o/q/k/v, lse of the wrong size or holding NaN or +inf,
/// any overlap of dq, dk, dv with an input or with each other, options.dsinks without sinks or of a size
/// other than hq, any overlap of dq, dk, dv or dsinks with options.sinks or options.alibi_slopes, or of
/// dsinks with an input or a gradient, and (Isa = isa::dispatch) an options.isa or GQA_ISA naming an ISA
/// that cannot run here.
template <class Isa = isa::dispatch>
void attend_backward(tensor_view<const float> q, tensor_view<const float> k, tensor_view<const float> v,
                     tensor_view<const float> o, tensor_view<const float> dout, std::span<const float> lse,
                     tensor_view<float> dq, tensor_view<float> dk, tensor_view<float> dv, const head_map& map,
                     const attention_options& opt = {}) {
  static_assert(isa::dispatched<Isa> || isa::compiled<Isa>,
                "gqa::attend_backward<Isa>: this translation unit is not compiled with flags for Isa");
  detail::validate_backward(q, k, v, o, dout, lse, dq, dk, dv, map, opt);
  const auto on = detail::core::target_of<Isa>(opt);  // a bad options.isa / GQA_ISA throws here
  detail::core::backward_on(on, q, k, v, o, dout, lse, dq, dk, dv, map, opt);
}

/// attend_backward() with q, k, v, o and dout all stored in one 16-bit type T (bf16 or f16; each view
/// const or not) and the gradients dq, dk, dv in T or float (all three the same): the fp32 backward on
/// the widened inputs (exact), each gradient element rounded once to T where it leaves the core (Note
/// [16-bit backward] in detail/core/backward.hpp). So the gradients are, bit for bit, attend_backward()
/// on the widened inputs with its float gradients rounded to T (the same bits with float gradients), and
/// the inputs' bytes are halved. With bf16 inputs and options.bf16_products (on by default), on a CPU
/// where VDPBF16PS is the engine (isa::bf16_dot_fast(): an AMD one with AVX512-BF16) the AVX-512 core runs
/// the products of the blocks no mask edge cuts in bf16 with fp32 sums, P and dS rounded to bf16 (Note
/// [bf16 backward] in detail/core/backward.hpp): not those bits, 1.5-1.7x as fast at d 128. lse and
/// options.dsinks stay float. The same checks and errors (aliasing across element types by bytes).
template <class Isa = isa::dispatch, class Q, class K, class V, class O, class DO, class G>
  requires detail::half_backward<Q, K, V, O, DO, G>
void attend_backward(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> o, tensor_view<DO> dout,
                     std::span<const float> lse, tensor_view<G> dq, tensor_view<G> dk, tensor_view<G> dv,
                     const head_map& map, const attention_options& opt = {}) {
  static_assert(isa::dispatched<Isa> || isa::compiled<Isa>,
                "gqa::attend_backward<Isa>: this translation unit is not compiled with flags for Isa");
  using T = std::remove_const_t<Q>;
  const tensor_view<const T> qc(q), kc(k), vc(v), oc(o), dc(dout);
  detail::validate_backward(qc, kc, vc, oc, dc, lse, dq, dk, dv, map, opt);
  const auto on = detail::core::target_of<Isa>(opt);  // a bad options.isa / GQA_ISA throws here
  detail::core::backward_on(on, qc, kc, vc, oc, dc, lse, dq, dk, dv, map, opt);
}

GQA_END_NAMESPACE
