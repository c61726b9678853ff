// The authors' golden vectors (tests/data/golden, README there: which repository, commit and function
// made each file, and what to assert): KDGQA norms, min-max scaling, shares and allocations; DGQA
// sequences (allocations, scores, shares, caches; invariants only where the authors' repair drew unseeded
// random numbers); PGQA's statistics against its injected noise; WGQA folds and combinations; MHA -> GQA
// mean pooling. The attention outputs (KDGQA, PGQA, WGQA forwards) are checked on every ISA by
// tests/suites/golden_suite.hpp. Each test prints "golden <file>: N of N checks agree; max <error> ...".
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>
#include <iostream>

#include <gqa/gqa.hpp>

#include "support/golden.hpp"

namespace {

using gqa::index_t;
using gqa::test::golden_tally;
using gqa::test::json;
using gqa::test::max_abs_error;
using gqa::test::max_elementwise_rel_error;
using gqa::test::max_rel_error;
using gqa::test::tensor_of;
using ints = std::vector<int>;

std::vector<double> widen(const std::vector<float>& x) { return {x.begin(), x.end()}; }

// Bitwise equality of float32 values held in doubles (the library's shares) and golden floats.
bool same_floats(const std::vector<double>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (static_cast<float>(a[i]) != b[i] || static_cast<double>(static_cast<float>(a[i])) != a[i]) return false;
  return true;
}

std::string str(const std::vector<int>& a) {
  std::ostringstream os;
  os << '[';
  for (std::size_t i = 0; i < a.size(); ++i) os << (i ? "," : "") << a[i];
  os << ']';
  return os.str();
}

// Keys (1, 1, G, 1) whose head g has norm exactly m[g]: a float's square is exact in double and its
// square root is the float again, so key_norms returns m bit for bit. Used to run gqa's arithmetic on
// the authors' own norms and magnitudes.
struct keys_with_norms {
  std::vector<float> data;
  gqa::tensor_view<const float> k, q;
  keys_with_norms(const std::vector<float>& m, index_t hq) : data(m) {
    k = gqa::bshd<const float>(data.data(), 1, 1, static_cast<index_t>(m.size()), 1);
    q = k;
    q.h = hq;  // plan() reads only q.h
  }
};

// kdgqa.json: norms (relative 1e-5), allocations exactly from gqa's norms and from the authors', the
// float32 min-max scaling and shares bit for bit; the float64 option (a departure) agrees except on the
// three cases whose float32 shares land exactly on .5.
TEST(golden, kdgqa_norms_shares_and_allocations) {
  const json file = gqa::test::load_golden("kdgqa.json");
  golden_tally tally("kdgqa.json");
  int ties = 0, float64_differs = 0, mqa_calls = 0;
  gqa::kdgqa_options f64;
  f64.arithmetic = gqa::allocation_arithmetic::float64;
  for (const json& c : file["cases"].items()) {
    const std::string name = c["name"].str();
    const auto H = c["H"].integer(), G = c["G"].integer();
    const auto k = tensor_of(c["k"]);
    const auto kv = gqa::bshd<const float>(k.data.data(), k.dim(0), k.dim(1), k.dim(2), k.dim(3));
    ASSERT_EQ(kv.h, G) << name;
    const std::vector<float> norms = c["norms"].floats();
    const ints want = c["allocation"].ints();

    const std::vector<double> own = gqa::key_norms(kv);
    tally.check_error(max_elementwise_rel_error(own, norms), 1e-5, "norm rel error", name);
    const auto from_own = gqa::kdgqa_allocate(own, H);
    tally.check(from_own.alloc == want, name + ": allocation from gqa's norms " + str(from_own.alloc) + " != " + str(want));
    const auto from_golden = gqa::kdgqa_allocate(widen(norms), H);
    tally.check(from_golden.alloc == want,
                name + ": allocation from the authors' norms " + str(from_golden.alloc) + " != " + str(want));
    // The float32 steps on the authors' norms give the authors' intermediates bit for bit.
    tally.check(same_floats(gqa::detail::min_max_scaled(widen(norms), gqa::allocation_arithmetic::float32),
                            c["scaled"].floats()),
                name + ": min-max scaled norms differ from the authors' float32 values");
    tally.check(same_floats(from_golden.shares, c["shares"].floats()), name + ": shares differ from the authors' float32 values");
    tally.check(gqa::round_half_even(from_golden.shares) == c["rounded"].ints(), name + ": rounded shares differ");
    if (G == 2) tally.check(from_own.runs_as_mqa(), name + ": two KV heads must run as MQA");
    mqa_calls += from_own.runs_as_mqa();

    const bool tie = c["near_tie"].boolean();
    ties += tie;
    const bool f64_agrees = gqa::kdgqa_allocate(own, H, f64).alloc == want &&
                            gqa::kdgqa_allocate(widen(norms), H, f64).alloc == want;
    float64_differs += !f64_agrees;
    if (!tie) tally.check(f64_agrees, name + ": the float64 option disagrees away from a tie");
  }
  EXPECT_EQ(file["cases"].size(), 33u);
  EXPECT_EQ(ties, 3);
  EXPECT_EQ(float64_differs, 3);  // near_tie_half_H4_G3, _H8_G4, _H12_G3: the documented departure of float64
  EXPECT_EQ(mqa_calls, 6);        // the five G = 2 cases, and spread0.5_H16_G3 ([0, 0, 16])
}

// Σ x as torch 1.13's CPU sum kernel adds a short contiguous float32 vector on an AVX2 (8-lane) build:
// fewer than 8 values go to 4 partial sums (x[k], then x[4 + k]), the rest to the first, and the four
// are then added in order; 8 values are added in index order. For n <= 4 and n = 8 this is index order.
float torch_cpu_sum(const std::vector<float>& x) {
  if (x.size() >= 8) {
    float s = 0.0f;
    for (const float v : x) s += v;
    return x.size() == 8 ? s : NAN;  // longer vectors: not needed here
  }
  float p[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  const std::size_t full = x.size() / 4 * 4;
  for (std::size_t i = 0; i < full; ++i) p[i % 4] += x[i];
  for (std::size_t i = full; i < x.size(); ++i) p[0] += x[i];
  return ((p[0] + p[1]) + p[2]) + p[3];
}

// ULPs between two finite floats of the same sign.
std::int64_t ulps(float a, float b) {
  std::int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  return std::abs(static_cast<std::int64_t>(ia) - static_cast<std::int64_t>(ib));
}

// dgqa.json: every call of every sequence through one policy over one state, as the authors' module ran
// them; and every updating call replayed on the authors' own magnitudes and cache, where gqa's float32
// score, shares and cache update must give the authors' bits.
TEST(golden, dgqa_sequences) {
  const json file = gqa::test::load_golden("dgqa.json");
  golden_tally tally("dgqa.json");
  int calls = 0, random_repairs = 0, updates = 0, shares_bitwise = 0, shares_order_differs = 0;
  for (const json& seq : file["sequences"].items()) {
    const std::string name = seq["name"].str();
    const auto H = seq["H"].integer(), G = seq["G"].integer(), W = seq["window_size"].integer();
    gqa::dgqa_options opt;
    opt.kind = seq["kind"].str() == "ema" ? gqa::dgqa_kind::ema : gqa::dgqa_kind::diff;
    opt.window = W;
    gqa::dgqa_state st = gqa::dgqa_state::initial(H, G);
    gqa::dgqa_policy pol(opt, st);
    for (const json& call : seq["calls"].items()) {
      const std::string where = name + " call " + std::to_string(call["index"].integer());
      const bool train = call["mode"].str() == "train";
      const auto k = tensor_of(call["k"]);
      const auto kv = gqa::bshd<const float>(k.data.data(), k.dim(0), k.dim(1), k.dim(2), k.dim(3));
      gqa::tensor_view<const float> q = kv;
      q.h = H;
      ASSERT_EQ(st.splits, call["splits_before"].ints()) << where;
      pol.set_mode(train ? gqa::dgqa_mode::train : gqa::dgqa_mode::eval);
      if (train) pol.set_step(static_cast<std::uint64_t>(call["step"].integer()));
      pol.plan(q, kv);
      const gqa::allocation_result& r = pol.last();
      const bool updated = call["updated"].boolean(), random = call["random_repair"].boolean();
      const ints after = call["splits_after"].ints();
      ++calls;
      updates += updated;
      tally.check(r.updated == updated, where + ": updated");
      if (!random) {
        tally.check(r.alloc == after, where + ": allocation " + str(r.alloc) + " != " + str(after));
      } else {
        // The authors' repair drew from torch's unseeded global generator: only its invariants hold.
        ++random_repairs;
        const ints rounded = call["rounded"].ints();
        int sum = 0, rounded_sum = 0;
        bool ok = r.alloc.size() == rounded.size();
        for (std::size_t g = 0; ok && g < rounded.size(); ++g) {
          sum += r.alloc[g];
          rounded_sum += rounded[g];
          ok = r.alloc[g] >= 0;
        }
        for (std::size_t g = 0; ok && g < rounded.size(); ++g)
          ok = rounded_sum > H ? r.alloc[g] <= rounded[g] : r.alloc[g] >= rounded[g];
        tally.check(ok && sum == H, where + ": repaired allocation " + str(r.alloc) + " from " + str(rounded));
        st.splits = after;  // plain caller-owned state: resync, so the following stale calls compare exactly
      }
      if (updated) tally.check(gqa::round_half_even(r.shares) == call["rounded"].ints(), where + ": rounded shares");
      tally.check_error(max_elementwise_rel_error(st.cache, call["cache_after"].floats()), 1e-6, "cache rel error", where);

      if (!updated) continue;
      // Replay: the authors' magnitudes and cache in, the authors' float32 bits out.
      const keys_with_norms m(call["magnitudes"].floats(), H);
      gqa::dgqa_state replay{call["cache_before"].floats(), call["splits_before"].ints(), 0};
      gqa::dgqa_policy again(opt, replay);
      again.set_mode(pol.mode());
      if (train) again.set_step(static_cast<std::uint64_t>(call["step"].integer()));
      again.plan(m.q, m.k);
      // The authors' shares are score / Σ · H in float32 with torch's CPU order of Σ (the file agrees with
      // that bit for bit); gqa sums in index order, which is torch's order for G <= 4 and G = 8. For G = 6
      // the two sums may differ in the last bit: then a share may differ by up to 2 ulps (the quotient
      // by one, the product by H rounds once more); no allocation moved.
      const std::vector<float> score = call["score"].floats(), shares = call["shares"].floats();
      float seq_sum = 0.0f;
      for (const float x : score) seq_sum += x;
      const float torch_sum = torch_cpu_sum(score);
      bool file_ok = true;
      for (std::size_t g = 0; g < score.size(); ++g) file_ok = file_ok && score[g] / torch_sum * static_cast<float>(H) == shares[g];
      tally.check(file_ok, where + ": the file's shares are not score / torch's sum · H");
      const auto& lib = again.last().shares;
      if (seq_sum == torch_sum) {
        tally.check(same_floats(lib, shares), where + ": shares differ from the authors' float32 values");
        ++shares_bitwise;
      } else {
        std::int64_t worst = lib.size() == shares.size() ? 0 : 1000;
        for (std::size_t g = 0; g < shares.size() && g < lib.size(); ++g) worst = std::max(worst, ulps(static_cast<float>(lib[g]), shares[g]));
        tally.check(worst <= 2 && G != 2 && G != 3 && G != 4 && G != 8, where + ": shares more than 2 ulps from the authors'");
        ++shares_order_differs;
      }
      tally.check(replay.cache == call["cache_after"].floats(), where + ": cache update differs from the authors' float32 values");
    }
  }
  EXPECT_EQ(calls, 100);
  EXPECT_EQ(updates, 69);
  EXPECT_EQ(random_repairs, 34);
  EXPECT_EQ(shares_bitwise + shares_order_differs, 69);
  EXPECT_EQ(shares_order_differs, 2);  // diff_W3_H12_G6 calls 0 and 6 (see above)
  std::cout << "golden dgqa.json: shares bit-identical in " << shares_bitwise << " of 69 updates, within 2 ulps in "
            << shares_order_differs << " (torch's CPU sum order for G = 6)" << std::endl;
}

// pgqa.json. gqa cannot take the authors' injected noise R, so its statistics are checked through the
// noise it draws itself: perturbing the authors' O must give O − (Z_gqa·row_std + row_mean) with the
// authors' row mean and unbiased std (token-major rows, batch-shared Z). Also the file against its own
// definition: Z is R with R[i, i] = 0 (i < min(s, N)) standardised per row, and out = O − (Z·σ + μ).
TEST(golden, pgqa_statistics) {
  const json file = gqa::test::load_golden("pgqa.json");
  golden_tally tally("pgqa.json");
  constexpr std::uint64_t seed = 11, layer = 2, call_index = 5;
  for (const json& c : file["cases"].items()) {
    const std::string name = c["name"].str();
    const auto H = c["H"].integer(), G = c["G"].integer(), B = c["B"].integer(), P = c["P"].integer();
    const auto d = c["head_dim"].integer(), N = c["N"].integer(), s = H / G;
    const auto O = tensor_of(c["O"]), R = tensor_of(c["R"]), Z = tensor_of(c["Z"]), out = tensor_of(c["out"]);
    const auto mean = tensor_of(c["row_mean"]), sd = tensor_of(c["row_std"]);
    auto at = [&](index_t b, index_t p, index_t h, index_t x) {
      return static_cast<std::size_t>(((b * P + p) * H + h) * d + x);
    };
    // Z from R, in double: the authors' zeroed diagonal, then standardisation with the unbiased std.
    std::vector<double> z_ref(Z.data.size());
    for (index_t g = 0; g < G; ++g)
      for (index_t i = 0; i < s; ++i) {
        std::vector<double> row(static_cast<std::size_t>(N));
        for (index_t n = 0; n < N; ++n) row[static_cast<std::size_t>(n)] = R.data[static_cast<std::size_t>((g * s + i) * N + n)];
        if (i < N) row[static_cast<std::size_t>(i)] = 0.0;
        double mu = 0.0, ss = 0.0;
        for (const double x : row) mu += x;
        mu /= static_cast<double>(N);
        for (const double x : row) ss += (x - mu) * (x - mu);
        double sigma = std::sqrt(ss / static_cast<double>(N - 1));
        if (sigma == 0.0) sigma = 1.0;
        for (index_t n = 0; n < N; ++n)
          z_ref[static_cast<std::size_t>((g * s + i) * N + n)] = (row[static_cast<std::size_t>(n)] - mu) / sigma;
      }
    tally.check_error(max_abs_error(z_ref, Z.data), 1e-5, "Z abs error (file)", name);
    // out == O − (Z·σ + μ), row by row (n = p·d + x), and the perturbation through gqa's own noise.
    std::vector<float> lib = O.data;
    gqa::pgqa_perturb(gqa::bshd(lib.data(), B, P, H, d), G, seed, layer, call_index);
    double file_err = 0.0, lib_err = 0.0;
    for (index_t g = 0; g < G; ++g)
      for (index_t i = 0; i < s; ++i) {
        const std::vector<double> z_lib = gqa::pgqa_standardised_noise(N, seed, layer, call_index, g, i);
        const index_t h = g * s + i;
        for (index_t b = 0; b < B; ++b) {
          const double mu = mean.data[static_cast<std::size_t>(b * H + h)], sigma = sd.data[static_cast<std::size_t>(b * H + h)];
          const double bound = std::max(1.0, sigma);
          for (index_t p = 0; p < P; ++p)
            for (index_t x = 0; x < d; ++x) {
              const auto n = static_cast<std::size_t>(p * d + x);
              const double o = O.data[at(b, p, h, x)];
              const double zf = Z.data[static_cast<std::size_t>((g * s + i) * N) + n];
              file_err = std::max(file_err, std::fabs(out.data[at(b, p, h, x)] - (o - (zf * sigma + mu))) / bound);
              lib_err = std::max(lib_err, std::fabs(lib[at(b, p, h, x)] - (o - (z_lib[n] * sigma + mu))) / bound);
            }
        }
      }
    tally.check_error(file_err, 1e-5, "out vs O - (Z sigma + mu) (file)", name);
    tally.check_error(lib_err, 1e-5, "pgqa_perturb vs O - (Z_gqa sigma + mu)", name);
  }
  EXPECT_EQ(file["cases"].size(), 8u);
}

// wgqa.json: the fold (every kind), and for scalar/col the policy's combination of the per-head K/V; row
// weights act on the projection's input, so the folded projection x·W̃ᵀ must give the combined heads.
TEST(golden, wgqa_fold_and_combination) {
  const json file = gqa::test::load_golden("wgqa.json");
  golden_tally tally("wgqa.json");
  for (const json& c : file["cases"].items()) {
    const std::string name = c["name"].str(), kind_name = c["kind"].str();
    const auto H = c["H"].integer(), G = c["G"].integer(), D = c["d_model"].integer(), dk = c["d_kv"].integer();
    const gqa::wgqa_kind kind = kind_name == "scalar" ? gqa::wgqa_kind::scalar
                                : kind_name == "col"  ? gqa::wgqa_kind::col
                                                      : gqa::wgqa_kind::row;
    const gqa::wgqa_weights w{kind, H, G, dk, D, tensor_of(c["wk1"]).data, tensor_of(c["wv1"]).data};
    const auto fold = gqa::wgqa_fold({tensor_of(c["w_k"]).data, {}, tensor_of(c["w_v"]).data, {}}, w);
    const auto fold_k = tensor_of(c["fold_k"]), fold_v = tensor_of(c["fold_v"]);
    tally.check_error(max_rel_error(fold.w_k, fold_k.data), 1e-5, "fold rel error", name + " K");
    tally.check_error(max_rel_error(fold.w_v, fold_v.data), 1e-5, "fold rel error", name + " V");
    const auto kc = tensor_of(c["k_combined"]), vc = tensor_of(c["v_combined"]);
    if (kind != gqa::wgqa_kind::row) {
      const auto kh = tensor_of(c["k_heads_per_head"]), vh = tensor_of(c["v_heads_per_head"]);
      gqa::wgqa_policy pol(w);
      const auto kv = pol.prepare(gqa::bshd<const float>(kh.data.data(), kh.dim(0), kh.dim(1), kh.dim(2), kh.dim(3)),
                                  gqa::bshd<const float>(vh.data.data(), vh.dim(0), vh.dim(1), vh.dim(2), vh.dim(3)));
      const std::vector<float> k_lib(kv.k.data, kv.k.data + kc.data.size()), v_lib(kv.v.data, kv.v.data + vc.data.size());
      tally.check_error(max_rel_error(k_lib, kc.data), 1e-5, "combine rel error", name + " K");
      tally.check_error(max_rel_error(v_lib, vc.data), 1e-5, "combine rel error", name + " V");
    } else {
      // x (or the cross-attention source) (B, T_kv, D) times fold_kᵀ (D × G·d_kv), in double.
      const auto src = tensor_of(c["cross_attention"].boolean() ? c["key_value_states"] : c["x"]);
      const auto rows = src.dim(0) * src.dim(1);
      auto project = [&](const std::vector<float>& wt) {
        std::vector<double> y(static_cast<std::size_t>(rows * G * dk));
        for (index_t r = 0; r < rows; ++r)
          for (index_t o = 0; o < G * dk; ++o) {
            double acc = 0.0;
            for (index_t x = 0; x < D; ++x)
              acc += static_cast<double>(src.data[static_cast<std::size_t>(r * D + x)]) * wt[static_cast<std::size_t>(o * D + x)];
            y[static_cast<std::size_t>(r * G * dk + o)] = acc;
          }
        return y;
      };
      tally.check_error(max_rel_error(project(fold.w_k), kc.data), 1e-5, "folded projection rel error", name + " K");
      tally.check_error(max_rel_error(project(fold.w_v), vc.data), 1e-5, "folded projection rel error", name + " V");
    }
  }
  EXPECT_EQ(file["cases"].size(), 13u);
}

// convert.json: mean pooling against torch's float32 mean; absolute error (torch sums and divides in
// float32, gqa sums in double and rounds once: values that cancel to near 0 differ by many ulps).
TEST(golden, mha_to_gqa_conversion) {
  const json file = gqa::test::load_golden("convert.json");
  golden_tally tally("convert.json");
  for (const json& c : file["cases"].items()) {
    const std::string name = c["name"].str();
    const auto H = c["H"].integer(), G = c["G"].integer(), d = c["head_dim"].integer(), in = c["in_dim"].integer();
    if (c.has("qkv_weight")) {
      // ViT: qkv (3·dim × dim) = [W_Q; W_K; W_V], dim = H·d; likewise the bias.
      const auto w = tensor_of(c["qkv_weight"]).data, b = tensor_of(c["qkv_bias"]).data;
      const auto dim = static_cast<std::ptrdiff_t>(H * d);
      gqa::kv_projection mha{{w.begin() + dim * in, w.begin() + 2 * dim * in}, {b.begin() + dim, b.begin() + 2 * dim},
                             {w.begin() + 2 * dim * in, w.begin() + 3 * dim * in}, {b.begin() + 2 * dim, b.end()}};
      const auto g = gqa::convert_mha_to_gqa(mha, H, G, d, in);
      tally.check_error(max_abs_error(g.w_k, tensor_of(c["k_weight"]).data), 1e-6, "abs error", name + " W_K");
      tally.check_error(max_abs_error(g.w_v, tensor_of(c["v_weight"]).data), 1e-6, "abs error", name + " W_V");
      tally.check_error(max_abs_error(g.b_k, tensor_of(c["k_bias"]).data), 1e-6, "abs error", name + " b_K");
      tally.check_error(max_abs_error(g.b_v, tensor_of(c["v_bias"]).data), 1e-6, "abs error", name + " b_V");
    } else {
      const auto pooled = gqa::mean_pool_heads(tensor_of(c["weight"]).data, H, G, d, in);
      tally.check_error(max_abs_error(pooled, tensor_of(c["pooled"]).data), 1e-6, "abs error", name);
    }
  }
  EXPECT_EQ(file["cases"].size(), 13u);
}

}  // namespace
