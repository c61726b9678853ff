// tests/sweep/case.hpp: a random API call of gqa and its check against the naive double reference, shared
// by the seeded sweep (tests/sweep/sweep_main.cpp) and the fuzzer (tests/fuzz/fuzz_attention.cpp), which
// differ only in where the random choices come from (`source`) and in their size budget.
//
// A case (Note [sweep case]) is drawn, its buffers built and filled, run on every selected ISA
// (runner.hpp), and each result compared with reference::attention on the same (prepared) K/V and head
// map, element by element, class by class (Note [sweep checks]). Compiled with baseline flags only.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iomanip>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <gqa/errors.hpp>
#include <gqa/random.hpp>
#include <gqa/reference/attention.hpp>
#include <gqa/variants/registry.hpp>

#include "support/tolerance.hpp"
#include "sweep/runner.hpp"

namespace gqa::sweep {

using gqa::index_t;

inline constexpr float k_nan = std::numeric_limits<float>::quiet_NaN();
inline constexpr float k_inf = std::numeric_limits<float>::infinity();
/// Fills every output buffer element outside the view: a write outside it changes the sentinel. (Input
/// buffers hold NaN outside their views: a read outside shows up as NaN in the output.)
inline constexpr float k_sentinel = -12345.5f;
/// The magnitude of an overflow pair (Note [sweep case]): q · k = 1e40 overflows float, not double.
inline constexpr float k_huge = 1e20f;

/// Where a case's choices come from: the sweep's seeded stream or the fuzzer's bytes.
class source {
 public:
  virtual ~source() = default;
  virtual std::uint64_t bits() = 0;
  /// Uniform in [lo, hi].
  index_t uniform(index_t lo, index_t hi) {
    return lo + static_cast<index_t>(bits() % static_cast<std::uint64_t>(hi - lo + 1));
  }
  bool chance(int percent) { return static_cast<int>(bits() % 100) < percent; }
  template <class T, std::size_t N>
  const T& pick(const T (&a)[N]) {
    return a[bits() % N];
  }
};

/// The sweep's source: gqa::random::stream over (seed, case number).
class stream_source final : public source {
 public:
  stream_source(std::uint64_t seed, std::uint64_t key) : s_{seed, key, 0} {}
  std::uint64_t bits() override { return s_.next_u64(); }

 private:
  gqa::random::stream s_;
};

/// A 4-D view's memory layout: the order of (b, s, h) from outer to inner (d is always innermost, unit
/// stride), padding after each level, and negated strides.
struct layout {
  int order = 0;              ///< index into k_orders: 0 BSHD, 1 BHSD, then the other four
  index_t pad[4] = {};        ///< extra elements after the head vector, then after each level inner to outer
  bool neg[3] = {};           ///< stride of b, s, h negative
};
inline constexpr int k_orders[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {2, 0, 1}, {1, 2, 0}, {2, 1, 0}};
inline constexpr const char* k_order_names[6] = {"bshd", "bhsd", "sbhd", "hbsd", "shbd", "hsbd"};

/// A buffer and the view of (b, s, h, d) elements in it; every other element holds k_sentinel.
struct buffer {
  std::vector<float> mem;
  gqa::tensor_view<float> view;
};

inline buffer make_buffer(const layout& l, index_t b, index_t s, index_t h, index_t d) {
  const index_t ext[3] = {b, s, h};
  index_t stride[3] = {};
  index_t cur = d + l.pad[0];
  for (int level = 2; level >= 0; --level) {
    const int dim = k_orders[l.order][level];
    stride[dim] = cur;
    cur = cur * ext[dim] + l.pad[3 - level];
  }
  buffer r;
  r.mem.assign(static_cast<std::size_t>(cur), k_sentinel);
  index_t offset = 0;
  for (int dim = 0; dim < 3; ++dim)
    if (l.neg[dim]) {
      offset += (ext[dim] - 1) * stride[dim];
      stride[dim] = -stride[dim];
    }
  r.view = {r.mem.data() + offset, b, s, h, d, stride[0], stride[1], stride[2], 1};
  return r;
}

/// Heads [h0, h0 + h) of view t.
template <class T>
gqa::tensor_view<T> heads_of(gqa::tensor_view<T> t, index_t h0, index_t h) {
  t.data += h0 * t.stride_h;
  t.h = h;
  return t;
}

/// Calls f(element&) for every element of view t, in logical order.
template <class T, class F>
void for_each_element(const gqa::tensor_view<T>& t, F&& f) {
  for (index_t ib = 0; ib < t.b; ++ib)
    for (index_t is = 0; is < t.s; ++is)
      for (index_t ih = 0; ih < t.h; ++ih)
        for (index_t x = 0; x < t.d; ++x) f(t(ib, is, ih, x));
}

// Note [sweep case]
// What one case draws (every choice from its `source`):
//  * the call: gqa::attend with a head map (uniform; unequal contiguous groups, some empty, via
//    from_allocation; or an arbitrary non-contiguous map), or gqa::forward of a registered variant on a
//    layer (H, G, d) with its default heads;
//  * heads from a list that includes 28/4, 14/2 and 5/1, or random; d_qk from a list (1, 80, 96, 112,
//    128, 256, ...) or random in 1..256, d_v = d_qk or random; sq and skv mostly short (block edges ±1),
//    sometimes one of them long (up to 4097) with the other short, batch 1..3; the product
//    b · hq · sq · skv · (d_qk + d_v) bounded by the caller's budget, so a case's cost is bounded;
//  * the layout of each of q, k, v, o (BSHD, BHSD or another order, padding, negative strides), or q, k, v
//    as head ranges of one fused QKV buffer;
//  * causal (bottom-right: sq < skv, sq = skv and sq > skv all occur), kv_lengths (0 and skv included),
//    scale (default, or explicit of either sign), a sliding window, a softcap, sinks and ALiBi slopes (issue
//    13), LSE output, check_finite, the executor (1 thread,
//    2 threads, or a caller's parallel loop that runs tasks out of order on two threads);
//  * the K/V form: the dense views (most cases); a paged cache (pages of 1, 7, 16, 256 or a random number
//    of slots, shuffled in a pool with spare pages, every slot no sequence fills NaN (int8: a NaN scale);
//    the lengths are kv_lengths or skv); or a ragged batch (q, k, v packed without padding, each
//    sequence's keys its kv_lengths, o dense BSHD viewed as packed rows, the LSE read back from
//    [hq][total_q]), in K/V's element type (Note [sweep element types]: int8 on every form too), drawn apart
//    from the masks and modifiers above, so that every one of them meets every form (of 2000 cases, ~50
//    paged and ~50 ragged ones have a window, 20-40 each a softcap, sinks or ALiBi). Every variant meets
//    every form: a plan from the keys (KDGQA, DGQA) then reads each sequence's valid keys (expected: the
//    plan on the keys zero-padded past each length); a finish step (PGQA) is ragged only with more than
//    one output value per (sequence, head) (sq · dv > 1, which the dense call also requires);
//  * injections at random positions, masked ones included: NaN, ±inf, 1e30 in V, denormals, and
//    overflow pairs: column x of Q and K zeroed in one batch, then q[i, h, x] = ±1e20 for a few rows
//    and k[j, g, x] = ±1e20 for one key, so those rows' score with key j is ±1e40 (float overflow,
//    Note [non-finite inputs]) and every other score stays exact; a case with overflow pairs has no
//    infinity in Q or K (1e40 − inf would be −inf in double but NaN in float).
// The explicit scale is at most 40/d_qk in magnitude (inputs in [−1, 1]), so two scores of a row differ
// by less than 80: a weight never underflows in float where it does not in double (0 · inf in V would be
// NaN for one and ±inf for the other). ALiBi adds up to slope · (sq + skv) to that spread: where that is
// above 20 the case's infinite V elements become NaN (found by a 20000-case sweep, seed 7, case 10625).

// Note [sweep element types]
// A case's K and V are float (70% of the cases), bf16, f16 (10% each) or int8 (10%: one fp32 scale per
// (token, head) row), drawn after everything else, so that every mask, modifier, layout, head map,
// variant, executor and K/V form above meets every type; with bf16 or f16, half of the cases take Q and O
// in that type too, and half of those with bf16 turn options.bf16_products off; half of those with int8
// turn options.int8_products off (the same draw), and every int8 case's Q rows that are finite hold their
// values quantised and dequantised by gqa::quantize_q8's rule, the Q the int8 products multiply (Note
// [int8 products tolerance]), with or without them. Only what gqa provides is drawn: int8 K/V on every
// form for attend and forward (the dense q8_views; a gqa::paged_q8_kv; q8_views of the packed rows with
// gqa::varlen), so an int8 case is paged or ragged as often as a float one (of 2000 cases, ~30 paged and
// ~15 ragged, about half of each attend, half forward); 16-bit K/V on every form for attend, on dense and
// paged for forward; 16-bit Q/O for forward on dense views only. A case with 16-bit Q or f16 K/V has no
// overflow pairs (rounded, ±1e20 is no longer the value that makes them: in f16 it is ±inf). The inputs
// are drawn as float, written in the type (a buffer of the same layout: rounded to nearest even, or
// quantised row by row by gqa::quantize_q8's rule), and the float buffers then hold what the typed ones
// stand for (the 16-bit values widened, the int8 rows dequantised), so the reference, the naive yardstick
// and the fp32 call all see the call's values (Notes [16-bit K/V tolerance], [int8 K/V tolerance] in
// tests/support/tolerance.hpp). The paged and ragged forms are built from the dense views once they hold
// those values: the float pages and packed rows (and the 16-bit ones written from them) as before, and
// for int8 the same rows, in the same slots and rows, copied from the dense int8 values and scales (a
// pool's slots no sequence fills hold -128 with a NaN scale, which reads as NaN, as a float page's NaN).
// Checks, beyond Note [sweep checks]: a 16-bit output is read widened, each element's tolerance grows by
// half a unit in its last place (the rounding of O is the caller's choice of storage), and the output
// buffer's sentinel is the rounded one; with bf16 Q/K/V/O and bf16_products on, the naive yardstick rounds
// its weights to bf16 (Note [bf16 products tolerance]); with int8 K/V and int8_products on, a decode call's
// output tolerance grows by Note [int8 P·V tolerance]'s bound (P·V in integers, the weights rounded to 16
// bits per chunk of 64 keys), on every form (a paged call takes the fp32 products instead for a chunk of
// keys on several pages, which that bound covers too); a 16-bit call (but that one) must return, bit for
// bit, what the same call returns on the widened float views, on every ISA (Note [16-bit K/V] in
// detail/core/layout.hpp), its 16-bit O the fp32 call's rounded once; and gqa::attend on int8 K/V in a
// ragged batch, or in a paged cache with int8_products off or a page size that is a multiple of 64, must return, bit
// for bit, what gqa::attend returns on the dense int8 views of the same keys (cut to the longest sequence,
// options.kv_lengths the sequences' lengths), on every ISA, as gqa/paged.hpp and gqa/varlen.hpp promise
// (forward is not compared: on a dense view a plan from the keys reads the positions past kv_lengths too).

/// An injected value at a logical position of q, k or v.
struct injection {
  char tensor;  // 'q', 'k', 'v'
  index_t ib, is, ih, x;
  float value;
};

struct case_spec {
  int variant = -1;  ///< -1: gqa::attend with `kv_of_q`; else the registry index
  std::string map_kind;
  gqa::model_shape layer;
  gqa::variant_heads heads;  ///< hq, hkv (core), kv_in (heads of the K/V handed over)
  index_t b = 1, sq = 1, skv = 1, d = 1, dv = 1;
  std::vector<index_t> kv_of_q;  ///< attend only
  bool causal = false, lse = false, check_finite = false, fused = false;
  std::optional<float> scale;
  std::vector<index_t> kv_lengths;
  index_t window_left = -1, window_right = -1;  ///< sliding window (attention_options)
  float softcap = 0.0f;
  std::vector<float> sinks, alibi_slopes;  ///< per query head, or empty
  layout lq, lk, lv, lo;
  int threads = 0;  ///< 0: 1 thread, 1: 2 threads, 2: the caller's loop
  float v_amp = 1.0f;
  std::vector<injection> injections;
  std::uint64_t data_seed = 0;
  int kv_kind = 0;    ///< 0: dense views, 1: paged cache, 2: ragged batch
  index_t page = 0;   ///< slots per page (kv_kind 1)
  kv_type kv = kv_type::f32;        ///< K/V's element type (Note [sweep element types])
  bool qo16 = false;                ///< Q and O in K/V's 16-bit type too
  bool bf16_products = true;        ///< attention_options::bf16_products (bf16 Q/K/V/O), and int8_products (int8 K/V)
  bool backward = false;            ///< also gqa::attend_backward (Note [sweep backward])

