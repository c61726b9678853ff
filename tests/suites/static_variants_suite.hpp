// tests/suites/static_variants_suite.hpp: the static variants (MHA, MQA, GQA, SQA in its four named
// configurations) through gqa::forward<Isa>(policy, ...) against reference::attention with the uniform
// contiguous map written out by hand (map[h] = h / (hq/hkv)), within Note [attention
// tolerance]: D ∈ {1, 17, 64, 80, 128}, Sq and Skv ∈ {1, 2, 63, 64, 65, 200}, causal and padded masks,
// BSHD and BHSD views. Compiled once per ISA: every helper stays in `namespace {}`. GQA_TEST_VERBOSE=1
// prints every case's error and tolerance.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <span>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <gqa/reference/attention.hpp>
#include <gqa/variants/gqa.hpp>
#include <gqa/variants/mha.hpp>
#include <gqa/variants/mqa.hpp>
#include <gqa/variants/sqa.hpp>

#include "support/isa_suite.hpp"
#include "support/tolerance.hpp"

namespace {

using gqa::index_t;

enum class mask { none, causal, padded, padded_causal };
enum class layout { bshd, bhsd };

const char* mask_name(mask m) {
  switch (m) {
    case mask::none: return "non-causal";
    case mask::causal: return "causal";
    case mask::padded: return "padded";
    case mask::padded_causal: return "padded causal";
  }
  return "?";
}

struct heads {
  index_t hq, hkv;
};

/// One forward() call: shape, mask and layouts (q and o share one, k and v another).
struct variant_case {
  index_t b = 1, sq = 1, skv = 1, hq = 1, hkv = 1, d = 1;
  mask m = mask::none;
  layout q_layout = layout::bshd, kv_layout = layout::bshd;
  std::size_t config = 0;  // index of (hq, hkv) in the list the sweep was given
  std::uint64_t seed = 1;

  bool causal() const { return m == mask::causal || m == mask::padded_causal; }
  /// Right padding: the first batch element sees every key, the second about half (none when skv = 1),
  /// the third none.
  std::vector<index_t> kv_lengths() const {
    if (m != mask::padded && m != mask::padded_causal) return {};
    std::vector<index_t> lengths = {skv, skv / 2, 0};
    lengths.resize(static_cast<std::size_t>(b));
    return lengths;
  }
  std::string describe() const {
    std::ostringstream os;
    os << "b=" << b << " sq=" << sq << " skv=" << skv << " hq=" << hq << " hkv=" << hkv << " d=" << d << " "
       << mask_name(m) << " q/o " << (q_layout == layout::bshd ? "bshd" : "bhsd") << " k/v "
       << (kv_layout == layout::bshd ? "bshd" : "bhsd") << " seed=" << seed;
    return os.str();
  }
};

/// A dense buffer viewed as (b, s, h, d) in `l`: BSHD, or BHSD (heads outermost after the batch). Not
/// copyable: the view points into the buffer.
struct dense {
  std::vector<float> buf;
  gqa::tensor_view<float> view;
  dense(layout l, index_t b, index_t s, index_t h, index_t d, std::vector<float> values)
      : buf(std::move(values)),
        view(l == layout::bshd ? gqa::bshd(buf.data(), b, s, h, d) : gqa::bhsd(buf.data(), b, h, s, d)) {}
  dense(const dense&) = delete;
  dense& operator=(const dense&) = delete;
  gqa::tensor_view<const float> cview() const { return view; }
};

/// The case's random inputs, uniform in [-1, 1), and its output (NaN until the call), in the case's layouts.
struct problem {
  dense q, k, v, o;
  std::vector<index_t> lengths;

  explicit problem(const variant_case& c)
      : q(c.q_layout, c.b, c.sq, c.hq, c.d, gqa::test::random_floats(size(c.b, c.sq, c.hq, c.d), c.seed * 3)),
        k(c.kv_layout, c.b, c.skv, c.hkv, c.d, gqa::test::random_floats(size(c.b, c.skv, c.hkv, c.d), c.seed * 3 + 1)),
        v(c.kv_layout, c.b, c.skv, c.hkv, c.d, gqa::test::random_floats(size(c.b, c.skv, c.hkv, c.d), c.seed * 3 + 2)),
        o(c.q_layout, c.b, c.sq, c.hq, c.d,
          std::vector<float>(size(c.b, c.sq, c.hq, c.d), std::numeric_limits<float>::quiet_NaN())),
        lengths(c.kv_lengths()) {}

  static std::size_t size(index_t b, index_t s, index_t h, index_t d) { return static_cast<std::size_t>(b * s * h * d); }

