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

#ifdef __CUDACC__
// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
// Warp shuffles, then the warps' sums through shared32 (32 elements): a fixed order, so the
// result is repeatable. For float and double.
template <typename T>
__device__ T BlockSum(T v, T* shared32) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();  // shared32 may still be read by a previous call
  if (lane == 0) shared32[warp] = v;
  __syncthreads();
  T t = lane < warps ? shared32[lane] : T(0);
  for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
  return t;
}
#endif

}  // namespace ringtrain::cuda

#define RT_GRID_STRIDE(i, n)                                                             \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
