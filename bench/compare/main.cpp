// bench/compare/main.cpp: gqa-compare, the grouping-scheme comparison (the README's first command).
// Picks the ISA at run time, measures every scheme of every configuration (progress on stderr), then
// prints the tables and writes table.md, compare.json, compare.csv and one PNG per configuration.
// Exit codes: 0 done, 1 run-time failure (I/O, memory), 2 bad arguments.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <filesystem>
#include <fstream>
#include <new>
#include <string>
#include <string_view>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#include <gqa/isa/select.hpp>
#include <gqa/random.hpp>
#include <gqa/runtime_info.hpp>
#include <gqa/threading/parallel.hpp>
#include <gqa/version.hpp>

#include "cli.hpp"
#include "gqa_compare_plot_script.hpp"
#include "measure.hpp"
#include "model.hpp"
#include "report.hpp"
#include "schemes.hpp"

namespace gqa_compare {
namespace {

namespace fs = std::filesystem;

/// An ISA compiled into this binary: its name and its per-ISA TU's entry point.
struct isa_entry {
  std::string_view name;
  measurement (*measure)(const measure_request&);
};

// GQA_ISA_TU_<ISA> is defined by gqa_add_isa_sources for every ISA in GQA_BUILDABLE_ISAS.
const isa_entry built_isas[] = {
    {"scalar", &measure_scalar},
#if GQA_ISA_TU_AVX2
    {"avx2", &measure_avx2},
#endif
#if GQA_ISA_TU_AVX512
    {"avx512", &measure_avx512},
#endif
#if GQA_ISA_TU_NEON
    {"neon", &measure_neon},
#endif
};

struct exit_error {
  int code;
  std::string message;
};

const isa_entry& choose_isa(const std::string& forced, std::string& reason, std::string& built,
                            std::string& supported) {
  std::vector<std::string_view> names;
  for (const isa_entry& e : built_isas) names.push_back(e.name);
  // Listed best first, as the library prefers them.
  for (const std::string_view isa : gqa::isa::names_by_preference) {
    if (std::find(names.begin(), names.end(), isa) == names.end()) continue;
    // Appends, not `"literal" + std::string&&`: GCC 12 warns falsely (-Wrestrict) on the latter.
    built.append(built.empty() ? "" : " ").append(isa);
    if (gqa::isa::cpu_supports(isa)) supported.append(supported.empty() ? "" : " ").append(isa);
  }
  const std::string_view want = forced.empty() ? gqa::isa::best_supported(names) : std::string_view(forced);
  if (forced.empty()) {
    reason = "the best this CPU supports";
  } else if (std::find(names.begin(), names.end(), want) == names.end()) {
    throw exit_error{2, "--isa = " + forced + ": not built into this binary (built: " + built + ")"};
  } else if (!gqa::isa::cpu_supports(want)) {
    throw exit_error{2, "--isa = " + forced + ": this CPU does not support it (it runs: " + supported + ")"};
  } else {
    reason = "forced by --isa";
  }
  for (const isa_entry& e : built_isas)
    if (e.name == want) return e;
  return built_isas[0];  // scalar: always built and supported
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  return {};
}

std::string local_time_iso() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
#if defined(_WIN32)
  localtime_s(&tm, &now);
#else
  localtime_r(&now, &tm);
#endif
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  return buf;
}

/// Physical memory in bytes, 0 if unknown.
double physical_memory() {
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) return static_cast<double>(pages) * static_cast<double>(page);
#endif
  return 0;
}

/// n floats uniform in [-1, 1), a pure function of (seed, index): SplitMix64 (gqa::random::mix64),
/// two floats per 64-bit draw.
void fill_random(std::vector<float>& x, std::uint64_t seed) {
  std::uint64_t state = gqa::random::mix64(seed);
  for (std::size_t i = 0; i < x.size(); i += 2) {
    state += 0x9e3779b97f4a7c15ULL;
    const std::uint64_t u = gqa::random::mix64(state);
    x[i] = gqa::random::to_unit_float(u) * 2.0f - 1.0f;
    if (i + 1 < x.size()) x[i + 1] = gqa::random::to_unit_float(u << 24) * 2.0f - 1.0f;
  }
}

