// tests/suites/kv_cache_suite.hpp: KV caches that are not one dense tensor per call: a cache allocated for a
// capacity and filled to per-sequence lengths (bshd with capacity, kv_lengths of any integer type), a
// paged cache (gqa/paged.hpp) and a ragged batch (gqa/varlen.hpp), against the naive double reference
// (Note [attention tolerance]) on the same keys gathered to a dense view (a ragged batch: each sequence
// alone), and bitwise against the dense call on that view (the paged core is the dense core reading rows
// through the table: same blocks, same sums, Note [key runs]). Each of these with the masks and score
// modifiers (sliding window, softcap, sinks, ALiBi: alone and together) too. Unwritten slots, unused
// pages and unused table entries hold NaN or -1: a row that read one would show it; NaN and ±inf behind a
// window or past a page's valid length reach no row that does not see them. Compiled once per ISA.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <limits>
#include <numeric>
#include <optional>
#include <source_location>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <gqa/attention.hpp>
#include <gqa/options.hpp>
#include <gqa/paged.hpp>
#include <gqa/reference/attention.hpp>
#include <gqa/reference/grouping.hpp>
#include <gqa/reference/pgqa.hpp>
#include <gqa/varlen.hpp>
#include <gqa/variants.hpp>

#include "support/expect.hpp"
#include "support/isa_suite.hpp"
#include "support/tolerance.hpp"

namespace {

using gqa::index_t;

constexpr float k_nan = std::numeric_limits<float>::quiet_NaN();
constexpr float k_inf = std::numeric_limits<float>::infinity();

/// The masks and score modifiers of a call (attention_options' fields of the same names), owned, so that
/// a case can be copied; reference() and apply() view them.
struct masks {
  index_t window_left = -1, window_right = -1;
  float softcap = 0.0f;
  std::vector<float> sinks, slopes;  // per query head, or empty

  gqa::reference::modifiers reference() const {
    gqa::reference::modifiers m;
    m.window_left = window_left;
    m.window_right = window_right;
    m.softcap = softcap;
    m.sinks = sinks;
    m.alibi_slopes = slopes;
    return m;
  }
  void apply(gqa::attention_options& opt) const {
    opt.window_left = window_left;
    opt.window_right = window_right;
    opt.softcap = softcap;
    opt.sinks = sinks;
    opt.alibi_slopes = slopes;
  }
  std::string describe() const {
    std::ostringstream os;
    if (window_left >= 0 || window_right >= 0) os << " window=(" << window_left << "," << window_right << ")";
    if (softcap > 0.0f) os << " softcap=" << softcap;
    if (!sinks.empty()) os << " sinks[0]=" << sinks[0];
    if (!slopes.empty()) os << " alibi_slopes[0]=" << slopes[0];
    return os.str();
  }
};

/// The mask combinations the composition tests run: none, each modifier alone, and all four together.
constexpr int k_mask_combos = 6;

/// Combination `combo` (0: none, 1: window, 2: softcap, 3: sinks, 4: ALiBi, 5: all four) for hq query
/// heads, with the window (left, right) given; the softcap (0.75) bites on inputs in [−1, 1], the sinks
/// range over [−1, 2] and the slopes are FlashAttention's 2^(−8(h+1)/hq).
masks mask_combo(int combo, index_t hq, index_t left, index_t right) {
  masks m;
  if (combo == 1 || combo == 5) m.window_left = left, m.window_right = right;
  if (combo == 2 || combo == 5) m.softcap = 0.75f;
  for (index_t h = 0; h < hq; ++h) {
    if (combo == 3 || combo == 5) m.sinks.push_back(0.75f * static_cast<float>(h % 5) - 1.0f);
    if (combo == 4 || combo == 5) m.slopes.push_back(std::exp2(-8.0f * static_cast<float>(h + 1) / static_cast<float>(hq)));
  }
  return m;
}

/// A batch of sequences over a dense cache [b][cap][hkv][d]: slots past each length hold NaN.
struct cache_case {
  index_t b = 1, sq = 1, hq = 4, hkv = 1, d = 16, dv = 16, cap = 1;
  std::vector<index_t> lengths;  // size b, each <= cap
  bool causal = false;
  std::vector<index_t> kv_of_q;  // empty: uniform
  masks mods;
  std::uint64_t seed = 1;

  gqa::head_map map() const { return kv_of_q.empty() ? gqa::head_map::uniform(hq, hkv) : gqa::head_map(kv_of_q, hkv); }
  /// The call's options: causal and the masks (the caller adds lengths and LSE).
  gqa::attention_options options() const {
    gqa::attention_options opt;
    opt.causal = causal;
    mods.apply(opt);
    return opt;
  }
  std::string describe() const {
    std::ostringstream os;
    os << "b=" << b << " sq=" << sq << " hq=" << hq << " hkv=" << hkv << " d=" << d << " dv=" << dv << " cap=" << cap
       << (causal ? " causal" : "") << mods.describe() << " lengths={";
    for (std::size_t i = 0; i < lengths.size(); ++i) os << (i ? "," : "") << lengths[i];
    return os.str() + "}";
  }
};

/// A cache_case's shape and window, for the tests that run each mask combination on a list of them.
struct cache_shape {
  index_t b, sq, hq, hkv, d, dv, cap;
  std::vector<index_t> lengths;
  bool causal;
  index_t left, right;  // the window (mask_combo)

