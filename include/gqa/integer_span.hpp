// gqa/integer_span.hpp: integer_span, a read-only view of a caller's array of integers of any standard
// integer type (int32_t, int64_t, uint32_t, size_t, ...), read as index_t. Per-sequence lengths, offsets and
// page tables come from frameworks in whatever type they keep them (PyTorch int32 seqlens, std::size_t
// vectors); this takes them without a copy. Invariant: reading an element never overflows: an unsigned
// value above INT64_MAX reads as INT64_MAX (which every range check then rejects), and operator<< of
// `at(i)` prints the caller's value itself.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <limits>
#include <ostream>
#include <type_traits>
#include <utility>
#include <vector>

#include "config.hpp"

GQA_BEGIN_NAMESPACE

namespace detail {
/// The element type of an array that std::data and std::size describe (cv dropped).
template <class R>
using array_element_t = std::remove_cv_t<std::remove_pointer_t<decltype(std::data(std::declval<const R&>()))>>;
}  // namespace detail

/// A view of `size()` integers of one standard integer type (not bool), each read as index_t.
/// Converts implicitly from any array of such integers that std::data and std::size describe:
/// std::vector<int>, std::span<const std::int64_t>, std::array<std::size_t, N>, a C array. (Stated with
/// std::data rather than the <ranges> concepts: <ranges> was 0.54 G of the 9.33 G instructions g++ 12
/// spent on `#include <gqa/gqa.hpp>`.) Non-owning: the array must outlive the view.
class integer_span {
 public:
  constexpr integer_span() noexcept = default;

  template <class R>
    requires requires(const R& r) {
      std::data(r);
      std::size(r);
    } && std::integral<detail::array_element_t<R>> && (!std::same_as<detail::array_element_t<R>, bool>)
  constexpr integer_span(const R& r) noexcept  // NOLINT(google-explicit-constructor)
      : data_(std::data(r)),
        size_(static_cast<std::size_t>(std::size(r))),
        bytes_(static_cast<unsigned char>(sizeof(detail::array_element_t<R>))),
        signed_(std::is_signed_v<detail::array_element_t<R>>) {}

  constexpr std::size_t size() const noexcept { return size_; }
  constexpr bool empty() const noexcept { return size_ == 0; }
  constexpr const void* data() const noexcept { return data_; }
  constexpr std::size_t size_bytes() const noexcept { return size_ * bytes_; }
  /// Bytes per element (1, 2, 4 or 8) and whether the element type is signed.
  constexpr std::size_t element_size() const noexcept { return bytes_; }
  constexpr bool is_signed() const noexcept { return signed_; }

  /// Element i (i < size()) as index_t; an unsigned value above INT64_MAX reads as INT64_MAX.
  index_t operator[](std::size_t i) const noexcept {
    constexpr auto max = static_cast<std::uint64_t>(std::numeric_limits<index_t>::max());
    if (signed_) return signed_at(i);
    const std::uint64_t u = unsigned_at(i);
    return u > max ? std::numeric_limits<index_t>::max() : static_cast<index_t>(u);
  }

  /// Elements [offset, offset + count) (within size(); not checked).
  constexpr integer_span subspan(std::size_t offset, std::size_t count) const noexcept {
    integer_span s = *this;
    s.data_ = static_cast<const unsigned char*>(data_) + offset * bytes_;
    s.size_ = count;
    return s;
  }

  /// Element i as the caller wrote it, for messages: `os << s.at(i)` prints e.g. 18446744073709551615.
  struct element {
    const integer_span* s;
    std::size_t i;
    friend std::ostream& operator<<(std::ostream& os, const element& e) { return e.s->print(os, e.i); }
  };
  constexpr element at(std::size_t i) const noexcept { return {this, i}; }
  std::ostream& print(std::ostream& os, std::size_t i) const {
    return signed_ ? os << signed_at(i) : os << unsigned_at(i);
  }

 private:
  std::int64_t signed_at(std::size_t i) const noexcept {
    switch (bytes_) {
      case 1: return static_cast<const std::int8_t*>(data_)[i];
      case 2: return static_cast<const std::int16_t*>(data_)[i];
      case 4: return static_cast<const std::int32_t*>(data_)[i];
      default: return static_cast<const std::int64_t*>(data_)[i];
    }
  }
  std::uint64_t unsigned_at(std::size_t i) const noexcept {
    switch (bytes_) {
      case 1: return static_cast<const std::uint8_t*>(data_)[i];
      case 2: return static_cast<const std::uint16_t*>(data_)[i];
      case 4: return static_cast<const std::uint32_t*>(data_)[i];
      default: return static_cast<const std::uint64_t*>(data_)[i];
    }
  }

  const void* data_ = nullptr;
  std::size_t size_ = 0;
  unsigned char bytes_ = sizeof(index_t);
  bool signed_ = true;
};

namespace detail {
/// The elements of s as index_t (what the core indexes per row, without a switch on the element type).
inline std::vector<index_t> to_indices(const integer_span& s) {
  std::vector<index_t> r(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) r[i] = s[i];
  return r;
}
}  // namespace detail

GQA_END_NAMESPACE
