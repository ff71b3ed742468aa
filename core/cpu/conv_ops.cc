#include "core/cpu/conv_ops.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "core/cpu/conv_direct.h"
#include "core/cpu/gemm.h"

namespace ringtrain::cpu {

namespace {

// Output columns ow whose input column ow*stride - pad + kw lies inside [0, W): [lo, hi).
inline void ValidSpan(int OW, int W, int stride, int pad, int kw, int* lo, int* hi) {
  // iw = ow*stride - pad + kw >= 0  <=>  ow >= ceil((pad - kw) / stride)
  const int a = pad - kw;
  *lo = a <= 0 ? 0 : (a + stride - 1) / stride;
  // iw <= W - 1  <=>  ow <= floor((W - 1 + pad - kw) / stride)
  const int b = W - 1 + pad - kw;
  *hi = b < 0 ? 0 : std::min(OW, b / stride + 1);
  if (*lo > *hi) *lo = *hi;
}

// col (C*KH*KW, OH*OW) from one image (C,H,W). The valid span of each output row is computed once,
// so the inner loop is a plain (vectorisable) copy; padding is filled with zeros around it.
template <typename T>
void Im2Col(T* col, const T* img, const ConvShape& s) {
  const int OH = s.OH(), OW = s.OW(), st = s.stride;
  for (int c = 0; c < s.C; ++c) {
    for (int kh = 0; kh < s.KH; ++kh) {
      for (int kw = 0; kw < s.KW; ++kw) {
        T* row = col + ((static_cast<int64_t>(c) * s.KH + kh) * s.KW + kw) * OH * OW;
        int lo, hi;
        ValidSpan(OW, s.W, st, s.pad, kw, &lo, &hi);
        for (int oh = 0; oh < OH; ++oh) {
          const int ih = oh * st - s.pad + kh;
          T* dst = row + static_cast<int64_t>(oh) * OW;
          if (ih < 0 || ih >= s.H) {
            std::fill(dst, dst + OW, T(0));
            continue;
          }
          const T* src = img + (static_cast<int64_t>(c) * s.H + ih) * s.W - s.pad + kw;
          std::fill(dst, dst + lo, T(0));
          if (st == 1) {
            std::copy(src + lo, src + hi, dst + lo);
          } else {
            for (int ow = lo; ow < hi; ++ow) dst[ow] = src[ow * st];
          }
          std::fill(dst + hi, dst + OW, T(0));
        }
      }
    }
  }
}

// img (C,H,W) += col2im(col).
template <typename T>
void Col2ImAdd(T* img, const T* col, const ConvShape& s) {
  const int OH = s.OH(), OW = s.OW(), st = s.stride;
  for (int c = 0; c < s.C; ++c) {
    for (int kh = 0; kh < s.KH; ++kh) {
      for (int kw = 0; kw < s.KW; ++kw) {
        const T* row = col + ((static_cast<int64_t>(c) * s.KH + kh) * s.KW + kw) * OH * OW;
        int lo, hi;
        ValidSpan(OW, s.W, st, s.pad, kw, &lo, &hi);
        for (int oh = 0; oh < OH; ++oh) {
          const int ih = oh * st - s.pad + kh;
          if (ih < 0 || ih >= s.H) continue;
          T* dst = img + (static_cast<int64_t>(c) * s.H + ih) * s.W - s.pad + kw;
          const T* src = row + static_cast<int64_t>(oh) * OW;
          if (st == 1) {
            for (int ow = lo; ow < hi; ++ow) dst[ow] += src[ow];
          } else {
            for (int ow = lo; ow < hi; ++ow) dst[ow * st] += src[ow];
          }
        }
      }
    }
  }
}

bool IsPointwise(const ConvShape& s) { return s.KH == 1 && s.KW == 1 && s.stride == 1 && s.pad == 0; }

int64_t PerThreadScratch(const ConvShape& s) {
  const int64_t col = s.ColRows() * s.ColCols();
  auto r = [](int64_t n) { return (n + 15) / 16 * 16; };
  return r(col) * 2 + r(static_cast<int64_t>(s.OC) * s.ColRows()) + r(s.OC);
}

}  // namespace

int64_t ConvScratchSize(const ConvShape& s) {
  const int threads = omp_get_max_threads();
  const int64_t im2col = static_cast<int64_t>(threads) * PerThreadScratch(s);
  return DirectConvSupported(s) ? std::max(im2col, DirectConvScratch(s, threads)) : im2col;
}

template <typename T>
void Conv2dForward(T* out, const T* in, const T* w, const T* b, const ConvShape& s, T* scratch) {
  if constexpr (std::is_same_v<T, float>) {
    if (DirectConvSupported(s)) return DirectConvForward(out, in, w, b, s, scratch);
  }
  const int64_t ckk = s.ColRows(), ohw = s.ColCols();
  const int64_t in_sz = static_cast<int64_t>(s.C) * s.H * s.W, out_sz = s.OC * ohw;
#pragma omp parallel
  {
    T* col = scratch + static_cast<int64_t>(omp_get_thread_num()) * PerThreadScratch(s);
#pragma omp for schedule(static)
    for (int n = 0; n < s.N; ++n) {
      const T* img = in + n * in_sz;
      T* o = out + n * out_sz;
      const T* x = img;
      if (!IsPointwise(s)) {
        Im2Col(col, img, s);
        x = col;
      }
      if (b) {
        for (int oc = 0; oc < s.OC; ++oc) std::fill(o + oc * ohw, o + (oc + 1) * ohw, b[oc]);
      }
      Gemm(false, false, s.OC, static_cast<int>(ohw), static_cast<int>(ckk), T(1), w, static_cast<int>(ckk), x,
           static_cast<int>(ohw), b ? T(1) : T(0), o, static_cast<int>(ohw));
    }
  }
}

template <typename T>
void Conv2dBackward(T* din, T* dw, T* db, const T* dout, const T* in, const T* w, const ConvShape& s, T* scratch) {
  if constexpr (std::is_same_v<T, float>) {
    if (DirectConvSupported(s)) return DirectConvBackward(din, dw, db, dout, in, w, s, scratch);
  }
  const int64_t ckk = s.ColRows(), ohw = s.ColCols();
  const int64_t in_sz = static_cast<int64_t>(s.C) * s.H * s.W, out_sz = s.OC * ohw;
  const int64_t per = PerThreadScratch(s);
  auto r = [](int64_t n) { return (n + 15) / 16 * 16; };
  int nthreads = 1;
#pragma omp parallel
  {
    const int tid = omp_get_thread_num();
#pragma omp single
    nthreads = omp_get_num_threads();
    T* col = scratch + tid * per;
    T* colg = col + r(ckk * ohw);
    T* dwp = colg + r(ckk * ohw);
    T* dbp = dwp + r(s.OC * ckk);
    std::fill(dwp, dwp + s.OC * ckk, T(0));
    std::fill(dbp, dbp + s.OC, T(0));
#pragma omp for schedule(static)
    for (int n = 0; n < s.N; ++n) {
      const T* img = in + n * in_sz;
      const T* d = dout + n * out_sz;
      const T* x = img;
      if (!IsPointwise(s)) {
        Im2Col(col, img, s);
        x = col;
      }
      // dW += dout_n (OC, OHW) @ col^T (OHW, CKK)
      Gemm(false, true, s.OC, static_cast<int>(ckk), static_cast<int>(ohw), T(1), d, static_cast<int>(ohw), x,
           static_cast<int>(ohw), T(1), dwp, static_cast<int>(ckk));
      if (db) {
        for (int oc = 0; oc < s.OC; ++oc) {
          T acc = 0;
          for (int64_t i = 0; i < ohw; ++i) acc += d[oc * ohw + i];
          dbp[oc] += acc;
        }
      }
      if (din) {
        T* dimg = din + n * in_sz;
        if (IsPointwise(s)) {
          Gemm(true, false, static_cast<int>(ckk), static_cast<int>(ohw), s.OC, T(1), w, static_cast<int>(ckk), d,
               static_cast<int>(ohw), T(0), dimg, static_cast<int>(ohw));
        } else {
          Gemm(true, false, static_cast<int>(ckk), static_cast<int>(ohw), s.OC, T(1), w, static_cast<int>(ckk), d,
               static_cast<int>(ohw), T(0), colg, static_cast<int>(ohw));
          std::fill(dimg, dimg + in_sz, T(0));
          Col2ImAdd(dimg, colg, s);
        }
      }
    }
  }
  // Reduce the per-thread partial sums in thread order (deterministic for a given thread count).
  for (int t = 0; t < nthreads; ++t) {
    const T* dwp = scratch + t * per + 2 * r(ckk * ohw);
    const T* dbp = dwp + r(s.OC * ckk);
    for (int64_t i = 0; i < s.OC * ckk; ++i) dw[i] += dwp[i];
    if (db)
      for (int oc = 0; oc < s.OC; ++oc) db[oc] += dbp[oc];
  }
}

template <typename T>
void MaxPoolForward(T* out, int32_t* argmax, const T* in, int N, int C, int H, int W, int k, int st) {
  const int OH = (H - k) / st + 1, OW = (W - k) / st + 1;
#pragma omp parallel for schedule(static)
  for (int64_t nc = 0; nc < static_cast<int64_t>(N) * C; ++nc) {
    const T* x = in + nc * H * W;
    for (int oh = 0; oh < OH; ++oh) {
      for (int ow = 0; ow < OW; ++ow) {
        T best = -std::numeric_limits<T>::infinity();
        int32_t bi = oh * st * W + ow * st;  // the window's first pixel if nothing beats -inf (NaNs)
        for (int i = 0; i < k; ++i) {
          for (int j = 0; j < k; ++j) {
            const int idx = (oh * st + i) * W + ow * st + j;
            if (x[idx] > best) {
              best = x[idx];
              bi = idx;
            }
          }
        }
        const int64_t o = nc * OH * OW + oh * OW + ow;
        out[o] = best;
        argmax[o] = bi;
      }
    }
  }
}

template <typename T>
void MaxPoolBackward(T* din, const T* dout, const int32_t* argmax, int N, int C, int H, int W, int k, int st) {
  const int OH = (H - k) / st + 1, OW = (W - k) / st + 1;
#pragma omp parallel for schedule(static)
  for (int64_t nc = 0; nc < static_cast<int64_t>(N) * C; ++nc) {
    T* dx = din + nc * H * W;
    std::fill(dx, dx + static_cast<int64_t>(H) * W, T(0));
    for (int64_t o = 0; o < static_cast<int64_t>(OH) * OW; ++o) dx[argmax[nc * OH * OW + o]] += dout[nc * OH * OW + o];
  }
}

template <typename T>
void AvgPoolForward(T* out, const T* in, int N, int C, int H, int W, int k, int st) {
  const int OH = (H - k) / st + 1, OW = (W - k) / st + 1;
  const T inv = T(1) / static_cast<T>(k * k);
#pragma omp parallel for schedule(static)
  for (int64_t nc = 0; nc < static_cast<int64_t>(N) * C; ++nc) {
    const T* x = in + nc * H * W;
    for (int oh = 0; oh < OH; ++oh) {
      for (int ow = 0; ow < OW; ++ow) {
        T acc = 0;
        for (int i = 0; i < k; ++i)
          for (int j = 0; j < k; ++j) acc += x[(oh * st + i) * W + ow * st + j];
        out[nc * OH * OW + oh * OW + ow] = acc * inv;
      }
    }
  }
}

template <typename T>
void AvgPoolBackward(T* din, const T* dout, int N, int C, int H, int W, int k, int st) {
  const int OH = (H - k) / st + 1, OW = (W - k) / st + 1;
  const T inv = T(1) / static_cast<T>(k * k);
#pragma omp parallel for schedule(static)
  for (int64_t nc = 0; nc < static_cast<int64_t>(N) * C; ++nc) {
    T* dx = din + nc * H * W;
    std::fill(dx, dx + static_cast<int64_t>(H) * W, T(0));
    for (int oh = 0; oh < OH; ++oh) {
      for (int ow = 0; ow < OW; ++ow) {
        const T g = dout[nc * OH * OW + oh * OW + ow] * inv;
        for (int i = 0; i < k; ++i)
          for (int j = 0; j < k; ++j) dx[(oh * st + i) * W + ow * st + j] += g;
      }
    }
  }
}

template <typename T>
void ReluForward(T* out, const T* in, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = in[i] > T(0) ? in[i] : T(0);
}

template <typename T>
void ReluBackward(T* din, const T* dout, const T* out, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) din[i] = out[i] > T(0) ? dout[i] : T(0);
}

