#!/usr/bin/env bash
# Fuzzes the parameter server's frame decoder and the coordinator's message decoder (issues 8 and 9) with libFuzzer under ASan
# and UBSan, for a bounded time (FUZZ_SECONDS, default 30), starting from a seed corpus of valid
# frames. Fails on any crash, leak or sanitizer report.
# Usage: fuzz_frames.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
src=$1
build=$2
seconds=${FUZZ_SECONDS:-30}
cxx=$(command -v clang++-14 || command -v clang++ || true)
if [[ -z "$cxx" ]]; then
  echo "SKIP: clang++ not found (scripts/install-deps.sh installs clang-14 and libclang-rt-14-dev)"
  exit 77
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
common=(-std=c++20 -g -O1 -I"$src" -I"$build/proto" -DBOOST_ALL_NO_LIB
        "$src/parameter_server/wire.cc" "$src/core/status.cc" "$build/proto/ps.pb.cc" "$build/proto/coord.pb.cc"
        -lprotobuf -lboost_system -lpthread)
echo "building the fuzz target with $cxx"
"$cxx" -DRINGTRAIN_FRAME_SEEDS "$src/tests/fuzz/frame_fuzz.cc" "${common[@]}" -o "$work/seeds"
"$cxx" -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined "$src/tests/fuzz/frame_fuzz.cc" \
  "${common[@]}" -o "$work/frame_fuzz"
mkdir -p "$work/corpus"
"$work/seeds" "$work/corpus"
echo "fuzzing for $seconds s"
cd "$work"
if ! ./frame_fuzz -max_total_time="$seconds" -seed=1 -max_len=8192 -print_final_stats=1 corpus > fuzz.log 2>&1; then
  tail -40 fuzz.log
  echo "FAIL: the frame decoder crashed or a sanitizer reported (see above)"
  exit 1
fi
grep -E "^stat::number_of_executed_units|^Done" fuzz.log || true
runs=$(sed -n 's/^stat::number_of_executed_units: *//p' fuzz.log)
if [[ -z "$runs" || "$runs" -lt 1000 ]]; then
  tail -20 fuzz.log
  echo "FAIL: the fuzzer ran only '${runs:-0}' inputs"
  exit 1
fi
echo "PASS: $runs inputs, no crash"
