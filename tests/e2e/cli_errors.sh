#!/usr/bin/env bash
# Bad input gives exactly one clear error line naming the problem, exit code 2, and no crash.
source "$(dirname "$0")/lib.sh"

# expect_error "what" "substring of the error line" -- command...
expect_error() {
  local what=$1 needle=$2
  shift 3
  local rc=0
  "$@" >out.txt 2>err.txt || rc=$?
  [[ $rc == 2 ]] || { cat out.txt err.txt; fail "$what: exit code $rc, expected 2"; }
  local lines
  lines=$(wc -l <err.txt)
  [[ $lines == 1 ]] || { cat err.txt; fail "$what: $lines lines on stderr, expected exactly 1"; }
  grep -qF -- "$needle" err.txt || { cat err.txt; fail "$what: error line lacks '$needle'"; }
  grep -qiE "terminate|abort|exception|core dumped" err.txt && fail "$what: looks like a crash: $(cat err.txt)"
  echo "ok: $what -> $(cat err.txt)"
}

expect_error "missing data file" "data file /nonexistent/input.txt: no such file" -- \
  "$RT" train --run-dir r --set data.path=/nonexistent/input.txt
expect_error "missing config file" "config file nope.yaml: no such file" -- "$RT" train --config nope.yaml
expect_error "unknown key on the command line" "did you mean 'model.n_layer'" -- \
  "$RT" train --run-dir r --set model.n_layr=2
printf 'model:\n  n_layer: 2\noptim:\n  lerning_rate: 0.1\n' >typo.yaml
expect_error "unknown key in a file" "typo.yaml: unknown config key 'optim.lerning_rate'" -- \
  "$RT" train --config typo.yaml
printf 'optim:\n  lr: fast\n' >type.yaml
expect_error "mistyped value" "optim.lr: expected a number, got 'fast'" -- "$RT" train --config type.yaml
expect_error "negative size" "model.n_embd = -64 is out of range" -- "$RT" train --set model.n_embd=-64
expect_error "zero batch" "train.batch_size = 0 is out of range" -- "$RT" train --set train.batch_size=0
expect_error "heads do not divide width" "model.n_head = 5 must divide model.n_embd = 64" -- \
  "$RT" train --run-dir r --set model.n_head=5 --set model.n_embd=64
expect_error "missing model" "no such file" -- "$RT" generate --model /nonexistent/run --prompt hi
expect_error "unknown option" "--bogus" -- "$RT" train --bogus
expect_error "launch: zero processes" "--nproc must be at least 1" -- "$RT" launch --nproc 0 -- train
expect_error "partial Slurm environment" "SLURM_NTASKS is not" -- env SLURM_STEP_ID=0 SLURM_PROCID=0 "$RT" train --run-dir r
expect_error "partial torchrun environment" "RANK and WORLD_SIZE must both be set" -- env RANK=1 "$RT" train --run-dir r
expect_error "bad Slurm node list" "node[3-1]" -- env SLURM_STEP_ID=0 SLURM_PROCID=0 SLURM_NTASKS=2 \
  'SLURM_JOB_NODELIST=node[3-1]' "$RT" train --run-dir r
expect_error "bad dist key" "dist.zero1: expected" -- "$RT" train --run-dir r --set dist.zero1=maybe
# device cuda: what the GPU path lacks is refused before any device is touched (the same line with
# or without a GPU); a build without CUDA says so instead, also naming device cuda.
expect_error "unknown device" "device" -- "$RT" train --run-dir r --set device=tpu
expect_error "bf16 on the CPU" "precision bf16 needs device cuda" -- "$RT" train --run-dir r --set precision=bf16
expect_error "bf16 for a CNN" "precision bf16 is for GPT models" -- \
  "$RT" train --run-dir r --set device=cuda --set precision=bf16 --set model.type=lenet --set data.source=synthetic_images
# A config error on every launched rank: the launcher names the rank and passes its status on.
rc=0
"$RT" launch --nproc 2 -- train --run-dir r --set model.n_layr=2 >out.txt 2>err.txt || rc=$?
[[ $rc == 2 ]] || { cat out.txt err.txt; fail "launch with a bad config: exit $rc, expected the ranks' 2"; }
grep -q "\[rank [01]\] ringtrain: error: .*did you mean 'model.n_layer'" err.txt || { cat err.txt; fail "rank error not forwarded"; }
grep -q "ringtrain launch: rank [01] exited with status 2" err.txt || { cat err.txt; fail "launcher did not name the rank"; }
echo "ok: launch with a bad config -> $(grep 'ringtrain launch: rank' err.txt)"

