#!/bin/bash
# Killing one rank of a running data-parallel job (SIGKILL to rank 1 of 3) makes the job exit
# non-zero well within the collective deadline, with a message naming rank 1, and leaves no process
# behind: first under `ringtrain launch`, then under mpirun. Also: SIGINT to the launcher stops
# every rank, and launch binds each of 2 ranks to its own CPUs (--bind core) or none (--bind none).
source "$(dirname "$0")/lib.sh"
args=(--set train.steps=1000000 --set train.log_interval=5 --set train.eval_interval=1000000
      --set dist.deadline_s=60)
jobs_pids=()
cleanup() {
  for p in "${jobs_pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  # Ranks are found by the run directory in their command line.
  pkill -9 -f "$WORK/run" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The pid of the ringtrain process of rank $2 whose command line contains $1, by its environment.
rank_pid() {
  for p in $(pgrep -f -- "$1"); do
    if tr '\0' '\n' < /proc/$p/environ 2>/dev/null | grep -qxE "(RANK|OMPI_COMM_WORLD_RANK)=$2"; then
      [ "$(readlink /proc/$p/exe 2>/dev/null)" = "$RT" ] && { echo $p; return; }
    fi
  done
}
wait_progress() {  # wait_progress LOG
  for _ in $(seq 300); do grep -q "step 10/" "$1" 2>/dev/null && return 0; sleep 0.1; done
  cat "$1"; fail "the job did not reach step 10"
}
no_leftovers() {  # no_leftovers RUNDIR
  for _ in $(seq 50); do pgrep -f -- "$1" >/dev/null || return 0; sleep 0.1; done
  ps -ef | grep -- "$1" | grep -v grep; fail "processes of $1 are still running"
}

# kill_rank1 LOG RUNDIR PID: once the job PID (writing LOG, run directory RUNDIR) trains, kills
# its rank 1 with SIGKILL and waits for the job; sets rc (its exit status) and took (seconds).
kill_rank1() {
  wait_progress "$1"
  local victim
  victim=$(rank_pid "$2" 1)
  [ -n "$victim" ] || fail "rank 1 of the job in $2 not found"
  kill -9 "$victim"
  local start
  start=$(date +%s)
  set +e; wait "$3"; rc=$?; set -e
  took=$(( $(date +%s) - start ))
}

# --- ringtrain launch ---------------------------------------------------------------------------
"$RT" launch --nproc 3 -- train "${args[@]}" --run-dir "$WORK/run-launch" > launch.log 2>&1 &
launcher=$!
jobs_pids+=($launcher)
kill_rank1 launch.log "$WORK/run-launch" $launcher
cat launch.log | tail -n 6
[ $rc -ne 0 ] || fail "launch exited 0 after rank 1 was killed"
grep -q "ringtrain launch: rank 1 was killed by signal 9" launch.log || fail "launch did not name rank 1"
[ $took -lt 30 ] || fail "launch took ${took}s to exit (deadline 60s)"
no_leftovers "$WORK/run-launch"
echo "launch: exit $rc after ${took}s, naming rank 1; no process left"

# --- SIGINT to the launcher stops every rank; --bind core gives each rank its own CPUs ------------
cpus_of() { awk '/^Cpus_allowed_list/ {print $2}' "/proc/$1/status"; }
mine=$(cpus_of self)
"$RT" launch --nproc 2 -- train "${args[@]}" --run-dir "$WORK/run-sigint" > sigint.log 2>&1 &
launcher=$!
jobs_pids+=($launcher)
wait_progress sigint.log
r0=$(rank_pid "$WORK/run-sigint" 0); r1=$(rank_pid "$WORK/run-sigint" 1)
[ -n "$r0" ] && [ -n "$r1" ] || fail "ranks of the launch job not found"
c0=$(cpus_of "$r0"); c1=$(cpus_of "$r1")
if [ "$(nproc)" -ge 2 ]; then
  [ "$c0" != "$c1" ] && [ "$c0" != "$mine" ] && [ "$c1" != "$mine" ] ||
    fail "--bind core (default): ranks run on CPUs '$c0' and '$c1' of '$mine'; expected a share each"
  echo "launch --bind core: rank 0 on CPUs $c0, rank 1 on CPUs $c1 (launcher: $mine)"
else
  echo "one CPU: --bind core leaves 2 ranks unbound (CPUs '$c0', '$c1')"
fi
kill -INT $launcher
set +e; wait $launcher; rc=$?; set -e
[ $rc -ne 0 ] || { cat sigint.log; fail "launch exited 0 after SIGINT"; }
no_leftovers "$WORK/run-sigint"
echo "launch: SIGINT forwarded, exit $rc, no process left"

"$RT" launch --nproc 2 --bind none -- train "${args[@]}" --run-dir "$WORK/run-nobind" > nobind.log 2>&1 &
launcher=$!
jobs_pids+=($launcher)
wait_progress nobind.log
r0=$(rank_pid "$WORK/run-nobind" 0); r1=$(rank_pid "$WORK/run-nobind" 1)
[ -n "$r0" ] && [ -n "$r1" ] || fail "ranks of the --bind none job not found"
[ "$(cpus_of "$r0")" = "$mine" ] && [ "$(cpus_of "$r1")" = "$mine" ] ||
  fail "--bind none: ranks run on CPUs '$(cpus_of "$r0")' and '$(cpus_of "$r1")', expected all of '$mine'"
kill -INT $launcher
set +e; wait $launcher; set -e
no_leftovers "$WORK/run-nobind"
echo "launch --bind none: both ranks on all CPUs ($mine)"

# --- mpirun -------------------------------------------------------------------------------------
if ! command -v mpirun >/dev/null; then echo "mpirun not installed: the mpirun leg is not run"; exit 0; fi
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe -np 3 -x RINGTRAIN_THREADS \
  "$RT" train "${args[@]}" --run-dir "$WORK/run-mpi" > mpi.log 2>&1 &
mpi=$!
jobs_pids+=($mpi)
kill_rank1 mpi.log "$WORK/run-mpi" $mpi
tail -n 12 mpi.log
[ $rc -ne 0 ] || fail "mpirun exited 0 after rank 1 was killed"
grep -qE "rank 1 (with PID [0-9]+ )?on node .* (exited on signal 9|killed)|rank 1[^0-9].*(died|disconnected|killed)" mpi.log ||
  fail "mpirun's output does not name rank 1"
[ $took -lt 30 ] || fail "mpirun took ${took}s to exit (deadline 60s)"
no_leftovers "$WORK/run-mpi"
echo "mpirun: exit $rc after ${took}s, naming rank 1; no process left"