/// Live progress on stderr: one line rewritten in place on a terminal, one line per scheme otherwise.
class progress {
 public:
  progress() : tty_(isatty_stderr()) {}
  void start(int i, int n, const layer_config& c, const scheme& s) {
    char head[48];
    std::snprintf(head, sizeof head, "[%d/%d] ", i, n);
    line_ = std::string(head) + c.name + " " + s.name + " (hq " + std::to_string(s.hq) + ", hkv " +
            std::to_string(s.hkv) + ") ...";
    if (tty_) std::fprintf(stderr, "\r\033[K%s", line_.c_str());
  }
  void done(const scheme_result& r) {
    char tail[48] = " n/a";
    if (r.timed()) std::snprintf(tail, sizeof tail, " %.3f ms", r.t.median * 1e3);
    if (tty_) {
      std::fprintf(stderr, "\r\033[K%s%s", line_.c_str(), tail);
    } else {
      std::fprintf(stderr, "%s%s\n", line_.c_str(), tail);
    }
    std::fflush(stderr);
  }
  void finish() {
    if (tty_) std::fprintf(stderr, "\r\033[K");
  }

 private:
  static bool isatty_stderr() {
#if defined(__unix__) || defined(__APPLE__)
    return isatty(2) != 0;
#else
    return false;
#endif
  }
  bool tty_;
  std::string line_;
};

/// Measures every scheme of `c`; `counter` numbers the schemes across configurations.
config_result measure_config(const layer_config& c, const isa_entry& isa, int threads, bool train, progress& prog,
                             int& counter, int total) {
  config_result r;
  r.c = c;
  r.train = train;
  const std::vector<scheme> list = compared_schemes(c, &r.skipped);
  const auto n_q = static_cast<std::size_t>(c.batch * c.seq_q * c.heads * c.head_dim);
  const auto n_kv = static_cast<std::size_t>(c.batch * c.seq_kv * c.heads * c.head_dim);
  std::vector<float> q(n_q), k(n_kv), v(n_kv), o(n_q);
  fill_random(q, 1);
  fill_random(k, 2);
  scale_key_heads(k.data(), c.batch, c.seq_kv, c.hkv_ref, c.head_dim);  // KDGQA/DGQA's view: see key_head_scales
  fill_random(v, 3);
  // --train: the output gradient and the input gradients (sized like o, q, k and v).
  std::vector<float> dout(train ? n_q : 0), dq(train ? n_q : 0), dk(train ? n_kv : 0), dv(train ? n_kv : 0);
  fill_random(dout, 4);
  for (const scheme& s : list) {
    prog.start(++counter, total, c, s);
    scheme_result x;
    x.s = s;
    x.flops = attention_flops(c, s);
    x.kv_bytes_per_token = kv_bytes_per_token(c, s);
    x.params = attention_params(c, s);
    x.extra_params = extra_params(c, s);
    measure_request req;
    req.variant = s.variant;
    req.kind = s.kind;
    req.batch = c.batch;
    req.seq_q = c.seq_q;
    req.seq_kv = c.seq_kv;
    req.heads = c.heads;
    req.hq = s.hq;
    req.hkv = s.hkv;
    req.kv_in = s.kv_in;
    req.head_dim = c.head_dim;
    req.causal = c.causal;
    req.threads = threads;
    req.warmup = c.warmup;
    req.reps = c.reps;
    req.seed = 1;
    req.q = q.data();
    req.k = k.data();
    req.v = v.data();
    req.o = o.data();
    req.train = train;
    req.dtype = c.dtype;
    req.dout = dout.data();
    req.dq = dq.data();
    req.dk = dk.data();
    req.dv = dv.data();
    x.m = isa.measure(req);
    x.t = summarize(x.m.seconds);
    if (x.trained()) {
      std::vector<double> step(x.m.seconds.size());
      for (std::size_t i = 0; i < step.size(); ++i) step[i] = x.m.seconds[i] + x.m.backward_seconds[i];
      x.t_bwd = summarize(x.m.backward_seconds);
      x.t_step = summarize(step);
    }
    for (const int a : x.m.allocation) x.kv_used += a > 0 ? 1 : 0;
    prog.done(x);
    r.rows.push_back(std::move(x));
  }
  const scheme_result* mha = nullptr;
  for (const scheme_result& x : r.rows)
    if (x.s.kind == scheme_kind::mha && x.timed()) mha = &x;
  for (scheme_result& x : r.rows) {
    if (mha && x.timed() && x.t.median > 0) x.speedup = mha->t.median / x.t.median;
    if (mha && mha->trained() && x.trained() && x.t_step.median > 0) x.step_speedup = mha->t_step.median / x.t_step.median;
  }
  return r;
}

