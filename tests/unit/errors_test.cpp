// Every error path of gqa::attend() and gqa::forward(): each bad argument throws gqa::invalid_argument
// (also catchable as std::invalid_argument) whose what() names the argument and its value, before any
// work: the output is untouched and a policy's plan() is never called.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gqa/attention.hpp>
#include <gqa/gqa.hpp>  // every overload a user sees (test braces_for_the_options_select_the_dense_call)
#include <gqa/variants/mqa.hpp>
#include <gqa/variants/policy.hpp>

#include "support/data.hpp"
#include "support/expect.hpp"

#if defined(__SANITIZE_ADDRESS__)
// AddressSanitizer aborts on an allocation it cannot serve unless allocator_may_return_null is set; then a
// nothrow allocation returns null, which gqa's scratch turns into std::bad_alloc
// (scratch_that_cannot_be_allocated_is_std_bad_alloc). ASAN_OPTIONS still overrides this default.
extern "C" const char* __asan_default_options() { return "allocator_may_return_null=1"; }
#endif

namespace {

using gqa::index_t;
using gqa::test::expect_invalid;  // gqa::invalid_argument, also a std::invalid_argument

/// Arguments of one call; each test starts from a valid call and breaks one thing.
struct call_args {
  gqa::tensor_view<const float> q, k, v;
  gqa::tensor_view<float> o;
  gqa::head_map map;
  gqa::attention_options opt;
};

constexpr index_t b = 2, sq = 3, skv = 5, hq = 4, hkv = 2, d = 8, dv = 6;
constexpr float k_sentinel = 7.0f;

class errors_test : public ::testing::Test {
 protected:
  // k and then o share one arena so that aliasing tests can overlap them by a single float.
  std::vector<float> q_buf = std::vector<float>(static_cast<std::size_t>(b * sq * hq * d), 0.5f);
  // v has room past its view so that an output placed inside it stays inside the allocation.
  std::vector<float> v_buf = std::vector<float>(static_cast<std::size_t>(b * skv * hkv * dv + b * sq * hq * dv), 0.25f);
  static constexpr std::size_t k_size = static_cast<std::size_t>(b * skv * hkv * d);
  static constexpr std::size_t o_size = static_cast<std::size_t>(b * sq * hq * dv);
  std::vector<float> arena = std::vector<float>(k_size + o_size, 0.0f);
  std::vector<float> lse_buf = std::vector<float>(static_cast<std::size_t>(b * hq * sq));

  void SetUp() override {
    std::fill(arena.begin(), arena.begin() + static_cast<std::ptrdiff_t>(k_size), -0.5f);
    std::fill(arena.begin() + static_cast<std::ptrdiff_t>(k_size), arena.end(), k_sentinel);
  }

  float* o_data() { return arena.data() + k_size; }

  call_args valid() {
    call_args a;
    a.q = gqa::bshd<const float>(q_buf.data(), b, sq, hq, d);
    a.k = gqa::bshd<const float>(arena.data(), b, skv, hkv, d);
    a.v = gqa::bshd<const float>(v_buf.data(), b, skv, hkv, dv);
    a.o = gqa::bshd(o_data(), b, sq, hq, dv);
    a.map = gqa::head_map::uniform(hq, hkv);
    a.opt.lse = lse_buf;
    return a;
  }

  bool output_untouched() const {
    return std::all_of(arena.begin() + static_cast<std::ptrdiff_t>(k_size), arena.end(),
                       [](float x) { return x == k_sentinel; });
  }