  std::string describe() const;
};

inline constexpr const char* k_element_names[4] = {"f32", "bf16", "f16", "i8"};

inline std::string variant_name(int variant) {
  return variant < 0 ? std::string("attend") : std::string(gqa::variant_names[static_cast<std::size_t>(variant)]);
}

inline std::string case_spec::describe() const {
  std::ostringstream os;
  os << variant_name(variant);
  if (variant < 0) {
    os << "(" << map_kind << " map";
    for (const index_t g : kv_of_q) os << " " << g;
    os << ")";
  } else {
    os << "(H " << layer.heads << ", G " << layer.groups << ")";
  }
  os << " b " << b << " sq " << sq << " skv " << skv << " hq " << heads.hq << " hkv " << heads.kv_in << " d " << d
     << " dv " << dv << (causal ? " causal" : "");
  if (!kv_lengths.empty()) {
    os << " kv_lengths";
    for (const index_t x : kv_lengths) os << " " << x;
  }
  if (scale) os << " scale " << *scale;
  if (window_left >= 0 || window_right >= 0) os << " window " << window_left << " " << window_right;
  if (softcap > 0.0f) os << " softcap " << softcap;
  if (!sinks.empty()) os << " sinks " << sinks[0] << "..";
  if (!alibi_slopes.empty()) os << " alibi " << alibi_slopes[0] << "..";
  if (lse) os << " lse";
  if (check_finite) os << " check_finite";
  os << " threads " << (threads == 2 ? "caller" : std::to_string(threads + 1));
  if (kv != kv_type::f32) {
    os << " kv " << k_element_names[static_cast<int>(kv)];
    if (qo16) os << " qo " << k_element_names[static_cast<int>(kv)] << (kv == kv_type::bf16 && !bf16_products ? " (bf16_products off)" : "");
    if (kv == kv_type::i8 && !bf16_products) os << " (int8_products off)";
  }
  if (backward) os << " backward";
  const auto lay = [&](const char* n, const layout& l) {
    os << " " << n << ":" << k_order_names[l.order];
    if (l.pad[0] || l.pad[1] || l.pad[2] || l.pad[3])
      os << "+pad" << l.pad[0] << "," << l.pad[1] << "," << l.pad[2] << "," << l.pad[3];
    if (l.neg[0] || l.neg[1] || l.neg[2]) os << "-" << (l.neg[0] ? "b" : "") << (l.neg[1] ? "s" : "") << (l.neg[2] ? "h" : "");
  };
  if (fused) {
    lay("qkv(fused)", lq);
  } else {
    lay("q", lq);
    lay("k", lk);
    lay("v", lv);
  }
  lay("o", lo);
  if (v_amp != 1.0f) os << " v_amp " << v_amp;
  if (kv_kind == 1) os << " paged " << page;
  if (kv_kind == 2) os << " ragged";
  for (const auto& in : injections)
    os << " " << in.tensor << "[" << in.ib << "," << in.is << "," << in.ih << "," << in.x << "]=" << in.value;
  return os.str();
}

/// Size limits of a case: `budget` bounds b · hq · sq · skv · (d + dv); `max_len` the longest sequence.
struct limits {
  double budget = 3e6;
  index_t max_len = 4097;
  index_t max_d = 256;
};

namespace detail {

inline layout draw_layout(source& r, index_t d) {
  layout l;
  l.order = r.chance(70) ? static_cast<int>(r.uniform(0, 1)) : static_cast<int>(r.uniform(0, 5));
  if (r.chance(25))
    for (auto& p : l.pad) p = r.chance(50) ? 0 : r.uniform(1, std::max<index_t>(3, d / 4));
  if (r.chance(20))
    for (auto& n : l.neg) n = r.chance(50);
  return l;
}

inline index_t draw_length(source& r, index_t max_len) {
  static constexpr index_t edges[] = {1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 95, 97, 127, 129, 191, 255, 257, 511, 513};
  index_t n = r.chance(40) ? r.pick(edges) : r.uniform(1, r.chance(70) ? 80 : 300);
  return std::min(n, max_len);
}

/// Draws a composition of hq into hkv groups, some of them empty (hkv may exceed hq).
inline std::vector<index_t> draw_allocation_map(source& r, index_t hq, index_t hkv) {
  std::vector<index_t> m(static_cast<std::size_t>(hq));
  // Sorted random cut points: contiguous groups of random sizes (0 included).
  std::vector<index_t> g(static_cast<std::size_t>(hq));
  for (auto& x : g) x = r.uniform(0, hkv - 1);
  std::sort(g.begin(), g.end());
  for (std::size_t h = 0; h < g.size(); ++h) m[h] = g[h];
  return m;
}

}  // namespace detail

/// Draws a case (Note [sweep case]) within `lim`.
inline case_spec draw_case(source& r, const limits& lim) {
  case_spec c;
  c.data_seed = r.bits();
  // Heads.
  static constexpr index_t head_pairs[][2] = {{28, 4}, {14, 2}, {5, 1}, {8, 2}, {4, 4}, {32, 8}, {6, 3}, {12, 4}, {1, 1}, {16, 1}};
  static constexpr index_t layers[][2] = {{28, 4}, {14, 2}, {8, 2}, {4, 1}, {6, 3}, {12, 4}, {16, 8}, {2, 1}, {10, 5}, {8, 8}};
  constexpr int n_variants = static_cast<int>(gqa::registered_variants::size);
  c.variant = r.chance(45) ? static_cast<int>(r.uniform(0, n_variants - 1)) : -1;
  // Head dims.
  static constexpr index_t dims[] = {1, 2, 3, 4, 8, 16, 32, 48, 64, 80, 96, 112, 128, 192, 256};
  c.d = std::min(r.chance(50) ? r.pick(dims) : r.uniform(1, r.chance(60) ? 64 : 256), lim.max_d);
  c.dv = c.d;
  if (c.variant < 0 && r.chance(40)) c.dv = std::min(r.chance(50) ? r.pick(dims) : r.uniform(1, 256), lim.max_d);
  if (c.variant >= 0) {
    const auto& hl = r.pick(layers);
    c.layer = {hl[0], hl[1], c.d, r.bits()};
    int i = 0;
    gqa::for_each_variant([&](auto t) {
      if (i++ == c.variant) c.heads = decltype(t)::type::heads_for(c.layer);
    });
  } else {
    index_t hq, hkv;
    if (r.chance(60)) {
      const auto& hp = r.pick(head_pairs);
      hq = hp[0];
      hkv = hp[1];
    } else {
      hq = r.uniform(1, 12);
      hkv = r.uniform(1, 12);
    }
    const int kind = static_cast<int>(r.uniform(0, 2));
    if (kind == 0 && hq % hkv == 0) {
      c.map_kind = "uniform";
      for (index_t h = 0; h < hq; ++h) c.kv_of_q.push_back(h / (hq / hkv));
    } else if (kind <= 1) {
      c.map_kind = "allocation";
      c.kv_of_q = detail::draw_allocation_map(r, hq, hkv);
    } else {
      c.map_kind = "arbitrary";
      for (index_t h = 0; h < hq; ++h) c.kv_of_q.push_back(r.uniform(0, hkv - 1));
    }
    c.heads = {hq, hkv, hkv};
  }
  // Lengths: mostly short; sometimes one long side.
  c.b = r.chance(60) ? 1 : r.uniform(2, 3);
  c.sq = detail::draw_length(r, lim.max_len);
  c.skv = r.chance(15) ? c.sq : detail::draw_length(r, lim.max_len);
  if (r.chance(30)) c.sq = r.uniform(1, 4);  // decode
  bool long_side = false;
  if (r.chance(6) && lim.max_len > 300) {
    long_side = true;
    const index_t n = r.chance(30) ? lim.max_len : r.uniform(1024, lim.max_len);
    if (r.chance(70)) {
      c.skv = n;
      c.sq = std::min<index_t>(c.sq, 8);
    } else {
      c.sq = n;
      c.skv = std::min<index_t>(c.skv, 8);
    }
  }
  c.fused = c.d == c.dv && c.sq == c.skv && r.chance(30);
  // Budget: halve the batch, then the lengths (not the long side), then everything.
  const auto cost = [&] {
    return static_cast<double>(c.b) * static_cast<double>(c.heads.hq) * static_cast<double>(c.sq) *
           static_cast<double>(c.skv) * static_cast<double>(c.d + c.dv);
  };
  const double budget = long_side ? 4 * lim.budget : lim.budget;  // few long cases: a larger share each
  while (cost() > budget) {
    if (c.b > 1) {
      --c.b;
    } else if (long_side && std::min(c.sq, c.skv) > 1) {  // the short side first
      (c.sq < c.skv ? c.sq : c.skv) /= 2;
    } else if (!long_side && (c.sq > 1 || c.skv > 1)) {
      if (c.fused) {
        c.sq = c.skv = std::max<index_t>(1, c.sq / 2);
      } else if (c.sq >= c.skv) {
        c.sq = std::max<index_t>(1, c.sq / 2);
      } else {
        c.skv = std::max<index_t>(1, c.skv / 2);
      }
    } else if (c.sq * c.skv > 1) {  // the long side itself
      if (c.sq >= c.skv) c.sq = std::max<index_t>(1, c.sq / 2);
      else c.skv = std::max<index_t>(1, c.skv / 2);
      if (c.fused) c.sq = c.skv = std::min(c.sq, c.skv);
    } else {
      break;  // one query, one key: heads and dims as drawn
    }
  }
  // Options.
  c.causal = r.chance(50);
  if (r.chance(30)) {
    for (index_t ib = 0; ib < c.b; ++ib) {
      const int kind = static_cast<int>(r.uniform(0, 4));
      c.kv_lengths.push_back(kind == 0 ? 0 : kind == 1 ? c.skv : r.uniform(0, c.skv));
    }
  }
  if (r.chance(40)) {
    const double bound = std::min(2.0, 40.0 / static_cast<double>(c.d));
    const double mag = 0.02 + (bound - 0.02) * static_cast<double>(r.uniform(0, 1000)) / 1000.0;
    c.scale = static_cast<float>(r.chance(30) ? -mag : mag);
  }
  // Masks and score modifiers (issue 13): windows of every size (0, inside, past both lengths), one-sided
  // or both; a softcap from biting (0.5) to loose (30); per-head sinks and ALiBi slopes (FA's 2^-k).
  if (r.chance(25)) {
    const index_t span = std::max(c.sq, c.skv) + 2;
    const auto side = [&] { return r.chance(30) ? index_t{-1} : r.chance(20) ? index_t{0} : r.uniform(0, span); };
    c.window_left = side();
    c.window_right = side();
  }
  if (r.chance(15)) c.softcap = r.chance(50) ? 0.5f : r.chance(50) ? 5.0f : 30.0f;
  if (r.chance(15))
    for (index_t h = 0; h < c.heads.hq; ++h) c.sinks.push_back(static_cast<float>(r.uniform(-300, 300)) / 100.0f);
  if (r.chance(15))
    for (index_t h = 0; h < c.heads.hq; ++h) c.alibi_slopes.push_back(std::exp2(-static_cast<float>(r.uniform(0, 80)) / 10.0f));
  c.lse = r.chance(50);
  c.check_finite = r.chance(10);
  c.threads = static_cast<int>(r.uniform(0, 2));
  // Layouts.
  c.lq = detail::draw_layout(r, c.d);
  c.lk = c.fused ? c.lq : detail::draw_layout(r, c.d);
  c.lv = c.fused ? c.lq : detail::draw_layout(r, c.dv);
  c.lo = detail::draw_layout(r, c.dv);
  if (r.chance(10)) c.v_amp = r.chance(50) ? 1e-3f : 100.0f;
  // Injections.
  if (r.chance(40)) {
    const bool overflow = r.chance(20);
    const int n = static_cast<int>(r.uniform(1, 4));
    bool inf_in_k = false;
    for (int i = 0; i < n; ++i) {
      const char t = "qkv"[r.uniform(0, 2)];
      const index_t s = t == 'q' ? c.sq : c.skv, h = t == 'q' ? c.heads.hq : c.heads.kv_in,
                    d = t == 'v' ? c.dv : c.d;
      injection in{t, r.uniform(0, c.b - 1), r.uniform(0, s - 1), r.uniform(0, h - 1), r.uniform(0, d - 1), k_nan};
      const int kind = static_cast<int>(r.uniform(0, 5));
      if (kind <= 1) {
        in.value = k_nan;
      } else if (kind <= 3) {
        in.value = kind == 2 ? k_inf : -k_inf;
        if (overflow && t != 'v') in.value = k_nan;  // Note [sweep case]: no infinity in Q/K with overflow pairs
      } else if (kind == 4) {
        in.value = t == 'v' ? (r.chance(50) ? 1e30f : -1e30f) : k_nan;
      } else {
        in.value = r.chance(50) ? 1e-40f : -3e-42f;
      }
      if (t == 'k' && std::isinf(in.value)) inf_in_k = true;
      c.injections.push_back(in);
    }
    // A denormal q times an infinite k: q · scale may round to 0 in float (0 · inf = NaN) and not in double.
    if (inf_in_k)
      for (auto& in : c.injections)
        if (in.tensor == 'q' && std::fabs(in.value) < 1e-30f) in.value = k_nan;
    if (overflow) {
      // Overflow pair, encoded as injections of ±k_huge; apply_injections zeroes the column first.
      const index_t ib = r.uniform(0, c.b - 1), x = r.uniform(0, c.d - 1);
      c.injections.push_back({'k', ib, r.uniform(0, c.skv - 1), r.uniform(0, c.heads.kv_in - 1), x,
                              r.chance(50) ? k_huge : -k_huge});
      const int rows = static_cast<int>(r.uniform(1, 3));
      for (int i = 0; i < rows; ++i)
        c.injections.push_back({'q', ib, r.uniform(0, c.sq - 1), r.uniform(0, c.heads.hq - 1), x,
                                r.chance(50) ? k_huge : -k_huge});
    }
  }
  // The K/V form, drawn last so that the choices above stay those of earlier sweeps.
  bool plans_from_keys = false, finishes = false;
  if (c.variant >= 0) {
    int i = 0;
    gqa::for_each_variant([&](auto t) {
      using P = typename decltype(t)::type;
      if (i++ != c.variant) return;
      plans_from_keys = gqa::policy_plans_from_keys<P>;
      finishes = gqa::policy_with_finish<P> || gqa::policy_with_finish_executor<P>;
    });
  }
  const int form = static_cast<int>(r.uniform(0, 99));
  index_t keys = 0;
  for (index_t ib = 0; ib < c.b; ++ib) keys += c.kv_lengths.empty() ? c.skv : c.kv_lengths[static_cast<std::size_t>(ib)];
  static_cast<void>(plans_from_keys);  // KDGQA and DGQA plan from each sequence's valid keys on both forms
  if (form < 15) {
    c.kv_kind = 1;
    static constexpr index_t pages[] = {1, 7, 16, 256};
    c.page = r.chance(70) ? r.pick(pages) : r.uniform(2, 300);
  } else if ((!finishes || c.sq * c.dv > 1) && keys > 0 && form < 25) {
    c.kv_kind = 2;
    c.lo = layout{};  // o: BSHD without padding, which is also the packed rows' layout
  }
  // The element types, drawn after everything else (Note [sweep element types]).
  const int type = static_cast<int>(r.uniform(0, 99));
  c.kv = type < 70 ? kv_type::f32 : type < 80 ? kv_type::bf16 : type < 90 ? kv_type::f16 : kv_type::i8;
  if ((c.kv == kv_type::bf16 || c.kv == kv_type::f16) && c.kv_kind == 2 && c.variant >= 0)
    c.kv = kv_type::f32;  // forward(varlen): float or int8 K/V
  const bool half = c.kv == kv_type::bf16 || c.kv == kv_type::f16;
  c.qo16 = half && r.chance(50) && (c.variant < 0 || c.kv_kind == 0);  // forward: 16-bit Q/O on dense views only
  c.bf16_products = r.chance(50);
  if (c.qo16 || c.kv == kv_type::f16)  // no overflow pairs: rounded, ±1e20 is no longer the pair's value
    std::erase_if(c.injections, [](const injection& in) { return std::fabs(in.value) == k_huge; });
  // ALiBi over long rows spreads a row's scores past the float exponent's range (Note [sweep case]): a
  // weight that is 0 in float and tiny in double times an infinite V element is NaN for the one and ±inf
  // for the other. There V's infinities (1e30 too, in f16) become NaN, which both agree on.
  float slope = 0.0f;
  for (const float x : c.alibi_slopes) slope = std::max(slope, x);
  if (static_cast<double>(slope) * static_cast<double>(c.sq + c.skv) > 20.0)
    for (injection& in : c.injections)
      if (in.tensor == 'v' && (std::isinf(in.value) || (c.kv == kv_type::f16 && std::fabs(in.value) > 65504.0f)))
        in.value = k_nan;
  // The backward, on the calls it takes (Note [sweep backward]).
  const bool backward = r.chance(40);
  c.backward = backward && c.variant < 0 && c.kv_kind != 1 && (c.kv == kv_type::f32 || (half && c.qo16)) &&
               c.injections.empty() && !c.check_finite;
  if (c.backward) c.lse = true;  // its input
  return c;
}

/// The float buffers of a case written in a 16-bit type T (Note [sweep element types]): buf[i] mirrors
/// float buffer i of case_data (float_buffers order), and the pages of a paged case in T.
template <class T>
struct half_mirrors {
  std::array<std::vector<T>, 8> buf;
  gqa::basic_paged_kv<T> paged;
};

/// The inputs of a case, built and filled.
struct case_data {
  buffer qb, kb, vb;  // qb holds q, k and v when fused
  gqa::tensor_view<const float> q, k, v;
  gqa::head_map map;  // attend only
  // kv_kind 1: the keys of each sequence in pages of a shuffled pool; 2: q, k, v packed (Note [sweep case]).
  std::vector<float> pk, pv, rq, rk, rv;
  std::vector<std::int32_t> table;
  std::vector<index_t> lengths, cu_q, cu_k;
  gqa::paged_kv paged;
  gqa::varlen seqs{{}, {}};
  gqa::tensor_view<const float> rqv, rkv, rvv;  // the packed views
  // Note [sweep element types]: the float buffers written in the call's 16-bit type (same layouts), or
  // the buffers of the int8 K and V (same layouts) and their scales.
  half_mirrors<gqa::bf16> bf16;
  half_mirrors<gqa::f16> f16;
  std::vector<std::int8_t> i8_kb, i8_vb;
  std::vector<float> k_scales, v_scales;
  gqa::q8_view k8, v8;  // the dense int8 K and V: i8_kb, i8_vb and their scales, laid out as k and v
  // The int8 K/V of a paged cache (pools of int8 values and their scales, the table and lengths of `paged`)
  // or of a ragged batch (the packed rows and their scales, the offsets of `seqs`), from k8 and v8.
  std::vector<std::int8_t> pk8, pv8, rk8, rv8;
  std::vector<float> pks, pvs, rks, rvs;
  gqa::paged_q8_kv paged8;
  gqa::q8_view rk8v, rv8v;
};

namespace detail {

/// Row j of (ib, g) of t copied to dst (t.d floats).
inline void copy_row(const gqa::tensor_view<const float>& t, index_t ib, index_t j, index_t g, float* dst) {
  for (index_t x = 0; x < t.d; ++x) dst[x] = t(ib, j, g, x);
}

/// Row (ib, j, g) of the dense int8 view t (values and scale) copied to values dst (t.values.d bytes) and
/// scale *dst_scale.
inline void copy_row8(const gqa::q8_view& t, index_t ib, index_t j, index_t g, std::int8_t* dst, float* dst_scale) {
  for (index_t x = 0; x < t.values.d; ++x) dst[x] = t.values(ib, j, g, x);
  *dst_scale = t.scales(ib, j, g, 0);
}

/// The paged cache and the ragged batch of case c from its dense inputs: float from the views k and v; with
/// int8 K/V (Note [sweep element types]) also int8, the same rows in the same places, from the dense int8
/// views k8 and v8 (each slot's int8 values and its scale: every slot no sequence fills holds -128, never
/// written by quantize_q8, with a NaN scale, so that a read of it is NaN as a float page's NaN is).
inline void build_kv_form(const case_spec& c, case_data& r) {
  const bool int8 = c.kv == kv_type::i8;
  const index_t hkv = c.heads.kv_in;
  r.lengths.clear();
  for (index_t ib = 0; ib < c.b; ++ib)
    r.lengths.push_back(c.kv_lengths.empty() ? c.skv : c.kv_lengths[static_cast<std::size_t>(ib)]);
  if (c.kv_kind == 1) {
    const index_t page = c.page, max_pages = (c.skv + page - 1) / page;
    index_t used = 0;
    for (const index_t n : r.lengths) used += (n + page - 1) / page;
    const index_t num_pages = used + 2;
    std::vector<std::int32_t> ids(static_cast<std::size_t>(num_pages));
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int32_t>(i);
    for (std::size_t i = ids.size(); i > 1; --i) std::swap(ids[i - 1], ids[gqa::random::hash(c.data_seed, {0x9a, i}) % i]);
    r.pk.assign(static_cast<std::size_t>(num_pages * page * hkv * c.d), k_nan);
    r.pv.assign(static_cast<std::size_t>(num_pages * page * hkv * c.dv), k_nan);
    r.table.assign(static_cast<std::size_t>(c.b * max_pages), -1);
    if (int8) {
      r.pk8.assign(r.pk.size(), std::int8_t{-128});
      r.pv8.assign(r.pv.size(), std::int8_t{-128});
      r.pks.assign(static_cast<std::size_t>(num_pages * page * hkv), k_nan);
      r.pvs.assign(r.pks.size(), k_nan);
    }
    std::size_t next = 0;
    for (index_t ib = 0; ib < c.b; ++ib) {
      const index_t len = r.lengths[static_cast<std::size_t>(ib)];
      for (index_t i = 0; i < (len + page - 1) / page; ++i) r.table[static_cast<std::size_t>(ib * max_pages + i)] = ids[next++];
      for (index_t j = 0; j < len; ++j)
        for (index_t g = 0; g < hkv; ++g) {
          const index_t slot = r.table[static_cast<std::size_t>(ib * max_pages + j / page)] * page + j % page;
          copy_row(r.k, ib, j, g, r.pk.data() + (slot * hkv + g) * c.d);
          copy_row(r.v, ib, j, g, r.pv.data() + (slot * hkv + g) * c.dv);
          if (int8) {
            copy_row8(r.k8, ib, j, g, r.pk8.data() + (slot * hkv + g) * c.d, r.pks.data() + slot * hkv + g);
            copy_row8(r.v8, ib, j, g, r.pv8.data() + (slot * hkv + g) * c.dv, r.pvs.data() + slot * hkv + g);
          }
        }
    }
    r.paged.k = gqa::page_pool<const float>(r.pk.data(), num_pages, page, hkv, c.d);
    r.paged.v = gqa::page_pool<const float>(r.pv.data(), num_pages, page, hkv, c.dv);
    r.paged.page_table = r.table;
    r.paged.max_pages = max_pages;
    r.paged.lengths = r.lengths;
    if (int8)
      r.paged8 = {{gqa::page_pool<const std::int8_t>(r.pk8.data(), num_pages, page, hkv, c.d),
                   gqa::page_pool<const float>(r.pks.data(), num_pages, page, hkv, 1)},
                  {gqa::page_pool<const std::int8_t>(r.pv8.data(), num_pages, page, hkv, c.dv),
                   gqa::page_pool<const float>(r.pvs.data(), num_pages, page, hkv, 1)},
                  r.table,
                  max_pages,
                  r.lengths};
  } else if (c.kv_kind == 2) {
    const index_t hq = c.heads.hq;
    r.cu_q.assign(1, 0);
    r.cu_k.assign(1, 0);
    for (index_t ib = 0; ib < c.b; ++ib) {
      r.cu_q.push_back(r.cu_q.back() + c.sq);
      r.cu_k.push_back(r.cu_k.back() + r.lengths[static_cast<std::size_t>(ib)]);
    }
    const index_t tq = r.cu_q.back(), tk = r.cu_k.back();
    r.rq.resize(static_cast<std::size_t>(tq * hq * c.d));
    r.rk.resize(static_cast<std::size_t>(tk * hkv * c.d));
    r.rv.resize(static_cast<std::size_t>(tk * hkv * c.dv));
    if (int8) {
      r.rk8.resize(r.rk.size());
      r.rv8.resize(r.rv.size());
      r.rks.resize(static_cast<std::size_t>(tk * hkv));
      r.rvs.resize(r.rks.size());
    }
    for (index_t ib = 0; ib < c.b; ++ib) {
      for (index_t i = 0; i < c.sq; ++i)
        for (index_t h = 0; h < hq; ++h) copy_row(r.q, ib, i, h, r.rq.data() + ((r.cu_q[static_cast<std::size_t>(ib)] + i) * hq + h) * c.d);
      for (index_t j = 0; j < r.lengths[static_cast<std::size_t>(ib)]; ++j)
        for (index_t g = 0; g < hkv; ++g) {
          const index_t row = r.cu_k[static_cast<std::size_t>(ib)] + j;
          copy_row(r.k, ib, j, g, r.rk.data() + (row * hkv + g) * c.d);
          copy_row(r.v, ib, j, g, r.rv.data() + (row * hkv + g) * c.dv);
          if (int8) {
            copy_row8(r.k8, ib, j, g, r.rk8.data() + (row * hkv + g) * c.d, r.rks.data() + row * hkv + g);
            copy_row8(r.v8, ib, j, g, r.rv8.data() + (row * hkv + g) * c.dv, r.rvs.data() + row * hkv + g);
          }
        }
    }
    r.rqv = gqa::thd<const float>(r.rq.data(), tq, hq, c.d);
    r.rkv = gqa::thd<const float>(r.rk.data(), tk, hkv, c.d);
    r.rvv = gqa::thd<const float>(r.rv.data(), tk, hkv, c.dv);
    r.seqs = {r.cu_q, r.cu_k};
    if (int8) {
      r.rk8v = {gqa::thd<const std::int8_t>(r.rk8.data(), tk, hkv, c.d), gqa::thd<const float>(r.rks.data(), tk, hkv, 1)};
      r.rv8v = {gqa::thd<const std::int8_t>(r.rv8.data(), tk, hkv, c.dv), gqa::thd<const float>(r.rvs.data(), tk, hkv, 1)};
    }
  }
}

/// The float buffers of r: qb, kb, vb (dense), pk, pv (paged), rq, rk, rv (ragged).
inline std::array<const std::vector<float>*, 8> float_buffers(const case_data& r) {
  return {&r.qb.mem, &r.kb.mem, &r.vb.mem, &r.pk, &r.pv, &r.rq, &r.rk, &r.rv};
}
/// Which of them holds the views q, k and v the call takes: the packed rows on a ragged batch, qb for all
/// three when fused.
inline int q_buffer(const case_spec& c) { return c.kv_kind == 2 ? 5 : 0; }
inline int k_buffer(const case_spec& c) { return c.kv_kind == 2 ? 6 : c.fused ? 0 : 1; }
inline int v_buffer(const case_spec& c) { return c.kv_kind == 2 ? 7 : c.fused ? 0 : 2; }
/// Which of them holds the dense views k and v, whatever the form.
inline int dense_k_buffer(const case_spec& c) { return c.fused ? 0 : 1; }
inline int dense_v_buffer(const case_spec& c) { return c.fused ? 0 : 2; }

/// View v of a float buffer from `base`, moved to the buffer of another type from `mbase` (same layout).
template <class T, class F>
gqa::tensor_view<T> mirror_view(const gqa::tensor_view<F>& v, const float* base, T* mbase) {
  return {mbase + (v.data - base), v.b, v.s, v.h, v.d, v.stride_b, v.stride_s, v.stride_h, v.stride_d};
}

/// Every element of the view rounded to T and widened back, in place.
template <class T>
void round_view(const gqa::tensor_view<float>& t) {
  for_each_element(t, [](float& x) { x = gqa::to_float(T(x)); });
}

/// x written in T, element by element, into m.
template <class T>
void write_as(const std::vector<float>& x, std::vector<T>& m) {
  m.resize(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) m[i] = T(x[i]);
}

/// Case c's inputs in its 16-bit type T (Note [sweep element types]): the values the call reads (K and V,
/// and Q when qo16) rounded in the float buffers, then every float buffer written in T into its mirror.
template <class T>
void make_half(const case_spec& c, case_data& r, const gqa::tensor_view<float>& q, const gqa::tensor_view<float>& k,
               const gqa::tensor_view<float>& v, half_mirrors<T>& m) {
  round_view<T>(k);
  round_view<T>(v);
  if (c.qo16) round_view<T>(q);
  for (auto* f : {&r.pk, &r.pv, &r.rk, &r.rv}) round_view<T>(gqa::bshd(f->data(), 1, 1, 1, static_cast<index_t>(f->size())));
  if (c.qo16 && !r.rq.empty()) round_view<T>(gqa::bshd(r.rq.data(), 1, 1, 1, static_cast<index_t>(r.rq.size())));
  const auto f = float_buffers(r);
  for (std::size_t i = 0; i < f.size(); ++i) write_as(*f[i], m.buf[i]);
  if (c.kv_kind == 1) {
    m.paged = {gqa::page_pool<const T>(m.buf[3].data(), r.paged.k.b, r.paged.k.s, r.paged.k.h, r.paged.k.d),
               gqa::page_pool<const T>(m.buf[4].data(), r.paged.v.b, r.paged.v.s, r.paged.v.h, r.paged.v.d),
               r.paged.page_table, r.paged.max_pages, r.paged.lengths};
  }
}

/// Case c's int8 K and V (Note [sweep element types]): each row of the dense k and v views quantised by
/// gqa::quantize_q8 into a mirror of its buffer and a dense scale buffer (r.k8, r.v8), then dequantised
/// back into the view; and each row of q whose elements are all finite quantised and dequantised the same
/// way, in place, so that the reference sees the Q that options.int8_products multiplies (and the same Q
/// without them). Before build_kv_form, which takes the paged or ragged int8 rows from r.k8 and r.v8 (and
/// the float ones, and the packed Q, from the views as this leaves them).
inline void make_int8(const case_spec& c, case_data& r, const gqa::tensor_view<float>& q, const gqa::tensor_view<float>& k,
                      const gqa::tensor_view<float>& v) {
  std::vector<float> row(static_cast<std::size_t>(q.d));
  std::vector<std::int8_t> row8(row.size());
  float row_scale = 0.0f;
  for (index_t ib = 0; ib < q.b; ++ib)
    for (index_t is = 0; is < q.s; ++is)
      for (index_t ih = 0; ih < q.h; ++ih) {
        for (index_t x = 0; x < q.d; ++x) row[static_cast<std::size_t>(x)] = q(ib, is, ih, x);
        if (!std::all_of(row.begin(), row.end(), [](float y) { return std::isfinite(y); })) continue;
        const auto one = [&](auto* p) { return gqa::bshd(p, 1, 1, 1, q.d); };
        gqa::quantize_q8(one(static_cast<const float*>(row.data())), one(row8.data()), gqa::bshd(&row_scale, 1, 1, 1, 1));
        gqa::dequantize_q8({one(static_cast<const std::int8_t*>(row8.data())), gqa::bshd<const float>(&row_scale, 1, 1, 1, 1)},
                           one(row.data()));
        for (index_t x = 0; x < q.d; ++x) q(ib, is, ih, x) = row[static_cast<std::size_t>(x)];
      }
  const std::vector<float>& kf = *float_buffers(r)[static_cast<std::size_t>(dense_k_buffer(c))];
  const std::vector<float>& vf = *float_buffers(r)[static_cast<std::size_t>(dense_v_buffer(c))];
  r.i8_kb.assign(kf.size(), 0);
  r.i8_vb.assign(vf.size(), 0);
  r.k_scales.assign(static_cast<std::size_t>(k.b * k.s * k.h), 0.0f);
  r.v_scales.assign(static_cast<std::size_t>(v.b * v.s * v.h), 0.0f);
  const auto k8 = mirror_view(k, kf.data(), r.i8_kb.data()), v8 = mirror_view(v, vf.data(), r.i8_vb.data());
  const auto ks = gqa::bshd(r.k_scales.data(), k.b, k.s, k.h, 1), vs = gqa::bshd(r.v_scales.data(), v.b, v.s, v.h, 1);
  gqa::quantize_q8(k, k8, ks);
  gqa::quantize_q8(v, v8, vs);
  gqa::dequantize_q8({k8, ks}, k);
  gqa::dequantize_q8({v8, vs}, v);
  r.k8 = {k8, ks};
  r.v8 = {v8, vs};
}

}  // namespace detail

inline void fill_uniform(const gqa::tensor_view<float>& t, std::uint64_t seed, float amp) {
  std::uint64_t i = 0;
  for_each_element(t, [&](float& x) {
    x = amp * (2.0f * gqa::random::to_unit_float(gqa::random::hash(seed, {i++})) - 1.0f);
  });
}

inline case_data build_inputs(const case_spec& c) {
  case_data r;
  const index_t hq = c.heads.hq, hkv = c.heads.kv_in;
  gqa::tensor_view<float> q, k, v;
  if (c.fused) {
    r.qb = make_buffer(c.lq, c.b, c.sq, hq + 2 * hkv, c.d);
    q = heads_of(r.qb.view, 0, hq);
    k = heads_of(r.qb.view, hq, hkv);
    v = heads_of(r.qb.view, hq + hkv, hkv);
  } else {
    r.qb = make_buffer(c.lq, c.b, c.sq, hq, c.d);
    r.kb = make_buffer(c.lk, c.b, c.skv, hkv, c.d);
    r.vb = make_buffer(c.lv, c.b, c.skv, hkv, c.dv);
    q = r.qb.view;
    k = r.kb.view;
    v = r.vb.view;
  }
  for (buffer* b : {&r.qb, &r.kb, &r.vb}) std::fill(b->mem.begin(), b->mem.end(), k_nan);
  fill_uniform(q, c.data_seed, 1.0f);
  fill_uniform(k, c.data_seed + 1, 1.0f);
  fill_uniform(v, c.data_seed + 2, c.v_amp);
  // Overflow pairs: zero their column of Q and K in their batch first (Note [sweep case]).
  for (const auto& in : c.injections)
    if (std::fabs(in.value) == k_huge && in.tensor == 'k') {
      for (index_t is = 0; is < c.sq; ++is)
        for (index_t ih = 0; ih < hq; ++ih) q(in.ib, is, ih, in.x) = 0.0f;
      for (index_t is = 0; is < c.skv; ++is)
        for (index_t ih = 0; ih < hkv; ++ih) k(in.ib, is, ih, in.x) = 0.0f;
    }
  for (const auto& in : c.injections) {
    const auto& t = in.tensor == 'q' ? q : in.tensor == 'k' ? k : v;
    t(in.ib, in.is, in.ih, in.x) = in.value;
  }
  if (c.kv == kv_type::i8) detail::make_int8(c, r, q, k, v);  // before the paged or ragged form takes the rows
  r.q = q;
  r.k = k;
  r.v = v;
  if (c.variant < 0) r.map = gqa::head_map(c.kv_of_q, c.heads.hkv);
  detail::build_kv_form(c, r);
  if (c.kv == kv_type::bf16) detail::make_half(c, r, q, k, v, r.bf16);
  if (c.kv == kv_type::f16) detail::make_half(c, r, q, k, v, r.f16);
  return r;
}

/// Whether options.check_finite must throw: a non-finite element among all of q and the keys
/// j < kv_lengths[b] of k and v.
inline bool reads_non_finite(const case_spec& c, const case_data& in) {
  bool bad = false;
  for_each_element(in.q, [&](const float& x) { bad = bad || !std::isfinite(x); });
  for (index_t ib = 0; ib < c.b; ++ib) {
    const index_t len = c.kv_lengths.empty() ? c.skv : c.kv_lengths[static_cast<std::size_t>(ib)];
    for (index_t j = 0; j < len; ++j)
      for (index_t g = 0; g < c.heads.kv_in; ++g) {
        for (index_t x = 0; x < c.d; ++x) bad = bad || !std::isfinite(in.k(ib, j, g, x));
        for (index_t x = 0; x < c.dv; ++x) bad = bad || !std::isfinite(in.v(ib, j, g, x));
      }
  }
  return bad;
}

/// The expected result of a case: reference::attention (double) and the naive fp32 yardstick on the K/V
/// and head map the call uses (after the variant's prepare and plan), through the variant's finish step;
/// and the rows whose float scores overflow (Note [sweep checks]).
struct expected {
  std::vector<double> o, lse;  // [b][sq][hq][dv], [b][hq][sq]
  std::vector<float> naive_o, naive_lse;
  std::vector<index_t> kv_of_q;
  std::vector<char> overflow_row;  // [b][hq][sq]: the row's float scores overflow to +inf or are all −inf
  double v_max = 1.0;              // max(1, |V| over finite prepared values, |O_ref| after finish)
  double pv_bound = 0.0;           // int8 decode's P·V in integers: Note [int8 P·V tolerance]
};

namespace detail {

template <class P>
void finish_fresh(const case_spec& c, std::vector<float>& o, const gqa::head_map& map) {
  if constexpr (gqa::policy_with_finish<P> || gqa::policy_with_finish_executor<P>) {
    gqa::with_policy<P>(c.layer, c.heads, [&](P& p) {
      gqa::detail::finish(p, gqa::bshd(o.data(), c.b, c.sq, map.hq(), c.dv), map, gqa::executor{});
    });
  }
}

/// The case's options that a forward and its backward share: scale, causal, kv_lengths, the window, the
/// softcap, sinks and ALiBi slopes (views into c).
inline gqa::attention_options options_of(const case_spec& c) {
  gqa::attention_options opt;
  opt.scale = c.scale;
  opt.causal = c.causal;
  opt.kv_lengths = c.kv_lengths;
  opt.window_left = c.window_left;
  opt.window_right = c.window_right;
  opt.softcap = c.softcap;
  opt.sinks = c.sinks;
  opt.alibi_slopes = c.alibi_slopes;
  return opt;
}

/// The case's scale: options.scale, or 1/√d_qk.
inline double scale_of(const case_spec& c) {
  return c.scale ? static_cast<double>(*c.scale) : 1.0 / std::sqrt(static_cast<double>(c.d));
}

/// The case's masks and score modifiers, for the reference and the naive code (views into c).
inline gqa::reference::modifiers modifiers_of(const case_spec& c) {
  gqa::reference::modifiers m;
  m.window_left = c.window_left;
  m.window_right = c.window_right;
  m.softcap = c.softcap;
  m.sinks = c.sinks;
  m.alibi_slopes = c.alibi_slopes;
  return m;
}

inline void fill_expected(expected& e, const case_spec& c, const gqa::tensor_view<const float>& q,
                          const gqa::tensor_view<const float>& k, const gqa::tensor_view<const float>& v,
                          std::span<const index_t> kv_of_q) {
  const double scale = scale_of(c);
  const auto mods = modifiers_of(c);
  const auto ref = gqa::reference::attention(q, k, v, kv_of_q, scale, c.causal, c.kv_lengths, mods);
  // bf16 Q/K/V/O with bf16_products: the yardstick's weights rounded to bf16 (Note [sweep element types]).
  const bool bf16_weights = c.kv == kv_type::bf16 && c.qo16 && c.bf16_products;
  const auto naive = gqa::test::naive_fp32(q, k, v, kv_of_q, static_cast<float>(scale), c.causal, c.kv_lengths, mods,
                                           bf16_weights);
  // int8 K/V with int8_products in a decode call (every KV head's rows, group × sq, at most 32): P·V in
  // integers, whose rounding of the weights is budgeted by Note [int8 P·V tolerance].
  if (c.kv == kv_type::i8 && c.bf16_products) {
    std::vector<index_t> group(static_cast<std::size_t>(k.h), 0);
    for (const index_t g : kv_of_q) ++group[static_cast<std::size_t>(g)];
    if (*std::max_element(group.begin(), group.end()) * c.sq <= 32)
      e.pv_bound = gqa::test::int8_pv_bound(q, k, v, kv_of_q, scale, c.causal, c.kv_lengths, mods);
  }
  e.o = ref.o;
  e.lse = ref.lse;
  e.naive_o = naive.o;
  e.naive_lse = naive.lse;
  e.kv_of_q.assign(kv_of_q.begin(), kv_of_q.end());
  for_each_element(v, [&](const float& x) {
    if (std::isfinite(x)) e.v_max = std::max(e.v_max, static_cast<double>(std::fabs(x)));
  });
  // Rows with an overflow-pair element in Q: their scores, in double, in the core's log2 units.
  const index_t hq = q.h;
  e.overflow_row.assign(static_cast<std::size_t>(c.b * hq * c.sq), 0);
  constexpr double flt_max = std::numeric_limits<float>::max();
  for (index_t ib = 0; ib < c.b; ++ib) {
    const index_t len = c.kv_lengths.empty() ? c.skv : c.kv_lengths[static_cast<std::size_t>(ib)];
    for (index_t h = 0; h < hq; ++h)
      for (index_t i = 0; i < c.sq; ++i) {
        bool huge = false;
        for (index_t x = 0; x < c.d; ++x) huge = huge || std::fabs(q(ib, i, h, x)) == k_huge;
        if (!huge) continue;
        // A softcap caps an overflowed score (finite: no overflow row); a sink keeps a row whose scores
        // are all -inf finite (zeros, LSE the sink).
        if (c.softcap > 0.0f) continue;
        const auto [lo, hi] = gqa::reference::visible_keys(i, c.sq, len, c.causal, mods);
        bool pos = false, all_neg = hi > lo && c.sinks.empty();
        for (index_t j = lo; j < hi; ++j) {
          double s = 0.0;
          for (index_t x = 0; x < c.d; ++x)
            s += static_cast<double>(q(ib, i, h, x)) * static_cast<double>(k(ib, j, kv_of_q[static_cast<std::size_t>(h)], x));
          s *= scale * 1.4426950408889634;
          pos = pos || s > flt_max;
          all_neg = all_neg && s < -flt_max;
        }
        e.overflow_row[static_cast<std::size_t>((ib * hq + h) * c.sq + i)] = pos || all_neg;
      }
  }
}

}  // namespace detail

inline expected expect_of(const case_spec& c, const case_data& in) {
  expected e;
  if (c.variant < 0) {
    detail::fill_expected(e, c, in.q, in.k, in.v, in.map.kv_of_q());
    return e;
  }
  int i = 0;
  gqa::for_each_variant([&](auto t) {
    using P = typename decltype(t)::type;
    if (i++ != c.variant) return;
    gqa::head_map map;
    gqa::with_policy<P>(c.layer, c.heads, [&](P& p) {
      gqa::kv_views kv{in.k, in.v};
      if constexpr (gqa::policy_with_prepare<P>) kv = p.prepare(in.k, in.v);
      if constexpr (gqa::policy_plans_from_keys<P>) {
        if (c.kv_kind != 0) {
          // A paged cache or ragged batch holds each sequence's valid keys only: the plan of the keys
          // zero-padded past each length (a zero key adds nothing to a norm, Note [key norm order]).
          std::vector<float> zero(static_cast<std::size_t>(c.b * c.skv * kv.k.h * c.d), 0.0f);
          for (index_t ib = 0; ib < c.b; ++ib)
            for (index_t j = 0; j < in.lengths[static_cast<std::size_t>(ib)]; ++j)
              for (index_t g = 0; g < kv.k.h; ++g) detail::copy_row(kv.k, ib, j, g, zero.data() + ((ib * c.skv + j) * kv.k.h + g) * c.d);
          map = p.plan(in.q, gqa::bshd<const float>(zero.data(), c.b, c.skv, kv.k.h, c.d));
          detail::fill_expected(e, c, in.q, kv.k, kv.v, map.kv_of_q());
          return;
        }
      }
      map = p.plan(in.q, kv.k);
      detail::fill_expected(e, c, in.q, kv.k, kv.v, map.kv_of_q());
    });
    if constexpr (gqa::policy_with_finish<P> || gqa::policy_with_finish_executor<P>) {
      // The finish step on the reference (rounded to float once) and on the naive output, as in
      // tests/suites/registry_suite.hpp. An overflow row is NaN in the core's output (Note [sweep
      // checks]) but finite in the double reference's: it is NaN in the reference's too before the finish
      // step, which may spread it (PGQA: the whole sample-and-head row of that query row is then NaN).
      const index_t hq = c.heads.hq;
      for (index_t ib = 0; ib < c.b; ++ib)
        for (index_t h = 0; h < hq; ++h)
          for (index_t i = 0; i < c.sq; ++i)
            if (e.overflow_row[static_cast<std::size_t>((ib * hq + h) * c.sq + i)])  // [b][hq][sq]
              std::fill_n(e.o.begin() + ((ib * c.sq + i) * hq + h) * c.dv, c.dv,  // [b][sq][hq][dv]
                          std::numeric_limits<double>::quiet_NaN());
      std::vector<float> ref_f(e.o.begin(), e.o.end());
      detail::finish_fresh<P>(c, ref_f, map);
      detail::finish_fresh<P>(c, e.naive_o, map);
      e.o.assign(ref_f.begin(), ref_f.end());
      for (const double x : e.o)
        if (std::isfinite(x)) e.v_max = std::max(e.v_max, std::fabs(x));
    }
  });
  return e;
}

/// The caller's parallel loop of the sweep: tasks in reverse order, alternately on a second thread.
inline void reverse_two_threads(index_t n, const std::function<void(index_t)>& task) {
  std::thread t([&] {
    for (index_t i = n - 1 - 1; i >= 0; i -= 2) task(i);
  });
  for (index_t i = n - 1; i >= 0; i -= 2) task(i);
  t.join();
}

/// One run's output: the output buffer (view and sentinels) and the LSE.
struct result {
  buffer o;
  std::vector<float> lse;
  std::string error;  // what() of a gqa::invalid_argument, if the call threw one
};

namespace detail {

/// View t of call k, held by float buffer i of `in`, moved to buffer i of `to` (the same layout).
template <class T>
gqa::tensor_view<const T> moved_view(const gqa::tensor_view<const float>& t, const case_data& in, int i,
                                     const std::vector<T>& to) {
  return mirror_view(t, float_buffers(in)[static_cast<std::size_t>(i)]->data(), to.data());
}

/// The 16-bit views of call k (its float views moved to the mirrors m) and the 16-bit pages.
template <class T>
half_views<T> half_of(const case_spec& c, const case_data& in, const call& k, const half_mirrors<T>& m) {
  half_views<T> h;
  h.q = moved_view(k.q, in, q_buffer(c), m.buf[static_cast<std::size_t>(q_buffer(c))]);
  h.k = moved_view(k.k, in, k_buffer(c), m.buf[static_cast<std::size_t>(k_buffer(c))]);
  h.v = moved_view(k.v, in, v_buffer(c), m.buf[static_cast<std::size_t>(v_buffer(c))]);
  h.paged = c.kv_kind == 1 ? &m.paged : nullptr;
  return h;
}

/// A 16-bit output buffer om mirroring the float one, every element the rounded sentinel, and the view of
/// call view o in it.
template <class T>
gqa::tensor_view<T> half_output(const buffer& b, const gqa::tensor_view<float>& o, std::vector<T>& om) {
  om.assign(b.mem.size(), T(k_sentinel));
  return mirror_view(o, b.mem.data(), om.data());
}

/// The 16-bit output om widened into the float buffer, the rounded sentinel back to k_sentinel.
template <class T>
void widen_output(const std::vector<T>& om, buffer& b) {
  const T sentinel(k_sentinel);
  for (std::size_t i = 0; i < om.size(); ++i) b.mem[i] = om[i].bits == sentinel.bits ? k_sentinel : gqa::to_float(om[i]);
}

}  // namespace detail

/// The call of case c on its inputs, writing to o (no LSE, one thread).
inline call call_of(const case_spec& c, const case_data& in, const gqa::tensor_view<float>& o) {
  call k;
  k.variant = c.variant;
  k.layer = c.layer;
  k.heads = c.heads;
  k.map = &in.map;
  k.q = in.q;
  k.k = in.k;
  k.v = in.v;
  k.o = o;
  k.opt = detail::options_of(c);
  k.opt.check_finite = c.check_finite;
  if (c.kv_kind == 1) {
    k.paged = &in.paged;
    k.opt.kv_lengths = {};
  } else if (c.kv_kind == 2) {
    k.seqs = &in.seqs;
    k.opt.kv_lengths = {};
    k.q = in.rqv;
    k.k = in.rkv;
    k.v = in.rvv;
    k.o = {o.data, 1, c.b * c.sq, o.h, o.d, 0, o.stride_s, o.stride_h};  // o is BSHD without padding
  }
  // The views of the call's element types (Note [sweep element types]); run_on sets a 16-bit O.
  k.kv = c.kv;
  k.qo16 = c.qo16;
  if (c.kv == kv_type::bf16) k.bf16 = detail::half_of(c, in, k, in.bf16);
  if (c.kv == kv_type::f16) k.f16 = detail::half_of(c, in, k, in.f16);
  if (c.kv == kv_type::i8) {  // the dense int8 views, the packed rows, or the int8 pages
    k.k8 = c.kv_kind == 2 ? in.rk8v : in.k8;
    k.v8 = c.kv_kind == 2 ? in.rv8v : in.v8;
    if (c.kv_kind == 1) k.paged8 = &in.paged8;
  }
  return k;
}

/// Case c's call on `isa` with `threads` (0: one thread, 1: two, 2: the caller's loop), `adjust` applied to
/// the call first if given.
inline result run_on(const runner& isa, const case_spec& c, const case_data& in, int threads,
                     const std::function<void(call&)>& adjust = {}) {
  result r;
  r.o = make_buffer(c.lo, c.b, c.sq, c.heads.hq, c.dv);
  call k = call_of(c, in, r.o.view);
  if (adjust) adjust(k);
  std::vector<float> ragged_lse;  // [hq][total_q]
  if (c.lse) {
    r.lse.assign(static_cast<std::size_t>(c.b * c.heads.hq * c.sq), k_sentinel);
    k.opt.lse = r.lse;
    if (c.kv_kind == 2) {
      ragged_lse = r.lse;
      k.opt.lse = ragged_lse;
    }
  }
  if (threads == 1) k.opt.num_threads = 2;
  if (threads == 2) k.opt.parallel_for = reverse_two_threads;
  k.opt.bf16_products = c.bf16_products;
  k.opt.int8_products = c.bf16_products;  // with int8 K/V the same draw (Note [sweep element types])
  std::vector<gqa::bf16> o_bf16;
  std::vector<gqa::f16> o_f16;
  if (c.qo16 && c.kv == kv_type::bf16) k.bf16.o = detail::half_output(r.o, k.o, o_bf16);
  if (c.qo16 && c.kv == kv_type::f16) k.f16.o = detail::half_output(r.o, k.o, o_f16);
  try {
    isa.run(k);
  } catch (const gqa::invalid_argument& e) {
    r.error = e.what();
  }
  if (!o_bf16.empty()) detail::widen_output(o_bf16, r.o);
  if (!o_f16.empty()) detail::widen_output(o_f16, r.o);
  if (!ragged_lse.empty())  // [hq][b·sq] to [b][hq][sq]
    for (index_t ib = 0; ib < c.b; ++ib)
      for (index_t h = 0; h < c.heads.hq; ++h)
        for (index_t i = 0; i < c.sq; ++i)
          r.lse[static_cast<std::size_t>((ib * c.heads.hq + h) * c.sq + i)] =
              ragged_lse[static_cast<std::size_t>(h * c.b * c.sq + ib * c.sq + i)];
  return r;
}

/// Bitwise equal, or both NaN.
inline bool same(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, sizeof a) == 0;
}

