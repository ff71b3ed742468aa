#!/usr/bin/env bash
# GPT training speed, ringtrain vs eager PyTorch, both pinned to one thread (issue 2).
# Usage: bench/gpt_vs_pytorch.sh            (STEPS=N to change the timed steps, default 20;
#                                            RINGTRAIN=path to use another binary)
# Needs Debian's python3-torch and python3-yaml for /usr/bin/python3 (scripts/install-deps.sh --bench).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 RINGTRAIN_THREADS=1
STEPS="${STEPS:-20}"
RINGTRAIN="${RINGTRAIN:-build/cli/ringtrain}"
PY=/usr/bin/python3

if ! "$PY" -c 'import torch, yaml' >/dev/null 2>&1; then
  echo "gpt_vs_pytorch: $PY cannot import torch (and yaml); the PyTorch reference needs python3-torch:" >&2
  echo "  sudo apt-get install python3-torch python3-yaml   (or: scripts/install-deps.sh --bench)" >&2
  exit 1
fi
if [[ ! -x "$RINGTRAIN" ]]; then
  echo "gpt_vs_pytorch: $RINGTRAIN not found; build it first (cmake --build build --target ringtrain)" >&2
  exit 1
fi

field() {  # field JSON KEY -> value of KEY in a one-line JSON object
  "$PY" -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"
}

rows=()
for cfg in gpt_s gpt_m; do
  file="bench/configs/${cfg}.yaml"
  echo "== $cfg: $STEPS steps, 1 thread" >&2
  rt_json="$("$RINGTRAIN" bench train --config "$file" --steps "$STEPS" --json | tail -n 1)"
  echo "   ringtrain: $rt_json" >&2
  pt_json="$("$PY" bench/pytorch_gpt.py --config "$file" --steps "$STEPS" --json | tail -n 1)"
  echo "   pytorch:   $pt_json" >&2
  rows+=("$cfg $(field "$rt_json" tokens_per_s) $(field "$pt_json" tokens_per_s) $(field "$pt_json" torch)")
done

echo
printf '%-8s %18s %18s %8s\n' config "ringtrain tok/s" "pytorch tok/s" ratio
for row in "${rows[@]}"; do
  read -r cfg rt pt ver <<<"$row"
  "$PY" -c 'import sys; c, rt, pt = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]); print("%-8s %18.0f %18.0f %7.2fx" % (c, rt, pt, rt / pt))' "$cfg" "$rt" "$pt"
done
echo "(1 thread each; ratio = ringtrain / pytorch; torch $ver; STEPS=$STEPS)"
