// CPU reference kernels for convolutional networks, layout NCHW. Templated like ops.h: float
// trains, double is the float64 reference for gradient checks. Same gradient contract: parameter
// gradients accumulate (+=), input gradients overwrite.
#pragma once

#include <cstdint>

namespace ringtrain::cpu {

struct ConvShape {
  int N = 1, C = 1, H = 1, W = 1;  // input
  int OC = 1, KH = 1, KW = 1;
  int stride = 1, pad = 0;
  int OH() const { return (H + 2 * pad - KH) / stride + 1; }
  int OW() const { return (W + 2 * pad - KW) / stride + 1; }
  int64_t ColRows() const { return static_cast<int64_t>(C) * KH * KW; }
  int64_t ColCols() const { return static_cast<int64_t>(OH()) * OW(); }
};

// Scratch elements Conv2dForward/Backward need for the current thread budget (im2col buffers).
int64_t ConvScratchSize(const ConvShape& s);

// out (N,OC,OH,OW) = conv(in (N,C,H,W), w (OC,C,KH,KW)) + b (OC); b may be null.
template <typename T>
void Conv2dForward(T* out, const T* in, const T* w, const T* b, const ConvShape& s, T* scratch);
// din (N,C,H,W) overwritten (may be null), dw += , db += (may be null).
template <typename T>
void Conv2dBackward(T* din, T* dw, T* db, const T* dout, const T* in, const T* w, const ConvShape& s, T* scratch);

// Max pooling, kernel k, stride st, no padding. argmax (N,C,OH,OW) records the winner's index
// within its (H,W) plane for backward.
template <typename T>
void MaxPoolForward(T* out, int32_t* argmax, const T* in, int N, int C, int H, int W, int k, int st);
template <typename T>
void MaxPoolBackward(T* din, const T* dout, const int32_t* argmax, int N, int C, int H, int W, int k, int st);

// Average pooling, kernel k, stride st, no padding. Global average pooling is k = H = W.
template <typename T>
void AvgPoolForward(T* out, const T* in, int N, int C, int H, int W, int k, int st);
template <typename T>
void AvgPoolBackward(T* din, const T* dout, int N, int C, int H, int W, int k, int st);

template <typename T>
void ReluForward(T* out, const T* in, int64_t n);
// din = dout where out > 0 (in place allowed).
template <typename T>
void ReluBackward(T* din, const T* dout, const T* out, int64_t n);

// BatchNorm2d over (N,H,W) per channel. Training: batch statistics, saved mean/rstd (C), and the
// running statistics move by `momentum` (running = (1-m) running + m batch, unbiased variance,
// as PyTorch). Evaluation (train = false): running statistics, nothing saved.
template <typename T>
void BatchNormForward(T* out, T* mean, T* rstd, T* running_mean, T* running_var, const T* in, const T* w,
                      const T* b, int N, int C, int HW, bool train, T momentum, T eps);
// Training-mode backward. din overwritten; dw, db accumulate.
template <typename T>
void BatchNormBackward(T* din, T* dw, T* db, const T* dout, const T* in, const T* w, const T* mean, const T* rstd,
                       int N, int C, int HW);

// Mean squared error: loss = mean over all elements of (pred - target)^2; dpred = 2 (pred -
// target) / n * grad_scale (if non-null). Returns the loss.
template <typename T>
double MseLoss(T* dpred, const T* pred, const T* target, int64_t n, T grad_scale);

}  // namespace ringtrain::cpu
