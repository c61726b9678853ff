// examples/uptrain/report.cpp: report.md, the CSV and JSON files and the gnuplot plots.
// Accuracies are printed in percent with 2 decimals, losses with 4, times in seconds per epoch with 1 and
// in milliseconds per step with 2; the CSV and JSON files carry full precision.
#include "report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <stdexcept>

namespace uptrain {

namespace {

/// x with `decimals` digits after the point, or, for decimals < 0, in %g form with -decimals significant
/// digits (full(): 17, every digit a double needs to round-trip).
std::string fixed(double x, int decimals) {
  char buf[64];
  if (decimals >= 0) {
    std::snprintf(buf, sizeof buf, "%.*f", decimals, x);
  } else {
    std::snprintf(buf, sizeof buf, "%.*g", -decimals, x);
  }
  return buf;
}
std::string full(double x) { return fixed(x, -17); }
std::string shortest(double x) { return fixed(x, -6); }
std::string pct(double x) { return fixed(100.0 * x, 2); }

std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (const char ch : s) {
    if (ch == '"' || ch == '\\') out += '\\';
    if (static_cast<unsigned char>(ch) < 0x20) {
      out += ' ';
      continue;
    }
    out += ch;
  }
  return out + "\"";
}

std::string alloc_text(const std::vector<int>& a) {
  std::string out = "[";
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (i) out += ' ';
    out += std::to_string(a[i]);
  }
  return out + "]";
}

/// A Markdown table: a header row, then the rows; columns from index `first_number` on are right-aligned.
std::string table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows,
                  std::size_t first_number) {
  auto line = [](const std::vector<std::string>& cells) {
    std::string out = "|";
    for (const std::string& c : cells) out += " " + c + " |";
    return out + "\n";
  };
  std::string out = line(header) + "|";
  for (std::size_t i = 0; i < header.size(); ++i) out += i < first_number ? "---|" : "---:|";
  out += "\n";
  for (const auto& r : rows) out += line(r);
  return out;
}

/// The runs of scheme k over the seeds.
std::vector<const run_result*> runs_of(const protocol_result& r, std::size_t k) {
  std::vector<const run_result*> out;
  for (std::size_t i = k; i < r.runs.size(); i += r.schemes.size()) out.push_back(&r.runs[i]);
  return out;
}

template <class F>
stats over(const std::vector<const run_result*>& runs, F f) {
  std::vector<double> x;
  for (const run_result* run : runs) x.push_back(f(*run));
  return summarise(x);
}

double epoch_seconds(const run_result& run, std::size_t train_size) {
  return run.seconds_per_step() * static_cast<double>(train_size / static_cast<std::size_t>(run.batch));
}
double attention_ms_per_step(const run_result& run) {
  return run.steps > 0 ? 1e3 * (run.attention_forward_seconds + run.attention_backward_seconds) / static_cast<double>(run.steps)
                       : 0.0;
}

std::string mean_sd(const stats& s, bool percent, int decimals) {
  const double k = percent ? 100.0 : 1.0;
  return fixed(k * s.mean, decimals) + (s.n > 1 ? " ± " + fixed(k * s.sd, decimals) : "");
}

const scheme* find_scheme(const protocol_result& r, const std::string& id, std::size_t* index = nullptr) {
  for (std::size_t k = 0; k < r.schemes.size(); ++k)
    if (r.schemes[k].id == id) {
      if (index) *index = k;
      return &r.schemes[k];
    }
  return nullptr;
}

std::string heads_text(const attention_spec& a) {
  return std::to_string(a.q_heads) + "/" + std::to_string(a.kv_heads) +
         (a.kind == grouping::wgqa ? " (of " + std::to_string(a.heads) + ")" : "");
}

