// Element-wise device kernels the NCCL communicator needs around NCCL's own (nccl_kernels.cu).
// Each enqueues on stream `s` and returns the launch error, if any.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "collectives/types.h"
#include "core/status.h"

namespace ringtrain::coll {

// in (count elements of bf16/fp16 t) -> out (fp32).
Status LaunchWiden(const void* in, float* out, int64_t count, DataType t, cudaStream_t s);
// in (fp32) -> out (bf16/fp16 t), round to nearest even; divisor != 1 divides first (kAvg).
Status LaunchNarrow(const float* in, void* out, int64_t count, DataType t, float divisor, cudaStream_t s);
// data (int32/int64 t) /= divisor, truncating as the host Communicator's integer kAvg does.
Status LaunchDivideInt(void* data, int64_t count, DataType t, int divisor, cudaStream_t s);

}  // namespace ringtrain::coll
