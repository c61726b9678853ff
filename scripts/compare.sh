#!/usr/bin/env bash
# scripts/compare.sh [gqa-compare options]: THE first command. Compares the attention head-grouping schemes
# (MHA, MQA, GQA, KDGQA, DGQA, PGQA, WGQA, SQA) on model layers and prints the comparison tables.
#   1. scripts/install-deps.sh --plot (a no-op when everything is installed; gnuplot-nox draws the plots)
#   2. configures a Release build and builds only gqa-compare (-j$(nproc))
#   3. runs gqa-compare with these arguments (default: the ViT-B/16, Llama prefill and Llama decode presets,
#      about a minute on 2 cores); it prints the tables and where table.md, compare.json, compare.csv and
#      the PNGs are (default folder <repo>/build/compare-results, or --out DIR)
# Idempotent and non-interactive. `bash scripts/compare.sh --help` lists gqa-compare's options.
# Environment: GQA_COMPARE_BUILD_DIR (default <repo>/build/compare), GQA_JOBS (default: nproc),
# GQA_SKIP_DEPS=1 (do not run install-deps.sh).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${GQA_COMPARE_BUILD_DIR:-$repo/build/compare}"
out="$repo/build/compare-results"
jobs="${GQA_JOBS:-$(nproc 2>/dev/null || echo 2)}"

say() { printf 'compare.sh: %s\n' "$*" >&2; }

# 1. Dependencies. Without root the install may fail; carry on if the build tools are there (gqa-compare
#    says itself when gnuplot is missing, and still writes the table, JSON and CSV).
if [ "${GQA_SKIP_DEPS:-0}" != 1 ]; then
  if ! bash "$repo/scripts/install-deps.sh" --plot >&2; then
    say "install-deps.sh failed; continuing with what is installed"
  fi
fi
for tool in cmake g++ make; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    say "'$tool' is missing: run 'sudo bash scripts/install-deps.sh --plot' first"
    exit 1
  fi
done

# 2. Configure (cheap when the cache exists) and build only gqa-compare.
mkdir -p "$build"
say "configuring Release build in $build"
if ! cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGQA_BUILD_BENCHMARKS=ON -DGQA_BUILD_TESTS=OFF \
  -DGQA_BUILD_EXAMPLES=OFF -DGQA_INSTALL=OFF >"$build/configure.log" 2>&1; then
  cat "$build/configure.log" >&2
  say "configure FAILED (log: $build/configure.log)"
  exit 1
fi
say "building gqa-compare (-j$jobs)"
if ! cmake --build "$build" --target gqa-compare -j "$jobs" >"$build/build.log" 2>&1; then
  tail -n 60 "$build/build.log" >&2
  say "build FAILED (log: $build/build.log)"
  exit 1
fi

# 3. Run. --out first so that an --out among the caller's arguments wins.
exe="$build/bench/compare/gqa-compare"
exec "$exe" --out "$out" "$@"
