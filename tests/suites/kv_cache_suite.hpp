// tests/suites/kv_cache_suite.hpp: KV caches that are not one dense tensor per call: a cache allocated for a
// capacity and filled to per-sequence lengths (bshd with capacity, kv_lengths of any integer type), against
// the naive double reference (Note [attention tolerance]). Unwritten slots hold NaN: a row that read one
// would show it.
// Compiled once per ISA.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <gqa/attention.hpp>
#include <gqa/reference/attention.hpp>

#include "support/isa_suite.hpp"
#include "support/tolerance.hpp"

namespace {

using gqa::index_t;

constexpr float k_nan = std::numeric_limits<float>::quiet_NaN();

/// A batch of sequences over a dense cache [b][cap][hkv][d]: slots past each length hold NaN.
struct cache_case {
  index_t b = 1, sq = 1, hq = 4, hkv = 1, d = 16, dv = 16, cap = 1;
  std::vector<index_t> lengths;  // size b, each <= cap
  bool causal = false;
  std::vector<index_t> kv_of_q;  // empty: uniform
  std::uint64_t seed = 1;

  gqa::head_map map() const { return kv_of_q.empty() ? gqa::head_map::uniform(hq, hkv) : gqa::head_map(kv_of_q, hkv); }
  std::string describe() const {
    std::ostringstream os;
    os << "b=" << b << " sq=" << sq << " hq=" << hq << " hkv=" << hkv << " d=" << d << " dv=" << dv << " cap=" << cap
       << (causal ? " causal" : "") << " lengths={";
    for (std::size_t i = 0; i < lengths.size(); ++i) os << (i ? "," : "") << lengths[i];
    return os.str() + "}";
  }
};

/// The case's tensors: q [b][sq][hq][d], dense k/v [b][cap][hkv][d] (NaN past each length).
struct cache_data {
  std::vector<float> q, k, v;
  explicit cache_data(const cache_case& c)
      : q(gqa::test::random_floats(static_cast<std::size_t>(c.b * c.sq * c.hq * c.d), c.seed)),
        k(gqa::test::random_floats(static_cast<std::size_t>(c.b * c.cap * c.hkv * c.d), c.seed + 1)),
        v(gqa::test::random_floats(static_cast<std::size_t>(c.b * c.cap * c.hkv * c.dv), c.seed + 2)) {
    for (index_t ib = 0; ib < c.b; ++ib)
      for (index_t j = c.lengths[static_cast<std::size_t>(ib)]; j < c.cap; ++j) {
        std::fill_n(k.begin() + ((ib * c.cap + j) * c.hkv) * c.d, c.hkv * c.d, k_nan);
        std::fill_n(v.begin() + ((ib * c.cap + j) * c.hkv) * c.dv, c.hkv * c.dv, k_nan);
      }
  }
  gqa::tensor_view<const float> qv(const cache_case& c) const { return gqa::bshd(q.data(), c.b, c.sq, c.hq, c.d); }
  gqa::tensor_view<const float> kv(const cache_case& c) const { return gqa::bshd(k.data(), c.b, c.cap, c.hkv, c.d); }
  gqa::tensor_view<const float> vv(const cache_case& c) const { return gqa::bshd(v.data(), c.b, c.cap, c.hkv, c.dv); }
};

/// A call's output: o [b][sq][hq][dv] and lse [b][hq][sq].
struct output {
  std::vector<float> o, lse;
  explicit output(const cache_case& c)
      : o(static_cast<std::size_t>(c.b * c.sq * c.hq * c.dv), k_nan), lse(static_cast<std::size_t>(c.b * c.hq * c.sq), k_nan) {}
  gqa::tensor_view<float> view(const cache_case& c) { return gqa::bshd(o.data(), c.b, c.sq, c.hq, c.dv); }
};

/// Bitwise equal, NaN equal to NaN.
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!(std::isnan(a[i]) && std::isnan(b[i])) && std::memcmp(&a[i], &b[i], sizeof(float)) != 0) return false;
  return true;
}