  /// Breaks a valid call with `breaker` and expects attend() to reject it naming `parts`, writing nothing.
  void expect_attend_rejects(const std::function<void(call_args&)>& breaker, const std::vector<std::string>& parts) {
    call_args a = valid();
    breaker(a);
    expect_invalid([&] { gqa::attend(a.q, a.k, a.v, a.o, a.map, a.opt); }, parts);
    EXPECT_TRUE(output_untouched()) << "attend() wrote the output before rejecting the call";
  }
};

TEST_F(errors_test, valid_call_runs) {
  call_args a = valid();
  EXPECT_NO_THROW(gqa::attend(a.q, a.k, a.v, a.o, a.map, a.opt));
  EXPECT_FALSE(output_untouched());
  // Every value is 0.25, so the output is 0.25 whatever the weights.
  for (std::size_t i = k_size; i < arena.size(); ++i) EXPECT_FLOAT_EQ(arena[i], 0.25f);
}

TEST_F(errors_test, null_data) {
  expect_attend_rejects([](call_args& a) { a.q.data = nullptr; }, {"gqa::attend", "q.data = nullptr"});
  expect_attend_rejects([](call_args& a) { a.k.data = nullptr; }, {"k.data = nullptr"});
  expect_attend_rejects([](call_args& a) { a.v.data = nullptr; }, {"v.data = nullptr"});
  expect_attend_rejects([](call_args& a) { a.o.data = nullptr; }, {"o.data = nullptr"});
}

TEST_F(errors_test, non_positive_extents) {
  expect_attend_rejects([](call_args& a) { a.q.b = 0; }, {"q.b = 0"});
  expect_attend_rejects([](call_args& a) { a.q.s = -3; }, {"q.s = -3"});
  expect_attend_rejects([](call_args& a) { a.q.h = 0; }, {"q.h = 0"});
  expect_attend_rejects([](call_args& a) { a.q.d = 0; }, {"q.d = 0"});
  expect_attend_rejects([](call_args& a) { a.k.b = -1; }, {"k.b = -1"});
  expect_attend_rejects([](call_args& a) { a.k.s = 0; }, {"k.s = 0"});
  expect_attend_rejects([](call_args& a) { a.k.h = 0; }, {"k.h = 0"});
  expect_attend_rejects([](call_args& a) { a.v.d = 0; }, {"v.d = 0"});
  expect_attend_rejects([](call_args& a) { a.v.s = -7; }, {"v.s = -7"});
  expect_attend_rejects([](call_args& a) { a.o.s = 0; }, {"o.s = 0"});
  expect_attend_rejects([](call_args& a) { a.o.h = -2; }, {"o.h = -2"});
  expect_attend_rejects([](call_args& a) { a.o.d = 0; }, {"o.d = 0"});
}

TEST_F(errors_test, head_dim_stride_must_be_one) {
  expect_attend_rejects([](call_args& a) { a.q.stride_d = 2; }, {"q.stride_d = 2"});
  expect_attend_rejects([](call_args& a) { a.k.stride_d = 0; }, {"k.stride_d = 0"});
  expect_attend_rejects([](call_args& a) { a.v.stride_d = -1; }, {"v.stride_d = -1"});
  expect_attend_rejects([](call_args& a) { a.o.stride_d = 3; }, {"o.stride_d = 3"});
}

TEST_F(errors_test, mismatched_extents) {
  expect_attend_rejects([](call_args& a) { a.k.b = 1; }, {"k.b = 1", "q.b = 2"});
  expect_attend_rejects([](call_args& a) { a.v.b = 1; }, {"v.b = 1", "q.b = 2"});
  expect_attend_rejects([](call_args& a) { a.o.b = 1; }, {"o.b = 1", "q.b = 2"});
  expect_attend_rejects([](call_args& a) { a.v.s = 4; }, {"v.s = 4", "k.s = 5"});
  expect_attend_rejects([](call_args& a) { a.o.s = 2; }, {"o.s = 2", "q.s = 3"});
  expect_attend_rejects([](call_args& a) { a.k.d = 7; }, {"k.d = 7", "q.d = 8"});
  expect_attend_rejects([](call_args& a) { a.o.d = 5; }, {"o.d = 5", "v.d = 6"});
  expect_attend_rejects([](call_args& a) { a.v.h = 1; }, {"v.h = 1", "k.h = 2"});
  expect_attend_rejects([](call_args& a) { a.o.h = 3; }, {"o.h = 3", "q.h = 4"});
}

TEST_F(errors_test, head_map_must_match_the_tensors) {
  expect_attend_rejects([](call_args& a) { a.map = gqa::head_map::uniform(8, 2); }, {"map.hq() = 8", "q.h = 4"});
  expect_attend_rejects([](call_args& a) { a.map = gqa::head_map::uniform(4, 4); }, {"map.hkv() = 4", "k.h = 2"});
  expect_attend_rejects([](call_args& a) { a.map = gqa::head_map::from_allocation(std::vector<int>{1, 3, 0}); },
                        {"map.hkv() = 3"});
}

TEST_F(errors_test, kv_lengths) {
  static const std::vector<index_t> too_few = {5}, too_many = {5, 5, 5}, negative = {5, -1}, too_long = {5, 6};
  expect_attend_rejects([](call_args& a) { a.opt.kv_lengths = too_few; }, {"options.kv_lengths.size() = 1", "2"});
  expect_attend_rejects([](call_args& a) { a.opt.kv_lengths = too_many; }, {"options.kv_lengths.size() = 3"});
  expect_attend_rejects([](call_args& a) { a.opt.kv_lengths = negative; }, {"options.kv_lengths[1] = -1"});
  expect_attend_rejects([](call_args& a) { a.opt.kv_lengths = too_long; }, {"options.kv_lengths[1] = 6", "skv = 5"});
  // The bounds themselves are valid: 0 (nothing visible) and skv.
  static const std::vector<index_t> edges = {0, 5};
  call_args a = valid();
  a.opt.kv_lengths = edges;
  EXPECT_NO_THROW(gqa::attend(a.q, a.k, a.v, a.o, a.map, a.opt));
}

TEST_F(errors_test, masks_and_score_modifiers) {
  constexpr float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  expect_attend_rejects([](call_args& a) { a.opt.window_left = -2; }, {"options.window_left = -2", ">= -1"});
  expect_attend_rejects([](call_args& a) { a.opt.window_right = -7; }, {"options.window_right = -7", ">= -1"});
  expect_attend_rejects([](call_args& a) { a.opt.softcap = -1.0f; }, {"options.softcap = -1"});
  expect_attend_rejects([](call_args& a) { a.opt.softcap = nan; }, {"options.softcap = nan"});
  expect_attend_rejects([](call_args& a) { a.opt.softcap = inf; }, {"options.softcap = inf"});
  expect_attend_rejects([](call_args& a) { a.opt.softcap = 1e-40f; }, {"options.softcap = "});
  static const std::vector<float> three = {0, 0, 0}, nan_sink = {0, nan, 0, 0}, huge = {0, 0, 0, 1e31f};
  expect_attend_rejects([](call_args& a) { a.opt.sinks = three; }, {"options.sinks.size() = 3", "hq = 4"});
  expect_attend_rejects([](call_args& a) { a.opt.sinks = nan_sink; }, {"options.sinks[1] = nan"});
  expect_attend_rejects([](call_args& a) { a.opt.alibi_slopes = three; }, {"options.alibi_slopes.size() = 3", "hq = 4"});
  expect_attend_rejects([](call_args& a) { a.opt.alibi_slopes = huge; }, {"options.alibi_slopes[3] = 1e+31"});
  // Valid edges: windows of 0 and of any size past the sequence, a large finite cap.
  call_args a = valid();
  a.opt.window_left = 0;
  a.opt.window_right = std::numeric_limits<index_t>::max();
  a.opt.softcap = 1e30f;
  EXPECT_NO_THROW(gqa::attend(a.q, a.k, a.v, a.o, a.map, a.opt));
}

TEST_F(errors_test, lse_size) {
  static std::vector<float> small(23), big(25);
  expect_attend_rejects([](call_args& a) { a.opt.lse = small; }, {"options.lse.size() = 23", "b*hq*sq = 24"});
  expect_attend_rejects([](call_args& a) { a.opt.lse = big; }, {"options.lse.size() = 25"});
}

TEST_F(errors_test, threads_and_scale) {
  expect_attend_rejects([](call_args& a) { a.opt.num_threads = -1; }, {"options.num_threads = -1"});
  expect_attend_rejects([](call_args& a) { a.opt.scale = std::numeric_limits<float>::infinity(); },
                        {"options.scale = inf"});
  expect_attend_rejects([](call_args& a) { a.opt.scale = -std::numeric_limits<float>::infinity(); },
                        {"options.scale = -inf"});
  expect_attend_rejects([](call_args& a) { a.opt.scale = std::numeric_limits<float>::quiet_NaN(); },
                        {"options.scale = nan"});
}

TEST_F(errors_test, output_must_not_alias_an_input) {
  const std::string q_at = [&] {
    std::ostringstream os;
    os << static_cast<const void*>(q_buf.data());
    return os.str();
  }();
  // o exactly on q (same pointer), on part of v, and overlapping the last float of k.
  expect_attend_rejects([&](call_args& a) { a.o.data = q_buf.data(); }, {"o (data = " + q_at + ")", "overlaps q"});
  expect_attend_rejects([&](call_args& a) { a.o.data = v_buf.data() + 20; }, {"overlaps v"});
  expect_attend_rejects([&](call_args& a) { a.o.data = o_data() - 1; }, {"overlaps k"});
  // Overlap through a negative stride: o's batch 0 lies after k, its batch 1 inside k.
  expect_attend_rejects(
      [&](call_args& a) {
        a.o.data = o_data();
        a.o.stride_b = -a.o.stride_b;
      },
      {"overlaps k"});
  // Adjacent but not overlapping is fine: o starts right after the last float of k.
  call_args a = valid();
  EXPECT_NO_THROW(gqa::attend(a.q, a.k, a.v, a.o, a.map, a.opt));
}

/// what() of the gqa::invalid_argument that f() throws ("" if it throws nothing).
template <class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const gqa::invalid_argument& e) {
    return e.what();
  }
  return "";
}

