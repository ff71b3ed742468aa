// Every CUDA kernel of core/cuda/ops.h against its CPU reference (core/cpu/ops.h, the optimizer in
// models/optim) on random inputs, forward and backward, fp32: the largest difference may be at most
// 1e-5 of the reference's largest magnitude. Skips, with the reason, where no GPU is present.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/cpu/ops.h"
#include "core/cuda/ops.h"
#include "core/rng.h"
#include "models/optim.h"
#include "tests/gpu/gpu_test_util.h"

namespace ringtrain {
namespace {

using testing::Dev;
using testing::ExpectClose;
using testing::Random;

constexpr int B = 2, T = 16, C = 32, NH = 4, V = 50, N = B * T, OC = 48;

std::vector<int32_t> Tokens(int vocab, uint64_t key) {
  Rng r(key);
  std::vector<int32_t> t(N);
  for (auto& x : t) x = static_cast<int32_t>(r.Next() % static_cast<uint64_t>(vocab));
  return t;
}

TEST(GpuOps, Embedding) {
  SKIP_WITHOUT_GPU();
  auto wte = Random(V * C, 1), wpe = Random(T * C, 2), dout = Random(N * C, 3);
  auto tok = Tokens(V, 4);
  std::vector<float> out(N * C), dwte = Random(V * C, 5), dwpe = Random(T * C, 6);
  Dev<float> g_out(N * C), g_wte(wte), g_wpe(wpe), g_dout(dout), g_dwte(dwte), g_dwpe(dwpe);
  Dev<int32_t> g_tok(tok);
  cpu::EmbeddingForward(out.data(), tok.data(), wte.data(), wpe.data(), B, T, C);
  ASSERT_TRUE(gpu::EmbeddingForward(g_out.p, g_tok.p, g_wte.p, g_wpe.p, B, T, C, nullptr).ok());
  ExpectClose(g_out.Host(), out, "embedding forward");
  cpu::EmbeddingBackward(dwte.data(), dwpe.data(), dout.data(), tok.data(), B, T, C);
  ASSERT_TRUE(gpu::EmbeddingBackward(g_dwte.p, g_dwpe.p, g_dout.p, g_tok.p, B, T, C, nullptr).ok());
  ExpectClose(g_dwte.Host(), dwte, "dwte (accumulated)");
  ExpectClose(g_dwpe.Host(), dwpe, "dwpe (accumulated)");
}

TEST(GpuOps, LayerNorm) {
  SKIP_WITHOUT_GPU();
  for (int c : {C, 768, 1500}) {  // one warp, a full block, several passes per thread
    auto in = Random(N * c, 10, 3.f), w = Random(c, 11), b = Random(c, 12), dout = Random(N * c, 13);
    std::vector<float> out(N * c), mean(N), rstd(N), din = Random(N * c, 14), dw = Random(c, 15), db = Random(c, 16);
    Dev<float> g_in(in), g_w(w), g_b(b), g_dout(dout), g_out(N * c), g_mean(N), g_rstd(N), g_din(din), g_dw(dw), g_db(db);
    cpu::LayerNormForward(out.data(), mean.data(), rstd.data(), in.data(), w.data(), b.data(), N, c);
    ASSERT_TRUE(gpu::LayerNormForward(g_out.p, g_mean.p, g_rstd.p, g_in.p, g_w.p, g_b.p, N, c, nullptr).ok());
    ExpectClose(g_out.Host(), out, "layernorm out");
    ExpectClose(g_mean.Host(), mean, "layernorm mean");
    ExpectClose(g_rstd.Host(), rstd, "layernorm rstd");
    cpu::LayerNormBackward(din.data(), dw.data(), db.data(), dout.data(), in.data(), w.data(), mean.data(), rstd.data(),
                           N, c);
    ASSERT_TRUE(
        gpu::LayerNormBackward(g_din.p, g_dw.p, g_db.p, g_dout.p, g_in.p, g_w.p, g_mean.p, g_rstd.p, N, c, nullptr).ok());
    ExpectClose(g_din.Host(), din, "layernorm din");
    ExpectClose(g_dw.Host(), dw, "layernorm dw");
    ExpectClose(g_db.Host(), db, "layernorm db");
  }
}

TEST(GpuOps, Linear) {
  SKIP_WITHOUT_GPU();
  auto blas = gpu::Blas::Create(nullptr);
  ASSERT_TRUE(blas.ok()) << blas.status().message();
  auto in = Random(N * C, 20), w = Random(OC * C, 21), b = Random(OC, 22), dout = Random(N * OC, 23);
  std::vector<float> out(N * OC), din = Random(N * C, 24), dw = Random(OC * C, 25), db = Random(OC, 26);
  Dev<float> g_in(in), g_w(w), g_b(b), g_dout(dout), g_out(N * OC), g_din(din), g_dw(dw), g_db(db);
  cpu::LinearForward(out.data(), in.data(), w.data(), b.data(), N, C, OC);
  ASSERT_TRUE(gpu::LinearForward(*blas, g_out.p, g_in.p, g_w.p, g_b.p, N, C, OC).ok());
  ExpectClose(g_out.Host(), out, "linear out");
  for (bool acc : {false, true}) {
    cpu::LinearBackward(din.data(), dw.data(), db.data(), dout.data(), in.data(), w.data(), N, C, OC, acc);
    ASSERT_TRUE(gpu::LinearBackward(*blas, g_din.p, g_dw.p, g_db.p, g_dout.p, g_in.p, g_w.p, N, C, OC, acc).ok());
    ExpectClose(g_din.Host(), din, acc ? "linear din (accumulated)" : "linear din");
    ExpectClose(g_dw.Host(), dw, "linear dw");
    ExpectClose(g_db.Host(), db, "linear db");
  }
}

// bf16 mixed precision: the same Linear with inputs rounded to bf16 (ToBf16) and fp32 results,
// within 1e-2 of the fp32 CPU reference's largest magnitude, and visibly not fp32 (a difference
// of at least 1e-6: the products really use the rounded inputs). Larger than the fp32 case so
// the sums run over hundreds of products.
TEST(GpuOps, LinearBf16) {
  SKIP_WITHOUT_GPU();
  auto blas = gpu::Blas::Create(nullptr, /*pedantic=*/false);
  ASSERT_TRUE(blas.ok()) << blas.status().message();
  const int n = 64, c = 256, oc = 384;
  auto in = Random(static_cast<size_t>(n) * c, 60), w = Random(static_cast<size_t>(oc) * c, 61), b = Random(oc, 62),
       dout = Random(static_cast<size_t>(n) * oc, 63);
  std::vector<float> out(static_cast<size_t>(n) * oc), din(in.size()), dw(w.size(), 0.f), db(oc, 0.f);
  Dev<float> g_in(in), g_w(w), g_b(b), g_dout(dout), g_out(out.size()), g_din(din.size()), g_dw(dw), g_db(db);
  Dev<gpu::bf16> in16(in.size()), w16(w.size()), dout16(dout.size());
  ASSERT_TRUE(gpu::ToBf16(in16.p, g_in.p, static_cast<int64_t>(in.size()), nullptr).ok());
  ASSERT_TRUE(gpu::ToBf16(w16.p, g_w.p, static_cast<int64_t>(w.size()), nullptr).ok());
  ASSERT_TRUE(gpu::ToBf16(dout16.p, g_dout.p, static_cast<int64_t>(dout.size()), nullptr).ok());
  cpu::LinearForward(out.data(), in.data(), w.data(), b.data(), n, c, oc);
  ASSERT_TRUE(gpu::LinearForwardBf16(*blas, g_out.p, in16.p, w16.p, g_b.p, n, c, oc).ok());
  cpu::LinearBackward(din.data(), dw.data(), db.data(), dout.data(), in.data(), w.data(), n, c, oc, false);
  ASSERT_TRUE(gpu::LinearBackwardBf16(*blas, g_din.p, g_dw.p, g_db.p, g_dout.p, dout16.p, in16.p, w16.p, n, c, oc).ok());
  auto largest_diff = [](const std::vector<float>& a, const std::vector<float>& ref) {
    double d = 0;
    for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(static_cast<double>(a[i]) - ref[i]));
    return d;
  };
  struct Out {
    const char* what;
    std::vector<float> got;
    const std::vector<float>& want;
  };
  for (const Out& o : {Out{"bf16 linear out", g_out.Host(), out}, Out{"bf16 linear din", g_din.Host(), din},
                       Out{"bf16 linear dw", g_dw.Host(), dw}}) {
    ExpectClose(o.got, o.want, o.what, 1e-2);
    EXPECT_GE(largest_diff(o.got, o.want), 1e-6) << o.what << " equals fp32: were the inputs rounded?";
  }
  ExpectClose(g_db.Host(), db, "bf16 linear db (fp32 column sums)", 1e-5);
}

TEST(GpuOps, Attention) {
  SKIP_WITHOUT_GPU();
  auto blas = gpu::Blas::Create(nullptr);
  ASSERT_TRUE(blas.ok()) << blas.status().message();
  const int64_t TT = static_cast<int64_t>(B) * NH * T * T;
  // Without dropout, then with dropout on the probabilities (the GPU draws its own mask, which
  // must be the CPU's bit for bit).
  for (const float p : {0.f, 0.3f}) {
    SCOPED_TRACE("dropout " + std::to_string(p));
    auto qkv = Random(N * 3 * C, 30, 2.f), dout = Random(N * C, 31);
    std::vector<float> out(N * C), att(TT), att_drop(TT), dqkv(N * 3 * C), scratch(cpu::AttentionScratchSize(T));
    std::vector<uint8_t> keep(static_cast<size_t>(TT));
    Dev<float> g_qkv(qkv), g_dout(dout), g_out(N * C), g_att(TT), g_att_drop(TT), g_dqkv(N * 3 * C), g_scratch(TT);
    Dev<uint8_t> g_keep(static_cast<size_t>(TT));
    const bool drop = p > 0;
    if (drop) {
      cpu::DropoutMaskRows(keep.data(), p, static_cast<int64_t>(B) * NH, static_cast<int64_t>(T) * T, 5 * NH, 11, 77);
      ASSERT_TRUE(gpu::DropoutMaskRows(g_keep.p, p, static_cast<int64_t>(B) * NH, static_cast<int64_t>(T) * T, 5 * NH,
                                       11, 77, nullptr)
                      .ok());
      ASSERT_TRUE(g_keep.Host() == keep) << "the GPU's attention dropout mask is not the CPU's";
    }
    cpu::AttentionForward(out.data(), att.data(), att_drop.data(), drop ? keep.data() : nullptr, p, qkv.data(), B, T,
                          C, NH);
    ASSERT_TRUE(gpu::AttentionForward(*blas, g_out.p, g_att.p, g_att_drop.p, drop ? g_keep.p : nullptr, p, g_qkv.p, B,
                                      T, C, NH)
                    .ok());
    ExpectClose(g_att.Host(), att, "attention probabilities");
    if (drop) ExpectClose(g_att_drop.Host(), att_drop, "attention probabilities after dropout");
    ExpectClose(g_out.Host(), out, "attention out");
    cpu::AttentionBackward(dqkv.data(), scratch.data(), dout.data(), qkv.data(), att.data(), att_drop.data(),
                           drop ? keep.data() : nullptr, p, B, T, C, NH);
    ASSERT_TRUE(gpu::AttentionBackward(*blas, g_dqkv.p, g_scratch.p, g_dout.p, g_qkv.p, g_att.p, g_att_drop.p,
                                       drop ? g_keep.p : nullptr, p, B, T, C, NH)
                    .ok());
    ExpectClose(g_dqkv.Host(), dqkv, "attention dqkv");
  }
}

// The materialised attention on the mixed-precision handle (bf16 mode): its products run on TF32
// tensor cores, so the results are within 1e-2 of the fp32 CPU reference, not 1e-5. Heads of 64
// (GPT-2's) and enough rows that the products are not trivially exact.
TEST(GpuOps, AttentionTf32) {
  SKIP_WITHOUT_GPU();
  auto blas = gpu::Blas::Create(nullptr, /*pedantic=*/false);
  ASSERT_TRUE(blas.ok()) << blas.status().message();
  const int b = 2, t = 96, nh = 2, c = 128, n = b * t;
  const int64_t tt = static_cast<int64_t>(b) * nh * t * t;
  auto qkv = Random(static_cast<size_t>(n) * 3 * c, 80, 2.f), dout = Random(static_cast<size_t>(n) * c, 81);
  std::vector<float> out(static_cast<size_t>(n) * c), att(static_cast<size_t>(tt)), unused(1), dqkv(qkv.size()),
      scratch(cpu::AttentionScratchSize(t));
  Dev<float> g_qkv(qkv), g_dout(dout), g_out(out.size()), g_att(att.size()), g_dqkv(qkv.size()), g_scratch(att.size());
  cpu::AttentionForward(out.data(), att.data(), unused.data(), nullptr, 0.f, qkv.data(), b, t, c, nh);
  ASSERT_TRUE(gpu::AttentionForward(*blas, g_out.p, g_att.p, nullptr, nullptr, 0.f, g_qkv.p, b, t, c, nh).ok());
  ExpectClose(g_att.Host(), att, "TF32 attention probabilities", 1e-2);
  ExpectClose(g_out.Host(), out, "TF32 attention out", 1e-2);
  cpu::AttentionBackward(dqkv.data(), scratch.data(), dout.data(), qkv.data(), att.data(), unused.data(), nullptr, 0.f,
                         b, t, c, nh);
  ASSERT_TRUE(gpu::AttentionBackward(*blas, g_dqkv.p, g_scratch.p, g_dout.p, g_qkv.p, g_att.p, nullptr, nullptr, 0.f, b,
                                     t, c, nh)
                  .ok());
  ExpectClose(g_dqkv.Host(), dqkv, "TF32 attention dqkv", 1e-2);
}

// Dropout masks drawn on the GPU are the CPU's, byte for byte, for rows shorter and longer than
// the 4096-element blocks the streams are cut into, from a row offset (a data-parallel rank's
// slice of the batch); applying a mask gives the CPU's values exactly.
TEST(GpuOps, DropoutMaskIsTheCpuMask) {
  SKIP_WITHOUT_GPU();
  struct Case {
    int64_t rows, row_len, row_begin;
    float p;
  };
  for (const Case& c : {Case{3, 100, 0, 0.1f}, Case{4, 4096, 2, 0.5f}, Case{2, 10000, 7, 0.2f}, Case{5, 1, 1, 0.9f}}) {
    SCOPED_TRACE(std::to_string(c.rows) + " rows of " + std::to_string(c.row_len) + " from row " +
                 std::to_string(c.row_begin) + ", p " + std::to_string(c.p));
    const size_t n = static_cast<size_t>(c.rows * c.row_len);
    std::vector<uint8_t> keep(n);
    cpu::DropoutMaskRows(keep.data(), c.p, c.rows, c.row_len, c.row_begin, 1337, 4096 * 3 + 2);
    Dev<uint8_t> g_keep(n);
    ASSERT_TRUE(gpu::DropoutMaskRows(g_keep.p, c.p, c.rows, c.row_len, c.row_begin, 1337, 4096 * 3 + 2, nullptr).ok());
    const std::vector<uint8_t> got = g_keep.Host();
    ASSERT_TRUE(got == keep);
    size_t kept = 0;
    for (uint8_t k : got) kept += k;
    if (n >= 4096) {  // the mask is not degenerate
      EXPECT_GT(kept, 0u);
      EXPECT_LT(kept, n);
    }
    const std::vector<float> in = Random(n, 50);
    std::vector<float> out(n);
    cpu::DropoutApply(out.data(), in.data(), keep.data(), c.p, static_cast<int64_t>(n));
    Dev<float> g_in(in), g_out(n);
    ASSERT_TRUE(gpu::DropoutApply(g_out.p, g_in.p, g_keep.p, c.p, static_cast<int64_t>(n), nullptr).ok());
    EXPECT_TRUE(g_out.Host() == out) << "dropout applied on the GPU differs from the CPU's";
  }
}

// Flash attention against the CPU reference at every supported head size, with T not a multiple
// of the kernels' tiles (so partial tiles and the causal edge inside a tile are covered), and
// without ever storing (B,NH,T,T).
// Random q|k|v and output gradient for one attention shape, with the CPU reference's output and
// dqkv (no dropout), for the fused kernels' tests.
struct AttentionCase {
  int B, T, C, NH;
  std::vector<float> qkv, dout, out, dqkv;
  AttentionCase(int b, int t, int c, int nh, uint64_t key) : B(b), T(t), C(c), NH(nh) {
    const size_t n = static_cast<size_t>(B) * T;
    qkv = Random(n * 3 * C, key, 2.f);
    dout = Random(n * C, key + 1);
    out.resize(n * C);
    dqkv.resize(qkv.size());
    std::vector<float> att(static_cast<size_t>(B) * NH * T * T), scratch(cpu::AttentionScratchSize(T));
    cpu::AttentionForward(out.data(), att.data(), static_cast<float*>(nullptr), nullptr, 0.f, qkv.data(), B, T, C, NH);
    cpu::AttentionBackward(dqkv.data(), scratch.data(), dout.data(), qkv.data(), att.data(),
                           static_cast<float*>(nullptr), nullptr, 0.f, B, T, C, NH);
  }
  size_t rows() const { return static_cast<size_t>(B) * NH * T; }
  std::string Name() const {
    return "B=" + std::to_string(B) + " T=" + std::to_string(T) + " head size " + std::to_string(C / NH);
  }
};

TEST(GpuOps, FlashAttention) {
  SKIP_WITHOUT_GPU();
  struct Shape {
    int B, T, C, NH;
  };
  for (const Shape sh : {Shape{2, 16, 64, 4}, Shape{2, 77, 64, 2}, Shape{1, 100, 128, 2}, Shape{2, 70, 128, 1}}) {
    const AttentionCase a(sh.B, sh.T, sh.C, sh.NH, 32);
    SCOPED_TRACE(a.Name());
    ASSERT_TRUE(gpu::FlashAttentionSupports(sh.C / sh.NH));
    Dev<float> g_qkv(a.qkv), g_dout(a.dout), g_out(a.out.size()), g_lse(a.rows()), g_delta(a.rows()),
        g_dqkv(a.qkv.size());
    ASSERT_TRUE(gpu::FlashAttentionForward(g_out.p, g_lse.p, g_qkv.p, sh.B, sh.T, sh.C, sh.NH, nullptr).ok());
    ExpectClose(g_out.Host(), a.out, "flash attention out");
    ASSERT_TRUE(gpu::FlashAttentionBackward(g_dqkv.p, g_delta.p, g_dout.p, g_qkv.p, g_out.p, g_lse.p, sh.B, sh.T,
                                            sh.C, sh.NH, nullptr)
                    .ok());
    ExpectClose(g_dqkv.Host(), a.dqkv, "flash attention dqkv");
  }
  EXPECT_FALSE(gpu::FlashAttentionSupports(24));
}

// The fused attention on tensor cores (bf16 mode): bf16 products, fp32 softmax and accumulation.
// Against the fp32 CPU reference within 1e-2 (out, and dQ, dK, dV), at head sizes 32, 64 and 128,
// sequence lengths inside one 64-row tile, on a tile edge and across several (with ragged ends),
// and it is not the fp32 kernel (the outputs differ from it by more than fp32 rounding). Twice
// gives the same bits.
TEST(GpuOps, FlashAttentionTensorCores) {
  SKIP_WITHOUT_GPU();
  struct Shape {
    int B, T, C, NH;
  };
  for (const Shape sh : {Shape{2, 16, 64, 2}, Shape{2, 64, 128, 2}, Shape{1, 150, 128, 1}, Shape{2, 77, 256, 2},
                         Shape{1, 200, 192, 3}}) {
    const AttentionCase a(sh.B, sh.T, sh.C, sh.NH, 34);
    SCOPED_TRACE(a.Name());
    ASSERT_TRUE(gpu::FlashAttentionTcSupports(sh.C / sh.NH));
    const std::vector<float>& out = a.out;
    const std::vector<float>& dqkv = a.dqkv;
    const size_t rows = a.rows();
    Dev<float> g_qkv(a.qkv), g_dout(a.dout), g_out(out.size()), g_lse(rows), g_delta(rows), g_dqkv(a.qkv.size()),
        g_out32(out.size()), g_lse32(rows), g_dqkv2(a.qkv.size());
    ASSERT_TRUE(gpu::FlashAttentionForwardTc(g_out.p, g_lse.p, g_qkv.p, sh.B, sh.T, sh.C, sh.NH, nullptr).ok());
    const std::vector<float> got = g_out.Host();
    ExpectClose(got, out, "tensor-core flash attention out", 1e-2);
    ASSERT_TRUE(gpu::FlashAttentionForward(g_out32.p, g_lse32.p, g_qkv.p, sh.B, sh.T, sh.C, sh.NH, nullptr).ok());
    ExpectClose(g_lse.Host(), g_lse32.Host(), "tensor-core flash attention log-sum-exp", 1e-2);
    {
      const std::vector<float> f32 = g_out32.Host();
      double diff = 0, mag = 1e-30;
      for (size_t e = 0; e < got.size(); ++e) {
        diff = std::max(diff, std::fabs(static_cast<double>(got[e]) - f32[e]));
        mag = std::max(mag, std::fabs(static_cast<double>(f32[e])));
      }
      EXPECT_GE(diff / mag, 1e-5) << "the tensor-core kernel's output is within fp32 rounding of the fp32 kernel's";
    }
    ASSERT_TRUE(gpu::FlashAttentionBackwardTc(g_dqkv.p, g_delta.p, g_dout.p, g_qkv.p, g_out.p, g_lse.p, sh.B, sh.T,
                                              sh.C, sh.NH, nullptr)
                    .ok());
    const std::vector<float> grads = g_dqkv.Host();
    ExpectClose(grads, dqkv, "tensor-core flash attention dqkv", 1e-2);
    ASSERT_TRUE(gpu::FlashAttentionBackwardTc(g_dqkv2.p, g_delta.p, g_dout.p, g_qkv.p, g_out.p, g_lse.p, sh.B, sh.T,
                                              sh.C, sh.NH, nullptr)
                    .ok());
    EXPECT_TRUE(g_dqkv2.Host() == grads) << "not repeatable";
  }
  EXPECT_FALSE(gpu::FlashAttentionTcSupports(16));
  EXPECT_FALSE(gpu::FlashAttentionTcSupports(24));
}

TEST(GpuOps, GeluResidualSoftmaxCrossEntropy) {
  SKIP_WITHOUT_GPU();
  const int64_t n = N * C;
  auto x = Random(n, 40, 4.f), y = Random(n, 41), dout = Random(n, 42);
  std::vector<float> out(n), din(n), sum(n);
  Dev<float> g_x(x), g_y(y), g_dout(dout), g_out(n), g_din(n), g_sum(n);
  cpu::GeluForward(out.data(), x.data(), n);
  cpu::GeluBackward(din.data(), dout.data(), x.data(), n);
  cpu::ResidualForward(sum.data(), x.data(), y.data(), n);
  ASSERT_TRUE(gpu::GeluForward(g_out.p, g_x.p, n, nullptr).ok());
  ASSERT_TRUE(gpu::GeluBackward(g_din.p, g_dout.p, g_x.p, n, nullptr).ok());
  ASSERT_TRUE(gpu::ResidualForward(g_sum.p, g_x.p, g_y.p, n, nullptr).ok());
  ExpectClose(g_out.Host(), out, "gelu forward");
  ExpectClose(g_din.Host(), din, "gelu backward");
  ExpectClose(g_sum.Host(), sum, "residual");

  for (int vocab : {V, 50304}) {  // a small vocabulary and GPT-2's padded one
    auto logits = Random(static_cast<size_t>(N) * vocab, 43, 5.f);
    auto tgt = Tokens(vocab, 44);
    tgt[3] = -1;  // ignored position
    std::vector<float> losses(N), dl(logits.size());
    Dev<float> g_logits(logits), g_losses(N), g_dl(logits.size());
    Dev<int32_t> g_tgt(tgt);
    cpu::SoftmaxCrossEntropy(losses.data(), dl.data(), logits.data(), tgt.data(), N, vocab, 1.f / N);
    ASSERT_TRUE(gpu::SoftmaxCrossEntropy(g_losses.p, g_dl.p, g_logits.p, g_tgt.p, N, vocab, 1.f / N, nullptr).ok());
    ExpectClose(g_losses.Host(), losses, "cross-entropy losses");
    ExpectClose(g_dl.Host(), dl, "cross-entropy dlogits");
    // In place (dlogits aliases logits), as the trainer calls it.
    ASSERT_TRUE(gpu::SoftmaxCrossEntropy(g_losses.p, g_logits.p, g_logits.p, g_tgt.p, N, vocab, 1.f / N, nullptr).ok());
    ExpectClose(g_logits.Host(), dl, "cross-entropy dlogits in place");
  }
}

// Host bf16 helpers: the value of a bf16, and a float rounded to the nearest bf16 (ties to even;
// finite inputs), as __float2bfloat16_rn rounds.
float FromBf16(gpu::bf16 h) {
  uint16_t bits;
  std::memcpy(&bits, &h, sizeof bits);
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
float RoundBf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  u += 0x7FFFu + ((u >> 16) & 1u);
  u &= 0xFFFF0000u;
  std::memcpy(&x, &u, sizeof x);
  return x;
}
std::vector<float> HostOf(const Dev<gpu::bf16>& d) {
  std::vector<float> v;
  for (gpu::bf16 h : d.Host()) v.push_back(FromBf16(h));
  return v;
}

// bf16 activations (GpuGpt's bf16 mode): LayerNorm with a bf16 output, GELU keeping its rounded
// pre-activation and a rounded output, and GELU backward from the rounded pre-activation. Outputs
// within 1e-2 of the fp32 CPU reference and visibly rounded; the rounded pre-activation is exact,
// and the backward equals the CPU's at the rounded inputs (1e-5).
TEST(GpuOps, Bf16Activations) {
  SKIP_WITHOUT_GPU();
  const int c = 768;
  auto in = Random(static_cast<size_t>(N) * c, 70, 3.f), w = Random(c, 71), b = Random(c, 72);
  std::vector<float> out(in.size()), mean(N), rstd(N);
  Dev<float> g_in(in), g_w(w), g_b(b), g_mean(N), g_rstd(N);
  Dev<gpu::bf16> g_out(in.size());
  cpu::LayerNormForward(out.data(), mean.data(), rstd.data(), in.data(), w.data(), b.data(), N, c);
  ASSERT_TRUE(gpu::LayerNormForwardBf16(g_out.p, g_mean.p, g_rstd.p, g_in.p, g_w.p, g_b.p, N, c, nullptr).ok());
  const std::vector<float> ln = HostOf(g_out);
  ExpectClose(ln, out, "bf16 layernorm out", 1e-2);
  EXPECT_FALSE(ln == out) << "the bf16 LayerNorm output equals fp32: not rounded?";
  ExpectClose(g_mean.Host(), mean, "bf16 layernorm mean (fp32)");
  ExpectClose(g_rstd.Host(), rstd, "bf16 layernorm rstd (fp32)");

  const int64_t n = N * C;
  auto x = Random(n, 73, 4.f), dout = Random(n, 74);
  std::vector<float> gelu(n), rounded(n), din(n);
  for (int64_t i = 0; i < n; ++i) rounded[i] = RoundBf16(x[i]);
  cpu::GeluForward(gelu.data(), x.data(), n);
  cpu::GeluBackward(din.data(), dout.data(), rounded.data(), n);
  Dev<float> g_x(x), g_dout(dout), g_din(n);
  Dev<gpu::bf16> g_pre(n), g_gelu(n);
  ASSERT_TRUE(gpu::GeluForwardBf16(g_pre.p, g_gelu.p, g_x.p, n, nullptr).ok());
  EXPECT_TRUE(HostOf(g_pre) == rounded) << "the kept pre-activation is not x rounded to nearest";
  ExpectClose(HostOf(g_gelu), gelu, "bf16 gelu out", 1e-2);
  ASSERT_TRUE(gpu::GeluBackwardBf16(g_din.p, g_dout.p, g_pre.p, n, nullptr).ok());
  ExpectClose(g_din.Host(), din, "gelu backward from the bf16 pre-activation");
}

TEST(GpuOps, AdamAndAdamWMatchTheCpuOptimizer) {
  SKIP_WITHOUT_GPU();
  const size_t n = 10007;
  for (OptimKind kind : {OptimKind::kAdam, OptimKind::kAdamW}) {
    OptimConfig oc;
    oc.kind = kind;
    oc.lr = 3e-3;
    oc.weight_decay = 0.1;
    auto p = Random(n, 50), g = Random(n, 51);
    OptimState st;
    st.Allocate(oc, n);
    std::fill(st.m.data(), st.m.data() + n, 0.f);
    std::fill(st.v.data(), st.v.data() + n, 0.f);
    Dev<float> gp(p), gg(g), gm(n), gv(n);
    for (int64_t t = 1; t <= 3; ++t) {
      OptimizerUpdate(oc, oc.lr, t, 0.5f, p.data(), g.data(), st, 0, n, {{0, n}});  // all decayed
      gpu::OptimArgs a;
      a.lr = oc.lr;
      a.beta1 = oc.beta1;
      a.beta2 = oc.beta2;
      a.eps = oc.eps;
      a.weight_decay = oc.weight_decay;
      a.grad_scale = 0.5f;
      a.t = t;
      a.decoupled = kind == OptimKind::kAdamW;
      ASSERT_TRUE(gpu::AdamUpdate(gp.p, gg.p, gm.p, gv.p, static_cast<int64_t>(n), a, nullptr).ok());
    }
    ExpectClose(gp.Host(), p, kind == OptimKind::kAdam ? "adam params" : "adamw params");
    ExpectClose(gm.Host(), std::vector<float>(st.m.data(), st.m.data() + n), "first moment");
    ExpectClose(gv.Host(), std::vector<float>(st.v.data(), st.v.data() + n), "second moment");
  }
}

// The device gradient norm (the trainer's clipping with the optimizer on the device) against the
// CPU's SumSquares, at lengths around its 8192-element blocks: equal to double rounding, and the
// same bits when run twice.
TEST(GpuOps, SumSquaresEqualsCpu) {
  SKIP_WITHOUT_GPU();
  for (size_t n : {size_t{0}, size_t{1}, size_t{8191}, size_t{8192}, size_t{8193}, size_t{1000003}}) {
    const std::vector<float> g = Random(n, 40 + n, 3.f);
    Dev<float> dg(g);
    Dev<double> scratch(static_cast<size_t>(gpu::SumSquaresScratch(static_cast<int64_t>(n))));
    ASSERT_TRUE(gpu::SumSquares(scratch.p, dg.p, static_cast<int64_t>(n), nullptr).ok());
    const double first = scratch.Host()[0];
    ASSERT_TRUE(gpu::SumSquares(scratch.p, dg.p, static_cast<int64_t>(n), nullptr).ok());
    const double second = scratch.Host()[0];
    const double want = SumSquares(g.data(), n);
    EXPECT_LE(std::fabs(first - want), 1e-12 * std::max(1.0, want)) << n << " elements";
    EXPECT_EQ(std::memcmp(&first, &second, sizeof first), 0) << n << " elements: not repeatable";
    if (n > 0) {
      EXPECT_GT(first, 0.0) << n << " elements";
    }
  }
}

}  // namespace
}  // namespace ringtrain
