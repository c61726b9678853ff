// Non-finite inputs outside the core (docs/design.md, "Non-finite inputs"): the opt-in
// attention_options::check_finite of gqa::attend() and gqa::forward(), and the naive reference itself,
// which the per-ISA nonfinite_suite trusts to say where NaN belongs.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include <gqa/attention.hpp>
#include <gqa/reference/attention.hpp>
#include <gqa/variants/policy.hpp>
#include <gqa/variants.hpp>

#include "support/data.hpp"
#include "support/expect.hpp"

namespace {

using gqa::index_t;
using gqa::test::expect_invalid;

constexpr float k_nan = std::numeric_limits<float>::quiet_NaN();
constexpr float k_inf = std::numeric_limits<float>::infinity();
constexpr float k_sentinel = 7.0f;
constexpr index_t b = 2, sq = 3, skv = 5, hq = 4, hkv = 2, d = 8, dv = 6;

struct buffers {
  std::vector<float> q = gqa::test::random_floats(static_cast<std::size_t>(b * sq * hq * d), 1);
  std::vector<float> k = gqa::test::random_floats(static_cast<std::size_t>(b * skv * hkv * d), 2);
  std::vector<float> v = gqa::test::random_floats(static_cast<std::size_t>(b * skv * hkv * dv), 3);
  std::vector<float> o = std::vector<float>(static_cast<std::size_t>(b * sq * hq * dv), k_sentinel);
  gqa::head_map map = gqa::head_map::uniform(hq, hkv);

  gqa::tensor_view<float> qv() { return gqa::bshd(q.data(), b, sq, hq, d); }
  gqa::tensor_view<float> kv() { return gqa::bshd(k.data(), b, skv, hkv, d); }
  gqa::tensor_view<float> vv() { return gqa::bshd(v.data(), b, skv, hkv, dv); }
  gqa::tensor_view<float> ov() { return gqa::bshd(o.data(), b, sq, hq, dv); }
  void attend(const gqa::attention_options& opt) { gqa::attend(qv(), kv(), vv(), ov(), map, opt); }
  bool output_untouched() const {
    for (const float x : o)
      if (x != k_sentinel) return false;
    return true;
  }
};

gqa::attention_options checked() {
  gqa::attention_options opt;
  opt.check_finite = true;
  return opt;
}

// check_finite names the first non-finite element (tensor, [batch, position, head, dim], value) of q, then
// k, then v, before any work (the output is untouched).
TEST(check_finite, names_the_first_non_finite_element) {
  {
    buffers x;
    x.qv()(1, 2, 3, 7) = k_nan;
    x.qv()(1, 2, 3, 5) = k_inf;  // earlier in [b][s][h][d] order: the one named
    x.kv()(0, 0, 0, 0) = k_nan;  // q comes first
    expect_invalid([&] { x.attend(checked()); }, {"gqa::attend", "q[1, 2, 3, 5] = inf", "check_finite"});
    EXPECT_TRUE(x.output_untouched());
  }
  {
    buffers x;
    x.kv()(1, 4, 1, 2) = -k_inf;
    x.vv()(0, 1, 0, 0) = k_nan;  // k comes before v
    expect_invalid([&] { x.attend(checked()); }, "k[1, 4, 1, 2] = -inf");
    EXPECT_TRUE(x.output_untouched());
  }
  {
    buffers x;
    x.vv()(0, 3, 1, 5) = k_nan;
    expect_invalid([&] { x.attend(checked()); }, "v[0, 3, 1, 5] = nan");
    EXPECT_TRUE(x.output_untouched());
  }
  {  // through a policy's forward(), before the policy's own work
    buffers x;
    x.vv()(1, 0, 0, 1) = k_inf;
    gqa::gqa_policy p;
    expect_invalid([&] { gqa::forward(p, x.qv(), x.kv(), x.vv(), x.ov(), checked()); }, "v[1, 0, 0, 1] = inf");
    EXPECT_TRUE(x.output_untouched());
  }
}

// Only what the call reads is checked: the padding past kv_lengths may hold anything; without the option
// nothing is checked (the call runs and its NaN rows follow the rules).
TEST(check_finite, ignores_padding_and_is_off_by_default) {
  buffers x;
  for (index_t c = 0; c < d; ++c) x.kv()(0, 4, 1, c) = k_nan;
  for (index_t c = 0; c < dv; ++c) x.vv()(1, 3, 0, c) = k_inf;
  const std::vector<index_t> lengths = {4, 3};
  auto opt = checked();
  opt.kv_lengths = lengths;
  EXPECT_NO_THROW(x.attend(opt));
  for (const float y : x.o) EXPECT_TRUE(std::isfinite(y));
  opt.kv_lengths = {};
  expect_invalid([&] { x.attend(opt); }, "k[0, 4, 1, 0] = nan");
  opt.check_finite = false;
  EXPECT_NO_THROW(x.attend(opt));
}

// The reference follows the same rules as the core (it is the oracle of nonfinite_suite): NaN in a visible
// K element makes every row that sees the key NaN (LSE NaN) and no other; a NaN in V beyond a row's causal
// horizon leaves that row finite; +inf scores give NaN, a row of −inf scores NaN; a row with no visible
// key is zeros with LSE −inf even when its Q is NaN.
TEST(reference, follows_the_non_finite_rules) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  const auto kv_of_q = gqa::test::uniform_kv_of_q(hq, hkv);
  {
    buffers x;
    x.kv()(0, 2, 1, 3) = k_nan;
    x.vv()(1, 4, 0, 2) = k_nan;  // key 4: causal, seen by position 2 only
    const auto r = gqa::reference::attention(x.qv(), x.kv(), x.vv(), kv_of_q, scale, true);
    for (index_t h = 0; h < hq; ++h)
      for (index_t i = 0; i < sq; ++i) {
        const bool sees_k = kv_of_q[static_cast<std::size_t>(h)] == 1 && i + (skv - sq) >= 2;  // batch 0
        EXPECT_EQ(std::isnan(r.log_sum_exp(0, h, i)), sees_k) << "batch 0, head " << h << ", pos " << i;
        const bool sees_v = kv_of_q[static_cast<std::size_t>(h)] == 0 && i == sq - 1;  // batch 1
        EXPECT_TRUE(std::isfinite(r.log_sum_exp(1, h, i)));
        EXPECT_EQ(std::isnan(r.out(1, i, h, 2)), sees_v) << "batch 1, head " << h << ", pos " << i;
        EXPECT_TRUE(std::isfinite(r.out(1, i, h, 1)));
      }
  }
  {
    buffers x;
    for (index_t c = 0; c < d; ++c) x.qv()(0, 0, 0, c) = 0.0f;
    x.qv()(0, 0, 0, 0) = 1.0f;
    x.kv()(0, 1, 0, 0) = k_inf;  // score +inf for row (0, 0, 0): NaN
    for (index_t j = 0; j < skv; ++j) x.kv()(1, j, 0, 0) = std::fabs(x.kv()(1, j, 0, 0)) + 0.25f;
    x.qv()(1, 0, 0, 0) = -k_inf;  // every score of row (1, 0, 0) −inf: NaN
    const auto r = gqa::reference::attention(x.qv(), x.kv(), x.vv(), kv_of_q, scale, false);
    EXPECT_TRUE(std::isnan(r.log_sum_exp(0, 0, 0)));
    EXPECT_TRUE(std::isnan(r.out(0, 0, 0, 0)));
    EXPECT_TRUE(std::isnan(r.log_sum_exp(1, 0, 0)));
    EXPECT_TRUE(std::isfinite(r.log_sum_exp(1, 1, 0)));
  }
  {
    buffers x;
    x.qv()(1, 0, 2, 0) = k_nan;
    const std::vector<index_t> lengths = {skv, 0};
    const auto r = gqa::reference::attention(x.qv(), x.kv(), x.vv(), kv_of_q, scale, false, lengths);
    EXPECT_EQ(r.log_sum_exp(1, 2, 0), -std::numeric_limits<double>::infinity());
    EXPECT_EQ(r.out(1, 0, 2, 0), 0.0);
  }
}

