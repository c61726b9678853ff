// tests/support/expect.hpp: assertions on the errors of gqa's public entry points (every one throws
// gqa::invalid_argument, a std::invalid_argument, whose what() names the argument and its value).
// Internal linkage (anonymous namespace), like data.hpp.
#pragma once

#include <gtest/gtest.h>

#include <initializer_list>
#include <source_location>
#include <stdexcept>
#include <string>
#include <vector>

#include <gqa/errors.hpp>

namespace gqa::test {
namespace {

/// Success when f() throws a std::invalid_argument that is a gqa::invalid_argument and whose what()
/// contains every one of `parts`. f() runs once; any other exception propagates and fails the test.
template <class F>
::testing::AssertionResult throws_invalid(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    if (dynamic_cast<const gqa::invalid_argument*>(&e) == nullptr)
      return ::testing::AssertionFailure() << "threw a std::invalid_argument that is not a gqa::invalid_argument: " << what;
    for (const auto& part : parts)
      if (what.find(part) == std::string::npos)
        return ::testing::AssertionFailure() << "'" << part << "' not in: " << what;
    return ::testing::AssertionSuccess();
  }
  auto failure = ::testing::AssertionFailure() << "no gqa::invalid_argument thrown; expected one mentioning";
  for (const auto& part : parts) failure << " \"" << part << "\"";
  return failure;
}

/// Expects f() to throw gqa::invalid_argument (hence also a std::invalid_argument) whose what() contains
/// every one of `parts` (see throws_invalid); a failure is reported at the caller's line.
template <class F>
void expect_invalid(F&& f, const std::vector<std::string>& parts,
                    std::source_location where = std::source_location::current()) {
  if (const auto r = throws_invalid(f, parts); !r)
    ADD_FAILURE_AT(where.file_name(), static_cast<int>(where.line())) << r.message();
}
/// The same for a braced list of parts: `expect_invalid(f, {"q.h = 3", "k.h = 2"})`.
template <class F>
void expect_invalid(F&& f, std::initializer_list<std::string> parts,
                    std::source_location where = std::source_location::current()) {
  expect_invalid(f, std::vector<std::string>(parts), where);
}
/// The same for one needle.
template <class F>
void expect_invalid(F&& f, const std::string& needle, std::source_location where = std::source_location::current()) {
  expect_invalid(f, std::vector<std::string>{needle}, where);
}

}  // namespace
}  // namespace gqa::test

/// Expects the statement to throw gqa::invalid_argument whose what() contains `text`; a failure is
/// reported at the caller's line, with the message actually thrown.
#define EXPECT_THROWS_WITH(stmt, text) EXPECT_TRUE(::gqa::test::throws_invalid([&] { stmt; }, {text}))
