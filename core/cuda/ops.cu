// CUDA kernels for the Transformer ops (fp32). See ops.h for the contracts; the formulas follow
// core/cpu/ops.cc term by term so results agree with the CPU reference to rounding.
#include <cmath>
#include <string>
#include <utility>

#include "core/cuda/launch.cuh"
#include "core/cuda/ops.h"
#include "core/rng.h"

namespace ringtrain::gpu {

namespace {

using cuda::Blocks;
using cuda::BlockSum;
using cuda::kThreads;
using cuda::Launched;
constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2/pi)

Status BlasStatus(cublasStatus_t st, const char* what) {
  if (st == CUBLAS_STATUS_SUCCESS) return Status::Ok();
  return Internal(std::string(what) + ": cuBLAS: " + cublasGetStatusString(st));
}

__device__ float BlockMax(float v, float* shared32) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) shared32[warp] = v;
  __syncthreads();
  float t = lane < warps ? shared32[lane] : -INFINITY;
  for (int o = 16; o > 0; o >>= 1) t = fmaxf(t, __shfl_xor_sync(0xffffffffu, t, o));
  return t;
}

// Loads and stores of fp32 or bf16 activations; arithmetic is always fp32.
__device__ __forceinline__ float ToF(float x) { return x; }
__device__ __forceinline__ float ToF(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void Store(float* p, float x) { *p = x; }
__device__ __forceinline__ void Store(bf16* p, float x) { *p = __float2bfloat16_rn(x); }

__global__ void EmbeddingFwdKernel(float* out, const int32_t* tokens, const float* wte, const float* wpe, int T, int C,
                                   int64_t n) {
  RT_GRID_STRIDE(i, n) {
    const int64_t bt = i / C;
    const int c = static_cast<int>(i % C), t = static_cast<int>(bt % T);
    out[i] = wte[static_cast<int64_t>(tokens[bt]) * C + c] + wpe[static_cast<int64_t>(t) * C + c];
  }
}

// One thread per channel walks every position in order: deterministic, no atomics.
__global__ void EmbeddingBwdKernel(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B, int T,
                                   int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t) {
      const int64_t bt = static_cast<int64_t>(b) * T + t;
      const float d = dout[bt * C + c];
      dwpe[static_cast<int64_t>(t) * C + c] += d;
      dwte[static_cast<int64_t>(tokens[bt]) * C + c] += d;
    }
}

// One block per row.
template <typename OutT>
__global__ void LayerNormFwdKernel(OutT* out, float* mean, float* rstd, const float* in, const float* w,
                                   const float* b, int C) {
  __shared__ float sh[32];
  const int64_t n = blockIdx.x;
  const float* x = in + n * C;
  float s = 0.f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) s += x[c];
  const float m = BlockSum(s, sh) / C;
  float v = 0.f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float d = x[c] - m;
    v += d * d;
  }
  const float r = 1.f / sqrtf(BlockSum(v, sh) / C + 1e-5f);
  OutT* o = out + n * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) Store(o + c, (x[c] - m) * r * w[c] + (b ? b[c] : 0.f));
  if (threadIdx.x == 0) {
    mean[n] = m;
    rstd[n] = r;
  }
}

__global__ void LayerNormBwdInputKernel(float* din, const float* dout, const float* in, const float* w,
                                        const float* mean, const float* rstd, int C) {
  __shared__ float sh[32];
  const int64_t n = blockIdx.x;
  const float* x = in + n * C;
  const float* d = dout + n * C;
  const float m = mean[n], s = rstd[n];
  float a = 0.f, b = 0.f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float dnorm = w[c] * d[c];
    a += dnorm;
    b += dnorm * (x[c] - m) * s;
  }
  const float dnorm_mean = BlockSum(a, sh) / C;
  const float dnorm_norm_mean = BlockSum(b, sh) / C;
  float* dx = din + n * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float norm = (x[c] - m) * s;
    dx[c] += (w[c] * d[c] - dnorm_mean - norm * dnorm_norm_mean) * s;
  }
}

