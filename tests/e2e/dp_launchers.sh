#!/bin/bash
# The same short data-parallel training started by `ringtrain launch --nproc 2` (TCP transport, and
# shared memory, the default on one host) and by `mpirun -np 2` (MPI transport) ends with the same
# final losses, bitwise (the same ring algorithm sums in the same order over every transport), and
# all match one process at the global batch up to float rounding. Only rank 0 prints progress and
# writes the run directory.
source "$(dirname "$0")/lib.sh"
args=(--set train.steps=30 --set train.eval_interval=15 --set train.log_interval=10 --set dist.bucket_mb=0.05
      --set model.dropout=0.1 --set dist.deadline_s=60)

"$RT" launch --nproc 2 -- train "${args[@]}" --set dist.transport=tcp --run-dir "$WORK/launch" > launch.log 2>&1 ||
  { cat launch.log; fail "launch --nproc 2 failed"; }
grep -q "^\[rank 0\] done: 30 steps" launch.log || { cat launch.log; fail "no summary line from rank 0"; }
! grep -q "^\[rank 1\] step" launch.log || { cat launch.log; fail "rank 1 printed progress"; }
grep -q "data parallel: 2 ranks, gradient sync allreduce (tcp" launch.log || { cat launch.log; fail "no data-parallel line"; }
[ -f "$WORK/launch/summary.json" ] || fail "launch: no summary.json"

"$RT" train "${args[@]}" --set train.batch_size=32 --run-dir "$WORK/one" > one.log 2>&1 || { cat one.log; fail "one process failed"; }

compare() {  # compare NAME_A DIR_A NAME_B DIR_B TOLERANCE(0: bitwise)
  /usr/bin/python3 - "$@" <<'PY'
import json, sys
na, da, nb, db, tol = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
a = json.load(open(da + "/summary.json")); b = json.load(open(db + "/summary.json"))
for k in ("final_train_loss", "final_val_loss"):
    x, y = a[k], b[k]
    ok = x == y if tol == 0 else abs(x - y) <= tol * abs(y)
    print(f"{k}: {na} {x!r}  {nb} {y!r}  {'same' if x == y else 'diff %.3g' % abs(x - y)}")
    if not ok: sys.exit(f"FAIL: {k} differs between {na} and {nb}")
PY
}
compare launch "$WORK/launch" one-process "$WORK/one" 1e-5
"$RT" launch --nproc 2 -- train "${args[@]}" --run-dir "$WORK/shm" > shm.log 2>&1 || { cat shm.log; fail "launch (shm) failed"; }
grep -q "gradient sync allreduce ($LOCAL_TRANSPORT" shm.log || { cat shm.log; fail "launch on one host did not default to $LOCAL_TRANSPORT"; }
compare launch-tcp "$WORK/launch" launch-shm "$WORK/shm" 0

# bench train --vs-one-rank: rank 0 alone, in blocks between the job's, at the per-rank batch.
"$RT" launch --nproc 2 -- bench train --steps 4 --block 2 --vs-one-rank --json > vs1.log 2>&1 || { cat vs1.log; fail "bench train --vs-one-rank failed"; }
grep '^\[rank 0\] {' vs1.log | /usr/bin/python3 -c '
import json, sys
d = json.loads(sys.stdin.read().split("] ", 1)[1])
assert d["one_rank_tokens_per_step"] * 2 == d["tokens_per_step"], d
assert 0.3 < d["speedup_vs_one_rank"] < 3, d
assert d["one_rank_compute_ms_per_step"] > 0 and d["compute_ms_per_step"] > 0, d
print("bench train --vs-one-rank: speed-up %.2f over 1 rank" % d["speedup_vs_one_rank"])' || { cat vs1.log; fail "bench train --vs-one-rank figures"; }

if ! command -v mpirun >/dev/null; then echo "mpirun not installed: the mpirun leg is not run"; exit 0; fi
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 300 mpirun --oversubscribe -np 2 \
  -x RINGTRAIN_THREADS "$RT" train "${args[@]}" --set dist.transport=mpi --run-dir "$WORK/mpi" > mpi.log 2>&1 || { cat mpi.log; fail "mpirun -np 2 failed"; }
grep -q "gradient sync allreduce (mpi" mpi.log || { cat mpi.log; fail "mpirun run did not use the MPI transport"; }
compare launch "$WORK/launch" mpirun "$WORK/mpi" 0
echo "dp launchers: launch (tcp, shm) and mpirun agree bitwise, and with one process at the global batch"
