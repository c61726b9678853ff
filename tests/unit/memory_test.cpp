// gqa/memory.hpp: advise_huge_pages() and huge_page_allocator / huge_page_vector (memory for K/V caches on
// huge pages): alignment, sizes, zero-initialised vectors, allocator equality, the advice's range rules,
// and an attention call on huge-page buffers giving the plain buffers' bits.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <gqa/gqa.hpp>
#include <gqa/memory.hpp>

#include "support/data.hpp"

namespace {

using gqa::index_t;

bool aligned_to(const void* p, std::size_t a) { return reinterpret_cast<std::uintptr_t>(p) % a == 0; }

// Whether this kernel offers transparent huge pages at all (madvise(MADV_HUGEPAGE) is then accepted).
bool kernel_has_thp() {
#if defined(__linux__)
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  return f.good();
#else
  return false;
#endif
}

TEST(memory, allocator_aligns_small_to_64_bytes_and_large_to_huge_pages) {
  gqa::huge_page_allocator<float> a;
  for (const std::size_t n : {std::size_t{1}, std::size_t{3}, std::size_t{1000}, (gqa::huge_page_bytes / 4) - 1}) {
    float* p = a.allocate(n);
    EXPECT_TRUE(aligned_to(p, 64)) << n;
    for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<float>(i);
    EXPECT_EQ(p[n - 1], static_cast<float>(n - 1));
    a.deallocate(p, n);
  }
  for (const std::size_t n : {gqa::huge_page_bytes / 4, gqa::huge_page_bytes / 4 + 1, std::size_t{3} << 20}) {
    float* p = a.allocate(n);
    EXPECT_TRUE(aligned_to(p, gqa::huge_page_bytes)) << n;
    for (std::size_t i = 0; i < n; i += 1024) p[i] = 1.0f;
    p[n - 1] = 2.0f;
    EXPECT_EQ(p[n - 1], 2.0f);
    a.deallocate(p, n);
  }
  EXPECT_THROW(static_cast<void>(a.allocate(a.max_size() + 1)), std::bad_alloc);
}

TEST(memory, huge_page_vector_is_a_vector) {
  gqa::huge_page_vector<float> v(std::size_t{3} << 20);  // 12 MiB: huge pages
  EXPECT_TRUE(aligned_to(v.data(), gqa::huge_page_bytes));
  for (const float x : v) ASSERT_EQ(x, 0.0f);
  v.push_back(5.0f);
  EXPECT_EQ(v.back(), 5.0f);
  EXPECT_EQ(v.size(), (std::size_t{3} << 20) + 1);
  gqa::huge_page_vector<std::int8_t> w(10, std::int8_t{-3});
  EXPECT_TRUE(aligned_to(w.data(), 64));
  EXPECT_EQ(w[9], -3);
  // Stateless: every allocator compares equal, rebound ones too.
  EXPECT_TRUE(v.get_allocator() == gqa::huge_page_allocator<float>{});
  EXPECT_TRUE(v.get_allocator() == gqa::huge_page_allocator<double>{});
  EXPECT_FALSE(v.get_allocator() != w.get_allocator());
  gqa::huge_page_vector<float> moved = std::move(v);
  EXPECT_EQ(moved.back(), 5.0f);
}

TEST(memory, advise_covers_whole_huge_pages_only) {
  EXPECT_FALSE(gqa::advise_huge_pages(nullptr, std::size_t{8} << 20));
  gqa::huge_page_vector<unsigned char> buf(std::size_t{6} << 20, 7);
  unsigned char* p = buf.data();
  // No whole 2 MiB page inside: refused without a system call.
  EXPECT_FALSE(gqa::advise_huge_pages(p, gqa::huge_page_bytes - 1));
  EXPECT_FALSE(gqa::advise_huge_pages(p + 1, gqa::huge_page_bytes));
  EXPECT_FALSE(gqa::advise_huge_pages(p + 4096, (std::size_t{4} << 20) - 8192));
  EXPECT_FALSE(gqa::advise_huge_pages(p, 0));
  // Whole pages inside (aligned or not at the ends): accepted wherever the kernel has transparent huge pages.
  EXPECT_EQ(gqa::advise_huge_pages(p, std::size_t{6} << 20), kernel_has_thp());
  EXPECT_EQ(gqa::advise_huge_pages(p + 100, (std::size_t{4} << 20) + 10), kernel_has_thp());
  // The advice changes no byte.
  for (std::size_t i = 0; i < buf.size(); i += 4093) ASSERT_EQ(buf[i], 7) << i;
  EXPECT_EQ(buf.back(), 7);
}

// A decode call on a K/V cache in huge_page_vectors (the way docs/api.md shows) returns what it returns on
// plain vectors, bit for bit: where memory lies changes no result.
TEST(memory, attention_on_huge_page_buffers_matches_plain_buffers) {
  const index_t hq = 8, hkv = 2, d = 64, skv = 4096;  // K and V 2 MiB each
  const auto n = static_cast<std::size_t>(skv * hkv * d);
  const std::vector<float> k = gqa::test::random_floats(n, 11), v = gqa::test::random_floats(n, 12);
  const std::vector<float> q = gqa::test::random_floats(static_cast<std::size_t>(hq * d), 13);
  const gqa::huge_page_vector<float> kh(k.begin(), k.end()), vh(v.begin(), v.end());
  EXPECT_TRUE(aligned_to(kh.data(), gqa::huge_page_bytes));
  std::vector<float> o1(q.size()), o2(q.size());
  const auto map = gqa::head_map::uniform(hq, hkv);
  const auto qv = gqa::bshd<const float>(q.data(), 1, 1, hq, d);
  gqa::attend(qv, gqa::bshd<const float>(k.data(), 1, skv, hkv, d), gqa::bshd<const float>(v.data(), 1, skv, hkv, d),
              gqa::bshd(o1.data(), 1, 1, hq, d), map);
  gqa::attend(qv, gqa::bshd<const float>(kh.data(), 1, skv, hkv, d), gqa::bshd<const float>(vh.data(), 1, skv, hkv, d),
              gqa::bshd(o2.data(), 1, 1, hq, d), map);
  EXPECT_EQ(std::memcmp(o1.data(), o2.data(), o1.size() * sizeof(float)), 0);
}

}  // namespace