  cache_case with(int combo, std::uint64_t seed) const {
    cache_case c;
    c.b = b, c.sq = sq, c.hq = hq, c.hkv = hkv, c.d = d, c.dv = dv, c.cap = cap, c.lengths = lengths, c.causal = causal;
    c.seed = seed;
    c.mods = mask_combo(combo, hq, left, right);
    return c;
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
  /// A copy with +0 instead of NaN past each length.
  cache_data zero_padded(const cache_case& c) const {
    cache_data z = *this;
    for (index_t ib = 0; ib < c.b; ++ib)
      for (index_t j = c.lengths[static_cast<std::size_t>(ib)]; j < c.cap; ++j) {
        std::fill_n(z.k.begin() + ((ib * c.cap + j) * c.hkv) * c.d, c.hkv * c.d, 0.0f);
        std::fill_n(z.v.begin() + ((ib * c.cap + j) * c.hkv) * c.dv, c.hkv * c.dv, 0.0f);
      }
    return z;
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

/// The keys of `in` (case c) as the first c.cap positions of an allocation of `cap` >= c.cap positions per
/// sequence (NaN beyond), viewed by bshd with that capacity: the batch stride comes from the capacity.
struct wider_cache {
  std::vector<float> k, v;
  index_t cap;
  wider_cache(const cache_case& c, const cache_data& in, index_t capacity)
      : k(static_cast<std::size_t>(c.b * capacity * c.hkv * c.d), k_nan),
        v(static_cast<std::size_t>(c.b * capacity * c.hkv * c.dv), k_nan), cap(capacity) {
    for (index_t ib = 0; ib < c.b; ++ib) {
      std::copy_n(in.k.begin() + ib * c.cap * c.hkv * c.d, c.cap * c.hkv * c.d, k.begin() + ib * cap * c.hkv * c.d);
      std::copy_n(in.v.begin() + ib * c.cap * c.hkv * c.dv, c.cap * c.hkv * c.dv, v.begin() + ib * cap * c.hkv * c.dv);
    }
  }
  gqa::tensor_view<const float> kv(const cache_case& c) const { return gqa::bshd(k.data(), c.b, c.cap, c.hkv, c.d, cap); }
  gqa::tensor_view<const float> vv(const cache_case& c) const { return gqa::bshd(v.data(), c.b, c.cap, c.hkv, c.dv, cap); }
};

/// call() throws gqa::invalid_argument naming `want` (support/expect.hpp) before any work: o, NaN before the
/// call, is NaN after it.
template <class F>
void expect_rejected_untouched(F&& call, const std::vector<float>& o, const std::string& want,
                               std::source_location where = std::source_location::current()) {
  gqa::test::expect_invalid(call, want, where);
  EXPECT_TRUE(std::all_of(o.begin(), o.end(), [](float x) { return std::isnan(x); })) << "o written; wanted: " << want;
}

/// `out` against the reference on the dense cache with the case's lengths: Note [attention tolerance], rows
/// with no visible key +0 with LSE −inf, every other value finite.
void expect_matches_reference(const cache_case& c, const cache_data& in, const output& out) {
  SCOPED_TRACE(c.describe());
  const gqa::head_map map = c.map();
  const double scale = 1.0 / std::sqrt(static_cast<double>(static_cast<float>(c.d)));
  const gqa::reference::modifiers mods = c.mods.reference();
  const auto ref = gqa::reference::attention(in.qv(c), in.kv(c), in.vv(c), map.kv_of_q(), scale, c.causal, c.lengths, mods);
  const auto naive = gqa::test::naive_fp32(in.qv(c), in.kv(c), in.vv(c), map.kv_of_q(), static_cast<float>(scale),
                                           c.causal, c.lengths, mods);
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

/// The dense cache of a case paged: pages of `page` slots in a shuffled pool with spare pages; every slot
/// no sequence fills, and every spare page, holds NaN; table entries past a sequence's pages are -1.
struct paged_cache {
  std::vector<float> k, v;
  std::vector<std::int32_t> table;
  std::vector<bool> used;  // [num_pages][page]: the slot holds a key of a sequence
  index_t num_pages = 0, max_pages = 0, page = 1;

  paged_cache(const cache_case& c, const cache_data& in, index_t page_size, std::uint64_t seed) : page(page_size) {
    max_pages = (c.cap + page - 1) / page + 1;  // one more entry than any sequence needs
    index_t needed = 0;
    for (const index_t n : c.lengths) needed += (n + page - 1) / page;
    num_pages = needed + 3;
    std::vector<std::int32_t> ids(static_cast<std::size_t>(num_pages));
    std::iota(ids.begin(), ids.end(), 0);
    // A deterministic shuffle (Fisher-Yates on the test's hash).
    for (std::size_t i = ids.size(); i > 1; --i)
      std::swap(ids[i - 1], ids[gqa::random::hash(seed, {i}) % i]);
    k.assign(static_cast<std::size_t>(num_pages * page * c.hkv * c.d), k_nan);
    v.assign(static_cast<std::size_t>(num_pages * page * c.hkv * c.dv), k_nan);
    used.assign(static_cast<std::size_t>(num_pages * page), false);
    table.assign(static_cast<std::size_t>(c.b * max_pages), -1);
    std::size_t next = 0;
    for (index_t ib = 0; ib < c.b; ++ib) {
      const index_t len = c.lengths[static_cast<std::size_t>(ib)];
      for (index_t i = 0; i < (len + page - 1) / page; ++i) table[static_cast<std::size_t>(ib * max_pages + i)] = ids[next++];
      for (index_t j = 0; j < len; ++j) {
        const index_t p = table[static_cast<std::size_t>(ib * max_pages + j / page)], slot = j % page;
        used[static_cast<std::size_t>(p * page + slot)] = true;
        std::copy_n(in.k.begin() + ((ib * c.cap + j) * c.hkv) * c.d, c.hkv * c.d, k.begin() + ((p * page + slot) * c.hkv) * c.d);
        std::copy_n(in.v.begin() + ((ib * c.cap + j) * c.hkv) * c.dv, c.hkv * c.dv,
                    v.begin() + ((p * page + slot) * c.hkv) * c.dv);
      }
    }
  }
  /// Every slot that holds no sequence's key (past a sequence's length in its last page, spare pages):
  /// +inf or −inf in K, the other infinity in V, alternating slot by slot, instead of NaN.
  void poison_unused(const cache_case& c) {
    for (index_t slot = 0; slot < num_pages * page; ++slot) {
      if (used[static_cast<std::size_t>(slot)]) continue;
      const float x = slot % 2 ? k_inf : -k_inf;
      std::fill_n(k.begin() + slot * c.hkv * c.d, c.hkv * c.d, x);
      std::fill_n(v.begin() + slot * c.hkv * c.dv, c.hkv * c.dv, -x);
    }
  }
  gqa::paged_kv view(const cache_case& c) const {
    gqa::paged_kv kv;
    kv.k = gqa::page_pool(k.data(), num_pages, page, c.hkv, c.d);
    kv.v = gqa::page_pool(v.data(), num_pages, page, c.hkv, c.dv);
    kv.page_table = table;
    kv.max_pages = max_pages;
    kv.lengths = c.lengths;
    return kv;
  }
};

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
    gqa::attention_options opt = c.options();
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
  const wider_cache wide(c, in, 64);
  const output o = run(l32, wide.kv(c), wide.vv(c));
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
  EXPECT_THROW(gqa::bshd(wide.k.data(), c.b, 65, c.hkv, c.d, wide.cap), gqa::invalid_argument);
  try {
    const std::vector<std::uint64_t> huge = {1, std::numeric_limits<std::uint64_t>::max(), 2};
    run(huge, in.kv(c), in.vv(c));
    ADD_FAILURE() << "a length of 2^64 - 1 was accepted";
  } catch (const gqa::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("options.kv_lengths[1] = 18446744073709551615"), std::string::npos) << e.what();
  }
}

/// The paged call of case c on the cache pc.
template <class Isa>
output run_paged(const cache_case& c, const cache_data& in, const paged_cache& pc) {
  output out(c);
  gqa::attention_options opt = c.options();
  opt.lse = out.lse;
  gqa::attend<Isa>(in.qv(c), pc.view(c), out.view(c), c.map(), opt);
  return out;
}

/// The dense call of case c on its cache (bshd, s = capacity) with the case's lengths as kv_lengths.
template <class Isa>
output run_dense(const cache_case& c, const cache_data& in) {
  output out(c);
  gqa::attention_options opt = c.options();
  opt.lse = out.lse;
  opt.kv_lengths = c.lengths;
  gqa::attend<Isa>(in.qv(c), in.kv(c), in.vv(c), out.view(c), c.map(), opt);
  return out;
}

/// The seed of case c's page arrangement with pages of `page` slots.
std::uint64_t page_seed(const cache_case& c, index_t page) { return c.seed * 31 + static_cast<std::uint64_t>(page); }

/// The paged call of case c on pages of `page` slots, against the reference and bitwise against the dense
/// call on the same keys (whose view's s is the capacity; the paged call's key range is the longest length).
template <class Isa>
void check_paged(const cache_case& c, index_t page) {
  SCOPED_TRACE("page " + std::to_string(page));
  const cache_data in(c);
  const paged_cache pc(c, in, page, page_seed(c, page));
  const output paged = run_paged<Isa>(c, in, pc);
  expect_matches_reference(c, in, paged);
  const output dense = run_dense<Isa>(c, in);
  EXPECT_TRUE(same_bits(paged.o, dense.o)) << c.describe() << ": paged output differs from the dense call";
  EXPECT_TRUE(same_bits(paged.lse, dense.lse)) << c.describe() << ": paged LSE differs from the dense call";
}

constexpr index_t k_page_sizes[] = {1, 7, 16, 256};

// Prefill (sq > 1, causal bottom-right and not) and decode (sq = 1), lengths that are no multiple of the
// page or the block, an empty sequence, unequal and empty groups, d not a multiple of the vector width.
TYPED_TEST_P(kv_cache_suite, paged_prefill_and_decode) {
  std::vector<cache_case> cases;
  {
    cache_case c;  // decode, GQA 4:1, three sequences
    c.b = 3, c.sq = 1, c.hq = 8, c.hkv = 2, c.d = 64, c.dv = 64, c.cap = 300, c.lengths = {300, 1, 129};
    cases.push_back(c);
    c.causal = true, c.lengths = {0, 257, 33}, c.d = c.dv = 19, c.seed = 2;
    cases.push_back(c);
  }
  {
    cache_case c;  // prefill, causal, sq < length
    c.b = 2, c.sq = 37, c.hq = 6, c.hkv = 3, c.d = 40, c.dv = 24, c.cap = 203, c.lengths = {203, 70}, c.causal = true,
    c.seed = 3;
    cases.push_back(c);
    c.causal = false, c.sq = 9, c.seed = 4;
    cases.push_back(c);
    c.kv_of_q = {2, 2, 2, 0, 2, 0}, c.causal = true, c.sq = 50, c.lengths = {203, 20}, c.seed = 5;  // KV head 1 unused
    cases.push_back(c);
  }
  {
    cache_case c;  // a tiled-path group (G = 32 per KV head at 2 positions) and a d_v tail
    c.b = 1, c.sq = 2, c.hq = 32, c.hkv = 1, c.d = 32, c.dv = 33, c.cap = 150, c.lengths = {150}, c.causal = true, c.seed = 6;
    cases.push_back(c);
  }
  for (const cache_case& c : cases)
    for (const index_t page : k_page_sizes) check_paged<TypeParam>(c, page);
}

// Decode over a long cache splits the key range into chunks (Note [decode split]); chunk edges fall
// inside pages.
TYPED_TEST_P(kv_cache_suite, paged_split_kv_decode) {
  cache_case c;
  c.b = 1, c.sq = 1, c.hq = 8, c.hkv = 2, c.d = 32, c.dv = 32, c.cap = gqa::test::reduced ? 2100 : 5000;
  c.lengths = {c.cap - 3};
  c.cap = c.lengths[0];
  for (const index_t page : {index_t{16}, index_t{7}, index_t{256}}) check_paged<TypeParam>(c, page);
}

// Every registered variant through gqa::forward on a paged cache gives the bits of the same call on the
// dense cache zero-padded past each length (KDGQA and DGQA plan from the norms of each sequence's valid
// keys, which zero padding leaves unchanged, Note [key norm order]; the paged cache's unwritten slots are
// NaN).
TYPED_TEST_P(kv_cache_suite, paged_every_variant) {
  gqa::for_each_variant([&](auto t) {
    using P = typename decltype(t)::type;
    const gqa::model_shape m{8, 2, 24, 7};
    const gqa::variant_heads h = P::heads_for(m);
    SCOPED_TRACE(std::string(P::name));
    cache_case c;
    c.b = 2, c.sq = 3, c.hq = h.hq, c.hkv = h.kv_in, c.d = m.d, c.dv = m.d, c.cap = 45, c.lengths = {45, 18}, c.causal = true;
    const cache_data in(c);
    const paged_cache pc(c, in, 16, 9);
    output paged(c), dense(c);
    gqa::attention_options opt;
    opt.causal = true;
    const auto call_paged = [&] {
      gqa::with_policy<P>(m, h, [&](P& p) { gqa::forward<TypeParam>(p, in.qv(c), pc.view(c), paged.view(c), opt); });
    };
    call_paged();
    const cache_data zero = in.zero_padded(c);
    gqa::attention_options dopt = opt;
    dopt.kv_lengths = c.lengths;
    gqa::with_policy<P>(m, h, [&](P& p) { gqa::forward<TypeParam>(p, zero.qv(c), zero.kv(c), zero.vv(c), dense.view(c), dopt); });
    EXPECT_TRUE(same_bits(paged.o, dense.o)) << "paged output differs from the dense call";
    EXPECT_TRUE(std::all_of(paged.o.begin(), paged.o.end(), [](float x) { return std::isfinite(x); }));
  });
}

// Validation before any work: each bad argument named with its value; o untouched.
TYPED_TEST_P(kv_cache_suite, paged_errors) {
  cache_case c;
  c.b = 2, c.sq = 1, c.hq = 4, c.hkv = 2, c.d = 8, c.dv = 8, c.cap = 20, c.lengths = {20, 5};
  const cache_data in(c);
  const paged_cache pc(c, in, 8, 1);
  const auto expect_rejects = [&](const std::function<void(gqa::paged_kv&, gqa::attention_options&)>& tweak,
                                  const std::string& want) {
    output out(c);
    gqa::paged_kv kv = pc.view(c);
    gqa::attention_options opt;
    std::vector<std::int32_t> table = pc.table;
    kv.page_table = table;
    std::vector<index_t> lengths = c.lengths;
    kv.lengths = lengths;
    tweak(kv, opt);
    expect_rejected_untouched([&] { gqa::attend<TypeParam>(in.qv(c), kv, out.view(c), c.map(), opt); }, out.o, want);
  };
  std::vector<std::int32_t> bad_table = pc.table;
  bad_table[1] = static_cast<std::int32_t>(pc.num_pages);  // sequence 0's second page
  expect_rejects([&](gqa::paged_kv& kv, gqa::attention_options&) { kv.page_table = bad_table; },
                 "kv.page_table[0*max_pages + 1] = " + std::to_string(pc.num_pages));
  std::vector<std::int32_t> neg_table = pc.table;
  neg_table[static_cast<std::size_t>(pc.max_pages)] = -1;  // sequence 1's first page
  expect_rejects([&](gqa::paged_kv& kv, gqa::attention_options&) { kv.page_table = neg_table; },
                 "kv.page_table[1*max_pages + 0] = -1");
  expect_rejects([&](gqa::paged_kv& kv, gqa::attention_options&) { kv.page_table = kv.page_table.first(3); },
                 "kv.page_table.size() = 3");
  const std::vector<int> too_long = {20, 33};
  expect_rejects([&](gqa::paged_kv& kv, gqa::attention_options&) { kv.lengths = too_long; }, "kv.lengths[1] = 33");
  const std::vector<int> one = {3};
  expect_rejects([&](gqa::paged_kv& kv, gqa::attention_options&) { kv.lengths = one; }, "kv.lengths.size() = 1");
  expect_rejects([&](gqa::paged_kv&, gqa::attention_options& o) { o.kv_lengths = c.lengths; },
                 "options.kv_lengths.size() = 2");
  expect_rejects([&](gqa::paged_kv& kv, gqa::attention_options&) { kv.v.s = 4; }, "kv.v.s = 4");
  expect_rejects([&](gqa::paged_kv& kv, gqa::attention_options&) { kv.max_pages = -1; }, "kv.max_pages = -1");
  // A table entry past a sequence's last page is never read: -1 there is fine.
  output out(c);
  gqa::attend<TypeParam>(in.qv(c), pc.view(c), out.view(c), c.map());
}

/// A ragged batch: query and key counts per sequence, rows packed [total][h][d].
struct ragged_case {
  std::vector<index_t> nq, nk;
  index_t hq = 4, hkv = 2, d = 16, dv = 16;
  bool causal = false;
  masks mods;
  std::uint64_t seed = 1;
  std::string describe() const {
    std::ostringstream os;
    os << "hq=" << hq << " hkv=" << hkv << " d=" << d << " dv=" << dv << (causal ? " causal" : "") << mods.describe()
       << " (nq,nk)=";
    for (std::size_t i = 0; i < nq.size(); ++i) os << " (" << nq[i] << "," << nk[i] << ")";
    return os.str();
  }
  std::vector<index_t> offsets(const std::vector<index_t>& n) const {
    std::vector<index_t> cu(n.size() + 1, 0);
    for (std::size_t i = 0; i < n.size(); ++i) cu[i + 1] = cu[i] + n[i];
    return cu;
  }
};

/// The packed rows of a ragged case: q [total_q][hq][d], k [total_k][hkv][d], v [total_k][hkv][dv], and the
/// offsets.
struct ragged_data {
  std::vector<index_t> cu_q, cu_k;
  index_t tq = 0, tk = 0;
  std::vector<float> q, k, v;
  explicit ragged_data(const ragged_case& c)
      : cu_q(c.offsets(c.nq)), cu_k(c.offsets(c.nk)), tq(cu_q.back()), tk(cu_k.back()),
        q(gqa::test::random_floats(static_cast<std::size_t>(std::max<index_t>(tq, 1) * c.hq * c.d), c.seed)),
        k(gqa::test::random_floats(static_cast<std::size_t>(std::max<index_t>(tk, 1) * c.hkv * c.d), c.seed + 1)),
        v(gqa::test::random_floats(static_cast<std::size_t>(std::max<index_t>(tk, 1) * c.hkv * c.dv), c.seed + 2)) {}
};

/// A ragged call's output: o [total_q][hq][dv] and lse [hq][total_q].
struct ragged_output {
  std::vector<float> o, lse;
};

template <class Isa>
ragged_output run_ragged(const ragged_case& c, const gqa::head_map& map, const ragged_data& in) {
  ragged_output out{std::vector<float>(static_cast<std::size_t>(in.tq * c.hq * c.dv), k_nan),
                    std::vector<float>(static_cast<std::size_t>(c.hq * in.tq), k_nan)};
  gqa::attention_options opt;
  opt.causal = c.causal;
  c.mods.apply(opt);
  opt.lse = out.lse;
  const std::vector<std::int32_t> cu_q32(in.cu_q.begin(), in.cu_q.end());  // int32 offsets, as PyTorch keeps them
  gqa::attend<Isa>(gqa::thd(in.q.data(), in.tq, c.hq, c.d), gqa::thd(in.k.data(), in.tk, c.hkv, c.d),
                   gqa::thd(in.v.data(), in.tk, c.hkv, c.dv), gqa::thd(out.o.data(), in.tq, c.hq, c.dv), map,
                   gqa::varlen{cu_q32, in.cu_k}, opt);
  return out;
}

/// A ragged call against the reference run on each sequence alone (its rows as a b = 1 batch): Note
/// [attention tolerance] over the whole batch; rows of sequences without keys +0 with LSE −inf (the sink
/// with sinks); LSE [hq][total_q].
void expect_ragged_matches_reference(const ragged_case& c, const gqa::head_map& map, const ragged_data& in,
                                     const ragged_output& out) {
  SCOPED_TRACE(c.describe());
  const auto& [cu_q, cu_k, tq, tk, qd, kd, vd] = in;
  const auto& [o, lse] = out;
  const double scale = 1.0 / std::sqrt(static_cast<double>(static_cast<float>(c.d)));
  const gqa::reference::modifiers mods = c.mods.reference();
  double err = 0.0, naive_err = 0.0, lerr = 0.0, naive_lerr = 0.0, lmax = 1.0;
  std::size_t bad = 0;
  for (std::size_t i = 0; i < c.nq.size(); ++i) {
    if (c.nq[i] == 0) continue;
    const auto q = gqa::bshd(qd.data() + cu_q[i] * c.hq * c.d, 1, c.nq[i], c.hq, c.d);
    const auto k = gqa::bshd(kd.data() + cu_k[i] * c.hkv * c.d, 1, c.nk[i], c.hkv, c.d);
    const auto v = gqa::bshd(vd.data() + cu_k[i] * c.hkv * c.dv, 1, c.nk[i], c.hkv, c.dv);
    const auto ref = gqa::reference::attention(q, k, v, map.kv_of_q(), scale, c.causal, {}, mods);
    const auto naive = gqa::test::naive_fp32(q, k, v, map.kv_of_q(), static_cast<float>(scale), c.causal, {}, mods);
    for (index_t r = 0; r < c.nq[i]; ++r)
      for (index_t h = 0; h < c.hq; ++h) {
        const double want_lse = ref.log_sum_exp(0, h, r);
        const float got_lse = lse[static_cast<std::size_t>(h * tq + cu_q[i] + r)];
        const bool masked = want_lse == -std::numeric_limits<double>::infinity();
        if (masked) {
          bad += got_lse != -std::numeric_limits<float>::infinity();
        } else {
          bad += !std::isfinite(got_lse);
          lerr = std::max(lerr, std::fabs(got_lse - want_lse));
          naive_lerr = std::max(naive_lerr, std::fabs(naive.lse[static_cast<std::size_t>(h * c.nq[i] + r)] - want_lse));
          lmax = std::max(lmax, std::fabs(want_lse));
        }
        for (index_t x = 0; x < c.dv; ++x) {
          const float got = o[static_cast<std::size_t>(((cu_q[i] + r) * c.hq + h) * c.dv + x)];
          if (masked) {
            bad += !gqa::test::is_plus_zero(got);
            continue;
          }
          bad += !std::isfinite(got);
          err = std::max(err, std::fabs(got - ref.out(0, r, h, x)));
          naive_err = std::max(naive_err, std::fabs(naive.o[static_cast<std::size_t>((r * c.hq + h) * c.dv + x)] - ref.out(0, r, h, x)));
        }
      }
  }
  EXPECT_EQ(bad, 0u) << "non-finite values, or rows without keys not +0 / -inf";
  EXPECT_LE(err, gqa::test::k_error_factor * naive_err + gqa::test::k_error_floor) << "naive fp32 error " << naive_err;
  EXPECT_LE(lerr, gqa::test::k_error_factor * naive_lerr + gqa::test::k_error_floor * lmax) << "naive " << naive_lerr;
}

template <class Isa>
void check_ragged(const ragged_case& c, const gqa::head_map& map) {
  const ragged_data in(c);
  expect_ragged_matches_reference(c, map, in, run_ragged<Isa>(c, map, in));
}

// Ragged batches: prefill and decode sequences together, empty sequences (no queries, no keys, both),
// more queries than keys (causal rows that see nothing), lengths off the block edges; a split-KV decode
// batch; unequal groups.
TYPED_TEST_P(kv_cache_suite, ragged_matches_reference) {
  ragged_case c;
  c.hq = 8, c.hkv = 2, c.d = 40, c.dv = 24;
  c.nq = {5, 0, 1, 70, 3, 0, 9};
  c.nk = {5, 7, 300, 129, 0, 0, 4};
  for (const bool causal : {false, true}) {
    c.causal = causal;
    check_ragged<TypeParam>(c, gqa::head_map::uniform(c.hq, c.hkv));
  }
  c.nq = {1, 1, 1};
  c.nk = {17, 0, 200};
  check_ragged<TypeParam>(c, gqa::head_map::uniform(c.hq, c.hkv));  // decode tasks
  c.nq = {1};
  c.nk = {gqa::test::reduced ? 2100 : 4500};
  check_ragged<TypeParam>(c, gqa::head_map::uniform(c.hq, c.hkv));  // split KV
  c.nq = {33, 2, 64};
  c.nk = {40, 2, 64};
  c.hq = 6, c.hkv = 3, c.d = c.dv = 19, c.causal = true;
  const std::vector<index_t> unequal = {2, 2, 2, 0, 2, 0};  // KV head 1 unused
  check_ragged<TypeParam>(c, gqa::head_map(unequal, c.hkv));
}

// Every registered variant through gqa::forward on a ragged batch matches the same variant run on each
// sequence alone (a b = 1 dense call; PGQA's with the ragged call's call index, 0 for a fresh policy), on
// the map the ragged call planned (KDGQA and DGQA plan once from the whole batch's key norms, which a
// single sequence's call does not see).
TYPED_TEST_P(kv_cache_suite, ragged_every_variant) {
  gqa::for_each_variant([&](auto t) {
    using P = typename decltype(t)::type;
    const gqa::model_shape m{8, 2, 24, 7};
    const gqa::variant_heads h = P::heads_for(m);
    SCOPED_TRACE(std::string(P::name));
    const std::vector<index_t> nq = {3, 1, 0, 20}, nk = {9, 1, 4, 20};
    std::vector<index_t> cu_q = {0}, cu_k = {0};
    for (std::size_t i = 0; i < nq.size(); ++i) {
      cu_q.push_back(cu_q.back() + nq[i]);
      cu_k.push_back(cu_k.back() + nk[i]);
    }
    const index_t tq = cu_q.back(), tk = cu_k.back(), d = m.d;
    const auto qd = gqa::test::random_floats(static_cast<std::size_t>(tq * h.hq * d), 11);
    const auto kd = gqa::test::random_floats(static_cast<std::size_t>(tk * h.kv_in * d), 12);
    const auto vd = gqa::test::random_floats(static_cast<std::size_t>(tk * h.kv_in * d), 13);
    std::vector<float> o(static_cast<std::size_t>(tq * h.hq * d), k_nan);
    gqa::attention_options opt;
    opt.causal = true;
    std::optional<gqa::head_map> planned;  // the map a policy that plans from keys chose
    gqa::with_policy<P>(m, h, [&](P& p) {
      gqa::forward<TypeParam>(p, gqa::thd(qd.data(), tq, h.hq, d), gqa::thd(kd.data(), tk, h.kv_in, d),
                              gqa::thd(vd.data(), tk, h.kv_in, d), gqa::thd(o.data(), tq, h.hq, d),
                              gqa::varlen{cu_q, cu_k}, opt);
      if constexpr (gqa::policy_plans_from_keys<P>) planned = gqa::head_map::from_allocation(p.last().alloc);
    });
    for (std::size_t i = 0; i < nq.size(); ++i) {
      if (nq[i] == 0) continue;
      std::vector<float> one(static_cast<std::size_t>(nq[i] * h.hq * d), k_nan);
      const auto qi = gqa::bshd(qd.data() + cu_q[i] * h.hq * d, 1, nq[i], h.hq, d);
      const auto ki = gqa::bshd(kd.data() + cu_k[i] * h.kv_in * d, 1, nk[i], h.kv_in, d);
      const auto vi = gqa::bshd(vd.data() + cu_k[i] * h.kv_in * d, 1, nk[i], h.kv_in, d);
      if (planned) {
        gqa::attend<TypeParam>(qi, ki, vi, gqa::bshd(one.data(), 1, nq[i], h.hq, d), *planned, opt);
      } else {
        gqa::with_policy<P>(m, h, [&](P& p) { gqa::forward<TypeParam>(p, qi, ki, vi, gqa::bshd(one.data(), 1, nq[i], h.hq, d), opt); });
      }
      double err = 0.0;
      for (std::size_t x = 0; x < one.size(); ++x)
        err = std::max(err, static_cast<double>(std::fabs(one[x] - o[static_cast<std::size_t>(cu_q[i] * h.hq * d) + x])));
      EXPECT_LE(err, 1e-5) << "sequence " << i;  // the same math, possibly another block split
    }
  });
}

// Validation before any work: each bad offset named with its value; o untouched.
TYPED_TEST_P(kv_cache_suite, ragged_errors) {
  const index_t tq = 6, tk = 9, hq = 4, hkv = 2, d = 8;
  const auto qd = gqa::test::random_floats(static_cast<std::size_t>(tq * hq * d), 1);
  const auto kd = gqa::test::random_floats(static_cast<std::size_t>(tk * hkv * d), 2);
  const auto map = gqa::head_map::uniform(hq, hkv);
  const auto expect_rejects = [&](std::vector<long> cu_q, std::vector<long> cu_k, const std::string& want,
                                  gqa::attention_options opt = {}) {
    std::vector<float> o(static_cast<std::size_t>(tq * hq * d), k_nan);
    expect_rejected_untouched(
        [&] {
          gqa::attend<TypeParam>(gqa::thd(qd.data(), tq, hq, d), gqa::thd(kd.data(), tk, hkv, d),
                                 gqa::thd(kd.data(), tk, hkv, d), gqa::thd(o.data(), tq, hq, d), map,
                                 gqa::varlen{cu_q, cu_k}, opt);
        },
        o, want);
  };
  expect_rejects({0, 2, 6}, {0, 4}, "seqs.cu_seqlens_k.size() = 2");
  expect_rejects({1, 2, 6}, {0, 4, 9}, "seqs.cu_seqlens_q[0] = 1");
  expect_rejects({0, 4, 2, 6}, {0, 4, 5, 9}, "seqs.cu_seqlens_q[2] = 2");
  expect_rejects({0, 2, 5}, {0, 4, 9}, "seqs.cu_seqlens_q[2] = 5: the last offset must equal q.s = 6");
  expect_rejects({0, 2, 6}, {0, 4, 10}, "seqs.cu_seqlens_k[2] = 10");
  expect_rejects({0}, {0}, "seqs.cu_seqlens_q.size() = 1");
  gqa::attention_options with_lengths;
  const std::vector<index_t> lengths = {1, 2};
  with_lengths.kv_lengths = lengths;
  expect_rejects({0, 2, 6}, {0, 4, 9}, "options.kv_lengths.size() = 2", with_lengths);
  std::vector<float> o(static_cast<std::size_t>(2 * 3 * hq * d));
  const std::vector<long> cu = {0, 2, 6};
  try {  // a batched view: the rows must be in s
    gqa::attend<TypeParam>(gqa::bshd(qd.data(), 2, 3, hq, d), gqa::thd(kd.data(), tk, hkv, d), gqa::thd(kd.data(), tk, hkv, d),
                           gqa::bshd(o.data(), 2, 3, hq, d), map, gqa::varlen{cu, cu}, {});
    ADD_FAILURE() << "q.b = 2 accepted";
  } catch (const gqa::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("q.b = 2"), std::string::npos) << e.what();
  }
}

// Masks and score modifiers on a cache with a capacity (bshd with s = capacity and kv_lengths, and the
// first positions of a wider allocation, bitwise the same): each alone and all four together, decode and
// prefill (causal and not, more queries than a sequence's keys), lengths 0 and 1, d not a multiple of the
// vector width.
TYPED_TEST_P(kv_cache_suite, masks_with_capacity_views) {
  const cache_shape shapes[] = {
      {3, 1, 8, 2, 19, 19, 64, {50, 1, 0}, false, 7, -1},         // decode; one sequence of one key, one empty
      {2, 37, 6, 3, 40, 24, 120, {120, 45}, true, 20, 3},         // prefill, causal bottom-right
      {2, 9, 4, 1, 5, 7, 130, {5, 130}, false, 4, 2},             // sq > a length; both window sides
      {1, 2, 32, 1, 32, 33, 150, {149}, true, 60, -1},            // a tiled group (G = 32 at 2 positions)
  };
  std::uint64_t seed = 40;
  for (const cache_shape& s : shapes)
    for (int combo = 0; combo < k_mask_combos; ++combo) {
      const cache_case c = s.with(combo, seed++);
      const cache_data in(c);
      const output base = run_dense<TypeParam>(c, in);
      expect_matches_reference(c, in, base);
      const wider_cache wide(c, in, c.cap + 29);
      output o(c);
      gqa::attention_options opt = c.options();
      opt.lse = o.lse;
      const std::vector<std::int32_t> l32(c.lengths.begin(), c.lengths.end());
      opt.kv_lengths = l32;
      gqa::attend<TypeParam>(in.qv(c), wide.kv(c), wide.vv(c), o.view(c), c.map(), opt);
      EXPECT_TRUE(same_bits(o.o, base.o) && same_bits(o.lse, base.lse)) << c.describe() << ": bshd with capacity";
    }
}

// Masks and score modifiers on a paged cache, each alone and all four together: against the reference and
// bitwise against the dense call, decode and prefill, pages of 1, 7, 16 and 256 slots (lengths no multiple
// of the page), a sequence of one key and an empty one, unequal groups with an unused KV head, d and d_v
// not multiples of the vector width, and split-KV decode with the window's edge inside a page.
TYPED_TEST_P(kv_cache_suite, masks_on_paged_caches) {
  std::vector<std::pair<cache_case, std::pair<index_t, index_t>>> cases;  // a case and its window
  {
    cache_case c;  // decode, GQA 4:1
    c.b = 3, c.sq = 1, c.hq = 8, c.hkv = 2, c.d = c.dv = 19, c.cap = 300, c.lengths = {300, 1, 129}, c.seed = 60;
    cases.push_back({c, {40, -1}});
    c.lengths = {0, 257, 33}, c.causal = true, c.seed = 61;
    cases.push_back({c, {100, 2}});
  }
  {
    cache_case c;  // prefill, causal, sq < length
    c.b = 2, c.sq = 37, c.hq = 6, c.hkv = 3, c.d = 40, c.dv = 24, c.cap = 203, c.lengths = {203, 70}, c.causal = true;
    c.seed = 62;
    cases.push_back({c, {20, 5}});
    c.kv_of_q = {2, 2, 2, 0, 2, 0}, c.causal = false, c.sq = 50, c.lengths = {203, 20}, c.seed = 63;  // KV head 1 unused
    cases.push_back({c, {10, 10}});
  }
  {
    cache_case c;  // a tiled-path group (G = 32 per KV head at 2 positions) and a d_v tail
    c.b = 1, c.sq = 2, c.hq = 32, c.hkv = 1, c.d = 32, c.dv = 33, c.cap = 150, c.lengths = {150}, c.causal = true;
    c.seed = 64;
    cases.push_back({c, {60, -1}});
  }
  for (const auto& [base, window] : cases)
    for (int combo = 0; combo < k_mask_combos; ++combo) {
      cache_case c = base;
      c.mods = mask_combo(combo, c.hq, window.first, window.second);
      for (const index_t page : k_page_sizes) {
        if (gqa::test::reduced && (page == 1 || page == 256) && combo % 2 == 0) continue;
        check_paged<TypeParam>(c, page);
      }
    }
  // Split-KV decode (Note [decode split]): the window starts inside a chunk and inside a page.
  cache_case c;
  c.b = 1, c.sq = 1, c.hq = 8, c.hkv = 2, c.d = c.dv = 24, c.seed = 65;
  c.cap = gqa::test::reduced ? 2100 : 4500;
  c.lengths = {c.cap - 3};
  for (const int combo : {1, 5}) {
    c.mods = mask_combo(combo, c.hq, c.cap / 2 + 3, -1);
    for (const index_t page : {index_t{7}, index_t{256}}) check_paged<TypeParam>(c, page);
  }
}

// Masks and score modifiers on ragged batches, each alone and all four together, per sequence bottom-right:
// prefill and decode sequences together, empty sequences, more queries than keys, a split-KV decode
// sequence, unequal groups, d not a multiple of the vector width.
TYPED_TEST_P(kv_cache_suite, masks_on_ragged_batches) {
  for (int combo = 0; combo < k_mask_combos; ++combo) {
    ragged_case c;
    c.hq = 8, c.hkv = 2, c.d = 40, c.dv = 24, c.seed = 70 + static_cast<std::uint64_t>(combo);
    c.nq = {5, 0, 1, 70, 3, 0, 9, 1};
    c.nk = {5, 7, 300, 129, 0, 0, 4, 1};
    c.mods = mask_combo(combo, c.hq, 30, 4);
    for (const bool causal : {false, true}) {
      c.causal = causal;
      check_ragged<TypeParam>(c, gqa::head_map::uniform(c.hq, c.hkv));
    }
    c.nq = {1, 1, 1};  // decode tasks
    c.nk = {17, 0, 200};
    c.d = c.dv = 19;
    check_ragged<TypeParam>(c, gqa::head_map::uniform(c.hq, c.hkv));
    if (combo == 1 || combo == 5) {  // split KV, the window's edge inside a chunk
      c.nq = {1};
      c.nk = {gqa::test::reduced ? 2100 : 4500};
      c.mods = mask_combo(combo, c.hq, c.nk[0] / 2 + 3, -1);
      check_ragged<TypeParam>(c, gqa::head_map::uniform(c.hq, c.hkv));
    }
    c.nq = {33, 2, 64};
    c.nk = {40, 2, 64};
    c.hq = 6, c.hkv = 3, c.d = c.dv = 19, c.causal = true;
    c.mods = mask_combo(combo, c.hq, 9, 0);
    const std::vector<index_t> unequal = {2, 2, 2, 0, 2, 0};  // KV head 1 unused
    check_ragged<TypeParam>(c, gqa::head_map(unequal, c.hkv));
  }
}

/// The keys of a sequence (nq queries over len keys) that a test poisons: every key no row sees, and the
/// key just before the last row's window (seen by earlier rows only), if any.
std::vector<index_t> keys_to_poison(index_t nq, index_t len, bool causal, const gqa::reference::modifiers& m) {
  std::vector<bool> seen(static_cast<std::size_t>(len), false);
  for (index_t i = 0; i < nq; ++i) {
    const auto [lo, hi] = gqa::reference::visible_keys(i, nq, len, causal, m);
    for (index_t j = lo; j < hi; ++j) seen[static_cast<std::size_t>(j)] = true;
  }
  std::vector<index_t> keys;
  for (index_t j = 0; j < len; ++j)
    if (!seen[static_cast<std::size_t>(j)]) keys.push_back(j);
  if (nq > 0) {
    const auto last = gqa::reference::visible_keys(nq - 1, nq, len, causal, m);
    if (last.hi > last.lo && last.lo > 0 && seen[static_cast<std::size_t>(last.lo - 1)]) keys.push_back(last.lo - 1);
  }
  return keys;
}

/// Poisons key rows k[j] (kd elements) and v[j] (dv elements) of a buffer of rows: NaN, +inf or −inf in
/// every element, by j, K and V out of step.
void poison_key(float* k, float* v, index_t j, index_t kd, index_t vd) {
  const float values[3] = {k_nan, k_inf, -k_inf};
  std::fill_n(k + j * kd, kd, values[j % 3]);
  std::fill_n(v + j * vd, vd, values[(j + 1) % 3]);
}

/// What compare_poisoned counted: (row, head) pairs that see a poisoned key, the non-finite outputs among
/// them, and the pairs that see none but differ from the clean call.
struct poisoned_rows {
  index_t seeing = 0, nonfinite = 0, changed = 0;
};

/// The rows of one sequence (nq queries over len keys, `poisoned` its poisoned keys) against the clean
/// call's, counted into n: a row that sees no poisoned key must have the clean bits (its d_v outputs from
/// o_at(r, h) on and its LSE at lse_at(r, h), indices into o and lse).
template <class OAt, class LseAt>
void compare_poisoned(poisoned_rows& n, index_t nq, index_t len, index_t hq, index_t dv, bool causal,
                      const gqa::reference::modifiers& m, const std::vector<index_t>& poisoned, const std::vector<float>& clean_o,
                      const std::vector<float>& clean_lse, const std::vector<float>& o, const std::vector<float>& lse,
                      OAt o_at, LseAt lse_at) {
  for (index_t r = 0; r < nq; ++r) {
    const auto [lo, hi] = gqa::reference::visible_keys(r, nq, len, causal, m);
    const bool sees = std::any_of(poisoned.begin(), poisoned.end(), [&](index_t j) { return j >= lo && j < hi; });
    for (index_t h = 0; h < hq; ++h) {
      const std::size_t l = lse_at(r, h), o0 = o_at(r, h);
      if (sees) {
        ++n.seeing;
        for (index_t x = 0; x < dv; ++x) n.nonfinite += !std::isfinite(o[o0 + static_cast<std::size_t>(x)]);
        continue;
      }
      bool same = std::memcmp(&lse[l], &clean_lse[l], sizeof(float)) == 0;
      for (index_t x = 0; x < dv; ++x)
        same = same && std::memcmp(&o[o0 + static_cast<std::size_t>(x)], &clean_o[o0 + static_cast<std::size_t>(x)], sizeof(float)) == 0;
      n.changed += !same;
    }
  }
}

// NaN and ±inf where a row must not look never reach it: in keys no row's window covers (and the key just
// before the last row's window, which earlier rows see), in the slots of a paged cache past a sequence's
// length and in spare pages, and in a capacity cache past each length. Every row that sees no poisoned
// key gives the bits of the clean call (which matches the reference); the rows that see one show it.
// The window alone and with softcap, sinks and ALiBi; decode (split KV included) and prefill; the dense
// view with a capacity, the paged cache and the ragged batch.
TYPED_TEST_P(kv_cache_suite, nonfinite_keys_behind_windows_and_pages_never_leak) {
  const cache_shape shapes[] = {
      {3, 1, 8, 2, 19, 19, 300, {300, 1, 129}, false, 40, -1},  // decode
      {2, 37, 6, 3, 40, 24, 203, {203, 70}, true, 20, 5},       // prefill, causal
      {1, 9, 4, 2, 21, 21, 90, {77}, false, 6, 3},              // prefill, both window sides
      {1, 1, 8, 2, 16, 16, gqa::test::reduced ? 2100 : 4500, {gqa::test::reduced ? 2097 : 4497}, true, 700, -1},  // split KV
  };
  std::uint64_t seed = 80;
  for (const cache_shape& s : shapes)
    for (const int combo : {1, 5}) {
      const cache_case c = s.with(combo, seed++);
      SCOPED_TRACE(c.describe());
      const gqa::reference::modifiers m = c.mods.reference();
      const cache_data in(c);
      cache_data bad = in;
      std::vector<std::vector<index_t>> poisoned(static_cast<std::size_t>(c.b));
      for (index_t ib = 0; ib < c.b; ++ib) {
        const index_t len = c.lengths[static_cast<std::size_t>(ib)];
        auto& keys = poisoned[static_cast<std::size_t>(ib)];
        keys = keys_to_poison(c.sq, len, c.causal, m);
        for (index_t j = len; j < c.cap; ++j) keys.push_back(j);  // past the length: ±inf for the dense view
        for (const index_t j : keys)
          poison_key(bad.k.data() + ib * c.cap * c.hkv * c.d, bad.v.data() + ib * c.cap * c.hkv * c.dv, j, c.hkv * c.d,
                     c.hkv * c.dv);
      }
      const auto compare = [&](const output& clean, const output& got, const char* what) {
        SCOPED_TRACE(what);
        poisoned_rows n;
        for (index_t ib = 0; ib < c.b; ++ib)
          compare_poisoned(
              n, c.sq, c.lengths[static_cast<std::size_t>(ib)], c.hq, c.dv, c.causal, m, poisoned[static_cast<std::size_t>(ib)],
              clean.o, clean.lse, got.o, got.lse,
              [&](index_t r, index_t h) { return static_cast<std::size_t>(((ib * c.sq + r) * c.hq + h) * c.dv); },
              [&](index_t r, index_t h) { return static_cast<std::size_t>((ib * c.hq + h) * c.sq + r); });
        EXPECT_EQ(n.changed, 0) << "rows that see no poisoned key changed";
        if (n.seeing > 0) {
          EXPECT_GT(n.nonfinite, 0) << "no row that sees a poisoned key shows it";
        }
      };
      const output clean = run_dense<TypeParam>(c, in);
      expect_matches_reference(c, in, clean);
      compare(clean, run_dense<TypeParam>(c, bad), "capacity view");
      for (const index_t page : {index_t{7}, index_t{16}}) {
        SCOPED_TRACE("page " + std::to_string(page));
        const paged_cache pc(c, in, page, page_seed(c, page));
        const output paged_clean = run_paged<TypeParam>(c, in, pc);
        expect_matches_reference(c, in, paged_clean);
        paged_cache pbad(c, bad, page, page_seed(c, page));
        pbad.poison_unused(c);
        compare(paged_clean, run_paged<TypeParam>(c, bad, pbad), "paged");
      }
    }
  // A ragged batch: each sequence's keys poisoned by its own windows.
  for (const int combo : {1, 5}) {
    ragged_case c;
    c.hq = 8, c.hkv = 2, c.d = 40, c.dv = 24, c.causal = combo == 5, c.seed = 90 + static_cast<std::uint64_t>(combo);
    c.nq = {5, 0, 1, 70, 3, 9, 1};
    c.nk = {50, 7, 300, 129, 0, 4, 1};
    c.mods = mask_combo(combo, c.hq, 30, 4);
    SCOPED_TRACE(c.describe());
    const gqa::reference::modifiers m = c.mods.reference();
    const gqa::head_map map = gqa::head_map::uniform(c.hq, c.hkv);
    const ragged_data in(c);
    ragged_data bad = in;
    std::vector<std::vector<index_t>> poisoned(c.nq.size());
    for (std::size_t i = 0; i < c.nq.size(); ++i) {
      poisoned[i] = keys_to_poison(c.nq[i], c.nk[i], c.causal, m);
      for (const index_t j : poisoned[i])
        poison_key(bad.k.data() + in.cu_k[i] * c.hkv * c.d, bad.v.data() + in.cu_k[i] * c.hkv * c.dv, j, c.hkv * c.d,
                   c.hkv * c.dv);
    }
    const ragged_output clean = run_ragged<TypeParam>(c, map, in);
    expect_ragged_matches_reference(c, map, in, clean);
    const ragged_output got = run_ragged<TypeParam>(c, map, bad);
    poisoned_rows n;
    for (std::size_t i = 0; i < c.nq.size(); ++i) {
      const index_t q0 = in.cu_q[i];
      compare_poisoned(
          n, c.nq[i], c.nk[i], c.hq, c.dv, c.causal, m, poisoned[i], clean.o, clean.lse, got.o, got.lse,
          [&](index_t r, index_t h) { return static_cast<std::size_t>(((q0 + r) * c.hq + h) * c.dv); },
          [&](index_t r, index_t h) { return static_cast<std::size_t>(h * in.tq + q0 + r); });
    }
    EXPECT_EQ(n.changed, 0) << "rows that see no poisoned key changed";
    EXPECT_GT(n.seeing, 0);
    EXPECT_GT(n.nonfinite, 0) << "no row that sees a poisoned key shows it";
  }
}

/// A KDGQA or DGQA policy of one of the configurations the paged and ragged tests run, with its own DGQA
/// state, for successive calls: 0 KDGQA (reference rule), 1 KDGQA per_sample, 2 KDGQA hamilton with one
/// query head per KV head at least, 3 DGQA diff in training (window 2: steps 0 and 2 update, step 1 reuses
/// the splits), 4 DGQA ema in eval (reference random repair), 5 DGQA diff with the recursive EMA cache in
/// training (window 1) and float64 arithmetic.
constexpr int k_norm_policies = 6;
struct norm_policy {
  int kind;
  gqa::dgqa_state state;
  std::optional<gqa::kdgqa_policy> kd;
  std::optional<gqa::dgqa_policy> dg;

