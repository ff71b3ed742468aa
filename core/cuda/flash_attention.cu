// Fused causal self-attention, fp32 (flash-style): the (T,T) scores and probabilities are never
// stored. Forward walks key tiles with an online softmax and keeps one log-sum-exp per query row;
// backward recomputes the probabilities from it. Two backward kernels (one query row per thread
// for dQ, one key row per thread for dK and dV) each own their outputs, so there are no atomics
// and results repeat bitwise. The head size is a template parameter (rows live in registers).
#include <cmath>
#include <string>

#include "core/cuda/launch.cuh"
#include "core/cuda/ops.h"

namespace ringtrain::gpu {

namespace {

constexpr int kRows = 64;  // query (forward, dQ) or key (dK/dV) rows per block: one per thread
constexpr int kTile = 32;  // rows of the other side staged in shared memory per step

// Row i of head h of sequence b: q at column h*HS of the (B,T,3C) qkv, k at C + h*HS, v at 2C + h*HS.
__device__ inline const float* QkvRow(const float* qkv, int b, int i, int T, int C) {
  return qkv + (static_cast<int64_t>(b) * T + i) * 3 * C;
}

// Keys and values j0 .. j0 + kTile - 1 of head h into shared memory (zeros past T), by the block.
template <int HS>
__device__ void StageKeys(float (*ks)[HS], float (*vs)[HS], const float* qkv, int b, int h, int j0, int T, int C) {
  for (int e = threadIdx.x; e < kTile * HS; e += blockDim.x) {
    const int jj = e / HS, d = e % HS, j = j0 + jj;
    const float* r = QkvRow(qkv, b, min(j, T - 1), T, C);
    ks[jj][d] = j < T ? r[C + h * HS + d] : 0.f;
    vs[jj][d] = j < T ? r[2 * C + h * HS + d] : 0.f;
  }
}

template <int HS>
__global__ void FlashForwardKernel(float* out, float* lse, const float* qkv, int T, int C, int NH, float scale) {
  __shared__ float ks[kTile][HS], vs[kTile][HS];
  const int b = blockIdx.y / NH, h = blockIdx.y % NH;
  const int i = blockIdx.x * kRows + threadIdx.x;
  const bool live = i < T;
  float q[HS], acc[HS];
  if (live) {
    const float* r = QkvRow(qkv, b, i, T, C) + h * HS;
    for (int d = 0; d < HS; ++d) q[d] = r[d];
  }
  for (int d = 0; d < HS; ++d) acc[d] = 0.f;
  float m = -INFINITY, l = 0.f;
  const int last = min(T - 1, static_cast<int>(blockIdx.x) * kRows + kRows - 1);  // causal: keys <= last row
  for (int j0 = 0; j0 <= last; j0 += kTile) {
    StageKeys<HS>(ks, vs, qkv, b, h, j0, T, C);
    __syncthreads();
    if (live) {
      const int n = min(kTile, i - j0 + 1);
      for (int jj = 0; jj < n; ++jj) {
        float s = 0.f;
        for (int d = 0; d < HS; ++d) s += q[d] * ks[jj][d];
        s *= scale;
        if (s > m) {
          const float corr = expf(m - s);  // 0 on the first key (m = -inf)
          l *= corr;
          for (int d = 0; d < HS; ++d) acc[d] *= corr;
          m = s;
        }
        const float p = expf(s - m);
        l += p;
        for (int d = 0; d < HS; ++d) acc[d] += p * vs[jj][d];
      }
    }
    __syncthreads();
  }
  if (!live) return;
  float* o = out + (static_cast<int64_t>(b) * T + i) * C + h * HS;
  const float inv = 1.f / l;
  for (int d = 0; d < HS; ++d) o[d] = acc[d] * inv;
  lse[(static_cast<int64_t>(b) * NH + h) * T + i] = m + logf(l);
}

// delta (B,NH,T) = rowwise dot(dout, out) per head: the softmax backward's correction term.
__global__ void FlashDeltaKernel(float* delta, const float* dout, const float* out, int T, int C, int NH, int HS,
                                 int64_t rows) {
  RT_GRID_STRIDE(r, rows) {
    const int i = static_cast<int>(r % T);
    const int64_t bh = r / T;
    const int h = static_cast<int>(bh % NH), b = static_cast<int>(bh / NH);
    const int64_t at = (static_cast<int64_t>(b) * T + i) * C + static_cast<int64_t>(h) * HS;
    float s = 0.f;
    for (int d = 0; d < HS; ++d) s += dout[at + d] * out[at + d];
    delta[r] = s;
  }
}

// dQ: one query row per thread over the key tiles it attends to.
template <int HS>
__global__ void FlashBackwardQKernel(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                     const float* delta, int T, int C, int NH, float scale) {
  __shared__ float ks[kTile][HS], vs[kTile][HS];
  const int b = blockIdx.y / NH, h = blockIdx.y % NH;
  const int i = blockIdx.x * kRows + threadIdx.x;
  const bool live = i < T;
  float q[HS], g[HS], dq[HS];
  float L = 0.f, D = 0.f;
  if (live) {
    const float* r = QkvRow(qkv, b, i, T, C) + h * HS;
    const float* go = dout + (static_cast<int64_t>(b) * T + i) * C + h * HS;
    for (int d = 0; d < HS; ++d) {
      q[d] = r[d];
      g[d] = go[d];
    }
    const int64_t row = (static_cast<int64_t>(b) * NH + h) * T + i;
    L = lse[row];
    D = delta[row];
  }
  for (int d = 0; d < HS; ++d) dq[d] = 0.f;
  const int last = min(T - 1, static_cast<int>(blockIdx.x) * kRows + kRows - 1);
  for (int j0 = 0; j0 <= last; j0 += kTile) {
    StageKeys<HS>(ks, vs, qkv, b, h, j0, T, C);
    __syncthreads();
    if (live) {
      const int n = min(kTile, i - j0 + 1);
      for (int jj = 0; jj < n; ++jj) {
        float s = 0.f, dp = 0.f;
        for (int d = 0; d < HS; ++d) {
          s += q[d] * ks[jj][d];
          dp += g[d] * vs[jj][d];
        }
        const float p = expf(s * scale - L);
        const float ds = p * (dp - D);
        for (int d = 0; d < HS; ++d) dq[d] += ds * ks[jj][d];
      }
    }
    __syncthreads();
  }
  if (!live) return;
  float* o = dqkv + (static_cast<int64_t>(b) * T + i) * 3 * C + h * HS;
  for (int d = 0; d < HS; ++d) o[d] = dq[d] * scale;
}

// dK and dV: one key row per thread over the query tiles that attend to it (rows >= the key).
template <int HS>
__global__ void FlashBackwardKvKernel(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                      const float* delta, int T, int C, int NH, float scale) {
  __shared__ float qs[kTile][HS], gs[kTile][HS];
  __shared__ float ls[kTile], ds_[kTile];
  const int b = blockIdx.y / NH, h = blockIdx.y % NH;
  const int j = blockIdx.x * kRows + threadIdx.x;
  const bool live = j < T;
  float k[HS], v[HS], dk[HS], dv[HS];
  if (live) {
    const float* r = QkvRow(qkv, b, j, T, C);
    for (int d = 0; d < HS; ++d) {
      k[d] = r[C + h * HS + d];
      v[d] = r[2 * C + h * HS + d];
    }
  }
  for (int d = 0; d < HS; ++d) dk[d] = dv[d] = 0.f;
  const int64_t row0 = (static_cast<int64_t>(b) * NH + h) * T;
  const int first = static_cast<int>(blockIdx.x) * kRows;  // the block's first key: earlier queries do not see it
  for (int i0 = first; i0 < T; i0 += kTile) {
    for (int e = threadIdx.x; e < kTile * HS; e += blockDim.x) {
      const int ii = e / HS, d = e % HS, i = i0 + ii;
      const int ic = min(i, T - 1);
      qs[ii][d] = i < T ? QkvRow(qkv, b, ic, T, C)[h * HS + d] : 0.f;
      gs[ii][d] = i < T ? dout[(static_cast<int64_t>(b) * T + ic) * C + h * HS + d] : 0.f;
    }
    for (int ii = threadIdx.x; ii < kTile; ii += blockDim.x) {
      const int i = i0 + ii;
      ls[ii] = i < T ? lse[row0 + i] : 0.f;
      ds_[ii] = i < T ? delta[row0 + i] : 0.f;
    }
    __syncthreads();
    if (live) {
      for (int ii = max(0, j - i0); ii < kTile && i0 + ii < T; ++ii) {
        float s = 0.f, dp = 0.f;
        for (int d = 0; d < HS; ++d) {
          s += qs[ii][d] * k[d];
          dp += gs[ii][d] * v[d];
        }
        const float p = expf(s * scale - ls[ii]);
        const float dsc = p * (dp - ds_[ii]);
        for (int d = 0; d < HS; ++d) {
          dv[d] += p * gs[ii][d];
          dk[d] += dsc * qs[ii][d];
        }
      }
    }
    __syncthreads();
  }
  if (!live) return;
  float* o = dqkv + (static_cast<int64_t>(b) * T + j) * 3 * C + h * HS;
  for (int d = 0; d < HS; ++d) {
    o[C + d] = dk[d] * scale;
    o[2 * C + d] = dv[d];
  }
}

template <int HS>
Status Forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH, cudaStream_t s) {
  const dim3 grid((T + kRows - 1) / kRows, B * NH);
  FlashForwardKernel<HS><<<grid, kRows, 0, s>>>(out, lse, qkv, T, C, NH, 1.f / sqrtf(static_cast<float>(HS)));
  return cuda::Launched("flash attention forward");
}

template <int HS>
Status Backward(float* dqkv, const float* dout, const float* qkv, const float* lse, const float* delta, int B, int T,
                int C, int NH, cudaStream_t s) {
  const dim3 grid((T + kRows - 1) / kRows, B * NH);
  const float scale = 1.f / sqrtf(static_cast<float>(HS));
  FlashBackwardQKernel<HS><<<grid, kRows, 0, s>>>(dqkv, dout, qkv, lse, delta, T, C, NH, scale);
  RT_RETURN_IF_ERROR(cuda::Launched("flash attention backward (dQ)"));
  FlashBackwardKvKernel<HS><<<grid, kRows, 0, s>>>(dqkv, dout, qkv, lse, delta, T, C, NH, scale);
  return cuda::Launched("flash attention backward (dK, dV)");
}

}  // namespace