std::string results_section(const protocol_result& r, const std::string& group, const std::string& title) {
  std::vector<std::vector<std::string>> rows;
  for (std::size_t k = 0; k < r.schemes.size(); ++k) {
    const scheme& s = r.schemes[k];
    if (s.group != group) continue;
    const auto runs = runs_of(r, k);
    const stats acc = over(runs, [](const run_result& x) { return x.test_accuracy; });
    const stats before = over(runs, [](const run_result& x) { return x.converted_accuracy; });
    const stats loss = over(runs, [](const run_result& x) { return x.test_loss; });
    const stats epoch = over(runs, [&](const run_result& x) { return epoch_seconds(x, r.train_size); });
    const stats attn = over(runs, [](const run_result& x) { return attention_ms_per_step(x); });
    rows.push_back({s.label, heads_text(s.attn), mean_sd(acc, true, 2),
                    acc.n > 1 ? pct(acc.min) + "–" + pct(acc.max) : "",
                    before.mean >= 0 ? mean_sd(before, true, 2) : "", mean_sd(loss, false, 4), fixed(epoch.mean, 1),
                    fixed(attn.mean, 2)});
  }
  if (rows.empty()) return "";
  return "### " + title + "\n\n" +
         table({"scheme", "heads q/kv", "test top-1 %", "min–max", "before uptraining %", "test loss", "s / epoch",
                "attention ms / step"},
               rows, 2) +
         "\n";
}

/// Share of `steps` as a percentage with one decimal.
std::string share(long part, long total) { return total > 0 ? fixed(100.0 * static_cast<double>(part) / static_cast<double>(total), 1) + "%" : ""; }

std::string allocation_section(const protocol_result& r) {
  std::vector<std::vector<std::string>> rows;
  for (std::size_t k = 0; k < r.schemes.size(); ++k) {
    const scheme& s = r.schemes[k];
    if (s.attn.kind != grouping::kdgqa && s.attn.kind != grouping::dgqa) continue;
    const auto runs = runs_of(r, k);
    const std::size_t layers = runs.front()->allocations.size();
    for (std::size_t l = 0; l < layers; ++l) {
      std::map<std::vector<int>, long> counts;  // summed over seeds
      for (const run_result* run : runs)
        for (const auto& [alloc, n] : run->allocations[l]) counts[alloc] += n;
      long total = 0, uniform = 0, idle = 0;
      for (const auto& [alloc, n] : counts) {
        total += n;
        if (std::all_of(alloc.begin(), alloc.end(), [&](int x) { return x == alloc.front(); })) uniform += n;
        if (std::count(alloc.begin(), alloc.end(), 0) > 0) idle += n;
      }
      std::vector<std::pair<std::vector<int>, long>> sorted(counts.begin(), counts.end());
      std::stable_sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
      std::string top;
      for (std::size_t i = 0; i < std::min<std::size_t>(3, sorted.size()); ++i)
        top += (i ? ", " : "") + alloc_text(sorted[i].first) + " " + share(sorted[i].second, total);
      rows.push_back({s.label, std::to_string(l), top, std::to_string(counts.size()), share(uniform, total),
                      share(idle, total)});
    }
  }
  if (rows.empty()) return "";
  return "## Allocations KDGQA and DGQA chose\n\n"
         "Query heads per KV head in every training step, counted over all seeds' uptraining steps.\n\n" +
         table({"scheme", "layer", "most used (share of steps)", "distinct", "uniform", "with an idle KV head"}, rows, 3) +
         "\n";
}

