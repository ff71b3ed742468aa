// CPU reference kernels for the Transformer ops. Templated on the scalar type: float is what
// training runs, double is the float64 reference the gradient checks use. Shapes are stated per
// function; B batch, T time, C channels, NH heads, V vocabulary, N = rows (B*T).
// Contract for backward functions: parameter gradients (dw, db, dwte, ...) ACCUMULATE (+=), so
// gradient accumulation needs no extra buffer; activation gradients overwrite unless stated.
#pragma once

#include <cstdint>

namespace ringtrain::cpu {

// out (B,T,C) = wte[tokens] (V,C) + wpe[t] (maxT,C).
template <typename T>
void EmbeddingForward(T* out, const int32_t* tokens, const T* wte, const T* wpe, int B, int Tn, int C);
// dwte += scatter(dout), dwpe += sum over batch. dwte holds token ids [v_begin, v_begin + Vl)
// (a vocabulary-parallel part, tensor parallelism); tokens outside it add nothing to dwte.
template <typename T>
void EmbeddingBackward(T* dwte, T* dwpe, const T* dout, const int32_t* tokens, int B, int Tn, int C,
                       int64_t v_begin = 0, int64_t Vl = INT64_MAX);

// out (N,C) = (in - mean) * rstd * w + b; mean, rstd (N) are saved for backward. b may be null.
template <typename T>
void LayerNormForward(T* out, T* mean, T* rstd, const T* in, const T* w, const T* b, int N, int C);
// din (N,C) += gradient (accumulates: in a residual stream the input gradient is a sum of paths).
template <typename T>
void LayerNormBackward(T* din, T* dw, T* db, const T* dout, const T* in, const T* w, const T* mean,
                       const T* rstd, int N, int C);

// out (N,OC) = in (N,C) @ w^T + b, w (OC,C) as PyTorch stores it. b may be null.
template <typename T>
void LinearForward(T* out, const T* in, const T* w, const T* b, int N, int C, int OC);
// din (N,C) = dout @ w (overwrites; accumulate_din adds instead), dw += dout^T @ in, db += sum rows.
template <typename T>
void LinearBackward(T* din, T* dw, T* db, const T* dout, const T* in, const T* w, int N, int C, int OC,
                    bool accumulate_din = false);

// Causal self-attention. qkv (B,T,3C) holds q|k|v; out (B,T,C). att (B,NH,T,T) receives the
// softmax probabilities. With dropout: keep (B,NH,T,T) is a 0/1 mask and att_drop receives
// probs * keep / (1-p); pass keep = nullptr for no dropout (att_drop unused).
template <typename T>
void AttentionForward(T* out, T* att, T* att_drop, const uint8_t* keep, T dropout_p, const T* qkv,
                      int B, int Tn, int C, int NH);
// dqkv (B,T,3C) overwritten. scratch: NumThreads * 2 * T * T elements.
template <typename T>
void AttentionBackward(T* dqkv, T* scratch, const T* dout, const T* qkv, const T* att, const T* att_drop,
                       const uint8_t* keep, T dropout_p, int B, int Tn, int C, int NH);
// Elements of scratch AttentionBackward needs for the current thread budget.
int64_t AttentionScratchSize(int Tn);

// GELU, tanh approximation.
template <typename T>
void GeluForward(T* out, const T* in, int64_t n);
template <typename T>
void GeluBackward(T* din, const T* dout, const T* in, int64_t n);  // din overwritten

// out = a + b.
template <typename T>
void ResidualForward(T* out, const T* a, const T* b, int64_t n);

// Dropout with a precomputed keep mask: out = in * keep / (1-p). In place allowed.
template <typename T>
void DropoutApply(T* out, const T* in, const uint8_t* keep, T p, int64_t n);
// keep[i] = 1 with probability 1-p for `rows` rows of row_len elements that are rows
// [row_begin, row_begin + rows) of a larger batch. Streams are keyed by (seed, key, global row,
// 4096-element block of the row), so the mask depends neither on the thread count nor on how the
// batch is split: a data-parallel rank holding a slice of the batch draws exactly the mask one
// process holding the whole batch draws for those rows.
void DropoutMaskRows(uint8_t* keep, float p, int64_t rows, int64_t row_len, int64_t row_begin, uint64_t seed,
                     uint64_t key);

// Fused softmax + cross-entropy over logits (N,V). losses (N) get -log p[target]. If dlogits is
// non-null it receives (softmax - onehot) * grad_scale (may alias logits). target < 0 is ignored
// (loss 0, gradient 0). Returns the sum of losses (in double).
template <typename T>
double SoftmaxCrossEntropy(T* losses, T* dlogits, const T* logits, const int32_t* targets, int N, int V,
                           T grad_scale);

}  // namespace ringtrain::cpu
