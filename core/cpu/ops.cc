#include "core/cpu/ops.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/cpu/fastmath.h"
#include "core/cpu/gemm.h"
#include "core/rng.h"

namespace ringtrain::cpu {

template <typename T>
void EmbeddingForward(T* out, const int32_t* tokens, const T* wte, const T* wpe, int B, int Tn, int C) {
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < static_cast<int64_t>(B) * Tn; ++bt) {
    const int t = static_cast<int>(bt % Tn);
    const T* e = wte + static_cast<int64_t>(tokens[bt]) * C;
    const T* p = wpe + static_cast<int64_t>(t) * C;
    T* o = out + bt * C;
    for (int c = 0; c < C; ++c) o[c] = e[c] + p[c];
  }
}

template <typename T>
void EmbeddingBackward(T* dwte, T* dwpe, const T* dout, const int32_t* tokens, int B, int Tn, int C, int64_t v_begin,
                       int64_t Vl) {
  // Parallel over channel slices: every thread walks all rows in order, so sums do not depend on
  // the number of threads.
#pragma omp parallel
  {
    const int nt = omp_get_num_threads(), id = omp_get_thread_num();
    const int c0 = static_cast<int>(static_cast<int64_t>(C) * id / nt);
    const int c1 = static_cast<int>(static_cast<int64_t>(C) * (id + 1) / nt);
    for (int64_t bt = 0; bt < static_cast<int64_t>(B) * Tn; ++bt) {
      const int t = static_cast<int>(bt % Tn);
      const T* d = dout + bt * C;
      T* p = dwpe + static_cast<int64_t>(t) * C;
      for (int c = c0; c < c1; ++c) p[c] += d[c];
      const int64_t row = tokens[bt] - v_begin;
      if (row < 0 || row >= Vl) continue;
      T* e = dwte + row * C;
      for (int c = c0; c < c1; ++c) e[c] += d[c];
    }
  }
}

template <typename T>
void LayerNormForward(T* out, T* mean, T* rstd, const T* in, const T* w, const T* b, int N, int C) {
  const T eps = T(1e-5);
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const T* x = in + static_cast<int64_t>(n) * C;
    T m = 0;
    for (int c = 0; c < C; ++c) m += x[c];
    m /= C;
    T v = 0;
    for (int c = 0; c < C; ++c) {
      const T d = x[c] - m;
      v += d * d;
    }
    v /= C;
    const T s = T(1) / std::sqrt(v + eps);
    T* o = out + static_cast<int64_t>(n) * C;
    if (b) {
      for (int c = 0; c < C; ++c) o[c] = (x[c] - m) * s * w[c] + b[c];
    } else {
      for (int c = 0; c < C; ++c) o[c] = (x[c] - m) * s * w[c];
    }
    mean[n] = m;
    rstd[n] = s;
  }
}

template <typename T>
void LayerNormBackward(T* din, T* dw, T* db, const T* dout, const T* in, const T* w, const T* mean,
                       const T* rstd, int N, int C) {
#pragma omp parallel
  {
    // Input gradient: rows are independent.
#pragma omp for schedule(static)
    for (int n = 0; n < N; ++n) {
      const T* x = in + static_cast<int64_t>(n) * C;
      const T* d = dout + static_cast<int64_t>(n) * C;
      T* dx = din + static_cast<int64_t>(n) * C;
      const T m = mean[n], s = rstd[n];
      T dnorm_mean = 0, dnorm_norm_mean = 0;
      for (int c = 0; c < C; ++c) {
        const T norm = (x[c] - m) * s;
        const T dnorm = w[c] * d[c];
        dnorm_mean += dnorm;
        dnorm_norm_mean += dnorm * norm;
      }
      dnorm_mean /= C;
      dnorm_norm_mean /= C;
      for (int c = 0; c < C; ++c) {
        const T norm = (x[c] - m) * s;
        const T dnorm = w[c] * d[c];
        dx[c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
      }
    }
    // Parameter gradients: each thread owns a channel slice and walks rows in order
    // (deterministic for any thread count).
    const int nt = omp_get_num_threads(), id = omp_get_thread_num();
    const int c0 = static_cast<int>(static_cast<int64_t>(C) * id / nt);
    const int c1 = static_cast<int>(static_cast<int64_t>(C) * (id + 1) / nt);
    for (int n = 0; n < N; ++n) {
      const T* x = in + static_cast<int64_t>(n) * C;
      const T* d = dout + static_cast<int64_t>(n) * C;
      const T m = mean[n], s = rstd[n];
      for (int c = c0; c < c1; ++c) {
        dw[c] += (x[c] - m) * s * d[c];
        if (db) db[c] += d[c];
      }
    }
  }
}

template <typename T>
void LinearForward(T* out, const T* in, const T* w, const T* b, int N, int C, int OC) {
  if (b) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; ++n) std::memcpy(out + static_cast<int64_t>(n) * OC, b, sizeof(T) * OC);
  }
  Gemm(false, true, N, OC, C, T(1), in, C, w, C, b ? T(1) : T(0), out, OC);
}

