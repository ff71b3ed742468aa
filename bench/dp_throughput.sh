#!/bin/bash
# Data-parallel throughput on one machine (issue 5's benchmark): `ringtrain bench train` with
# 1 rank x 1 thread against 2 ranks x 1 thread at the same per-rank batch, the 2 ranks started by
# mpirun and by `ringtrain launch` (both on the default transport: shared memory on one host; add
# --set dist.transport=mpi|tcp to compare). Prints aggregate tokens/s,
# the ratio to 1 rank, and the share of each step spent in exposed (not hidden) communication:
# all of the wait after backward ("exposed"), and the part left after the slowest rank finished
# its backward ("transfer"; the rest is load imbalance between the ranks).
# Usage: bench/dp_throughput.sh [rounds (default 3)] [extra --set key=value ...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RT=${RINGTRAIN:-build/cli/ringtrain}
rounds=${1:-3}
shift || true
sets=("$@")
steps=${STEPS:-40}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
field() { /usr/bin/python3 -c "import json,sys; d=json.loads(sys.stdin.read().split('] ',1)[-1]); print(d[sys.argv[1]])" "$1"; }
printf "%-6s %-22s %12s %8s %10s %10s %10s\n" round runner tokens/s ratio ms/step exposed transfer
declare -A ratios exposeds
for r in $(seq "$rounds"); do
  one=$(RINGTRAIN_THREADS=1 "$RT" bench train --steps "$steps" --json "${sets[@]}")
  base=$(echo "$one" | field tokens_per_s)
  printf "%-6s %-22s %12.0f %8s %10.1f %10s\n" "$r" "1 rank x 1 thread" "$base" "1.00" "$(echo "$one" | field ms_per_step)" "-"
  for runner in mpirun launch; do
    if [ $runner = mpirun ]; then
      command -v mpirun >/dev/null || continue
      out=$(mpirun --oversubscribe -np 2 -x RINGTRAIN_THREADS=1 "$RT" bench train --steps "$steps" --json "${sets[@]}")
    else
      out=$(RINGTRAIN_THREADS=1 "$RT" launch --nproc 2 -- bench train --steps "$steps" --json "${sets[@]}" 2>/dev/null | grep '^\[rank 0\] {')
    fi
    tps=$(echo "$out" | field tokens_per_s)
    ratios[$runner]+="$(/usr/bin/python3 -c "print($tps/$base)") "
    exposeds[$runner]+="$(echo "$out" | field exposed_comm_share) "
    printf "%-6s %-22s %12.0f %8.2f %10.1f %9.1f%% %9.1f%%\n" "$r" "2 ranks x 1 ($runner)" "$tps" \
      "$(/usr/bin/python3 -c "print($tps/$base)")" "$(echo "$out" | field ms_per_step)" \
      "$(/usr/bin/python3 -c "print(100*$(echo "$out" | field exposed_comm_share))")" \
      "$(/usr/bin/python3 -c "print(100*$(echo "$out" | field exposed_transfer_share))")"
  done
done
# Rounds alternate the three runs, so all see the same state of the host; the medians over rounds
# are the figures to quote (single rounds swing with the 1-rank baseline).
for runner in "${!ratios[@]}"; do
  /usr/bin/python3 -c "import statistics,sys; r=[float(x) for x in sys.argv[2].split()]; e=[float(x) for x in sys.argv[3].split()]; print(f'median over {len(r)} rounds, 2 ranks ({sys.argv[1]}): ratio {statistics.median(r):.2f}, exposed {100*statistics.median(e):.1f}%')" \
    "$runner" "${ratios[$runner]}" "${exposeds[$runner]}"
done