// One thread per channel walks the rows in order.
__global__ void LayerNormBwdParamKernel(float* dw, float* db, const float* dout, const float* in, const float* mean,
                                        const float* rstd, int N, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float gw = 0.f, gb = 0.f;
  for (int n = 0; n < N; ++n) {
    const int64_t i = static_cast<int64_t>(n) * C + c;
    gw += (in[i] - mean[n]) * rstd[n] * dout[i];
    gb += dout[i];
  }
  dw[c] += gw;
  if (db) db[c] += gb;
}

__global__ void BiasRowsKernel(float* out, const float* b, int OC, int64_t n) {
  RT_GRID_STRIDE(i, n) out[i] += b[i % OC];
}

__global__ void ColumnSumKernel(float* db, const float* dout, int N, int OC) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= OC) return;
  float s = 0.f;
  for (int n = 0; n < N; ++n) s += dout[static_cast<int64_t>(n) * OC + c];
  db[c] += s;
}

// One block per (b, h, query row t): causal softmax of the scaled scores in place.
__global__ void CausalSoftmaxKernel(float* att, int T) {
  __shared__ float sh[32];
  const int t = blockIdx.x % T;
  float* row = att + static_cast<int64_t>(blockIdx.x) * T;
  float mx = -INFINITY;
  for (int j = threadIdx.x; j <= t; j += blockDim.x) mx = fmaxf(mx, row[j]);
  mx = BlockMax(mx, sh);
  float s = 0.f;
  for (int j = threadIdx.x; j <= t; j += blockDim.x) {
    const float e = expf(row[j] - mx);
    row[j] = e;
    s += e;
  }
  const float inv = 1.f / BlockSum(s, sh);
  for (int j = threadIdx.x; j < T; j += blockDim.x) row[j] = j <= t ? row[j] * inv : 0.f;
}

// dpre[t][j] = att[t][j] * (datt[t][j] - sum_k att[t][k] datt[t][k]), in place over datt.
__global__ void SoftmaxBackwardKernel(float* datt, const float* att, int T) {
  __shared__ float sh[32];
  const int t = blockIdx.x % T;
  const int64_t off = static_cast<int64_t>(blockIdx.x) * T;
  float s = 0.f;
  for (int j = threadIdx.x; j <= t; j += blockDim.x) s += att[off + j] * datt[off + j];
  const float dot = BlockSum(s, sh);
  for (int j = threadIdx.x; j < T; j += blockDim.x)
    datt[off + j] = j <= t ? att[off + j] * (datt[off + j] - dot) : 0.f;
}

__device__ __forceinline__ float Gelu(float x) {
  const float u = kGeluScale * (x + 0.044715f * x * x * x);
  return 0.5f * x * (1.f + tanhf(u));
}

__global__ void GeluFwdKernel(float* out, const float* in, int64_t n) {
  RT_GRID_STRIDE(i, n) { out[i] = Gelu(in[i]); }
}

// bf16 activations: the pre-activation is kept rounded (for backward) and GELU of the fp32 value
// is stored rounded.
__global__ void GeluFwdBf16Kernel(bf16* pre, bf16* out, const float* in, int64_t n) {
  RT_GRID_STRIDE(i, n) {
    const float x = in[i];
    pre[i] = __float2bfloat16_rn(x);
    out[i] = __float2bfloat16_rn(Gelu(x));
  }
}

template <typename InT>
__global__ void GeluBwdKernel(float* din, const float* dout, const InT* in, int64_t n) {
  RT_GRID_STRIDE(i, n) {
    const float x = ToF(in[i]);
    const float u = kGeluScale * (x + 0.044715f * x * x * x);
    const float th = tanhf(u);
    const float sech2 = 1.f - th * th;
    const float g = 0.5f * (1.f + th) + 0.5f * x * sech2 * kGeluScale * (1.f + 3.f * 0.044715f * x * x);
    din[i] = g * dout[i];
  }
}

__global__ void ResidualKernel(float* out, const float* a, const float* b, int64_t n) {
  RT_GRID_STRIDE(i, n) out[i] = a[i] + b[i];
}