constexpr index_t k_2_61 = index_t{1} << 61, k_2_62 = index_t{1} << 62;
constexpr index_t k_max = std::numeric_limits<index_t>::max(), k_min = std::numeric_limits<index_t>::min();

// Issue 9: extents and strides whose products overflow were used before they were checked (UBSan signed
// overflow in attend(), batch 1 written over batch 0, an out-of-bounds read, a misleading message, or a
// std::length_error). Each is now a gqa::invalid_argument naming the extent or stride; see Note [view sizes].
TEST_F(errors_test, sizes_that_overflow_are_rejected) {
  expect_attend_rejects([](call_args& a) { a.q.s = a.o.s = k_2_62; }, {"q.s = 4611686018427387904"});
  expect_attend_rejects([](call_args& a) { a.o.stride_b = k_2_62; }, {"o.stride_b = 4611686018427387904", "o.b = 2"});
  expect_attend_rejects([](call_args& a) { a.q.stride_s = k_max; }, {"q.stride_s = 9223372036854775807", "q.s = 3"});
  expect_attend_rejects([](call_args& a) { a.k.stride_h = k_min; }, {"k.stride_h = -9223372036854775808"});
  expect_attend_rejects([](call_args& a) { a.v.stride_b = -k_2_61; }, {"v.stride_b = -2305843009213693952"});
  // Not "o overlaps q": the size is what is wrong.
  const std::string msg = message_of([&] {
    call_args a = valid();
    a.v.d = a.o.d = k_2_61;
    gqa::attend(a.q, a.k, a.v, a.o, a.map, a.opt);
  });
  EXPECT_NE(msg.find("v.d = 2305843009213693952"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("overlap"), std::string::npos) << msg;
  EXPECT_TRUE(output_untouched());
  // bshd() of an absurd extent: its strides wrap (no undefined behaviour) and the view is rejected.
  expect_attend_rejects(
      [this](call_args& a) {
        a.q = gqa::bshd<const float>(q_buf.data(), b, k_2_62, hq, d);
        a.o = gqa::bshd(o_data(), b, k_2_62, hq, dv);
      },
      {"q.s = 4611686018427387904"});
  // Zero (broadcast) strides do not lift the limit on the element count: an absurd skv would make the
  // core's rounded-up key counts overflow (a std::length_error before).
  static const std::vector<index_t> short_lengths = {2, 3};
  expect_attend_rejects(
      [](call_args& a) {
        a.k.s = a.v.s = k_max;
        a.k.stride_s = a.v.stride_s = 0;
        a.opt.kv_lengths = short_lengths;
      },
      {"k.s = 9223372036854775807"});
  // An LSE size b·hq·sq that wraps to a small number: 4 · (2^62 + 6) · 1 = 24 (mod 2^64). The views
  // broadcast along h, so only the element count can reject them.
  static std::vector<float> lse24(24), one_row(static_cast<std::size_t>(d)), out_row(static_cast<std::size_t>(dv));
  expect_invalid(
      [&] {
        const index_t h = k_2_62 + 6;
        const gqa::tensor_view<const float> q(one_row.data(), 4, 1, h, d, 0, 0, 0);
        const gqa::tensor_view<float> o(out_row.data(), 4, 1, h, dv, 0, 0, 0);
        gqa::attention_options opt;
        opt.lse = lse24;
        gqa::attend(q, q, q, o, gqa::head_map::uniform(1, 1), opt);
      },
      {"q.h = 4611686018427387910"});
}

TEST(errors, head_counts_beyond_int_max_are_rejected_before_allocating) {
  expect_invalid([] { (void)gqa::head_map::uniform(index_t{1} << 40, 2); }, {"head_map::uniform", "hq = 1099511627776"});
  expect_invalid([] { (void)gqa::head_map::uniform(4, index_t{1} << 40); }, {"hkv = 1099511627776"});
  const std::vector<index_t> kv_of_q = {0, 1};
  expect_invalid([&] { (void)gqa::head_map(kv_of_q, index_t{1} << 40); }, {"head_map", "hkv = 1099511627776"});
  const std::vector<int> huge = {std::numeric_limits<int>::max(), 1};
  expect_invalid([&] { (void)gqa::head_map::from_allocation(huge); }, {"sum(alloc) = 2147483648"});
}

// Issue 9: q.d = 2^40 passes every view rule (2^40 elements, stride_d = 1), but a tile of packed Q needs
// 2^42 bytes per thread; growing the scratch threw std::bad_alloc inside a noexcept task and the process
// terminated. Now the std::bad_alloc reaches the caller (also from worker threads, an OpenMP region or a
// caller's parallel_for: Note [task exceptions]) before anything is written, and d = 2^59, whose scratch
// size does not even fit in ptrdiff_t, is refused before any work (Note [scratch size]).
TEST(errors, scratch_that_cannot_be_allocated_is_std_bad_alloc) {
  constexpr index_t dv_small = 4;
  // o first (a sentinel), then v, then q: q's 2^40 (or 2^59) floats lie above o's, so the two share no
  // element. The kernel never reads q (its scratch fails first), so q's buffer need not be that large.
  std::vector<float> buf(64, 0.5f);
  std::fill(buf.begin(), buf.begin() + 8, k_sentinel);
  const gqa::tensor_view<float> o(buf.data(), 1, 1, 2, dv_small, 0, 0, dv_small);
  const gqa::tensor_view<const float> v(buf.data() + 16, 1, 1, 1, dv_small, 0, 0, 0);
  const std::vector<float> before = buf;
  gqa::attention_options one_thread, two_threads, caller_loop;
  two_threads.num_threads = 2;
  caller_loop.parallel_for = [](index_t n, const std::function<void(index_t)>& task) {
    std::vector<std::thread> pool;  // every task on a thread of its own
    for (index_t i = 0; i < n; ++i) pool.emplace_back(task, i);
    for (auto& t : pool) t.join();
  };
  const std::pair<const char*, const gqa::attention_options*> loops[] = {
      {"1 thread", &one_thread}, {"2 threads", &two_threads}, {"parallel_for", &caller_loop}};
  for (const int log2_d : {40, 59}) {
    const index_t big = index_t{1} << log2_d;
    const gqa::tensor_view<const float> q(buf.data() + 32, 1, 1, 2, big, 0, 0, 0);
    const gqa::tensor_view<const float> k(buf.data() + 32, 1, 1, 1, big, 0, 0, 0);
    for (const auto& [name, opt] : loops) {
      SCOPED_TRACE(::testing::Message() << "d = 2^" << log2_d << ", " << name);
      EXPECT_THROW(gqa::attend(q, k, v, o, gqa::head_map::uniform(2, 1), *opt), std::bad_alloc);
      EXPECT_THROW(gqa::forward(gqa::mqa_policy{}, q, k, v, o, *opt), std::bad_alloc);
      EXPECT_EQ(buf, before) << "the failed call wrote the output";
    }
  }
  // The same call with a small d runs: every value is 0.5, so the output is 0.5.
  const gqa::tensor_view<const float> q(buf.data() + 32, 1, 1, 2, 8, 0, 0, 8);
  const gqa::tensor_view<const float> k(buf.data() + 32, 1, 1, 1, 8, 0, 0, 0);
  EXPECT_NO_THROW(gqa::attend(q, k, v, o, gqa::head_map::uniform(2, 1), two_threads));
  for (index_t i = 0; i < 2 * dv_small; ++i) EXPECT_EQ(buf[static_cast<std::size_t>(i)], 0.5f);
}

TEST_F(errors_test, output_overlapping_itself_is_rejected) {
  expect_attend_rejects([](call_args& a) { a.o.stride_h = 0; }, {"o.stride_h = 0", "overlaps itself"});
  expect_attend_rejects([](call_args& a) { a.o.stride_b = 0; }, {"o.stride_b = 0", "overlaps itself"});
  // Rows (s = 1, h = 0) and (s = 0, h = 1) coincide.
  expect_attend_rejects([](call_args& a) { a.o.stride_s = a.o.stride_h; }, {"o.stride_s = 6", "overlaps itself"});
  // Head vectors that overlap by one float.
  expect_attend_rejects([](call_args& a) { a.o.stride_h = dv - 1; }, {"overlaps itself"});
  // Other layouts of the same elements are fine: BHSD, and heads in reverse order (negative stride).
  call_args a = valid();
  a.o = gqa::bhsd(o_data(), b, hq, sq, dv);
  EXPECT_NO_THROW(gqa::attend(a.q, a.k, a.v, a.o, a.map, a.opt));
  a = valid();
  a.o.data += (hq - 1) * dv;
  a.o.stride_h = -dv;
  EXPECT_NO_THROW(gqa::attend(a.q, a.k, a.v, a.o, a.map, a.opt));
}

// Issue 9: an output interleaved with V in one buffer (each slot of 2·dv floats holds a V row, then an O
// row) shares no element with V, but the whole-range test rejected it.
TEST_F(errors_test, disjoint_interleaved_output_is_accepted) {
  const index_t slots_s = std::max(sq, skv), slots_h = std::max(hq, hkv), slot = 2 * dv;
  std::vector<float> buf(static_cast<std::size_t>(b * slots_s * slots_h * slot), -1.0f);
  auto in_buf = [&](index_t offset, index_t s, index_t h) {
    return gqa::tensor_view<float>(buf.data() + offset, b, s, h, dv, slots_s * slots_h * slot, slots_h * slot, slot);
  };
  const gqa::tensor_view<float> v_rows = in_buf(0, skv, hkv);
  for (index_t ib = 0; ib < b; ++ib)
    for (index_t j = 0; j < skv; ++j)
      for (index_t g = 0; g < hkv; ++g)
        for (index_t c = 0; c < dv; ++c) v_rows(ib, j, g, c) = static_cast<float>(ib + j + g) * 0.125f + static_cast<float>(c);
  call_args a = valid();
  a.v = v_rows;
  a.o = in_buf(dv, sq, hq);
  std::iota(q_buf.begin(), q_buf.end(), 0.0f);
  for (float& x : q_buf) x = std::sin(x);
  ASSERT_NO_THROW(gqa::attend(a.q, a.k, a.v, a.o, a.map, a.opt));
  // The same call with a separate, dense output gives the same bits.
  std::vector<float> dense(o_size);
  gqa::attend(a.q, a.k, a.v, gqa::bshd(dense.data(), b, sq, hq, dv), a.map, {});
  EXPECT_EQ(gqa::test::logical_order(a.o), dense);
  // One float further left, O's rows reach into the V rows: rejected, nothing written.
  std::vector<float> before = buf;
  expect_invalid([&] { gqa::attend(a.q, a.k, a.v, in_buf(dv - 1, sq, hq), a.map, a.opt); }, {"overlaps v"});
  EXPECT_EQ(buf, before);
}

// The overlap checks are exact (Note [exact overlap]): over random small strided views of one arena,
// attend() rejects exactly the calls in which o repeats an element or shares one with v (found by
// enumerating every element), and the accepted calls give the same bits as a dense output.
TEST(errors, overlap_checks_are_exact) {
  constexpr index_t arena_size = 200;
  std::vector<float> arena(arena_size);
  const std::vector<float> q_data = gqa::test::random_floats(64, 11), k_data = gqa::test::random_floats(64, 12);
  std::uint64_t state = 0x9e3779b97f4a7c15ULL;
  auto next = [&](index_t lo, index_t hi) {  // uniform in [lo, hi]
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return lo + static_cast<index_t>((state >> 33) % static_cast<std::uint64_t>(hi - lo + 1));
  };
  int rejected_self = 0, rejected_shared = 0, accepted = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    const index_t bb = next(1, 2), s = next(1, 3), hkv_ = next(1, 2), hq_ = hkv_ * next(1, 2), dd = next(1, 2),
                  dvv = next(1, 3), skv_ = next(1, 3);
    auto place = [&](index_t h_ext, index_t s_ext) {  // a random view (b, s_ext, h_ext, dvv) inside the arena
      gqa::tensor_view<float> t(nullptr, bb, s_ext, h_ext, dvv, next(-12, 12), next(-12, 12), next(-12, 12));
      index_t lo = 0, hi = dvv - 1;
      const std::pair<index_t, index_t> dims[3] = {{t.b, t.stride_b}, {t.s, t.stride_s}, {t.h, t.stride_h}};
      for (const auto& [e, st] : dims) (st < 0 ? lo : hi) += (e - 1) * st;
      t.data = arena.data() + next(-lo, arena_size - 1 - hi);
      return t;
    };
    const gqa::tensor_view<float> o = place(hq_, s), v = place(hkv_, skv_);
    std::vector<int> uses(arena_size, 0);
    bool self = false, shared = false;
    auto each = [&](const gqa::tensor_view<float>& t, auto&& fn) {
      for (index_t i0 = 0; i0 < t.b; ++i0)
        for (index_t i1 = 0; i1 < t.s; ++i1)
          for (index_t i2 = 0; i2 < t.h; ++i2)
            for (index_t c = 0; c < t.d; ++c) fn(&t(i0, i1, i2, c) - arena.data());
    };
    each(o, [&](index_t at) { self = self || uses[static_cast<std::size_t>(at)]++ > 0; });
    each(v, [&](index_t at) { shared = shared || uses[static_cast<std::size_t>(at)] > 0; });
    const auto q = gqa::bshd<const float>(q_data.data(), bb, s, hq_, dd);
    const auto k = gqa::bshd<const float>(k_data.data(), bb, skv_, hkv_, dd);
    const gqa::head_map map = gqa::head_map::uniform(hq_, hkv_);
    SCOPED_TRACE(::testing::Message() << "trial " << trial << ": o strides " << o.stride_b << "/" << o.stride_s << "/"
                                      << o.stride_h << " v strides " << v.stride_b << "/" << v.stride_s << "/"
                                      << v.stride_h << " offset " << (v.data - o.data));
    const std::string msg = message_of([&] { gqa::attend(q, k, v, o, map); });
    if (self) {
      ++rejected_self;
      EXPECT_NE(msg.find("overlaps itself"), std::string::npos) << msg;
    } else if (shared) {
      ++rejected_shared;
      EXPECT_NE(msg.find("o (data = "), std::string::npos) << msg;
      EXPECT_NE(msg.find("overlaps v"), std::string::npos) << msg;
    } else {
      ++accepted;
      ASSERT_EQ(msg, "");
      std::vector<float> dense(static_cast<std::size_t>(bb * s * hq_ * dvv));
      gqa::attend(q, k, v, gqa::bshd(dense.data(), bb, s, hq_, dvv), map);
      EXPECT_EQ(gqa::test::logical_order(o), dense);
    }
  }
  // The random views exercise all three outcomes.
  EXPECT_GT(rejected_self, 100);
  EXPECT_GT(rejected_shared, 100);
  EXPECT_GT(accepted, 100);
}

