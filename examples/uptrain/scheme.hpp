// examples/uptrain/scheme.hpp: the grouping schemes the protocol uptrains into, and how each one's
// attention is shaped (query heads, KV heads) and initialised from the MHA checkpoint.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <gqa/gqa.hpp>

namespace uptrain {

/// Which gqa policy an attention layer runs.
enum class grouping { mha, gqa, mqa, sqa, kdgqa, dgqa, pgqa, wgqa };

/// How a scheme's K/V projections (and SQA's query heads) are made from the MHA checkpoint's.
enum class conversion {
  none,       ///< MHA continued: the checkpoint as it is
  mean_pool,  ///< each group's head is the mean of its members (gqa::convert_mha_to_gqa), Ainslie et al.
  first_head, ///< each group keeps its first member's head
  random,     ///< fresh random K/V projections (as at initialisation); the rest of the checkpoint is kept
  per_head,   ///< WGQA: the per-head projections are kept whole, and learned weights combine them
};

/// The shape of one attention layer: `heads` is the MHA baseline's H (it fixes d = width / H);
/// `q_heads` < H only for SQA; `kv_heads` is what gqa's core sees (G).
struct attention_spec {
  grouping kind = grouping::mha;
  gqa::index_t width = 64, heads = 8, q_heads = 8, kv_heads = 8;
  gqa::dgqa_kind dgqa_kind = gqa::dgqa_kind::diff;
  gqa::index_t dgqa_window = 2;
  gqa::wgqa_kind wgqa_kind = gqa::wgqa_kind::scalar;

  gqa::index_t head_dim() const { return width / heads; }
  /// Heads of the K/V projections: G, except WGQA, which keeps all H and combines them in the forward.
  gqa::index_t kv_proj_heads() const { return kind == grouping::wgqa ? heads : kv_heads; }
};

/// One uptraining target.
struct scheme {
  std::string id;     ///< command line, CSV and JSON name: "gqa", "dgqa-ema", "wgqa-col-rand", ...
  std::string label;  ///< table name: "GQA-4", "DGQA-ema (W 2)", "WGQA col, random init", ...
  std::string group;  ///< report section: "grouping", "sqa" or "conversion"
  attention_spec attn;
  conversion conv = conversion::mean_pool;
  bool wgqa_random_init = false;
};

/// Every scheme for an MHA baseline of `heads` heads and `groups` KV heads (groups divides heads), DGQA
/// window `window`: MHA (continued), GQA-G, MQA, KDGQA, DGQA diff and ema, PGQA, WGQA scalar and col with
/// mean and random initialisation, the SQA configurations that exist for this H (query/KV heads: sSQA
/// H/2 / H/2, SQA H/2 / H/4, xSQA H/4 / H/4, xSMQA H/4 / 1), and MQA converted by first head and by random K/V.
std::vector<scheme> all_schemes(gqa::index_t width, gqa::index_t heads, gqa::index_t groups, gqa::index_t window);

/// The MHA baseline's attention shape.
attention_spec mha_spec(gqa::index_t width, gqa::index_t heads);

}  // namespace uptrain
