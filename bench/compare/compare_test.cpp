// bench/compare/compare_test.cpp: unit tests of gqa-compare's cost model, scheme list, statistics and
// command line (model.hpp, cli.hpp). The end-to-end output checks are check_outputs.cmake/check_cli.cmake.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include <gqa/variants/registry.hpp>

#include "cli.hpp"
#include "model.hpp"
#include "report.hpp"
#include "schemes.hpp"

namespace gqa_compare {
namespace {

layer_config llama(std::int64_t sq, std::int64_t skv) {
  layer_config c = presets("llama-prefill").at(0);
  c.seq_q = sq;
  c.seq_kv = skv;
  c.hkv_ref = 8;
  return c;
}

const scheme& find(const std::vector<scheme>& list, const std::string& name) {
  const auto it = std::find_if(list.begin(), list.end(), [&](const scheme& s) { return s.name == name; });
  if (it == list.end()) throw std::runtime_error("no scheme " + name);
  return *it;
}

std::vector<std::string> names(const std::vector<scheme>& list) {
  std::vector<std::string> out;
  for (const scheme& s : list) out.push_back(s.name);
  return out;
}

TEST(compare_model, visible_pairs_match_the_mask_by_brute_force) {
  // The bottom-right causal mask: query i sees key j iff j <= i + (Skv - Sq).
  for (std::int64_t sq : {1, 2, 5, 17})
    for (std::int64_t skv : {1, 3, 17, 40}) {
      std::int64_t brute = 0;
      for (std::int64_t i = 0; i < sq; ++i)
        for (std::int64_t j = 0; j < skv; ++j) brute += j <= i + (skv - sq) ? 1 : 0;
      EXPECT_EQ(visible_pairs(sq, skv, true), brute) << "sq " << sq << " skv " << skv;
      EXPECT_EQ(visible_pairs(sq, skv, false), sq * skv);
    }
  EXPECT_EQ(visible_pairs(2048, 2048, true), 2048 * 2049 / 2);
  EXPECT_EQ(visible_pairs(1, 8192, true), 8192);
}

TEST(compare_model, flops_kv_bytes_and_params_of_the_llama_layer) {
  const layer_config c = llama(2048, 2048);
  const auto list = schemes_for(c);
  const scheme &mha = find(list, "MHA"), &gqa8 = find(list, "GQA-8"), &mqa = find(list, "MQA");
  // 4 · b · hq · d · pairs: Q·Kᵀ and P·V, 2 FLOPs per multiply-add each.
  EXPECT_EQ(attention_flops(c, mha), std::int64_t{4} * 32 * 128 * (2048 * 2049 / 2));
  EXPECT_EQ(attention_flops(c, gqa8), attention_flops(c, mha));  // grouping keeps every query head
  // xSQA computes hq = H/4 query heads, and attention FLOPs scale with hq.
  EXPECT_EQ(attention_flops(c, find(list, "xSQA")), attention_flops(c, mha) / 4);
  // 2 (K, V) · hkv · d · 4 bytes.
  EXPECT_EQ(kv_bytes_per_token(c, mha), 2 * 32 * 128 * 4);
  EXPECT_EQ(kv_bytes_per_token(c, gqa8), 2 * 8 * 128 * 4);
  EXPECT_EQ(kv_bytes_per_token(c, mqa), 2 * 1 * 128 * 4);
  // D = 4096: MHA 4·D²; GQA-8: Q and O D², K and V D·(8·128).
  EXPECT_EQ(attention_params(c, mha), std::int64_t{4} * 4096 * 4096);
  EXPECT_EQ(attention_params(c, gqa8), std::int64_t{2} * 4096 * 4096 + std::int64_t{2} * 4096 * 1024);
  EXPECT_EQ(attention_params(c, find(list, "KDGQA")), attention_params(c, gqa8));
  EXPECT_EQ(attention_params(c, find(list, "PGQA")), attention_params(c, gqa8));
  // WGQA keeps the per-head K/V projections it combines (as the authors' code trains it): MHA's count
  // plus its weights.
  EXPECT_EQ(attention_params(c, find(list, "WGQA")), attention_params(c, mha) + 2 * 32);
  EXPECT_EQ(attention_params(c, find(list, "WGQA-col")), attention_params(c, mha) + 2 * 32 * 128);
  // sSQA: hq = hkv = H/2, every projection halved.
  EXPECT_EQ(attention_params(c, find(list, "sSQA")), attention_params(c, mha) / 2);
}

TEST(compare_model, wgqa_extra_parameters_match_the_paper_for_t5_base) {
  // The WGQA paper's counts: T5-base decoder, 24 attention modules, H = 12, d = 64: 576 (scalar), 36,864
  // (col).
  layer_config t5 = presets("vit-b16").at(0);  // H = 12, d = 64, D = 768, as T5-base
  t5.hkv_ref = 6;
  const auto list = schemes_for(t5);
  EXPECT_EQ(24 * extra_params(t5, find(list, "WGQA")), 576);
  EXPECT_EQ(24 * extra_params(t5, find(list, "WGQA-col")), 36864);
  EXPECT_EQ(extra_params(t5, find(list, "GQA-6")), 0);
}

TEST(compare_model, scheme_list_of_the_presets) {
  layer_config vit = presets("vit-b16").at(0);
  vit.hkv_ref = default_hkv_ref(vit.heads);
  EXPECT_EQ(vit.hkv_ref, 3);
  const auto list = schemes_for(vit);
  EXPECT_EQ(names(list), (std::vector<std::string>{"MHA", "MQA", "GQA-2", "GQA-3", "GQA-4", "GQA-6", "KDGQA", "DGQA",
                                                   "PGQA", "WGQA", "WGQA-col", "SQA", "sSQA", "xSQA", "xSMQA"}));
  const scheme& wgqa = find(list, "WGQA");
  EXPECT_EQ(wgqa.hkv, 3);
  EXPECT_EQ(wgqa.kv_in, 12);  // prepare() combines the 12 per-head K/V into 3
  EXPECT_EQ(find(list, "SQA").hq, 6);
  EXPECT_EQ(find(list, "SQA").hkv, 3);
  EXPECT_EQ(find(list, "xSMQA").hq, 3);
  EXPECT_EQ(find(list, "xSMQA").hkv, 1);
  EXPECT_EQ(find(list, "KDGQA").hkv, 3);

  EXPECT_EQ(default_hkv_ref(32), 8);
  EXPECT_EQ(default_hkv_ref(8), 2);
  EXPECT_EQ(default_hkv_ref(7), 1);
  EXPECT_EQ(default_hkv_ref(1), 1);
}

TEST(compare_model, sqa_configurations_that_do_not_exist_are_reported) {
  layer_config c = tiny_presets().at(0);
  c.heads = 2;
  c.hkv_ref = 1;
  std::vector<std::string> skipped;
  const auto list = schemes_for(c, &skipped);
  EXPECT_EQ(names(list), (std::vector<std::string>{"MHA", "MQA", "KDGQA", "DGQA", "PGQA", "WGQA", "WGQA-col", "sSQA"}));
  ASSERT_EQ(skipped.size(), 3u);
  EXPECT_NE(skipped[0].find("SQA (hq = 1, hkv = 0"), std::string::npos) << skipped[0];
}

// Every registered variant is compared, on every preset and on a layer too small for some rows (H = 2 and
// H = 7 have no GQA-k; H = 2 no SQA), and the rows added for the registry keep their variant's heads.
TEST(compare_model, every_registered_variant_is_compared) {
  std::vector<layer_config> configs = presets("all");
  for (const layer_config& t : tiny_presets()) configs.push_back(t);
  for (const std::int64_t h : {2, 7}) {
    layer_config c = tiny_presets().at(0);
    c.heads = h;
    c.hkv_ref = default_hkv_ref(h);
    configs.push_back(c);
  }
  for (layer_config c : configs) {
    if (c.hkv_ref == 0) c.hkv_ref = default_hkv_ref(c.heads);
    const auto list = compared_schemes(c);
    for (const std::string_view v : gqa::variant_names) {
      const auto it = std::find_if(list.begin(), list.end(), [&](const scheme& s) { return s.variant == v; });
      EXPECT_NE(it, list.end()) << c.name << " (H = " << c.heads << "): registered variant " << v << " is not compared";
    }
    const auto curated = schemes_for(c);
    ASSERT_GE(list.size(), curated.size());
    EXPECT_TRUE(std::equal(curated.begin(), curated.end(), list.begin(), [](const scheme& a, const scheme& b) {
      return a.name == b.name && a.hq == b.hq && a.hkv == b.hkv && a.kv_in == b.kv_in;
    })) << c.name << ": the curated rows come first, unchanged";
    for (std::size_t i = curated.size(); i < list.size(); ++i) {
      const auto h = gqa::variant_heads_for(list[i].variant, {c.heads, c.hkv_ref, c.head_dim, 0});
      ASSERT_TRUE(h.has_value()) << list[i].variant;
      EXPECT_EQ(list[i].kind, scheme_kind::registered);
      EXPECT_EQ((gqa::variant_heads{list[i].hq, list[i].hkv, list[i].kv_in}), *h) << list[i].name;
    }
  }
}

TEST(compare_model, summarize_uses_linear_interpolation_quantiles) {
  const time_stats odd = summarize({5, 1, 4, 2, 3});
  EXPECT_DOUBLE_EQ(odd.min, 1);
  EXPECT_DOUBLE_EQ(odd.q1, 2);
  EXPECT_DOUBLE_EQ(odd.median, 3);
  EXPECT_DOUBLE_EQ(odd.q3, 4);
  EXPECT_DOUBLE_EQ(odd.max, 5);
  const time_stats even = summarize({4, 1, 3, 2});
  EXPECT_DOUBLE_EQ(even.median, 2.5);
  EXPECT_DOUBLE_EQ(even.q1, 1.75);
  EXPECT_DOUBLE_EQ(summarize({7}).median, 7);
  EXPECT_DOUBLE_EQ(summarize({}).median, 0);
}

TEST(compare_model, key_heads_of_the_dynamic_schemes_are_scaled_from_half_to_double) {
  EXPECT_EQ(key_head_scales(1), std::vector<float>{1.0f});
  EXPECT_EQ(key_head_scales(3), (std::vector<float>{0.5f, 1.0f, 2.0f}));
  const std::vector<float> six = key_head_scales(6);
  ASSERT_EQ(six.size(), 6u);
  EXPECT_FLOAT_EQ(six.front(), 0.5f);
  EXPECT_FLOAT_EQ(six.back(), 2.0f);
  EXPECT_TRUE(std::is_sorted(six.begin(), six.end()));
  // (batch 2, seq 1, 3 heads, d 2) of ones: head g of every row becomes key_head_scales(3)[g].
  std::vector<float> k(12, 1.0f);
  scale_key_heads(k.data(), 2, 1, 3, 2);
  EXPECT_EQ(k, (std::vector<float>{0.5f, 0.5f, 1, 1, 2, 2, 0.5f, 0.5f, 1, 1, 2, 2}));
}

run_options parse(std::vector<const char*> args) {
  args.insert(args.begin(), "gqa-compare");
  return parse_args(static_cast<int>(args.size()), args.data());
}

TEST(compare_cli, presets_and_overrides) {
  const run_options all = parse({});
  ASSERT_EQ(all.configs.size(), 3u);
  EXPECT_EQ(all.configs[2].name, "llama-decode");
  EXPECT_EQ(all.configs[2].seq_q, 1);
  EXPECT_EQ(all.configs[2].seq_kv, 8192);
  EXPECT_EQ(all.configs[1].hkv_ref, 8);

  // --decode on a prefill preset decodes one token after its sequence; --seq is then the cache length.
  const run_options dec = parse({"--preset", "vit-b16", "--decode"});
  EXPECT_EQ(dec.configs.at(0).seq_q, 1);
  EXPECT_EQ(dec.configs.at(0).seq_kv, 197);
  const run_options dec2 = parse({"--preset=llama-decode", "--seq", "4096", "--batch=2"});
  EXPECT_EQ(dec2.configs.at(0).seq_q, 1);
  EXPECT_EQ(dec2.configs.at(0).seq_kv, 4096);
  EXPECT_EQ(dec2.configs.at(0).batch, 2);
  const run_options pre = parse({"--preset", "llama-decode", "--prefill", "--seq", "512", "--kv-len", "1024"});
  EXPECT_EQ(pre.configs.at(0).seq_q, 512);
  EXPECT_EQ(pre.configs.at(0).seq_kv, 1024);

  const run_options custom =
      parse({"--preset", "vit-b16", "--heads", "16", "--head-dim", "32", "--non-causal", "--hkv-ref", "8",
             "--reps", "2", "--warmup", "0", "--threads", "1", "--isa", "scalar", "--out", "x", "--no-plot"});
  const layer_config& c = custom.configs.at(0);
  EXPECT_EQ(c.heads, 16);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_FALSE(c.causal);
  EXPECT_EQ(c.hkv_ref, 8);
  EXPECT_EQ(c.reps, 2);
  EXPECT_EQ(c.warmup, 0);
  EXPECT_EQ(custom.threads, 1);
  EXPECT_EQ(custom.isa, "scalar");
  EXPECT_EQ(custom.out_dir, "x");
  EXPECT_FALSE(custom.plot);
  EXPECT_EQ(parse({"--tiny"}).configs.size(), 2u);
  EXPECT_TRUE(parse({"--help"}).help);
}

// --train keeps the prefill configurations (a training step has no decode); a prefill preset switched to
// prefill explicitly stays.
TEST(compare_cli, train_keeps_the_prefill_configurations) {
  EXPECT_FALSE(parse({}).train);
  const run_options all = parse({"--train"});
  EXPECT_TRUE(all.train);
  ASSERT_EQ(all.configs.size(), 2u);
  EXPECT_EQ(all.configs[0].name, "vit-b16");
  EXPECT_EQ(all.configs[1].name, "llama-prefill");
  const run_options tiny = parse({"--tiny", "--train"});
  ASSERT_EQ(tiny.configs.size(), 1u);
  EXPECT_FALSE(tiny.configs[0].decode);
  const run_options pre = parse({"--preset", "llama-decode", "--prefill", "--train"});
  ASSERT_EQ(pre.configs.size(), 1u);
  EXPECT_EQ(pre.configs[0].seq_q, pre.configs[0].seq_kv);
}

// --dtype sets every configuration's K/V element type, which the KV-bytes column follows (2-byte elements:
// half of fp32's bytes); f32 is the default and spells itself.
TEST(compare_cli, dtype_sets_the_kv_element_type_and_its_bytes) {
  for (const layer_config& c : parse({}).configs) EXPECT_EQ(c.dtype, kv_dtype::f32);
  const run_options b = parse({"--dtype", "bf16"});
  ASSERT_EQ(b.configs.size(), 3u);
  for (const layer_config& c : b.configs) EXPECT_EQ(c.dtype, kv_dtype::bf16);
  EXPECT_EQ(parse({"--tiny", "--dtype=f16"}).configs.at(1).dtype, kv_dtype::f16);
  layer_config c = llama(2048, 2048);
  const scheme gqa8 = find(schemes_for(c), "GQA-8");
  EXPECT_EQ(kv_bytes_per_token(c, gqa8), 2 * 8 * 128 * 4);
  for (const kv_dtype t : {kv_dtype::bf16, kv_dtype::f16, kv_dtype::i8}) {
    c.dtype = t;
    // 2-byte elements; int8: one byte each plus the row's fp32 scale.
    EXPECT_EQ(kv_bytes_per_token(c, gqa8), t == kv_dtype::i8 ? 2 * 8 * (128 + 4) : 2 * 8 * 128 * 2) << to_string(t);
    kv_dtype back = kv_dtype::f32;
    EXPECT_TRUE(parse_kv_dtype(to_string(t), back));
    EXPECT_EQ(back, t);
  }
  kv_dtype unchanged = kv_dtype::bf16;
  EXPECT_FALSE(parse_kv_dtype("fp8", unchanged));
  EXPECT_EQ(unchanged, kv_dtype::bf16);
  EXPECT_EQ(to_string(kv_dtype::f32), "f32");
}

TEST(compare_cli, errors_name_the_argument_and_value) {
  auto message = [](std::vector<const char*> args) -> std::string {
    try {
      parse(std::move(args));
    } catch (const usage_error& e) {
      return e.what();
    }
    return "(no error)";
  };
  EXPECT_EQ(message({"--heads", "x"}), "--heads = x: not an integer");
  EXPECT_EQ(message({"--heads", ""}), "--heads = (empty): not an integer");
  EXPECT_EQ(message({"--seq", "0"}), "--seq = 0: must be in [1, 16777216]");
  EXPECT_EQ(message({"--preset", "bert"}),
            "--preset = bert: unknown preset (vit-b16, llama-prefill, llama-decode, all)");
  EXPECT_EQ(message({"--decode=yes"}), "--decode = yes: takes no value");
  EXPECT_EQ(message({"--out"}), "--out: missing value");
  EXPECT_EQ(message({"-x"}), "-x: unknown argument");
  EXPECT_EQ(message({"--preset", "vit-b16", "--hkv-ref", "5"}),
            "--hkv-ref = 5: must divide the number of query heads H = 12 (PGQA and WGQA use uniform groups) "
            "(configuration vit-b16)");
  EXPECT_EQ(message({"--preset", "vit-b16", "--hkv-ref", "24"}).substr(0, 22), "--hkv-ref = 24: must d");
  EXPECT_EQ(message({"--dtype", "int4"}), "--dtype = int4: unknown K/V type (f32, bf16, f16, i8)");
  EXPECT_EQ(message({"--train", "--dtype", "i8"}),
            "--dtype = i8: --train takes f32, bf16 or f16 (int8 is an inference cache format)");
  EXPECT_EQ(message({"--train", "--dtype", "f32"}), "(no error)");
  EXPECT_EQ(message({"--train", "--dtype", "bf16"}), "(no error)");
  EXPECT_EQ(message({"--train", "--dtype", "f16"}), "(no error)");
}

TEST(compare_report, allocation_string_and_table_layout) {
  EXPECT_EQ(allocation_string({4, 0, 3}), "[4,0,3]");
  EXPECT_EQ(allocation_string({}, " "), "[]");
  config_result r;
  r.c = tiny_presets().at(0);
  r.c.hkv_ref = 2;
  scheme_result x;
  x.s = schemes_for(r.c).at(0);
  x.flops = 1234567;
  x.m.seconds = {0.002, 0.001, 0.003};
  x.t = summarize(x.m.seconds);
  x.speedup = 1;
  r.rows.push_back(x);
  const std::string table = format_table(r);
  EXPECT_NE(table.find("== tiny-prefill: "), std::string::npos) << table;
  EXPECT_NE(table.find("| MHA    |   8 |"), std::string::npos) << table;
  EXPECT_NE(table.find("| 0.001 |"), std::string::npos) << table;          // GFLOP, 3 decimals
  EXPECT_NE(table.find("|     2.000 | 1.000-3.000 |"), std::string::npos) << table;  // ms
  const std::string csv = to_csv({r});
  EXPECT_NE(csv.find(",1234567,"), std::string::npos) << csv;
  EXPECT_NE(csv.find(",2.000000,1.000000,1.500000,2.500000,3.000000,1.0000,"), std::string::npos) << csv;
}

}  // namespace
}  // namespace gqa_compare