template <typename T>
void LinearBackward(T* din, T* dw, T* db, const T* dout, const T* in, const T* w, int N, int C, int OC,
                    bool accumulate_din) {
  if (din) Gemm(false, false, N, C, OC, T(1), dout, OC, w, C, accumulate_din ? T(1) : T(0), din, C);
  Gemm(true, false, OC, C, N, T(1), dout, OC, in, C, T(1), dw, C);
  if (db) {
#pragma omp parallel
    {
      const int nt = omp_get_num_threads(), id = omp_get_thread_num();
      const int c0 = static_cast<int>(static_cast<int64_t>(OC) * id / nt);
      const int c1 = static_cast<int>(static_cast<int64_t>(OC) * (id + 1) / nt);
      for (int n = 0; n < N; ++n) {
        const T* d = dout + static_cast<int64_t>(n) * OC;
        for (int c = c0; c < c1; ++c) db[c] += d[c];
      }
    }
  }
}

namespace {
// Causal attention skips the upper triangle: rows are cut into blocks, and the GEMMs of query
// block [r0, r1) only touch keys [0, r1) (forward, dP, dQ), while those of key block [c0, c1)
// only touch queries [c0, T) (dV, dK): (n+1)/2n of the full T x T work for n blocks of 64 rows
// (fewer, larger blocks keep per-call GEMM overhead low).
int CausalBlock(int Tn) {
  const int nb = std::clamp(Tn / 64, 1, 8);
  return (Tn + nb - 1) / nb;
}
}  // namespace

template <typename T>
void AttentionForward(T* out, T* att, T* att_drop, const uint8_t* keep, T dropout_p, const T* qkv, int B,
                      int Tn, int C, int NH) {
  const int hs = C / NH;
  const int C3 = 3 * C;
  const int bs = CausalBlock(Tn);
  const T scale = T(1) / std::sqrt(static_cast<T>(hs));
  const T keep_scale = keep ? T(1) / (T(1) - dropout_p) : T(1);
#pragma omp parallel for schedule(static) collapse(2)
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < NH; ++h) {
      const T* q = qkv + static_cast<int64_t>(b) * Tn * C3 + h * hs;
      const T* k = q + C;
      const T* v = q + 2 * C;
      const int64_t bh = static_cast<int64_t>(b) * NH + h;
      T* p = att + bh * Tn * Tn;
      T* pd = keep ? att_drop + bh * Tn * Tn : nullptr;
      const uint8_t* kp = keep ? keep + bh * Tn * Tn : nullptr;
      T* o = out + static_cast<int64_t>(b) * Tn * C + h * hs;
      for (int r0 = 0; r0 < Tn; r0 += bs) {
        const int r1 = std::min(Tn, r0 + bs);
        // Scores (rows r0..r1, keys 0..r1) = scale * q k^T.
        Gemm(false, true, r1 - r0, r1, hs, scale, q + static_cast<int64_t>(r0) * C3, C3, k, C3, T(0),
             p + static_cast<int64_t>(r0) * Tn, Tn);
        for (int i = r0; i < r1; ++i) {
          T* row = p + static_cast<int64_t>(i) * Tn;
          T mx = row[0];
          for (int j = 1; j <= i; ++j) mx = std::max(mx, row[j]);
          T sum = 0;
          for (int j = 0; j <= i; ++j) {
            row[j] = Exp(row[j] - mx);
            sum += row[j];
          }
          const T inv = T(1) / sum;
          for (int j = 0; j <= i; ++j) row[j] *= inv;
          for (int j = i + 1; j < Tn; ++j) row[j] = 0;
          if (keep) {
            T* drow = pd + static_cast<int64_t>(i) * Tn;
            const uint8_t* krow = kp + static_cast<int64_t>(i) * Tn;
            for (int j = 0; j < Tn; ++j) drow[j] = krow[j] ? row[j] * keep_scale : T(0);
          }
        }
        const T* pv = keep ? pd : p;
        Gemm(false, false, r1 - r0, hs, r1, T(1), pv + static_cast<int64_t>(r0) * Tn, Tn, v, C3, T(0),
             o + static_cast<int64_t>(r0) * C, C);
      }
    }
  }
}