inline bool is_plus_zero(float x) { return x == 0.0f && !std::signbit(x); }

// Note [sweep checks]
// Every output element and LSE entry against the reference, by class:
//  * a row that sees no key: +0 everywhere (unless a finish step moved it: PGQA's noise), LSE −inf;
//  * an overflow row (an overflow pair's score over FLT_MAX in log2 units, or all its scores below
//    −FLT_MAX): NaN everywhere, LSE NaN (Note [non-finite inputs]; double does not overflow there);
//  * a reference NaN: NaN; a reference ±inf: the same infinity;
//  * a finite reference value: a finite output within Note [attention tolerance]: 2 · max|O_naive − O_ref|
//    + 1e-6 · max(1, max|V|), the maxima over the case's finite elements (outside overflow rows); the LSE
//    likewise with max(1, max|LSE_ref|). (The naive code forms q · k before the scale, so a pair's 1e40
//    may be inf for it and finite for the core, which scales q first: the floor then still holds.)
// and, around them: output elements outside the view unchanged; with check_finite, a gqa::invalid_argument
// exactly when an element read is not finite; otherwise no exception; and every thread configuration gives
// the bits of one thread. The first failure is returned as one line.

namespace detail {

/// Half a unit in the last place of |x| in the case's output type: 0 for a float O (Note [sweep element
/// types]).
inline double half_ulp(const case_spec& c, double x) {
  if (!c.qo16 || x == 0.0) return 0.0;
  if (c.kv == kv_type::bf16) return std::ldexp(1.0, std::ilogb(x) - 8);        // 8 significant bits
  return x < 0x1p-14 ? 0x1p-25 : std::ldexp(1.0, std::ilogb(x) - 11);            // f16: 11, subnormals below 2^-14
}

/// a's output element as a 16-bit O of the case holds it: rounded to its type (the sentinel as it is).
inline float as_output(const case_spec& c, float a) {
  if (!c.qo16 || a == k_sentinel) return a;
  return c.kv == kv_type::bf16 ? gqa::to_float(gqa::bf16(a)) : gqa::to_float(gqa::f16(a));
}

}  // namespace detail

