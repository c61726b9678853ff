// gqa/errors.hpp: the one exception type thrown by gqa's public entry points, and message helpers.
// Invariant: every message names the offending argument and its value; a message is formatted only when
// a check fails, so a successful validation allocates nothing (see Note [lazy messages]).
#pragma once

#include <ostream>
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

// Note [lazy messages]
// Validation runs on every call, including decode calls that take microseconds, so a check that passes
// must cost a comparison and nothing else: no std::string, no std::to_string. Messages are therefore
// passed as parts (string literals, numbers, `field`s) that fail() streams only once a check has failed;
// fail() is kept out of line so the passing path stays small.

/// "<where><parts...>" as a gqa::invalid_argument. The parts are taken by value so that string literals
/// decay to const char*: one instantiation per list of part types, not one per list of literal lengths
/// (a TU that includes gqa.hpp compiled 43 of them, one per message; the copies are made only on failure).
template <class... Parts>
[[noreturn]]
#if defined(__GNUC__) || defined(__clang__)
__attribute__((noinline, cold))
#endif
void fail(Parts... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw ::gqa::invalid_argument(os.str());
}

/// The name of a member of an argument, e.g. field{"q", "stride_s"} prints "q.stride_s". Built without
/// allocating, for messages that are usually never formatted.
struct field {
  const char* arg;
  const char* member;
  friend std::ostream& operator<<(std::ostream& os, const field& f) { return os << f.arg << '.' << f.member; }
};

/// Throws "<where>: <name> = <value>: <what...>" unless `ok`. `name` is a string or a `field`; `what`
/// is any number of streamable parts, formatted only on failure (Note [lazy messages]).
template <class Name, class V, class... What>
inline void require(bool ok, const char* where, const Name& name, const V& value, const What&... what) {
  if (!ok) [[unlikely]]
    fail(where, ": ", name, " = ", value, ": ", what...);
}

}  // namespace detail
GQA_END_NAMESPACE
