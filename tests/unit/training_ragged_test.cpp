// Training through every registered policy on a ragged batch (gqa::forward_train / gqa::backward with a
// gqa::varlen, gqa/varlen.hpp): sequences of equal lengths give, bit for bit, the dense training step on the
// same buffers (output, LSE, gradients, the sinks' and WGQA's weight gradients); unequal lengths give each
// sequence what a dense training step on that sequence alone gives it (the policies whose plan does not read
// other sequences' keys; dq bit for bit, dK/dV to fp32 rounding: their query ranges differ); the backward
// rejects a call other than its forward's. The policy plumbing is ISA-independent: this TU runs the baseline
// ISA; the ragged core backward is compared on every ISA in suites/backward_suite.hpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include <gqa/gqa.hpp>
#include <gqa/varlen.hpp>

#include "support/data.hpp"
#include "support/expect.hpp"
#include "support/policy_grads.hpp"

namespace {

using gqa::index_t;

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

/// One training step's outputs.
struct step {
  std::vector<float> o, lse, dq, dk, dv, dsinks, wgrad;
  std::vector<gqa::head_map> maps;  // forward_train's
};

const gqa::model_shape k_layer{8, 2, 24, 7};

/// Inputs of b sequences, `nq` and `nk` rows in total: q, k (uneven norms per KV head, so KDGQA and DGQA
/// plan uneven groups), v and dout.
struct data {
  std::vector<float> q, k, v, dout, sinks;
  data(index_t nq, index_t nk, index_t hq, index_t kvh, index_t d)
      : q(gqa::test::random_floats(static_cast<std::size_t>(nq * hq * d), 931)),
        k(gqa::test::random_floats(static_cast<std::size_t>(nk * kvh * d), 932)),
        v(gqa::test::random_floats(static_cast<std::size_t>(nk * kvh * d), 933)),
        dout(gqa::test::random_floats(static_cast<std::size_t>(nq * hq * d), 934)),
        sinks(gqa::test::random_floats(static_cast<std::size_t>(hq), 935)) {
    for (std::size_t i = 0; i < k.size(); ++i)
      k[i] *= 1.0f + static_cast<float>((i / static_cast<std::size_t>(d)) % static_cast<std::size_t>(kvh));
  }
};

/// forward_train then backward through a fresh P on the ragged batch (cu_q, cu_k) of `x`.
template <class P>
step ragged_step(const data& x, const std::vector<index_t>& cu_q, const std::vector<index_t>& cu_k,
                 gqa::attention_options opt) {
  const gqa::variant_heads h = P::heads_for(k_layer);
  const index_t tq = cu_q.back(), tk = cu_k.back(), d = k_layer.d;
  step s{std::vector<float>(static_cast<std::size_t>(tq * h.hq * d)), {}, std::vector<float>(x.q.size()),
         std::vector<float>(x.k.size()), std::vector<float>(x.v.size()), std::vector<float>(x.sinks.size()), {}, {}};
  const gqa::varlen seqs{cu_q, cu_k};
  gqa::with_policy<P>(k_layer, h, [&](P& p) {
    const auto q = gqa::thd<const float>(x.q.data(), tq, h.hq, d);
    const auto k = gqa::thd<const float>(x.k.data(), tk, h.kv_in, d), v = gqa::thd<const float>(x.v.data(), tk, h.kv_in, d);
    const auto saved = gqa::forward_train(p, q, k, v, gqa::thd(s.o.data(), tq, h.hq, d), seqs, opt);
    s.lse = saved.lse;
    s.maps = saved.maps;
    if (!opt.sinks.empty()) opt.dsinks = s.dsinks;
    gqa::backward(p, saved, q, k, v, gqa::thd<const float>(s.o.data(), tq, h.hq, d),
                  gqa::thd<const float>(x.dout.data(), tq, h.hq, d), gqa::thd(s.dq.data(), tq, h.hq, d),
                  gqa::thd(s.dk.data(), tk, h.kv_in, d), gqa::thd(s.dv.data(), tk, h.kv_in, d), seqs, opt);
    s.wgrad = gqa::test::policy_gradients(p);
  });
  return s;
}

/// The same on dense views: b sequences of sq queries and skv keys (kv_lengths as given), the LSE moved to
/// the ragged layout [hq][b·sq].
template <class P>
step dense_step(const data& x, index_t b, index_t sq, index_t skv, gqa::attention_options opt) {
  const gqa::variant_heads h = P::heads_for(k_layer);
  const index_t d = k_layer.d;
  step s{std::vector<float>(static_cast<std::size_t>(b * sq * h.hq * d)), {}, std::vector<float>(x.q.size()),
         std::vector<float>(x.k.size()), std::vector<float>(x.v.size()), std::vector<float>(x.sinks.size()), {}, {}};
  gqa::with_policy<P>(k_layer, h, [&](P& p) {
    const auto q = gqa::bshd<const float>(x.q.data(), b, sq, h.hq, d);
    const auto k = gqa::bshd<const float>(x.k.data(), b, skv, h.kv_in, d);
    const auto v = gqa::bshd<const float>(x.v.data(), b, skv, h.kv_in, d);
    const auto saved = gqa::forward_train(p, q, k, v, gqa::bshd(s.o.data(), b, sq, h.hq, d), opt);
    s.lse.resize(saved.lse.size());
    for (index_t ib = 0; ib < b; ++ib)
      for (index_t hh = 0; hh < h.hq; ++hh)
        for (index_t i = 0; i < sq; ++i)
          s.lse[static_cast<std::size_t>(hh * b * sq + ib * sq + i)] = saved.lse[static_cast<std::size_t>((ib * h.hq + hh) * sq + i)];
    if (!opt.sinks.empty()) opt.dsinks = s.dsinks;
    gqa::backward(p, saved, q, k, v, gqa::bshd<const float>(s.o.data(), b, sq, h.hq, d),
                  gqa::bshd<const float>(x.dout.data(), b, sq, h.hq, d), gqa::bshd(s.dq.data(), b, sq, h.hq, d),
                  gqa::bshd(s.dk.data(), b, skv, h.kv_in, d), gqa::bshd(s.dv.data(), b, skv, h.kv_in, d), opt);
    s.wgrad = gqa::test::policy_gradients(p);
  });
  return s;
}

gqa::attention_options causal_with_sinks(const data& x) {
  gqa::attention_options opt;
  opt.causal = true;
  opt.sinks = x.sinks;
  return opt;
}

// Three sequences of 7 queries and 19 keys: the ragged step is the dense step on the same buffers, bit for bit.
TEST(training_ragged, equal_lengths_are_the_dense_step) {
  gqa::for_each_variant([&](auto t) {
    using P = typename decltype(t)::type;
    SCOPED_TRACE(std::string(P::name));
    const gqa::variant_heads h = P::heads_for(k_layer);
    const index_t b = 3, sq = 7, skv = 19;
    const data x(b * sq, b * skv, h.hq, h.kv_in, k_layer.d);
    const step r = ragged_step<P>(x, {0, 7, 14, 21}, {0, 19, 38, 57}, causal_with_sinks(x));
    const step dn = dense_step<P>(x, b, sq, skv, causal_with_sinks(x));
    EXPECT_TRUE(same_bits(r.o, dn.o)) << "o";
    EXPECT_TRUE(same_bits(r.lse, dn.lse)) << "lse";
    EXPECT_TRUE(same_bits(r.dq, dn.dq)) << "dq";
    EXPECT_TRUE(same_bits(r.dk, dn.dk)) << "dk";
    EXPECT_TRUE(same_bits(r.dv, dn.dv)) << "dv";
    EXPECT_TRUE(same_bits(r.dsinks, dn.dsinks)) << "dsinks";
    EXPECT_TRUE(same_bits(r.wgrad, dn.wgrad)) << "WGQA's weight gradients";
    for (const float g : r.dq) ASSERT_TRUE(std::isfinite(g));
  });
}

/// max |a − b| <= tol · (1 + max |b|).
void expect_near(const float* a, const float* b, std::size_t n, double tol, const char* name) {
  double err = 0.0, scale = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    err = std::max(err, std::fabs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
  }
  EXPECT_LE(err, tol * (1.0 + scale)) << name;
}

// Unequal sequences (one without queries, one without keys, one longer than a query range): each is what a
// dense step on it alone gives (policies whose plan reads no other sequence; PGQA's noise at the same call
// index); WGQA's weight gradient is the sum of the sequences'. KDGQA and DGQA: the core's ragged step on the
// map they planned.
TEST(training_ragged, unequal_lengths_are_each_sequence_alone) {
  const std::vector<std::pair<index_t, index_t>> lens = {{5, 9}, {0, 4}, {150, 170}, {3, 0}, {12, 7}};
  std::vector<index_t> cu_q = {0}, cu_k = {0};
  for (const auto& [a, c] : lens) {
    cu_q.push_back(cu_q.back() + a);
    cu_k.push_back(cu_k.back() + c);
  }
  gqa::for_each_variant([&](auto t) {
    using P = typename decltype(t)::type;
    if constexpr (std::is_same_v<P, gqa::kdgqa_policy> || std::is_same_v<P, gqa::dgqa_policy>) {
      // Their plan reads every sequence's keys, so no sequence alone gives their step; it is the core's
      // ragged step on the map they chose: attend(varlen) and attend_backward(varlen) on it, bit for bit.
      SCOPED_TRACE(std::string(P::name));
      const gqa::variant_heads h = P::heads_for(k_layer);
      const index_t d = k_layer.d, tq = cu_q.back(), tk = cu_k.back();
      const data x(tq, tk, h.hq, h.kv_in, d);
      gqa::attention_options opt = causal_with_sinks(x);
      const step r = ragged_step<P>(x, cu_q, cu_k, opt);
      ASSERT_EQ(r.maps.size(), 1u);
      EXPECT_NE(r.maps[0], gqa::head_map::uniform(h.hq, h.kv_in)) << "keys with uneven norms plan uneven groups";
      const gqa::varlen seqs{cu_q, cu_k};
      std::vector<float> o(r.o.size()), lse(r.lse.size()), dq(r.dq.size()), dk(r.dk.size()), dv(r.dv.size());
      std::vector<float> dsinks(r.dsinks.size());
      const auto q = gqa::thd<const float>(x.q.data(), tq, h.hq, d);
      const auto k = gqa::thd<const float>(x.k.data(), tk, h.kv_in, d), v = gqa::thd<const float>(x.v.data(), tk, h.kv_in, d);
      opt.lse = lse;
      gqa::attend(q, k, v, gqa::thd(o.data(), tq, h.hq, d), r.maps[0], seqs, opt);
      opt.lse = {};
      opt.dsinks = dsinks;
      gqa::attend_backward(q, k, v, gqa::thd<const float>(o.data(), tq, h.hq, d),
                           gqa::thd<const float>(x.dout.data(), tq, h.hq, d), lse, gqa::thd(dq.data(), tq, h.hq, d),
                           gqa::thd(dk.data(), tk, h.kv_in, d), gqa::thd(dv.data(), tk, h.kv_in, d), r.maps[0], seqs, opt);
      EXPECT_TRUE(same_bits(r.o, o)) << "o";
      EXPECT_TRUE(same_bits(r.lse, lse)) << "lse";
      EXPECT_TRUE(same_bits(r.dq, dq)) << "dq";
      EXPECT_TRUE(same_bits(r.dk, dk)) << "dk";
      EXPECT_TRUE(same_bits(r.dv, dv)) << "dv";
      EXPECT_TRUE(same_bits(r.dsinks, dsinks)) << "dsinks";
    } else {
      SCOPED_TRACE(std::string(P::name));
      const gqa::variant_heads h = P::heads_for(k_layer);
      const index_t d = k_layer.d;
      const data x(cu_q.back(), cu_k.back(), h.hq, h.kv_in, d);
      gqa::attention_options opt;
      opt.causal = true;
      const step r = ragged_step<P>(x, cu_q, cu_k, opt);
      std::vector<double> wsum(r.wgrad.size(), 0.0);
      for (std::size_t i = 0; i < lens.size(); ++i) {
        const auto [nq, nk] = lens[i];
        if (nq == 0 || nk == 0) continue;  // their gradients: the core's zeros (backward_suite)
        SCOPED_TRACE("sequence " + std::to_string(i));
        const auto qo = static_cast<std::size_t>(cu_q[i] * h.hq * d), ko = static_cast<std::size_t>(cu_k[i] * h.kv_in * d);
        data xi(0, 0, h.hq, h.kv_in, d);
        xi.q.assign(x.q.begin() + static_cast<std::ptrdiff_t>(qo), x.q.begin() + static_cast<std::ptrdiff_t>(qo + nq * h.hq * d));
        xi.dout.assign(x.dout.begin() + static_cast<std::ptrdiff_t>(qo),
                       x.dout.begin() + static_cast<std::ptrdiff_t>(qo + nq * h.hq * d));
        xi.k.assign(x.k.begin() + static_cast<std::ptrdiff_t>(ko), x.k.begin() + static_cast<std::ptrdiff_t>(ko + nk * h.kv_in * d));
        xi.v.assign(x.v.begin() + static_cast<std::ptrdiff_t>(ko), x.v.begin() + static_cast<std::ptrdiff_t>(ko + nk * h.kv_in * d));
        const step di = dense_step<P>(xi, 1, nq, nk, opt);
        EXPECT_EQ(std::memcmp(r.o.data() + qo, di.o.data(), di.o.size() * sizeof(float)), 0) << "o";
        EXPECT_EQ(std::memcmp(r.dq.data() + qo, di.dq.data(), di.dq.size() * sizeof(float)), 0) << "dq";
        expect_near(r.dk.data() + ko, di.dk.data(), di.dk.size(), 1e-5, "dk");
        expect_near(r.dv.data() + ko, di.dv.data(), di.dv.size(), 1e-5, "dv");
        for (std::size_t j = 0; j < wsum.size(); ++j) wsum[j] += di.wgrad[j];
      }
      std::vector<float> wf(wsum.begin(), wsum.end());
      expect_near(r.wgrad.data(), wf.data(), wf.size(), 1e-5, "WGQA's weight gradients");
    }
  });
}

// The ragged backward checks its call against its forward's, before any work.
TEST(training_ragged, backward_names_a_different_call) {
  gqa::gqa_policy p;
  const index_t hq = 4, hkv = 2, d = 8, tq = 6, tk = 10;
  const data x(tq, tk, hq, hkv, d);
  std::vector<float> o(x.q.size()), dq(x.q.size(), 7.0f), dk(x.k.size(), 7.0f), dv(x.v.size(), 7.0f);
  const std::vector<index_t> cu_q = {0, 4, 6}, cu_k = {0, 3, 10}, other_k = {0, 5, 10};
  const auto q = gqa::thd<const float>(x.q.data(), tq, hq, d), k = gqa::thd<const float>(x.k.data(), tk, hkv, d);
  const auto v = gqa::thd<const float>(x.v.data(), tk, hkv, d), ov = gqa::thd<const float>(o.data(), tq, hq, d);
  const auto dov = gqa::thd<const float>(x.dout.data(), tq, hq, d);
  const auto dqv = gqa::thd(dq.data(), tq, hq, d), dkv = gqa::thd(dk.data(), tk, hkv, d), dvv = gqa::thd(dv.data(), tk, hkv, d);
  const auto saved = gqa::forward_train(p, q, k, v, gqa::thd(o.data(), tq, hq, d), gqa::varlen{cu_q, cu_k});
  EXPECT_EQ(saved.lse.size(), static_cast<std::size_t>(hq * tq));
  gqa::test::expect_invalid([&] { gqa::backward(p, saved, q, k, v, ov, dov, dqv, dkv, dvv, gqa::varlen{cu_q, other_k}); },
                            {"gqa::backward(varlen): seqs.cu_seqlens_k[1] = 5: must equal the forward's (3)"});
  gqa::test::expect_invalid([&] { gqa::backward(p, saved, q, k, v, ov, dov, dqv, dkv, dvv); },
                            {"gqa::backward: saved: from a forward_train on a ragged batch"});
  gqa::attention_options causal;
  causal.causal = true;
  gqa::test::expect_invalid(
      [&] { gqa::backward(p, saved, q, k, v, ov, dov, dqv, dkv, dvv, gqa::varlen{cu_q, cu_k}, causal); },
      {"gqa::backward(varlen): options.causal = true: must equal the forward's (false)"});
  const auto dense_saved = gqa::forward_train(p, gqa::bshd<const float>(x.q.data(), 1, tq, hq, d),
                                              gqa::bshd<const float>(x.k.data(), 1, tk, hkv, d),
                                              gqa::bshd<const float>(x.v.data(), 1, tk, hkv, d), gqa::bshd(o.data(), 1, tq, hq, d));
  gqa::test::expect_invalid(
      [&] { gqa::backward(p, dense_saved, q, k, v, ov, dov, dqv, dkv, dvv, gqa::varlen{cu_q, cu_k}); },
      {"gqa::backward(varlen): saved: from a forward_train on dense views"});
  for (const auto* g : {&dq, &dk, &dv})
    for (const float y : *g) ASSERT_EQ(y, 7.0f) << "a gradient was written before the call was rejected";
}

}  // namespace
