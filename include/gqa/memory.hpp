// gqa/memory.hpp: memory for K/V caches on huge pages. advise_huge_pages() asks the OS (Linux: madvise
// MADV_HUGEPAGE) to back a buffer with 2 MiB pages when it is first touched; huge_page_allocator<T> is a
// standard allocator that does so for every allocation of 2 MiB or more (huge_page_vector<T>: a
// std::vector on it). Why (docs/design.md §2.4, "Huge pages"): decode streams the whole cache once per
// token, and on 4 KiB pages one core's streaming read and decode ran much slower than on 2 MiB pages.
// Thread safety: stateless free functions and allocator; every call may run concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

#include "config.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#endif

GQA_BEGIN_NAMESPACE

/// The huge page size advise_huge_pages() and huge_page_allocator work with: 2 MiB (x86-64, AArch64 with
/// 4 KiB base pages).
inline constexpr std::size_t huge_page_bytes = std::size_t{2} << 20;

/// Asks the OS to back the whole 2 MiB pages inside [p, p + bytes) with huge pages from their first touch
/// on (pages already touched keep theirs until the OS's background collapse, if any). Linux:
/// madvise(MADV_HUGEPAGE) on the 2 MiB-aligned part of the range; it takes effect when transparent huge
/// pages are enabled as "always" or "madvise" (/sys/kernel/mm/transparent_hugepage/enabled). Returns
/// whether the advice was given and accepted: false when the range holds no whole 2 MiB page, on other
/// systems, or when the kernel refused it (e.g. built without transparent huge pages). Never throws;
/// changes no byte of the buffer.
inline bool advise_huge_pages(void* p, std::size_t bytes) noexcept {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const auto begin = reinterpret_cast<std::uintptr_t>(p);
  if (p == nullptr || bytes > UINTPTR_MAX - begin) return false;
  const std::uintptr_t first = (begin + huge_page_bytes - 1) / huge_page_bytes * huge_page_bytes;
  const std::uintptr_t last = (begin + bytes) / huge_page_bytes * huge_page_bytes;
  if (first >= last) return false;
  return ::madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE) == 0;
#else
  static_cast<void>(p);
  static_cast<void>(bytes);
  return false;
#endif
}

/// A standard allocator for K/V caches and other large buffers: allocations of huge_page_bytes or more are
/// aligned to huge_page_bytes, rounded up to a whole number of them and given to advise_huge_pages() before
/// anything touches them; smaller ones are 64-byte aligned. Throws std::bad_alloc when the memory is not
/// there (as std::allocator). Stateless: every instance compares equal.
template <class T>
struct huge_page_allocator {
  using value_type = T;

  huge_page_allocator() noexcept = default;
  template <class U>
  huge_page_allocator(const huge_page_allocator<U>&) noexcept {}  // NOLINT(google-explicit-constructor)

  T* allocate(std::size_t n) {
    if (n > max_size()) throw std::bad_alloc();
    const std::size_t bytes = n * sizeof(T);
    const std::size_t align = alignment(bytes);
    void* p = ::operator new(rounded(bytes), std::align_val_t{align});
    if (align == huge_page_bytes) static_cast<void>(advise_huge_pages(p, rounded(bytes)));
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t n) noexcept {
    ::operator delete(static_cast<void*>(p), std::align_val_t{alignment(n * sizeof(T))});
  }
  static constexpr std::size_t max_size() noexcept {
    return (static_cast<std::size_t>(-1) - huge_page_bytes) / sizeof(T);
  }

 private:
  static constexpr std::size_t alignment(std::size_t bytes) noexcept {
    const std::size_t small = alignof(T) > 64 ? alignof(T) : 64;
    return bytes >= huge_page_bytes ? huge_page_bytes : small;
  }
  static constexpr std::size_t rounded(std::size_t bytes) noexcept {
    if (bytes < huge_page_bytes) return bytes == 0 ? 1 : bytes;
    return (bytes + huge_page_bytes - 1) / huge_page_bytes * huge_page_bytes;
  }
};

template <class T, class U>
bool operator==(const huge_page_allocator<T>&, const huge_page_allocator<U>&) noexcept {
  return true;
}

/// A std::vector whose storage comes from huge_page_allocator (huge pages from 2 MiB up).
template <class T>
using huge_page_vector = std::vector<T, huge_page_allocator<T>>;

GQA_END_NAMESPACE
