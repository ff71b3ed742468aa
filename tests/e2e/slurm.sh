#!/bin/bash
# A real Slurm on localhost: starts munged, slurmctld and slurmd (Debian's munge and slurm-wlm)
# with a generated key and config in a scratch directory, submits examples/slurm/train.sbatch
# (2 tasks through srun, TCP rendezvous at the node list's first host), waits for it, checks its
# output, and compares its final losses with `ringtrain launch --nproc 2` running the same
# training: they must agree bitwise. The daemons are stopped at the end, also on failure. Skips
# (exit 77) only when the daemons are not installed or cannot start here.
source "$(dirname "$0")/lib.sh"
for d in munged slurmctld slurmd sbatch sinfo srun; do
  command -v $d >/dev/null || skip "$d not installed (scripts/install-deps.sh installs munge and slurm-wlm)"
done
daemon_pids=()
cleanup() {
  for p in "${daemon_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${daemon_pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  # Job steps the daemons started (slurmstepd and the ranks) must not outlive the test.
  pkill -9 -f "slurmstepd.*$WORK" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
S=$WORK/slurm
mkdir -p $S/munge $S/state $S/spool $S/log
# munged wants its socket's directories searchable by everyone (mktemp -d makes 0700).
chmod 755 "$WORK" $S $S/munge
head -c 1024 /dev/urandom > $S/munge/munge.key
chmod 600 $S/munge/munge.key
munged -F --key-file=$S/munge/munge.key --socket=$S/munge/sock --pid-file=$S/munge/pid \
  --log-file=$S/munge/log --seed-file=$S/munge/seed > $S/log/munged.out 2>&1 &
daemon_pids+=($!)
for _ in $(seq 50); do [ -S $S/munge/sock ] && break; sleep 0.1; done
[ -S $S/munge/sock ] || { cat $S/munge/log $S/log/munged.out 2>/dev/null; skip "munged did not start"; }

host=$(hostname -s)
cat > $S/slurm.conf <<CONF
ClusterName=ringtrain-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=$(id -un)
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$S/munge/sock
CredType=cred/munge
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
NodeName=$host NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
export SLURM_CONF=$S/slurm.conf
[ "$(id -u)" -eq 0 ] || skip "slurmd must run as root to start jobs (running as $(id -un))"
slurmctld -D -f $SLURM_CONF > $S/log/slurmctld.out 2>&1 &
daemon_pids+=($!)
slurmd -D -f $SLURM_CONF > $S/log/slurmd.out 2>&1 &
daemon_pids+=($!)
up=0
for _ in $(seq 100); do
  if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then up=1; break; fi
  sleep 0.2
done
if [ $up -ne 1 ]; then
  tail -n 20 $S/log/*.log $S/log/*.out 2>/dev/null
  skip "slurmctld/slurmd did not bring the node up within 20 s"
fi
echo "slurm up: $(sinfo -h -o '%P %D %t %N')"

args=(--set train.steps=30 --set train.eval_interval=15 --set train.log_interval=10 --set dist.deadline_s=60)
export RINGTRAIN=$RT
timeout 300 sbatch --wait --chdir "$WORK" --output "$WORK/job-%j.out" "$REPO/examples/slurm/train.sbatch" \
  "${args[@]}" --run-dir "$WORK/slurm-run" > sbatch.log 2>&1 || { cat sbatch.log job-*.out; tail -n 20 $S/log/*.log; fail "sbatch job failed"; }
cat job-*.out
grep -q "2 tasks on $host" job-*.out || fail "the job did not run 2 tasks on $host"
grep -q "^done: 30 steps" job-*.out || fail "no summary line in the job output"
[ "$(grep -c '^done: ' job-*.out)" -eq 1 ] || fail "more than one rank printed a summary"
[ -f "$WORK/slurm-run/summary.json" ] || fail "no summary.json from the Slurm run"

# same_losses SLURM_RUN LAUNCH_RUN: final losses equal bitwise.
same_losses() {
  /usr/bin/python3 - "$1/summary.json" "$2/summary.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
for k in ("final_train_loss", "final_val_loss"):
    print(f"{k}: sbatch {a[k]!r}  launch {b[k]!r}")
    if a[k] != b[k]: sys.exit(f"FAIL: {k} differs between the Slurm job ({sys.argv[1]}) and ringtrain launch")
PY
}
"$RT" launch --nproc 2 -- train "${args[@]}" --run-dir "$WORK/launch" > launch.log 2>&1 || { cat launch.log; fail "launch failed"; }
same_losses "$WORK/slurm-run" "$WORK/launch"
echo "slurm: sbatch/srun training matches ringtrain launch bitwise"

# Tensor parallelism under Slurm: 4 tasks (TP=2 x DP=2; --overcommit: the test node has 2 CPUs)
# end with the losses `ringtrain launch --nproc 4` gets, bitwise.
timeout 300 sbatch --wait --ntasks=4 --overcommit --chdir "$WORK" --output "$WORK/tp-%j.out" \
  "$REPO/examples/slurm/train.sbatch" "${args[@]}" --set parallel.tensor=2 --run-dir "$WORK/slurm-tp" > sbatch-tp.log 2>&1 ||
  { cat sbatch-tp.log tp-*.out; fail "sbatch TP job failed"; }
cat tp-*.out
grep -Eq "tensor parallel: 2 ranks per group \(2 heads each\), 2 group\(s\) \((tcp|shm)\)" tp-*.out || fail "the TP job did not run TP=2 x DP=2"
"$RT" launch --nproc 4 -- train "${args[@]}" --set parallel.tensor=2 --run-dir "$WORK/launch-tp" > launch-tp.log 2>&1 ||
  { cat launch-tp.log; fail "launch TP failed"; }
same_losses "$WORK/slurm-tp" "$WORK/launch-tp"
echo "slurm: TP=2 x DP=2 under sbatch/srun matches ringtrain launch bitwise"

# bench scaling on Slurm (issue 11): inside an allocation of 2 tasks every point is an srun step,
# and the PS point's server a one-task step of its own (--overlap) on this node.
timeout 300 sbatch --wait --ntasks=2 --chdir "$WORK" --output "$WORK/scaling-%j.out" \
  --wrap "$RT bench scaling --set train.batch_size=4 --workers 1,2 --sync ring,ps --ps-servers 1 --launcher srun \
          --steps 2 --warmup 1 --point-timeout 200 --out $WORK/srun-scaling" > sbatch-scaling.log 2>&1 ||
  { cat sbatch-scaling.log scaling-*.out; for f in srun-scaling/logs/*; do echo "== $f"; tail -5 "$f"; done
    fail "bench scaling --launcher srun failed"; }
cat scaling-*.out
/usr/bin/python3 - srun-scaling/results.csv <<'PY' || fail "srun scaling results are wrong (above)"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
pts = sorted((int(r["workers"]), r["sync"], int(r["ps_servers"])) for r in rows)
assert pts == [(1, "ps", 1), (1, "ring", 0), (2, "ps", 1), (2, "ring", 0)], pts
for r in rows:
    M, sent = float(r["gradient_bytes"]), float(r["bytes_sent_per_worker"])
    assert float(r["step_ms"]) > 0, r
    if r["sync"] == "ps":
        assert abs(sent - M) <= 0.01 * M, f"ps: pushed {sent}, expected {M}"
print("ok: srun points, ring and parameter server")
PY
grep -q "listening on 0.0.0.0:" srun-scaling/logs/w2-ps1-ps0.log || fail "the srun PS point's server log lacks its listen line"
echo "slurm: bench scaling --launcher srun ran ring and PS points as job steps"

# Preemption and requeue: USR1 to the batch shell (what --signal=B:USR1@120 does before the time
# limit) makes the ranks checkpoint and exit 75; the script requeues the job, which resumes and
# finishes.
jid=$(sbatch --parsable --chdir "$WORK" --output "$WORK/long.out" "$REPO/examples/slurm/train_requeue.sbatch" \
  --run-dir "$WORK/long" --set train.steps=200 --set train.log_interval=5 --set train.eval_interval=100 \
  --set dist.deadline_s=60)
for _ in $(seq 600); do grep -q "step 10/200" long.out 2>/dev/null && break; sleep 0.1; done
grep -q "step 10/200" long.out || { cat long.out; fail "the long job did not start training"; }
scancel --batch --signal=USR1 "$jid"
# A requeued job is held back by Slurm for a while (BeginTime); let it start now.
for _ in $(seq 300); do grep -q "requeueing" long.out 2>/dev/null && break; sleep 0.1; done
for _ in $(seq 100); do
  squeue -h -j "$jid" -o %T 2>/dev/null | grep -q PENDING && { scontrol update JobId="$jid" StartTime=now; break; }
  sleep 0.1
done
for _ in $(seq 1200); do
  [ -z "$(squeue -h -j "$jid" 2>/dev/null)" ] && grep -q "^done: 200 steps" long.out && break
  sleep 0.1
done
cat long.out
grep -q "checkpoint saved; requeueing" long.out || fail "the job did not requeue after USR1"
grep -q "(restart 1)" long.out || fail "the requeued job did not run"
grep -q "^resumed from $WORK/long/checkpoints/step-" long.out || fail "the requeued job did not resume"
grep -q "^done: 200 steps" long.out || fail "the requeued job did not finish"
echo "slurm: preempted by USR1, requeued, resumed and finished"
