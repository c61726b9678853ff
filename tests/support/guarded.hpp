// tests/support/guarded.hpp: guarded<T> (guarded_floats: T = float), n elements that end exactly where an
// inaccessible page begins, so a kernel that reads or writes one element past the end faults (with or
// without ASan). Internal linkage
// (anonymous namespace): suite headers include this once per ISA.
#pragma once

#include <cstddef>
#include <memory>
#include <new>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#define GQA_TEST_HAS_MMAP 1
#else
#define GQA_TEST_HAS_MMAP 0
#endif

namespace gqa::test {
namespace {

/// n elements of T that end exactly where an inaccessible (PROT_NONE) page begins, so any read or write
/// past element n - 1 faults, with or without ASan. Falls back to an exactly sized heap block (which ASan
/// guards) where mmap is unavailable.
template <class T>
class guarded {
 public:
  explicit guarded(std::size_t n) : n_(n) {
#if GQA_TEST_HAS_MMAP
    page_ = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    const std::size_t body = (n * sizeof(T) + page_ - 1) / page_ * page_ + page_;
    total_ = body + page_;
    void* p = mmap(nullptr, total_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    base_ = static_cast<char*>(p);
    mprotect(base_ + body, page_, PROT_NONE);
    data_ = reinterpret_cast<T*>(base_ + body) - n;
#else
    heap_ = std::make_unique<T[]>(n);
    data_ = heap_.get();
#endif
  }
  guarded(const guarded&) = delete;
  guarded& operator=(const guarded&) = delete;
  ~guarded() {
#if GQA_TEST_HAS_MMAP
    munmap(base_, total_);
#endif
  }
  T* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return n_; }

 private:
  std::size_t n_;
  T* data_ = nullptr;
#if GQA_TEST_HAS_MMAP
  std::size_t page_ = 0, total_ = 0;
  char* base_ = nullptr;
#else
  std::unique_ptr<T[]> heap_;
#endif
};
using guarded_floats = guarded<float>;

}  // namespace
}  // namespace gqa::test
