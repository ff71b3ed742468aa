#!/bin/bash
# Builds the GPU binaries on this (GPU-less) machine for the device machine and packs them with
# the Debian libraries they need into .device/bundle.tar.xz (git-ignored; about 11 MB, since the
# unpacked 59 MB would not fit the 64 MiB a call carries), for a device `run` that names
# `.device` in `carry` and runs bench/gpu/device_run.sh (which unpacks it).
#   - Release, warnings as errors, CUDA for sm_90 (H100/H200) only, and no -march=native: the
#     device's host CPU is not this one.
#   - Libraries: every shared library ldd lists except the C library's own, libstdc++/libgcc (the
#     device image has newer ones) and CUDA's (cudart, cuBLAS(Lt), NCCL: hundreds of MB, over
#     the 64 MiB a call can carry; device_run.sh finds the device's own).
# Usage: bench/gpu/pack.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || { echo "pack: no nvcc here" >&2; exit 2; }
mkdir -p build-gpu
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DRINGTRAIN_WERROR=ON -DRINGTRAIN_NATIVE=OFF \
  -DRINGTRAIN_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 > build-gpu/configure.log 2>&1 || { cat build-gpu/configure.log; exit 1; }
grep -q "NCCL ON" build-gpu/configure.log || echo "pack: warning: NCCL not found; the NCCL tests will not be built" >&2
cmake --build build-gpu -j2 --target ringtrain gpu_tests
stage=build-gpu/stage
rm -rf .device "$stage"
mkdir -p .device "$stage/bin" "$stage/lib"
cp build-gpu/cli/ringtrain build-gpu/tests/gpu_tests "$stage/bin/"
skip='^(linux-vdso|ld-linux|libc\.|libm\.|libdl\.|libpthread\.|librt\.|libstdc\+\+|libgcc_s|libcuda\.|libcudart|libcublas|libnccl|libcudnn)'
for bin in "$stage"/bin/*; do
  ldd "$bin" | awk '$3 ~ /^\// {print $1, $3}'
done | sort -u | while read -r name path; do
  [[ $name =~ $skip ]] && continue
  cp -L "$path" "$stage/lib/$name"
done
ls "$stage/lib" > "$stage/libs.txt"
# Tiny Shakespeare (1 MB) for the shakespeare_char recipe, when this machine has it.
data=../shared/data/tinyshakespeare/input.txt
if [ -f "$data" ]; then mkdir -p "$stage/data" && cp "$data" "$stage/data/"; else echo "pack: $data missing: the recipe run will be skipped" >&2; fi
git rev-parse HEAD > "$stage/commit.txt"
tar -C "$stage" -cJf .device/bundle.tar.xz bin lib libs.txt commit.txt $( [ -d "$stage/data" ] && echo data )
echo "pack: .device/bundle.tar.xz, $(du -sh .device/bundle.tar.xz | cut -f1) ($(wc -l < "$stage/libs.txt") libraries, commit $(cut -c1-8 "$stage/commit.txt")); on the device: bench/gpu/device_run.sh with carry [.device]"
