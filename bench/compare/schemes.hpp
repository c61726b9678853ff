// bench/compare/schemes.hpp: the rows gqa-compare measures for a configuration: model.hpp's curated list
// plus one row for every registered variant (gqa/variants/registry.hpp) that the list does not name, so a
// newly registered variant is compared without editing gqa-compare. Defined in schemes.cpp (baseline flags).
#pragma once

#include <string>
#include <vector>

#include "model.hpp"

namespace gqa_compare {

/// schemes_for(c, skipped), then, for every registered variant that no row names, a row named after it in
/// upper case (kind scheme_kind::registered) with the registry's default heads on a layer of c.heads query
/// heads and c.hkv_ref KV groups: the reference point of KDGQA, DGQA, PGQA and WGQA. (When H has no
/// divisor 1 < k < H, schemes_for has no GQA-k row, and GQA is compared at the reference point too.)
std::vector<scheme> compared_schemes(const layer_config& c, std::vector<std::string>* skipped = nullptr);

}  // namespace gqa_compare