/// Checks one run against the expected result; empty when it passes.
inline std::string check(const case_spec& c, const case_data& in, const expected& e, const result& r) {
  std::ostringstream err;
  if (c.check_finite && reads_non_finite(c, in)) {
    if (r.error.empty() || r.error.find("check_finite") == std::string::npos)
      return "check_finite: a non-finite input is read, but the call " +
             (r.error.empty() ? std::string("did not throw") : "threw: " + r.error);
    return {};
  }
  if (!r.error.empty()) return "unexpected gqa::invalid_argument: " + r.error;
  const index_t hq = c.heads.hq;
  const auto oidx = [&](index_t ib, index_t i, index_t h, index_t x) {
    return static_cast<std::size_t>(((ib * c.sq + i) * hq + h) * c.dv + x);
  };
  const auto lidx = [&](index_t ib, index_t h, index_t i) { return static_cast<std::size_t>((ib * hq + h) * c.sq + i); };
  // Tolerances (Note [attention tolerance]).
  double o_err = 0.0, l_err = 0.0, l_max = 1.0;
  for (index_t ib = 0; ib < c.b; ++ib)
    for (index_t h = 0; h < hq; ++h)
      for (index_t i = 0; i < c.sq; ++i) {
        if (e.overflow_row[lidx(ib, h, i)]) continue;
        const double lr = e.lse[lidx(ib, h, i)], ln = e.naive_lse[lidx(ib, h, i)];
        if (std::isfinite(lr)) l_max = std::max(l_max, std::fabs(lr));
        if (std::isfinite(lr) && std::isfinite(ln)) l_err = std::max(l_err, std::fabs(ln - lr));
        for (index_t x = 0; x < c.dv; ++x) {
          const double orf = e.o[oidx(ib, i, h, x)], on = e.naive_o[oidx(ib, i, h, x)];
          if (std::isfinite(orf) && std::isfinite(on)) o_err = std::max(o_err, std::fabs(on - orf));
        }
      }
  const double o_tol = gqa::test::k_error_factor * o_err + gqa::test::k_error_floor * e.v_max + e.pv_bound;
  const double l_tol = gqa::test::k_error_factor * l_err + gqa::test::k_error_floor * l_max;
  const auto o = r.o.view;
  for (index_t ib = 0; ib < c.b; ++ib)
    for (index_t h = 0; h < hq; ++h)
      for (index_t i = 0; i < c.sq; ++i) {
        const auto where = [&] {
          std::ostringstream w;
          w << "row (b " << ib << ", pos " << i << ", head " << h << " -> kv " << e.kv_of_q[static_cast<std::size_t>(h)] << ")";
          return w.str();
        };
        const double want_lse = e.lse[lidx(ib, h, i)];
        const bool masked = want_lse == -std::numeric_limits<double>::infinity();
        const bool overflow = e.overflow_row[lidx(ib, h, i)] != 0;
        if (c.lse) {
          const float got = r.lse[lidx(ib, h, i)];
          const bool ok = overflow || std::isnan(want_lse) ? std::isnan(got)
                          : masked                        ? got == -k_inf
                                                          : std::isfinite(got) && std::fabs(got - want_lse) <= l_tol;
          if (!ok) {
            err << where() << ": LSE " << got << ", reference " << want_lse
                << (overflow ? " (overflow row: NaN expected)" : "") << ", tolerance " << l_tol;
            return err.str();
          }
        }
        for (index_t x = 0; x < c.dv; ++x) {
          const double want = e.o[oidx(ib, i, h, x)];
          const float got = o(ib, i, h, x);
          bool ok;
          if (masked && want == 0.0) ok = is_plus_zero(got);  // (a finish step, PGQA's noise, may move it)
          else if (overflow || std::isnan(want)) ok = std::isnan(got);
          else if (std::isinf(want)) ok = got == static_cast<float>(want);
          else ok = std::isfinite(got) && std::fabs(got - want) <= o_tol + detail::half_ulp(c, std::max(std::fabs(want), std::fabs(static_cast<double>(got))));
          if (!ok) {
            err << where() << " O[" << x << "] = " << got << ", reference " << want
                << (masked && want == 0.0 ? " (fully masked row: +0 expected)" : overflow ? " (overflow row: NaN expected)" : "")
                << ", tolerance " << o_tol;
            return err.str();
          }
        }
      }
  // Nothing written outside the output view.
  std::vector<char> in_view(r.o.mem.size(), 0);
  for_each_element(o, [&](float& x) { in_view[static_cast<std::size_t>(&x - r.o.mem.data())] = 1; });
  for (std::size_t i = 0; i < r.o.mem.size(); ++i)
    if (!in_view[i] && !same(r.o.mem[i], k_sentinel)) {
      err << "output buffer element " << i << " outside the view was written: " << r.o.mem[i];
      return err.str();
    }
  return {};
}

