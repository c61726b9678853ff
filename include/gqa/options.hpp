// gqa/options.hpp: per-call options of the attention core (scale, mask, padding, LSE, threads). The
// thread part is a gqa::executor (threading/executor.hpp), which is all the parallel loop sees.
#pragma once

#include <optional>
#include <span>
#include <string_view>

#include "config.hpp"
#include "integer_span.hpp"
#include "threading/executor.hpp"

GQA_BEGIN_NAMESPACE

struct attention_options {
  /// Softmax scale applied to Q·Kᵀ. Default 1/sqrt(d_qk). T5-style models pass 1; absorbed MLA passes
  /// 1/sqrt(192).
  std::optional<float> scale;
  /// Causal mask aligned bottom-right (the KV-cache convention): query i (0-based, of sq) sees key j iff
  /// j <= i + (L - sq), where L is the batch's valid KV length. Rows that see no key return zeros.
  bool causal = false;
  /// Sliding window (FlashAttention's window_size), aligned bottom-right like `causal`: query i sees key j
  /// only if i + (L - sq) - window_left <= j <= i + (L - sq) + window_right, with L the batch's valid KV
  /// length. -1 (the default) leaves that side unbounded; causal caps the right side at 0 (causal is
  /// window_right = 0). Keys outside every row's window are never read; a query costs O(window).
  index_t window_left = -1;
  index_t window_right = -1;
  /// Logit softcap (Gemma 2): each logit s = scale·q·k becomes softcap·tanh(s / softcap) before the
  /// softmax (and before ALiBi's bias is added). 0 (the default) is off; else finite and > 0.
  float softcap = 0.0f;
  /// Attention sinks (gpt-oss; ONNX Runtime's head sinks): per query head h a logit sinks[h] (natural
  /// log, size hq; empty = none) that joins the softmax's denominator with no value row:
  /// O = Σ_j e^{s_j} V_j / (e^{sinks[h]} + Σ_j e^{s_j}); the LSE includes it, and a row that sees no key
  /// is zeros with LSE sinks[h]. Each finite, |sinks[h]| <= 1e30.
  std::span<const float> sinks;
  /// Optional output of the backward pass (gqa::attend_backward, gqa::backward): the gradient of the loss
  /// with respect to `sinks`, dsinks[h] = −Σ_i e^{sinks[h] − LSE_i}·(dO_i·O_i) over the rows i of head h
  /// (every batch element and position) that see a key; size hq, and `sinks` must be given. Overwritten.
  /// Empty (the default): not computed. The forward ignores it.
  std::span<float> dsinks;
  /// ALiBi (FlashAttention's convention, bottom-right): per query head h a slope (size hq; empty = none)
  /// adding -alibi_slopes[h]·|i + (L - sq) - j| to the logit of query i and key j, after the softcap
  /// (as FlashAttention, llama.cpp: the bias is not capped). Each finite, |slope| <= 1e30.
  std::span<const float> alibi_slopes;
  /// Optional per-batch valid KV lengths (size b, each in [0, skv]); keys j >= kv_lengths[b] are
  /// ignored (right padding). Empty means every batch uses all skv keys. Any integer type: a
  /// std::vector<int>, std::span<const std::int32_t>, std::vector<std::size_t>, ... (integer_span).
  /// A KV cache allocated for `capacity` positions per sequence: view it with s = capacity
  /// (bshd(k, b, capacity, hkv, d)) and give each sequence's filled length here.
  integer_span kv_lengths;
  /// Optional output: natural-log log-sum-exp of each row's scaled scores, laid out [b][hq][sq]
  /// (size b*hq*sq). Fully masked rows get -inf.
  std::span<float> lse;
  /// Threads for the built-in loop (OpenMP when compiled with it, else serial). 0 = all available.
  int num_threads = 1;
  /// If set, used instead of the built-in loop (e.g. the framework's own thread pool).
  parallel_for_fn parallel_for;
  /// If true, the call first checks that every input element it reads is finite (all of q; the keys
  /// j < kv_lengths[b] of k and v) and throws gqa::invalid_argument naming the first that is not
  /// (tensor and [batch, position, head, dim]; q, then k, then v). Off by default: it costs one pass over
  /// the inputs. Without it, non-finite inputs follow the rules of docs/design.md ("Non-finite inputs").
  bool check_finite = false;
  /// With bf16 Q, K and V (O bf16 or float): where the CPU has AMX-BF16 (isa::amx_tiles_granted()) or is
  /// an AMD one with AVX512-BF16 (isa::bf16_dot_fast()) and the call runs on AVX-512, prefill (the tiled
  /// path) multiplies in bf16 with fp32 sums: Q·Kᵀ on the bf16 inputs as they are, and P·V with the
  /// probabilities rounded to bf16, 1.4-3× as fast as fp32 (docs/api.md, "Element types"; docs/design.md,
  /// Note [bf16 tiles]); on the AMD one decode does too (Notes [bf16 decode], [bf16 tiles for few rows]),
  /// and so does attend_backward/backward with bf16 q, k, v, o and dout: its five products in bf16 with
  /// fp32 sums, P and dS rounded to bf16 (Note [bf16 backward] in detail/core/backward.hpp).
  /// false: every product in fp32 on the widened inputs, bit for bit the fp32 call's result (rounded once
  /// for a bf16 O or 16-bit gradients). Other element types ignore it.
  bool bf16_products = true;
  /// With an int8 K/V cache (gqa::q8_view): where the call runs on AVX-512 and the CPU has AVX512-VNNI, or
  /// on AVX2 (with AVX-VNNI or by its pre-VNNI equivalents, the same sums), decode (few query positions:
  /// every KV head's rows at most 32) computes its products in integers. Q·Kᵀ: each Q row is quantised to
  /// int8 with one fp32 scale (max |q| / 127, nearest even) and VPDPBUSD sums its products with the int8 K
  /// rows exactly, as llama.cpp does for its quantised caches; this rounds Q about as coarsely as the cache
  /// rounds K, a score error of the cache's own size. P·V: per row and 64 keys, the weights (times V's
  /// scales) are rounded to 16-bit integers relative to their largest (2^-16 of it) and VPDPWSSD sums their
  /// products with the int8 V rows exactly (docs/api.md, "int8 K/V cache"; Notes [int8 decode products],
  /// [int8 decode P·V]). A task with a non-finite Q element keeps the fp32 products, and so does a row's unit
  /// of weights holding NaN or inf. false: every product in fp32 on the dequantised K/V, as on scalar, NEON
  /// and AVX-512 without AVX512-VNNI. Other element types ignore it.
  bool int8_products = true;
  /// Which ISA a call WITHOUT an explicit one runs ("scalar", "avx2", "avx512", "neon"), for tests and
  /// benchmarks. Empty: the environment variable GQA_ISA when set, else the best ISA the running CPU
  /// supports. A name the CPU lacks throws gqa::invalid_argument. attend<isa::X> ignores it.
  std::string_view isa;
};

/// The executor these options describe (num_threads, parallel_for). It points into `opt`, which must
/// outlive it.
inline executor executor_of(const attention_options& opt) noexcept {
  return {opt.num_threads, opt.parallel_for ? &opt.parallel_for : nullptr};
}

GQA_END_NAMESPACE
