// bench/compare/model.hpp: gqa-compare's model of one attention layer: the configurations (presets), the
// list of schemes compared for a configuration, and the closed-form cost columns (FLOPs, KV-cache bytes per
// token, parameters). Pure arithmetic, no gqa headers, no inline functions: defined in model.cpp, compiled
// with the baseline flags only (see Note [link order] in CMakeLists.txt).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace gqa_compare {

/// The element type of the K/V cache a run reads (--dtype): float; gqa's 16-bit gqa::bf16 / gqa::f16
/// (rounded to nearest even from the float keys and values once, outside the timing); or i8, gqa's int8
/// cache (gqa::quantize_q8: int8 values and one fp32 scale per (token, KV head) row). Q, O and every
/// accumulation stay fp32. A training step (--train) takes f32, bf16 or f16 for all of Q, K, V, O, dO and
/// the gradients.
enum class kv_dtype { f32, bf16, f16, i8 };
/// "f32", "bf16", "f16", "i8": the --dtype spelling.
std::string to_string(kv_dtype t);
/// Bytes of one cached K or V row of d elements: 4d, 2d, 2d, or d + 4 (the int8 values and their scale).
std::int64_t row_bytes(kv_dtype t, std::int64_t d);
/// The kv_dtype spelled `name`, if any.
bool parse_kv_dtype(const std::string& name, kv_dtype& out);

/// One attention layer to compare schemes on. `heads` is the model's baseline (MHA) query-head count H;
/// the model width is D = H * head_dim for every scheme (SQA keeps d = D / H and computes fewer heads).
struct layer_config {
  std::string name;             // preset name: file stem of its plot, key in the JSON
  std::string description;      // one line for the table heading, e.g. "ViT-B/16 encoder layer"
  std::int64_t heads = 0;       // H
  std::int64_t head_dim = 0;    // d (= d_qk = d_v)
  std::int64_t batch = 0;       // b
  std::int64_t seq_q = 0;       // Sq: query tokens per sample in one call (1 for decode)
  std::int64_t seq_kv = 0;      // Skv: keys per sample (the KV-cache length for decode)
  bool causal = false;          // bottom-right aligned causal mask
  bool decode = false;          // label only: Sq = 1 against a long cache
  std::int64_t hkv_ref = 0;     // KV heads of the GQA reference point used by KDGQA/DGQA/PGQA/WGQA
  int reps = 0;                 // timed calls
  int warmup = 0;               // untimed calls before them
  kv_dtype dtype = kv_dtype::f32;  // the K/V cache's element type (--dtype)

};
/// D = H * d.
std::int64_t model_dim(const layer_config& c);

/// The embedded presets: ViT-B/16 (one encoder layer), Llama-style causal prefill and long-cache decode.
std::vector<layer_config> presets(const std::string& which);  // "vit-b16", ..., "all"
/// Tiny CI configurations (prefill and decode), a few milliseconds in total.
std::vector<layer_config> tiny_presets();
/// The GQA reference point when --hkv-ref is not given: the largest divisor of H that is <= H/4 (at
/// least 1): 3 for ViT-B/16 (H = 12), 8 for Llama (H = 32, as Llama-3-8B).
std::int64_t default_hkv_ref(std::int64_t heads);
/// Names accepted by --preset.
std::vector<std::string> preset_names();

/// Which policy runs a scheme. `registered`: a registered variant without a row of its own here, added by
/// compared_schemes (schemes.hpp) with GQA's cost model.
enum class scheme_kind { mha, mqa, gqa, kdgqa, dgqa, pgqa, wgqa_scalar, wgqa_col, sqa, registered };

/// One row of the comparison.
struct scheme {
  std::string name;        // display name, unique within a configuration: "GQA-4", "xSMQA", "WGQA-col"
  std::string variant;     // gqa::variant_names entry: "mha", "gqa", "sqa", "wgqa", ...
  scheme_kind kind = scheme_kind::mha;
  std::int64_t hq = 0;     // query heads computed
  std::int64_t hkv = 0;    // KV heads attended to (and cached)
  std::int64_t kv_in = 0;  // KV heads handed to gqa::forward: H for WGQA (its prepare() combines them), else hkv
};

/// Every scheme compared for `c`, in table order: MHA, MQA, GQA-k for every k dividing H with 1 < k < H,
/// KDGQA, DGQA, PGQA, WGQA (scalar), WGQA-col (all at c.hkv_ref KV heads), SQA, sSQA, xSQA, xSMQA. An SQA
/// configuration that does not exist for this H (e.g. H/4 == 0) is left out and named in `skipped`.
std::vector<scheme> schemes_for(const layer_config& c, std::vector<std::string>* skipped = nullptr);

/// Query-key pairs one sample of one query head computes: Sq * Skv, or with the bottom-right causal mask
/// sum_{i < Sq} min(Skv, max(0, i + Skv - Sq + 1)).
std::int64_t visible_pairs(std::int64_t seq_q, std::int64_t seq_kv, bool causal);

/// Attention FLOPs of one call: 2 * d (Q·Kᵀ) + 2 * d (P·V) per visible pair, per query head, per sample.
/// Softmax exponentials and the variants' own O(b·s·h·d) work (norms, noise, weight combination) are not
/// counted (they are in the measured time).
std::int64_t attention_flops(const layer_config& c, const scheme& s);

/// KV-cache bytes per token per layer: 2 (K and V) * hkv * row_bytes(c.dtype, d).
std::int64_t kv_bytes_per_token(const layer_config& c, const scheme& s);

/// Learned parameters the scheme adds beyond its projections: WGQA scalar 2H, col 2·H·d.
std::int64_t extra_params(const layer_config& c, const scheme& s);

/// Attention parameters of the layer (weights, no biases), D = H * d:
///   W_Q D·(hq·d) + W_K D·(kp·d) + W_V D·(kp·d) + W_O (hq·d)·D + extra_params,
/// where kp = hkv, except for WGQA, which keeps the H per-head K/V projections it combines (as the authors'
/// code trains it; once folded for inference it has GQA's count).
std::int64_t attention_params(const layer_config& c, const scheme& s);

/// Per-KV-head factors for the keys of the dynamic schemes (KDGQA, DGQA): K head g of hkv is multiplied by
/// 0.5 · 4^(g / (hkv − 1)), from 0.5 to 2 (1 for hkv = 1), so the head norms differ as trained models'
/// key heads do. On iid random keys every head has nearly the same norm: DGQA-ema's shares
/// (hq / hkv)·(1 ± ~1%) then all round to hq / hkv, i.e. exactly uniform GQA groups, and the comparison
/// would show nothing of DGQA (KDGQA's min-max scaling skews any spread, however small).
std::vector<float> key_head_scales(std::int64_t hkv);
/// Multiplies head g of the contiguous (batch, seq, hkv, d) keys at k by key_head_scales(hkv)[g].
void scale_key_heads(float* k, std::int64_t batch, std::int64_t seq, std::int64_t hkv, std::int64_t d);
/// The report's line saying which keys KDGQA and DGQA ran on, and why (see key_head_scales).
std::string key_heads_note(std::int64_t hkv);

/// Order statistics of a sample of times (seconds).
struct time_stats {
  double min = 0, q1 = 0, median = 0, q3 = 0, max = 0;
};
/// Linear-interpolation quantiles (the "type 7" definition of R and NumPy). Empty input gives zeros.
time_stats summarize(std::vector<double> seconds);

}  // namespace gqa_compare
