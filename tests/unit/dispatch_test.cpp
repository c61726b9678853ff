// Run-time ISA dispatch (Note [per-target kernels] in gqa/detail/core/targets.hpp). This TU is compiled
// without ISA flags, like a consumer's (and, alone among the test TUs, without GQA_NO_DISPATCH): for every
// ISA the CPU has, gqa::attend without an ISA, forced to it through attention_options::isa, must give
// bitwise what gqa::attend<isa::X> gives in a TU compiled with X's flags (tests/support/explicit_attend.hpp),
// and so must the training pair gqa::forward_train + gqa::backward; a paged cache and a ragged batch forced
// to X must give bitwise the dense call forced to X (the same keys); the default must be the best ISA; a
// bad override must throw before any work.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include <gqa/gqa.hpp>

#include "support/data.hpp"
#include "support/expect.hpp"
#include "support/explicit_attend.hpp"

namespace {

using gqa::test::attend_case;
using explicit_fn = void (*)(const attend_case&, float*, float*);

/// The explicit entry points compiled with one ISA's flags: attend, and forward_train + backward.
struct explicit_entry {
  explicit_fn attend = nullptr, train = nullptr;
};

/// The explicit entry points compiled with `isa`'s flags, if this test binary has that TU (else null).
explicit_entry explicit_entries(std::string_view isa) {
#if defined(GQA_ISA_TU_AVX512)
  if (isa == "avx512") return {&gqa::test::explicit_attend_avx512, &gqa::test::explicit_train_avx512};
#endif
#if defined(GQA_ISA_TU_AVX2)
  if (isa == "avx2") return {&gqa::test::explicit_attend_avx2, &gqa::test::explicit_train_avx2};
#endif
#if defined(GQA_ISA_TU_NEON)
  if (isa == "neon") return {&gqa::test::explicit_attend_neon, &gqa::test::explicit_train_neon};
#endif
#if defined(GQA_ISA_TU_SCALAR)
  if (isa == "scalar") return {&gqa::test::explicit_attend_scalar, &gqa::test::explicit_train_scalar};
#endif
  (void)isa;
  return {};
}
explicit_fn explicit_for(std::string_view isa) { return explicit_entries(isa).attend; }

struct shape {
  const char* name;
  std::int64_t b, sq, skv, hq, hkv, d, dv;
  bool causal;
  bool padded;             // per-batch kv_lengths
  std::vector<int> alloc;  // unequal groups (empty: uniform)
  int threads;
};

/// Prefill and decode, odd sizes (d not a multiple of any vector width, lengths not multiples of the
/// block), padding, unequal groups with an unused KV head, a decode long enough to split the KV range, and
/// two threads.
std::vector<shape> shapes() {
  return {
      {"prefill_causal_odd", 2, 37, 53, 8, 2, 72, 40, true, false, {}, 1},
      {"prefill_padded_d19", 2, 70, 130, 6, 3, 19, 19, false, true, {}, 1},
      {"decode_unequal_groups", 1, 1, 300, 7, 4, 64, 64, false, false, {3, 0, 1, 3}, 1},
      {"decode_split_kv", 1, 1, gqa::test::reduced ? 2100 : 4200, 8, 2, 128, 128, false, false, {}, 1},
      {"prefill_two_threads", 1, 130, 130, 4, 1, 33, 33, true, false, {}, 2},
  };
}

/// Output and LSE of one call.
struct result {
  std::vector<float> o, lse;
};

struct prepared {
  shape s;
  std::vector<float> q, k, v, dout;
  std::vector<std::int64_t> kv_lengths;
  attend_case c{};

