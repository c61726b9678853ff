// tests/suites/lowp_suite.hpp: K and V stored as bf16 and f16 (gqa/numeric.hpp) through gqa::attend<Isa>,
// every registered variant's gqa::forward<Isa>, paged caches and ragged batches: each call against the
// double reference fed the same rounded K/V (Note [16-bit K/V tolerance] in tests/support/tolerance.hpp),
// and bit for bit against the same call on the K/V widened to float; odd sizes on the decode, direct,
// split-KV and tiled (prefill) paths; NaN and inf in 16-bit K/V as in fp32 (docs/design.md, "Non-finite
// inputs"); the checks (check_finite, aliasing across element sizes). Q and O in the K/V's 16-bit type
// too: bit for bit the fp32 call on the widened Q/K/V with its output rounded once (attend, every variant,
// paged, ragged, NaN/inf in Q, checks; mixed types do not compile), with options.bf16_products = false; and
// bf16 Q/K/V with the bf16 products (AMX tiles on AVX-512 where the CPU has them, Note [bf16 tiles]): every
// mask and shape against the reference within Note [bf16 products tolerance], NaN/inf as the fp32
// products, paged and ragged bit for bit the dense call, every variant, 1 and 2 threads bit for bit. int8
// caches as pages (gqa::paged_q8_kv) and as ragged batches: the dense int8 call's bits (with the int8
// products on pages under 64 slots, its tolerance), their checks and NaN scales.
// Compiled once per ISA: every helper stays in `namespace {}`.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <gqa/gqa.hpp>
#include <gqa/reference/attention.hpp>

#include "support/expect.hpp"
#include "support/isa_suite.hpp"
#include "support/tolerance.hpp"

namespace {

using gqa::index_t;

constexpr float k_nan = std::numeric_limits<float>::quiet_NaN();
constexpr float k_inf = std::numeric_limits<float>::infinity();

/// Equal bits, or both NaN (a NaN's payload is not part of any contract).
bool same_or_both_nan(float a, float b) { return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, sizeof a) == 0; }

/// The index of the first element where a and b differ (same_or_both_nan), or -1.
long first_difference(const std::vector<float>& a, const std::vector<float>& b) {
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!same_or_both_nan(a[i], b[i])) return static_cast<long>(i);
  return a.size() == b.size() ? -1 : static_cast<long>(std::min(a.size(), b.size()));
}

using gqa::test::narrowed;

/// The index of the first element where the 16-bit o16 is not o32 rounded to T (equal bits, or both NaN),
/// or -1.
template <class T>
long first_unrounded(const std::vector<T>& o16, const std::vector<float>& o32) {
  if (o16.size() != o32.size()) return static_cast<long>(std::min(o16.size(), o32.size()));
  for (std::size_t i = 0; i < o16.size(); ++i) {
    const float a = gqa::to_float(o16[i]);
    const bool same = (std::isnan(a) && std::isnan(o32[i])) || o16[i].bits == T(o32[i]).bits;
    if (!same) return static_cast<long>(i);
  }
  return -1;
}

/// One attend() call: shapes, options; K and V BSHD or BHSD.
struct lowp_case {
  index_t b = 1, sq = 1, skv = 1, hq = 1, hkv = 1, d = 16, dv = 16;
  bool causal = false;
  std::vector<index_t> kv_lengths;
  std::vector<index_t> kv_of_q;  // empty: uniform
  index_t window_left = -1;
  bool bhsd_kv = false;
  float lo = -1.0f, hi = 1.0f;
  std::uint64_t seed = 1;

  gqa::head_map map() const { return kv_of_q.empty() ? gqa::head_map::uniform(hq, hkv) : gqa::head_map(kv_of_q, hkv); }
  std::string describe() const {
    std::ostringstream os;
    os << "b=" << b << " sq=" << sq << " skv=" << skv << " hq=" << hq << " hkv=" << hkv << " d=" << d << " dv=" << dv
       << (causal ? " causal" : "") << (bhsd_kv ? " bhsd K/V" : " bshd K/V");
    if (!kv_lengths.empty()) os << " kv_lengths[0]=" << kv_lengths[0];
    if (window_left >= 0) os << " window_left=" << window_left;
    if (!kv_of_q.empty()) os << " non-uniform map";
    os << " seed=" << seed;
    return os.str();
  }
};

/// A K or V tensor of the case in layout BSHD or BHSD over a buffer of element type E.
template <class Case, class E>
gqa::tensor_view<const E> kv_view(const Case& c, const std::vector<E>& x, index_t d) {
  return c.bhsd_kv ? gqa::bhsd<const E>(x.data(), c.b, c.hkv, c.skv, d) : gqa::bshd<const E>(x.data(), c.b, c.skv, c.hkv, d);
}

/// LSE lse against the reference's (−inf exactly where the reference's is infinite: rows that see no key),
/// within k_error_factor times the naive fp32 yardstick's error plus k_error_floor of the largest |LSE|.
template <class Ref, class Naive>
void expect_lse_near_reference(const std::vector<float>& lse, const Ref& ref_lse, const Naive& naive_lse) {
  double lerr = 0.0, lnaive = 0.0, lmax = 1.0;
  for (std::size_t i = 0; i < lse.size(); ++i) {
    if (std::isinf(ref_lse[i])) {
      EXPECT_EQ(lse[i], -k_inf) << "LSE " << i;
      continue;
    }
    lerr = std::max(lerr, std::fabs(static_cast<double>(lse[i]) - ref_lse[i]));
    lnaive = std::max(lnaive, std::fabs(static_cast<double>(naive_lse[i]) - ref_lse[i]));
    lmax = std::max(lmax, std::fabs(ref_lse[i]));
  }
  EXPECT_LE(lerr, gqa::test::k_error_factor * lnaive + gqa::test::k_error_floor * lmax);
}

/// Checks output o and LSE lse of case c against the double reference fed K/V kw, vw (floats in the case's
/// layout: the values the low-precision K/V hold), within Note [attention tolerance], plus Note [int8 P·V
/// tolerance]'s bound when int8_pv; returns the output bound used.
double expect_near_reference(const lowp_case& c, gqa::tensor_view<const float> q, const gqa::head_map& map,
                             const std::vector<float>& kw, const std::vector<float>& vw, const std::vector<float>& o,
                             const std::vector<float>& lse, bool int8_pv = false) {
  const auto no = o.size();
  // The reference and the naive yardstick on the same rounded K/V, in logical BSHD order.
  const auto kd = gqa::test::logical_order(kv_view(c, kw, c.d)), vd = gqa::test::logical_order(kv_view(c, vw, c.dv));
  const auto kb = gqa::bshd<const float>(kd.data(), c.b, c.skv, c.hkv, c.d);
  const auto vb = gqa::bshd<const float>(vd.data(), c.b, c.skv, c.hkv, c.dv);
  const double scale = 1.0 / std::sqrt(static_cast<double>(static_cast<float>(c.d)));
  gqa::reference::modifiers mods;
  mods.window_left = c.window_left;
  const auto kv_of_q = map.kv_of_q();
  const auto ref = gqa::reference::attention(q, kb, vb, kv_of_q, scale, c.causal, c.kv_lengths, mods);
  const auto naive = gqa::test::naive_fp32(q, kb, vb, kv_of_q, static_cast<float>(scale), c.causal, c.kv_lengths, mods);
  const double tol = gqa::test::attention_tolerance(naive.o, ref.o, vw) +
                     (int8_pv ? gqa::test::int8_pv_bound(q, kb, vb, kv_of_q, scale, c.causal, c.kv_lengths, mods) : 0.0);
  double err = 0.0;
  for (std::size_t i = 0; i < no; ++i) {
    if (!std::isfinite(o[i])) {
      ADD_FAILURE() << "output " << i << " = " << o[i];
      return tol;
    }
    err = std::max(err, std::fabs(static_cast<double>(o[i]) - ref.o[i]));
  }
  EXPECT_LE(err, tol);
  expect_lse_near_reference(lse, ref.lse, naive.lse);
  return tol;
}

/// The outputs and LSEs of case c run with low-precision K/V views k, v, and with the floats they hold
/// (kw, vw, in the case's layout).
struct two_runs {
  std::vector<float> o, o32, lse, lse32;
};
template <class Isa, class KV>
two_runs run_both(const lowp_case& c, gqa::tensor_view<const float> q, const gqa::head_map& map, const KV& k,
                  const KV& v, const std::vector<float>& kw, const std::vector<float>& vw) {
  const auto no = static_cast<std::size_t>(c.b * c.sq * c.hq * c.dv), nl = static_cast<std::size_t>(c.b * c.hq * c.sq);
  two_runs r{std::vector<float>(no, k_nan), std::vector<float>(no, k_nan), std::vector<float>(nl, k_nan),
             std::vector<float>(nl, k_nan)};
  gqa::attention_options opt;
  opt.causal = c.causal;
  opt.kv_lengths = c.kv_lengths;
  opt.window_left = c.window_left;
  opt.lse = r.lse;
  // int8 K/V: the fp32 products on the dequantised K (the int8 products' own tests: int8_products_*).
  opt.int8_products = false;
  gqa::attend<Isa>(q, k, v, gqa::bshd(r.o.data(), c.b, c.sq, c.hq, c.dv), map, opt);
  opt.lse = r.lse32;
  gqa::attend<Isa>(q, kv_view(c, kw, c.d), kv_view(c, vw, c.dv), gqa::bshd(r.o32.data(), c.b, c.sq, c.hq, c.dv), map, opt);
  return r;
}

/// Runs the case with T K/V and with the same values widened to float; checks the two bit for bit (output
/// and LSE) and the 16-bit one against the reference within Note [16-bit K/V tolerance].
template <class Isa, class T>
void check_case(const lowp_case& c) {
  SCOPED_TRACE(std::string(gqa::element_name<T>) + " K/V: " + c.describe());
  const auto nq = static_cast<std::size_t>(c.b * c.sq * c.hq * c.d);
  const auto nk = static_cast<std::size_t>(c.b * c.skv * c.hkv * c.d), nv = static_cast<std::size_t>(c.b * c.skv * c.hkv * c.dv);
  const auto qd = gqa::test::random_floats(nq, c.seed * 3, c.lo, c.hi);
  const auto kw = gqa::test::rounded_kv<T>(gqa::test::random_floats(nk, c.seed * 3 + 1, c.lo, c.hi));
  const auto vw = gqa::test::rounded_kv<T>(gqa::test::random_floats(nv, c.seed * 3 + 2, c.lo, c.hi));
  const auto k16 = narrowed<T>(kw), v16 = narrowed<T>(vw);
  const auto q = gqa::bshd<const float>(qd.data(), c.b, c.sq, c.hq, c.d);
  const gqa::head_map map = c.map();
  const two_runs r = run_both<Isa>(c, q, map, kv_view(c, k16, c.d), kv_view(c, v16, c.dv), kw, vw);
  EXPECT_EQ(first_difference(r.o, r.o32), -1) << "16-bit output differs from the fp32 call on the widened K/V";
  EXPECT_EQ(first_difference(r.lse, r.lse32), -1) << "16-bit LSE differs from the fp32 call on the widened K/V";
  expect_near_reference(c, q, map, kw, vw, r.o, r.lse);
}

/// Runs the case with Q, K, V and O all of type T, and with the float values of Q, K, V: the 16-bit output
/// is the float output rounded to T, element for element, bit for bit; the LSEs (float in both) are equal.
template <class Isa, class T>
void check_case_qo(const lowp_case& c) {
  SCOPED_TRACE(std::string(gqa::element_name<T>) + " Q/K/V/O: " + c.describe());
  const auto nq = static_cast<std::size_t>(c.b * c.sq * c.hq * c.d), no = static_cast<std::size_t>(c.b * c.sq * c.hq * c.dv);
  const auto nk = static_cast<std::size_t>(c.b * c.skv * c.hkv * c.d), nv = static_cast<std::size_t>(c.b * c.skv * c.hkv * c.dv);
  const auto nl = static_cast<std::size_t>(c.b * c.hq * c.sq);
  const auto qw = gqa::test::rounded_kv<T>(gqa::test::random_floats(nq, c.seed * 3, c.lo, c.hi));
  const auto kw = gqa::test::rounded_kv<T>(gqa::test::random_floats(nk, c.seed * 3 + 1, c.lo, c.hi));
  const auto vw = gqa::test::rounded_kv<T>(gqa::test::random_floats(nv, c.seed * 3 + 2, c.lo, c.hi));
  const auto q16 = narrowed<T>(qw), k16 = narrowed<T>(kw), v16 = narrowed<T>(vw);
  const gqa::head_map map = c.map();
  std::vector<T> o16(no, T(k_nan));
  std::vector<float> o32(no, k_nan), lse16(nl, k_nan), lse32(nl, k_nan);
  gqa::attention_options opt;
  opt.causal = c.causal;
  opt.kv_lengths = c.kv_lengths;
  opt.window_left = c.window_left;
  opt.lse = lse16;
  // The fp32 products on the widened values (bf16 tiles off): bit for bit the fp32 call. The bf16 tiles'
  // own tests: the bf16_products_* tests.
  opt.bf16_products = false;
  gqa::attend<Isa>(gqa::bshd<const T>(q16.data(), c.b, c.sq, c.hq, c.d), kv_view(c, k16, c.d), kv_view(c, v16, c.dv),
                   gqa::bshd(o16.data(), c.b, c.sq, c.hq, c.dv), map, opt);
  opt.lse = lse32;
  gqa::attend<Isa>(gqa::bshd<const float>(qw.data(), c.b, c.sq, c.hq, c.d), kv_view(c, kw, c.d), kv_view(c, vw, c.dv),
                   gqa::bshd(o32.data(), c.b, c.sq, c.hq, c.dv), map, opt);
  EXPECT_EQ(first_unrounded(o16, o32), -1) << "16-bit output is not the fp32 call's on the widened Q/K/V, rounded";
  EXPECT_EQ(first_difference(lse16, lse32), -1) << "LSE differs from the fp32 call's on the widened Q/K/V";
}

/// Odd sizes on every path: decode (direct, key-major over several KV heads, an unused KV head), split-KV
/// decode, the direct path for few rows, and the tiled (packed) prefill path; d and d_v below, between
/// and above vector widths.
std::vector<lowp_case> attend_cases() {
  std::vector<lowp_case> cases;
  std::uint64_t seed = 1;
  // A case of these extents (d_v = d unless given), for the caller to adjust.
  auto add = [&](index_t b, index_t sq, index_t skv, index_t hq, index_t hkv, index_t d, index_t dv = -1) -> lowp_case& {
    lowp_case c;
    c.b = b, c.sq = sq, c.skv = skv, c.hq = hq, c.hkv = hkv, c.d = d, c.dv = dv < 0 ? d : dv;
    c.seed = seed++;
    cases.push_back(c);
    return cases.back();
  };
  const std::vector<index_t> dims = gqa::test::reduced ? std::vector<index_t>{1, 7, 37} : std::vector<index_t>{1, 7, 17, 37, 64, 130};
  for (const index_t d : dims) {
    // Decode: one position, 4 query heads per KV head, several KV heads (key-major scores).
    for (const index_t skv : {1, 13, 130}) add(2, 1, skv, 8, 2, d);
    // Prefill: 67 positions x 4 heads per KV head: the tiled path, causal staircase, key blocks cut.
    add(1, 67, 150, 4, 1, d).causal = true;
  }
  // d_v != d; kv_lengths (padding); K/V in BHSD; MHA decode with a few positions (direct, key-major).
  {
    lowp_case& c = add(2, 3, 77, 6, 2, 16, 24);
    c.causal = true;
    c.kv_lengths = {77, 70};
  }
  {
    lowp_case& c = add(2, 1, 90, 8, 4, 40);
    c.kv_lengths = {0, 89};
    c.bhsd_kv = true;
  }
  add(1, 5, 200, 3, 3, 33).causal = true;
  // One KV head, few rows: the direct path's own scores (dot products over 8 keys at a time).
  add(1, 3, 100, 4, 1, 23).causal = true;
  {
    lowp_case& c = add(2, 70, 70, 2, 2, 20, 12);
    c.causal = true;
    c.bhsd_kv = true;
  }
  // A KV head no query head uses (KDGQA/DGQA maps): the decode walk touches its lines but reads no scores.
  add(1, 1, 100, 6, 3, 24).kv_of_q = {0, 0, 0, 0, 2, 2};
  // A sliding window, and a split-KV decode (few tasks, >= 2048 keys).
  {
    lowp_case& c = add(1, 40, 300, 8, 2, 24);
    c.causal = true;
    c.window_left = 50;
  }
  add(1, 1, gqa::test::reduced ? 2100 : 5000, 4, 4, 40);
  // Large values (f16 holds them up to 65504): scores of magnitude ~10^2 x d.
  {
    lowp_case& c = add(1, 2, 60, 4, 2, 9);
    c.lo = -20.0f;
    c.hi = 20.0f;
  }
  return cases;
}

// --- int8 K/V (gqa::q8_view) ---

/// An int8 K or V of a case: x quantised by gqa::quantize_q8 in the case's layout (the scales a d = 1 view
/// of the same layout), and the floats it stands for (gqa::dequantize_q8, same layout).
struct q8_kv {
  std::vector<std::int8_t> values;
  std::vector<float> scales, deq;
  gqa::q8_view view;
};

q8_kv quantised(const lowp_case& c, const std::vector<float>& x, index_t d) {
  q8_kv r;
  r.values.resize(x.size());
  r.scales.resize(static_cast<std::size_t>(c.b * c.skv * c.hkv));
  r.deq.resize(x.size());
  const auto at = [&](auto* p, index_t n) {
    return c.bhsd_kv ? gqa::bhsd(p, c.b, c.hkv, c.skv, n) : gqa::bshd(p, c.b, c.skv, c.hkv, n);
  };
  gqa::quantize_q8(kv_view(c, x, d), at(r.values.data(), d), at(r.scales.data(), 1));
  r.view = {at(static_cast<const std::int8_t*>(r.values.data()), d), at(static_cast<const float*>(r.scales.data()), 1)};
  gqa::dequantize_q8(r.view, at(r.deq.data(), d));
  return r;
}

/// Runs the case with int8 K/V and with their dequantised floats; checks the int8 call against the
/// reference fed the dequantised K/V and against the fp32 call, both within Note [int8 K/V tolerance];
/// bit for bit when `tiled` (every task on the tiled path, where packing dequantises exactly).
template <class Isa>
void check_case_q8(const lowp_case& c, bool tiled = false) {
  SCOPED_TRACE("int8 K/V: " + c.describe());
  const auto nq = static_cast<std::size_t>(c.b * c.sq * c.hq * c.d);
  const auto nk = static_cast<std::size_t>(c.b * c.skv * c.hkv * c.d), nv = static_cast<std::size_t>(c.b * c.skv * c.hkv * c.dv);
  const auto qd = gqa::test::random_floats(nq, c.seed * 3, c.lo, c.hi);
  const q8_kv k8 = quantised(c, gqa::test::random_floats(nk, c.seed * 3 + 1, c.lo, c.hi), c.d);
  const q8_kv v8 = quantised(c, gqa::test::random_floats(nv, c.seed * 3 + 2, c.lo, c.hi), c.dv);
  const auto q = gqa::bshd<const float>(qd.data(), c.b, c.sq, c.hq, c.d);
  const gqa::head_map map = c.map();
  const two_runs r = run_both<Isa>(c, q, map, k8.view, v8.view, k8.deq, v8.deq);
  const double tol = expect_near_reference(c, q, map, k8.deq, v8.deq, r.o, r.lse);
  if (tiled) {
    EXPECT_EQ(first_difference(r.o, r.o32), -1) << "int8 output differs from the fp32 call on the dequantised K/V";
    EXPECT_EQ(first_difference(r.lse, r.lse32), -1) << "int8 LSE differs from the fp32 call on the dequantised K/V";
  } else {
    double diff = 0.0;
    for (std::size_t i = 0; i < r.o.size(); ++i) diff = std::max(diff, std::fabs(static_cast<double>(r.o[i]) - r.o32[i]));
    EXPECT_LE(diff, tol) << "int8 against the fp32 call on the dequantised K/V";
  }
}

template <class Isa>
class lowp_suite : public gqa::test::isa_test<Isa> {};
TYPED_TEST_SUITE_P(lowp_suite);

TYPED_TEST_P(lowp_suite, attend_bf16_matches_reference_and_fp32_bitwise) {
  for (const lowp_case& c : attend_cases()) check_case<TypeParam, gqa::bf16>(c);
}
TYPED_TEST_P(lowp_suite, attend_f16_matches_reference_and_fp32_bitwise) {
  for (const lowp_case& c : attend_cases()) check_case<TypeParam, gqa::f16>(c);
}

TYPED_TEST_P(lowp_suite, attend_bf16_qo_is_rounded_fp32_bitwise) {
  for (const lowp_case& c : attend_cases()) check_case_qo<TypeParam, gqa::bf16>(c);
}
TYPED_TEST_P(lowp_suite, attend_f16_qo_is_rounded_fp32_bitwise) {
  for (const lowp_case& c : attend_cases()) check_case_qo<TypeParam, gqa::f16>(c);
}

