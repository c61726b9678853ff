// tests/suites/vec_suite.hpp: every primitive of isa::vec<Isa> checked lane by lane against its defining
// scalar semantics (isa/vec_scalar.hpp), partial loads/stores against guarded memory, and the vectorised
// exp2 (isa/vec_math.hpp) against std::exp2 in double. Compiled once per ISA: helpers stay in `namespace {}`.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <gqa/isa/vec.hpp>
#include <gqa/isa/vec_math.hpp>

#include "support/guarded.hpp"
#include "support/isa_suite.hpp"

namespace {

using scalar_vec = gqa::isa::vec<gqa::isa::scalar>;

constexpr float k_inf = std::numeric_limits<float>::infinity();
constexpr double k_unit_roundoff = 0x1p-24;  // u for float (round to nearest)

/// The lanes of a register, in memory order.
template <class Isa>
std::array<float, gqa::isa::vec<Isa>::lanes> lanes_of(typename gqa::isa::vec<Isa>::reg r) {
  std::array<float, gqa::isa::vec<Isa>::lanes> out{};
  gqa::isa::vec<Isa>::store(out.data(), r);
  return out;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

/// A few floats of every kind the core meets: random of both signs and several magnitudes, ±inf, ±0.
std::vector<float> interesting_floats(std::size_t n, std::uint64_t seed) {
  std::vector<float> x = gqa::test::random_floats(n, seed, -4.0f, 4.0f);
  const auto scale = gqa::test::random_floats(n, seed + 1, -20.0f, 20.0f);
  for (std::size_t i = 0; i < n; ++i) x[i] = std::ldexp(x[i], static_cast<int>(scale[i]));
  const float specials[] = {0.0f, -0.0f, 1.0f, -1.0f, k_inf, -k_inf, 0x1p-126f, 3.0e38f, -3.0e38f};
  for (std::size_t i = 0; i < std::size(specials) && i * 7 < n; ++i) x[i * 7] = specials[i];
  return x;
}

// Note [vec suite NaN]
// The primitives are checked on non-NaN inputs only: the core never feeds NaN to max/min (masked scores
// are −inf), and NEON's fmax-style vmaxq_f32/vminq_f32 propagate NaN where the scalar `a > b ? a : b`
// returns b. max/min are also not checked on (−0, +0) pairs (the sign of a zero max is unobservable in
// softmax).

}  // namespace

template <class Isa>
class vec_suite : public gqa::test::isa_test<Isa> {};
TYPED_TEST_SUITE_P(vec_suite);

TYPED_TEST_P(vec_suite, zero_set1_load_store) {
  using V = gqa::isa::vec<TypeParam>;
  constexpr int L = V::lanes;
  for (const float z : lanes_of<TypeParam>(V::zero())) EXPECT_TRUE(same_bits(z, 0.0f));
  for (const float s : lanes_of<TypeParam>(V::set1(-2.75f))) EXPECT_EQ(s, -2.75f);
  // Unaligned loads and stores at every offset within a 64-byte line.
  const auto src = interesting_floats(static_cast<std::size_t>(L + 16), 11);
  for (int off = 0; off < 16; ++off) {
    SCOPED_TRACE(::testing::Message() << "offset " << off);
    std::vector<float> dst(static_cast<std::size_t>(L + 16), 7.0f);
    V::store(dst.data() + off, V::load(src.data() + off));
    for (int i = 0; i < L + 16; ++i) {
      const bool inside = i >= off && i < off + L;
      EXPECT_TRUE(same_bits(dst[static_cast<std::size_t>(i)], inside ? src[static_cast<std::size_t>(i)] : 7.0f)) << i;
    }
  }
}

// load_partial / store_partial for every n in [0, lanes]: the n floats sit at the very end of a guarded
// block (page-guarded, and an exactly sized heap block for ASan), so touching p[n] faults.
TYPED_TEST_P(vec_suite, partial_loads_and_stores_touch_only_n_lanes) {
  using V = gqa::isa::vec<TypeParam>;
  constexpr int L = V::lanes;
  const auto src = interesting_floats(static_cast<std::size_t>(L), 23);
  for (int n = 0; n <= L; ++n) {
    SCOPED_TRACE(::testing::Message() << "n = " << n << " of " << L << " lanes");
    const auto un = static_cast<std::size_t>(n);
    gqa::test::guarded_floats page(un);
    std::copy(src.begin(), src.begin() + n, page.data());
    auto heap = std::make_unique<float[]>(un);  // ASan flags any access past heap[n - 1]
    std::copy(src.begin(), src.begin() + n, heap.get());
    for (float* p : {page.data(), heap.get()}) {
      const auto got = lanes_of<TypeParam>(V::load_partial(p, n));
      for (int i = 0; i < L; ++i)
        EXPECT_TRUE(same_bits(got[static_cast<std::size_t>(i)], i < n ? src[static_cast<std::size_t>(i)] : 0.0f))
            << "lane " << i;
    }
    const auto value = V::load(interesting_floats(static_cast<std::size_t>(L), 29).data());
    const auto want = lanes_of<TypeParam>(value);
    for (float* p : {page.data(), heap.get()}) {
      std::fill(p, p + n, -5.0f);
      V::store_partial(p, value, n);
      for (int i = 0; i < n; ++i) EXPECT_TRUE(same_bits(p[i], want[static_cast<std::size_t>(i)])) << "lane " << i;
    }
    // And in a larger buffer, nothing at or past p[n] changes.
    std::vector<float> big(static_cast<std::size_t>(2 * L), -5.0f);
    V::store_partial(big.data(), value, n);
    for (int i = n; i < 2 * L; ++i) EXPECT_EQ(big[static_cast<std::size_t>(i)], -5.0f) << "lane " << i;
  }
}

/// Widening loads of 16-bit type T (Note [16-bit conversions] in gqa/numeric.hpp): every bit pattern,
/// loaded a vector at a time from every offset parity, gives gqa::to_float's float bit for bit; NaN gives
/// a NaN (F16C and NEON quiet a signalling f16 NaN; the payload is not part of the contract).
template <class Isa, class T>
void check_widening_loads() {
  using V = gqa::isa::vec<Isa>;
  constexpr int L = V::lanes;
  std::vector<T> all(65536 + 1);
  for (std::uint32_t i = 0; i < 65536; ++i) all[i + 1] = T::from_bits(static_cast<std::uint16_t>(i));
  auto expect_lane = [](T x, float got) {
    const float want = gqa::to_float(x);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << "bits 0x" << std::hex << x.bits;
    } else {
      EXPECT_TRUE(same_bits(got, want)) << "bits 0x" << std::hex << x.bits << ": " << got << " != " << want;
    }
  };
  for (std::size_t off = 0; off < 2; ++off)  // odd offsets: 2-byte, not 4-byte, aligned rows
    for (std::size_t i = off; i + L <= all.size(); i += L) {
      const auto got = lanes_of<Isa>(V::load(all.data() + i));
      for (int l = 0; l < L; ++l) expect_lane(all[i + static_cast<std::size_t>(l)], got[static_cast<std::size_t>(l)]);
      if (::testing::Test::HasFailure()) return;
    }
  // Partial loads read only the first n elements (the rest of the lanes are zero).
  for (int n = 0; n <= L; ++n) {
    SCOPED_TRACE(::testing::Message() << "n = " << n << " of " << L << " lanes");
    gqa::test::guarded<T> page(static_cast<std::size_t>(n));
    std::copy(all.begin() + 15361, all.begin() + 15361 + n, page.data());  // 0x3c00 = 1.0 and up
    const auto got = lanes_of<Isa>(V::load_partial(page.data(), n));
    for (int l = 0; l < L; ++l) {
      if (l < n) {
        expect_lane(page.data()[l], got[static_cast<std::size_t>(l)]);
      } else {
        EXPECT_TRUE(same_bits(got[static_cast<std::size_t>(l)], 0.0f)) << "lane " << l;
      }
    }
  }
}