  explicit prepared(const shape& sh) : s(sh) {
    q = gqa::test::random_floats(static_cast<std::size_t>(s.b * s.sq * s.hq * s.d), 11, -2.0f, 2.0f);
    k = gqa::test::random_floats(static_cast<std::size_t>(s.b * s.skv * s.hkv * s.d), 12, -2.0f, 2.0f);
    v = gqa::test::random_floats(static_cast<std::size_t>(s.b * s.skv * s.hkv * s.dv), 13);
    dout = gqa::test::random_floats(static_cast<std::size_t>(s.b * s.sq * s.hq * s.dv), 14);
    for (std::int64_t ib = 0; ib < s.b; ++ib) kv_lengths.push_back(s.skv - 17 * ib - 5);
    c = {s.b, s.sq, s.skv, s.hq, s.hkv, s.d, s.dv, s.causal, q.data(), k.data(), v.data(),
         s.padded ? kv_lengths.data() : nullptr, s.alloc.empty() ? nullptr : s.alloc.data(), s.threads,
         dout.data()};
  }

  result blank() const {
    return {std::vector<float>(static_cast<std::size_t>(s.b * s.sq * s.hq * s.dv), -7.0f),
            std::vector<float>(static_cast<std::size_t>(s.b * s.hq * s.sq), -7.0f)};
  }
  result dispatched(std::string_view opt_isa) const {
    result r = blank();
    gqa::test::run_attend<gqa::isa::dispatch>(c, r.o.data(), r.lse.data(), opt_isa);
    return r;
  }
  result explicit_on(explicit_fn fn) const {
    result r = blank();
    fn(c, r.o.data(), r.lse.data());
    return r;
  }

  // Training: `o` is the forward's output, `lse` holds the gradients (dq, dk, dv).
  result blank_train() const {
    const auto grads = s.b * (s.sq * s.hq * s.d + s.skv * s.hkv * (s.d + s.dv));
    return {std::vector<float>(static_cast<std::size_t>(s.b * s.sq * s.hq * s.dv), -7.0f),
            std::vector<float>(static_cast<std::size_t>(grads), -7.0f)};
  }
  result trained(std::string_view opt_isa) const {
    result r = blank_train();
    gqa::test::run_train<gqa::isa::dispatch>(c, r.o.data(), r.lse.data(), opt_isa);
    return r;
  }
  result explicit_train(explicit_fn fn) const {
    result r = blank_train();
    fn(c, r.o.data(), r.lse.data());
    return r;
  }
};

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

/// Index of the first element whose bits differ, for the failure message.
std::size_t first_difference(const std::vector<float>& a, const std::vector<float>& b) {
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) return i;
  return a.size();
}

void expect_same(const result& got, const result& want, const std::string& what) {
  EXPECT_TRUE(bitwise_equal(got.o, want.o)) << what << ": o differs first at " << first_difference(got.o, want.o);
  EXPECT_TRUE(bitwise_equal(got.lse, want.lse))
      << what << ": lse differs first at " << first_difference(got.lse, want.lse);
}

// The dispatched path forced to each ISA == that ISA compiled with its own flags, bit for bit.
TEST(dispatch, forced_isa_is_bitwise_the_explicit_isa) {
  int compared = 0;
  for (const std::string_view isa : gqa::isa::names_by_preference) {
    const explicit_fn fn = explicit_for(isa);
    // ISAs below this TU's own (scalar on AArch64) are not dispatch targets; see isa::runnable.
    if (fn == nullptr || !gqa::isa::cpu_supports(isa) || !gqa::isa::runnable(isa)) continue;
    for (const shape& s : shapes()) {
      const prepared p(s);
      expect_same(p.dispatched(isa), p.explicit_on(fn), std::string(isa) + " " + s.name);
      ++compared;
    }
  }
  EXPECT_GT(compared, 0) << "no ISA of this test binary runs on this CPU";
}

