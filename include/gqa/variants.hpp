// gqa/variants.hpp: every head-grouping variant, each a policy over the one core (gqa::forward), and the
// registry that lists them (gqa::registered_variants, gqa::variant_names; variants/registry.hpp), which
// tests, benchmarks and gqa-compare iterate over.
#pragma once

#include "variants/policy.hpp"
#include "variants/registry.hpp"
