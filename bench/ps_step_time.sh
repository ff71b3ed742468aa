#!/bin/bash
# Parameter-server benchmarks (issue 8):
#  1. `ringtrain bench ps`: push+pull throughput of one server over loopback against raw TCP in
#     the same run (64 MB per round each way).
#  2. GPT-S (bench/configs/gpt_s.yaml) step time with gradients synchronised by ring all-reduce and
#     by parameter servers (BSP, K = 1 and 2 servers), at 2 and 4 workers of one thread each, all
#     started by `ringtrain launch` on this machine (servers included: on 2 cores, 4 workers and
#     2 servers share them). Ratio: ring's step time over this layout's.
# Usage: bench/ps_step_time.sh [rounds (default 3)] [extra --set key=value ...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RT=${RINGTRAIN:-build/cli/ringtrain}
rounds=${1:-3}
shift || true
sets=(--config bench/configs/gpt_s.yaml --set threads=1 "$@")
steps=${STEPS:-20}
field() { /usr/bin/python3 -c "import json,sys; d=json.loads(sys.stdin.read().split('] ',1)[-1]); print(d[sys.argv[1]])" "$1"; }
for r in $(seq "$rounds"); do
  j=$("$RT" bench ps --mb 64 --iters 10 --json)
  printf "round %s: one server, 64 MB push+pull: %.2f GB/s; raw TCP %.2f GB/s; ratio %.2fx\n" "$r" \
    "$(echo "$j" | field ps_gbps)" "$(echo "$j" | field raw_tcp_gbps)" "$(echo "$j" | field ratio)"
done
printf "%-6s %-8s %-18s %9s %9s %7s %14s\n" round workers sync ms/step tok/s ratio "PS MB/step/wkr"
for r in $(seq "$rounds"); do
  for n in 2 4; do
    ring=""
    for k in 0 1 2; do
      out=$("$RT" launch --nproc $n --ps $k -- bench train --steps "$steps" --json "${sets[@]}" 2>/dev/null |
            grep '^\[rank 0\] {')
      ms=$(echo "$out" | field ms_per_step)
      [ $k = 0 ] && ring=$ms
      mbs=$(echo "$out" | /usr/bin/python3 -c "import json,sys; d=json.loads(sys.stdin.read().split('] ',1)[-1]); print('%.2f' % (d['dp_allreduce_bytes_per_step']/1e6) if d['sync'].startswith('parameter') else '-')")
      printf "%-6s %-8s %-18s %9.0f %9.0f %7.2f %14s\n" "$r" "$n" "$([ $k = 0 ] && echo ring || echo "ps bsp, K=$k")" "$ms" \
        "$(echo "$out" | field tokens_per_s)" "$(/usr/bin/python3 -c "print($ring/$ms)")" "$mbs"
    done
  done
done
