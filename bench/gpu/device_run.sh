#!/bin/bash
# The GPU checks of issue 10 in one call on the device machine (bench/gpu/pack.sh packs what it
# needs into .device/ first). From the repo root there:
#   bench/gpu/device_run.sh [quick]          # results under $OUT (or ./out-gpu)
# Steps, each bounded by `timeout` so one hang cannot eat the lease, each writing its own file:
#   env.txt          nvidia-smi, the CUDA libraries found, ldd of the binaries
#   gpu_tests.log/.json   the GPU suite (acceptance 1 and 2)
#   bench_fp32.json  ringtrain bench train, GPT-2 124M, device cuda (fp32), optimizer on the device
#   bench_bf16.json  the same with precision=bf16 (tensor-core products, bf16 matmul activations,
#                    the fused attention on bf16 tensor cores)
#   bench_fp32_host_optim.json   the fp32 run, 10 steps, optim.on_device=off (host optimizer)
#   bench_bf16_materialized.json   the bf16 run, 10 steps, attention=materialized (TF32 products)
#   shakespeare.txt  (not in quick mode) nanoGPT's shakespeare_char recipe, at most 150 s
#   pytorch.txt      (not in quick mode) bench/pytorch_gpt.py on the same config: bf16 eager and
#                    torch.compile, fp32 eager
#   bench_resnet20.json, pytorch_resnet20.json   ResNet-20 training (batch 128) on the GPU, and
#                    bench/pytorch_cnn.py's PyTorch eager on the same GPU (not in quick mode)
# Most important first, within one budget (DEVICE_BUDGET_S, default 520 s; see below); steps.log
# says which step a bound stopped or the budget skipped.
# Exit status: 0 when the suite passed, 1 otherwise; the benchmarks never change it.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out=${OUT:-out-gpu}
mkdir -p "$out"
quick=${1:-}
[ -f .device/bundle.tar.xz ] || { echo "device_run: .device/bundle.tar.xz missing: run bench/gpu/pack.sh here and carry .device" >&2; exit 2; }
rm -rf .device/bin .device/lib .device/data
tar -C .device -xJf .device/bundle.tar.xz || exit 2
[ "$(cat .device/commit.txt)" = "$(git rev-parse HEAD 2>/dev/null || cat .device/commit.txt)" ] ||
  echo "device_run: warning: the bundle was built at $(cat .device/commit.txt), the tree is at $(git rev-parse HEAD)"

