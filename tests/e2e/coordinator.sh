#!/bin/bash
# Coordinator and worker agents end to end (issue 9), real processes on localhost:
#  1. 3 agents with 2 slots each; two 2-process jobs and one 4-process job: gang placement, never
#     more processes than slots, the 4-process job waits until slots free; all reach their last step.
#  2. Job specs with errors are rejected at submit (unknown key, more processes than the pool,
#     a bad config key); a wrong token and garbage bytes are refused while the coordinator serves on.
#  3. kill -9 an agent while its 4-process job runs: the job restarts from its latest checkpoint on
#     the remaining slots and ends bitwise equal to an undisturbed run.
#  4. kill -9 the coordinator while two jobs run, and meanwhile kill -9 the agent of one of them
#     and start it again (without its processes); start the coordinator on the same state file: no
#     job lost or duplicated; the job whose processes still run is kept, the other restarts from
#     its checkpoint; both finish bitwise equal (same spec).
#  5. An elastic job (2 to 4 processes) running on 4 slots loses an agent: it restarts from its
#     checkpoint with the 2 processes the remaining slots hold, and finishes.
#  6. An elastic job started on 2 free slots grows to 4 when an agent with 2 slots joins.
#  7. A parameter-server job (2 ranks + 1 server): the coordinator places the server, hands the
#     ranks its address and a derived token, stops it at the end; bitwise equal to job 1 (ring).
#  8. An agent with --gpus 0,1: one device per process (CUDA_VISIBLE_DEVICES), shown by `workers`.
source "$(dirname "$0")/lib.sh"
cleanup() {
  pkill -9 -f -- "--state $WORK/" 2>/dev/null || true
  pkill -9 -f -- "--id e2e-$$-" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
port=$(/usr/bin/python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
export RINGTRAIN_TOKEN=e2e-$RANDOM$RANDOM RINGTRAIN_COORDINATOR=127.0.0.1:$port
start_coordinator() {
  "$RT" coordinator --listen 127.0.0.1:$port --state "$WORK/state.db" --heartbeat-timeout 3 >> coord.log 2>&1 &
  coord=$!
  for _ in $(seq 50); do "$RT" jobs > /dev/null 2>&1 && return 0; sleep 0.1; done
  cat coord.log; fail "the coordinator did not come up"
}
start_coordinator
agents=()
for i in 1 2 3; do
  "$RT" worker --slots 2 --id e2e-$$-$i > agent$i.log 2>&1 &
  agents+=($!)
done
for _ in $(seq 50); do [ "$("$RT" workers --json | /usr/bin/python3 -c "import json,sys; print(len(json.load(sys.stdin)['workers']))")" = 3 ] && break; sleep 0.1; done
state() { "$RT" job "$1" --json | /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['state'])"; }
wait_state() {  # wait_state ID STATE SECONDS
  for _ in $(seq $(( $3 * 5 ))); do [ "$(state "$1")" = "$2" ] && return 0; sleep 0.2; done
  "$RT" job "$1"; cat coord.log | tail -20; fail "job $1 did not reach $2 within $3 s"
}
used_ok() {  # no worker runs more processes than it has slots
  "$RT" workers --json | /usr/bin/python3 -c "
import json,sys
for w in json.load(sys.stdin)['workers']:
    assert w['used'] <= w['slots'], w"
}
steps() { json_get "$WORK/state.db.d/job-$1/summary.json" steps; }

# --- 1. gang scheduling -----------------------------------------------------------------------
printf "name: two\nnproc: 2\nset: [train.steps=60, train.eval_interval=60]\n" > two.yaml
printf "name: four\nnproc: 4\nset: [train.steps=60, train.eval_interval=60]\n" > four.yaml
"$RT" submit two.yaml && "$RT" submit two.yaml && "$RT" submit four.yaml
sleep 1
"$RT" jobs
[ "$(state 1)" = running ] && [ "$(state 2)" = running ] || fail "the 2-process jobs did not start together"
[ "$(state 3)" = pending ] || fail "the 4-process job started although only 2 slots were free"
saw_wait=0
for _ in $(seq 300); do
  used_ok || fail "a worker ran more processes than slots"
  [ "$(state 3)" = succeeded ] && break
  sleep 0.2
done
for j in 1 2 3; do
  [ "$(state $j)" = succeeded ] || fail "job $j: $(state $j)"
  [ "$(steps $j)" = 60 ] || fail "job $j ended at step $(steps $j), not 60"
done
"$RT" job 3 | grep -E "rank|event"
echo "1. gang placement: jobs 1 and 2 ran, job 3 waited for 4 free slots; all reached step 60"

# --- 2. bad specs, tokens, garbage -------------------------------------------------------------
reject() {  # reject PATTERN SPEC_TEXT
  printf "$2" > bad.yaml
  set +e; "$RT" submit bad.yaml > bad.out 2> bad.err; rc=$?; set -e
  [ $rc -ne 0 ] && grep -q "$1" bad.err || { cat bad.err; fail "spec '$2' was not rejected with '$1'"; }
  echo "   rejected: $(cat bad.err)"
}
reject "unknown key 'nprocs'" "nprocs: 2\n"
reject "needs 7 process(es), but the pool has 6 slot(s) on 3 worker(s)" "nproc: 7\n"
reject "optim.lrr" "nproc: 2\nset: [optim.lrr=0.1]\n"
n=$("$RT" jobs --json | /usr/bin/python3 -c "import json,sys; print(len(json.load(sys.stdin)['jobs']))")
[ "$n" = 3 ] || fail "a rejected spec became a job"
set +e; RINGTRAIN_TOKEN=wrong "$RT" jobs 2> tok.err; rc=$?; set -e
[ $rc -ne 0 ] && grep -q "wrong token" tok.err || { cat tok.err; fail "a wrong token was not refused"; }
/usr/bin/python3 -c "
import socket, os
s = socket.create_connection(('127.0.0.1', $port)); s.recv(1000); s.sendall(os.urandom(5000)); s.close()
s = socket.create_connection(('127.0.0.1', $port)); s.sendall(b'\xff\xff\xff\x7f' + b'x' * 100); s.close()"
"$RT" jobs > /dev/null || fail "the coordinator stopped serving after garbage"
echo "2. bad specs rejected at submit; wrong token and garbage refused; still serving"

# --- 3. an agent killed mid-job -------------------------------------------------------------------
long="nproc: 4\nmax_restarts: 2\nset: [train.steps=200, train.eval_interval=200, checkpoint.every_steps=20, train.log_interval=10]\n"
printf "name: calm\n$long" > calm.yaml
printf "name: hit\n$long" > hit.yaml
"$RT" submit calm.yaml   # job 4: undisturbed
wait_state 4 succeeded 120
"$RT" submit hit.yaml    # job 5
wait_state 5 running 10
for _ in $(seq 200); do ls "$WORK/state.db.d/job-5/checkpoints/step-00000040" > /dev/null 2>&1 && break; sleep 0.1; done
victim=$("$RT" job 5 --json | /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['placements'][-1]['worker'])")
i=${victim##*-}
kill -9 ${agents[$((i - 1))]}
wait_state 5 succeeded 150
"$RT" job 5 | grep event
"$RT" job 5 --json | /usr/bin/python3 -c "import json,sys; j=json.load(sys.stdin); assert j['restarts'] >= 1, j"
cmp "$WORK/state.db.d/job-4/model/params.bin" "$WORK/state.db.d/job-5/model/params.bin" ||
  fail "the restarted job's parameters differ from the undisturbed run's"
grep -q "resumed from" "$WORK/state.db.d/logs/job-5.log" || fail "the restart did not resume from a checkpoint"
echo "3. agent $victim killed: job 5 restarted from its checkpoint and ended bitwise equal to job 4"

# --- 4. the coordinator killed mid-job; an agent loses its processes meanwhile --------------------
surv="nproc: 2\nmax_restarts: 2\nset: [train.steps=200, train.eval_interval=200, checkpoint.every_steps=20, train.log_interval=10]\n"
printf "name: survivor\n$surv" > surv.yaml
printf "name: revived\n$surv" > rev.yaml
"$RT" submit surv.yaml   # job 6: its processes run on through the outage
"$RT" submit rev.yaml    # job 7: its agent is restarted without them
wait_state 6 running 10
wait_state 7 running 10
for _ in $(seq 200); do ls "$WORK/state.db.d/job-7/checkpoints/step-00000040" > /dev/null 2>&1 && break; sleep 0.1; done
w6=$("$RT" job 6 --json | /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['placements'][0]['worker'])")
w7=$("$RT" job 7 --json | /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['placements'][0]['worker'])")
[ "$w6" != "$w7" ] || fail "jobs 6 and 7 share agent $w6"
kill -9 $coord
i=${w7##*-}
kill -9 ${agents[$((i - 1))]}     # its processes die with it (PDEATHSIG)
sleep 0.5
"$RT" worker --slots 2 --id "$w7" > agent$i.log 2>&1 &   # waits for the coordinator
agents[$((i - 1))]=$!
sleep 1
start_coordinator
wait_state 6 succeeded 120
wait_state 7 succeeded 120
n=$("$RT" jobs --json | /usr/bin/python3 -c "import json,sys; print(len(json.load(sys.stdin)['jobs']))")
[ "$n" = 7 ] || fail "after the restart the coordinator holds $n jobs, not 7"
"$RT" job 6 --json | /usr/bin/python3 -c "import json,sys; j=json.load(sys.stdin); assert j['restarts'] == 0 and j['attempt'] == 1, j" ||
  fail "job 6 was restarted instead of kept"
"$RT" job 7 | grep event
"$RT" job 7 --json | /usr/bin/python3 -c "import json,sys; j=json.load(sys.stdin); assert j['restarts'] == 1 and 'gone when its agent re-registered' in j['reason'], j" ||
  fail "job 7 was not restarted after its processes were found gone"
grep -q "resumed from" "$WORK/state.db.d/logs/job-7.log" || fail "job 7 did not resume from a checkpoint"
for j in 6 7; do [ "$(steps $j)" = 200 ] || fail "job $j ended at step $(steps $j)"; done
cmp "$WORK/state.db.d/job-6/model/params.bin" "$WORK/state.db.d/job-7/model/params.bin" ||
  fail "the restarted job 7 differs from job 6"
echo "4. coordinator killed and restarted: 7 jobs; job 6 kept (attempt 1), job 7 (processes gone) restarted from its checkpoint; bitwise equal"
# --- 5. an elastic job shrinks from 4 to 2 -----------------------------------------------------------
alive=()
for i in 1 2 3; do kill -0 ${agents[$((i - 1))]} 2>/dev/null && alive+=($i); done
[ ${#alive[@]} = 2 ] || fail "expected 2 agents left, found ${#alive[@]}"
printf "name: elastic\nmin_nproc: 2\nmax_nproc: 4\nmax_restarts: 2\nset: [train.steps=200, train.eval_interval=200, checkpoint.every_steps=20]\n" > el.yaml
"$RT" submit el.yaml     # job 8
wait_state 8 running 10
"$RT" job 8 --json | /usr/bin/python3 -c "import json,sys; assert json.load(sys.stdin)['world'] == 4"
for _ in $(seq 200); do ls "$WORK/state.db.d/job-8/checkpoints/step-00000040" > /dev/null 2>&1 && break; sleep 0.1; done
kill -9 ${agents[$((alive[1] - 1))]}
wait_state 8 succeeded 150
"$RT" job 8 | grep event
"$RT" job 8 --json | /usr/bin/python3 -c "import json,sys; j=json.load(sys.stdin); assert j['world'] == 2 and j['restarts'] >= 1, j" ||
  fail "the elastic job did not restart with 2 processes"
grep -q "resumed from .*saved by 4 rank" "$WORK/state.db.d/logs/job-8.log" || fail "the elastic restart did not resume the 4-rank checkpoint"
[ "$(steps 8)" = 200 ] || fail "job 8 ended at step $(steps 8)"
echo "5. elastic job: 4 processes, an agent lost, restarted with 2 from the 4-rank checkpoint, finished"

# --- 6. ... and grows back when slots return ------------------------------------------------------
printf "name: regrow\nmin_nproc: 2\nmax_nproc: 4\nset: [train.steps=200, train.eval_interval=200, checkpoint.every_steps=20]\n" > grow.yaml
"$RT" submit grow.yaml   # job 9: 2 slots left, so 2 processes
wait_state 9 running 10
"$RT" job 9 --json | /usr/bin/python3 -c "import json,sys; assert json.load(sys.stdin)['world'] == 2"
"$RT" worker --slots 2 --id e2e-$$-4 > agent4.log 2>&1 &
wait_state 9 succeeded 150
"$RT" job 9 | grep event
"$RT" job 9 --json | /usr/bin/python3 -c "import json,sys; j=json.load(sys.stdin); assert j['world'] == 4 and j['restarts'] == 0, j" ||
  fail "the elastic job did not grow back to 4 processes"
[ "$(steps 9)" = 200 ] || fail "job 9 ended at step $(steps 9)"
echo "6. elastic job: started with 2 processes, grew to 4 when an agent with 2 slots joined, finished"
# --- 7. a parameter-server job ------------------------------------------------------------------
printf "name: ps\nnproc: 2\nps_servers: 1\nset: [train.steps=60, train.eval_interval=60]\n" > ps.yaml
"$RT" submit ps.yaml     # job 10: job 1's training with a server instead of ring all-reduce
wait_state 10 succeeded 120
"$RT" job 10
ps_check() {  # 2 ranks and 1 server; the server stopped (its exit is reported just after success)
  "$RT" job 10 --json | /usr/bin/python3 -c "
import json,sys
j = json.load(sys.stdin)
ps = [p for p in j['placements'] if 'ps' in p]
assert j['world'] == 2 and len(ps) == 1 and ps[0]['state'] == 'exited', j" 2>/dev/null
}
for _ in $(seq 50); do ps_check && break; sleep 0.2; done
ps_check || { "$RT" job 10 --json; fail "job 10 did not run 2 ranks and 1 server, stopped at the end"; }
grep -q "parameter servers" "$WORK/state.db.d/logs/job-10.log" || fail "job 10's ranks did not train against the server"
cmp "$WORK/state.db.d/job-1/model/params.bin" "$WORK/state.db.d/job-10/model/params.bin" ||
  fail "the PS job's parameters differ from the ring job's"
used_ok
echo "7. parameter-server job: 2 ranks + 1 server placed, server stopped at the end, bitwise equal to job 1"

# --- 8. an agent with GPUs -------------------------------------------------------------------------
for pid in "${agents[@]}"; do kill -9 $pid 2>/dev/null || true; done
pkill -9 -f -- "--id e2e-$$-" 2>/dev/null || true
"$RT" worker --gpus 0,1 --id e2e-$$-gpu > agentg.log 2>&1 &
for _ in $(seq 50); do "$RT" workers | grep -q "e2e-$$-gpu .* alive  0,1" && break; sleep 0.2; done
"$RT" workers | grep "e2e-$$-gpu" | grep -q " 2 .* alive  0,1" || { "$RT" workers; fail "the GPU agent is not listed with 2 slots and GPUs 0,1"; }
printf "name: gpus\nnproc: 2\nset: [train.steps=5, train.eval_interval=5]\n" > gpus.yaml
"$RT" submit gpus.yaml   # job 11
wait_state 11 succeeded 60
grep -q "rank 0 (pid [0-9]*) on GPU [01]" "$WORK/state.db.d/logs/job-11.log" &&
  [ "$(grep -o "rank [01] (pid [0-9]*) on GPU [01]" "$WORK/state.db.d/logs/job-11.log" | awk '{print $NF}' | sort -u | wc -l)" = 2 ] ||
  { cat "$WORK/state.db.d/logs/job-11.log"; fail "the two ranks did not get one GPU each"; }
echo "8. an agent with --gpus 0,1: 2 slots, one device per process"
echo PASS
