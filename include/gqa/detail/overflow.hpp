// gqa/detail/overflow.hpp: size arithmetic on caller-supplied extents that throws instead of overflowing.
#pragma once

#include <limits>

#include "../config.hpp"
#include "../errors.hpp"

GQA_BEGIN_NAMESPACE
namespace detail {

/// a · b for non-negative extents; throws "<where>: <what> overflows (a * b)" instead of overflowing.
inline index_t checked_mul(index_t a, index_t b, const char* where, const char* what) {
  if (a != 0 && b > std::numeric_limits<index_t>::max() / a) fail(where, ": ", what, " overflows (", a, " * ", b, ")");
  return a * b;
}

}  // namespace detail
GQA_END_NAMESPACE
