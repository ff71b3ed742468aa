// Finite-difference gradient checks (float64) for the CNN kernels: convolution with stride and
// padding (and the 1x1 fast path), max and average pooling, ReLU, BatchNorm in training mode, and
// MSE. Tolerance: relative 1e-6 (absolute 1e-9), h = 1e-5 central differences. Plus reference
// values for the forward passes and BatchNorm's running statistics.
#include <gtest/gtest.h>

#include <vector>

#include "core/cpu/conv_ops.h"
#include "tests/util/gradcheck.h"

namespace ringtrain {
namespace {

using testing::Dot;
using testing::ExpectGradientMatches;
using testing::RandomVec;

// (kernel, stride, pad)
class ConvGradcheck : public ::testing::TestWithParam<std::tuple<int, int, int>> {};

TEST_P(ConvGradcheck, MatchesFiniteDifferences) {
  cpu::ConvShape s;
  s.N = 2;
  s.C = 3;
  s.H = 7;
  s.W = 6;
  s.OC = 4;
  s.KH = s.KW = std::get<0>(GetParam());
  s.stride = std::get<1>(GetParam());
  s.pad = std::get<2>(GetParam());
  auto in = RandomVec(s.N * s.C * s.H * s.W, 31), w = RandomVec(s.OC * s.ColRows(), 32), b = RandomVec(s.OC, 33);
  const int64_t out_n = static_cast<int64_t>(s.N) * s.OC * s.OH() * s.OW();
  auto g = RandomVec(out_n, 34);
  std::vector<double> out(out_n), scratch(cpu::ConvScratchSize(s));
  auto loss = [&]() {
    cpu::Conv2dForward(out.data(), in.data(), w.data(), b.data(), s, scratch.data());
    return Dot(out.data(), g.data(), out.size());
  };
  loss();
  // Direct definition of the convolution for the forward values.
  for (int n = 0; n < s.N; ++n)
    for (int oc = 0; oc < s.OC; ++oc)
      for (int oh = 0; oh < s.OH(); ++oh)
        for (int ow = 0; ow < s.OW(); ++ow) {
          double acc = b[oc];
          for (int c = 0; c < s.C; ++c)
            for (int kh = 0; kh < s.KH; ++kh)
              for (int kw = 0; kw < s.KW; ++kw) {
                const int ih = oh * s.stride - s.pad + kh, iw = ow * s.stride - s.pad + kw;
                if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) continue;
                acc += w[((oc * s.C + c) * s.KH + kh) * s.KW + kw] * in[((n * s.C + c) * s.H + ih) * s.W + iw];
              }
          EXPECT_NEAR(out[((n * s.OC + oc) * s.OH() + oh) * s.OW() + ow], acc, 1e-12);
        }
  std::vector<double> din(in.size()), dw(w.size(), 0.0), db(b.size(), 0.0);
  cpu::Conv2dBackward(din.data(), dw.data(), db.data(), g.data(), in.data(), w.data(), s, scratch.data());
  // The loss sums up to 75-term dot products, |L| ~ 1e2, so central differences carry roundoff of
  // about 2.2e-16 * |L| / h ~ 2e-9 absolute: atol 2e-8 (rtol stays 1e-6).
  ExpectGradientMatches(loss, in.data(), din.data(), din.size(), "conv din", 1e-6, 2e-8);
  ExpectGradientMatches(loss, w.data(), dw.data(), dw.size(), "conv dw", 1e-6, 2e-8);
  ExpectGradientMatches(loss, b.data(), db.data(), db.size(), "conv db", 1e-6, 2e-8);
}

INSTANTIATE_TEST_SUITE_P(KernelStridePad, ConvGradcheck,
                         ::testing::Values(std::make_tuple(3, 1, 1), std::make_tuple(3, 2, 1), std::make_tuple(5, 1, 2),
                                           std::make_tuple(1, 1, 0), std::make_tuple(1, 2, 0), std::make_tuple(2, 2, 0)));

TEST(CnnGradcheck, MaxPool) {
  const int N = 2, C = 3, H = 6, W = 6, k = 2, st = 2;
  auto in = RandomVec(N * C * H * W, 35);
  const int OH = 3, OW = 3;
  auto g = RandomVec(N * C * OH * OW, 36);
  std::vector<double> out(g.size()), din(in.size());
  std::vector<int32_t> am(g.size());
  auto loss = [&]() {
    cpu::MaxPoolForward(out.data(), am.data(), in.data(), N, C, H, W, k, st);
    return Dot(out.data(), g.data(), out.size());
  };
  loss();
  EXPECT_EQ(out[0], std::max({in[0], in[1], in[6], in[7]}));
  cpu::MaxPoolBackward(din.data(), g.data(), am.data(), N, C, H, W, k, st);
  ExpectGradientMatches(loss, in.data(), din.data(), din.size(), "maxpool din");
}

TEST(CnnGradcheck, AvgPoolAndGlobal) {
  for (const auto& kst : {std::pair{2, 2}, std::pair{3, 1}, std::pair{6, 1}}) {
    const int k = kst.first, st = kst.second;  // named ints: lambdas cannot capture bindings in clang 14
    const int N = 2, C = 2, H = 6, W = 6;
    const int OH = (H - k) / st + 1, OW = (W - k) / st + 1;
    auto in = RandomVec(N * C * H * W, 37);
    auto g = RandomVec(N * C * OH * OW, 38);
    std::vector<double> out(g.size()), din(in.size());
    auto loss = [&]() {
      cpu::AvgPoolForward(out.data(), in.data(), N, C, H, W, k, st);
      return Dot(out.data(), g.data(), out.size());
    };
    loss();
    if (k == H) {
      double m = 0;
      for (int i = 0; i < H * W; ++i) m += in[i];
      EXPECT_NEAR(out[0], m / (H * W), 1e-12);
    }
    cpu::AvgPoolBackward(din.data(), g.data(), N, C, H, W, k, st);
    ExpectGradientMatches(loss, in.data(), din.data(), din.size(), "avgpool din");
  }
}

TEST(CnnGradcheck, Relu) {
  auto in = RandomVec(40, 39);
  auto g = RandomVec(40, 40);
  std::vector<double> out(40), din(40);
  auto loss = [&]() {
    cpu::ReluForward(out.data(), in.data(), 40);
    return Dot(out.data(), g.data(), 40);
  };
  loss();
  cpu::ReluBackward(din.data(), g.data(), out.data(), 40);
  ExpectGradientMatches(loss, in.data(), din.data(), 40, "relu din");
}

TEST(CnnGradcheck, BatchNormTraining) {
  const int N = 3, C = 4, HW = 5;
  auto in = RandomVec(N * C * HW, 41, 2.0), w = RandomVec(C, 42), b = RandomVec(C, 43), g = RandomVec(N * C * HW, 44);
  std::vector<double> out(in.size()), mean(C), rstd(C), rm(C, 0.0), rv(C, 1.0);
  auto loss = [&]() {
    cpu::BatchNormForward<double>(out.data(), mean.data(), rstd.data(), nullptr, nullptr, in.data(), w.data(),
                                  b.data(), N, C, HW, true, 0.1, 1e-5);
    return Dot(out.data(), g.data(), out.size());
  };
  loss();
  std::vector<double> din(in.size()), dw(C, 0.0), db(C, 0.0);
  cpu::BatchNormBackward(din.data(), dw.data(), db.data(), g.data(), in.data(), w.data(), mean.data(), rstd.data(), N,
                         C, HW);
  ExpectGradientMatches(loss, in.data(), din.data(), din.size(), "batchnorm din");
  ExpectGradientMatches(loss, w.data(), dw.data(), dw.size(), "batchnorm dw");
  ExpectGradientMatches(loss, b.data(), db.data(), db.size(), "batchnorm db");
  // Running statistics (PyTorch semantics): momentum 0.1, unbiased variance.
  cpu::BatchNormForward<double>(out.data(), mean.data(), rstd.data(), rm.data(), rv.data(), in.data(), w.data(),
                                b.data(), N, C, HW, true, 0.1, 1e-5);
  double m = 0, v = 0;
  for (int n = 0; n < N; ++n)
    for (int i = 0; i < HW; ++i) m += in[(n * C + 1) * HW + i];
  m /= N * HW;
  for (int n = 0; n < N; ++n)
    for (int i = 0; i < HW; ++i) v += (in[(n * C + 1) * HW + i] - m) * (in[(n * C + 1) * HW + i] - m);
  EXPECT_NEAR(rm[1], 0.1 * m, 1e-12);
  EXPECT_NEAR(rv[1], 0.9 + 0.1 * v / (N * HW - 1), 1e-12);
  // Evaluation mode uses the running statistics.
  cpu::BatchNormForward<double>(out.data(), nullptr, nullptr, rm.data(), rv.data(), in.data(), w.data(), b.data(), N,
                                C, HW, false, 0.1, 1e-5);
  EXPECT_NEAR(out[HW], (in[HW] - rm[1]) / std::sqrt(rv[1] + 1e-5) * w[1] + b[1], 1e-12);
}

TEST(CnnGradcheck, Mse) {
  auto p = RandomVec(12, 45), t = RandomVec(12, 46);
  std::vector<double> d(12);
  auto loss = [&]() { return cpu::MseLoss<double>(nullptr, p.data(), t.data(), 12, 0.0); };
  cpu::MseLoss<double>(d.data(), p.data(), t.data(), 12, 1.0);
  ExpectGradientMatches(loss, p.data(), d.data(), 12, "mse dpred");
}

}  // namespace
}  // namespace ringtrain
