// tests/suites/backward_suite.hpp: gqa::attend_backward<Isa> against the double reference gradients
// (reference::attention_backward, itself checked against finite differences in
// unit/backward_reference_test.cpp) over shapes (d 1..256, Sq and Skv 1..300), both masks, padding, rows
// and keys that nothing sees, unequal, empty and interleaved groups, d_v != d_qk, layouts and strides, and
// bitwise invariance over thread counts and executors. Tolerance: Note [backward tolerance]. Compiled once
// per ISA: every helper stays in `namespace {}`. GQA_TEST_VERBOSE=1 prints every case's errors.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gqa/attention.hpp>
#include <gqa/backward.hpp>
#include <gqa/reference/attention.hpp>

#include "support/isa_suite.hpp"
#include "support/tensor.hpp"
#include "support/tolerance.hpp"

namespace {

using gqa::index_t;
using gqa::test::layout;
using gqa::test::layout_name;
using gqa::test::tensor;

/// One backward call: shapes, options, head map and the layouts of the inputs (q, k, v, o and dout share
/// `in`'s choice per tensor) and of the gradients.
struct backward_case {
  index_t b = 1, sq = 1, skv = 1, hq = 1, hkv = 1, d = 16, dv = 16;
  bool causal = false;
  std::vector<index_t> kv_lengths;
  std::optional<float> scale;
  std::vector<index_t> kv_of_q;  // empty: head_map::uniform
  layout lq = layout::bshd, lk = layout::bshd, lv = layout::bshd, lo = layout::bshd;
  layout lgrad = layout::bshd;  // dq, dk, dv
  float lo_val = -1.0f, hi_val = 1.0f;
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
    if (!kv_of_q.empty()) {
      os << " map={";
      for (std::size_t i = 0; i < kv_of_q.size(); ++i) os << (i ? "," : "") << kv_of_q[i];
      os << "}";
    }
    os << " layouts q/k/v/o/grads=" << layout_name(lq) << "/" << layout_name(lk) << "/" << layout_name(lv) << "/"
       << layout_name(lo) << "/" << layout_name(lgrad) << " inputs in [" << lo_val << ", " << hi_val << ") seed=" << seed;
    return os.str();
  }
};

/// The case's tensors: inputs filled, the forward run on Isa (o and its LSE), gradients NaN until run.
struct backward_data {
  tensor q, k, v, o, dout, dq, dk, dv;
  gqa::head_map map;
  std::vector<float> lse;

  template <class Isa>
  static backward_data make(const backward_case& c) {
    backward_data p(c);
    gqa::attention_options opt = p.options(c);
    opt.lse = p.lse;
    gqa::attend<Isa>(p.q.cview(), p.k.cview(), p.v.cview(), p.o.view, p.map, opt);
    return p;
  }

  gqa::attention_options options(const backward_case& c) const {
    gqa::attention_options opt;
    opt.scale = c.scale;
    opt.causal = c.causal;
    opt.kv_lengths = c.kv_lengths;
    return opt;
  }

  template <class Isa>
  void run(const gqa::attention_options& opt) {
    gqa::attend_backward<Isa>(q.cview(), k.cview(), v.cview(), o.cview(), dout.cview(), lse, dq.view, dk.view, dv.view,
                              map, opt);
  }

  /// The three gradients in logical order, concatenated (for bitwise comparisons between runs).
  std::vector<float> dense_gradients() const {
    auto all = gqa::test::logical_order(dq.view);
    for (const auto* t : {&dk, &dv}) {
      const auto x = gqa::test::logical_order(t->view);
      all.insert(all.end(), x.begin(), x.end());
    }
    return all;
  }

 private:
  explicit backward_data(const backward_case& c)
      : q(c.lq, c.b, c.sq, c.hq, c.d), k(c.lk, c.b, c.skv, c.hkv, c.d), v(c.lv, c.b, c.skv, c.hkv, c.dv),
        o(c.lo, c.b, c.sq, c.hq, c.dv), dout(c.lo, c.b, c.sq, c.hq, c.dv), dq(c.lgrad, c.b, c.sq, c.hq, c.d),
        dk(c.lgrad, c.b, c.skv, c.hkv, c.d), dv(c.lgrad, c.b, c.skv, c.hkv, c.dv), map(c.map()),
        lse(static_cast<std::size_t>(c.b * c.hq * c.sq), std::numeric_limits<float>::quiet_NaN()) {
    q.fill(c.seed * 8 + 0, c.lo_val, c.hi_val);
    k.fill(c.seed * 8 + 1, c.lo_val, c.hi_val);
    v.fill(c.seed * 8 + 2, c.lo_val, c.hi_val);
    dout.fill(c.seed * 8 + 3, -1.0f, 1.0f);
  }
};