std::string published_section(const protocol_result& r) {
  std::string out = "## Published results beside ours\n\n";
  for (const published_claim& c : published_claims()) {
    std::vector<std::vector<std::string>> rows;
    struct ours {
      std::string label;
      stats s;
      bool present = false;
    };
    std::vector<ours> mine;
    for (const published_entry& e : c.entries) {
      std::size_t k = 0;
      ours o;
      if (const scheme* s = find_scheme(r, e.scheme, &k)) {
        o.label = s->label;
        o.s = over(runs_of(r, k), [&](const run_result& x) { return c.compare_loss ? x.test_loss : x.test_accuracy; });
        o.present = true;
      }
      mine.push_back(o);
      rows.push_back({e.their_name, o.present ? o.label : "(not run)", fixed(e.value, c.compare_loss ? 4 : 2),
                      o.present ? mean_sd(o.s, !c.compare_loss, c.compare_loss ? 4 : 2) : ""});
    }
    out += "### " + c.title + "\n\n" + c.source + "\n\n" +
           table({"published", "ours", "published " + c.their_metric, c.compare_loss ? "our test loss" : "our test top-1 %"}, rows, 2);
    // Every pair the source orders strictly: do we order it the same way, and is our difference larger
    // than twice its standard error over seeds?
    int pairs = 0, same = 0, same_resolved = 0, reversed_resolved = 0;
    std::string adjacent;
    for (std::size_t i = 0; i < c.entries.size(); ++i)
      for (std::size_t j = i + 1; j < c.entries.size(); ++j) {
        if (!mine[i].present || !mine[j].present || c.entries[i].value == c.entries[j].value) continue;
        ++pairs;
        const double sign = c.compare_loss ? -1.0 : 1.0;  // "better" is lower loss or higher top-1
        const double delta = sign * (mine[i].s.mean - mine[j].s.mean);
        const double se = std::sqrt(mine[i].s.sd * mine[i].s.sd / std::max(1, mine[i].s.n) +
                                    mine[j].s.sd * mine[j].s.sd / std::max(1, mine[j].s.n));
        const bool resolved = mine[i].s.n > 1 && mine[j].s.n > 1 && std::fabs(delta) > 2.0 * se;
        same += delta > 0;
        same_resolved += delta > 0 && resolved;
        reversed_resolved += delta < 0 && resolved;
        if (j == i + 1) {
          const double k = c.compare_loss ? 1.0 : 100.0;
          adjacent += "- " + c.entries[i].their_name + " ahead of " + c.entries[j].their_name + ": ours " +
                      (delta > 0 ? "agree" : "disagree") + " (Δ " + fixed(k * delta, c.compare_loss ? 4 : 2) +
                      (mine[i].s.n > 1 ? ", 2 SE " + fixed(2 * k * se, c.compare_loss ? 4 : 2) : "") + ")" +
                      (mine[i].s.n < 2 ? ", one seed: no spread to judge it by" : resolved ? "" : ", within noise") + "\n";
        }
      }
    out += "\nOrdered pairs of the source reproduced: " + std::to_string(same) + " of " + std::to_string(pairs) +
           " (beyond 2 standard errors over seeds: " + std::to_string(same_resolved) + " agree, " +
           std::to_string(reversed_resolved) + " reversed). Neighbours in the published order (Δ = how much better the first is in ours" +
           (c.compare_loss ? ", in loss" : ", in top-1 points") + "):\n\n" + adjacent + "\n";
  }
  return out;
}

void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  f.close();
  if (!f) throw std::runtime_error(path.string() + ": cannot write");
}

std::string json_curve(const std::vector<std::pair<long, double>>& curve) {
  std::string out = "[";
  for (std::size_t i = 0; i < curve.size(); ++i)
    out += (i ? ", " : "") + std::string("[") + std::to_string(curve[i].first) + ", " + full(curve[i].second) + "]";
  return out + "]";
}

std::string json_alloc(const std::vector<int>& a) {
  std::string out = "[";
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(a[i]);
  }
  return out + "]";
}

std::string json_run(const run_result& run, std::size_t train_size) {
  std::string out = "{\"seed\": " + std::to_string(run.seed) + ", \"steps\": " + std::to_string(run.steps) +
                    ", \"batch\": " + std::to_string(run.batch) + ", \"test_accuracy\": " + full(run.test_accuracy) +
                    ", \"test_loss\": " + full(run.test_loss) +
                    ", \"converted_accuracy\": " + (run.converted_accuracy >= 0 ? full(run.converted_accuracy) : "null") +
                    ", \"seconds\": " + full(run.seconds) + ", \"seconds_per_epoch\": " + full(epoch_seconds(run, train_size)) +
                    ", \"attention_forward_seconds\": " + full(run.attention_forward_seconds) +
                    ", \"attention_backward_seconds\": " + full(run.attention_backward_seconds) +
                    ", \"loss_curve\": " + json_curve(run.loss_curve);
  if (!run.allocations.empty()) {
    out += ", \"allocations\": [";
    for (std::size_t l = 0; l < run.allocations.size(); ++l) {
      out += l ? ", [" : "[";
      bool first = true;
      for (const auto& [alloc, n] : run.allocations[l]) {
        out += (first ? "" : ", ") + std::string("{\"alloc\": ") + json_alloc(alloc) + ", \"steps\": " + std::to_string(n) + "}";
        first = false;
      }
      out += "]";
    }
    out += "], \"allocation_trace\": [";
    for (std::size_t l = 0; l < run.allocation_trace.size(); ++l) {
      out += l ? ", [" : "[";
      for (std::size_t i = 0; i < run.allocation_trace[l].size(); ++i) out += (i ? ", " : "") + json_alloc(run.allocation_trace[l][i]);
      out += "]";
    }
    out += "]";
  }
  return out + "}";
}

