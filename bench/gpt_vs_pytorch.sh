#!/usr/bin/env bash
# GPT training speed, ringtrain vs eager PyTorch, both pinned to one thread (issue 2).
# Usage: bench/gpt_vs_pytorch.sh   (STEPS=N timed steps, default 20; REPEATS=N alternating runs, default 3;
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

# Host noise on shared machines is +-10% between runs, so the two implementations alternate
# REPEATS times and each run is summarised by its median step time; the table gives the median
# over repeats and the ratio of those medians.
REPEATS="${REPEATS:-3}"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for cfg in gpt_s gpt_m; do
  file="bench/configs/${cfg}.yaml"
  for rep in $(seq "$REPEATS"); do
    echo "== $cfg repeat $rep/$REPEATS: $STEPS steps, 1 thread" >&2
    rt_json="$("$RINGTRAIN" bench train --config "$file" --steps "$STEPS" --json | tail -n 1)"
    echo "   ringtrain: $rt_json" >&2
    pt_json="$("$PY" bench/pytorch_gpt.py --config "$file" --steps "$STEPS" --json | tail -n 1)"
    echo "   pytorch:   $pt_json" >&2
    echo "$cfg ringtrain $rt_json" >>"$results"
    echo "$cfg pytorch $pt_json" >>"$results"
  done
done

"$PY" - "$results" "$STEPS" "$REPEATS" <<'PYEOF'
import json, statistics, sys
runs = {}
torch_version = "?"
for line in open(sys.argv[1]):
    cfg, impl, js = line.split(" ", 2)
    d = json.loads(js)
    torch_version = d.get("torch", torch_version)
    tps = d["tokens_per_step"] / (d["ms_per_step_median"] / 1000.0)
    runs.setdefault(cfg, {}).setdefault(impl, []).append(tps)
print()
print("%-8s %18s %18s %8s   %s" % ("config", "ringtrain tok/s", "pytorch tok/s", "ratio", "per-repeat ratios"))
for cfg, r in runs.items():
    rt, pt = statistics.median(r["ringtrain"]), statistics.median(r["pytorch"])
    per = " ".join("%.2f" % (a / b) for a, b in zip(r["ringtrain"], r["pytorch"]))
    print("%-8s %18.0f %18.0f %7.2fx   %s" % (cfg, rt, pt, rt / pt, per))
print("(1 thread each; tokens/s from each run's median step time, median over %s alternating repeats;"
      " ratio = ringtrain / pytorch; torch %s; STEPS=%s)" % (sys.argv[3], torch_version, sys.argv[2]))
PYEOF
