// Every error path of gqa::attend_backward(): each bad argument throws gqa::invalid_argument naming the
// argument and its value, before any work (the gradients are untouched). gqa::backward's own checks are
// in suites/training_suite.hpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <gqa/attention.hpp>
#include <gqa/backward.hpp>
#include <gqa/varlen.hpp>

#include "support/expect.hpp"

namespace {

using gqa::index_t;
using gqa::test::expect_invalid;

constexpr index_t b = 2, sq = 3, skv = 5, hq = 4, hkv = 2, d = 8, dv = 6;
constexpr float k_sentinel = 7.0f;

/// One backward call's arguments; each test starts from a valid call and breaks one thing.
struct call_args {
  gqa::tensor_view<const float> q, k, v, o, dout;
  std::span<const float> lse;
  gqa::tensor_view<float> dq, dk, dv;
  gqa::head_map map;
  gqa::attention_options opt;
};

class backward_errors_test : public ::testing::Test {
 protected:
  std::vector<float> q_buf = std::vector<float>(static_cast<std::size_t>(b * sq * hq * d), 0.5f);
  std::vector<float> k_buf = std::vector<float>(static_cast<std::size_t>(b * skv * hkv * d), -0.5f);
  std::vector<float> v_buf = std::vector<float>(static_cast<std::size_t>(b * skv * hkv * dv), 0.25f);
  std::vector<float> o_buf = std::vector<float>(static_cast<std::size_t>(b * sq * hq * dv), 0.1f);
  std::vector<float> dout_buf = std::vector<float>(static_cast<std::size_t>(b * sq * hq * dv), 1.0f);
  std::vector<float> lse_buf = std::vector<float>(static_cast<std::size_t>(b * hq * sq), 0.3f);
  // dq, dk and dv share one arena (the overlap tests move them into each other).
  static constexpr std::size_t dq_size = static_cast<std::size_t>(b * sq * hq * d);
  static constexpr std::size_t dk_size = static_cast<std::size_t>(b * skv * hkv * d);
  static constexpr std::size_t dv_size = static_cast<std::size_t>(b * skv * hkv * dv);
  std::vector<float> grads = std::vector<float>(dq_size + dk_size + dv_size, k_sentinel);

  call_args valid() {
    call_args a;
    a.q = gqa::bshd<const float>(q_buf.data(), b, sq, hq, d);
    a.k = gqa::bshd<const float>(k_buf.data(), b, skv, hkv, d);
    a.v = gqa::bshd<const float>(v_buf.data(), b, skv, hkv, dv);
    a.o = gqa::bshd<const float>(o_buf.data(), b, sq, hq, dv);
    a.dout = gqa::bshd<const float>(dout_buf.data(), b, sq, hq, dv);
    a.lse = lse_buf;
    a.dq = gqa::bshd(grads.data(), b, sq, hq, d);
    a.dk = gqa::bshd(grads.data() + dq_size, b, skv, hkv, d);
    a.dv = gqa::bshd(grads.data() + dq_size + dk_size, b, skv, hkv, dv);
    a.map = gqa::head_map::uniform(hq, hkv);
    return a;
  }

  void run(const call_args& a) {
    gqa::attend_backward(a.q, a.k, a.v, a.o, a.dout, a.lse, a.dq, a.dk, a.dv, a.map, a.opt);
  }

