#!/usr/bin/env bash
# One-command demo: install dependencies, build ringtrain, train the built-in default model
# (a small GPT on a synthetic Markov source) data-parallel on 2 local processes (`ringtrain
# launch`, TCP on loopback) into runs/demo, then sample from it.
# Usage: scripts/demo.sh [extra `ringtrain train` options, e.g. --set train.steps=200]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-deps.sh

if [[ ! -f build/build.ninja ]]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
fi
cmake --build build --target ringtrain -j2

rm -rf runs/demo
build/cli/ringtrain launch --nproc 2 -- train --run-dir runs/demo "$@"

echo
echo "demo: run summary: $(pwd)/runs/demo/summary.json"
echo "demo: sampling 40 tokens after the prompt \"1 2 3\":"
build/cli/ringtrain generate --model runs/demo --prompt "1 2 3" --tokens 40