/// A view's elements in logical order, in double, with a BSHD view over them.
struct double_copy {
  std::vector<double> x;
  gqa::tensor_view<const double> view;
  explicit double_copy(const gqa::tensor_view<float>& t) {
    const auto f = gqa::test::logical_order(t);
    x.assign(f.begin(), f.end());
    view = gqa::bshd<const double>(x.data(), t.b, t.s, t.h, t.d);
  }
};

/// Per gradient: the kernel's max error, the naive fp32 one, the bound; plus counts of broken invariants.
struct gradient_check {
  const char* name;
  double err = 0.0, naive_err = 0.0, tol = 0.0;
  std::size_t non_finite = 0, not_zero = 0;

  std::size_t over = 0;  // elements over their bound
  double worst_excess = 0.0;

  /// got: the kernel's view; ref/terms/naive: logical order; must_be_zero(ib, s, h): entries that nothing
  /// reaches.
  template <class Zero>
  void compare(const gqa::tensor_view<float>& got, const std::vector<double>& ref, const std::vector<double>& terms,
               const std::vector<float>& naive, Zero must_be_zero) {
    tol = gqa::test::gradient_tolerance(naive, ref);
    std::size_t i = 0;
    for (index_t ib = 0; ib < got.b; ++ib)
      for (index_t is = 0; is < got.s; ++is)
        for (index_t ih = 0; ih < got.h; ++ih)
          for (index_t c = 0; c < got.d; ++c, ++i) {
            const float x = got(ib, is, ih, c);
            if (!std::isfinite(x)) {
              ++non_finite;
              continue;
            }
            if (must_be_zero(ib, is, ih) && !gqa::test::is_plus_zero(x)) ++not_zero;
            const double e = std::fabs(x - ref[i]);
            err = std::max(err, e);
            naive_err = std::max(naive_err, std::fabs(static_cast<double>(naive[i]) - ref[i]));
            const double excess = e - (tol + gqa::test::cancellation_floor(terms[i]));
            if (excess > 0.0) {
              ++over;
              worst_excess = std::max(worst_excess, excess);
            }
          }
  }
  void expect() const {
    EXPECT_EQ(non_finite, 0u) << name << ": non-finite gradients";
    EXPECT_EQ(not_zero, 0u) << name << ": entries nothing reaches must be exactly +0";
    EXPECT_EQ(over, 0u) << name << ": elements over Note [backward tolerance] (worst by " << worst_excess
                        << "); max |error| = " << err << ", naive fp32 " << naive_err;
  }
};

