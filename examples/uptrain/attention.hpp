// examples/uptrain/attention.hpp: a multi-head attention layer whose grouping is any of gqa's policies:
// projections (Eigen), gqa::forward (gqa::forward_train when training) with the scheme's policy, output
// projection, and the backward pass through gqa::backward.
// Invariant: a layer is a plain value (copying it copies the checkpoint, including DGQA's state and PGQA's
// call counter); policies are rebuilt on every call from that state.
#pragma once

#include <cstdint>
#include <variant>
#include <vector>

#include <gqa/gqa.hpp>

#include "layers.hpp"
#include "scheme.hpp"

namespace uptrain {

/// One value of S<P> for each of gqa's policies P (what a training forward saved, whichever policy ran).
template <template <class> class S>
using per_policy = std::variant<std::monostate, S<gqa::mha_policy>, S<gqa::gqa_policy>, S<gqa::mqa_policy>,
                                S<gqa::sqa_policy>, S<gqa::kdgqa_policy>, S<gqa::dgqa_policy>, S<gqa::pgqa_policy>,
                                S<gqa::wgqa_policy>>;

/// What a forward call needs to know besides its input.
struct step_context {
  bool training = false;  ///< training forward (saves what backward needs; DGQA in train mode)
  std::uint64_t step = 0; ///< DGQA's step: the batch index within the epoch (the reference's training step)
  gqa::index_t tokens = 0;///< tokens per sequence (rows of the input = batch × tokens)
};

class attention_layer {
 public:
  attention_layer() = default;
  /// A freshly initialised layer (truncated normal 0.02 weights, zero biases; WGQA weights 1/s), its
  /// random draws keyed by (seed, layer).
  attention_layer(const attention_spec& spec, std::uint64_t seed, std::uint64_t layer);

  /// y = attention(x) for x (batch·tokens × width); y has the same shape.
  void forward(const matrix<float>& x, matrix<float>& y, const step_context& ctx);
  /// Given dL/dy of the last training forward, accumulates parameter gradients and writes dL/dx.
  void backward(const matrix<float>& dy, matrix<float>& dx);

  /// Every trainable parameter, in a fixed order.
  void collect(std::vector<param<float>*>& out);
  const attention_spec& spec() const { return spec_; }
  /// Query heads per KV head in the last forward (KDGQA, DGQA: what the policy chose).
  const std::vector<int>& last_allocation() const { return last_alloc_; }
  /// Seconds spent in gqa's forward (attention core + policy) and in the attention backward.
  double forward_seconds = 0, backward_seconds = 0;

  // Parameters: nn.Linear layouts. q: (q_heads·d × width), k/v: (kv_proj_heads·d × width),
  // o: (width × q_heads·d); WGQA's combination weights (1 × H scalar, H × d col) for K and V.
  linear<float> q, k, v, o;
  param<float> mix_k, mix_v;
  /// WGQA: the combination weights in gqa's layout.
  gqa::wgqa_weights wgqa_weights() const;

  /// Keys of this layer's random streams.
  std::uint64_t seed = 0, layer = 0;
  /// DGQA's state (cache, splits, repair draws), carried across steps; PGQA's forward-call counter.
  gqa::dgqa_state dgqa;
  std::uint64_t pgqa_calls = 0;

 private:
  /// Builds the scheme's policy from the layer's state and calls f(policy); after a forward (not a
  /// backward), keeps what the policy changed (DGQA's state is the layer's own; PGQA's call counter, the
  /// allocation KDGQA/DGQA chose).
  template <class F>
  void with_policy(const step_context& ctx, bool is_forward, F&& f);

  attention_spec spec_;
  std::vector<int> last_alloc_;
  // Saved by a training forward for backward: the input, the projections, the attention output and what
  // the policy's forward kept.
  matrix<float> x_, qa_, ka_, va_, oa_;
  per_policy<gqa::saved_forward> saved_;
  gqa::index_t batch_ = 0, tokens_ = 0;
};

}  // namespace uptrain
