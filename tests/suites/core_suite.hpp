// tests/suites/core_suite.hpp: the core's parts on their own (detail/core), per ISA, against sums in
// double: the register tile (every (rows, vectors) entry of its table, A row-major and transposed, = and
// +=, masked B columns), the dot-product family and the direct path (d and d_v tails, K and V ending at a
// guard page), the packing of Kᵀ, and the online softmax (update block by block, fully masked rows, the
// split-KV merge). Compiled once per ISA: helpers stay in `namespace {}`.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <gqa/detail/core/direct.hpp>
#include <gqa/detail/core/dot.hpp>
#include <gqa/detail/core/packed.hpp>
#include <gqa/detail/core/softmax.hpp>
#include <gqa/detail/core/tile.hpp>
#include <limits>
#include <utility>
#include <vector>

#include "support/guarded.hpp"
#include "support/isa_suite.hpp"

namespace {

namespace core = gqa::detail::core;
using gqa::index_t;

constexpr float k_inf = std::numeric_limits<float>::infinity();

/// γ_n = n·u / (1 − n·u): the relative bound of n roundings in float. The core's sums are chains of
/// mul_add, one rounding each where the target fuses it and two where it does not, hence the 2n used below.
double gamma_n(index_t n) {
  const double nu = static_cast<double>(n) * 0x1p-24;
  return nu / (1.0 - nu);
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

std::vector<float> data(std::size_t n, std::uint64_t seed) { return gqa::test::random_floats(n, seed); }

/// Every entry (mr, nr) of tile_table<Isa, MR, NR, AO, U> against Σ_k A(r, k)·B(k, c) in double: the
/// tile's rows × vectors of C are within 2kn + 2 roundings of it, and no other float of C changes.
template <class Isa, core::a_order AO, core::update U>
void check_tile_table() {
  using shape = typename gqa::isa::vec<Isa>::tile_shape;
  constexpr int L = gqa::isa::vec<Isa>::lanes, MR = shape::mr, NR = shape::nr;
  using table = core::tile_table<Isa, MR, NR, AO, U>;
  for (const index_t kn : {1, 2, 7, 33}) {
    const index_t lda = AO == core::a_order::row_major ? kn + 3 : MR + 3;
    const index_t ldb = NR * L + 5, ldc = NR * L + L + 1;
    const auto a = data(static_cast<std::size_t>((AO == core::a_order::row_major ? MR : kn) * lda), 1 + kn);
    const auto b = data(static_cast<std::size_t>(kn * ldb), 2 + kn);
    const auto c0 = data(static_cast<std::size_t>((MR + 1) * ldc), 3 + kn);
    for (int mr = 1; mr <= MR; ++mr)
      for (int nr = 1; nr <= NR; ++nr) {
        SCOPED_TRACE(::testing::Message() << "tile " << mr << " x " << nr << " vectors, k = " << kn);
        std::vector<float> c = c0;
        // Row-major A holds exactly the tile's mr rows, so a read of a row past them (Note [row tails]) is
        // out of bounds for the sanitizer build.
        const std::vector<float> a_rows = AO == core::a_order::row_major
                                              ? std::vector<float>(a.begin(), a.begin() + mr * lda)
                                              : a;
        table::get(mr, nr)(a_rows.data(), lda, b.data(), ldb, kn, c.data(), ldc);
        for (index_t r = 0; r <= MR; ++r)
          for (index_t x = 0; x < ldc; ++x) {
            const auto i = static_cast<std::size_t>(r * ldc + x);
            if (r >= mr || x >= nr * L) {
              ASSERT_TRUE(same_bits(c[i], c0[i])) << "C[" << r << "][" << x << "] outside the tile changed";
              continue;
            }
            double want = U == core::update::accumulate ? c0[i] : 0.0, mag = std::fabs(want);
            for (index_t k = 0; k < kn; ++k) {
              const float av = AO == core::a_order::row_major ? a[static_cast<std::size_t>(r * lda + k)]
                                                              : a[static_cast<std::size_t>(k * lda + r)];
              const double t = static_cast<double>(av) * b[static_cast<std::size_t>(k * ldb + x)];
              want += t;
              mag += std::fabs(t);
            }
            ASSERT_NEAR(c[i], want, gamma_n(2 * kn + 2) * mag) << "C[" << r << "][" << x << "]";
          }
      }
  }
}

}  // namespace

template <class Isa>
class core_suite : public gqa::test::isa_test<Isa> {};
TYPED_TEST_SUITE_P(core_suite);

TYPED_TEST_P(core_suite, tile_every_shape_of_the_table) {
  check_tile_table<TypeParam, core::a_order::row_major, core::update::assign>();
  check_tile_table<TypeParam, core::a_order::row_major, core::update::accumulate>();
  check_tile_table<TypeParam, core::a_order::transposed, core::update::assign>();
  check_tile_table<TypeParam, core::a_order::transposed, core::update::accumulate>();
}

// run_partial: B has `width` columns per row, then a gap of NaN (a read past the width poisons C); its
// last row ends at a guard page. C's lanes past the width are stored whole and must come back as they were
// (+= 0) or +0 (= 0).
TYPED_TEST_P(core_suite, tile_partial_reads_only_width_columns) {
  constexpr int L = gqa::isa::vec<TypeParam>::lanes;
  constexpr int MR = 3, NR = 3;
  const index_t kn = 5, lda = kn, ldc = NR * L;
  const auto a = data(MR * kn, 11);
  const auto c0 = data(MR * ldc, 12);
  for (index_t width = 1; width <= NR * L; ++width) {
    SCOPED_TRACE(::testing::Message() << "width " << width);
    const index_t ldb = width + L;
    gqa::test::guarded_floats b(static_cast<std::size_t>((kn - 1) * ldb + width));
    const auto bv = data(b.size(), 13 + static_cast<std::uint64_t>(width));
    for (std::size_t i = 0; i < b.size(); ++i)
      b.data()[i] = static_cast<index_t>(i) % ldb < width ? bv[i] : std::numeric_limits<float>::quiet_NaN();
    std::vector<float> acc = c0, set = c0;
    core::tile<TypeParam, MR, NR, core::a_order::row_major, core::update::accumulate>::run_partial(
        a.data(), lda, b.data(), ldb, kn, acc.data(), ldc, width);
    core::tile<TypeParam, MR, NR, core::a_order::row_major, core::update::assign>::run_partial(
        a.data(), lda, b.data(), ldb, kn, set.data(), ldc, width);
    const index_t stored = (width + L - 1) / L * L;
    for (index_t r = 0; r < MR; ++r)
      for (index_t x = 0; x < ldc; ++x) {
        const auto i = static_cast<std::size_t>(r * ldc + x);
        if (x >= width) {
          ASSERT_TRUE(same_bits(acc[i], c0[i])) << "C += : column " << x << " past the width changed";
          ASSERT_TRUE(same_bits(set[i], x < stored ? 0.0f : c0[i])) << "C = : column " << x << " past the width";
          continue;
        }
        double sum = 0.0, mag = 0.0;
        for (index_t k = 0; k < kn; ++k) {
          const double t = static_cast<double>(a[static_cast<std::size_t>(r * lda + k)]) * b.data()[k * ldb + x];
          sum += t;
          mag += std::fabs(t);
        }
        ASSERT_NEAR(set[i], sum, gamma_n(2 * kn) * mag) << "C[" << r << "][" << x << "]";
        ASSERT_NEAR(acc[i], c0[i] + sum, gamma_n(2 * kn + 2) * (mag + std::fabs(c0[i])))
            << "C[" << r << "][" << x << "]";
      }
  }
}

// The dot-product family: every block shape the core uses, d from 1 to past a few vectors, keys of
// exactly d floats ending at a guard page. Scores agree with the double sum within 2(d + lanes) roundings.
TYPED_TEST_P(core_suite, dot_scores_every_block_shape) {
  using D = core::dot<TypeParam>;
  constexpr int L = gqa::isa::vec<TypeParam>::lanes;
  for (const index_t d :
       {index_t{1}, index_t{L}, index_t{L + 1}, index_t{2 * L - 1}, index_t{3 * L + 2}, index_t{67}}) {
    SCOPED_TRACE(::testing::Message() << "d = " << d);
    constexpr index_t nk = 8, nr = 4;
    gqa::test::guarded_floats kbuf(static_cast<std::size_t>(nk * d));
    const auto kv = data(kbuf.size(), 21 + static_cast<std::uint64_t>(d));
    std::copy(kv.begin(), kv.end(), kbuf.data());
    const auto q = data(static_cast<std::size_t>(nr * d), 22 + static_cast<std::uint64_t>(d));
    const float* kr[nk];
    for (index_t u = 0; u < nk; ++u) kr[u] = kbuf.data() + u * d;
    const typename D::extent de(d);
    auto check = [&](const std::vector<float>& s, index_t rows, index_t keys, index_t lds, const char* what) {
      for (index_t r = 0; r < rows; ++r)
        for (index_t u = 0; u < keys; ++u) {
          double want = 0.0, mag = 0.0;
          for (index_t c = 0; c < d; ++c) {
            const double t = static_cast<double>(q[static_cast<std::size_t>(r * d + c)]) * kr[u][c];
            want += t;
            mag += std::fabs(t);
          }
          EXPECT_NEAR(s[static_cast<std::size_t>(r * lds + u)], want, gamma_n(2 * (d + L)) * mag)
              << what << ": row " << r << ", key " << u;
        }
    };
    std::vector<float> s(nr * nk);
    D::template scores<4, 4>(q.data(), d, kr, de, s.data(), nk);
    D::template scores<4, 4>(q.data(), d, kr + 4, de, s.data() + 4, nk);
    check(s, 4, 8, nk, "4 rows x 4 keys");
    std::fill(s.begin(), s.end(), 0.0f);
    D::template scores<2, 4>(q.data(), d, kr, de, s.data(), nk);
    check(s, 2, 4, nk, "2 rows x 4 keys");
    std::fill(s.begin(), s.end(), 0.0f);
    D::template scores<1, 8>(q.data(), d, kr, de, s.data(), nk);
    check(s, 1, 8, nk, "1 row x 8 keys");
    std::fill(s.begin(), s.end(), 0.0f);
    for (index_t u = 0; u < nk; u += 2) D::template scores<4, 2>(q.data(), d, kr + u, de, s.data() + u, nk);
    check(s, 4, 8, nk, "4 rows x 2 keys");
  }
}

// The direct path end to end on raw buffers: scores of 1..9 rows against nb keys read in place, and P·V
// with V rows of exactly d_v floats (a NaN gap after each, the last ending at a guard page).
TYPED_TEST_P(core_suite, direct_path_reads_k_and_v_in_place) {
  using DP = core::direct<TypeParam>;
  constexpr int L = gqa::isa::vec<TypeParam>::lanes;
  for (const index_t nb : {1, 7, 8, 13}) {
    for (const index_t dv : {index_t{1}, index_t{L + 1}, index_t{2 * L}, index_t{5 * L + 3}}) {
      for (index_t rows = 1; rows <= 9; ++rows) {
        SCOPED_TRACE(::testing::Message() << "nb = " << nb << ", d = d_v = " << dv << ", rows = " << rows);
        const index_t d = dv, ks = d + 3, vs = dv + L, lds = core::round_up(nb, core::k_direct_keys);
        const index_t dvp = core::round_up(dv, L);
        gqa::test::guarded_floats k((nb - 1) * ks + d), v((nb - 1) * vs + dv);
        const auto kd = data(k.size(), 31), vd = data(v.size(), 32);
        for (index_t i = 0; i < static_cast<index_t>(v.size()); ++i)
          v.data()[i] = i % vs < dv ? vd[static_cast<std::size_t>(i)] : std::numeric_limits<float>::quiet_NaN();
        std::copy(kd.begin(), kd.end(), k.data());
        const auto q = data(static_cast<std::size_t>(rows * d), 33);
        std::vector<float> s(static_cast<std::size_t>(rows * lds));
        DP::scores(core::strided_rows{k.data(), ks}, d, nb, q.data(), rows, s.data(), lds);
        for (index_t r = 0; r < rows; ++r)
          for (index_t j = 0; j < nb; ++j) {
            double want = 0.0, mag = 0.0;
            for (index_t c = 0; c < d; ++c) {
              const double t = static_cast<double>(q[static_cast<std::size_t>(r * d + c)]) * k.data()[j * ks + c];
              want += t;
              mag += std::fabs(t);
            }
            ASSERT_NEAR(s[static_cast<std::size_t>(r * lds + j)], want, gamma_n(2 * (d + L)) * mag)
                << "S[" << r << "][" << j << "]";
          }
        const auto p = data(static_cast<std::size_t>(rows * lds), 34);
        const auto o0 = data(static_cast<std::size_t>(rows * dvp), 35);
        std::vector<float> o = o0;
        DP::accumulate_pv(core::strided_rows{v.data(), vs}, dv, 0, nb, p.data(), rows, lds, dvp, o.data());
        for (index_t r = 0; r < rows; ++r)
          for (index_t c = 0; c < dvp; ++c) {
            const auto i = static_cast<std::size_t>(r * dvp + c);
            if (c >= dv) {
              ASSERT_TRUE(same_bits(o[i], o0[i])) << "O padding [" << r << "][" << c << "] changed";
              continue;
            }
            double want = o0[i], mag = std::fabs(want);
            for (index_t j = 0; j < nb; ++j) {
              const double t = static_cast<double>(p[static_cast<std::size_t>(r * lds + j)]) * v.data()[j * vs + c];
              want += t;
              mag += std::fabs(t);
            }
            ASSERT_NEAR(o[i], want, gamma_n(2 * nb + 2) * mag) << "O[" << r << "][" << c << "]";
          }
      }
    }
  }
}

// pack_k: the nbp / L vectors of keys are cut into ceil(nbp / cols) slices whose widths differ by at most
// one vector, the wider first (Note [balanced slices]); each slice is Kᵀ laid out [d][width], keys past nb
// zero; pack_v pads rows with zeros.
TYPED_TEST_P(core_suite, packing_layout) {
  using P = core::packed<TypeParam>;
  constexpr int L = gqa::isa::vec<TypeParam>::lanes;
  const index_t d = 11, ks = 13, dv = L + 1, vs = dv + 2, dvp = core::round_up(dv, L);
  for (const index_t nb : {index_t{1}, P::cols - 1, P::cols + L + 1}) {
    SCOPED_TRACE(::testing::Message() << "nb = " << nb);
    const index_t nbp = core::round_up(nb, L);
    const auto k = data(static_cast<std::size_t>(nb * ks), 41), v = data(static_cast<std::size_t>(nb * vs), 42);
    std::vector<float> kp(static_cast<std::size_t>(nbp * d), -1.0f), vp(static_cast<std::size_t>(nb * dvp), -1.0f);
    P::pack_k(core::strided_rows{k.data(), ks}, d, nb, nbp, kp.data());
    P::pack_v(core::strided_rows{v.data(), vs}, dv, nb, dvp, vp.data());
    const index_t nv = nbp / L, ns = (nbp + P::cols - 1) / P::cols;
    for (index_t j = 0; j < nbp; ++j) {
      index_t s0 = 0, w = 0;  // the slice holding key j
      for (index_t i = 0; i < ns; ++i, s0 += w) {
        w = (nv / ns + (i < nv % ns ? 1 : 0)) * L;
        if (j < s0 + w) break;
      }
      for (index_t c = 0; c < d; ++c)
        ASSERT_EQ(kp[static_cast<std::size_t>(s0 * d + c * w + (j - s0))],
                  j < nb ? k[static_cast<std::size_t>(j * ks + c)] : 0.0f)
            << "key " << j << ", c " << c;
    }
    for (index_t j = 0; j < nb; ++j)
      for (index_t c = 0; c < dvp; ++c)
        ASSERT_EQ(vp[static_cast<std::size_t>(j * dvp + c)], c < dv ? v[static_cast<std::size_t>(j * vs + c)] : 0.0f);
  }
}

// slice_at(nbp, x) is the start of the slice holding key x (Note [balanced slices]), for every nbp up to
// 64 vectors; scores() over keys [c0, c1) of a packed block, c0 a slice start, gives the block's scores of
// those keys (Note [windows on the block grid]) and leaves the tiles hidden() names unwritten.
TYPED_TEST_P(core_suite, slice_at_and_scores_of_a_key_range) {
  using P = core::packed<TypeParam>;
  constexpr index_t L = gqa::isa::vec<TypeParam>::lanes;
  for (index_t nbp = L; nbp <= 64 * L; nbp += L) {
    P::for_each_slice(nbp, [&](index_t s0, index_t w) {
      for (index_t x = s0; x < s0 + w; ++x) ASSERT_EQ(P::slice_at(nbp, x), s0) << "nbp " << nbp << ", key " << x;
    });
  }
  const index_t d = 9, nb = 3 * P::cols + 2 * L + 3, nbl = core::round_up(nb, L), rows = P::MR + 2;
  const auto k = data(static_cast<std::size_t>(nb * d), 51), q = data(static_cast<std::size_t>(rows * d), 52);
  std::vector<float> kp(static_cast<std::size_t>(nbl * d));
  P::pack_k(core::strided_rows{k.data(), d}, d, nb, nbl, kp.data());
  const index_t lds = nbl + L;
  for (const index_t from : {index_t{0}, P::cols / 2, P::cols + L, nb - 1}) {
    const index_t c0 = P::slice_at(nbl, from);
    for (const index_t c1 : {core::round_up(from + 1, L), nbl}) {
      SCOPED_TRACE(::testing::Message() << "keys [" << c0 << ", " << c1 << ")");
      std::vector<float> s(static_cast<std::size_t>(rows * lds), 7.0f);
      // Hidden: rows [0, MR) from the range's second vector on.
      const auto hidden = [&](index_t r0, index_t, index_t a, index_t) { return r0 == 0 && a >= L; };
      P::scores(q.data(), rows, d, kp.data(), nbl, c0, c1, s.data(), lds, [] {}, hidden);
      for (index_t r = 0; r < rows; ++r)
        for (index_t j = 0; j < lds; ++j) {
          const float got = s[static_cast<std::size_t>(r * lds + j)];
          const index_t key = c0 + j;
          const bool written = j < c1 - c0 && !(r < P::MR && (P::slice_at(nbl, key) - c0) >= L);
          if (!written) {
            ASSERT_EQ(got, 7.0f) << "row " << r << ", column " << j;
            continue;
          }
          double want = 0.0;  // keys past nb are the packed block's zero padding
          for (index_t c = 0; c < d && key < nb; ++c)
            want += double{q[static_cast<std::size_t>(r * d + c)]} * k[static_cast<std::size_t>(key * d + c)];
          ASSERT_NEAR(got, want, 1e-5) << "row " << r << ", key " << key;
        }
    }
  }
}

// online_softmax::update over blocks (the first fully masked, others partly), then finish_row and lse,
// against softmax in double; merge of the same keys cut into chunks gives the same row; a fully masked
// chunk changes nothing; a row that sees no key ends as zeros with LSE −inf.
TYPED_TEST_P(core_suite, online_softmax_update_merge_and_masked_rows) {
  using S = core::online_softmax<TypeParam>;
  constexpr int L = gqa::isa::vec<TypeParam>::lanes;
  const index_t n = 4 * L, blocks = 6, keys = n * blocks, dv = L + 3, dvp = core::round_up(dv, L);
  auto scores = data(static_cast<std::size_t>(keys), 51);
  for (auto& x : scores) x *= 8.0f;  // log2 units: weights spread over 2^±8
  for (index_t j = 0; j < keys; ++j)
    if (j < n || j % 5 == 3) scores[static_cast<std::size_t>(j)] = -k_inf;
  const auto v = data(static_cast<std::size_t>(keys * dvp), 52);

  // Runs keys [j0, j1) block by block into state (m, l, o): o += p · V as the core's P·V would.
  auto run = [&](index_t j0, index_t j1, float& m, float& l, float* o) {
    m = -k_inf;
    l = 0.0f;
    std::fill(o, o + dvp, 0.0f);
    for (index_t b = j0; b < j1; b += n) {
      std::vector<float> s(scores.begin() + b, scores.begin() + b + n);
      S::template update<1>(s.data(), n, n, &m, &l, o, dvp);
      for (index_t j = 0; j < n; ++j) {
        EXPECT_FALSE(std::isnan(s[static_cast<std::size_t>(j)]));
        for (index_t c = 0; c < dvp; ++c)
          o[c] += s[static_cast<std::size_t>(j)] * v[static_cast<std::size_t>((b + j) * dvp + c)];
      }
    }
  };
  double mx = -INFINITY;
  for (const float x : scores) mx = std::max(mx, static_cast<double>(x));
  double sum = 0.0;
  std::vector<double> want(static_cast<std::size_t>(dv), 0.0);
  for (index_t j = 0; j < keys; ++j) {
    const double p = std::exp2(scores[static_cast<std::size_t>(j)] - mx);
    sum += p;
    for (index_t c = 0; c < dv; ++c) want[static_cast<std::size_t>(c)] += p * v[static_cast<std::size_t>(j * dvp + c)];
  }
  const double tol = gamma_n(4 * keys);  // exp2 (< 2 u), a rescale per block, a sum over the keys

  float m = 0.0f, l = 0.0f;
  std::vector<float> o(static_cast<std::size_t>(dvp)), out(static_cast<std::size_t>(dv));
  run(0, keys, m, l, o.data());
  S::finish_row(o.data(), l, true, dv, out.data());
  for (index_t c = 0; c < dv; ++c)
    EXPECT_NEAR(out[static_cast<std::size_t>(c)], want[static_cast<std::size_t>(c)] / sum, tol) << "O[" << c << "]";
  EXPECT_NEAR(S::lse(m, l, true), (mx + std::log2(sum)) * std::log(2.0), tol * 16.0);

  // update_rows (Note [softmax pipeline]) computes exactly what each row computes alone: the same p, m, l
  // and rescaled o, bit for bit, from states that have seen no key, finite ones and a NaN, with seven rows
  // so that rows 4-6 take their max pass inside the exp2 pass of rows 0-2. before(r) runs before row r's
  // scores are read: here it masks the row's last key, which holds the row's largest score (read before
  // the mask, it would be the row's max). after(r) runs once per row, in row order, after before(r).
  {
    constexpr index_t R = 7;
    const index_t lds = n + L;  // rows apart by more than a block, as in the core's score buffer
    auto sr = data(static_cast<std::size_t>(R * lds), 53);
    for (auto& x : sr) x *= 8.0f;
    for (index_t j = 0; j < n; ++j) sr[static_cast<std::size_t>(j)] = -k_inf;  // row 0: every key masked
    sr[static_cast<std::size_t>(2 * lds + 1)] = std::numeric_limits<float>::quiet_NaN();  // rows 2, 5: a NaN
    sr[static_cast<std::size_t>(5 * lds + 2)] = std::numeric_limits<float>::quiet_NaN();
    for (index_t r = 1; r < R; ++r) sr[static_cast<std::size_t>(r * lds + n - 1)] = 1000.0f;
    float mr[R] = {-k_inf, 1.5f, -k_inf, 20.0f, -k_inf, 0.5f, 3.0f}, lr[R] = {0.0f, 3.0f, 0.0f, 2.0f, 0.0f, 1.0f, 4.0f};
    auto orr = data(static_cast<std::size_t>(R * dvp), 54);
    auto s1 = sr, o1 = orr;
    float m1[R], l1[R];
    std::copy(mr, mr + R, m1);
    std::copy(lr, lr + R, l1);
    for (index_t r = 0; r < R; ++r) {
      s1[static_cast<std::size_t>(r * lds + n - 1)] = -k_inf;
      S::template update<1>(s1.data() + r * lds, lds, n, m1 + r, l1 + r, o1.data() + r * dvp, dvp);
    }
    std::vector<index_t> before_at(R, -1), after_at(R, -1);
    index_t calls = 0;
    S::update_rows(
        sr.data(), lds, n, R, mr, lr, orr.data(), dvp,
        [&](index_t r) noexcept {
          sr[static_cast<std::size_t>(r * lds + n - 1)] = -k_inf;
          before_at[static_cast<std::size_t>(r)] = calls++;
        },
        [&](index_t r) noexcept { after_at[static_cast<std::size_t>(r)] = calls++; });
    for (index_t r = 0; r < R; ++r) {
      EXPECT_TRUE(same_bits(mr[r], m1[r])) << "m, row " << r;
      EXPECT_TRUE(same_bits(lr[r], l1[r])) << "l, row " << r;
      for (index_t j = 0; j < n; ++j)
        EXPECT_TRUE(same_bits(sr[static_cast<std::size_t>(r * lds + j)], s1[static_cast<std::size_t>(r * lds + j)]))
            << "p, row " << r << ", key " << j;
      for (index_t c = 0; c < dvp; ++c)
        EXPECT_TRUE(same_bits(orr[static_cast<std::size_t>(r * dvp + c)], o1[static_cast<std::size_t>(r * dvp + c)]))
            << "o, row " << r << ", column " << c;
      const auto ur = static_cast<std::size_t>(r);
      EXPECT_GE(before_at[ur], 0) << "row " << r;
      EXPECT_LT(before_at[ur], after_at[ur]) << "row " << r;
      if (r > 0) {
        EXPECT_LT(after_at[ur - 1], after_at[ur]) << "row " << r;
      }
    }
    EXPECT_EQ(calls, 2 * R);
    EXPECT_TRUE(std::isnan(lr[2]));  // the NaN scores' rows
    EXPECT_TRUE(std::isnan(lr[5]));
    EXPECT_EQ(lr[0], 0.0f);          // the masked row saw nothing
    EXPECT_LT(mr[1], 1000.0f);       // the masked largest score did not count
  }

  // Split into three chunks (the first fully masked): the merge reproduces the row.
  const index_t cuts[] = {0, n, 3 * n, keys};
  std::vector<float> pm(3), pl(3), po(static_cast<std::size_t>(3 * dvp));
  for (int c = 0; c < 3; ++c) run(cuts[c], cuts[c + 1], pm[c], pl[c], po.data() + c * dvp);
  EXPECT_EQ(pm[0], -k_inf);
  EXPECT_EQ(pl[0], 0.0f);
  auto part = [&](index_t c) { return core::row_state{&pm[c], &pl[c], po.data() + c * dvp}; };
  float mm = 0.0f, ml = 0.0f;
  std::vector<float> mo(static_cast<std::size_t>(dvp));
  S::merge(part, 3, 1, dvp, core::row_state{&mm, &ml, mo.data()});
  S::finish_row(mo.data(), ml, true, dv, out.data());
  for (index_t c = 0; c < dv; ++c)
    EXPECT_NEAR(out[static_cast<std::size_t>(c)], want[static_cast<std::size_t>(c)] / sum, tol)
        << "merged O[" << c << "]";
  EXPECT_EQ(mm, m);
  EXPECT_NEAR(S::lse(mm, ml, true), S::lse(m, l, true), tol * 16.0);
  // Without the masked chunk: bit for bit the same merge.
  float m2 = 0.0f, l2 = 0.0f;
  std::vector<float> o2(static_cast<std::size_t>(dvp));
  S::merge([&](index_t c) { return part(c + 1); }, 2, 1, dvp, core::row_state{&m2, &l2, o2.data()});
  EXPECT_TRUE(same_bits(m2, mm) && same_bits(l2, ml));
  for (index_t c = 0; c < dvp; ++c)
    EXPECT_TRUE(same_bits(o2[static_cast<std::size_t>(c)], mo[static_cast<std::size_t>(c)]));

  // A row that sees no key: p is written as 0, the state stays empty, the row is zeros and LSE −inf.
  std::vector<float> s(static_cast<std::size_t>(n), -k_inf), orow(static_cast<std::size_t>(dvp), 0.0f);
  float em = -k_inf, el = 0.0f;
  S::template update<1>(s.data(), n, n, &em, &el, orow.data(), dvp);
  for (const float x : s) EXPECT_TRUE(same_bits(x, 0.0f));
  EXPECT_EQ(em, -k_inf);
  EXPECT_EQ(el, 0.0f);
  std::fill(out.begin(), out.end(), 7.0f);
  S::finish_row(orow.data(), el, false, dv, out.data());
  for (const float x : out) EXPECT_TRUE(same_bits(x, 0.0f));
  EXPECT_EQ(S::lse(em, el, false), -k_inf);
  float zm = 0.0f, zl = 1.0f;
  std::vector<float> zo(static_cast<std::size_t>(dvp), 1.0f);
  S::merge(
      [&](index_t) {
        return core::row_state{&em, &el, orow.data()};
      },
      2, 1, dvp, core::row_state{&zm, &zl, zo.data()});
  EXPECT_EQ(zm, -k_inf);
  EXPECT_EQ(zl, 0.0f);
  for (const float x : zo) EXPECT_TRUE(same_bits(x, 0.0f));
}

// Note [non-finite inputs] at the level of the parts: update keeps a NaN score (as a NaN weight, also in
// a block whose other scores are all masked) and makes a +inf score's row NaN; the NaN survives later
// blocks and the merge (also from a chunk whose max stayed −inf); a row with visible keys and no weight
// is NaN with LSE NaN, not zeros.
TYPED_TEST_P(core_suite, online_softmax_keeps_nan) {
  using S = core::online_softmax<TypeParam>;
  constexpr int L = gqa::isa::vec<TypeParam>::lanes;
  const index_t n = 2 * L, dvp = L;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (const index_t at : {index_t{0}, n / 2, n - 1})
    for (const bool masked_rest : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "NaN score at " << at << (masked_rest ? ", rest masked" : ""));
      auto s = data(static_cast<std::size_t>(n), 60 + at);
      if (masked_rest) std::fill(s.begin(), s.end(), -k_inf);
      s[static_cast<std::size_t>(at)] = nan;
      float m = -k_inf, l = 0.0f;
      std::vector<float> o(static_cast<std::size_t>(dvp), 0.0f);
      S::template update<1>(s.data(), n, n, &m, &l, o.data(), dvp);
      EXPECT_TRUE(std::isnan(s[static_cast<std::size_t>(at)])) << "weight of the NaN score";
      EXPECT_TRUE(std::isnan(l));
      auto s2 = data(static_cast<std::size_t>(n), 70 + at);  // a later, finite block
      for (auto& x : s2) x += 50.0f;                         // with a larger max: rescales the state
      S::template update<1>(s2.data(), n, n, &m, &l, o.data(), dvp);
      EXPECT_TRUE(std::isnan(l));
      // Merged with a finite chunk, in either order.
      float fm = 1.0f, fl = 2.0f;
      std::vector<float> fo(static_cast<std::size_t>(dvp), 0.5f);
      std::vector<float> out(static_cast<std::size_t>(dvp));
      for (const bool nan_first : {true, false}) {
        auto part = [&](index_t c) {
          return (c == 0) == nan_first ? core::row_state{&m, &l, o.data()} : core::row_state{&fm, &fl, fo.data()};
        };
        float mm = 0.0f, ml = 0.0f;
        std::vector<float> mo(static_cast<std::size_t>(dvp));
        S::merge(part, 2, 1, dvp, core::row_state{&mm, &ml, mo.data()});
        EXPECT_TRUE(std::isnan(ml));
        EXPECT_TRUE(std::isnan(S::lse(mm, ml, true)));
      }
    }
  // A chunk that saw only −inf scores and a NaN (max −inf, l NaN) still poisons the merge.
  {
    std::vector<float> s(static_cast<std::size_t>(n), -k_inf);
    s[1] = nan;
    float m = -k_inf, l = 0.0f;
    std::vector<float> o(static_cast<std::size_t>(dvp), 0.0f);
    S::template update<1>(s.data(), n, n, &m, &l, o.data(), dvp);
    EXPECT_TRUE(std::isnan(l));
    float em = -k_inf, el = 0.0f;
    std::vector<float> eo(static_cast<std::size_t>(dvp), 0.0f);
    float mm = 0.0f, ml = 0.0f;
    std::vector<float> mo(static_cast<std::size_t>(dvp));
    S::merge([&](index_t c) { return c == 0 ? core::row_state{&em, &el, eo.data()} : core::row_state{&m, &l, o.data()}; },
             2, 1, dvp, core::row_state{&mm, &ml, mo.data()});
    EXPECT_TRUE(std::isnan(ml));
  }
  // +inf score: the row is NaN (2^(inf − inf)); the other weights are 0.
  {
    auto s = data(static_cast<std::size_t>(n), 80);
    s[3 % static_cast<std::size_t>(n)] = k_inf;
    float m = -k_inf, l = 0.0f;
    std::vector<float> o(static_cast<std::size_t>(dvp), 0.0f);
    S::template update<1>(s.data(), n, n, &m, &l, o.data(), dvp);
    EXPECT_EQ(m, k_inf);
    EXPECT_TRUE(std::isnan(l));
  }
  // A NaN after a larger score in the same lane: the max pass may drop the NaN (x86 lane max returns its
  // second operand when either is NaN) and find a max below that score, or keep −inf; the larger score's
  // s − m is then above 127 or +inf, exp2_nonpositive's unspecified range (Note [softmax exp2]). The row
  // is NaN all the same, through a later block and the final row, and nothing undefined happens (the
  // sanitizer build runs this on AVX2 and AVX-512; the fuzzer found the scalar pow2i converting +inf to
  // an integer here, Note [softmax exp2]).
  for (const float big : {k_inf, 1000.0f, 3.0e38f})
    for (const bool masked_rest : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "score " << big << " then NaN" << (masked_rest ? ", rest masked" : ""));
      const index_t n3 = 3 * L;
      auto s = data(static_cast<std::size_t>(n3), 90);
      if (masked_rest) std::fill(s.begin(), s.end(), -k_inf);
      for (index_t lane = 0; lane < L; ++lane) {
        s[static_cast<std::size_t>(lane)] = big;
        s[static_cast<std::size_t>(L + lane)] = nan;
      }
      float m = -k_inf, l = 0.0f;
      std::vector<float> o(static_cast<std::size_t>(dvp), 0.0f), out(static_cast<std::size_t>(dvp), 7.0f);
      S::template update<1>(s.data(), n3, n3, &m, &l, o.data(), dvp);
      EXPECT_TRUE(std::isnan(l));
      for (index_t lane = 0; lane < L; ++lane) EXPECT_TRUE(std::isnan(s[static_cast<std::size_t>(L + lane)]));
      auto s2 = data(static_cast<std::size_t>(n), 91);  // a later, finite block
      S::template update<1>(s2.data(), n, n, &m, &l, o.data(), dvp);
      EXPECT_TRUE(std::isnan(l));
      S::finish_row(o.data(), l, true, dvp, out.data());
      for (const float x : out) EXPECT_TRUE(std::isnan(x));
    }
  // Visible keys whose scores are all −inf: l = 0, and the row is NaN (0 · 1/0), LSE NaN.
  {
    std::vector<float> s(static_cast<std::size_t>(n), -k_inf);
    float m = -k_inf, l = 0.0f;
    std::vector<float> o(static_cast<std::size_t>(dvp), 0.0f), out(static_cast<std::size_t>(dvp), 7.0f);
    S::template update<1>(s.data(), n, n, &m, &l, o.data(), dvp);
    EXPECT_EQ(l, 0.0f);
    S::finish_row(o.data(), l, true, dvp, out.data());
    for (const float x : out) EXPECT_TRUE(std::isnan(x));
    EXPECT_TRUE(std::isnan(S::lse(m, l, true)));
  }
}

