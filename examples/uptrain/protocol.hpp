// examples/uptrain/protocol.hpp: the uptraining protocol of the KDGQA/DGQA/PGQA authors' train.py and of
// Ainslie et al.: train an MHA model, convert its K/V projections to each grouping scheme, then train
// every scheme for the same steps from that checkpoint with the same seed (the same batches), and
// evaluate on the test set. Runs are jobs on a pool of threads, one thread each: a run's result depends
// only on its seed and options, never on the thread count or the order the pool runs them.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "data.hpp"
#include "model.hpp"
#include "scheme.hpp"

namespace uptrain {

struct train_options {
  long steps = 0;
  index batch = 128;
  double lr = 1e-3;       ///< peak learning rate
  long warmup = 0;        ///< linear warm-up steps
  double weight_decay = 0.05;
  double clip = 1.0;      ///< global gradient-norm clip
  long log_every = 25;    ///< steps per point of the loss curve
};

struct protocol_options {
  vit_config model;
  index groups = 4;          ///< G of GQA/KDGQA/DGQA/PGQA/WGQA
  index dgqa_window = 2;     ///< DGQA's window W
  int seeds = 3;
  std::uint64_t first_seed = 1;
  train_options pretrain, uptrain;
  std::size_t converted_eval = 2000;  ///< test images to evaluate each converted checkpoint on before uptraining
  int jobs = 2;                       ///< runs trained at once (one thread each)
  std::vector<std::string> only;      ///< scheme ids to run (empty: all)
};

/// The outcome of one training run (pretraining or one scheme's uptraining).
struct run_result {
  std::string scheme;                  ///< scheme id ("pretrain" for the MHA pretraining)
  std::uint64_t seed = 0;
  long steps = 0;
  index batch = 0;
  std::vector<std::pair<long, double>> loss_curve;  ///< (steps done, mean training loss over the interval)
  double test_accuracy = 0, test_loss = 0;          ///< whole test set, after training
  double converted_accuracy = -1;                   ///< on the first converted_eval test images, before (-1: not run)
  double seconds = 0;                               ///< wall time of the training steps
  double attention_forward_seconds = 0, attention_backward_seconds = 0;  ///< summed over layers
  /// Per layer: how often each allocation (query heads per KV head) was used in a training step
  /// (KDGQA and DGQA only), and the allocation at each loss-curve point.
  std::vector<std::map<std::vector<int>, long>> allocations;
  std::vector<std::vector<std::vector<int>>> allocation_trace;
  double seconds_per_step() const { return steps > 0 ? seconds / static_cast<double>(steps) : 0.0; }
};

struct evaluation {
  double accuracy = 0, loss = 0;
};

/// The converted checkpoint for scheme `s`: a copy of `mha` whose attention layers get the scheme's
/// shape; K/V projection weights and biases by s.conv (mean pooling through gqa::convert_mha_to_gqa,
/// the first head of each group, or fresh random weights); SQA's query heads are mean-pooled in the same
/// contiguous groups and its output projection's column blocks summed (exact when the pooled heads are
/// equal); WGQA keeps the per-head projections with weights 1/s (mean init: step 0 equals GQA mean pooling)
/// or N(0, 1) (gqa::wgqa_weights::random_init). Random draws are keyed by `seed`.
vit convert(const vit& mha, const scheme& s, std::uint64_t seed);

/// Trains `model` in place with AdamW; batches follow epoch_order(seed_data, epoch). `progress` is called
/// every log_every steps with (steps done, mean loss of the interval).
run_result train(vit& model, const image_set& data, const train_options& opt, std::uint64_t seed_data,
                 const std::function<void(long, double)>& progress = {});

/// Accuracy and mean cross-entropy on the first `limit` examples of `set` (all: 0), in batches of `batch`
/// (the training batch size: KDGQA's allocation depends on the batch it sees).
evaluation evaluate(vit& model, const image_set& set, index batch, std::size_t limit = 0);

struct protocol_result {
  std::vector<scheme> schemes;
  std::vector<run_result> pretrain;  ///< one per seed
  std::vector<run_result> runs;      ///< one per (seed, scheme), seed-major
  std::size_t train_size = 0, test_size = 0;
  double seconds = 0;                ///< wall time of the whole protocol
};

/// Runs the whole protocol on `data` (pretraining per seed, then every scheme per seed); progress lines
/// go to stderr.
protocol_result run_protocol(const protocol_options& opt, const fashion_mnist& data);

}  // namespace uptrain
