// tests/unit/numeric_test.cpp: gqa::bf16 and gqa::f16 (gqa/numeric.hpp) against a plain reference written
// from the formats' definitions: every one of the 65,536 bit patterns of each type widens to the value its
// fields define and goes to float and back unchanged; narrowing rounds to nearest, ties to even, checked
// at every rounding boundary (each midpoint between neighbours, and the floats either side of it) and on
// random floats of every exponent, with overflow to ±inf and NaN kept a NaN (sign and payload).
// gqa::quantize_q8 / dequantize_q8 (gqa/quantized.hpp) exactly as Note [int8 quantisation] says: scales,
// ties to even, the clamp, zero, underflowing and non-finite rows, any layout, and the errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include <gqa/numeric.hpp>
#include <gqa/quantized.hpp>
#include <gqa/random.hpp>

namespace {

constexpr float k_inf = std::numeric_limits<float>::infinity();

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

/// A 16-bit format: exponent bits, mantissa bits (bf16: 8, 7; f16: 5, 10).
struct format {
  int exp_bits, man_bits;
  std::uint32_t exp_mask() const { return (1u << exp_bits) - 1u; }
  int bias() const { return (1 << (exp_bits - 1)) - 1; }
  /// The encoding of +inf, also the first pattern past the largest finite value.
  std::uint16_t inf_bits() const { return static_cast<std::uint16_t>(exp_mask() << man_bits); }
};
constexpr format k_bf16{8, 7}, k_f16{5, 10};

/// The value of a non-negative, non-NaN encoding, from its fields (plain IEEE definitions, in double).
double reference_value(std::uint16_t bits, format f) {
  const std::uint32_t e = (bits >> f.man_bits) & f.exp_mask(), m = bits & ((1u << f.man_bits) - 1u);
  if (e == f.exp_mask()) return std::numeric_limits<double>::infinity();
  if (e == 0) return std::ldexp(static_cast<double>(m), 1 - f.bias() - f.man_bits);  // subnormal
  return std::ldexp(static_cast<double>(m + (1u << f.man_bits)), static_cast<int>(e) - f.bias() - f.man_bits);
}

/// Round-to-nearest-even, plainly: the two neighbouring encodings of |x| among the finite values (sorted
/// by value as by bits) and, past the largest, the value the next exponent would have (IEEE: a result
/// that rounds to it overflows to inf), the nearer one, on a tie the one with an even encoding.
std::uint16_t reference_round(float x, format f) {
  const double a = std::fabs(static_cast<double>(x));
  const auto sign = static_cast<std::uint16_t>(std::signbit(x) ? 0x8000u : 0u);
  const std::uint16_t inf = f.inf_bits();
  const double beyond = std::ldexp(1.0, f.bias() + 1);  // where the encoding inf_bits would sit
  auto value = [&](std::uint32_t b) { return b == inf ? beyond : reference_value(static_cast<std::uint16_t>(b), f); };
  std::uint32_t lo = 0, hi = inf;  // invariant: value(lo) <= a (or a < value(1)), value(hi) >= a
  if (a >= beyond) return static_cast<std::uint16_t>(sign | inf);
  while (hi - lo > 1) {
    const std::uint32_t mid = (lo + hi) / 2;
    (value(mid) <= a ? lo : hi) = mid;
  }
  if (value(lo) == a) return static_cast<std::uint16_t>(sign | lo);
  const double dl = a - value(lo), dh = value(hi) - a;
  const std::uint32_t r = dl < dh ? lo : dh < dl ? hi : (lo % 2 == 0 ? lo : hi);
  return static_cast<std::uint16_t>(sign | r);
}

template <class T>
constexpr format format_of() {
  return std::is_same_v<T, gqa::bf16> ? k_bf16 : k_f16;
}

template <class T>
void check_every_pattern() {
  constexpr format f = format_of<T>();
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const auto bits = static_cast<std::uint16_t>(i);
    const T x = T::from_bits(bits);
    const float w = gqa::to_float(x);
    ASSERT_TRUE(same_bits(w, static_cast<float>(x))) << std::hex << i;
    const bool negative = (bits & 0x8000u) != 0;
    const auto mag = static_cast<std::uint16_t>(bits & 0x7FFFu);
    const bool nan = (mag >> f.man_bits) == f.exp_mask() && (mag & ((1u << f.man_bits) - 1u)) != 0;
    if (nan) {
      ASSERT_TRUE(std::isnan(w)) << std::hex << i;
    } else {
      const double want = negative ? -reference_value(mag, f) : reference_value(mag, f);
      ASSERT_EQ(static_cast<double>(w), want) << std::hex << i;
      ASSERT_EQ(std::signbit(w), negative) << std::hex << i;  // -0 stays -0
    }
    ASSERT_EQ(std::signbit(w), negative) << std::hex << i;
    // To float and back: the same bits, NaN payloads included.
    ASSERT_EQ(T(w).bits, bits) << std::hex << i;
    ASSERT_EQ(gqa::from_float<T>(w).bits, bits) << std::hex << i;
  }
}