  norm_policy(int k, index_t hq, index_t hkv) : kind(k), state(gqa::dgqa_state::initial(hq, hkv)) {
    if (kind < 3) {
      gqa::kdgqa_options o;
      o.per_sample = kind == 1;
      if (kind == 2) o.rule = gqa::allocation_rule::hamilton, o.min_per_kv = 1;
      kd.emplace(o);
    } else {
      gqa::dgqa_options o;
      o.kind = kind == 4 ? gqa::dgqa_kind::ema : gqa::dgqa_kind::diff;
      o.window = kind == 3 ? 2 : 1;
      o.seed = 17, o.layer = 3;
      if (kind == 5) o.cache_update = gqa::dgqa_cache_update::true_ema, o.arithmetic = gqa::allocation_arithmetic::float64;
      dg.emplace(o, state);
      dg->set_mode(kind == 4 ? gqa::dgqa_mode::eval : gqa::dgqa_mode::train);
    }
  }
  norm_policy(const norm_policy&) = delete;  // dg points at state
  std::string name() const { return (kd ? "kdgqa kind " : "dgqa kind ") + std::to_string(kind); }
  bool per_sample() const { return kind == 1; }
  /// Calls f(policy) after setting DGQA's training step to `call`.
  template <class F>
  void with(std::uint64_t call, F&& f) {
    if (kd) {
      f(*kd);
    } else {
      dg->set_step(call);
      f(*dg);
    }
  }
  gqa::allocation_result last() const { return kd ? kd->last() : dg->last(); }
  /// The reference's grouping of a call from its sequences' keys (each a dense view of its valid keys),
  /// advancing `memory` (DGQA's state twin) and `previous` (KDGQA's last allocation) as the policy does.
  gqa::reference::grouping reference(const std::vector<gqa::tensor_view<const float>>& seqs, index_t hq, index_t hkv,
                                     std::uint64_t call, gqa::reference::dgqa_memory& memory,
                                     std::vector<int>& previous) const {
    gqa::reference::grouping g;
    if (kd) {
      gqa::reference::kdgqa_setup setup;
      setup.hamilton = kind == 2;
      setup.min_per_kv = kind == 2 ? 1 : 0;
      g = gqa::reference::kdgqa(gqa::reference::key_norms(seqs, hkv), hq, setup, previous);
      previous = g.alloc;
    } else {
      const gqa::dgqa_options& o = dg->options();
      gqa::reference::dgqa_setup setup;
      setup.ema = o.kind == gqa::dgqa_kind::ema;
      setup.window = o.window;
      setup.cache_update = kind == 5 ? "true_ema" : "reference";
      setup.float64 = kind == 5;
      setup.seed = o.seed, setup.layer = o.layer;
      g = gqa::reference::dgqa_step(memory, seqs, hkv, hq, setup, kind != 4, call);
    }
    return g;
  }
};

/// The policy's state after a call against its twin's: the same allocation and status, and (DGQA) the
/// same state bits.
void expect_same_policy_state(const norm_policy& a, const norm_policy& b) {
  const gqa::allocation_result la = a.last(), lb = b.last();
  EXPECT_EQ(la.alloc, lb.alloc);
  EXPECT_EQ(la.status, lb.status);
  EXPECT_EQ(la.updated, lb.updated);
  if (a.dg) {
    EXPECT_EQ(a.state.splits, b.state.splits);
    EXPECT_EQ(a.state.rng_counter, b.state.rng_counter);
    EXPECT_EQ(0, std::memcmp(a.state.cache.data(), b.state.cache.data(), a.state.cache.size() * sizeof(float)));
  }
}

/// The policy's allocation against the reference's (the reference's norms are one plain double chain, the
/// policy's 16 fixed lanes: the same allocation unless a share sits within rounding of a .5 tie, which
/// these random keys never do), and DGQA's cache to float rounding.
void expect_reference_grouping(const norm_policy& p, const gqa::reference::grouping& want,
                               const gqa::reference::dgqa_memory& memory) {
  const gqa::allocation_result got = p.last();
  EXPECT_EQ(got.alloc, want.alloc);
  EXPECT_EQ(gqa::to_string(got.status), want.status);
  EXPECT_EQ(got.updated, want.updated);
  EXPECT_NE(got.status, gqa::grouping_status::fallback_nonfinite) << "a NaN key reached the norms";
  if (p.dg) {
    EXPECT_EQ(p.state.splits, memory.splits);
    EXPECT_EQ(p.state.rng_counter, memory.rng_counter);
    for (std::size_t g = 0; g < memory.cache.size(); ++g)
      EXPECT_NEAR(p.state.cache[g], memory.cache[g], 1e-6 * std::max(1.0f, memory.cache[g])) << "cache " << g;
  }
}

/// The dense views of the valid keys of each sequence of a cache case (b = 1, s = its length), for the
/// reference's norms; a sequence without keys is left out.
std::vector<gqa::tensor_view<const float>> sequence_keys(const cache_case& c, const cache_data& in) {
  std::vector<gqa::tensor_view<const float>> seqs;
  for (index_t ib = 0; ib < c.b; ++ib)
    if (const index_t n = c.lengths[static_cast<std::size_t>(ib)]; n > 0)
      seqs.push_back(gqa::bshd(in.k.data() + ib * c.cap * c.hkv * c.d, 1, n, c.hkv, c.d));
  return seqs;
}

// KDGQA and DGQA on a paged cache plan from the norms of each sequence's valid keys: three successive calls
// (new keys each, so DGQA's diff / ema statistics move; a training step that reuses the splits) give, for
// every configuration, the bits, LSE, allocation and DGQA state of the same calls on the dense cache
// zero-padded past each length (unwritten slots and spare pages of the pool hold NaN: none reaches a norm
// or an output), the reference's allocation and DGQA state from per-sequence dense views, and the double
// reference on the map chosen (per_sample: each sequence the reference's allocation of its own keys).
// Decode and prefill, pages of 1, 7 and 16 slots (lengths no multiple of the page), a sequence of one key,
// an empty one, unequal lengths, d not a multiple of the vector width, with and without a window.
TYPED_TEST_P(kv_cache_suite, key_norm_variants_on_paged_caches) {
  std::vector<cache_case> cases;
  {
    cache_case c;  // decode: three sequences, one of one key
    c.b = 3, c.sq = 1, c.hq = 8, c.hkv = 4, c.d = c.dv = 19, c.cap = 130, c.lengths = {130, 1, 77}, c.seed = 200;
    cases.push_back(c);
    c.lengths = {0, 45, 130}, c.causal = true, c.seed = 210;  // an empty sequence
    cases.push_back(c);
  }
  {
    cache_case c;  // prefill, causal, a window, hkv not dividing hq
    c.b = 2, c.sq = 21, c.hq = 7, c.hkv = 3, c.d = 40, c.dv = 24, c.cap = 90, c.lengths = {90, 33}, c.causal = true,
    c.seed = 220;
    c.mods = mask_combo(1, c.hq, 30, -1);
    cases.push_back(c);
  }
  for (const cache_case& base : cases)
    for (int kind = 0; kind < k_norm_policies; ++kind)
      for (const index_t page : {index_t{1}, index_t{7}, index_t{16}}) {
        if (page == 1 && kind % 2 == 1) continue;
        norm_policy paged_p(kind, base.hq, base.hkv), dense_p(kind, base.hq, base.hkv);
        SCOPED_TRACE(paged_p.name() + " page " + std::to_string(page));
        gqa::reference::dgqa_memory memory{paged_p.state.cache, paged_p.state.splits, 0};
        std::vector<int> previous;
        for (std::uint64_t call = 0; call < 3; ++call) {
          cache_case c = base;
          c.seed = base.seed + 7 * call;
          SCOPED_TRACE(c.describe() + " call " + std::to_string(call));
          const cache_data in(c);
          const paged_cache pc(c, in, page, page_seed(c, page));
          output paged(c), dense(c);
          gqa::attention_options opt = c.options();
          opt.lse = paged.lse;
          paged_p.with(call, [&](auto& p) { gqa::forward<TypeParam>(p, in.qv(c), pc.view(c), paged.view(c), opt); });
          const cache_data zero = in.zero_padded(c);
          opt.lse = dense.lse;
          opt.kv_lengths = c.lengths;
          dense_p.with(call, [&](auto& p) { gqa::forward<TypeParam>(p, zero.qv(c), zero.kv(c), zero.vv(c), dense.view(c), opt); });
          EXPECT_TRUE(same_bits(paged.o, dense.o)) << "paged output differs from the zero-padded dense call";
          EXPECT_TRUE(same_bits(paged.lse, dense.lse)) << "paged LSE differs from the zero-padded dense call";
          expect_same_policy_state(paged_p, dense_p);
          if (paged_p.per_sample()) {
            // Sequence by sequence: the reference's allocation of its own keys, the dense call on that map.
            for (index_t ib = 0; ib < c.b; ++ib) {
              const index_t n = c.lengths[static_cast<std::size_t>(ib)];
              std::vector<gqa::tensor_view<const float>> one;
              if (n > 0) one.push_back(gqa::bshd(in.k.data() + ib * c.cap * c.hkv * c.d, 1, n, c.hkv, c.d));
              const auto want = paged_p.reference(one, c.hq, c.hkv, call, memory, previous);
              output o1(c);
              gqa::attention_options o = c.options();
              o.kv_lengths = c.lengths;
              gqa::attend<TypeParam>(zero.qv(c), zero.kv(c), zero.vv(c), o1.view(c),
                                     gqa::head_map::from_allocation(want.alloc), o);
              const auto rows = static_cast<std::ptrdiff_t>(c.sq * c.hq * c.dv);
              EXPECT_TRUE(std::equal(paged.o.begin() + ib * rows, paged.o.begin() + (ib + 1) * rows, o1.o.begin() + ib * rows,
                                     [](float x, float y) { return std::memcmp(&x, &y, sizeof x) == 0; }))
                  << "sequence " << ib << " was not planned from its own keys";
            }
            continue;
          }
          const auto want = paged_p.reference(sequence_keys(c, in), c.hq, c.hkv, call, memory, previous);
          expect_reference_grouping(paged_p, want, memory);
          cache_case with_map = c;
          with_map.kv_of_q = want.kv_of_q;
          expect_matches_reference(with_map, in, paged);
        }
      }
}

// KDGQA and DGQA on a ragged batch plan from the norms of its sequences' keys: three successive calls per
// configuration (DGQA's statistics move) give the allocation and DGQA state of the same policy planning
// from the batch zero-padded to one length (a dense K), and of the reference from per-sequence dense
// views; the output is the bits of gqa::attend on the ragged batch with that map and matches the double
// reference per sequence; per_sample plans each sequence from its own keys (the reference's allocation),
// the bits of attend on that sequence alone. Prefill and decode sequences together, sequences without
// queries or keys, a sequence of one key, causal and not.
TYPED_TEST_P(kv_cache_suite, key_norm_variants_on_ragged_batches) {
  for (int kind = 0; kind < k_norm_policies; ++kind)
    for (const bool causal : {false, true}) {
      ragged_case base;
      base.hq = 8, base.hkv = 4, base.d = 21, base.dv = 24, base.causal = causal;
      base.nq = {5, 0, 1, 40, 3, 1, 2};
      base.nk = {9, 7, 130, 40, 0, 1, 2};
      norm_policy pol(kind, base.hq, base.hkv), twin(kind, base.hq, base.hkv);
      SCOPED_TRACE(pol.name() + (causal ? " causal" : ""));
      gqa::reference::dgqa_memory memory{pol.state.cache, pol.state.splits, 0};
      std::vector<int> previous;
      const index_t longest = *std::max_element(base.nk.begin(), base.nk.end());
      const auto nseq = static_cast<index_t>(base.nq.size());
      for (std::uint64_t call = 0; call < 3; ++call) {
        ragged_case c = base;
        c.seed = 300 + 11 * call + (causal ? 1 : 0);
        SCOPED_TRACE(c.describe() + " call " + std::to_string(call));
        const ragged_data in(c);
        ragged_output out{std::vector<float>(static_cast<std::size_t>(in.tq * c.hq * c.dv), k_nan),
                          std::vector<float>(static_cast<std::size_t>(c.hq * in.tq), k_nan)};
        gqa::attention_options opt;
        opt.causal = c.causal;
        opt.lse = out.lse;
        const auto q = gqa::thd(in.q.data(), in.tq, c.hq, c.d);
        const auto k = gqa::thd(in.k.data(), in.tk, c.hkv, c.d), v = gqa::thd(in.v.data(), in.tk, c.hkv, c.dv);
        pol.with(call, [&](auto& p) {
          gqa::forward<TypeParam>(p, q, k, v, gqa::thd(out.o.data(), in.tq, c.hq, c.dv), gqa::varlen{in.cu_q, in.cu_k}, opt);
        });
        // The twin plans from the batch zero-padded to the longest sequence (b = sequences, s = longest).
        std::vector<float> padded(static_cast<std::size_t>(nseq * longest * c.hkv * c.d), 0.0f);
        for (index_t i = 0; i < nseq; ++i)
          std::copy_n(in.k.begin() + in.cu_k[static_cast<std::size_t>(i)] * c.hkv * c.d, c.nk[static_cast<std::size_t>(i)] * c.hkv * c.d,
                      padded.begin() + i * longest * c.hkv * c.d);
        const auto kp = gqa::bshd<const float>(padded.data(), nseq, longest, c.hkv, c.d);
        std::vector<gqa::head_map> maps;
        twin.with(call, [&](auto& p) {
          if (twin.per_sample()) {
            for (index_t i = 0; i < nseq; ++i) maps.push_back(p.plan(q, gqa::detail::sample(kp, i)));
          } else {
            maps.push_back(p.plan(q, kp));
          }
        });
        expect_same_policy_state(pol, twin);
        if (pol.per_sample()) {
          for (index_t i = 0; i < nseq; ++i) {
            const auto ui = static_cast<std::size_t>(i);
            std::vector<gqa::tensor_view<const float>> one;
            if (c.nk[ui] > 0) one.push_back(gqa::bshd(in.k.data() + in.cu_k[ui] * c.hkv * c.d, 1, c.nk[ui], c.hkv, c.d));
            const auto want = pol.reference(one, c.hq, c.hkv, call, memory, previous);
            const auto got_map = maps[ui].kv_of_q();
            EXPECT_EQ(std::vector<index_t>(got_map.begin(), got_map.end()), want.kv_of_q) << "sequence " << i;
            if (c.nq[ui] == 0) continue;
            if (c.nk[ui] == 0) {  // no keys: +0 rows
              EXPECT_TRUE(std::all_of(out.o.begin() + in.cu_q[ui] * c.hq * c.dv, out.o.begin() + in.cu_q[ui + 1] * c.hq * c.dv,
                                      [](float x) { return gqa::test::is_plus_zero(x); }));
              continue;
            }
            ragged_case ci = c;  // the sequence alone, on its map
            ci.nq = {c.nq[ui]};
            ci.nk = {c.nk[ui]};
            const ragged_data alone = [&] {
              ragged_data d(ci);
              std::copy_n(in.q.begin() + in.cu_q[ui] * c.hq * c.d, c.nq[ui] * c.hq * c.d, d.q.begin());
              std::copy_n(in.k.begin() + in.cu_k[ui] * c.hkv * c.d, c.nk[ui] * c.hkv * c.d, d.k.begin());
              std::copy_n(in.v.begin() + in.cu_k[ui] * c.hkv * c.dv, c.nk[ui] * c.hkv * c.dv, d.v.begin());
              return d;
            }();
            const ragged_output want_o = run_ragged<TypeParam>(ci, maps[ui], alone);
            expect_ragged_matches_reference(ci, maps[ui], alone, want_o);
            EXPECT_TRUE(std::equal(want_o.o.begin(), want_o.o.end(), out.o.begin() + in.cu_q[ui] * c.hq * c.dv,
                                   [](float x, float y) { return std::memcmp(&x, &y, sizeof x) == 0; }))
                << "sequence " << i << " differs from the call on it alone";
          }
          continue;
        }
        std::vector<gqa::tensor_view<const float>> seqs;
        for (index_t i = 0; i < nseq; ++i)
          if (const index_t n = c.nk[static_cast<std::size_t>(i)]; n > 0)
            seqs.push_back(gqa::bshd(in.k.data() + in.cu_k[static_cast<std::size_t>(i)] * c.hkv * c.d, 1, n, c.hkv, c.d));
        const auto want = pol.reference(seqs, c.hq, c.hkv, call, memory, previous);
        expect_reference_grouping(pol, want, memory);
        const gqa::head_map map = gqa::head_map::from_allocation(want.alloc);
        const ragged_output plain = run_ragged<TypeParam>(c, map, in);
        EXPECT_TRUE(same_bits(out.o, plain.o) && same_bits(out.lse, plain.lse)) << "differs from attend on the planned map";
        expect_ragged_matches_reference(c, map, in, out);
      }
    }
}

// PGQA on a paged cache: successive calls give the bits of the same calls on the dense cache (one call
// index per call, the noise shared by the batch; unwritten slots NaN). On a ragged batch (Note [PGQA on a
// ragged batch]): the call takes one call index (calls() advances by one), and sequence i's rows are
// attend's output perturbed per (sequence, head) with Z = pgqa_standardised_noise(n_q(i)·dv, seed, layer,
// call, g, j), bit for bit (pgqa_perturb on that sequence's rows alone); against the reference's PGQA
// (reference/pgqa.hpp, double) on each sequence's reference output; sequences of one length give the
// dense batch's noise; a sequence of one output value per head is rejected before any work.
TYPED_TEST_P(kv_cache_suite, pgqa_on_paged_caches_and_ragged_batches) {
  const gqa::pgqa_options popt{.seed = 23, .layer = 4};
  {
    cache_case c;
    c.b = 3, c.sq = 5, c.hq = 8, c.hkv = 2, c.d = c.dv = 19, c.cap = 70, c.lengths = {70, 1, 0}, c.causal = true, c.seed = 400;
    for (const index_t sq : {index_t{5}, index_t{1}}) {
      c.sq = sq;
      gqa::pgqa_policy paged_p(popt), dense_p(popt);
      for (std::uint64_t call = 0; call < 3; ++call) {
        c.seed += 3;
        SCOPED_TRACE(c.describe() + " call " + std::to_string(call));
        const cache_data in(c);
        const paged_cache pc(c, in, 16, page_seed(c, 16));
        output paged(c), dense(c);
        gqa::attention_options opt = c.options();
        gqa::forward<TypeParam>(paged_p, in.qv(c), pc.view(c), paged.view(c), opt);
        opt.kv_lengths = c.lengths;
        gqa::forward<TypeParam>(dense_p, in.qv(c), in.kv(c), in.vv(c), dense.view(c), opt);
        EXPECT_TRUE(same_bits(paged.o, dense.o));
        EXPECT_EQ(paged_p.calls(), call + 1);
        EXPECT_TRUE(std::all_of(paged.o.begin(), paged.o.end(), [](float x) { return std::isfinite(x); }));
      }
    }
  }
  ragged_case c;
  c.hq = 8, c.hkv = 2, c.d = 21, c.dv = 19;
  c.nq = {5, 0, 1, 40, 3, 1, 5};
  c.nk = {9, 7, 130, 40, 0, 1, 12};
  for (const bool causal : {false, true}) {
    c.causal = causal;
    gqa::pgqa_policy pol(popt);
    pol.set_calls(5);
    for (std::uint64_t call = 5; call < 7; ++call) {
      c.seed = 500 + call + (causal ? 10 : 0);
      SCOPED_TRACE(c.describe() + " call " + std::to_string(call));
      const ragged_data in(c);
      std::vector<float> o(static_cast<std::size_t>(in.tq * c.hq * c.dv), k_nan);
      gqa::attention_options opt;
      opt.causal = c.causal;
      const auto ov = gqa::thd(o.data(), in.tq, c.hq, c.dv);
      gqa::forward<TypeParam>(pol, gqa::thd(in.q.data(), in.tq, c.hq, c.d), gqa::thd(in.k.data(), in.tk, c.hkv, c.d),
                              gqa::thd(in.v.data(), in.tk, c.hkv, c.dv), ov, gqa::varlen{in.cu_q, in.cu_k}, opt);
      EXPECT_EQ(pol.calls(), call + 1) << "one call index per ragged call";
      const gqa::head_map map = gqa::head_map::uniform(c.hq, c.hkv);
      ragged_output want = run_ragged<TypeParam>(c, map, in);
      const double scale = 1.0 / std::sqrt(static_cast<double>(static_cast<float>(c.d)));
      for (std::size_t i = 0; i < c.nq.size(); ++i) {
        if (c.nq[i] == 0) continue;
        const auto nq = c.nq[i];
        gqa::pgqa_perturb(gqa::bshd(want.o.data() + in.cu_q[i] * c.hq * c.dv, 1, nq, c.hq, c.dv), c.hkv, popt.seed, popt.layer, call);
        // The reference's PGQA on the sequence's reference output, with the naive output through the same
        // step as the yardstick.
        const auto q = gqa::bshd(in.q.data() + in.cu_q[i] * c.hq * c.d, 1, nq, c.hq, c.d);
        const auto k = gqa::bshd(in.k.data() + in.cu_k[i] * c.hkv * c.d, 1, std::max<index_t>(c.nk[i], 1), c.hkv, c.d);
        const auto v = gqa::bshd(in.v.data() + in.cu_k[i] * c.hkv * c.dv, 1, std::max<index_t>(c.nk[i], 1), c.hkv, c.dv);
        const std::vector<index_t> len = {c.nk[i]};
        const auto ref = gqa::reference::attention(q, k, v, map.kv_of_q(), scale, c.causal, len);
        auto naive = gqa::test::naive_fp32(q, k, v, map.kv_of_q(), static_cast<float>(scale), c.causal, len);
        const auto ref_p = gqa::reference::pgqa(ref.o, 1, nq, c.hq, c.dv, c.hkv, popt.seed, popt.layer, call);
        gqa::pgqa_perturb(gqa::bshd(naive.o.data(), 1, nq, c.hq, c.dv), c.hkv, popt.seed, popt.layer, call);
        double err = 0.0, naive_err = 0.0, omax = 1.0;
        for (std::size_t x = 0; x < ref_p.size(); ++x) {
          err = std::max(err, std::fabs(o[static_cast<std::size_t>(in.cu_q[i] * c.hq * c.dv) + x] - ref_p[x]));
          naive_err = std::max(naive_err, std::fabs(naive.o[x] - ref_p[x]));
          omax = std::max(omax, std::fabs(ref_p[x]));
        }
        EXPECT_LE(err, gqa::test::k_error_factor * naive_err + gqa::test::k_error_floor * omax) << "sequence " << i;
      }
      EXPECT_TRUE(same_bits(o, want.o)) << "not attend's output perturbed per (sequence, head) with call " << call;
    }
  }
  {
    // Sequences of one query count: the noise of the dense batch (b = 3, sq = 4) of the same rows.
    ragged_case e = c;
    e.nq = {4, 4, 4};
    e.nk = {10, 3, 17};
    e.causal = true;
    const ragged_data in(e);
    std::vector<float> o(static_cast<std::size_t>(in.tq * e.hq * e.dv), k_nan);
    gqa::attention_options opt;
    opt.causal = true;
    gqa::pgqa_policy pol(popt);
    gqa::forward<TypeParam>(pol, gqa::thd(in.q.data(), in.tq, e.hq, e.d), gqa::thd(in.k.data(), in.tk, e.hkv, e.d),
                            gqa::thd(in.v.data(), in.tk, e.hkv, e.dv), gqa::thd(o.data(), in.tq, e.hq, e.dv),
                            gqa::varlen{in.cu_q, in.cu_k}, opt);
    ragged_output want = run_ragged<TypeParam>(e, gqa::head_map::uniform(e.hq, e.hkv), in);
    gqa::pgqa_perturb(gqa::bshd(want.o.data(), 3, 4, e.hq, e.dv), e.hkv, popt.seed, popt.layer, 0);
    EXPECT_TRUE(same_bits(o, want.o)) << "equal query counts: not the dense batch's noise";
  }
  {
    // A sequence of one query with d_v = 1 has one value per (sequence, head): rejected, nothing written,
    // the call counter untouched.
    ragged_case e = c;
    e.nq = {3, 1};
    e.nk = {4, 4};
    e.dv = 1;
    const ragged_data in(e);
    std::vector<float> o(static_cast<std::size_t>(in.tq * e.hq * e.dv), k_nan);
    gqa::pgqa_policy pol(popt);
    expect_rejected_untouched(
        [&] {
          gqa::forward<TypeParam>(pol, gqa::thd(in.q.data(), in.tq, e.hq, e.d), gqa::thd(in.k.data(), in.tk, e.hkv, e.d),
                                  gqa::thd(in.v.data(), in.tk, e.hkv, e.dv), gqa::thd(o.data(), in.tq, e.hq, e.dv),
                                  gqa::varlen{in.cu_q, in.cu_k});
        },
        o, "sequence 1 has n_q * d_v = 1 * 1 = 1");
    EXPECT_EQ(pol.calls(), 0u);
  }
}

/// A caller's policy whose plan reads a dense K (plans_from_keys) and that has no plan_from_norms, and one
/// with a finish step and no finish_ragged: what the paged and ragged forward() still reject.
struct dense_keys_only_policy {
  static constexpr std::string_view name = "dense_keys_only";
  static constexpr bool plans_from_keys = true;
  gqa::head_map plan(const gqa::tensor_view<const float>& q, const gqa::tensor_view<const float>& k) const {
    return gqa::head_map::uniform(q.h, k.h);
  }
};
struct dense_finish_policy {
  static constexpr std::string_view name = "dense_finish";
  gqa::head_map plan(const gqa::tensor_view<const float>& q, const gqa::tensor_view<const float>& k) const {
    return gqa::head_map::uniform(q.h, k.h);
  }
  void finish(const gqa::tensor_view<float>&, const gqa::head_map&) const {}
};

// A policy without the steps a paged cache or a ragged batch needs is rejected by name before any work:
// a plan from a dense K without plan_from_norms (paged and ragged), a finish step without finish_ragged
// (ragged; a paged call's output is dense, so its finish runs).
TYPED_TEST_P(kv_cache_suite, policies_without_paged_or_ragged_steps_are_rejected) {
  cache_case c;
  c.b = 2, c.sq = 2, c.hq = 4, c.hkv = 2, c.d = c.dv = 8, c.cap = 20, c.lengths = {20, 5};
  const cache_data in(c);
  const paged_cache pc(c, in, 8, 1);
  output out(c);
  expect_rejected_untouched(
      [&] { gqa::forward<TypeParam>(dense_keys_only_policy{}, in.qv(c), pc.view(c), out.view(c)); }, out.o,
      "policy = dense_keys_only: its plan reads the keys of a dense K and it has no plan_from_norms");
  gqa::forward<TypeParam>(dense_finish_policy{}, in.qv(c), pc.view(c), out.view(c));
  ragged_case r;
  r.nq = {2, 3};
  r.nk = {4, 1};
  const ragged_data rd(r);
  std::vector<float> o(static_cast<std::size_t>(rd.tq * r.hq * r.dv), k_nan);
  const auto call = [&](auto policy) {
    gqa::forward<TypeParam>(policy, gqa::thd(rd.q.data(), rd.tq, r.hq, r.d), gqa::thd(rd.k.data(), rd.tk, r.hkv, r.d),
                            gqa::thd(rd.v.data(), rd.tk, r.hkv, r.dv), gqa::thd(o.data(), rd.tq, r.hq, r.dv),
                            gqa::varlen{rd.cu_q, rd.cu_k});
  };
  expect_rejected_untouched([&] { call(dense_keys_only_policy{}); }, o, "policy = dense_keys_only: its plan reads");
  expect_rejected_untouched([&] { call(dense_finish_policy{}); }, o, "policy = dense_finish: its finish step works per");
}

REGISTER_TYPED_TEST_SUITE_P(kv_cache_suite, capacity_view_and_integer_lengths, paged_prefill_and_decode,
                            paged_split_kv_decode, paged_every_variant, paged_errors, ragged_matches_reference,
                            ragged_every_variant, ragged_errors, masks_with_capacity_views, masks_on_paged_caches,
                            masks_on_ragged_batches, nonfinite_keys_behind_windows_and_pages_never_leak,
                            key_norm_variants_on_paged_caches, key_norm_variants_on_ragged_batches,
                            pgqa_on_paged_caches_and_ragged_batches,
                            policies_without_paged_or_ragged_steps_are_rejected);

}  // namespace
