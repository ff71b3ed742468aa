#include "core/cpu/conv_direct.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define RT_DIRECT_CONV 1
#else
#define RT_DIRECT_CONV 0
#endif

namespace ringtrain::cpu {

namespace {

int64_t Round16(int64_t n) { return (n + 15) / 16 * 16; }

// Offsets (floats) of one thread's scratch: padded input, padded output gradient (for the
// transposed convolution, padding 2 - pad), weight- and bias-gradient partials, and the transposed
// output gradient. The one definition of the layout, for sizing and for carving.
struct ThreadLayout {
  int64_t xpad, dpad, dw, db, dT, size;
};
ThreadLayout Layout(const ConvShape& s) {
  const int q = 2 - s.pad;
  ThreadLayout l{};
  int64_t at = 0;
  auto take = [&](int64_t* field, int64_t n) {
    *field = at;
    at += Round16(n);
  };
  take(&l.xpad, static_cast<int64_t>(s.C) * (s.H + 2 * s.pad) * (s.W + 2 * s.pad));
  take(&l.dpad, static_cast<int64_t>(s.OC) * (s.OH() + 2 * q) * (s.OW() + 2 * q));
  take(&l.dw, static_cast<int64_t>(s.OC) * s.C * 9);
  take(&l.db, s.OC);
  take(&l.dT, static_cast<int64_t>(s.OC) * s.OH() * s.OW());
  l.size = at;
  return l;
}

}  // namespace

bool DirectConvSupported(const ConvShape& s) {
  return RT_DIRECT_CONV && s.KH == 3 && s.KW == 3 && s.stride == 1 && s.pad >= 0 && s.pad <= 2 && s.OW() > 0 &&
         s.OH() > 0 && s.OW() % 8 == 0 && s.W % 8 == 0;
}

int64_t DirectConvScratch(const ConvShape& s, int threads) {
  return Round16(static_cast<int64_t>(s.OC) * s.C * 9) + static_cast<int64_t>(threads) * Layout(s).size;
}

#if RT_DIRECT_CONV

namespace {

// dst (C, H+2p, W+2p) = src (C, H, W) surrounded by p zeros.
void PadImage(float* dst, const float* src, int C, int H, int W, int p) {
  const int Hp = H + 2 * p, Wp = W + 2 * p;
  for (int c = 0; c < C; ++c) {
    float* d = dst + static_cast<int64_t>(c) * Hp * Wp;
    const float* x = src + static_cast<int64_t>(c) * H * W;
    std::fill(d, d + p * Wp, 0.f);
    for (int h = 0; h < H; ++h) {
      float* row = d + static_cast<int64_t>(h + p) * Wp;
      for (int i = 0; i < p; ++i) row[i] = row[p + W + i] = 0.f;
      std::memcpy(row + p, x + static_cast<int64_t>(h) * W, sizeof(float) * W);
    }
    std::fill(d + static_cast<int64_t>(H + p) * Wp, d + static_cast<int64_t>(Hp) * Wp, 0.f);
  }
}

// An empty asm that claims to modify v: GCC otherwise folds a loaded vector into every FMA that
// uses it as a memory operand, loading it once per use, and the kernels become load-bound.
inline void KeepInRegister(__m256& v) { __asm__("" : "+x"(v)); }

// dst[j][i] = src[i][j] for an 8x8 block (row strides in floats).
inline void Transpose8x8(float* dst, int64_t dst_stride, const float* src, int64_t src_stride) {
  __m256 r[8], t[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * src_stride);
#pragma GCC unroll 4
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);      // a0 b0 a1 b1 | a4 b4 a5 b5
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);  // a2 b2 a3 b3 | a6 b6 a7 b7
  }
#pragma GCC unroll 2
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);      // a0 b0 c0 d0 | a4 b4 c4 d4
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);  // a1 b1 c1 d1 | a5 ...
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

float HSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// One register block: OCB output channels x PB vectors of 8 output pixels,
//   out[o][pix] = bias[o] + sum_c sum_kh,kw w[o][c][kh][kw] * x[c][pix' + kh*Wp + kw]
// where x is a padded input (channel stride x_cs, row stride Wp), xp[j] points at vector j's first
// tap in channel 0 and op[j] at its first output pixel in output channel 0. Per tap the OCB weights
// are broadcast once and each input vector is loaded once: OCB*PB + OCB + 1 <= 15 live registers,
// so (on 16 ymm registers) the FMAs, not the loads, are the bottleneck.
template <int OCB, int PB>
void ConvBlock(float* const* op, int64_t out_cs, const float* const* xp, int64_t x_cs, int Wp, int C, const float* w,
               int64_t w_os, const float* bias) {
  __m256 acc[OCB][PB];
#pragma GCC unroll 4
  for (int o = 0; o < OCB; ++o) {
    const __m256 b0 = bias ? _mm256_set1_ps(bias[o]) : _mm256_setzero_ps();
#pragma GCC unroll 8
    for (int j = 0; j < PB; ++j) acc[o][j] = b0;
  }
  const float* x[PB];
#pragma GCC unroll 8
  for (int j = 0; j < PB; ++j) x[j] = xp[j];
  for (int c = 0; c < C; ++c) {
    const float* wc = w + c * 9;
#pragma GCC unroll 3
    for (int kh = 0; kh < 3; ++kh) {
#pragma GCC unroll 3
      for (int kw = 0; kw < 3; ++kw) {
        __m256 wv[OCB];
#pragma GCC unroll 4
        for (int o = 0; o < OCB; ++o) wv[o] = _mm256_broadcast_ss(wc + o * w_os + kh * 3 + kw);
#pragma GCC unroll 8
        for (int j = 0; j < PB; ++j) {
          __m256 v = _mm256_loadu_ps(x[j] + kh * Wp + kw);
          KeepInRegister(v);
#pragma GCC unroll 4
          for (int o = 0; o < OCB; ++o) acc[o][j] = _mm256_fmadd_ps(wv[o], v, acc[o][j]);
        }
      }
    }
#pragma GCC unroll 8
    for (int j = 0; j < PB; ++j) x[j] += x_cs;
  }
#pragma GCC unroll 4
  for (int o = 0; o < OCB; ++o)
#pragma GCC unroll 8
    for (int j = 0; j < PB; ++j) _mm256_storeu_ps(op[j] + o * out_cs, acc[o][j]);
}

using BlockFn = void (*)(float* const*, int64_t, const float* const*, int64_t, int, int, const float*, int64_t,
                         const float*);
constexpr int kOcBlock = 2, kPixBlock = 6;
constexpr BlockFn kBlocks[kOcBlock][kPixBlock] = {
    {ConvBlock<1, 1>, ConvBlock<1, 2>, ConvBlock<1, 3>, ConvBlock<1, 4>, ConvBlock<1, 5>, ConvBlock<1, 6>},
    {ConvBlock<2, 1>, ConvBlock<2, 2>, ConvBlock<2, 3>, ConvBlock<2, 4>, ConvBlock<2, 5>, ConvBlock<2, 6>},
};

// out (OC, OH, OW) = conv3x3(x (C, OH+2, OW+2) already padded) with w (OC, C, 3, 3) and bias.
void ConvPadded(float* out, int OC, int OH, int OW, const float* x, int C, const float* w, const float* bias) {
  const int Wp = OW + 2;
  const int64_t out_cs = static_cast<int64_t>(OH) * OW, x_cs = static_cast<int64_t>(OH + 2) * Wp;
  const int P = static_cast<int>(out_cs / 8);
  for (int oc0 = 0; oc0 < OC; oc0 += kOcBlock) {
    const int ocb = std::min(kOcBlock, OC - oc0);
    // Pixel blocks of near-equal size (8 vectors: 4+4, not 6+2, so every block has enough
    // independent accumulators to hide the FMA latency).
    const int nblocks = (P + kPixBlock - 1) / kPixBlock;
    for (int b = 0, p0 = 0, pb = 0; b < nblocks; ++b, p0 += pb) {
      pb = P / nblocks + (b < P % nblocks ? 1 : 0);
      float* op[kPixBlock];
      const float* xp[kPixBlock];
      for (int j = 0; j < pb; ++j) {
        const int pix = (p0 + j) * 8, oh = pix / OW, ow = pix % OW;
        op[j] = out + static_cast<int64_t>(oc0) * out_cs + pix;
        xp[j] = x + static_cast<int64_t>(oh) * Wp + ow;
      }
      kBlocks[ocb - 1][pb - 1](op, out_cs, xp, x_cs, Wp, C, w + static_cast<int64_t>(oc0) * C * 9,
                               static_cast<int64_t>(C) * 9, bias ? bias + oc0 : nullptr);
    }
  }
}

