#!/bin/bash
# Checkpoint save/load throughput against the disk's sequential write speed, in one run (issue 6):
# each round writes SIZE MB of random data with dd (1 MB blocks, conv=fsync), then saves and loads
# a checkpoint of the same size with `ringtrain bench checkpoint` (parameters + AdamW moments).
# Usage: bench/checkpoint_io.sh [size MB (default 1024)] [rounds (default 3)] [directory (default .)]
set -euo pipefail
RT=${RINGTRAIN:-$(cd "$(dirname "$0")/.." && pwd)/build/cli/ringtrain}
size=${1:-1024}
rounds=${2:-3}
dir=${3:-.}
src=$(mktemp "$dir/ckpt-bench-src.XXXXXX")
trap 'rm -f "$src" "$dir/ckpt-bench-dd"; rm -rf "$dir/ckpt-bench"' EXIT
head -c $((size << 20)) /dev/urandom > "$src"
printf "%-6s %12s %12s %8s %12s %8s\n" round "dd MB/s" "save MB/s" ratio "load MB/s" ratio
for r in $(seq "$rounds"); do
  t0=$(date +%s.%N)
  dd if="$src" of="$dir/ckpt-bench-dd" bs=1M conv=fsync status=none
  t1=$(date +%s.%N)
  rm -f "$dir/ckpt-bench-dd"
  dd_mbs=$(/usr/bin/python3 -c "print($size/($t1-$t0))")
  out=$("$RT" bench checkpoint --size-mb "$size" --dir "$dir/ckpt-bench" --json)
  read -r save load < <(/usr/bin/python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d['save_mb_per_s'], d['load_mb_per_s'])" "$out")
  /usr/bin/python3 -c "import sys; dd,s,l=map(float,sys.argv[2:]); print(f'{sys.argv[1]:<6} {dd:12.0f} {s:12.0f} {s/dd:8.2f} {l:12.0f} {l/dd:8.2f}')" "$r" "$dd_mbs" "$save" "$load"
done