int64_t AttentionScratchSize(int Tn) {
  return static_cast<int64_t>(omp_get_max_threads()) * 2 * Tn * Tn;
}

template <typename T>
void AttentionBackward(T* dqkv, T* scratch, const T* dout, const T* qkv, const T* att, const T* att_drop,
                       const uint8_t* keep, T dropout_p, int B, int Tn, int C, int NH) {
  const int hs = C / NH;
  const int C3 = 3 * C;
  const int bs = CausalBlock(Tn);
  const T scale = T(1) / std::sqrt(static_cast<T>(hs));
  const T keep_scale = keep ? T(1) / (T(1) - dropout_p) : T(1);
#pragma omp parallel
  {
    T* dp = scratch + static_cast<int64_t>(omp_get_thread_num()) * 2 * Tn * Tn;
    T* ds = dp + static_cast<int64_t>(Tn) * Tn;
#pragma omp for schedule(static) collapse(2)
    for (int b = 0; b < B; ++b) {
      for (int h = 0; h < NH; ++h) {
        const int64_t bh = static_cast<int64_t>(b) * NH + h;
        const T* q = qkv + static_cast<int64_t>(b) * Tn * C3 + h * hs;
        const T* k = q + C;
        const T* v = q + 2 * C;
        T* dq = dqkv + static_cast<int64_t>(b) * Tn * C3 + h * hs;
        T* dk = dq + C;
        T* dv = dq + 2 * C;
        const T* d = dout + static_cast<int64_t>(b) * Tn * C + h * hs;
        const T* p = att + bh * Tn * Tn;
        const T* pv = keep ? att_drop + bh * Tn * Tn : p;
        const uint8_t* kp = keep ? keep + bh * Tn * Tn : nullptr;
        for (int r0 = 0; r0 < Tn; r0 += bs) {
          const int r1 = std::min(Tn, r0 + bs);
          // dP' (rows r0..r1, keys 0..r1) = dout v^T, then dropout and softmax backward into dS
          // (score scale folded in).
          Gemm(false, true, r1 - r0, r1, hs, T(1), d + static_cast<int64_t>(r0) * C, C, v, C3, T(0),
               dp + static_cast<int64_t>(r0) * Tn, Tn);
          for (int i = r0; i < r1; ++i) {
            const T* prow = p + static_cast<int64_t>(i) * Tn;
            T* dprow = dp + static_cast<int64_t>(i) * Tn;
            T* dsrow = ds + static_cast<int64_t>(i) * Tn;
            if (keep) {
              const uint8_t* krow = kp + static_cast<int64_t>(i) * Tn;
              for (int j = 0; j <= i; ++j) dprow[j] = krow[j] ? dprow[j] * keep_scale : T(0);
            }
            T dot = 0;
            for (int j = 0; j <= i; ++j) dot += prow[j] * dprow[j];
            for (int j = 0; j <= i; ++j) dsrow[j] = prow[j] * (dprow[j] - dot) * scale;
            for (int j = i + 1; j < r1; ++j) dsrow[j] = 0;
          }
          // dq (rows r0..r1) = dS k
          Gemm(false, false, r1 - r0, hs, r1, T(1), ds + static_cast<int64_t>(r0) * Tn, Tn, k, C3, T(0),
               dq + static_cast<int64_t>(r0) * C3, C3);
        }
        // Key blocks: dv = P'^T dout and dk = dS^T q over the queries that can see them.
        for (int c0 = 0; c0 < Tn; c0 += bs) {
          const int c1 = std::min(Tn, c0 + bs);
          const int64_t off = static_cast<int64_t>(c0) * Tn + c0;
          Gemm(true, false, c1 - c0, hs, Tn - c0, T(1), pv + off, Tn, d + static_cast<int64_t>(c0) * C, C, T(0),
               dv + static_cast<int64_t>(c0) * C3, C3);
          Gemm(true, false, c1 - c0, hs, Tn - c0, T(1), ds + off, Tn, q + static_cast<int64_t>(c0) * C3, C3, T(0),
               dk + static_cast<int64_t>(c0) * C3, C3);
        }
      }
    }
  }
}

namespace {
constexpr double kGeluScale = 0.7978845608028654;  // sqrt(2/pi)
}

