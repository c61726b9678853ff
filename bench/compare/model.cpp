// bench/compare/model.cpp: presets, the scheme list and the cost formulas of model.hpp.
#include "model.hpp"

#include <algorithm>
#include <cmath>
#include <utility>

namespace gqa_compare {

namespace {

layer_config make(std::string name, std::string description, std::int64_t heads, std::int64_t d,
                  std::int64_t batch, std::int64_t sq, std::int64_t skv, bool causal, bool decode, int reps,
                  int warmup) {
  layer_config c;
  c.name = std::move(name);
  c.description = std::move(description);
  c.heads = heads;
  c.head_dim = d;
  c.batch = batch;
  c.seq_q = sq;
  c.seq_kv = skv;
  c.causal = causal;
  c.decode = decode;
  c.reps = reps;
  c.warmup = warmup;
  return c;
}

}  // namespace

std::vector<layer_config> presets(const std::string& which) {
  // Repetitions are sized so the default run (all three) takes about a minute on 2 cores: prefill calls
  // are ~0.1-0.3 s each, the others a few milliseconds.
  std::vector<layer_config> out;
  if (which == "vit-b16" || which == "all")  // one ViT-B/16 encoder layer: 196 patches + CLS, no mask
    out.push_back(make("vit-b16", "ViT-B/16 encoder layer", 12, 64, 8, 197, 197, false, false, 20, 2));
  if (which == "llama-prefill" || which == "all")  // Llama-style layer (as Llama-2/3-8B) prefilling 2048 tokens
    out.push_back(
        make("llama-prefill", "Llama-style layer, causal prefill", 32, 128, 1, 2048, 2048, true, false, 5, 1));
  if (which == "llama-decode" || which == "all")  // one new token against an 8192-token KV cache
    out.push_back(make("llama-decode", "Llama-style layer, decode against a long KV cache", 32, 128, 1, 1, 8192,
                       true, true, 20, 2));
  return out;
}

std::vector<layer_config> tiny_presets() {
  // Odd lengths so tails are exercised; H = 8 has GQA-2 and GQA-4 and every SQA configuration.
  return {make("tiny-prefill", "tiny CI layer, causal prefill", 8, 16, 2, 37, 37, true, false, 3, 1),
          make("tiny-decode", "tiny CI layer, decode", 8, 16, 2, 1, 77, true, true, 3, 1)};
}

std::vector<std::string> preset_names() { return {"vit-b16", "llama-prefill", "llama-decode", "all"}; }

std::int64_t model_dim(const layer_config& c) { return c.heads * c.head_dim; }

std::int64_t default_hkv_ref(std::int64_t heads) {
  const std::int64_t cap = std::max<std::int64_t>(1, heads / 4);
  for (std::int64_t k = cap; k > 1; --k)
    if (heads % k == 0) return k;
  return 1;
}

std::vector<scheme> schemes_for(const layer_config& c, std::vector<std::string>* skipped) {
  const std::int64_t H = c.heads, g = c.hkv_ref;
  std::vector<scheme> out;
  out.push_back({"MHA", "mha", scheme_kind::mha, H, H, H});
  out.push_back({"MQA", "mqa", scheme_kind::mqa, H, 1, 1});
  // GQA-1 is MQA and GQA-H is MHA: both ends are the rows above.
  for (std::int64_t k = 2; k < H; ++k)
    if (H % k == 0) out.push_back({"GQA-" + std::to_string(k), "gqa", scheme_kind::gqa, H, k, k});
  out.push_back({"KDGQA", "kdgqa", scheme_kind::kdgqa, H, g, g});
  out.push_back({"DGQA", "dgqa", scheme_kind::dgqa, H, g, g});
  out.push_back({"PGQA", "pgqa", scheme_kind::pgqa, H, g, g});
  out.push_back({"WGQA", "wgqa", scheme_kind::wgqa_scalar, H, g, H});
  out.push_back({"WGQA-col", "wgqa", scheme_kind::wgqa_col, H, g, H});
  // SQA (Filipek 2025): hq < H query heads, hkv | hq. Standard SQA as in the paper's experiments.
  struct sqa_row {
    const char* name;
    std::int64_t hq, hkv;
  };
  const sqa_row sqa[] = {{"SQA", H / 2, H / 4}, {"sSQA", H / 2, H / 2}, {"xSQA", H / 4, H / 4}, {"xSMQA", H / 4, 1}};
  for (const sqa_row& r : sqa) {
    if (r.hq >= 1 && r.hq < H && r.hkv >= 1 && r.hq % r.hkv == 0) {
      out.push_back({r.name, "sqa", scheme_kind::sqa, r.hq, r.hkv, r.hkv});
    } else if (skipped) {
      skipped->push_back(std::string(r.name) + " (hq = " + std::to_string(r.hq) + ", hkv = " +
                         std::to_string(r.hkv) + " do not exist for H = " + std::to_string(H) + ")");
    }
  }
  return out;
}

std::int64_t visible_pairs(std::int64_t seq_q, std::int64_t seq_kv, bool causal) {
  if (!causal) return seq_q * seq_kv;
  // Row i sees keys j <= i + (Skv - Sq): min(Skv, max(0, i + Skv - Sq + 1)) of them (rows that see no
  // key cost nothing: the core skips fully masked blocks).
  std::int64_t total = 0;
  for (std::int64_t i = 0; i < seq_q; ++i) total += std::min(seq_kv, std::max<std::int64_t>(0, i + seq_kv - seq_q + 1));
  return total;
}

std::int64_t attention_flops(const layer_config& c, const scheme& s) {
  return 4 * c.batch * s.hq * c.head_dim * visible_pairs(c.seq_q, c.seq_kv, c.causal);
}

std::string to_string(kv_dtype t) {
  switch (t) {
    case kv_dtype::bf16: return "bf16";
    case kv_dtype::f16: return "f16";
    case kv_dtype::i8: return "i8";
    default: return "f32";
  }
}

std::int64_t row_bytes(kv_dtype t, std::int64_t d) {
  switch (t) {
    case kv_dtype::bf16:
    case kv_dtype::f16: return 2 * d;
    case kv_dtype::i8: return d + 4;
    default: return 4 * d;
  }
}

bool parse_kv_dtype(const std::string& name, kv_dtype& out) {
  for (const kv_dtype t : {kv_dtype::f32, kv_dtype::bf16, kv_dtype::f16, kv_dtype::i8})
    if (name == to_string(t)) {
      out = t;
      return true;
    }
  return false;
}

std::int64_t kv_bytes_per_token(const layer_config& c, const scheme& s) {
  // WGQA's combination is per token (K_g = sum_j w_j K_j), so a cache stores the G combined heads.
  return 2 * s.hkv * row_bytes(c.dtype, c.head_dim);
}

std::int64_t extra_params(const layer_config& c, const scheme& s) {
  switch (s.kind) {
    case scheme_kind::wgqa_scalar: return 2 * c.heads;                // one weight per K head and per V head
    case scheme_kind::wgqa_col: return 2 * c.heads * c.head_dim;      // a d-vector per K head and per V head
    default: return 0;                                                // KDGQA/DGQA/PGQA: no learned parameters
  }
}

std::int64_t attention_params(const layer_config& c, const scheme& s) {
  const std::int64_t D = model_dim(c), d = c.head_dim;
  const bool wgqa = s.kind == scheme_kind::wgqa_scalar || s.kind == scheme_kind::wgqa_col;
  const std::int64_t kp = wgqa ? c.heads : s.hkv;
  return D * s.hq * d + 2 * D * kp * d + s.hq * d * D + extra_params(c, s);
}

std::vector<float> key_head_scales(std::int64_t hkv) {
  std::vector<float> f(static_cast<std::size_t>(std::max<std::int64_t>(hkv, 0)), 1.0f);
  for (std::int64_t g = 0; hkv > 1 && g < hkv; ++g)
    f[static_cast<std::size_t>(g)] = static_cast<float>(0.5 * std::pow(4.0, static_cast<double>(g) / static_cast<double>(hkv - 1)));
  return f;
}

void scale_key_heads(float* k, std::int64_t batch, std::int64_t seq, std::int64_t hkv, std::int64_t d) {
  const std::vector<float> f = key_head_scales(hkv);
  for (std::int64_t row = 0; row < batch * seq; ++row)
    for (std::int64_t g = 0; g < hkv; ++g)
      for (std::int64_t c = 0; c < d; ++c) k[(row * hkv + g) * d + c] *= f[static_cast<std::size_t>(g)];
}

std::string key_heads_note(std::int64_t hkv) {
  return "KDGQA/DGQA keys: K head g scaled by 0.5 * 4^(g/" + std::to_string(std::max<std::int64_t>(hkv - 1, 1)) +
         ") (0.5 to 2), so head norms differ as in trained models; on iid random keys DGQA-ema allocates exactly "
         "uniform groups";
}

time_stats summarize(std::vector<double> x) {
  time_stats t;
  if (x.empty()) return t;
  std::sort(x.begin(), x.end());
  auto q = [&x](double p) {
    const double pos = p * static_cast<double>(x.size() - 1);
    const auto lo = static_cast<std::size_t>(std::floor(pos));
    const std::size_t hi = std::min(lo + 1, x.size() - 1);
    return x[lo] + (pos - static_cast<double>(lo)) * (x[hi] - x[lo]);
  };
  t.min = x.front();
  t.q1 = q(0.25);
  t.median = q(0.5);
  t.q3 = q(0.75);
  t.max = x.back();
  return t;
}

}  // namespace gqa_compare