// One block per row.
__global__ void SoftmaxXentKernel(float* losses, float* dlogits, const float* logits, const int32_t* targets, int V,
                                  float grad_scale) {
  __shared__ float sh[32];
  const int64_t n = blockIdx.x;
  const float* x = logits + n * V;
  const int tgt = targets[n];
  float mx = -INFINITY;
  for (int v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, x[v]);
  mx = BlockMax(mx, sh);
  float s = 0.f;
  for (int v = threadIdx.x; v < V; v += blockDim.x) s += expf(x[v] - mx);
  const float logsum = logf(BlockSum(s, sh)) + mx;
  // Read the target's logit before dlogits (which may alias logits) is written.
  const float loss = tgt < 0 ? 0.f : logsum - x[tgt];
  __syncthreads();
  if (threadIdx.x == 0) losses[n] = loss;
  if (dlogits) {
    float* d = dlogits + n * V;
    for (int v = threadIdx.x; v < V; v += blockDim.x)
      d[v] = tgt < 0 ? 0.f : expf(x[v] - logsum) * grad_scale - (v == tgt ? grad_scale : 0.f);
  }
}

// The penalised, scaled gradient of element i, as UpdateSegment in models/optim.cc computes it.
__device__ __forceinline__ float PenalisedGrad(float g, float p, float gs, float coupled, float l1) {
  return g * gs + coupled * p + (l1 != 0.f ? l1 * static_cast<float>((p > 0.f) - (p < 0.f)) : 0.f);
}

__global__ void AdamKernel(float* p, const float* g, float* m, float* v, int64_t n, float gs, float coupled, float l1,
                           float b1, float b2, float omb1, float omb2, float eps, float step_size, float inv_sqrt_bc2,
                           float decay_mul) {
  RT_GRID_STRIDE(i, n) {
    const float gi = PenalisedGrad(g[i], p[i], gs, coupled, l1);
    const float mi = b1 * m[i] + omb1 * gi;
    const float vi = b2 * v[i] + omb2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float denom = sqrtf(vi) * inv_sqrt_bc2 + eps;
    p[i] = p[i] * decay_mul - step_size * mi / denom;
  }
}

__global__ void SgdKernel(float* p, const float* g, float* m, int64_t n, float gs, float coupled, float l1, float mu,
                          bool nesterov, float lr) {
  RT_GRID_STRIDE(i, n) {
    float gi = PenalisedGrad(g[i], p[i], gs, coupled, l1);
    if (m != nullptr) {
      const float mi = mu * m[i] + gi;
      m[i] = mi;
      gi = nesterov ? gi + mu * mi : mi;
    }
    p[i] -= lr * gi;
  }
}

