// Direct (im2col-free) float convolution for the shape that dominates CIFAR ResNets: 3x3 kernel,
// stride 1, output width a multiple of 8, on CPUs with AVX2+FMA. Register-blocked over output
// channels and 8-pixel vectors; the input gradient is the same kernel run as a transposed
// convolution. conv_ops.cc dispatches here when DirectConvSupported(); every other shape (and
// double, the gradient-check reference) takes the im2col + GEMM path.
#pragma once

#include <cstdint>

#include "core/cpu/conv_ops.h"

namespace ringtrain::cpu {

// True when this build has the kernels (AVX2+FMA) and s is 3x3, stride 1, pad 0..2, OW % 8 == 0
// and (for the input gradient) W % 8 == 0.
bool DirectConvSupported(const ConvShape& s);

// Scratch floats the direct path needs: per-thread padded images and weight-gradient partials,
// plus one shared flipped copy of the weights. `threads` is the OpenMP team size.
int64_t DirectConvScratch(const ConvShape& s, int threads);

// Same contracts as Conv2dForward / Conv2dBackward (din overwritten and may be null; dw, db +=).
void DirectConvForward(float* out, const float* in, const float* w, const float* b, const ConvShape& s,
                       float* scratch);
void DirectConvBackward(float* din, float* dw, float* db, const float* dout, const float* in, const float* w,
                        const ConvShape& s, float* scratch);

}  // namespace ringtrain::cpu