/// Runs the case's backward on Isa and checks it against the reference (Note [backward tolerance], per
/// element):
/// everything finite; exact +0 for dq of rows that see no key, and dk/dv of keys no row sees and of KV
/// heads that serve no query head; nothing written outside the gradients' views; keys past kv_lengths
/// never read (they hold NaN during the backward call). `tweak` may set threads.
template <class Isa>
void check_backward(const backward_case& c, const std::function<void(gqa::attention_options&)>& tweak = {}) {
  SCOPED_TRACE(c.describe());
  auto p = backward_data::make<Isa>(c);
  auto opt = p.options(c);
  if (tweak) tweak(opt);
  {
    // Hidden keys (past kv_lengths) hold NaN while the kernel runs: one read of them would reach a
    // gradient. Restored afterwards for the references.
    const auto k_saved = gqa::test::logical_order(p.k.view), v_saved = gqa::test::logical_order(p.v.view);
    auto poison = [&](const gqa::tensor_view<float>& t, const std::vector<float>* restore) {
      std::size_t i = 0;
      for (index_t ib = 0; ib < t.b; ++ib)
        for (index_t j = 0; j < t.s; ++j)
          for (index_t g = 0; g < t.h; ++g)
            for (index_t x = 0; x < t.d; ++x, ++i)
              if (!c.kv_lengths.empty() && j >= c.kv_lengths[static_cast<std::size_t>(ib)])
                t.row(ib, j, g)[x] = restore ? (*restore)[i] : std::numeric_limits<float>::quiet_NaN();
    };
    poison(p.k.view, nullptr);
    poison(p.v.view, nullptr);
    p.template run<Isa>(opt);
    poison(p.k.view, &k_saved);
    poison(p.v.view, &v_saved);
  }

  const double_copy qd(p.q.view), kd(p.k.view), vd(p.v.view), dod(p.dout.view);
  const auto kv_of_q = p.map.kv_of_q();
  const auto ref = gqa::reference::attention_backward(qd.view, kd.view, vd.view, dod.view, kv_of_q, c.scale_or_default(),
                                                      c.causal, c.kv_lengths);
  const auto naive = gqa::test::naive_fp32_backward(p.q.cview(), p.k.cview(), p.v.cview(), p.o.cview(), p.dout.cview(),
                                                    p.lse, kv_of_q, static_cast<float>(c.scale_or_default()), c.causal,
                                                    c.kv_lengths);
  auto len_of = [&](index_t ib) { return c.kv_lengths.empty() ? c.skv : c.kv_lengths[static_cast<std::size_t>(ib)]; };
  auto row_empty = [&](index_t ib, index_t i, index_t) {
    const index_t len = len_of(ib);
    return (c.causal ? std::clamp<index_t>(i + (len - c.sq) + 1, 0, len) : len) == 0;
  };
  // Key j of batch ib is seen by some row iff j < len (the last row sees every key below len, also causal).
  auto key_unseen = [&](index_t ib, index_t j, index_t g) { return j >= len_of(ib) || p.map.group_size(g) == 0; };
  gradient_check dq{"dq"}, dk{"dk"}, dv{"dv"};
  dq.compare(p.dq.view, ref.dq, ref.dq_terms, naive.dq, row_empty);
  dk.compare(p.dk.view, ref.dk, ref.dk_terms, naive.dk, key_unseen);
  dv.compare(p.dv.view, ref.dv, ref.dv_terms, naive.dv, key_unseen);
  dq.expect();
  dk.expect();
  dv.expect();
  EXPECT_EQ(p.dq.gaps_written() + p.dk.gaps_written() + p.dv.gaps_written(), 0u)
      << "the kernel wrote outside a gradient's view";
  if (std::getenv("GQA_TEST_VERBOSE"))
    std::printf("  dq %.3g (naive %.3g)  dk %.3g (%.3g)  dv %.3g (%.3g) | %s\n", dq.err, dq.naive_err, dk.err,
                dk.naive_err, dv.err, dv.naive_err, c.describe().c_str());
}

/// A caller parallel_for that runs the tasks in reverse order on the calling thread.
void reverse_tasks(index_t n, const std::function<void(index_t)>& task) {
  for (index_t i = n; i-- > 0;) task(i);
}

/// A caller parallel_for on three std::threads taking tasks from a shared counter, from the end.
void three_thread_tasks(index_t n, const std::function<void(index_t)>& task) {
  std::atomic<index_t> next{n};
  auto worker = [&] {
    for (index_t i = --next; i >= 0; i = --next) task(i);
  };
  std::thread t1(worker), t2(worker);
  worker();
  t1.join();
  t2.join();
}

/// The case gives bitwise the same dq, dk, dv for num_threads 1, 2, 0 and for caller loops that run the
/// tasks in reverse order and on three threads.
template <class Isa>
void check_backward_deterministic(const backward_case& c) {
  SCOPED_TRACE(c.describe());
  auto run = [&](const std::function<void(gqa::attention_options&)>& tweak) {
    auto p = backward_data::make<Isa>(c);
    auto opt = p.options(c);
    tweak(opt);
    p.template run<Isa>(opt);
    return p.dense_gradients();
  };
  const auto base = run([](gqa::attention_options& o) { o.num_threads = 1; });
  const std::pair<const char*, std::function<void(gqa::attention_options&)>> runs[] = {
      {"num_threads = 2", [](gqa::attention_options& o) { o.num_threads = 2; }},
      {"num_threads = 0", [](gqa::attention_options& o) { o.num_threads = 0; }},
      {"parallel_for in reverse order", [](gqa::attention_options& o) { o.parallel_for = reverse_tasks; }},
      {"parallel_for on three threads", [](gqa::attention_options& o) { o.parallel_for = three_thread_tasks; }},
  };
  for (const auto& [name, tweak] : runs) {
    const auto got = run(tweak);
    EXPECT_TRUE(got.size() == base.size() && std::memcmp(got.data(), base.data(), got.size() * sizeof(float)) == 0)
        << name << ": gradients differ from num_threads = 1";
  }
}

struct head_config {
  index_t hq, hkv;
};

struct layout_combo {
  layout q, k, v, o, grad;
};

}  // namespace

template <class Isa>
class backward_suite : public gqa::test::isa_test<Isa> {};
TYPED_TEST_SUITE_P(backward_suite);