// Note [decode first loads] (detail/core/decode.hpp): on AMD CPUs a decode call whose fp32 K/V reach 24 MiB
// first loads every line of each step's K rows and of each unit's V rows; 16-bit and int8 calls of that
// size prefetch the next step's lines instead, or on Zen 4 load the lines of the keys some way ahead (Note
// [decode loads ahead]). bf16 K/V of 24 MiB give the bits of the fp32 call on their widened values (48 MiB:
// with first loads, on AMD), and both match the reference; with a KV head no query head uses, and with two
// causal positions; int8 K/V of 24 MiB match the reference (on pages and in ragged batches:
// decode_reads_of_large_int8_pages). Elsewhere no call reads ahead and the test checks the same equalities.
TYPED_TEST_P(lowp_suite, decode_first_loads_keep_bits) {
  lowp_case c;
  c.skv = 6144;  // 6144 keys x 8 KV heads x (128 + 128) x 2 bytes = 24 MiB of bf16
  c.hq = 16;
  c.hkv = 8;
  c.d = c.dv = 128;
  c.seed = 4242;
  check_case<TypeParam, gqa::bf16>(c);
  if (gqa::test::reduced) return;
  c.sq = 2;
  c.causal = true;
  c.kv_of_q = {0, 0, 1, 1, 2, 2, 4, 4, 4, 5, 5, 6, 6, 6, 7, 7};  // KV head 3 unused
  c.seed = 4243;
  check_case<TypeParam, gqa::bf16>(c);
  // int8: 12288 keys x 8 KV heads x (128 + 128) bytes = 24 MiB.
  lowp_case c8;
  c8.skv = 12288;
  c8.hq = 16;
  c8.hkv = 8;
  c8.d = c8.dv = 128;
  c8.seed = 4244;
  check_case_q8<TypeParam>(c8);
}

TYPED_TEST_P(lowp_suite, attend_int8_matches_reference_and_fp32) {
  for (const lowp_case& c : attend_cases()) check_case_q8<TypeParam>(c);
  // 40 query heads per KV head: every task is tiled on every ISA (more than 32 rows per KV head even for
  // one position), so the int8 call is the fp32 call on the dequantised K/V, bit for bit.
  std::uint64_t seed = 900;
  for (const index_t d : {index_t{7}, index_t{37}})
    for (const bool bhsd : {false, true}) {
      lowp_case c;
      c.b = 2, c.sq = 5, c.skv = 150, c.hq = 40, c.hkv = 1, c.d = d, c.dv = d + 3, c.causal = true, c.bhsd_kv = bhsd;
      c.kv_lengths = {150, 97};
      c.seed = seed++;
      check_case_q8<TypeParam>(c, /*tiled=*/true);
    }
}

/// The name of K/V element type T in messages: "bf16", "f16", "int8".
template <class T>
std::string kv_name() {
  if constexpr (std::is_same_v<T, std::int8_t>) {
    return "int8";
  } else {
    return gqa::element_name<T>;
  }
}

/// One case of the variant checks: a registered policy P (the tag `t` of gqa::for_each_variant) on layer m,
/// its heads h, b sequences of sq queries over skv keys of dimension d, causal or not, and the inputs' seed.
struct variant_case {
  gqa::model_shape m;
  gqa::variant_heads h;
  index_t b, sq, skv, d;
  bool causal;
  std::uint64_t seed;
  std::string trace(std::string_view variant, const std::string& types) const {
    return std::string(variant) + " with " + types + ", H = " + std::to_string(m.heads) + ", G = " +
           std::to_string(m.groups) + ", d = " + std::to_string(d) + ", sq = " + std::to_string(sq) +
           (causal ? ", causal" : "");
  }
  /// Random keys with uneven norms per head, so that KDGQA/DGQA plan uneven groups.
  std::vector<float> keys() const {
    auto k = gqa::test::random_floats(static_cast<std::size_t>(b * skv * h.kv_in * d), seed + 1);
    for (std::size_t i = 0; i < k.size(); ++i)
      k[i] *= 1.0f + static_cast<float>((i / static_cast<std::size_t>(d)) % static_cast<std::size_t>(h.kv_in));
    return k;
  }
};

/// fn(t, c) for every registered variant (t: its gqa::for_each_variant tag) and every case c: three layers,
/// causal or not, decode (sq 1: the direct path) and prefill (sq 40: the tiled path); seeds from `seed` on.
template <class Fn>
void for_each_variant_case(std::uint64_t seed, Fn&& fn) {
  const gqa::model_shape layers[] = {{8, 2, 16, 5}, {12, 4, 17, 6}, {4, 1, 33, 8}};
  gqa::for_each_variant([&](auto t) {
    using P = typename decltype(t)::type;
    std::uint64_t s = seed;
    for (const gqa::model_shape& m : layers)
      for (const bool causal : {false, true})
        for (const index_t sq : {index_t{1}, index_t{40}}) {
          s += 10;
          fn(t, variant_case{m, P::heads_for(m), 2, sq, sq == 1 ? 70 : 45, m.d, causal, s});
        }
  });
}

/// Every registered variant through gqa::forward<Isa> with T K/V against the same variant (a fresh
/// default policy, so PGQA draws the same noise and DGQA starts from the same state) on the widened K/V,
/// bit for bit: the fp32 path is checked against the reference variant by variant in registry_suite.
/// T = std::int8_t: the K/V quantised (gqa::q8_view) against the variant on the dequantised floats, within
/// 8·d·u·max(1, max|V|) (u = 2^-24): the direct path's scales add one rounding to each term of the d-long
/// dot product and of the P·V sum (Note [int8 K/V tolerance]); measured up to ~2.5 u on these shapes.
template <class Isa, class T>
void check_variants() {
  for_each_variant_case(500, [&](auto t, const variant_case& c) {
          using P = typename decltype(t)::type;
          const gqa::model_shape& m = c.m;
          const gqa::variant_heads& h = c.h;
          const index_t b = c.b, sq = c.sq, skv = c.skv, d = c.d;
          const bool causal = c.causal;
          const std::uint64_t seed = c.seed;
          SCOPED_TRACE(c.trace(P::name, std::string(kv_name<T>()) + " K/V"));
          const auto qd = gqa::test::random_floats(static_cast<std::size_t>(b * sq * h.hq * d), seed);
          const auto kr = c.keys();
          const auto vr = gqa::test::random_floats(static_cast<std::size_t>(b * skv * h.kv_in * d), seed + 2);
          const auto q = gqa::bshd<const float>(qd.data(), b, sq, h.hq, d);
          gqa::attention_options opt;
          opt.causal = causal;
          opt.int8_products = false;  // the fp32 products (the int8 products: int8_products_every_variant)
          std::vector<float> olow(static_cast<std::size_t>(b * sq * h.hq * d), k_nan), o32 = olow;
          // The variant on K/V k, v (low precision) into olow, and on their float values kw, vw into o32.
          const auto run = [&](const auto& k, const auto& v, const std::vector<float>& kw, const std::vector<float>& vw) {
            gqa::with_default_policy<P>(m, [&](P& p) {
              gqa::forward<Isa>(p, q, k, v, gqa::bshd(olow.data(), b, sq, h.hq, d), opt);
            });
            gqa::with_default_policy<P>(m, [&](P& p) {
              gqa::forward<Isa>(p, q, gqa::bshd<const float>(kw.data(), b, skv, h.kv_in, d),
                                gqa::bshd<const float>(vw.data(), b, skv, h.kv_in, d), gqa::bshd(o32.data(), b, sq, h.hq, d), opt);
            });
          };
          if constexpr (std::is_same_v<T, std::int8_t>) {
            lowp_case c;
            c.b = b, c.skv = skv, c.hkv = h.kv_in;
            const q8_kv k8 = quantised(c, kr, d), v8 = quantised(c, vr, d);
            run(k8.view, v8.view, k8.deq, v8.deq);
            double diff = 0.0, vmax = 1.0;
            for (std::size_t i = 0; i < olow.size(); ++i) diff = std::max(diff, std::fabs(static_cast<double>(olow[i]) - o32[i]));
            for (const float x : v8.deq) vmax = std::max(vmax, static_cast<double>(std::fabs(x)));
            EXPECT_LE(diff, 8.0 * static_cast<double>(d) * 0x1p-24 * vmax);
          } else {
            const auto kw = gqa::test::rounded_kv<T>(kr), vw = gqa::test::rounded_kv<T>(vr);
            const auto k16 = narrowed<T>(kw), v16 = narrowed<T>(vw);
            run(gqa::bshd<const T>(k16.data(), b, skv, h.kv_in, d), gqa::bshd<const T>(v16.data(), b, skv, h.kv_in, d), kw, vw);
            EXPECT_EQ(first_difference(olow, o32), -1);
          }
          for (const float x : olow) ASSERT_TRUE(std::isfinite(x));
  });
}

/// Every registered variant through gqa::forward<Isa> with Q, K, V and O all of type T against the same
/// variant (a fresh default policy) on the widened Q, K, V with float O: the 16-bit output is the float
/// one rounded to T, bit for bit (WGQA combines and PGQA perturbs in fp32 before the single rounding).
template <class Isa, class T>
void check_variants_qo() {
  for_each_variant_case(700, [&](auto t, const variant_case& c) {
          using P = typename decltype(t)::type;
          const gqa::model_shape& m = c.m;
          const gqa::variant_heads& h = c.h;
          const index_t b = c.b, sq = c.sq, skv = c.skv, d = c.d;
          const bool causal = c.causal;
          const std::uint64_t seed = c.seed;
          SCOPED_TRACE(c.trace(P::name, std::string(gqa::element_name<T>) + " Q/K/V/O"));
          const auto qw = gqa::test::rounded_kv<T>(gqa::test::random_floats(static_cast<std::size_t>(b * sq * h.hq * d), seed));
          const auto kr = c.keys();
          const auto kw = gqa::test::rounded_kv<T>(kr);
          const auto vw = gqa::test::rounded_kv<T>(gqa::test::random_floats(static_cast<std::size_t>(b * skv * h.kv_in * d), seed + 2));
          const auto q16 = narrowed<T>(qw), k16 = narrowed<T>(kw), v16 = narrowed<T>(vw);
          gqa::attention_options opt;
          opt.causal = causal;
          opt.bf16_products = false;  // the fp32 products: bit for bit (the bf16 tiles: bf16_products_* tests)
          const auto no = static_cast<std::size_t>(b * sq * h.hq * d);
          std::vector<T> o16(no, T(k_nan));
          std::vector<float> o32(no, k_nan);
          gqa::with_default_policy<P>(m, [&](P& p) {
            gqa::forward<Isa>(p, gqa::bshd<const T>(q16.data(), b, sq, h.hq, d), gqa::bshd<const T>(k16.data(), b, skv, h.kv_in, d),
                              gqa::bshd<const T>(v16.data(), b, skv, h.kv_in, d), gqa::bshd(o16.data(), b, sq, h.hq, d), opt);
          });
          gqa::with_default_policy<P>(m, [&](P& p) {
            gqa::forward<Isa>(p, gqa::bshd<const float>(qw.data(), b, sq, h.hq, d), gqa::bshd<const float>(kw.data(), b, skv, h.kv_in, d),
                              gqa::bshd<const float>(vw.data(), b, skv, h.kv_in, d), gqa::bshd(o32.data(), b, sq, h.hq, d), opt);
          });
          EXPECT_EQ(first_unrounded(o16, o32), -1);
          for (const T x : o16) ASSERT_TRUE(std::isfinite(gqa::to_float(x)));
  });
}

TYPED_TEST_P(lowp_suite, every_variant_bf16_matches_fp32_bitwise) { check_variants<TypeParam, gqa::bf16>(); }
TYPED_TEST_P(lowp_suite, every_variant_bf16_qo_is_rounded_fp32_bitwise) { check_variants_qo<TypeParam, gqa::bf16>(); }
TYPED_TEST_P(lowp_suite, every_variant_f16_qo_is_rounded_fp32_bitwise) { check_variants_qo<TypeParam, gqa::f16>(); }
TYPED_TEST_P(lowp_suite, every_variant_f16_matches_fp32_bitwise) { check_variants<TypeParam, gqa::f16>(); }
TYPED_TEST_P(lowp_suite, every_variant_int8_matches_fp32) { check_variants<TypeParam, std::int8_t>(); }

/// NaN and inf stored in 16-bit K/V behave as in fp32 (Note [non-finite inputs]): the output equals the fp32
/// call's on the widened K/V (NaN where it is NaN), and the rules hold: a NaN in a visible key makes the
/// rows that see it NaN; an inf in V makes that column of the rows that see it non-finite; non-finite
/// values a row does not see (past kv_lengths, past the causal horizon) never reach it.
template <class Isa, class T>
void check_nonfinite(index_t sq) {
  const index_t b = 2, skv = 80, hq = 4, hkv = 2, d = 19;
  SCOPED_TRACE(std::string(gqa::element_name<T>) + " K/V, sq = " + std::to_string(sq));
  const auto qd = gqa::test::random_floats(static_cast<std::size_t>(b * sq * hq * d), 71);
  auto kw = gqa::test::rounded_kv<T>(gqa::test::random_floats(static_cast<std::size_t>(b * skv * hkv * d), 72));
  auto vw = gqa::test::rounded_kv<T>(gqa::test::random_floats(static_cast<std::size_t>(b * skv * hkv * d), 73));
  auto at = [&](index_t ib, index_t j, index_t g, index_t c) { return static_cast<std::size_t>(((ib * skv + j) * hkv + g) * d + c); };
  const index_t len1 = 60;          // batch 1 sees keys [0, 60)
  const index_t nan_key = skv - sq + sq / 2;  // batch 0: the causal horizon hides it from the first rows
  kw[at(0, nan_key, 0, 3)] = k_nan;  // KV head 0 of batch 0
  vw[at(0, 5, 1, 2)] = k_inf;        // KV head 1 of batch 0, a key every row sees
  kw[at(1, 70, 0, 0)] = k_nan;       // past batch 1's length: never read
  vw[at(1, 65, 1, 4)] = -k_inf;
  const auto k16 = narrowed<T>(kw), v16 = narrowed<T>(vw);
  std::vector<index_t> lengths{skv, len1};
  gqa::attention_options opt;
  opt.causal = true;
  opt.kv_lengths = lengths;
  const auto q = gqa::bshd<const float>(qd.data(), b, sq, hq, d);
  std::vector<float> o16(static_cast<std::size_t>(b * sq * hq * d), 0.0f), o32 = o16;
  const auto map = gqa::head_map::uniform(hq, hkv);
  gqa::attend<Isa>(q, gqa::bshd<const T>(k16.data(), b, skv, hkv, d), gqa::bshd<const T>(v16.data(), b, skv, hkv, d),
                   gqa::bshd(o16.data(), b, sq, hq, d), map, opt);
  gqa::attend<Isa>(q, gqa::bshd<const float>(kw.data(), b, skv, hkv, d), gqa::bshd<const float>(vw.data(), b, skv, hkv, d),
                   gqa::bshd(o32.data(), b, sq, hq, d), map, opt);
  EXPECT_EQ(first_difference(o16, o32), -1);
  for (index_t ib = 0; ib < b; ++ib)
    for (index_t i = 0; i < sq; ++i)
      for (index_t h = 0; h < hq; ++h)
        for (index_t c = 0; c < d; ++c) {
          const float x = o16[static_cast<std::size_t>(((ib * sq + i) * hq + h) * d + c)];
          const index_t p = i + (lengths[static_cast<std::size_t>(ib)] - sq);  // the row's last visible key
          const bool sees_nan_key = ib == 0 && h / (hq / hkv) == 0 && p >= nan_key;
          const bool inf_column = ib == 0 && h / (hq / hkv) == 1 && c == 2;
          if (sees_nan_key) {
            EXPECT_TRUE(std::isnan(x)) << "b " << ib << " row " << i << " head " << h << " col " << c;
          } else if (inf_column) {
            EXPECT_FALSE(std::isfinite(x)) << "b " << ib << " row " << i << " head " << h;
          } else {
            EXPECT_TRUE(std::isfinite(x)) << "b " << ib << " row " << i << " head " << h << " col " << c;
          }
        }
}

/// NaN and inf in a 16-bit Q behave as in fp32: the output is the fp32 call's on the widened Q/K/V rounded
/// to T (NaN where it is NaN), the rows of the NaN query are NaN, an inf query element makes its row's
/// scores ±inf (NaN output, as in fp32), every other row stays finite.
template <class Isa, class T>
void check_nonfinite_q(index_t sq) {
  const index_t b = 2, skv = 80, hq = 4, hkv = 2, d = 19;
  SCOPED_TRACE(std::string(gqa::element_name<T>) + " Q/K/V/O, sq = " + std::to_string(sq));
  auto qw = gqa::test::rounded_kv<T>(gqa::test::random_floats(static_cast<std::size_t>(b * sq * hq * d), 171));
  const auto kw = gqa::test::rounded_kv<T>(gqa::test::random_floats(static_cast<std::size_t>(b * skv * hkv * d), 172));
  const auto vw = gqa::test::rounded_kv<T>(gqa::test::random_floats(static_cast<std::size_t>(b * skv * hkv * d), 173));
  auto at = [&](index_t ib, index_t i, index_t h, index_t c) { return static_cast<std::size_t>(((ib * sq + i) * hq + h) * d + c); };
  qw[at(0, sq - 1, 1, 3)] = k_nan;
  qw[at(1, 0, 2, 7)] = k_inf;
  const auto q16 = narrowed<T>(qw), k16 = narrowed<T>(kw), v16 = narrowed<T>(vw);
  gqa::attention_options opt;
  opt.causal = true;
  opt.bf16_products = false;  // the fp32 products: bit for bit (the bf16 tiles: bf16_products_* tests)
  std::vector<T> o16(static_cast<std::size_t>(b * sq * hq * d), T(0.0f));
  std::vector<float> o32(o16.size(), 0.0f);
  const auto map = gqa::head_map::uniform(hq, hkv);
  gqa::attend<Isa>(gqa::bshd<const T>(q16.data(), b, sq, hq, d), gqa::bshd<const T>(k16.data(), b, skv, hkv, d),
                   gqa::bshd<const T>(v16.data(), b, skv, hkv, d), gqa::bshd(o16.data(), b, sq, hq, d), map, opt);
  gqa::attend<Isa>(gqa::bshd<const float>(qw.data(), b, sq, hq, d), gqa::bshd<const float>(kw.data(), b, skv, hkv, d),
                   gqa::bshd<const float>(vw.data(), b, skv, hkv, d), gqa::bshd(o32.data(), b, sq, hq, d), map, opt);
  EXPECT_EQ(first_unrounded(o16, o32), -1);
  for (index_t ib = 0; ib < b; ++ib)
    for (index_t i = 0; i < sq; ++i)
      for (index_t h = 0; h < hq; ++h) {
        const bool bad_row = (ib == 0 && i == sq - 1 && h == 1) || (ib == 1 && i == 0 && h == 2);
        for (index_t c = 0; c < d; ++c) {
          const float x = gqa::to_float(o16[at(ib, i, h, c)]);
          if (bad_row) {
            EXPECT_TRUE(std::isnan(x)) << "b " << ib << " row " << i << " head " << h << " col " << c;
          } else {
            EXPECT_TRUE(std::isfinite(x)) << "b " << ib << " row " << i << " head " << h << " col " << c;
          }
        }
      }
}

TYPED_TEST_P(lowp_suite, nonfinite_q_as_in_fp32) {
  for (const index_t sq : {index_t{1}, index_t{3}, index_t{50}}) {  // decode, direct, tiled
    check_nonfinite_q<TypeParam, gqa::bf16>(sq);
    check_nonfinite_q<TypeParam, gqa::f16>(sq);
  }
}

TYPED_TEST_P(lowp_suite, nonfinite_kv_as_in_fp32) {
  for (const index_t sq : {index_t{1}, index_t{3}, index_t{50}}) {  // decode, direct, tiled
    check_nonfinite<TypeParam, gqa::bf16>(sq);
    check_nonfinite<TypeParam, gqa::f16>(sq);
  }
}

/// NaN and inf in the float rows of an int8 cache: quantize_q8 gives such a row a NaN scale (every value of
/// the row reads as NaN, Note [int8 quantisation]), and attention follows Note [non-finite inputs] on
/// those values: rows that see a NaN K row are NaN, rows that see a NaN V row are NaN in every column, rows
/// that see neither (past kv_lengths, past the causal horizon) are finite; the same NaN pattern as the
/// fp32 call on the dequantised K/V, and its finite values within 1e-6 of that call's.
template <class Isa>
void check_nonfinite_q8(index_t sq) {
  const index_t b = 2, skv = 80, hq = 4, hkv = 2, d = 19;
  SCOPED_TRACE("int8 K/V, sq = " + std::to_string(sq));
  const auto qd = gqa::test::random_floats(static_cast<std::size_t>(b * sq * hq * d), 71);
  auto kx = gqa::test::random_floats(static_cast<std::size_t>(b * skv * hkv * d), 72);
  auto vx = gqa::test::random_floats(static_cast<std::size_t>(b * skv * hkv * d), 73);
  auto at = [&](index_t ib, index_t j, index_t g, index_t c) { return static_cast<std::size_t>(((ib * skv + j) * hkv + g) * d + c); };
  const index_t len1 = 60;
  const index_t nan_key = skv - sq + sq / 2;  // batch 0: the causal horizon hides it from the first rows
  kx[at(0, nan_key, 0, 3)] = k_nan;
  vx[at(0, 5, 1, 2)] = k_inf;  // a key every row of batch 0 sees: V row NaN
  kx[at(1, 70, 0, 0)] = k_nan;  // past batch 1's length: never read
  vx[at(1, 65, 1, 4)] = -k_inf;
  lowp_case c;
  c.b = b, c.sq = sq, c.skv = skv, c.hq = hq, c.hkv = hkv, c.d = d, c.dv = d, c.causal = true;
  c.kv_lengths = {skv, len1};
  const q8_kv k8 = quantised(c, kx, d), v8 = quantised(c, vx, d);
  EXPECT_TRUE(std::isnan(k8.scales[at(0, nan_key, 0, 0) / static_cast<std::size_t>(d)]));
  EXPECT_TRUE(std::isnan(v8.scales[at(0, 5, 1, 0) / static_cast<std::size_t>(d)]));
  const auto q = gqa::bshd<const float>(qd.data(), b, sq, hq, d);
  const two_runs r = run_both<Isa>(c, q, gqa::head_map::uniform(hq, hkv), k8.view, v8.view, k8.deq, v8.deq);
  const std::vector<float>& o8 = r.o;
  const std::vector<float>& o32 = r.o32;
  const std::vector<index_t>& lengths = c.kv_lengths;
  for (index_t ib = 0; ib < b; ++ib)
    for (index_t i = 0; i < sq; ++i)
      for (index_t h = 0; h < hq; ++h)
        for (index_t col = 0; col < d; ++col) {
          const auto idx = static_cast<std::size_t>(((ib * sq + i) * hq + h) * d + col);
          const float x = o8[idx];
          const index_t p = i + (lengths[static_cast<std::size_t>(ib)] - sq);  // the row's last visible key
          const bool nan_row = ib == 0 && ((h / (hq / hkv) == 0 && p >= nan_key) || h / (hq / hkv) == 1);
          EXPECT_EQ(std::isnan(x), nan_row) << "b " << ib << " row " << i << " head " << h << " col " << col;
          EXPECT_EQ(std::isnan(x), std::isnan(o32[idx]));
          if (!nan_row) {
            EXPECT_NEAR(x, o32[idx], 1e-6);  // outputs are averages of values in [-1, 1]: ~16 u of 1
          }
        }
}