std::string json_stats(const stats& s) {
  return "{\"mean\": " + full(s.mean) + ", \"sd\": " + full(s.sd) + ", \"min\": " + full(s.min) + ", \"max\": " + full(s.max) +
         ", \"n\": " + std::to_string(s.n) + "}";
}

std::string format_json(const run_info& info, const protocol_options& opt, const protocol_result& r) {
  std::string out = "{\n  \"run\": {\"started\": " + quoted(info.started) + ", \"cpu\": " + quoted(info.cpu) +
                    ", \"isa\": " + quoted(info.isa) + ", \"jobs\": " + std::to_string(info.jobs) +
                    ", \"command\": " + quoted(info.command) + ", \"seconds\": " + full(r.seconds) + "},\n";
  out += "  \"model\": {\"width\": " + std::to_string(opt.model.width) + ", \"heads\": " + std::to_string(opt.model.heads) +
         ", \"layers\": " + std::to_string(opt.model.layers) + ", \"mlp_ratio\": " + std::to_string(opt.model.mlp_ratio) +
         ", \"patch\": " + std::to_string(vit_config::patch) + ", \"tokens\": " + std::to_string(vit_config::tokens) + "},\n";
  auto train_json = [](const train_options& t) {
    return "{\"steps\": " + std::to_string(t.steps) + ", \"batch\": " + std::to_string(t.batch) + ", \"lr\": " + full(t.lr) +
           ", \"warmup\": " + std::to_string(t.warmup) + ", \"weight_decay\": " + full(t.weight_decay) +
           ", \"clip\": " + full(t.clip) + "}";
  };
  out += "  \"protocol\": {\"groups\": " + std::to_string(opt.groups) + ", \"dgqa_window\": " + std::to_string(opt.dgqa_window) +
         ", \"seeds\": " + std::to_string(opt.seeds) + ", \"first_seed\": " + std::to_string(opt.first_seed) +
         ", \"train_size\": " + std::to_string(r.train_size) + ", \"test_size\": " + std::to_string(r.test_size) +
         ", \"converted_eval\": " + std::to_string(opt.converted_eval) + ", \"pretrain\": " + train_json(opt.pretrain) +
         ", \"uptrain\": " + train_json(opt.uptrain) + "},\n  \"pretrain\": [";
  for (std::size_t i = 0; i < r.pretrain.size(); ++i) out += (i ? ", " : "") + json_run(r.pretrain[i], r.train_size);
  out += "],\n  \"schemes\": [\n";
  for (std::size_t k = 0; k < r.schemes.size(); ++k) {
    const scheme& s = r.schemes[k];
    const auto runs = runs_of(r, k);
    out += "    {\"id\": " + quoted(s.id) + ", \"label\": " + quoted(s.label) + ", \"group\": " + quoted(s.group) +
           ", \"q_heads\": " + std::to_string(s.attn.q_heads) + ", \"kv_heads\": " + std::to_string(s.attn.kv_heads) +
           ", \"test_accuracy\": " + json_stats(over(runs, [](const run_result& x) { return x.test_accuracy; })) +
           ", \"test_loss\": " + json_stats(over(runs, [](const run_result& x) { return x.test_loss; })) +
           ", \"runs\": [";
    for (std::size_t i = 0; i < runs.size(); ++i) out += (i ? ", " : "") + json_run(*runs[i], r.train_size);
    out += std::string("]}") + (k + 1 < r.schemes.size() ? ",\n" : "\n");
  }
  out += "  ],\n  \"published\": [";
  const auto claims = published_claims();
  for (std::size_t i = 0; i < claims.size(); ++i) {
    out += std::string(i ? ", " : "") + "{\"title\": " + quoted(claims[i].title) + ", \"metric\": " + quoted(claims[i].their_metric) +
           ", \"entries\": [";
    for (std::size_t j = 0; j < claims[i].entries.size(); ++j)
      out += (j ? ", " : "") + std::string("{\"scheme\": ") + quoted(claims[i].entries[j].scheme) +
             ", \"name\": " + quoted(claims[i].entries[j].their_name) + ", \"value\": " + full(claims[i].entries[j].value) + "}";
    out += "]}";
  }
  return out + "]\n}\n";
}