// The same with bf16 Q, K, V and O, where AVX-512 prefill takes the bf16 tiles on a CPU with AMX-BF16
// (Note [bf16 tiles]): the per-target copy's tiles give the explicit AVX-512 TU's bits.
TEST(dispatch, bf16_forced_isa_is_bitwise_the_explicit_isa) {
  int compared = 0;
  for (const std::string_view isa : gqa::isa::names_by_preference) {
    const explicit_fn fn = explicit_for(isa);
    if (fn == nullptr || !gqa::isa::cpu_supports(isa) || !gqa::isa::runnable(isa)) continue;
    for (const shape& s : shapes()) {
      prepared p(s);
      p.c.bf16 = true;
      expect_same(p.dispatched(isa), p.explicit_on(fn), std::string(isa) + " bf16 " + s.name);
      ++compared;
    }
  }
  EXPECT_GT(compared, 0) << "no ISA of this test binary runs on this CPU";
}

// The same for the training pair: gqa::forward_train and gqa::backward (through attend_backward) forced to
// each ISA == forward_train<isa::X> + backward<isa::X> compiled with X's flags, output and gradients.
TEST(dispatch, backward_forced_isa_is_bitwise_the_explicit_isa) {
  int compared = 0;
  for (const std::string_view isa : gqa::isa::names_by_preference) {
    const explicit_fn fn = explicit_entries(isa).train;
    if (fn == nullptr || !gqa::isa::cpu_supports(isa) || !gqa::isa::runnable(isa)) continue;
    for (const shape& s : shapes()) {
      const prepared p(s);
      const result got = p.trained(isa), want = p.explicit_train(fn);
      EXPECT_TRUE(bitwise_equal(got.o, want.o)) << isa << " " << s.name << ": o differs first at "
                                                << first_difference(got.o, want.o);
      EXPECT_TRUE(bitwise_equal(got.lse, want.lse)) << isa << " " << s.name << ": dq|dk|dv differ first at "
                                                    << first_difference(got.lse, want.lse);
      ++compared;
    }
  }
  EXPECT_GT(compared, 0) << "no ISA of this test binary runs on this CPU";
}

// Without an override (and without GQA_ISA) the call runs the best ISA this CPU supports.
TEST(dispatch, default_is_the_best_supported_isa) {
  if (!gqa::detail::isa_from_environment().empty()) GTEST_SKIP() << "GQA_ISA is set";
  const std::string_view best = gqa::isa::best_runnable();
  for (const std::string_view isa : gqa::isa::names_by_preference) {
    if (isa == best) break;
    EXPECT_FALSE(gqa::isa::runnable(isa) && gqa::isa::cpu_supports(isa)) << isa << " is better than " << best;
  }
  EXPECT_EQ(gqa::isa::resolve({}), best);
#if GQA_DISPATCH_X86 && !GQA_HAS_AVX2
  // No ISA flags here, yet the vector kernels are there.
  EXPECT_TRUE(gqa::isa::runnable("avx2"));
  EXPECT_TRUE(gqa::isa::runnable("avx512"));
  EXPECT_EQ(best, gqa::isa::cpu_supports("avx512") ? "avx512" : gqa::isa::cpu_supports("avx2") ? "avx2" : "scalar");
#endif
  const explicit_fn fn = explicit_for(best);
  if (fn == nullptr) GTEST_SKIP() << "no explicit TU for " << best;
  const explicit_fn train = explicit_entries(best).train;
  for (const shape& s : shapes()) {
    const prepared p(s);
    expect_same(p.dispatched({}), p.explicit_on(fn), std::string("default ") + s.name);
    expect_same(p.trained({}), p.explicit_train(train), std::string("default training ") + s.name);
  }
}

