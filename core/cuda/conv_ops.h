// CUDA kernels for the convolutional networks' layers, fp32, NCHW, with the shapes and contracts
// of the CPU reference in core/cpu/conv_ops.h (which the GPU tests compare against): parameter
// gradients accumulate (+=), input gradients overwrite. All pointers are device pointers; every
// call enqueues on the given stream and returns the launch error, if any.
//
// Determinism: no atomics. Every output of a convolution's product is one thread's sum in a fixed
// order (the weight gradient's split-K slices are added in slice order); pooling's input gradients
// are gathered by one thread per input element, in a fixed order; per-channel sums use BlockSum.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/cpu/conv_ops.h"
#include "core/cuda/ops.h"
#include "core/status.h"

namespace ringtrain::gpu {

using cpu::ConvShape;

// Convolutions are implicit GEMMs (no im2col matrix is stored): the filter taps' values are
// computed from the input as the product's tiles load them.
// out (N,OC,OH,OW) = conv(in (N,C,H,W), w (OC,C,KH,KW)) + b (OC); b may be null.
Status Conv2dForward(float* out, const float* in, const float* w, const float* b, const ConvShape& s,
                     cudaStream_t stream);
// Scratch floats Conv2dBackward needs: the weight gradient's split-K partial sums (slices x OC x
// C*KH*KW; e.g. 1.6 MB for ResNet-20's first stage at batch 128). Never smaller for a smaller N,
// so scratch sized for the largest batch serves every batch.
int64_t Conv2dScratchFloats(const ConvShape& s);
// din (N,C,H,W) overwritten (may be null), dw += (the slices' partial sums added in slice order),
// db += (may be null). scratch holds scratch_floats (at least Conv2dScratchFloats(s); checked).
Status Conv2dBackward(float* din, float* dw, float* db, const float* dout, const float* in, const float* w,
                      const ConvShape& s, float* scratch, int64_t scratch_floats, cudaStream_t stream);

// Pooling, kernel k, stride st, no padding; argmax (N,C,OH,OW) holds the winner's index in its
// (H,W) plane (the first of equal maxima, as the CPU's).
Status MaxPoolForward(float* out, int32_t* argmax, const float* in, int N, int C, int H, int W, int k, int st,
                      cudaStream_t s);
Status MaxPoolBackward(float* din, const float* dout, const int32_t* argmax, int N, int C, int H, int W, int k, int st,
                       cudaStream_t s);
Status AvgPoolForward(float* out, const float* in, int N, int C, int H, int W, int k, int st, cudaStream_t s);
Status AvgPoolBackward(float* din, const float* dout, int N, int C, int H, int W, int k, int st, cudaStream_t s);

Status ReluForward(float* out, const float* in, int64_t n, cudaStream_t s);
// din = dout where out > 0 (in place allowed).
Status ReluBackward(float* din, const float* dout, const float* out, int64_t n, cudaStream_t s);

// BatchNorm2d over (N,H,W) per channel, as cpu::BatchNormForward: training uses batch statistics,
// saves mean/rstd (C) and moves the running statistics (may be null) by momentum with the
// unbiased variance; evaluation uses the running statistics.
Status BatchNormForward(float* out, float* mean, float* rstd, float* running_mean, float* running_var, const float* in,
                        const float* w, const float* b, int N, int C, int HW, bool train, float momentum, float eps,
                        cudaStream_t s);
// Training-mode backward: din overwritten; dw, db (may be null) accumulate.
Status BatchNormBackward(float* din, float* dw, float* db, const float* dout, const float* in, const float* w,
                         const float* mean, const float* rstd, int N, int C, int HW, cudaStream_t s);

// Mean squared error against target: dpred (may be null) = 2 (pred - target) / n * grad_scale;
// *loss_sum_sq (device, one double) receives the sum of squared differences (the loss is it / n).
// scratch: MseScratchBytes(n) bytes, 8-byte aligned (cudaMalloc's are): the differences, then
// the sum's partials.
size_t MseScratchBytes(int64_t n);
Status MseLoss(double* loss_sum_sq, float* dpred, const float* pred, const float* target, int64_t n, float grad_scale,
               void* scratch, cudaStream_t s);

}  // namespace ringtrain::gpu
