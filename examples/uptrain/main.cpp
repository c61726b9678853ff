// examples/uptrain/main.cpp: gqa_example_uptrain, the command line of the uptraining protocol
// (docs/reproduction.md): a tiny ViT trained on Fashion-MNIST with MHA, then uptrained into every
// grouping scheme; writes report.md, CSV, JSON and plots into an output folder and prints its name.
// --quick is the CI smoke run: a few steps on a slice of the data, and it fails unless the pretraining
// loss falls and every scheme trains to a finite loss.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "protocol.hpp"
#include "report.hpp"

namespace {

using namespace uptrain;

const char* const usage = R"(usage: gqa_example_uptrain [options]
Trains a small ViT on Fashion-MNIST with MHA, converts it to every grouping scheme (GQA, MQA, KDGQA,
DGQA diff/ema, PGQA, WGQA scalar/col with mean/random init, SQA, MQA by first-head/random conversion),
uptrains each for the same steps from the converted checkpoint, and reports test top-1 per scheme.
  --quick               CI smoke run (1 seed, a few steps on 4096/1024 images; < 1 min on 2 cores);
                        fails unless the pretraining loss falls and every scheme trains
  --data DIR            Fashion-MNIST IDX files (raw or .gz); default /usr/share/datasets/fashion-mnist
                        (Debian's dataset-fashion-mnist: bash scripts/install-deps.sh --uptrain)
  --out DIR             output folder (default uptrain-results); its absolute name is printed at the end
  --seeds N             seeds (default 3); each pretrains its own MHA model
  --jobs N              runs trained at once, one thread each (default: the number of cores)
  --schemes a,b,...     only these scheme ids (see --list)
  --list                print the scheme ids and exit
  --width D --heads H --layers L --mlp-ratio R     model (default 64, 8, 2, 2)
  --groups G            KV heads of the grouped schemes (default 4)
  --window W            DGQA window (default 2)
  --batch B             batch size for training and evaluation (default 128)
  --pretrain-steps N    MHA training steps (default 2340: 5 epochs)
  --uptrain-steps N     uptraining steps per scheme (default 351: 0.75 epoch, 15% of the pretraining)
  --lr X                pretraining peak learning rate (default 2e-3)
  --uptrain-lr X        uptraining peak learning rate (default 5e-4)
  --train-limit N       use the first N training images (default all)
  --test-limit N        use the first N test images (default all)
  --converted-eval N    test images for the converted checkpoints' accuracy before uptraining (default 2000; 0 = skip)
  --no-plot             do not run gnuplot
)";

struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

long parse_int(const std::string& flag, const std::string& text, long lo, long hi) {
  char* end = nullptr;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || v < lo || v > hi)
    throw usage_error(flag + " " + text + ": expected an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return v;
}
double parse_double(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !(v > 0) || !std::isfinite(v))
    throw usage_error(flag + " " + text + ": expected a positive number");
  return v;
}

std::string cpu_name() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos)
      return line.substr(line.find_first_not_of(" \t", line.find(':') + 1));
  return {};
}

std::string now_iso() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M", &tm);
  return buf;
}

struct cli {
  protocol_options protocol;
  std::filesystem::path data = default_data_dir, out = "uptrain-results";
  std::size_t train_limit = 0, test_limit = 0;
  bool quick = false, plot = true, list = false, help = false;
};

cli parse(int argc, char** argv) {
  cli c;
  protocol_options& p = c.protocol;
  p.pretrain = {2340, 128, 2e-3, 100, 0.05, 1.0, 45};
  p.uptrain = {351, 128, 5e-4, 20, 0.05, 1.0, 27};
  p.jobs = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // --quick first: it sets defaults that the other flags may then override.
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--quick") {
      c.quick = true;
      p.seeds = 1;
      p.pretrain = {60, 64, 2e-3, 10, 0.05, 1.0, 10};
      p.uptrain = {6, 64, 5e-4, 2, 0.05, 1.0, 3};
      p.converted_eval = 256;
      c.train_limit = 4096;
      c.test_limit = 1024;
    }
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw usage_error(a + ": needs a value");
      return argv[++i];
    };
    if (a == "--quick") continue;
    if (a == "-h" || a == "--help") c.help = true;
    else if (a == "--list") c.list = true;
    else if (a == "--no-plot") c.plot = false;
    else if (a == "--data") c.data = value();
    else if (a == "--out") c.out = value();
    else if (a == "--seeds") p.seeds = static_cast<int>(parse_int(a, value(), 1, 100));
    else if (a == "--jobs") p.jobs = static_cast<int>(parse_int(a, value(), 1, 256));
    else if (a == "--width") p.model.width = parse_int(a, value(), 8, 1024);
    else if (a == "--heads") p.model.heads = parse_int(a, value(), 1, 64);
    else if (a == "--layers") p.model.layers = parse_int(a, value(), 1, 24);
    else if (a == "--mlp-ratio") p.model.mlp_ratio = parse_int(a, value(), 1, 8);
    else if (a == "--groups") p.groups = parse_int(a, value(), 1, 64);
    else if (a == "--window") p.dgqa_window = parse_int(a, value(), 1, 100000);
    else if (a == "--batch") p.pretrain.batch = p.uptrain.batch = parse_int(a, value(), 2, 4096);
    else if (a == "--pretrain-steps") p.pretrain.steps = parse_int(a, value(), 1, 10000000);
    else if (a == "--uptrain-steps") p.uptrain.steps = parse_int(a, value(), 1, 10000000);
    else if (a == "--lr") p.pretrain.lr = parse_double(a, value());
    else if (a == "--uptrain-lr") p.uptrain.lr = parse_double(a, value());
    else if (a == "--train-limit") c.train_limit = static_cast<std::size_t>(parse_int(a, value(), 1, 60000));
    else if (a == "--test-limit") c.test_limit = static_cast<std::size_t>(parse_int(a, value(), 1, 10000));
    else if (a == "--converted-eval") p.converted_eval = static_cast<std::size_t>(parse_int(a, value(), 0, 10000));
    else if (a == "--schemes") {
      const std::string list = value();
      for (std::size_t start = 0; start <= list.size();) {
        const std::size_t comma = std::min(list.find(',', start), list.size());
        if (comma > start) p.only.push_back(list.substr(start, comma - start));
        start = comma + 1;
      }
    } else {
      throw usage_error("unknown option " + a);
    }
  }
  if (p.model.width % p.model.heads != 0)
    throw usage_error("--width " + std::to_string(p.model.width) + " must be a multiple of --heads " + std::to_string(p.model.heads));
  if (p.model.heads % p.groups != 0)
    throw usage_error("--groups " + std::to_string(p.groups) + " must divide --heads " + std::to_string(p.model.heads));
  const std::vector<scheme> all = all_schemes(p.model.width, p.model.heads, p.groups, p.dgqa_window);
  for (const std::string& id : p.only)
    if (std::none_of(all.begin(), all.end(), [&](const scheme& s) { return s.id == id; }))
      throw usage_error("--schemes: unknown scheme '" + id + "' (see --list)");
  // Log about 13 points per run, whatever its length.
  p.pretrain.log_every = std::max(1L, p.pretrain.steps / 13);
  p.uptrain.log_every = std::max(1L, p.uptrain.steps / 13);
  p.pretrain.warmup = std::min(p.pretrain.warmup, p.pretrain.steps / 4);
  p.uptrain.warmup = std::min(p.uptrain.warmup, p.uptrain.steps / 4);
  return c;
}

