#!/usr/bin/env bash
# scripts/test-neon.sh: cross-build gqa's test suite for AArch64 (NEON) and run it under qemu-aarch64.
#   1. GoogleTest for aarch64, built once from Debian's `googletest` source package (/usr/src/googletest;
#      Debian's libgtest-dev is x86-64 only) and installed into <build>/googletest/install
#   2. gqa_tests and gqa_sweep (the NEON suite TUs and the unit tests whose subject depends on the target,
#      Note [what runs under qemu]; GQA_TEST_REDUCED=ON: 200 sweep cases; no benchmarks, examples,
#      packaging or header checks). The scalar suites are not built here: they are
#      the same portable C++ every other stage runs natively (GQA_TEST_ISAS="scalar;neon" builds them too).
#      configured with cmake/toolchain-aarch64.cmake and built in <build>/gqa
#   3. ctest in <build>/gqa: every test runs under qemu-aarch64 (CMAKE_CROSSCOMPILING_EMULATOR)
# Ends with one summary line; exits non-zero if anything failed. Needs g++-aarch64-linux-gnu, qemu-user
# and googletest (scripts/install-deps.sh --neon). Nothing is downloaded.
# Environment: GQA_BUILD_DIR (default <repo>/build/neon), GQA_JOBS (default 2), GQA_TEST_ISAS (default neon),
# GQA_TEST_ONLY (default: Note [what runs under qemu]; ".*" builds every unit test),
# GQA_GTEST_SOURCE (default /usr/src/googletest), GQA_CTEST_ARGS (extra ctest arguments, e.g. "-R vec_suite").
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${GQA_BUILD_DIR:-$repo/build/neon}"
build="$(realpath -m "$build")"  # absolute: GTest_DIR and the build are used from other directories
jobs="${GQA_JOBS:-2}"
gtest_src="${GQA_GTEST_SOURCE:-/usr/src/googletest}"
toolchain="$repo/cmake/toolchain-aarch64.cmake"
start=$(date +%s)
mkdir -p "$build"

finish() {  # finish <status> <detail>
  local elapsed=$(($(date +%s) - start))
  printf 'test-neon.sh: %s in %dm%02ds: %s\n' "$([ "$1" = 0 ] && echo PASS || echo FAIL)" $((elapsed / 60)) \
    $((elapsed % 60)) "$2"
  exit "$1"
}

for tool in aarch64-linux-gnu-g++ aarch64-linux-gnu-gcc qemu-aarch64 cmake ctest; do
  command -v "$tool" >/dev/null 2>&1 || finish 1 "$tool not found (run scripts/install-deps.sh --neon)"
done
[ -f "$gtest_src/CMakeLists.txt" ] || finish 1 "no GoogleTest sources at $gtest_src (apt-get install googletest)"

# 1. GoogleTest for aarch64 (rebuilt only when missing).
gtest_prefix="$build/googletest/install"
gtest_config=$(find "$gtest_prefix" -name GTestConfig.cmake -print -quit 2>/dev/null)
if [ -z "$gtest_config" ]; then
  echo "=== test-neon.sh: building GoogleTest for aarch64 from $gtest_src"
  cmake -S "$gtest_src" -B "$build/googletest/build" -DCMAKE_TOOLCHAIN_FILE="$toolchain" \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_GMOCK=OFF -DINSTALL_GTEST=ON -DCMAKE_INSTALL_PREFIX="$gtest_prefix" \
    >"$build/googletest.log" 2>&1 &&
    cmake --build "$build/googletest/build" -j "$jobs" >>"$build/googletest.log" 2>&1 &&
    cmake --install "$build/googletest/build" >>"$build/googletest.log" 2>&1 ||
    { tail -30 "$build/googletest.log"; finish 1 "GoogleTest build FAILED (log: $build/googletest.log)"; }
  gtest_config=$(find "$gtest_prefix" -name GTestConfig.cmake -print -quit)
fi
[ -n "$gtest_config" ] || finish 1 "GoogleTest installed no GTestConfig.cmake under $gtest_prefix"

# 2. The test binary. Eigen is header-only: the host's package config is fine for the target too.
eigen_args=()
for d in /usr/share/eigen3/cmake /usr/lib/cmake/eigen3; do
  if [ -f "$d/Eigen3Config.cmake" ]; then
    eigen_args=(-DEigen3_DIR="$d")
    break
  fi
done
# Note [what runs under qemu]
# Every suite (tests/suites: the core and every variant, on NEON), and of the unit tests those whose
# subject depends on the target: dispatch (what AArch64 picks and reports), the 16-bit conversions, non-
# finite inputs (NEON's max keeps a NaN where x86's drops it), the thread pool and concurrent callers (a
# weakly ordered memory model), the authors' golden vectors through the baseline core, and the allocation
# and PGQA tests (they hold the baseline builds of key norms, DGQA and PGQA's noise that the suites compare
# NEON with, bit for bit). The other unit
# tests check argument validation, head maps, registries and policies' bookkeeping: portable C++ that the
# suites run on NEON as well, and that every native stage runs. Nor do the header checks run here: they
# compile each header on its own for the host, in the Release stage. GQA_TEST_ONLY overrides the list.
only="${GQA_TEST_ONLY:-[a-z0-9_]+_suite|dispatch_test|numeric_test|nonfinite_test|thread_pool_test|threads_test|golden_test|allocation_test|pgqa_test}"
echo "=== test-neon.sh: configure + build gqa_tests for aarch64 in $build/gqa"
cmake -S "$repo" -B "$build/gqa" -DCMAKE_TOOLCHAIN_FILE="$toolchain" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" \
  -DGQA_BUILD_TESTS=ON -DGQA_BUILD_BENCHMARKS=OFF -DGQA_BUILD_EXAMPLES=OFF -DGQA_INSTALL=OFF \
  -DGQA_TEST_REDUCED=ON -DGQA_TEST_ISAS="${GQA_TEST_ISAS:-neon}" -DGQA_TEST_ONLY="$only" \
  -DGTest_DIR="$(dirname "$gtest_config")" "${eigen_args[@]}" ||
  finish 1 "configure FAILED"
cmake --build "$build/gqa" --target gqa_tests gqa_sweep -j "$jobs" || finish 1 "build FAILED"

# 3. Run under qemu. ctest's own tally line says how many ran.
log="$build/ctest.log"
# shellcheck disable=SC2086  # GQA_CTEST_ARGS is split on purpose
(cd "$build/gqa" && ctest --output-on-failure -j "$jobs" -LE "packaging|headers" --timeout 600 ${GQA_CTEST_ARGS:-}) 2>&1 |
  tee "$log"
rc=${PIPESTATUS[0]}
tally=$(grep -E '[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -1)
if [ -z "$tally" ]; then
  finish 1 "no tests ran"
fi
failed_n=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/' <<<"$tally")
total=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\2/' <<<"$tally")
[ "$total" -gt 0 ] || finish 1 "no tests ran"
finish "$rc" "$((total - failed_n))/$total passed under qemu-aarch64 ($(grep -oE "^GQA_TEST_ISAS[^=]*=.*" "$build/gqa/CMakeCache.txt" | cut -d= -f2) suites, reduced shapes)"
