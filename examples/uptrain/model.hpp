// examples/uptrain/model.hpp: a small Vision Transformer for 28 × 28 grey images: 4 × 4 patches (49
// tokens) plus a class token, learned positions, pre-LayerNorm blocks x += attn(LN(x)); x += MLP(LN(x))
// with a GELU MLP, a final LayerNorm and a linear classifier on the class token. Invariant: a vit is a
// plain value; copying it copies the checkpoint (and the grouping state of its attention layers).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "attention.hpp"
#include "data.hpp"
#include "layers.hpp"

namespace uptrain {

struct vit_config {
  index width = 64;      ///< D
  index heads = 8;       ///< H of the MHA baseline (d = D / H)
  index layers = 2;
  index mlp_ratio = 2;   ///< MLP hidden width = mlp_ratio · D
  static constexpr index patch = 4, grid = 28 / patch, patches = grid * grid, tokens = patches + 1,
                         patch_pixels = patch * patch, classes = image_set::classes;
};

/// One pre-LayerNorm transformer block and the activations its backward needs.
struct block {
  layer_norm<float> ln1, ln2;
  attention_layer attn;
  linear<float> fc1, fc2;
  matrix<float> h1, a, h2, u, g, m;  // activations of the last forward (backward reads h2, u, g)
};

class vit {
 public:
  vit() = default;
  /// A freshly initialised model whose attention layers have shape `attn` (truncated normal 0.02 for
  /// weights, positions and class token; zero biases; LayerNorm γ = 1, β = 0), drawn from `seed`.
  vit(const vit_config& cfg, const attention_spec& attn, std::uint64_t seed);

  /// Logits (batch × 10) for the images at `ids` of `set`. With ctx.training the activations are kept
  /// for backward().
  const matrix<float>& forward(const image_set& set, std::span<const std::uint32_t> ids, const step_context& ctx);
  /// Accumulates every parameter's gradient from dL/dlogits of the last training forward.
  void backward(const matrix<float>& dlogits);

  /// Every trainable parameter, in a fixed order (the optimiser's state follows it).
  std::vector<param<float>*> parameters();
  void zero_grad();

  const vit_config& config() const { return cfg_; }
  std::vector<block> blocks;
  linear<float> patch_embed, head;
  param<float> cls, pos;
  layer_norm<float> ln_f;

 private:
  vit_config cfg_;
  // Saved by a training forward.
  matrix<float> patches_, cls_rows_, cls_norm_, logits_;
  index batch_ = 0;
};

/// Standardised 4 × 4 patches of the images at `ids`: (ids.size()·49 × 16), patch p = (row p / 7,
/// column p % 7) of the 7 × 7 grid, pixels row-major within the patch.
matrix<float> patchify(const image_set& set, std::span<const std::uint32_t> ids);

}  // namespace uptrain