// dw[o][c][kh][kw] += sum_pix d[o][pix] * x[c][pix' + kh*Wp + kw] for OCB output channels and one
// input channel; d has channel stride d_cs, dw has output-channel stride dw_os and tap stride dw_ts. Per pixel vector the
// three shifted inputs stay in registers and each output gradient vector is loaded once:
// 3*OCB accumulators + 3 + 1 <= 13 live registers.
template <int OCB>
void WeightGradBlock(float* dw, int64_t dw_os, int64_t dw_ts, const float* d, int64_t d_cs, const float* xc, int Wp,
                     int OH, int OW) {
  for (int kh = 0; kh < 3; ++kh) {
    __m256 acc[OCB][3];
#pragma GCC unroll 4
    for (int o = 0; o < OCB; ++o)
#pragma GCC unroll 3
      for (int kw = 0; kw < 3; ++kw) acc[o][kw] = _mm256_setzero_ps();
    for (int oh = 0; oh < OH; ++oh) {
      const float* xr = xc + static_cast<int64_t>(oh + kh) * Wp;
      const float* dr = d + static_cast<int64_t>(oh) * OW;
      for (int ow = 0; ow < OW; ow += 8) {
        __m256 x0 = _mm256_loadu_ps(xr + ow), x1 = _mm256_loadu_ps(xr + ow + 1), x2 = _mm256_loadu_ps(xr + ow + 2);
        KeepInRegister(x0);
        KeepInRegister(x1);
        KeepInRegister(x2);
#pragma GCC unroll 4
        for (int o = 0; o < OCB; ++o) {
          const __m256 dv = _mm256_loadu_ps(dr + o * d_cs + ow);
          acc[o][0] = _mm256_fmadd_ps(dv, x0, acc[o][0]);
          acc[o][1] = _mm256_fmadd_ps(dv, x1, acc[o][1]);
          acc[o][2] = _mm256_fmadd_ps(dv, x2, acc[o][2]);
        }
      }
    }
#pragma GCC unroll 4
    for (int o = 0; o < OCB; ++o)
#pragma GCC unroll 3
      for (int kw = 0; kw < 3; ++kw) dw[o * dw_os + (kh * 3 + kw) * dw_ts] += HSum(acc[o][kw]);
  }
}

using GradFn = void (*)(float*, int64_t, int64_t, const float*, int64_t, const float*, int, int, int);
constexpr GradFn kGradBlocks[3] = {WeightGradBlock<1>, WeightGradBlock<2>, WeightGradBlock<3>};

// Output-channel block for WeightGradBlock: threes, ending 2+2 rather than 3+1.
int GradOcBlock(int remaining) { return remaining == 4 ? 2 : std::min(3, remaining); }

// The weight gradient vectorised over output channels instead of pixels: with the output gradient
// transposed to dT (pixels, OC), for 8*OV output channels and T taps (c, kh, kw),
//   g[o][t] = sum_pix dT[pix][o] * x[pix' + toff[t]]
// is one broadcast per tap and one FMA per (vector, tap): no horizontal sums, no unaligned vector
// loads. OV*T accumulators + OV + 1 <= 15 registers. Adds into dwT laid out (taps, OC): g[o][t] goes
// to dwT[t * OC + o].
template <int OV, int T>
void WeightGradVecBlock(float* dwT, const float* dT, int OC, const float* x, const int64_t* toff, int Wp, int OH,
                        int OW) {
  __m256 acc[OV][T];
  int64_t off[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    off[t] = toff[t];
#pragma GCC unroll 2
    for (int v = 0; v < OV; ++v) acc[v][t] = _mm256_setzero_ps();
  }
  for (int oh = 0; oh < OH; ++oh) {
    const float* xr = x + static_cast<int64_t>(oh) * Wp;
    const float* dr = dT + static_cast<int64_t>(oh) * OW * OC;
    for (int ow = 0; ow < OW; ++ow) {
      __m256 dv[OV];
#pragma GCC unroll 2
      for (int v = 0; v < OV; ++v) {
        dv[v] = _mm256_loadu_ps(dr + static_cast<int64_t>(ow) * OC + 8 * v);
        KeepInRegister(dv[v]);
      }
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const __m256 xs = _mm256_broadcast_ss(xr + ow + off[t]);
#pragma GCC unroll 2
        for (int v = 0; v < OV; ++v) acc[v][t] = _mm256_fmadd_ps(dv[v], xs, acc[v][t]);
      }
    }
  }
