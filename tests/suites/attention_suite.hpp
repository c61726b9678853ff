// tests/suites/attention_suite.hpp: gqa::attend<Isa> against the naive double-precision reference
// (reference/attention.hpp) over shapes, masks, padding, head maps, layouts, LSE, the split-KV decode path
// and large tiles (docs/design.md, "What the core computes": any head map; the MLA shape). Compiled once
// per ISA: every helper stays in `namespace {}`. GQA_TEST_VERBOSE=1 prints every case's errors.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gqa/attention.hpp>
#include <gqa/reference/attention.hpp>

#include "support/isa_suite.hpp"
#include "support/tensor.hpp"
#include "support/tolerance.hpp"

namespace {

using gqa::index_t;

constexpr float k_nan = std::numeric_limits<float>::quiet_NaN();
constexpr double k_neg_inf = -std::numeric_limits<double>::infinity();
constexpr double k_unit_roundoff = 0x1p-24;

// The tolerance rule (Note [attention tolerance]) and its naive fp32 yardstick live in
// tests/support/tolerance.hpp.
using gqa::test::k_error_factor;
using gqa::test::k_error_factor_ill_conditioned;
using gqa::test::k_error_floor;
using gqa::test::layout;
using gqa::test::layout_name;
using gqa::test::tensor;

/// One attention call to check: shapes, options and layouts. kv_of_q empty means head_map::uniform.
struct attention_case {
  index_t b = 1, sq = 1, skv = 1, hq = 1, hkv = 1, d = 16, dv = 16;
  bool causal = false;
  std::vector<index_t> kv_lengths;
  std::optional<float> scale;
  gqa::reference::modifiers mods;  // window, softcap, sinks, ALiBi (options of the same names)
  std::vector<float> sinks, slopes;  // what mods.sinks and mods.alibi_slopes view (set by with_heads_options)
  std::vector<index_t> kv_of_q;
  layout lq = layout::bshd, lk = layout::bshd, lv = layout::bshd, lo = layout::bshd;
  float lo_val = -1.0f, hi_val = 1.0f;  // inputs uniform in [lo_val, hi_val)
  bool ill_conditioned = false;         // See Note [attention tolerance]
  std::string data;                     // names any change a test makes to the random inputs
  std::uint64_t seed = 1;

  gqa::head_map map() const {
    return kv_of_q.empty() ? gqa::head_map::uniform(hq, hkv) : gqa::head_map(kv_of_q, hkv);
  }
  double scale_or_default() const { return scale ? *scale : 1.0 / std::sqrt(static_cast<double>(static_cast<float>(d))); }
  std::string describe() const {
    std::ostringstream os;
    os << "b=" << b << " sq=" << sq << " skv=" << skv << " hq=" << hq << " hkv=" << hkv << " d=" << d << " dv=" << dv
       << (causal ? " causal" : " non-causal");
    if (!kv_lengths.empty()) {
      os << " kv_lengths={";
      for (std::size_t i = 0; i < kv_lengths.size(); ++i) os << (i ? "," : "") << kv_lengths[i];
      os << "}";
    }
    if (scale) os << " scale=" << *scale;
    if (mods.window_left >= 0 || mods.window_right >= 0)
      os << " window=(" << mods.window_left << "," << mods.window_right << ")";
    if (mods.softcap > 0.0) os << " softcap=" << mods.softcap;
    if (!sinks.empty()) os << " sinks[0]=" << sinks[0];
    if (!slopes.empty()) os << " alibi_slopes[0]=" << slopes[0];
    if (!kv_of_q.empty()) {
      os << " map={";
      for (std::size_t i = 0; i < kv_of_q.size(); ++i) os << (i ? "," : "") << kv_of_q[i];
      os << "}";
    }
    os << " layouts q/k/v/o=" << layout_name(lq) << "/" << layout_name(lk) << "/" << layout_name(lv) << "/"
       << layout_name(lo) << " inputs in [" << lo_val << ", " << hi_val << ") seed=" << seed;
    if (!data.empty()) os << " data: " << data;
    if (ill_conditioned) os << " (ill-conditioned: mean error)";
    return os.str();
  }
};

/// The case's tensors (inputs filled, output and LSE NaN until the call).
struct prepared {
  tensor q, k, v, o;
  gqa::head_map map;
  std::vector<float> lse;

  explicit prepared(const attention_case& c)
      : q(c.lq, c.b, c.sq, c.hq, c.d), k(c.lk, c.b, c.skv, c.hkv, c.d), v(c.lv, c.b, c.skv, c.hkv, c.dv),
        o(c.lo, c.b, c.sq, c.hq, c.dv), map(c.map()), lse(static_cast<std::size_t>(c.b * c.hq * c.sq), k_nan) {
    q.fill(c.seed * 4 + 0, c.lo_val, c.hi_val);
    k.fill(c.seed * 4 + 1, c.lo_val, c.hi_val);
    v.fill(c.seed * 4 + 2, c.lo_val, c.hi_val);
  }

  gqa::attention_options options(const attention_case& c) {
    gqa::attention_options opt;
    opt.scale = c.scale;
    opt.causal = c.causal;
    opt.kv_lengths = c.kv_lengths;
    opt.lse = lse;
    opt.window_left = c.mods.window_left;
    opt.window_right = c.mods.window_right;
    opt.softcap = static_cast<float>(c.mods.softcap);
    opt.sinks = c.mods.sinks;
    opt.alibi_slopes = c.mods.alibi_slopes;
    return opt;
  }

  template <class Isa>
  void run(const gqa::attention_options& opt) {
    gqa::attend<Isa>(q.cview(), k.cview(), v.cview(), o.view, map, opt);
  }