TEST(numeric, bf16_every_pattern_widens_exactly_and_round_trips) { check_every_pattern<gqa::bf16>(); }
TEST(numeric, f16_every_pattern_widens_exactly_and_round_trips) { check_every_pattern<gqa::f16>(); }

/// At every rounding boundary: the midpoint between neighbours x_i < x_{i+1} (exact in float: one bit
/// more than the 16-bit format), and the floats just below and above it.
template <class T>
void check_rounding_boundaries() {
  constexpr format f = format_of<T>();
  const std::uint16_t inf = f.inf_bits();
  const double beyond = std::ldexp(1.0, f.bias() + 1);
  for (std::uint32_t i = 0; i < inf; ++i) {
    const double lo = reference_value(static_cast<std::uint16_t>(i), f);
    const double hi = i + 1 == inf ? beyond : reference_value(static_cast<std::uint16_t>(i + 1), f);
    const auto mid = static_cast<float>((lo + hi) / 2);
    ASSERT_EQ(static_cast<double>(mid), (lo + hi) / 2) << "midpoint not exact at " << i;
    for (const float s : {1.0f, -1.0f}) {
      for (const float x : {std::nextafter(mid, 0.0f), mid, std::nextafter(mid, k_inf)}) {
        const float sx = s * x;
        ASSERT_EQ(T(sx).bits, reference_round(sx, f)) << std::hexfloat << sx;
      }
      const auto v = static_cast<float>(s * lo);
      ASSERT_EQ(T(v).bits, reference_round(v, f)) << std::hexfloat << v;
    }
  }
}

TEST(numeric, bf16_rounds_to_nearest_even_at_every_boundary) { check_rounding_boundaries<gqa::bf16>(); }
TEST(numeric, f16_rounds_to_nearest_even_at_every_boundary) { check_rounding_boundaries<gqa::f16>(); }

/// Random floats of every exponent (uniform random bits), and floats near f16's subnormal and overflow
/// ranges, against the reference.
template <class T>
void check_random_floats() {
  constexpr format f = format_of<T>();
  for (std::uint64_t i = 0; i < 1'000'000; ++i) {
    const auto u = static_cast<std::uint32_t>(gqa::random::hash(0x16b17, {i}));
    float x;
    std::memcpy(&x, &u, sizeof x);
    if (std::isnan(x)) continue;
    ASSERT_EQ(T(x).bits, reference_round(x, f)) << std::hexfloat << x;
  }
  for (int e = -30; e <= 20; ++e)
    for (std::uint64_t i = 0; i < 4000; ++i) {
      const double m = 1.0 + static_cast<double>(gqa::random::to_unit_float(gqa::random::hash(0x16b18, {i})));
      const auto x = static_cast<float>(std::ldexp(m, e));
      ASSERT_EQ(T(x).bits, reference_round(x, f)) << std::hexfloat << x;
      ASSERT_EQ(T(-x).bits, reference_round(-x, f)) << std::hexfloat << -x;
    }
}

TEST(numeric, bf16_rounds_random_floats_like_the_reference) { check_random_floats<gqa::bf16>(); }
TEST(numeric, f16_rounds_random_floats_like_the_reference) { check_random_floats<gqa::f16>(); }

