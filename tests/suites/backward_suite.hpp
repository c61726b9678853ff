// tests/suites/backward_suite.hpp: gqa::attend_backward<Isa> against the double reference gradients
// (reference::attention_backward, itself checked against finite differences in
// unit/backward_reference_test.cpp) over shapes (d 1..256, Sq and Skv 1..300), both masks, padding, rows
// and keys that nothing sees, unequal, empty and interleaved groups, d_v != d_qk, layouts and strides, the
// sliding window, softcap, ALiBi and sinks (with the sinks' gradient) alone and together, non-finite
// values behind the masks, and bitwise invariance over thread counts and executors. Tolerance: Note
// [backward tolerance]. Compiled once per ISA: every helper stays in `namespace {}`. GQA_TEST_VERBOSE=1
// prints every case's errors.
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
#include <tuple>
#include <vector>

#include <gqa/attention.hpp>
#include <gqa/backward.hpp>
#include <gqa/numeric.hpp>
#include <gqa/random.hpp>
#include <gqa/reference/attention.hpp>
#include <gqa/varlen.hpp>

#include "support/data.hpp"
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
  // Score modifiers (attention_options' fields of the same names); sinks and ALiBi slopes are drawn per
  // head when set, and with sinks the case also checks options.dsinks.
  index_t window_left = -1, window_right = -1;
  float softcap = 0.0f;
  bool sinks = false, alibi = false;

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
    if (window_left >= 0 || window_right >= 0) os << " window=(" << window_left << "," << window_right << ")";
    if (softcap > 0.0f) os << " softcap=" << softcap;
    if (sinks) os << " sinks";
    if (alibi) os << " alibi";
    return os.str();
  }
  bool any_modifier() const { return window_left >= 0 || window_right >= 0 || softcap > 0.0f || sinks || alibi; }
};

/// A case of b batch elements, sq queries, skv keys, hq/hkv heads (uniform map), d = d_v, and a seed.
backward_case shaped_case(index_t b, index_t sq, index_t skv, index_t hq, index_t hkv, index_t d, std::uint64_t seed) {
  backward_case c;
  c.b = b;
  c.sq = sq;
  c.skv = skv;
  c.hq = hq;
  c.hkv = hkv;
  c.d = c.dv = d;
  c.seed = seed;
  return c;
}

/// Per-head sinks in [-1, 2) and ALiBi slopes 2^(-8(h+1)/hq) (the ALiBi paper's), for a case that sets them.
std::vector<float> case_sinks(const backward_case& c) {
  if (!c.sinks) return {};
  std::vector<float> x(static_cast<std::size_t>(c.hq));
  for (std::size_t h = 0; h < x.size(); ++h) x[h] = -1.0f + 3.0f * gqa::random::to_unit_float(gqa::random::hash(c.seed, {h, 1}));
  return x;
}
std::vector<float> case_slopes(const backward_case& c) {
  if (!c.alibi) return {};
  std::vector<float> x(static_cast<std::size_t>(c.hq));
  for (std::size_t h = 0; h < x.size(); ++h)
    x[h] = std::exp2(-8.0f * static_cast<float>(h + 1) / static_cast<float>(c.hq));
  return x;
}

/// The case's tensors: inputs filled, the forward run on Isa (o and its LSE), gradients NaN until run.
struct backward_data {
  tensor q, k, v, o, dout, dq, dk, dv;
  gqa::head_map map;
  std::vector<float> lse;
  std::vector<float> sinks, slopes, dsinks;  // dsinks: NaN until run (when the case has sinks)

  /// The case's data and its forward on Isa, after `before` (if any) changed the inputs.
  template <class Isa>
  static backward_data make(const backward_case& c, const std::function<void(backward_data&)>& before = {}) {
    backward_data p(c);
    if (before) before(p);
    gqa::attention_options opt = p.options(c);
    opt.lse = p.lse;
    gqa::attend<Isa>(p.q.cview(), p.k.cview(), p.v.cview(), p.o.view, p.map, opt);
    return p;
  }

  /// The forward's options (the backward's, but dsinks).
  gqa::attention_options options(const backward_case& c) const {
    gqa::attention_options opt;
    opt.scale = c.scale;
    opt.causal = c.causal;
    opt.kv_lengths = c.kv_lengths;
    opt.window_left = c.window_left;
    opt.window_right = c.window_right;
    opt.softcap = c.softcap;
    opt.sinks = sinks;
    opt.alibi_slopes = slopes;
    return opt;
  }

  /// The case's modifiers for the references.
  gqa::reference::modifiers mods(const backward_case& c) const {
    return {c.window_left, c.window_right, static_cast<double>(c.softcap), sinks, slopes};
  }

  /// The backward on Isa; with sinks, options.dsinks is this case's dsinks unless the caller set it.
  template <class Isa>
  void run(gqa::attention_options opt) {
    if (!sinks.empty() && opt.dsinks.empty()) opt.dsinks = dsinks;
    gqa::attend_backward<Isa>(q.cview(), k.cview(), v.cview(), o.cview(), dout.cview(), lse, dq.view, dk.view, dv.view,
                              map, opt);
  }

  /// The three gradients in logical order and dsinks, concatenated (for bitwise comparisons between runs).
  std::vector<float> dense_gradients() const {
    auto all = gqa::test::logical_order(dq.view);
    for (const auto* t : {&dk, &dv}) {
      const auto x = gqa::test::logical_order(t->view);
      all.insert(all.end(), x.begin(), x.end());
    }
    all.insert(all.end(), dsinks.begin(), dsinks.end());
    return all;
  }

