// bench/bench_table.cpp: `gqa_bench --gqa_table=<file.json>`: turns a JSON result file of gqa_bench into the
// issue's tables (markdown): probes, P1/P2/P3/D1 × T1/T2 per ISA, each policy's overhead, the sweeps.
// Holds a minimal JSON reader (objects, arrays, strings, numbers, NaN/Infinity as Google Benchmark
// writes them), so that no tool beyond the binary itself is needed.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <gqa/variants.hpp>

#include "bench.hpp"

namespace gqa_bench {
namespace {

struct json {
  enum class kind { null, boolean, number, string, array, object } k = kind::null;
  double num = 0;
  std::string str;
  std::vector<json> items;
  std::vector<std::pair<std::string, json>> members;

  const json* get(std::string_view key) const {
    for (const auto& [name, value] : members)
      if (name == key) return &value;
    return nullptr;
  }
};

class json_reader {
 public:
  explicit json_reader(std::string text) : s_(std::move(text)) {}

  json parse() {
    json v = value();
    ws();
    if (i_ != s_.size()) fail("trailing characters");
    return v;
  }

 private:
  [[noreturn]] void fail(const char* what) const {
    throw std::runtime_error("JSON: " + std::string(what) + " at offset " + std::to_string(i_));
  }
  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t')) ++i_;
  }
  bool take(std::string_view word) {
    if (s_.compare(i_, word.size(), word) != 0) return false;
    i_ += word.size();
    return true;
  }
  json value() {
    ws();
    if (i_ >= s_.size()) fail("unexpected end");
    json v;
    const char c = s_[i_];
    if (c == '{') {
      v.k = json::kind::object;
      ++i_;
      ws();
      if (take("}")) return v;
      do {
        ws();
        std::string key = string_body();
        ws();
        if (!take(":")) fail("expected ':'");
        v.members.emplace_back(std::move(key), value());
        ws();
      } while (take(","));
      if (!take("}")) fail("expected '}'");
    } else if (c == '[') {
      v.k = json::kind::array;
      ++i_;
      ws();
      if (take("]")) return v;
      do v.items.push_back(value());
      while ((ws(), take(",")));
      if (!take("]")) fail("expected ']'");
    } else if (c == '"') {
      v.k = json::kind::string;
      v.str = string_body();
    } else if (take("true")) {
      v.k = json::kind::boolean;
      v.num = 1;
    } else if (take("false")) {
      v.k = json::kind::boolean;
    } else if (take("null")) {
    } else {
      v.k = json::kind::number;
      const bool neg = take("-");
      if (take("NaN")) {
        v.num = std::nan("");
      } else if (take("Infinity")) {
        v.num = neg ? -HUGE_VAL : HUGE_VAL;
      } else {
        const std::size_t start = neg ? i_ - 1 : i_;
        while (i_ < s_.size() && std::string_view("0123456789+-.eE").find(s_[i_]) != std::string_view::npos) ++i_;
        if (i_ == start) fail("unexpected character");
        v.num = std::stod(s_.substr(start, i_ - start));
      }
    }
    return v;
  }
  std::string string_body() {
    if (!take("\"")) fail("expected '\"'");
    std::string out;
    while (i_ < s_.size() && s_[i_] != '"') {
      char c = s_[i_++];
      if (c == '\\' && i_ < s_.size()) {
        c = s_[i_++];
        if (c == 'n') c = '\n';
        else if (c == 't') c = '\t';
        else if (c == 'u') {  // names and counters are ASCII; keep a placeholder for anything else
          i_ += 4;
          c = '?';
        }
      }
      out += c;
    }
    if (!take("\"")) fail("unterminated string");
    return out;
  }

