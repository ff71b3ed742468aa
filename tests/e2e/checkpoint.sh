#!/bin/bash
# Checkpoints end to end (issue 6):
#  1. bitwise resume: 40 steps straight vs 20 steps, death right after the step-20 checkpoint,
#     resume, 20 more: parameters and the final checkpoint's shards (optimizer state) are
#     bitwise identical; one process, 2-rank data parallel, 2-rank ZeRO-1, and ZeRO-1 with
#     asynchronous saving (a background thread writes while training goes on); dropout on.
#  2. resharding: the 2-rank ZeRO-1 checkpoint resumes on 1 rank and on 4 ranks (ZeRO-1 on and off)
#     with per-step losses within 1e-5 of the uninterrupted run.
#  3. corruption (flipped byte, truncated shard, deleted manifest, a manifest claiming a wrong
#     shape) is named in an error; --resume auto falls back to the previous checkpoint; a process
#     killed at each point inside a save leaves `latest` naming a complete checkpoint.
#  5. a run preempted by SIGUSR1 saves, exits 75, resumes and ends bitwise identical.
source "$(dirname "$0")/lib.sh"
base=(--set train.steps=40 --set model.dropout=0.1 --set train.eval_interval=20 --set train.log_interval=1
      --set dist.bucket_mb=0.1 --set dist.deadline_s=60 --set checkpoint.every_steps=10 --set checkpoint.keep=5)
one() { "$RT" train "${base[@]}" "$@"; }
two() { "$RT" launch --nproc 2 -- train "${base[@]}" "$@"; }
same() {  # same DIR_A DIR_B: final parameters and step-40 shards bitwise equal
  cmp "$1/model/params.bin" "$2/model/params.bin" || fail "$2: parameters differ from $1"
  for f in "$1"/checkpoints/step-00000040/shard-*; do
    cmp "$f" "$2/checkpoints/step-00000040/$(basename "$f")" || fail "$2: $(basename "$f") (optimizer state) differs"
  done
}

# --- 1. bitwise resume ---------------------------------------------------------------------------
for mode in one two zero async; do
  case $mode in
    one) run() { one "$@"; } ;;
    two) run() { two "$@"; } ;;
    zero) run() { two --set dist.zero1=true "$@"; } ;;
    async) run() { two --set dist.zero1=true --set checkpoint.async=true "$@"; } ;;
  esac
  run --run-dir straight-$mode > straight-$mode.log 2>&1 || { cat straight-$mode.log; fail "$mode: straight run failed"; }
  set +e
  RINGTRAIN_CKPT_CRASH=after_latest:20 run --run-dir cut-$mode > cut-$mode.log 2>&1
  rc=$?
  set -e
  [ $rc -ne 0 ] || fail "$mode: the crash hook did not stop the run"
  [ "$(cat cut-$mode/checkpoints/latest)" = step-00000020 ] || fail "$mode: latest is not step 20"
  run --run-dir cut-$mode --resume auto > resume-$mode.log 2>&1 || { cat resume-$mode.log; fail "$mode: resume failed"; }
  grep -q "resumed from cut-$mode/checkpoints/step-00000020 at step 20" resume-$mode.log || { cat resume-$mode.log; fail "$mode: did not resume at 20"; }
  same straight-$mode cut-$mode
  echo "ok: bitwise resume ($mode)"
done

# --- 2. resharding the 2-rank ZeRO-1 checkpoint of step 20 --------------------------------------
for target in 1 4 4z; do
  d=reshard-$target
  mkdir -p $d/checkpoints
  cp -r straight-zero/checkpoints/step-00000020 $d/checkpoints/
  case $target in
    1) RINGTRAIN_THREADS=1 one --set train.batch_size=32 --run-dir $d --resume $d/checkpoints/step-00000020 > $d.log 2>&1 ;;
    4) "$RT" launch --nproc 4 -- train "${base[@]}" --set train.batch_size=8 --run-dir $d --resume auto > $d.log 2>&1 ;;
    4z) "$RT" launch --nproc 4 -- train "${base[@]}" --set train.batch_size=8 --set dist.zero1=true --run-dir $d --resume auto > $d.log 2>&1 ;;
  esac || { cat $d.log; fail "resharding to $target failed"; }
  /usr/bin/python3 - straight-zero/metrics.jsonl $d/metrics.jsonl <<'PY' || fail "resharding to $target: losses differ"
import json, sys
def losses(p): return {r["step"]: r["loss"] for r in map(json.loads, open(p)) if "loss" in r}
a, b = losses(sys.argv[1]), losses(sys.argv[2])
worst = max(abs(b[s] - a[s]) / abs(a[s]) for s in range(21, 31))
print(f"  steps 21-30: worst relative loss difference {worst:.3g}")
sys.exit(0 if worst <= 1e-5 else 1)
PY
  echo "ok: 2-rank ZeRO-1 checkpoint resumed as $target"
done