TEST(numeric, special_values) {
  EXPECT_EQ(gqa::bf16(k_inf).bits, 0x7F80u);
  EXPECT_EQ(gqa::bf16(-k_inf).bits, 0xFF80u);
  EXPECT_EQ(gqa::f16(k_inf).bits, 0x7C00u);
  EXPECT_EQ(gqa::f16(-k_inf).bits, 0xFC00u);
  EXPECT_EQ(gqa::f16(65504.0f).bits, 0x7BFFu);
  EXPECT_EQ(gqa::f16(65519.996f).bits, 0x7BFFu);  // below 65520: the largest finite
  EXPECT_EQ(gqa::f16(65520.0f).bits, 0x7C00u);    // the tie past the largest: overflows to inf
  EXPECT_EQ(gqa::f16(0x1p-24f).bits, 0x0001u);    // the smallest subnormal
  EXPECT_EQ(gqa::f16(0x1p-25f).bits, 0x0000u);    // its half: ties to the even 0
  EXPECT_EQ(gqa::f16(0x1.000002p-25f).bits, 0x0001u);
  EXPECT_EQ(gqa::f16(-0.0f).bits, 0x8000u);
  EXPECT_EQ(gqa::bf16(-0.0f).bits, 0x8000u);
  EXPECT_EQ(gqa::bf16(std::numeric_limits<float>::max()).bits, 0x7F80u);  // rounds past the largest bf16
  EXPECT_EQ(gqa::bf16(1.0f + 0x1p-8f).bits, 0x3F80u);                      // tie to even (down)
  EXPECT_EQ(gqa::bf16(1.0f + 0x3p-8f).bits, 0x3F82u);                      // tie to even (up)
  // Float NaNs stay NaN with their sign, also when the payload sits only in bits a 16-bit type drops.
  for (const std::uint32_t u : {0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0xFF800001u, 0x7FBFFFFFu, 0x7F801000u}) {
    float x;
    std::memcpy(&x, &u, sizeof x);
    const float b = gqa::to_float(gqa::bf16(x)), h = gqa::to_float(gqa::f16(x));
    EXPECT_TRUE(std::isnan(b)) << std::hex << u;
    EXPECT_TRUE(std::isnan(h)) << std::hex << u;
    EXPECT_EQ(std::signbit(b), (u >> 31) != 0) << std::hex << u;
    EXPECT_EQ(std::signbit(h), (u >> 31) != 0) << std::hex << u;
  }
  // constexpr conversions.
  static_assert(gqa::bf16(1.0f).bits == 0x3F80u && gqa::f16(1.0f).bits == 0x3C00u);
  static_assert(gqa::to_float(gqa::f16::from_bits(0x3555u)) == 0x1.554p-2f);
  static_assert(gqa::kv_element<float> && gqa::kv_element<gqa::bf16> && gqa::kv_element<gqa::f16> &&
                !gqa::kv_element<double>);
}

// --- int8 quantisation (gqa/quantized.hpp) ---

/// quantize_q8 of one row x: its int8 values and scale.
struct q8_row {
  std::vector<std::int8_t> q;
  float scale;
};
q8_row quantize_row(const std::vector<float>& x) {
  const auto d = static_cast<gqa::index_t>(x.size());
  q8_row r{std::vector<std::int8_t>(x.size(), 99), -1.0f};
  gqa::quantize_q8(gqa::bshd<const float>(x.data(), 1, 1, 1, d), gqa::bshd(r.q.data(), 1, 1, 1, d),
                   gqa::bshd(&r.scale, 1, 1, 1, 1));
  return r;
}

