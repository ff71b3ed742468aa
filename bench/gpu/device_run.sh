#!/bin/bash
# The GPU checks of issue 10 in one call on the device machine (bench/gpu/pack.sh packs what it
# needs into .device/ first). From the repo root there:
#   bench/gpu/device_run.sh [quick]          # results under $OUT (or ./out-gpu)
# Steps, each bounded by `timeout` so one hang cannot eat the lease, each writing its own file:
#   env.txt          nvidia-smi, the CUDA libraries found, ldd of the binaries
#   gpu_tests.log/.json   the GPU suite (acceptance 1 and 2)
#   bench_fp32.json  ringtrain bench train, GPT-2 124M, device cuda (fp32), optimizer on the device
#   bench_bf16.json  the same with precision=bf16 (tensor-core products, fp32 everything else)
#   bench_fp32_host_optim.json   the fp32 run, 10 steps, optim.on_device=off (host optimizer)
#   shakespeare.txt  (not in quick mode) nanoGPT's shakespeare_char recipe, at most 150 s
#   pytorch.txt      (not in quick mode) bench/pytorch_gpt.py on the same config: bf16 eager and
#                    torch.compile, fp32 eager
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

status=0
timeout 300 .device/bin/gpu_tests --gtest_output="json:$out/gpu_tests.json" > "$out/gpu_tests.log" 2>&1 || status=1
tail -n 30 "$out/gpu_tests.log"

cfg=bench/configs/gpt2_124m.yaml
timeout 240 .device/bin/ringtrain bench train --config "$cfg" --set device=cuda --steps 20 --json \
  > "$out/bench_fp32.json" 2> "$out/bench_fp32.err" || echo "device_run: bench train failed: $(tail -n 3 "$out/bench_fp32.err")"
cat "$out/bench_fp32.json"
# bf16 mixed precision (tensor-core products), the figure to set against PyTorch's bf16 lines.
timeout 180 .device/bin/ringtrain bench train --config "$cfg" --set device=cuda --set precision=bf16 --steps 20 --json \
  > "$out/bench_bf16.json" 2> "$out/bench_bf16.err" || echo "device_run: bench train (bf16) failed: $(tail -n 3 "$out/bench_bf16.err")"
cat "$out/bench_bf16.json"
# The same with the optimizer on the host (parameters up and gradients down every micro-step): what
# keeping everything on the device gains.
timeout 180 .device/bin/ringtrain bench train --config "$cfg" --set device=cuda --set optim.on_device=off --steps 10 \
  --json > "$out/bench_fp32_host_optim.json" 2> "$out/bench_fp32_host_optim.err" ||
  echo "device_run: bench train (host optimizer) failed: $(tail -n 3 "$out/bench_fp32_host_optim.err")"

if [ "$quick" != quick ]; then
  export PYTHONUNBUFFERED=1
  { timeout 400 python3 bench/pytorch_gpt.py --config "$cfg" --device cuda --dtype bf16 --mode both
    timeout 120 python3 bench/pytorch_gpt.py --config "$cfg" --device cuda --dtype fp32 --mode eager; } \
    > "$out/pytorch.txt" 2>&1 || echo "device_run: the PyTorch reference failed (pytorch.txt)"
  tail -n 6 "$out/pytorch.txt"
fi
# nanoGPT's shakespeare_char recipe (target: validation loss <= 1.47 within 2 minutes). Bounded at
# 150 s: the progress and evaluation lines in shakespeare.txt say how far it got by then.
if [ "$quick" != quick ] && [ -f .device/data/input.txt ]; then
  timeout 150 .device/bin/ringtrain train --config bench/configs/shakespeare_char_gpu.yaml --set device=cuda \
    --set data.path=.device/data/input.txt --run-dir "$out/shakespeare_run" > "$out/shakespeare.txt" 2>&1 ||
    echo "device_run: shakespeare_char stopped (exit $?; 124 = the 150 s bound)"
  grep -E "val loss|^done" "$out/shakespeare.txt" | tail -n 4
fi

skipped=$(grep -c '^\[  SKIPPED \]' "$out/gpu_tests.log" || true)
echo "device_run: suite $([ $status = 0 ] && echo passed || echo FAILED), $skipped case(s) skipped (on a GPU machine expect only multi-GPU NCCL cases); files in $out"
exit $status