  template <class Isa, class Policy>
  void forward(Policy& policy, const variant_case& c) {
    gqa::attention_options opt;
    opt.causal = c.causal();
    opt.kv_lengths = lengths;
    gqa::forward<Isa>(policy, q.cview(), k.cview(), v.cview(), o.view, opt);
  }
};

/// Runs forward<Isa>(policy) on the case and checks it against reference::attention: every output within
/// Note [attention tolerance] (its max-error form, with the fp32 yardstick of tests/support/tolerance.hpp
/// on the same inputs), rows that see no key exactly +0, nothing non-finite or left unwritten.
template <class Isa, class Policy>
void check_forward(Policy policy, const variant_case& c) {
  SCOPED_TRACE(std::string(Policy::name) + " " + c.describe());
  problem p(c);
  p.forward<Isa>(policy, c);

  const std::vector<index_t> kv_of_q = gqa::test::uniform_kv_of_q(c.hq, c.hkv);  // map[h] = h / (hq/hkv)
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
  const auto q = p.q.cview(), k = p.k.cview(), v = p.v.cview();
  const auto ref = gqa::reference::attention(q, k, v, kv_of_q, scale, c.causal(), p.lengths);
  const auto naive = gqa::test::naive_fp32(q, k, v, kv_of_q, static_cast<float>(scale), c.causal(), p.lengths);
  const double tol = gqa::test::attention_tolerance(naive.o, ref.o, p.v.buf);

  double err = 0.0;
  std::size_t non_finite = 0, bad_empty_rows = 0;
  for (index_t ib = 0; ib < c.b; ++ib)
    for (index_t i = 0; i < c.sq; ++i)
      for (index_t h = 0; h < c.hq; ++h) {
        const bool empty = ref.log_sum_exp(ib, h, i) == -std::numeric_limits<double>::infinity();
        for (index_t x = 0; x < c.d; ++x) {
          const float got = p.o.view(ib, i, h, x);
          if (empty) {
            bad_empty_rows += !gqa::test::is_plus_zero(got);
          } else if (!std::isfinite(got)) {
            ++non_finite;
          } else {
            err = std::max(err, std::fabs(static_cast<double>(got) - ref.out(ib, i, h, x)));
          }
        }
      }
  EXPECT_EQ(non_finite, 0u) << "non-finite (or unwritten) outputs in rows that see keys";
  EXPECT_EQ(bad_empty_rows, 0u) << "rows that see no key must be exactly +0";
  EXPECT_LE(err, tol) << "max |O - O_ref| = " << err << " (Note [attention tolerance])";
  if (std::getenv("GQA_TEST_VERBOSE"))
    std::printf("  max err %.3g tolerance %.3g | %s %s\n", err, tol, std::string(Policy::name).c_str(), c.describe().c_str());
}

/// The sweep: every (Sq, Skv) pair twice, once without padding and once with (the reduced list of the
/// sanitizer and qemu builds keeps a third of the pairs, still every Sq and every Skv twice). D, the head
/// configuration (cycling with the case index), the mask and the layouts rotate at different rates:
/// every Sq and every Skv meets every mask, and each of up to 5 head configurations meets every D and
/// every pair of layouts. Lengths straddle the KV blocks (64 keys on scalar/NEON, 128 on AVX) and the
/// decode/tiled switch; causal covers Sq < Skv (bottom-right) and Sq > Skv (early rows see nothing).
std::vector<variant_case> sweep(std::span<const heads> configs, std::uint64_t seed) {
  constexpr index_t dims[] = {1, 17, 64, 80, 128};
  constexpr index_t lens[] = {1, 2, 63, 64, 65, 200};
  constexpr mask masks[] = {mask::none, mask::causal, mask::padded, mask::padded_causal};
  std::vector<variant_case> cases;
  for (std::size_t is = 0; is < std::size(lens); ++is)
    for (std::size_t ik = 0; ik < std::size(lens); ++ik) {
      if (gqa::test::reduced && (is + ik) % 3 != 0) continue;
      for (std::size_t half = 0; half < 2; ++half) {  // masks[m] and masks[m + 2]: unpadded and padded
        const std::size_t n = 2 * (is * std::size(lens) + ik) + half;
        variant_case c;
        c.sq = lens[is];
        c.skv = lens[ik];
        c.d = dims[(is + 2 * ik + 3 * half) % std::size(dims)];
        c.config = n % configs.size();
        c.hq = configs[c.config].hq;
        c.hkv = configs[c.config].hkv;
        c.m = masks[(is + 3 * ik + 2 * half) % std::size(masks)];
        c.b = c.m == mask::padded || c.m == mask::padded_causal ? 3 : 1 + static_cast<index_t>(is % 2);
        c.q_layout = (is + ik / 2 + half) % 2 == 0 ? layout::bshd : layout::bhsd;
        c.kv_layout = (ik + is / 2) % 2 == 0 ? layout::bshd : layout::bhsd;
        c.seed = seed++;
        cases.push_back(c);
      }
    }
  return cases;
}

/// The SQA configurations of the sweep: every named constructor, giving the suite's head pairs 1/1, 8/8,
/// 8/2, 8/1, 12/4, the SQA paper's configurations for H = 16 (8/4, 4/4, 4/1) and xSQA at H = 48 (12/12).
std::vector<gqa::sqa_config> sqa_configs() {
  return {gqa::sqa_config::symmetric(2),       gqa::sqa_config::symmetric(16),      gqa::sqa_config::standard(16, 8, 2),
          gqa::sqa_config::extreme_mqa(32),    gqa::sqa_config::standard(24, 12, 4), gqa::sqa_config::standard(16, 8, 4),
          gqa::sqa_config::extreme(16),        gqa::sqa_config::extreme_mqa(16),     gqa::sqa_config::extreme(48)};
}

template <class Isa>
class static_variants_suite : public gqa::test::isa_test<Isa> {};
TYPED_TEST_SUITE_P(static_variants_suite);

// MHA: one KV head per query head.
TYPED_TEST_P(static_variants_suite, mha_matches_reference) {
  const heads configs[] = {{1, 1}, {8, 8}};
  for (const variant_case& c : sweep(configs, 2000)) check_forward<TypeParam>(gqa::mha_policy{}, c);
}

// MQA: one KV head shared by every query head.
TYPED_TEST_P(static_variants_suite, mqa_matches_reference) {
  const heads configs[] = {{1, 1}, {8, 1}};
  for (const variant_case& c : sweep(configs, 3000)) check_forward<TypeParam>(gqa::mqa_policy{}, c);
}

// GQA: uniform contiguous groups, MHA and MQA as its two ends.
TYPED_TEST_P(static_variants_suite, gqa_matches_reference) {
  const heads configs[] = {{1, 1}, {8, 8}, {8, 2}, {8, 1}, {12, 4}};
  for (const variant_case& c : sweep(configs, 4000)) check_forward<TypeParam>(gqa::gqa_policy{}, c);
}

// SQA is plain GQA over the configuration's (hq, hkv); the sweep rotates through every named
// configuration (standard, symmetric, extreme, extreme_mqa).
TYPED_TEST_P(static_variants_suite, sqa_named_configurations_match_reference) {
  const auto configs = sqa_configs();
  std::vector<heads> pairs;
  for (const auto& cfg : configs) pairs.push_back({cfg.hq, cfg.hkv});
  for (const variant_case& c : sweep(pairs, 5000)) check_forward<TypeParam>(gqa::sqa_policy{configs[c.config]}, c);
}

/// forward<Isa>(policy) on the case's inputs: the output in logical [b][sq][hq][d] order.
template <class Isa, class Policy>
std::vector<float> forward_output(Policy policy, const variant_case& c) {
  problem p(c);
  p.forward<Isa>(policy, c);
  return gqa::test::logical_order(p.o.view);
}

/// Expects forward<Isa>(policy) to give bitwise the output of forward<Isa>(gqa_policy) on the case.
template <class Isa, class Policy>
void expect_same_bits_as_gqa(Policy policy, const variant_case& c) {
  const auto got = forward_output<Isa>(policy, c), want = forward_output<Isa>(gqa::gqa_policy{}, c);
  EXPECT_TRUE(got.size() == want.size() && std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0)
      << Policy::name << " differs from gqa with hq = " << c.hq << ", hkv = " << c.hkv;
}

// MHA and MQA are GQA's two ends (GQA with one group is MQA) and SQA is plain GQA over its (hq, hkv)
// (nothing new in the kernel): on the same inputs each policy's output is bitwise GQA's.
TYPED_TEST_P(static_variants_suite, mha_mqa_and_sqa_are_plain_gqa_bitwise) {
  for (const mask m : {mask::none, mask::padded_causal})
    for (const index_t sq : {index_t{1}, index_t{65}}) {
      variant_case c;
      c.sq = sq;
      c.skv = 130;
      c.d = 40;
      c.m = m;
      c.b = m == mask::none ? 2 : 3;
      c.kv_layout = layout::bhsd;
      c.seed = 6000 + static_cast<std::uint64_t>(sq) + (m == mask::none ? 0 : 100);
      SCOPED_TRACE(c.describe());
      c.hq = c.hkv = 8;
      expect_same_bits_as_gqa<TypeParam>(gqa::mha_policy{}, c);
      expect_same_bits_as_gqa<TypeParam>(gqa::sqa_policy{gqa::sqa_config::symmetric(16)}, c);
      c.hkv = 1;
      expect_same_bits_as_gqa<TypeParam>(gqa::mqa_policy{}, c);
      expect_same_bits_as_gqa<TypeParam>(gqa::sqa_policy{gqa::sqa_config::extreme_mqa(32)}, c);
      c.hq = 4;
      c.hkv = 2;
      expect_same_bits_as_gqa<TypeParam>(gqa::sqa_policy{gqa::sqa_config::standard(8, 4, 2)}, c);
    }
}

REGISTER_TYPED_TEST_SUITE_P(static_variants_suite, mha_matches_reference, mqa_matches_reference, gqa_matches_reference,
                            sqa_named_configurations_match_reference, mha_mqa_and_sqa_are_plain_gqa_bitwise);

}  // namespace
