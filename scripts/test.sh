#!/usr/bin/env bash
# scripts/test.sh: everything CI checks, in one command.
#   1. scripts/install-deps.sh --neon --mpi --uptrain --fuzz (no-op when everything is installed)
#   2. Release build (-O2) of the tests, benchmarks and examples; ctest --output-on-failure (incl. packaging)
#   3. the random sweep against the reference (ctest -L sweep in the Release build: GQA_SWEEP_CASES
#      cases, default 2,000; also run, 200 cases, in the NEON build; under ASan + UBSan its runner is the
#      fuzzer's, stage 6)
#   4. sanitizer build (-DGQA_TEST_SANITIZE=ON: ASan + UBSan, -Og) of the tests; ctest (packaging and the
#      header checks excluded: they compile, and run nothing the sanitizers could watch), the GoogleTest
#      tests in 16 processes (Note [test shards] in tests/CMakeLists.txt); the core suites
#      on AVX2 and AVX-512 (the caches' two on AVX-512), the variant suites and unit tests on scalar (Note
#      [sanitizer build matrix])
#   5. ThreadSanitizer build of the tests (scalar suites, std::thread loop: libgomp is not instrumented),
#      running the threading and policy tests (the gtest filter $tsan_filter below)
#   6. the fuzzer: gqa_fuzz (clang++-14, -fsanitize=fuzzer,address,undefined; on x86-64 the AVX2 and
#      AVX-512 runners) for GQA_FUZZ_SECONDS (default 60) of CPU time, one job per core, from
#      tests/fuzz/corpus; prints the executions count
#   7. scripts/test-neon.sh (AArch64 cross build run under qemu), if present
# Ends with one summary line and exits non-zero if any stage failed. Every stage runs even if an earlier
# one failed, so one run reports everything.
# Environment: GQA_BUILD_DIR (default <repo>/build), GQA_JOBS (default 2), GQA_SKIP_DEPS=1, GQA_SKIP_RELEASE=1
# (stages 2 and 3), GQA_SKIP_SANITIZE=1,
# GQA_SKIP_TSAN=1, GQA_SKIP_FUZZ=1, GQA_SKIP_NEON=1, GQA_SWEEP_CASES, GQA_FUZZ_SECONDS.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_root="${GQA_BUILD_DIR:-$repo/build}"
jobs="${GQA_JOBS:-2}"
start=$(date +%s)
summary=()
failed=0