// gqa::runtime_info names the bf16 engine the call would take: AMX tiles (prefill) where the CPU has
// AMX-BF16, else VDPBF16PS (prefill and decode) where it has AVX512-BF16 and is an AMD one, on AVX-512 only
// (Notes [bf16 tiles], [bf16 decode]).
TEST(dispatch, runtime_info_names_the_bf16_engine) {
  const gqa::runtime_report r = gqa::runtime_info();
  const bool avx512 = r.isa == gqa::isa::avx512::name;
  const gqa::isa::cpu_features& f = gqa::isa::cpu();
  EXPECT_EQ(gqa::isa::bf16_dot_fast(), f.avx512_bf16 && gqa::isa::amd_cpu());
  EXPECT_EQ(r.bf16_tiles, avx512 && f.amx_bf16);
  EXPECT_EQ(r.bf16_dot, avx512 && !f.amx_bf16 && f.avx512_bf16 && gqa::isa::amd_cpu());
  const std::string text = r.to_string();
  EXPECT_EQ(text.find("bf16 prefill on AMX tiles") != std::string::npos, r.bf16_tiles) << text;
  EXPECT_EQ(text.find("bf16 prefill and decode on AVX512-BF16") != std::string::npos, r.bf16_dot) << text;
}

// And the int8 decode products: on AVX-512 with AVX512-VNNI, on AVX2 with or without AVX-VNNI (Notes [int8
// decode products], [int8 products without VNNI]); every ISA the CPU can run, through options.isa.
TEST(dispatch, runtime_info_names_the_int8_engine) {
  const gqa::isa::cpu_features& f = gqa::isa::cpu();
  EXPECT_TRUE(!f.avx512_vnni || f.avx512);
  EXPECT_TRUE(!f.avx_vnni || f.avx2_fma);
  for (const std::string_view isa : {gqa::isa::avx512::name, gqa::isa::avx2::name, gqa::isa::scalar::name}) {
    if (!gqa::isa::runnable(isa) || !gqa::isa::cpu_supports(isa)) continue;
    gqa::attention_options opt;
    opt.isa = isa;
    const gqa::runtime_report r = gqa::runtime_info(opt);
    const bool vnni512 = isa == gqa::isa::avx512::name && f.avx512_vnni;
    EXPECT_EQ(r.int8_dot, GQA_X86_CPUID && (vnni512 || isa == gqa::isa::avx2::name)) << isa;
    EXPECT_EQ(r.to_string().find("int8 decode products in integers") != std::string::npos, r.int8_dot) << r.to_string();
  }
}

// gqa::forward without an ISA dispatches too (the policies' default).
TEST(dispatch, forward_defaults_to_dispatch) {
  const prepared p(shapes()[0]);
  const result want = p.dispatched(gqa::isa::resolve({}));
  result got = p.blank();
  gqa::gqa_policy policy;
  gqa::attention_options opt;
  opt.causal = p.s.causal;
  opt.lse = got.lse;
  gqa::forward(policy, gqa::bshd<const float>(p.q.data(), p.s.b, p.s.sq, p.s.hq, p.s.d),
               gqa::bshd<const float>(p.k.data(), p.s.b, p.s.skv, p.s.hkv, p.s.d),
               gqa::bshd<const float>(p.v.data(), p.s.b, p.s.skv, p.s.hkv, p.s.dv),
               gqa::bshd<float>(got.o.data(), p.s.b, p.s.sq, p.s.hq, p.s.dv), opt);
  expect_same(got, want, "forward");
}

/// Case p's keys in a paged cache: pages of 7 slots, each sequence's pages in reverse order of the pool,
/// a spare page, and every unwritten slot NaN (so a slot read by mistake shows in the output).
struct paged_copy {
  static constexpr std::int64_t page = 7;
  std::int64_t max_pages = 0, num_pages = 0;
  std::vector<float> k, v;
  std::vector<std::int32_t> table;
  std::vector<std::int64_t> lengths;