/// A word safe inside single quotes in sh.
std::string sh_quote(const std::string& s) {
  std::string out = "'";
  for (const char ch : s) out += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return out + "'";
}

bool is_executable(const fs::path& p) {
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) return false;
#if defined(__unix__) || defined(__APPLE__)
  return access(p.c_str(), X_OK) == 0;
#else
  return true;
#endif
}

/// The gnuplot executable: $GQA_COMPARE_GNUPLOT if set (it must exist), else `gnuplot` on $PATH.
std::string find_gnuplot() {
  if (const char* forced = std::getenv("GQA_COMPARE_GNUPLOT")) {
    return is_executable(forced) ? std::string(forced) : std::string();
  }
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
  std::size_t start = 0;
  while (start <= dirs.size()) {
    const std::size_t end = std::min(dirs.find(':', start), dirs.size());
    const std::string d = dirs.substr(start, end - start);
    const fs::path candidate = fs::path(d.empty() ? "." : d) / "gnuplot";
    if (is_executable(candidate)) return candidate.string();
    start = end + 1;
  }
  return {};
}

/// Renders <name>.png from <name>.dat with plot_compare.gp (both in `dir`); records success or why not.
void render_plot(const fs::path& dir, const std::string& gnuplot, const run_info& info, config_result& r) {
  const std::string title = r.c.name + ": H " + std::to_string(r.c.heads) + ", d " + std::to_string(r.c.head_dim) +
                            ", batch " + std::to_string(r.c.batch) + ", Sq " + std::to_string(r.c.seq_q) +
                            ", Skv " + std::to_string(r.c.seq_kv) + (r.c.causal ? ", causal" : ", non-causal") +
                            " | " + info.isa + ", " + std::to_string(info.threads) +
                            (info.threads == 1 ? " thread" : " threads");
  const std::string png = r.c.name + ".png", log = r.c.name + ".plot.log";
  // Run in `dir` so gnuplot only sees plain file names (configuration names are [a-z0-9-]).
  const std::string cmd = "cd " + sh_quote(dir.string()) + " && " + sh_quote(gnuplot) + " -e " +
                          sh_quote("datafile='" + r.c.name + ".dat'; outfile='" + png + "'; plottitle='" + title +
                                   "'") +
                          " plot_compare.gp > " + sh_quote(log) + " 2>&1";
  std::error_code ec;
  fs::remove(dir / png, ec);
  const int rc = std::system(cmd.c_str());
  if (rc == 0 && fs::file_size(dir / png, ec) > 0 && !ec) {
    r.plot_file = png;
    fs::remove(dir / log, ec);
  } else {
    r.plot_error = "gnuplot failed (exit status " + std::to_string(rc) + "), see " + (dir / log).string();
  }
}