# read_cpu_seconds: sets cpu_now to the CPU time (user + system) of every finished child process so far, from
# bash's `times`. It must run in this shell, never in a $(...) subshell: a forked shell's `times` reports its
# own (zero) children, which is why it sets a variable instead of printing.
cpu_times_file=$(mktemp)
trap 'rm -f "$cpu_times_file"' EXIT
cpu_now=0
read_cpu_seconds() {
  local self children
  times >"$cpu_times_file"
  { read -r self; read -r children; } <"$cpu_times_file"
  cpu_now=$(awk '{ t = 0; for (i = 1; i <= NF; i++) { split($i, a, "m"); t += a[1] * 60 + a[2] } printf "%d", t }' \
    <<<"${children//s/}")
}
stage_start=$start
read_cpu_seconds
stage_cpu=$cpu_now
stage() {  # stage <name> <status> <detail>; the summary gives each stage's own wall and CPU time
  local now
  now=$(date +%s)
  read_cpu_seconds
  summary+=("$1: $3 [$((now - stage_start))s, cpu $((cpu_now - stage_cpu))s]")
  stage_start=$now
  stage_cpu=$cpu_now
  if [ "$2" != 0 ]; then failed=1; fi
  printf '\n=== test.sh: %s: %s (%ss so far)\n\n' "$1" "$3" "$((now - start))"
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
  # Shards (Note [test shards] in tests/CMakeLists.txt, run with ctest -V): their GoogleTest tallies too.
  local shards gtests
  shards=$(grep -cE 'Start +[0-9]+: unit\.shard\.' "$1")
  gtests=$(awk '$1 == "Start" && $3 ~ /^unit\.shard\./ { shard[$2] = 1 }
                $2 == "[" && $3 == "PASSED" && ($1 in shard) { n += $5 } END { print n + 0 }' "$1")
  if [ "$shards" -gt 0 ]; then
    echo "$((total - failed_n))/$total passed ($gtests GoogleTest tests passed in shards)"
  else
    echo "$((total - failed_n))/$total passed"
  fi
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
  if bash "$repo/scripts/install-deps.sh" --neon --mpi --uptrain --fuzz; then
    stage deps 0 "ok"
  else
    stage deps 1 "install-deps.sh FAILED"
  fi
fi

# 2. Release: tests (incl. packaging), benchmarks and examples must build; every test but the sweep must pass.
#    At -O2 (what most projects build with) rather than CMake's default -O3: 25% less compile time per test
#    TU (training_suite for AVX-512: 18 s vs 24.5 s, g++ 12, 2026-12-02), which keeps CI under 40 minutes.
if [ "${GQA_SKIP_RELEASE:-0}" != 1 ]; then
  build_and_test release "$build_root/release" -LE sweep -- \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" -DGQA_BUILD_TESTS=ON -DGQA_BUILD_BENCHMARKS=ON -DGQA_BUILD_EXAMPLES=ON
fi

# 3. The random sweep, in the Release build (its own stage: its time and case counts are reported).
if [ "${GQA_SKIP_RELEASE:-0}" != 1 ] && [ -f "$build_root/release/CTestTestfile.cmake" ]; then
  sweep_start=$(date +%s)
  sweep_log="$build_root/release.sweep.log"
  (cd "$build_root/release" && ctest --output-on-failure -j "$jobs" -L sweep -V) 2>&1 |
    grep -E '^[0-9]+: (gqa_sweep|  passed|FAIL|  case|  reproduce)|tests passed|Failed|Timeout' | tee "$sweep_log"
  rc=${PIPESTATUS[0]}
  cases=$(grep -oE 'of [0-9]+ cases' "$sweep_log" | head -1 | grep -oE '[0-9]+')
  stage sweep "$rc" "${cases:-?} cases on every ISA of this CPU in $(($(date +%s) - sweep_start))s$([ "$rc" != 0 ] && echo ' (FAILED)')"
fi

# 4. Sanitizers: the unit and attention tests under ASan + UBSan (packaging consumers and the header checks
#    are plain compiles, already run in stage 2).
if [ "${GQA_SKIP_SANITIZE:-0}" != 1 ]; then
  export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
  # -Og -g1 (line tables): the tests run as fast as at -O1 (attention_suite under ASan + UBSan: 53 s at -Og,
  # 54 s at -O1, 198 s at -O0) and compile in about 20% less time (2026-12-02, this repository's dev
  # machine); -O1 was itself a third less compile time than -O2 -g.
  # Note [sanitizer build matrix]
  # The core's suites (kernels, masks, caches, non-finite inputs, backward, vector primitives) run under
  # the sanitizers on the vector ISAs, AVX2 and AVX-512 on x86-64: each has its own loads, partial-vector
  # tails and tile shapes. The scalar core (one lane: no tails) runs there through every unit test (their
  # calls without an ISA take the baseline, scalar) and the variant suites. The variant suites add policy
  # code (plans, WGQA's prepare, PGQA's noise, DGQA's state, the backward through policies), which is the
  # same C++ on every ISA and calls the same core entry points: under the sanitizers they run on scalar
  # only. The Release stage runs every suite on every ISA. History: every suite on every ISA at -O1 made
  # the whole CI run 2,814 s; -Og with the variant suites on one ISA, 2,239-2,492 s; dropping the scalar
  # core suites here (7 of 58 TUs and the slowest tests under ASan: 188 of 527 s of test time were
  # scalar's, 2026-12-02) is what keeps it under 40 minutes with a margin. The two suites of the caches
  # (lowp_suite: 16-bit and int8 elements; kv_cache_suite: paged and ragged) run here on AVX-512 only:
  # lowp_suite is the costliest TU of the build (122 s on AVX2 at -Og under ASan + UBSan, 2026-12-07), AVX2's
  # widening loads run here in vec_suite, and AVX2 with those element types and layouts runs under ASan +
  # UBSan in the fuzzer (stage 6), whose cases draw them. CI took 43 minutes on 2026-12-07 before this and
  # stage 6's vector-only runners (docs/design.md §9).
  variant_suites='dgqa_suite|golden_suite|kdgqa_suite|pgqa_suite|registry_suite|static_variants_suite'
  variant_suites+='|training_suite|wgqa_suite'
  sanitize_isas=()
  if [ "$(uname -m)" = x86_64 ]; then
    sanitize_isas=(-DGQA_TEST_ISAS="avx2;avx512" -DGQA_TEST_ONE_ISA=scalar -DGQA_TEST_ISAS_lowp_suite=avx512
                   -DGQA_TEST_ISAS_kv_cache_suite=avx512)
  fi
  # No gqa_sweep here: the fuzzer (stage 6) runs the same per-ISA runner under ASan + UBSan, ~13,000
  # cases a minute against this build's 200 (whose two runner TUs cost ~60 s each to compile; 2026-12-05).
  # The tests in 16 processes rather than one per test (Note [test shards] in tests/CMakeLists.txt: an ASan
  # + UBSan process's start and exit cost a third of the stage's test time); -V prints each shard's tally.
  build_and_test sanitize "$build_root/sanitize" -LE "packaging|headers" -V -- \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-Og -g1 -DNDEBUG" -DGQA_BUILD_SWEEP=OFF \
    -DGQA_TEST_SHARDS=16 \
    -DGQA_TEST_SANITIZE=ON -DGQA_BUILD_TESTS=ON -DGQA_TEST_ONE_ISA_SUITES="$variant_suites" "${sanitize_isas[@]}" \
    -DGQA_BUILD_BENCHMARKS=OFF -DGQA_BUILD_EXAMPLES=OFF
fi

# 5. ThreadSanitizer: concurrent callers and shared policies (threads_test.cpp), the built-in loop and
#    caller loops inside a call (split-KV decode, large tiles, sharding, PGQA's threaded perturbation), and
#    the stateful policies' own tests.
tsan_filter='threads.*:sharding.*:split_kv.*:*attention_suite*split_kv_decode*:*attention_suite*large_tiles*'
tsan_filter+=':*pgqa_suite*one_and_two_threads*:kdgqa.*:dgqa.*:pgqa.*'
# The test files that hold them (GQA_TEST_ONLY: the TSan build compiles nothing else).
tsan_sources='threads_test|sharding_test|kdgqa_test|dgqa_test|pgqa_test|attention_suite|pgqa_suite'
if [ "${GQA_SKIP_TSAN:-0}" != 1 ]; then
  dir="$build_root/tsan"
  log="$dir.log"
  mkdir -p "$dir"
  echo "=== test.sh: tsan: configure + build in $dir"
  # -O1 -g1: what ThreadSanitizer needs (line tables for its reports); the tests run in seconds, the build
  # is the stage's time.
  if ! cmake -S "$repo" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" \
      -DCMAKE_CXX_FLAGS="-fsanitize=thread" \
      -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread" -DCMAKE_DISABLE_FIND_PACKAGE_OpenMP=ON \
      -DGQA_TEST_ISAS=scalar -DGQA_TEST_REDUCED=ON -DGQA_TEST_ONLY="$tsan_sources" -DGQA_BUILD_TESTS=ON \
      -DGQA_BUILD_BENCHMARKS=OFF \
      -DGQA_BUILD_EXAMPLES=OFF; then
    stage tsan 1 "configure FAILED"
  elif ! cmake --build "$dir" --target gqa_tests -j "$jobs"; then
    stage tsan 1 "build FAILED"
  else
    TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}" \
      "$dir/tests/gqa_tests" --gtest_filter="$tsan_filter" --gtest_brief=1 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    passed=$(grep -oE '\[  PASSED  \] [0-9]+ tests?' "$log" | grep -oE '[0-9]+' | tail -1)
    stage tsan "$rc" "${passed:-0} tests passed$([ "$rc" != 0 ] && echo ' (FAILED: see '"$log"')')"
  fi
fi

# 6. The fuzzer: 60 CPU-seconds of gqa_fuzz (one job per core) from the committed seed corpus (new inputs go to
#    a scratch corpus in the build directory; a crash leaves its input there as crash-*).
if [ "${GQA_SKIP_FUZZ:-0}" != 1 ]; then
  fuzz_dir="$build_root/fuzz"
  fuzz_seconds="${GQA_FUZZ_SECONDS:-60}"
  fuzz_isas=()
  if [ "$(uname -m)" = x86_64 ] && grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then
    fuzz_isas=(-DGQA_TEST_ISAS="avx2;avx512")  # the fuzzer runs those of them the CPU has
  fi
  if ! command -v clang++-14 >/dev/null 2>&1; then
    stage fuzz 1 "clang++-14 not found (scripts/install-deps.sh --fuzz)"
  # -O1 -gline-tables-only, as libFuzzer's documentation builds fuzz targets: a crash report has file and
  # line, and the build is the larger part of the stage. On x86-64 the runners of the vector ISAs only
  # (fuzz_isas): the scalar core runs under ASan + UBSan in stage 4 (the unit tests and the variant suites;
  # Note [sanitizer build matrix]), and its runner TU was a third of this stage's build (~90 s of 330).
  elif ! cmake -S "$repo" -B "$fuzz_dir" -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only -DNDEBUG" "${fuzz_isas[@]}" \
      -DGQA_BUILD_FUZZERS=ON -DGQA_BUILD_BENCHMARKS=OFF -DGQA_BUILD_EXAMPLES=OFF -DGQA_INSTALL=OFF >"$fuzz_dir.log" 2>&1 ||
    ! cmake --build "$fuzz_dir" --target gqa_fuzz -j "$jobs" >>"$fuzz_dir.log" 2>&1; then
    tail -30 "$fuzz_dir.log"
    stage fuzz 1 "build FAILED (log: $fuzz_dir.log)"
  else
    # One libFuzzer job per core ($jobs), each for fuzz_seconds / jobs seconds: the same fuzzing CPU time as
    # one job for fuzz_seconds, in 1/jobs of the wall time (the jobs share the scratch corpus). Each job
    # writes fuzz-<n>.log in the build directory; the run fails if any job does.
    mkdir -p "$fuzz_dir/corpus"
    rm -f "$fuzz_dir"/fuzz-*.log
    per_job=$(( (fuzz_seconds + jobs - 1) / jobs ))
    (cd "$fuzz_dir" && ./tests/gqa_fuzz -jobs="$jobs" -workers="$jobs" -max_total_time="$per_job" \
      -print_final_stats=1 corpus "$repo/tests/fuzz/corpus") >"$fuzz_dir.run.log" 2>&1
    rc=$?
    execs=$(cat "$fuzz_dir"/fuzz-*.log 2>/dev/null | grep -oE 'stat::number_of_executed_units: *[0-9]+' |
      awk '{ n += $2 } END { if (NR) print n }')
    if [ "$rc" != 0 ]; then tail -40 "$fuzz_dir.run.log" "$fuzz_dir"/fuzz-*.log; fi
    stage fuzz "$rc" "${execs:-?} executions in $jobs jobs of ${per_job}s$([ "$rc" != 0 ] && echo " (FAILED: $fuzz_dir.run.log, $fuzz_dir/fuzz-*.log)")"
  fi
fi

# 7. NEON under qemu.
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