template <typename T>
void GeluForward(T* out, const T* in, int64_t n) {
  const T s = static_cast<T>(kGeluScale);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T x = in[i];
    const T u = s * (x + T(0.044715) * x * x * x);
    out[i] = T(0.5) * x * (T(1) + Tanh(u));
  }
}

template <typename T>
void GeluBackward(T* din, const T* dout, const T* in, int64_t n) {
  const T s = static_cast<T>(kGeluScale);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T x = in[i];
    const T u = s * (x + T(0.044715) * x * x * x);
    const T th = Tanh(u);
    const T sech2 = T(1) - th * th;
    const T g = T(0.5) * (T(1) + th) + T(0.5) * x * sech2 * s * (T(1) + T(3 * 0.044715) * x * x);
    din[i] = g * dout[i];
  }
}

template <typename T>
void ResidualForward(T* out, const T* a, const T* b, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

template <typename T>
void DropoutApply(T* out, const T* in, const uint8_t* keep, T p, int64_t n) {
  const T s = T(1) / (T(1) - p);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = keep[i] ? in[i] * s : T(0);
}

void DropoutMaskRows(uint8_t* keep, float p, int64_t rows, int64_t row_len, int64_t row_begin, uint64_t seed,
                     uint64_t key) {
  const uint64_t threshold = static_cast<uint64_t>(static_cast<double>(p) * 18446744073709551616.0);
  const int64_t kBlock = 4096;
  const int64_t per_row = (row_len + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int64_t job = 0; job < rows * per_row; ++job) {
    const int64_t r = job / per_row, blk = job % per_row;
    Rng rng(seed, RngPurpose::kDropout, key, static_cast<uint64_t>(row_begin + r), static_cast<uint64_t>(blk));
    uint8_t* k = keep + r * row_len;
    const int64_t end = std::min(row_len, (blk + 1) * kBlock);
    for (int64_t i = blk * kBlock; i < end; ++i) k[i] = rng.Next() >= threshold ? 1 : 0;
  }
}

template <typename T>
double SoftmaxCrossEntropy(T* losses, T* dlogits, const T* logits, const int32_t* targets, int N, int V,
                           T grad_scale) {
  double total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (int n = 0; n < N; ++n) {
    const T* x = logits + static_cast<int64_t>(n) * V;
    const int tgt = targets[n];
    T mx = x[0];
    for (int v = 1; v < V; ++v) mx = std::max(mx, x[v]);
    T sum = 0;
    for (int v = 0; v < V; ++v) sum += Exp(x[v] - mx);
    const T logsum = std::log(sum) + mx;
    const T loss = tgt < 0 ? T(0) : logsum - x[tgt];
    losses[n] = loss;
    total += static_cast<double>(loss);
    if (dlogits) {
      T* d = dlogits + static_cast<int64_t>(n) * V;
      if (tgt < 0) {
        for (int v = 0; v < V; ++v) d[v] = 0;
      } else {
        for (int v = 0; v < V; ++v) d[v] = Exp(x[v] - logsum) * grad_scale;
        d[tgt] -= grad_scale;
      }
    }
  }
  return total;
}

#define RT_INSTANTIATE(T)                                                                             \
  template void EmbeddingForward<T>(T*, const int32_t*, const T*, const T*, int, int, int);           \
  template void EmbeddingBackward<T>(T*, T*, const T*, const int32_t*, int, int, int, int64_t, int64_t); \
  template void LayerNormForward<T>(T*, T*, T*, const T*, const T*, const T*, int, int);              \
  template void LayerNormBackward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*,    \
                                     int, int);                                                       \
  template void LinearForward<T>(T*, const T*, const T*, const T*, int, int, int);                    \
  template void LinearBackward<T>(T*, T*, T*, const T*, const T*, const T*, int, int, int, bool);     \
  template void AttentionForward<T>(T*, T*, T*, const uint8_t*, T, const T*, int, int, int, int);     \
  template void AttentionBackward<T>(T*, T*, const T*, const T*, const T*, const T*, const uint8_t*, \
                                     T, int, int, int, int);                                          \
  template void GeluForward<T>(T*, const T*, int64_t);                                                \
  template void GeluBackward<T>(T*, const T*, const T*, int64_t);                                     \
  template void ResidualForward<T>(T*, const T*, const T*, int64_t);                                  \
  template void DropoutApply<T>(T*, const T*, const uint8_t*, T, int64_t);                            \
  template double SoftmaxCrossEntropy<T>(T*, T*, const T*, const int32_t*, int, int, T);

RT_INSTANTIATE(float)
RT_INSTANTIATE(double)

}  // namespace ringtrain::cpu
