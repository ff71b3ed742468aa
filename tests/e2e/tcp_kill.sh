#!/bin/bash
# Three real processes all-reduce over the TCP transport (RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT);
# rank 1 is killed with SIGKILL mid-run. The survivors must exit non-zero well within the
# collective deadline, each naming rank 1; nothing may be left running. (The warm-up loop runs
# back-to-back all-reduces; timed iterations would put a barrier before each.)
source "$(dirname "$0")/lib.sh"
PORT=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
for r in 0 1 2; do
  RANK=$r WORLD_SIZE=3 MASTER_ADDR=127.0.0.1 MASTER_PORT=$PORT "$RT" bench allreduce --transport tcp \
    --sizes 4M --iters 1 --warmup 1000000 --deadline 60 > out_$r.log 2> err_$r.log &
  pids+=($!)
done
# Wait until the job is past set-up (rank 0 prints its table header after connecting).
for _ in $(seq 1 200); do grep -q "ringtrain bench allreduce" out_0.log 2>/dev/null && break; sleep 0.1; done
grep -q "ringtrain bench allreduce" out_0.log || { cat err_*.log; fail "job did not start"; }
sleep 1
kill -9 "${pids[1]}"
start=$(date +%s)
for r in 0 2; do
  set +e
  wait "${pids[$r]}"
  rc=$?
  set -e
  [ "$rc" -ne 0 ] || fail "rank $r exited 0 after rank 1 was killed"
  grep -q "rank 1" err_$r.log || { cat err_$r.log; fail "rank $r's error does not name rank 1"; }
  grep -q "allreduce #" err_$r.log || { cat err_$r.log; fail "rank $r's error does not name the operation"; }
  echo "rank $r: $(cat err_$r.log)"
done
took=$(( $(date +%s) - start ))
[ "$took" -lt 30 ] || fail "survivors took ${took}s to notice (deadline 60s)"
for p in "${pids[@]}"; do ! kill -0 "$p" 2>/dev/null || fail "process $p still running"; done
echo "tcp kill: survivors failed in ${took}s naming rank 1"