 private:
  explicit backward_data(const backward_case& c)
      : q(c.lq, c.b, c.sq, c.hq, c.d), k(c.lk, c.b, c.skv, c.hkv, c.d), v(c.lv, c.b, c.skv, c.hkv, c.dv),
        o(c.lo, c.b, c.sq, c.hq, c.dv), dout(c.lo, c.b, c.sq, c.hq, c.dv), dq(c.lgrad, c.b, c.sq, c.hq, c.d),
        dk(c.lgrad, c.b, c.skv, c.hkv, c.d), dv(c.lgrad, c.b, c.skv, c.hkv, c.dv), map(c.map()),
        lse(static_cast<std::size_t>(c.b * c.hq * c.sq), std::numeric_limits<float>::quiet_NaN()),
        sinks(case_sinks(c)), slopes(case_slopes(c)), dsinks(sinks.size(), std::numeric_limits<float>::quiet_NaN()) {
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
  /// reaches; naive16: the naive backward with the bf16 roundings, for a call with the bf16 products (Note
  /// [bf16 backward tolerance]).
  template <class Zero>
  void compare(const gqa::tensor_view<float>& got, const std::vector<double>& ref, const std::vector<double>& terms,
               const std::vector<float>& naive, Zero must_be_zero, const std::vector<float>* naive16 = nullptr) {
    tol = naive16 ? gqa::test::gradient_tolerance(naive, *naive16, ref) : gqa::test::gradient_tolerance(naive, ref);
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

/// What the case's masks let through, from the reference's visible_keys: whether query position i of batch
/// ib sees no key, and whether key j of batch ib is seen by no position.
struct visibility {
  std::vector<char> row_empty, key_unseen;  // [b][sq], [b][skv]
  index_t sq, skv;
  visibility(const backward_case& c, const gqa::reference::modifiers& mods)
      : row_empty(static_cast<std::size_t>(c.b * c.sq), 1), key_unseen(static_cast<std::size_t>(c.b * c.skv), 1), sq(c.sq),
        skv(c.skv) {
    for (index_t ib = 0; ib < c.b; ++ib) {
      const index_t len = c.kv_lengths.empty() ? c.skv : c.kv_lengths[static_cast<std::size_t>(ib)];
      for (index_t i = 0; i < c.sq; ++i) {
        const auto [lo, hi] = gqa::reference::visible_keys(i, c.sq, len, c.causal, mods);
        row_empty[static_cast<std::size_t>(ib * c.sq + i)] = hi <= lo;
        for (index_t j = lo; j < hi; ++j) key_unseen[static_cast<std::size_t>(ib * c.skv + j)] = 0;
      }
    }
  }
  bool row(index_t ib, index_t i) const { return row_empty[static_cast<std::size_t>(ib * sq + i)] != 0; }
  bool key(index_t ib, index_t j) const { return key_unseen[static_cast<std::size_t>(ib * skv + j)] != 0; }
};

/// Sets every element of t at a key (position of a K/V view) that `hide(ib, j)` selects to NaN, or, with
/// `restore`, back to its value there (logical order).
template <class Hide>
void poison_keys(const gqa::tensor_view<float>& t, Hide&& hide, const std::vector<float>* restore) {
  std::size_t i = 0;
  for (index_t ib = 0; ib < t.b; ++ib)
    for (index_t j = 0; j < t.s; ++j)
      for (index_t g = 0; g < t.h; ++g)
        for (index_t x = 0; x < t.d; ++x, ++i)
          if (hide(ib, j)) t.row(ib, j, g)[x] = restore ? (*restore)[i] : std::numeric_limits<float>::quiet_NaN();
}

/// dsinks against the reference: finite, within Note [backward tolerance] (per head, with its terms).
void expect_dsinks(const std::vector<float>& got, const gqa::reference::attention_grads& ref, const std::vector<float>& naive,
                   const std::vector<float>* naive16 = nullptr) {
  ASSERT_EQ(got.size(), ref.dsinks.size());
  const double tol = naive16 ? gqa::test::gradient_tolerance(naive, *naive16, ref.dsinks)
                             : gqa::test::gradient_tolerance(naive, ref.dsinks);
  for (std::size_t h = 0; h < got.size(); ++h) {
    EXPECT_TRUE(std::isfinite(got[h])) << "dsinks[" << h << "] = " << got[h];
    EXPECT_LE(std::fabs(got[h] - ref.dsinks[h]), tol + gqa::test::cancellation_floor(ref.dsinks_terms[h]))
        << "dsinks[" << h << "] = " << got[h] << ", reference " << ref.dsinks[h] << ", naive fp32 " << naive[h];
  }
}

/// Runs the case's backward on Isa and checks it against the reference (Note [backward tolerance], per
/// element):
/// everything finite; exact +0 for dq of rows that see no key, and dk/dv of keys no row sees and of KV
/// heads that serve no query head; nothing written outside the gradients' views; keys that no row sees
/// (past kv_lengths, outside every window, after every causal row) never reach a gradient (they hold NaN
/// during the backward call); dsinks (with sinks). `tweak` may set threads.
template <class Isa>
void check_backward(const backward_case& c, const std::function<void(gqa::attention_options&)>& tweak = {}) {
  SCOPED_TRACE(c.describe());
  auto p = backward_data::make<Isa>(c);
  auto opt = p.options(c);
  if (tweak) tweak(opt);
  const auto mods = p.mods(c);
  const visibility vis(c, mods);
  {
    // Hidden keys hold NaN while the kernel runs: a read that reached a gradient would show. Restored
    // afterwards for the references.
    const auto k_saved = gqa::test::logical_order(p.k.view), v_saved = gqa::test::logical_order(p.v.view);
    const auto hidden = [&](index_t ib, index_t j) { return vis.key(ib, j); };
    poison_keys(p.k.view, hidden, nullptr);
    poison_keys(p.v.view, hidden, nullptr);
    p.template run<Isa>(opt);
    poison_keys(p.k.view, hidden, &k_saved);
    poison_keys(p.v.view, hidden, &v_saved);
  }

  const double_copy qd(p.q.view), kd(p.k.view), vd(p.v.view), dod(p.dout.view);
  const auto kv_of_q = p.map.kv_of_q();
  const auto ref = gqa::reference::attention_backward(qd.view, kd.view, vd.view, dod.view, kv_of_q, c.scale_or_default(),
                                                      c.causal, c.kv_lengths, mods);
  const auto naive = gqa::test::naive_fp32_backward(p.q.cview(), p.k.cview(), p.v.cview(), p.o.cview(), p.dout.cview(),
                                                    p.lse, kv_of_q, static_cast<float>(c.scale_or_default()), c.causal,
                                                    c.kv_lengths, mods);
  auto row_empty = [&](index_t ib, index_t i, index_t) { return vis.row(ib, i); };
  auto key_unseen = [&](index_t ib, index_t j, index_t g) { return vis.key(ib, j) || p.map.group_size(g) == 0; };
  gradient_check dq{"dq"}, dk{"dk"}, dv{"dv"};
  dq.compare(p.dq.view, ref.dq, ref.dq_terms, naive.dq, row_empty);
  dk.compare(p.dk.view, ref.dk, ref.dk_terms, naive.dk, key_unseen);
  dv.compare(p.dv.view, ref.dv, ref.dv_terms, naive.dv, key_unseen);
  dq.expect();
  dk.expect();
  dv.expect();
  if (c.sinks) expect_dsinks(p.dsinks, ref, naive.dsinks);
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
      {"num_threads = 3", [](gqa::attention_options& o) { o.num_threads = 3; }},
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
  // Three sequences: with two threads the tasks are dealt in sets of two sequences and a last set of one
  // (Note [backward task order]); with three, one set of three. Padded rows (d 17) take the accumulators.
  c.b = 3;
  c.kv_lengths = {c.skv, c.skv - 7, c.skv / 2};
  c.seed = 902;
  check_backward<TypeParam>(c);
  check_backward_deterministic<TypeParam>(c);
  c.d = c.dv = 17;
  c.seed = 903;
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

// --- The score modifiers (Note [backward masks], [softcap gradient], [sink gradient]). ---

namespace {

struct window_config {
  index_t left, right;
};

/// A case of modifiers_combined.
struct modifier_combo {
  index_t b, sq, skv, d, dv;
  std::vector<index_t> kv_of_q;  // empty: uniform 8/2
  std::vector<index_t> lengths;
  window_config w;
  bool causal;
  layout lay;
};

/// A case of nonfinite_values_follow_the_masks.
struct nonfinite_case {
  index_t sq, skv;
  std::vector<index_t> lengths;
  window_config w;
  bool causal, sinks;
};

/// nonfinite_values_follow_the_masks' injection, before the forward: dO, one row of each batch element
/// and one element of another (rows that see keys); V, one element of two keys (O gets NaN in that column where the key is
/// seen, the LSE stays finite); K, every key no row sees; Q, every row that sees nothing.
std::function<void(backward_data&)> inject_nonfinite(const backward_case& c, const visibility& vis) {
  return [&c, &vis](backward_data& x) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (index_t ib = 0; ib < c.b; ++ib) {
      const index_t i = c.sq - 1 - ib * (c.sq / 4);  // rows that see keys (the last ones do)
      for (index_t e = 0; e < c.dv; ++e) x.dout.view(ib, i, 1, e) = nan;
      x.dout.view(ib, std::max<index_t>(0, c.sq - 2), 5, 3) = nan;
      x.v.view(ib, c.skv / 4, 1, 7) = nan;
      x.v.view(ib, c.skv - 2, 0, 0) = nan;
      for (index_t j = 0; j < c.skv; ++j)
        if (vis.key(ib, j))
          for (index_t g = 0; g < c.hkv; ++g)
            for (index_t e = 0; e < c.d; ++e) x.k.view(ib, j, g, e) = nan;
      for (index_t i2 = 0; i2 < c.sq; ++i2)
        if (vis.row(ib, i2))
          for (index_t h = 0; h < c.hq; ++h)
            for (index_t e = 0; e < c.d; ++e) x.q.view(ib, i2, h, e) = nan;
    }
  };
}

/// Elements of a gradient: non-finite exactly where the reference is, the others within Note [backward
/// tolerance]; and the case must make some, not all, non-finite.
void expect_nonfinite_pattern(const char* name, const std::vector<float>& got, const std::vector<double>& want,
                              const std::vector<double>& terms, const std::vector<float>& naive) {
  const double tol = gqa::test::gradient_tolerance(naive, want);
  std::size_t pattern = 0, over = 0, non_finite = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const bool want_finite = std::isfinite(want[i]);
    non_finite += !want_finite;
    if (want_finite != std::isfinite(got[i])) {
      ++pattern;
    } else if (want_finite && std::fabs(got[i] - want[i]) > tol + gqa::test::cancellation_floor(terms[i])) {
      ++over;
    }
  }
  EXPECT_EQ(pattern, 0u) << name << ": elements finite in one and not the other (the reference has " << non_finite
                         << " non-finite of " << got.size() << ")";
  EXPECT_EQ(over, 0u) << name << ": finite elements over Note [backward tolerance]";
  EXPECT_GT(non_finite, 0u) << name << ": the case injects no NaN that reaches it";
  EXPECT_LT(non_finite, got.size()) << name << ": the case makes everything NaN";
}

}  // namespace

// The sliding window, bottom-right like causal: one side, both sides, a window of one key (0, 0), windows
// wider than the sequence, with and without causal, Sq <, = and > Skv, padding; keys outside every row's
// window hold NaN during the call (check_backward), so a read that reached a gradient would show.
TYPED_TEST_P(backward_suite, sliding_window_matches_reference) {
  struct shape {
    index_t b, sq, skv, hq, hkv, d;
    std::vector<index_t> lengths;
  };
  std::vector<shape> shapes = {
      {1, 130, 130, 8, 2, 17, {}},        // Sq = Skv over two KV blocks and two query blocks (G = 4)
      {2, 1, 300, 8, 1, 64, {300, 170}},  // decode rows (G = 8 query heads of one position)
      {1, 70, 200, 4, 4, 33, {}},         // Sq < Skv: MHA rows one per position
      {2, 200, 65, 12, 4, 40, {65, 20}},  // Sq > Skv: early rows see nothing under causal
  };
  std::vector<window_config> windows = {{16, -1}, {-1, 5}, {0, 0}, {40, 7}, {3, 100}, {1000, 1000}};
  if (gqa::test::reduced) {
    shapes.resize(3);
    windows = {{16, -1}, {0, 0}, {40, 7}};
  }
  std::uint64_t seed = 1100;
  for (const auto& sh : shapes)
    for (const window_config w : windows)
      for (const bool causal : {false, true}) {
        backward_case c = shaped_case(sh.b, sh.sq, sh.skv, sh.hq, sh.hkv, sh.d, seed++);
        c.kv_lengths = sh.lengths;
        c.causal = causal;
        c.window_left = w.left;
        c.window_right = w.right;
        check_backward<TypeParam>(c);
      }
}

// The logit softcap: mild (cap 30), strong (cap 1) and saturating (cap 0.5 on scores up to ~20: tanh'
// near 0 for most keys), causal and not, on the tiled and the decode shapes.
TYPED_TEST_P(backward_suite, softcap_matches_reference) {
  struct cap_case {
    float cap, scale, lo, hi;
  };
  const cap_case caps[] = {{30.0f, 0.0f, -1.0f, 1.0f}, {1.0f, 0.0f, -1.0f, 1.0f}, {0.5f, 2.0f, -2.0f, 2.0f}};
  std::uint64_t seed = 1200;
  for (const cap_case& cc : caps)
    for (const index_t sq : {index_t{1}, index_t{70}}) {
      backward_case c = shaped_case(1, sq, gqa::test::reduced ? 90 : 150, 8, 2, 24, seed++);
      c.causal = sq > 1;
      c.softcap = cc.cap;
      if (cc.scale > 0.0f) c.scale = cc.scale;
      c.lo_val = cc.lo;
      c.hi_val = cc.hi;
      check_backward<TypeParam>(c);
    }
}

// ALiBi (per-head slopes from 1/2 to 1/256, bottom-right distances), alone and with causal, padding and
// Sq > Skv; its bias is a constant of the scores.
TYPED_TEST_P(backward_suite, alibi_matches_reference) {
  std::uint64_t seed = 1300;
  for (const bool causal : {false, true})
    for (const index_t sq : {index_t{1}, index_t{90}, index_t{170}}) {
      backward_case c = shaped_case(2, sq, 130, 8, 2, 32, seed++);
      c.causal = causal;
      c.kv_lengths = {130, 71};
      c.alibi = true;
      check_backward<TypeParam>(c);
    }
}

// Sinks: the LSE includes them, rows that see no key (Sq > Skv causal, a kv_length of 0) have LSE = the
// sink and contribute nothing (dq = +0); options.dsinks is the sinks' gradient summed over batch and
// positions.
TYPED_TEST_P(backward_suite, sinks_match_reference) {
  std::uint64_t seed = 1400;
  for (const bool causal : {false, true})
    for (const index_t sq : {index_t{1}, index_t{67}, index_t{150}}) {
      backward_case c = shaped_case(2, sq, 100, 6, 3, 20, seed++);
      c.causal = causal;
      c.kv_lengths = {100, sq == 67 ? index_t{0} : index_t{41}};
      c.sinks = true;
      check_backward<TypeParam>(c);
    }
}

// Everything at once: window + softcap + sinks + ALiBi with causal, kv_lengths, unequal and empty groups,
// odd dims (d 1, 17, 33; d_v != d_qk), lengths off the block sizes, strided layouts.
TYPED_TEST_P(backward_suite, modifiers_combined) {
  std::vector<modifier_combo> combos = {
      {2, 67, 131, 17, 17, {}, {131, 60}, {24, -1}, true, layout::bshd},
      {1, 129, 129, 33, 20, {2, 0, 1, 0, 2, 2, 1, 0}, {}, {50, 3}, false, layout::padded},
      {2, 1, 257, 1, 9, {3, 3, 0, 3, 0, 3, 3, 3, 0}, {257, 1}, {100, -1}, true, layout::bhsd},
      {1, 300, 77, 24, 24, {0, 0, 0, 2, 2}, {}, {9, 9}, true, layout::bshd},
  };
  if (gqa::test::reduced) combos.resize(3);
  std::uint64_t seed = 1500;
  for (const modifier_combo& cb : combos) {
    backward_case c = shaped_case(cb.b, cb.sq, cb.skv, 8, 2, cb.d, seed++);
    c.kv_of_q = cb.kv_of_q;
    if (!cb.kv_of_q.empty()) {
      c.hq = static_cast<index_t>(cb.kv_of_q.size());
      c.hkv = *std::max_element(cb.kv_of_q.begin(), cb.kv_of_q.end()) + 1;
    }
    c.dv = cb.dv;
    c.kv_lengths = cb.lengths;
    c.window_left = cb.w.left;
    c.window_right = cb.w.right;
    c.causal = cb.causal;
    c.lq = c.lk = c.lv = c.lo = c.lgrad = cb.lay;
    c.softcap = 5.0f;
    c.sinks = true;
    c.alibi = true;
    check_backward<TypeParam>(c);
  }
}

// Bitwise identical gradients (and dsinks) for any thread count and executor with every modifier on: the
// one-KV-head case splits its query positions over ranges.
TYPED_TEST_P(backward_suite, modifiers_deterministic_across_threads) {
  backward_case c = shaped_case(1, gqa::test::reduced ? 60 : 250, gqa::test::reduced ? 90 : 300, 8, 1, 40, 1600);
  c.causal = true;
  c.window_left = 37;
  c.softcap = 10.0f;
  c.sinks = true;
  c.alibi = true;
  check_backward<TypeParam>(c);
  check_backward_deterministic<TypeParam>(c);
  c.b = 2;
  c.hkv = 4;
  c.causal = false;
  c.window_right = 11;
  c.kv_lengths = {c.skv - 7, c.skv / 2};
  c.seed = 1601;
  check_backward_deterministic<TypeParam>(c);
}

// Non-finite values follow the masks, as in the forward (Note [non-finite inputs]): NaN in rows of dO, in
// V rows, in the K rows no row sees and the Q rows that see nothing (which leave the forward's LSE
// finite). Every gradient is non-finite exactly where the double reference (plain loops over the visible
// pairs) is, and the others match it; gradients of keys a NaN row does not see stay finite.
TYPED_TEST_P(backward_suite, nonfinite_values_follow_the_masks) {
  const nonfinite_case cases[] = {
      {70, 130, {130, 90}, {20, -1}, true, false},
      {150, 60, {}, {10, 4}, true, true},
      {1, 200, {200, 33}, {30, -1}, false, true},
  };
  std::uint64_t seed = 1700;
  for (const nonfinite_case& nc : cases) {
    backward_case c = shaped_case(2, nc.sq, nc.skv, 8, 2, 24, seed++);
    c.kv_lengths = nc.lengths;
    c.window_left = nc.w.left;
    c.window_right = nc.w.right;
    c.causal = nc.causal;
    c.sinks = nc.sinks;
    SCOPED_TRACE(c.describe());
    const visibility vis(c, gqa::reference::modifiers{c.window_left, c.window_right, 0.0, {}, {}});
    auto p = backward_data::make<TypeParam>(c, inject_nonfinite(c, vis));
    const auto mods = p.mods(c);
    p.template run<TypeParam>(p.options(c));
    const double_copy qd(p.q.view), kd(p.k.view), vd(p.v.view), dod(p.dout.view);
    const auto kv_of_q = p.map.kv_of_q();
    const auto ref = gqa::reference::attention_backward(qd.view, kd.view, vd.view, dod.view, kv_of_q,
                                                        c.scale_or_default(), c.causal, c.kv_lengths, mods);
    const auto naive = gqa::test::naive_fp32_backward(p.q.cview(), p.k.cview(), p.v.cview(), p.o.cview(),
                                                      p.dout.cview(), p.lse, kv_of_q,
                                                      static_cast<float>(c.scale_or_default()), c.causal, c.kv_lengths, mods);
    expect_nonfinite_pattern("dq", gqa::test::logical_order(p.dq.view), ref.dq, ref.dq_terms, naive.dq);
    expect_nonfinite_pattern("dk", gqa::test::logical_order(p.dk.view), ref.dk, ref.dk_terms, naive.dk);
    expect_nonfinite_pattern("dv", gqa::test::logical_order(p.dv.view), ref.dv, ref.dv_terms, naive.dv);
    for (std::size_t h = 0; h < p.dsinks.size(); ++h) {
      EXPECT_EQ(std::isfinite(p.dsinks[h]), std::isfinite(ref.dsinks[h])) << "dsinks[" << h << "]";
    }
  }
}

namespace {
/// Rounds every element of t (not the gaps) to T in place, so that it is exactly a T value.
template <class T>
void round_to(const gqa::tensor_view<float>& t) {
  for (index_t ib = 0; ib < t.b; ++ib)
    for (index_t is = 0; is < t.s; ++is)
      for (index_t ih = 0; ih < t.h; ++ih)
        for (index_t c = 0; c < t.d; ++c) t(ib, is, ih, c) = gqa::to_float(T(t(ib, is, ih, c)));
}

/// t's elements as T, BSHD.
template <class T>
std::vector<T> narrow_bshd(const gqa::tensor_view<float>& t) {
  const auto x = gqa::test::logical_order(t);
  std::vector<T> r(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) r[i] = T(x[i]);
  return r;
}

/// The case's inputs rounded to T (and O, the forward's float output, too): attend_backward on T inputs
/// with gradients of type G against the float call on the same (widened) values, whose gradients rounded
/// to G must be the 16-bit call's bit for bit, and dsinks the same bits (Note [16-bit backward]).
template <class Isa, class T, class G>
void check_backward_16_bit(const backward_case& c) {
  SCOPED_TRACE(c.describe() + ", " + gqa::element_name<T> + " inputs, " +
               (std::is_same_v<G, float> ? "float" : gqa::element_name<T>) + " gradients");
  auto p = backward_data::make<Isa>(c, [](backward_data& x) {
    for (auto* t : {&x.q, &x.k, &x.v, &x.dout}) round_to<T>(t->view);
  });
  round_to<T>(p.o.view);
  const auto opt = p.options(c);
  p.template run<Isa>(opt);
  const auto q = narrow_bshd<T>(p.q.view), k = narrow_bshd<T>(p.k.view), v = narrow_bshd<T>(p.v.view),
             o = narrow_bshd<T>(p.o.view), dout = narrow_bshd<T>(p.dout.view);
  const auto nq = q.size(), nk = k.size(), nv = v.size();
  std::vector<G> dq(nq, G(std::numeric_limits<float>::quiet_NaN())), dk(nk, dq[0]), dv(nv, dq[0]);
  std::vector<float> dsinks(p.dsinks.size(), std::numeric_limits<float>::quiet_NaN());
  gqa::attention_options o16 = opt;
  o16.dsinks = dsinks;
  o16.bf16_products = false;  // the fp32 products: bit for bit (the bf16 ones: bf16_products_match_reference)
  gqa::attend_backward<Isa>(gqa::bshd<const T>(q.data(), c.b, c.sq, c.hq, c.d), gqa::bshd<const T>(k.data(), c.b, c.skv, c.hkv, c.d),
                            gqa::bshd<const T>(v.data(), c.b, c.skv, c.hkv, c.dv), gqa::bshd<const T>(o.data(), c.b, c.sq, c.hq, c.dv),
                            gqa::bshd<const T>(dout.data(), c.b, c.sq, c.hq, c.dv), p.lse,
                            gqa::bshd(dq.data(), c.b, c.sq, c.hq, c.d), gqa::bshd(dk.data(), c.b, c.skv, c.hkv, c.d),
                            gqa::bshd(dv.data(), c.b, c.skv, c.hkv, c.dv), p.map, o16);
  const auto expect_rounded = [](const char* name, const std::vector<G>& got, const std::vector<float>& want) {
    ASSERT_EQ(got.size(), want.size()) << name;
    for (std::size_t i = 0; i < got.size(); ++i) {
      const G r = gqa::from_float<G>(want[i]);
      ASSERT_EQ(std::memcmp(&got[i], &r, sizeof(G)), 0)
          << name << "[" << i << "] = " << gqa::to_float(got[i]) << ", the float call's rounded: " << gqa::to_float(r);
    }
  };
  expect_rounded("dq", dq, gqa::test::logical_order(p.dq.view));
  expect_rounded("dk", dk, gqa::test::logical_order(p.dk.view));
  expect_rounded("dv", dv, gqa::test::logical_order(p.dv.view));
  ASSERT_EQ(dsinks.size(), p.dsinks.size());
  for (std::size_t h = 0; h < dsinks.size(); ++h)  // (memcmp of an empty vector's null data is undefined)
    EXPECT_EQ(std::memcmp(&dsinks[h], &p.dsinks[h], sizeof(float)), 0) << "dsinks[" << h << "]";
  for (const float x : gqa::test::logical_order(p.dq.view)) ASSERT_TRUE(std::isfinite(x));
}
}  // namespace

// 16-bit inputs (bf16 with bf16 gradients, f16 with float gradients): the float backward on the widened
// inputs, each gradient rounded once. Cases: GQA with padding and a causal mask, d = 24; MQA with several query
// ranges per KV head (their fp32 sums rounded once) and d = 21; every score modifier with sinks'
// gradient; an uneven map with an unused KV head (zero gradients).
TYPED_TEST_P(backward_suite, sixteen_bit_inputs_are_the_rounded_fp32_backward) {
  std::vector<backward_case> cases;
  {
    auto c = shaped_case(2, 37, 45, 8, 2, 24, 901);
    c.causal = true;
    c.kv_lengths = {45, 30};
    cases.push_back(c);
  }
  {
    auto c = shaped_case(1, 300, 300, 4, 1, 21, 902);
    c.causal = true;
    cases.push_back(c);
  }
  {
    auto c = shaped_case(1, 20, 33, 4, 2, 16, 903);
    c.sinks = c.alibi = true;
    c.window_left = 7;
    c.softcap = 5.0f;
    cases.push_back(c);
  }
  {
    auto c = shaped_case(2, 9, 70, 4, 3, 8, 904);
    c.kv_of_q = {0, 0, 0, 2};
    cases.push_back(c);
  }
  // Each element type once and each kind of gradient once (the core's widening depends only on the input
  // type and its rounding only on the gradients'; every instantiation of the backward core costs CI time).
  for (const auto& c : cases) {
    check_backward_16_bit<TypeParam, gqa::bf16, gqa::bf16>(c);
    check_backward_16_bit<TypeParam, gqa::f16, float>(c);
  }
}

namespace {
/// bf16 Q, K, V, O and dO with options.bf16_products (Note [bf16 backward]), float gradients: each against
/// the double reference on the same bf16 values within Note [bf16 backward tolerance] (finite, exact +0
/// where nothing reaches), with the keys no row sees NaN during the call; the same bits on two threads.
/// Returns whether the gradients differ from the fp32 products' (bf16_products = false), i.e. whether the
/// bf16 products ran.
template <class Isa>
bool check_bf16_products_backward(const backward_case& c) {
  using T = gqa::bf16;
  SCOPED_TRACE(c.describe() + ", bf16 inputs, bf16 products");
  auto p = backward_data::make<Isa>(c, [](backward_data& x) {
    for (auto* t : {&x.q, &x.k, &x.v, &x.dout}) round_to<T>(t->view);
  });
  round_to<T>(p.o.view);
  const auto mods = p.mods(c);
  const visibility vis(c, mods);
  auto q = narrow_bshd<T>(p.q.view), k = narrow_bshd<T>(p.k.view), v = narrow_bshd<T>(p.v.view);
  const auto o = narrow_bshd<T>(p.o.view), dout = narrow_bshd<T>(p.dout.view);
  // Keys no row sees: NaN in the bf16 K and V the call reads (the widened views keep the values).
  for (index_t ib = 0; ib < c.b; ++ib)
    for (index_t j = 0; j < c.skv; ++j)
      if (vis.key(ib, j)) {
        for (index_t x = 0; x < c.hkv * c.d; ++x) k[static_cast<std::size_t>((ib * c.skv + j) * c.hkv * c.d + x)] = T(std::numeric_limits<float>::quiet_NaN());
        for (index_t x = 0; x < c.hkv * c.dv; ++x) v[static_cast<std::size_t>((ib * c.skv + j) * c.hkv * c.dv + x)] = T(std::numeric_limits<float>::quiet_NaN());
      }
  const auto bshd = [](auto* x, index_t b, index_t s, index_t h, index_t d) { return gqa::bshd(x, b, s, h, d); };
  struct grads {
    std::vector<float> dq, dk, dv, dsinks;
  };
  const auto run = [&](bool products, int threads) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    grads g{std::vector<float>(q.size(), nan), std::vector<float>(k.size(), nan), std::vector<float>(v.size(), nan),
            std::vector<float>(p.sinks.size(), nan)};
    auto opt = p.options(c);
    opt.dsinks = g.dsinks;
    opt.bf16_products = products;
    opt.num_threads = threads;
    gqa::attend_backward<Isa>(bshd(static_cast<const T*>(q.data()), c.b, c.sq, c.hq, c.d),
                              bshd(static_cast<const T*>(k.data()), c.b, c.skv, c.hkv, c.d),
                              bshd(static_cast<const T*>(v.data()), c.b, c.skv, c.hkv, c.dv),
                              bshd(o.data(), c.b, c.sq, c.hq, c.dv), bshd(dout.data(), c.b, c.sq, c.hq, c.dv), p.lse,
                              bshd(g.dq.data(), c.b, c.sq, c.hq, c.d), bshd(g.dk.data(), c.b, c.skv, c.hkv, c.d),
                              bshd(g.dv.data(), c.b, c.skv, c.hkv, c.dv), p.map, opt);
    return g;
  };
  grads g = run(true, 1);
  const double_copy qd(p.q.view), kd(p.k.view), vd(p.v.view), dod(p.dout.view);
  const auto kv_of_q = p.map.kv_of_q();
  const auto ref = gqa::reference::attention_backward(qd.view, kd.view, vd.view, dod.view, kv_of_q, c.scale_or_default(),
                                                      c.causal, c.kv_lengths, mods);
  // The naive backward without and with the bf16 roundings: the bound covers both products and their mix
  // (Note [bf16 backward tolerance]).
  const auto naive_of = [&](bool weights) {
    return gqa::test::naive_fp32_backward(p.q.cview(), p.k.cview(), p.v.cview(), p.o.cview(), p.dout.cview(), p.lse,
                                          kv_of_q, static_cast<float>(c.scale_or_default()), c.causal, c.kv_lengths,
                                          mods, weights);
  };
  const auto naive = naive_of(false), naive16 = naive_of(true);
  auto row_empty = [&](index_t ib, index_t i, index_t) { return vis.row(ib, i); };
  auto key_unseen = [&](index_t ib, index_t j, index_t h) { return vis.key(ib, j) || p.map.group_size(h) == 0; };
  gradient_check gq{"dq"}, gk{"dk"}, gv{"dv"};
  gq.compare(bshd(g.dq.data(), c.b, c.sq, c.hq, c.d), ref.dq, ref.dq_terms, naive.dq, row_empty, &naive16.dq);
  gk.compare(bshd(g.dk.data(), c.b, c.skv, c.hkv, c.d), ref.dk, ref.dk_terms, naive.dk, key_unseen, &naive16.dk);
  gv.compare(bshd(g.dv.data(), c.b, c.skv, c.hkv, c.dv), ref.dv, ref.dv_terms, naive.dv, key_unseen, &naive16.dv);
  gq.expect();
  gk.expect();
  gv.expect();
  if (c.sinks) expect_dsinks(g.dsinks, ref, naive.dsinks, &naive16.dsinks);
  if (std::getenv("GQA_TEST_VERBOSE"))
    std::printf("  bf16 products: dq %.3g (naive %.3g)  dk %.3g (%.3g)  dv %.3g (%.3g) | %s\n", gq.err, gq.naive_err,
                gk.err, gk.naive_err, gv.err, gv.naive_err, c.describe().c_str());
  const grads g2 = run(true, 2);
  EXPECT_TRUE(g2.dq == g.dq && g2.dk == g.dk && g2.dv == g.dv && g2.dsinks == g.dsinks) << "two threads differ";
  const grads f = run(false, 1);
  return f.dq != g.dq || f.dk != g.dk || f.dv != g.dv;
}

/// NaN in one bf16 V element (a key some causal rows do not see) and one dO element: with the bf16 products
/// the gradients are NaN exactly where the fp32 products' are (Note [non-finite inputs]: a NaN reaches the
/// gradients a naive backward gives it and crosses no mask), and finite elsewhere.
template <class Isa>
void check_bf16_products_nonfinite(bool causal) {
  using T = gqa::bf16;
  auto c = shaped_case(1, 70, 300, 4, 2, 32, causal ? 942 : 941);
  c.causal = causal;  // bottom-right: query i sees keys <= i + 230, so key 280 only from row 50 on
  SCOPED_TRACE(c.describe() + ", bf16 inputs with NaN in v[280][1][3] and dout[10][2][5]");
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto p = backward_data::make<Isa>(c, [&](backward_data& x) {
    for (auto* t : {&x.q, &x.k, &x.v, &x.dout}) round_to<T>(t->view);
    x.v.view.row(0, 280, 1)[3] = nan;
    x.dout.view.row(0, 10, 2)[5] = nan;
  });
  round_to<T>(p.o.view);
  const auto q = narrow_bshd<T>(p.q.view), k = narrow_bshd<T>(p.k.view), v = narrow_bshd<T>(p.v.view);
  const auto o = narrow_bshd<T>(p.o.view), dout = narrow_bshd<T>(p.dout.view);
  const auto run = [&](bool products) {
    std::vector<float> g(q.size() + k.size() + v.size(), nan);
    auto opt = p.options(c);
    opt.bf16_products = products;
    float* dq = g.data();
    float* dk = dq + q.size();
    float* dv = dk + k.size();
    gqa::attend_backward<Isa>(gqa::bshd<const T>(q.data(), c.b, c.sq, c.hq, c.d), gqa::bshd<const T>(k.data(), c.b, c.skv, c.hkv, c.d),
                              gqa::bshd<const T>(v.data(), c.b, c.skv, c.hkv, c.dv), gqa::bshd<const T>(o.data(), c.b, c.sq, c.hq, c.dv),
                              gqa::bshd<const T>(dout.data(), c.b, c.sq, c.hq, c.dv), p.lse, gqa::bshd(dq, c.b, c.sq, c.hq, c.d),
                              gqa::bshd(dk, c.b, c.skv, c.hkv, c.d), gqa::bshd(dv, c.b, c.skv, c.hkv, c.dv), p.map, opt);
    return g;
  };
  const auto g = run(true), f = run(false);
  std::size_t nans = 0, finite = 0;
  for (std::size_t i = 0; i < g.size(); ++i) {
    ASSERT_EQ(std::isnan(g[i]), std::isnan(f[i])) << "gradient element " << i << " (dq, dk, dv concatenated): " << g[i]
                                                  << " with the bf16 products, " << f[i] << " with the fp32 ones";
    ASSERT_FALSE(std::isinf(g[i])) << "gradient element " << i;
    nans += std::isnan(g[i]) ? 1 : 0;
    finite += std::isfinite(g[i]) ? 1 : 0;
  }
  EXPECT_GT(nans, 0u);
  EXPECT_GT(finite, 0u);
}
}  // namespace

// bf16 inputs with the bf16 products (Note [bf16 backward]): GQA with blocks no mask cuts and a last short
// block, d odd and d_v != d; causal with padding (cut and whole blocks, keys no row sees); every score
// modifier with sinks' gradient; an uneven map with an unused KV head; MQA with several query ranges and
// an odd number of rows per query block; large scores; NaN in V and dO, with and without a causal mask. Where VDPBF16PS is the engine on AVX-512, the
// products ran (the gradients are not the fp32 products'); elsewhere they are the fp32 products' bits.
TYPED_TEST_P(backward_suite, bf16_products_match_reference) {
  std::vector<backward_case> cases;
  {
    auto c = shaped_case(1, 70, 300, 8, 2, 21, 931);
    c.dv = 40;
    cases.push_back(c);
  }
  {
    auto c = shaped_case(2, 90, 260, 4, 2, 32, 932);
    c.causal = true;
    c.kv_lengths = {260, 201};
    cases.push_back(c);
  }
  {
    auto c = shaped_case(1, 60, 280, 4, 2, 16, 933);
    c.sinks = c.alibi = true;
    c.window_left = 150;
    c.softcap = 5.0f;
    cases.push_back(c);
  }
  {
    auto c = shaped_case(1, 33, 140, 4, 3, 24, 934);
    c.kv_of_q = {0, 0, 0, 2};
    cases.push_back(c);
  }
  {
    auto c = shaped_case(1, 301, 150, 5, 1, 64, 935);
    cases.push_back(c);
  }
  {
    auto c = shaped_case(1, 40, 200, 4, 1, 32, 936);
    c.lo_val = -4.0f;
    c.hi_val = 4.0f;
    cases.push_back(c);
  }
  int differing = 0;
  for (const auto& c : cases) differing += check_bf16_products_backward<TypeParam>(c) ? 1 : 0;
  for (const bool causal : {false, true}) check_bf16_products_nonfinite<TypeParam>(causal);
  if (std::is_same_v<TypeParam, gqa::isa::avx512> && gqa::isa::bf16_dot_fast()) {
    EXPECT_EQ(differing, static_cast<int>(cases.size()));
  } else {
    EXPECT_EQ(differing, 0);
  }
}

namespace {
/// A ragged batch: (queries, keys) per sequence, heads, dims, masks and modifiers (as backward_case's).
struct ragged_case {
  std::vector<std::pair<index_t, index_t>> seqs;
  index_t hq = 4, hkv = 2, d = 16, dv = 16;
  bool causal = false;
  index_t window_left = -1, window_right = -1;
  float softcap = 0.0f;
  bool sinks = false;
  std::uint64_t seed = 1;

