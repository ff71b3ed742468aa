// The few element-wise kernels the NCCL communicator needs around NCCL's own: widening 16-bit
// floats to fp32 (so sums accumulate in fp32), narrowing back, and integer averages.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

#include "collectives/nccl/nccl_kernels.h"
#include "core/cuda/launch.cuh"

namespace ringtrain::coll {

namespace {

using cuda::Blocks;
using cuda::kThreads;
using cuda::Launched;

template <typename H, typename Convert>
__global__ void WidenKernel(const H* in, float* out, int64_t n, Convert cvt) {
  RT_GRID_STRIDE(i, n)
    out[i] = cvt(in[i]);
}

template <typename H, typename Convert>
__global__ void NarrowKernel(const float* in, H* out, int64_t n, float divisor, Convert cvt) {
  RT_GRID_STRIDE(i, n)
    out[i] = cvt(divisor == 1.f ? in[i] : in[i] / divisor);
}

template <typename I>
__global__ void DivideKernel(I* data, int64_t n, I divisor) {
  RT_GRID_STRIDE(i, n)
    data[i] /= divisor;
}

struct FromBf16 {
  __device__ float operator()(__nv_bfloat16 x) const { return __bfloat162float(x); }
};
struct FromF16 {
  __device__ float operator()(__half x) const { return __half2float(x); }
};
struct ToBf16 {
  __device__ __nv_bfloat16 operator()(float x) const { return __float2bfloat16_rn(x); }
};
struct ToF16 {
  __device__ __half operator()(float x) const { return __float2half_rn(x); }
};

}  // namespace

Status LaunchWiden(const void* in, float* out, int64_t count, DataType t, cudaStream_t s) {
  if (count == 0) return Status::Ok();
  if (t == DataType::kBF16) {
    WidenKernel<<<Blocks(count), kThreads, 0, s>>>(static_cast<const __nv_bfloat16*>(in), out, count, FromBf16{});
  } else if (t == DataType::kF16) {
    WidenKernel<<<Blocks(count), kThreads, 0, s>>>(static_cast<const __half*>(in), out, count, FromF16{});
  } else {
    return Internal(std::string("LaunchWiden: ") + DataTypeName(t) + " is not a 16-bit float");
  }
  return Launched("widening 16-bit floats to fp32");
}

Status LaunchNarrow(const float* in, void* out, int64_t count, DataType t, float divisor, cudaStream_t s) {
  if (count == 0) return Status::Ok();
  if (t == DataType::kBF16) {
    NarrowKernel<<<Blocks(count), kThreads, 0, s>>>(in, static_cast<__nv_bfloat16*>(out), count, divisor, ToBf16{});
  } else if (t == DataType::kF16) {
    NarrowKernel<<<Blocks(count), kThreads, 0, s>>>(in, static_cast<__half*>(out), count, divisor, ToF16{});
  } else {
    return Internal(std::string("LaunchNarrow: ") + DataTypeName(t) + " is not a 16-bit float");
  }
  return Launched("narrowing fp32 to 16-bit floats");
}

Status LaunchDivideInt(void* data, int64_t count, DataType t, int divisor, cudaStream_t s) {
  if (count == 0) return Status::Ok();
  if (t == DataType::kI32) {
    DivideKernel<<<Blocks(count), kThreads, 0, s>>>(static_cast<int32_t*>(data), count, static_cast<int32_t>(divisor));
  } else if (t == DataType::kI64) {
    DivideKernel<<<Blocks(count), kThreads, 0, s>>>(static_cast<int64_t*>(data), count, static_cast<int64_t>(divisor));
  } else {
    return Internal(std::string("LaunchDivideInt: ") + DataTypeName(t) + " is not an integer type");
  }
  return Launched("dividing integers for an average");
}

}  // namespace ringtrain::coll