/// --quick's checks: the pretraining loss fell, and every scheme trained to a finite loss and accuracy.
std::vector<std::string> quick_failures(const protocol_result& r) {
  std::vector<std::string> bad;
  for (const run_result& pre : r.pretrain) {
    const double first = pre.loss_curve.front().second, last = pre.loss_curve.back().second;
    if (!(last < 0.9 * first))
      bad.push_back("pretraining loss did not fall by 10%: " + std::to_string(first) + " -> " + std::to_string(last));
  }
  for (std::size_t i = 0; i < r.runs.size(); ++i) {
    const run_result& run = r.runs[i];
    if (run.loss_curve.empty() || !std::isfinite(run.loss_curve.back().second) || !std::isfinite(run.test_loss) ||
        !(run.test_accuracy > 0.0))
      bad.push_back(r.schemes[i % r.schemes.size()].id + ": no finite loss or no correct test prediction");
  }
  return bad;
}

int run(int argc, char** argv) {
  const cli c = parse(argc, argv);
  if (c.help) {
    std::fputs(usage, stdout);
    return 0;
  }
  if (c.list) {
    const protocol_options& p = c.protocol;
    for (const scheme& s : all_schemes(p.model.width, p.model.heads, p.groups, p.dgqa_window))
      std::printf("%-18s %s\n", s.id.c_str(), s.label.c_str());
    return 0;
  }
  run_info info;
  info.started = now_iso();
  info.cpu = cpu_name();
  info.isa = std::string(gqa::isa::native::name);
  info.jobs = c.protocol.jobs;
  info.command = "gqa_example_uptrain";
  for (int i = 1; i < argc; ++i) info.command.append(" ").append(argv[i]);

  fashion_mnist data = load_fashion_mnist(c.data);
  data.train = head(data.train, c.train_limit);
  data.test = head(data.test, c.test_limit);
  std::fprintf(stderr, "uptrain: %zu training and %zu test images from %s; %d run(s) at a time\n", data.train.size(),
               data.test.size(), c.data.c_str(), c.protocol.jobs);
  const protocol_result r = run_protocol(c.protocol, data);

  const std::filesystem::path dir = std::filesystem::absolute(c.out).lexically_normal();
  const std::vector<std::string> files = write_outputs(dir, info, c.protocol, r, c.plot);
  std::string list;
  for (const std::string& f : files) list += (list.empty() ? "" : ", ") + f;
  std::fprintf(stderr, "uptrain: done in %.1f min; wrote %s\n", r.seconds / 60.0, list.c_str());
  std::printf("%s\n", dir.c_str());

  if (c.quick) {
    const std::vector<std::string> bad = quick_failures(r);
    for (const std::string& b : bad) std::fprintf(stderr, "uptrain --quick: FAILED: %s\n", b.c_str());
    if (!bad.empty()) return 1;
    std::fprintf(stderr, "uptrain --quick: the pretraining loss fell and all %zu schemes trained\n", r.schemes.size());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // The binary may be built for AVX2 or AVX-512 (GQA_UPTRAIN_ISA): say so instead of crashing elsewhere.
  if (!gqa::isa::cpu_supports<gqa::isa::native>()) {
    std::fprintf(stderr, "gqa_example_uptrain: built for %s, which this CPU lacks; rebuild with -DGQA_UPTRAIN_ISA=scalar\n",
                 std::string(gqa::isa::native::name).c_str());
    return 1;
  }
  try {
    return run(argc, argv);
  } catch (const usage_error& e) {
    std::fprintf(stderr, "gqa_example_uptrain: %s\n\n%s", e.what(), usage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gqa_example_uptrain: %s\n", e.what());
    return 1;
  }
}