/// `out` against the reference on the dense cache with the case's lengths: Note [attention tolerance], rows
/// with no visible key +0 with LSE −inf, every other value finite.
void expect_matches_reference(const cache_case& c, const cache_data& in, const output& out) {
  SCOPED_TRACE(c.describe());
  const gqa::head_map map = c.map();
  const double scale = 1.0 / std::sqrt(static_cast<double>(static_cast<float>(c.d)));
  const auto ref = gqa::reference::attention(in.qv(c), in.kv(c), in.vv(c), map.kv_of_q(), scale, c.causal, c.lengths);
  const auto naive = gqa::test::naive_fp32(in.qv(c), in.kv(c), in.vv(c), map.kv_of_q(), static_cast<float>(scale),
                                           c.causal, c.lengths);
  double err = 0.0, naive_err = 0.0, lerr = 0.0, naive_lerr = 0.0, lmax = 1.0;
  std::size_t bad = 0;
  for (std::size_t i = 0; i < ref.lse.size(); ++i) {
    const bool masked = ref.lse[i] == -std::numeric_limits<double>::infinity();
    if (masked) {
      bad += out.lse[i] != -std::numeric_limits<float>::infinity();
      continue;
    }
    bad += !std::isfinite(out.lse[i]);
    lerr = std::max(lerr, std::fabs(out.lse[i] - ref.lse[i]));
    naive_lerr = std::max(naive_lerr, std::fabs(naive.lse[i] - ref.lse[i]));
    lmax = std::max(lmax, std::fabs(ref.lse[i]));
  }
  for (std::size_t i = 0; i < ref.o.size(); ++i) {
    const auto row = i / static_cast<std::size_t>(c.dv);  // [b][sq][hq]
    const auto h = static_cast<index_t>(row % static_cast<std::size_t>(c.hq));
    const auto pos = static_cast<index_t>(row / static_cast<std::size_t>(c.hq) % static_cast<std::size_t>(c.sq));
    const auto ib = static_cast<index_t>(row / static_cast<std::size_t>(c.hq * c.sq));
    if (ref.log_sum_exp(ib, h, pos) == -std::numeric_limits<double>::infinity()) {
      bad += !gqa::test::is_plus_zero(out.o[i]);
      continue;
    }
    bad += !std::isfinite(out.o[i]);
    err = std::max(err, std::fabs(out.o[i] - ref.o[i]));
    naive_err = std::max(naive_err, std::fabs(naive.o[i] - ref.o[i]));
  }
  EXPECT_EQ(bad, 0u) << "non-finite values (a NaN slot was read) or fully masked rows not +0 / -inf";
  EXPECT_LE(err, gqa::test::k_error_factor * naive_err + gqa::test::k_error_floor) << "naive fp32 error " << naive_err;
  EXPECT_LE(lerr, gqa::test::k_error_factor * naive_lerr + gqa::test::k_error_floor * lmax) << "naive " << naive_lerr;
}

template <class Isa>
class kv_cache_suite : public gqa::test::isa_test<Isa> {};
TYPED_TEST_SUITE_P(kv_cache_suite);

