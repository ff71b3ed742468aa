#!/bin/bash
# Data-parallel training on 2 processes under Open MPI: `examples/mpirun/train.sh [train args]`.
# mpirun starts the ranks; ringtrain reads OMPI_COMM_WORLD_* and uses the MPI transport, or shared
# memory (started over MPI) when every rank is on one host. With no arguments it trains the
# built-in default. RINGTRAIN names the binary (default: the build tree's,
# else ringtrain on PATH); NP the process count (default 2).
# Tensor parallelism: `NP=4 examples/mpirun/train.sh --set parallel.tensor=2` trains TP=2 x DP=2
# (adjacent ranks form a tensor-parallel group).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RINGTRAIN=${RINGTRAIN:-$here/../../build/cli/ringtrain}
[ -x "$RINGTRAIN" ] || RINGTRAIN=ringtrain
NP=${NP:-2}
extra=()
# Open MPI refuses to run as root unless told, and a 2-core machine needs --oversubscribe for
# more ranks than cores.
[ "$(id -u)" -eq 0 ] && extra+=(--allow-run-as-root)
extra+=(--oversubscribe)
# The ranks on a node split its cores unless RINGTRAIN_THREADS says otherwise.
[ -n "${RINGTRAIN_THREADS:-}" ] && extra+=(-x RINGTRAIN_THREADS)
exec mpirun "${extra[@]}" -np "$NP" "$RINGTRAIN" train "$@"
