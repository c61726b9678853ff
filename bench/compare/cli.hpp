// bench/compare/cli.hpp: gqa-compare's command line: parsing and validation into run options.
// Invariant: parse_args() either returns options whose every configuration is valid to run, or throws
// usage_error with a message naming the offending argument and its value (main exits 2).
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "model.hpp"

namespace gqa_compare {

/// A bad command line: the message names the argument and its value.
class usage_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct run_options {
  std::vector<layer_config> configs;  // in run order, overrides applied, hkv_ref resolved
  std::string out_dir = "gqa-compare-out";
  std::string isa;   // empty: the best ISA this CPU supports
  int threads = 0;   // 0: all cores
  bool plot = true;  // false with --no-plot
  bool train = false;  // --train: time forward_train + backward (a training step) per scheme
  bool help = false;
};

/// Parses argv (argv[0] is the program name). Throws usage_error.
run_options parse_args(int argc, const char* const* argv);

/// The --help text.
std::string usage_text();

}  // namespace gqa_compare