TYPED_TEST_P(vec_suite, widening_loads_bf16) { check_widening_loads<TypeParam, gqa::bf16>(); }
TYPED_TEST_P(vec_suite, widening_loads_f16) { check_widening_loads<TypeParam, gqa::f16>(); }

/// Widening loads of int8 (an int8 K/V cache's values): every value, loaded a vector at a time from every
/// byte offset, gives its exact float; partial loads read only the first n bytes (a guarded page after
/// them), the other lanes zero.
TYPED_TEST_P(vec_suite, widening_loads_int8) {
  using V = gqa::isa::vec<TypeParam>;
  constexpr int L = V::lanes;
  std::vector<std::int8_t> all(256 + 8);
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = static_cast<std::int8_t>(static_cast<int>(i % 256) - 128);
  for (std::size_t off = 0; off < 8; ++off)
    for (std::size_t i = off; i + L <= all.size(); i += L) {
      const auto got = lanes_of<TypeParam>(V::load(all.data() + i));
      for (int l = 0; l < L; ++l)
        ASSERT_TRUE(same_bits(got[static_cast<std::size_t>(l)], static_cast<float>(all[i + static_cast<std::size_t>(l)])))
            << "offset " << i << " lane " << l;
    }
  for (int n = 0; n <= L; ++n) {
    SCOPED_TRACE(::testing::Message() << "n = " << n << " of " << L << " lanes");
    gqa::test::guarded<std::int8_t> page(static_cast<std::size_t>(n));
    for (int l = 0; l < n; ++l) page.data()[l] = static_cast<std::int8_t>(l % 2 == 0 ? -127 + l : 127 - l);
    const auto got = lanes_of<TypeParam>(V::load_partial(page.data(), n));
    for (int l = 0; l < L; ++l)
      EXPECT_TRUE(same_bits(got[static_cast<std::size_t>(l)], l < n ? static_cast<float>(page.data()[l]) : 0.0f)) << "lane " << l;
  }
}