std::string format_csv_runs(const protocol_result& r) {
  std::string out =
      "scheme,seed,q_heads,kv_heads,steps,batch,test_accuracy,test_loss,converted_accuracy,final_train_loss,"
      "seconds_per_epoch,attention_forward_seconds,attention_backward_seconds\n";
  auto row = [&](const std::string& id, const attention_spec* a, const run_result& run) {
    out += id + "," + std::to_string(run.seed) + "," + (a ? std::to_string(a->q_heads) : "") + "," +
           (a ? std::to_string(a->kv_heads) : "") + "," + std::to_string(run.steps) + "," + std::to_string(run.batch) + "," +
           full(run.test_accuracy) + "," + full(run.test_loss) + "," +
           (run.converted_accuracy >= 0 ? full(run.converted_accuracy) : "") + "," +
           (run.loss_curve.empty() ? "" : full(run.loss_curve.back().second)) + "," + full(epoch_seconds(run, r.train_size)) + "," +
           full(run.attention_forward_seconds) + "," + full(run.attention_backward_seconds) + "\n";
  };
  for (const run_result& run : r.pretrain) row("pretrain", nullptr, run);
  for (std::size_t i = 0; i < r.runs.size(); ++i) row(r.schemes[i % r.schemes.size()].id, &r.schemes[i % r.schemes.size()].attn, r.runs[i]);
  return out;
}

std::string format_csv_summary(const protocol_result& r) {
  std::string out = "scheme,label,group,q_heads,kv_heads,seeds,top1_mean,top1_sd,top1_min,top1_max,loss_mean,loss_sd,"
                    "converted_top1_mean,seconds_per_epoch_mean,attention_ms_per_step_mean\n";
  for (std::size_t k = 0; k < r.schemes.size(); ++k) {
    const scheme& s = r.schemes[k];
    const auto runs = runs_of(r, k);
    const stats acc = over(runs, [](const run_result& x) { return x.test_accuracy; });
    const stats loss = over(runs, [](const run_result& x) { return x.test_loss; });
    const stats before = over(runs, [](const run_result& x) { return x.converted_accuracy; });
    out += s.id + ",\"" + s.label + "\"," + s.group + "," + std::to_string(s.attn.q_heads) + "," + std::to_string(s.attn.kv_heads) +
           "," + std::to_string(acc.n) + "," + full(acc.mean) + "," + full(acc.sd) + "," + full(acc.min) + "," + full(acc.max) +
           "," + full(loss.mean) + "," + full(loss.sd) + "," + (before.mean >= 0 ? full(before.mean) : "") + "," +
           full(over(runs, [&](const run_result& x) { return epoch_seconds(x, r.train_size); }).mean) + "," +
           full(over(runs, [](const run_result& x) { return attention_ms_per_step(x); }).mean) + "\n";
  }
  return out;
}

// Note [plots]: accuracy.dat has one row per scheme (index, label, mean %, sd %, colour of its section:
// grouping, SQA, conversion); loss.dat one gnuplot
// data block per curve (the pretraining first, then each scheme), "steps mean-loss" averaged over seeds,
// blocks separated by two blank lines so `index i` selects curve i.
const char* const plot_script = R"gp(# Written by gqa_example_uptrain: renders accuracy.png and loss.png from accuracy.dat and loss.dat.
if (strstrt(GPVAL_TERMINALS, "pngcairo") > 0) {
  set terminal pngcairo size 1280,720 noenhanced font "sans,10"
} else {
  set terminal png size 1280,720 noenhanced
}
set datafile separator "\t"
set grid ytics lc rgb "#dddddd"

