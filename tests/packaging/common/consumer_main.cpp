// consumer_main.cpp: a downstream program built against gqa::gqa (installed, build-tree or
// add_subdirectory). Exit code 0 iff gqa's output matches the naive loop (|err| <= 1e-5) on every ISA the
// consumer compiled and the CPU runs.
#include <cstdio>

#include "consumer_check.hpp"

#if defined(GQA_CONSUMER_HAS_AVX2_TU)
double consumer_avx2_max_error();  // consumer_avx2.cpp, compiled with gqa_isa_compile_options(avx2)
#endif

int main() {
  int failures = 0;
  const float mean = consumer_mean_of_v<gqa::isa::native>();
  std::printf("gqa %d.%d.%d: mean of V = %.7f (expect 1.5)\n", GQA_VERSION_MAJOR, GQA_VERSION_MINOR,
              GQA_VERSION_PATCH, static_cast<double>(mean));
  if (!(std::abs(mean - 1.5f) <= 1e-6f)) ++failures;

  const double err = consumer_max_error<gqa::isa::native>();
  std::printf("native (%s): max |gqa - naive| = %.3g\n", gqa::isa::native::name.data(), err);
  if (!(err <= 1e-5)) ++failures;

#if defined(GQA_CONSUMER_HAS_AVX2_TU)
  if (gqa::isa::cpu_supports<gqa::isa::avx2>()) {
    const double err2 = consumer_avx2_max_error();
    std::printf("avx2 TU: max |gqa - naive| = %.3g\n", err2);
    if (!(err2 <= 1e-5)) ++failures;
  } else {
    std::printf("avx2 TU: skipped (CPU lacks AVX2)\n");
  }
#endif
  std::printf("%s\n", failures == 0 ? "consumer OK" : "consumer FAILED");
  return failures == 0 ? 0 : 1;
}