#pragma GCC unroll 2
  for (int v = 0; v < OV; ++v)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      float* p = dwT + static_cast<int64_t>(t) * OC + 8 * v;
      _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), acc[v][t]));
    }
}

using VecGradFn = void (*)(float*, const float*, int, const float*, const int64_t*, int, int, int);
constexpr int kTapBlock = 6;
constexpr VecGradFn kVecGradBlocks[2][kTapBlock] = {
    {WeightGradVecBlock<1, 1>, WeightGradVecBlock<1, 2>, WeightGradVecBlock<1, 3>, WeightGradVecBlock<1, 4>,
     WeightGradVecBlock<1, 5>, WeightGradVecBlock<1, 6>},
    {WeightGradVecBlock<2, 1>, WeightGradVecBlock<2, 2>, WeightGradVecBlock<2, 3>, WeightGradVecBlock<2, 4>,
     WeightGradVecBlock<2, 5>, WeightGradVecBlock<2, 6>},
};

// dwT (C*9, OC) += weight gradient of one image, transposed: d (OC, OH, OW) is its output
// gradient, xpad its padded input (C, OH+2, OW+2); dT is scratch of OC*OH*OW floats.
void WeightGrad(float* dwT, const float* d, const float* xpad, int C, int OC, int OH, int OW, float* dT) {
  const int Wp = OW + 2;
  const int64_t P = static_cast<int64_t>(OH) * OW, x_cs = static_cast<int64_t>(OH + 2) * Wp, taps = 9LL * C;
  const int vec_oc = OC / 8 * 8;
  if (vec_oc > 0) {
    for (int o0 = 0; o0 < vec_oc; o0 += 8)
      for (int64_t p0 = 0; p0 < P; p0 += 8) Transpose8x8(dT + p0 * OC + o0, OC, d + o0 * P + p0, P);
    int64_t toff[kTapBlock];
    for (int o0 = 0, ov = 0; o0 < vec_oc; o0 += 8 * ov) {
      ov = vec_oc - o0 >= 16 ? 2 : 1;
      for (int64_t t0 = 0; t0 < taps; t0 += kTapBlock) {
        const int nt = static_cast<int>(std::min<int64_t>(kTapBlock, taps - t0));
        for (int t = 0; t < nt; ++t) {
          const int64_t tap = t0 + t, k = tap % 9;
          toff[t] = (tap / 9) * x_cs + (k / 3) * Wp + k % 3;
        }
        kVecGradBlocks[ov - 1][nt - 1](dwT + t0 * OC + o0, dT + o0, OC, xpad, toff, Wp, OH, OW);
      }
    }
  }
  // Output channels beyond the last multiple of 8: the pixel-vectorised kernel.
  for (int oc0 = vec_oc, ocb = 0; oc0 < OC; oc0 += ocb) {
    ocb = GradOcBlock(OC - oc0);
    for (int c = 0; c < C; ++c)
      kGradBlocks[ocb - 1](dwT + 9LL * c * OC + oc0, 1, OC, d + oc0 * P, P, xpad + c * x_cs, Wp, OH, OW);
  }
}

}  // namespace