set output "accuracy.png"
set title "Test top-1 after uptraining (mean, bars: ± 1 sd over seeds)"
set style fill solid 0.8 border -1
set boxwidth 0.7
set xtics rotate by -40 left nomirror
set ylabel "top-1 %"
set key off
stats "accuracy.dat" using 3 nooutput
set yrange [STATS_min - 2 : STATS_max + 1]
set rmargin 12
plot "accuracy.dat" using 1:3:5:xtic(2) with boxes lc variable, \
     "" using 1:3:4 with yerrorbars lc rgb "black" pt 0, \
     "" using 1:($3 + $4):(sprintf("%.1f", $3)) with labels offset 0,0.7 font ",8"

reset
set datafile separator "\t"
set grid lc rgb "#dddddd"
set output "loss.png"
set multiplot layout 1,2 title "Training loss (mean of each logging interval, averaged over seeds)"
set xlabel "step"
set ylabel "cross-entropy"
set key off
set title "MHA pretraining"
plot "loss.dat" index 0 using 1:2 with lines lw 2 lc rgb "#4c72b0"
set title "uptraining, every scheme"
set key outside right top vertical font ",8"
# Ten distinct colours, solid for the first ten curves and dashed after.
colours = "#1f77b4 #ff7f0e #2ca02c #d62728 #9467bd #8c564b #e377c2 #7f7f7f #bcbd22 #17becf"
do for [i=1:10] { set linetype i lc rgb word(colours, i) }
set linetype cycle 10
dash(i) = i > 10 ? 2 : 1
plot for [i=1:ncurves] "loss.dat" index i using 1:2 with lines lw 1.5 dt dash(i) title columnheader(1)
unset multiplot
)gp";

std::vector<std::pair<long, double>> mean_curve(const std::vector<const run_result*>& runs) {
  std::vector<std::pair<long, double>> out = runs.front()->loss_curve;
  for (std::size_t i = 0; i < out.size(); ++i) {
    double sum = 0;
    for (const run_result* run : runs) sum += run->loss_curve[i].second;
    out[i].second = sum / static_cast<double>(runs.size());
  }
  return out;
}

std::string format_loss_data(const protocol_result& r) {
  auto block = [](const std::string& name, const std::vector<std::pair<long, double>>& curve) {
    std::string out = name + "\n";
    for (const auto& [step, loss] : curve) out += std::to_string(step) + "\t" + full(loss) + "\n";
    return out + "\n\n";
  };
  std::vector<const run_result*> pre;
  for (const run_result& run : r.pretrain) pre.push_back(&run);
  std::string out = block("pretrain", mean_curve(pre));
  for (std::size_t k = 0; k < r.schemes.size(); ++k) out += block(r.schemes[k].label, mean_curve(runs_of(r, k)));
  return out;
}

}  // namespace

stats summarise(const std::vector<double>& x) {
  stats s;
  s.n = static_cast<int>(x.size());
  if (x.empty()) return s;
  s.min = *std::min_element(x.begin(), x.end());
  s.max = *std::max_element(x.begin(), x.end());
  for (const double v : x) s.mean += v;
  s.mean /= static_cast<double>(x.size());
  if (x.size() > 1) {
    double sq = 0;
    for (const double v : x) sq += (v - s.mean) * (v - s.mean);
    s.sd = std::sqrt(sq / static_cast<double>(x.size() - 1));
  }
  return s;
}