TEST_F(errors_test, lse_and_kv_lengths_must_not_alias) {
  // The LSE written over o, over q, or over itself via o's memory.
  expect_attend_rejects([this](call_args& a) { a.opt.lse = std::span<float>(o_data() + 4, lse_buf.size()); },
                        {"options.lse", "overlaps o"});
  expect_attend_rejects([this](call_args& a) { a.opt.lse = std::span<float>(q_buf.data() + 7, lse_buf.size()); },
                        {"options.lse", "overlaps q"});
  // kv_lengths inside o: the kernel reads it while it writes o.
  std::vector<index_t> lengths_and_out(static_cast<std::size_t>(o_size), skv);
  call_args a = valid();
  a.opt.kv_lengths = std::span<const index_t>(lengths_and_out.data(), b);
  a.o.data = reinterpret_cast<float*>(lengths_and_out.data());
  expect_invalid([&] { gqa::attend(a.q, a.k, a.v, a.o, a.map, a.opt); }, {"options.kv_lengths", "overlaps o"});
}

// gqa::forward() validates the whole call before the policy plans, so a stateful policy never sees a
// call that then throws.
struct counting_policy {
  int plans = 0;
  index_t hq_override = 0;  // > 0: plan a map with this many query heads (a broken policy)
  gqa::head_map plan(const gqa::tensor_view<const float>& q, const gqa::tensor_view<const float>& k) {
    ++plans;
    return gqa::head_map::uniform(hq_override > 0 ? hq_override : q.h, k.h);
  }
};