TEST(quantize_q8, scale_is_max_over_127_and_values_round_to_nearest_even) {
  // max |x| = 254: scale 2 exactly, and x / 2 = 127, -63.5, 0.5, 1.5, 2.5, -0.5, 0.25, -127.
  const q8_row r = quantize_row({254.0f, -127.0f, 1.0f, 3.0f, 5.0f, -1.0f, 0.5f, -254.0f});
  EXPECT_EQ(r.scale, 2.0f);
  EXPECT_EQ(r.q, (std::vector<std::int8_t>{127, -64, 0, 2, 2, 0, 0, -127}));  // ties to even; never -128
  // A scale that is not a power of two: fp32 max / 127, then x / scale rounded.
  const std::vector<float> x{0.3f, -1.7f, 0.01f, 1.0f};
  const q8_row s = quantize_row(x);
  EXPECT_EQ(s.scale, 1.7f / 127.0f);
  for (std::size_t c = 0; c < x.size(); ++c) EXPECT_EQ(s.q[c], static_cast<std::int8_t>(std::nearbyint(x[c] / s.scale)));
  EXPECT_EQ(s.q[1], -127);
}

TEST(quantize_q8, clamps_to_127_when_a_subnormal_scale_rounds_down) {
  // max = 686 · 2^-149: max / 127 = 5.40 · 2^-149 rounds to the subnormal 5 · 2^-149, and max / scale = 137.2:
  // clamped to 127 (a normal scale's relative rounding, 2^-24, never leaves 127.5).
  const float m = 686.0f * std::ldexp(1.0f, -149);
  const q8_row r = quantize_row({m, -m, 0.0f});
  EXPECT_EQ(r.scale, 5.0f * std::ldexp(1.0f, -149));
  EXPECT_EQ(r.q, (std::vector<std::int8_t>{127, -127, 0}));
}

TEST(quantize_q8, zero_underflowing_and_non_finite_rows) {
  const q8_row zero = quantize_row({0.0f, -0.0f, 0.0f});
  EXPECT_EQ(zero.scale, 0.0f);
  EXPECT_EQ(zero.q, (std::vector<std::int8_t>{0, 0, 0}));
  // max / 127 underflows to 0: the row is stored as zeros (Note [int8 quantisation]).
  const q8_row tiny = quantize_row({std::ldexp(1.0f, -149), 0.0f});
  EXPECT_EQ(tiny.scale, 0.0f);
  EXPECT_EQ(tiny.q, (std::vector<std::int8_t>{0, 0}));
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(), k_inf, -k_inf}) {
    const q8_row r = quantize_row({1.0f, bad, -3.0f});
    EXPECT_TRUE(std::isnan(r.scale)) << bad;
    EXPECT_EQ(r.q, (std::vector<std::int8_t>{0, 0, 0})) << bad;
    // Every value of the row reads as NaN.
    std::vector<float> out(3, 0.0f);
    const gqa::q8_view v{gqa::bshd<const std::int8_t>(r.q.data(), 1, 1, 1, 3), gqa::bshd<const float>(&r.scale, 1, 1, 1, 1)};
    gqa::dequantize_q8(v, gqa::bshd(out.data(), 1, 1, 1, 3));
    for (const float y : out) EXPECT_TRUE(std::isnan(y)) << bad;
  }
}