/// Whether case c's call must give the dense int8 call's bits (Note [sweep element types]): gqa::attend on
/// int8 K/V in a ragged batch, or in a paged cache with int8_products off or a page size that is a multiple
/// of 64 (every 64-key unit of the int8 P·V then lies in one page: Note [int8 decode P·V]).
inline bool bits_of_dense_int8(const case_spec& c) {
  return c.kv == kv_type::i8 && c.variant < 0 &&
         (c.kv_kind == 2 || (c.kv_kind == 1 && (!c.bf16_products || c.page % 64 == 0)));
}

/// The dense int8 call on the keys of paged or ragged case c: gqa::attend on its dense int8 views (those the
/// paged or packed int8 rows were copied from) cut to the longest sequence, options.kv_lengths the
/// sequences' lengths; nullopt when every sequence is empty (no view to cut).
inline std::optional<result> run_dense_int8(const runner& isa, const case_spec& c, const case_data& in, int threads) {
  const index_t longest = *std::max_element(in.lengths.begin(), in.lengths.end());
  if (longest == 0) return std::nullopt;
  case_spec dc = c;
  dc.kv_kind = 0;
  dc.kv_lengths = in.lengths;
  return run_on(isa, dc, in, threads, [&](call& k) {
    k.k.s = k.v.s = k.k8.values.s = k.k8.scales.s = k.v8.values.s = k.v8.scales.s = longest;
  });
}