  explicit paged_copy(const prepared& p) {
    const shape& s = p.s;
    max_pages = (s.skv + page - 1) / page;
    num_pages = s.b * max_pages + 1;
    k.assign(static_cast<std::size_t>(num_pages * page * s.hkv * s.d), std::numeric_limits<float>::quiet_NaN());
    v.assign(static_cast<std::size_t>(num_pages * page * s.hkv * s.dv), std::numeric_limits<float>::quiet_NaN());
    for (std::int64_t ib = 0; ib < s.b; ++ib) {
      const std::int64_t len = s.padded ? p.kv_lengths[static_cast<std::size_t>(ib)] : s.skv;
      lengths.push_back(len);
      for (std::int64_t i = 0; i < max_pages; ++i)
        table.push_back(static_cast<std::int32_t>(num_pages - 1 - (ib * max_pages + i)));
      for (std::int64_t j = 0; j < len; ++j) {
        const std::int64_t pg = table[static_cast<std::size_t>(ib * max_pages + j / page)];
        const std::int64_t kr = (pg * page + j % page) * s.hkv, dr = (ib * s.skv + j) * s.hkv;
        std::copy_n(p.k.begin() + dr * s.d, s.hkv * s.d, k.begin() + kr * s.d);
        std::copy_n(p.v.begin() + dr * s.dv, s.hkv * s.dv, v.begin() + kr * s.dv);
      }
    }
  }
  gqa::paged_kv view(const shape& s) const {
    return {gqa::page_pool<const float>(k.data(), num_pages, page, s.hkv, s.d),
            gqa::page_pool<const float>(v.data(), num_pages, page, s.hkv, s.dv), table, max_pages, lengths};
  }
};

/// gqa::attend over case p's keys as a paged cache (policy: nullptr) or through gqa::forward with a
/// policy planning p's map, forced to opt_isa.
result paged_dispatched(const prepared& p, const paged_copy& pc, std::string_view opt_isa, bool through_forward) {
  result r = p.blank();
  gqa::attention_options opt = gqa::test::options_of(p.c, opt_isa);
  opt.kv_lengths = {};
  opt.lse = r.lse;
  const auto q = gqa::bshd<const float>(p.q.data(), p.s.b, p.s.sq, p.s.hq, p.s.d);
  const auto o = gqa::bshd<float>(r.o.data(), p.s.b, p.s.sq, p.s.hq, p.s.dv);
  if (through_forward) {
    gqa::forward(gqa::test::case_policy{gqa::test::map_of(p.c)}, q, pc.view(p.s), o, opt);
  } else {
    gqa::attend(q, pc.view(p.s), o, gqa::test::map_of(p.c), opt);
  }
  return r;
}

/// gqa::attend over case p (b = 1, no padding) as a ragged batch of one sequence, forced to opt_isa.
result ragged_dispatched(const prepared& p, std::string_view opt_isa) {
  result r = p.blank();
  gqa::attention_options opt = gqa::test::options_of(p.c, opt_isa);
  opt.lse = r.lse;  // [hq][total_q] = [b = 1][hq][sq]
  const std::vector<std::int32_t> cu_q{0, static_cast<std::int32_t>(p.s.sq)}, cu_k{0, static_cast<std::int32_t>(p.s.skv)};
  gqa::attend(gqa::thd<const float>(p.q.data(), p.s.sq, p.s.hq, p.s.d), gqa::thd<const float>(p.k.data(), p.s.skv, p.s.hkv, p.s.d),
              gqa::thd<const float>(p.v.data(), p.s.skv, p.s.hkv, p.s.dv), gqa::thd<float>(r.o.data(), p.s.sq, p.s.hq, p.s.dv),
              gqa::test::map_of(p.c), gqa::varlen{cu_q, cu_k}, opt);
  return r;
}

