// examples/uptrain/report.hpp: the protocol's results as files: report.md (the tables, the allocations,
// the published results beside ours), runs.csv (one row per run), summary.csv (one row per scheme),
// results.json (everything, including loss curves and allocation traces) and, when gnuplot is
// installed, accuracy.png and loss.png.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "protocol.hpp"

namespace uptrain {

/// Facts about the run printed with the results.
struct run_info {
  std::string started;   ///< local time, ISO 8601
  std::string cpu;       ///< /proc/cpuinfo model name, if known
  std::string isa;       ///< the ISA this binary was compiled for (gqa::isa::native)
  std::string command;   ///< the command line
  int jobs = 1;
};

/// Mean and sample standard deviation (0 for one value), min and max.
struct stats {
  double mean = 0, sd = 0, min = 0, max = 0;
  int n = 0;
};
stats summarise(const std::vector<double>& x);

/// One published result: our scheme id, the name and value in the source.
struct published_entry {
  std::string scheme, their_name;
  double value = 0;
};
/// A published comparison: its entries in the published order (best first).
struct published_claim {
  std::string title, source, their_metric;
  bool compare_loss = false;  ///< compare with our test loss (lower is better) instead of top-1
  std::vector<published_entry> entries;
};
/// The published figures this protocol is compared with (docs/reproduction.md cites their sources).
std::vector<published_claim> published_claims();

/// Renders report.md.
std::string format_report(const run_info& info, const protocol_options& opt, const protocol_result& r);

/// Writes every file into `dir` (created if needed); returns the files written. Throws
/// std::runtime_error naming the file on an I/O error. Plots are skipped, with a note in report.md's
/// place in the returned list, when `plot` is false or gnuplot is not on PATH.
std::vector<std::string> write_outputs(const std::filesystem::path& dir, const run_info& info,
                                       const protocol_options& opt, const protocol_result& r, bool plot);

}  // namespace uptrain