// accumulate_pv_cut (packed and direct): row r takes keys [lo(r), hi(r)) only, a staircase (lo = 0, the
// causal horizon) or a band (a sliding window's lower edge too) through the block: bitwise the same as the
// full block with P = 0 on hidden keys when V is finite, and a NaN or inf in a V row that a row does not
// see leaves that row finite (Note [causal staircase]).
TYPED_TEST_P(core_suite, causal_staircase_skips_hidden_v_rows) {
  using PK = core::packed<TypeParam>;
  using DP = core::direct<TypeParam>;
  constexpr int L = gqa::isa::vec<TypeParam>::lanes;
  for (const bool banded : {false, true})
    for (const index_t rows : {index_t{5}, index_t{13}, index_t{40}}) {
      const index_t nb = 37, dv = 2 * L + 3, dvp = core::round_up(dv, L), ldp = nb + 5;
      const index_t step = std::max<index_t>(1, rows / 5);  // rows share limits in groups (positions)
      const auto hi = [&](index_t r) { return std::min<index_t>(nb, 3 + (r / step) * 7); };
      const auto lo = [&](index_t r) { return banded ? std::clamp<index_t>(hi(r) - 12, 0, nb) : index_t{0}; };
      auto p = data(static_cast<std::size_t>(rows * ldp), 90 + rows);
      for (index_t r = 0; r < rows; ++r)
        for (index_t j = 0; j < nb; ++j)
          if (j < lo(r) || j >= hi(r)) p[static_cast<std::size_t>(r * ldp + j)] = 0.0f;
      auto v = data(static_cast<std::size_t>(nb * dvp), 91 + rows);
      const auto o0 = data(static_cast<std::size_t>(rows * dvp), 92 + rows);
      for (const bool direct_path : {false, true}) {
        SCOPED_TRACE(::testing::Message() << rows << " rows, " << (direct_path ? "direct" : "packed")
                                          << (banded ? ", band" : ", staircase"));
        auto run = [&](bool cut, const std::vector<float>& vv) {
          std::vector<float> o = o0;
          if (direct_path) {
            if (cut) DP::accumulate_pv_cut(core::strided_rows{vv.data(), dvp}, dv, lo, hi, p.data(), rows, ldp, dvp, o.data());
            else DP::accumulate_pv(core::strided_rows{vv.data(), dvp}, dv, 0, nb, p.data(), rows, ldp, dvp, o.data());
          } else {
            if (cut) PK::accumulate_pv_cut(p.data(), rows, ldp, vv.data(), lo, hi, dvp, o.data(), true);
            else PK::accumulate_pv(p.data(), rows, ldp, vv.data(), nb, dvp, o.data(), true);
          }
          return o;
        };
        const auto full = run(false, v), cut = run(true, v);
        for (index_t r = 0; r < rows; ++r)
          for (index_t c = 0; c < dv; ++c) {
            const auto i = static_cast<std::size_t>(r * dvp + c);
            ASSERT_TRUE(same_bits(full[i], cut[i])) << "O[" << r << "][" << c << "]";
          }
        // Poison a V row some rows do not see: past the first rows' upper edge (seen only by the last group)
        // and, for a band, below the last rows' lower edge.
        std::vector<index_t> poisoned = {hi(rows - 1) - 1};
        if (banded && lo(rows - 1) > 0) poisoned.push_back(lo(rows - 1) - 1);
        for (const index_t j : poisoned) {
          auto bad = v;
          for (index_t c = 0; c < dv; ++c) bad[static_cast<std::size_t>(j * dvp + c)] = c % 2 ? k_inf : std::nanf("");
          const auto o = run(true, bad);
          for (index_t r = 0; r < rows; ++r)
            for (index_t c = 0; c < dv; ++c) {
              const float x = o[static_cast<std::size_t>(r * dvp + c)];
              if (lo(r) <= j && j < hi(r)) {
                EXPECT_FALSE(std::isfinite(x)) << "O[" << r << "][" << c << "] sees the poisoned key " << j;
              } else {
                EXPECT_TRUE(same_bits(x, cut[static_cast<std::size_t>(r * dvp + c)]))
                    << "O[" << r << "][" << c << "], poisoned key " << j;
              }
            }
        }
      }
    }
}