// d (= d_v) × Sq × Skv, each shape with one of the head configurations (rotating), causal and not. Lengths
// straddle the KV blocks and query tiles (64/128 keys, 1 and tile-sized query blocks); causal covers
// Sq < Skv (bottom-right) and Sq > Skv (early rows see nothing).
TYPED_TEST_P(backward_suite, shapes_match_reference) {
  const index_t dims[] = {1, 17, 64, 80, 128, 256};
  const index_t lens[] = {1, 2, 63, 65, 130, 300};
  const head_config configs[] = {{1, 1}, {8, 8}, {8, 2}, {8, 1}, {12, 4}};
  std::uint64_t seed = 100;
  for (std::size_t id = 0; id < std::size(dims); ++id)
    for (std::size_t is = 0; is < std::size(lens); ++is)
      for (std::size_t ik = 0; ik < std::size(lens); ++ik) {
        // Every third shape (every eighth reduced), still hitting every d, Sq and Skv; the big ones rarely.
        const std::size_t keep = gqa::test::reduced ? 8 : 3;
        if ((id + is + 2 * ik) % keep != 0) continue;
        const bool big = lens[is] * lens[ik] * dims[id] > 130 * 300 * 80;
        if (big && (is + ik) % 3 != 0) continue;
        const head_config hc = configs[(id + 2 * is + 3 * ik) % std::size(configs)];
        for (const bool causal : {false, true}) {
          backward_case c;
          c.b = 1 + static_cast<index_t>((is + ik) % 2);
          c.sq = lens[is];
          c.skv = lens[ik];
          c.hq = hc.hq;
          c.hkv = hc.hkv;
          // The reference's cost is ~b·hq·sq·skv·(d + d_v): large cases keep one group of two heads (or
          // two of one) so that the sweep's time stays spread over its shapes.
          const index_t budget = gqa::test::reduced ? 2'000'000 : 10'000'000;
          if (c.b * c.hq * c.sq * c.skv * 2 * dims[id] > budget) {
            c.hkv = hc.hq == hc.hkv ? 2 : 1;
            c.hq = 2;
          }
          c.d = c.dv = dims[id];
          c.causal = causal;
          c.seed = seed++;
          check_backward<TypeParam>(c);
        }
      }
}

// Right padding: per-batch valid lengths including 0 (that batch element sees nothing: all its gradients
// are 0), the full length and lengths ending inside a block; with and without causal.
TYPED_TEST_P(backward_suite, padded_kv_lengths) {
  struct shape {
    index_t sq, skv, hq, hkv, d;
    std::vector<index_t> lengths;
  };
  std::vector<shape> shapes = {
      {1, 200, 8, 2, 64, {200, 0, 37, 129}},
      {3, 130, 8, 1, 17, {0, 130, 1, 65}},
      {65, 200, 8, 2, 80, {199, 64, 0, 127}},
      {150, 65, 12, 4, 32, {65, 3, 0, 64}},
  };
  if (gqa::test::reduced) shapes.resize(2);
  std::uint64_t seed = 300;
  for (const auto& s : shapes)
    for (const bool causal : {false, true}) {
      backward_case c;
      c.b = static_cast<index_t>(s.lengths.size());
      c.sq = s.sq;
      c.skv = s.skv;
      c.hq = s.hq;
      c.hkv = s.hkv;
      c.d = c.dv = s.d;
      c.kv_lengths = s.lengths;
      c.causal = causal;
      c.seed = seed++;
      check_backward<TypeParam>(c);
    }
}

// Rows that see no key (Sq > Skv causal, kv_length 0) have LSE −inf: they contribute nothing and get dq
// exactly +0, never NaN; a scale of 0 makes every visible score 0 (a plain average), also finite.
TYPED_TEST_P(backward_suite, fully_masked_rows_have_zero_gradients) {
  backward_case c;
  c.b = 2;
  c.sq = 70;
  c.skv = 5;
  c.hq = 4;
  c.hkv = 2;
  c.d = c.dv = 24;
  c.causal = true;
  c.kv_lengths = {5, 0};
  check_backward<TypeParam>(c);  // exact zeros are part of check_backward
  c.scale = 0.0f;
  c.kv_lengths = {3, 0};
  check_backward<TypeParam>(c);
}

// d_v != d_qk on both sides of the vector width, and the absorbed-MLA shape (one KV head, 576/512).
TYPED_TEST_P(backward_suite, unequal_head_dims) {
  struct dims {
    index_t d, dv;
  };
  std::uint64_t seed = 520;
  for (const dims dd : {dims{64, 17}, dims{17, 80}, dims{128, 64}, dims{3, 129}})
    for (const index_t sq : {index_t{1}, index_t{70}}) {
      backward_case c;
      c.sq = sq;
      c.skv = 130;
      c.hq = 8;
      c.hkv = 2;
      c.d = dd.d;
      c.dv = dd.dv;
      c.causal = sq > 1;
      c.seed = seed++;
      check_backward<TypeParam>(c);
    }
  backward_case mla;
  mla.hq = gqa::test::reduced ? 4 : 8;
  mla.hkv = 1;
  mla.d = 576;
  mla.dv = 512;
  mla.scale = 1.0f / std::sqrt(192.0f);
  mla.sq = 9;
  mla.skv = gqa::test::reduced ? 40 : 97;
  mla.causal = true;
  mla.seed = 540;
  check_backward<TypeParam>(mla);
}

