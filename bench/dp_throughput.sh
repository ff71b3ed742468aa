#!/bin/bash
# Data-parallel throughput on one machine (issue 5's benchmark): 2 ranks x 1 thread against 1 rank x
# 1 thread at the same per-rank batch, the 2 ranks started by mpirun and by `ringtrain launch`
# (both on the default transport: shared memory on one host; add --set dist.transport=mpi|tcp to
# compare).
#
# The reference, 1 rank alone, is timed two ways:
#   - "interleaved" (the figure to quote): inside each 2-rank job, `bench train --vs-one-rank` has
#     rank 0 train alone in 10-step blocks that alternate with the job's blocks, the other rank
#     asleep; both sides see the same state of the host;
#   - "separate": a 1-rank run just before, as a separate process (drifts with the host).
# Columns: aggregate tokens/s; speed-up over each reference; the share of the step spent waiting
# after backward ("exposed": the gradient sync, the loss average and the wait for the slower rank)
# and the part of it left once the slower rank's backward had ended ("transfer"); and how much
# slower forward+backward ran with both ranks computing than alone ("compute +").
# Usage: bench/dp_throughput.sh [rounds (default 3)] [extra --set key=value ...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RT=${RINGTRAIN:-build/cli/ringtrain}
rounds=${1:-3}
shift || true
sets=("$@")
steps=${STEPS:-100}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
py=/usr/bin/python3
field() { $py -c "import json,sys; d=json.loads(sys.stdin.read().split('] ',1)[-1]); print(d[sys.argv[1]])" "$1"; }
printf "%-6s %-22s %10s %12s %10s %9s %9s %10s\n" round runner tokens/s interleaved separate exposed transfer "compute +"
declare -A ratios exposeds
for r in $(seq "$rounds"); do
  one=$(RINGTRAIN_THREADS=1 "$RT" bench train --steps "$steps" --json "${sets[@]}")
  base=$(echo "$one" | field tokens_per_s)
  printf "%-6s %-22s %10.0f %12s %10s\n" "$r" "1 rank x 1 thread" "$base" "" "1.00"
  for runner in mpirun launch; do
    if [ $runner = mpirun ]; then
      command -v mpirun >/dev/null || continue
      out=$(mpirun --oversubscribe -np 2 -x RINGTRAIN_THREADS=1 "$RT" bench train --steps "$steps" --vs-one-rank --json "${sets[@]}")
    else
      out=$(RINGTRAIN_THREADS=1 "$RT" launch --nproc 2 -- bench train --steps "$steps" --vs-one-rank --json "${sets[@]}" 2>/dev/null |
        grep '^\[rank 0\] {')
    fi
    echo "$out" | $py -c "
import json, sys
d = json.loads(sys.stdin.read().split('] ', 1)[-1])
r, base = sys.argv[1], float(sys.argv[3])
print('%-6s %-22s %10.0f %12.2f %10.2f %8.1f%% %8.1f%% %9.1f%%' % (r, sys.argv[2], d['tokens_per_s'], d['speedup_vs_one_rank'],
      d['tokens_per_s'] / base, 100 * d['exposed_comm_share'], 100 * d['exposed_transfer_share'],
      100 * (d['compute_ms_per_step'] / d['one_rank_compute_ms_per_step'] - 1)))" "$r" "2 ranks x 1 ($runner)" "$base"
    ratios[$runner]+="$(echo "$out" | field speedup_vs_one_rank) "
    exposeds[$runner]+="$(echo "$out" | field exposed_comm_share) "
  done
done
for runner in "${!ratios[@]}"; do
  $py -c "import statistics,sys; r=[float(x) for x in sys.argv[2].split()]; e=[float(x) for x in sys.argv[3].split()]; print(f'median over {len(r)} rounds, 2 ranks ({sys.argv[1]}): speed-up {statistics.median(r):.2f}x over 1 rank interleaved, exposed {100*statistics.median(e):.1f}%')" \
    "$runner" "${ratios[$runner]}" "${exposeds[$runner]}"
done
