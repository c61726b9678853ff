// gqa/variants.hpp: every head-grouping variant, each a policy over the one core (gqa::forward).
// The registry of variant names used by tests, benchmarks and gqa-compare is gqa::variant_names below.
#pragma once

#include <array>
#include <string_view>

#include "variants/policy.hpp"
#include "variants/mha.hpp"
#include "variants/mqa.hpp"
#include "variants/gqa.hpp"
#include "variants/sqa.hpp"
#include "variants/kdgqa.hpp"
#include "variants/dgqa.hpp"
#include "variants/pgqa.hpp"
#include "variants/wgqa.hpp"

GQA_BEGIN_NAMESPACE
/// Short names of every variant, in the order the docs, benchmarks and gqa-compare list them.
inline constexpr std::array<std::string_view, 8> variant_names = {"mha", "mqa", "gqa", "sqa",
                                                                  "kdgqa", "dgqa", "pgqa", "wgqa"};
GQA_END_NAMESPACE