// Unequal and empty groups (a KV head that serves none gets dk = dv = 0) and interleaved maps: a KV head's
// dk/dv is the sum over every query head mapped to it.
TYPED_TEST_P(backward_suite, unequal_empty_and_noncontiguous_groups) {
  std::vector<std::pair<std::vector<int>, std::vector<index_t>>> maps;  // (allocation, or explicit map)
  maps.push_back({{0, 3, 5, 0}, {}});
  maps.push_back({{1, 0, 7}, {}});
  maps.push_back({{2, 2, 0, 4, 1, 0}, {}});
  maps.push_back({{}, {2, 0, 1, 0, 2, 2, 1, 0}});
  maps.push_back({{}, {3, 3, 0, 3, 0, 3, 3, 3, 0}});
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
    for (const index_t sq : {index_t{1}, index_t{67}}) {
      for (const bool causal : {false, true}) {
        backward_case c;
        c.b = 2;
        c.sq = sq;
        c.skv = gqa::test::reduced ? 90 : 150;
        c.hq = static_cast<index_t>(kv_of_q.size());
        c.hkv = hkv;
        c.kv_of_q = kv_of_q;
        c.d = c.dv = 40;
        c.causal = causal;
        c.kv_lengths = {c.skv, 77};
        c.seed = seed++;
        check_backward<TypeParam>(c);
      }
    }
  }
}

// BSHD, BHSD and padded-stride views (NaN in every gap) for inputs and gradients, mixed.
TYPED_TEST_P(backward_suite, layouts_and_strides) {
  const layout_combo combos[] = {
      {layout::bhsd, layout::bhsd, layout::bhsd, layout::bhsd, layout::bhsd},
      {layout::padded, layout::padded, layout::padded, layout::padded, layout::padded},
      {layout::bhsd, layout::padded, layout::bshd, layout::padded, layout::bhsd},
      {layout::padded, layout::bhsd, layout::padded, layout::bhsd, layout::padded},
  };
  std::uint64_t seed = 700;
  for (const layout_combo& cb : combos)
    for (const index_t sq : {index_t{1}, index_t{66}}) {
      backward_case c;
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
      c.lgrad = cb.grad;
      c.seed = seed++;
      check_backward<TypeParam>(c);
    }
}

// Bitwise identical gradients for any thread count and executor: few tasks (one KV head, where the work
// is split over query ranges), many tasks, causal and padded.
TYPED_TEST_P(backward_suite, deterministic_across_threads) {
  backward_case c;
  c.sq = gqa::test::reduced ? 60 : 300;
  c.skv = gqa::test::reduced ? 90 : 300;
  c.hq = 8;
  c.hkv = 1;
  c.d = c.dv = 64;
  c.causal = true;
  c.seed = 900;
  check_backward<TypeParam>(c);
  check_backward_deterministic<TypeParam>(c);
  c.b = 2;
  c.hkv = 4;
  c.causal = false;
  c.kv_lengths = {c.skv - 7, c.skv / 2};
  c.seed = 901;
  check_backward_deterministic<TypeParam>(c);
}

// Larger scores (scale 10, inputs in ±3: |s| up to ~900): P is peaked, dP − D cancels; still finite and as
// accurate as the naive fp32 backward.
TYPED_TEST_P(backward_suite, large_magnitude_scores) {
  std::uint64_t seed = 1000;
  for (const index_t sq : {index_t{1}, index_t{40}}) {
    backward_case c;
    c.sq = sq;
    c.skv = 200;
    c.hq = 8;
    c.hkv = 2;
    c.d = c.dv = 32;
    c.scale = 10.0f;
    c.lo_val = -3.0f;
    c.hi_val = 3.0f;
    c.causal = sq > 1;
    c.seed = seed++;
    check_backward<TypeParam>(c);
  }
}

REGISTER_TYPED_TEST_SUITE_P(backward_suite, shapes_match_reference, padded_kv_lengths,
                            fully_masked_rows_have_zero_gradients, unequal_head_dims,
                            unequal_empty_and_noncontiguous_groups, layouts_and_strides, deterministic_across_threads,
                            large_magnitude_scores);
