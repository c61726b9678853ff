// examples/uptrain/attention.cpp: the attention layer's forward through gqa::forward and its backward.
#include "attention.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <utility>

#include "interim_backward.hpp"

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

/// Where a training forward leaves what the backward needs.
struct forward_record {
  bool keep = false;             ///< false in evaluation: record nothing
  matrix<float>* k = nullptr;    ///< the K the core saw, after prepare() (WGQA: the combined heads)
  matrix<float>* v = nullptr;
  gqa::head_map* map = nullptr;  ///< the map plan() chose (KDGQA/DGQA: this call's allocation)
  matrix<float>* o_pre = nullptr;///< the output before finish() (PGQA: before the noise)
};

/// Wraps a scheme's policy to record, during gqa::forward, what its backward needs: the backward must use
/// exactly the map, K/V and unperturbed output of the forward, never recompute them (an allocation or a
/// noise draw recomputed later could differ). Forwards check/prepare/plan/finish to the policy unchanged.
template <class P>
struct recording_policy {
  P& inner;
  forward_record rec;

  void check(const gqa::tensor_view<const float>& q, const gqa::tensor_view<const float>& k,
             const gqa::tensor_view<const float>& v, const gqa::tensor_view<float>& o) {
    if constexpr (gqa::policy_with_check<P>) inner.check(q, k, v, o);
  }
  gqa::kv_views prepare(const gqa::tensor_view<const float>& k, const gqa::tensor_view<const float>& v) {
    if constexpr (gqa::policy_with_prepare<P>) {
      const gqa::kv_views kv = inner.prepare(k, v);
      if (!rec.keep) return kv;
      // The policy's buffers live as long as the policy; keep copies (contiguous BSHD) for the backward.
      auto keep = [](const gqa::tensor_view<const float>& t, matrix<float>& m) {
        m.resize(t.b * t.s, t.h * t.d);
        for (gqa::index_t b = 0; b < t.b; ++b)
          for (gqa::index_t s = 0; s < t.s; ++s)
            for (gqa::index_t h = 0; h < t.h; ++h)
              std::copy_n(t.row(b, s, h), t.d, m.data() + ((b * t.s + s) * t.h + h) * t.d);
        return view(std::as_const(m), t.b, t.s, t.h, t.d);
      };
      return {keep(kv.k, *rec.k), keep(kv.v, *rec.v)};
    } else {
      return {k, v};
    }
  }
  gqa::head_map plan(const gqa::tensor_view<const float>& q, const gqa::tensor_view<const float>& k) {
    gqa::head_map m = inner.plan(q, k);
    if (rec.keep) *rec.map = m;
    return m;
  }
  void finish(const gqa::tensor_view<float>& o, const gqa::head_map& m, const gqa::attention_options& opt) {
    if constexpr (gqa::policy_with_finish_options<P> || gqa::policy_with_finish<P>) {
      if (rec.keep) {  // o is the layer's own contiguous buffer
        rec.o_pre->resize(o.b * o.s, o.h * o.d);
        std::copy_n(o.data, o.b * o.s * o.h * o.d, rec.o_pre->data());
      }
      if constexpr (gqa::policy_with_finish_options<P>) {
        inner.finish(o, m, opt);
      } else {
        inner.finish(o, m);
      }
    }
  }
};

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

template <class Policy>
void attention_layer::run(Policy& policy, const step_context& ctx) {
  const gqa::index_t d = spec_.head_dim();
  gqa::attention_options opt;  // one thread: the protocol runs one training run per core
  if (ctx.training) {
    lse_.resize(static_cast<std::size_t>(batch_ * spec_.q_heads * tokens_));
    opt.lse = lse_;
  }
  recording_policy<Policy> rec{policy, {ctx.training, &kc_, &vc_, &map_, &o_pre_}};
  gqa::forward(rec, view(std::as_const(qa_), batch_, tokens_, spec_.q_heads, d),
               view(std::as_const(ka_), batch_, tokens_, spec_.kv_proj_heads(), d),
               view(std::as_const(va_), batch_, tokens_, spec_.kv_proj_heads(), d),
               view(oa_, batch_, tokens_, spec_.q_heads, d), opt);
}

