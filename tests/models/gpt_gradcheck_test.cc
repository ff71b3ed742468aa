// Whole-model finite-difference check of GPT in float64: every parameter's gradient against
// central differences of the mean loss (rtol 1e-5, atol 1e-8, h = 1e-5), with and without bias
// and dropout. Also: grad-ready ranges cover the arena once, gradients accumulate across
// micro-steps, and the float32 model agrees with the float64 one.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "models/gpt.h"
#include "tests/util/gradcheck.h"

namespace ringtrain {
namespace {

GptConfig Tiny(bool bias, float dropout) {
  GptConfig c;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 8;
  c.block_size = 6;
  c.vocab_size = 7;
  c.bias = bias;
  c.dropout = dropout;
  return c;
}

struct Batch {
  int B = 2, T = 5;
  std::vector<int32_t> tok = {1, 2, 3, 4, 5, 6, 0, 1, 2, 3};
  std::vector<int32_t> tgt = {2, 3, 4, 5, 6, 0, 1, 2, 3, -1};
};

class GptGradcheck : public ::testing::TestWithParam<std::tuple<bool, float>> {};

TEST_P(GptGradcheck, EveryParameterMatchesFiniteDifferences) {
  const auto [bias, dropout] = GetParam();
  Gpt<double> m(Tiny(bias, dropout));
  m.InitWeights(3);
  // Larger random parameters than GPT-2 init so every path carries signal.
  auto& A = m.arena();
  auto noise = testing::RandomVec(A.layout.total(), 99, 0.3);
  for (size_t i = 0; i < A.layout.total(); ++i) A.params[i] += noise[i];
  Batch b;
  const bool train = dropout > 0;
  auto loss = [&]() { return m.Forward(b.tok.data(), b.tgt.data(), b.B, b.T, train, 11, 5); };
  loss();
  A.grads.Zero();
  m.Backward(1.0);
  std::vector<double> analytic(A.grads.data(), A.grads.data() + A.layout.total());
  testing::ExpectGradientMatches(loss, A.params.data(), analytic.data(), analytic.size(), "gpt params", 1e-5, 1e-8);
}

INSTANTIATE_TEST_SUITE_P(BiasDropout, GptGradcheck,
                         ::testing::Values(std::make_tuple(true, 0.0f), std::make_tuple(false, 0.0f),
                                           std::make_tuple(true, 0.2f)));

TEST(Gpt, GradReadyRangesCoverArenaOnce) {
  Gpt<double> m(Tiny(true, 0.f));
  m.InitWeights(1);
  Batch b;
  m.Forward(b.tok.data(), b.tgt.data(), b.B, b.T, false);
  std::vector<int> covered(m.arena().layout.total(), 0);
  m.Backward(1.0, [&](size_t s, size_t e) {
    for (size_t i = s; i < e; ++i) covered[i]++;
  });
  for (const auto& s : m.arena().layout.specs())
    for (int64_t i = 0; i < s.numel; ++i) ASSERT_EQ(covered[s.offset + i], 1) << s.name;
}

TEST(Gpt, GradientsAccumulateAcrossMicroSteps) {
  Gpt<double> m(Tiny(true, 0.f));
  m.InitWeights(1);
  Batch b;
  auto& A = m.arena();
  A.grads.Zero();
  m.Forward(b.tok.data(), b.tgt.data(), b.B, b.T, false);
  m.Backward(1.0);
  std::vector<double> once(A.grads.data(), A.grads.data() + A.layout.total());
  m.Forward(b.tok.data(), b.tgt.data(), b.B, b.T, false);
  m.Backward(0.5);
  for (size_t i = 0; i < once.size(); ++i) EXPECT_NEAR(A.grads[i], 1.5 * once[i], 1e-12 * (1 + std::fabs(once[i])));
}

TEST(Gpt, InitFollowsGpt2) {
  Gpt<double> m(Tiny(true, 0.f));
  m.InitWeights(5);
  const auto& L = m.arena().layout;
  auto stddev = [&](const std::string& name) {
    const auto& s = L.spec(L.Find(name));
    double ss = 0;
    for (int64_t i = 0; i < s.numel; ++i) ss += m.arena().params[s.offset + i] * m.arena().params[s.offset + i];
    return std::sqrt(ss / static_cast<double>(s.numel));
  };
  EXPECT_EQ(L.spec(L.Find("h.0.attn.c_proj.weight")).init_std, 0.02f / 2.0f);  // 1/sqrt(2 * n_layer)
  EXPECT_EQ(L.spec(L.Find("h.1.mlp.c_fc.weight")).init_std, 0.02f);
  EXPECT_NEAR(stddev("h.0.attn.c_attn.weight"), 0.02, 0.006);
  EXPECT_EQ(m.arena().params[L.spec(L.Find("h.0.ln_1.weight")).offset], 1.0);
  EXPECT_EQ(m.arena().params[L.spec(L.Find("h.0.ln_1.bias")).offset], 0.0);
  EXPECT_FALSE(L.spec(L.Find("h.0.attn.c_attn.bias")).decay);
  EXPECT_TRUE(L.spec(L.Find("wte.weight")).decay);
  EXPECT_EQ(L.Find("lm_head.weight"), -1) << "output layer is tied to wte";
}

TEST(Gpt, Float32MatchesFloat64) {
  GptConfig c = Tiny(true, 0.f);
  c.n_embd = 32;
  c.n_head = 4;
  c.block_size = 16;
  Gpt<double> md(c);
  Gpt<float> mf(c);
  md.InitWeights(9);
  for (size_t i = 0; i < md.arena().layout.total(); ++i) mf.arena().params[i] = static_cast<float>(md.arena().params[i]);
  std::vector<int32_t> tok(32), tgt(32);
  for (int i = 0; i < 32; ++i) {
    tok[i] = (i * 5) % 7;
    tgt[i] = (i * 3 + 1) % 7;
  }
  const double ld = md.Forward(tok.data(), tgt.data(), 2, 16, false);
  const double lf = mf.Forward(tok.data(), tgt.data(), 2, 16, false);
  EXPECT_NEAR(lf, ld, 1e-5 * ld);
  md.Backward(1.0);
  mf.Backward(1.0f);
  double num = 0, den = 0;
  for (size_t i = 0; i < md.arena().layout.total(); ++i) {
    const double d = mf.arena().grads[i] - md.arena().grads[i];
    num += d * d;
    den += md.arena().grads[i] * md.arena().grads[i];
  }
  EXPECT_LT(std::sqrt(num / den), 1e-5);
}

}  // namespace
}  // namespace ringtrain