template <typename T>
void BatchNormForward(T* out, T* mean, T* rstd, T* running_mean, T* running_var, const T* in, const T* w,
                      const T* b, int N, int C, int HW, bool train, T momentum, T eps) {
#pragma omp parallel for schedule(static)
  for (int c = 0; c < C; ++c) {
    T m, s;
    if (train) {
      // Two passes in double-free form: mean, then centred variance (numerically stable).
      T acc = 0;
      for (int n = 0; n < N; ++n) {
        const T* x = in + (static_cast<int64_t>(n) * C + c) * HW;
#pragma omp simd reduction(+ : acc)
        for (int i = 0; i < HW; ++i) acc += x[i];
      }
      const int64_t cnt = static_cast<int64_t>(N) * HW;
      m = acc / static_cast<T>(cnt);
      T var = 0;
      for (int n = 0; n < N; ++n) {
        const T* x = in + (static_cast<int64_t>(n) * C + c) * HW;
#pragma omp simd reduction(+ : var)
        for (int i = 0; i < HW; ++i) var += (x[i] - m) * (x[i] - m);
      }
      const T biased = var / static_cast<T>(cnt);
      s = T(1) / std::sqrt(biased + eps);
      mean[c] = m;
      rstd[c] = s;
      if (running_mean) {
        const T unbiased = cnt > 1 ? var / static_cast<T>(cnt - 1) : biased;
        running_mean[c] = (T(1) - momentum) * running_mean[c] + momentum * m;
        running_var[c] = (T(1) - momentum) * running_var[c] + momentum * unbiased;
      }
    } else {
      m = running_mean[c];
      s = T(1) / std::sqrt(running_var[c] + eps);
    }
    const T scale = s * w[c], shift = (b ? b[c] : T(0)) - m * s * w[c];
    for (int n = 0; n < N; ++n) {
      const T* x = in + (static_cast<int64_t>(n) * C + c) * HW;
      T* o = out + (static_cast<int64_t>(n) * C + c) * HW;
      for (int i = 0; i < HW; ++i) o[i] = x[i] * scale + shift;
    }
  }
}