std::vector<published_claim> published_claims() {
  return {
      {"KDGQA/DGQA: ViT-B on CIFAR-10, a third-party run of the authors' code",
       "Branch `results` of yjzhang0505/key-driven-gqa (a fork of the authors' zohaib-khan5040/key-driven-gqa): "
       "ViT-B trained from scratch on CIFAR-10, 6 of 12 KV heads, DGQA window 2, 20 epochs; final test top-1.",
       "top-1 %",
       false,
       {{"dgqa-ema", "DGQA-ema", 72.48}, {"gqa", "GQA", 71.61}, {"kdgqa", "KDGQA", 68.79}, {"dgqa-diff", "DGQA-diff", 64.18}}},
      {"WGQA: T5-base on CNN/DailyMail",
       "Chinnakonduru and Mohapatra, Weighted Grouped Query Attention (arXiv 2407.10855), Table 1: ROUGE-1 after "
       "uptraining T5-base's decoder with G = H/2. The paper reports no spread.",
       "ROUGE-1",
       false,
       {{"wgqa-scalar", "WGQA", 41.9},
        {"wgqa-scalar-rand", "RANDWGQA", 41.9},
        {"wgqa-col", "COLWGQA", 41.8},
        {"gqa", "GQA", 41.7},
        {"wgqa-col-rand", "RANDCOLWGQA", 40.8}}},
      {"SQA: a dense ~10M-parameter language model on Wikipedia",
       "Filipek, Sparse Query Attention (arXiv 2510.01817), Table 1: validation loss with H = 16 (GQA there has 4 KV "
       "heads, H/4; ours has G of H).",
       "validation loss",
       true,
       {{"mha", "MHA", 1.1976},
        {"gqa", "GQA", 1.2177},
        {"ssqa", "sSQA", 1.2201},
        {"sqa", "SQA", 1.2272},
        {"xsqa", "xSQA", 1.2428},
        {"mqa", "MQA", 1.2497},
        {"xsmqa", "xSMQA", 1.2815}}},
      {"GQA paper: initialising MQA from MHA",
       "Ainslie et al., GQA (arXiv 2305.13245), Figure 4: T5-Large uptrained to MQA for 5% of its pretraining steps, "
       "average score by how the single K/V head is initialised (values read off the bar chart).",
       "average score",
       false,
       {{"mqa", "mean pool", 55.6}, {"mqa-first", "first head", 55.1}, {"mqa-rand", "random", 54.6}}},
  };
}

std::string format_report(const run_info& info, const protocol_options& opt, const protocol_result& r) {
  const vit_config& m = opt.model;
  const double per_epoch = static_cast<double>(r.train_size / static_cast<std::size_t>(opt.uptrain.batch));
  std::vector<const run_result*> pre;
  for (const run_result& run : r.pretrain) pre.push_back(&run);
  const stats pre_acc = over(pre, [](const run_result& x) { return x.test_accuracy; });
  std::string seeds;
  for (int i = 0; i < opt.seeds; ++i) seeds += (i ? ", " : "") + std::to_string(opt.first_seed + static_cast<std::uint64_t>(i));

  std::string out = "# Uptraining a tiny ViT from MHA into every grouping scheme (Fashion-MNIST)\n\n";
  out += "Run " + info.started + " on " + (info.cpu.empty() ? "an unknown CPU" : info.cpu) + ", ISA " + info.isa + ", " +
         std::to_string(info.jobs) + " run(s) at a time, one thread each; wall time " + fixed(r.seconds / 60.0, 1) +
         " min. Command: `" + info.command + "`.\n\n";
  out += "**Model.** ViT: 28×28 images in 4×4 patches (49 tokens + a class token), width " + std::to_string(m.width) +
         ", " + std::to_string(m.heads) + " heads of d = " + std::to_string(m.width / m.heads) + ", " +
         std::to_string(m.layers) + " pre-LayerNorm blocks, GELU MLP of " + std::to_string(m.mlp_ratio * m.width) +
         ", learned positions, classifier on the class token. Dense layers in Eigen, attention through gqa::forward "
         "with each scheme's policy.\n\n";
  out += "**Protocol.** For each seed (" + seeds + "): MHA trained " + std::to_string(opt.pretrain.steps) + " steps (" +
         fixed(static_cast<double>(opt.pretrain.steps) / per_epoch, 1) + " epochs of " + std::to_string(r.train_size) +
         " images, batch " + std::to_string(opt.pretrain.batch) + ", AdamW peak lr " + shortest(opt.pretrain.lr) + ", " +
         std::to_string(opt.pretrain.warmup) + " warm-up steps, cosine decay); converted; every scheme trained " +
         std::to_string(opt.uptrain.steps) + " steps (" + fixed(static_cast<double>(opt.uptrain.steps) / per_epoch, 2) +
         " epochs, " + fixed(100.0 * static_cast<double>(opt.uptrain.steps) / static_cast<double>(std::max(1L, opt.pretrain.steps)), 1) +
         "% of the pretraining steps, peak lr " + shortest(opt.uptrain.lr) + ", " + std::to_string(opt.uptrain.warmup) +
         " warm-up steps) from the converted checkpoint on the same batches; top-1 on the " + std::to_string(r.test_size) +
         " test images (\"before uptraining\": the converted checkpoint on the first " + std::to_string(opt.converted_eval) +
         "). G = " + std::to_string(opt.groups) + " KV heads, DGQA window " + std::to_string(opt.dgqa_window) +
         ". \"s / epoch\" is one thread's training time scaled to an epoch; \"attention ms / step\" the part spent in "
         "attention (gqa's forward with the policy, and the backward).\n\n";
  out += "Pretrained MHA: test top-1 " + mean_sd(pre_acc, true, 2) + " %" +
         (pre_acc.n > 1 ? " (mean ± sd over " + std::to_string(pre_acc.n) + " seeds)" : "") + ".\n\n";
  out += "## Test top-1 after uptraining\n\n";
  out += results_section(r, "grouping", "Grouping schemes (H = " + std::to_string(m.heads) + " query heads, G = " +
                                            std::to_string(opt.groups) + " KV heads)");
  out += results_section(r, "sqa", "SQA: fewer query heads (q/kv of H = " + std::to_string(m.heads) + ")");
  out += results_section(r, "conversion", "MHA to MQA: how the K/V head is initialised (mean pool is the MQA row above)");
  out += allocation_section(r);
  out += published_section(r);
  return out;
}