TYPED_TEST_P(vec_suite, arithmetic_matches_scalar_lane_by_lane) {
  using V = gqa::isa::vec<TypeParam>;
  using S = scalar_vec;
  constexpr int L = V::lanes;
  const int rounds = gqa::test::reduced ? 64 : 512;
  for (int rnd = 0; rnd < rounds; ++rnd) {
    const auto a = interesting_floats(static_cast<std::size_t>(L), 1000 + 3 * static_cast<std::uint64_t>(rnd));
    const auto b = interesting_floats(static_cast<std::size_t>(L), 1001 + 3 * static_cast<std::uint64_t>(rnd));
    const auto c = interesting_floats(static_cast<std::size_t>(L), 1002 + 3 * static_cast<std::uint64_t>(rnd));
    const auto va = V::load(a.data()), vb = V::load(b.data()), vc = V::load(c.data());
    const auto add = lanes_of<TypeParam>(V::add(va, vb)), sub = lanes_of<TypeParam>(V::sub(va, vb));
    const auto mul = lanes_of<TypeParam>(V::mul(va, vb)), fma = lanes_of<TypeParam>(V::fma(va, vb, vc));
    const auto mul_add = lanes_of<TypeParam>(V::mul_add(va, vb, vc));
    const auto mx = lanes_of<TypeParam>(V::max(va, vb)), mn = lanes_of<TypeParam>(V::min(va, vb));
    const auto dv = lanes_of<TypeParam>(V::div(va, vb)), sel = lanes_of<TypeParam>(V::select_lt(va, vb, vb, vc));
    for (std::size_t i = 0; i < static_cast<std::size_t>(L); ++i) {
      SCOPED_TRACE(::testing::Message() << "round " << rnd << " lane " << i << ": a = " << a[i] << ", b = " << b[i]
                                        << ", c = " << c[i]);
      const auto same = [](float x, float y) { return same_bits(x, y) || (std::isnan(x) && std::isnan(y)); };
      EXPECT_TRUE(same(add[i], S::add(a[i], b[i])));
      EXPECT_TRUE(same(sub[i], S::sub(a[i], b[i])));
      EXPECT_TRUE(same(mul[i], S::mul(a[i], b[i])));
      EXPECT_TRUE(same(fma[i], S::fma(a[i], b[i], c[i])));
      EXPECT_TRUE(same(mul_add[i], S::mul_add(a[i], b[i], c[i])));
      EXPECT_TRUE(same(dv[i], S::div(a[i], b[i])));
      EXPECT_TRUE(same(sel[i], S::select_lt(a[i], b[i], b[i], c[i])));
      if (!(a[i] == 0.0f && b[i] == 0.0f)) {  // See Note [vec suite NaN]
        EXPECT_TRUE(same(mx[i], S::max(a[i], b[i])));
        EXPECT_TRUE(same(mn[i], S::min(a[i], b[i])));
      }
    }
  }
}

