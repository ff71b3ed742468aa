// CUDA kernels for the convolutional layers (fp32, NCHW). See conv_ops.h for the contracts; the
// formulas follow core/cpu/conv_ops.cc so results agree with the CPU reference to rounding.
#include <algorithm>
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

// ---- Convolution as implicit GEMM ------------------------------------------------------------
// Each of the three products is C (M,Ncol) = A (M,K) * B (K,Ncol) where A and B are read through
// loaders that compute every element from the convolution's own tensors, so no im2col matrix is
// stored. 64x64 output tiles per block of 256 threads (4x4 outputs each, strided by 16 so shared
// reads broadcast and stores coalesce), K in steps of 16 staged in shared memory. blockIdx.z
// takes one slice of K (split-K for the weight gradient, whose K is images x positions); every
// output of a slice is one thread's sum in a fixed order, so results repeat bitwise.
constexpr int kTm = 64, kTn = 64, kTk = 16, kGemmThreads = 256;

struct ConvGeom {
  int C, H, W, OC, KH, KW, stride, pad, OH, OW;
};

ConvGeom GeomOf(const ConvShape& s) { return {s.C, s.H, s.W, s.OC, s.KH, s.KW, s.stride, s.pad, s.OH(), s.OW()}; }

// The input value a filter tap k = (c, kh, kw) sees at output position p = (oh, ow) of image img
// (0 in the padding): element (k, p) of image img's im2col matrix.
__device__ __forceinline__ float Patch(const float* in, const ConvGeom& g, int64_t img, int k, int p) {
  const int kk = g.KH * g.KW;
  const int c = k / kk, r = k % kk, kh = r / g.KW, kw = r % g.KW;
  const int oh = p / g.OW, ow = p % g.OW;
  const int ih = oh * g.stride - g.pad + kh, iw = ow * g.stride - g.pad + kw;
  if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) return 0.f;
  return in[((img * g.C + c) * g.H + ih) * static_cast<int64_t>(g.W) + iw];
}

