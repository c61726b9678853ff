// examples/uptrain/protocol.cpp: conversion, the training loop, evaluation and the pool of runs.
#include "protocol.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>

#include "optimiser.hpp"

namespace uptrain {

namespace {

using clock_type = std::chrono::steady_clock;

/// Seeds of a run's independent random choices, derived from the run's seed.
enum class stream : std::uint64_t { init = 1, pretrain_data, uptrain_data, convert };
std::uint64_t derive(std::uint64_t seed, stream s) { return gqa::random::hash(seed, {static_cast<std::uint64_t>(s)}); }

std::span<const float> flat(const matrix<float>& m) { return {m.data(), static_cast<std::size_t>(m.size())}; }
void assign(matrix<float>& m, const std::vector<float>& values) {
  std::copy(values.begin(), values.end(), m.data());
}

/// Column blocks of the output projection (width × H·d), summed in contiguous groups of H / hq heads:
/// pooled query head i stands for heads [i·s, (i+1)·s), whose outputs the projection used to add up, so
/// its own block is the sum of theirs (exact when those heads' outputs are equal). Done as gqa's mean
/// pooling of the transposed (row-block) weight, times s.
matrix<float> sum_pool_columns(const matrix<float>& w, index heads, index groups, index d) {
  const matrix<float> wt = w.transpose();
  const std::vector<float> pooled = gqa::mean_pool_heads(flat(wt), heads, groups, d, w.rows());
  matrix<float> out_t(groups * d, w.rows());
  assign(out_t, pooled);
  return (out_t * static_cast<float>(heads / groups)).transpose();
}

/// Head g of the result is head g·s of the source, s = heads / groups (rows of d·in values each).
matrix<float> first_heads(const matrix<float>& w, index heads, index groups, index d) {
  const index s = heads / groups;
  matrix<float> out(groups * d, w.cols());
  for (index g = 0; g < groups; ++g) out.middleRows(g * d, d) = w.middleRows(g * s * d, d);
  return out;
}

void convert_attention(const attention_layer& mha, attention_layer& out, const scheme& s, std::uint64_t seed) {
  const attention_spec& a = s.attn;
  const index H = a.heads, d = a.head_dim(), D = a.width;
  // Queries and the output projection: unchanged, or pooled for SQA.
  if (a.q_heads == H) {
    out.q = mha.q;
    out.o.w.value = mha.o.w.value;
  } else {
    assign(out.q.w.value, gqa::mean_pool_heads(flat(mha.q.w.value), H, a.q_heads, d, D));
    assign(out.q.b.value, gqa::mean_pool_bias(flat(mha.q.b.value), H, a.q_heads, d));
    out.o.w.value = sum_pool_columns(mha.o.w.value, H, a.q_heads, d);
  }
  out.o.b.value = mha.o.b.value;
  // Keys and values.
  switch (s.conv) {
    case conversion::none:
    case conversion::per_head:
      out.k = mha.k;
      out.v = mha.v;
      break;
    case conversion::mean_pool: {
      const gqa::kv_projection kv = gqa::convert_mha_to_gqa(
          {{mha.k.w.value.data(), mha.k.w.value.data() + mha.k.w.value.size()},
           {mha.k.b.value.data(), mha.k.b.value.data() + mha.k.b.value.size()},
           {mha.v.w.value.data(), mha.v.w.value.data() + mha.v.w.value.size()},
           {mha.v.b.value.data(), mha.v.b.value.data() + mha.v.b.value.size()}},
          H, a.kv_heads, d, D);
      assign(out.k.w.value, kv.w_k);
      assign(out.k.b.value, kv.b_k);
      assign(out.v.w.value, kv.w_v);
      assign(out.v.b.value, kv.b_v);
      break;
    }
    case conversion::first_head:
      out.k.w.value = first_heads(mha.k.w.value, H, a.kv_heads, d);
      out.k.b.value = first_heads(mha.k.b.value.transpose(), H, a.kv_heads, d).transpose();
      out.v.w.value = first_heads(mha.v.w.value, H, a.kv_heads, d);
      out.v.b.value = first_heads(mha.v.b.value.transpose(), H, a.kv_heads, d).transpose();
      break;
    case conversion::random:
      break;  // `out` was freshly initialised (truncated normal weights, zero biases) from `seed`
  }
  if (a.kind == grouping::wgqa && s.wgqa_random_init) {
    const gqa::wgqa_weights w = gqa::wgqa_weights::random_init(a.wgqa_kind, H, a.kv_heads, d, D, gqa::random::hash(seed, {out.layer}));
    assign(out.mix_k.value, w.k);
    assign(out.mix_v.value, w.v);
  }
}

}  // namespace

vit convert(const vit& mha, const scheme& s, std::uint64_t seed) {
  vit out = mha;
  for (std::size_t i = 0; i < out.blocks.size(); ++i) {
    attention_layer fresh(s.attn, seed, static_cast<std::uint64_t>(i));
    convert_attention(mha.blocks[i].attn, fresh, s, seed);
    out.blocks[i].attn = std::move(fresh);
  }
  return out;
}

run_result train(vit& model, const image_set& data, const train_options& opt, std::uint64_t seed_data,
                 const std::function<void(long, double)>& progress) {
  run_result r;
  r.steps = opt.steps;
  r.batch = opt.batch;
  const std::vector<param<float>*> params = model.parameters();
  adamw optimiser(params, {opt.lr, 0.9, 0.999, 1e-8, opt.weight_decay});
  const long per_epoch = static_cast<long>(data.size()) / opt.batch;
  if (per_epoch < 1) throw std::invalid_argument("train: fewer examples than one batch");
  const bool grouped = model.blocks.front().attn.spec().kind == grouping::kdgqa ||
                       model.blocks.front().attn.spec().kind == grouping::dgqa;
  if (grouped) {
    r.allocations.resize(model.blocks.size());
    r.allocation_trace.resize(model.blocks.size());
  }
  double fwd0 = 0, bwd0 = 0;
  for (const block& b : model.blocks) {
    fwd0 += b.attn.forward_seconds;
    bwd0 += b.attn.backward_seconds;
  }

  softmax_cross_entropy<float> ce;
  matrix<float> dlogits;
  std::vector<std::uint32_t> order;
  std::vector<std::uint8_t> labels(static_cast<std::size_t>(opt.batch));
  long epoch = -1;
  double interval_loss = 0;
  long interval_steps = 0;
  const auto t0 = clock_type::now();
  for (long step = 0; step < opt.steps; ++step) {
    if (step / per_epoch != epoch) {
      epoch = step / per_epoch;
      order = epoch_order(data.size(), seed_data, static_cast<std::uint64_t>(epoch));
    }
    const long in_epoch = step % per_epoch;
    const std::span<const std::uint32_t> ids(order.data() + in_epoch * opt.batch, static_cast<std::size_t>(opt.batch));
    for (std::size_t i = 0; i < ids.size(); ++i) labels[i] = data.labels[ids[i]];

    model.zero_grad();
    // DGQA's step is the batch index within the epoch, as the reference's train.py sets it.
    const matrix<float>& logits = model.forward(data, ids, {true, static_cast<std::uint64_t>(in_epoch), 0});
    const double loss = ce.forward(logits, labels);
    if (!std::isfinite(loss)) throw std::runtime_error("train: loss is " + std::to_string(loss) + " at step " + std::to_string(step));
    ce.backward(labels, dlogits);
    model.backward(dlogits);
    clip_gradients(params, opt.clip);
    optimiser.step(params, scheduled_lr(opt.lr, step, opt.warmup, opt.steps));

    if (grouped)
      for (std::size_t l = 0; l < model.blocks.size(); ++l) ++r.allocations[l][model.blocks[l].attn.last_allocation()];
    interval_loss += loss;
    ++interval_steps;
    if (interval_steps == opt.log_every || step + 1 == opt.steps) {
      const double mean = interval_loss / static_cast<double>(interval_steps);
      r.loss_curve.emplace_back(step + 1, mean);
      if (grouped)
        for (std::size_t l = 0; l < model.blocks.size(); ++l)
          r.allocation_trace[l].push_back(model.blocks[l].attn.last_allocation());
      if (progress) progress(step + 1, mean);
      interval_loss = 0;
      interval_steps = 0;
    }
  }
  r.seconds = std::chrono::duration<double>(clock_type::now() - t0).count();
  for (const block& b : model.blocks) {
    r.attention_forward_seconds += b.attn.forward_seconds;
    r.attention_backward_seconds += b.attn.backward_seconds;
  }
  r.attention_forward_seconds -= fwd0;
  r.attention_backward_seconds -= bwd0;
  return r;
}

evaluation evaluate(vit& model, const image_set& set, index batch, std::size_t limit) {
  const std::size_t n = limit == 0 ? set.size() : std::min(limit, set.size());
  softmax_cross_entropy<float> ce;
  std::vector<std::uint32_t> ids;
  std::vector<std::uint8_t> labels;
  double loss = 0;
  index correct = 0;
  for (std::size_t start = 0; start < n; start += static_cast<std::size_t>(batch)) {
    const std::size_t count = std::min(static_cast<std::size_t>(batch), n - start);
    ids.resize(count);
    labels.resize(count);
    for (std::size_t i = 0; i < count; ++i) {
      ids[i] = static_cast<std::uint32_t>(start + i);
      labels[i] = set.labels[start + i];
    }
    const matrix<float>& logits = model.forward(set, ids, {false, 0, 0});
    loss += ce.forward(logits, labels) * static_cast<double>(count);
    correct += ce.correct;
  }
  return {static_cast<double>(correct) / static_cast<double>(n), loss / static_cast<double>(n)};
}

protocol_result run_protocol(const protocol_options& opt, const fashion_mnist& data) {
  protocol_result out;
  for (const scheme& s : all_schemes(opt.model.width, opt.model.heads, opt.groups, opt.dgqa_window))
    if (opt.only.empty() || std::find(opt.only.begin(), opt.only.end(), s.id) != opt.only.end()) out.schemes.push_back(s);
  const auto n_seeds = static_cast<std::size_t>(opt.seeds);
  const std::size_t n_schemes = out.schemes.size();
  out.train_size = data.train.size();
  out.test_size = data.test.size();
  out.pretrain.resize(n_seeds);
  out.runs.resize(n_seeds * n_schemes);

  // Jobs: every seed's pretraining, then every (seed, scheme) uptraining, which waits for its seed's.
  struct job {
    std::size_t seed;
    std::optional<std::size_t> scheme;  // empty: pretraining
  };
  std::vector<job> jobs;
  for (std::size_t s = 0; s < n_seeds; ++s) jobs.push_back({s, std::nullopt});
  for (std::size_t s = 0; s < n_seeds; ++s)
    for (std::size_t k = 0; k < n_schemes; ++k) jobs.push_back({s, k});
  std::vector<std::optional<vit>> pretrained(n_seeds);
  std::vector<bool> taken(jobs.size(), false), pretrain_done(n_seeds, false);
  std::size_t finished = 0;
  std::exception_ptr error;
  std::mutex m;
  std::condition_variable cv;
  const auto t_start = clock_type::now();

  auto log = [&](const std::string& line) {
    const double t = std::chrono::duration<double>(clock_type::now() - t_start).count();
    std::fprintf(stderr, "uptrain [%6.1f s] %s\n", t, line.c_str());
  };
  auto run_job = [&](const job& j) {
    const std::uint64_t seed = opt.first_seed + j.seed;
    const std::string seed_text = "seed " + std::to_string(seed);
    if (!j.scheme) {
      vit model(opt.model, mha_spec(opt.model.width, opt.model.heads), derive(seed, stream::init));
      run_result r = train(model, data.train, opt.pretrain, derive(seed, stream::pretrain_data), [&](long step, double loss) {
        std::lock_guard lk(m);
        log("pretrain MHA " + seed_text + ": step " + std::to_string(step) + "/" + std::to_string(opt.pretrain.steps) +
            ", loss " + std::to_string(loss));
      });
      r.scheme = "pretrain";
      r.seed = seed;
      const evaluation e = evaluate(model, data.test, opt.pretrain.batch);
      r.test_accuracy = e.accuracy;
      r.test_loss = e.loss;
      std::lock_guard lk(m);
      out.pretrain[j.seed] = std::move(r);
      pretrained[j.seed] = std::move(model);
      return;
    }
    const scheme& s = out.schemes[*j.scheme];
    vit model = convert(*pretrained[j.seed], s, derive(seed, stream::convert));
    run_result r;
    double before = -1;
    if (opt.converted_eval > 0) {
      vit probe = model;  // evaluation changes DGQA's state and PGQA's counter: probe a copy
      before = evaluate(probe, data.test, opt.uptrain.batch, opt.converted_eval).accuracy;
    }
    r = train(model, data.train, opt.uptrain, derive(seed, stream::uptrain_data));
    r.scheme = s.id;
    r.seed = seed;
    r.converted_accuracy = before;
    const evaluation e = evaluate(model, data.test, opt.uptrain.batch);
    r.test_accuracy = e.accuracy;
    r.test_loss = e.loss;
    out.runs[j.seed * n_schemes + *j.scheme] = std::move(r);
  };

  auto worker = [&] {
    for (;;) {
      std::unique_lock lk(m);
      std::optional<std::size_t> pick;
      cv.wait(lk, [&] {
        if (error) return true;
        bool all_taken = true;
        for (std::size_t i = 0; i < jobs.size(); ++i) {
          if (taken[i]) continue;
          all_taken = false;
          if (!jobs[i].scheme || pretrain_done[jobs[i].seed]) {
            pick = i;
            return true;
          }
        }
        return all_taken;
      });
      if (error || !pick) return;
      taken[*pick] = true;
      const job j = jobs[*pick];
      lk.unlock();
      const auto t0 = clock_type::now();
      try {
        run_job(j);
      } catch (...) {
        lk.lock();
        if (!error) error = std::current_exception();
        cv.notify_all();
        return;
      }
      lk.lock();
      ++finished;
      if (!j.scheme) pretrain_done[j.seed] = true;
      const run_result& r = j.scheme ? out.runs[j.seed * n_schemes + *j.scheme] : out.pretrain[j.seed];
      char line[256];
      std::snprintf(line, sizeof line, "[%zu/%zu] %s seed %llu: test top-1 %.2f%%, loss %.4f (%.1f s)", finished,
                    jobs.size(), j.scheme ? out.schemes[*j.scheme].id.c_str() : "pretrain MHA",
                    static_cast<unsigned long long>(r.seed), 100.0 * r.test_accuracy, r.test_loss,
                    std::chrono::duration<double>(clock_type::now() - t0).count());
      log(line);
      cv.notify_all();
    }
  };
  const auto n_workers = static_cast<std::size_t>(std::max(1, std::min<int>(opt.jobs, static_cast<int>(jobs.size()))));
  std::vector<std::thread> pool;
  for (std::size_t i = 0; i < n_workers; ++i) pool.emplace_back(worker);
  for (std::thread& t : pool) t.join();
  if (error) std::rethrow_exception(error);
  out.seconds = std::chrono::duration<double>(clock_type::now() - t_start).count();
  return out;
}

}  // namespace uptrain