  /// The output in logical [b][sq][hq][dv] order (for bitwise comparisons between runs).
  std::vector<float> dense_output() const { return gqa::test::logical_order(o.view); }
};

/// A key count that reaches `n` keys past the start of Isa's second prefill block where `n` is past 256
/// (the block these tests were written for): n itself on ISAs of blocks of 256 keys or fewer, n plus the
/// difference on AVX-512's 512 (Note [forward block length]), so that a task spans two blocks on every ISA.
template <class Isa>
index_t past_first_block(index_t n) {
  return std::max<index_t>(n, index_t{gqa::isa::vec<Isa>::tile_shape::block_kv} + n - 256);
}

/// Runs the prepared case on Isa (with LSE) and checks it against the reference: Note [attention
/// tolerance] for the values; exact +0 output and −inf LSE for rows that see no key; everything finite;
/// the output's gaps (padded layout) untouched. Extra options (threads, parallel_for) may be set by `tweak`.
template <class Isa>
void check_prepared(const attention_case& c, prepared& p, const std::function<void(gqa::attention_options&)>& tweak = {}) {
  SCOPED_TRACE(c.describe());
  auto opt = p.options(c);
  if (tweak) tweak(opt);
  p.run<Isa>(opt);

  const auto ref = gqa::reference::attention(p.q.cview(), p.k.cview(), p.v.cview(), p.map.kv_of_q(),
                                             c.scale_or_default(), c.causal, c.kv_lengths, c.mods);
  const auto naive = gqa::test::naive_fp32(p.q.cview(), p.k.cview(), p.v.cview(), p.map.kv_of_q(),
                                           static_cast<float>(c.scale_or_default()), c.causal, c.kv_lengths, c.mods);

  double vmax = 0.0;
  for (index_t ib = 0; ib < c.b; ++ib)
    for (index_t j = 0; j < c.skv; ++j)
      for (index_t g = 0; g < c.hkv; ++g)
        for (index_t x = 0; x < c.dv; ++x) vmax = std::max(vmax, std::fabs(static_cast<double>(p.v.view(ib, j, g, x))));

  double err = 0.0, naive_err = 0.0, err_sum = 0.0, naive_err_sum = 0.0;
  double lse_err = 0.0, naive_lse_err = 0.0, lse_max = 0.0;
  std::size_t bad_masked = 0, non_finite = 0, outside_hull = 0, compared = 0;
  for (index_t ib = 0; ib < c.b; ++ib)
    for (index_t h = 0; h < c.hq; ++h)
      for (index_t i = 0; i < c.sq; ++i) {
        const auto li = static_cast<std::size_t>((ib * c.hq + h) * c.sq + i);
        const double want_lse = ref.log_sum_exp(ib, h, i);
        const float got_lse = p.lse[li];
        const bool masked = want_lse == k_neg_inf;
        if (masked) {
          bad_masked += !(got_lse == -std::numeric_limits<float>::infinity());
        } else if (!std::isfinite(got_lse)) {
          ++non_finite;
        } else {
          lse_err = std::max(lse_err, std::fabs(got_lse - want_lse));
          naive_lse_err = std::max(naive_lse_err, std::fabs(naive.lse[li] - want_lse));
          lse_max = std::max(lse_max, std::fabs(want_lse));
        }
        const index_t len = c.kv_lengths.empty() ? c.skv : c.kv_lengths[static_cast<std::size_t>(ib)];
        const auto [k_lo, k_hi] = gqa::reference::visible_keys(i, c.sq, len, c.causal, c.mods);
        const index_t visible = k_hi - k_lo;
        const index_t g = p.map.kv_of(h);
        for (index_t x = 0; x < c.dv; ++x) {
          const float got = p.o.view(ib, i, h, x);
          if (masked) {
            bad_masked += !gqa::test::is_plus_zero(got);
            continue;
          }
          if (!std::isfinite(got)) {
            ++non_finite;
            continue;
          }
          const double want = ref.out(ib, i, h, x);
          const double e = std::fabs(got - want);
          const double ne = std::fabs(naive.o[static_cast<std::size_t>(((ib * c.sq + i) * c.hq + h) * c.dv + x)] - want);
          err = std::max(err, e);
          naive_err = std::max(naive_err, ne);
          err_sum += e;
          naive_err_sum += ne;
          ++compared;
          if (c.ill_conditioned) {  // a convex combination of the visible values, up to fp32 rounding
            float lo = std::numeric_limits<float>::infinity(), hi = -lo;
            if (!c.mods.sinks.empty()) lo = hi = 0.0f;  // a sink's weight goes to a zero value row
            for (index_t j = k_lo; j < k_hi; ++j) {
              lo = std::min(lo, p.v.view(ib, j, g, x));
              hi = std::max(hi, p.v.view(ib, j, g, x));
            }
            // Σ p·v / Σ p rounds once per key in each sum: within γ_2·visible of the hull, relative.
            const double slack = static_cast<double>(2 * visible + 8) * k_unit_roundoff * vmax;
            outside_hull += got < lo - slack || got > hi + slack;
          }
        }
      }
  EXPECT_EQ(non_finite, 0u) << "non-finite outputs or LSE in rows that see keys";
  EXPECT_EQ(bad_masked, 0u) << "rows that see no key must be exactly +0 with LSE -inf";
  EXPECT_EQ(outside_hull, 0u) << "outputs outside the range of the visible values";
  EXPECT_EQ(p.o.gaps_written(), 0u) << "the kernel wrote outside the output view";
  const double floor = k_error_floor * std::max(1.0, vmax);
  if (c.ill_conditioned) {
    const double n = static_cast<double>(std::max<std::size_t>(compared, 1));
    EXPECT_LE(err_sum / n, k_error_factor_ill_conditioned * naive_err_sum / n + floor)
        << "mean |O - O_ref| = " << err_sum / n << ", naive fp32 " << naive_err_sum / n;
  } else {
    EXPECT_LE(err, k_error_factor * naive_err + floor) << "max |O - O_ref| = " << err << ", naive fp32 " << naive_err;
  }
  const double lse_tol = k_error_factor * naive_lse_err + k_error_floor * std::max(1.0, lse_max);
  EXPECT_LE(lse_err, lse_tol) << "max |LSE - LSE_ref| = " << lse_err << ", naive fp32 " << naive_lse_err;
  if (std::getenv("GQA_TEST_VERBOSE"))
    std::printf("  max err %.3g naive %.3g | mean %.3g naive %.3g | lse %.3g naive %.3g | %s\n", err, naive_err,
                err_sum / static_cast<double>(std::max<std::size_t>(compared, 1)),
                naive_err_sum / static_cast<double>(std::max<std::size_t>(compared, 1)), lse_err, naive_lse_err,
                c.describe().c_str());
}

/// check_prepared on freshly prepared (random) inputs.
template <class Isa>
void check_case(const attention_case& c, const std::function<void(gqa::attention_options&)>& tweak = {}) {
  prepared p(c);
  check_prepared<Isa>(c, p, tweak);
}

/// The output and LSE of one run, bitwise, for determinism checks.
template <class Isa>
std::pair<std::vector<float>, std::vector<float>> run_bits(const attention_case& c,
                                                           const std::function<void(gqa::attention_options&)>& tweak) {
  prepared p(c);
  auto opt = p.options(c);
  tweak(opt);
  p.run<Isa>(opt);
  return {p.dense_output(), p.lse};
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

/// A caller parallel_for that runs the tasks in reverse order on the calling thread.
void reverse_order(index_t n, const std::function<void(index_t)>& task) {
  for (index_t i = n; i-- > 0;) task(i);
}

/// A caller parallel_for on three std::threads taking tasks from a shared counter, from the end.
void three_threads(index_t n, const std::function<void(index_t)>& task) {
  std::atomic<index_t> next{n};
  auto worker = [&] {
    for (index_t i = --next; i >= 0; i = --next) task(i);
  };
  std::thread t1(worker), t2(worker);
  worker();
  t1.join();
  t2.join();
}

/// Checks that the case gives bitwise the same output and LSE for num_threads 1, 2, 0 and for caller
/// loops that run the tasks in reverse order and on three threads.
template <class Isa>
void check_deterministic(const attention_case& c) {
  SCOPED_TRACE(c.describe());
  const auto base = run_bits<Isa>(c, [](gqa::attention_options& o) { o.num_threads = 1; });
  const std::pair<const char*, std::function<void(gqa::attention_options&)>> runs[] = {
      {"num_threads = 2", [](gqa::attention_options& o) { o.num_threads = 2; }},
      {"num_threads = 0", [](gqa::attention_options& o) { o.num_threads = 0; }},
      {"num_threads = 3", [](gqa::attention_options& o) { o.num_threads = 3; }},
      {"parallel_for in reverse order", [](gqa::attention_options& o) { o.parallel_for = reverse_order; }},
      {"parallel_for on three threads", [](gqa::attention_options& o) { o.parallel_for = three_threads; }},
  };
  for (const auto& [name, tweak] : runs) {
    const auto got = run_bits<Isa>(c, tweak);
    EXPECT_TRUE(bitwise_equal(got.first, base.first)) << name << ": output differs from num_threads = 1";
    EXPECT_TRUE(bitwise_equal(got.second, base.second)) << name << ": LSE differs from num_threads = 1";
  }
}

struct heads {
  index_t hq, hkv;
};

struct layout_combo {
  layout q, k, v, o;
};

}  // namespace

template <class Isa>
class attention_suite : public gqa::test::isa_test<Isa> {};
TYPED_TEST_SUITE_P(attention_suite);

// D (d_qk = d_v) × Sq × Skv, each shape with one of the head configurations (rotating), causal and not.
// Lengths straddle the KV blocks (64 keys on scalar/NEON, 128 on AVX) and the decode/tiled switch
// (group rows ≤ 8); causal covers Sq < Skv (bottom-right) and Sq > Skv (early rows see nothing).
TYPED_TEST_P(attention_suite, shapes_match_reference) {
  const index_t dims[] = {1, 17, 64, 80, 128};
  const index_t lens[] = {1, 2, 63, 64, 65, 200};
  const heads configs[] = {{1, 1}, {8, 8}, {8, 2}, {8, 1}, {12, 4}};
  std::uint64_t seed = 100;
  for (std::size_t id = 0; id < std::size(dims); ++id)
    for (std::size_t is = 0; is < std::size(lens); ++is)
      for (std::size_t ik = 0; ik < std::size(lens); ++ik) {
        // The reduced list (ASan, qemu) keeps every fourth shape, still hitting every D, Sq and Skv.
        if (gqa::test::reduced && (id + is + 2 * ik) % 4 != 0) continue;
        const heads hc = configs[(id + 2 * is + 3 * ik) % std::size(configs)];
        for (const bool causal : {false, true}) {
          attention_case c;
          c.b = 1 + static_cast<index_t>((is + ik) % 2);
          c.sq = lens[is];
          c.skv = lens[ik];
          c.hq = hc.hq;
          c.hkv = hc.hkv;
          c.d = c.dv = dims[id];
          c.causal = causal;
          c.seed = seed++;
          check_case<TypeParam>(c);
        }
      }
}

// Right padding: per-batch valid lengths, including 0 (the whole batch element sees nothing), the full
// length, and lengths that end inside a KV block; with and without causal (which then aligns to each
// batch's own length).
TYPED_TEST_P(attention_suite, padded_kv_lengths) {
  struct shape {
    index_t sq, skv, hq, hkv, d;
    std::vector<index_t> lengths;
  };
  std::vector<shape> shapes = {
      {1, 200, 8, 2, 64, {200, 0, 37, 129}},      // decode
      {3, 130, 8, 1, 17, {0, 130, 1, 65}},        // few positions, direct path
      {65, 200, 8, 2, 80, {199, 64, 0, 127}},     // tiled
      {200, 65, 12, 4, 128, {65, 3, 0, 64}},      // Sq > every length: causal rows before the end see nothing
  };
  if (gqa::test::reduced) shapes.resize(2);
  std::uint64_t seed = 300;
  for (const auto& s : shapes)
    for (const bool causal : {false, true}) {
      attention_case c;
      c.b = static_cast<index_t>(s.lengths.size());
      c.sq = s.sq;
      c.skv = s.skv;
      c.hq = s.hq;
      c.hkv = s.hkv;
      c.d = c.dv = s.d;
      c.kv_lengths = s.lengths;
      c.causal = causal;
      c.seed = seed++;
      check_case<TypeParam>(c);
    }
}

// Rows that see no key (Sq > Skv causal, kv_length 0) are exactly +0 with LSE -inf, never NaN, and the
// rows that do see keys are unaffected.
TYPED_TEST_P(attention_suite, fully_masked_rows_are_zero) {
  attention_case c;
  c.b = 2;
  c.sq = 70;
  c.skv = 5;
  c.hq = 4;
  c.hkv = 2;
  c.d = c.dv = 24;
  c.causal = true;
  c.kv_lengths = {5, 0};
  check_case<TypeParam>(c);  // exact zeros and -inf are part of check_case
  prepared p(c);
  p.run<TypeParam>(p.options(c));
  // Row i of batch 0 sees keys j <= i + 5 - 70: the first 65 rows see nothing.
  for (index_t i = 0; i < c.sq; ++i)
    for (index_t h = 0; h < c.hq; ++h) {
      const bool empty = i < 65;
      EXPECT_EQ(std::isinf(p.lse[static_cast<std::size_t>(h * c.sq + i)]), empty) << "row " << i << " head " << h;
      for (index_t x = 0; x < c.dv; ++x) ASSERT_FALSE(std::isnan(p.o.view(0, i, h, x)));
    }
  // A scale of 0 (allowed: finite) makes every visible score 0: a plain average, never NaN.
  c.scale = 0.0f;
  c.kv_lengths = {3, 0};
  check_case<TypeParam>(c);
}

// Absorbed MLA (docs/variants.md, "MLA-shaped attention"): one KV head, d_qk 576, d_v 512, explicit scale
// 1/sqrt(192); and other d_qk != d_v pairs on both paths.
TYPED_TEST_P(attention_suite, mla_and_unequal_head_dims) {
  attention_case mla;
  mla.hq = gqa::test::reduced ? 8 : 16;
  mla.hkv = 1;
  mla.d = 576;
  mla.dv = 512;
  mla.scale = 1.0f / std::sqrt(192.0f);
  mla.seed = 500;
  for (const index_t sq : {index_t{1}, index_t{2}, index_t{33}}) {
    if (gqa::test::reduced && sq == 33) continue;
    mla.sq = sq;
    mla.skv = gqa::test::reduced ? 97 : 300;
    mla.causal = sq > 1;
    ++mla.seed;
    check_case<TypeParam>(mla);
  }
  struct dims {
    index_t d, dv;
  };
  std::uint64_t seed = 520;
  for (const dims dd : {dims{64, 17}, dims{17, 80}, dims{128, 64}, dims{3, 129}})
    for (const index_t sq : {index_t{1}, index_t{70}}) {
      attention_case c;
      c.sq = sq;
      c.skv = 130;
      c.hq = 8;
      c.hkv = 2;
      c.d = dd.d;
      c.dv = dd.dv;
      c.causal = sq > 1;
      c.seed = seed++;
      check_case<TypeParam>(c);
    }
}

// Unequal and empty groups (KDGQA/DGQA allocations) and a non-contiguous map (the core accepts any
// map): decode (direct path), few positions and tiled.
TYPED_TEST_P(attention_suite, unequal_empty_and_noncontiguous_groups) {
  std::vector<std::pair<std::vector<int>, std::vector<index_t>>> maps;  // (allocation, or explicit map)
  maps.push_back({{0, 3, 5, 0}, {}});
  maps.push_back({{1, 0, 7}, {}});
  maps.push_back({{2, 2, 0, 4, 1, 0}, {}});
  maps.push_back({{}, {2, 0, 1, 0, 2, 2, 1, 0}});     // hkv 3, heads of a group interleaved
  maps.push_back({{}, {3, 3, 0, 3, 0, 3, 3, 3, 0}});  // hkv 4: KV heads 1 and 2 unused, group of 6
  std::uint64_t seed = 600;
  for (const auto& [alloc, explicit_map] : maps) {
    std::vector<index_t> kv_of_q = explicit_map;
    index_t hkv = 0;
    if (!alloc.empty()) {
      const auto m = gqa::head_map::from_allocation(alloc);
      kv_of_q.assign(m.kv_of_q().begin(), m.kv_of_q().end());
      hkv = m.hkv();
    } else {
      hkv = *std::max_element(kv_of_q.begin(), kv_of_q.end()) + 1;
    }
    for (const index_t sq : {index_t{1}, index_t{2}, index_t{67}}) {
      if (gqa::test::reduced && sq == 2) continue;
      for (const bool causal : {false, true}) {
        attention_case c;
        c.b = 2;
        c.sq = sq;
        c.skv = 150;
        c.hq = static_cast<index_t>(kv_of_q.size());
        c.hkv = hkv;
        c.kv_of_q = kv_of_q;
        c.d = c.dv = 40;
        c.causal = causal;
        c.kv_lengths = {150, 77};
        c.seed = seed++;
        check_case<TypeParam>(c);
      }
    }
  }
}

// BSHD, BHSD and padded-stride views (stride_h > d, NaN in every gap), mixed between q, k, v and o.
TYPED_TEST_P(attention_suite, layouts_and_strides) {
  const layout_combo combos[] = {
      {layout::bshd, layout::bshd, layout::bshd, layout::bshd},
      {layout::bhsd, layout::bhsd, layout::bhsd, layout::bhsd},
      {layout::padded, layout::padded, layout::padded, layout::padded},
      {layout::bhsd, layout::padded, layout::bshd, layout::padded},
      {layout::padded, layout::bhsd, layout::padded, layout::bhsd},
  };
  std::uint64_t seed = 700;
  for (const layout_combo& cb : combos)
    for (const index_t sq : {index_t{1}, index_t{66}}) {
      attention_case c;
      c.b = 2;
      c.sq = sq;
      c.skv = 131;
      c.hq = 8;
      c.hkv = 2;
      c.d = 33;
      c.dv = 20;
      c.causal = sq > 1;
      c.lq = cb.q;
      c.lk = cb.k;
      c.lv = cb.v;
      c.lo = cb.o;
      c.seed = seed++;
      check_case<TypeParam>(c);
    }
}

// Long decode takes the split-KV path (Note [decode split]: fewer than 16 tasks, skv >= 2048): correct,
// also when padding or causal cut the range inside or before a chunk, and bitwise identical for any
// thread count and task order.
TYPED_TEST_P(attention_suite, split_kv_decode) {
  attention_case c;
  c.b = 2;
  c.sq = 1;
  c.skv = gqa::test::reduced ? 2100 : 4500;
  c.hq = 8;
  c.hkv = 2;
  c.d = c.dv = 64;
  c.kv_lengths = {c.skv, c.skv / 3 + 5};  // the second batch's later chunks see nothing
  c.seed = 800;
  check_case<TypeParam>(c);
  check_deterministic<TypeParam>(c);
  c.sq = 2;  // G·sq = 8 rows: still the decode path, causal cuts the last key for the first position
  c.causal = true;
  c.kv_lengths.clear();
  c.seed = 801;
  check_case<TypeParam>(c);
  check_deterministic<TypeParam>(c);
}

// Tiles with more rows than one task holds (Sq 300 × G 8 rows) and more KV blocks than one: correct and
// bitwise identical for any thread count and task order.
TYPED_TEST_P(attention_suite, large_tiles) {
  attention_case c;
  c.b = 1;
  c.sq = gqa::test::reduced ? 100 : 300;
  c.skv = gqa::test::reduced ? 150 : past_first_block<TypeParam>(300);
  c.hq = 16;
  c.hkv = 2;
  c.d = c.dv = 64;
  c.causal = true;
  c.seed = 900;
  check_case<TypeParam>(c);
  check_deterministic<TypeParam>(c);
  c.causal = false;
  c.kv_lengths = {c.skv - 7};
  c.seed = 901;
  check_deterministic<TypeParam>(c);
  // Three sequences: with two threads the tasks are dealt in sets of two sequences and a last set of
  // one (Note [forward task order]); with three, one set of three.
  c.b = 3;
  c.hkv = 4;
  c.kv_lengths = {c.skv, c.skv - 7, c.skv / 2};
  c.seed = 902;
  check_case<TypeParam>(c);
  check_deterministic<TypeParam>(c);
}

// Query counts just past a whole number of query blocks (3 heads per KV head: 197 positions are 3 blocks of
// 64 + 5 on AVX2 and AVX-512, 6 of 32 + 5 on NEON; 62 are 6 of 10 + 2 on the scalar core): the full blocks
// absorb the short last one (Note [short last query block]), so tasks hold more rows than
// tile_shape::rows. Correct against the reference, causal or not, and the same bits for any thread count.
TYPED_TEST_P(attention_suite, short_last_query_block) {
  std::uint64_t seed = 950;
  for (const index_t sq : {index_t{197}, index_t{62}})
    for (const bool causal : {false, true}) {
      attention_case c;
      c.b = 2;
      c.sq = sq;
      c.skv = sq + 3;
      c.hq = 12;
      c.hkv = 4;
      c.d = c.dv = 20;
      c.causal = causal;
      c.kv_lengths = {c.skv, c.skv - 9};
      c.seed = seed++;
      check_case<TypeParam>(c);
      check_deterministic<TypeParam>(c);
    }
}

// Large scores (scale 10, inputs up to ±30: |scale·q·k| reaches 10^4-10^5 while e^s overflows float at
// s ≈ 88): the online softmax's running max and rescaling keep everything finite, inside the range of
// the visible values and as accurate as a naive fp32 softmax that subtracts the exact row max.
TYPED_TEST_P(attention_suite, large_magnitude_scores) {
  std::uint64_t seed = 1000;
  for (const index_t sq : {index_t{1}, index_t{40}})
    for (const index_t d : {index_t{4}, index_t{64}}) {
      attention_case c;
      c.sq = sq;
      c.skv = past_first_block<TypeParam>(300);
      c.hq = 8;
      c.hkv = 2;
      c.d = c.dv = d;
      c.scale = 10.0f;
      c.lo_val = -30.0f;
      c.hi_val = 30.0f;
      c.causal = sq > 1;
      c.ill_conditioned = true;  // See Note [attention tolerance]
      c.seed = seed++;
      check_case<TypeParam>(c);
    }
  // Scores that climb (or fall) 60 per key from -9000 to 9000: the running max rises at every key and
  // every block rescales the previous ones by 2^(-thousands) = 0, so each row is exactly the value of its
  // last (first) visible key: well conditioned, checked with the max-error bound.
  for (const float dir : {1.0f, -1.0f}) {
    attention_case c;
    c.sq = 40;
    c.skv = past_first_block<TypeParam>(300);
    c.hq = 8;
    c.hkv = 2;
    c.d = c.dv = 32;
    c.scale = 10.0f;
    c.causal = true;
    c.seed = seed++;
    c.data = dir > 0 ? "steep rising ramp" : "steep falling ramp";
    prepared p(c);
    for (index_t i = 0; i < c.sq; ++i)
      for (index_t h = 0; h < c.hq; ++h) p.q.view(0, i, h, 0) = 30.0f;
    for (index_t j = 0; j < c.skv; ++j)
      for (index_t g = 0; g < c.hkv; ++g) {
        p.k.view(0, j, g, 0) = dir * 30.0f * (2.0f * static_cast<float>(j) / static_cast<float>(c.skv) - 1.0f);
        for (index_t x = 1; x < c.d; ++x) p.k.view(0, j, g, x) *= 0.1f;  // other dims: noise of ~2
      }
    check_prepared<TypeParam>(c, p);
  }
  // A common offset of 9000 with a gentle ramp on top (0.05 per key): many keys of every block count and
  // the max rises a little at each block, so every rescale factor is a real number in (0, 1).
  {
    attention_case c;
    c.sq = 40;
    c.skv = past_first_block<TypeParam>(300);
    c.hq = 8;
    c.hkv = 2;
    c.d = c.dv = 16;
    c.scale = 10.0f;
    c.causal = true;
    c.ill_conditioned = true;  // an offset of 9000 leaves fp32 scores ~1e-3 of resolution
    c.seed = seed++;
    c.data = "offset 9000 plus gentle ramp";
    prepared p(c);
    for (index_t i = 0; i < c.sq; ++i)
      for (index_t h = 0; h < c.hq; ++h) {
        p.q.view(0, i, h, 0) = 30.0f;
        p.q.view(0, i, h, 1) = 1.0f;
      }
    for (index_t j = 0; j < c.skv; ++j)
      for (index_t g = 0; g < c.hkv; ++g) {
        p.k.view(0, j, g, 0) = 30.0f;
        p.k.view(0, j, g, 1) = 0.005f * static_cast<float>(j);
        for (index_t x = 2; x < c.d; ++x) p.k.view(0, j, g, x) *= 0.01f;
      }
    check_prepared<TypeParam>(c, p);
  }
}

/// The shape of a case of the mask and modifier tests below (d_v = d).
struct case_shape {
  index_t b, sq, skv, hq, hkv, d;
};

/// A case of shape s with seed `seed`, no mask or modifier yet.
attention_case case_of(const case_shape& s, std::uint64_t seed) {
  attention_case c;
  c.b = s.b;
  c.sq = s.sq;
  c.skv = s.skv;
  c.hq = s.hq;
  c.hkv = s.hkv;
  c.d = c.dv = s.d;
  c.seed = seed;
  return c;
}

// Sliding windows (FlashAttention's window_size, bottom-right): left-only, right-only, both, windows of 0
// and 1 and larger than skv, with and without causal, on every path (decode, direct, tiled, split-KV),
// with padding (kv_lengths) and odd sizes (d not a multiple of the vector width, lengths not a multiple
// of the block), and bitwise identical for any thread count.
TYPED_TEST_P(attention_suite, sliding_window) {
  struct win {
    index_t left, right;
  };
  const win wins[] = {{0, 0}, {1, -1}, {-1, 1}, {5, 3}, {0, -1}, {-1, 0}, {70, -1}, {130, 20}, {1000, 1000}, {64, 0}};
  struct shape {
    case_shape s;
    std::vector<index_t> lengths;
  };
  std::vector<shape> shapes = {
      {{2, 1, 300, 8, 2, 33}, {}},           // decode (direct path, key-major scores)
      {{1, 3, 200, 8, 1, 17}, {}},           // few positions, direct path
      {{2, 70, 260, 8, 2, 64}, {260, 131}},  // tiled, padding
      {{1, 200, 150, 12, 4, 40}, {}},        // sq > skv: early rows see nothing
      {{1, 1, 1, 1, 1, 5}, {}},              // one key
  };
  if (gqa::test::reduced) shapes.erase(shapes.begin() + 3);
  std::uint64_t seed = 1100;
  for (const auto& s : shapes)
    for (std::size_t w = 0; w < std::size(wins); ++w)
      for (const bool causal : {false, true}) {
        if (gqa::test::reduced && (w + causal) % 2 != 0) continue;
        attention_case c = case_of(s.s, seed++);
        c.kv_lengths = s.lengths;
        c.causal = causal;
        c.mods.window_left = wins[w].left;
        c.mods.window_right = wins[w].right;
        check_case<TypeParam>(c);
      }
  // Split-KV decode (Note [decode split]) with the window inside one chunk, across chunks, and beyond
  // the padding; deterministic for any thread count.
  attention_case c = case_of({2, 2, gqa::test::reduced ? 2100 : 4500, 8, 2, 48}, 1190);
  c.kv_lengths = {c.skv, c.skv / 3 + 5};
  for (const win w : {win{100, -1}, win{1500, 0}, win{3000, 2}}) {
    c.mods.window_left = w.left;
    c.mods.window_right = w.right;
    check_case<TypeParam>(c);
    check_deterministic<TypeParam>(c);
  }
  // Tiled with a window narrower than a query block and several key blocks per task.
  c = {};
  c.sq = c.skv = gqa::test::reduced ? 160 : 520;
  c.hq = 16;
  c.hkv = 4;
  c.d = c.dv = 80;
  c.causal = true;
  c.mods.window_left = 37;
  c.seed = 1195;
  check_case<TypeParam>(c);
  check_deterministic<TypeParam>(c);
}

// Logit softcap (Gemma 2: cap·tanh(s/cap)) on every path, from a cap far above the logits (almost the
// identity) to one far below (every logit saturated near ±cap), with large logits (scale 10, inputs ±3),
// composed with causal, a window and padding.
TYPED_TEST_P(attention_suite, logit_softcap) {
  std::vector<case_shape> shapes = {
      {2, 1, 300, 8, 2, 33},   // decode
      {1, 3, 200, 8, 1, 17},   // direct
      {1, 70, 260, 8, 2, 64},  // tiled
  };
  if (!gqa::test::reduced) shapes.push_back({1, 1, 4500, 8, 2, 24});  // split-KV decode
  std::uint64_t seed = 1200;
  for (const auto& s : shapes)
    for (const double cap : {50.0, 5.0, 1.0, 0.05})
      for (const bool large : {false, true}) {
        attention_case c = case_of(s, seed++);
        c.causal = s.sq > 1;
        c.mods.softcap = cap;
        if (large) {
          c.scale = 10.0f;
          c.lo_val = -3.0f;
          c.hi_val = 3.0f;
          c.mods.window_left = 100;
          c.kv_lengths.assign(static_cast<std::size_t>(s.b), s.skv - 13);
        }
        check_case<TypeParam>(c);
      }
}

/// Per-head sinks and ALiBi slopes for c (hq heads), viewed by c.mods.
void set_sinks_and_slopes(attention_case& c, bool sinks, bool alibi, float sink_base) {
  c.sinks.clear();
  c.slopes.clear();
  for (index_t h = 0; h < c.hq; ++h) {
    if (sinks) c.sinks.push_back(sink_base + 0.75f * static_cast<float>(h % 5) - 1.0f);
    if (alibi) c.slopes.push_back(std::exp2(-8.0f * static_cast<float>(h + 1) / static_cast<float>(c.hq)));  // FA's
  }
  c.mods.sinks = c.sinks;
  c.mods.alibi_slopes = c.slopes;
}

// Attention sinks (a per-head logit in the softmax's denominator, no value row) and ALiBi (per-head
// slopes, bottom-right distances), alone and together, composed with causal, a window, a softcap and
// padding (rows that see no key: zeros with LSE the sink), on every path including split-KV decode; sinks
// that dominate the row (+8) and that barely count (-20).
TYPED_TEST_P(attention_suite, sinks_and_alibi) {
  std::vector<case_shape> shapes = {
      {2, 1, 300, 8, 2, 33},   // decode
      {1, 3, 200, 8, 1, 17},   // direct
      {1, 70, 260, 8, 2, 64},  // tiled
      {1, 90, 40, 4, 2, 20},   // sq > skv: early causal rows see nothing
  };
  if (!gqa::test::reduced) shapes.push_back({1, 2, 4500, 8, 2, 24});  // split-KV decode
  std::uint64_t seed = 1300;
  for (const auto& s : shapes)
    for (int mode = 0; mode < 6; ++mode) {
      attention_case c = case_of(s, seed++);
      c.causal = mode % 2 == 1 || s.sq > s.skv;
      const bool sinks = mode != 2, alibi = mode >= 2;
      set_sinks_and_slopes(c, sinks, alibi, mode == 4 ? 8.0f : mode == 5 ? -20.0f : 0.0f);
      if (mode >= 3) {
        c.mods.window_left = 50;
        c.mods.softcap = mode == 3 ? 2.0 : 0.0;
        c.kv_lengths.assign(static_cast<std::size_t>(s.b), 0);
        c.kv_lengths.back() = s.skv - 7;  // the first batch elements see nothing
      }
      check_case<TypeParam>(c);
      if (s.sq == 2 && mode == 1) check_deterministic<TypeParam>(c);
    }
}

// Decode tasks (every group's rows on the direct path) take each KV head's softmax and P·V 32 keys at a
// time, right after those keys' scores for fp32 K/V (Note [fused decode walk] in detail/core/forward.hpp):
// lengths around the units and the 64-key blocks, unequal and empty groups (3, 0, 1 and 4 query heads),
// one position and three (causal: rows whose edge cuts a unit), a window whose edges move inside the
// units with padding, the softcap with ALiBi, and scores on a gentle ramp, whose max rises in every unit
// so that every unit rescales l and O by a factor in (0, 1).
TYPED_TEST_P(attention_suite, decode_units) {
  const index_t lens[] = {1, 31, 32, 33, 63, 64, 65, 95, 97, 130};
  std::uint64_t seed = 1500;
  for (std::size_t i = 0; i < std::size(lens); ++i)
    for (int mode = 0; mode < 4; ++mode) {
      if (gqa::test::reduced && (i + static_cast<std::size_t>(mode)) % 2 != 0) continue;
      attention_case c;
      c.b = 2;
      c.sq = mode == 1 ? 3 : 1;
      c.skv = lens[i];
      c.hq = 8;
      c.hkv = 4;
      c.kv_of_q = {0, 0, 0, 2, 3, 3, 3, 3};
      c.d = 40;
      c.dv = 24;
      c.causal = mode == 1;
      if (mode == 2) {
        c.mods.window_left = 20;
        c.kv_lengths = {c.skv, std::max<index_t>(c.skv - 5, 0)};
      }
      if (mode == 3) {
        c.mods.softcap = 3.0;
        set_sinks_and_slopes(c, false, true, 0.0f);
      }
      c.seed = seed++;
      check_case<TypeParam>(c);
      if (mode == 1) check_deterministic<TypeParam>(c);
    }
  for (const index_t skv : {index_t{97}, index_t{300}}) {
    attention_case c;
    c.skv = skv;
    c.hq = 8;
    c.hkv = 2;
    c.d = c.dv = 16;
    c.scale = 10.0f;
    c.seed = seed++;
    c.data = "gentle ramp";
    prepared p(c);
    for (index_t h = 0; h < c.hq; ++h) p.q.view(0, 0, h, 0) = 1.0f;
    for (index_t j = 0; j < c.skv; ++j)
      for (index_t g = 0; g < c.hkv; ++g) {
        p.k.view(0, j, g, 0) = 0.02f * static_cast<float>(j);
        for (index_t x = 1; x < c.d; ++x) p.k.view(0, j, g, x) *= 0.01f;
      }
    check_prepared<TypeParam>(c, p);
  }
}

// Windowed prefill whose tasks span two key blocks or more (up to 512 keys per block): their blocks lie
// on the kept-block grid, the first computed from the packed slice that holds its first key (Note
// [windows on the block grid] in detail/core/forward.hpp), and score tiles no row sees are skipped (Note
// [hidden tiles]), while the softcap and ALiBi read only the vectors that hold a row's keys; causal or
// not, both sides, padding; bitwise the same for any thread count.
TYPED_TEST_P(attention_suite, windows_on_the_block_grid) {
  struct win {
    index_t left, right;
    bool causal;
  };
  const index_t n = gqa::test::reduced ? 700 : 900;
  std::uint64_t seed = 1400;
  for (const win w : {win{520, -1, true}, win{600, 30, false}, win{290, 290, false}})
    for (const bool modifiers : {false, true}) {
      attention_case c = case_of({1, n, n, 8, 2, 40}, seed++);
      c.causal = w.causal;
      c.mods.window_left = w.left;
      c.mods.window_right = w.right;
      if (modifiers) {
        set_sinks_and_slopes(c, false, true, 0.0f);
        c.mods.softcap = 3.0;
        c.kv_lengths = {n - 70};
      }
      check_case<TypeParam>(c);
      if (!modifiers) check_deterministic<TypeParam>(c);
    }
}

// Packed K/V blocks kept by a thread across the tasks of one KV head (Note [packed K/V reuse] in
// detail/core/forward.hpp): the same shapes twice with other inputs (a new call never reads the blocks
// of an earlier one), causal (a task's last block, cut short, is packed again when a later task needs
// more keys), and d = dv = 2048 with 1100 keys, past the 16 MiB kept per thread (1024 keys), so that
// later blocks are packed per task next to kept ones, and d = dv = 1024 with 2100 keys under a window (a
// ring of kept blocks); each against the reference and for any thread count and task order.
TYPED_TEST_P(attention_suite, kept_packed_blocks) {
  attention_case c;
  c.sq = 200;
  c.skv = 300;
  c.hq = 4;
  c.hkv = 1;  // one KV head: a call's first task is of the KV head an earlier call's last task had
  c.d = c.dv = 64;
  for (const bool causal : {false, true})
    for (const std::uint64_t seed : {1300u, 1301u}) {
      c.causal = causal;
      c.seed = seed;
      check_case<TypeParam>(c);
    }
  check_deterministic<TypeParam>(c);
  attention_case wide;
  wide.sq = gqa::test::reduced ? 100 : 130;
  wide.skv = 1100;
  wide.hq = 2;
  wide.hkv = 1;
  wide.d = wide.dv = 2048;
  wide.causal = true;
  wide.seed = 1302;
  check_case<TypeParam>(wide);
  if (!gqa::test::reduced) check_deterministic<TypeParam>(wide);
  // Windows over more blocks than are kept (2100 keys of d 1024: 4 of 5 blocks of 512 keys kept on AVX-512,
  // 8 of 9 of 256 on AVX2, 32 of 33 of 64 on scalar and NEON): the kept blocks as a ring (Note [kept blocks
  // as a ring]), causal and two-sided; the later query blocks' keys reuse the slots of the earlier (200
  // queries in the reduced builds: 2 or more query blocks on every ISA, half the time under qemu).
  wide.sq = gqa::test::reduced ? 200 : 400;
  wide.skv = 2100;
  wide.d = wide.dv = 1024;
  for (const bool causal : {true, false}) {
    wide.causal = causal;
    wide.mods.window_left = causal ? 250 : 150;
    wide.mods.window_right = causal ? -1 : 60;
    wide.seed = causal ? 1303 : 1304;
    check_case<TypeParam>(wide);
    if (!gqa::test::reduced && causal) check_deterministic<TypeParam>(wide);
  }
}

REGISTER_TYPED_TEST_SUITE_P(attention_suite, shapes_match_reference, decode_units, padded_kv_lengths, fully_masked_rows_are_zero,
                            mla_and_unequal_head_dims, unequal_empty_and_noncontiguous_groups, layouts_and_strides,
                            split_kv_decode, large_tiles, short_last_query_block, large_magnitude_scores,
                            sliding_window, windows_on_the_block_grid, logit_softcap, sinks_and_alibi,
                            kept_packed_blocks);