// One block per kSumSqBlock elements: each thread sums its strided elements in double, then
// BlockSum combines them. Deterministic (no atomics, fixed shapes).
constexpr int64_t kSumSqBlock = 8192;
__global__ void SumSqPartialKernel(double* partials, const float* g, int64_t n) {
  __shared__ double sh[32];
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * kSumSqBlock;
  const int64_t e = b0 + kSumSqBlock < n ? b0 + kSumSqBlock : n;
  double s = 0;
  for (int64_t i = b0 + threadIdx.x; i < e; i += blockDim.x) s += static_cast<double>(g[i]) * g[i];
  s = BlockSum(s, sh);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// The partials summed by one block in a fixed order: thread t adds partials t, t + 256, ... in
// order, then BlockSum. Deterministic; no long serial chain on one thread.
__global__ void SumSqFinalKernel(double* out, const double* partials, int64_t nb) {
  __shared__ double sh[32];
  double s = 0;
  for (int64_t b = threadIdx.x; b < nb; b += blockDim.x) s += partials[b];
  s = BlockSum(s, sh);
  if (threadIdx.x == 0) *out = s;
}

__global__ void ToBf16Kernel(bf16* out, const float* in, int64_t n) {
  RT_GRID_STRIDE(i, n) { out[i] = __float2bfloat16_rn(in[i]); }
}

__global__ void DropoutApplyKernel(float* out, const float* in, const uint8_t* keep, float scale, int64_t n) {
  RT_GRID_STRIDE(i, n) { out[i] = keep[i] ? in[i] * scale : 0.f; }
}

// One thread per (row, 4096-element block): the CPU's streams, drawn in the same order.
constexpr int64_t kDropoutBlock = 4096;
__global__ void DropoutMaskKernel(uint8_t* keep, uint64_t threshold, int64_t rows, int64_t row_len, int64_t per_row,
                                  int64_t row_begin, uint64_t seed, uint64_t key) {
  RT_GRID_STRIDE(job, rows * per_row) {
    const int64_t r = job / per_row, blk = job % per_row;
    Rng rng(seed, RngPurpose::kDropout, key, static_cast<uint64_t>(row_begin + r), static_cast<uint64_t>(blk));
    uint8_t* k = keep + r * row_len;
    const int64_t end = (blk + 1) * kDropoutBlock < row_len ? (blk + 1) * kDropoutBlock : row_len;
    int64_t i = blk * kDropoutBlock;
    // Bytes up to an 8-byte boundary, then 8 draws per 8-byte store (little-endian: draw j is
    // byte j), then the tail: the same bytes in the same order as one store each.
    for (; i < end && (reinterpret_cast<uintptr_t>(k + i) & 7) != 0; ++i) k[i] = rng.Next() >= threshold ? 1 : 0;
    for (; i + 8 <= end; i += 8) {
      uint64_t word = 0;
      for (int j = 0; j < 8; ++j) word |= static_cast<uint64_t>(rng.Next() >= threshold ? 1 : 0) << (8 * j);
      *reinterpret_cast<uint64_t*>(k + i) = word;
    }
    for (; i < end; ++i) k[i] = rng.Next() >= threshold ? 1 : 0;
  }
}

int RowThreads(int C) { return C >= 1024 ? 1024 : std::max(32, (C + 31) / 32 * 32); }

}  // namespace

StatusOr<Blas> Blas::Create(cudaStream_t s, bool pedantic) {
  cublasHandle_t h = nullptr;
  RT_RETURN_IF_ERROR(BlasStatus(cublasCreate(&h), "cublasCreate"));
  const Status st = [&]() -> Status {
    RT_RETURN_IF_ERROR(BlasStatus(cublasSetStream(h, s), "cublasSetStream"));
    // fp32 mode means fp32: no TF32 tensor-core shortcuts, which round inputs to 10 mantissa bits.
    // The mixed-precision handle lets fp32 products use TF32 tensor cores.
    return BlasStatus(cublasSetMathMode(h, pedantic ? CUBLAS_PEDANTIC_MATH : CUBLAS_TF32_TENSOR_OP_MATH),
                      "cublasSetMathMode");
  }();
  if (!st.ok()) {
    cublasDestroy(h);
    return st;
  }
  return Blas(h, s);
}

Blas::~Blas() {
  if (h_ != nullptr) cublasDestroy(h_);
}

Status EmbeddingForward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B, int T, int C,
                        cudaStream_t s) {
  const int64_t n = static_cast<int64_t>(B) * T * C;
  EmbeddingFwdKernel<<<Blocks(n), kThreads, 0, s>>>(out, tokens, wte, wpe, T, C, n);
  return Launched("EmbeddingForward");
}

Status EmbeddingBackward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B, int T, int C,
                         cudaStream_t s) {
  EmbeddingBwdKernel<<<Blocks(C, 128), 128, 0, s>>>(dwte, dwpe, dout, tokens, B, T, C);
  return Launched("EmbeddingBackward");
}

Status LayerNormForward(float* out, float* mean, float* rstd, const float* in, const float* w, const float* b, int N,
                        int C, cudaStream_t s) {
  LayerNormFwdKernel<<<N, RowThreads(C), 0, s>>>(out, mean, rstd, in, w, b, C);
  return Launched("LayerNormForward");
}

Status LayerNormForwardBf16(bf16* out, float* mean, float* rstd, const float* in, const float* w, const float* b,
                            int N, int C, cudaStream_t s) {
  LayerNormFwdKernel<<<N, RowThreads(C), 0, s>>>(out, mean, rstd, in, w, b, C);
  return Launched("LayerNormForwardBf16");
}

