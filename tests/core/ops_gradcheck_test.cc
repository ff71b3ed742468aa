// Finite-difference gradient checks (float64) for every CPU kernel, plus float32 vs float64
// agreement of the forward passes. Tolerance: relative 1e-6 (absolute 1e-9) with h = 1e-5 central
// differences, far above the O(h^2) truncation and rounding error of float64.
#include <gtest/gtest.h>

#include <algorithm>

#include <cstring>
#include <vector>

#include "core/cpu/ops.h"
#include "core/threads.h"
#include "tests/util/gradcheck.h"

namespace ringtrain {
namespace {

using testing::Dot;
using testing::ExpectGradientMatches;
using testing::RandomVec;

TEST(OpsGradcheck, Linear) {
  for (bool bias : {true, false}) {
    const int N = 5, C = 7, OC = 6;
    auto in = RandomVec(N * C, 1), w = RandomVec(OC * C, 2), b = RandomVec(OC, 3), g = RandomVec(N * OC, 4);
    std::vector<double> out(N * OC);
    auto loss = [&]() {
      cpu::LinearForward(out.data(), in.data(), w.data(), bias ? b.data() : nullptr, N, C, OC);
      return Dot(out.data(), g.data(), out.size());
    };
    std::vector<double> din(N * C), dw(OC * C, 0.0), db(OC, 0.0);
    cpu::LinearBackward(din.data(), dw.data(), bias ? db.data() : nullptr, g.data(), in.data(), w.data(), N, C, OC);
    ExpectGradientMatches(loss, in.data(), din.data(), din.size(), "linear din");
    ExpectGradientMatches(loss, w.data(), dw.data(), dw.size(), "linear dw");
    if (bias) ExpectGradientMatches(loss, b.data(), db.data(), db.size(), "linear db");
    // Parameter gradients accumulate; din with accumulate_din adds.
    std::vector<double> dw2 = dw, din2 = din;
    cpu::LinearBackward<double>(din2.data(), dw2.data(), nullptr, g.data(), in.data(), w.data(), N, C, OC, true);
    for (size_t i = 0; i < dw.size(); ++i) EXPECT_NEAR(dw2[i], 2 * dw[i], 1e-12);
    for (size_t i = 0; i < din.size(); ++i) EXPECT_NEAR(din2[i], 2 * din[i], 1e-12);
  }
}

TEST(OpsGradcheck, LayerNorm) {
  for (bool bias : {true, false}) {
    const int N = 4, C = 9;
    auto in = RandomVec(N * C, 5), w = RandomVec(C, 6), b = RandomVec(C, 7), g = RandomVec(N * C, 8);
    std::vector<double> out(N * C), mean(N), rstd(N);
    auto loss = [&]() {
      cpu::LayerNormForward(out.data(), mean.data(), rstd.data(), in.data(), w.data(), bias ? b.data() : nullptr, N, C);
      return Dot(out.data(), g.data(), out.size());
    };
    loss();
    std::vector<double> din(N * C, 0.0), dw(C, 0.0), db(C, 0.0);
    cpu::LayerNormBackward(din.data(), dw.data(), bias ? db.data() : nullptr, g.data(), in.data(), w.data(), mean.data(),
                           rstd.data(), N, C);
    ExpectGradientMatches(loss, in.data(), din.data(), din.size(), "layernorm din");
    ExpectGradientMatches(loss, w.data(), dw.data(), dw.size(), "layernorm dw");
    if (bias) ExpectGradientMatches(loss, b.data(), db.data(), db.size(), "layernorm db");
  }
}

TEST(OpsGradcheck, Embedding) {
  const int B = 2, T = 5, C = 4, V = 6;
  std::vector<int32_t> tok = {0, 3, 3, 5, 1, 2, 2, 0, 5, 4};
  auto wte = RandomVec(V * C, 9), wpe = RandomVec(T * C, 10), g = RandomVec(B * T * C, 11);
  std::vector<double> out(B * T * C);
  auto loss = [&]() {
    cpu::EmbeddingForward(out.data(), tok.data(), wte.data(), wpe.data(), B, T, C);
    return Dot(out.data(), g.data(), out.size());
  };
  std::vector<double> dwte(V * C, 0.0), dwpe(T * C, 0.0);
  cpu::EmbeddingBackward(dwte.data(), dwpe.data(), g.data(), tok.data(), B, T, C);
  ExpectGradientMatches(loss, wte.data(), dwte.data(), dwte.size(), "embedding dwte");
  ExpectGradientMatches(loss, wpe.data(), dwpe.data(), dwpe.size(), "embedding dwpe");
}

TEST(OpsGradcheck, Gelu) {
  const int n = 50;
  auto in = RandomVec(n, 12, 2.0), g = RandomVec(n, 13);
  std::vector<double> out(n), din(n);
  auto loss = [&]() {
    cpu::GeluForward(out.data(), in.data(), n);
    return Dot(out.data(), g.data(), n);
  };
  cpu::GeluBackward(din.data(), g.data(), in.data(), n);
  ExpectGradientMatches(loss, in.data(), din.data(), n, "gelu");
  // Spot values of the tanh form: gelu(1) = 0.841192, gelu(-1) = -0.158808.
  double x[2] = {1.0, -1.0}, y[2];
  cpu::GeluForward(y, x, 2);
  EXPECT_NEAR(y[0], 0.8411919906082768, 1e-12);
  EXPECT_NEAR(y[1], -0.15880800939172324, 1e-12);
}

// (dropout p, T): T = 5 is one causal block; T = 70 is two uneven blocks of 35, which exercises
// the block-skipping GEMMs (keys beyond the block, queries before it).
class AttentionGradcheck : public ::testing::TestWithParam<std::tuple<double, int>> {};

TEST_P(AttentionGradcheck, MatchesFiniteDifferences) {
  const double p = std::get<0>(GetParam());
  const int T = std::get<1>(GetParam());
  const int B = T > 8 ? 1 : 2, C = 8, NH = 2;
  auto qkv = RandomVec(B * T * 3 * C, 14), g = RandomVec(B * T * C, 15);
  std::vector<double> out(B * T * C), att(B * NH * T * T), att_drop(B * NH * T * T);
  std::vector<uint8_t> keep(B * NH * T * T);
  cpu::DropoutMaskRows(keep.data(), static_cast<float>(p), B, NH * T * T, 0, 3, 4);
  const uint8_t* kp = p > 0 ? keep.data() : nullptr;
  auto loss = [&]() {
    cpu::AttentionForward(out.data(), att.data(), att_drop.data(), kp, p, qkv.data(), B, T, C, NH);
    return Dot(out.data(), g.data(), out.size());
  };
  loss();
  // Causality: row i of the probabilities is zero beyond i and sums to one.
  for (int r = 0; r < B * NH * T; ++r) {
    const int i = r % T;
    double s = 0;
    for (int j = 0; j < T; ++j) {
      if (j > i) {
        EXPECT_EQ(att[r * T + j], 0.0);
      }
      s += att[r * T + j];
    }
    EXPECT_NEAR(s, 1.0, 1e-12);
  }
  std::vector<double> dqkv(qkv.size()), scratch(cpu::AttentionScratchSize(T));
  cpu::AttentionBackward(dqkv.data(), scratch.data(), g.data(), qkv.data(), att.data(), att_drop.data(), kp, p, B, T, C,
                         NH);
  ExpectGradientMatches(loss, qkv.data(), dqkv.data(), dqkv.size(), "attention dqkv");
}

INSTANTIATE_TEST_SUITE_P(DropoutAndBlocks, AttentionGradcheck,
                         ::testing::Combine(::testing::Values(0.0, 0.3), ::testing::Values(5, 70)));

TEST(OpsGradcheck, BlockedAttentionEqualsDirectFormula) {
  // Float64 reference written out directly (softmax(q k^T / sqrt(hs)) v, causal) for T = 100
  // (three causal blocks).
  const int T = 100, C = 12, NH = 3, hs = C / NH;
  auto qkv = RandomVec(T * 3 * C, 21);
  std::vector<double> out(T * C), att(NH * T * T);
  cpu::AttentionForward<double>(out.data(), att.data(), nullptr, nullptr, 0.0, qkv.data(), 1, T, C, NH);
  for (int h = 0; h < NH; ++h) {
    for (int i = 0; i < T; ++i) {
      std::vector<double> w(i + 1);
      double mx = -1e300, sum = 0;
      for (int j = 0; j <= i; ++j) {
        double d = 0;
        for (int c = 0; c < hs; ++c) d += qkv[i * 3 * C + h * hs + c] * qkv[j * 3 * C + C + h * hs + c];
        w[j] = d / std::sqrt(static_cast<double>(hs));
        mx = std::max(mx, w[j]);
      }
      for (int j = 0; j <= i; ++j) sum += (w[j] = std::exp(w[j] - mx));
      for (int c = 0; c < hs; ++c) {
        double o = 0;
        for (int j = 0; j <= i; ++j) o += w[j] / sum * qkv[j * 3 * C + 2 * C + h * hs + c];
        EXPECT_NEAR(out[i * C + h * hs + c], o, 1e-12);
      }
    }
  }
}

TEST(OpsGradcheck, AttentionDoesNotLookAhead) {
  // Changing token t's q/k/v must not change outputs at positions < t.
  const int B = 1, T = 6, C = 4, NH = 1;
  auto qkv = RandomVec(T * 3 * C, 16);
  std::vector<double> out1(T * C), out2(T * C), att(T * T);
  cpu::AttentionForward<double>(out1.data(), att.data(), nullptr, nullptr, 0.0, qkv.data(), B, T, C, NH);
  for (int c = 0; c < 3 * C; ++c) qkv[4 * 3 * C + c] += 1.0;
  cpu::AttentionForward<double>(out2.data(), att.data(), nullptr, nullptr, 0.0, qkv.data(), B, T, C, NH);
  for (int i = 0; i < 4 * C; ++i) EXPECT_EQ(out1[i], out2[i]);
  bool changed = false;
  for (int i = 4 * C; i < 5 * C; ++i) changed |= out1[i] != out2[i];
  EXPECT_TRUE(changed);
}

TEST(OpsGradcheck, SoftmaxCrossEntropy) {
  const int N = 6, V = 5;
  auto logits = RandomVec(N * V, 17, 2.0);
  std::vector<int32_t> tgt = {0, 4, 2, -1, 1, 3};
  std::vector<double> losses(N), dlogits(N * V);
  auto loss = [&]() { return cpu::SoftmaxCrossEntropy<double>(losses.data(), nullptr, logits.data(), tgt.data(), N, V, 0.0); };
  const double l0 = loss();
  cpu::SoftmaxCrossEntropy<double>(losses.data(), dlogits.data(), logits.data(), tgt.data(), N, V, 1.0);
  ExpectGradientMatches(loss, logits.data(), dlogits.data(), dlogits.size(), "cross-entropy dlogits");
  EXPECT_EQ(losses[3], 0.0);  // ignored target
  // Reference value computed directly in float64.
  double ref = 0;
  for (int n = 0; n < N; ++n) {
    if (tgt[n] < 0) continue;
    double s = 0;
    for (int v = 0; v < V; ++v) s += std::exp(logits[n * V + v]);
    ref += std::log(s) - logits[n * V + tgt[n]];
  }
  EXPECT_NEAR(l0, ref, 1e-12);
}

TEST(OpsGradcheck, DropoutMaskRateAndDeterminism) {
  const int64_t n = 200000;
  std::vector<uint8_t> a(n), b(n);
  // 20 rows of 10000 (several 4096-element blocks per row).
  SetThreadBudget(1);
  cpu::DropoutMaskRows(a.data(), 0.25f, 20, n / 20, 0, 42, 7);
  SetThreadBudget(2);
  cpu::DropoutMaskRows(b.data(), 0.25f, 20, n / 20, 0, 42, 7);
  EXPECT_EQ(a, b) << "mask must not depend on the thread count";
  // Rows 5..12 drawn alone (a data-parallel rank's slice) equal those rows of the whole batch.
  std::vector<uint8_t> part(8 * (n / 20));
  cpu::DropoutMaskRows(part.data(), 0.25f, 8, n / 20, 5, 42, 7);
  EXPECT_TRUE(std::equal(part.begin(), part.end(), a.begin() + 5 * (n / 20)));
  int64_t kept = 0;
  for (auto k : a) kept += k;
  // Binomial(200000, 0.75): sd = 194; 6 sd bounds.
  EXPECT_NEAR(static_cast<double>(kept), 150000.0, 6 * 194.0);
  std::vector<double> in(8, 2.0), out(8);
  std::vector<uint8_t> k = {1, 0, 1, 1, 0, 0, 1, 1};
  cpu::DropoutApply(out.data(), in.data(), k.data(), 0.5, 8);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(out[i], k[i] ? 4.0 : 0.0);
}

TEST(OpsFloat32, ForwardAgreesWithFloat64) {
  // The float instantiation (what training runs) against the float64 reference.
  const int B = 2, T = 16, C = 32, NH = 4, N = B * T;
  auto qkv = RandomVec(N * 3 * C, 18);
  std::vector<double> out(N * C), att(B * NH * T * T);
  cpu::AttentionForward<double>(out.data(), att.data(), nullptr, nullptr, 0.0, qkv.data(), B, T, C, NH);
  std::vector<float> qkvf(qkv.begin(), qkv.end()), outf(N * C), attf(B * NH * T * T);
  cpu::AttentionForward<float>(outf.data(), attf.data(), nullptr, nullptr, 0.f, qkvf.data(), B, T, C, NH);
  for (int i = 0; i < N * C; ++i) EXPECT_NEAR(outf[i], out[i], 1e-5 * (1 + std::fabs(out[i])));
}

}  // namespace
}  // namespace ringtrain