  std::string s_;
  std::size_t i_ = 0;
};

/// One result: its counters and time, by the regular part of its name (the library may append
/// "/real_time" etc.; only the first three '/'-separated fields are kept).
using result = std::map<std::string, double>;

std::string regular_name(const std::string& name) {
  std::size_t pos = 0;
  for (int slash = 0; slash < 3; ++slash) {
    pos = name.find('/', slash == 0 ? 0 : pos + 1);
    if (pos == std::string::npos) return name;
  }
  return name.substr(0, pos);
}

std::map<std::string, result> load_results(const json& root) {
  std::map<std::string, result> out;
  const json* list = root.get("benchmarks");
  if (list == nullptr) return out;
  // Single runs are "iteration" entries; with --benchmark_repetitions the "mean" aggregate replaces them.
  for (const bool aggregates : {false, true}) {
    for (const json& b : list->items) {
      const json* name = b.get("run_name") != nullptr ? b.get("run_name") : b.get("name");
      const json* err = b.get("error_occurred");
      const json* run_type = b.get("run_type");
      const json* agg = b.get("aggregate_name");
      if (name == nullptr || (err != nullptr && err->num != 0)) continue;
      const bool is_aggregate = run_type != nullptr && run_type->str == "aggregate";
      if (is_aggregate != aggregates || (is_aggregate && (agg == nullptr || agg->str != "mean"))) continue;
      result r;
      for (const auto& [k, v] : b.members)
        if (v.k == json::kind::number) r[k] = v.num;
      out[regular_name(name->str)] = std::move(r);
    }
  }
  return out;
}

std::string fmt(const char* f, double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, x);
  return buf;
}

double value(const std::map<std::string, result>& all, const std::string& name, const char* counter) {
  const auto it = all.find(name);
  if (it == all.end()) return std::nan("");
  const auto c = it->second.find(counter);
  return c == it->second.end() ? std::nan("") : c->second;
}

/// "185.2 GF/s 97% x3.10" (prefill) or "14.1 GB/s 88% x2.01" (decode); "-" when not measured.
std::string cell(const std::map<std::string, result>& all, const std::string& name, bool decode) {
  const double main = value(all, name, decode ? "GBps" : "GFLOPS");
  if (!std::isfinite(main)) return "-";
  const double frac = value(all, name, decode ? "bw_frac" : "peak_frac");
  const double vs = value(all, name, "vs_eigen");
  std::string s = fmt(decode ? "%.1f GB/s" : "%.1f GF/s", main);
  if (std::isfinite(frac)) s += fmt(" %.0f%%", 100 * frac);
  if (std::isfinite(vs)) s += fmt(" x%.2f", vs);
  return s;
}

const char* isa_order[] = {"scalar", "avx2", "avx512", "neon"};

void print_probes(const std::map<std::string, result>& all) {
  std::cout << "### Probes\n\n| probe | T1 | T2 |\n|---|---|---|\n";
  for (const char* isa : isa_order) {
    const std::string n = "probe/fma_peak/" + std::string(isa);
    if (all.count(n) != 0)
      std::cout << "| fma_peak/" << isa << " | " << fmt("%.1f GFLOP/s", value(all, n, "GFLOPS")) << " | "
                << fmt("%.1f GFLOP/s", value(all, n, "GFLOPS_T2")) << " |\n";
  }
  for (const auto& [n, r] : all)
    if (n.rfind("probe/read_bw/", 0) == 0)
      std::cout << "| " << n.substr(6) << " | " << fmt("%.1f GB/s", value(all, n, "GBps")) << " | "
                << fmt("%.1f GB/s", value(all, n, "GBps_T2")) << " |\n";
  std::cout << "\n";
}