Status LayerNormBackward(float* din, float* dw, float* db, const float* dout, const float* in, const float* w,
                         const float* mean, const float* rstd, int N, int C, cudaStream_t s) {
  LayerNormBwdInputKernel<<<N, RowThreads(C), 0, s>>>(din, dout, in, w, mean, rstd, C);
  RT_RETURN_IF_ERROR(Launched("LayerNormBackward (input)"));
  LayerNormBwdParamKernel<<<Blocks(C, 128), 128, 0, s>>>(dw, db, dout, in, mean, rstd, N, C);
  return Launched("LayerNormBackward (parameters)");
}

// Row-major X (r x c) is column-major X^T, so every product below is written for cuBLAS as its
// transpose: out^T = w * in^T and so on.
Status LinearForward(const Blas& blas, float* out, const float* in, const float* w, const float* b, int N, int C, int OC) {
  const float one = 1.f, zero = 0.f;
  RT_RETURN_IF_ERROR(BlasStatus(cublasSgemm(blas.handle(), CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, &one, w, C, in, C,
                                            &zero, out, OC),
                                "LinearForward sgemm"));
  if (b == nullptr) return Status::Ok();
  const int64_t n = static_cast<int64_t>(N) * OC;
  BiasRowsKernel<<<Blocks(n), kThreads, 0, blas.stream()>>>(out, b, OC, n);
  return Launched("LinearForward bias");
}

Status LinearBackward(const Blas& blas, float* din, float* dw, float* db, const float* dout, const float* in,
                      const float* w, int N, int C, int OC, bool accumulate_din) {
  const float one = 1.f, zero = 0.f;
  // din^T (C,N) = w^T (C,OC) * dout^T (OC,N)
  if (din != nullptr)
    RT_RETURN_IF_ERROR(BlasStatus(cublasSgemm(blas.handle(), CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, &one, w, C, dout, OC,
                                              accumulate_din ? &one : &zero, din, C),
                                  "LinearBackward sgemm (input)"));
  // dw^T (C,OC) += in^T (C,N) * dout (N,OC)
  RT_RETURN_IF_ERROR(BlasStatus(cublasSgemm(blas.handle(), CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, &one, in, C, dout, OC,
                                            &one, dw, C),
                                "LinearBackward sgemm (weights)"));
  if (db == nullptr) return Status::Ok();
  ColumnSumKernel<<<Blocks(OC, 128), 128, 0, blas.stream()>>>(db, dout, N, OC);
  return Launched("LinearBackward bias");
}

Status LinearForwardBf16(const Blas& blas, float* out, const bf16* in, const bf16* w, const float* b, int N, int C,
                         int OC) {
  const float one = 1.f, zero = 0.f;
  // out^T (OC,N) = w (OC,C) * in^T (C,N), column-major views of the row-major arrays.
  RT_RETURN_IF_ERROR(BlasStatus(cublasGemmEx(blas.handle(), CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, &one, w, CUDA_R_16BF, C,
                                             in, CUDA_R_16BF, C, &zero, out, CUDA_R_32F, OC, CUBLAS_COMPUTE_32F,
                                             CUBLAS_GEMM_DEFAULT),
                                "LinearForwardBf16 gemm"));
  if (b == nullptr) return Status::Ok();
  const int64_t n = static_cast<int64_t>(N) * OC;
  BiasRowsKernel<<<Blocks(n), kThreads, 0, blas.stream()>>>(out, b, OC, n);
  return Launched("LinearForwardBf16 bias");
}