TYPED_TEST_P(vec_suite, fma_is_fused) {
  using V = gqa::isa::vec<TypeParam>;
  // (1 + 2⁻¹²)² = 1 + 2⁻¹¹ + 2⁻²⁴: the 2⁻²⁴ survives only a single rounding.
  const float a = 1.0f + 0x1p-12f, c = -(1.0f + 0x1p-11f);
  for (const float x : lanes_of<TypeParam>(V::fma(V::set1(a), V::set1(a), V::set1(c)))) EXPECT_EQ(x, 0x1p-24f);
}

TYPED_TEST_P(vec_suite, reductions) {
  using V = gqa::isa::vec<TypeParam>;
  constexpr int L = V::lanes;
  // reduce_sum may add the lanes in any order: L - 1 additions, each within u relative, so the error is
  // below γ_L · Σ|x| (γ_n = n·u / (1 − n·u)).
  const double gamma = L * k_unit_roundoff / (1.0 - L * k_unit_roundoff);
  const int rounds = gqa::test::reduced ? 64 : 512;
  for (int rnd = 0; rnd < rounds; ++rnd) {
    SCOPED_TRACE(::testing::Message() << "round " << rnd);
    std::array<std::vector<float>, 4> x;
    typename V::reg r[4];
    std::array<double, 4> exact{}, abs_sum{};
    for (std::size_t k = 0; k < 4; ++k) {
      x[k] = gqa::test::random_floats(static_cast<std::size_t>(L), 5000 + 4 * static_cast<std::uint64_t>(rnd) + k,
                                      -100.0f, 100.0f);
      r[k] = V::load(x[k].data());
      for (const float e : x[k]) {
        exact[k] += e;
        abs_sum[k] += std::fabs(e);
      }
    }
    EXPECT_NEAR(V::reduce_sum(r[0]), exact[0], gamma * abs_sum[0]);
    EXPECT_EQ(V::reduce_max(r[0]), *std::max_element(x[0].begin(), x[0].end()));
    float four[4] = {0, 0, 0, 0};
    V::reduce_sum4(r[0], r[1], r[2], r[3], four);
    for (std::size_t k = 0; k < 4; ++k) EXPECT_NEAR(four[k], exact[k], gamma * abs_sum[k]) << "sum " << k;
  }
  // reduce_max with −inf lanes (fully masked key blocks) and a single finite lane.
  std::vector<float> m(static_cast<std::size_t>(L), -k_inf);
  EXPECT_EQ(V::reduce_max(V::load(m.data())), -k_inf);
  m.back() = -3.5f;
  EXPECT_EQ(V::reduce_max(V::load(m.data())), -3.5f);
  EXPECT_EQ(V::reduce_sum(V::zero()), 0.0f);
}

