// bench/compare/report.hpp: gqa-compare's results and their renderings: the Markdown tables (stdout and
// table.md), compare.json, compare.csv and the gnuplot data files. Invariant: every rendering prints each
// number from the same field with a fixed number of decimals, so the CI check can compare them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "measure.hpp"
#include "model.hpp"

namespace gqa_compare {

/// One table row: the scheme, its closed-form costs and its measurement.
struct scheme_result {
  scheme s;
  std::int64_t flops = 0;
  std::int64_t kv_bytes_per_token = 0;
  std::int64_t params = 0;
  std::int64_t extra_params = 0;
  int kv_used = 0;         // KV heads serving at least one query head in the last call
  measurement m;
  time_stats t;            // seconds; zeros when m.error is set
  double speedup = 0;      // MHA's median / this median; 0 when either is missing
  // --train: the backward's seconds, the step's (forward + backward of each call) and its speed-up vs MHA.
  time_stats t_bwd, t_step;
  double step_speedup = 0;
  bool timed() const { return m.error.empty() && !m.seconds.empty(); }
  bool trained() const { return timed() && m.backward_seconds.size() == m.seconds.size(); }
};

/// One configuration's table.
struct config_result {
  layer_config c;
  bool train = false;  // --train: rows carry the backward and step times
  std::vector<scheme_result> rows;
  std::vector<std::string> skipped;  // schemes that do not exist for this H, with the reason
  std::string plot_file;             // "<name>.png" once rendered, else empty
  std::string plot_error;            // why there is no plot
};

/// The run as a whole.
struct run_info {
  std::string version;        // gqa's version
  std::string isa;            // the ISA measured with
  std::string isa_reason;     // "best supported by this CPU" or "forced by --isa"
  std::string built_isas;     // space-separated
  std::string supported_isas; // space-separated, of the built ones
  int threads = 1;
  std::string runtime;        // gqa::runtime_info(): what a call without an explicit ISA runs here
  std::string cpu;            // model name, if known
  std::string out_dir;        // absolute
  std::string started;        // local time, ISO 8601
  double seconds = 0;         // wall time of the measurements
};

/// "vit-b16: ViT-B/16 encoder layer: H = 12, d = 64 (D = 768), batch 8, Sq = 197, Skv = 197, ..." (one line).
std::string describe(const layer_config& c);
/// The heading line, the Markdown table and its notes (allocations, fallbacks, errors, skipped schemes).
std::string format_table(const config_result& r);
/// Every table, preceded by one line about the run.
std::string format_report(const run_info& info, const std::vector<config_result>& results);

/// Write the files; throw std::runtime_error naming the file on an I/O error.
void write_text(const std::string& path, const std::string& text);
std::string to_json(const run_info& info, const std::vector<config_result>& results);
std::string to_csv(const std::vector<config_result>& results);
/// Tab-separated gnuplot input of one configuration (see scripts/plot_compare.gp for the columns).
std::string to_plot_data(const config_result& r);
/// "KDGQA [4,5,3]" style allocation string.
std::string allocation_string(const std::vector<int>& alloc, const char* sep = ",");

}  // namespace gqa_compare
