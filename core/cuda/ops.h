// CUDA kernels for the Transformer ops, fp32, with the same shapes and contracts as the CPU
// reference in core/cpu/ops.h (which the GPU tests compare against): parameter gradients
// accumulate (+=), activation gradients overwrite unless stated. All pointers are device
// pointers; every call enqueues on `s` and returns the launch error, if any.
//
// Determinism: no atomics. Reductions over rows (parameter gradients) walk the rows in order, one
// thread per column, so results are bitwise repeatable run to run.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/status.h"

namespace ringtrain::gpu {

using bf16 = __nv_bfloat16;

// A cuBLAS handle bound to one stream, for the matmuls below. pedantic (the fp32 ops): strict fp32,
// no TF32 tensor-core shortcuts, which round inputs to 10 mantissa bits. The bf16 ops use a
// handle made with pedantic = false, so cuBLAS may pick any tensor-core kernel, and the fp32
// products issued through it (the materialised attention's, under bf16) run on TF32 tensor cores.
class Blas {
 public:
  static StatusOr<Blas> Create(cudaStream_t s, bool pedantic = true);
  Blas(Blas&& o) noexcept : h_(o.h_), s_(o.s_) { o.h_ = nullptr; }
  Blas& operator=(Blas&&) = delete;
  Blas(const Blas&) = delete;
  ~Blas();
  cublasHandle_t handle() const { return h_; }
  cudaStream_t stream() const { return s_; }

 private:
  Blas(cublasHandle_t h, cudaStream_t s) : h_(h), s_(s) {}
  cublasHandle_t h_;
  cudaStream_t s_;
};

// out (B,T,C) = wte[tokens] (V,C) + wpe[t] (maxT,C).
Status EmbeddingForward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B, int T, int C,
                        cudaStream_t s);
// dwte += scatter(dout), dwpe += sum over the batch.
Status EmbeddingBackward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B, int T, int C,
                         cudaStream_t s);

// out (N,C) = (in - mean) * rstd * w + b; mean, rstd (N) saved for backward. b may be null.
Status LayerNormForward(float* out, float* mean, float* rstd, const float* in, const float* w, const float* b, int N,
                        int C, cudaStream_t s);
// bf16 activations: the same with the output rounded to bf16 (statistics and arithmetic fp32).
Status LayerNormForwardBf16(bf16* out, float* mean, float* rstd, const float* in, const float* w, const float* b,
                            int N, int C, cudaStream_t s);
// din (N,C) += input gradient; dw, db (C) += parameter gradients (db may be null).
Status LayerNormBackward(float* din, float* dw, float* db, const float* dout, const float* in, const float* w,
                         const float* mean, const float* rstd, int N, int C, cudaStream_t s);

// out (N,OC) = in (N,C) @ w^T + b, w (OC,C). b may be null.
Status LinearForward(const Blas& blas, float* out, const float* in, const float* w, const float* b, int N, int C, int OC);
// din (N,C) = dout @ w (accumulate_din: +=; din may be null: not computed), dw += dout^T @ in,
// db += column sums (db may be null).
Status LinearBackward(const Blas& blas, float* din, float* dw, float* db, const float* dout, const float* in,
                      const float* w, int N, int C, int OC, bool accumulate_din = false);

// bf16 mixed precision: the same products with bf16 inputs (in, w, dout), fp32 accumulation and
// fp32 outputs (out, din, dw), on tensor cores. LinearBackwardBf16 takes dout twice: rounded to
// bf16 for the products, and in fp32 for the bias gradient (db may be null).
Status LinearForwardBf16(const Blas& blas, float* out, const bf16* in, const bf16* w, const float* b, int N, int C,
                         int OC);
Status LinearBackwardBf16(const Blas& blas, float* din, float* dw, float* db, const float* dout, const bf16* dout16,
                          const bf16* in, const bf16* w, int N, int C, int OC);
// out[i] = in[i] rounded to the nearest bf16 (ties to even).
Status ToBf16(bf16* out, const float* in, int64_t n, cudaStream_t s);

// Causal self-attention. qkv (B,T,3C) holds q|k|v; out (B,T,C); att (B,NH,T,T) receives the
// softmax probabilities (zero above the diagonal). Dropout on the probabilities with a keep mask
// (B,NH,T,T), as the CPU's: att_drop receives att * keep / (1-p) and the values are weighted by
// it; keep = nullptr: no dropout (att_drop unused).
Status AttentionForward(const Blas& blas, float* out, float* att, float* att_drop, const uint8_t* keep, float p,
                        const float* qkv, int B, int T, int C, int NH);
// dqkv (B,T,3C) overwritten. scratch: B*NH*T*T floats. att_drop, keep, p: the forward's.
Status AttentionBackward(const Blas& blas, float* dqkv, float* scratch, const float* dout, const float* qkv,
                         const float* att, const float* att_drop, const uint8_t* keep, float p, int B, int T, int C,
                         int NH);

