#!/bin/bash
# Training with parameter servers under Open MPI: `examples/mpirun/train_ps.sh [train args]`.
# Starts PS (default 2) `ringtrain ps` shards on this host, then NP (default 2) workers with
# mpirun, and stops the servers when the workers end (also on failure or Ctrl-C). The shared token
# is RINGTRAIN_TOKEN, or a fresh random one. Consistency: `--set sync.consistency=ssp` etc.
# On a cluster, start each `ringtrain ps --listen ADDR:PORT --shard i/k` on the server hosts
# instead and give the workers `--set sync.ps_hosts=ADDR0:PORT0,ADDR1:PORT1,...`.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RINGTRAIN=${RINGTRAIN:-$here/../../build/cli/ringtrain}
[ -x "$RINGTRAIN" ] || RINGTRAIN=ringtrain
NP=${NP:-2}
PS=${PS:-2}
BASE_PORT=${PS_BASE_PORT:-29600}
export RINGTRAIN_TOKEN=${RINGTRAIN_TOKEN:-$(openssl rand -hex 32)}
servers=()
hosts=""
trap 'for p in "${servers[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait' EXIT
for i in $(seq 0 $((PS - 1))); do
  "$RINGTRAIN" ps --listen 127.0.0.1:$((BASE_PORT + i)) --shard "$i/$PS" &
  servers+=($!)
  hosts+="${hosts:+,}127.0.0.1:$((BASE_PORT + i))"
done
extra=(--oversubscribe -x RINGTRAIN_TOKEN)
[ "$(id -u)" -eq 0 ] && extra+=(--allow-run-as-root)
[ -n "${RINGTRAIN_THREADS:-}" ] && extra+=(-x RINGTRAIN_THREADS)
mpirun "${extra[@]}" -np "$NP" "$RINGTRAIN" train --set sync.ps_hosts="$hosts" "$@"
