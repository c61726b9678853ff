// tests/support/explicit_attend.hpp: gqa::attend<isa::X> compiled with X's flags, callable from a TU
// without ISA flags (tests/unit/dispatch_test.cpp). tests/CMakeLists.txt generates one TU per ISA that
// defines explicit_attend_<isa>() through run_attend<isa::X>; the case is plain data, so no gqa type
// crosses between TUs of different ABI namespaces (Note [ABI namespace] in gqa/config.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include <gqa/attention.hpp>

namespace gqa::test {

/// One attention call in BSHD layout: a uniform head map unless `alloc` (query heads per KV head) is set.
struct attend_case {
  std::int64_t b, sq, skv, hq, hkv, d, dv;
  bool causal;
  const float *q, *k, *v;
  const std::int64_t* kv_lengths;  // b entries, or nullptr
  const int* alloc;                // hkv entries, or nullptr
  int threads;
};

// Defined in the generated TU of each ISA the test binary is built with (GQA_ISA_TU_<ISA>).
void explicit_attend_scalar(const attend_case& c, float* o, float* lse);
void explicit_attend_avx2(const attend_case& c, float* o, float* lse);
void explicit_attend_avx512(const attend_case& c, float* o, float* lse);
void explicit_attend_neon(const attend_case& c, float* o, float* lse);

namespace {
/// Runs c through gqa::attend<Isa> with attention_options::isa = opt_isa, writing o (b·sq·hq·dv floats)
/// and lse (b·hq·sq floats).
template <class Isa>
[[maybe_unused]] void run_attend(const attend_case& c, float* o, float* lse, std::string_view opt_isa = {}) {
  gqa::attention_options opt;
  opt.causal = c.causal;
  opt.num_threads = c.threads;
  opt.isa = opt_isa;
  if (c.kv_lengths) opt.kv_lengths = {c.kv_lengths, static_cast<std::size_t>(c.b)};
  opt.lse = {lse, static_cast<std::size_t>(c.b * c.hq * c.sq)};
  const gqa::head_map map = c.alloc ? gqa::head_map::from_allocation({c.alloc, static_cast<std::size_t>(c.hkv)})
                                    : gqa::head_map::uniform(c.hq, c.hkv);
  gqa::attend<Isa>(gqa::bshd<const float>(c.q, c.b, c.sq, c.hq, c.d), gqa::bshd<const float>(c.k, c.b, c.skv, c.hkv, c.d),
                   gqa::bshd<const float>(c.v, c.b, c.skv, c.hkv, c.dv), gqa::bshd<float>(o, c.b, c.sq, c.hq, c.dv),
                   map, opt);
}
}  // namespace

}  // namespace gqa::test