template <typename T>
void BatchNormBackward(T* din, T* dw, T* db, const T* dout, const T* in, const T* w, const T* mean, const T* rstd,
                       int N, int C, int HW) {
#pragma omp parallel for schedule(static)
  for (int c = 0; c < C; ++c) {
    const T m = mean[c], s = rstd[c];
    T sum_d = 0, sum_dn = 0;
    for (int n = 0; n < N; ++n) {
      const T* x = in + (static_cast<int64_t>(n) * C + c) * HW;
      const T* d = dout + (static_cast<int64_t>(n) * C + c) * HW;
#pragma omp simd reduction(+ : sum_d, sum_dn)
      for (int i = 0; i < HW; ++i) {
        sum_d += d[i];
        sum_dn += d[i] * (x[i] - m) * s;
      }
    }
    dw[c] += sum_dn;
    if (db) db[c] += sum_d;
    const T cnt = static_cast<T>(static_cast<int64_t>(N) * HW);
    const T k = w[c] * s;
    const T mean_d = sum_d / cnt, mean_dn = sum_dn / cnt;
    for (int n = 0; n < N; ++n) {
      const T* x = in + (static_cast<int64_t>(n) * C + c) * HW;
      const T* d = dout + (static_cast<int64_t>(n) * C + c) * HW;
      T* dx = din + (static_cast<int64_t>(n) * C + c) * HW;
      for (int i = 0; i < HW; ++i) dx[i] = k * (d[i] - mean_d - (x[i] - m) * s * mean_dn);
    }
  }
}