TEST_F(errors_test, forward_rejects_before_planning) {
  static const std::vector<index_t> negative = {5, -1};
  static std::vector<float> small_lse(3);
  const std::pair<std::function<void(call_args&)>, std::vector<std::string>> cases[] = {
      {[](call_args& a) { a.q.data = nullptr; }, {"q.data = nullptr"}},
      {[](call_args& a) { a.o.d = 0; }, {"o.d = 0"}},
      {[](call_args& a) { a.k.stride_d = 2; }, {"k.stride_d = 2"}},
      {[](call_args& a) { a.v.b = 1; }, {"v.b = 1"}},
      {[](call_args& a) { a.opt.kv_lengths = negative; }, {"options.kv_lengths[1] = -1"}},
      {[](call_args& a) { a.opt.lse = small_lse; }, {"options.lse.size() = 3"}},
      {[](call_args& a) { a.opt.num_threads = -4; }, {"options.num_threads = -4"}},
      {[](call_args& a) { a.opt.window_left = -3; }, {"options.window_left = -3"}},
      {[](call_args& a) { a.opt.scale = std::numeric_limits<float>::quiet_NaN(); }, {"options.scale = nan"}},
      {[this](call_args& a) { a.o.data = o_data() - 3; }, {"overlaps k"}},
  };
  for (const auto& [breaker, parts] : cases) {
    counting_policy p;
    call_args a = valid();
    breaker(a);
    expect_invalid([&] { gqa::forward(p, a.q, a.k, a.v, a.o, a.opt); }, parts);
    EXPECT_EQ(p.plans, 0) << "plan() ran for a call that was then rejected";
    EXPECT_TRUE(output_untouched());
  }
  // A policy whose map does not fit the call is caught by attend()'s own check.
  counting_policy broken;
  broken.hq_override = 8;
  call_args a = valid();
  expect_invalid([&] { gqa::forward(broken, a.q, a.k, a.v, a.o, a.opt); }, {"map.hq() = 8"});
  EXPECT_TRUE(output_untouched());
  // And a valid call plans once and equals attend().
  counting_policy ok;
  std::vector<float> via_attend(o_size);
  gqa::attend(a.q, a.k, a.v, gqa::bshd(via_attend.data(), b, sq, hq, dv), a.map, {});
  gqa::forward(ok, a.q, a.k, a.v, a.o, a.opt);
  EXPECT_EQ(ok.plans, 1);
  EXPECT_TRUE(std::equal(via_attend.begin(), via_attend.end(), arena.begin() + static_cast<std::ptrdiff_t>(k_size)));
}

