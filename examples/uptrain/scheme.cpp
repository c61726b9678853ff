// examples/uptrain/scheme.cpp: the list of uptraining targets.
#include "scheme.hpp"

namespace uptrain {

attention_spec mha_spec(gqa::index_t width, gqa::index_t heads) {
  attention_spec a;
  a.kind = grouping::mha;
  a.width = width;
  a.heads = a.q_heads = a.kv_heads = heads;
  return a;
}

std::vector<scheme> all_schemes(gqa::index_t width, gqa::index_t heads, gqa::index_t groups, gqa::index_t window) {
  const attention_spec base = mha_spec(width, heads);
  auto with = [&](grouping kind, gqa::index_t q_heads, gqa::index_t kv_heads) {
    attention_spec a = base;
    a.kind = kind;
    a.q_heads = q_heads;
    a.kv_heads = kv_heads;
    a.dgqa_window = window;
    return a;
  };
  const std::string g = std::to_string(groups), w = std::to_string(window);
  std::vector<scheme> out;
  out.push_back({"mha", "MHA (continued)", "grouping", base, conversion::none});
  out.push_back({"gqa", "GQA-" + g, "grouping", with(grouping::gqa, heads, groups)});
  out.push_back({"mqa", "MQA", "grouping", with(grouping::mqa, heads, 1)});
  out.push_back({"kdgqa", "KDGQA-" + g, "grouping", with(grouping::kdgqa, heads, groups)});
  for (const auto kind : {gqa::dgqa_kind::diff, gqa::dgqa_kind::ema}) {
    const std::string k(gqa::to_string(kind));
    scheme s{"dgqa-" + k, "DGQA-" + g + " " + k + " (W " + w + ")", "grouping", with(grouping::dgqa, heads, groups)};
    s.attn.dgqa_kind = kind;
    out.push_back(s);
  }
  out.push_back({"pgqa", "PGQA-" + g, "grouping", with(grouping::pgqa, heads, groups)});
  for (const auto kind : {gqa::wgqa_kind::scalar, gqa::wgqa_kind::col})
    for (const bool random : {false, true}) {
      const std::string k(gqa::to_string(kind));
      scheme s{"wgqa-" + k + (random ? "-rand" : ""), "WGQA-" + g + " " + k + (random ? ", random init" : ", mean init"),
               "grouping", with(grouping::wgqa, heads, groups), conversion::per_head, random};
      s.attn.wgqa_kind = kind;
      out.push_back(s);
    }
  // SQA: fewer query heads (d stays width / H), only where H splits that far.
  struct sqa_shape {
    const char* id;
    const char* name;
    gqa::index_t q_div, kv_div;  // hq = H / q_div, hkv = H / kv_div (kv_div 0: one KV head)
  };
  for (const sqa_shape& c : {sqa_shape{"ssqa", "sSQA", 2, 2}, sqa_shape{"sqa", "SQA", 2, 4},
                             sqa_shape{"xsqa", "xSQA", 4, 4}, sqa_shape{"xsmqa", "xSMQA", 4, 0}}) {
    if (heads % c.q_div != 0 || (c.kv_div != 0 && heads % c.kv_div != 0)) continue;
    const gqa::index_t hq = heads / c.q_div, hkv = c.kv_div == 0 ? 1 : heads / c.kv_div;
    if (std::string(c.id) == "xsmqa" && hkv == heads / 4) continue;  // H = 4: xSMQA would be xSQA
    out.push_back({c.id, std::string(c.name) + " " + std::to_string(hq) + "/" + std::to_string(hkv), "sqa",
                   with(grouping::sqa, hq, hkv)});
  }
  out.push_back({"mqa-first", "MQA, first-head conversion", "conversion", with(grouping::mqa, heads, 1),
                 conversion::first_head});
  out.push_back({"mqa-rand", "MQA, random K/V", "conversion", with(grouping::mqa, heads, 1), conversion::random});
  return out;
}

}  // namespace uptrain