void DirectConvForward(float* out, const float* in, const float* w, const float* b, const ConvShape& s,
                       float* scratch) {
  const int OH = s.OH(), OW = s.OW();
  const int64_t in_sz = static_cast<int64_t>(s.C) * s.H * s.W, out_sz = static_cast<int64_t>(s.OC) * OH * OW;
  const ThreadLayout lay = Layout(s);
  float* per_base = scratch + Round16(static_cast<int64_t>(s.OC) * s.C * 9);
#pragma omp parallel
  {
    float* xpad = per_base + omp_get_thread_num() * lay.size + lay.xpad;
#pragma omp for schedule(static)
    for (int n = 0; n < s.N; ++n) {
      // A padded image with pad p has OH + 2 rows when the kernel is 3x3, stride 1.
      PadImage(xpad, in + n * in_sz, s.C, s.H, s.W, s.pad);
      ConvPadded(out + n * out_sz, s.OC, OH, OW, xpad, s.C, w, b);
    }
  }
}

void DirectConvBackward(float* din, float* dw, float* db, const float* dout, const float* in, const float* w,
                        const ConvShape& s, float* scratch) {
  const int OH = s.OH(), OW = s.OW(), q = 2 - s.pad;
  const int64_t in_sz = static_cast<int64_t>(s.C) * s.H * s.W, out_cs = static_cast<int64_t>(OH) * OW,
                out_sz = s.OC * out_cs, wsz = static_cast<int64_t>(s.OC) * s.C * 9;
  const ThreadLayout lay = Layout(s);
  // The input gradient is a 3x3 convolution of the output gradient (padded by 2 - pad) with the
  // weights transposed to (C, OC) and flipped in both spatial directions.
  float* wt = scratch;
  for (int oc = 0; oc < s.OC; ++oc)
    for (int c = 0; c < s.C; ++c)
      for (int k = 0; k < 9; ++k) wt[(static_cast<int64_t>(c) * s.OC + oc) * 9 + k] = w[(oc * s.C + c) * 9 + 8 - k];
  float* per_base = scratch + Round16(wsz);
  int nthreads = 1;
#pragma omp parallel
  {
    const int tid = omp_get_thread_num();
#pragma omp single
    nthreads = omp_get_num_threads();
    float* mine = per_base + tid * lay.size;
    float *xpad = mine + lay.xpad, *dpad = mine + lay.dpad, *dwp = mine + lay.dw, *dbp = mine + lay.db,
          *dT = mine + lay.dT;
    std::fill(dwp, dwp + wsz, 0.f);
    std::fill(dbp, dbp + s.OC, 0.f);
#pragma omp for schedule(static)
    for (int n = 0; n < s.N; ++n) {
      const float* d = dout + n * out_sz;
      PadImage(xpad, in + n * in_sz, s.C, s.H, s.W, s.pad);
      WeightGrad(dwp, d, xpad, s.C, s.OC, OH, OW, dT);
      if (db) {
        for (int oc = 0; oc < s.OC; ++oc) {
          float acc = 0.f;
#pragma omp simd reduction(+ : acc)
          for (int64_t i = 0; i < out_cs; ++i) acc += d[oc * out_cs + i];
          dbp[oc] += acc;
        }
      }
      if (din) {
        PadImage(dpad, d, s.OC, OH, OW, q);
        ConvPadded(din + n * in_sz, s.C, s.H, s.W, dpad, s.OC, wt, nullptr);
      }
    }
  }
  // Partial sums (transposed) reduced in thread order (deterministic for a given thread count).
  for (int t = 0; t < nthreads; ++t) {
    const float* dwp = per_base + t * lay.size + lay.dw;  // (C*9, OC)
    const float* dbp = per_base + t * lay.size + lay.db;
    for (int oc = 0; oc < s.OC; ++oc)
      for (int64_t k = 0; k < 9LL * s.C; ++k) dw[oc * 9LL * s.C + k] += dwp[k * s.OC + oc];
    if (db)
      for (int oc = 0; oc < s.OC; ++oc) db[oc] += dbp[oc];
  }
}

#else  // no AVX2+FMA: DirectConvSupported() is false and these are never called.

void DirectConvForward(float*, const float*, const float*, const float*, const ConvShape&, float*) {}
void DirectConvBackward(float*, float*, float*, const float*, const float*, const float*, const ConvShape&, float*) {}

#endif

}  // namespace ringtrain::cpu