// A cache allocated for `cap` positions and filled to per-sequence lengths: bshd with s = capacity and
// kv_lengths of any integer type give the same bits, and match the reference; a view of the first s < cap
// positions (bshd with a capacity) too.
TYPED_TEST_P(kv_cache_suite, capacity_view_and_integer_lengths) {
  cache_case c;
  c.b = 3, c.sq = 5, c.hq = 8, c.hkv = 2, c.d = 24, c.dv = 24, c.cap = 40, c.causal = true;
  c.lengths = {17, 40, 0};
  const cache_data in(c);
  const auto run = [&](gqa::integer_span lengths, gqa::tensor_view<const float> k, gqa::tensor_view<const float> v) {
    output out(c);
    gqa::attention_options opt;
    opt.causal = c.causal;
    opt.kv_lengths = lengths;
    opt.lse = out.lse;
    gqa::attend<TypeParam>(in.qv(c), k, v, out.view(c), c.map(), opt);
    return out;
  };
  const output base = run(c.lengths, in.kv(c), in.vv(c));
  expect_matches_reference(c, in, base);
  const std::vector<std::int32_t> l32(c.lengths.begin(), c.lengths.end());
  const std::vector<std::size_t> lsz(c.lengths.begin(), c.lengths.end());
  const std::vector<std::uint16_t> l16(c.lengths.begin(), c.lengths.end());
  const std::span<const std::int64_t> l64(reinterpret_cast<const std::int64_t*>(c.lengths.data()), c.lengths.size());
  for (const gqa::integer_span s : {gqa::integer_span(l32), gqa::integer_span(lsz), gqa::integer_span(l16), gqa::integer_span(l64)}) {
    const output o = run(s, in.kv(c), in.vv(c));
    EXPECT_TRUE(same_bits(o.o, base.o) && same_bits(o.lse, base.lse)) << "element size " << s.element_size();
  }
  // The first 40 of a 64-position allocation: the batch stride comes from the capacity.
  cache_case wide = c;
  wide.cap = 64;
  cache_data win(wide);
  for (index_t ib = 0; ib < c.b; ++ib) {  // the same keys in the wider allocation
    std::copy_n(in.k.begin() + ib * c.cap * c.hkv * c.d, c.cap * c.hkv * c.d, win.k.begin() + ib * wide.cap * c.hkv * c.d);
    std::copy_n(in.v.begin() + ib * c.cap * c.hkv * c.dv, c.cap * c.hkv * c.dv, win.v.begin() + ib * wide.cap * c.hkv * c.dv);
  }
  const output o = run(l32, gqa::bshd(win.k.data(), c.b, c.cap, c.hkv, c.d, wide.cap),
                       gqa::bshd(win.v.data(), c.b, c.cap, c.hkv, c.dv, wide.cap));
  EXPECT_TRUE(same_bits(o.o, base.o) && same_bits(o.lse, base.lse)) << "bshd with capacity";
  // bhsd with a capacity: [b][h][cap][d], its first c.cap positions.
  std::vector<float> kb(static_cast<std::size_t>(c.b * c.hkv * wide.cap * c.d), k_nan), vb(kb.size(), k_nan);
  const auto kbv = gqa::bhsd(kb.data(), c.b, c.hkv, c.cap, c.d, wide.cap);
  const auto vbv = gqa::bhsd(vb.data(), c.b, c.hkv, c.cap, c.dv, wide.cap);
  for (index_t ib = 0; ib < c.b; ++ib)
    for (index_t j = 0; j < c.cap; ++j)
      for (index_t g = 0; g < c.hkv; ++g)
        for (index_t x = 0; x < c.d; ++x) {
          kbv(ib, j, g, x) = in.kv(c)(ib, j, g, x);
          vbv(ib, j, g, x) = in.vv(c)(ib, j, g, x);
        }
  const output ob = run(lsz, kbv, vbv);
  expect_matches_reference(c, in, ob);
  EXPECT_THROW(gqa::bshd(win.k.data(), c.b, 65, c.hkv, c.d, wide.cap), gqa::invalid_argument);
  try {
    const std::vector<std::uint64_t> huge = {1, std::numeric_limits<std::uint64_t>::max(), 2};
    run(huge, in.kv(c), in.vv(c));
    ADD_FAILURE() << "a length of 2^64 - 1 was accepted";
  } catch (const gqa::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("options.kv_lengths[1] = 18446744073709551615"), std::string::npos) << e.what();
  }
}

REGISTER_TYPED_TEST_SUITE_P(kv_cache_suite, capacity_view_and_integer_lengths);

}  // namespace
