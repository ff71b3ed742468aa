// Every CUDA kernel of core/cuda/conv_ops.h (the CNN layers) against its CPU reference
// (core/cpu/conv_ops.h) on random inputs, forward and backward, fp32: the largest difference at
// most 1e-5 of the reference's largest magnitude. Shapes cover padding, strides, 1x1 kernels and
// overlapping pooling windows. Skips, with the reason, where no GPU is present.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "core/cpu/conv_ops.h"
#include "core/cuda/conv_ops.h"
#include "tests/gpu/gpu_test_util.h"

namespace ringtrain {
namespace {

using testing::Dev;
using testing::ExpectClose;
using testing::Random;

TEST(GpuConvOps, Conv2dForwardBackward) {
  SKIP_WITHOUT_GPU();
  struct Case {
    int N, C, H, W, OC, K, stride, pad;
    bool bias;
  };
  for (const Case& c : {Case{2, 3, 9, 7, 5, 3, 1, 1, true}, Case{3, 4, 8, 8, 6, 3, 2, 1, false},
                        Case{2, 5, 6, 6, 4, 1, 1, 0, true}, Case{1, 2, 11, 10, 3, 5, 2, 2, true},
                        Case{2, 8, 8, 8, 16, 3, 1, 1, true},  // the CPU's direct convolution
                        // Several 64-row and 64-column tiles and several split-K slices (weights):
                        Case{4, 66, 20, 20, 70, 3, 1, 1, true}, Case{3, 17, 15, 13, 65, 3, 2, 1, false}}) {
    cpu::ConvShape s;
    s.N = c.N, s.C = c.C, s.H = c.H, s.W = c.W, s.OC = c.OC, s.KH = c.K, s.KW = c.K, s.stride = c.stride, s.pad = c.pad;
    char trace[96];
    std::snprintf(trace, sizeof trace, "N%d C%d %dx%d OC%d k%d s%d p%d", c.N, c.C, c.H, c.W, c.OC, c.K, c.stride,
                  c.pad);
    SCOPED_TRACE(trace);
    const size_t in_n = static_cast<size_t>(c.N) * c.C * c.H * c.W;
    const size_t out_n = static_cast<size_t>(c.N) * c.OC * s.OH() * s.OW();
    const size_t w_n = static_cast<size_t>(c.OC) * c.C * c.K * c.K;
    auto in = Random(in_n, 70), w = Random(w_n, 71), b = Random(c.OC, 72), dout = Random(out_n, 73);
    auto dw = Random(w_n, 74), db = Random(c.OC, 75);  // gradients accumulate onto these
    std::vector<float> out(out_n), din(in_n), scratch(static_cast<size_t>(cpu::ConvScratchSize(s)));
    Dev<float> g_in(in), g_w(w), g_b(b), g_dout(dout), g_dw(dw), g_db(db), g_out(out_n), g_din(in_n),
        g_scratch(static_cast<size_t>(gpu::Conv2dScratchFloats(s)));
    cpu::Conv2dForward(out.data(), in.data(), w.data(), c.bias ? b.data() : nullptr, s, scratch.data());
    ASSERT_TRUE(gpu::Conv2dForward(g_out.p, g_in.p, g_w.p, c.bias ? g_b.p : nullptr, s, nullptr).ok());
    ExpectClose(g_out.Host(), out, "conv out");
    cpu::Conv2dBackward(din.data(), dw.data(), c.bias ? db.data() : nullptr, dout.data(), in.data(), w.data(), s,
                        scratch.data());
    ASSERT_TRUE(gpu::Conv2dBackward(g_din.p, g_dw.p, c.bias ? g_db.p : nullptr, g_dout.p, g_in.p, g_w.p, s,
                                    g_scratch.p, static_cast<int64_t>(g_scratch.n), nullptr)
                    .ok());
    ExpectClose(g_din.Host(), din, "conv din");
    ExpectClose(g_dw.Host(), dw, "conv dw (accumulated)");
    // The same bits again (fixed-order sums, slices added in order).
    Dev<float> g_dw2(Random(w_n, 74)), g_din2(in_n);
    ASSERT_TRUE(gpu::Conv2dBackward(g_din2.p, g_dw2.p, nullptr, g_dout.p, g_in.p, g_w.p, s, g_scratch.p,
                                    static_cast<int64_t>(g_scratch.n), nullptr)
                    .ok());
    EXPECT_TRUE(g_dw2.Host() == g_dw.Host()) << "conv dw not repeatable";
    EXPECT_TRUE(g_din2.Host() == g_din.Host()) << "conv din not repeatable";
    ExpectClose(g_db.Host(), db, c.bias ? "conv db (accumulated)" : "conv db (untouched)");
  }
}

// Scratch sized for a larger batch serves a smaller one (the model sizes it once for its largest
// batch): ResNet-20's first-stage shape planned at 43 images and run at 41, where the weight
// gradient's split-K takes more slices than at 43. The result equals the one with scratch sized
// for 41, bit for bit.
TEST(GpuConvOps, ScratchForALargerBatchServesASmallerOne) {
  SKIP_WITHOUT_GPU();
  cpu::ConvShape big;
  big.N = 43, big.C = 16, big.H = 32, big.W = 32, big.OC = 16, big.KH = big.KW = 3, big.stride = 1, big.pad = 1;
  cpu::ConvShape s = big;
  s.N = 41;
  ASSERT_GE(gpu::Conv2dScratchFloats(big), gpu::Conv2dScratchFloats(s));
  const size_t in_n = static_cast<size_t>(s.N) * s.C * s.H * s.W, w_n = static_cast<size_t>(s.OC) * s.C * 9;
  const size_t out_n = static_cast<size_t>(s.N) * s.OC * s.OH() * s.OW();
  Dev<float> g_in(Random(in_n, 90)), g_w(Random(w_n, 91)), g_dout(Random(out_n, 92));
  Dev<float> dw_big(w_n), dw_exact(w_n), din_big(in_n), din_exact(in_n);
  Dev<float> scratch_big(static_cast<size_t>(gpu::Conv2dScratchFloats(big))),
      scratch_exact(static_cast<size_t>(gpu::Conv2dScratchFloats(s)));
  ASSERT_TRUE(gpu::Conv2dBackward(din_big.p, dw_big.p, nullptr, g_dout.p, g_in.p, g_w.p, s, scratch_big.p,
                                  static_cast<int64_t>(scratch_big.n), nullptr)
                  .ok());
  ASSERT_TRUE(gpu::Conv2dBackward(din_exact.p, dw_exact.p, nullptr, g_dout.p, g_in.p, g_w.p, s, scratch_exact.p,
                                  static_cast<int64_t>(scratch_exact.n), nullptr)
                  .ok());
  EXPECT_TRUE(dw_big.Host() == dw_exact.Host());
  EXPECT_TRUE(din_big.Host() == din_exact.Host());
}

TEST(GpuConvOps, Pooling) {
  SKIP_WITHOUT_GPU();
  struct Case {
    int N, C, H, W, k, st;
  };
  // 2/2 as LeNet, 3/2 overlapping windows (several outputs per input), global average 8/8.
  for (const Case& c : {Case{2, 3, 8, 8, 2, 2}, Case{2, 2, 9, 7, 3, 2}, Case{3, 4, 8, 8, 8, 8}}) {
    char trace[64];
    std::snprintf(trace, sizeof trace, "%dx%d k%d s%d", c.H, c.W, c.k, c.st);
    SCOPED_TRACE(trace);
    const int OH = (c.H - c.k) / c.st + 1, OW = (c.W - c.k) / c.st + 1;
    const size_t in_n = static_cast<size_t>(c.N) * c.C * c.H * c.W, out_n = static_cast<size_t>(c.N) * c.C * OH * OW;
    auto in = Random(in_n, 80), dout = Random(out_n, 81);
    std::vector<float> out(out_n), din(in_n);
    std::vector<int32_t> argmax(out_n);
    Dev<float> g_in(in), g_dout(dout), g_out(out_n), g_din(in_n);
    Dev<int32_t> g_arg(out_n);
    cpu::MaxPoolForward(out.data(), argmax.data(), in.data(), c.N, c.C, c.H, c.W, c.k, c.st);
    ASSERT_TRUE(gpu::MaxPoolForward(g_out.p, g_arg.p, g_in.p, c.N, c.C, c.H, c.W, c.k, c.st, nullptr).ok());
    EXPECT_TRUE(g_out.Host() == out) << "max pooling picks values, so it is exact";
    EXPECT_TRUE(g_arg.Host() == argmax);
    cpu::MaxPoolBackward(din.data(), dout.data(), argmax.data(), c.N, c.C, c.H, c.W, c.k, c.st);
    ASSERT_TRUE(gpu::MaxPoolBackward(g_din.p, g_dout.p, g_arg.p, c.N, c.C, c.H, c.W, c.k, c.st, nullptr).ok());
    EXPECT_TRUE(g_din.Host() == din) << "max pool din: the same values added in the same order";
    cpu::AvgPoolForward(out.data(), in.data(), c.N, c.C, c.H, c.W, c.k, c.st);
    ASSERT_TRUE(gpu::AvgPoolForward(g_out.p, g_in.p, c.N, c.C, c.H, c.W, c.k, c.st, nullptr).ok());
    ExpectClose(g_out.Host(), out, "avg pool out");
    cpu::AvgPoolBackward(din.data(), dout.data(), c.N, c.C, c.H, c.W, c.k, c.st);
    ASSERT_TRUE(gpu::AvgPoolBackward(g_din.p, g_dout.p, c.N, c.C, c.H, c.W, c.k, c.st, nullptr).ok());
    EXPECT_TRUE(g_din.Host() == din) << "avg pool din: the same rounded products added in the same order";
  }
}

TEST(GpuConvOps, ReluAndMse) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 10007;
  auto x = Random(static_cast<size_t>(n), 90), d = Random(static_cast<size_t>(n), 91),
       target = Random(static_cast<size_t>(n), 92);
  std::vector<float> out(static_cast<size_t>(n)), din(static_cast<size_t>(n)), dpred(static_cast<size_t>(n));
  Dev<float> g_x(x), g_d(d), g_t(target), g_out(static_cast<size_t>(n)), g_din(static_cast<size_t>(n)),
      g_dpred(static_cast<size_t>(n));
  cpu::ReluForward(out.data(), x.data(), n);
  cpu::ReluBackward(din.data(), d.data(), out.data(), n);
  ASSERT_TRUE(gpu::ReluForward(g_out.p, g_x.p, n, nullptr).ok());
  ASSERT_TRUE(gpu::ReluBackward(g_din.p, g_d.p, g_out.p, n, nullptr).ok());
  EXPECT_TRUE(g_out.Host() == out);
  EXPECT_TRUE(g_din.Host() == din);
  const double want = cpu::MseLoss(dpred.data(), x.data(), target.data(), n, 0.5f);
  Dev<double> g_loss(size_t{1});
  void* scratch = nullptr;
  ASSERT_EQ(cudaMalloc(&scratch, gpu::MseScratchBytes(n)), cudaSuccess);
  ASSERT_TRUE(gpu::MseLoss(g_loss.p, g_dpred.p, g_x.p, g_t.p, n, 0.5f, scratch, nullptr).ok());
  const double got = g_loss.Host()[0] / static_cast<double>(n);
  cudaFree(scratch);
  EXPECT_NEAR(got, want, 1e-12 * want);
  // One formula per element with no multiply-add to contract: exact (unless fast-math flags are added).
  EXPECT_TRUE(g_dpred.Host() == dpred) << "the MSE gradient is one formula per element, so it is exact";
}

TEST(GpuConvOps, BatchNorm) {
  SKIP_WITHOUT_GPU();
  const int N = 4, C = 3, HW = 100;  // N*HW above the 256 threads of a channel's block
  const size_t n = static_cast<size_t>(N) * C * HW;
  auto in = Random(n, 100, 3.f), w = Random(C, 101), b = Random(C, 102), dout = Random(n, 103);
  auto rm = Random(C, 104), rv = Random(C, 105, 0.5f);
  for (float& v : rv) v += 1.f;  // variances > 0
  auto dw = Random(C, 106), db = Random(C, 107);
  std::vector<float> out(n), mean(C), rstd(C), din(n);
  Dev<float> g_in(in), g_w(w), g_b(b), g_dout(dout), g_rm(rm), g_rv(rv), g_dw(dw), g_db(db), g_out(n), g_mean(C),
      g_rstd(C), g_din(n);
  for (bool train : {true, false}) {
    SCOPED_TRACE(train ? "training" : "evaluation");
    cpu::BatchNormForward(out.data(), mean.data(), rstd.data(), rm.data(), rv.data(), in.data(), w.data(), b.data(), N,
                          C, HW, train, 0.1f, 1e-5f);
    ASSERT_TRUE(gpu::BatchNormForward(g_out.p, g_mean.p, g_rstd.p, g_rm.p, g_rv.p, g_in.p, g_w.p, g_b.p, N, C, HW,
                                      train, 0.1f, 1e-5f, nullptr)
                    .ok());
    ExpectClose(g_out.Host(), out, "batch norm out");
    ExpectClose(g_rm.Host(), rm, "running mean");
    ExpectClose(g_rv.Host(), rv, "running variance");
    if (!train) continue;
    ExpectClose(g_mean.Host(), mean, "batch mean");
    ExpectClose(g_rstd.Host(), rstd, "batch rstd");
    cpu::BatchNormBackward(din.data(), dw.data(), db.data(), dout.data(), in.data(), w.data(), mean.data(), rstd.data(),
                           N, C, HW);
    ASSERT_TRUE(gpu::BatchNormBackward(g_din.p, g_dw.p, g_db.p, g_dout.p, g_in.p, g_w.p, g_mean.p, g_rstd.p, N, C, HW,
                                       nullptr)
                    .ok());
    ExpectClose(g_din.Host(), din, "batch norm din");
    ExpectClose(g_dw.Host(), dw, "batch norm dw");
    ExpectClose(g_db.Host(), db, "batch norm db");
  }
}

}  // namespace
}  // namespace ringtrain