/// A paged or ragged int8 run r against the dense int8 call d on the same keys (run_dense_int8): the same
/// output buffer and LSE, bit for bit; empty when equal. (A run that threw was checked by check().)
inline std::string check_dense_int8_bits(const result& d, const result& r) {
  std::ostringstream err;
  err << std::setprecision(9);
  if (!r.error.empty()) return {};
  if (!d.error.empty()) return "the dense int8 call on the same keys threw '" + d.error + "', the call did not";
  for (std::size_t i = 0; i < r.o.mem.size(); ++i)
    if (!same(r.o.mem[i], d.o.mem[i])) {
      err << "output buffer element " << i << " = " << r.o.mem[i] << ", the dense int8 call on the same keys gives "
          << d.o.mem[i];
      return err.str();
    }
  for (std::size_t i = 0; i < r.lse.size(); ++i)
    if (!same(r.lse[i], d.lse[i])) {
      err << "LSE " << i << " = " << r.lse[i] << ", the dense int8 call on the same keys gives " << d.lse[i];
      return err.str();
    }
  return {};
}

/// Bitwise comparison of two runs (thread configurations); empty when equal.
inline std::string check_same_bits(const case_spec& c, const result& a, const result& b) {
  std::ostringstream err;
  for (std::size_t i = 0; i < a.o.mem.size(); ++i)
    if (!same(a.o.mem[i], b.o.mem[i])) {
      err << "threads " << (c.threads == 2 ? "caller" : std::to_string(c.threads + 1))
          << " differ from 1 thread at output buffer element " << i << ": " << b.o.mem[i] << " vs " << a.o.mem[i];
      return err.str();
    }
  for (std::size_t i = 0; i < a.lse.size(); ++i)
    if (!same(a.lse[i], b.lse[i])) {
      err << "threads differ from 1 thread at LSE " << i << ": " << b.lse[i] << " vs " << a.lse[i];
      return err.str();
    }
  if (a.error != b.error) return "threads change the exception: '" + b.error + "' vs '" + a.error + "'";
  return {};
}