// Paged caches and ragged batches dispatch like attend: forced to each ISA the CPU has, they give bitwise
// the dense call forced to it (which forced_isa_is_bitwise_the_explicit_isa ties to the explicit ISA).
TEST(dispatch, paged_and_ragged_forced_isa_is_bitwise_the_dense_call) {
  int paged = 0, ragged = 0;
  for (const std::string_view isa : gqa::isa::names_by_preference) {
    if (!gqa::isa::cpu_supports(isa) || !gqa::isa::runnable(isa)) continue;
    for (const shape& s : shapes()) {
      const prepared p(s);
      const result dense = p.dispatched(isa);
      const paged_copy pc(p);
      expect_same(paged_dispatched(p, pc, isa, false), dense, std::string(isa) + " paged attend " + s.name);
      expect_same(paged_dispatched(p, pc, isa, true), dense, std::string(isa) + " paged forward " + s.name);
      ++paged;
      if (s.b == 1 && !s.padded) {
        expect_same(ragged_dispatched(p, isa), dense, std::string(isa) + " ragged " + s.name);
        ++ragged;
      }
    }
  }
  EXPECT_GT(paged, 0);
  EXPECT_GT(ragged, 0);
  // A bad override throws before any work, as for attend.
  const prepared p(shapes()[2]);  // b = 1
  const paged_copy pc(p);
  gqa::test::expect_invalid([&] { (void)paged_dispatched(p, pc, "sse9", false); }, {"options.isa = \"sse9\""});
  gqa::test::expect_invalid([&] { (void)paged_dispatched(p, pc, "sse9", true); }, {"options.isa = \"sse9\""});
  gqa::test::expect_invalid([&] { (void)ragged_dispatched(p, "sse9"); }, {"options.isa = \"sse9\""});
}

// KDGQA's and DGQA's key norms run on the dispatched ISA too (Note [dispatched key norms]): on every ISA
// the CPU has, the walk gives bitwise what this TU's own (baseline) copy gives, for fp32, bf16 and int8 K,
// with a head dim that is not a multiple of the walk's 16 lanes and a strided view; and gqa::key_norms
// (which dispatches) gives those bits.
TEST(dispatch, key_norms_are_bitwise_the_same_on_every_isa) {
  constexpr std::int64_t b = 2, s = 37, h = 3, d = 40;
  std::vector<float> k(static_cast<std::size_t>(b * s * h * d));
  std::uint32_t x = 12345;
  for (float& e : k) {
    x = x * 1664525u + 1013904223u;
    e = static_cast<float>(static_cast<std::int32_t>(x >> 8) - (1 << 23)) * 0x1p-21f;  // in [-4, 4)
  }
  const auto kf = gqa::bshd<const float>(k.data(), b, s, h, d);
  std::vector<gqa::bf16> k16(k.size());
  for (std::size_t i = 0; i < k.size(); ++i) k16[i] = gqa::bf16(k[i]);
  const auto kb = gqa::bshd<const gqa::bf16>(k16.data(), b, s, h, d);
  std::vector<std::int8_t> k8(k.size());
  std::vector<float> ks(static_cast<std::size_t>(b * s * h));
  gqa::quantize_q8(kf, gqa::bshd(k8.data(), b, s, h, d), gqa::bshd(ks.data(), b, s, h, 1));
  const gqa::q8_view kq{gqa::bshd<const std::int8_t>(k8.data(), b, s, h, d),
                        gqa::bshd<const float>(ks.data(), b, s, h, 1)};
  // Every other channel of a d = 80 buffer: stride_d 2.
  std::vector<float> wide(static_cast<std::size_t>(b * s * h * 2 * d));
  for (std::size_t i = 0; i < k.size(); ++i) wide[2 * i] = k[i];
  gqa::tensor_view<const float> ks2 = gqa::bshd<const float>(wide.data(), b, s, h, 2 * d);
  ks2.d = d;
  ks2.stride_d = 2;
  using gqa::detail::core::key_norms_on;
  using gqa::detail::core::key_norms_walk;
  using gqa::detail::core::named_target;
  const auto fr = gqa::detail::dense_key_rows<const float>{kf};
  const auto br = gqa::detail::dense_key_rows<const gqa::bf16>{kb};
  const auto qr = gqa::detail::q8_key_rows{kq};
  const auto sr = gqa::detail::dense_key_rows<const float>{ks2};
  const std::vector<double> f0 = key_norms_walk<gqa::isa::native>(b, h, d, 1, fr);
  const std::vector<double> b0 = key_norms_walk<gqa::isa::native>(b, h, d, 1, br);
  const std::vector<double> q0 = key_norms_walk<gqa::isa::native>(b, h, d, 1, qr);
  const std::vector<double> s0 = key_norms_walk<gqa::isa::native>(b, h, d, 2, sr);
  EXPECT_EQ(s0, f0);  // the same floats, read with a stride
  int isas = 0;
  for (const std::string_view isa : gqa::isa::names_by_preference) {
    if (!gqa::isa::cpu_supports(isa) || !gqa::isa::runnable(isa)) continue;
    const named_target on{isa};
    EXPECT_EQ(key_norms_on(on, b, h, d, 1, fr), f0) << isa << " fp32";
    EXPECT_EQ(key_norms_on(on, b, h, d, 1, br), b0) << isa << " bf16";
    EXPECT_EQ(key_norms_on(on, b, h, d, 1, qr), q0) << isa << " int8";
    EXPECT_EQ(key_norms_on(on, b, h, d, 2, sr), f0) << isa << " strided";
    ++isas;
  }
  EXPECT_GT(isas, 0);
  EXPECT_EQ(gqa::key_norms(kf), f0);
  EXPECT_EQ(gqa::key_norms(kb), b0);
  EXPECT_EQ(gqa::key_norms(kq), q0);
}