// `{}` for the options (the way the README and most callers write "defaults") must select the dense call
// beside the ragged overloads, which take a gqa::varlen before the options: an ambiguity here is a
// compile error in user code, so this test compiling is half of it.
TEST_F(errors_test, braces_for_the_options_select_the_dense_call) {
  const call_args a = valid();
  std::vector<float> with_braces(o_size), with_default(o_size);
  gqa::gqa_policy grouped;
  gqa::forward(grouped, a.q, a.k, a.v, gqa::bshd(with_braces.data(), b, sq, hq, dv), {});
  gqa::forward(grouped, a.q, a.k, a.v, gqa::bshd(with_default.data(), b, sq, hq, dv));
  EXPECT_EQ(with_braces, with_default);
  std::fill(with_braces.begin(), with_braces.end(), 0.0f);
  gqa::attend(a.q, a.k, a.v, gqa::bshd(with_braces.data(), b, sq, hq, dv), a.map, {});
  EXPECT_EQ(with_braces, with_default);
}

TEST(errors, invalid_argument_is_a_std_invalid_argument) {
  static_assert(std::is_base_of_v<std::invalid_argument, gqa::invalid_argument>);
  try {
    gqa::head_map::uniform(3, 2);
    FAIL() << "no throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(dynamic_cast<const gqa::invalid_argument*>(&e), nullptr);
  }
}

}  // namespace