/// A 16-bit case's run r against the fp32 call f on the widened views: the same bits, a 16-bit O the fp32
/// call's rounded once (Note [sweep element types]); empty when equal.
inline std::string check_widened_bits(const case_spec& c, const result& f, const result& r) {
  std::ostringstream err;
  err << std::setprecision(9);
  if (f.error != r.error) return "the fp32 call on the widened inputs threw '" + f.error + "', the call '" + r.error + "'";
  for (std::size_t i = 0; i < r.o.mem.size(); ++i)
    if (!same(r.o.mem[i], detail::as_output(c, f.o.mem[i]))) {
      err << "output buffer element " << i << " = " << r.o.mem[i] << ", the fp32 call on the widened inputs gives "
          << f.o.mem[i] << (c.qo16 ? " (before rounding)" : "");
      return err.str();
    }
  for (std::size_t i = 0; i < r.lse.size(); ++i)
    if (!same(r.lse[i], f.lse[i])) {
      err << "LSE " << i << " = " << r.lse[i] << ", the fp32 call on the widened inputs gives " << f.lse[i];
      return err.str();
    }
  return {};
}

// Note [sweep backward]
// About 40% of the cases that call gqa::attend on dense views or a ragged batch with finite inputs (no
// injections, no check_finite), float or with Q, K, V and O all bf16 or all f16 (about 9% of all cases,
// 1% with 16-bit inputs), also run gqa::attend_backward on every
// ISA (the ragged batch's overload on the packed rows, its dK/dV scattered back into the dense layout with
// +0 past each sequence's keys), from that ISA's forward
// O and LSE and a dout drawn uniform in [-1, 1] (laid out as o; rounded to the type with 16-bit inputs,
// whose backward takes q, k, v, o and dout in it and returns float gradients), with the case's options
// (masks, softcap, sinks with options.dsinks, ALiBi, bf16_products), head map and executor, and gradients
// laid out as q, k and v. Each
// element of dq, dk, dv and dsinks is checked against reference::attention_backward (double, from q, k, v
// and dout alone, the values the call holds) within Note [backward tolerance] (tests/support/tolerance.hpp:
// twice the naive fp32 backward's error on the same O and LSE, plus the floors; bf16 inputs with
// bf16_products: Note [bf16 backward tolerance], the naive backward without and with P and scale·dS rounded
// to bf16, which bounds both products and their mix: the ISAs and CPUs that keep fp32 products too); 16-bit inputs otherwise must also give the bits of
// the float backward on the widened inputs (the API's promise). Every gradient must be finite, an element
// nothing reaches (a row that sees no key, a key no row sees, a KV head that serves no query head: its
// reference terms are 0) exactly +0, nothing may be written outside the gradients' views, and every
// executor must give the bits of one thread. The unit suites (tests/suites/backward_suite.hpp) hold the
// backward's non-finite inputs and large-magnitude scores.

/// The expected gradients of a backward case: dout and reference::attention_backward.
struct backward_expected {
  buffer dout;
  gqa::reference::attention_grads ref;
};

namespace detail {

/// A view's elements in logical order, in double, and a BSHD view over them.
struct double_copy {
  std::vector<double> x;
  gqa::tensor_view<const double> view;
  explicit double_copy(const gqa::tensor_view<const float>& t) {
    for_each_element(t, [&](const float& e) { x.push_back(e); });
    view = gqa::bshd<const double>(x.data(), t.b, t.s, t.h, t.d);
  }
};

}  // namespace detail

/// Whether the backward of case c takes 16-bit inputs (q, k, v, o and dout in K/V's type).
inline bool half_backward(const case_spec& c) {
  return c.backward && c.qo16 && (c.kv == kv_type::bf16 || c.kv == kv_type::f16);
}

inline backward_expected backward_expect_of(const case_spec& c, const case_data& in) {
  backward_expected e;
  e.dout = make_buffer(c.lo, c.b, c.sq, c.heads.hq, c.dv);
  fill_uniform(e.dout.view, c.data_seed + 3, 1.0f);
  if (half_backward(c) && c.kv == kv_type::bf16) detail::round_view<gqa::bf16>(e.dout.view);
  if (half_backward(c) && c.kv == kv_type::f16) detail::round_view<gqa::f16>(e.dout.view);
  const detail::double_copy q(in.q), k(in.k), v(in.v), dout(e.dout.view);
  e.ref = gqa::reference::attention_backward(q.view, k.view, v.view, dout.view, in.map.kv_of_q(), detail::scale_of(c),
                                             c.causal, c.kv_lengths, detail::modifiers_of(c));
  return e;
}

/// The gradients of one backward run and what it threw.
struct backward_result {
  buffer dq, dk, dv;
  std::vector<float> dsinks;
  std::string error;
};