Status LinearBackwardBf16(const Blas& blas, float* din, float* dw, float* db, const float* dout, const bf16* dout16,
                          const bf16* in, const bf16* w, int N, int C, int OC) {
  const float one = 1.f, zero = 0.f;
  // din^T (C,N) = w^T (C,OC) * dout^T (OC,N)
  RT_RETURN_IF_ERROR(BlasStatus(cublasGemmEx(blas.handle(), CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, &one, w, CUDA_R_16BF, C,
                                             dout16, CUDA_R_16BF, OC, &zero, din, CUDA_R_32F, C, CUBLAS_COMPUTE_32F,
                                             CUBLAS_GEMM_DEFAULT),
                                "LinearBackwardBf16 gemm (input)"));
  // dw^T (C,OC) += in^T (C,N) * dout (N,OC)
  RT_RETURN_IF_ERROR(BlasStatus(cublasGemmEx(blas.handle(), CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, &one, in, CUDA_R_16BF,
                                             C, dout16, CUDA_R_16BF, OC, &one, dw, CUDA_R_32F, C, CUBLAS_COMPUTE_32F,
                                             CUBLAS_GEMM_DEFAULT),
                                "LinearBackwardBf16 gemm (weights)"));
  if (db == nullptr) return Status::Ok();
  ColumnSumKernel<<<Blocks(OC, 128), 128, 0, blas.stream()>>>(db, dout, N, OC);
  return Launched("LinearBackwardBf16 bias");
}

Status ToBf16(bf16* out, const float* in, int64_t n, cudaStream_t s) {
  if (n == 0) return Status::Ok();
  ToBf16Kernel<<<Blocks(n), kThreads, 0, s>>>(out, in, n);
  return Launched("ToBf16");
}

Status AttentionForward(const Blas& blas, float* out, float* att, float* att_drop, const uint8_t* keep, float p,
                        const float* qkv, int B, int T, int C, int NH) {
  const int hs = C / NH, C3 = 3 * C;
  const float scale = 1.f / std::sqrt(static_cast<float>(hs)), one = 1.f, zero = 0.f;
  const int64_t TT = static_cast<int64_t>(T) * T;
  for (int b = 0; b < B; ++b) {
    const float* q = qkv + static_cast<int64_t>(b) * T * C3;
    const float* k = q + C;
    float* a = att + static_cast<int64_t>(b) * NH * TT;
    // scores^T per head = k q^T: (T,T), heads hs apart in qkv and T*T apart in att.
    RT_RETURN_IF_ERROR(BlasStatus(cublasSgemmStridedBatched(blas.handle(), CUBLAS_OP_T, CUBLAS_OP_N, T, T, hs, &scale,
                                                            k, C3, hs, q, C3, hs, &zero, a, T, TT, NH),
                                  "AttentionForward sgemm (scores)"));
  }
  CausalSoftmaxKernel<<<static_cast<unsigned>(static_cast<int64_t>(B) * NH * T), kThreads, 0, blas.stream()>>>(att, T);
  RT_RETURN_IF_ERROR(Launched("AttentionForward softmax"));
  if (keep) RT_RETURN_IF_ERROR(DropoutApply(att_drop, att, keep, p, static_cast<int64_t>(B) * NH * TT, blas.stream()));
  const float* weights = keep ? att_drop : att;
  for (int b = 0; b < B; ++b) {
    const float* v = qkv + static_cast<int64_t>(b) * T * C3 + 2 * C;
    const float* a = weights + static_cast<int64_t>(b) * NH * TT;
    float* o = out + static_cast<int64_t>(b) * T * C;
    // out^T (hs,T) = v^T (hs,T) * att^T (T,T)
    RT_RETURN_IF_ERROR(BlasStatus(cublasSgemmStridedBatched(blas.handle(), CUBLAS_OP_N, CUBLAS_OP_N, hs, T, T, &one, v,
                                                            C3, hs, a, T, TT, &zero, o, C, hs, NH),
                                  "AttentionForward sgemm (values)"));
  }
  return Status::Ok();
}