TYPED_TEST_P(vec_suite, transpose_moves_every_element) {
  using V = gqa::isa::vec<TypeParam>;
  constexpr int L = V::lanes;
  // Rows at unrelated addresses (the packing passes one pointer per key), the destination strided wider
  // than L with guard floats between its rows, which transpose must leave alone. Values are distinct, NaN
  // payloads and signed zeros included: a transpose moves bits, it computes nothing.
  const std::ptrdiff_t ldd = L + 3;
  std::vector<std::vector<float>> rows(static_cast<std::size_t>(L));
  const float* src[L];
  for (int i = 0; i < L; ++i) {
    rows[static_cast<std::size_t>(i)].assign(static_cast<std::size_t>(L + i), 0.0f);
    for (int c = 0; c < L; ++c) rows[static_cast<std::size_t>(i)][static_cast<std::size_t>(i + c)] = static_cast<float>(100 * i + c) + 0.5f;
    src[i] = rows[static_cast<std::size_t>(i)].data() + i;
  }
  rows[0][0] = -0.0f;  // row 0 starts at offset 0: its column 0
  if constexpr (L > 1)  // the last row's last column (with one lane, that is the −0 above)
    rows[static_cast<std::size_t>(L - 1)][static_cast<std::size_t>(L - 1 + L - 1)] = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> dst(static_cast<std::size_t>(L * ldd), 7.25f);
  V::transpose(src, dst.data(), ldd);
  for (int c = 0; c < L; ++c) {
    for (int i = 0; i < L; ++i) {
      const float want = src[i][c], got = dst[static_cast<std::size_t>(c * ldd + i)];
      EXPECT_EQ(std::memcmp(&want, &got, sizeof want), 0) << "column " << c << " row " << i;
    }
    for (std::ptrdiff_t g = L; g < ldd; ++g) EXPECT_EQ(dst[static_cast<std::size_t>(c * ldd + g)], 7.25f) << "guard " << c;
  }
  EXPECT_TRUE(std::signbit(dst[0]));
}

// 2^n as exp2 forms it (Note [pow2i by addition]): exponent_bits of the vector sum n + k_pow2i_bias.
TYPED_TEST_P(vec_suite, pow2i_over_the_exponent_range) {
  using V = gqa::isa::vec<TypeParam>;
  const auto pow2i = [](float n) {
    return lanes_of<TypeParam>(V::exponent_bits(V::add(V::set1(n), V::set1(gqa::isa::k_pow2i_bias))));
  };
  for (int n = -127; n <= 127; ++n) {
    const float want = n == -127 ? 0.0f : std::ldexp(1.0f, n);  // −127: biased exponent 0, exactly +0
    for (const float got : pow2i(static_cast<float>(n)))
      EXPECT_TRUE(same_bits(got, want)) << "pow2i(" << n << ") = " << got;
  }
  // Outside the range the value is unspecified, but defined and the same bits on every ISA (Note [pow2i by
  // addition]; the scalar helper once converted ±inf to an integer, undefined behaviour).
  for (const float n : {128.0f, 1000.0f, 1.0e9f, 3.0e38f, -200.0f, -3.0e38f, std::numeric_limits<float>::infinity(),
                        -std::numeric_limits<float>::infinity()})
    for (const float got : pow2i(n))
      EXPECT_TRUE(same_bits(got, scalar_vec::exponent_bits(n + gqa::isa::k_pow2i_bias)))
          << "pow2i(" << n << ") = " << got << " vs scalar";
}

// exp2 (Note [exp accuracy]): relative error against std::exp2 in double over the range softmax meets.
// Arguments are x − m ≤ 0 in log2 units, so [−126, 0] is swept densely (every 2⁻¹⁵, ≈ 4.1M points, plus
// the endpoints); [0, 127] (where only the scalar helper and tests go) more coarsely. Below −126 results
// are subnormal or 0, so relative error is not meaningful there; what matters is that x < −126.5 gives
// exactly 0, checked below.
constexpr double k_exp2_max_rel_error = 1.0e-7;  // ≈ 1.7 u; measured 6.56e-8 exhaustively (8.91e-8 unfused), see Note [exp accuracy]

