// bench/compare/cli.cpp: gqa-compare's argument parsing (see usage_text() for the contract).
#include "cli.hpp"

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <optional>

namespace gqa_compare {

namespace {

// Upper bounds that keep every product below in int64 and the buffers allocatable; anything larger is
// certainly a typo.
constexpr std::int64_t max_heads = 1024, max_head_dim = 4096, max_extent = std::int64_t{1} << 24;
constexpr std::int64_t max_buffer_bytes = std::int64_t{64} << 30;  // 64 GiB for q, k, v and o together

[[noreturn]] void bad(const std::string& arg, const std::string& value, const std::string& what) {
  throw usage_error(arg + " = " + (value.empty() ? "(empty)" : value) + ": " + what);
}

std::int64_t parse_int(const std::string& arg, const std::string& value, std::int64_t lo, std::int64_t hi) {
  std::int64_t x = 0;
  const char* first = value.data();
  const char* last = value.data() + value.size();
  const auto [ptr, ec] = std::from_chars(first, last, x);
  if (value.empty() || ec != std::errc() || ptr != last) bad(arg, value, "not an integer");
  if (x < lo || x > hi) bad(arg, value, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return x;
}

// Overrides given on the command line, applied to every selected preset.
struct overrides {
  std::optional<std::int64_t> heads, head_dim, seq, kv_len, batch, hkv_ref;
  std::optional<int> reps, warmup;
  std::optional<bool> causal, decode;
  std::optional<kv_dtype> dtype;
};

void apply(const overrides& ov, layer_config& c) {
  if (ov.heads) c.heads = *ov.heads;
  if (ov.head_dim) c.head_dim = *ov.head_dim;
  if (ov.batch) c.batch = *ov.batch;
  if (ov.causal) c.causal = *ov.causal;
  if (ov.decode && *ov.decode != c.decode) {
    // Switching mode keeps the preset's sequence: decode one token after it, or prefill all of it.
    c.decode = *ov.decode;
    c.seq_q = c.decode ? 1 : c.seq_kv;
  }
  // --seq is the sequence length: prefill Sq = Skv = N; decode: the cache length Skv = N.
  if (ov.seq) {
    c.seq_kv = *ov.seq;
    if (!c.decode) c.seq_q = *ov.seq;
  }
  if (ov.kv_len) c.seq_kv = *ov.kv_len;
  if (ov.reps) c.reps = *ov.reps;
  if (ov.warmup) c.warmup = *ov.warmup;
  if (ov.dtype) c.dtype = *ov.dtype;
  c.hkv_ref = ov.hkv_ref ? *ov.hkv_ref : default_hkv_ref(c.heads);
}

void validate(const overrides& ov, const layer_config& c) {
  const std::string in = " (configuration " + c.name + ")";
  if (c.seq_kv < c.seq_q)
    bad(ov.kv_len ? "--kv-len" : "--seq", std::to_string(c.seq_kv),
        "the KV length must be >= the query length Sq = " + std::to_string(c.seq_q) + in);
  if (c.hkv_ref > c.heads || c.heads % c.hkv_ref != 0)
    bad("--hkv-ref", std::to_string(c.hkv_ref),
        "must divide the number of query heads H = " + std::to_string(c.heads) +
            " (PGQA and WGQA use uniform groups)" + in);
  // In double: the product of the per-argument maxima would overflow int64.
  const double bytes = 4.0 * 2.0 * static_cast<double>(c.batch) * static_cast<double>(c.heads) *
                       static_cast<double>(c.head_dim) * static_cast<double>(c.seq_q + c.seq_kv);
  if (bytes > static_cast<double>(max_buffer_bytes))
    throw usage_error("--batch " + std::to_string(c.batch) + " --heads " + std::to_string(c.heads) + " --head-dim " +
                      std::to_string(c.head_dim) + " --kv-len " + std::to_string(c.seq_kv) +
                      ": too large: the buffers would need " +
                      std::to_string(static_cast<long long>(bytes / (1 << 30))) +
                      " GiB (limit " + std::to_string(max_buffer_bytes >> 30) + " GiB)" + in);
}

}  // namespace

std::string usage_text() {
  return R"(usage: gqa-compare [options]

Compares the attention head-grouping schemes on one model layer: MHA, MQA, GQA at every KV-head count
that divides H, KDGQA, DGQA, PGQA, WGQA (scalar and col weights) at a reference KV-head count, and the
SQA configurations (SQA, sSQA, xSQA, xSMQA). Prints one table per configuration (FLOPs, KV-cache bytes
per token, attention parameters, measured time, speed-up over MHA) and writes compare.json, compare.csv,
table.md and one <configuration>.png per configuration (gnuplot) into the output folder.

configurations:
  --preset NAME     vit-b16        ViT-B/16 layer: H 12, d 64, batch 8, 197 tokens, non-causal prefill
                    llama-prefill  Llama-style layer: H 32, d 128, batch 1, 2048 tokens, causal prefill
                    llama-decode   the same layer decoding 1 token against an 8192-token KV cache
                    all            the three above (default; about a minute on 2 cores)
  --tiny            tiny CI configurations instead (a few milliseconds)
overrides (applied to every selected configuration):
  --heads N         query heads H of the baseline (MHA) model; model width D = H * head-dim
  --head-dim N      head dimension d
  --seq N           sequence length: prefill Sq = Skv = N; decode: KV-cache length Skv = N
  --kv-len N        keys per sample Skv (prefill with a cached prefix when > Sq)
  --batch N         batch size
  --causal | --non-causal
  --decode          one query token (Sq = 1) against the sequence as KV cache
  --prefill         Sq = Skv
  --hkv-ref N       KV heads of KDGQA/DGQA/PGQA/WGQA; must divide H (default: largest divisor <= H/4)
  --reps N          timed calls per scheme (default per preset: 20, 5, 20)
  --warmup N        untimed calls before them (default 1-2)
run:
  --isa NAME        scalar, avx2, avx512 or neon (default: the best one this CPU supports)
  --threads N       threads per call (default 0 = all cores)
  --dtype T         the K/V cache's element type: f32 (default), bf16, f16 or i8 (int8 values and one
                    fp32 scale per token and KV head); Q, O and accumulation stay fp32; the KV bytes
                    column follows it. With --train: f32, bf16 or f16 for Q, K, V, O, dO and the
                    gradients alike (a mixed-precision step: fp32 accumulation)
  --out DIR         output folder (default ./gqa-compare-out; created if missing)
  --train           time a training step per scheme: forward (gqa::forward_train) and backward
                    (gqa::backward), with their own columns; prefill configurations only
  --no-plot         do not run gnuplot
  -h, --help        this text
Options take their value as the next argument or after '=' (--heads=16). Bad arguments exit with 2.
Environment: GQA_COMPARE_GNUPLOT=<path> selects the gnuplot executable.
)";
}

