// examples/uptrain/attention.cpp: the attention layer: projections, gqa::forward with the scheme's policy
// (forward_train when training), and the backward.
#include "attention.hpp"

#include <chrono>
#include <type_traits>
#include <utility>

namespace uptrain {

namespace {

using clock_type = std::chrono::steady_clock;
double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

gqa::tensor_view<float> view(matrix<float>& m, gqa::index_t b, gqa::index_t s, gqa::index_t h, gqa::index_t d) {
  return gqa::bshd(m.data(), b, s, h, d);
}
gqa::tensor_view<const float> view(const matrix<float>& m, gqa::index_t b, gqa::index_t s, gqa::index_t h, gqa::index_t d) {
  return gqa::bshd<const float>(m.data(), b, s, h, d);
}

}  // namespace

attention_layer::attention_layer(const attention_spec& spec, std::uint64_t seed_, std::uint64_t layer_)
    : q(spec.width, spec.q_heads * spec.head_dim()),
      k(spec.width, spec.kv_proj_heads() * spec.head_dim()),
      v(spec.width, spec.kv_proj_heads() * spec.head_dim()),
      o(spec.q_heads * spec.head_dim(), spec.width),
      seed(seed_),
      layer(layer_),
      spec_(spec) {
  const std::uint64_t key = gqa::random::hash(layer, {0x61747465ULL});  // "atte"
  init_truncated_normal(q.w.value, 0.02, seed, key + 0);
  init_truncated_normal(k.w.value, 0.02, seed, key + 1);
  init_truncated_normal(v.w.value, 0.02, seed, key + 2);
  init_truncated_normal(o.w.value, 0.02, seed, key + 3);
  if (spec.kind == grouping::wgqa) {
    const gqa::wgqa_weights w = gqa::wgqa_weights::mean_init(spec.wgqa_kind, spec.heads, spec.kv_heads, spec.head_dim(), spec.width);
    const gqa::index_t rows = spec.wgqa_kind == gqa::wgqa_kind::scalar ? 1 : spec.heads;
    mix_k = param<float>(rows, static_cast<index>(w.k.size()) / rows, false);
    mix_v = param<float>(rows, static_cast<index>(w.v.size()) / rows, false);
    std::copy(w.k.begin(), w.k.end(), mix_k.value.data());
    std::copy(w.v.begin(), w.v.end(), mix_v.value.data());
  }
  if (spec.kind == grouping::dgqa) dgqa = gqa::dgqa_state::initial(spec.q_heads, spec.kv_heads);
}

gqa::wgqa_weights attention_layer::wgqa_weights() const {
  gqa::wgqa_weights w{spec_.wgqa_kind, spec_.heads, spec_.kv_heads, spec_.head_dim(), spec_.width, {}, {}};
  w.k.assign(mix_k.value.data(), mix_k.value.data() + mix_k.value.size());
  w.v.assign(mix_v.value.data(), mix_v.value.data() + mix_v.value.size());
  return w;
}

void attention_layer::collect(std::vector<param<float>*>& out) {
  for (linear<float>* l : {&q, &k, &v, &o}) {
    out.push_back(&l->w);
    out.push_back(&l->b);
  }
  if (spec_.kind == grouping::wgqa) {
    out.push_back(&mix_k);
    out.push_back(&mix_v);
  }
}

template <class F>
void attention_layer::with_policy(const step_context& ctx, bool is_forward, F&& f) {
  switch (spec_.kind) {
    case grouping::mha: {
      gqa::mha_policy p;
      f(p);
      break;
    }
    case grouping::gqa: {
      gqa::gqa_policy p;
      f(p);
      break;
    }
    case grouping::mqa: {
      gqa::mqa_policy p;
      f(p);
      break;
    }
    case grouping::sqa: {
      gqa::sqa_policy p{gqa::sqa_config::standard(spec_.heads, spec_.q_heads, spec_.kv_heads)};
      f(p);
      break;
    }
    case grouping::kdgqa: {
      gqa::kdgqa_policy p;  // the reference rule, one allocation for the whole batch
      f(p);
      if (is_forward) last_alloc_ = p.last().alloc;
      break;
    }
    case grouping::dgqa: {
      gqa::dgqa_options opt;  // the reference's repair, cache update and eval behaviour
      opt.kind = spec_.dgqa_kind;
      opt.window = spec_.dgqa_window;
      opt.seed = seed;
      opt.layer = layer;
      gqa::dgqa_policy p(opt, dgqa);
      p.set_mode(ctx.training ? gqa::dgqa_mode::train : gqa::dgqa_mode::eval);
      p.set_step(ctx.step);
      f(p);
      if (is_forward) last_alloc_ = p.last().alloc;
      break;
    }
    case grouping::pgqa: {
      gqa::pgqa_policy p({seed, layer, gqa::pgqa_noise::always});  // the reference: noise in training and eval
      p.set_calls(pgqa_calls);
      f(p);
      if (is_forward) pgqa_calls = p.calls();
      break;
    }
    case grouping::wgqa: {
      gqa::wgqa_policy p(wgqa_weights());
      f(p);
      break;
    }
  }
}

void attention_layer::forward(const matrix<float>& x, matrix<float>& y, const step_context& ctx) {
  tokens_ = ctx.tokens;
  batch_ = x.rows() / tokens_;
  if (ctx.training) x_ = x;
  q.forward(x, qa_);
  k.forward(x, ka_);
  v.forward(x, va_);
  const gqa::index_t d = spec_.head_dim();
  oa_.resize(x.rows(), spec_.q_heads * d);
  const auto qv = view(std::as_const(qa_), batch_, tokens_, spec_.q_heads, d);
  const auto kv = view(std::as_const(ka_), batch_, tokens_, spec_.kv_proj_heads(), d);
  const auto vv = view(std::as_const(va_), batch_, tokens_, spec_.kv_proj_heads(), d);
  const auto ov = view(oa_, batch_, tokens_, spec_.q_heads, d);
  const gqa::attention_options opt;  // one thread: the protocol runs one training run per core
  const auto t0 = clock_type::now();
  with_policy(ctx, true, [&](auto& policy) {
    if (ctx.training) {
      saved_ = gqa::forward_train(policy, qv, kv, vv, ov, opt);
    } else {
      gqa::forward(policy, qv, kv, vv, ov, opt);
    }
  });
  forward_seconds += seconds_since(t0);
  o.forward(oa_, y);
}

void attention_layer::backward(const matrix<float>& dy, matrix<float>& dx) {
  const gqa::index_t d = spec_.head_dim(), rows = batch_ * tokens_;
  const gqa::index_t hq = spec_.q_heads, hp = spec_.kv_proj_heads();
  matrix<float> d_oa;
  o.backward(oa_, dy, &d_oa);

  matrix<float> dq(rows, hq * d), dk(rows, hp * d), dv(rows, hp * d);
  const auto t0 = clock_type::now();
  with_policy({true, 0, tokens_}, false, [&](auto& policy) {
    using P = std::decay_t<decltype(policy)>;
    gqa::backward(policy, std::get<gqa::saved_forward<P>>(saved_), view(qa_, batch_, tokens_, hq, d),
                  view(ka_, batch_, tokens_, hp, d), view(va_, batch_, tokens_, hp, d), view(oa_, batch_, tokens_, hq, d),
                  view(std::as_const(d_oa), batch_, tokens_, hq, d), view(dq, batch_, tokens_, hq, d),
                  view(dk, batch_, tokens_, hp, d), view(dv, batch_, tokens_, hp, d), gqa::attention_options{});
    if constexpr (std::is_same_v<P, gqa::wgqa_policy>) {  // the combination weights' gradient stays in the policy
      const auto& wg = policy.weight_grad();
      mix_k.grad += Eigen::Map<const matrix<float>>(wg.k.data(), mix_k.grad.rows(), mix_k.grad.cols());
      mix_v.grad += Eigen::Map<const matrix<float>>(wg.v.data(), mix_v.grad.rows(), mix_v.grad.cols());
    }
  });
  backward_seconds += seconds_since(t0);

  matrix<float> part;
  q.backward(x_, dq, &dx);
  k.backward(x_, dk, &part);
  dx += part;
  v.backward(x_, dv, &part);
  dx += part;
}

}  // namespace uptrain