std::vector<std::string> write_outputs(const std::filesystem::path& dir, const run_info& info, const protocol_options& opt,
                                       const protocol_result& r, bool plot) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (!std::filesystem::is_directory(dir)) throw std::runtime_error(dir.string() + ": cannot create the folder (" + ec.message() + ")");
  std::vector<std::string> written;
  auto put = [&](const std::string& name, const std::string& text) {
    write_file(dir / name, text);
    written.push_back(name);
  };
  put("report.md", format_report(info, opt, r));
  put("runs.csv", format_csv_runs(r));
  put("summary.csv", format_csv_summary(r));
  put("results.json", format_json(info, opt, r));
  if (!plot) return written;

  std::string acc;  // See Note [plots]
  for (std::size_t k = 0; k < r.schemes.size(); ++k) {
    const stats s = over(runs_of(r, k), [](const run_result& x) { return x.test_accuracy; });
    const int colour = r.schemes[k].group == "grouping" ? 1 : r.schemes[k].group == "sqa" ? 2 : 4;
    acc += std::to_string(k) + "\t" + r.schemes[k].label + "\t" + full(100 * s.mean) + "\t" + full(100 * s.sd) + "\t" +
           std::to_string(colour) + "\n";
  }
  put("accuracy.dat", acc);
  put("loss.dat", format_loss_data(r));
  put("plots.gp", plot_script);
  if (std::system("command -v gnuplot > /dev/null 2>&1") != 0) {
    written.push_back("(no plots: gnuplot is not installed; bash scripts/install-deps.sh --plot)");
    return written;
  }
  std::string quoted_dir = "'";  // for the shell: every ' becomes '\''
  for (const char ch : dir.string()) quoted_dir += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  quoted_dir += "'";
  const std::string cmd = "cd " + quoted_dir + " && gnuplot -e 'ncurves=" + std::to_string(r.schemes.size()) +
                          "' plots.gp > plots.log 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    written.push_back("(gnuplot failed: see plots.log)");
    return written;
  }
  std::filesystem::remove(dir / "plots.log", ec);
  written.push_back("accuracy.png");
  written.push_back("loss.png");
  return written;
}

}  // namespace uptrain