# --- 3. corruption -------------------------------------------------------------------------------
ck=straight-one/checkpoints
expect_bad() {  # expect_bad WHAT NEEDLE: explicit resume of step 40 fails naming NEEDLE; auto falls back
  local what=$1 needle=$2 rc=0
  rm -rf bad && mkdir -p bad && cp -r $ck bad/
  corrupt bad/checkpoints/step-00000040
  one --run-dir bad --resume bad/checkpoints/step-00000040 > bad.log 2>&1 || rc=$?
  [ $rc -ne 0 ] || fail "$what: resume of a corrupt checkpoint succeeded"
  grep -qF -- "$needle" bad.log || { cat bad.log; fail "$what: error does not name $needle"; }
  echo "ok: $what -> $(grep 'error' bad.log)"
  one --run-dir bad --resume auto --set train.steps=40 > bad-auto.log 2>&1 || { cat bad-auto.log; fail "$what: auto did not fall back"; }
  grep -q "resumed from bad/checkpoints/step-00000030 at step 30" bad-auto.log || { cat bad-auto.log; fail "$what: auto did not use step 30"; }
  grep -q "checkpoint bad/checkpoints/step-00000040 is unusable" bad-auto.log || fail "$what: no warning about step 40"
}
shard=shard-00000-of-00001.bin
corrupt() { /usr/bin/python3 -c "import sys; p=sys.argv[1]; b=bytearray(open(p,'rb').read()); b[len(b)//2]^=1; open(p,'wb').write(b)" "$1/$shard"; }
expect_bad "flipped byte" "$shard: CRC mismatch in tensor"
corrupt() { truncate -s -100 "$1/$shard"; }
expect_bad "truncated shard" "$shard: "
corrupt() { rm "$1/manifest.pb"; }
expect_bad "deleted manifest" "neither a checkpoint"
# The manifest re-encoded (valid CRC) with wpe.weight's shape changed.
corrupt() {
  /usr/bin/python3 - "$1/manifest.pb" "$REPO/proto" <<'PY'
import struct, subprocess, sys
path, protodir = sys.argv[1], sys.argv[2]
raw = open(path, "rb").read()
body = raw[20:]
text = subprocess.run(["protoc", "-I", protodir, "--decode=ringtrain.proto.Manifest", "checkpoint.proto"],
                      input=body, capture_output=True, check=True).stdout.decode()
i = text.index('name: "param/wpe.weight"'); j = text.index("shape:", i); k = text.index("\n", j)
text = text[:j] + "shape: 7" + text[k:]
new = subprocess.run(["protoc", "-I", protodir, "--encode=ringtrain.proto.Manifest", "checkpoint.proto"],
                     input=text.encode(), capture_output=True, check=True).stdout
def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c ^= b
        for _ in range(8): c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    return c ^ 0xFFFFFFFF
open(path, "wb").write(raw[:8] + struct.pack("<IQ", crc32c(new), len(new)) + new)
PY
}
if command -v protoc >/dev/null; then
  expect_bad "manifest claims a wrong shape" "tensor param/wpe.weight has shape [7,64]"
fi

# A save killed at each point leaves `latest` naming a complete checkpoint.
for point in after_shard after_manifest after_rename after_latest; do
  rm -rf crash && set +e
  RINGTRAIN_CKPT_CRASH=$point:30 one --run-dir crash > crash.log 2>&1
  set -e
  want=step-00000020; [ $point = after_latest ] && want=step-00000030
  [ "$(cat crash/checkpoints/latest)" = $want ] || fail "$point: latest is $(cat crash/checkpoints/latest), expected $want"
  one --run-dir crash --resume auto > crash-resume.log 2>&1 || { cat crash-resume.log; fail "$point: resume failed"; }
  grep -qE "resumed from crash/checkpoints/step-000000(20|30) at step" crash-resume.log || { cat crash-resume.log; fail "$point: no resume"; }
  same straight-one crash
  echo "ok: killed $point of step 30's save: latest = $want, resume ends bitwise equal"
done

# --- 5. preemption by SIGUSR1 --------------------------------------------------------------------
"$RT" launch --nproc 2 -- train "${base[@]}" --run-dir pre > pre.log 2>&1 &
launcher=$!  # the launcher itself (a backgrounded shell function would be a subshell)
for _ in $(seq 300); do grep -q "step 12/" pre.log 2>/dev/null && break; sleep 0.05; done
kill -USR1 $launcher
set +e; wait $launcher; rc=$?; set -e
[ $rc -eq 75 ] || { cat pre.log; fail "preempted run exited $rc, expected 75"; }
grep -q "stopping at step .* on a signal: checkpoint saved" pre.log || { cat pre.log; fail "no preemption message"; }
two --run-dir pre --resume auto > pre-resume.log 2>&1 || { cat pre-resume.log; fail "resume after preemption failed"; }
same straight-two pre
echo "ok: preempted at step $(grep -o 'stopping at step [0-9]*' pre.log | grep -o '[0-9]*$'), resumed, bitwise equal"