template <class Isa>
double exp2_max_rel_error(double lo, double hi, double step, double* worst_x) {
  using V = gqa::isa::vec<Isa>;
  constexpr int L = V::lanes;
  double worst = 0.0;
  float in[L], out[L];
  int fill = 0;
  auto flush = [&] {
    V::store(out, gqa::isa::exp2<Isa>(V::load(in)));
    for (int i = 0; i < fill; ++i) {
      const double e = std::exp2(static_cast<double>(in[i]));
      const double rel = std::fabs(static_cast<double>(out[i]) - e) / e;
      if (rel > worst) {
        worst = rel;
        *worst_x = in[i];
      }
    }
    fill = 0;
  };
  const auto n = static_cast<std::int64_t>((hi - lo) / step);
  for (std::int64_t i = 0; i <= n; ++i) {
    in[fill++] = static_cast<float>(std::min(hi, lo + static_cast<double>(i) * step));
    if (fill == L) flush();
  }
  if (fill > 0) {
    for (int i = fill; i < L; ++i) in[i] = 0.0f;  // padding lanes are computed but not scored
    flush();
  }
  return worst;
}

// exp2's argument reduction rounds x to an integer n by one addition (Note [exp2 reduction by addition]); at
// the ties, x = k + 0.5, it takes the odd neighbour, so that f = x − n is ±0.5, the ends of the
// polynomial's interval: there, next to them and at the integers the result must be the scalar helper's
// bits and within the accuracy bound, and the reduction must leave |f| <= 0.5.
TYPED_TEST_P(vec_suite, exp2_reduction_at_ties) {
  using V = gqa::isa::vec<TypeParam>;
  constexpr int L = V::lanes;
  std::vector<float> x;
  for (int k = -127; k <= 126; ++k) {
    const float t = static_cast<float>(k) + 0.5f;
    x.insert(x.end(), {t, std::nextafter(t, -1000.0f), std::nextafter(t, 1000.0f), static_cast<float>(k)});
  }
  while (x.size() % static_cast<std::size_t>(L) != 0) x.push_back(0.25f);
  for (std::size_t i0 = 0; i0 < x.size(); i0 += static_cast<std::size_t>(L)) {
    const auto got = lanes_of<TypeParam>(gqa::isa::exp2<TypeParam>(V::load(x.data() + i0)));
    for (std::size_t i = 0; i < static_cast<std::size_t>(L); ++i) {
      const float xi = x[i0 + i];
      ASSERT_TRUE(same_bits(got[i], gqa::isa::exp2_scalar(xi))) << "exp2(" << xi << ") vs scalar";
      if (xi < -126.0f) continue;  // subnormal or 0 below −126 (exp2_special_values)
      const double want = std::exp2(static_cast<double>(xi));
      EXPECT_LE(std::fabs(got[i] - want) / want, k_exp2_max_rel_error) << "exp2(" << xi << ")";
    }
  }
  for (const float xi : x) {
    const float n = (xi + gqa::isa::k_pow2i_bias) - gqa::isa::k_pow2i_bias;  // the reduction's n
    EXPECT_EQ(n, std::trunc(n)) << "x = " << xi;
    EXPECT_LE(std::fabs(xi - n), 0.5f) << "x = " << xi;
    const float twice = 2.0f * xi;  // exact: a tie is x with 2x an odd integer
    if (twice == std::trunc(twice) && std::fmod(twice, 2.0f) != 0.0f) {
      EXPECT_NE(std::fmod(n, 2.0f), 0.0f) << "x = " << xi << ": a tie takes the odd neighbour";
    }
  }
}