Status AttentionBackward(const Blas& blas, float* dqkv, float* scratch, const float* dout, const float* qkv,
                         const float* att, const float* att_drop, const uint8_t* keep, float p, int B, int T, int C,
                         int NH) {
  const int hs = C / NH, C3 = 3 * C;
  const float scale = 1.f / std::sqrt(static_cast<float>(hs)), one = 1.f, zero = 0.f;
  const int64_t TT = static_cast<int64_t>(T) * T;
  for (int b = 0; b < B; ++b) {
    const float* v = qkv + static_cast<int64_t>(b) * T * C3 + 2 * C;
    const float* d = dout + static_cast<int64_t>(b) * T * C;
    const float* a = (keep ? att_drop : att) + static_cast<int64_t>(b) * NH * TT;  // the weights forward used
    float* datt = scratch + static_cast<int64_t>(b) * NH * TT;
    float* dv = dqkv + static_cast<int64_t>(b) * T * C3 + 2 * C;
    // datt^T (T,T) = v (T,hs) * dout_h^T (hs,T)
    RT_RETURN_IF_ERROR(BlasStatus(cublasSgemmStridedBatched(blas.handle(), CUBLAS_OP_T, CUBLAS_OP_N, T, T, hs, &one, v,
                                                            C3, hs, d, C, hs, &zero, datt, T, TT, NH),
                                  "AttentionBackward sgemm (datt)"));
    // dv^T (hs,T) = dout_h^T (hs,T) * att (T,T) (the dropped-out weights with dropout)
    RT_RETURN_IF_ERROR(BlasStatus(cublasSgemmStridedBatched(blas.handle(), CUBLAS_OP_N, CUBLAS_OP_T, hs, T, T, &one, d,
                                                            C, hs, a, T, TT, &zero, dv, C3, hs, NH),
                                  "AttentionBackward sgemm (dv)"));
  }
  // Gradient of the probabilities before dropout, then the softmax's.
  if (keep) RT_RETURN_IF_ERROR(DropoutApply(scratch, scratch, keep, p, static_cast<int64_t>(B) * NH * TT, blas.stream()));
  SoftmaxBackwardKernel<<<static_cast<unsigned>(static_cast<int64_t>(B) * NH * T), kThreads, 0, blas.stream()>>>(
      scratch, att, T);
  RT_RETURN_IF_ERROR(Launched("AttentionBackward softmax"));
  for (int b = 0; b < B; ++b) {
    const float* q = qkv + static_cast<int64_t>(b) * T * C3;
    const float* k = q + C;
    const float* dpre = scratch + static_cast<int64_t>(b) * NH * TT;
    float* dq = dqkv + static_cast<int64_t>(b) * T * C3;
    float* dk = dq + C;
    // dq^T (hs,T) = scale * k^T (hs,T) * dpre^T (T,T)
    RT_RETURN_IF_ERROR(BlasStatus(cublasSgemmStridedBatched(blas.handle(), CUBLAS_OP_N, CUBLAS_OP_N, hs, T, T, &scale,
                                                            k, C3, hs, dpre, T, TT, &zero, dq, C3, hs, NH),
                                  "AttentionBackward sgemm (dq)"));
    // dk^T (hs,T) = scale * q^T (hs,T) * dpre (T,T)
    RT_RETURN_IF_ERROR(BlasStatus(cublasSgemmStridedBatched(blas.handle(), CUBLAS_OP_N, CUBLAS_OP_T, hs, T, T, &scale,
                                                            q, C3, hs, dpre, T, TT, &zero, dk, C3, hs, NH),
                                  "AttentionBackward sgemm (dk)"));
  }
  return Status::Ok();
}

Status DropoutApply(float* out, const float* in, const uint8_t* keep, float p, int64_t n, cudaStream_t s) {
  if (n == 0) return Status::Ok();
  DropoutApplyKernel<<<Blocks(n), kThreads, 0, s>>>(out, in, keep, 1.f / (1.f - p), n);
  return Launched("DropoutApply");
}

Status DropoutMaskRows(uint8_t* keep, float p, int64_t rows, int64_t row_len, int64_t row_begin, uint64_t seed,
                       uint64_t key, cudaStream_t s) {
  const uint64_t threshold = static_cast<uint64_t>(static_cast<double>(p) * 18446744073709551616.0);
  const int64_t per_row = (row_len + kDropoutBlock - 1) / kDropoutBlock;
  if (rows * per_row == 0) return Status::Ok();
  DropoutMaskKernel<<<Blocks(rows * per_row, 128), 128, 0, s>>>(keep, threshold, rows, row_len, per_row, row_begin,
                                                                  seed, key);
  return Launched("DropoutMaskRows");
}

Status GeluForward(float* out, const float* in, int64_t n, cudaStream_t s) {
  GeluFwdKernel<<<Blocks(n), kThreads, 0, s>>>(out, in, n);
  return Launched("GeluForward");
}

