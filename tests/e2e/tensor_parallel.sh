#!/bin/bash
# Tensor parallelism end to end (issue 7):
#   - invalid layouts (T does not divide the world size or n_head) fail before any work, with one
#     clear line and a non-zero exit;
#   - `mpirun -np 4 ringtrain train --set parallel.tensor=2` (TP=2 x DP=2, MPI transport) ends with
#     the parameters of one process at the same global batch, within 1e-5, after 20 steps;
#   - `ringtrain launch --nproc 4` (shared memory, the default on one host) gives the mpirun
#     run's parameters bitwise;
#   - its checkpoint resumes at TP=1 x DP=4 and TP=4 x DP=1 and ends within 1e-5 of the
#     uninterrupted run, and exports to safetensors that start a TP=2 run as they start TP=1.
source "$(dirname "$0")/lib.sh"
# SGD with momentum: the exactness comparisons are about layouts, not Adam's amplified rounding.
common=(--set optim.name=sgd --set optim.momentum=0.9 --set optim.lr=0.1 --set model.dropout=0.1
        --set train.eval_interval=1000 --set train.log_interval=10 --set dist.deadline_s=60)

# --- invalid layouts -----------------------------------------------------------------------------
expect_error() {  # expect_error WANT command...
  local want=$1; shift
  if "$@" > bad.log 2>&1; then cat bad.log; fail "succeeded: $*"; fi
  grep -qF "$want" bad.log || { cat bad.log; fail "no '$want' in the error of: $*"; }
  ! grep -q "step 1" bad.log || { cat bad.log; fail "training started before the layout was checked"; }
}
expect_error "parallel.tensor = 2 must divide the world size 3" "$RT" launch --nproc 3 -- train --set parallel.tensor=2
expect_error "parallel.tensor = 2 must divide model.n_head = 3" \
  "$RT" launch --nproc 2 -- train --set parallel.tensor=2 --set model.n_head=3 --set model.n_embd=48
expect_error "parallel.tensor = 2 must divide the world size 1" "$RT" train --set parallel.tensor=2
echo "invalid layouts: clear errors before any work"

# --- params.bin comparison -----------------------------------------------------------------------
compare() {  # compare NAME_A DIR_A NAME_B DIR_B TOLERANCE(0: bitwise)
  /usr/bin/python3 - "$@" <<'PY'
import struct, sys
na, da, nb, db, tol = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
def load(d):
    b = open(d + "/model/params.bin", "rb").read()
    n = struct.unpack("<Q", b[8:16])[0]
    return struct.unpack("<%df" % n, b[20:20 + 4 * n])
a, b = load(da), load(db)
if len(a) != len(b): sys.exit(f"FAIL: {na} has {len(a)} parameters, {nb} {len(b)}")
d = max(abs(x - y) for x, y in zip(a, b))
print(f"parameters: {na} vs {nb}: largest difference {d:.3g} over {len(a)} values")
if (tol == 0 and d != 0) or d > tol: sys.exit(f"FAIL: {na} and {nb} differ by {d:.3g} (allowed {tol})")
PY
}

"$RT" train "${common[@]}" --set train.steps=20 --set train.batch_size=16 --run-dir "$WORK/one" > one.log 2>&1 ||
  { cat one.log; fail "one process failed"; }

if command -v mpirun >/dev/null; then
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 300 mpirun --oversubscribe -np 4 \
    -x RINGTRAIN_THREADS "$RT" train "${common[@]}" --set train.steps=20 --set train.batch_size=8 \
    --set parallel.tensor=2 --set dist.transport=mpi --run-dir "$WORK/mpi" > mpi.log 2>&1 || { cat mpi.log; fail "mpirun -np 4 failed"; }
  grep -q "tensor parallel: 2 ranks per group (2 heads each), 2 group(s) (mpi)" mpi.log ||
    { cat mpi.log; fail "no tensor-parallel line (mpi)"; }
  grep -q "data parallel: 2 ranks" mpi.log || { cat mpi.log; fail "no data-parallel line"; }
  [ "$(grep -c '^done: ' mpi.log)" -eq 1 ] || { cat mpi.log; fail "not exactly one rank printed a summary"; }
  compare "mpirun TP=2 x DP=2" "$WORK/mpi" "one process" "$WORK/one" 1e-5
