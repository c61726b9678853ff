// bench/registry_names.cpp: prints the registered variants' names (gqa::variant_names), one per line, for
// bench/check_registry.cmake.
#include <cstdio>

#include <gqa/variants/registry.hpp>

int main() {
  for (const auto name : gqa::variant_names) std::printf("%.*s\n", static_cast<int>(name.size()), name.data());
  return 0;
}