run_options parse_args(int argc, const char* const* argv) {
  run_options r;
  overrides ov;
  std::string preset = "all";
  bool tiny = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::optional<std::string> inline_value;
    if (const auto eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      inline_value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    }
    auto value = [&]() -> std::string {
      if (inline_value) return *inline_value;
      if (i + 1 >= argc) throw usage_error(arg + ": missing value");
      return argv[++i];
    };
    auto flag = [&]() {
      if (inline_value) bad(arg, *inline_value, "takes no value");
    };
    if (arg == "-h" || arg == "--help") {
      flag();
      r.help = true;
    } else if (arg == "--preset") {
      preset = value();
      const auto names = preset_names();
      if (std::find(names.begin(), names.end(), preset) == names.end())
        bad(arg, preset, "unknown preset (vit-b16, llama-prefill, llama-decode, all)");
    } else if (arg == "--tiny") {
      flag();
      tiny = true;
    } else if (arg == "--heads") {
      ov.heads = parse_int(arg, value(), 1, max_heads);
    } else if (arg == "--head-dim") {
      ov.head_dim = parse_int(arg, value(), 1, max_head_dim);
    } else if (arg == "--seq") {
      ov.seq = parse_int(arg, value(), 1, max_extent);
    } else if (arg == "--kv-len") {
      ov.kv_len = parse_int(arg, value(), 1, max_extent);
    } else if (arg == "--batch") {
      ov.batch = parse_int(arg, value(), 1, max_extent);
    } else if (arg == "--hkv-ref") {
      ov.hkv_ref = parse_int(arg, value(), 1, max_heads);
    } else if (arg == "--reps") {
      ov.reps = static_cast<int>(parse_int(arg, value(), 1, 1000000));
    } else if (arg == "--warmup") {
      ov.warmup = static_cast<int>(parse_int(arg, value(), 0, 1000000));
    } else if (arg == "--causal" || arg == "--non-causal") {
      flag();
      ov.causal = arg == "--causal";
    } else if (arg == "--decode" || arg == "--prefill") {
      flag();
      ov.decode = arg == "--decode";
    } else if (arg == "--isa") {
      r.isa = value();
      if (r.isa != "scalar" && r.isa != "avx2" && r.isa != "avx512" && r.isa != "neon")
        bad(arg, r.isa, "unknown ISA (scalar, avx2, avx512, neon)");
    } else if (arg == "--threads") {
      r.threads = static_cast<int>(parse_int(arg, value(), 0, 4096));
    } else if (arg == "--out") {
      r.out_dir = value();
      if (r.out_dir.empty()) bad(arg, r.out_dir, "must be a folder path");
    } else if (arg == "--dtype") {
      const std::string name = value();
      kv_dtype t{};
      if (!parse_kv_dtype(name, t)) bad(arg, name, "unknown K/V type (f32, bf16, f16, i8)");
      ov.dtype = t;
    } else if (arg == "--train") {
      flag();
      r.train = true;
    } else if (arg == "--no-plot") {
      flag();
      r.plot = false;
    } else {
      throw usage_error(arg + ": unknown argument");
    }
  }
  if (r.help) return r;
  r.configs = tiny ? tiny_presets() : presets(preset);
  for (layer_config& c : r.configs) {
    apply(ov, c);
    validate(ov, c);
  }
  if (r.train) {
    // A training step has no decode: --train keeps the prefill configurations.
    if (ov.decode && *ov.decode) throw usage_error("--train: a training step has no decode; drop --decode");
    if (ov.dtype && *ov.dtype == kv_dtype::i8)
      bad("--dtype", to_string(*ov.dtype), "--train takes f32, bf16 or f16 (int8 is an inference cache format)");
    std::erase_if(r.configs, [](const layer_config& c) { return c.decode; });
    if (r.configs.empty())
      throw usage_error("--train with --preset " + preset + ": the preset has only decode configurations");
  }
  return r;
}

}  // namespace gqa_compare