  /// Breaks a valid call with `breaker` and expects it rejected naming `parts`, with nothing written.
  void expect_rejects(const std::function<void(call_args&)>& breaker, const std::vector<std::string>& parts) {
    call_args a = valid();
    breaker(a);
    expect_invalid([&] { run(a); }, parts);
    EXPECT_TRUE(std::all_of(grads.begin(), grads.end(), [](float x) { return x == k_sentinel; }))
        << "attend_backward wrote a gradient before rejecting the call";
  }
};

TEST_F(backward_errors_test, valid_call_runs) {
  run(valid());
  for (const float x : grads) EXPECT_TRUE(std::isfinite(x));
}

TEST_F(backward_errors_test, views) {
  expect_rejects([](call_args& a) { a.dout.data = nullptr; }, {"gqa::attend_backward", "dout.data = nullptr"});
  expect_rejects([](call_args& a) { a.q.b = 0; }, {"gqa::attend_backward", "q.b = 0"});
  expect_rejects([](call_args& a) { a.dk.stride_d = 2; }, {"gqa::attend_backward", "dk.stride_d = 2"});
  expect_rejects([](call_args& a) { a.o.d = dv + 1; }, {"gqa::attend_backward", "o.d = 7", "must equal v.d = 6"});
}

TEST_F(backward_errors_test, gradient_and_dout_extents) {
  expect_rejects([](call_args& a) { a.dout.s = sq - 1; }, {"gqa::attend_backward: dout.s = 2: must equal o.s = 3"});
  expect_rejects([](call_args& a) { a.dq.h = hq - 1; }, {"gqa::attend_backward: dq.h = 3: must equal q.h = 4"});
  expect_rejects([](call_args& a) { a.dk.s = skv - 1; }, {"gqa::attend_backward: dk.s = 4: must equal k.s = 5"});
  expect_rejects([](call_args& a) { a.dv.d = dv - 1; }, {"gqa::attend_backward: dv.d = 5: must equal v.d = 6"});
}

TEST_F(backward_errors_test, map_options_and_lse) {
  expect_rejects([](call_args& a) { a.map = gqa::head_map::uniform(hq, 1); },
                 {"gqa::attend_backward", "map.hkv() = 1", "must equal k.h = 2"});
  expect_rejects([](call_args& a) { a.opt.scale = std::numeric_limits<float>::infinity(); },
                 {"gqa::attend_backward", "options.scale = inf"});
  static const std::vector<index_t> long_len = {skv, skv + 1};
  expect_rejects([](call_args& a) { a.opt.kv_lengths = long_len; },
                 {"gqa::attend_backward: options.kv_lengths[1] = 6: must be in [0, skv = 5]"});
  expect_rejects([](call_args& a) { a.lse = a.lse.first(5); }, {"gqa::attend_backward: lse.size() = 5", "b*hq*sq = 24"});
  lse_buf[7] = std::numeric_limits<float>::quiet_NaN();
  expect_rejects([](call_args&) {}, {"gqa::attend_backward: lse[7] = nan"});
  lse_buf[7] = std::numeric_limits<float>::infinity();
  expect_rejects([](call_args&) {}, {"gqa::attend_backward: lse[7] = inf"});
  lse_buf[7] = -std::numeric_limits<float>::infinity();  // a row that saw no key: allowed
  run(valid());
}

// The score modifiers: accepted (with the sinks' gradient), each checked as the forward checks it, and
// options.dsinks needs sinks, hq entries and memory of its own.
TEST_F(backward_errors_test, score_modifiers) {
  static const std::vector<float> per_head(hq, 0.5f);
  static std::vector<float> dsinks(hq, k_sentinel);
  auto with_modifiers = [](call_args& a) {
    a.opt.window_left = 2;
    a.opt.window_right = 0;
    a.opt.softcap = 30.0f;
    a.opt.sinks = per_head;
    a.opt.alibi_slopes = per_head;
    a.opt.dsinks = dsinks;
  };
  call_args ok = valid();
  with_modifiers(ok);
  run(ok);
  for (const float x : grads) EXPECT_TRUE(std::isfinite(x));
  for (const float x : dsinks) EXPECT_TRUE(std::isfinite(x) && x != k_sentinel);
  std::fill(grads.begin(), grads.end(), k_sentinel);

  expect_rejects([](call_args& a) { a.opt.window_left = -2; },
                 {"gqa::attend_backward: options.window_left = -2", "must be >= -1"});
  expect_rejects([](call_args& a) { a.opt.softcap = -1.0f; }, {"gqa::attend_backward: options.softcap = -1"});
  static const std::vector<float> short_sinks(hq - 1, 0.5f);
  expect_rejects([](call_args& a) { a.opt.sinks = short_sinks; }, {"gqa::attend_backward: options.sinks.size() = 3"});
  expect_rejects([](call_args& a) { a.opt.dsinks = dsinks; },
                 {"gqa::attend_backward: options.dsinks.size() = 4", "needs options.sinks"});
  static std::vector<float> short_dsinks(hq - 1);
  expect_rejects(
      [](call_args& a) {
        a.opt.sinks = per_head;
        a.opt.dsinks = short_dsinks;
      },
      {"gqa::attend_backward: options.dsinks.size() = 3", "must equal hq = 4"});
  // dsinks inside an input or a gradient; a gradient over the sinks or the slopes the call reads.
  float* q_data = q_buf.data();
  expect_rejects(
      [q_data](call_args& a) {
        a.opt.sinks = per_head;
        a.opt.dsinks = std::span<float>(q_data + 3, hq);
      },
      {"gqa::attend_backward: options.dsinks", "overlaps q"});
  expect_rejects(
      [this](call_args& a) {
        a.opt.sinks = per_head;
        a.opt.dsinks = std::span<float>(grads.data() + dq_size + 5, hq);
      },
      {"gqa::attend_backward: options.dsinks", "overlaps dk"});
  expect_rejects([this](call_args& a) { a.opt.sinks = std::span<const float>(grads.data() + 2, hq); },
                 {"gqa::attend_backward: dq", "overlaps options.sinks"});
  expect_rejects([this](call_args& a) { a.opt.alibi_slopes = std::span<const float>(grads.data() + dq_size + dk_size, hq); },
                 {"gqa::attend_backward: dv", "overlaps options.alibi_slopes"});
  EXPECT_TRUE(std::all_of(dsinks.begin(), dsinks.end(), [](float x) { return std::isfinite(x); }));
}

TEST_F(backward_errors_test, gradients_alias_nothing) {
  float* q_data = q_buf.data();
  expect_rejects([q_data](call_args& a) { a.dq.data = q_data; }, {"gqa::attend_backward: dq", "overlaps q"});
  float* dout_data = dout_buf.data();
  expect_rejects([dout_data](call_args& a) { a.dv.data = dout_data; }, {"gqa::attend_backward: dv", "overlaps dout"});
  // The LSE read from inside dk's memory.
  expect_rejects([this](call_args& a) { a.lse = std::span<const float>(grads.data() + dq_size + 8, lse_buf.size()); },
                 {"gqa::attend_backward: dk", "overlaps lse"});
  // dk's last float is dv's first: one shared float is an overlap.
  expect_rejects([this](call_args& a) { a.dv.data = grads.data() + dq_size + dk_size - 1; },
                 {"gqa::attend_backward: dk", "overlaps dv"});
}

// bf16 inputs and gradients: the same checks, with overlaps found byte for byte across element sizes (a
// bf16 gradient over the float LSE or dsinks), before any work.
TEST(backward_errors_16_bit, named_before_any_work) {
  using gqa::bf16;
  const bf16 half(0.5f), sentinel(k_sentinel);
  std::vector<bf16> q(static_cast<std::size_t>(b * sq * hq * d), half), k(static_cast<std::size_t>(b * skv * hkv * d), half);
  std::vector<bf16> v(static_cast<std::size_t>(b * skv * hkv * dv), half), o(static_cast<std::size_t>(b * sq * hq * dv), half);
  std::vector<bf16> dout(o.size(), half);
  const std::size_t nq = q.size(), nk = k.size(), nv = v.size();
  std::vector<bf16> grads(nq + nk + nv, sentinel);
  std::vector<float> lse(static_cast<std::size_t>(b * hq * sq), 0.3f);
  static const std::vector<float> sinks(hq, 0.5f);
  struct args {
    gqa::tensor_view<const bf16> q, k, v, o, dout;
    std::span<const float> lse;
    gqa::tensor_view<bf16> dq, dk, dv;
    gqa::attention_options opt;
  };
  auto valid = [&] {
    return args{gqa::bshd<const bf16>(q.data(), b, sq, hq, d),     gqa::bshd<const bf16>(k.data(), b, skv, hkv, d),
                gqa::bshd<const bf16>(v.data(), b, skv, hkv, dv),  gqa::bshd<const bf16>(o.data(), b, sq, hq, dv),
                gqa::bshd<const bf16>(dout.data(), b, sq, hq, dv), lse,
                gqa::bshd(grads.data(), b, sq, hq, d),             gqa::bshd(grads.data() + nq, b, skv, hkv, d),
                gqa::bshd(grads.data() + nq + nk, b, skv, hkv, dv), {}};
  };
  auto expect_rejects = [&](const std::function<void(args&)>& breaker, const std::vector<std::string>& parts) {
    args a = valid();
    breaker(a);
    expect_invalid(
        [&] {
          gqa::attend_backward(a.q, a.k, a.v, a.o, a.dout, a.lse, a.dq, a.dk, a.dv, gqa::head_map::uniform(hq, hkv), a.opt);
        },
        parts);
    EXPECT_TRUE(std::all_of(grads.begin(), grads.end(), [&](bf16 x) { return float(x) == k_sentinel; }))
        << "attend_backward wrote a gradient before rejecting the call";
  };
  expect_rejects([](args& a) { a.dv.d = dv - 1; }, {"gqa::attend_backward: dv.d = 5: must equal v.d = 6"});
  expect_rejects([](args& a) { a.lse = a.lse.first(5); }, {"gqa::attend_backward: lse.size() = 5", "b*hq*sq = 24"});
  expect_rejects([&](args& a) { a.dk.data = k.data() + 3; }, {"gqa::attend_backward: dk", "overlaps k"});
  // The float LSE read from inside dq's bf16 elements (its first float is dq's elements 2 and 3).
  expect_rejects([&](args& a) { a.lse = std::span<const float>(reinterpret_cast<const float*>(grads.data() + 2), lse.size()); },
                 {"gqa::attend_backward: dq", "overlaps lse"});
  // dsinks (hq floats) over bf16 elements 4 to 11 of dv.
  expect_rejects(
      [&](args& a) {
        a.opt.sinks = sinks;
        a.opt.dsinks = std::span<float>(reinterpret_cast<float*>(grads.data() + nq + nk + 4), hq);
      },
      {"gqa::attend_backward: options.dsinks", "overlaps dv"});
}

// attend_backward over a ragged batch: the dense checks on the packed views, plus b = 1, no kv_lengths, the
// offsets, and no gradient over the offsets the call reads; nothing written before the error.
TEST_F(backward_errors_test, ragged_batch) {
  // The fixture's buffers as two sequences packed: queries 4 + 2 = b·sq = 6 rows, keys 3 + 7 = b·skv = 10.
  const index_t tq = b * sq, tk = b * skv;
  std::vector<std::int32_t> cu_q = {0, 4, tq}, cu_k = {0, 3, tk};
  std::vector<float> lse(static_cast<std::size_t>(hq * tq), 0.3f);
  auto packed = [&](call_args& a) {
    a.q = gqa::thd<const float>(q_buf.data(), tq, hq, d);
    a.k = gqa::thd<const float>(k_buf.data(), tk, hkv, d);
    a.v = gqa::thd<const float>(v_buf.data(), tk, hkv, dv);
    a.o = gqa::thd<const float>(o_buf.data(), tq, hq, dv);
    a.dout = gqa::thd<const float>(dout_buf.data(), tq, hq, dv);
    a.lse = lse;
    a.dq = gqa::thd(grads.data(), tq, hq, d);
    a.dk = gqa::thd(grads.data() + dq_size, tk, hkv, d);
    a.dv = gqa::thd(grads.data() + dq_size + dk_size, tk, hkv, dv);
  };
  auto rejects = [&](const std::function<void(call_args&, std::vector<std::int32_t>&, std::vector<std::int32_t>&)>& breaker,
                     const std::vector<std::string>& parts) {
    call_args a = valid();
    packed(a);
    auto cq = cu_q, ck = cu_k;
    breaker(a, cq, ck);
    expect_invalid(
        [&] {
          gqa::attend_backward(a.q, a.k, a.v, a.o, a.dout, a.lse, a.dq, a.dk, a.dv, a.map, gqa::varlen{cq, ck}, a.opt);
        },
        parts);
    EXPECT_TRUE(std::all_of(grads.begin(), grads.end(), [](float x) { return x == k_sentinel; }))
        << "attend_backward(varlen) wrote a gradient before rejecting the call";
  };
  using cu = std::vector<std::int32_t>;
  rejects([](call_args& a, cu&, cu&) { a.q.b = 2; }, {"gqa::attend_backward(varlen): q.b = 2: must be 1"});
  static const std::vector<index_t> lengths = {3};
  rejects([](call_args& a, cu&, cu&) { a.opt.kv_lengths = lengths; },
          {"gqa::attend_backward(varlen): options.kv_lengths.size() = 1: must be 0 for a ragged batch"});
  rejects([](call_args& a, cu&, cu&) { a.lse = a.lse.first(5); }, {"gqa::attend_backward(varlen): lse.size() = 5"});
  rejects([](call_args&, cu& q, cu&) { q[1] = 7; }, {"gqa::attend_backward(varlen): seqs.cu_seqlens_q[1] = 7"});
  rejects([](call_args&, cu&, cu& k) { k.back() = 9; }, {"seqs.cu_seqlens_k[2] = 9: the last offset must equal k.s = 10"});
  rejects([](call_args&, cu&, cu& k) { k.pop_back(); },
          {"gqa::attend_backward(varlen): seqs.cu_seqlens_k.size() = 2: must equal seqs.cu_seqlens_q.size() = 3"});
  rejects([](call_args& a, cu&, cu&) { a.dv.data = a.dk.data + 1; }, {"gqa::attend_backward(varlen): dk", "overlaps dv"});
  // The key offsets inside dk's memory (the call would write them while it reads them): rejected, dk untouched.
  std::vector<float> dk_region(dk_size, k_sentinel);
  const std::int32_t offs[3] = {0, 3, static_cast<std::int32_t>(tk)};
  std::memcpy(dk_region.data() + 5, offs, sizeof(offs));
  const std::span<const std::int32_t> cu_in_dk(reinterpret_cast<const std::int32_t*>(dk_region.data() + 5), 3);
  const std::vector<float> before = dk_region;
  call_args a = valid();
  packed(a);
  a.dk = gqa::thd(dk_region.data(), tk, hkv, d);
  expect_invalid(
      [&] {
        gqa::attend_backward(a.q, a.k, a.v, a.o, a.dout, a.lse, a.dq, a.dk, a.dv, a.map, gqa::varlen{cu_q, cu_in_dk}, a.opt);
      },
      {"gqa::attend_backward(varlen): seqs.cu_seqlens_k (data = ", "overlaps dk, which the call writes while it reads"});
  EXPECT_EQ(std::memcmp(before.data(), dk_region.data(), before.size() * sizeof(float)), 0);
  // The valid call runs and writes every gradient.
  call_args ok = valid();
  packed(ok);
  gqa::attend_backward(ok.q, ok.k, ok.v, ok.o, ok.dout, ok.lse, ok.dq, ok.dk, ok.dv, ok.map, gqa::varlen{cu_q, cu_k}, ok.opt);
  for (const float x : grads) EXPECT_TRUE(std::isfinite(x) && x != k_sentinel);
}

}  // namespace
