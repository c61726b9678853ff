// Head sharding and split-KV decode: a call on a slice of KV heads (with the query heads they serve)
// gives bit-identical rows to the full call, so callers can shard heads across processes or ranks; and
// the split-KV decode path (Note [decode split]) is bit-identical for any thread count.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include <gqa/attention.hpp>

namespace {

using gqa::index_t;

std::vector<float> filled(std::size_t n, std::uint32_t seed) {
  std::vector<float> x(n);
  std::uint32_t s = seed * 2654435761u + 1u;
  for (auto& v : x) {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    v = static_cast<float>(s >> 8) * 0x1p-23f - 1.0f;  // [-1, 1)
  }
  return x;
}

struct shapes {
  index_t b, sq, skv, hq, hkv, d;
};

// Full call vs. two calls, each on half of the KV heads and the query heads of their groups.
void check_sharding(const shapes& s, bool causal) {
  auto q = filled(static_cast<std::size_t>(s.b * s.sq * s.hq * s.d), 1);
  auto k = filled(static_cast<std::size_t>(s.b * s.skv * s.hkv * s.d), 2);
  auto v = filled(static_cast<std::size_t>(s.b * s.skv * s.hkv * s.d), 3);
  std::vector<float> full(q.size()), sharded(q.size(), -7.0f);
  gqa::attention_options opt;
  opt.causal = causal;
  gqa::attend(gqa::bshd<const float>(q.data(), s.b, s.sq, s.hq, s.d), gqa::bshd<const float>(k.data(), s.b, s.skv, s.hkv, s.d),
              gqa::bshd<const float>(v.data(), s.b, s.skv, s.hkv, s.d), gqa::bshd(full.data(), s.b, s.sq, s.hq, s.d),
              gqa::head_map::uniform(s.hq, s.hkv), opt);
  const index_t hkv_shard = s.hkv / 2, hq_shard = s.hq / 2;
  for (index_t shard = 0; shard < 2; ++shard) {
    // The same buffers, viewed from the shard's first head: only the head extent and pointer change.
    auto qv = gqa::bshd<const float>(q.data(), s.b, s.sq, s.hq, s.d);
    auto kv = gqa::bshd<const float>(k.data(), s.b, s.skv, s.hkv, s.d);
    auto vv = gqa::bshd<const float>(v.data(), s.b, s.skv, s.hkv, s.d);
    auto ov = gqa::bshd(sharded.data(), s.b, s.sq, s.hq, s.d);
    qv.data += shard * hq_shard * s.d;
    ov.data += shard * hq_shard * s.d;
    kv.data += shard * hkv_shard * s.d;
    vv.data += shard * hkv_shard * s.d;
    qv.h = ov.h = hq_shard;
    kv.h = vv.h = hkv_shard;
    gqa::attend(qv, kv, vv, ov, gqa::head_map::uniform(hq_shard, hkv_shard), opt);
  }
  ASSERT_EQ(0, std::memcmp(full.data(), sharded.data(), full.size() * sizeof(float)));
}

TEST(sharding, kv_head_slices_match_full_call_prefill) { check_sharding({2, 70, 70, 8, 2, 64}, true); }
TEST(sharding, kv_head_slices_match_full_call_decode) { check_sharding({1, 1, 3000, 8, 4, 40}, false); }

// MQA decode with a long cache takes the split-KV path (16 chunks here); compare with a plain
// double-precision loop and check thread counts and a caller's executor give the same bits.
TEST(split_kv, mqa_decode_matches_naive_and_is_thread_invariant) {
  const index_t b = 1, sq = 1, skv = 20000, hq = 4, d = 33;
  auto q = filled(static_cast<std::size_t>(b * sq * hq * d), 4);
  auto k = filled(static_cast<std::size_t>(b * skv * d), 5);
  auto v = filled(static_cast<std::size_t>(b * skv * d), 6);
  auto run = [&](int threads, bool executor) {
    std::vector<float> o(static_cast<std::size_t>(hq * d));
    gqa::attention_options opt;
    opt.num_threads = threads;
    if (executor) {
      // Runs tasks in reverse order: the result must not depend on the order.
      opt.parallel_for = [](index_t n, const std::function<void(index_t)>& task) {
        for (index_t i = n - 1; i >= 0; --i) task(i);
      };
    }
    gqa::attend(gqa::bshd<const float>(q.data(), b, sq, hq, d), gqa::bshd<const float>(k.data(), b, skv, 1, d),
                gqa::bshd<const float>(v.data(), b, skv, 1, d), gqa::bshd(o.data(), b, sq, hq, d),
                gqa::head_map::uniform(hq, 1), opt);
    return o;
  };
  const auto o1 = run(1, false);
  for (const auto& other : {run(2, false), run(3, false), run(0, true)})
    ASSERT_EQ(0, std::memcmp(o1.data(), other.data(), o1.size() * sizeof(float)));

  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  for (index_t h = 0; h < hq; ++h) {
    std::vector<double> s(static_cast<std::size_t>(skv));
    double m = -INFINITY, l = 0.0;
    for (index_t j = 0; j < skv; ++j) {
      double acc = 0.0;
      for (index_t c = 0; c < d; ++c) acc += double(q[static_cast<std::size_t>(h * d + c)]) * k[static_cast<std::size_t>(j * d + c)];
      s[static_cast<std::size_t>(j)] = acc * scale;
      m = std::max(m, acc * scale);
    }
    for (auto& x : s) l += (x = std::exp(x - m));
    for (index_t c = 0; c < d; ++c) {
      double acc = 0.0;
      for (index_t j = 0; j < skv; ++j) acc += s[static_cast<std::size_t>(j)] * v[static_cast<std::size_t>(j * d + c)];
      // Tolerance: fp32 accumulation over 20000 keys in 16 chunks plus the 2-ulp exp2; values are O(0.01).
      EXPECT_NEAR(acc / l, o1[static_cast<std::size_t>(h * d + c)], 2e-6) << "h=" << h << " c=" << c;
    }
  }
}

}  // namespace