/// The backward of case c on `isa` with `threads` (as run_on), from the forward's result fwd; with 16-bit
/// inputs (half_backward) on them, or with `widened` on their float values.
inline backward_result run_backward_on(const runner& isa, const case_spec& c, const case_data& in, const result& fwd,
                                       const backward_expected& e, int threads, bool widened = false) {
  backward_result g;
  g.dq = make_buffer(c.lq, c.b, c.sq, c.heads.hq, c.d);
  g.dk = make_buffer(c.lk, c.b, c.skv, c.heads.kv_in, c.d);
  g.dv = make_buffer(c.lv, c.b, c.skv, c.heads.kv_in, c.dv);
  g.dsinks.assign(c.sinks.size(), k_sentinel);
  backward_call k;
  k.q = in.q;
  k.k = in.k;
  k.v = in.v;
  k.o = fwd.o.view;
  k.dout = e.dout.view;
  k.lse = fwd.lse;
  k.dq = g.dq.view;
  k.dk = g.dk.view;
  k.dv = g.dv.view;
  k.map = &in.map;
  k.opt = detail::options_of(c);
  k.opt.dsinks = g.dsinks;
  k.opt.bf16_products = c.bf16_products;
  if (threads == 1) k.opt.num_threads = 2;
  if (threads == 2) k.opt.parallel_for = reverse_two_threads;
  // A ragged batch: the packed rows (q, o, dout and dq BSHD without padding are the packed query rows), the
  // LSE in its [hq][total_q] layout, dK/dV packed and then scattered into the dense layout of g.dk, g.dv,
  // whose rows past a sequence's keys get +0 (what the reference gives them).
  const index_t hq = c.heads.hq, hkv = c.heads.kv_in, tq = c.b * c.sq;
  const index_t tk = c.kv_kind == 2 ? in.cu_k.back() : 0;
  std::vector<float> lse_r, pdk, pdv;
  if (c.kv_kind == 2) {
    g.dq = make_buffer(layout{}, c.b, c.sq, hq, c.d);
    const auto packed = [&](const auto& t) {
      return std::remove_cvref_t<decltype(t)>{t.data, 1, tq, t.h, t.d, 0, t.stride_s, t.stride_h, t.stride_d};
    };
    k.q = in.rqv;
    k.k = in.rkv;
    k.v = in.rvv;
    k.o = packed(k.o);
    k.dout = packed(k.dout);
    k.dq = packed(g.dq.view);
    pdk.assign(static_cast<std::size_t>(tk * hkv * c.d), k_sentinel);
    pdv.assign(static_cast<std::size_t>(tk * hkv * c.dv), k_sentinel);
    k.dk = gqa::thd(pdk.data(), tk, hkv, c.d);
    k.dv = gqa::thd(pdv.data(), tk, hkv, c.dv);
    lse_r.resize(fwd.lse.size());
    for (index_t ib = 0; ib < c.b; ++ib)  // [b][hq][sq] to [hq][b·sq]
      for (index_t h = 0; h < hq; ++h)
        for (index_t i = 0; i < c.sq; ++i)
          lse_r[static_cast<std::size_t>(h * tq + ib * c.sq + i)] = fwd.lse[static_cast<std::size_t>((ib * hq + h) * c.sq + i)];
    k.lse = lse_r;
    k.opt.kv_lengths = {};
    k.seqs = &in.seqs;
  }
  // 16-bit inputs: q, k and v the case's mirrors, o and dout written in the type (their values already are).
  std::vector<gqa::bf16> o_bf16, dout_bf16;
  std::vector<gqa::f16> o_f16, dout_f16;
  const auto cdata = [](const auto& x) { return x.data(); };  // a pointer to const elements
  const auto half = [&](const auto& m, auto& om, auto& dm, auto& h) {
    call views;
    views.q = k.q;
    views.k = k.k;
    views.v = k.v;
    const auto qkv = detail::half_of(c, in, views, m);
    detail::write_as(fwd.o.mem, om);
    detail::write_as(e.dout.mem, dm);
    h = {qkv.q, qkv.k, qkv.v, detail::mirror_view(k.o, fwd.o.mem.data(), cdata(om)),
         detail::mirror_view(k.dout, e.dout.mem.data(), cdata(dm))};
  };
  if (half_backward(c) && !widened) {
    k.kv = c.kv;
    if (c.kv == kv_type::bf16) half(in.bf16, o_bf16, dout_bf16, k.bf16);
    if (c.kv == kv_type::f16) half(in.f16, o_f16, dout_f16, k.f16);
  }
  try {
    isa.backward(k);
  } catch (const gqa::invalid_argument& x) {
    g.error = x.what();
  }
  if (c.kv_kind == 2 && g.error.empty())
    for (index_t ib = 0; ib < c.b; ++ib)
      for (index_t j = 0; j < c.skv; ++j)
        for (index_t h = 0; h < hkv; ++h) {
          const index_t len = in.cu_k[static_cast<std::size_t>(ib) + 1] - in.cu_k[static_cast<std::size_t>(ib)];
          const index_t row = in.cu_k[static_cast<std::size_t>(ib)] + j;
          for (index_t x = 0; x < c.d; ++x) g.dk.view.row(ib, j, h)[x] = j < len ? k.dk.row(0, row, h)[x] : 0.0f;
          for (index_t x = 0; x < c.dv; ++x) g.dv.view.row(ib, j, h)[x] = j < len ? k.dv.row(0, row, h)[x] : 0.0f;
        }
  return g;
}

/// Checks one backward run against the reference (Note [sweep backward]); empty when it passes.
inline std::string check_backward(const case_spec& c, const case_data& in, const result& fwd, const backward_expected& e,
                                  const backward_result& g) {
  std::ostringstream err;
  if (!g.error.empty()) return "unexpected gqa::invalid_argument: " + g.error;
  // bf16 inputs with the bf16 products: the naive backward also with P and scale·dS rounded to bf16, and a
  // bound for either computation and their mix (Note [bf16 backward tolerance]).
  const bool bf16_weights = half_backward(c) && c.kv == kv_type::bf16 && c.bf16_products;
  const auto naive_of = [&](bool weights) {
    return gqa::test::naive_fp32_backward(in.q, in.k, in.v, fwd.o.view, e.dout.view, fwd.lse, in.map.kv_of_q(),
                                          static_cast<float>(detail::scale_of(c)), c.causal, c.kv_lengths,
                                          detail::modifiers_of(c), weights);
  };
  const auto naive = naive_of(false);
  const auto naive16 = bf16_weights ? naive_of(true) : gqa::test::naive_gradients{};
  const auto tolerance = [&](const std::vector<float>& nv, const std::vector<float>& nv16,
                             const std::vector<double>& ref) {
    return bf16_weights ? gqa::test::gradient_tolerance(nv, nv16, ref) : gqa::test::gradient_tolerance(nv, ref);
  };
  const auto compare = [&](const char* name, const buffer& got, const std::vector<double>& ref,
                           const std::vector<double>& terms, const std::vector<float>& nv, const std::vector<float>& nv16) {
    const double tol = tolerance(nv, nv16, ref);
    std::size_t i = 0;
    bool bad = false;
    for_each_element(got.view, [&](float& x) {
      if (bad) return;
      const double bound = tol + gqa::test::cancellation_floor(terms[i]);
      if (!std::isfinite(x) || (terms[i] == 0.0 && !is_plus_zero(x)) || std::fabs(x - ref[i]) > bound) {
        err << name << "[" << i << "] (logical order) = " << x << ", reference " << ref[i] << ", naive fp32 " << nv[i]
            << ", bound " << bound << (terms[i] == 0.0 ? " (nothing reaches it: +0 expected)" : "");
        bad = true;
      }
      ++i;
    });
    if (bad) return false;
    std::vector<char> in_view(got.mem.size(), 0);
    for_each_element(got.view, [&](float& x) { in_view[static_cast<std::size_t>(&x - got.mem.data())] = 1; });
    for (std::size_t j = 0; j < got.mem.size(); ++j)
      if (!in_view[j] && !same(got.mem[j], k_sentinel)) {
        err << name << " buffer element " << j << " outside the view was written: " << got.mem[j];
        return false;
      }
    return true;
  };
  if (!compare("dq", g.dq, e.ref.dq, e.ref.dq_terms, naive.dq, naive16.dq) ||
      !compare("dk", g.dk, e.ref.dk, e.ref.dk_terms, naive.dk, naive16.dk) ||
      !compare("dv", g.dv, e.ref.dv, e.ref.dv_terms, naive.dv, naive16.dv))
    return err.str();
  const double tol = tolerance(naive.dsinks, naive16.dsinks, e.ref.dsinks);
  for (std::size_t h = 0; h < g.dsinks.size(); ++h) {
    const double bound = tol + gqa::test::cancellation_floor(e.ref.dsinks_terms[h]);
    if (!std::isfinite(g.dsinks[h]) || std::fabs(g.dsinks[h] - e.ref.dsinks[h]) > bound) {
      err << "dsinks[" << h << "] = " << g.dsinks[h] << ", reference " << e.ref.dsinks[h] << ", bound " << bound;
      return err.str();
    }
  }
  return {};
}

/// Bitwise comparison of two backward runs, b being `what`; empty when equal.
inline std::string check_backward_bits(const backward_result& a, const backward_result& b, const std::string& what) {
  for (const auto& [x, y, name] : {std::tuple{&a.dq, &b.dq, "dq"}, std::tuple{&a.dk, &b.dk, "dk"}, std::tuple{&a.dv, &b.dv, "dv"}})
    for (std::size_t i = 0; i < x->mem.size(); ++i)
      if (!same(x->mem[i], y->mem[i])) return std::string(name) + " differs from " + what + " at buffer element " + std::to_string(i);
  for (std::size_t h = 0; h < a.dsinks.size(); ++h)
    if (!same(a.dsinks[h], b.dsinks[h])) return "dsinks differ from " + what + " at head " + std::to_string(h);
  return {};
}

/// Every ISA of this build, in build order.
inline std::vector<runner> all_runners() {
  std::vector<runner> r;
#if GQA_ISA_TU_SCALAR
  r.push_back(runner_scalar());
#endif
#if GQA_ISA_TU_AVX2
  r.push_back(runner_avx2());
#endif
#if GQA_ISA_TU_AVX512
  r.push_back(runner_avx512());
#endif
#if GQA_ISA_TU_NEON
  r.push_back(runner_neon());
#endif
  return r;
}

/// Runs case c on each runner (each with c's thread configuration, and once more on one thread if that
/// differs) and checks it; returns "<isa>: <failure>" of the first failure, or empty.
inline std::string run_and_check(const case_spec& c, const std::vector<runner>& isas) {
  const case_data in = build_inputs(c);
  // A variant's own steps may reject the inputs (prepare, plan): every run must then throw for the same
  // reason: the message from its argument name to the first '(' (the policy may throw it from its check()
  // instead of a later step).
  std::string ref_error;
  expected e;
  try {
    e = expect_of(c, in);
  } catch (const gqa::invalid_argument& x) {
    ref_error = x.what();
  }
  std::optional<backward_expected> be;
  if (c.backward && ref_error.empty()) be = backward_expect_of(c, in);
  for (const runner& isa : isas) {
    const result r = run_on(isa, c, in, c.threads);
    if (!ref_error.empty()) {
      const bool finite_check = c.check_finite && reads_non_finite(c, in);
      const auto place = [](const std::string& m) {
        const auto from = m.find(": ");
        const auto rest = from == std::string::npos ? m : m.substr(from + 2);
        return rest.substr(0, rest.find('('));
      };
      if (!finite_check && (r.error.empty() || place(r.error) != place(ref_error)))
        return std::string(isa.name) + ": the reference's steps threw '" + ref_error + "', the call " +
               (r.error.empty() ? std::string("did not throw") : "threw '" + r.error + "'");
      continue;
    }
    if (auto f = check(c, in, e, r); !f.empty()) return std::string(isa.name) + ": " + f;
    // 16-bit K/V (not the bf16 products): bit for bit the fp32 call on the widened views.
    const bool half = c.kv == kv_type::bf16 || c.kv == kv_type::f16;
    if (half && !(c.kv == kv_type::bf16 && c.qo16 && c.bf16_products)) {
      case_spec fc = c;
      fc.kv = kv_type::f32;
      fc.qo16 = false;
      if (auto f = check_widened_bits(c, run_on(isa, fc, in, c.threads), r); !f.empty())
        return std::string(isa.name) + ": " + f;
    }
    // int8 K/V in pages or packed rows: the dense int8 call's bits where gqa promises them.
    if (bits_of_dense_int8(c))
      if (const auto d = run_dense_int8(isa, c, in, c.threads))
        if (auto f = check_dense_int8_bits(*d, r); !f.empty()) return std::string(isa.name) + ": " + f;
    if (c.threads != 0) {
      const result one = run_on(isa, c, in, 0);
      if (auto f = check_same_bits(c, one, r); !f.empty()) return std::string(isa.name) + ": " + f;
    }
    if (be) {
      const backward_result g = run_backward_on(isa, c, in, r, *be, c.threads);
      if (auto f = check_backward(c, in, r, *be, g); !f.empty()) return std::string(isa.name) + ": backward: " + f;
      if (c.threads != 0) {
        if (auto f = check_backward_bits(run_backward_on(isa, c, in, r, *be, 0), g, "1 thread"); !f.empty())
          return std::string(isa.name) + ": backward: " + f;
      }
      // 16-bit inputs without the bf16 products: bit for bit the float backward on the widened inputs.
      if (half_backward(c) && !(c.kv == kv_type::bf16 && c.bf16_products))
        if (auto f = check_backward_bits(run_backward_on(isa, c, in, r, *be, c.threads, true), g,
                                         "the float backward on the widened inputs");
            !f.empty())
          return std::string(isa.name) + ": backward: " + f;
    }
  }
  return {};
}

}  // namespace gqa::sweep