TYPED_TEST_P(lowp_suite, nonfinite_int8_rows_as_in_fp32) {
  for (const index_t sq : {index_t{1}, index_t{3}, index_t{50}}) check_nonfinite_q8<TypeParam>(sq);  // decode, direct, tiled
}

/// KDGQA and DGQA on an int8 cache plan from the norms of its fp32 values: the plan (and DGQA's state) of
/// the fp32 call on the dequantised K/V, exactly.
TYPED_TEST_P(lowp_suite, int8_key_norm_plans_equal_the_dequantised_ones) {
  const index_t b = 2, sq = 3, skv = 50, hq = 8, hkv = 4, d = 20;
  lowp_case c;
  c.b = b, c.skv = skv, c.hkv = hkv;
  auto kx = gqa::test::random_floats(static_cast<std::size_t>(b * skv * hkv * d), 81);
  for (std::size_t i = 0; i < kx.size(); ++i) kx[i] *= 1.0f + static_cast<float>((i / static_cast<std::size_t>(d)) % 4) * 0.7f;
  const q8_kv k8 = quantised(c, kx, d), v8 = quantised(c, gqa::test::random_floats(kx.size(), 82), d);
  const auto kf = gqa::bshd<const float>(k8.deq.data(), b, skv, hkv, d), vf = gqa::bshd<const float>(v8.deq.data(), b, skv, hkv, d);
  const auto norms8 = gqa::key_norms(k8.view), norms32 = gqa::key_norms(kf);
  EXPECT_EQ(norms8, norms32);
  const auto qd = gqa::test::random_floats(static_cast<std::size_t>(b * sq * hq * d), 83);
  const auto q = gqa::bshd<const float>(qd.data(), b, sq, hq, d);
  std::vector<float> o8(qd.size()), o32(qd.size());
  for (const bool per_sample : {false, true}) {
    gqa::kdgqa_options ko;
    ko.per_sample = per_sample;
    gqa::kdgqa_policy p8(ko), p32(ko);
    gqa::forward<TypeParam>(p8, q, k8.view, v8.view, gqa::bshd(o8.data(), b, sq, hq, d));
    gqa::forward<TypeParam>(p32, q, kf, vf, gqa::bshd(o32.data(), b, sq, hq, d));
    EXPECT_EQ(p8.last().alloc, p32.last().alloc) << (per_sample ? "per sample" : "per batch");
  }
  gqa::dgqa_options dopt;
  dopt.window = 1;
  gqa::dgqa_state s8 = gqa::dgqa_state::initial(hq, hkv), s32 = s8;
  gqa::dgqa_policy p8(dopt, s8), p32(dopt, s32);
  gqa::forward<TypeParam>(p8, q, k8.view, v8.view, gqa::bshd(o8.data(), b, sq, hq, d));
  gqa::forward<TypeParam>(p32, q, kf, vf, gqa::bshd(o32.data(), b, sq, hq, d));
  EXPECT_EQ(p8.last().alloc, p32.last().alloc);
  EXPECT_EQ(s8.splits, s32.splits);
}