  std::string describe() const {
    std::ostringstream os;
    os << "ragged {";
    for (std::size_t i = 0; i < seqs.size(); ++i) os << (i ? " " : "") << seqs[i].first << "/" << seqs[i].second;
    os << "} hq=" << hq << " hkv=" << hkv << " d=" << d << " dv=" << dv << (causal ? " causal" : "")
       << " window=(" << window_left << "," << window_right << ") softcap=" << softcap << (sinks ? " sinks" : "")
       << " seed=" << seed;
    return os.str();
  }
  /// Sequence i as a dense case (b = 1), for the reference and the visibility of its rows and keys.
  backward_case dense(std::size_t i) const {
    auto c = shaped_case(1, seqs[i].first, seqs[i].second, hq, hkv, d, seed);
    c.dv = dv;
    c.causal = causal;
    c.window_left = window_left;
    c.window_right = window_right;
    c.softcap = softcap;
    return c;
  }
};

/// The ragged forward on Isa (o, the LSE [hq][total_q]), then attend_backward(varlen) on Isa: each sequence's
/// gradients against the double reference of that sequence alone (Note [backward tolerance]), exact +0
/// where nothing reaches (rows without keys, keys without rows, the keys of a sequence without queries),
/// dsinks against the sum of the sequences' references; dq bit for bit the dense backward of the sequence
/// alone (its rows' sums do not depend on the query ranges); the same bits on two threads; with bf16
/// inputs and gradients, the float call on the widened inputs rounded, bit for bit; a NaN in one sequence's
/// V leaves every other sequence's gradients as they were.
template <class Isa>
void check_ragged_backward(const ragged_case& c) {
  SCOPED_TRACE(c.describe());
  std::vector<index_t> cu_q = {0}, cu_k = {0};
  for (const auto& [nq, nk] : c.seqs) {
    cu_q.push_back(cu_q.back() + nq);
    cu_k.push_back(cu_k.back() + nk);
  }
  const index_t tq = cu_q.back(), tk = cu_k.back(), hq = c.hq, hkv = c.hkv;
  const gqa::varlen seqs{cu_q, cu_k};
  const auto n = [](index_t a, index_t b, index_t e) { return static_cast<std::size_t>(a * b * e); };
  const auto q = gqa::test::random_floats(n(tq, hq, c.d), c.seed * 8);
  const auto k = gqa::test::random_floats(n(tk, hkv, c.d), c.seed * 8 + 1);
  auto v = gqa::test::random_floats(n(tk, hkv, c.dv), c.seed * 8 + 2);
  const auto dout = gqa::test::random_floats(n(tq, hq, c.dv), c.seed * 8 + 3);
  std::vector<float> o(n(tq, hq, c.dv)), lse(n(hq, tq, 1));
  const auto map = gqa::head_map::uniform(hq, hkv);
  backward_case c0 = c.dense(0);
  c0.hq = hq;
  c0.sinks = c.sinks;
  const std::vector<float> sinks = case_sinks(c0);
  gqa::attention_options opt;
  opt.causal = c.causal;
  opt.window_left = c.window_left;
  opt.window_right = c.window_right;
  opt.softcap = c.softcap;
  opt.sinks = sinks;
  {
    auto fo = opt;
    fo.lse = lse;
    gqa::attend<Isa>(gqa::thd<const float>(q.data(), tq, hq, c.d), gqa::thd<const float>(k.data(), tk, hkv, c.d),
                     gqa::thd<const float>(v.data(), tk, hkv, c.dv), gqa::thd(o.data(), tq, hq, c.dv), map, seqs, fo);
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  struct grads {
    std::vector<float> dq, dk, dv, dsinks;
  };
  const auto run = [&](int threads) {
    grads g{std::vector<float>(q.size(), nan), std::vector<float>(k.size(), nan), std::vector<float>(v.size(), nan),
            std::vector<float>(sinks.size(), nan)};
    auto bo = opt;
    bo.dsinks = g.dsinks;
    bo.num_threads = threads;
    gqa::attend_backward<Isa>(gqa::thd<const float>(q.data(), tq, hq, c.d), gqa::thd<const float>(k.data(), tk, hkv, c.d),
                              gqa::thd<const float>(v.data(), tk, hkv, c.dv), gqa::thd<const float>(o.data(), tq, hq, c.dv),
                              gqa::thd<const float>(dout.data(), tq, hq, c.dv), lse, gqa::thd(g.dq.data(), tq, hq, c.d),
                              gqa::thd(g.dk.data(), tk, hkv, c.d), gqa::thd(g.dv.data(), tk, hkv, c.dv), map, seqs, bo);
    return g;
  };
  grads g = run(1);
  const auto mods = gqa::reference::modifiers{c.window_left, c.window_right, static_cast<double>(c.softcap), sinks, {}};
  std::vector<double> dsinks_ref(sinks.size(), 0.0), dsinks_terms(sinks.size(), 0.0);
  std::vector<float> dsinks_naive(sinks.size(), 0.0f);
  for (std::size_t i = 0; i < c.seqs.size(); ++i) {
    const auto [nq, nk] = c.seqs[i];
    const index_t q0 = cu_q[i], k0 = cu_k[i];
    SCOPED_TRACE("sequence " + std::to_string(i));
    const auto qs = gqa::thd<const float>(q.data() + n(q0, hq, c.d), nq, hq, c.d);
    const auto ks = gqa::thd<const float>(k.data() + n(k0, hkv, c.d), nk, hkv, c.d);
    const auto vs = gqa::thd<const float>(v.data() + n(k0, hkv, c.dv), nk, hkv, c.dv);
    const auto os = gqa::thd<const float>(o.data() + n(q0, hq, c.dv), nq, hq, c.dv);
    const auto ds = gqa::thd<const float>(dout.data() + n(q0, hq, c.dv), nq, hq, c.dv);
    const auto dqs = gqa::thd(g.dq.data() + n(q0, hq, c.d), nq, hq, c.d);
    const auto dks = gqa::thd(g.dk.data() + n(k0, hkv, c.d), nk, hkv, c.d);
    const auto dvs = gqa::thd(g.dv.data() + n(k0, hkv, c.dv), nk, hkv, c.dv);
    if (nq == 0 || nk == 0) {  // no row sees a key: every gradient of the sequence is +0
      for (const auto& t : {dqs, dks, dvs})
        for (const float x : gqa::test::logical_order(t)) ASSERT_TRUE(gqa::test::is_plus_zero(x)) << x;
      continue;
    }
    std::vector<float> lse_s(n(hq, nq, 1));  // [1][hq][nq]
    for (index_t h = 0; h < hq; ++h)
      for (index_t r = 0; r < nq; ++r) lse_s[static_cast<std::size_t>(h * nq + r)] = lse[static_cast<std::size_t>(h * tq + q0 + r)];
    const backward_case sc = c.dense(i);
    const visibility vis(sc, mods);
    const double_copy qd(gqa::thd(const_cast<float*>(qs.data), nq, hq, c.d)), kd(gqa::thd(const_cast<float*>(ks.data), nk, hkv, c.d)),
        vd(gqa::thd(const_cast<float*>(vs.data), nk, hkv, c.dv)), dod(gqa::thd(const_cast<float*>(ds.data), nq, hq, c.dv));
    const auto kv_of_q = map.kv_of_q();
    const double scale = sc.scale_or_default();
    const auto ref = gqa::reference::attention_backward(qd.view, kd.view, vd.view, dod.view, kv_of_q, scale, c.causal, {}, mods);
    const auto naive = gqa::test::naive_fp32_backward(qs, ks, vs, os, ds, lse_s, kv_of_q, static_cast<float>(scale),
                                                      c.causal, {}, mods);
    gradient_check gq{"dq"}, gk{"dk"}, gv{"dv"};
    gq.compare(dqs, ref.dq, ref.dq_terms, naive.dq, [&](index_t, index_t r, index_t) { return vis.row(0, r); });
    gk.compare(dks, ref.dk, ref.dk_terms, naive.dk, [&](index_t, index_t j, index_t) { return vis.key(0, j); });
    gv.compare(dvs, ref.dv, ref.dv_terms, naive.dv, [&](index_t, index_t j, index_t) { return vis.key(0, j); });
    gq.expect();
    gk.expect();
    gv.expect();
    for (std::size_t h = 0; h < sinks.size(); ++h) {
      dsinks_ref[h] += ref.dsinks[h];
      dsinks_terms[h] += ref.dsinks_terms[h];
      dsinks_naive[h] += naive.dsinks[h];
    }
    // The dense backward of this sequence alone: dq bit for bit.
    std::vector<float> dq1(n(nq, hq, c.d)), dk1(n(nk, hkv, c.d)), dv1(n(nk, hkv, c.dv));
    auto so = opt;
    so.sinks = sinks;
    gqa::attend_backward<Isa>(qs, ks, vs, os, ds, lse_s, gqa::thd(dq1.data(), nq, hq, c.d), gqa::thd(dk1.data(), nk, hkv, c.d),
                              gqa::thd(dv1.data(), nk, hkv, c.dv), map, so);
    EXPECT_EQ(std::memcmp(dq1.data(), dqs.data, dq1.size() * sizeof(float)), 0) << "dq differs from the dense call's";
  }
  if (c.sinks) {
    gqa::reference::attention_grads total;
    total.dsinks = dsinks_ref;
    total.dsinks_terms = dsinks_terms;
    expect_dsinks(g.dsinks, total, dsinks_naive);
  }
  const grads g2 = run(2);
  EXPECT_TRUE(g2.dq == g.dq && g2.dk == g.dk && g2.dv == g.dv && g2.dsinks == g.dsinks) << "two threads differ";

  // bf16 inputs and gradients: the float call on the widened inputs, rounded (Note [16-bit backward]).
  using T = gqa::bf16;
  using gqa::test::narrowed, gqa::test::widened;
  const auto q16 = narrowed<T>(q), k16 = narrowed<T>(k), v16 = narrowed<T>(v), o16 = narrowed<T>(o), d16 = narrowed<T>(dout);
  const auto qw = widened(q16), kw = widened(k16), vw = widened(v16), ow = widened(o16), dw = widened(d16);
  std::vector<float> fq(q.size()), fk(k.size()), fv(v.size());
  gqa::attend_backward<Isa>(gqa::thd<const float>(qw.data(), tq, hq, c.d), gqa::thd<const float>(kw.data(), tk, hkv, c.d),
                            gqa::thd<const float>(vw.data(), tk, hkv, c.dv), gqa::thd<const float>(ow.data(), tq, hq, c.dv),
                            gqa::thd<const float>(dw.data(), tq, hq, c.dv), lse, gqa::thd(fq.data(), tq, hq, c.d),
                            gqa::thd(fk.data(), tk, hkv, c.d), gqa::thd(fv.data(), tk, hkv, c.dv), map, seqs, opt);
  std::vector<T> hq16(q.size()), hk16(k.size()), hv16(v.size());
  auto fp32_products = opt;
  fp32_products.bf16_products = false;  // bit for bit (the bf16 products: bf16_products_match_reference)
  gqa::attend_backward<Isa>(gqa::thd<const T>(q16.data(), tq, hq, c.d), gqa::thd<const T>(k16.data(), tk, hkv, c.d),
                            gqa::thd<const T>(v16.data(), tk, hkv, c.dv), gqa::thd<const T>(o16.data(), tq, hq, c.dv),
                            gqa::thd<const T>(d16.data(), tq, hq, c.dv), lse, gqa::thd(hq16.data(), tq, hq, c.d),
                            gqa::thd(hk16.data(), tk, hkv, c.d), gqa::thd(hv16.data(), tk, hkv, c.dv), map, seqs,
                            fp32_products);
  for (const auto& [got, want, name] : {std::tuple{&hq16, &fq, "dq"}, {&hk16, &fk, "dk"}, {&hv16, &fv, "dv"}})
    for (std::size_t i = 0; i < got->size(); ++i)
      ASSERT_EQ((*got)[i].bits, T((*want)[i]).bits) << "bf16 " << name << "[" << i << "]";

  // A NaN in the last V row of the sequence with the most keys reaches no other sequence: the sequence
  // bounds are the ragged batch's masks. Every other sequence's gradients keep their bits. (V, not K: a NaN
  // score makes the forward's LSE NaN, which the backward rejects as an input.)
  std::size_t victim = 0;
  for (std::size_t i = 1; i < c.seqs.size(); ++i)
    if (c.seqs[i].second > c.seqs[victim].second) victim = i;
  v[n(cu_k[victim + 1] - 1, hkv, c.dv)] = nan;  // its last key: every mask here lets its last query see it
  {
    auto fo = opt;
    fo.lse = lse;
    gqa::attend<Isa>(gqa::thd<const float>(q.data(), tq, hq, c.d), gqa::thd<const float>(k.data(), tk, hkv, c.d),
                     gqa::thd<const float>(v.data(), tk, hkv, c.dv), gqa::thd(o.data(), tq, hq, c.dv), map, seqs, fo);
  }
  const grads gp = run(1);
  const auto same_rows = [](const std::vector<float>& a, const std::vector<float>& b, std::size_t from, std::size_t count) {
    return count == 0 || std::memcmp(a.data() + from, b.data() + from, count * sizeof(float)) == 0;
  };
  EXPECT_TRUE(std::any_of(gp.dq.begin() + static_cast<std::ptrdiff_t>(n(cu_q[victim], hq, c.d)),
                          gp.dq.begin() + static_cast<std::ptrdiff_t>(n(cu_q[victim + 1], hq, c.d)),
                          [](float x) { return std::isnan(x); }) ||
              c.seqs[victim].first == 0)
      << "the NaN did not reach its own sequence's dq (through O in D = dO·O)";
  for (std::size_t i = 0; i < c.seqs.size(); ++i) {
    if (i == victim) continue;
    const auto [nq, nk] = c.seqs[i];
    EXPECT_TRUE(same_rows(gp.dq, g.dq, n(cu_q[i], hq, c.d), n(nq, hq, c.d))) << "NaN leaked into dq of sequence " << i;
    EXPECT_TRUE(same_rows(gp.dk, g.dk, n(cu_k[i], hkv, c.d), n(nk, hkv, c.d))) << "NaN leaked into dk of sequence " << i;
    EXPECT_TRUE(same_rows(gp.dv, g.dv, n(cu_k[i], hkv, c.dv), n(nk, hkv, c.dv))) << "NaN leaked into dv of sequence " << i;
  }
}
}  // namespace

// A ragged batch's backward (Note [ragged backward]): sequences of every kind (more queries than keys,
// one query, none, no keys, long ones with several query ranges), causal, a window with softcap and sinks.
TYPED_TEST_P(backward_suite, ragged_batches_match_each_sequence) {
  ragged_case a;
  a.seqs = {{5, 9}, {0, 4}, {1, 1}, {130, 150}, {3, 0}, {12, 7}};
  a.causal = true;
  a.d = a.dv = 24;
  a.seed = 911;
  check_ragged_backward<TypeParam>(a);
  ragged_case b;
  b.seqs = {{40, 33}, {2, 60}, {0, 0}, {17, 17}};
  b.hq = 6;
  b.hkv = 3;
  b.d = 20;
  b.dv = 13;
  b.window_left = 6;
  b.window_right = 2;
  b.softcap = 8.0f;
  b.sinks = true;
  b.seed = 912;
  check_ragged_backward<TypeParam>(b);
}

// Mixed input types and gradients of another 16-bit type do not compile.
template <class T, class G>
concept backward_takes = requires(gqa::tensor_view<const T> x, gqa::tensor_view<const float> f, gqa::tensor_view<G> g,
                                  std::span<const float> lse, const gqa::head_map& m) {
  gqa::attend_backward(x, x, x, x, x, lse, g, g, g, m);
};
static_assert(backward_takes<float, float> && backward_takes<gqa::bf16, gqa::bf16> && backward_takes<gqa::bf16, float> &&
              backward_takes<gqa::f16, gqa::f16>);
static_assert(!backward_takes<gqa::bf16, gqa::f16> && !backward_takes<float, gqa::bf16>);

REGISTER_TYPED_TEST_SUITE_P(backward_suite, shapes_match_reference, padded_kv_lengths,
                            fully_masked_rows_have_zero_gradients, unequal_head_dims,
                            unequal_empty_and_noncontiguous_groups, layouts_and_strides, deterministic_across_threads,
                            large_magnitude_scores, sliding_window_matches_reference, softcap_matches_reference,
                            alibi_matches_reference, sinks_match_reference, modifiers_combined,
                            modifiers_deterministic_across_threads, nonfinite_values_follow_the_masks,
                            sixteen_bit_inputs_are_the_rounded_fp32_backward, bf16_products_match_reference,
                            ragged_batches_match_each_sequence);
