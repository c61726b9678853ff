// validation_test.cpp: argument validation costs comparisons only: a call that passes every check
// allocates nothing (issue 9: a decode call built ~100 std::strings on the success path, three validations
// deep). Allocations are counted by replacing the global operator new of the test binary; the counter only
// moves while a test enables it on its own thread, so every other test is unaffected.
#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <list>
#include <new>
#include <span>
#include <type_traits>
#include <vector>

#include <gqa/gqa.hpp>

#include "support/data.hpp"

// integer_span (kv_lengths, page tables, offsets) converts from any array of a standard integer type other
// than bool that std::data and std::size describe, and from nothing else.
static_assert(std::is_convertible_v<const std::vector<int>&, gqa::integer_span>);
static_assert(std::is_convertible_v<std::span<const std::int64_t>, gqa::integer_span>);
static_assert(std::is_convertible_v<const std::array<std::size_t, 3>&, gqa::integer_span>);
static_assert(std::is_convertible_v<const std::uint16_t (&)[4], gqa::integer_span>);
static_assert(std::is_convertible_v<const std::vector<std::int8_t>&, gqa::integer_span>);
static_assert(!std::is_convertible_v<const std::vector<bool>&, gqa::integer_span>);
static_assert(!std::is_convertible_v<const std::array<bool, 2>&, gqa::integer_span>);
static_assert(!std::is_convertible_v<const std::vector<float>&, gqa::integer_span>);
static_assert(!std::is_convertible_v<const std::list<int>&, gqa::integer_span>);
static_assert(!std::is_convertible_v<int, gqa::integer_span>);

namespace {
thread_local bool counting = false;
thread_local long allocations = 0;
}  // namespace

// Every non-aligned replaceable allocation function is replaced, as one set over malloc/free. Replacing
// only operator new(size_t) is not enough under AddressSanitizer: its runtime supplies the nothrow and
// array forms itself, so memory from its nothrow new (std::stable_sort's temporary buffer) reached our
// operator delete and free(), an alloc-dealloc mismatch. The aligned forms stay the runtime's, allocated
// and freed there. GCC's -Wmismatched-new-delete cannot tell a replacement operator delete from a caller
// of free().
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
namespace {
void* counted_malloc(std::size_t n) noexcept {
  if (counting) ++allocations;
  return std::malloc(n == 0 ? 1 : n);
}
}  // namespace
void* operator new(std::size_t n) {
  if (void* p = counted_malloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  if (void* p = counted_malloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return counted_malloc(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return counted_malloc(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

namespace {

using gqa::index_t;

/// Allocations made by f() on this thread.
template <class F>
long allocations_of(F&& f) {
  allocations = 0;
  counting = true;
  f();
  counting = false;
  return allocations;
}

// The checks attend() and forward() run (Note [validation once]) are internal functions; calling them
// directly isolates validation from the core's own per-call allocations.
TEST(validation, a_passing_call_allocates_nothing) {
  // The decode shape of the benchmark's overhead case: B1 Hq32 Hkv8 D128 Sq1 Skv16, with every option.
  constexpr index_t b = 1, sq = 1, hq = 32, hkv = 8, d = 128, skv = 16;
  const auto qd = gqa::test::random_floats(static_cast<std::size_t>(b * sq * hq * d), 1);
  const auto kd = gqa::test::random_floats(static_cast<std::size_t>(b * skv * hkv * d), 2);
  const auto vd = gqa::test::random_floats(static_cast<std::size_t>(b * skv * hkv * d), 3);
  std::vector<float> od(static_cast<std::size_t>(b * sq * hq * d)), lse(static_cast<std::size_t>(b * hq * sq));
  const std::vector<index_t> lengths = {skv - 3};
  const auto q = gqa::bshd<const float>(qd.data(), b, sq, hq, d);
  const auto k = gqa::bshd<const float>(kd.data(), b, skv, hkv, d);
  const auto v = gqa::bshd<const float>(vd.data(), b, skv, hkv, d);
  const auto o = gqa::bshd(od.data(), b, sq, hq, d);
  const gqa::head_map map = gqa::head_map::uniform(hq, hkv);
  gqa::attention_options opt;
  opt.scale = 0.1f;
  opt.causal = true;
  opt.kv_lengths = lengths;
  opt.lse = lse;
  const gqa::gqa_policy policy;
  EXPECT_EQ(allocations_of([&] {
              gqa::detail::check_views(q, k, v, o, "test");
              gqa::detail::check_call(q, k, v, o, opt, "test");
              gqa::detail::check_map(map, q, k, "test");
              policy.check(q, k, v, o);
            }),
            0);
  // Interleaved views take the exact overlap search: it allocates nothing either.
  std::vector<float> fused(static_cast<std::size_t>(skv * hkv * 2 * d));
  const gqa::tensor_view<const float> v_slots(fused.data(), 1, skv, hkv, d, 0, hkv * 2 * d, 2 * d);
  const gqa::tensor_view<float> o_slots(fused.data() + d, 1, 1, hkv, d, 0, 0, 2 * d);
  gqa::attention_options plain;
  EXPECT_EQ(allocations_of([&] {
              gqa::detail::check_call(gqa::bshd<const float>(qd.data(), 1, 1, hkv, d),
                                      gqa::bshd<const float>(kd.data(), 1, skv, hkv, d), v_slots, o_slots, plain,
                                      "test");
            }),
            0);
  // The counter works: a failing check formats its message.
  gqa::attention_options bad = opt;
  bad.num_threads = -1;
  EXPECT_GT(allocations_of([&] {
              try {
                gqa::detail::check_call(q, k, v, o, bad, "test");
              } catch (const gqa::invalid_argument&) {
              }
            }),
            0);
}

}  // namespace