void attention_layer::forward(const matrix<float>& x, matrix<float>& y, const step_context& ctx) {
  tokens_ = ctx.tokens;
  batch_ = x.rows() / tokens_;
  if (ctx.training) x_ = x;
  q.forward(x, qa_);
  k.forward(x, ka_);
  v.forward(x, va_);
  oa_.resize(x.rows(), spec_.q_heads * spec_.head_dim());
  const auto t0 = clock_type::now();
  switch (spec_.kind) {
    case grouping::mha: {
      gqa::mha_policy p;
      run(p, ctx);
      break;
    }
    case grouping::gqa: {
      gqa::gqa_policy p;
      run(p, ctx);
      break;
    }
    case grouping::mqa: {
      gqa::mqa_policy p;
      run(p, ctx);
      break;
    }
    case grouping::sqa: {
      gqa::sqa_policy p{gqa::sqa_config::standard(spec_.heads, spec_.q_heads, spec_.kv_heads)};
      run(p, ctx);
      break;
    }
    case grouping::kdgqa: {
      gqa::kdgqa_policy p;  // the reference rule, one allocation for the whole batch
      run(p, ctx);
      last_alloc_ = p.last().alloc;
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
      run(p, ctx);
      last_alloc_ = p.last().alloc;
      break;
    }
    case grouping::pgqa: {
      gqa::pgqa_policy p({seed, layer, gqa::pgqa_noise::always});  // the reference: noise in training and eval
      p.set_calls(pgqa_calls);
      pgqa_call_ = pgqa_calls;
      run(p, ctx);
      pgqa_calls = p.calls();
      break;
    }
    case grouping::wgqa: {
      gqa::wgqa_policy p(wgqa_weights());
      run(p, ctx);
      break;
    }
  }
  forward_seconds += seconds_since(t0);
  o.forward(oa_, y);
}

void attention_layer::backward(const matrix<float>& dy, matrix<float>& dx) {
  const gqa::index_t d = spec_.head_dim(), rows = batch_ * tokens_;
  const gqa::index_t hq = spec_.q_heads, hkv = spec_.kv_heads, hp = spec_.kv_proj_heads();
  matrix<float> d_oa;
  o.backward(oa_, dy, &d_oa);

  const auto t0 = clock_type::now();
  const bool pgqa = spec_.kind == grouping::pgqa, wgqa = spec_.kind == grouping::wgqa;
  // PGQA: from the gradient of the perturbed output to that of the attention output.
  if (pgqa) interim::pgqa_backward(view(std::as_const(o_pre_), batch_, tokens_, hq, d), view(d_oa, batch_, tokens_, hq, d), hkv, seed, layer, pgqa_call_);
  const matrix<float>& o_core = pgqa ? o_pre_ : oa_;  // the core's own output
  const matrix<float>& k_core = wgqa ? kc_ : ka_;     // the K/V the core saw
  const matrix<float>& v_core = wgqa ? vc_ : va_;
  matrix<float> dq(rows, hq * d), dk(rows, hkv * d), dv(rows, hkv * d);
  interim::attend_backward(view(qa_, batch_, tokens_, hq, d), view(k_core, batch_, tokens_, hkv, d),
                           view(v_core, batch_, tokens_, hkv, d), view(o_core, batch_, tokens_, hq, d),
                           view(std::as_const(d_oa), batch_, tokens_, hq, d), lse_, map_,
                           1.0f / std::sqrt(static_cast<float>(d)),  // gqa's default scale
                           view(dq, batch_, tokens_, hq, d), view(dk, batch_, tokens_, hkv, d), view(dv, batch_, tokens_, hkv, d));
  matrix<float> dk_proj, dv_proj;
  if (wgqa) {  // through the combination to the per-head K/V and the weights
    dk_proj.resize(rows, hp * d);
    dv_proj.resize(rows, hp * d);
    interim::wgqa_backward(spec_.wgqa_kind, {mix_k.value.data(), static_cast<std::size_t>(mix_k.value.size())},
                           view(ka_, batch_, tokens_, hp, d), view(std::as_const(dk), batch_, tokens_, hkv, d),
                           view(dk_proj, batch_, tokens_, hp, d), {mix_k.grad.data(), static_cast<std::size_t>(mix_k.grad.size())});
    interim::wgqa_backward(spec_.wgqa_kind, {mix_v.value.data(), static_cast<std::size_t>(mix_v.value.size())},
                           view(va_, batch_, tokens_, hp, d), view(std::as_const(dv), batch_, tokens_, hkv, d),
                           view(dv_proj, batch_, tokens_, hp, d), {mix_v.grad.data(), static_cast<std::size_t>(mix_v.grad.size())});
  }
  backward_seconds += seconds_since(t0);

  matrix<float> part;
  q.backward(x_, dq, &dx);
  k.backward(x_, wgqa ? dk_proj : dk, &part);
  dx += part;
  v.backward(x_, wgqa ? dv_proj : dv, &part);
  dx += part;
}

}  // namespace uptrain
