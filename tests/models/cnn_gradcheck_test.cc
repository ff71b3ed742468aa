// Whole-model finite-difference checks (float64) for the CNN models: MLP, LeNet-5 and a ResNet-8
// with BatchNorm in training mode, with cross-entropy and MSE losses and with dropout. Every
// trainable parameter is checked (rtol 1e-5, atol 1e-8, h = 1e-5). Also: running statistics get
// no gradient and are untouched by backward, and grad-ready ranges cover the arena once.
#include <gtest/gtest.h>

#include <ostream>
#include <vector>

#include "models/cnn.h"
#include "tests/util/gradcheck.h"

namespace ringtrain {
namespace {

struct Case {
  std::string arch, loss;
  int size, channels;
  float dropout;
};

void PrintTo(const Case& k, std::ostream* os) { *os << k.arch << "/" << k.loss << "/dropout " << k.dropout; }

class CnnGradcheck : public ::testing::TestWithParam<Case> {};

TEST_P(CnnGradcheck, EveryParameterMatchesFiniteDifferences) {
  const Case k = GetParam();
  CnnConfig c;
  c.arch = k.arch;
  c.hidden = {7, 5};
  c.depth = 8;
  c.width = 2;
  c.channels = k.channels;
  c.height = c.width_px = k.size;
  c.classes = 3;
  c.loss = k.loss;
  c.dropout = k.dropout;
  Cnn<double> m(c);
  m.InitWeights(4);
  const int N = 3;
  auto x = testing::RandomVec(static_cast<size_t>(N) * k.channels * k.size * k.size, 51);
  std::vector<int32_t> y = {0, 2, 1};
  auto loss = [&]() { return m.Forward(x.data(), y.data(), N, true, 9, 2); };
  loss();
  auto& A = m.arena();
  A.grads.Zero();
  std::vector<int> covered(A.layout.total(), 0);
  m.Backward(1.0, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) covered[i]++;
  });
  std::vector<double> analytic(A.grads.data(), A.grads.data() + A.layout.total());
  for (const auto& s : A.layout.specs()) {
    for (int64_t i = 0; i < s.numel; ++i) ASSERT_EQ(covered[s.offset + i], 1) << s.name;
    if (s.name.find("running_") != std::string::npos) {
      for (int64_t i = 0; i < s.numel; ++i) EXPECT_EQ(analytic[s.offset + i], 0.0) << s.name;
      continue;
    }
    testing::ExpectGradientMatches(loss, A.params.data() + s.offset, analytic.data() + s.offset,
                                   static_cast<size_t>(s.numel), s.name, 1e-5, 1e-8, 1e-5, 400);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, CnnGradcheck,
                         ::testing::Values(Case{"mlp", "cross_entropy", 4, 2, 0.f}, Case{"mlp", "mse", 4, 1, 0.3f},
                                           Case{"lenet", "cross_entropy", 16, 1, 0.f},
                                           Case{"resnet", "cross_entropy", 8, 3, 0.f},
                                           Case{"resnet", "mse", 8, 1, 0.2f}),
                         [](const auto& info) {
                           return info.param.arch + "_" + info.param.loss + (info.param.dropout > 0 ? "_dropout" : "");
                         });

TEST(Cnn, ShapesAndParameterCounts) {
  CnnConfig c;
  c.arch = "lenet";
  Cnn<float> lenet(c);  // 28x28x1, 10 classes: the classic 61,706 parameters (conv pad 2)
  EXPECT_EQ(lenet.NumParams(), 61706);
  c.arch = "resnet";
  c.depth = 20;
  c.width = 16;
  c.channels = 3;
  c.height = c.width_px = 32;
  Cnn<float> r20(c);  // CIFAR ResNet-20 with 1x1 projection shortcuts
  EXPECT_GT(r20.NumParams(), 269000);
  EXPECT_LT(r20.NumParams(), 275000);
}

}  // namespace
}  // namespace ringtrain