// A bad override throws gqa::invalid_argument naming it, before any output is written.
TEST(dispatch, override_rejects_unknown_missing_and_unsupported_isas) {
  const prepared p(shapes()[0]);
  auto untouched = [&](std::string_view isa, const std::vector<std::string>& parts) {
    result r = p.blank();
    gqa::test::expect_invalid([&] { gqa::test::run_attend<gqa::isa::dispatch>(p.c, r.o.data(), r.lse.data(), isa); },
                              parts);
    EXPECT_TRUE(bitwise_equal(r.o, p.blank().o)) << isa << ": output written before the throw";
  };
  untouched("sse9", {"options.isa = \"sse9\"", "not an ISA gqa knows", "avx512 avx2 neon scalar"});
  untouched("AVX2", {"options.isa = \"AVX2\"", "not an ISA gqa knows"});
  for (const std::string_view isa : gqa::isa::names_by_preference) {
    if (!gqa::isa::runnable(isa)) {
      untouched(isa, {"options.isa = \"" + std::string(isa) + "\"", "this translation unit has no " + std::string(isa)});
    } else if (!gqa::isa::cpu_supports(isa)) {
      untouched(isa, {"options.isa = \"" + std::string(isa) + "\"", "the running CPU lacks " + std::string(isa)});
    }
  }
  // gqa::forward checks it before the policy plans.
  gqa::attention_options opt;
  opt.isa = "sse9";
  result r = p.blank();
  gqa::gqa_policy policy;
  gqa::test::expect_invalid(
      [&] {
        gqa::forward(policy, gqa::bshd<const float>(p.q.data(), p.s.b, p.s.sq, p.s.hq, p.s.d),
                     gqa::bshd<const float>(p.k.data(), p.s.b, p.s.skv, p.s.hkv, p.s.d),
                     gqa::bshd<const float>(p.v.data(), p.s.b, p.s.skv, p.s.hkv, p.s.dv),
                     gqa::bshd<float>(r.o.data(), p.s.b, p.s.sq, p.s.hq, p.s.dv), opt);
      },
      {"options.isa = \"sse9\""});
  // So do forward_train, backward and attend_backward, before writing anything.
  gqa::test::case_policy cp{gqa::test::map_of(p.c)};
  const auto q = gqa::bshd<const float>(p.q.data(), p.s.b, p.s.sq, p.s.hq, p.s.d);
  const auto k = gqa::bshd<const float>(p.k.data(), p.s.b, p.s.skv, p.s.hkv, p.s.d);
  const auto v = gqa::bshd<const float>(p.v.data(), p.s.b, p.s.skv, p.s.hkv, p.s.dv);
  gqa::test::expect_invalid([&] { (void)gqa::forward_train(cp, q, k, v, gqa::bshd<float>(r.o.data(), p.s.b, p.s.sq, p.s.hq, p.s.dv), opt); },
                            {"options.isa = \"sse9\""});
  result t = p.blank_train();
  gqa::attention_options good;
  good.causal = p.s.causal;
  std::vector<float> lse(static_cast<std::size_t>(p.s.b * p.s.hq * p.s.sq));
  good.lse = lse;
  const auto o = gqa::bshd<float>(t.o.data(), p.s.b, p.s.sq, p.s.hq, p.s.dv);
  const auto saved = gqa::forward_train(cp, q, k, v, o, good);
  float* dq = t.lse.data();
  float* dk = dq + p.s.b * p.s.sq * p.s.hq * p.s.d;
  float* dv = dk + p.s.b * p.s.skv * p.s.hkv * p.s.d;
  const auto dqv = gqa::bshd<float>(dq, p.s.b, p.s.sq, p.s.hq, p.s.d);
  const auto dkv = gqa::bshd<float>(dk, p.s.b, p.s.skv, p.s.hkv, p.s.d);
  const auto dvv = gqa::bshd<float>(dv, p.s.b, p.s.skv, p.s.hkv, p.s.dv);
  const auto dout = gqa::bshd<const float>(p.dout.data(), p.s.b, p.s.sq, p.s.hq, p.s.dv);
  gqa::attention_options bad = good;
  bad.lse = {};
  bad.isa = "sse9";
  gqa::test::expect_invalid([&] { gqa::backward(cp, saved, q, k, v, o, dout, dqv, dkv, dvv, bad); },
                            {"options.isa = \"sse9\""});
  gqa::test::expect_invalid(
      [&] { gqa::attend_backward(q, k, v, o, dout, lse, dqv, dkv, dvv, cp.map, bad); }, {"options.isa = \"sse9\""});
  EXPECT_TRUE(bitwise_equal(t.lse, p.blank_train().lse)) << "gradients written before the throw";
}