// The core through gqa::attend without an ISA (the baseline: scalar in the sanitizer build, which runs the
// per-ISA core suites on AVX2 and AVX-512 only): a +inf score before a NaN score in the same row. The max
// pass may drop the NaN and find a max below +inf, so the softmax's exp2 sees +inf − m (Note [softmax
// exp2]); the row must be NaN, the rows that do not read the two keys must stay finite, and nothing
// undefined may happen (UBSan: the scalar pow2i once converted +inf to an integer here; the fuzzer found
// it).
TEST(core_baseline, a_nan_score_after_an_infinite_one_keeps_the_row_nan) {
  buffers x;
  for (index_t i = 0; i < sq; ++i)
    for (index_t h = 0; h < 2; ++h) x.qv()(0, i, h, 0) = 1.0f;  // heads 0, 1: KV head 0
  x.kv()(0, 0, 0, 0) = k_inf;                                      // key 0: score +inf
  x.kv()(0, 1, 0, 1) = k_nan;                                      // key 1: score NaN
  x.attend(gqa::attention_options{});
  for (index_t ib = 0; ib < b; ++ib)
    for (index_t i = 0; i < sq; ++i)
      for (index_t h = 0; h < hq; ++h) {
        const bool poisoned = ib == 0 && h < 2;
        for (index_t c = 0; c < dv; ++c)
          EXPECT_EQ(std::isnan(x.ov()(ib, i, h, c)), poisoned) << "batch " << ib << ", pos " << i << ", head " << h;
      }
}

}  // namespace