void print_main(const std::map<std::string, result>& all) {
  std::vector<std::string> rows(gqa::variant_names.begin(), gqa::variant_names.end());
  rows.insert(rows.end(), {"eigen", "reference"});
  for (const char* isa : isa_order) {
    std::ostringstream body, overhead;
    bool any = false, any_policy = false;
    for (const std::string& row : rows) {
      std::ostringstream line, pline;
      bool row_any = false, prow_any = false;
      line << "| " << row << " |";
      pline << "| " << row << " |";
      for (main_shape m : main_shapes) {
        for (int t : {1, 2}) {
          // eigen and reference rows use the GQA model's heads.
          const bool variant_row = row != "eigen" && row != "reference";
          const shape s = variant_shape(variant_row ? row : "gqa", make_main_shape(m, t));
          const std::string n = row + "/" + isa + "/" + shape_name(s);
          const std::string c = cell(all, n, m == main_shape::d1);
          row_any = row_any || c != "-";
          line << " " << c << " |";
          const double pf = value(all, n, "policy_frac");
          prow_any = prow_any || std::isfinite(pf);
          pline << " " << (std::isfinite(pf) ? fmt("%.2f%%", 100 * pf) : "-") << " |";
        }
      }
      if (row_any) body << line.str() << "\n";
      if (prow_any) overhead << pline.str() << "\n";
      any = any || row_any;
      any_policy = any_policy || prow_any;
    }
    if (!any) continue;
    std::ostringstream head;
    std::string rule = "|---|";
    head << "| " << isa << " |";
    for (main_shape m : main_shapes)
      for (int t : {1, 2}) {
        head << " " << main_shape_label(m) << " T" << t << " |";
        rule += "---|";
      }
    std::cout << "### " << isa << ": P1/P2/P3 GFLOP/s (peak_frac), D1 GB/s (bw_frac), x = vs_eigen\n\n"
              << head.str() << "\n" << rule << "\n" << body.str() << "\n";
    if (any_policy)
      std::cout << "### " << isa << ": policy_frac (the policy's own steps / the whole call)\n\n"
                << head.str() << "\n" << rule << "\n" << overhead.str() << "\n";
  }
}

void print_sweeps(const std::map<std::string, result>& all) {
  struct sweep {
    const char* title;
    std::vector<shape> shapes;
    bool decode;
  };
  std::vector<sweep> sweeps(4);
  sweeps[0].title = "decode, Skv sweep (gqa, Hq32 Hkv8 D128, T1): GB/s (bw_frac), x = vs_eigen";
  sweeps[0].decode = true;
  for (std::int64_t skv : {128, 512, 2048, 8192, 16384}) sweeps[0].shapes.push_back({1, 32, 8, 128, 1, skv, false, 1});
  sweeps[1].title = "prefill causal, Sq = Skv sweep (gqa, Hq32 Hkv8 D128, T1): GFLOP/s (peak_frac), x = vs_eigen";
  for (std::int64_t n : {128, 512, 2048, 8192}) sweeps[1].shapes.push_back({1, 32, 8, 128, n, n, true, 1});
  sweeps[2].title = "decode, KV-head sweep (gqa, Hq32 D128 Skv8192, T1): GB/s (bw_frac), x = vs_eigen";
  sweeps[2].decode = true;
  for (std::int64_t h : {32, 16, 8, 4, 2, 1}) sweeps[2].shapes.push_back({1, 32, h, 128, 1, 8192, false, 1});
  sweeps[3].title = "prefill causal, KV-head sweep (gqa, Hq32 D128 Sq=Skv=1024, T1): GFLOP/s (peak_frac), x = vs_eigen";
  for (std::int64_t h : {32, 16, 8, 4, 2, 1}) sweeps[3].shapes.push_back({1, 32, h, 128, 1024, 1024, true, 1});
  for (const sweep& w : sweeps) {
    std::ostringstream body;
    bool any = false;
    for (const shape& s : w.shapes) {
      body << "| " << shape_name(s) << " |";
      for (const char* isa : isa_order) {
        const std::string c = cell(all, "gqa/" + std::string(isa) + "/" + shape_name(s), w.decode);
        any = any || c != "-";
        body << " " << c << " |";
      }
      body << "\n";
    }
    if (!any) continue;
    std::cout << "### Sweep: " << w.title << "\n\n| shape |";
    for (const char* isa : isa_order) std::cout << " " << isa << " |";
    std::cout << "\n|---|---|---|---|---|\n" << body.str() << "\n";
  }
}

}  // namespace

int print_table(const std::string& json_path) {
  std::ifstream f(json_path);
  if (!f) {
    std::cerr << "gqa_bench --gqa_table: cannot open " << json_path << "\n";
    return 1;
  }
  std::stringstream text;
  text << f.rdbuf();
  try {
    const json root = json_reader(text.str()).parse();
    const auto all = load_results(root);
    if (all.empty()) {
      std::cerr << "gqa_bench --gqa_table: no benchmark results in " << json_path << "\n";
      return 1;
    }
    print_probes(all);
    print_main(all);
    print_sweeps(all);
  } catch (const std::exception& e) {
    std::cerr << "gqa_bench --gqa_table: " << json_path << ": " << e.what() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace gqa_bench