int run(int argc, char** argv) {
  run_options opt;
  try {
    opt = parse_args(argc, argv);
  } catch (const usage_error& e) {
    throw exit_error{2, e.what()};
  }
  if (opt.help) {
    std::fputs(usage_text().c_str(), stdout);
    return 0;
  }
  run_info info;
  const isa_entry& isa = choose_isa(opt.isa, info.isa_reason, info.built_isas, info.supported_isas);
  info.version = std::to_string(GQA_VERSION_MAJOR) + "." + std::to_string(GQA_VERSION_MINOR) + "." +
                 std::to_string(GQA_VERSION_PATCH);
  info.isa = isa.name;
  info.threads = gqa::detail::resolve_threads(opt.threads);  // what the library will use
  {
    gqa::attention_options ro;
    ro.num_threads = opt.threads;
    info.runtime = gqa::runtime_info(ro).to_string();
  }
  info.cpu = cpu_model();
  info.started = local_time_iso();

  const double ram = physical_memory();
  for (const layer_config& c : opt.configs) {
    // q, o (and with --train dout, dq) of Sq rows; k, v (and dk, dv) of Skv rows; 4-byte floats.
    const double bytes = (opt.train ? 16.0 : 8.0) * static_cast<double>(c.batch * c.heads * c.head_dim) *
                         static_cast<double>(c.seq_q + c.seq_kv);
    if (ram > 0 && bytes > 0.75 * ram)
      throw exit_error{2, "configuration " + c.name + " (--batch " + std::to_string(c.batch) + ", --heads " +
                              std::to_string(c.heads) + ", --head-dim " + std::to_string(c.head_dim) + ", Skv " +
                              std::to_string(c.seq_kv) + "): needs " + std::to_string(bytes / (1 << 20)) +
                              " MiB of buffers, more than 3/4 of this machine's memory"};
  }

  std::error_code ec;
  fs::create_directories(opt.out_dir, ec);
  if (ec || !fs::is_directory(opt.out_dir))
    throw exit_error{1, "--out = " + opt.out_dir + ": cannot create the folder (" + ec.message() + ")"};
  const fs::path dir = fs::absolute(opt.out_dir).lexically_normal();
  info.out_dir = dir.string();

  std::fprintf(stderr, "gqa-compare: ISA %s (%s), %d thread%s; measuring into %s\n", info.isa.c_str(),
               info.isa_reason.c_str(), info.threads, info.threads == 1 ? "" : "s", info.out_dir.c_str());
  std::fprintf(stderr, "gqa::runtime_info(): %s\n", info.runtime.c_str());
  int total = 0;
  for (const layer_config& c : opt.configs) total += static_cast<int>(compared_schemes(c).size());
  progress prog;
  int counter = 0;
  std::vector<config_result> results;
  const auto t0 = std::chrono::steady_clock::now();
  for (const layer_config& c : opt.configs) {
    try {
      results.push_back(measure_config(c, isa, info.threads, opt.train, prog, counter, total));
    } catch (const std::bad_alloc&) {
      prog.finish();
      throw exit_error{1, "configuration " + c.name + ": out of memory allocating its buffers"};
    }
  }
  prog.finish();
  info.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // Plots first, so the JSON records which exist.
  std::string plot_note;
  if (!opt.plot) {
    plot_note = "plots skipped (--no-plot)";
    for (config_result& r : results) r.plot_error = plot_note;
  } else if (const std::string gnuplot = find_gnuplot(); gnuplot.empty()) {
    plot_note = "gnuplot not found: no PNG written. Install it with `bash scripts/install-deps.sh --plot` (Debian "
                "package gnuplot-nox); the table, JSON and CSV are complete.";
    for (config_result& r : results) r.plot_error = "gnuplot not found";
  } else {
    write_text((dir / "plot_compare.gp").string(), plot_script);
    for (config_result& r : results) {
      write_text((dir / (r.c.name + ".dat")).string(), to_plot_data(r));
      render_plot(dir, gnuplot, info, r);
    }
  }

  const std::string report = format_report(info, results);
  write_text((dir / "table.md").string(), report);
  write_text((dir / "compare.json").string(), to_json(info, results));
  write_text((dir / "compare.csv").string(), to_csv(results));

  std::fputs(report.c_str(), stdout);
  std::printf("\ngqa-compare: measured in %.1f s. Results in %s/\n", info.seconds, info.out_dir.c_str());
  std::printf("  table.md  compare.json  compare.csv");
  for (const config_result& r : results)
    if (!r.plot_file.empty()) std::printf("  %s", r.plot_file.c_str());
  std::printf("\n");
  if (!plot_note.empty()) std::printf("gqa-compare: %s\n", plot_note.c_str());
  for (const config_result& r : results)
    if (r.plot_file.empty() && opt.plot && !find_gnuplot().empty())
      std::printf("gqa-compare: %s: no plot: %s\n", r.c.name.c_str(), r.plot_error.c_str());
  std::fflush(stdout);
  return 0;
}

}  // namespace
}  // namespace gqa_compare

int main(int argc, char** argv) {
  try {
    return gqa_compare::run(argc, argv);
  } catch (const gqa_compare::exit_error& e) {
    std::fprintf(stderr, "gqa-compare: %s\n", e.message.c_str());
    if (e.code == 2) std::fprintf(stderr, "Run 'gqa-compare --help' for usage.\n");
    return e.code;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gqa-compare: error: %s\n", e.what());
    return 1;
  }
}