TYPED_TEST_P(vec_suite, exp2_accuracy) {
  // The reduced builds (ASan, qemu) sweep every 2⁻¹¹ instead of every 2⁻¹⁵.
  const double step = gqa::test::reduced ? 0x1p-11 : 0x1p-15;
  double x_neg = 0.0, x_pos = 0.0;
  const double neg = exp2_max_rel_error<TypeParam>(-126.0, 0.0, step, &x_neg);
  const double pos = exp2_max_rel_error<TypeParam>(0.0, 127.0, step * 16, &x_pos);
  std::printf("[ exp2 %s ] max relative error %.3g at x = %.9g on [-126, 0]; %.3g at x = %.9g on [0, 127]\n",
              std::string(TypeParam::name).c_str(), neg, x_neg, pos, x_pos);
  EXPECT_LE(neg, k_exp2_max_rel_error) << "worst at x = " << x_neg;
  EXPECT_LE(pos, k_exp2_max_rel_error) << "worst at x = " << x_pos;
}

TYPED_TEST_P(vec_suite, exp2_special_values) {
  using V = gqa::isa::vec<TypeParam>;
  constexpr int L = V::lanes;
  auto exp2v = [](float x) { return lanes_of<TypeParam>(gqa::isa::exp2<TypeParam>(V::set1(x)))[0]; };
  // Masked scores: −inf and everything below −126.5 give exactly +0 (weight 0, never NaN).
  for (const float x : {-k_inf, -3.0e38f, -1.0e6f, -200.0f, -127.0f, -126.75f, -126.5001f})
    EXPECT_TRUE(same_bits(exp2v(x), 0.0f)) << "exp2(" << x << ") = " << exp2v(x);
  // Integers are exact (f = 0 makes the polynomial exactly 1): softmax's alpha = exp2(0) must be 1.
  for (int n = -126; n <= 127; ++n) EXPECT_EQ(exp2v(static_cast<float>(n)), std::ldexp(1.0f, n)) << "exp2(" << n << ")";
  // Clamped above: 127 and beyond give 2^127, never inf.
  for (const float x : {127.3f, 1.0e6f, k_inf}) EXPECT_EQ(exp2v(x), 0x1p127f) << "exp2(" << x << ")";
  // NaN stays NaN (a NaN score must not become a weight of 0: Note [non-finite inputs]).
  EXPECT_TRUE(std::isnan(exp2v(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(std::isnan(gqa::isa::exp2_scalar(std::numeric_limits<float>::quiet_NaN())));
  // Just above −126.5 the result is a small nonzero subnormal-range value, never negative.
  EXPECT_GT(exp2v(-126.4f), 0.0f);
  // Every ISA computes exactly the scalar helper's value, lane by lane (same operations, all fused).
  const auto x = gqa::test::random_floats(gqa::test::reduced ? 4096 : 65536, 91, -130.0f, 130.0f);
  for (std::size_t i0 = 0; i0 + static_cast<std::size_t>(L) <= x.size(); i0 += static_cast<std::size_t>(L)) {
    const auto got = lanes_of<TypeParam>(gqa::isa::exp2<TypeParam>(V::load(x.data() + i0)));
    for (std::size_t i = 0; i < static_cast<std::size_t>(L); ++i)
      ASSERT_TRUE(same_bits(got[i], gqa::isa::exp2_scalar(x[i0 + i]))) << "exp2(" << x[i0 + i] << ")";
  }
  // exp2_nonpositive (the online softmax's, Note [softmax exp2]) is exp2 bit for bit up to 127, −inf and NaN
  // included.
  auto y = gqa::test::random_floats(gqa::test::reduced ? 4096 : 65536, 92, -140.0f, 127.0f);
  y.insert(y.end(), {-k_inf, 0.0f, -0.0f, 127.0f, -126.5f, std::numeric_limits<float>::quiet_NaN()});
  while (y.size() % static_cast<std::size_t>(L) != 0) y.push_back(-1.0f);
  for (std::size_t i0 = 0; i0 < y.size(); i0 += static_cast<std::size_t>(L)) {
    const auto a = lanes_of<TypeParam>(gqa::isa::exp2_nonpositive<TypeParam>(V::load(y.data() + i0)));
    const auto b = lanes_of<TypeParam>(gqa::isa::exp2<TypeParam>(V::load(y.data() + i0)));
    for (std::size_t i = 0; i < static_cast<std::size_t>(L); ++i)
      ASSERT_TRUE(same_bits(a[i], b[i])) << "exp2_nonpositive(" << y[i0 + i] << ") = " << a[i] << ", exp2: " << b[i];
  }
}

// tanh (Note [tanh accuracy]) against std::tanh in double: relative error on a dense grid of [−20, 20]
// (and of tiny arguments, where tanh(x) ≈ x), exact ±1 far out and at ±inf, NaN kept, odd symmetry, and
// every ISA bit for bit the scalar helper.
constexpr double k_tanh_max_rel_error = 1.5e-7;  // ≈ 2.5 u; measured 1.37e-7 to 1.39e-7, see Note [tanh accuracy]

TYPED_TEST_P(vec_suite, tanh_accuracy_and_special_values) {
  using V = gqa::isa::vec<TypeParam>;
  constexpr int L = V::lanes;
  auto tanhv = [](float x) { return lanes_of<TypeParam>(gqa::isa::tanh<TypeParam>(V::set1(x)))[0]; };
  const double step = gqa::test::reduced ? 0x1p-11 : 0x1p-15;
  double worst = 0.0, worst_x = 0.0;
  std::vector<float> xs;
  for (double x = -20.0; x <= 20.0; x += step) xs.push_back(static_cast<float>(x));
  for (float x = 1e-30f; x < 1.0f; x *= 1.01f) {
    xs.push_back(x);
    xs.push_back(-x);
  }
  while (xs.size() % static_cast<std::size_t>(L) != 0) xs.push_back(0.5f);
  for (std::size_t i0 = 0; i0 < xs.size(); i0 += static_cast<std::size_t>(L)) {
    const auto got = lanes_of<TypeParam>(gqa::isa::tanh<TypeParam>(V::load(xs.data() + i0)));
    for (std::size_t i = 0; i < static_cast<std::size_t>(L); ++i) {
      const float x = xs[i0 + i];
      ASSERT_TRUE(same_bits(got[i], gqa::isa::tanh_scalar(x))) << "tanh(" << x << ") differs from the scalar helper";
      if (x == 0.0f) continue;
      const double want = std::tanh(static_cast<double>(x));
      const double rel = std::fabs(static_cast<double>(got[i]) - want) / std::fabs(want);
      if (rel > worst) {
        worst = rel;
        worst_x = x;
      }
    }
  }
  std::printf("[ tanh %s ] max relative error %.3g at x = %.9g\n", std::string(TypeParam::name).c_str(), worst, worst_x);
  EXPECT_LE(worst, k_tanh_max_rel_error) << "worst at x = " << worst_x;
  for (const float x : {10.0f, 44.0f, 1e6f, 3e38f, k_inf}) {
    EXPECT_EQ(tanhv(x), 1.0f) << "tanh(" << x << ")";
    EXPECT_EQ(tanhv(-x), -1.0f) << "tanh(" << -x << ")";
  }
  EXPECT_EQ(tanhv(0.0f), 0.0f);
  EXPECT_TRUE(std::isnan(tanhv(std::numeric_limits<float>::quiet_NaN())));
  for (const float x : {0.1f, 0.649f, 0.65f, 0.651f, 2.0f}) EXPECT_EQ(tanhv(-x), -tanhv(x)) << "odd at " << x;
}

REGISTER_TYPED_TEST_SUITE_P(vec_suite, zero_set1_load_store, partial_loads_and_stores_touch_only_n_lanes,
                            widening_loads_bf16, widening_loads_f16, widening_loads_int8,
                            arithmetic_matches_scalar_lane_by_lane, fma_is_fused, reductions, exp2_reduction_at_ties,
                            pow2i_over_the_exponent_range, exp2_accuracy, exp2_special_values,
                            tanh_accuracy_and_special_values, transpose_moves_every_element);
