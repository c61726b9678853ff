#!/usr/bin/env bash
# scripts/install-deps.sh [--neon] [--mpi] [--uptrain] [--plot] [--fuzz] [--dry-run]: install what gqa needs to build, test and benchmark
# on Debian/Ubuntu. Idempotent and non-interactive: runs `apt-get update` + `apt-get install` only for the
# packages that are missing, as root directly or through sudo otherwise.
#   (always)  cmake g++ make libeigen3-dev libgtest-dev googletest libbenchmark-dev
#             (OpenMP: g++ ships libgomp, nothing extra is needed)
#   --neon    g++-aarch64-linux-gnu qemu-user     (cross-build and run the NEON tests, scripts/test-neon.sh)
#   --mpi     libopenmpi-dev openmpi-bin           (examples/mpi_heads: attention heads sharded over MPI ranks)
#   --uptrain dataset-fashion-mnist zlib1g-dev     (examples/uptrain: Fashion-MNIST's gzip-compressed IDX files in
#                                                  /usr/share/datasets/fashion-mnist, and zlib to read them)
#   --plot    gnuplot-nox                          (plots of the comparison)
#   --fuzz    clang-14 libclang-rt-14-dev          (the libFuzzer target, tests/fuzz)
set -euo pipefail

packages=(cmake g++ make libeigen3-dev libgtest-dev googletest libbenchmark-dev)
dry_run=0
for arg in "$@"; do
  case "$arg" in
    --neon) packages+=(g++-aarch64-linux-gnu qemu-user) ;;
    --mpi) packages+=(libopenmpi-dev openmpi-bin) ;;
    --uptrain) packages+=(dataset-fashion-mnist zlib1g-dev) ;;
    --plot) packages+=(gnuplot-nox) ;;
    --fuzz) packages+=(clang-14 libclang-rt-14-dev) ;;
    --dry-run) dry_run=1 ;;
    -h | --help)
      sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "install-deps.sh: unknown option '$arg' (use --neon, --mpi, --uptrain, --plot, --fuzz, --dry-run)" >&2
      exit 2
      ;;
  esac
done

is_installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

missing=()
for p in "${packages[@]}"; do
  is_installed "$p" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps.sh: all ${#packages[@]} packages already installed (${packages[*]})"
  exit 0
fi
echo "install-deps.sh: missing: ${missing[*]}"
if [ "$dry_run" = 1 ]; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps.sh: apt-get not found; install these with your package manager: ${missing[*]}" >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo -n)  # never prompt: fail instead of hanging in CI
else
  echo "install-deps.sh: not root and no sudo; run as root: apt-get install ${missing[*]}" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "install-deps.sh: installed ${missing[*]}"