template <typename T>
double MseLoss(T* dpred, const T* pred, const T* target, int64_t n, T grad_scale) {
  double total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (int64_t i = 0; i < n; ++i) {
    const T d = pred[i] - target[i];
    total += static_cast<double>(d) * d;
    if (dpred) dpred[i] = T(2) * d / static_cast<T>(n) * grad_scale;
  }
  return total / static_cast<double>(n);
}

#define RT_INSTANTIATE_CONV(T)                                                                              \
  template void Conv2dForward<T>(T*, const T*, const T*, const T*, const ConvShape&, T*);                  \
  template void Conv2dBackward<T>(T*, T*, T*, const T*, const T*, const T*, const ConvShape&, T*);         \
  template void MaxPoolForward<T>(T*, int32_t*, const T*, int, int, int, int, int, int);                   \
  template void MaxPoolBackward<T>(T*, const T*, const int32_t*, int, int, int, int, int, int);            \
  template void AvgPoolForward<T>(T*, const T*, int, int, int, int, int, int);                             \
  template void AvgPoolBackward<T>(T*, const T*, int, int, int, int, int, int);                            \
  template void ReluForward<T>(T*, const T*, int64_t);                                                     \
  template void ReluBackward<T>(T*, const T*, const T*, int64_t);                                          \
  template void BatchNormForward<T>(T*, T*, T*, T*, T*, const T*, const T*, const T*, int, int, int, bool, \
                                    T, T);                                                                 \
  template void BatchNormBackward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, int,    \
                                     int, int);                                                            \
  template double MseLoss<T>(T*, const T*, const T*, int64_t, T);

RT_INSTANTIATE_CONV(float)
RT_INSTANTIATE_CONV(double)

}  // namespace ringtrain::cpu