// Fused causal self-attention (flash-style, core/cuda/flash_attention.cu): the same result as
// AttentionForward without storing (B,NH,T,T). out (B,T,C); lse (B,NH,T) receives each query row's
// log-sum-exp of its scaled scores, which backward needs. Head sizes C/NH of 16, 32, 64 and 128.
bool FlashAttentionSupports(int head_size);
Status FlashAttentionForward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH, cudaStream_t s);
// dqkv (B,T,3C) overwritten; delta: B*NH*T floats of scratch; out and lse from the forward.
Status FlashAttentionBackward(float* dqkv, float* delta, const float* dout, const float* qkv, const float* out,
                              const float* lse, int B, int T, int C, int NH, cudaStream_t s);

// The same fused attention on tensor cores (bf16 mode): Q, K, V, dO and the probabilities rounded
// to bf16 for the products, fp32 accumulation, fp32 softmax and outputs (same arguments and
// outputs as the two above). Head sizes 32, 64, 128, where the current device gives a block the
// shared memory they take (up to 154 KB at 128: sm_80 and sm_90 do, sm_86/sm_89 not beyond 64's forward).
bool FlashAttentionTcSupports(int head_size);
Status FlashAttentionForwardTc(float* out, float* lse, const float* qkv, int B, int T, int C, int NH, cudaStream_t s);
Status FlashAttentionBackwardTc(float* dqkv, float* delta, const float* dout, const float* qkv, const float* out,
                                const float* lse, int B, int T, int C, int NH, cudaStream_t s);

// GELU, tanh approximation; backward overwrites din.
Status GeluForward(float* out, const float* in, int64_t n, cudaStream_t s);
Status GeluBackward(float* din, const float* dout, const float* in, int64_t n, cudaStream_t s);
// bf16 activations: pre (n) = in rounded to bf16, out (n) = GELU(in) rounded; backward takes the
// rounded pre-activation (din, dout fp32).
Status GeluForwardBf16(bf16* pre, bf16* out, const float* in, int64_t n, cudaStream_t s);
Status GeluBackwardBf16(float* din, const float* dout, const bf16* in, int64_t n, cudaStream_t s);

// Dropout with a precomputed keep mask: out = in * keep / (1-p) (in place allowed).
Status DropoutApply(float* out, const float* in, const uint8_t* keep, float p, int64_t n, cudaStream_t s);
// The CPU's cpu::DropoutMaskRows on the device, bit for bit: keep[i] = 1 with probability 1-p for
// `rows` rows of row_len elements that are rows [row_begin, row_begin + rows) of a larger batch,
// each (global row, 4096-element block) drawing from its own stream keyed by (seed, key).
Status DropoutMaskRows(uint8_t* keep, float p, int64_t rows, int64_t row_len, int64_t row_begin, uint64_t seed,
                       uint64_t key, cudaStream_t s);

// out = a + b (out may alias a or b: elementwise).
Status ResidualForward(float* out, const float* a, const float* b, int64_t n, cudaStream_t s);

// Fused softmax + cross-entropy over logits (N,V): losses (N) = -log p[target] (0 where
// target < 0); dlogits (may be null, may alias logits) = (softmax - onehot) * grad_scale.
Status SoftmaxCrossEntropy(float* losses, float* dlogits, const float* logits, const int32_t* targets, int N, int V,
                           float grad_scale, cudaStream_t s);

// One optimizer update of n elements with the CPU optimizer's formulas (models/optim.cc). The
// gradient is g * grad_scale plus the coupled penalties: l2 * p, l1 * sign(p), and weight_decay * p
// unless decoupled (AdamW: p *= 1 - lr * weight_decay first). The caller passes zero penalties for
// elements that do not decay.
struct OptimArgs {
  double lr = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0, momentum = 0, l1 = 0, l2 = 0;
  float grad_scale = 1;
  int64_t t = 1;            // update number, 1-based (Adam's bias corrections)
  bool decoupled = false;   // AdamW
  bool nesterov = false;    // SGD
};
// Adam/AdamW: moments m, v updated in place.
Status AdamUpdate(float* p, const float* g, float* m, float* v, int64_t n, const OptimArgs& a, cudaStream_t s);
// SGD: with momentum (m not null) m = momentum * m + g, and the step is m (nesterov: g + momentum * m).
Status SgdUpdate(float* p, const float* g, float* m, int64_t n, const OptimArgs& a, cudaStream_t s);

// Sum of squares of g[0, n) in double: scratch[0] receives it (device memory of
// SumSquaresScratch(n) doubles; the rest holds per-8192-element partials). Blocked like the CPU's
// SumSquares, so the two agree to double rounding; repeatable run to run.
int64_t SumSquaresScratch(int64_t n);
Status SumSquares(double* scratch, const float* g, int64_t n, cudaStream_t s);

}  // namespace ringtrain::gpu
