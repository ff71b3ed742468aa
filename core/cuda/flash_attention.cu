// Fused causal self-attention, fp32 (flash-style): the (T,T) scores and probabilities are never
// stored. Forward walks key tiles with an online softmax and keeps one log-sum-exp per query row;
// backward recomputes the probabilities from it. Two backward kernels (one query row per thread
// for dQ, one key row per thread for dK and dV) each own their outputs, so there are no atomics
// and results repeat bitwise. The head size is a template parameter (rows live in registers).
#include <mma.h>

#include <algorithm>
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


// ---- Tensor-core flash attention (bf16 products, fp32 accumulation and softmax) ---------------
// The same algorithm and outputs (out, lse, dqkv in fp32) with every product on tensor cores
// through WMMA 16x16x16 bf16 fragments: Q, K, V and dO are rounded to bf16 as their tiles are
// staged, the scores and the softmax are fp32, the probabilities (and dS) are rounded to bf16 for
// the second products. Blocks of 4 warps own 64 rows (a warp 16); tiles of 64 rows of the other
// side are staged in shared memory (dynamic: up to about 150 KB at head size 128). Backward is two
// kernels again (dQ per query block; dK and dV per key block), each owning its outputs: no atomics,
// bitwise repeatable.
namespace tc {

using nvcuda::wmma::accumulator;
using nvcuda::wmma::col_major;
using nvcuda::wmma::fragment;
using nvcuda::wmma::matrix_a;
using nvcuda::wmma::matrix_b;
using nvcuda::wmma::mem_row_major;
using nvcuda::wmma::row_major;
using Bf = __nv_bfloat16;

constexpr int kRowsTc = 64, kTileTc = 64, kThreadsTc = 128;  // 4 warps of 16 rows
constexpr int kLdS = kTileTc + 4;  // fp32 score tiles' row stride (floats)
constexpr int kLdP = kTileTc + 8;  // bf16 probability tiles' row stride (elements)

template <int HS>
struct Layout {
  static constexpr int kLdH = HS + 8;  // bf16 Q/K/V/dO tiles' row stride (elements)
  static constexpr int kLdO = HS + 4;  // fp32 output accumulators' row stride (floats)
  static constexpr size_t kHalfTile = sizeof(Bf) * kRowsTc * kLdH;
  static constexpr size_t kScoreTile = sizeof(float) * kRowsTc * kLdS;
  static constexpr size_t kProbTile = sizeof(Bf) * kRowsTc * kLdP;
  static constexpr size_t kOutTile = sizeof(float) * kRowsTc * kLdO;
  static constexpr size_t kRowVec = sizeof(float) * kRowsTc;
  // Forward: Q, K, V tiles, scores, probabilities, the output accumulators, row max and sum.
  static constexpr size_t kForward = 3 * kHalfTile + kScoreTile + kProbTile + kOutTile + 2 * kRowVec;
  // Backward (either kernel): two own tiles, two staged tiles, scores and dP, P and dS, the
  // output staging, lse and delta.
  static constexpr size_t kBackward = 4 * kHalfTile + 2 * kScoreTile + 2 * kProbTile + kOutTile + 2 * kRowVec;
};

// Carves consecutive 128-byte aligned pieces out of the dynamic shared memory.
struct Carve {
  unsigned char* p;
  template <typename T>
  __device__ T* Take(size_t bytes) {
    T* r = reinterpret_cast<T*>(p);
    p += (bytes + 127) / 128 * 128;
    return r;
  }
};

// Rows r0 .. r0 + 63 of the (B,T,*) tensor `src` (row stride `stride`, the head's columns from
// `col`) into a bf16 tile; zeros past T.
template <int HS>
__device__ void StageRows(Bf* dst, const float* src, int64_t stride, int64_t col, int b, int r0, int T) {
  for (int e = threadIdx.x; e < kRowsTc * HS; e += kThreadsTc) {
    const int rr = e / HS, d = e % HS, r = r0 + rr;
    const float v = r < T ? src[(static_cast<int64_t>(b) * T + r) * stride + col + d] : 0.f;
    dst[rr * Layout<HS>::kLdH + d] = __float2bfloat16_rn(v);
  }
}

// The warp's 16 rows x 64 columns of A (16 x HS, row-major at a) times B^T where B is 64 x HS
// row-major at b (so B^T is HS x 64 column-major): into the fp32 tile at s (row stride kLdS).
template <int HS>
__device__ void RowsTimesTransposed(float* s, const Bf* a, const Bf* b) {
  constexpr int ld = Layout<HS>::kLdH;
  for (int ct = 0; ct < kTileTc / 16; ++ct) {
    fragment<accumulator, 16, 16, 16, float> acc;
    nvcuda::wmma::fill_fragment(acc, 0.f);
    for (int dt = 0; dt < HS / 16; ++dt) {
      fragment<matrix_a, 16, 16, 16, Bf, row_major> fa;
      fragment<matrix_b, 16, 16, 16, Bf, col_major> fb;
      nvcuda::wmma::load_matrix_sync(fa, a + dt * 16, ld);
      nvcuda::wmma::load_matrix_sync(fb, b + ct * 16 * ld + dt * 16, ld);
      nvcuda::wmma::mma_sync(acc, fa, fb, acc);
    }
    nvcuda::wmma::store_matrix_sync(s + ct * 16, acc, kLdS, mem_row_major);
  }
}

// acc[dt] (16 x 16 column block dt of a 16 x HS result) += P (16 x 64 bf16 at p, stride kLdP) times
// rows of the 64 x HS bf16 tile at v (row-major).
template <int HS>
__device__ void AccumulateRowsTimes(fragment<accumulator, 16, 16, 16, float> (&acc)[HS / 16], const Bf* p,
                                    const Bf* v) {
  constexpr int ld = Layout<HS>::kLdH;
  for (int kt = 0; kt < kTileTc / 16; ++kt) {
    fragment<matrix_a, 16, 16, 16, Bf, row_major> fa;
    nvcuda::wmma::load_matrix_sync(fa, p + kt * 16, kLdP);
    for (int dt = 0; dt < HS / 16; ++dt) {
      fragment<matrix_b, 16, 16, 16, Bf, row_major> fb;
      nvcuda::wmma::load_matrix_sync(fb, v + kt * 16 * ld + dt * 16, ld);
      nvcuda::wmma::mma_sync(acc[dt], fa, fb, acc[dt]);
    }
  }
}

template <int HS>
__global__ void __launch_bounds__(kThreadsTc)
    ForwardKernel(float* out, float* lse, const float* qkv, int T, int C, int NH, float scale) {
  using L = Layout<HS>;
  extern __shared__ __align__(128) unsigned char smem[];
  Carve cv{smem};
  Bf* qs = cv.Take<Bf>(L::kHalfTile);
  Bf* ks = cv.Take<Bf>(L::kHalfTile);
  Bf* vs = cv.Take<Bf>(L::kHalfTile);
  float* ss = cv.Take<float>(L::kScoreTile);
  Bf* ps = cv.Take<Bf>(L::kProbTile);
  float* os = cv.Take<float>(L::kOutTile);
  float* row_m = cv.Take<float>(L::kRowVec);
  float* row_l = cv.Take<float>(L::kRowVec);
  const int b = blockIdx.y / NH, h = blockIdx.y % NH;
  const int q0 = blockIdx.x * kRowsTc;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t C3 = 3 * static_cast<int64_t>(C);
  StageRows<HS>(qs, qkv, C3, static_cast<int64_t>(h) * HS, b, q0, T);
  for (int e = threadIdx.x; e < kRowsTc * HS; e += kThreadsTc) os[(e / HS) * L::kLdO + e % HS] = 0.f;
  for (int r = threadIdx.x; r < kRowsTc; r += kThreadsTc) {
    row_m[r] = -INFINITY;
    row_l[r] = 0.f;
  }
  // Each warp's softmax lanes: two per row, 32 columns each.
  const int r = warp * 16 + lane / 2, half = lane % 2, i = q0 + r;
  const int last = min(T - 1, q0 + kRowsTc - 1);  // causal: keys up to the block's last row
  for (int k0 = 0; k0 <= last; k0 += kTileTc) {
    __syncthreads();  // the previous tile's products are done with ks and vs
    StageRows<HS>(ks, qkv, C3, C + static_cast<int64_t>(h) * HS, b, k0, T);
    StageRows<HS>(vs, qkv, C3, 2 * static_cast<int64_t>(C) + h * HS, b, k0, T);
    __syncthreads();
    RowsTimesTransposed<HS>(ss + warp * 16 * kLdS, qs + warp * 16 * L::kLdH, ks);
    __syncwarp();
    float mx = -INFINITY;
    for (int c = 0; c < 32; ++c) {
      const int j = k0 + half * 32 + c;
      if (i < T && j <= i) mx = fmaxf(mx, ss[r * kLdS + half * 32 + c] * scale);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float m_old = row_m[r];
    const float m_new = fmaxf(m_old, mx);
    // No live score yet (rows past T): nothing to add, nothing to rescale.
    const float corr = m_new == -INFINITY || m_old == -INFINITY ? (m_new == -INFINITY ? 1.f : 0.f) : expf(m_old - m_new);
    float sum = 0.f;
    for (int c = 0; c < 32; ++c) {
      const int j = k0 + half * 32 + c;
      float pv = 0.f;
      if (i < T && j <= i) pv = expf(ss[r * kLdS + half * 32 + c] * scale - m_new);
      ps[r * kLdP + half * 32 + c] = __float2bfloat16_rn(pv);
      sum += pv;
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    for (int d = half * (HS / 2); d < (half + 1) * (HS / 2); ++d) os[r * L::kLdO + d] *= corr;
    __syncwarp();  // both lanes of the row have read row_m before it changes
    if (half == 0) {
      row_m[r] = m_new;
      row_l[r] = row_l[r] * corr + sum;
    }
    __syncwarp();
    fragment<accumulator, 16, 16, 16, float> acc[HS / 16];
    for (int dt = 0; dt < HS / 16; ++dt)
      nvcuda::wmma::load_matrix_sync(acc[dt], os + warp * 16 * L::kLdO + dt * 16, L::kLdO, mem_row_major);
    AccumulateRowsTimes<HS>(acc, ps + warp * 16 * kLdP, vs);
    for (int dt = 0; dt < HS / 16; ++dt)
      nvcuda::wmma::store_matrix_sync(os + warp * 16 * L::kLdO + dt * 16, acc[dt], L::kLdO, mem_row_major);
    __syncwarp();
  }
  __syncthreads();
  for (int e = threadIdx.x; e < kRowsTc * HS; e += kThreadsTc) {
    const int rr = e / HS, d = e % HS, ii = q0 + rr;
    if (ii >= T) continue;
    out[(static_cast<int64_t>(b) * T + ii) * C + static_cast<int64_t>(h) * HS + d] = os[rr * L::kLdO + d] / row_l[rr];
    if (d == 0) lse[(static_cast<int64_t>(b) * NH + h) * T + ii] = row_m[rr] + logf(row_l[rr]);
  }
}

// The softmax backward on a warp's 16 x 64 tile pair: P = exp(S*scale - lse) where the query sees
// the key (else 0), dS = P (dP - delta); both rounded to bf16. rows_are_queries: the tiles are
// (query, key) (the dQ kernel) or transposed (key, query) (the dK/dV kernel). row0/col0: the
// tile's first query or key index.
__device__ void SoftmaxGrad(Bf* p_out, Bf* ds_out, const float* s, const float* dp, const float* lse_s,
                            const float* delta_s, bool rows_are_queries, int row0, int col0, int T, float scale) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int r = warp * 16 + lane / 2, half = lane % 2;
  for (int c = 0; c < 32; ++c) {
    const int cc = half * 32 + c;
    const int q = rows_are_queries ? row0 + r : col0 + cc, k = rows_are_queries ? col0 + cc : row0 + r;
    const int qi = rows_are_queries ? r : cc;  // the query's index in the staged lse/delta
    float pv = 0.f, dsv = 0.f;
    if (q < T && k <= q) {
      pv = expf(s[r * kLdS + cc] * scale - lse_s[qi]);
      dsv = pv * (dp[r * kLdS + cc] - delta_s[qi]);
    }
    if (p_out) p_out[r * kLdP + cc] = __float2bfloat16_rn(pv);
    ds_out[r * kLdP + cc] = __float2bfloat16_rn(dsv);
  }
}

// A block's 64 x HS result (each warp's 16 rows in fragments f) into columns col .. col + HS - 1
// of rows r0 .. r0 + 63 (those below T) of the (B,T,3C) dqkv, through the fp32 staging tile.
template <int HS>
__device__ void StoreRows(float* dqkv, float* stage, fragment<accumulator, 16, 16, 16, float> (&f)[HS / 16], int b,
                          int r0, int T, int64_t C3, int64_t col) {
  constexpr int ld = Layout<HS>::kLdO;
  const int warp = threadIdx.x / 32;
  for (int dt = 0; dt < HS / 16; ++dt)
    nvcuda::wmma::store_matrix_sync(stage + warp * 16 * ld + dt * 16, f[dt], ld, mem_row_major);
  __syncthreads();
  for (int e = threadIdx.x; e < kRowsTc * HS; e += kThreadsTc) {
    const int rr = e / HS, d = e % HS, r = r0 + rr;
    if (r < T) dqkv[(static_cast<int64_t>(b) * T + r) * C3 + col + d] = stage[rr * ld + d];
  }
  __syncthreads();  // the staging tile is free again
}

// lse and delta of rows r0 .. r0 + 63 of head (b, h) into shared memory (0 past T).
__device__ void StageRowStats(float* lse_s, float* delta_s, const float* lse, const float* delta, int64_t base, int r0,
                              int T) {
  for (int rr = threadIdx.x; rr < kRowsTc; rr += kThreadsTc) {
    const int r = r0 + rr;
    lse_s[rr] = r < T ? lse[base + r] : 0.f;
    delta_s[rr] = r < T ? delta[base + r] : 0.f;
  }
}

// The backward kernels' shared memory: the block's own two tiles (Q and dO, or K and V), the two
// staged tiles of the other side, the scores and dP (fp32), P and dS (bf16), the output staging
// tile, and the staged rows' lse and delta.
template <int HS>
struct BackwardShared {
  Bf *own0, *own1, *other0, *other1;
  float *s, *dp;
  Bf *p, *ds;
  float *stage, *lse, *delta;
};

template <int HS>
__device__ BackwardShared<HS> CarveBackward(unsigned char* smem) {
  using L = Layout<HS>;
  Carve cv{smem};
  BackwardShared<HS> t;
  t.own0 = cv.Take<Bf>(L::kHalfTile);
  t.own1 = cv.Take<Bf>(L::kHalfTile);
  t.other0 = cv.Take<Bf>(L::kHalfTile);
  t.other1 = cv.Take<Bf>(L::kHalfTile);
  t.s = cv.Take<float>(L::kScoreTile);
  t.dp = cv.Take<float>(L::kScoreTile);
  t.p = cv.Take<Bf>(L::kProbTile);
  t.ds = cv.Take<Bf>(L::kProbTile);
  t.stage = cv.Take<float>(L::kOutTile);
  t.lse = cv.Take<float>(L::kRowVec);
  t.delta = cv.Take<float>(L::kRowVec);
  return t;
}

// dQ for one block of 64 queries over the key tiles it sees.
template <int HS>
__global__ void __launch_bounds__(kThreadsTc)
    BackwardQKernel(float* dqkv, const float* dout, const float* qkv, const float* lse, const float* delta, int T,
                    int C, int NH, float scale) {
  using L = Layout<HS>;
  extern __shared__ __align__(128) unsigned char smem[];
  const BackwardShared<HS> sh = CarveBackward<HS>(smem);
  Bf *qs = sh.own0, *gs = sh.own1, *ks = sh.other0, *vs = sh.other1, *dss = sh.ds;  // (P is not needed for dQ)
  float *ss = sh.s, *dps = sh.dp, *stage = sh.stage, *lse_s = sh.lse, *delta_s = sh.delta;
  const int b = blockIdx.y / NH, h = blockIdx.y % NH;
  const int q0 = blockIdx.x * kRowsTc;
  const int warp = threadIdx.x / 32;
  const int64_t C3 = 3 * static_cast<int64_t>(C), hcol = static_cast<int64_t>(h) * HS;
  StageRows<HS>(qs, qkv, C3, hcol, b, q0, T);
  StageRows<HS>(gs, dout, C, hcol, b, q0, T);
  StageRowStats(lse_s, delta_s, lse, delta, (static_cast<int64_t>(b) * NH + h) * T, q0, T);
  fragment<accumulator, 16, 16, 16, float> dq[HS / 16];
  for (int dt = 0; dt < HS / 16; ++dt) nvcuda::wmma::fill_fragment(dq[dt], 0.f);
  const int last = min(T - 1, q0 + kRowsTc - 1);
  for (int k0 = 0; k0 <= last; k0 += kTileTc) {
    __syncthreads();
    StageRows<HS>(ks, qkv, C3, C + hcol, b, k0, T);
    StageRows<HS>(vs, qkv, C3, 2 * static_cast<int64_t>(C) + hcol, b, k0, T);
    __syncthreads();
    RowsTimesTransposed<HS>(ss + warp * 16 * kLdS, qs + warp * 16 * L::kLdH, ks);   // S = Q K^T
    RowsTimesTransposed<HS>(dps + warp * 16 * kLdS, gs + warp * 16 * L::kLdH, vs);  // dP = dO V^T
    __syncwarp();
    SoftmaxGrad(nullptr, dss, ss, dps, lse_s, delta_s, true, q0, k0, T, scale);
    __syncwarp();
    AccumulateRowsTimes<HS>(dq, dss + warp * 16 * kLdP, ks);  // dQ += dS K
  }
  for (int dt = 0; dt < HS / 16; ++dt)
    for (int t = 0; t < dq[dt].num_elements; ++t) dq[dt].x[t] *= scale;
  StoreRows<HS>(dqkv, stage, dq, b, q0, T, C3, hcol);
}

// dK and dV for one block of 64 keys over the query tiles that see them (queries >= the block's
// first key).
template <int HS>
__global__ void __launch_bounds__(kThreadsTc)
    BackwardKvKernel(float* dqkv, const float* dout, const float* qkv, const float* lse, const float* delta, int T,
                     int C, int NH, float scale) {
  using L = Layout<HS>;
  extern __shared__ __align__(128) unsigned char smem[];
  const BackwardShared<HS> sh = CarveBackward<HS>(smem);
  Bf *ks = sh.own0, *vs = sh.own1, *qs = sh.other0, *gs = sh.other1, *pss = sh.p, *dss = sh.ds;
  float *ss = sh.s, *dps = sh.dp, *stage = sh.stage, *lse_s = sh.lse, *delta_s = sh.delta;
  const int b = blockIdx.y / NH, h = blockIdx.y % NH;
  const int k0 = blockIdx.x * kRowsTc;
  const int warp = threadIdx.x / 32;
  const int64_t C3 = 3 * static_cast<int64_t>(C), hcol = static_cast<int64_t>(h) * HS;
  StageRows<HS>(ks, qkv, C3, C + hcol, b, k0, T);
  StageRows<HS>(vs, qkv, C3, 2 * static_cast<int64_t>(C) + hcol, b, k0, T);
  fragment<accumulator, 16, 16, 16, float> dk[HS / 16], dv[HS / 16];
  for (int dt = 0; dt < HS / 16; ++dt) {
    nvcuda::wmma::fill_fragment(dk[dt], 0.f);
    nvcuda::wmma::fill_fragment(dv[dt], 0.f);
  }
  const int64_t row0 = (static_cast<int64_t>(b) * NH + h) * T;
  for (int q0 = k0; q0 < T; q0 += kTileTc) {
    __syncthreads();
    StageRows<HS>(qs, qkv, C3, hcol, b, q0, T);
    StageRows<HS>(gs, dout, C, hcol, b, q0, T);
    StageRowStats(lse_s, delta_s, lse, delta, row0, q0, T);
    __syncthreads();
    RowsTimesTransposed<HS>(ss + warp * 16 * kLdS, ks + warp * 16 * L::kLdH, qs);   // S^T = K Q^T
    RowsTimesTransposed<HS>(dps + warp * 16 * kLdS, vs + warp * 16 * L::kLdH, gs);  // dP^T = V dO^T
    __syncwarp();
    SoftmaxGrad(pss, dss, ss, dps, lse_s, delta_s, false, k0, q0, T, scale);
    __syncwarp();
    AccumulateRowsTimes<HS>(dv, pss + warp * 16 * kLdP, gs);  // dV += P^T dO
    AccumulateRowsTimes<HS>(dk, dss + warp * 16 * kLdP, qs);  // dK += dS^T Q
  }
  for (int dt = 0; dt < HS / 16; ++dt)
    for (int t = 0; t < dk[dt].num_elements; ++t) dk[dt].x[t] *= scale;
  StoreRows<HS>(dqkv, stage, dk, b, k0, T, C3, C + hcol);
  StoreRows<HS>(dqkv, stage, dv, b, k0, T, C3, 2 * static_cast<int64_t>(C) + hcol);
}

template <int HS>
Status ForwardTc(float* out, float* lse, const float* qkv, int B, int T, int C, int NH, cudaStream_t s) {
  constexpr size_t smem = Layout<HS>::kForward + 128;
  RT_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(ForwardKernel<HS>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
      "flash attention (tensor cores): shared memory limit");
  const dim3 grid((T + kRowsTc - 1) / kRowsTc, B * NH);
  ForwardKernel<HS><<<grid, kThreadsTc, smem, s>>>(out, lse, qkv, T, C, NH, 1.f / sqrtf(static_cast<float>(HS)));
  return cuda::Launched("flash attention forward (tensor cores)");
}

template <int HS>
Status BackwardTc(float* dqkv, const float* dout, const float* qkv, const float* lse, const float* delta, int B, int T,
                  int C, int NH, cudaStream_t s) {
  constexpr size_t smem = Layout<HS>::kBackward + 128;
  for (const void* k : {reinterpret_cast<const void*>(BackwardQKernel<HS>),
                        reinterpret_cast<const void*>(BackwardKvKernel<HS>)})
    RT_CUDA_RETURN_IF_ERROR(
        cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
        "flash attention backward (tensor cores): shared memory limit");
  const dim3 grid((T + kRowsTc - 1) / kRowsTc, B * NH);
  const float scale = 1.f / sqrtf(static_cast<float>(HS));
  BackwardQKernel<HS><<<grid, kThreadsTc, smem, s>>>(dqkv, dout, qkv, lse, delta, T, C, NH, scale);
  RT_RETURN_IF_ERROR(cuda::Launched("flash attention backward (tensor cores, dQ)"));
  BackwardKvKernel<HS><<<grid, kThreadsTc, smem, s>>>(dqkv, dout, qkv, lse, delta, T, C, NH, scale);
  return cuda::Launched("flash attention backward (tensor cores, dK, dV)");
}

}  // namespace tc
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

bool FlashAttentionTcSupports(int head_size) {
  size_t need = 0;
  switch (head_size) {
    case 32: need = std::max(tc::Layout<32>::kForward, tc::Layout<32>::kBackward); break;
    case 64: need = std::max(tc::Layout<64>::kForward, tc::Layout<64>::kBackward); break;
    case 128: need = std::max(tc::Layout<128>::kForward, tc::Layout<128>::kBackward); break;
    default: return false;
  }
  // Shared memory per block: 163 KB on sm_80 and 227 KB on sm_90, but 99 KB on sm_86/sm_89.
  int device = 0, optin = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return need + 128 <= static_cast<size_t>(optin);
}

Status FlashAttentionForwardTc(float* out, float* lse, const float* qkv, int B, int T, int C, int NH, cudaStream_t s) {
  switch (C / NH) {
    case 32: return tc::ForwardTc<32>(out, lse, qkv, B, T, C, NH, s);
    case 64: return tc::ForwardTc<64>(out, lse, qkv, B, T, C, NH, s);
    case 128: return tc::ForwardTc<128>(out, lse, qkv, B, T, C, NH, s);
    default:
      return InvalidArgument("flash attention (tensor cores): head size " + std::to_string(C / NH) +
                             " is not one of 32, 64, 128");
  }
}

Status FlashAttentionBackwardTc(float* dqkv, float* delta, const float* dout, const float* qkv, const float* out,
                                const float* lse, int B, int T, int C, int NH, cudaStream_t s) {
  const int HS = C / NH;
  if (HS != 32 && HS != 64 && HS != 128)
    return InvalidArgument("flash attention (tensor cores): head size " + std::to_string(HS) +
                           " is not one of 32, 64, 128");
  const int64_t rows = static_cast<int64_t>(B) * NH * T;
  FlashDeltaKernel<<<cuda::Blocks(rows), cuda::kThreads, 0, s>>>(delta, dout, out, T, C, NH, HS, rows);
  RT_RETURN_IF_ERROR(cuda::Launched("flash attention backward (delta)"));
  switch (HS) {
    case 32: return tc::BackwardTc<32>(dqkv, dout, qkv, lse, delta, B, T, C, NH, s);
    case 64: return tc::BackwardTc<64>(dqkv, dout, qkv, lse, delta, B, T, C, NH, s);
    case 128: return tc::BackwardTc<128>(dqkv, dout, qkv, lse, delta, B, T, C, NH, s);
    default:
      return InvalidArgument("flash attention (tensor cores): head size " + std::to_string(HS) +
                             " is not one of 32, 64, 128");
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
