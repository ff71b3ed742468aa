// Optimizers and LR schedules against values computed by hand (worked in the comments).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/arena.h"
#include "core/threads.h"
#include "models/optim.h"

namespace ringtrain {
namespace {

// Runs `steps` updates of a single element starting at p0 with constant gradient g.
std::vector<float> RunSteps(OptimConfig oc, double lr, float p0, float g, int steps, bool decay = true) {
  OptimState st;
  st.Allocate(oc, 1);
  std::vector<float> trace;
  float p = p0;
  std::vector<std::pair<size_t, size_t>> dr;
  if (decay) dr.push_back({0, 1});
  for (int t = 1; t <= steps; ++t) {
    OptimizerUpdate(oc, lr, t, 1.0f, &p, &g, st, 0, 1, dr);
    trace.push_back(p);
  }
  return trace;
}

TEST(Optim, SgdPlain) {
  OptimConfig oc;
  oc.kind = OptimKind::kSgd;
  auto t = RunSteps(oc, 0.1, 1.0f, 0.5f, 2);
  EXPECT_NEAR(t[0], 0.95f, 1e-7);  // 1 - 0.1*0.5
  EXPECT_NEAR(t[1], 0.90f, 1e-7);
}

TEST(Optim, SgdMomentum) {
  OptimConfig oc;
  oc.kind = OptimKind::kSgd;
  oc.momentum = 0.9;
  auto t = RunSteps(oc, 0.1, 1.0f, 0.5f, 2);
  EXPECT_NEAR(t[0], 0.95f, 1e-7);   // buf = 0.5
  EXPECT_NEAR(t[1], 0.855f, 1e-6);  // buf = 0.9*0.5 + 0.5 = 0.95; 0.95 - 0.095
}

TEST(Optim, SgdNesterov) {
  OptimConfig oc;
  oc.kind = OptimKind::kSgd;
  oc.momentum = 0.9;
  oc.nesterov = true;
  auto t = RunSteps(oc, 0.1, 1.0f, 0.5f, 2);
  EXPECT_NEAR(t[0], 0.905f, 1e-6);   // buf 0.5, step g + 0.9 buf = 0.95
  EXPECT_NEAR(t[1], 0.7695f, 1e-6);  // buf 0.95, step 0.5 + 0.855 = 1.355
}

TEST(Optim, Adam) {
  OptimConfig oc;
  oc.kind = OptimKind::kAdam;
  oc.beta1 = 0.9;
  oc.beta2 = 0.999;
  oc.eps = 1e-8;
  // Constant gradient: bias-corrected m = g and v = g^2, so each step moves lr * g/|g| = 0.1.
  auto t = RunSteps(oc, 0.1, 1.0f, 0.5f, 3);
  EXPECT_NEAR(t[0], 0.9f, 1e-6);
  EXPECT_NEAR(t[1], 0.8f, 1e-6);
  EXPECT_NEAR(t[2], 0.7f, 1e-6);
  // Coupled weight decay (Adam): g_eff = 0.5 + 0.5*1 = 1.0 at step 1, still a 0.1 move.
  oc.weight_decay = 0.5;
  auto w = RunSteps(oc, 0.1, 1.0f, 0.5f, 1);
  EXPECT_NEAR(w[0], 0.9f, 1e-6);
  // Step 2 by hand: g1 = 1.0, g2 = 0.5 + 0.5*0.9 = 0.95; m = 0.9*0.1 + 0.095 = 0.185,
  // v = 0.999*0.001 + 0.001*0.9025 = 0.0019015; mhat = 0.185/0.19 = 0.973684,
  // vhat = 0.0019015/0.001999 = 0.951225; p = 0.9 - 0.1*0.973684/0.975308 = 0.800166.
  auto w2 = RunSteps(oc, 0.1, 1.0f, 0.5f, 2);
  EXPECT_NEAR(w2[1], 0.800166f, 2e-6);
}

TEST(Optim, AdamWDecoupledDecayOnlyOnDecayedTensors) {
  OptimConfig oc;
  oc.kind = OptimKind::kAdamW;
  oc.beta1 = 0.9;
  oc.beta2 = 0.999;
  oc.weight_decay = 0.1;
  auto t = RunSteps(oc, 0.1, 1.0f, 0.5f, 2);
  EXPECT_NEAR(t[0], 0.89f, 1e-6);    // 1*(1 - 0.1*0.1) - 0.1
  EXPECT_NEAR(t[1], 0.7811f, 1e-6);  // 0.89*0.99 - 0.1
  auto nd = RunSteps(oc, 0.1, 1.0f, 0.5f, 2, /*decay=*/false);
  EXPECT_NEAR(nd[0], 0.9f, 1e-6);
  EXPECT_NEAR(nd[1], 0.8f, 1e-6);
}

TEST(Optim, L1AndL2Penalties) {
  OptimConfig oc;
  oc.kind = OptimKind::kSgd;
  oc.l1 = 0.2;
  EXPECT_NEAR(RunSteps(oc, 0.1, 1.0f, 0.5f, 1)[0], 0.93f, 1e-6);    // g = 0.5 + 0.2
  EXPECT_NEAR(RunSteps(oc, 0.1, -1.0f, 0.5f, 1)[0], -1.03f, 1e-6);  // g = 0.5 - 0.2
  EXPECT_NEAR(RunSteps(oc, 0.1, 1.0f, 0.5f, 1, false)[0], 0.95f, 1e-6);  // not on undecayed tensors
  oc.l1 = 0;
  oc.l2 = 0.2;
  EXPECT_NEAR(RunSteps(oc, 0.1, 2.0f, 0.5f, 1)[0], 1.91f, 1e-6);  // g = 0.5 + 0.2*2
}

TEST(Optim, ShardedUpdateEqualsWholeUpdate) {
  // ZeRO-1 and the parameter server update ranges of the arena; the pieces must equal the whole.
  ParamLayout L;
  L.Add("w", {5, 7}, true, InitKind::kNormal);
  L.Add("b", {7}, false, InitKind::kZeros);
  L.Add("w2", {3, 3}, true, InitKind::kNormal);
  const size_t n = L.total();
  std::vector<float> p(n), g(n);
  for (size_t i = 0; i < n; ++i) {
    p[i] = std::sin(static_cast<float>(i));
    g[i] = std::cos(static_cast<float>(i) * 0.7f);
  }
  OptimConfig oc;
  oc.kind = OptimKind::kAdamW;
  oc.weight_decay = 0.3;
  auto p1 = p, p2 = p;
  OptimState s1, s2;
  s1.Allocate(oc, n);
  s2.Allocate(oc, n);
  const auto dr = L.DecayRanges();
  for (int t = 1; t <= 3; ++t) {
    OptimizerUpdate(oc, 0.01, t, 0.5f, p1.data(), g.data(), s1, 0, n, dr);
    OptimizerUpdate(oc, 0.01, t, 0.5f, p2.data(), g.data(), s2, 0, 40, dr);
    OptimizerUpdate(oc, 0.01, t, 0.5f, p2.data(), g.data(), s2, 40, n, dr);
  }
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(p1[i], p2[i]) << i;
}

TEST(Optim, ClipByGlobalNorm) {
  std::vector<float> g = {3.f, 4.f};
  const double norm = std::sqrt(SumSquares(g.data(), 2));
  EXPECT_DOUBLE_EQ(norm, 5.0);
  EXPECT_NEAR(ClipScale(norm, 1.0), 1.0 / (5.0 + 1e-6), 1e-7);
  EXPECT_EQ(ClipScale(norm, 10.0), 1.0f);
  EXPECT_EQ(ClipScale(norm, 0.0), 1.0f);
}

TEST(Optim, SumSquaresManyBlocksAnyThreadCount) {
  // 100,003 elements = 13 blocks of 8192: several OpenMP threads write partial sums.
  std::vector<float> g(100003);
  double ref = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    g[i] = static_cast<float>((i % 7) - 3);  // integer values: every sum is exact in double
    ref += static_cast<double>(g[i]) * g[i];
  }
  SetThreadBudget(1);
  const double one = SumSquares(g.data(), g.size());
  SetThreadBudget(2);
  const double two = SumSquares(g.data(), g.size());
  SetThreadBudget(0);
  EXPECT_EQ(one, ref);
  EXPECT_EQ(two, ref);
}

TEST(Schedule, WarmupCosine) {
  LrSchedule s;
  s.kind = ScheduleKind::kCosine;
  s.peak = 1e-3;
  s.min_lr = 1e-4;
  s.warmup = 10;
  s.decay_steps = 110;
  EXPECT_NEAR(s.At(0), 1e-4, 1e-12);    // 1/10 of peak
  EXPECT_NEAR(s.At(4), 5e-4, 1e-12);    // 5/10
  EXPECT_NEAR(s.At(9), 1e-3, 1e-12);
  EXPECT_NEAR(s.At(10), 1e-3, 1e-12);   // cosine starts at the peak
  EXPECT_NEAR(s.At(60), 5.5e-4, 1e-12); // halfway: min + (peak-min)/2
  EXPECT_NEAR(s.At(110), 1e-4, 1e-12);
  EXPECT_NEAR(s.At(500), 1e-4, 1e-12);
}

TEST(Schedule, StepExponentialConstant) {
  LrSchedule s;
  s.kind = ScheduleKind::kStep;
  s.peak = 1.0;
  s.gamma = 0.5;
  s.step_size = 10;
  EXPECT_DOUBLE_EQ(s.At(9), 1.0);
  EXPECT_DOUBLE_EQ(s.At(10), 0.5);
  EXPECT_DOUBLE_EQ(s.At(25), 0.25);
  s.kind = ScheduleKind::kExponential;
  s.gamma = 0.9;
  EXPECT_NEAR(s.At(2), 0.81, 1e-12);
  s.kind = ScheduleKind::kConstant;
  s.warmup = 4;
  EXPECT_DOUBLE_EQ(s.At(1), 0.5);
  EXPECT_DOUBLE_EQ(s.At(100), 1.0);
}

}  // namespace
}  // namespace ringtrain