// The CPU check on a stand-in CPU that has only this TU's own ISA (this machine may have them all).
TEST(dispatch, override_rejects_an_isa_the_cpu_lacks) {
  constexpr std::string_view own = gqa::isa::native::name;
  auto own_only = [](std::string_view isa) noexcept { return isa == own; };
  int rejected = 0;
  for (const std::string_view isa : gqa::isa::names_by_preference) {
    if (isa == own || !gqa::isa::runnable(isa)) continue;
    gqa::test::expect_invalid([&] { gqa::detail::checked_isa(isa, "GQA_ISA (environment)", own_only); },
                              {"GQA_ISA (environment) = \"" + std::string(isa) + "\"",
                               "the running CPU lacks " + std::string(isa), "(it supports: " + std::string(own) + ")"});
    ++rejected;
  }
#if GQA_DISPATCH_X86 && !GQA_HAS_AVX2
  EXPECT_EQ(rejected, 2) << "avx2 and avx512";
#endif
  EXPECT_EQ(gqa::detail::checked_isa(own, "options.isa", own_only), own);
}

// Run by CTest with GQA_ISA set (tests/CMakeLists.txt): the environment variable picks the ISA.
TEST(dispatch, environment_variable_picks_the_isa) {
  const char* env = std::getenv("GQA_ISA");
  if (env == nullptr || *env == '\0') GTEST_SKIP() << "GQA_ISA is not set";
  EXPECT_EQ(gqa::isa::resolve({}), std::string_view(env));
  EXPECT_EQ(gqa::isa::resolve(gqa::isa::native::name), gqa::isa::native::name) << "options.isa wins over GQA_ISA";
}

}  // namespace
