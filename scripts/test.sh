#!/usr/bin/env bash
# scripts/test.sh: everything CI checks, in one command.
#   1. scripts/install-deps.sh --neon --mpi --uptrain (no-op when everything is installed)
#   2. Release build of the tests, benchmarks and examples; ctest --output-on-failure (incl. packaging)
#   3. sanitizer build (-DGQA_TEST_SANITIZE=ON: ASan + UBSan) of the tests; ctest (packaging excluded)
#   4. scripts/test-neon.sh (AArch64 cross build run under qemu), if present
# Ends with one summary line and exits non-zero if any stage failed. Every stage runs even if an earlier
# one failed, so one run reports everything.
# Environment: GQA_BUILD_DIR (default <repo>/build), GQA_JOBS (default 2), GQA_SKIP_DEPS=1, GQA_SKIP_SANITIZE=1,
# GQA_SKIP_NEON=1.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_root="${GQA_BUILD_DIR:-$repo/build}"
jobs="${GQA_JOBS:-2}"
start=$(date +%s)
summary=()
failed=0

stage() {  # stage <name> <status> <detail>
  summary+=("$1: $3")
  if [ "$2" != 0 ]; then failed=1; fi
  printf '\n=== test.sh: %s: %s (%ss so far)\n\n' "$1" "$3" "$(($(date +%s) - start))"
}

# ctest_summary <log>: "N/M passed" from ctest's own tally line.
ctest_summary() {
  local line
  line=$(grep -E '[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$1" | tail -1)
  if [ -z "$line" ]; then
    echo "no tests ran"
    return
  fi
  local failed_n total
  failed_n=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/' <<<"$line")
  total=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\2/' <<<"$line")
  echo "$((total - failed_n))/$total passed"
}

# build_and_test <name> <build dir> <ctest args...> -- <cmake args...>
build_and_test() {
  local name=$1 dir=$2
  shift 2
  local ctest_args=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do ctest_args+=("$1"); shift; done
  shift
  local log="$dir.ctest.log"
  mkdir -p "$dir"
  echo "=== test.sh: $name: configure + build in $dir"
  if ! cmake -S "$repo" -B "$dir" "$@"; then
    stage "$name" 1 "configure FAILED"
    return
  fi
  if ! cmake --build "$dir" -j "$jobs"; then
    stage "$name" 1 "build FAILED"
    return
  fi
  (cd "$dir" && ctest --output-on-failure -j "$jobs" "${ctest_args[@]}") 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  stage "$name" "$rc" "$(ctest_summary "$log")$([ "$rc" != 0 ] && echo ' (FAILED)')"
}

# 1. Dependencies.
if [ "${GQA_SKIP_DEPS:-0}" != 1 ]; then
  if bash "$repo/scripts/install-deps.sh" --neon --mpi --uptrain; then
    stage deps 0 "ok"
  else
    stage deps 1 "install-deps.sh FAILED"
  fi
fi

# 2. Release: tests (incl. packaging), benchmarks and examples must build; every test must pass.
build_and_test release "$build_root/release" -- \
  -DCMAKE_BUILD_TYPE=Release -DGQA_BUILD_TESTS=ON -DGQA_BUILD_BENCHMARKS=ON -DGQA_BUILD_EXAMPLES=ON

# 3. Sanitizers: the unit and attention tests under ASan + UBSan (packaging consumers are plain builds).
if [ "${GQA_SKIP_SANITIZE:-0}" != 1 ]; then
  export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
  build_and_test sanitize "$build_root/sanitize" -LE packaging -- \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGQA_TEST_SANITIZE=ON -DGQA_BUILD_TESTS=ON \
    -DGQA_BUILD_BENCHMARKS=OFF -DGQA_BUILD_EXAMPLES=OFF
fi

# 4. NEON under qemu.
if [ "${GQA_SKIP_NEON:-0}" != 1 ]; then
  if [ -f "$repo/scripts/test-neon.sh" ]; then
    if GQA_BUILD_DIR="$build_root/neon" bash "$repo/scripts/test-neon.sh"; then
      stage neon 0 "ok"
    else
      stage neon 1 "test-neon.sh FAILED"
    fi
  else
    summary+=("neon: skipped (no scripts/test-neon.sh)")
  fi
fi

elapsed=$(($(date +%s) - start))
printf -v joined '%s; ' "${summary[@]}"
printf 'test.sh: %s in %dm%02ds: %s\n' "$([ $failed = 0 ] && echo PASS || echo FAIL)" $((elapsed / 60)) \
  $((elapsed % 60)) "${joined%; }"
exit $failed
