// bench/compare/schemes.cpp: compared_schemes (schemes.hpp). Compiled with the baseline flags; reads only
// the registry's names and default heads.
#include "schemes.hpp"

#include <algorithm>
#include <cctype>

#include <gqa/variants/registry.hpp>

namespace gqa_compare {

std::vector<scheme> compared_schemes(const layer_config& c, std::vector<std::string>* skipped) {
  std::vector<scheme> out = schemes_for(c, skipped);
  const gqa::model_shape model{c.heads, c.hkv_ref, c.head_dim, 0};
  gqa::for_each_variant([&](auto t) {
    using P = typename decltype(t)::type;
    const std::string variant(P::name);
    if (std::any_of(out.begin(), out.end(), [&](const scheme& s) { return s.variant == variant; })) return;
    const gqa::variant_heads h = P::heads_for(model);
    std::string name = variant;
    for (char& ch : name) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    out.push_back({name, variant, scheme_kind::registered, h.hq, h.hkv, h.kv_in});
  });
  return out;
}

}  // namespace gqa_compare
