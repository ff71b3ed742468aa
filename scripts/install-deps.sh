#!/usr/bin/env bash
# Installs the Debian packages ringtrain needs to build and test. Idempotent: when everything is
# already installed it says so and never touches apt.
# Usage: scripts/install-deps.sh [--bench]
#   --bench  also python3-torch and python3-yaml, for the PyTorch comparison (bench/gpt_vs_pytorch.sh)
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libopenblas-openmp-dev libyaml-cpp-dev libcli11-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev zlib1g-dev libssl-dev libsqlite3-dev
  libprotobuf-dev protobuf-compiler libboost-dev libboost-system-dev
  openmpi-bin libopenmpi-dev
  iproute2  # network namespaces: the TCP transport test, bench scaling --emulate (ip, tc)
  gnuplot-nox  # bench scaling draws its plots (SVG, PNG) with gnuplot
  munge slurmctld slurmd slurm-client  # the real-Slurm end-to-end test (daemons on localhost)
  python3  # the end-to-end test scripts read JSON with /usr/bin/python3
  clang-14 libclang-rt-14-dev  # libFuzzer for the parameter server's frame decoder (tests/e2e/fuzz_frames.sh)
)

for arg in "$@"; do
  case "$arg" in
    --bench) packages+=(python3-torch python3-yaml) ;;
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install-deps: unknown option: $arg (try --help)" >&2; exit 2 ;;
  esac
done

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

sudo_cmd=()
if [[ "$(id -u)" -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo_cmd=(sudo)
  else
    echo "install-deps: missing packages: ${missing[*]}" >&2
    echo "install-deps: not root and no sudo; install them as root:" >&2
    echo "  apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
fi

echo "install-deps: installing ${#missing[@]} package(s): ${missing[*]}"
"${sudo_cmd[@]}" apt-get update
"${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
echo "install-deps: done"