bool FlashAttentionSupports(int head_size) {
  return head_size == 16 || head_size == 32 || head_size == 64 || head_size == 128;
}

Status FlashAttentionForward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH, cudaStream_t s) {
  switch (C / NH) {
    case 16: return Forward<16>(out, lse, qkv, B, T, C, NH, s);
    case 32: return Forward<32>(out, lse, qkv, B, T, C, NH, s);
    case 64: return Forward<64>(out, lse, qkv, B, T, C, NH, s);
    case 128: return Forward<128>(out, lse, qkv, B, T, C, NH, s);
    default: return InvalidArgument("flash attention: head size " + std::to_string(C / NH) + " is not one of 16, 32, 64, 128");
  }
}

Status FlashAttentionBackward(float* dqkv, float* delta, const float* dout, const float* qkv, const float* out,
                              const float* lse, int B, int T, int C, int NH, cudaStream_t s) {
  const int HS = C / NH;
  const int64_t rows = static_cast<int64_t>(B) * NH * T;
  FlashDeltaKernel<<<cuda::Blocks(rows), cuda::kThreads, 0, s>>>(delta, dout, out, T, C, NH, HS, rows);
  RT_RETURN_IF_ERROR(cuda::Launched("flash attention backward (delta)"));
  switch (HS) {
    case 16: return Backward<16>(dqkv, dout, qkv, lse, delta, B, T, C, NH, s);
    case 32: return Backward<32>(dqkv, dout, qkv, lse, delta, B, T, C, NH, s);
    case 64: return Backward<64>(dqkv, dout, qkv, lse, delta, B, T, C, NH, s);
    case 128: return Backward<128>(dqkv, dout, qkv, lse, delta, B, T, C, NH, s);
    default: return InvalidArgument("flash attention: head size " + std::to_string(HS) + " is not one of 16, 32, 64, 128");
  }
}

}  // namespace ringtrain::gpu
