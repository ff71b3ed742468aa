// Launch helpers shared by the CUDA sources: grid sizes for grid-stride loops, the loop itself,
// and the launch-error check.
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/cuda/checks.h"

namespace ringtrain::cuda {

constexpr int kThreads = 256;

// Enough blocks for n elements at per_block threads each, capped (the loops stride over the rest).
inline unsigned Blocks(int64_t n, int per_block = kThreads) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + per_block - 1) / per_block, 1 << 20)));
}

// The error of the last launch, as a Status naming it.
inline Status Launched(const char* what) { return CudaStatus(cudaGetLastError(), what); }

}  // namespace ringtrain::cuda

#define RT_GRID_STRIDE(i, n)                                                             \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