/// The checks of an int8 call name the scales: check_finite a NaN scale, a scales view of the wrong shape
/// or null, an output over the scales; and the same views' errors as for float K/V.
TYPED_TEST_P(lowp_suite, checks_with_int8_kv) {
  const index_t b = 1, s = 4, h = 2, d = 8;
  std::vector<float> q(static_cast<std::size_t>(b * s * h * d), 0.5f), o(q.size());
  std::vector<std::int8_t> kv(q.size(), 3);
  std::vector<float> scales(static_cast<std::size_t>(b * s * h), 0.25f);
  const auto values = gqa::bshd<const std::int8_t>(kv.data(), b, s, h, d);
  const gqa::q8_view good{values, gqa::bshd<const float>(scales.data(), b, s, h, 1)};
  const auto qv = gqa::bshd<const float>(q.data(), b, s, h, d);
  const auto ov = gqa::bshd(o.data(), b, s, h, d);
  const auto map = gqa::head_map::uniform(h, h);
  const auto expect_error = [&](const gqa::q8_view& k, const gqa::tensor_view<float>& out, const gqa::attention_options& opt,
                                const std::string& part) {
    try {
      gqa::attend<TypeParam>(qv, k, good, out, map, opt);
      ADD_FAILURE() << "expected gqa::invalid_argument containing " << part;
    } catch (const gqa::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  gqa::attention_options opt;
  expect_error({values, gqa::bshd<const float>(scales.data(), b, s - 1, h, 1)}, ov, opt, "gqa::attend: k.scales.s = 3: must equal k.s = 4");
  expect_error({values, gqa::bshd<const float>(scales.data(), b, 1, h, 4)}, ov, opt, "k.scales.s = 1");
  expect_error({values, gqa::bshd<const float>(nullptr, b, s, h, 1)}, ov, opt, "k.scales.data = nullptr");
  std::vector<float> big(80, 0.25f);  // k's scales in [0, 8), o at [4, 68) (over them) or [8, 72)
  const gqa::q8_view in_big{values, gqa::bshd<const float>(big.data(), b, s, h, 1)};
  expect_error(in_big, gqa::bshd(big.data() + 4, b, s, h, d), opt, "overlaps k.scales");
  EXPECT_NO_THROW(gqa::attend<TypeParam>(qv, in_big, good, gqa::bshd(big.data() + 8, b, s, h, d), map, opt));
  EXPECT_FLOAT_EQ(big[8], 0.75f);  // every value 0.25 · 3
  scales[5] = k_nan;
  opt.check_finite = true;
  expect_error(good, ov, opt, "k.scales[0, 2, 1, 0] = nan");
}

/// The paged and ragged checks' K/V: 9 pages of 16 slots, 2 KV heads of d 21, values rounded to T (seeds
/// `seed`, `seed + 1`), held as float (kw, vw) and as T (k16, v16); two sequences of 61 and 40 keys through
/// a shuffled page table, as a float cache (f()) and a T cache (h()) over the same values. The first 61 + 40
/// rows of the pools are also the ragged batch's packed keys.
template <class T>
struct paged_kv_case {
  static constexpr index_t hkv = 2, d = 21, ps = 16, np = 9;
  std::vector<float> kw, vw;
  std::vector<T> k16, v16;
  std::vector<std::int32_t> table{7, 2, 5, 0, 8, 1, 3, 6};
  std::vector<int> lengths{61, 40};
  explicit paged_kv_case(std::uint64_t seed)
      : kw(gqa::test::rounded_kv<T>(gqa::test::random_floats(static_cast<std::size_t>(np * ps * hkv * d), seed))),
        vw(gqa::test::rounded_kv<T>(gqa::test::random_floats(static_cast<std::size_t>(np * ps * hkv * d), seed + 1))),
        k16(narrowed<T>(kw)),
        v16(narrowed<T>(vw)) {}
  gqa::paged_kv f() const {
    return {gqa::page_pool<const float>(kw.data(), np, ps, hkv, d), gqa::page_pool<const float>(vw.data(), np, ps, hkv, d),
            table, 4, lengths};
  }
  gqa::basic_paged_kv<T> h() const {
    return {gqa::page_pool<const T>(k16.data(), np, ps, hkv, d), gqa::page_pool<const T>(v16.data(), np, ps, hkv, d),
            table, 4, lengths};
  }
};

/// A paged cache of 16-bit pages and a ragged batch of 16-bit K/V: bit for bit the float calls.
template <class Isa, class T>
void check_paged_and_ragged() {
  SCOPED_TRACE(gqa::element_name<T>);
  using kv_case = paged_kv_case<T>;
  const index_t hq = 6, hkv = kv_case::hkv, d = kv_case::d;
  for (const index_t sq : {index_t{1}, index_t{20}}) {
    const index_t b = 2;
    const auto qd = gqa::test::random_floats(static_cast<std::size_t>(b * sq * hq * d), 91);
    const kv_case kv(92);
    const auto &kw = kv.kw, &vw = kv.vw;
    const auto &k16 = kv.k16, &v16 = kv.v16;
    const gqa::paged_kv f = kv.f();
    const gqa::basic_paged_kv<T> h = kv.h();
    gqa::attention_options opt;
    opt.causal = true;
    const auto q = gqa::bshd<const float>(qd.data(), b, sq, hq, d);
    std::vector<float> o16(static_cast<std::size_t>(b * sq * hq * d), k_nan), o32 = o16;
    const auto map = gqa::head_map::uniform(hq, hkv);
    gqa::attend<Isa>(q, h, gqa::bshd(o16.data(), b, sq, hq, d), map, opt);
    gqa::attend<Isa>(q, f, gqa::bshd(o32.data(), b, sq, hq, d), map, opt);
    EXPECT_EQ(first_difference(o16, o32), -1) << "paged, sq = " << sq;
    gqa::forward<Isa>(gqa::gqa_policy{}, q, h, gqa::bshd(o16.data(), b, sq, hq, d), opt);
    EXPECT_EQ(first_difference(o16, o32), -1) << "paged forward, sq = " << sq;
    // Policies that plan from the keys: a 16-bit page's valid keys widen exactly, so their norms, the plan
    // and the output are the float cache's, bit for bit (KDGQA, KDGQA per sample, DGQA diff in training).
    const auto run = [&](auto& p16, auto& p32) {
      gqa::forward<Isa>(p16, q, h, gqa::bshd(o16.data(), b, sq, hq, d), opt);
      gqa::forward<Isa>(p32, q, f, gqa::bshd(o32.data(), b, sq, hq, d), opt);
      EXPECT_EQ(first_difference(o16, o32), -1) << "paged, planned from norms, sq = " << sq;
      EXPECT_EQ(p16.last().alloc, p32.last().alloc);
    };
    for (const bool per_sample : {false, true}) {
      SCOPED_TRACE(per_sample ? "kdgqa per sample" : "kdgqa");
      gqa::kdgqa_options ko;
      ko.per_sample = per_sample;
      gqa::kdgqa_policy p16(ko), p32(ko);
      run(p16, p32);
    }
    {
      SCOPED_TRACE("dgqa");
      gqa::dgqa_options dopt;
      dopt.window = 1;
      gqa::dgqa_state s16 = gqa::dgqa_state::initial(hq, hkv), s32 = s16;
      gqa::dgqa_policy p16(dopt, s16), p32(dopt, s32);
      run(p16, p32);
      EXPECT_EQ(s16.splits, s32.splits);
    }

    // Ragged: the pools' first 61 + 40 rows as two packed sequences of keys.
    const std::vector<int> cu_q{0, static_cast<int>(sq), static_cast<int>(2 * sq)}, cu_k{0, 61, 101};
    const auto qt = gqa::thd<const float>(qd.data(), b * sq, hq, d);
    gqa::attend<Isa>(qt, gqa::thd<const T>(k16.data(), 101, hkv, d), gqa::thd<const T>(v16.data(), 101, hkv, d),
                     gqa::thd(o16.data(), b * sq, hq, d), map, gqa::varlen{cu_q, cu_k}, opt);
    gqa::attend<Isa>(qt, gqa::thd<const float>(kw.data(), 101, hkv, d), gqa::thd<const float>(vw.data(), 101, hkv, d),
                     gqa::thd(o32.data(), b * sq, hq, d), map, gqa::varlen{cu_q, cu_k}, opt);
    EXPECT_EQ(first_difference(o16, o32), -1) << "ragged, sq = " << sq;
  }
}

/// A paged cache and a ragged batch with Q, K/V (pages) and O all of type T: the float calls' outputs
/// rounded to T, bit for bit.
template <class Isa, class T>
void check_paged_and_ragged_qo() {
  SCOPED_TRACE(std::string(gqa::element_name<T>) + " Q/O");
  using kv_case = paged_kv_case<T>;
  const index_t hq = 6, hkv = kv_case::hkv, d = kv_case::d;
  for (const index_t sq : {index_t{1}, index_t{20}}) {
    const index_t b = 2;
    const auto qw = gqa::test::rounded_kv<T>(gqa::test::random_floats(static_cast<std::size_t>(b * sq * hq * d), 191));
    const auto q16 = narrowed<T>(qw);
    const kv_case kv(192);
    const auto &kw = kv.kw, &vw = kv.vw;
    const auto &k16 = kv.k16, &v16 = kv.v16;
    const gqa::paged_kv f = kv.f();
    const gqa::basic_paged_kv<T> h = kv.h();
    gqa::attention_options opt;
    opt.causal = true;
    opt.bf16_products = false;  // the fp32 products: bit for bit (the bf16 tiles: bf16_products_* tests)
    std::vector<T> o16(static_cast<std::size_t>(b * sq * hq * d), T(k_nan));
    std::vector<float> o32(o16.size(), k_nan);
    const auto map = gqa::head_map::uniform(hq, hkv);
    gqa::attend<Isa>(gqa::bshd<const T>(q16.data(), b, sq, hq, d), h, gqa::bshd(o16.data(), b, sq, hq, d), map, opt);
    gqa::attend<Isa>(gqa::bshd<const float>(qw.data(), b, sq, hq, d), f, gqa::bshd(o32.data(), b, sq, hq, d), map, opt);
    EXPECT_EQ(first_unrounded(o16, o32), -1) << "paged, sq = " << sq;

    const std::vector<int> cu_q{0, static_cast<int>(sq), static_cast<int>(2 * sq)}, cu_k{0, 61, 101};
    gqa::attend<Isa>(gqa::thd<const T>(q16.data(), b * sq, hq, d), gqa::thd<const T>(k16.data(), 101, hkv, d),
                     gqa::thd<const T>(v16.data(), 101, hkv, d), gqa::thd(o16.data(), b * sq, hq, d), map,
                     gqa::varlen{cu_q, cu_k}, opt);
    gqa::attend<Isa>(gqa::thd<const float>(qw.data(), b * sq, hq, d), gqa::thd<const float>(kw.data(), 101, hkv, d),
                     gqa::thd<const float>(vw.data(), 101, hkv, d), gqa::thd(o32.data(), b * sq, hq, d), map,
                     gqa::varlen{cu_q, cu_k}, opt);
    EXPECT_EQ(first_unrounded(o16, o32), -1) << "ragged, sq = " << sq;
  }
}

TYPED_TEST_P(lowp_suite, paged_and_ragged_16_bit_qo) {
  check_paged_and_ragged_qo<TypeParam, gqa::bf16>();
  check_paged_and_ragged_qo<TypeParam, gqa::f16>();
}

/// Every registered variant through gqa::forward<Isa> on a ragged batch (4 sequences, one without queries)
/// and on a paged cache (2 sequences of 45 and 18 keys in shuffled pages of 16 slots, unwritten slots NaN)
/// in T: float Q/O with T K/V (ragged) give the bits of the float call on the widened K/V, and Q, K/V and O
/// all T (ragged and paged) the float call's output rounded to T (a fresh policy for each call, so PGQA
/// draws the same noise and DGQA starts from the same state).
template <class Isa, class T>
void check_variants_paged_and_ragged() {
  gqa::for_each_variant([&](auto t) {
    using P = typename decltype(t)::type;
    const gqa::model_shape m{8, 2, 24, 7};
    const gqa::variant_heads h = P::heads_for(m);
    const index_t hq = h.hq, hkv = h.kv_in, d = m.d;
    SCOPED_TRACE(std::string(P::name) + ", " + gqa::element_name<T>);
    gqa::attention_options opt;
    opt.causal = true;
    opt.bf16_products = false;  // the fp32 products: bit for bit (the bf16 tiles: bf16_products_* tests)
    const auto call = [&](const auto&... args) {
      gqa::with_policy<P>(m, h, [&](P& p) { gqa::forward<Isa>(p, args..., opt); });
    };
    {  // Ragged.
      const std::vector<int> nq = {3, 1, 0, 20}, nk = {9, 1, 4, 20};
      std::vector<int> cu_q = {0}, cu_k = {0};
      for (std::size_t i = 0; i < nq.size(); ++i) {
        cu_q.push_back(cu_q.back() + nq[i]);
        cu_k.push_back(cu_k.back() + nk[i]);
      }
      const index_t tq = cu_q.back(), tk = cu_k.back();
      const gqa::varlen seqs{cu_q, cu_k};
      // Keys with uneven norms per head, so that KDGQA and DGQA plan uneven groups.
      auto kr = gqa::test::random_floats(static_cast<std::size_t>(tk * hkv * d), 811);
      for (std::size_t i = 0; i < kr.size(); ++i)
        kr[i] *= 1.0f + static_cast<float>((i / static_cast<std::size_t>(d)) % static_cast<std::size_t>(hkv));
      const auto qw = gqa::test::rounded_kv<T>(gqa::test::random_floats(static_cast<std::size_t>(tq * hq * d), 810));
      const auto kw = gqa::test::rounded_kv<T>(kr);
      const auto vw = gqa::test::rounded_kv<T>(gqa::test::random_floats(static_cast<std::size_t>(tk * hkv * d), 812));
      const auto q16 = narrowed<T>(qw), k16 = narrowed<T>(kw), v16 = narrowed<T>(vw);
      const auto no = static_cast<std::size_t>(tq * hq * d);
      std::vector<float> o32(no, k_nan), ohalf(no, k_nan);
      std::vector<T> o16(no, T(k_nan));
      call(gqa::thd<const float>(qw.data(), tq, hq, d), gqa::thd<const float>(kw.data(), tk, hkv, d),
           gqa::thd<const float>(vw.data(), tk, hkv, d), gqa::thd(o32.data(), tq, hq, d), seqs);
      call(gqa::thd<const float>(qw.data(), tq, hq, d), gqa::thd<const T>(k16.data(), tk, hkv, d),
           gqa::thd<const T>(v16.data(), tk, hkv, d), gqa::thd(ohalf.data(), tq, hq, d), seqs);
      EXPECT_EQ(first_difference(ohalf, o32), -1) << "ragged, float Q/O";
      call(gqa::thd<const T>(q16.data(), tq, hq, d), gqa::thd<const T>(k16.data(), tk, hkv, d),
           gqa::thd<const T>(v16.data(), tk, hkv, d), gqa::thd(o16.data(), tq, hq, d), seqs);
      EXPECT_EQ(first_unrounded(o16, o32), -1) << "ragged, 16-bit Q/O";
      for (const float x : o32) ASSERT_TRUE(std::isfinite(x));
    }
    {  // Paged.
      const index_t b = 2, sq = 3, ps = 16, np = 6, max_pages = 3;
      const std::vector<int> lengths{45, 18};
      const std::vector<std::int32_t> table{4, 1, 5, 0, 2, 3};  // sequence 1's third entry: a spare page
      const auto pool = static_cast<std::size_t>(np * ps * hkv * d);
      std::vector<float> kw(pool, k_nan), vw(pool, k_nan);
      auto kr = gqa::test::random_floats(pool, 821);
      const auto vr = gqa::test::rounded_kv<T>(gqa::test::random_floats(pool, 822));
      for (std::size_t i = 0; i < kr.size(); ++i)
        kr[i] *= 1.0f + static_cast<float>((i / static_cast<std::size_t>(d)) % static_cast<std::size_t>(hkv));
      kr = gqa::test::rounded_kv<T>(kr);
      for (index_t ib = 0; ib < b; ++ib)  // only the slots the sequences hold are written
        for (index_t j = 0; j < lengths[static_cast<std::size_t>(ib)]; ++j) {
          const auto at = static_cast<std::size_t>(
              ((table[static_cast<std::size_t>(ib * max_pages + j / ps)] * ps + j % ps) * hkv) * d);
          std::copy(kr.begin() + static_cast<long>(at), kr.begin() + static_cast<long>(at + hkv * d), kw.begin() + static_cast<long>(at));
          std::copy(vr.begin() + static_cast<long>(at), vr.begin() + static_cast<long>(at + hkv * d), vw.begin() + static_cast<long>(at));
        }
      const auto k16 = narrowed<T>(kw), v16 = narrowed<T>(vw);
      const auto qw = gqa::test::rounded_kv<T>(gqa::test::random_floats(static_cast<std::size_t>(b * sq * hq * d), 820));
      const auto q16 = narrowed<T>(qw);
      const gqa::paged_kv f{gqa::page_pool<const float>(kw.data(), np, ps, hkv, d),
                            gqa::page_pool<const float>(vw.data(), np, ps, hkv, d), table, max_pages, lengths};
      const gqa::basic_paged_kv<T> hv{gqa::page_pool<const T>(k16.data(), np, ps, hkv, d),
                                      gqa::page_pool<const T>(v16.data(), np, ps, hkv, d), table, max_pages, lengths};
      const auto no = static_cast<std::size_t>(b * sq * hq * d);
      std::vector<float> o32(no, k_nan);
      std::vector<T> o16(no, T(k_nan));
      call(gqa::bshd<const float>(qw.data(), b, sq, hq, d), f, gqa::bshd(o32.data(), b, sq, hq, d));
      call(gqa::bshd<const T>(q16.data(), b, sq, hq, d), hv, gqa::bshd(o16.data(), b, sq, hq, d));
      EXPECT_EQ(first_unrounded(o16, o32), -1) << "paged, 16-bit Q/O";
      for (const float x : o32) ASSERT_TRUE(std::isfinite(x));
    }
  });
}

// bf16 only: f16 differs from it only in the element type's conversions, which every f16 test above
// (paged_and_ragged_16_bit, paged_and_ragged_16_bit_qo: the same layouts) covers, and each element type
// instantiates the paged and ragged cores again (CI time).
TYPED_TEST_P(lowp_suite, every_variant_16_bit_paged_and_ragged) {
  check_variants_paged_and_ragged<TypeParam, gqa::bf16>();
}

// Mixed element types do not compile: Q and O are float or K/V's own 16-bit type, O never const.
template <class Q, class KV, class O>
concept attend_takes = requires(gqa::tensor_view<Q> q, gqa::tensor_view<KV> k, gqa::tensor_view<O> o, const gqa::head_map& m) {
  gqa::attend(q, k, k, o, m);
};
template <class Q, class KV, class O>
concept forward_takes = requires(gqa::tensor_view<Q> q, gqa::tensor_view<KV> k, gqa::tensor_view<O> o) {
  gqa::forward(gqa::gqa_policy{}, q, k, k, o);
};
static_assert(attend_takes<const gqa::bf16, const gqa::bf16, gqa::bf16> && attend_takes<gqa::f16, gqa::f16, gqa::f16>);
static_assert(attend_takes<const float, const gqa::bf16, float> && attend_takes<const float, const float, float>);
static_assert(!attend_takes<const gqa::bf16, const float, gqa::bf16> && !attend_takes<const gqa::bf16, const gqa::bf16, float>);
static_assert(!attend_takes<const float, const gqa::bf16, gqa::bf16> && !attend_takes<const gqa::f16, const gqa::bf16, gqa::bf16>);
static_assert(!attend_takes<const gqa::bf16, const gqa::bf16, const gqa::bf16>);
static_assert(forward_takes<const gqa::bf16, const gqa::bf16, gqa::bf16> && forward_takes<const gqa::f16, gqa::f16, gqa::f16>);
// An int8 cache: float Q/O, or Q and O of one 16-bit type.
template <class Q, class O>
concept attend_q8_takes = requires(gqa::tensor_view<Q> q, const gqa::q8_view& k, gqa::tensor_view<O> o, const gqa::head_map& m) {
  gqa::attend(q, k, k, o, m);
};
template <class Q, class O>
concept forward_q8_takes = requires(gqa::tensor_view<Q> q, const gqa::q8_view& k, gqa::tensor_view<O> o) {
  gqa::forward(gqa::gqa_policy{}, q, k, k, o);
};
static_assert(attend_q8_takes<const float, float> && attend_q8_takes<const gqa::bf16, gqa::bf16> && attend_q8_takes<gqa::f16, gqa::f16>);
static_assert(!attend_q8_takes<const gqa::bf16, float> && !attend_q8_takes<const float, gqa::bf16> &&
              !attend_q8_takes<const gqa::bf16, gqa::f16> && !attend_q8_takes<const gqa::bf16, const gqa::bf16>);
static_assert(forward_q8_takes<const gqa::bf16, gqa::bf16> && !forward_q8_takes<const gqa::f16, float>);
static_assert(!forward_takes<const gqa::bf16, const float, gqa::bf16> && !forward_takes<const gqa::f16, const gqa::f16, float>);

/// The checks of an all-16-bit call: wrong shapes throw naming the argument, an o over q's bytes throws, an
/// o beside it does not; check_finite names a non-finite 16-bit Q element.
TYPED_TEST_P(lowp_suite, checks_with_16_bit_qo) {
  using T = gqa::bf16;
  const index_t b = 1, s = 4, h = 2, d = 8;
  std::vector<T> q(static_cast<std::size_t>(b * s * h * d), T(0.5f)), k = q, v = q, o(q.size());
  const auto map = gqa::head_map::uniform(h, h);
  const auto kv = gqa::bshd<const T>(k.data(), b, s, h, d), vv = gqa::bshd<const T>(v.data(), b, s, h, d);
  const auto expect_error = [&](auto&& call, const std::string& part) {
    try {
      call();
      ADD_FAILURE() << "expected gqa::invalid_argument containing " << part;
    } catch (const gqa::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  const auto qv = gqa::bshd<const T>(q.data(), b, s, h, d);
  expect_error([&] { gqa::attend<TypeParam>(qv, kv, vv, gqa::bshd(o.data(), b, s, h, d - 1), map); },
               "gqa::attend: o.d = 7: must equal v.d = 8");
  expect_error([&] { gqa::attend<TypeParam>(qv, kv, vv, gqa::bshd(o.data(), b, s - 1, h, d), map); }, "o.s = 3");
  expect_error([&] { gqa::forward<TypeParam>(gqa::gqa_policy{}, qv, kv, vv, gqa::bshd(o.data(), b, s, h + 1, d)); },
               "o.h = 3");
  // o over q's bytes (q[0, 0, 1, 0] onwards), then beside q.
  std::vector<T> qo(static_cast<std::size_t>(2 * b * s * h * d), T(0.5f));
  const auto q_in = gqa::bshd<const T>(qo.data(), b, s, h, d);
  expect_error([&] { gqa::attend<TypeParam>(q_in, kv, vv, gqa::bshd(qo.data() + d, b, s, h, d), map); }, "o (data = ");
  expect_error([&] { gqa::attend<TypeParam>(q_in, kv, vv, gqa::bshd(qo.data() + d, b, s, h, d), map); }, "overlaps q");
  EXPECT_NO_THROW(gqa::attend<TypeParam>(q_in, kv, vv, gqa::bshd(qo.data() + b * s * h * d, b, s, h, d), map));
  EXPECT_EQ(gqa::to_float(qo[static_cast<std::size_t>(b * s * h * d)]), 0.5f);  // every value 0.5
  // One byte buffer holding a bf16 q (8 elements: bytes [0, 16)) and the fp32 LSE over its bytes [8, 12).
  alignas(64) std::byte storage[64] = {};
  const auto q_bytes = gqa::bshd<const T>(reinterpret_cast<const T*>(storage), 1, 1, 1, d);
  gqa::attention_options opt;
  opt.lse = std::span<float>(reinterpret_cast<float*>(storage) + 2, 1);
  expect_error([&] { gqa::attend<TypeParam>(q_bytes, gqa::bshd<const T>(k.data(), 1, 1, 1, d), gqa::bshd<const T>(v.data(), 1, 1, 1, d),
                                            gqa::bshd(o.data(), 1, 1, 1, d), gqa::head_map::uniform(1, 1), opt); },
               "options.lse (data = ");
  opt.lse = std::span<float>(reinterpret_cast<float*>(storage) + 4, 1);  // bytes [16, 20): beside q
  EXPECT_NO_THROW(gqa::attend<TypeParam>(q_bytes, gqa::bshd<const T>(k.data(), 1, 1, 1, d), gqa::bshd<const T>(v.data(), 1, 1, 1, d),
                                         gqa::bshd(o.data(), 1, 1, 1, d), gqa::head_map::uniform(1, 1), opt));
  q[5] = T(k_nan);
  gqa::attention_options fin;
  fin.check_finite = true;
  expect_error([&] { gqa::attend<TypeParam>(qv, kv, vv, gqa::bshd(o.data(), b, s, h, d), map, fin); }, "q[0, 0, 0, 5] = nan");
}

TYPED_TEST_P(lowp_suite, paged_and_ragged_16_bit) {
  check_paged_and_ragged<TypeParam, gqa::bf16>();
  check_paged_and_ragged<TypeParam, gqa::f16>();
}

/// The checks see 16-bit K/V: check_finite names a non-finite 16-bit element with its float value; an
/// fp32 output overlapping the bytes of a 16-bit K is rejected, one beside it is not.
TYPED_TEST_P(lowp_suite, checks_with_16_bit_kv) {
  const index_t b = 1, s = 4, h = 2, d = 8;
  std::vector<float> q(static_cast<std::size_t>(b * s * h * d), 0.5f);
  std::vector<gqa::bf16> k(static_cast<std::size_t>(b * s * h * d), gqa::bf16(0.25f)), v = k;
  k[static_cast<std::size_t>(((0 * s + 2) * h + 1) * d + 5)] = gqa::bf16(k_inf);
  std::vector<float> o(q.size());
  gqa::attention_options opt;
  opt.check_finite = true;
  const auto map = gqa::head_map::uniform(h, h);
  try {
    gqa::attend<TypeParam>(gqa::bshd<const float>(q.data(), b, s, h, d), gqa::bshd<const gqa::bf16>(k.data(), b, s, h, d),
                           gqa::bshd<const gqa::bf16>(v.data(), b, s, h, d), gqa::bshd(o.data(), b, s, h, d), map, opt);
    ADD_FAILURE() << "expected gqa::invalid_argument";
  } catch (const gqa::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("k[0, 2, 1, 5] = inf"), std::string::npos) << e.what();
  }
  // One byte buffer holding a bf16 K (16 elements: bytes [0, 32)) and an fp32 output after or over it.
  alignas(64) std::byte storage[128] = {};
  auto* kb = reinterpret_cast<gqa::bf16*>(storage);
  auto* of = reinterpret_cast<float*>(storage);
  const auto k_in_buf = gqa::bshd<const gqa::bf16>(kb, 1, 2, 1, 8);
  const auto vv = gqa::bshd<const gqa::bf16>(v.data(), 1, 2, 1, 8);
  const auto qq = gqa::bshd<const float>(q.data(), 1, 1, 1, 8);
  const auto one = gqa::head_map::uniform(1, 1);
  try {
    gqa::attend<TypeParam>(qq, k_in_buf, vv, gqa::bshd(of + 7, 1, 1, 1, 8), one);  // bytes [28, 60)
    ADD_FAILURE() << "expected gqa::invalid_argument";
  } catch (const gqa::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("overlaps k"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(gqa::attend<TypeParam>(qq, k_in_buf, vv, gqa::bshd(of + 8, 1, 1, 1, 8), one));  // bytes [32, 64)
  EXPECT_EQ(of[8], 0.25f);  // every key and value is 0.25 (k's bytes are zero: bf16 +0, so uniform weights)
}

// --- bf16 Q/K/V on the bf16 tiles (options.bf16_products; Note [bf16 tiles] in detail/core/bf16_tiles.hpp) ---

/// One bf16 Q/K/V/O call with every mask and modifier the core takes.
struct bf16p_case {
  index_t b = 1, sq = 40, skv = 100, hq = 8, hkv = 2, d = 16, dv = -1;
  bool causal = false, bhsd_kv = false;
  index_t window_left = -1, window_right = -1;
  float softcap = 0.0f, lo = -1.0f, hi = 1.0f;
  bool sinks = false, alibi = false;
  std::vector<index_t> kv_lengths;
  std::vector<index_t> kv_of_q;  // empty: uniform
  std::uint64_t seed = 1;

  index_t vd() const { return dv < 0 ? d : dv; }
  gqa::head_map map() const { return kv_of_q.empty() ? gqa::head_map::uniform(hq, hkv) : gqa::head_map(kv_of_q, hkv); }
  std::string describe() const {
    std::ostringstream os;
    os << "b=" << b << " sq=" << sq << " skv=" << skv << " hq=" << hq << " hkv=" << hkv << " d=" << d << " dv=" << vd()
       << (causal ? " causal" : "") << (bhsd_kv ? " bhsd K/V" : "") << " window=" << window_left << "," << window_right
       << " softcap=" << softcap << (sinks ? " sinks" : "") << (alibi ? " alibi" : "")
       << (kv_lengths.empty() ? "" : " kv_lengths") << (kv_of_q.empty() ? "" : " unequal map") << " range=" << hi
       << " seed=" << seed;
    return os.str();
  }
};

/// The shapes and masks of the bf16 products' tests: d odd and not a multiple of 16, d_v != d, one query or
/// one key, lengths that are not multiples of the block, causal, windows, softcap, ALiBi, sinks, padding,
/// an unequal map with an empty group, K/V in BHSD, large scores; rows per KV head > 32 (the tiled path)
/// in the first ones, then decode tasks (Note [bf16 decode]): 4, 6, 8, 16 and 20 rows per KV head (and 3,
/// which keeps the fp32 products), d and d_v whole loads (64, 128) or not (24, 40, 80), odd units, a split
/// KV range, windows and causal rows that cut units, padding; last, one KV head serving queries with 20,
/// 24 and 32 rows (the bf16 tiles, Note [bf16 tiles for few rows]) or 16 (the fp32 direct path).
std::vector<bf16p_case> bf16p_cases() {
  std::vector<bf16p_case> cs;
  std::uint64_t seed = 300;
  auto add = [&](index_t sq, index_t skv, index_t hq, index_t hkv, index_t d, index_t dv = -1) -> bf16p_case& {
    bf16p_case c;
    c.sq = sq, c.skv = skv, c.hq = hq, c.hkv = hkv, c.d = d, c.dv = dv, c.seed = seed++;
    cs.push_back(c);
    return cs.back();
  };
  for (const index_t d : {index_t{5}, index_t{72}, index_t{130}}) add(67, 150, 8, 2, d).causal = true;
  add(60, 200, 8, 2, 128, 64);
  add(200, 589, 4, 1, 64, 40);                        // several query blocks, ragged last key block (512 + 77)
  add(1, 300, 40, 1, 24);                             // one query, 40 heads on a KV head: tiled
  add(1, 1, 40, 1, 16, 8);                            // one key
  add(50, 1, 8, 2, 16).causal = true;                 // one key, causal (bottom-right: every row sees it)
  add(45, 70, 8, 2, 32).bhsd_kv = true;
  {
    bf16p_case& c = add(40, 300, 8, 2, 24);
    c.window_left = 50;
    c.window_right = 10;
  }
  {
    bf16p_case& c = add(48, 190, 8, 2, 20, 36);
    c.causal = true;
    c.window_left = 30;
    c.softcap = 5.0f;
    c.sinks = true;
    c.alibi = true;
  }
  {
    bf16p_case& c = add(33, 129, 8, 2, 48);
    c.b = 3;
    c.causal = true;
    c.kv_lengths = {129, 0, 77};
  }
  {
    bf16p_case& c = add(20, 90, 12, 3, 40);
    c.kv_of_q = {0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2};  // KV head 1 serves none
  }
  {
    bf16p_case& c = add(40, 160, 8, 2, 64);
    c.lo = -6.0f;  // scores up to ~200: peaked weights
    c.hi = 6.0f;
  }
  add(5, 100, 8, 2, 24).causal = true;  // 20 rows per KV head: decode tasks, units cut by the diagonal
  add(1, 200, 8, 2, 40);                // decode
  add(1, 2101, 16, 4, 128);             // whole loads; the KV range split (>= 2048 keys), an odd last unit
  add(1, 77, 12, 4, 64);                // 3 rows per KV head: the fp32 products
  add(2, 93, 16, 2, 64, 128).causal = true;  // 16 rows per KV head (two blocks of 4 rows, twice)
  {
    bf16p_case& c = add(2, 300, 8, 4, 96, 80);  // 4 rows per KV head
    c.window_left = 120;  // the walk starts inside a block
    c.b = 2;
    c.kv_lengths = {300, 131};
  }
  {
    bf16p_case& c = add(3, 400, 8, 4, 32);
    c.window_left = 200;  // three rows, three windows: the first and last blocks cut
    c.causal = true;
    c.softcap = 4.0f;
    c.alibi = true;
    c.sinks = true;
  }
  {
    bf16p_case& c = add(2, 170, 6, 3, 64);
    c.kv_of_q = {0, 0, 0, 0, 2, 2};  // 8 and 4 rows; KV head 1 serves none
    c.bhsd_kv = true;
  }
  // One KV head serving queries, 32 rows or fewer (Note [bf16 tiles for few rows]): from 20 rows the bf16
  // tiles, below that the fp32 direct path.
  add(1, 300, 32, 1, 40);                       // MQA decode: 32 rows
  add(2, 2101, 12, 1, 128).causal = true;       // 24 rows, the KV range split, blocks cut by the diagonal
  add(4, 130, 4, 1, 32).causal = true;          // 16 rows: the fp32 products
  add(1, 150, 20, 1, 64);                       // 20 rows
  {
    bf16p_case& c = add(1, 90, 20, 3, 24, 40);  // 20 rows on KV head 1; heads 0 and 2 serve none
    c.kv_of_q.assign(20, 1);
    c.window_left = 40;
    c.bhsd_kv = true;
  }
  return cs;
}

/// Runs case c with bf16 Q, K, V, O on Isa (options.bf16_products as given, `threads` threads); o widened.
template <class Isa>
void run_bf16p(const bf16p_case& c, const std::vector<gqa::bf16>& q, const std::vector<gqa::bf16>& k,
               const std::vector<gqa::bf16>& v, bool products, int threads, std::vector<float>& o, std::vector<float>& lse) {
  const index_t dv = c.vd();
  std::vector<float> sinks(static_cast<std::size_t>(c.hq)), slopes(static_cast<std::size_t>(c.hq));
  for (std::size_t h = 0; h < sinks.size(); ++h) {
    sinks[h] = 0.5f * static_cast<float>(h % 3) - 0.4f;
    slopes[h] = 0.05f * static_cast<float>(h + 1);
  }
  gqa::attention_options opt;
  opt.causal = c.causal;
  opt.kv_lengths = c.kv_lengths;
  opt.window_left = c.window_left;
  opt.window_right = c.window_right;
  opt.softcap = c.softcap;
  if (c.sinks) opt.sinks = sinks;
  if (c.alibi) opt.alibi_slopes = slopes;
  opt.num_threads = threads;
  opt.bf16_products = products;
  lse.assign(static_cast<std::size_t>(c.b * c.hq * c.sq), k_nan);
  opt.lse = lse;
  std::vector<gqa::bf16> o16(static_cast<std::size_t>(c.b * c.sq * c.hq * dv), gqa::bf16(k_nan));
  const auto kv = [&](const std::vector<gqa::bf16>& x, index_t n) {
    return c.bhsd_kv ? gqa::bhsd<const gqa::bf16>(x.data(), c.b, c.hkv, c.skv, n)
                     : gqa::bshd<const gqa::bf16>(x.data(), c.b, c.skv, c.hkv, n);
  };
  gqa::attend<Isa>(gqa::bshd<const gqa::bf16>(q.data(), c.b, c.sq, c.hq, c.d), kv(k, c.d), kv(v, dv),
                   gqa::bshd(o16.data(), c.b, c.sq, c.hq, dv), c.map(), opt);
  o.resize(o16.size());
  for (std::size_t i = 0; i < o16.size(); ++i) o[i] = gqa::to_float(o16[i]);
}

/// Case c with bf16 products against the double reference within Note [bf16 products tolerance], fully
/// masked rows +0 with LSE −inf (or the sink), and 2 threads bit for bit 1 thread. Returns whether the
/// output differs from the same call with options.bf16_products = false (i.e. the bf16 tiles ran).
template <class Isa>
bool check_bf16p(const bf16p_case& c) {
  SCOPED_TRACE("bf16 products: " + c.describe());
  const index_t dv = c.vd();
  const auto nq = static_cast<std::size_t>(c.b * c.sq * c.hq * c.d);
  const auto nk = static_cast<std::size_t>(c.b * c.skv * c.hkv * c.d), nv = static_cast<std::size_t>(c.b * c.skv * c.hkv * dv);
  const auto qw = gqa::test::rounded_kv<gqa::bf16>(gqa::test::random_floats(nq, c.seed * 3, c.lo, c.hi));
  const auto kw = gqa::test::rounded_kv<gqa::bf16>(gqa::test::random_floats(nk, c.seed * 3 + 1, c.lo, c.hi));
  const auto vw = gqa::test::rounded_kv<gqa::bf16>(gqa::test::random_floats(nv, c.seed * 3 + 2));
  const auto q16 = narrowed<gqa::bf16>(qw), k16 = narrowed<gqa::bf16>(kw), v16 = narrowed<gqa::bf16>(vw);
  std::vector<float> o, lse, o2, lse2, o32, lse32;
  run_bf16p<Isa>(c, q16, k16, v16, true, 1, o, lse);
  run_bf16p<Isa>(c, q16, k16, v16, true, 2, o2, lse2);
  run_bf16p<Isa>(c, q16, k16, v16, false, 1, o32, lse32);
  EXPECT_EQ(first_difference(o, o2), -1) << "2 threads differ from 1";
  EXPECT_EQ(first_difference(lse, lse2), -1) << "2 threads differ from 1 (LSE)";

  // The reference and the naive yardstick on the same values, K/V in logical BSHD order.
  const auto kd = gqa::test::logical_order(kv_view(c, kw, c.d)), vd = gqa::test::logical_order(kv_view(c, vw, dv));
  const auto q = gqa::bshd<const float>(qw.data(), c.b, c.sq, c.hq, c.d);
  const auto kb = gqa::bshd<const float>(kd.data(), c.b, c.skv, c.hkv, c.d);
  const auto vb = gqa::bshd<const float>(vd.data(), c.b, c.skv, c.hkv, dv);
  std::vector<float> sinks(static_cast<std::size_t>(c.hq)), slopes(static_cast<std::size_t>(c.hq));
  for (std::size_t h = 0; h < sinks.size(); ++h) {
    sinks[h] = 0.5f * static_cast<float>(h % 3) - 0.4f;
    slopes[h] = 0.05f * static_cast<float>(h + 1);
  }
  gqa::reference::modifiers mods;
  mods.window_left = c.window_left;
  mods.window_right = c.window_right;
  mods.softcap = c.softcap;
  if (c.sinks) mods.sinks = sinks;
  if (c.alibi) mods.alibi_slopes = slopes;
  const double scale = 1.0 / std::sqrt(static_cast<double>(static_cast<float>(c.d)));
  const gqa::head_map map = c.map();
  const auto kv_of_q = map.kv_of_q();
  const auto ref = gqa::reference::attention(q, kb, vb, kv_of_q, scale, c.causal, c.kv_lengths, mods);
  const auto naive = gqa::test::naive_fp32(q, kb, vb, kv_of_q, static_cast<float>(scale), c.causal, c.kv_lengths, mods,
                                           /*bf16_weights=*/true);
  for (std::size_t i = 0; i < o.size(); ++i)
    if (!std::isfinite(o[i])) {
      ADD_FAILURE() << "output " << i << " = " << o[i];
      return false;
    }
  EXPECT_LE(gqa::test::bf16_output_excess(o, ref.o), gqa::test::attention_tolerance(naive.o, ref.o, vw));
  expect_lse_near_reference(lse, ref.lse, naive.lse);
  // Rows that see no key (padding: batch 1 of the kv_lengths case): +0.
  for (std::size_t i = 0; i < o.size(); ++i) {
    if (ref.o[i] == 0.0 && o32[i] == 0.0f) {
      EXPECT_TRUE(gqa::test::is_plus_zero(o[i])) << "output " << i;
    }
  }
  return first_difference(o, o32) != -1;
}

TYPED_TEST_P(lowp_suite, bf16_products_match_reference) {
  int differing = 0, decode_cases = 0, decode_differing = 0;
  for (const bf16p_case& c : bf16p_cases()) {
    const gqa::head_map map = c.map();
    const bool decode = map.max_group_size() * c.sq <= 32;  // the direct path's rows (Note [decode tasks])
    bool four_rows = true;  // every KV head that serves a query head has 4 rows or more (Note [bf16 decode])
    index_t serving = 0;    // KV heads that serve a query head
    for (index_t g = 0; g < map.hkv(); ++g) {
      four_rows = four_rows && (map.group_size(g) == 0 || map.group_size(g) * c.sq >= 4);
      serving += map.group_size(g) > 0 ? 1 : 0;
    }
    // One serving KV head: the bf16 tiles from 20 rows (Note [bf16 tiles for few rows]); several: the walk.
    const bool bf16_decode = serving == 1 ? map.max_group_size() * c.sq >= 20 : four_rows;
    const bool differs = check_bf16p<TypeParam>(c);
    differing += differs && !decode ? 1 : 0;
    decode_cases += decode && bf16_decode ? 1 : 0;
    decode_differing += differs && decode ? 1 : 0;
  }
  // Where the bf16 products run (AMX tiles, or AVX512-BF16 on AMD), the tiled cases took them (their results
  // are not the fp32 products'); with AVX512-BF16 on AMD (no AMX), so did every decode case whose KV heads
  // have 4 rows or more (Note [bf16 decode]) or whose one serving KV head has 20 or more (Note [bf16 tiles
  // for few rows]), and no other.
  if (std::is_same_v<TypeParam, gqa::isa::avx512> && (gqa::isa::amx_tiles_granted() || gqa::isa::bf16_dot_fast())) {
    EXPECT_GE(differing, 10);
  }
  if (std::is_same_v<TypeParam, gqa::isa::avx512> && !gqa::isa::amx_tiles_granted() && gqa::isa::bf16_dot_fast()) {
    EXPECT_EQ(decode_differing, decode_cases);
  } else {
    EXPECT_EQ(decode_differing, 0);  // the fp32 products' bits, whatever the option
  }
}

/// NaN and inf in bf16 Q, K and V with the bf16 products: NaN exactly where the fp32 products give NaN,
/// ±inf where they give ±inf, finite elsewhere (Note [non-finite inputs]); non-finite keys and values a
/// row does not see (past the causal horizon, in a block a mask cuts: the fp32 band; in a block no mask
/// cuts: the bf16 tiles) never reach it.
template <class Isa>
void check_bf16p_nonfinite(int variant) {
  bf16p_case c;
  c.sq = 40, c.skv = 300, c.hq = 8, c.hkv = 2, c.d = 24, c.causal = true, c.seed = 400 + static_cast<std::uint64_t>(variant);
  if (variant >= 3) {  // decode tasks (Note [bf16 decode]): 4 queries, rows see keys [0, 297 + i)
    c.sq = 4;
    c.d = variant == 3 ? 64 : 40;  // whole loads, or masked ones
  }
  if (variant == 5) {  // one KV head, 3 queries × 8 heads: the bf16 tiles (Note [bf16 tiles for few rows])
    c.sq = 3;
    c.hkv = 1;
  }
  SCOPED_TRACE("bf16 products, non-finite inputs, variant " + std::to_string(variant));
  const auto nq = static_cast<std::size_t>(c.sq * c.hq * c.d), nk = static_cast<std::size_t>(c.skv * c.hkv * c.d);
  auto qw = gqa::test::rounded_kv<gqa::bf16>(gqa::test::random_floats(nq, c.seed * 3));
  auto kw = gqa::test::rounded_kv<gqa::bf16>(gqa::test::random_floats(nk, c.seed * 3 + 1));
  auto vw = gqa::test::rounded_kv<gqa::bf16>(gqa::test::random_floats(nk, c.seed * 3 + 2));
  const auto at = [&](index_t j, index_t g, index_t x) { return static_cast<std::size_t>((j * c.hkv + g) * c.d + x); };
  // Rows see keys [0, i + 261): block [0, 128) and [128, 256) uncut, [256, 300) cut by the horizon.
  if (variant == 0) {
    kw[at(290, 0, 3)] = k_nan;   // rows i >= 30 of KV head 0 see it
    vw[at(295, 1, 2)] = k_nan;   // column 2 of rows i >= 35 of KV head 1; a cut block: the fp32 band
    vw[at(299, 1, 5)] = -k_inf;  // only the last row sees it
  } else if (variant == 1) {
    vw[at(5, 1, 4)] = k_inf;     // every row of KV head 1 sees it, in an uncut block: the bf16 tiles
    vw[at(140, 0, 7)] = k_nan;   // every row of KV head 0, column 7
    qw[static_cast<std::size_t>((17 * c.hq + 2) * c.d + 1)] = k_nan;  // one query row
  } else if (variant == 2) {
    qw[static_cast<std::size_t>((3 * c.hq + 5) * c.d + 0)] = k_inf;  // an infinite query element: the row is NaN
    kw[at(280, 1, 0)] = k_inf;   // rows of KV head 1 that see key 280 (i >= 20): NaN
  } else if (variant == 3) {
    vw[at(298, 0, 3)] = k_nan;   // rows i >= 2 of KV head 0 (a unit the diagonal cuts: the fp32 band)
    vw[at(299, 1, 1)] = k_inf;   // only the last row of KV head 1
    vw[at(40, 1, 6)] = -k_inf;   // every row of KV head 1, in a unit no mask cuts: VDPBF16PS
    vw[at(71, 0, 2)] = k_nan;    // every row of KV head 0, column 2
  } else if (variant == 4) {
    kw[at(150, 0, 5)] = k_nan;   // every row of KV head 0: NaN
    qw[static_cast<std::size_t>((1 * c.hq + 6) * c.d + 2)] = k_inf;  // one row of KV head 1: NaN
    vw[at(77, 1, 0)] = k_inf;    // the other rows of KV head 1, column 0: +inf
  } else {                       // rows see keys [0, 298 + i): the last block is cut by the diagonal
    vw[at(298, 0, 3)] = k_nan;   // rows i >= 1, column 3 (a cut block with a NaN: the fp32 band)
    vw[at(299, 0, 1)] = k_inf;   // only the last query's rows, column 1
    vw[at(40, 0, 6)] = -k_inf;   // every row, in a block no mask cuts: the bf16 tiles
    qw[static_cast<std::size_t>((0 * c.hq + 5) * c.d + 2)] = k_inf;  // one row: NaN
  }
  const auto q16 = narrowed<gqa::bf16>(qw), k16 = narrowed<gqa::bf16>(kw), v16 = narrowed<gqa::bf16>(vw);
  std::vector<float> o, lse, o32, lse32;
  run_bf16p<Isa>(c, q16, k16, v16, true, 1, o, lse);
  run_bf16p<Isa>(c, q16, k16, v16, false, 1, o32, lse32);
  int nan = 0;
  for (std::size_t i = 0; i < o.size(); ++i) {
    EXPECT_EQ(std::isnan(o[i]), std::isnan(o32[i])) << "output " << i << ": " << o[i] << " against " << o32[i];
    EXPECT_EQ(std::isinf(o[i]), std::isinf(o32[i])) << "output " << i << ": " << o[i] << " against " << o32[i];
    if (std::isinf(o[i]) && std::isinf(o32[i])) {
      EXPECT_EQ(o[i], o32[i]) << "output " << i;
    }
    nan += std::isnan(o[i]) ? 1 : 0;
  }
  for (std::size_t i = 0; i < lse.size(); ++i) EXPECT_EQ(std::isnan(lse[i]), std::isnan(lse32[i])) << "LSE " << i;
  EXPECT_GT(nan, 0);
}

TYPED_TEST_P(lowp_suite, bf16_products_nonfinite_as_in_fp32) {
  for (int variant = 0; variant < 6; ++variant) check_bf16p_nonfinite<TypeParam>(variant);
}

/// A paged cache (shuffled pages of 16 slots) and a ragged batch with bf16 Q/K/V/O and the bf16 products:
/// bit for bit the dense call on the same keys (the same packed blocks, the same tile products).
TYPED_TEST_P(lowp_suite, bf16_products_paged_and_ragged_equal_dense) {
  using T = gqa::bf16;
  using kv_case = paged_kv_case<T>;
  const index_t hq = 12, hkv = kv_case::hkv, d = kv_case::d, ps = kv_case::ps, b = 2;
  const kv_case kv(292);
  for (const index_t sq : {index_t{1}, index_t{20}}) {
    SCOPED_TRACE("sq = " + std::to_string(sq));
    const auto q16 = narrowed<T>(gqa::test::rounded_kv<T>(gqa::test::random_floats(static_cast<std::size_t>(b * sq * hq * d), 291)));
    // The dense K/V of the paged cache's sequences (61 and 40 keys, capacity 64), through the page table.
    const index_t cap = 64;
    std::vector<T> kd(static_cast<std::size_t>(b * cap * hkv * d), T(0.0f)), vd = kd;
    for (index_t ib = 0; ib < b; ++ib)
      for (index_t j = 0; j < kv.lengths[static_cast<std::size_t>(ib)]; ++j) {
        const index_t page = kv.table[static_cast<std::size_t>(ib * 4 + j / ps)];
        for (index_t x = 0; x < hkv * d; ++x) {
          kd[static_cast<std::size_t>((ib * cap + j) * hkv * d + x)] = kv.k16[static_cast<std::size_t>((page * ps + j % ps) * hkv * d + x)];
          vd[static_cast<std::size_t>((ib * cap + j) * hkv * d + x)] = kv.v16[static_cast<std::size_t>((page * ps + j % ps) * hkv * d + x)];
        }
      }
    gqa::attention_options opt;
    opt.causal = true;
    const std::vector<int> lengths{61, 40};
    opt.kv_lengths = lengths;
    const auto map = gqa::head_map::uniform(hq, hkv);
    const auto no = static_cast<std::size_t>(b * sq * hq * d);
    std::vector<T> od(no, T(k_nan)), op(no, T(k_nan)), orag(no, T(k_nan));
    const auto qv = gqa::bshd<const T>(q16.data(), b, sq, hq, d);
    gqa::attend<TypeParam>(qv, gqa::bshd<const T>(kd.data(), b, cap, hkv, d), gqa::bshd<const T>(vd.data(), b, cap, hkv, d),
                           gqa::bshd(od.data(), b, sq, hq, d), map, opt);
    gqa::attention_options popt;
    popt.causal = true;
    gqa::attend<TypeParam>(qv, kv.h(), gqa::bshd(op.data(), b, sq, hq, d), map, popt);
    // Ragged: the dense keys of the two sequences packed back to back.
    std::vector<T> kr, vr;
    for (index_t ib = 0; ib < b; ++ib) {
      const auto from = static_cast<std::ptrdiff_t>(ib * cap * hkv * d), n = static_cast<std::ptrdiff_t>(lengths[static_cast<std::size_t>(ib)] * hkv * d);
      kr.insert(kr.end(), kd.begin() + from, kd.begin() + from + n);
      vr.insert(vr.end(), vd.begin() + from, vd.begin() + from + n);
    }
    const std::vector<int> cu_q{0, static_cast<int>(sq), static_cast<int>(2 * sq)}, cu_k{0, 61, 101};
    gqa::attend<TypeParam>(gqa::thd<const T>(q16.data(), b * sq, hq, d), gqa::thd<const T>(kr.data(), 101, hkv, d),
                           gqa::thd<const T>(vr.data(), 101, hkv, d), gqa::thd(orag.data(), b * sq, hq, d), map,
                           gqa::varlen{cu_q, cu_k}, popt);
    for (std::size_t i = 0; i < no; ++i) {
      ASSERT_EQ(op[i].bits, od[i].bits) << "paged, output " << i;
      ASSERT_EQ(orag[i].bits, od[i].bits) << "ragged, output " << i;
      ASSERT_TRUE(std::isfinite(gqa::to_float(od[i])));
    }
  }
}

/// Every registered variant through gqa::forward<Isa> with bf16 Q/K/V/O and the bf16 products: finite, and
/// within 2^-6 (V in [−1, 1]) of the same variant with the fp32 products (the variants' own plans and steps are
/// checked bit for bit with the fp32 products above; here the core's products change, nothing else).
TYPED_TEST_P(lowp_suite, bf16_products_every_variant) {
  using T = gqa::bf16;
  for_each_variant_case(800, [&](auto t, const variant_case& c) {
    using P = typename decltype(t)::type;
    const gqa::variant_heads& h = c.h;
    const index_t b = c.b, sq = c.sq, skv = c.skv, d = c.d;
    SCOPED_TRACE(c.trace(P::name, "bf16 Q/K/V/O, bf16 products"));
    const auto q16 = narrowed<T>(gqa::test::random_floats(static_cast<std::size_t>(b * sq * h.hq * d), c.seed));
    const auto k16 = narrowed<T>(c.keys());
    const auto v16 = narrowed<T>(gqa::test::random_floats(static_cast<std::size_t>(b * skv * h.kv_in * d), c.seed + 2));
    const auto no = static_cast<std::size_t>(b * sq * h.hq * d);
    std::vector<T> o1(no, T(k_nan)), o2(no, T(k_nan));
    for (const bool products : {true, false}) {
      gqa::attention_options opt;
      opt.causal = c.causal;
      opt.bf16_products = products;
      gqa::with_default_policy<P>(c.m, [&](P& p) {
        gqa::forward<TypeParam>(p, gqa::bshd<const T>(q16.data(), b, sq, h.hq, d), gqa::bshd<const T>(k16.data(), b, skv, h.kv_in, d),
                                gqa::bshd<const T>(v16.data(), b, skv, h.kv_in, d), gqa::bshd((products ? o1 : o2).data(), b, sq, h.hq, d), opt);
      });
    }
    double diff = 0.0;
    for (std::size_t i = 0; i < no; ++i) {
      ASSERT_TRUE(std::isfinite(gqa::to_float(o1[i])));
      diff = std::max(diff, static_cast<double>(std::fabs(gqa::to_float(o1[i]) - gqa::to_float(o2[i]))));
    }
    EXPECT_LE(diff, 0x1p-6);
  });
}

/// The VDPBF16PS register tiles on their own, wherever the CPU has AVX512-BF16 (also where the core does not
/// take them: with AMX, or on an Intel CPU, Note [bf16 tiles]): scores and P·V of bf16 inputs packed as the
/// core packs them, for register tiles of 1 to 6 rows and 1 to 4 vectors (row counts 1, 5, 6, 7, 13; key and column counts not multiples
/// of the slice), against double sums of the same products. Sums of exact products in fp32: within
/// (terms + 2) · 2^-24 · Σ|products| (and the initial O). Keys past nb score exactly 0 (zero padding).
TYPED_TEST_P(lowp_suite, bf16_dot_tiles_match_double_sums) {
  using T16 = gqa::detail::core::bf16_tiles<TypeParam>;
  if constexpr (!T16::available) {
    GTEST_SKIP() << "no bf16 tiles on this ISA";
  } else {
    if (!gqa::isa::cpu().avx512_bf16) GTEST_SKIP() << "this CPU has no AVX512-BF16";
    using gqa::bf16;
    using gqa::detail::core::round_up;
    std::uint64_t seed = 900;
    for (const index_t d : {index_t{5}, index_t{64}, index_t{130}})
      for (const index_t rows : {index_t{1}, index_t{5}, index_t{6}, index_t{7}, index_t{13}})
        for (const index_t nb : {index_t{1}, index_t{16}, index_t{70}, index_t{128}, index_t{200}}) {
          SCOPED_TRACE("d " + std::to_string(d) + ", rows " + std::to_string(rows) + ", keys " + std::to_string(nb));
          const index_t dp = T16::padded_d(d), nbp = round_up(nb, index_t{16}), rows16 = T16::padded_rows(rows);
          const auto q = narrowed<bf16>(gqa::test::random_floats(static_cast<std::size_t>(rows * d), ++seed));
          const auto k = narrowed<bf16>(gqa::test::random_floats(static_cast<std::size_t>(nb * d), ++seed));
          std::vector<std::uint16_t> q16(static_cast<std::size_t>(rows16 * dp), 0);
          for (index_t r = 0; r < rows; ++r) T16::pack_q_row(q.data() + r * d, d, q16.data() + r * dp);
          std::vector<std::uint32_t> kp(static_cast<std::size_t>(nbp * dp / 2), 0xFFFFFFFFu);
          T16::pack_k([&](index_t j) { return k.data() + j * d; }, d, nb, nbp, kp.data());
          std::vector<float> sc(static_cast<std::size_t>(rows16 * nbp), k_nan);
          int betweens = 0;
          T16::scores(q16.data(), rows, d, kp.data(), nbp, sc.data(), nbp, [&] { ++betweens; }, false);
          EXPECT_EQ(betweens, T16::score_steps(rows, nbp, false));
          for (index_t r = 0; r < rows; ++r)
            for (index_t j = 0; j < nbp; ++j) {
              double ref = 0.0, mag = 0.0;
              for (index_t x = 0; x < d && j < nb; ++x) {
                const double t = static_cast<double>(gqa::to_float(q[static_cast<std::size_t>(r * d + x)])) *
                                 gqa::to_float(k[static_cast<std::size_t>(j * d + x)]);
                ref += t;
                mag += std::fabs(t);
              }
              const float got = sc[static_cast<std::size_t>(r * nbp + j)];
              if (j >= nb) {
                ASSERT_EQ(got, 0.0f) << "score " << r << ", " << j;
              } else {
                ASSERT_LE(std::fabs(got - ref), static_cast<double>(d + 2) * 0x1p-24 * mag)
                    << "score " << r << ", " << j;
              }
            }
          // P·V: weights in [0, 1] rounded to bf16, V of dv columns, O starting from values of its own.
          for (const index_t dv : {index_t{8}, index_t{40}, index_t{130}}) {
            const index_t dvp = round_up(dv, index_t{16}), nk = T16::padded_keys(nb), ldp = nk;
            const auto pw = gqa::test::random_floats(static_cast<std::size_t>(rows * nbp), ++seed, 0.0f, 1.0f);
            std::vector<float> pf(static_cast<std::size_t>(rows * nbp), 0.0f);
            for (index_t r = 0; r < rows; ++r)
              for (index_t j = 0; j < nb; ++j) {
                const auto at = static_cast<std::size_t>(r * nbp + j);
                pf[at] = pw[at];
              }
            std::vector<std::uint16_t> p16(static_cast<std::size_t>(rows16 * ldp), 0xFFFFu);
            for (index_t r = 0; r < rows; ++r) T16::round_row(pf.data() + r * nbp, nbp, p16.data() + r * ldp);
            const auto v = narrowed<bf16>(gqa::test::random_floats(static_cast<std::size_t>(nb * dv), ++seed));
            std::vector<std::uint32_t> vp(static_cast<std::size_t>(nk / 2 * dvp), 0xFFFFFFFFu);
            EXPECT_FALSE(T16::pack_v([&](index_t j) { return v.data() + j * dv; }, dv, nb, dvp, vp.data()));
            const auto o0 = gqa::test::random_floats(static_cast<std::size_t>(rows * dvp), ++seed);
            std::vector<float> o = o0, tail(static_cast<std::size_t>(16 * dvp));
            T16::accumulate_pv(p16.data(), rows, ldp, vp.data(), nk, dvp, o.data(), tail.data(), false);
            for (index_t r = 0; r < rows; ++r)
              for (index_t c = 0; c < dv; ++c) {
                const double start = o0[static_cast<std::size_t>(r * dvp + c)];
                double ref = start, mag = std::fabs(start);
                for (index_t j = 0; j < nb; ++j) {
                  const double t = static_cast<double>(gqa::to_float(bf16(pf[static_cast<std::size_t>(r * nbp + j)]))) *
                                   gqa::to_float(v[static_cast<std::size_t>(j * dv + c)]);
                  ref += t;
                  mag += std::fabs(t);
                }
                const float got = o[static_cast<std::size_t>(r * dvp + c)];
                ASSERT_LE(std::fabs(got - ref), static_cast<double>(nb + 2) * 0x1p-24 * mag)
                    << "dv " << dv << ", output " << r << ", " << c;
              }
          }
        }
  }
}


// --- int8 products (options.int8_products; Note [int8 decode products] in detail/core/decode.hpp) ---

/// Q (b, sq, hq, d, BSHD) with each row quantised by gqa::quantize_q8's rule and dequantised: the values
/// the int8 products multiply K by (Note [int8 products tolerance]).
std::vector<float> quantised_q(const std::vector<float>& q, index_t b, index_t sq, index_t hq, index_t d) {
  std::vector<std::int8_t> values(q.size());
  std::vector<float> scales(static_cast<std::size_t>(b * sq * hq)), out(q.size());
  gqa::quantize_q8(gqa::bshd<const float>(q.data(), b, sq, hq, d), gqa::bshd(values.data(), b, sq, hq, d),
                   gqa::bshd(scales.data(), b, sq, hq, 1));
  gqa::dequantize_q8({gqa::bshd<const std::int8_t>(values.data(), b, sq, hq, d),
                      gqa::bshd<const float>(scales.data(), b, sq, hq, 1)},
                     gqa::bshd(out.data(), b, sq, hq, d));
  return out;
}

/// Whether the int8 products can run on Isa on this CPU: AVX-512 with AVX512-VNNI; AVX2 on any CPU (with
/// AVX-VNNI or by the pre-VNNI instructions, Note [int8 products without VNNI] in isa/i8_dot.hpp).
template <class Isa>
bool int8_products_here() {
  return GQA_X86_CPUID && ((std::is_same_v<Isa, gqa::isa::avx512> && gqa::isa::cpu().avx512_vnni) ||
                           std::is_same_v<Isa, gqa::isa::avx2>);
}

/// Whether an attend() call of this head map and query length takes the int8 products on Isa: where they
/// can run, a decode call (Note [decode tasks]: every KV head's rows, group × sq, at most 32), whose tasks
/// walk several KV heads or take one KV head's direct path.
template <class Isa>
bool int8_products_run(const gqa::head_map& map, index_t sq) {
  return int8_products_here<Isa>() && map.max_group_size() * sq <= 32;
}

/// Case c with int8 K/V and options.int8_products: where the products run, against the double reference
/// fed the quantised Q and the dequantised K/V within Note [int8 products tolerance], and with a non-finite
/// Q element in each batch bit for bit the fp32 products (the task keeps them); elsewhere bit for bit the
/// call with the option off. Then with a NaN K scale and a NaN V scale: NaN exactly where the option off
/// gives NaN (counted in nan_cases when some output is). Returns whether the output or the LSE differs from
/// the option off.
template <class Isa>
bool check_case_q8_products(const lowp_case& c, int* nan_cases = nullptr) {
  SCOPED_TRACE("int8 products: " + c.describe());
  const auto nq = static_cast<std::size_t>(c.b * c.sq * c.hq * c.d);
  const auto nk = static_cast<std::size_t>(c.b * c.skv * c.hkv * c.d), nv = static_cast<std::size_t>(c.b * c.skv * c.hkv * c.dv);
  auto qd = gqa::test::random_floats(nq, c.seed * 3, c.lo, c.hi);
  q8_kv k8 = quantised(c, gqa::test::random_floats(nk, c.seed * 3 + 1, c.lo, c.hi), c.d);
  q8_kv v8 = quantised(c, gqa::test::random_floats(nv, c.seed * 3 + 2, c.lo, c.hi), c.dv);
  const gqa::head_map map = c.map();
  const auto no = static_cast<std::size_t>(c.b * c.sq * c.hq * c.dv), nl = static_cast<std::size_t>(c.b * c.hq * c.sq);
  const auto run = [&](bool products, std::vector<float>& o, std::vector<float>& lse) {
    o.assign(no, k_nan);
    lse.assign(nl, k_nan);
    gqa::attention_options opt;
    opt.causal = c.causal;
    opt.kv_lengths = c.kv_lengths;
    opt.window_left = c.window_left;
    opt.lse = lse;
    opt.int8_products = products;
    gqa::attend<Isa>(gqa::bshd<const float>(qd.data(), c.b, c.sq, c.hq, c.d), k8.view, v8.view,
                     gqa::bshd(o.data(), c.b, c.sq, c.hq, c.dv), map, opt);
  };
  std::vector<float> o, lse, o_off, lse_off;
  run(true, o, lse);
  run(false, o_off, lse_off);
  const bool differs = first_difference(o, o_off) != -1 || first_difference(lse, lse_off) != -1;
  if (int8_products_run<Isa>(map, c.sq)) {
    const auto qq = quantised_q(qd, c.b, c.sq, c.hq, c.d);
    expect_near_reference(c, gqa::bshd<const float>(qq.data(), c.b, c.sq, c.hq, c.d), map, k8.deq, v8.deq, o, lse, true);
  } else {
    EXPECT_EQ(first_difference(o, o_off), -1) << "the int8 products ran where they should not";
    EXPECT_EQ(first_difference(lse, lse_off), -1);
  }
  // A NaN in batch 0's Q and an inf in the last batch's: their tasks keep the fp32 products, whose bits
  // (NaN where they give NaN) the call returns.
  const auto q_finite = qd;
  qd[0] = k_nan;
  qd[nq - 1] = k_inf;
  run(true, o, lse);
  run(false, o_off, lse_off);
  EXPECT_EQ(first_difference(o, o_off), -1) << "non-finite Q";
  EXPECT_EQ(first_difference(lse, lse_off), -1) << "non-finite Q";
  // A NaN scale in a K row and in a V row (what quantize_q8 writes for a row holding NaN or inf): the scores
  // or the weights of the rows that see them are NaN, and those rows' units take the fp32 products (Note
  // [int8 decode P·V]): NaN exactly where the call without the products gives NaN, finite elsewhere.
  qd = q_finite;
  k8.scales[k8.scales.size() / 2] = k_nan;
  v8.scales[0] = k_nan;
  run(true, o, lse);
  run(false, o_off, lse_off);
  long bad = -1, nans = 0;  // the first output whose class differs; the NaN outputs
  for (std::size_t i = 0; i < o.size() && bad < 0; ++i) {
    if (std::isnan(o[i]) != std::isnan(o_off[i]) || std::isinf(o[i])) bad = static_cast<long>(i);
    nans += std::isnan(o[i]) ? 1 : 0;
  }
  EXPECT_EQ(bad, -1) << "NaN scale: output " << bad << " = " << (bad < 0 ? 0.0f : o[static_cast<std::size_t>(bad)])
                     << ", without the products " << (bad < 0 ? 0.0f : o_off[static_cast<std::size_t>(bad)]);
  if (nan_cases != nullptr && nans > 0) ++*nan_cases;  // (a masked or unused key's NaN reaches no row)
  for (std::size_t i = 0; i < lse.size(); ++i) EXPECT_EQ(std::isnan(lse[i]), std::isnan(lse_off[i])) << "NaN scale: LSE " << i;
  return differs;
}

TYPED_TEST_P(lowp_suite, int8_products_match_reference) {
  int ran = 0, differing = 0, nan_cases = 0;
  for (const lowp_case& c : attend_cases()) {
    // d = 1: one element per row quantises to ±127 · scale, often q itself, so the results need not differ.
    const bool runs = int8_products_run<TypeParam>(c.map(), c.sq) && c.d > 1;
    const bool differs = check_case_q8_products<TypeParam>(c, &nan_cases);
    ran += runs ? 1 : 0;
    differing += runs && differs ? 1 : 0;
  }
  // Where they run (AVX-512 with AVX512-VNNI, AVX2) the decode cases took them: their results
  // are not the fp32 products'.
  if (int8_products_here<TypeParam>()) {
    EXPECT_GE(ran, 10);
  }
  EXPECT_EQ(differing, ran);
  EXPECT_GE(nan_cases, 10) << "cases where a NaN scale reached an output";
  // Longer rows (d 128 and 256: whole 64-byte loads, several per row) over 2100 keys (split KV), and a
  // row of zeros (scale 0).
  lowp_case c;
  c.b = 1, c.sq = 1, c.skv = 2100, c.hq = 32, c.hkv = 8, c.d = c.dv = 128, c.seed = 950;
  check_case_q8_products<TypeParam>(c);
  c.d = c.dv = 256, c.sq = 2, c.causal = true, c.skv = 300, c.seed = 951;
  check_case_q8_products<TypeParam>(c);
}

/// Every registered variant with an int8 cache and options.int8_products: its output is either the fp32
/// products' bit for bit (calls that do not take them: prefill, WGQA's core on its fp32 copy) or,
/// where they ran, within 8·d·u·max(1, max|V|) of the same variant on the quantised Q and the dequantised
/// K/V in fp32 (Note [int8 products tolerance]); where they can run (int8_products_here) some decode cases
/// ran them.
TYPED_TEST_P(lowp_suite, int8_products_every_variant) {
  int ran = 0;
  for_each_variant_case(800, [&](auto t, const variant_case& c) {
    using P = typename decltype(t)::type;
    const gqa::model_shape& m = c.m;
    const gqa::variant_heads& h = c.h;
    const index_t b = c.b, sq = c.sq, skv = c.skv, d = c.d;
    SCOPED_TRACE(c.trace(P::name, "int8 K/V, int8 products"));
    const auto qd = gqa::test::random_floats(static_cast<std::size_t>(b * sq * h.hq * d), c.seed);
    const auto qq = quantised_q(qd, b, sq, h.hq, d);
    lowp_case lc;
    lc.b = b, lc.skv = skv, lc.hkv = h.kv_in;
    const q8_kv k8 = quantised(lc, c.keys(), d);
    const q8_kv v8 = quantised(lc, gqa::test::random_floats(static_cast<std::size_t>(b * skv * h.kv_in * d), c.seed + 2), d);
    const auto no = static_cast<std::size_t>(b * sq * h.hq * d);
    std::vector<float> o(no, k_nan), o_off(no, k_nan), o32(no, k_nan);
    gqa::attention_options opt;
    opt.causal = c.causal;
    const auto run = [&](const std::vector<float>& qv, const auto& k, const auto& v, std::vector<float>& out, bool products) {
      opt.int8_products = products;
      gqa::with_default_policy<P>(m, [&](P& p) {
        gqa::forward<TypeParam>(p, gqa::bshd<const float>(qv.data(), b, sq, h.hq, d), k, v,
                                gqa::bshd(out.data(), b, sq, h.hq, d), opt);
      });
    };
    run(qd, k8.view, v8.view, o, true);
    run(qd, k8.view, v8.view, o_off, false);
    for (const float x : o) ASSERT_TRUE(std::isfinite(x));
    if (first_difference(o, o_off) == -1) return;
    ++ran;
    run(qq, gqa::bshd<const float>(k8.deq.data(), b, skv, h.kv_in, d), gqa::bshd<const float>(v8.deq.data(), b, skv, h.kv_in, d),
        o32, false);
    double diff = 0.0, vmax = 1.0;
    for (std::size_t i = 0; i < o.size(); ++i) diff = std::max(diff, std::fabs(static_cast<double>(o[i]) - o32[i]));
    for (const float x : v8.deq) vmax = std::max(vmax, static_cast<double>(std::fabs(x)));
    // P·V in integers: Note [int8 P·V tolerance]'s bound over every (query head, KV head) pair, whichever the
    // policy allocates.
    const double pv = gqa::test::int8_pv_bound(
        gqa::bshd<const float>(qq.data(), b, sq, h.hq, d), gqa::bshd<const float>(k8.deq.data(), b, skv, h.kv_in, d),
        gqa::bshd<const float>(v8.deq.data(), b, skv, h.kv_in, d), {}, 1.0 / std::sqrt(static_cast<double>(d)), c.causal);
    EXPECT_LE(diff, 8.0 * static_cast<double>(d) * 0x1p-24 * vmax + pv);
  });
  if (int8_products_here<TypeParam>()) {
    EXPECT_GE(ran, 10);
  } else {
    EXPECT_EQ(ran, 0);
  }
}

/// int8 decode's integer P·V (i8_decode::decode_pv, Note [int8 decode P·V]) against its definition: each
/// row's weights times V's scales, p', rounded to nearest even at 32767 / max|p'| (in float, as specified), the int8 products
/// summed exactly (int64 here), times max|p| / 32767 and added to O; within the fp32 roundings of that
/// last step (the int32 sum's conversion and one fused multiply-add: 2^-23 of the terms). Rows whose weights
/// hold a NaN or an infinity, or are all zero, are left untouched (the former reported to the caller).
/// Shapes: 1-7 rows, 1-64 keys (odd counts pair the last key with itself), d_v 1-200 (whole 64- or
/// 16-column slabs and every tail), V at a row stride wider than d_v.
TYPED_TEST_P(lowp_suite, int8_pv_matches_rounded_weights) {
  using I8 = gqa::detail::core::i8_decode<TypeParam>;
  if constexpr (!I8::available) {
    GTEST_SKIP() << "no int8 products on this ISA";
  } else {
    if (!I8::supported()) GTEST_SKIP() << "this CPU lacks the VNNI instructions";
    std::uint64_t seed = 1700;
    for (const index_t dv : {index_t{1}, index_t{5}, index_t{16}, index_t{17}, index_t{64}, index_t{100}, index_t{128},
                             index_t{200}})
      for (const int rows : {1, 2, 3, 4, 5, 7})
        for (const index_t n : {index_t{1}, index_t{2}, index_t{7}, index_t{32}, index_t{33}, index_t{63}, index_t{64}}) {
          SCOPED_TRACE("dv " + std::to_string(dv) + ", rows " + std::to_string(rows) + ", keys " + std::to_string(n));
          static_assert(I8::pv_chunk == 64);
          const index_t ldv = dv + 3, ldp = 72, ldo = dv + 1;
          std::vector<std::int8_t> v(static_cast<std::size_t>(n * ldv));
          const auto vf = gqa::test::random_floats(v.size(), ++seed, -128.0f, 128.0f);
          for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<std::int8_t>(std::clamp(std::floor(vf[i]), -128.0f, 127.0f));
          auto p = gqa::test::random_floats(static_cast<std::size_t>(rows * ldp), ++seed, 0.0f, 1.0f);
          for (std::size_t i = 0; i < p.size(); i += 3) p[i] *= 1e-3f;  // small weights among large ones
          // Row 1 holds a NaN, row 2 only zeros, row 4 an infinity, row 5 a negative weight (scales may be).
          if (rows > 1) p[static_cast<std::size_t>(ldp + n - 1)] = k_nan;
          if (rows > 2) std::fill_n(p.begin() + 2 * ldp, n, 0.0f);
          if (rows > 4) p[static_cast<std::size_t>(4 * ldp)] = k_inf;
          if (rows > 5) p[static_cast<std::size_t>(5 * ldp + n / 2)] = -0.75f;
          const auto o0 = gqa::test::random_floats(static_cast<std::size_t>(rows * ldo), ++seed);
          std::vector<float> o = o0;
          auto vs = gqa::test::random_floats(static_cast<std::size_t>(n), ++seed, 0.001f, 0.02f);  // V's scales
          const std::uint64_t left = I8::decode_pv(rows, p.data(), ldp, n, v.data(), ldv, vs.data(), dv, o.data(), ldo);
          for (int r = 0; r < rows; ++r) {
            const float* pr = p.data() + r * ldp;
            float mx = 0.0f;
            bool finite = true;
            std::vector<float> pv(static_cast<std::size_t>(n));  // the weights times V's scales, in float
            for (index_t j = 0; j < n; ++j) {
              pv[static_cast<std::size_t>(j)] = pr[j] * vs[static_cast<std::size_t>(j)];
              finite = finite && std::isfinite(pv[static_cast<std::size_t>(j)]);
              mx = std::max(mx, std::fabs(pv[static_cast<std::size_t>(j)]));
            }
            const bool untouched = !finite || mx == 0.0f;
            EXPECT_EQ((left >> r) & 1U, finite ? 0U : 1U) << "row " << r;
            const float up = 32767.0f / mx, f = mx / 32767.0f;
            for (index_t c = 0; c < dv; ++c) {
              const float start = o0[static_cast<std::size_t>(r * ldo + c)];
              const float got = o[static_cast<std::size_t>(r * ldo + c)];
              if (untouched) {
                ASSERT_EQ(std::memcmp(&got, &start, sizeof got), 0) << "row " << r << " was changed, column " << c;
                continue;
              }
              std::int64_t sum = 0;
              for (index_t j = 0; j < n; ++j)
                sum += static_cast<std::int64_t>(std::nearbyint(pv[static_cast<std::size_t>(j)] * up)) *
                       v[static_cast<std::size_t>(j * ldv + c)];
              const double term = static_cast<double>(f) * static_cast<double>(sum);
              const double want = static_cast<double>(start) + term;
              ASSERT_LE(std::fabs(got - want), 0x1p-23 * (std::fabs(start) + std::fabs(term)) + 1e-30)
                  << "row " << r << ", column " << c;
            }
          }
          // Columns past dv of O are not written.
          for (int r = 0; r < rows; ++r) {
            EXPECT_EQ(o[static_cast<std::size_t>(r * ldo + dv)], o0[static_cast<std::size_t>(r * ldo + dv)]);
          }
        }
  }
}

/// int8 decode's integer Q·Kᵀ (i8_decode::decode_scores, Note [int8 decode products]) against its definition,
/// bit for bit: s[r][u] = (mul[r] · Σ_c q_r[c] · k_u[c]) · ks[u], the sum exact (int64 here) and the two
/// products in fp32 as specified. The extremes every engine must sum exactly: K bytes of -128 and 127
/// against Q bytes of ±127 (the quantiser's range; without VNNI the pair sums of VPMADDUBSW reach 32512 of
/// int16's 32767: Note [int8 products without VNNI] in isa/i8_dot.hpp), rows of all-extreme bytes, and
/// random bytes. Shapes: 1-7 rows, d 1-200 (whole loads and every tail), K rows at scattered addresses.
TYPED_TEST_P(lowp_suite, int8_scores_match_integer_sums) {
  using I8 = gqa::detail::core::i8_decode<TypeParam>;
  if constexpr (!I8::available) {
    GTEST_SKIP() << "no int8 products on this ISA";
  } else {
    if (!I8::supported()) GTEST_SKIP() << "this CPU lacks the VNNI instructions";
    std::uint64_t seed = 2600;
    for (const index_t d : {index_t{1}, index_t{5}, index_t{31}, index_t{32}, index_t{33}, index_t{64}, index_t{100},
                            index_t{128}, index_t{200}})
      for (const int rows : {1, 2, 3, 4, 5, 7})
        for (int pattern = 0; pattern < 3; ++pattern) {  // random, extremes of equal signs, of opposite signs
          SCOPED_TRACE("d " + std::to_string(d) + ", rows " + std::to_string(rows) + ", pattern " +
                       std::to_string(pattern));
          const index_t ldq = I8::padded_d(d) + 32, lds = 9;
          std::vector<std::int8_t> q(static_cast<std::size_t>(rows * ldq), 0);
          const auto qf = gqa::test::random_floats(q.size(), ++seed, -127.0f, 127.0f);
          for (int r = 0; r < rows; ++r)
            for (index_t c = 0; c < d; ++c) {
              const std::size_t i = static_cast<std::size_t>(r * ldq + c);
              const float x = std::clamp(std::nearbyint(qf[i]), -127.0f, 127.0f);
              q[i] = static_cast<std::int8_t>(pattern == 0 ? x : (r + c) % 2 == 0 ? 127.0f : -127.0f);
            }
          // Four K rows, 64 bytes apart plus an odd offset, inside a larger buffer.
          std::vector<std::int8_t> kbuf(static_cast<std::size_t>(4 * (d + 67)), 55);
          const auto kf = gqa::test::random_floats(kbuf.size(), ++seed, -128.0f, 128.0f);
          const std::int8_t* k[4];
          for (int u = 0; u < 4; ++u) {
            std::int8_t* ku = kbuf.data() + u * (d + 67) + 3;
            for (index_t c = 0; c < d; ++c) {
              const std::int8_t qc = q[static_cast<std::size_t>(c)];  // row 0's byte
              const float kr = std::clamp(std::floor(kf[static_cast<std::size_t>(u * d + c)]), -128.0f, 127.0f);
              ku[c] = static_cast<std::int8_t>(pattern == 0 ? kr : pattern == 1 ? (qc > 0 ? 127.0f : -128.0f)
                                                                                 : (qc > 0 ? -128.0f : 127.0f));
              if (u == 3 && c % 3 == 0) ku[c] = -128;
            }
            k[u] = ku;
          }
          std::vector<float> mul(static_cast<std::size_t>(rows));
          std::vector<std::int32_t> bias(static_cast<std::size_t>(rows));
          const auto mf = gqa::test::random_floats(mul.size(), ++seed, 1e-4f, 1e-2f);
          for (int r = 0; r < rows; ++r) {
            mul[static_cast<std::size_t>(r)] = mf[static_cast<std::size_t>(r)];
            std::int32_t sum = 0;
            for (index_t c = 0; c < d; ++c) sum += q[static_cast<std::size_t>(r * ldq + c)];
            bias[static_cast<std::size_t>(r)] = 128 * sum;
          }
          const float ks[4] = {0.011f, 0.5f, 3.0f, 0.0078125f};
          std::vector<float> s(static_cast<std::size_t>(rows * lds), -1.0f);
          I8::decode_scores(rows, q.data(), ldq, k, d, mul.data(), bias.data(), ks, s.data(), lds);
          for (int r = 0; r < rows; ++r)
            for (int u = 0; u < 4; ++u) {
              std::int64_t sum = 0;
              for (index_t c = 0; c < d; ++c)
                sum += std::int64_t{q[static_cast<std::size_t>(r * ldq + c)]} * std::int64_t{k[u][c]};
              const float want = (mul[static_cast<std::size_t>(r)] * static_cast<float>(sum)) * ks[u];
              const float got = s[static_cast<std::size_t>(r * lds + u)];
              ASSERT_EQ(std::memcmp(&got, &want, sizeof got), 0)
                  << "row " << r << ", key " << u << ": " << got << " against " << want << " (sum " << sum << ")";
            }
          for (int r = 0; r < rows; ++r)
            for (index_t u = 4; u < lds; ++u) EXPECT_EQ(s[static_cast<std::size_t>(r * lds + u)], -1.0f);
        }
  }
}

// --- int8 pages and ragged int8 batches (gqa::paged_q8_kv; gqa::attend(varlen) on q8_views) ---

/// An int8 cache of `lengths.size()` sequences held three ways over the same quantised rows: dense (b, cap,
/// hkv, d), cap the longest length (the key count a paged call's tasks and split-KV chunks follow), read with
/// options.kv_lengths = lengths (k, v: their dequantised floats are the reference's K/V); a pool of pages
/// of ps slots, each sequence's pages at shuffled places (paged()); and the rows packed back to back
/// (ragged_k(), ragged_v(), offsets cu_k). The pool also has `spare` pages no sequence uses. Every slot no
/// sequence reads (the spare pages, the slots past a length on a sequence's last page) holds values of 127
/// with a NaN scale, and the table's unused entries are -1, so a call that read one of them would show it
/// (a NaN output, a rejected page id).
struct int8_pages {
  index_t b, hkv, d, ps, max_pages, cap, np = 0;
  std::vector<index_t> lengths;
  q8_kv k, v;
  std::vector<std::int8_t> pk, pv;
  std::vector<float> pks, pvs;
  std::vector<std::int32_t> table;
  std::vector<std::int8_t> rk, rv;
  std::vector<float> rks, rvs;
  std::vector<index_t> cu_k{0};

  int8_pages(std::vector<index_t> lens, index_t hkv_, index_t d_, index_t ps_, std::uint64_t seed, index_t spare = 3)
      : b(static_cast<index_t>(lens.size())), hkv(hkv_), d(d_), ps(ps_), max_pages(0), cap(1), lengths(std::move(lens)) {
    for (const index_t n : lengths) {
      max_pages = std::max(max_pages, (n + ps - 1) / ps);
      cap = std::max(cap, n);
    }
    max_pages = std::max<index_t>(max_pages, 1);
    const lowp_case c = dense_case();
    const auto n = static_cast<std::size_t>(b * cap * hkv * d);
    k = quantised(c, gqa::test::random_floats(n, seed, c.lo, c.hi), d);
    v = quantised(c, gqa::test::random_floats(n, seed + 1, c.lo, c.hi), d);
    index_t used = 0;
    for (const index_t len : lengths) used += (len + ps - 1) / ps;
    np = used + spare;
    // The pages in an order given by the seed: sequences take the first `used`, in turn.
    std::vector<std::int32_t> order(static_cast<std::size_t>(np));
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<std::int32_t>(i);
    std::sort(order.begin(), order.end(), [&](std::int32_t x, std::int32_t y) {
      return gqa::random::hash(seed, {0x9a9e, static_cast<std::uint64_t>(x)}) <
             gqa::random::hash(seed, {0x9a9e, static_cast<std::uint64_t>(y)});
    });
    const auto slots = static_cast<std::size_t>(np * ps * hkv);
    pk.assign(slots * static_cast<std::size_t>(d), 127);
    pv = pk;
    pks.assign(slots, k_nan);
    pvs = pks;
    table.assign(static_cast<std::size_t>(b * max_pages), -1);
    std::size_t next = 0;
    for (index_t ib = 0; ib < b; ++ib) {
      const index_t len = lengths[static_cast<std::size_t>(ib)];
      for (index_t i = 0; i < (len + ps - 1) / ps; ++i) table[static_cast<std::size_t>(ib * max_pages + i)] = order[next++];
      for (index_t j = 0; j < len; ++j) {
        const index_t page = table[static_cast<std::size_t>(ib * max_pages + j / ps)];
        for (index_t g = 0; g < hkv; ++g) {
          const auto src = static_cast<std::size_t>((ib * cap + j) * hkv + g);
          const auto dst = static_cast<std::size_t>((page * ps + j % ps) * hkv + g);
          const auto dd = static_cast<std::size_t>(d);
          const std::int8_t* krow = k.values.data() + src * dd;
          const std::int8_t* vrow = v.values.data() + src * dd;
          std::copy_n(krow, d, pk.data() + dst * dd);
          std::copy_n(vrow, d, pv.data() + dst * dd);
          pks[dst] = k.scales[src];
          pvs[dst] = v.scales[src];
          rk.insert(rk.end(), krow, krow + d);
          rv.insert(rv.end(), vrow, vrow + d);
          rks.push_back(k.scales[src]);
          rvs.push_back(v.scales[src]);
        }
      }
      cu_k.push_back(cu_k.back() + len);
    }
  }
  /// The dense cache's case (its b, cap, hkv, d; kv_lengths; the caller sets sq, hq, causal).
  lowp_case dense_case() const {
    lowp_case c;
    c.b = b, c.skv = cap, c.hkv = hkv, c.d = c.dv = d;
    c.kv_lengths = lengths;
    return c;
  }
  gqa::paged_q8_kv paged() const {
    return {{gqa::page_pool<const std::int8_t>(pk.data(), np, ps, hkv, d), gqa::page_pool<const float>(pks.data(), np, ps, hkv, 1)},
            {gqa::page_pool<const std::int8_t>(pv.data(), np, ps, hkv, d), gqa::page_pool<const float>(pvs.data(), np, ps, hkv, 1)},
            table, max_pages, lengths};
  }
  index_t total_k() const { return cu_k.back(); }
  gqa::q8_view ragged_k() const {
    return {gqa::thd<const std::int8_t>(rk.data(), total_k(), hkv, d), gqa::thd<const float>(rks.data(), total_k(), hkv, 1)};
  }
  gqa::q8_view ragged_v() const {
    return {gqa::thd<const std::int8_t>(rv.data(), total_k(), hkv, d), gqa::thd<const float>(rvs.data(), total_k(), hkv, 1)};
  }
};

/// The outputs and LSEs of one query batch on an int8_pages cache: the dense call, the paged call and the
/// ragged call (its LSE, laid out [hq][total_q], put back in the dense [b][hq][sq] order).
struct int8_three_runs {
  std::vector<float> o, lse, op, lsep, orag, lserag;
};
template <class Isa>
int8_three_runs run_int8_three(const int8_pages& kv, const std::vector<float>& qd, index_t sq, const gqa::head_map& map,
                               bool causal, bool products, int threads) {
  const index_t b = kv.b, hq = map.hq(), d = kv.d;
  const auto no = static_cast<std::size_t>(b * sq * hq * d), nl = static_cast<std::size_t>(b * hq * sq);
  int8_three_runs r{std::vector<float>(no, k_nan), std::vector<float>(nl, k_nan), std::vector<float>(no, k_nan),
                    std::vector<float>(nl, k_nan), std::vector<float>(no, k_nan), std::vector<float>(nl, k_nan)};
  gqa::attention_options opt;
  opt.causal = causal;
  opt.int8_products = products;
  opt.num_threads = threads;
  opt.kv_lengths = kv.lengths;
  opt.lse = r.lse;
  const auto q = gqa::bshd<const float>(qd.data(), b, sq, hq, d);
  gqa::attend<Isa>(q, kv.k.view, kv.v.view, gqa::bshd(r.o.data(), b, sq, hq, d), map, opt);
  opt.kv_lengths = {};
  opt.lse = r.lsep;
  gqa::attend<Isa>(q, kv.paged(), gqa::bshd(r.op.data(), b, sq, hq, d), map, opt);
  std::vector<float> lse_thd(nl, k_nan);
  opt.lse = lse_thd;
  std::vector<index_t> cu_q;
  for (index_t ib = 0; ib <= b; ++ib) cu_q.push_back(ib * sq);
  gqa::attend<Isa>(gqa::thd<const float>(qd.data(), b * sq, hq, d), kv.ragged_k(), kv.ragged_v(),
                   gqa::thd(r.orag.data(), b * sq, hq, d), map, gqa::varlen{cu_q, kv.cu_k}, opt);
  for (index_t ib = 0; ib < b; ++ib)
    for (index_t h = 0; h < hq; ++h)
      for (index_t i = 0; i < sq; ++i)
        r.lserag[static_cast<std::size_t>((ib * hq + h) * sq + i)] = lse_thd[static_cast<std::size_t>(h * b * sq + ib * sq + i)];
  return r;
}

/// One query batch (sq positions, heads of `map`) on an int8_pages cache, with options.int8_products off
/// and on, on 1 and 2 threads. Products off: the paged and the ragged call give the dense int8 call's
/// output and LSE bit for bit (the same rows, the same products: Note [int8 K/V]). Products on: the ragged
/// call is still the dense call bit for bit (its blocks are the dense call's: one row stride, integer P·V),
/// and so is the paged call's LSE (the same integer Q·Kᵀ and softmax). The paged output is the dense call's
/// bit for bit where the products do not run (int8_products_run: prefill tasks, AVX-512 without VNNI) and
/// with pages of a multiple of 64 slots (each 64-key chunk of P·V lies in one page, so it is rounded as on
/// the dense cache); with smaller pages a chunk across pages takes other products (Note [int8 decode P·V]),
/// so the output is held to the double reference on the quantised Q and the dequantised K/V within Note
/// [int8 products tolerance] plus Note [int8 P·V tolerance]'s bound, and must differ from the paged call
/// without the products (they ran). On 2 threads every output and LSE is the 1-thread one, bit for bit.
template <class Isa>
void check_int8_paged_and_ragged(const int8_pages& kv, index_t sq, const gqa::head_map& map, bool causal,
                                 std::uint64_t seed) {
  const index_t b = kv.b, hq = map.hq(), d = kv.d;
  std::ostringstream os;
  os << "int8 pages of " << kv.ps << ", lengths";
  for (const index_t n : kv.lengths) os << " " << n;
  os << ", sq " << sq << ", hkv " << kv.hkv << ", d " << d << (causal ? ", causal" : "") << ", allocation";
  for (const int a : map.allocation()) os << " " << a;
  SCOPED_TRACE(os.str());
  const auto qd = gqa::test::random_floats(static_cast<std::size_t>(b * sq * hq * d), seed);
  const bool run = int8_products_run<Isa>(map, sq);
  std::vector<int8_three_runs> one_thread;  // products off, on
  for (const int threads : {1, 2}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    std::vector<float> paged_off;
    for (const bool products : {false, true}) {
      SCOPED_TRACE(products ? "int8 products on" : "int8 products off");
      const int8_three_runs r = run_int8_three<Isa>(kv, qd, sq, map, causal, products, threads);
      EXPECT_EQ(first_difference(r.orag, r.o), -1) << "ragged output differs from the dense int8 call";
      EXPECT_EQ(first_difference(r.lserag, r.lse), -1) << "ragged LSE differs from the dense int8 call";
      EXPECT_EQ(first_difference(r.lsep, r.lse), -1) << "paged LSE differs from the dense int8 call";
      if (!products) {
        paged_off = r.op;
      }
      constexpr index_t pv_chunk = 64;  // Note [int8 decode P·V]: i8_decode's pv_chunk
      if (!products || !run || kv.ps % pv_chunk == 0) {
        EXPECT_EQ(first_difference(r.op, r.o), -1) << "paged output differs from the dense int8 call";
      } else {
        lowp_case c = kv.dense_case();
        c.sq = sq, c.hq = hq, c.causal = causal;
        const auto qq = quantised_q(qd, b, sq, hq, d);
        expect_near_reference(c, gqa::bshd<const float>(qq.data(), b, sq, hq, d), map, kv.k.deq, kv.v.deq, r.op, r.lsep,
                              /*int8_pv=*/true);
        EXPECT_NE(first_difference(r.op, paged_off), -1) << "the paged call did not take the int8 products";
      }
      if (threads == 1) {
        one_thread.push_back(r);
      } else {
        const int8_three_runs& r1 = one_thread[products ? 1 : 0];
        EXPECT_EQ(first_difference(r.o, r1.o), -1) << "dense output, 2 threads against 1";
        EXPECT_EQ(first_difference(r.op, r1.op), -1) << "paged output, 2 threads against 1";
        EXPECT_EQ(first_difference(r.lsep, r1.lsep), -1) << "paged LSE, 2 threads against 1";
        EXPECT_EQ(first_difference(r.orag, r1.orag), -1) << "ragged output, 2 threads against 1";
      }
    }
  }
}

// Shuffled pages of 16 slots (and of 64), sequences of unequal lengths: 150 and 67 keys (not a multiple of
// the page size), 1 key, no key, 48 or 64 (whole pages); decode (sq 1), a few positions (sq 3: still decode
// tasks) and prefill (sq 37: tiled), causal and not (with causal, a sequence shorter than sq leaves its
// first rows without keys: zeros, LSE −inf, in every call), d 40 (not a multiple of 16) and 128, a uniform
// GQA map and an unequal one with a KV head that serves no query head; and a split-KV decode (a sequence
// of 2100 keys: 3 chunks) on pages of 16 and 64. See check_int8_paged_and_ragged for what each asserts.
TYPED_TEST_P(lowp_suite, paged_and_ragged_int8) {
  std::uint64_t seed = 3100;
  const std::vector<int> unequal{5, 0, 3};
  for (const index_t d : {index_t{40}, index_t{128}})
    for (const bool uniform : {true, false}) {
      const gqa::head_map map = uniform ? gqa::head_map::uniform(8, 2) : gqa::head_map::from_allocation(unequal);
      const int8_pages kv({150, 67, 1, 0, 48}, map.hkv(), d, 16, seed++);
      for (const index_t sq : {index_t{1}, index_t{3}, index_t{37}})
        for (const bool causal : {false, true}) check_int8_paged_and_ragged<TypeParam>(kv, sq, map, causal, seed++);
    }
  {
    const gqa::head_map map = gqa::head_map::uniform(8, 2);
    const int8_pages kv({150, 1, 0, 64, 67}, 2, 40, 64, seed++);
    for (const index_t sq : {index_t{1}, index_t{3}, index_t{37}})
      for (const bool causal : {false, true}) check_int8_paged_and_ragged<TypeParam>(kv, sq, map, causal, seed++);
  }
  for (const index_t ps : {index_t{16}, index_t{64}}) {
    const gqa::head_map map = gqa::head_map::uniform(8, 2);
    const int8_pages kv({2100, 37}, 2, 128, ps, seed++);
    for (const bool causal : {false, true}) check_int8_paged_and_ragged<TypeParam>(kv, 1, map, causal, seed++);
  }
}

// An int8 cache of 42 MiB (two sequences, 21325 keys, 8 KV heads, d 128) on shuffled pages of 16 and 64
// slots and as a ragged batch, decode: what check_int8_paged_and_ragged asserts, at the size where decode
// reads ahead of its steps on AMD CPUs (Notes [decode first loads] and [decode loads ahead] in
// detail/core/decode.hpp; the loads ahead follow the page table).
TYPED_TEST_P(lowp_suite, decode_reads_of_large_int8_pages) {
  if (gqa::test::reduced) GTEST_SKIP() << "42 MiB caches: not in the reduced (sanitizer) runs";
  const gqa::head_map map = gqa::head_map::uniform(16, 8);
  for (const index_t ps : {index_t{16}, index_t{64}}) {
    const int8_pages kv({12325, 9000}, 8, 128, ps, 4245 + static_cast<std::uint64_t>(ps));
    check_int8_paged_and_ragged<TypeParam>(kv, 1, map, /*causal=*/false, 4246);
  }
}

/// NaN scales in an int8 page pool and in the same ragged batch (what quantize_q8 writes for a row holding
/// NaN or inf): one K row of sequence 0 (KV head 0, a key the causal horizon hides from the first rows when
/// sq > 1) and one V row of sequence 1 (KV head 1, likewise), besides the NaN scales int8_pages leaves in
/// every slot no sequence reads (and one in the dense cache past sequence 1's length). Every call, the
/// int8 products off and on: NaN exactly in the outputs of the rows that see the NaN row (every column:
/// a NaN score, or a NaN weight's product), finite elsewhere, the dense int8 call's NaN positions; the LSE
/// the dense call's bit for bit (NaN where a row's scores are); with the products off, and on where they do
/// not run, the paged output the dense one bit for bit; the ragged output always.
template <class Isa>
void check_nonfinite_paged_q8(index_t sq) {
  SCOPED_TRACE("int8 pages, NaN scales, sq = " + std::to_string(sq));
  const index_t hq = 4, hkv = 2, d = 19;
  int8_pages kv({80, 60}, hkv, d, 16, 3300 + static_cast<std::uint64_t>(sq));
  const index_t nan_k = 80 - sq + sq / 2, nan_v = 45;  // sequence 0's K row, sequence 1's V row
  const auto poison = [&](std::vector<float>& dense, std::vector<float>& pool, std::vector<float>& packed, index_t ib,
                          index_t j, index_t g) {
    const auto page = static_cast<index_t>(kv.table[static_cast<std::size_t>(ib * kv.max_pages + j / kv.ps)]);
    dense[static_cast<std::size_t>((ib * kv.cap + j) * hkv + g)] = k_nan;
    pool[static_cast<std::size_t>((page * kv.ps + j % kv.ps) * hkv + g)] = k_nan;
    packed[static_cast<std::size_t>((kv.cu_k[static_cast<std::size_t>(ib)] + j) * hkv + g)] = k_nan;
  };
  poison(kv.k.scales, kv.pks, kv.rks, 0, nan_k, 0);
  poison(kv.v.scales, kv.pvs, kv.rvs, 1, nan_v, 1);
  kv.k.scales[static_cast<std::size_t>((1 * kv.cap + 70) * hkv + 0)] = k_nan;  // past sequence 1's length
  const gqa::head_map map = gqa::head_map::uniform(hq, hkv);
  const auto qd = gqa::test::random_floats(static_cast<std::size_t>(kv.b * sq * hq * d), 3310);
  const bool run = int8_products_run<Isa>(map, sq);
  for (const bool products : {false, true}) {
    SCOPED_TRACE(products ? "int8 products on" : "int8 products off");
    const int8_three_runs r = run_int8_three<Isa>(kv, qd, sq, map, /*causal=*/true, products, 1);
    EXPECT_EQ(first_difference(r.orag, r.o), -1) << "ragged output differs from the dense int8 call";
    EXPECT_EQ(first_difference(r.lserag, r.lse), -1) << "ragged LSE differs from the dense int8 call";
    EXPECT_EQ(first_difference(r.lsep, r.lse), -1) << "paged LSE differs from the dense int8 call";
    if (!products || !run) {
      EXPECT_EQ(first_difference(r.op, r.o), -1) << "paged output differs from the dense int8 call";
    }
    long nans = 0;
    for (index_t ib = 0; ib < kv.b; ++ib)
      for (index_t i = 0; i < sq; ++i)
        for (index_t h = 0; h < hq; ++h)
          for (index_t col = 0; col < d; ++col) {
            const auto idx = static_cast<std::size_t>(((ib * sq + i) * hq + h) * d + col);
            const index_t p = i + (kv.lengths[static_cast<std::size_t>(ib)] - sq);  // the row's last visible key
            const bool nan_row = (ib == 0 && map.kv_of(h) == 0 && p >= nan_k) || (ib == 1 && map.kv_of(h) == 1 && p >= nan_v);
            nans += nan_row ? 1 : 0;
            EXPECT_EQ(std::isnan(r.op[idx]), nan_row) << "paged: b " << ib << " row " << i << " head " << h << " col " << col;
            EXPECT_EQ(std::isnan(r.op[idx]), std::isnan(r.o[idx])) << "paged against dense: output " << idx;
            if (!nan_row) {
              EXPECT_TRUE(std::isfinite(r.op[idx])) << "paged: output " << idx;
              EXPECT_TRUE(std::isfinite(r.o[idx])) << "dense: output " << idx;
            }
          }
    EXPECT_GT(nans, 0);
  }
}

TYPED_TEST_P(lowp_suite, nonfinite_int8_pages_as_dense) {
  for (const index_t sq : {index_t{1}, index_t{3}, index_t{37}}) check_nonfinite_paged_q8<TypeParam>(sq);  // decode, decode, tiled
}

/// The checks of the int8 paged and ragged calls name the argument: a scale pool of the wrong shape
/// (kv.k.scales, kv.v.scales; ragged: k.scales, v.scales), a page id a sequence reads outside the pools (an
/// out-of-range id in an entry no sequence reads is fine), an output or options.lse sharing an element
/// with the scales (beside them is fine), and options.check_finite a NaN scale of a row read, with its page,
/// slot, sequence and key (a NaN scale in a slot no sequence reads is fine: it is never read).
TYPED_TEST_P(lowp_suite, checks_with_int8_paged_and_ragged) {
  const index_t b = 2, sq = 1, hq = 2, hkv = 2, d = 8, ps = 4, np = 4, mp = 2;
  // Sequence 0: keys 0-3 on page 2, key 4 on page 0 (slot 0); sequence 1: keys 0-2 on page 3. Unread: page 0
  // slots 1-3, page 3 slot 3, page 1 (no sequence's), and the table's last entry.
  std::vector<std::int8_t> vals(static_cast<std::size_t>(np * ps * hkv * d), 3);
  std::vector<float> ks(static_cast<std::size_t>(np * ps * hkv), 0.25f), vs = ks;
  const std::vector<std::int32_t> good_table{2, 0, 3, 99};
  const std::vector<int> lengths{5, 3};
  std::vector<float> q(static_cast<std::size_t>(b * sq * hq * d), 0.5f), o(q.size(), k_nan);
  const auto qv = gqa::bshd<const float>(q.data(), b, sq, hq, d);
  const auto ov = gqa::bshd(o.data(), b, sq, hq, d);
  const auto map = gqa::head_map::uniform(hq, hkv);
  const auto values = gqa::page_pool<const std::int8_t>(vals.data(), np, ps, hkv, d);
  const auto pool = [&](const float* s, index_t n, index_t p, index_t h, index_t e) { return gqa::page_pool<const float>(s, n, p, h, e); };
  const auto good_ks = pool(ks.data(), np, ps, hkv, 1), good_vs = pool(vs.data(), np, ps, hkv, 1);
  const auto cache = [&](gqa::tensor_view<const float> k_scales, gqa::tensor_view<const float> v_scales,
                         const std::vector<std::int32_t>& table) {
    return gqa::paged_q8_kv{{values, k_scales}, {values, v_scales}, table, mp, lengths};
  };
  const auto expect_error = [](auto&& call, const std::string& part) { gqa::test::expect_invalid(call, part); };
  const auto paged = [&](const gqa::paged_q8_kv& kv, gqa::tensor_view<float> out, const gqa::attention_options& opt) {
    return [&, kv, out] { gqa::attend<TypeParam>(qv, kv, out, map, opt); };
  };
  const auto all_equal = [](const float* x, std::size_t n, float want) {
    for (std::size_t i = 0; i < n; ++i)
      if (x[i] != want) return false;
    return true;
  };
  gqa::attention_options opt;
  // Every value 3 · 0.25 = 0.75: so is every output. The table's last entry (99) is read by no sequence.
  EXPECT_NO_THROW(gqa::attend<TypeParam>(qv, cache(good_ks, good_vs, good_table), ov, map, opt));
  EXPECT_TRUE(all_equal(o.data(), o.size(), 0.75f));
  // Scale pools of the wrong shape.
  expect_error(paged(cache(pool(ks.data(), np, ps - 1, hkv, 1), good_vs, good_table), ov, opt),
               "gqa::attend(paged): kv.k.scales.s = 3: must equal kv.k.values.s = 4");
  expect_error(paged(cache(pool(ks.data(), np, ps, 1, 1), good_vs, good_table), ov, opt),
               "kv.k.scales.h = 1: must equal kv.k.values.h = 2");
  expect_error(paged(cache(pool(ks.data(), np, ps / 2, hkv, 2), good_vs, good_table), ov, opt), "kv.k.scales.s = 2");
  expect_error(paged(cache(pool(ks.data(), np, ps, hkv, 2), good_vs, good_table), ov, opt), "kv.k.scales.d = 2: must be 1");
  expect_error(paged(cache(good_ks, pool(vs.data(), np - 1, ps, hkv, 1), good_table), ov, opt),
               "kv.v.scales.b = 3: must equal kv.v.values.b = 4");
  expect_error(paged(cache(good_ks, pool(nullptr, np, ps, hkv, 1), good_table), ov, opt), "kv.v.scales.data = nullptr");
  // Page ids a sequence reads: outside [0, num_pages).
  const std::vector<std::int32_t> past_end{2, 0, 4, 99}, negative{2, -1, 3, 99};
  expect_error(paged(cache(good_ks, good_vs, past_end), ov, opt), "kv.page_table[1*max_pages + 0] = 4: sequence 1 (length 3)");
  expect_error(paged(cache(good_ks, good_vs, negative), ov, opt), "kv.page_table[0*max_pages + 1] = -1: sequence 0 (length 5)");
  // o or options.lse over the scales: v's scales in big[0, 32), o (32 floats) at big[16, 48) or beside them
  // at big[32, 64); k's scales in big2[0, 32), the LSE (4 floats) at big2[28, 32) or big2[32, 36).
  std::vector<float> big(64, 0.25f), big2(36, 0.25f);
  const auto v_in_big = pool(big.data(), np, ps, hkv, 1), k_in_big2 = pool(big2.data(), np, ps, hkv, 1);
  expect_error(paged(cache(good_ks, v_in_big, good_table), gqa::bshd(big.data() + 16, b, sq, hq, d), opt), "o (data = ");
  expect_error(paged(cache(good_ks, v_in_big, good_table), gqa::bshd(big.data() + 16, b, sq, hq, d), opt), "overlaps kv.v.scales");
  EXPECT_NO_THROW(gqa::attend<TypeParam>(qv, cache(good_ks, v_in_big, good_table), gqa::bshd(big.data() + 32, b, sq, hq, d), map, opt));
  EXPECT_TRUE(all_equal(big.data() + 32, 32, 0.75f));
  {
    gqa::attention_options lo;
    lo.lse = std::span<float>(big2.data() + 28, 4);
    expect_error(paged(cache(k_in_big2, good_vs, good_table), ov, lo), "options.lse (data = ");
    expect_error(paged(cache(k_in_big2, good_vs, good_table), ov, lo), "overlaps kv.k.scales");
    lo.lse = std::span<float>(big2.data() + 32, 4);
    EXPECT_NO_THROW(gqa::attend<TypeParam>(qv, cache(k_in_big2, good_vs, good_table), ov, map, lo));
  }
  // options.check_finite: a NaN scale in a row a sequence reads, then NaN scales only where none reads.
  gqa::attention_options fin;
  fin.check_finite = true;
  const auto slot = [&](index_t page, index_t s, index_t g) { return static_cast<std::size_t>((page * ps + s) * hkv + g); };
  ks[slot(0, 0, 1)] = k_nan;  // sequence 0, key 4
  expect_error(paged(cache(good_ks, good_vs, good_table), ov, fin), "kv.k.scales[page 0, slot 0, 1, 0] = nan (sequence 0, key 4)");
  ks[slot(0, 0, 1)] = 0.25f;
  vs[slot(3, 2, 0)] = k_nan;  // sequence 1, key 2
  expect_error(paged(cache(good_ks, good_vs, good_table), ov, fin), "kv.v.scales[page 3, slot 2, 0, 0] = nan (sequence 1, key 2)");
  vs[slot(3, 2, 0)] = 0.25f;
  for (index_t g = 0; g < hkv; ++g) {
    for (index_t s = 1; s < ps; ++s) ks[slot(0, s, g)] = vs[slot(0, s, g)] = k_nan;
    for (index_t s = 0; s < ps; ++s) ks[slot(1, s, g)] = vs[slot(1, s, g)] = k_nan;
    ks[slot(3, 3, g)] = vs[slot(3, 3, g)] = k_nan;
  }
  std::fill(o.begin(), o.end(), k_nan);
  EXPECT_NO_THROW(gqa::attend<TypeParam>(qv, cache(good_ks, good_vs, good_table), ov, map, fin));
  EXPECT_TRUE(all_equal(o.data(), o.size(), 0.75f));

  // Ragged: the same two sequences (5 and 3 keys) packed in 8 rows.
  const index_t total = 8;
  std::vector<float> rks(static_cast<std::size_t>(total * hkv), 0.25f), rvs = rks;
  const auto rvals = gqa::thd<const std::int8_t>(vals.data(), total, hkv, d);
  const std::vector<int> cu_q{0, 1, 2}, cu_k{0, 5, 8};
  const auto qt = gqa::thd<const float>(q.data(), b * sq, hq, d);
  const auto ot = gqa::thd(o.data(), b * sq, hq, d);
  const auto good_rk = gqa::thd<const float>(rks.data(), total, hkv, 1), good_rv = gqa::thd<const float>(rvs.data(), total, hkv, 1);
  const auto ragged = [&](gqa::tensor_view<const float> k_scales, gqa::tensor_view<const float> v_scales,
                          gqa::tensor_view<float> out, const gqa::attention_options& opt2) {
    return [&, k_scales, v_scales, out] {
      gqa::attend<TypeParam>(qt, gqa::q8_view{rvals, k_scales}, gqa::q8_view{rvals, v_scales}, out, map,
                             gqa::varlen{cu_q, cu_k}, opt2);
    };
  };
  std::fill(o.begin(), o.end(), k_nan);
  EXPECT_NO_THROW(ragged(good_rk, good_rv, ot, opt)());
  EXPECT_TRUE(all_equal(o.data(), o.size(), 0.75f));
  expect_error(ragged(gqa::thd<const float>(rks.data(), total - 1, hkv, 1), good_rv, ot, opt),
               "gqa::attend(varlen): k.scales.s = 7: must equal k.s = 8");
  expect_error(ragged(gqa::thd<const float>(rks.data(), total / 2, hkv, 2), good_rv, ot, opt), "k.scales.s = 4");
  expect_error(ragged(good_rk, gqa::thd<const float>(rvs.data(), total, 1, 1), ot, opt), "v.scales.h = 1: must equal v.h = 2");
  expect_error(ragged(good_rk, gqa::thd<const float>(rvs.data(), total, hkv, 2), ot, opt), "v.scales.d = 2: must be 1");
  std::vector<float> rbig(48, 0.25f);  // v's scales in [0, 16), o (32 floats) at [8, 40) or [16, 48)
  const auto rv_in_big = gqa::thd<const float>(rbig.data(), total, hkv, 1);
  expect_error(ragged(good_rk, rv_in_big, gqa::thd(rbig.data() + 8, b * sq, hq, d), opt), "overlaps v.scales");
  EXPECT_NO_THROW(ragged(good_rk, rv_in_big, gqa::thd(rbig.data() + 16, b * sq, hq, d), opt)());
  EXPECT_TRUE(all_equal(rbig.data() + 16, 32, 0.75f));
  rks[static_cast<std::size_t>(6 * hkv + 1)] = k_nan;  // sequence 1's key 1
  expect_error(ragged(good_rk, good_rv, ot, fin), "gqa::attend(varlen): k.scales[0, 6, 1, 0] = nan");
}

/// gqa::forward on int8 pages and on a ragged int8 batch, every built-in variant that runs on these forms:
/// the dense int8 forward on the same keys, zero past each length, bit for bit (the norms of the valid keys'
/// fp32 values are those of the zero-padded dense cache, so KDGQA's and DGQA's plans are the dense ones, and
/// their allocations are compared too; WGQA combines the dequantised pools or packed rows and runs the float
/// core, whose paged and ragged calls give the dense call's bits; PGQA's noise, with every sequence of sq
/// queries, is the dense batch's). Products off with pages of 16 slots; products on with pages of 64 (the
/// dense call's products: Note [int8 decode P·V]). Decode (sq 1) and prefill (sq 20), causal.
template <class Isa>
void check_int8_forward_forms(index_t ps, bool products) {
  const index_t hq = 8, hkv = 4, d = 24;
  const int8_pages kv({70, 33}, hkv, d, ps, 4400 + static_cast<std::uint64_t>(ps));
  const index_t b = kv.b, cap = kv.cap;
  // The dense cache zero past each length (value 0: 0 · scale is an exact zero).
  std::vector<std::int8_t> kz = kv.k.values, vz = kv.v.values;
  for (index_t ib = 0; ib < b; ++ib)
    for (index_t j = kv.lengths[static_cast<std::size_t>(ib)]; j < cap; ++j) {
      const auto at = static_cast<std::size_t>((ib * cap + j) * hkv * d);
      std::fill_n(kz.begin() + static_cast<std::ptrdiff_t>(at), hkv * d, std::int8_t{0});
      std::fill_n(vz.begin() + static_cast<std::ptrdiff_t>(at), hkv * d, std::int8_t{0});
    }
  const gqa::q8_view kd{gqa::bshd<const std::int8_t>(kz.data(), b, cap, hkv, d),
                        gqa::bshd<const float>(kv.k.scales.data(), b, cap, hkv, 1)};
  const gqa::q8_view vd{gqa::bshd<const std::int8_t>(vz.data(), b, cap, hkv, d),
                        gqa::bshd<const float>(kv.v.scales.data(), b, cap, hkv, 1)};
  for (const index_t sq : {index_t{1}, index_t{20}}) {
    SCOPED_TRACE("pages of " + std::to_string(ps) + (products ? ", int8 products on" : ", int8 products off") +
                 ", sq " + std::to_string(sq));
    const auto qd = gqa::test::random_floats(static_cast<std::size_t>(b * sq * hq * d), 4500 + static_cast<std::uint64_t>(sq));
    const auto q = gqa::bshd<const float>(qd.data(), b, sq, hq, d);
    const auto qt = gqa::thd<const float>(qd.data(), b * sq, hq, d);
    std::vector<index_t> cu_q;
    for (index_t ib = 0; ib <= b; ++ib) cu_q.push_back(ib * sq);
    const auto no = static_cast<std::size_t>(b * sq * hq * d);
    std::vector<float> od(no, k_nan), op(no, k_nan), orag(no, k_nan);
    gqa::attention_options opt;
    opt.causal = true;
    opt.int8_products = products;
    gqa::attention_options dense_opt = opt;
    dense_opt.kv_lengths = kv.lengths;
    // make() gives a fresh policy (and its state) per call, the same for the three forms.
    const auto three = [&](const char* name, auto make) {
      SCOPED_TRACE(name);
      auto pd = make(), pp = make(), pr = make();
      gqa::forward<Isa>(pd.policy, q, kd, vd, gqa::bshd(od.data(), b, sq, hq, d), dense_opt);
      gqa::forward<Isa>(pp.policy, q, kv.paged(), gqa::bshd(op.data(), b, sq, hq, d), opt);
      gqa::forward<Isa>(pr.policy, qt, kv.ragged_k(), kv.ragged_v(), gqa::thd(orag.data(), b * sq, hq, d),
                        gqa::varlen{cu_q, kv.cu_k}, opt);
      EXPECT_EQ(first_difference(op, od), -1) << "paged forward differs from the dense int8 forward";
      EXPECT_EQ(first_difference(orag, od), -1) << "ragged forward differs from the dense int8 forward";
      if constexpr (requires { pd.policy.last().alloc; }) {
        EXPECT_EQ(pp.policy.last().alloc, pd.policy.last().alloc);
        EXPECT_EQ(pr.policy.last().alloc, pd.policy.last().alloc);
      }
    };
    struct gqa_run { gqa::gqa_policy policy; };
    struct kdgqa_run { gqa::kdgqa_policy policy{gqa::kdgqa_options{}}; };
    struct pgqa_run { gqa::pgqa_policy policy{gqa::pgqa_options{.seed = 77}}; };
    struct wgqa_run {
      gqa::wgqa_policy policy{gqa::wgqa_weights::mean_init(gqa::wgqa_kind::scalar, 4, 2, 24, 4 * 24)};
    };
    three("gqa", [] { return gqa_run{}; });
    three("kdgqa", [] { return kdgqa_run{}; });
    three("kdgqa per sample", [] {
      gqa::kdgqa_options ko;
      ko.per_sample = true;
      return kdgqa_run{gqa::kdgqa_policy(ko)};
    });
    three("pgqa", [] { return pgqa_run{}; });
    three("wgqa", [] { return wgqa_run{}; });
    {
      SCOPED_TRACE("dgqa");
      gqa::dgqa_options dopt;
      dopt.window = 1;
      gqa::dgqa_state sd = gqa::dgqa_state::initial(hq, hkv), sp = sd, sr = sd;
      gqa::dgqa_policy pd(dopt, sd), pp(dopt, sp), pr(dopt, sr);
      gqa::forward<Isa>(pd, q, kd, vd, gqa::bshd(od.data(), b, sq, hq, d), dense_opt);
      gqa::forward<Isa>(pp, q, kv.paged(), gqa::bshd(op.data(), b, sq, hq, d), opt);
      gqa::forward<Isa>(pr, qt, kv.ragged_k(), kv.ragged_v(), gqa::thd(orag.data(), b * sq, hq, d),
                        gqa::varlen{cu_q, kv.cu_k}, opt);
      EXPECT_EQ(first_difference(op, od), -1) << "paged forward differs from the dense int8 forward";
      EXPECT_EQ(first_difference(orag, od), -1) << "ragged forward differs from the dense int8 forward";
      EXPECT_EQ(sp.splits, sd.splits);
      EXPECT_EQ(sr.splits, sd.splits);
    }
  }
}

TYPED_TEST_P(lowp_suite, every_variant_int8_paged_and_ragged) {
  check_int8_forward_forms<TypeParam>(16, /*products=*/false);
  check_int8_forward_forms<TypeParam>(64, /*products=*/true);
}

/// An int8 cache (dense with kv_lengths, paged in pages of 16 slots, ragged) with Q and O of type T: attend()
/// and every registered variant's forward() give the float calls' outputs on the widened Q rounded to T,
/// and attend() their LSEs, bit for bit; decode (sq 1) and causal prefill (sq 12: 48 rows per KV head for
/// GQA, the tiled path), with the int8 decode products on and off. Variants false: attend only.
template <class Isa, class T, bool Variants = true>
void check_int8_16_bit_qo() {
  SCOPED_TRACE(std::string(gqa::element_name<T>) + " Q/O, int8 K/V");
  const gqa::model_shape m{8, 2, 24, 7};
  gqa::for_each_variant([&](auto t) {
    using P = typename decltype(t)::type;
    if constexpr (Variants || std::is_same_v<P, gqa::gqa_policy>) {
      const gqa::variant_heads h = P::heads_for(m);
      const index_t hq = h.hq, hkv = h.kv_in, d = m.d;
      const int8_pages kv({45, 18, 13}, hkv, d, 16, 930);
      const index_t b = kv.b;
      for (const index_t sq : {index_t{1}, index_t{12}})  // 12: every causal row sees a key
        for (const bool products : {true, false}) {
          SCOPED_TRACE(std::string(P::name) + ", sq " + std::to_string(sq) + (products ? ", products" : ""));
          const auto qw = gqa::test::rounded_kv<T>(
              gqa::test::random_floats(static_cast<std::size_t>(b * sq * hq * d), 931 + static_cast<std::uint64_t>(sq)));
          const auto q16 = narrowed<T>(qw);
          std::vector<index_t> cu_q;
          for (index_t ib = 0; ib <= b; ++ib) cu_q.push_back(ib * sq);
          const gqa::varlen seqs{cu_q, kv.cu_k};
          const auto no = static_cast<std::size_t>(b * sq * hq * d), nl = static_cast<std::size_t>(b * hq * sq);
          gqa::attention_options opt;
          opt.causal = sq > 1;
          opt.int8_products = products;
          gqa::attention_options dense_opt = opt;
          dense_opt.kv_lengths = kv.lengths;
          // The three forms (dense, paged, ragged) on Q q into o[0, 3·no): attend on P's uniform map with the
          // LSEs of the dense and paged calls into lse[0, 2·nl), or forward with a fresh policy per call.
          const gqa::head_map map = gqa::head_map::uniform(hq, hkv);
          const auto attend3 = [&](const auto& q, auto* o, float* lse) {
            using E = std::remove_const_t<std::remove_pointer_t<decltype(q.data)>>;
            const auto qt = gqa::thd<const E>(q.data, b * sq, hq, d);
            gqa::attention_options d_opt = dense_opt, p_opt = opt;
            d_opt.lse = std::span<float>(lse, nl);
            p_opt.lse = std::span<float>(lse + nl, nl);
            gqa::attend<Isa>(q, kv.k.view, kv.v.view, gqa::bshd(o, b, sq, hq, d), map, d_opt);
            gqa::attend<Isa>(q, kv.paged(), gqa::bshd(o + no, b, sq, hq, d), map, p_opt);
            gqa::attend<Isa>(qt, kv.ragged_k(), kv.ragged_v(), gqa::thd(o + 2 * no, b * sq, hq, d), map, seqs, opt);
          };
          const auto forward3 = [&](const auto& q, auto* o) {
            using E = std::remove_const_t<std::remove_pointer_t<decltype(q.data)>>;
            const auto qt = gqa::thd<const E>(q.data, b * sq, hq, d);
            const auto fwd = [&](const auto&... a) { gqa::with_policy<P>(m, h, [&](P& p) { gqa::forward<Isa>(p, a...); }); };
            fwd(q, kv.k.view, kv.v.view, gqa::bshd(o, b, sq, hq, d), dense_opt);
            fwd(q, kv.paged(), gqa::bshd(o + no, b, sq, hq, d), opt);
            fwd(qt, kv.ragged_k(), kv.ragged_v(), gqa::thd(o + 2 * no, b * sq, hq, d), seqs, opt);
          };
          const auto q32 = gqa::bshd<const float>(qw.data(), b, sq, hq, d);
          const auto qh = gqa::bshd<const T>(q16.data(), b, sq, hq, d);
          std::vector<float> o32(3 * no, k_nan), l32(2 * nl, k_nan), l16(2 * nl, k_nan);
          std::vector<T> o16(3 * no, T(k_nan));
          if constexpr (std::is_same_v<P, gqa::gqa_policy>) {  // attend once per case
            attend3(q32, o32.data(), l32.data());
            attend3(qh, o16.data(), l16.data());
            EXPECT_EQ(first_unrounded(o16, o32), -1) << "attend (dense, paged, ragged)";
            EXPECT_EQ(first_difference(l16, l32), -1) << "attend LSE (dense, paged)";
            for (const float x : o32) ASSERT_TRUE(std::isfinite(x));
            std::fill(o32.begin(), o32.end(), k_nan);
            std::fill(o16.begin(), o16.end(), T(k_nan));
          }
          if constexpr (Variants) {
            forward3(q32, o32.data());
            forward3(qh, o16.data());
            EXPECT_EQ(first_unrounded(o16, o32), -1) << "forward (dense, paged, ragged)";
            for (const float x : o32) ASSERT_TRUE(std::isfinite(x));
          }
        }
    }
  });
}

// Every variant with bf16 Q/O; f16 Q/O through attend (dense, paged, ragged) with GQA's map (f16 differs
// from bf16 only in the element type's conversions; each type instantiates the int8 cores again: CI time).
TYPED_TEST_P(lowp_suite, int8_cache_16_bit_qo) {
  check_int8_16_bit_qo<TypeParam, gqa::bf16>();
  check_int8_16_bit_qo<TypeParam, gqa::f16, /*variants=*/false>();
}

REGISTER_TYPED_TEST_SUITE_P(lowp_suite, int8_products_match_reference, int8_products_every_variant,
                            int8_pv_matches_rounded_weights, int8_scores_match_integer_sums,
                            decode_first_loads_keep_bits, decode_reads_of_large_int8_pages,
                            attend_bf16_matches_reference_and_fp32_bitwise,
                            attend_f16_matches_reference_and_fp32_bitwise, attend_int8_matches_reference_and_fp32,
                            every_variant_bf16_matches_fp32_bitwise, every_variant_f16_matches_fp32_bitwise,
                            every_variant_int8_matches_fp32, nonfinite_kv_as_in_fp32, nonfinite_int8_rows_as_in_fp32,
                            paged_and_ragged_16_bit, checks_with_16_bit_kv, checks_with_int8_kv,
                            int8_key_norm_plans_equal_the_dequantised_ones, attend_bf16_qo_is_rounded_fp32_bitwise,
                            attend_f16_qo_is_rounded_fp32_bitwise, every_variant_bf16_qo_is_rounded_fp32_bitwise,
                            every_variant_f16_qo_is_rounded_fp32_bitwise, nonfinite_q_as_in_fp32,
                            paged_and_ragged_16_bit_qo, checks_with_16_bit_qo, bf16_products_match_reference,
                            bf16_products_nonfinite_as_in_fp32, bf16_products_paged_and_ragged_equal_dense,
                            bf16_products_every_variant, bf16_dot_tiles_match_double_sums, paged_and_ragged_int8,
                            nonfinite_int8_pages_as_dense, checks_with_int8_paged_and_ragged,
                            every_variant_int8_paged_and_ragged, every_variant_16_bit_paged_and_ragged,
                            int8_cache_16_bit_qo);

}  // namespace
