// tests/suites/kv_cache_suite.hpp: KV caches that are not one dense tensor per call: a cache allocated for a
// capacity and filled to per-sequence lengths (bshd with capacity, kv_lengths of any integer type), and
// a paged cache (gqa/paged.hpp), and a ragged batch (gqa/varlen.hpp: per sequence, gathered), against the naive double reference (Note [attention tolerance]) on the
// same keys gathered to a dense view, and bitwise against the dense call on that view (the paged core is
// the dense core reading rows through the table: same blocks, same sums, Note [key runs]). Unwritten
// slots, unused pages and unused table entries hold NaN or -1: a row that read one would show it.
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
#include <gqa/paged.hpp>
#include <gqa/reference/attention.hpp>
#include <gqa/varlen.hpp>
#include <gqa/variants.hpp>

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

/// The dense cache of a case paged: pages of `page` slots in a shuffled pool with spare pages; every slot
/// no sequence fills, and every spare page, holds NaN; table entries past a sequence's pages are -1.
struct paged_cache {
  std::vector<float> k, v;
  std::vector<std::int32_t> table;
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
    table.assign(static_cast<std::size_t>(c.b * max_pages), -1);
    std::size_t next = 0;
    for (index_t ib = 0; ib < c.b; ++ib) {
      const index_t len = c.lengths[static_cast<std::size_t>(ib)];
      for (index_t i = 0; i < (len + page - 1) / page; ++i) table[static_cast<std::size_t>(ib * max_pages + i)] = ids[next++];
      for (index_t j = 0; j < len; ++j) {
        const index_t p = table[static_cast<std::size_t>(ib * max_pages + j / page)], slot = j % page;
        std::copy_n(in.k.begin() + ((ib * c.cap + j) * c.hkv) * c.d, c.hkv * c.d, k.begin() + ((p * page + slot) * c.hkv) * c.d);
        std::copy_n(in.v.begin() + ((ib * c.cap + j) * c.hkv) * c.dv, c.hkv * c.dv,
                    v.begin() + ((p * page + slot) * c.hkv) * c.dv);
      }
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

/// The paged call of case c on pages of `page` slots, against the reference and bitwise against the dense
/// call on the same keys (whose view's s is the longest length, as the paged call's key range).
template <class Isa>
void check_paged(const cache_case& c, index_t page) {
  SCOPED_TRACE("page " + std::to_string(page));
  const cache_data in(c);
  const paged_cache pc(c, in, page, c.seed * 31 + static_cast<std::uint64_t>(page));
  output paged(c), dense(c);
  gqa::attention_options opt;
  opt.causal = c.causal;
  opt.lse = paged.lse;
  gqa::attend<Isa>(in.qv(c), pc.view(c), paged.view(c), c.map(), opt);
  expect_matches_reference(c, in, paged);
  opt.lse = dense.lse;
  opt.kv_lengths = c.lengths;
  gqa::attend<Isa>(in.qv(c), in.kv(c), in.vv(c), dense.view(c), c.map(), opt);
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
// dense cache; KDGQA and DGQA, whose plans read the keys, are rejected with a message naming them.
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
    if constexpr (gqa::policy_plans_from_keys<P>) {
      try {
        call_paged();
        ADD_FAILURE() << "a policy whose plan reads the keys ran on a paged cache";
      } catch (const gqa::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find(std::string(P::name)), std::string::npos) << e.what();
      }
    } else {
      call_paged();
      gqa::attention_options dopt = opt;
      dopt.kv_lengths = c.lengths;
      gqa::with_policy<P>(m, h, [&](P& p) { gqa::forward<TypeParam>(p, in.qv(c), in.kv(c), in.vv(c), dense.view(c), dopt); });
      EXPECT_TRUE(same_bits(paged.o, dense.o)) << "paged output differs from the dense call";
    }
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
    try {
      gqa::attend<TypeParam>(in.qv(c), kv, out.view(c), c.map(), opt);
      ADD_FAILURE() << "accepted; wanted: " << want;
    } catch (const gqa::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
    EXPECT_TRUE(std::all_of(out.o.begin(), out.o.end(), [](float x) { return std::isnan(x); })) << "o written";
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
  std::uint64_t seed = 1;
  std::string describe() const {
    std::ostringstream os;
    os << "hq=" << hq << " hkv=" << hkv << " d=" << d << " dv=" << dv << (causal ? " causal" : "") << " (nq,nk)=";
    for (std::size_t i = 0; i < nq.size(); ++i) os << " (" << nq[i] << "," << nk[i] << ")";
    return os.str();
  }
  std::vector<index_t> offsets(const std::vector<index_t>& n) const {
    std::vector<index_t> cu(n.size() + 1, 0);
    for (std::size_t i = 0; i < n.size(); ++i) cu[i + 1] = cu[i] + n[i];
    return cu;
  }
};

/// A ragged call against the reference run on each sequence alone (its rows as a b = 1 batch): Note
/// [attention tolerance] over the whole batch; rows of sequences without keys +0 with LSE −inf; LSE
/// [hq][total_q].
template <class Isa>
void check_ragged(const ragged_case& c, const gqa::head_map& map) {
  SCOPED_TRACE(c.describe());
  const auto cu_q = c.offsets(c.nq), cu_k = c.offsets(c.nk);
  const index_t tq = cu_q.back(), tk = cu_k.back();
  const auto qd = gqa::test::random_floats(static_cast<std::size_t>(std::max<index_t>(tq, 1) * c.hq * c.d), c.seed);
  const auto kd = gqa::test::random_floats(static_cast<std::size_t>(std::max<index_t>(tk, 1) * c.hkv * c.d), c.seed + 1);
  const auto vd = gqa::test::random_floats(static_cast<std::size_t>(std::max<index_t>(tk, 1) * c.hkv * c.dv), c.seed + 2);
  std::vector<float> o(static_cast<std::size_t>(tq * c.hq * c.dv), k_nan), lse(static_cast<std::size_t>(c.hq * tq), k_nan);
  gqa::attention_options opt;
  opt.causal = c.causal;
  opt.lse = lse;
  const std::vector<std::int32_t> cu_q32(cu_q.begin(), cu_q.end());  // int32 offsets, as PyTorch keeps them
  gqa::attend<Isa>(gqa::thd(qd.data(), tq, c.hq, c.d), gqa::thd(kd.data(), tk, c.hkv, c.d), gqa::thd(vd.data(), tk, c.hkv, c.dv),
                   gqa::thd(o.data(), tq, c.hq, c.dv), map, gqa::varlen{cu_q32, cu_k}, opt);
  const double scale = 1.0 / std::sqrt(static_cast<double>(static_cast<float>(c.d)));
  double err = 0.0, naive_err = 0.0, lerr = 0.0, naive_lerr = 0.0, lmax = 1.0;
  std::size_t bad = 0;
  for (std::size_t i = 0; i < c.nq.size(); ++i) {
    if (c.nq[i] == 0) continue;
    const auto q = gqa::bshd(qd.data() + cu_q[i] * c.hq * c.d, 1, c.nq[i], c.hq, c.d);
    const auto k = gqa::bshd(kd.data() + cu_k[i] * c.hkv * c.d, 1, c.nk[i], c.hkv, c.d);
    const auto v = gqa::bshd(vd.data() + cu_k[i] * c.hkv * c.dv, 1, c.nk[i], c.hkv, c.dv);
    const auto ref = gqa::reference::attention(q, k, v, map.kv_of_q(), scale, c.causal);
    const auto naive = gqa::test::naive_fp32(q, k, v, map.kv_of_q(), static_cast<float>(scale), c.causal);
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
// sequence alone (a b = 1 dense call), or is rejected with a message naming it (KDGQA, DGQA: plan from key
// norms; PGQA: a finish step per (sample, head)).
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
    const auto call = [&] {
      gqa::with_policy<P>(m, h, [&](P& p) {
        gqa::forward<TypeParam>(p, gqa::thd(qd.data(), tq, h.hq, d), gqa::thd(kd.data(), tk, h.kv_in, d),
                                gqa::thd(vd.data(), tk, h.kv_in, d), gqa::thd(o.data(), tq, h.hq, d),
                                gqa::varlen{cu_q, cu_k}, opt);
      });
    };
    if constexpr (gqa::policy_plans_from_keys<P> || gqa::policy_with_finish<P> || gqa::policy_with_finish_executor<P>) {
      try {
        call();
        ADD_FAILURE() << "ran on a ragged batch";
      } catch (const gqa::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find(std::string(P::name)), std::string::npos) << e.what();
      }
    } else {
      call();
      for (std::size_t i = 0; i < nq.size(); ++i) {
        if (nq[i] == 0) continue;
        std::vector<float> one(static_cast<std::size_t>(nq[i] * h.hq * d), k_nan);
        gqa::with_policy<P>(m, h, [&](P& p) {
          gqa::forward<TypeParam>(p, gqa::bshd(qd.data() + cu_q[i] * h.hq * d, 1, nq[i], h.hq, d),
                                  gqa::bshd(kd.data() + cu_k[i] * h.kv_in * d, 1, nk[i], h.kv_in, d),
                                  gqa::bshd(vd.data() + cu_k[i] * h.kv_in * d, 1, nk[i], h.kv_in, d),
                                  gqa::bshd(one.data(), 1, nq[i], h.hq, d), opt);
        });
        double err = 0.0;
        for (std::size_t x = 0; x < one.size(); ++x)
          err = std::max(err, static_cast<double>(std::fabs(one[x] - o[static_cast<std::size_t>(cu_q[i] * h.hq * d) + x])));
        EXPECT_LE(err, 1e-5) << "sequence " << i;  // the same math, possibly another block split
      }
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
    try {
      gqa::attend<TypeParam>(gqa::thd(qd.data(), tq, hq, d), gqa::thd(kd.data(), tk, hkv, d), gqa::thd(kd.data(), tk, hkv, d),
                             gqa::thd(o.data(), tq, hq, d), map, gqa::varlen{cu_q, cu_k}, opt);
      ADD_FAILURE() << "accepted; wanted: " << want;
    } catch (const gqa::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
    EXPECT_TRUE(std::all_of(o.begin(), o.end(), [](float x) { return std::isnan(x); })) << "o written";
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

REGISTER_TYPED_TEST_SUITE_P(kv_cache_suite, capacity_view_and_integer_lengths, paged_prefill_and_decode,
                            paged_split_kv_decode, paged_every_variant, paged_errors, ragged_matches_reference,
                            ragged_every_variant, ragged_errors);

}  // namespace
