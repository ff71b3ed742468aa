// CUDA kernels for the convolutional layers (fp32, NCHW). See conv_ops.h for the contracts; the
// formulas follow core/cpu/conv_ops.cc so results agree with the CPU reference to rounding.
#include <cmath>
#include <string>

#include "core/cuda/conv_ops.h"
#include "core/cuda/launch.cuh"

namespace ringtrain::gpu {

namespace {

using cuda::Blocks;
using cuda::BlockSum;
using cuda::kThreads;
using cuda::Launched;

Status BlasStatus(cublasStatus_t st, const char* what) {
  if (st == CUBLAS_STATUS_SUCCESS) return Status::Ok();
  return Internal(std::string(what) + ": cuBLAS: " + cublasGetStatusString(st));
}

// col (N, C*KH*KW, OH*OW) from in (N,C,H,W): one thread per col element, zeros in the padding.
__global__ void Im2ColKernel(float* col, const float* in, ConvShape s, int OH, int OW, int64_t n) {
  RT_GRID_STRIDE(i, n) {
    const int64_t ohw = static_cast<int64_t>(OH) * OW, ckk = static_cast<int64_t>(s.C) * s.KH * s.KW;
    const int64_t p = i % ohw, r = (i / ohw) % ckk, img = i / (ohw * ckk);
    const int kw = static_cast<int>(r % s.KW), kh = static_cast<int>((r / s.KW) % s.KH),
              c = static_cast<int>(r / (static_cast<int64_t>(s.KW) * s.KH));
    const int oh = static_cast<int>(p / OW), ow = static_cast<int>(p % OW);
    const int ih = oh * s.stride - s.pad + kh, iw = ow * s.stride - s.pad + kw;
    col[i] = ih >= 0 && ih < s.H && iw >= 0 && iw < s.W
                 ? in[((img * s.C + c) * s.H + ih) * static_cast<int64_t>(s.W) + iw]
                 : 0.f;
  }
}

// din (N,C,H,W) = col2im(dcol): one thread per input element gathers, in (kh, kw) order, the col
// entries that read it.
__global__ void Col2ImKernel(float* din, const float* dcol, ConvShape s, int OH, int OW, int64_t n) {
  RT_GRID_STRIDE(i, n) {
    const int iw = static_cast<int>(i % s.W), ih = static_cast<int>((i / s.W) % s.H);
    const int64_t nc = i / (static_cast<int64_t>(s.H) * s.W);
    const int c = static_cast<int>(nc % s.C);
    const int64_t img = nc / s.C;
    const int64_t ohw = static_cast<int64_t>(OH) * OW, ckk = static_cast<int64_t>(s.C) * s.KH * s.KW;
    float acc = 0.f;
    for (int kh = 0; kh < s.KH; ++kh) {
      const int t = ih + s.pad - kh;  // = oh * stride
      if (t < 0 || t % s.stride != 0 || t / s.stride >= OH) continue;
      const int oh = t / s.stride;
      for (int kw = 0; kw < s.KW; ++kw) {
        const int u = iw + s.pad - kw;
        if (u < 0 || u % s.stride != 0 || u / s.stride >= OW) continue;
        const int ow = u / s.stride;
        const int64_t r = (static_cast<int64_t>(c) * s.KH + kh) * s.KW + kw;
        acc += dcol[(img * ckk + r) * ohw + static_cast<int64_t>(oh) * OW + ow];
      }
    }
    din[i] = acc;
  }
}

// out (N,OC,P) += b[oc].
__global__ void BiasPlanesKernel(float* out, const float* b, int OC, int64_t P, int64_t n) {
  RT_GRID_STRIDE(i, n) { out[i] += b[(i / P) % OC]; }
}

// db[oc] += sum over images and positions of dout (N,OC,P): one block per channel, each thread a
// strided share, then BlockSum (deterministic).
__global__ void BiasGradPlanesKernel(float* db, const float* dout, int N, int OC, int64_t P) {
  __shared__ float sh[32];
  const int oc = blockIdx.x;
  const int64_t cnt = static_cast<int64_t>(N) * P;
  float acc = 0.f;
  for (int64_t j = threadIdx.x; j < cnt; j += blockDim.x) acc += dout[((j / P) * OC + oc) * P + j % P];
  acc = BlockSum(acc, sh);
  if (threadIdx.x == 0) db[oc] += acc;
}

__global__ void MaxPoolFwdKernel(float* out, int32_t* argmax, const float* in, int H, int W, int k, int st, int OH,
                                 int OW, int64_t n) {
  RT_GRID_STRIDE(o, n) {
    const int ow = static_cast<int>(o % OW), oh = static_cast<int>((o / OW) % OH);
    const float* x = in + (o / (static_cast<int64_t>(OH) * OW)) * H * W;
    float best = -INFINITY;
    int32_t bi = oh * st * W + ow * st;  // the window's first pixel if nothing beats -inf (NaNs)
    for (int i = 0; i < k; ++i)
      for (int j = 0; j < k; ++j) {
        const int idx = (oh * st + i) * W + ow * st + j;
        if (x[idx] > best) {
          best = x[idx];
          bi = idx;
        }
      }
    out[o] = best;
    argmax[o] = bi;
  }
}

// The outputs whose window (k, stride st) covers input row ih: oh in [lo, hi].
__device__ void Covering(int ih, int k, int st, int OH, int* lo, int* hi) {
  *lo = ih - k + 1 <= 0 ? 0 : (ih - k + 1 + st - 1) / st;
  *hi = ih / st < OH - 1 ? ih / st : OH - 1;
}

// din gathers dout from the outputs that chose it, in increasing output order (the CPU's order).
__global__ void MaxPoolBwdKernel(float* din, const float* dout, const int32_t* argmax, int H, int W, int k, int st,
                                 int OH, int OW, int64_t n) {
  RT_GRID_STRIDE(i, n) {
    const int iw = static_cast<int>(i % W), ih = static_cast<int>((i / W) % H);
    const int64_t plane = i / (static_cast<int64_t>(H) * W);
    const int32_t me = ih * W + iw;
    int oh0, oh1, ow0, ow1;
    Covering(ih, k, st, OH, &oh0, &oh1);
    Covering(iw, k, st, OW, &ow0, &ow1);
    float acc = 0.f;
    for (int oh = oh0; oh <= oh1; ++oh)
      for (int ow = ow0; ow <= ow1; ++ow) {
        const int64_t o = plane * OH * OW + static_cast<int64_t>(oh) * OW + ow;
        if (argmax[o] == me) acc += dout[o];
      }
    din[i] = acc;
  }
}

__global__ void AvgPoolFwdKernel(float* out, const float* in, int H, int W, int k, int st, int OH, int OW, float inv,
                                 int64_t n) {
  RT_GRID_STRIDE(o, n) {
    const int ow = static_cast<int>(o % OW), oh = static_cast<int>((o / OW) % OH);
    const float* x = in + (o / (static_cast<int64_t>(OH) * OW)) * H * W;
    float acc = 0.f;
    for (int i = 0; i < k; ++i)
      for (int j = 0; j < k; ++j) acc += x[(oh * st + i) * W + ow * st + j];
    out[o] = acc * inv;
  }
}

__global__ void AvgPoolBwdKernel(float* din, const float* dout, int H, int W, int k, int st, int OH, int OW, float inv,
                                 int64_t n) {
  RT_GRID_STRIDE(i, n) {
    const int iw = static_cast<int>(i % W), ih = static_cast<int>((i / W) % H);
    const int64_t plane = i / (static_cast<int64_t>(H) * W);
    int oh0, oh1, ow0, ow1;
    Covering(ih, k, st, OH, &oh0, &oh1);
    Covering(iw, k, st, OW, &ow0, &ow1);
    float acc = 0.f;
    for (int oh = oh0; oh <= oh1; ++oh)
      for (int ow = ow0; ow <= ow1; ++ow)  // the product rounded first, as the CPU's (no FMA)
        acc += __fmul_rn(dout[plane * OH * OW + static_cast<int64_t>(oh) * OW + ow], inv);
    din[i] = acc;
  }
}

__global__ void ReluFwdKernel(float* out, const float* in, int64_t n) {
  RT_GRID_STRIDE(i, n) { out[i] = in[i] > 0.f ? in[i] : 0.f; }
}

__global__ void ReluBwdKernel(float* din, const float* dout, const float* out, int64_t n) {
  RT_GRID_STRIDE(i, n) { din[i] = out[i] > 0.f ? dout[i] : 0.f; }
}

// One block per channel: mean, centred variance, then the normalisation.
__global__ void BatchNormFwdKernel(float* out, float* mean, float* rstd, float* running_mean, float* running_var,
                                   const float* in, const float* w, const float* b, int N, int C, int HW, bool train,
                                   float momentum, float eps) {
  __shared__ float sh[32];
  const int c = blockIdx.x;
  const int64_t cnt = static_cast<int64_t>(N) * HW;
  auto at = [&](int64_t j) { return (static_cast<int64_t>(j / HW) * C + c) * HW + j % HW; };
  float m, s;
  if (train) {
    float acc = 0.f;
    for (int64_t j = threadIdx.x; j < cnt; j += blockDim.x) acc += in[at(j)];
    m = BlockSum(acc, sh) / static_cast<float>(cnt);
    float var = 0.f;
    for (int64_t j = threadIdx.x; j < cnt; j += blockDim.x) {
      const float d = in[at(j)] - m;
      var += d * d;
    }
    var = BlockSum(var, sh);
    const float biased = var / static_cast<float>(cnt);
    s = 1.f / sqrtf(biased + eps);
    if (threadIdx.x == 0) {
      mean[c] = m;
      rstd[c] = s;
      if (running_mean) {
        const float unbiased = cnt > 1 ? var / static_cast<float>(cnt - 1) : biased;
        running_mean[c] = (1.f - momentum) * running_mean[c] + momentum * m;
        running_var[c] = (1.f - momentum) * running_var[c] + momentum * unbiased;
      }
    }
  } else {
    m = running_mean[c];
    s = 1.f / sqrtf(running_var[c] + eps);
  }
  const float scale = s * w[c], shift = (b ? b[c] : 0.f) - m * s * w[c];
  for (int64_t j = threadIdx.x; j < cnt; j += blockDim.x) out[at(j)] = in[at(j)] * scale + shift;
}

__global__ void BatchNormBwdKernel(float* din, float* dw, float* db, const float* dout, const float* in, const float* w,
                                   const float* mean, const float* rstd, int N, int C, int HW) {
  __shared__ float sh[32];
  const int c = blockIdx.x;
  const int64_t cnt = static_cast<int64_t>(N) * HW;
  auto at = [&](int64_t j) { return (static_cast<int64_t>(j / HW) * C + c) * HW + j % HW; };
  const float m = mean[c], s = rstd[c];
  float sd = 0.f, sdn = 0.f;
  for (int64_t j = threadIdx.x; j < cnt; j += blockDim.x) {
    const float d = dout[at(j)];
    sd += d;
    sdn += d * (in[at(j)] - m) * s;
  }
  const float sum_d = BlockSum(sd, sh);
  const float sum_dn = BlockSum(sdn, sh);
  if (threadIdx.x == 0) {
    dw[c] += sum_dn;
    if (db) db[c] += sum_d;
  }
  const float k = w[c] * s, mean_d = sum_d / static_cast<float>(cnt), mean_dn = sum_dn / static_cast<float>(cnt);
  for (int64_t j = threadIdx.x; j < cnt; j += blockDim.x) {
    const int64_t q = at(j);
    din[q] = k * (dout[q] - mean_d - (in[q] - m) * s * mean_dn);
  }
}

__global__ void MseKernel(float* diff, float* dpred, const float* pred, const float* target, int64_t n, float grad_scale) {
  RT_GRID_STRIDE(i, n) {
    const float d = pred[i] - target[i];
    diff[i] = d;
    if (dpred) dpred[i] = 2.f * d / static_cast<float>(n) * grad_scale;
  }
}

}  // namespace

int64_t Conv2dScratchFloats(const ConvShape& s) { return static_cast<int64_t>(s.N) * s.ColRows() * s.ColCols(); }

Status Conv2dForward(const Blas& blas, float* out, const float* in, const float* w, const float* b,
                     const ConvShape& s, float* scratch) {
  const int OH = s.OH(), OW = s.OW();
  const int64_t ohw = s.ColCols(), ckk = s.ColRows(), n = Conv2dScratchFloats(s);
  Im2ColKernel<<<Blocks(n), kThreads, 0, blas.stream()>>>(scratch, in, s, OH, OW, n);
  RT_RETURN_IF_ERROR(Launched("Conv2dForward im2col"));
  const float one = 1.f, zero = 0.f;
  // Per image: out_n^T (OHW,OC) = col_n^T (OHW,CKK) * w^T (CKK,OC), column-major views.
  RT_RETURN_IF_ERROR(BlasStatus(
      cublasSgemmStridedBatched(blas.handle(), CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(ohw), s.OC,
                                static_cast<int>(ckk), &one, scratch, static_cast<int>(ohw), ckk * ohw, w,
                                static_cast<int>(ckk), 0, &zero, out, static_cast<int>(ohw), s.OC * ohw, s.N),
      "Conv2dForward sgemm"));
  if (b == nullptr) return Status::Ok();
  const int64_t total = static_cast<int64_t>(s.N) * s.OC * ohw;
  BiasPlanesKernel<<<Blocks(total), kThreads, 0, blas.stream()>>>(out, b, s.OC, ohw, total);
  return Launched("Conv2dForward bias");
}

Status Conv2dBackward(const Blas& blas, float* din, float* dw, float* db, const float* dout, const float* in,
                      const float* w, const ConvShape& s, float* scratch) {
  const int OH = s.OH(), OW = s.OW();
  const int64_t ohw = s.ColCols(), ckk = s.ColRows(), n = Conv2dScratchFloats(s);
  const float one = 1.f, zero = 0.f;
  Im2ColKernel<<<Blocks(n), kThreads, 0, blas.stream()>>>(scratch, in, s, OH, OW, n);
  RT_RETURN_IF_ERROR(Launched("Conv2dBackward im2col"));
  // dw^T (CKK,OC) += col_n (CKK,OHW) * dout_n^T (OHW,OC), image after image (a fixed order).
  for (int img = 0; img < s.N; ++img)
    RT_RETURN_IF_ERROR(BlasStatus(
        cublasSgemm(blas.handle(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(ckk), s.OC, static_cast<int>(ohw), &one,
                    scratch + img * ckk * ohw, static_cast<int>(ohw), dout + img * s.OC * ohw, static_cast<int>(ohw),
                    &one, dw, static_cast<int>(ckk)),
        "Conv2dBackward sgemm (weights)"));
  if (db && s.OC > 0) {
    BiasGradPlanesKernel<<<s.OC, kThreads, 0, blas.stream()>>>(db, dout, s.N, s.OC, ohw);
    RT_RETURN_IF_ERROR(Launched("Conv2dBackward bias"));
  }
  if (din == nullptr) return Status::Ok();
  // dcol_n (CKK,OHW) = w^T (CKK,OC) * dout_n (OC,OHW), into the scratch (col is no longer needed).
  RT_RETURN_IF_ERROR(BlasStatus(
      cublasSgemmStridedBatched(blas.handle(), CUBLAS_OP_N, CUBLAS_OP_T, static_cast<int>(ohw), static_cast<int>(ckk),
                                s.OC, &one, dout, static_cast<int>(ohw), s.OC * ohw, w, static_cast<int>(ckk), 0,
                                &zero, scratch, static_cast<int>(ohw), ckk * ohw, s.N),
      "Conv2dBackward sgemm (input)"));
  const int64_t in_n = static_cast<int64_t>(s.N) * s.C * s.H * s.W;
  Col2ImKernel<<<Blocks(in_n), kThreads, 0, blas.stream()>>>(din, scratch, s, OH, OW, in_n);
  return Launched("Conv2dBackward col2im");
}

Status MaxPoolForward(float* out, int32_t* argmax, const float* in, int N, int C, int H, int W, int k, int st,
                      cudaStream_t s) {
  const int OH = (H - k) / st + 1, OW = (W - k) / st + 1;
  const int64_t n = static_cast<int64_t>(N) * C * OH * OW;
  MaxPoolFwdKernel<<<Blocks(n), kThreads, 0, s>>>(out, argmax, in, H, W, k, st, OH, OW, n);
  return Launched("MaxPoolForward");
}

Status MaxPoolBackward(float* din, const float* dout, const int32_t* argmax, int N, int C, int H, int W, int k, int st,
                       cudaStream_t s) {
  const int OH = (H - k) / st + 1, OW = (W - k) / st + 1;
  const int64_t n = static_cast<int64_t>(N) * C * H * W;
  MaxPoolBwdKernel<<<Blocks(n), kThreads, 0, s>>>(din, dout, argmax, H, W, k, st, OH, OW, n);
  return Launched("MaxPoolBackward");
}

Status AvgPoolForward(float* out, const float* in, int N, int C, int H, int W, int k, int st, cudaStream_t s) {
  const int OH = (H - k) / st + 1, OW = (W - k) / st + 1;
  const int64_t n = static_cast<int64_t>(N) * C * OH * OW;
  AvgPoolFwdKernel<<<Blocks(n), kThreads, 0, s>>>(out, in, H, W, k, st, OH, OW, 1.f / static_cast<float>(k * k), n);
  return Launched("AvgPoolForward");
}

Status AvgPoolBackward(float* din, const float* dout, int N, int C, int H, int W, int k, int st, cudaStream_t s) {
  const int OH = (H - k) / st + 1, OW = (W - k) / st + 1;
  const int64_t n = static_cast<int64_t>(N) * C * H * W;
  AvgPoolBwdKernel<<<Blocks(n), kThreads, 0, s>>>(din, dout, H, W, k, st, OH, OW, 1.f / static_cast<float>(k * k), n);
  return Launched("AvgPoolBackward");
}

Status ReluForward(float* out, const float* in, int64_t n, cudaStream_t s) {
  if (n == 0) return Status::Ok();
  ReluFwdKernel<<<Blocks(n), kThreads, 0, s>>>(out, in, n);
  return Launched("ReluForward");
}

Status ReluBackward(float* din, const float* dout, const float* out, int64_t n, cudaStream_t s) {
  if (n == 0) return Status::Ok();
  ReluBwdKernel<<<Blocks(n), kThreads, 0, s>>>(din, dout, out, n);
  return Launched("ReluBackward");
}

Status BatchNormForward(float* out, float* mean, float* rstd, float* running_mean, float* running_var, const float* in,
                        const float* w, const float* b, int N, int C, int HW, bool train, float momentum, float eps,
                        cudaStream_t s) {
  if (C == 0) return Status::Ok();
  BatchNormFwdKernel<<<C, kThreads, 0, s>>>(out, mean, rstd, running_mean, running_var, in, w, b, N, C, HW, train,
                                            momentum, eps);
  return Launched("BatchNormForward");
}

Status BatchNormBackward(float* din, float* dw, float* db, const float* dout, const float* in, const float* w,
                         const float* mean, const float* rstd, int N, int C, int HW, cudaStream_t s) {
  if (C == 0) return Status::Ok();
  BatchNormBwdKernel<<<C, kThreads, 0, s>>>(din, dw, db, dout, in, w, mean, rstd, N, C, HW);
  return Launched("BatchNormBackward");
}

size_t MseScratchBytes(int64_t n) {
  const size_t floats = (static_cast<size_t>(n) * sizeof(float) + 255) / 256 * 256;
  return floats + static_cast<size_t>(SumSquaresScratch(n)) * sizeof(double);
}

Status MseLoss(double* loss_sum_sq, float* dpred, const float* pred, const float* target, int64_t n, float grad_scale,
               void* scratch, cudaStream_t s) {
  float* diff = static_cast<float*>(scratch);
  double* sums = reinterpret_cast<double*>(static_cast<char*>(scratch) + (static_cast<size_t>(n) * sizeof(float) + 255) / 256 * 256);
  if (n > 0) {
    MseKernel<<<Blocks(n), kThreads, 0, s>>>(diff, dpred, pred, target, n, grad_scale);
    RT_RETURN_IF_ERROR(Launched("MseLoss"));
  }
  RT_RETURN_IF_ERROR(SumSquares(sums, diff, n, s));
  RT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(loss_sum_sq, sums, sizeof(double), cudaMemcpyDeviceToDevice, s),
                          "MseLoss result");
  return Status::Ok();
}

}  // namespace ringtrain::gpu