# A prompt with characters outside the vocabulary of a char-level model.
printf 'the cat sat on the mat. the dog sat on the log.\n%.0s' {1..40} >tiny.txt
"$RT" train --run-dir run --set data.path=tiny.txt --set model.block_size=16 --set train.steps=2 \
  --set train.eval_batches=1 >train.log 2>&1 || { cat train.log; fail "tiny training failed"; }
expect_error "prompt outside vocabulary" "character 'Z' at position 4 is not in the model's vocabulary" -- \
  "$RT" generate --model run --prompt "the Zebra"
# A corrupted parameter file is named.
printf 'X' | dd of=run/model/params.bin bs=1 seek=100 conv=notrunc status=none
expect_error "corrupt model" "params.bin: CRC mismatch" -- "$RT" generate --model run --prompt "the"
# Image data: IDX files made here (gzip), then broken in the ways the issue names.
/usr/bin/python3 - <<'PY'
import gzip, struct
def idx(path, dims, payload, magic=b"\x00\x00\x08"):
    with gzip.open(path, "wb") as f:
        f.write(magic + bytes([len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload)
idx("img.gz", [20, 28, 28], bytes(20 * 784))
idx("lab.gz", [20], bytes(i % 10 for i in range(20)))
idx("lab19.gz", [19], bytes(i % 10 for i in range(19)))
idx("magic.gz", [20, 28, 28], bytes(20 * 784), magic=b"\x00\x01\x08")
idx("trunc.gz", [20, 28, 28], bytes(20 * 784 - 100))
PY
mnist=(--set data.source=mnist --set model.type=lenet --set data.train_count=15 --set train.batch_size=4)
expect_error "truncated IDX" "trunc.gz: 15580 data bytes, header says 15680 (truncated)" -- \
  "$RT" train --run-dir r "${mnist[@]}" --set data.images=trunc.gz --set data.labels=lab.gz
expect_error "wrong IDX magic" "magic.gz: bad magic number" -- \
  "$RT" train --run-dir r "${mnist[@]}" --set data.images=magic.gz --set data.labels=lab.gz
expect_error "label count mismatch" "has 20 images but lab19.gz has 19 labels" -- \
  "$RT" train --run-dir r "${mnist[@]}" --set data.images=img.gz --set data.labels=lab19.gz
"$RT" train --run-dir syn --set model.type=lenet --set data.source=synthetic_images --set train.steps=1 \
  --set data.synthetic.train_images=20 --set data.synthetic.test_images=10 >syn.log 2>&1 || { cat syn.log; fail "tiny CNN training failed"; }
expect_error "image size does not match the model" "images are 1x28x28, the model expects 1x16x16" -- \
  "$RT" eval --model syn --set data.source=mnist --set data.images=img.gz --set data.labels=lab.gz --set data.train_count=15
expect_error "bench train: bad block" "--block must be >= 1" -- "$RT" bench train --vs-one-rank --block 0
expect_error "scaling: bad worker count" "--workers: '0' is not a count from 1 to 250" -- "$RT" bench scaling --workers 0,2
expect_error "scaling: bad bandwidth" "bandwidth '1gbps': expected a number with kbit, mbit or gbit" -- \
  "$RT" bench scaling --emulate 1gbps
expect_error "scaling: bad latency" "latency '3 days': expected a number with s, ms or us" -- \
  "$RT" bench scaling --model "1gbit,3 days"
expect_error "scaling: unknown sync mode" "--sync: 'allgather' is neither ring nor ps" -- "$RT" bench scaling --sync ring,allgather
expect_error "scaling: --ps-nodes without a cluster launcher" "--ps-nodes places servers of an mpirun/srun run" -- \
  "$RT" bench scaling --sync ps --ps-nodes node1
expect_error "scaling: bad --ps-nodes entry" "--ps-nodes: 'node1:80' is not a host name" -- \
  "$RT" bench scaling --launcher srun --sync ps --ps-nodes node1:80
expect_error "scaling: missing config" "--config nope.yaml: no such file" -- "$RT" bench scaling --config nope.yaml
echo "all error cases passed"
