#!/usr/bin/env bash
# scripts/compile-cost.sh: the compile cost of one translation unit that includes <gqa/gqa.hpp> and makes
# one gqa::forward call (the README's "compile time" figure), for this tree with run-time dispatch, the
# same tree with -DGQA_NO_DISPATCH, and the tree of an earlier commit (default: the one before dispatch).
#
#   scripts/compile-cost.sh [--rounds N] [--before REV] [--instructions] [--cxx COMPILER]
#
# Prints the user CPU seconds of each compile, round by round with the three builds interleaved (a loaded
# machine slows them alike), the median of each and the ratios of the medians. --instructions also counts
# the compiler's instructions with valgrind's cachegrind (deterministic, unlike seconds; ~2 minutes per
# compile), which needs valgrind (`apt-get install valgrind`). Needs git and GNU time (/usr/bin/time).
set -euo pipefail

rounds=6
before="f7c08c3^1"   # the last commit before run-time dispatch (issue 11)
instructions=0
cxx="${CXX:-g++}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --before) before="$2"; shift 2 ;;
    --instructions) instructions=1; shift ;;
    --cxx) cxx="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "compile-cost.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "compile-cost.sh: --rounds takes a positive integer, not '$rounds'" >&2; exit 2; }
[[ -x /usr/bin/time ]] || { echo "compile-cost.sh: needs GNU time (/usr/bin/time; apt-get install time)" >&2; exit 2; }

repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/before"
git -C "$repo" archive "$before" include | tar -x -C "$work/before"
cat > "$work/tu.cpp" <<'EOF'
#include <gqa/gqa.hpp>
#include <vector>
int main() {
  const gqa::index_t b = 1, s = 16, hq = 4, hkv = 2, d = 8;
  std::vector<float> q(b * s * hq * d, 0.1f), k(b * s * hkv * d, 0.2f), v(b * s * hkv * d, 0.3f), o(q.size());
  auto V = [&](std::vector<float>& x, gqa::index_t h) { return gqa::bshd(x.data(), b, s, h, d); };
  gqa::forward(gqa::gqa_policy{}, V(q, hq), V(k, hkv), V(v, hkv), V(o, hq));
  return o[0] > 0 ? 0 : 1;
}
EOF

labels=(before now now_nodispatch)
incs=("$work/before/include" "$repo/include" "$repo/include")
extra=("" "" "-DGQA_NO_DISPATCH")
build() {  # build <i> [prefix...]: compiles the TU as build i, under the given command prefix
  local i=$1
  shift
  # $cxx unquoted: it may carry words of its own (e.g. "ccache g++")
  "$@" $cxx -O2 -std=c++20 "-I${incs[$i]}" ${extra[$i]} -c "$work/tu.cpp" -o /dev/null
}

echo "$($cxx --version | head -1); TU: #include <gqa/gqa.hpp> + one gqa::forward, -O2 -std=c++20, no ISA flags"
echo "before = $before ($(git -C "$repo" log -1 --format=%h "$before")), now = $(git -C "$repo" log -1 --format=%h HEAD)$(git -C "$repo" diff --quiet HEAD -- include || echo ' + uncommitted include/ changes')"
declare -A secs
for ((r = 1; r <= rounds; ++r)); do
  line="round $r:"
  for i in 0 1 2; do
    t=$( { build $i /usr/bin/time -f %U >/dev/null; } 2>&1 | tail -1) ||
      { echo "compile-cost.sh: the ${labels[$i]} build does not compile" >&2; exit 1; }
    secs[$i]+="$t "
    line+=" ${labels[$i]}=${t}s"
  done
  echo "$line"
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
m0=$(echo "${secs[0]}" | median); m1=$(echo "${secs[1]}" | median); m2=$(echo "${secs[2]}" | median)
echo "median user s: before $m0, now $m1, now with -DGQA_NO_DISPATCH $m2"
awk -v a="$m0" -v b="$m1" -v c="$m2" 'BEGIN {printf "now / before %.2fx, now / now_nodispatch %.2fx\n", b / a, b / c}'

if [[ $instructions == 1 ]]; then
  command -v valgrind >/dev/null || { echo "compile-cost.sh: --instructions needs valgrind (apt-get install valgrind)" >&2; exit 2; }
  declare -a ir
  for i in 0 1 2; do
    build $i valgrind --tool=cachegrind --cache-sim=no --trace-children=yes --cachegrind-out-file=/dev/null \
      > "$work/cg$i.log" 2>&1 || { echo "compile-cost.sh: the ${labels[$i]} build does not compile" >&2; exit 1; }
    ir[$i]=$(grep -a "I *refs" "$work/cg$i.log" | tr -d , | awk '{s += $NF} END {printf "%.2f", s / 1e9}')
    echo "instructions (cachegrind, compiler driver and cc1plus): ${labels[$i]} ${ir[$i]} G"
  done
  awk -v a="${ir[0]}" -v b="${ir[1]}" -v c="${ir[2]}" 'BEGIN {printf "now / before %.2fx, now / now_nodispatch %.2fx (instructions)\n", b / a, b / c}'
fi
