// examples/uptrain/model.cpp: the ViT's forward and backward passes.
#include "model.hpp"

namespace uptrain {

matrix<float> patchify(const image_set& set, std::span<const std::uint32_t> ids) {
  constexpr index p = vit_config::patch, grid = vit_config::grid;
  matrix<float> out(static_cast<index>(ids.size()) * vit_config::patches, vit_config::patch_pixels);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const std::uint8_t* img = set.images.data() + static_cast<std::size_t>(ids[i]) * image_set::pixels;
    for (index pr = 0; pr < grid; ++pr)
      for (index pc = 0; pc < grid; ++pc) {
        float* row = out.row(static_cast<index>(i) * vit_config::patches + pr * grid + pc).data();
        for (index r = 0; r < p; ++r)
          for (index c = 0; c < p; ++c) {
            const float pixel = static_cast<float>(img[(pr * p + r) * image_set::cols + pc * p + c]) / 255.0f;
            row[r * p + c] = (pixel - pixel_mean) / pixel_std;
          }
      }
  }
  return out;
}

vit::vit(const vit_config& cfg, const attention_spec& attn, std::uint64_t seed)
    : patch_embed(vit_config::patch_pixels, cfg.width),
      head(cfg.width, vit_config::classes),
      cls(1, cfg.width, false),
      pos(vit_config::tokens, cfg.width, false),
      ln_f(cfg.width),
      cfg_(cfg) {
  init_truncated_normal(patch_embed.w.value, 0.02, seed, 1);
  init_truncated_normal(cls.value, 0.02, seed, 2);
  init_truncated_normal(pos.value, 0.02, seed, 3);
  init_truncated_normal(head.w.value, 0.02, seed, 4);
  for (index i = 0; i < cfg.layers; ++i) {
    block b;
    b.ln1 = layer_norm<float>(cfg.width);
    b.ln2 = layer_norm<float>(cfg.width);
    b.attn = attention_layer(attn, seed, static_cast<std::uint64_t>(i));
    b.fc1 = linear<float>(cfg.width, cfg.mlp_ratio * cfg.width);
    b.fc2 = linear<float>(cfg.mlp_ratio * cfg.width, cfg.width);
    init_truncated_normal(b.fc1.w.value, 0.02, seed, 100 + 2 * static_cast<std::uint64_t>(i));
    init_truncated_normal(b.fc2.w.value, 0.02, seed, 101 + 2 * static_cast<std::uint64_t>(i));
    blocks.push_back(std::move(b));
  }
}

const matrix<float>& vit::forward(const image_set& set, std::span<const std::uint32_t> ids, const step_context& ctx_in) {
  constexpr index T = vit_config::tokens, P = vit_config::patches;
  step_context ctx = ctx_in;
  ctx.tokens = T;
  batch_ = static_cast<index>(ids.size());
  patches_ = patchify(set, ids);
  matrix<float> embedded;
  patch_embed.forward(patches_, embedded);
  matrix<float> x(batch_ * T, cfg_.width);
  for (index b = 0; b < batch_; ++b) {
    x.row(b * T) = cls.value.row(0) + pos.value.row(0);
    x.middleRows(b * T + 1, P) = embedded.middleRows(b * P, P) + pos.value.bottomRows(P);
  }
  for (block& blk : blocks) {
    // x += attn(LN1(x)); x += fc2(gelu(fc1(LN2(x)))).
    blk.ln1.forward(x, blk.h1);
    blk.attn.forward(blk.h1, blk.a, ctx);
    x += blk.a;
    blk.ln2.forward(x, blk.h2);
    blk.fc1.forward(blk.h2, blk.u);
    gelu<float>::forward(blk.u, blk.g);
    blk.fc2.forward(blk.g, blk.m);
    x += blk.m;
  }
  cls_rows_.resize(batch_, cfg_.width);
  for (index b = 0; b < batch_; ++b) cls_rows_.row(b) = x.row(b * T);
  ln_f.forward(cls_rows_, cls_norm_);
  head.forward(cls_norm_, logits_);
  return logits_;
}

void vit::backward(const matrix<float>& dlogits) {
  constexpr index T = vit_config::tokens, P = vit_config::patches;
  matrix<float> d_norm, d_cls;
  head.backward(cls_norm_, dlogits, &d_norm);
  ln_f.backward(d_norm, d_cls);
  matrix<float> dx = matrix<float>::Zero(batch_ * T, cfg_.width);  // only the class tokens reach the head
  for (index b = 0; b < batch_; ++b) dx.row(b * T) = d_cls.row(b);
  matrix<float> dg, du, dh, dres;
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) {
    block& blk = *it;
    // MLP branch: dx flows to the residual unchanged and through fc2 ∘ gelu ∘ fc1 ∘ LN2.
    blk.fc2.backward(blk.g, dx, &dg);
    gelu<float>::backward(blk.u, dg, du);
    blk.fc1.backward(blk.h2, du, &dh);
    blk.ln2.backward(dh, dres);
    dx += dres;
    // Attention branch, likewise.
    blk.attn.backward(dx, dh);
    blk.ln1.backward(dh, dres);
    dx += dres;
  }
  // Embedding: x0[b, 0] = cls + pos[0], x0[b, 1 + p] = patch_embed(patch p) + pos[1 + p].
  matrix<float> d_embedded(batch_ * P, cfg_.width);
  for (index b = 0; b < batch_; ++b) {
    cls.grad.row(0) += dx.row(b * T);
    pos.grad += dx.middleRows(b * T, T);
    d_embedded.middleRows(b * P, P) = dx.middleRows(b * T + 1, P);
  }
  patch_embed.backward(patches_, d_embedded, nullptr);
}

std::vector<param<float>*> vit::parameters() {
  std::vector<param<float>*> out{&patch_embed.w, &patch_embed.b, &cls, &pos};
  for (block& blk : blocks) {
    out.push_back(&blk.ln1.gamma);
    out.push_back(&blk.ln1.beta);
    blk.attn.collect(out);
    out.push_back(&blk.ln2.gamma);
    out.push_back(&blk.ln2.beta);
    for (linear<float>* l : {&blk.fc1, &blk.fc2}) {
      out.push_back(&l->w);
      out.push_back(&l->b);
    }
  }
  out.push_back(&ln_f.gamma);
  out.push_back(&ln_f.beta);
  out.push_back(&head.w);
  out.push_back(&head.b);
  return out;
}

void vit::zero_grad() {
  for (param<float>* p : parameters()) p->zero_grad();
}

}  // namespace uptrain