# CUDA's own libraries on the device: its toolkit, else the Python wheels (torch's venv).
libdirs=$PWD/.device/lib
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && libdirs+=:$d
done
for sp in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
  [ -d "$sp/nvidia" ] && libdirs+=:$(find "$sp/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
done
export LD_LIBRARY_PATH=$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
{
  date -u
  nvidia-smi 2>&1
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  for b in .device/bin/*; do echo "== ldd $b"; ldd "$b"; done
} > "$out/env.txt" 2>&1
if grep -q "=> not found" "$out/env.txt"; then
  grep "=> not found" "$out/env.txt" >&2
  echo "device_run: libraries missing (see env.txt); nothing run" >&2
  exit 1
fi

# Every step gets at most its own cap and what is left of the call's budget (DEVICE_BUDGET_S,
# default 520 s, under the 540 s the device call is given), most important first, so a slow step
# costs the later ones, never the results already written.
budget=${DEVICE_BUDGET_S:-520}
cap() {  # cap SECONDS: the timeout for the next step, or 0 when under 20 s are left
  local left=$((budget - SECONDS - 5))
  if [ "$left" -lt 20 ]; then echo 0; elif [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}
step() {  # step NAME CAP CMD...: runs CMD under the capped timeout, or says it was skipped
  local name=$1 t
  t=$(cap "$2")
  shift 2
  # Notes go to steps.log (the command's own output is redirected by the caller).
  if [ "$t" = 0 ]; then echo "device_run: $name skipped: the call's budget is spent" >> "$out/steps.log"; return 0; fi
  timeout "$t" "$@" || echo "device_run: $name stopped (exit $?; 124 = its ${t} s bound)" >> "$out/steps.log"
}

status=0
t=$(cap 240)
timeout "$t" .device/bin/gpu_tests --gtest_output="json:$out/gpu_tests.json" > "$out/gpu_tests.log" 2>&1 || status=1
tail -n 30 "$out/gpu_tests.log"

cfg=bench/configs/gpt2_124m.yaml
step "bench train (fp32)" 90 .device/bin/ringtrain bench train --config "$cfg" --set device=cuda --steps 20 --json \
  > "$out/bench_fp32.json" 2> "$out/bench_fp32.err"
cat "$out/bench_fp32.json"
# bf16 mixed precision (tensor-core products), the figure to set against PyTorch's bf16 lines.
step "bench train (bf16)" 90 .device/bin/ringtrain bench train --config "$cfg" --set device=cuda --set precision=bf16 \
  --steps 20 --json > "$out/bench_bf16.json" 2> "$out/bench_bf16.err"
cat "$out/bench_bf16.json"
# nanoGPT's shakespeare_char recipe (target: validation loss <= 1.47 within 2 minutes); the
# progress and evaluation lines in shakespeare.txt say how far it got if the bound stops it.
if [ "$quick" != quick ] && [ -f .device/data/input.txt ]; then
  step "shakespeare_char" 150 .device/bin/ringtrain train --config bench/configs/shakespeare_char_gpu.yaml \
    --set device=cuda --set data.path=.device/data/input.txt --run-dir "$out/shakespeare_run" > "$out/shakespeare.txt" 2>&1
  grep -E "val loss|^done" "$out/shakespeare.txt" | tail -n 4
fi
# The fp32 run with the optimizer on the host (parameters up and gradients down every micro-step):
# what keeping everything on the device gains.
step "bench train (host optimizer)" 60 .device/bin/ringtrain bench train --config "$cfg" --set device=cuda \
  --set optim.on_device=off --steps 10 --json > "$out/bench_fp32_host_optim.json" 2> "$out/bench_fp32_host_optim.err"
# bf16 with the materialised attention (TF32 products) instead of auto's tensor-core fused kernel.
step "bench train (bf16, materialized attention)" 60 .device/bin/ringtrain bench train --config "$cfg" \
  --set device=cuda --set precision=bf16 --set attention=materialized --steps 10 --json \
  > "$out/bench_bf16_materialized.json" 2> "$out/bench_bf16_materialized.err"
if [ "$quick" != quick ]; then
  export PYTHONUNBUFFERED=1
  { step "PyTorch bf16 (eager, compile)" 300 python3 bench/pytorch_gpt.py --config "$cfg" --device cuda --dtype bf16 --mode both
    step "PyTorch fp32 (eager)" 90 python3 bench/pytorch_gpt.py --config "$cfg" --device cuda --dtype fp32 --mode eager; } \
    > "$out/pytorch.txt" 2>&1
  tail -n 8 "$out/pytorch.txt"
fi
# ResNet-20 (batch 128, 32x32x3, SGD momentum) on the GPU, against PyTorch eager on the same GPU.
step "bench train resnet20" 45 .device/bin/ringtrain bench train --config bench/configs/resnet20.yaml --set device=cuda \
  --steps 20 --json > "$out/bench_resnet20.json" 2> "$out/bench_resnet20.err"
cat "$out/bench_resnet20.json"
[ "$quick" != quick ] && step "PyTorch resnet20" 45 python3 bench/pytorch_cnn.py --config bench/configs/resnet20.yaml \
  --device cuda --json > "$out/pytorch_resnet20.json" 2>&1 && cat "$out/pytorch_resnet20.json"

cat "$out/steps.log" 2>/dev/null
skipped=$(grep -c '^\[  SKIPPED \]' "$out/gpu_tests.log" || true)
echo "device_run: suite $([ $status = 0 ] && echo passed || echo FAILED), $skipped case(s) skipped (on a GPU machine expect only multi-GPU NCCL cases); files in $out"
exit $status
