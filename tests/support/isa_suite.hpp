// tests/support/isa_suite.hpp: typed test suites parameterised by ISA tag. A suite header in tests/suites/
// defines TYPED_TEST_SUITE_P(<suite>, ...) on fixtures derived from isa_test<Isa>; tests/CMakeLists.txt
// generates one TU per (suite, ISA), compiled with that ISA's flags, that includes the suite header and
// calls GQA_INSTANTIATE_ISA_SUITE(<suite>, <isa>). Suite headers keep their helpers in an anonymous
// namespace (internal linkage): they are compiled once per ISA.
#pragma once

#include <gtest/gtest.h>

#include <gqa/isa/tags.hpp>

#include "data.hpp"

namespace gqa::test {
namespace {

/// Base fixture: skips every test of the suite when the CPU cannot run Isa.
template <class Isa>
class isa_test : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!gqa::isa::cpu_supports<Isa>()) GTEST_SKIP() << "CPU lacks " << Isa::name;
  }
};

}  // namespace
}  // namespace gqa::test

/// Instantiates typed suite `suite` for gqa::isa::<isa> under the prefix <isa> (test names
/// "<isa>/<suite>/0.<test>").
#define GQA_INSTANTIATE_ISA_SUITE(suite, isa_name) \
  INSTANTIATE_TYPED_TEST_SUITE_P(isa_name, suite, ::testing::Types<::gqa::isa::isa_name>)