template <class LoadA, class LoadB, class Store>
__global__ void __launch_bounds__(kGemmThreads)
    ImplicitGemmKernel(int M, int64_t Ncol, int64_t K, int64_t kslice, LoadA a, LoadB b, Store st) {
  // as is filled k-fastest: one padding column keeps those stores off a single bank.
  __shared__ float as[kTk][kTm + 1], bs[kTk][kTn];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int m0 = blockIdx.y * kTm;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTn;
  const int64_t kb = blockIdx.z * kslice, ke = kb + kslice < K ? kb + kslice : K;
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
  for (int64_t k0 = kb; k0 < ke; k0 += kTk) {
    for (int e = threadIdx.x; e < kTm * kTk; e += kGemmThreads) {
      const int kk = e % kTk, mm = e / kTk;
      const int64_t k = k0 + kk;
      as[kk][mm] = m0 + mm < M && k < ke ? a(m0 + mm, k) : 0.f;
    }
    for (int e = threadIdx.x; e < kTk * kTn; e += kGemmThreads) {
      const int nn = e % kTn, kk = e / kTn;
      const int64_t k = k0 + kk;
      bs[kk][nn] = n0 + nn < Ncol && k < ke ? b(k, n0 + nn) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTk; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = as[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int m = m0 + ty + 16 * i;
      const int64_t n = n0 + tx + 16 * j;
      if (m < M && n < Ncol) st(blockIdx.z, m, n, acc[i][j]);
    }
}

// Forward: out (img,oc,p) = w (OC, CKK) * patches (CKK, img*P) + b. M = OC, K = CKK, Ncol = N*P.
struct FwdA {
  const float* w;
  int64_t ckk;
  __device__ float operator()(int m, int64_t k) const { return w[m * ckk + k]; }
};
struct FwdB {
  const float* in;
  ConvGeom g;
  int P;
  __device__ float operator()(int64_t k, int64_t col) const {
    return Patch(in, g, col / P, static_cast<int>(k), static_cast<int>(col % P));
  }
};
struct FwdStore {
  float* out;
  const float* b;
  int OC, P;
  __device__ void operator()(int, int m, int64_t col, float v) const {
    out[((col / P) * OC + m) * P + col % P] = b ? v + b[m] : v;
  }
};

// Input gradient: din (img,c,h,w) = sum over taps (oc,kh,kw) of w[oc,c,kh,kw] * dout at the output
// that tap maps (h,w) to (none where the stride skips it or it falls outside). M = C,
// K = OC*KH*KW, Ncol = N*H*W.
struct BwdDataA {
  const float* w;
  ConvGeom g;
  __device__ float operator()(int c, int64_t k) const {
    const int kk = g.KH * g.KW;
    const int oc = static_cast<int>(k / kk), r = static_cast<int>(k % kk);
    return w[(static_cast<int64_t>(oc) * g.C + c) * kk + r];
  }
};
struct BwdDataB {
  const float* dout;
  ConvGeom g;
  __device__ float operator()(int64_t k, int64_t col) const {
    const int kk = g.KH * g.KW, hw = g.H * g.W;
    const int oc = static_cast<int>(k / kk), r = static_cast<int>(k % kk), kh = r / g.KW, kw = r % g.KW;
    const int64_t img = col / hw;
    const int pos = static_cast<int>(col % hw), h = pos / g.W, w = pos % g.W;
    const int th = h + g.pad - kh, tw = w + g.pad - kw;  // = oh * stride, ow * stride
    if (th < 0 || tw < 0 || th % g.stride != 0 || tw % g.stride != 0) return 0.f;
    const int oh = th / g.stride, ow = tw / g.stride;
    if (oh >= g.OH || ow >= g.OW) return 0.f;
    return dout[((img * g.OC + oc) * g.OH + oh) * static_cast<int64_t>(g.OW) + ow];
  }
};
struct BwdDataStore {
  float* din;
  int C, HW;
  __device__ void operator()(int, int c, int64_t col, float v) const {
    din[((col / HW) * C + c) * HW + col % HW] = v;
  }
};

// Weight gradient: dw (oc, k) += sum over images and positions of dout * patches. M = OC,
// K = N*P (split into slices), Ncol = CKK; each slice writes its partial sums, which
// SumSlicesKernel adds into dw in slice order.
struct BwdFiltA {
  const float* dout;
  int OC, P;
  __device__ float operator()(int oc, int64_t kk) const { return dout[((kk / P) * OC + oc) * P + kk % P]; }
};
struct BwdFiltB {
  const float* in;
  ConvGeom g;
  int P;
  __device__ float operator()(int64_t kk, int64_t k) const {
    return Patch(in, g, kk / P, static_cast<int>(k), static_cast<int>(kk % P));
  }
};
struct PartialStore {
  float* partial;
  int M;
  int64_t Ncol;
  __device__ void operator()(int z, int m, int64_t n, float v) const {
    partial[(static_cast<int64_t>(z) * M + m) * Ncol + n] = v;
  }
};

__global__ void SumSlicesKernel(float* dw, const float* partial, int slices, int64_t n) {
  RT_GRID_STRIDE(i, n) {
    float acc = 0.f;
    for (int z = 0; z < slices; ++z) acc += partial[z * n + i];
    dw[i] += acc;
  }
}

// Split-K for the weight gradient: enough slices for about 512 blocks, each at least 256 long
// (a multiple of the K step). A function of the shape only, so results do not depend on the device.
// MaxSlices bounds the count (rounding the slice length up only lowers it) and grows with K, so
// scratch sized for a batch fits every smaller one.
int64_t MaxSlices(int M, int64_t Ncol, int64_t K) {
  const int64_t tiles = ((M + kTm - 1) / kTm) * ((Ncol + kTn - 1) / kTn);
  return std::max<int64_t>(1, std::min<int64_t>((K + 255) / 256, (512 + tiles - 1) / tiles));
}

void SplitK(int M, int64_t Ncol, int64_t K, int* slices, int64_t* kslice) {
  const int64_t s = MaxSlices(M, Ncol, K);
  int64_t len = (K + s - 1) / s;
  len = std::max<int64_t>(kTk, (len + kTk - 1) / kTk * kTk);
  *kslice = len;
  *slices = static_cast<int>(std::max<int64_t>(1, (K + len - 1) / len));
}

template <class LoadA, class LoadB, class Store>
Status LaunchGemm(int M, int64_t Ncol, int64_t K, int slices, int64_t kslice, LoadA a, LoadB b, Store st,
                  cudaStream_t s, const char* what) {
  if (M == 0 || Ncol == 0) return Status::Ok();
  const dim3 grid(static_cast<unsigned>((Ncol + kTn - 1) / kTn), static_cast<unsigned>((M + kTm - 1) / kTm),
                  static_cast<unsigned>(slices));
  ImplicitGemmKernel<<<grid, kGemmThreads, 0, s>>>(M, Ncol, K, kslice, a, b, st);
  return Launched(what);
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

int64_t Conv2dScratchFloats(const ConvShape& s) {
  return MaxSlices(s.OC, s.ColRows(), static_cast<int64_t>(s.N) * s.ColCols()) * s.OC * s.ColRows();
}

Status Conv2dForward(float* out, const float* in, const float* w, const float* b, const ConvShape& s,
                     cudaStream_t stream) {
  const ConvGeom g = GeomOf(s);
  const int P = static_cast<int>(s.ColCols());
  const int64_t ckk = s.ColRows();
  return LaunchGemm(s.OC, static_cast<int64_t>(s.N) * P, ckk, 1, ckk, FwdA{w, ckk}, FwdB{in, g, P},
                    FwdStore{out, b, s.OC, P}, stream, "Conv2dForward");
}

Status Conv2dBackward(float* din, float* dw, float* db, const float* dout, const float* in, const float* w,
                      const ConvShape& s, float* scratch, int64_t scratch_floats, cudaStream_t stream) {
  const ConvGeom g = GeomOf(s);
  const int P = static_cast<int>(s.ColCols());
  const int64_t ckk = s.ColRows(), npos = static_cast<int64_t>(s.N) * P;
  int slices;
  int64_t kslice;
  SplitK(s.OC, ckk, npos, &slices, &kslice);
  RT_CHECK_MSG(static_cast<int64_t>(slices) * s.OC * ckk <= scratch_floats,
               "Conv2dBackward: scratch smaller than Conv2dScratchFloats of this shape");
  RT_RETURN_IF_ERROR(LaunchGemm(s.OC, ckk, npos, slices, kslice, BwdFiltA{dout, s.OC, P}, BwdFiltB{in, g, P},
                                PartialStore{scratch, s.OC, ckk}, stream, "Conv2dBackward (weights)"));
  const int64_t nw = static_cast<int64_t>(s.OC) * ckk;
  if (nw > 0) {
    SumSlicesKernel<<<Blocks(nw), kThreads, 0, stream>>>(dw, scratch, slices, nw);
    RT_RETURN_IF_ERROR(Launched("Conv2dBackward (weight slices)"));
  }
  if (db && s.OC > 0) {
    BiasGradPlanesKernel<<<s.OC, kThreads, 0, stream>>>(db, dout, s.N, s.OC, P);
    RT_RETURN_IF_ERROR(Launched("Conv2dBackward bias"));
  }
  if (din == nullptr) return Status::Ok();
  const int64_t taps = static_cast<int64_t>(s.OC) * s.KH * s.KW;
  return LaunchGemm(s.C, static_cast<int64_t>(s.N) * s.H * s.W, taps, 1, taps, BwdDataA{w, g}, BwdDataB{dout, g},
                    BwdDataStore{din, s.C, s.H * s.W}, stream, "Conv2dBackward (input)");
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
