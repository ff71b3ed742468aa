#!/usr/bin/env bash
# Installs dependencies, builds everything (warnings are errors) and runs the test suite.
# Usage: scripts/test.sh [extra ctest options, e.g. -R Collectives]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-deps.sh

if [[ ! -f build/build.ninja ]] || ! grep -q '^RINGTRAIN_WERROR:BOOL=ON$' build/CMakeCache.txt 2>/dev/null; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DRINGTRAIN_WERROR=ON
fi
cmake --build build -j2

cd build
status=0
ctest --output-on-failure -j2 "$@" || status=$?
exit "$status"