// Note [P·V in key chunks]: a packed P·V whose V slab outgrows L1 runs its keys in chunks; every output
// element must still be the one chain over its keys in ascending order (the same bits as the unchunked band
// product), rows whose band starts or ends inside a chunk included, and a poisoned V row must still reach
// only the rows that see it. The sizes make every ISA chunk (d_v wider than a slab, 2.5 chunks' worth of
// slab bytes), and the chunked result is also held against the double product.
TYPED_TEST_P(core_suite, pv_in_key_chunks_keeps_each_chain) {
  using PK = core::packed<TypeParam>;
  constexpr int L = gqa::isa::vec<TypeParam>::lanes;
  using table = core::tile_table<TypeParam, PK::MR, PK::NR, core::a_order::row_major, core::update::accumulate>;
  const index_t slab_row = PK::cols * static_cast<index_t>(sizeof(float));
  const index_t nb = 5 * PK::pv_chunk_over / (2 * slab_row) + 7, dv = 2 * PK::cols + 3, dvp = core::round_up(dv, L);
  const index_t ldp = nb + 3;
  for (const bool banded : {false, true})
    for (const index_t rows : {index_t{1}, index_t{PK::MR + 1}, index_t{4 * PK::MR + 3}}) {
      SCOPED_TRACE(::testing::Message() << rows << " rows" << (banded ? ", band" : ", staircase"));
      // Row r sees keys [lo(r), hi(r)): edges that fall inside chunks, not on their starts.
      const auto hi = [&](index_t r) {
        return std::min<index_t>(nb, nb / 3 + r * (2 * nb / 3) / std::max<index_t>(1, rows - 1) + 5);
      };
      const auto lo = [&](index_t r) { return banded ? std::clamp<index_t>(hi(r) - nb / 2 - 3, 0, nb) : index_t{0}; };
      auto p = data(static_cast<std::size_t>(rows * ldp), 300 + rows);
      auto v = data(static_cast<std::size_t>(nb * dvp), 301 + rows);
      const auto o0 = data(static_cast<std::size_t>(rows * dvp), 302 + rows);
      // In key chunks (as on most CPUs), without them (AMD's family 26), and as one band_product.
      auto chunked = o0, unchunked = o0, whole = o0;
      PK::accumulate_pv_cut(p.data(), rows, ldp, v.data(), lo, hi, dvp, chunked.data(), true);
      PK::accumulate_pv_cut(p.data(), rows, ldp, v.data(), lo, hi, dvp, unchunked.data(), false);
      core::band_product<table>(p.data(), ldp, rows, v.data(), dvp, dvp, lo, hi, whole.data(), dvp);
      for (index_t r = 0; r < rows; ++r)
        for (index_t c = 0; c < dvp; ++c) {
          const auto i = static_cast<std::size_t>(r * dvp + c);
          ASSERT_TRUE(same_bits(chunked[i], whole[i])) << "O[" << r << "][" << c << "]";
          ASSERT_TRUE(same_bits(unchunked[i], whole[i])) << "O[" << r << "][" << c << "], no chunks";
          double want = o0[i], mag = std::fabs(o0[i]);
          for (index_t j = lo(r); j < hi(r); ++j) {
            const double t = double{p[static_cast<std::size_t>(r * ldp + j)]} * v[static_cast<std::size_t>(j * dvp + c)];
            want += t;
            mag += std::fabs(t);
          }
          // One fp32 FMA chain over at most nb keys: |error| <= gamma_nb · Σ|terms|.
          ASSERT_NEAR(chunked[i], want, gamma_n(nb + 1) * mag) << "O[" << r << "][" << c << "]";
        }
      // A V row just past the first row's upper edge (and, for a band, just below the last row's lower edge).
      std::vector<index_t> poisoned = {hi(0)};
      if (banded && lo(rows - 1) > 0) poisoned.push_back(lo(rows - 1) - 1);
      for (const index_t j : poisoned) {
        if (j >= nb) continue;
        auto bad = v;
        for (index_t c = 0; c < dv; ++c) bad[static_cast<std::size_t>(j * dvp + c)] = c % 2 ? k_inf : std::nanf("");
        auto o = o0;
        PK::accumulate_pv_cut(p.data(), rows, ldp, bad.data(), lo, hi, dvp, o.data(), true);
        for (index_t r = 0; r < rows; ++r)
          for (index_t c = 0; c < dv; ++c) {
            const auto i = static_cast<std::size_t>(r * dvp + c);
            if (lo(r) <= j && j < hi(r)) {
              EXPECT_FALSE(std::isfinite(o[i])) << "O[" << r << "][" << c << "], key " << j;
            } else {
              EXPECT_TRUE(same_bits(o[i], chunked[i])) << "O[" << r << "][" << c << "], poisoned key " << j;
            }
          }
      }
    }
}

REGISTER_TYPED_TEST_SUITE_P(core_suite, tile_every_shape_of_the_table, tile_partial_reads_only_width_columns,
                            dot_scores_every_block_shape, direct_path_reads_k_and_v_in_place, packing_layout,
                            slice_at_and_scores_of_a_key_range,
                            online_softmax_update_merge_and_masked_rows, online_softmax_keeps_nan,
                            causal_staircase_skips_hidden_v_rows, pv_in_key_chunks_keeps_each_chain);