Status GeluBackward(float* din, const float* dout, const float* in, int64_t n, cudaStream_t s) {
  GeluBwdKernel<<<Blocks(n), kThreads, 0, s>>>(din, dout, in, n);
  return Launched("GeluBackward");
}

Status GeluForwardBf16(bf16* pre, bf16* out, const float* in, int64_t n, cudaStream_t s) {
  GeluFwdBf16Kernel<<<Blocks(n), kThreads, 0, s>>>(pre, out, in, n);
  return Launched("GeluForwardBf16");
}

Status GeluBackwardBf16(float* din, const float* dout, const bf16* in, int64_t n, cudaStream_t s) {
  GeluBwdKernel<<<Blocks(n), kThreads, 0, s>>>(din, dout, in, n);
  return Launched("GeluBackwardBf16");
}

Status ResidualForward(float* out, const float* a, const float* b, int64_t n, cudaStream_t s) {
  ResidualKernel<<<Blocks(n), kThreads, 0, s>>>(out, a, b, n);
  return Launched("ResidualForward");
}

Status SoftmaxCrossEntropy(float* losses, float* dlogits, const float* logits, const int32_t* targets, int N, int V,
                           float grad_scale, cudaStream_t s) {
  SoftmaxXentKernel<<<N, 1024, 0, s>>>(losses, dlogits, logits, targets, V, grad_scale);
  return Launched("SoftmaxCrossEntropy");
}

Status AdamUpdate(float* p, const float* g, float* m, float* v, int64_t n, const OptimArgs& a, cudaStream_t s) {
  if (n == 0) return Status::Ok();
  // The CPU optimizer's constants, computed the same way (1 - beta and bias corrections in double).
  const float wd = static_cast<float>(a.weight_decay), flr = static_cast<float>(a.lr);
  const float coupled = static_cast<float>(a.l2) + (a.decoupled ? 0.f : wd);
  const double bc1 = 1.0 - std::pow(a.beta1, static_cast<double>(a.t));
  const double bc2 = 1.0 - std::pow(a.beta2, static_cast<double>(a.t));
  AdamKernel<<<Blocks(n), kThreads, 0, s>>>(
      p, g, m, v, n, a.grad_scale, coupled, static_cast<float>(a.l1), static_cast<float>(a.beta1),
      static_cast<float>(a.beta2), static_cast<float>(1.0 - a.beta1), static_cast<float>(1.0 - a.beta2),
      static_cast<float>(a.eps), static_cast<float>(a.lr / bc1), static_cast<float>(1.0 / std::sqrt(bc2)),
      a.decoupled ? 1.f - flr * wd : 1.f);
  return Launched("AdamUpdate");
}

Status SgdUpdate(float* p, const float* g, float* m, int64_t n, const OptimArgs& a, cudaStream_t s) {
  if (n == 0) return Status::Ok();
  // The CPU's SGD couples weight decay with the L2 penalty (no decoupled form).
  const float coupled = static_cast<float>(a.l2) + static_cast<float>(a.weight_decay);
  SgdKernel<<<Blocks(n), kThreads, 0, s>>>(p, g, m, n, a.grad_scale, coupled, static_cast<float>(a.l1),
                                           static_cast<float>(a.momentum), a.nesterov, static_cast<float>(a.lr));
  return Launched("SgdUpdate");
}

int64_t SumSquaresScratch(int64_t n) { return (n + kSumSqBlock - 1) / kSumSqBlock + 1; }

Status SumSquares(double* scratch, const float* g, int64_t n, cudaStream_t s) {
  const int64_t nb = (n + kSumSqBlock - 1) / kSumSqBlock;
  if (nb > 0) {
    SumSqPartialKernel<<<static_cast<unsigned>(nb), kThreads, 0, s>>>(scratch + 1, g, n);
    RT_RETURN_IF_ERROR(Launched("SumSquares (partials)"));
  }
  SumSqFinalKernel<<<1, kThreads, 0, s>>>(scratch, scratch + 1, nb);
  return Launched("SumSquares");
}

}  // namespace ringtrain::gpu