TEST(quantize_q8, round_trip_within_half_a_step_in_any_layout) {
  const gqa::index_t b = 2, s = 5, h = 3, d = 19;
  const auto n = static_cast<std::size_t>(b * s * h * d);
  std::vector<float> x(n);
  gqa::random::stream rng{7, 0, 0};
  for (std::size_t i = 0; i < n; ++i) x[i] = (rng.next_float() * 2.0f - 1.0f) * static_cast<float>(1 + i % 5);
  // BSHD and BHSD outputs of the same logical rows hold the same values and scales.
  std::vector<std::int8_t> q1(n), q2(n);
  std::vector<float> s1(static_cast<std::size_t>(b * s * h)), s2 = s1, back(n);
  const auto xv = gqa::bshd<const float>(x.data(), b, s, h, d);
  gqa::quantize_q8(xv, gqa::bshd(q1.data(), b, s, h, d), gqa::bshd(s1.data(), b, s, h, 1));
  gqa::quantize_q8(xv, gqa::bhsd(q2.data(), b, h, s, d), gqa::bhsd(s2.data(), b, h, s, 1));
  const gqa::q8_view v1{gqa::bshd<const std::int8_t>(q1.data(), b, s, h, d), gqa::bshd<const float>(s1.data(), b, s, h, 1)};
  const gqa::q8_view v2{gqa::bhsd<const std::int8_t>(q2.data(), b, h, s, d), gqa::bhsd<const float>(s2.data(), b, h, s, 1)};
  gqa::dequantize_q8(v1, gqa::bshd(back.data(), b, s, h, d));
  for (gqa::index_t ib = 0; ib < b; ++ib)
    for (gqa::index_t is = 0; is < s; ++is)
      for (gqa::index_t ih = 0; ih < h; ++ih) {
        const float sc = v1.scales(ib, is, ih, 0);
        ASSERT_EQ(sc, v2.scales(ib, is, ih, 0));
        float m = 0.0f;
        for (gqa::index_t c = 0; c < d; ++c) m = std::max(m, std::fabs(xv(ib, is, ih, c)));
        EXPECT_EQ(sc, m / 127.0f);
        for (gqa::index_t c = 0; c < d; ++c) {
          ASSERT_EQ(v1.values(ib, is, ih, c), v2.values(ib, is, ih, c));
          const float y = back[static_cast<std::size_t>(((ib * s + is) * h + ih) * d + c)];
          EXPECT_EQ(y, sc * static_cast<float>(v1.values(ib, is, ih, c)));  // one fp32 product
          EXPECT_LE(std::fabs(static_cast<double>(y) - xv(ib, is, ih, c)), 0.5 * sc * (1.0 + 1e-6));
        }
      }
}

TEST(quantize_q8, errors_name_the_argument_and_its_value) {
  std::vector<float> x(24, 1.0f), sc(6);
  std::vector<std::int8_t> q(24);
  const auto expect_error = [](const auto& fn, const std::string& part) {
    try {
      fn();
      ADD_FAILURE() << "expected gqa::invalid_argument containing " << part;
    } catch (const gqa::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  const auto xv = gqa::bshd<const float>(x.data(), 1, 2, 3, 4);
  expect_error([&] { gqa::quantize_q8(xv, gqa::bshd(q.data(), 1, 2, 3, 3), gqa::bshd(sc.data(), 1, 2, 3, 1)); },
               "gqa::quantize_q8: values.d = 3: must equal x.d = 4");
  expect_error([&] { gqa::quantize_q8(xv, gqa::bshd(q.data(), 1, 2, 3, 4), gqa::bshd(sc.data(), 1, 1, 3, 1)); },
               "scales.s = 1: must equal values.s = 2");
  expect_error([&] { gqa::quantize_q8(xv, gqa::bshd(q.data(), 1, 2, 3, 4), gqa::bshd(sc.data(), 1, 2, 3, 2)); },
               "scales.d = 2: must be 1");
  expect_error([&] { gqa::quantize_q8(xv, gqa::bshd<std::int8_t>(nullptr, 1, 2, 3, 4), gqa::bshd(sc.data(), 1, 2, 3, 1)); },
               "values.data = nullptr");
  expect_error([&] { gqa::quantize_q8(xv, gqa::bshd(q.data(), 1, 2, 3, 4), gqa::bshd(x.data() + 3, 1, 2, 3, 1)); },
               "scales (data = ");  // scales overlap x
  std::vector<float> out(24);
  const gqa::q8_view v{gqa::bshd<const std::int8_t>(q.data(), 1, 2, 3, 4), gqa::bshd<const float>(sc.data(), 1, 2, 3, 1)};
  expect_error([&] { gqa::dequantize_q8(v, gqa::bshd(out.data(), 1, 2, 3, 5)); }, "gqa::dequantize_q8: out.d = 5");
  std::vector<float> both(30);
  const gqa::q8_view w{gqa::bshd<const std::int8_t>(q.data(), 1, 2, 3, 4), gqa::bshd<const float>(both.data(), 1, 2, 3, 1)};
  expect_error([&] { gqa::dequantize_q8(w, gqa::bshd(both.data() + 5, 1, 2, 3, 4)); }, "overlaps");  // out over the scales
}

}  // namespace
