// tests/support/explicit_attend.hpp: gqa::attend<isa::X>, and gqa::forward_train<isa::X> + gqa::backward<isa::X>,
// compiled with X's flags, callable from a TU without ISA flags (tests/unit/dispatch_test.cpp).
// tests/CMakeLists.txt generates one TU per ISA that defines explicit_attend_<isa>() and explicit_train_<isa>()
// through run_attend<isa::X> and run_train<isa::X>; the case is plain data, so no gqa type crosses between
// TUs of different ABI namespaces (Note [ABI namespace] in gqa/config.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include <gqa/attention.hpp>
#include <gqa/variants/policy.hpp>

namespace gqa::test {

/// One attention call in BSHD layout: a uniform head map unless `alloc` (query heads per KV head) is set.
struct attend_case {
  std::int64_t b, sq, skv, hq, hkv, d, dv;
  bool causal;
  const float *q, *k, *v;
  const std::int64_t* kv_lengths;  // b entries, or nullptr
  const int* alloc;                // hkv entries, or nullptr
  int threads;
  const float* dout;               // b·sq·hq·dv floats: ∂L/∂o for run_train
  bool bf16 = false;               // run_attend: Q, K, V, O as bf16 (q, k, v rounded; o widened back)
};

// Defined in the generated TU of each ISA the test binary is built with (GQA_ISA_TU_<ISA>).
void explicit_attend_scalar(const attend_case& c, float* o, float* lse);
void explicit_attend_avx2(const attend_case& c, float* o, float* lse);
void explicit_attend_avx512(const attend_case& c, float* o, float* lse);
void explicit_attend_neon(const attend_case& c, float* o, float* lse);
void explicit_train_scalar(const attend_case& c, float* o, float* grads);
void explicit_train_avx2(const attend_case& c, float* o, float* grads);
void explicit_train_avx512(const attend_case& c, float* o, float* grads);
void explicit_train_neon(const attend_case& c, float* o, float* grads);

namespace {
/// The options and head map of case c.
inline gqa::attention_options options_of(const attend_case& c, std::string_view opt_isa) {
  gqa::attention_options opt;
  opt.causal = c.causal;
  opt.num_threads = c.threads;
  opt.isa = opt_isa;
  if (c.kv_lengths) opt.kv_lengths = std::span<const std::int64_t>(c.kv_lengths, static_cast<std::size_t>(c.b));
  return opt;
}
inline gqa::head_map map_of(const attend_case& c) {
  return c.alloc ? gqa::head_map::from_allocation({c.alloc, static_cast<std::size_t>(c.hkv)})
                 : gqa::head_map::uniform(c.hq, c.hkv);
}

/// Runs c through gqa::attend<Isa> with attention_options::isa = opt_isa, writing o (b·sq·hq·dv floats)
/// and lse (b·hq·sq floats).
template <class Isa>
[[maybe_unused]] void run_attend(const attend_case& c, float* o, float* lse, std::string_view opt_isa = {}) {
  gqa::attention_options opt = options_of(c, opt_isa);
  opt.lse = {lse, static_cast<std::size_t>(c.b * c.hq * c.sq)};
  const gqa::head_map map = map_of(c);
  if (c.bf16) {  // the bf16 tiles where the CPU has AMX-BF16 (options.bf16_products, on by default)
    const auto narrow = [](const float* x, std::int64_t n) {
      std::vector<gqa::bf16> r(static_cast<std::size_t>(n));
      for (std::size_t i = 0; i < r.size(); ++i) r[i] = gqa::bf16(x[i]);
      return r;
    };
    const auto q16 = narrow(c.q, c.b * c.sq * c.hq * c.d), k16 = narrow(c.k, c.b * c.skv * c.hkv * c.d),
               v16 = narrow(c.v, c.b * c.skv * c.hkv * c.dv);
    std::vector<gqa::bf16> o16(static_cast<std::size_t>(c.b * c.sq * c.hq * c.dv));
    gqa::attend<Isa>(gqa::bshd<const gqa::bf16>(q16.data(), c.b, c.sq, c.hq, c.d),
                     gqa::bshd<const gqa::bf16>(k16.data(), c.b, c.skv, c.hkv, c.d),
                     gqa::bshd<const gqa::bf16>(v16.data(), c.b, c.skv, c.hkv, c.dv),
                     gqa::bshd<gqa::bf16>(o16.data(), c.b, c.sq, c.hq, c.dv), map, opt);
    for (std::size_t i = 0; i < o16.size(); ++i) o[i] = gqa::to_float(o16[i]);
    return;
  }
  gqa::attend<Isa>(gqa::bshd<const float>(c.q, c.b, c.sq, c.hq, c.d), gqa::bshd<const float>(c.k, c.b, c.skv, c.hkv, c.d),
                   gqa::bshd<const float>(c.v, c.b, c.skv, c.hkv, c.dv), gqa::bshd<float>(o, c.b, c.sq, c.hq, c.dv),
                   map, opt);
}

/// A policy that plans case c's map (uniform or unequal groups).
struct case_policy {
  gqa::head_map map;
  gqa::head_map plan(const gqa::tensor_view<const float>&, const gqa::tensor_view<const float>&) const { return map; }
};

/// Runs c through gqa::forward_train<Isa> and gqa::backward<Isa> (dout = c.dout) with
/// attention_options::isa = opt_isa, writing o (b·sq·hq·dv floats) and grads (dq, then dk, then dv).
template <class Isa>
[[maybe_unused]] void run_train(const attend_case& c, float* o, float* grads, std::string_view opt_isa = {}) {
  const gqa::attention_options opt = options_of(c, opt_isa);
  case_policy policy{map_of(c)};
  const auto q = gqa::bshd<const float>(c.q, c.b, c.sq, c.hq, c.d);
  const auto k = gqa::bshd<const float>(c.k, c.b, c.skv, c.hkv, c.d);
  const auto v = gqa::bshd<const float>(c.v, c.b, c.skv, c.hkv, c.dv);
  const auto saved = gqa::forward_train<Isa>(policy, q, k, v, gqa::bshd<float>(o, c.b, c.sq, c.hq, c.dv), opt);
  float* dq = grads;
  float* dk = dq + c.b * c.sq * c.hq * c.d;
  float* dv = dk + c.b * c.skv * c.hkv * c.d;
  gqa::backward<Isa>(policy, saved, q, k, v, gqa::bshd<const float>(o, c.b, c.sq, c.hq, c.dv),
                     gqa::bshd<const float>(c.dout, c.b, c.sq, c.hq, c.dv), gqa::bshd<float>(dq, c.b, c.sq, c.hq, c.d),
                     gqa::bshd<float>(dk, c.b, c.skv, c.hkv, c.d), gqa::bshd<float>(dv, c.b, c.skv, c.hkv, c.dv), opt);
}
}  // namespace

}  // namespace gqa::test