else
  echo "mpirun not installed: the mpirun leg is not run"
fi

"$RT" launch --nproc 4 -- train "${common[@]}" --set train.steps=20 --set train.batch_size=8 --set parallel.tensor=2 \
  --run-dir "$WORK/launch" > launch.log 2>&1 || { cat launch.log; fail "launch --nproc 4 failed"; }
grep -q "tensor parallel: 2 ranks per group (2 heads each), 2 group(s) ($LOCAL_TRANSPORT)" launch.log ||
  { cat launch.log; fail "no tensor-parallel line (launch, $LOCAL_TRANSPORT)"; }
compare "launch TP=2 x DP=2" "$WORK/launch" "one process" "$WORK/one" 1e-5
if [ -d "$WORK/mpi" ]; then compare "launch" "$WORK/launch" "mpirun" "$WORK/mpi" 0; fi

# --- checkpoint at TP=2 x DP=2, resumed at TP=1 x DP=4 and TP=4 x DP=1 ---------------------------
"$RT" launch --nproc 4 -- train "${common[@]}" --set train.steps=16 --set train.batch_size=8 --set parallel.tensor=2 \
  --run-dir "$WORK/full" > full.log 2>&1 || { cat full.log; fail "uninterrupted run failed"; }
"$RT" launch --nproc 4 -- train "${common[@]}" --set train.steps=10 --set train.batch_size=8 --set parallel.tensor=2 \
  --set checkpoint.every_steps=10 --run-dir "$WORK/saved" > saved.log 2>&1 || { cat saved.log; fail "saving run failed"; }
[ -f "$WORK/saved/checkpoints/step-00000010/manifest.pb" ] || fail "no checkpoint at step 10"
for layout in "1 4 4" "4 1 16"; do
  read -r tp dp batch <<< "$layout"
  d=$WORK/resume-tp$tp
  mkdir -p "$d"
  cp -r "$WORK/saved/checkpoints" "$d/"
  "$RT" launch --nproc 4 -- train "${common[@]}" --set train.steps=16 --set train.batch_size=$batch \
    --set parallel.tensor=$tp --run-dir "$d" --resume auto > resume-$tp.log 2>&1 ||
    { cat resume-$tp.log; fail "resuming at TP=$tp x DP=$dp failed"; }
  grep -q "resumed from $d/checkpoints/step-00000010 at step 10 (saved by 4 rank(s), tensor parallel 2)" resume-$tp.log ||
    { cat resume-$tp.log; fail "TP=$tp x DP=$dp did not resume from the TP=2 checkpoint"; }
  compare "resumed at TP=$tp x DP=$dp" "$d" "uninterrupted TP=2 x DP=2" "$WORK/full" 1e-5
done
# Export the TP=2 checkpoint (whole tensors) and start a TP=2 run from the file: its model equals
# a TP=1 run started from the same file, bitwise.
"$RT" export --checkpoint "$WORK/saved/checkpoints/step-00000010" --format safetensors --out "$WORK/tp.safetensors" \
  > export.log 2>&1 || { cat export.log; fail "export of a TP checkpoint failed"; }
"$RT" train "${common[@]}" --set train.steps=0 --init-from "$WORK/tp.safetensors" --run-dir "$WORK/init1" > init1.log 2>&1 ||
  { cat init1.log; fail "--init-from at TP=1 failed"; }
"$RT" launch --nproc 2 -- train "${common[@]}" --set train.steps=0 --set parallel.tensor=2 \
  --init-from "$WORK/tp.safetensors" --run-dir "$WORK/init2" > init2.log 2>&1 || { cat init2.log; fail "--init-from at TP=2 failed"; }
compare "--init-from at TP=2" "$WORK/init2" "--init-from at TP=1" "$WORK/init1" 0
echo "tensor parallel: mpirun and launch match one process; TP=2 x DP=2 checkpoints resume at TP=1 x DP=4 and TP=4 x DP=1"
