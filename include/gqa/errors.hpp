// gqa/errors.hpp: the one exception type thrown by gqa's public entry points, and message helpers.
// Invariant: every message names the offending argument and its value.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

#include "config.hpp"

namespace gqa {
/// Thrown by every public entry point for a bad argument. Lives outside the ABI namespace (see
/// Note [ABI namespace]) so `catch (const gqa::invalid_argument&)` works in every translation unit.
class invalid_argument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};
}  // namespace gqa

GQA_BEGIN_NAMESPACE
namespace detail {
template <class... Parts>
[[noreturn]] inline void fail(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw ::gqa::invalid_argument(os.str());
}

/// Throws "<where>: <what> (<name> = <value>)" unless `ok`.
template <class V>
inline void require(bool ok, const char* where, const char* name, const V& value, const char* what) {
  if (!ok) fail(where, ": ", name, " = ", value, ": ", what);
}
}  // namespace detail
GQA_END_NAMESPACE
