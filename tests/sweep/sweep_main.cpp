// tests/sweep/sweep_main.cpp: gqa_sweep, the seeded random sweep of gqa's API against the naive double
// reference (tests/sweep/case.hpp: what a case draws and how it is checked). Every case runs on every ISA
// this build has and this CPU runs. ctest runs it as the tests sweep.<shard> (label `sweep`).
//
//   gqa_sweep [--cases N] [--seed S] [--shard I/N] [--case C] [--isa NAME[,NAME...]] [--list]
//
// Environment (overrides the flags, so `GQA_SWEEP_CASES=10000 ctest -L sweep` is the full sweep):
//   GQA_SWEEP_CASES  number of cases (CI default 2,000; the full sweep is 10,000)
//   GQA_SWEEP_SEED   the seed (default 1); case C of seed S is the same on every machine and ISA
//   GQA_SWEEP_CASE   run only case C (each failure prints this as a one-line reproducer)
// --list prints each case's description instead of running it. Exit status 1 if any case failed.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "sweep/case.hpp"

namespace {

std::optional<long long> env_number(const char* name) {
  const char* s = std::getenv(name);
  if (s == nullptr || *s == '\0') return std::nullopt;
  return std::stoll(s);
}

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "gqa_sweep: " << why
            << "\nusage: gqa_sweep [--cases N] [--seed S] [--shard I/N] [--case C] [--isa NAME[,NAME...]] [--list]\n";
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  long long cases = 2000, seed = 1, shard = 0, shards = 1;
  std::optional<long long> only;
  std::string isa_filter;
  bool list = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(a + " needs a value");
      return argv[++i];
    };
    try {
      if (a == "--cases") cases = std::stoll(value());
      else if (a == "--seed") seed = std::stoll(value());
      else if (a == "--case") only = std::stoll(value());
      else if (a == "--isa") isa_filter = value();
      else if (a == "--list") list = true;
      else if (a == "--shard") {
        const std::string v = value();
        const auto slash = v.find('/');
        if (slash == std::string::npos) usage("--shard takes I/N");
        shard = std::stoll(v.substr(0, slash));
        shards = std::stoll(v.substr(slash + 1));
      } else usage("unknown argument " + a);
    } catch (const std::logic_error&) {
      usage("bad value for " + a);
    }
  }
  if (const auto n = env_number("GQA_SWEEP_CASES")) cases = *n;
  if (const auto n = env_number("GQA_SWEEP_SEED")) seed = *n;
  if (const auto n = env_number("GQA_SWEEP_CASE")) only = *n;
  if (shards < 1 || shard < 0 || shard >= shards) usage("--shard I/N needs 0 <= I < N");

  std::vector<gqa::sweep::runner> isas;
  std::map<std::string, long long> per_isa;
  for (const auto& r : gqa::sweep::all_runners()) {
    const bool wanted = isa_filter.empty() || ("," + isa_filter + ",").find("," + std::string(r.name) + ",") != std::string::npos;
    if (wanted && r.supported()) {
      isas.push_back(r);
      per_isa[std::string(r.name)] = 0;
    }
  }
  if (isas.empty()) usage("no ISA of this build runs on this CPU (or matches --isa)");

  const std::string self = std::filesystem::absolute(argv[0]).string();
  const gqa::sweep::limits lim;
  const auto start = std::chrono::steady_clock::now();
  long long ran = 0, failed = 0, with_injections = 0, long_cases = 0, backward_cases = 0, ragged_backward = 0,
            half_backward = 0;
  std::map<std::string, long long> per_variant, per_type, per_form;
  const long long first = only ? *only : 0, last = only ? *only + 1 : cases;
  for (long long ci = first; ci < last; ++ci) {
    if (ci % shards != shard) continue;
    gqa::sweep::stream_source src(static_cast<std::uint64_t>(seed), static_cast<std::uint64_t>(ci));
    const gqa::sweep::case_spec c = gqa::sweep::draw_case(src, lim);
    if (list) {
      std::cout << "case " << ci << ": " << c.describe() << "\n";
      continue;
    }
    ++ran;
    ++per_variant[gqa::sweep::variant_name(c.variant)];
    ++per_type[std::string("K/V ") + gqa::sweep::k_element_names[static_cast<int>(c.kv)] + (c.qo16 ? " Q/O too" : "")];
    static constexpr const char* form_names[3] = {"dense", "paged", "ragged"};
    ++per_form[std::string(form_names[c.kv_kind]) + " " + gqa::sweep::k_element_names[static_cast<int>(c.kv)] +
               (c.variant < 0 ? " attend" : " forward")];
    with_injections += c.injections.empty() ? 0 : 1;
    long_cases += std::max(c.sq, c.skv) >= 1024 ? 1 : 0;
    backward_cases += c.backward ? 1 : 0;
    ragged_backward += c.backward && c.kv_kind == 2 ? 1 : 0;
    half_backward += gqa::sweep::half_backward(c) ? 1 : 0;
    std::string failure;
    try {
      failure = gqa::sweep::run_and_check(c, isas);
    } catch (const std::exception& e) {
      failure = std::string("exception escaped: ") + e.what();
    }
    if (!failure.empty()) {
      ++failed;
      if (failed <= 10) {
        std::cout << "FAIL case " << ci << ": " << failure << "\n  case: " << c.describe()
                  << "\n  reproduce: GQA_SWEEP_SEED=" << seed << " GQA_SWEEP_CASE=" << ci << " " << self << std::endl;
      }
      continue;
    }
    for (const auto& r : isas) ++per_isa[std::string(r.name)];
  }
  if (list) return 0;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "gqa_sweep: seed " << seed << ", shard " << shard << "/" << shards << " of " << cases << " cases: " << ran
            << " run, " << failed << " failed, in " << secs << " s\n  passed per ISA:";
  for (const auto& [name, n] : per_isa) std::cout << " " << name << " " << n;
  std::cout << "\n  per call:";
  for (const auto& [name, n] : per_variant) std::cout << " " << name << " " << n;
  std::cout << "\n  per element type:";
  for (const auto& [name, n] : per_type) std::cout << " " << name << " " << n << ",";
  std::cout << "\n  per K/V form, element type and call:";
  for (const auto& [name, n] : per_form) std::cout << " " << name << " " << n << ",";
  std::cout << "\n  with NaN/inf/huge/denormal injections: " << with_injections << ", with a sequence >= 1024: " << long_cases
            << ", with the backward: " << backward_cases << " (on a ragged batch: " << ragged_backward
            << ", on 16-bit inputs: " << half_backward << ")" << std::endl;
  return failed == 0 ? 0 : 1;
}
