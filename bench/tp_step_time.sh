#!/bin/bash
# Tensor-parallel step time and traffic (issue 7's benchmark) for GPT-M (bench/configs/gpt_m.yaml,
# 6 heads) on one machine: `ringtrain bench train` at TP=1 (one process with one thread, and with
# two threads: the same cores as TP=2) and at TP=2 (two processes with one thread each, started by
# mpirun and by `ringtrain launch`), at the same batch. The ratio is against TP=1 with 2 threads.
# Prints ms/step, tokens/s, and per step the payload each rank all-reduced in the TP group next to
# the closed form (4 all-reduces of B*T*C per block + embedding, output layer and
# cross-entropy), and the DP gradient payload.
# Usage: bench/tp_step_time.sh [rounds (default 3)] [extra --set key=value ...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RT=${RINGTRAIN:-build/cli/ringtrain}
rounds=${1:-3}
shift || true
sets=(--config bench/configs/gpt_m.yaml "$@")
steps=${STEPS:-8}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
field() { /usr/bin/python3 -c "import json,sys; d=json.loads(sys.stdin.read().split('] ',1)[-1]); print(d[sys.argv[1]])" "$1"; }
mb() { /usr/bin/python3 -c "print('%.2f' % ($1 / 1e6))"; }
printf "%-6s %-26s %9s %9s %7s %12s %12s %12s\n" round layout ms/step tok/s ratio "TP MB/step" "closed form" "DP MB/step"
for r in $(seq "$rounds"); do
  one=$("$RT" bench train --steps "$steps" --json "${sets[@]}" --set threads=2)
  base=$(echo "$one" | field ms_per_step)
  single=$("$RT" bench train --steps "$steps" --json "${sets[@]}" --set threads=1)
  printf "%-6s %-26s %9.0f %9.0f %7.2f %12s %12s %12s\n" "$r" "TP=1 (1 process x 1 thr)" \
    "$(echo "$single" | field ms_per_step)" "$(echo "$single" | field tokens_per_s)" \
    "$(/usr/bin/python3 -c "print($base/$(echo "$single" | field ms_per_step))")" 0 0 0
  printf "%-6s %-26s %9.0f %9.0f %7s %12s %12s %12s\n" "$r" "TP=1 (1 process x 2 thr)" "$base" \
    "$(echo "$one" | field tokens_per_s)" "1.00" 0 0 0
  for runner in mpirun launch; do
    if [ $runner = mpirun ]; then
      command -v mpirun >/dev/null || continue
      out=$(mpirun --oversubscribe -np 2 "$RT" bench train --steps "$steps" --json \
            "${sets[@]}" --set parallel.tensor=2 --set threads=1)
    else
      out=$("$RT" launch --nproc 2 -- bench train --steps "$steps" --json "${sets[@]}" \
            --set parallel.tensor=2 --set threads=1 2>/dev/null | grep '^\[rank 0\] {')
    fi
    ms=$(echo "$out" | field ms_per_step)
    closed=$(/usr/bin/python3 -c "print($(echo "$out" | field tp_closed_form_blocks_bytes) + $(echo "$out" | field tp_closed_form_embedding_output_ce_bytes))")
    printf "%-6s %-26s %9.0f %9.0f %7.2f %12s %12s %12s\n" "$r" "TP=2 (2 x 1 thr, $runner)" "$ms" \
      "$(echo "$out" | field tokens_per_s)" "$(/usr/bin/python3 -c "print($base/$ms)")" \
      "$(mb "$(echo "$out" | field tp_allreduce_bytes_per_step)")" "$(mb "$closed")" \
      "$(mb "$(echo "$out" | field dp_allreduce_bytes_per_step)")"
  done
done
