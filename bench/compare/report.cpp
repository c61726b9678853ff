// bench/compare/report.cpp: renders gqa-compare's results (see report.hpp). Times are printed in
// milliseconds: 3 decimals in the table, 6 in JSON/CSV; speed-ups 2 and 4 decimals; GFLOP 3 decimals in
// the table, exact integer FLOPs in JSON/CSV.
#include "report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <stdexcept>

namespace gqa_compare {

namespace {

std::string fixed(double x, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, x);
  return buf;
}

std::string ms(double seconds, int decimals) { return fixed(seconds * 1e3, decimals); }

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (const char ch : s) {
    const auto u = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (u < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", u);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (const char ch : s) out += ch == '"' ? std::string("\"\"") : std::string(1, ch);
  return out + "\"";
}

// Pads a Markdown table's cells to equal column widths (numbers right-aligned).
std::string markdown(const std::vector<std::vector<std::string>>& rows, const std::vector<bool>& right) {
  std::vector<std::size_t> width(rows.front().size(), 3);
  for (const auto& row : rows)
    for (std::size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  std::string out;
  for (std::size_t r = 0; r < rows.size(); ++r) {
    out += "|";
    for (std::size_t i = 0; i < rows[r].size(); ++i) {
      const std::string pad(width[i] - rows[r][i].size(), ' ');
      out.append(" ").append(right[i] && r > 0 ? pad + rows[r][i] : rows[r][i] + pad).append(" |");
    }
    out += "\n";
    if (r == 0) {
      out += "|";
      for (std::size_t i = 0; i < width.size(); ++i)
        out += (right[i] ? std::string(width[i] + 1, '-') + ":" : ":" + std::string(width[i] + 1, '-')) + "|";
      out += "\n";
    }
  }
  return out;
}

}  // namespace

std::string allocation_string(const std::vector<int>& alloc, const char* sep) {
  std::string out = "[";
  for (std::size_t i = 0; i < alloc.size(); ++i) out.append(i ? sep : "").append(std::to_string(alloc[i]));
  return out + "]";
}

std::string describe(const layer_config& c) {
  return c.name + ": " + c.description + ": H = " + std::to_string(c.heads) + ", d = " + std::to_string(c.head_dim) +
         " (D = " + std::to_string(model_dim(c)) + "), batch " + std::to_string(c.batch) +
         ", Sq = " + std::to_string(c.seq_q) + ", Skv = " + std::to_string(c.seq_kv) + ", " +
         (c.causal ? "causal" : "non-causal") + (c.decode ? " decode" : " prefill") + ", K/V " + to_string(c.dtype) +
         "; KDGQA/DGQA/PGQA/WGQA at Hkv = " + std::to_string(c.hkv_ref) + "; " + std::to_string(c.reps) +
         " timed calls after " + std::to_string(c.warmup) + " warm-up";
}

std::string format_table(const config_result& r) {
  std::vector<std::vector<std::string>> rows = {{"scheme", "Hq", "Hkv", "KV used", "GFLOP", "KV B/token",
                                                 "attn params", "median ms", "min-max ms", "speed-up"}};
  std::vector<bool> right = {false, true, true, true, true, true, true, true, true, true};
  if (r.train) {
    // The forward's columns above are forward_train's; the step is forward + backward of each call.
    for (const char* h : {"bwd median ms", "step median ms", "bwd/fwd", "step speed-up"}) {
      rows.front().push_back(h);
      right.push_back(true);
    }
  }
  std::string notes;
  for (const scheme_result& x : r.rows) {
    const bool t = x.timed();
    rows.push_back({x.s.name, std::to_string(x.s.hq), std::to_string(x.s.hkv), std::to_string(x.kv_used),
                    fixed(static_cast<double>(x.flops) * 1e-9, 3), std::to_string(x.kv_bytes_per_token),
                    std::to_string(x.params), t ? ms(x.t.median, 3) : "n/a",
                    t ? ms(x.t.min, 3) + "-" + ms(x.t.max, 3) : "n/a",
                    t && x.speedup > 0 ? fixed(x.speedup, 2) + "x" : "n/a"});
    if (r.train) {
      const bool b = x.trained();
      rows.back().insert(rows.back().end(),
                         {b ? ms(x.t_bwd.median, 3) : "n/a", b ? ms(x.t_step.median, 3) : "n/a",
                          b && x.t.median > 0 ? fixed(x.t_bwd.median / x.t.median, 2) : "n/a",
                          b && x.step_speedup > 0 ? fixed(x.step_speedup, 2) + "x" : "n/a"});
    }
    if (x.s.kind == scheme_kind::kdgqa || x.s.kind == scheme_kind::dgqa)
      notes += "  " + x.s.name + " allocation (query heads per KV head): " + allocation_string(x.m.allocation) +
               (x.m.status.empty() ? "" : ", " + x.m.status) + "\n";
    if (!x.m.error.empty()) notes += "  " + x.s.name + ": " + x.m.error + "\n";
  }
  for (const scheme_result& x : r.rows)
    if (x.s.kind == scheme_kind::kdgqa) notes += "  " + key_heads_note(r.c.hkv_ref) + "\n";
  for (const std::string& s : r.skipped) notes += "  not applicable: " + s + "\n";
  return "== " + describe(r.c) + "\n\n" + markdown(rows, right) + (notes.empty() ? "" : "\n" + notes);
}

std::string format_report(const run_info& info, const std::vector<config_result>& results) {
  std::string out = "gqa-compare (gqa " + info.version + "): ISA " + info.isa + " (" + info.isa_reason + "; built: " +
                    info.built_isas + "; this CPU runs: " + info.supported_isas + "), " +
                    std::to_string(info.threads) + " thread" + (info.threads == 1 ? "" : "s") +
                    (info.cpu.empty() ? "" : ", " + info.cpu) + "\n";
  if (!info.runtime.empty()) out += "gqa::runtime_info(): " + info.runtime + "\n";
  if (!results.empty() && results.front().train) {
    const kv_dtype t = results.front().c.dtype;
    out += "Training step (--train";
    if (t != kv_dtype::f32) out += ", Q/K/V/O, dO and the gradients in " + to_string(t);
    out += "): \"median ms\" is gqa::forward_train, \"bwd\" gqa::backward of the same call, "
           "\"step\" their sum per call; speed-ups are MHA's median over the scheme's.\n";
  }
  for (const config_result& r : results) out += "\n" + format_table(r);
  return out;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  f.close();
  if (!f) throw std::runtime_error("cannot write " + path);
}

std::string to_json(const run_info& info, const std::vector<config_result>& results) {
  std::string j = "{\n";
  j += "  \"tool\": \"gqa-compare\",\n";
  j += "  \"gqa_version\": " + json_string(info.version) + ",\n";
  j += "  \"isa\": " + json_string(info.isa) + ",\n";
  j += "  \"isa_reason\": " + json_string(info.isa_reason) + ",\n";
  j += "  \"built_isas\": " + json_string(info.built_isas) + ",\n";
  j += "  \"cpu_supported_isas\": " + json_string(info.supported_isas) + ",\n";
  j += "  \"threads\": " + std::to_string(info.threads) + ",\n";
  j += "  \"runtime_info\": " + json_string(info.runtime) + ",\n";
  j += "  \"cpu\": " + json_string(info.cpu) + ",\n";
  j += "  \"started\": " + json_string(info.started) + ",\n";
  j += "  \"measure_seconds\": " + fixed(info.seconds, 3) + ",\n";
  j += std::string("  \"train\": ") + (!results.empty() && results.front().train ? "true" : "false") + ",\n";
  j += "  \"configurations\": [";
  for (std::size_t ci = 0; ci < results.size(); ++ci) {
    const config_result& r = results[ci];
    const layer_config& c = r.c;
    j += ci ? ",\n    {\n" : "\n    {\n";
    j += "      \"name\": " + json_string(c.name) + ",\n";
    j += "      \"description\": " + json_string(c.description) + ",\n";
    j += "      \"heads\": " + std::to_string(c.heads) + ",\n";
    j += "      \"head_dim\": " + std::to_string(c.head_dim) + ",\n";
    j += "      \"model_dim\": " + std::to_string(model_dim(c)) + ",\n";
    j += "      \"batch\": " + std::to_string(c.batch) + ",\n";
    j += "      \"seq_q\": " + std::to_string(c.seq_q) + ",\n";
    j += "      \"seq_kv\": " + std::to_string(c.seq_kv) + ",\n";
    j += std::string("      \"causal\": ") + (c.causal ? "true" : "false") + ",\n";
    j += std::string("      \"decode\": ") + (c.decode ? "true" : "false") + ",\n";
    j += "      \"hkv_ref\": " + std::to_string(c.hkv_ref) + ",\n";
    j += "      \"kv_dtype\": " + json_string(to_string(c.dtype)) + ",\n";
    j += "      \"reps\": " + std::to_string(c.reps) + ",\n";
    j += "      \"warmup\": " + std::to_string(c.warmup) + ",\n";
    j += "      \"plot\": " + (r.plot_file.empty() ? std::string("null") : json_string(r.plot_file)) + ",\n";
    j += "      \"plot_error\": " + (r.plot_error.empty() ? std::string("null") : json_string(r.plot_error)) + ",\n";
    j += "      \"not_applicable\": [";
    for (std::size_t i = 0; i < r.skipped.size(); ++i) j += (i ? ", " : "") + json_string(r.skipped[i]);
    j += "],\n      \"schemes\": [";
    for (std::size_t si = 0; si < r.rows.size(); ++si) {
      const scheme_result& x = r.rows[si];
      const bool t = x.timed();
      auto time = [&](double s) { return t ? ms(s, 6) : std::string("null"); };
      j += si ? ",\n        {" : "\n        {";
      j += "\"scheme\": " + json_string(x.s.name) + ", \"variant\": " + json_string(x.s.variant);
      j += ", \"hq\": " + std::to_string(x.s.hq) + ", \"hkv\": " + std::to_string(x.s.hkv);
      j += ", \"kv_heads_input\": " + std::to_string(x.s.kv_in);
      j += ", \"kv_heads_used\": " + std::to_string(x.kv_used);
      j += ", \"allocation\": " + allocation_string(x.m.allocation, ", ");
      j += ", \"flops\": " + std::to_string(x.flops);
      j += ", \"kv_bytes_per_token\": " + std::to_string(x.kv_bytes_per_token);
      j += ", \"attn_params\": " + std::to_string(x.params);
      j += ", \"extra_params\": " + std::to_string(x.extra_params);
      j += ", \"time_ms\": {\"median\": " + time(x.t.median) + ", \"min\": " + time(x.t.min) +
           ", \"q1\": " + time(x.t.q1) + ", \"q3\": " + time(x.t.q3) + ", \"max\": " + time(x.t.max) + "}";
      j += ", \"samples_ms\": [";
      for (std::size_t i = 0; i < x.m.seconds.size(); ++i) j += (i ? ", " : "") + ms(x.m.seconds[i], 6);
      j += "], \"speedup_vs_mha\": " + (t && x.speedup > 0 ? fixed(x.speedup, 4) : std::string("null"));
      if (r.train) {
        const bool b = x.trained();
        auto bt = [&](double s) { return b ? ms(s, 6) : std::string("null"); };
        j += ", \"backward_ms\": {\"median\": " + bt(x.t_bwd.median) + ", \"min\": " + bt(x.t_bwd.min) +
             ", \"max\": " + bt(x.t_bwd.max) + "}";
        j += ", \"step_ms\": {\"median\": " + bt(x.t_step.median) + ", \"min\": " + bt(x.t_step.min) +
             ", \"max\": " + bt(x.t_step.max) + "}";
        j += ", \"backward_samples_ms\": [";
        for (std::size_t i = 0; i < x.m.backward_seconds.size(); ++i)
          j += (i ? ", " : "") + ms(x.m.backward_seconds[i], 6);
        j += "], \"step_speedup_vs_mha\": " + (b && x.step_speedup > 0 ? fixed(x.step_speedup, 4) : std::string("null"));
      }
      j += ", \"status\": " + (x.m.status.empty() ? std::string("null") : json_string(x.m.status));
      j += ", \"error\": " + (x.m.error.empty() ? std::string("null") : json_string(x.m.error)) + "}";
    }
    j += "\n      ]\n    }";
  }
  j += "\n  ]\n}\n";
  return j;
}

std::string to_csv(const std::vector<config_result>& results) {
  const bool train = !results.empty() && results.front().train;
  std::string out =
      "config,scheme,variant,hq,hkv,kv_heads_used,allocation,flops,kv_bytes_per_token,attn_params,extra_params,"
      "median_ms,min_ms,q1_ms,q3_ms,max_ms,speedup_vs_mha,status,kv_dtype";
  out += train ? ",backward_median_ms,step_median_ms,step_speedup_vs_mha\n" : "\n";
  for (const config_result& r : results)
    for (const scheme_result& x : r.rows) {
      const bool t = x.timed();
      auto time = [&](double s) { return t ? ms(s, 6) : std::string(); };
      const std::string status = !x.m.error.empty() ? "error: " + x.m.error : x.m.status;
      out += csv_field(r.c.name) + "," + csv_field(x.s.name) + "," + x.s.variant + "," + std::to_string(x.s.hq) + "," +
             std::to_string(x.s.hkv) + "," + std::to_string(x.kv_used) + "," + allocation_string(x.m.allocation, " ") +
             "," + std::to_string(x.flops) + "," + std::to_string(x.kv_bytes_per_token) + "," +
             std::to_string(x.params) + "," + std::to_string(x.extra_params) + "," + time(x.t.median) + "," +
             time(x.t.min) + "," + time(x.t.q1) + "," + time(x.t.q3) + "," + time(x.t.max) + "," +
             (t && x.speedup > 0 ? fixed(x.speedup, 4) : std::string()) + "," + csv_field(status) + "," +
             to_string(r.c.dtype);
      if (train) {
        const bool b = x.trained();
        out += "," + (b ? ms(x.t_bwd.median, 6) : std::string()) + "," + (b ? ms(x.t_step.median, 6) : std::string()) +
               "," + (b && x.step_speedup > 0 ? fixed(x.step_speedup, 4) : std::string());
      }
      out += "\n";
    }
  return out;
}

std::string to_plot_data(const config_result& r) {
  std::string out = "# index\tscheme\tmedian_ms\tmin_ms\tmax_ms\tkv_bytes_per_token\tspeedup_vs_mha\n";
  int i = 0;
  for (const scheme_result& x : r.rows) {
    const bool t = x.timed();
    auto time = [&](double s) { return t ? ms(s, 6) : std::string("NaN"); };
    out += std::to_string(i++) + "\t" + x.s.name + "\t" + time(x.t.median) + "\t" + time(x.t.min) + "\t" +
           time(x.t.max) + "\t" + std::to_string(x.kv_bytes_per_token) + "\t" +
           (t && x.speedup > 0 ? fixed(x.speedup, 4) : std::string("NaN")) + "\n";
  }
  return out;
}

}  // namespace gqa_compare
