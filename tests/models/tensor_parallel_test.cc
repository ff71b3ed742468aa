// Tensor parallelism at the model level (issue 7, acceptance 1 and 3): a GPT split over T
// in-process ranks, loaded with the same parameters as a whole model (not re-drawn), gives the
// same loss and gradients as the whole model after one step and the same parameters after 20; the
// vocabulary-parallel cross-entropy equals the full one with a vocabulary T does not divide.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <string>
#include <vector>

#include "core/rng.h"
#include "models/gpt.h"
#include "models/optim.h"
#include "models/tensor_parallel.h"
#include "tests/util/run_ranks.h"

namespace ringtrain {
namespace {

// --- vocabulary-parallel cross-entropy ---------------------------------------------------------

class VocabParallelCe : public ::testing::TestWithParam<int> {};

TEST_P(VocabParallelCe, EqualsTheFullCrossEntropy) {
  const int T = GetParam(), N = 9, V = 10;  // 10 = 3*3+1 = 4*2+2: uneven parts
  Rng rng(7, RngPurpose::kInit, 1);
  std::vector<double> logits(static_cast<size_t>(N) * V);
  for (double& x : logits) x = rng.Normal() * 3.0;
  std::vector<int32_t> targets(static_cast<size_t>(N));
  for (int n = 0; n < N; ++n) targets[static_cast<size_t>(n)] = (n * 7 + 3) % V;
  targets[4] = -1;  // ignored position
  targets[5] = V - 1;  // the last (smallest) part
  const double scale = 0.37;
  std::vector<double> losses(static_cast<size_t>(N)), dlogits(logits.size());
  const double want_sum = cpu::SoftmaxCrossEntropy<double>(losses.data(), dlogits.data(), logits.data(), targets.data(),
                                                           N, V, scale);

  std::vector<double> got_dlogits(logits.size(), -99.0);
  std::vector<double> sums(static_cast<size_t>(T));
  std::vector<std::vector<double>> got_losses(static_cast<size_t>(T));
  auto st = testing::RunRanks(T, [&](coll::Communicator& comm) -> Status {
    TpGroup tp(&comm);
    const auto [vb, vl] = SplitRange(V, comm.rank(), T);
    std::vector<double> local(static_cast<size_t>(N * vl));
    for (int n = 0; n < N; ++n)
      for (int v = 0; v < vl; ++v)
        local[static_cast<size_t>(n * vl + v)] = logits[static_cast<size_t>(n * V + vb + v)];
    std::vector<double> l(static_cast<size_t>(N)), mx(static_cast<size_t>(N)), sm(static_cast<size_t>(N));
    const double sum = VocabParallelCrossEntropy<double>(l.data(), mx.data(), sm.data(), local.data(), targets.data(),
                                                         N, static_cast<int>(vl), vb, tp);
    RT_RETURN_IF_ERROR(tp.status());
    VocabParallelCrossEntropyBackward<double>(local.data(), local.data(), mx.data(), sm.data(), targets.data(), N,
                                              static_cast<int>(vl), vb, scale);
    for (int n = 0; n < N; ++n)
      for (int v = 0; v < vl; ++v)
        got_dlogits[static_cast<size_t>(n * V + vb + v)] = local[static_cast<size_t>(n * vl + v)];
    sums[static_cast<size_t>(comm.rank())] = sum;
    got_losses[static_cast<size_t>(comm.rank())] = l;
    // Three all-reduces of N values, never N*V.
    if (tp.calls() != 2 || tp.bytes() != 3 * N * sizeof(double))
      return Internal("expected 2 all-reduces of 3N values, got " + std::to_string(tp.calls()) + " calls, " +
                      std::to_string(tp.bytes()) + " bytes");
    return Status::Ok();
  });
  for (const Status& s : st) ASSERT_TRUE(s.ok()) << s.message();
  for (int r = 0; r < T; ++r) {
    EXPECT_NEAR(sums[static_cast<size_t>(r)], want_sum, 1e-12 * std::fabs(want_sum)) << "rank " << r;
    for (int n = 0; n < N; ++n)
      EXPECT_NEAR(got_losses[static_cast<size_t>(r)][static_cast<size_t>(n)], losses[static_cast<size_t>(n)], 1e-12)
          << "rank " << r << " row " << n;
  }
  for (size_t i = 0; i < dlogits.size(); ++i) EXPECT_NEAR(got_dlogits[i], dlogits[i], 1e-14) << "element " << i;
}

INSTANTIATE_TEST_SUITE_P(Degrees, VocabParallelCe, ::testing::Values(2, 3, 4));

TEST(SplitRange, CoversEveryItemOnce) {
  for (int n : {10, 65, 50257})
    for (int t : {1, 2, 3, 4, 8}) {
      int64_t next = 0;
      for (int r = 0; r < t; ++r) {
        const auto [b, c] = SplitRange(n, r, t);
        EXPECT_EQ(b, next);
        EXPECT_GE(c, n / t);
        EXPECT_LE(c, n / t + 1);
        next = b + c;
      }
      EXPECT_EQ(next, n);
    }
}

// --- the GPT split over T ranks ------------------------------------------------------------------

GptConfig SmallGpt(float dropout) {
  GptConfig g;
  g.n_layer = 2;
  g.n_head = 4;
  g.n_embd = 32;
  g.block_size = 16;
  g.vocab_size = 67;  // prime: no T > 1 divides it
  g.dropout = dropout;
  g.bias = true;
  return g;
}

// Whole-model initial parameters with every tensor perturbed (biases and LayerNorms too), so no
// gradient is trivially zero or one.
std::vector<float> InitialParams(const GptConfig& g) {
  Gpt<float> m(g);
  m.InitWeights(11);
  Rng rng(11, RngPurpose::kInit, 99);
  for (size_t i = 0; i < m.arena().layout.total(); ++i) m.arena().params[i] += static_cast<float>(rng.Normal() * 0.05);
  return std::vector<float>(m.arena().params.data(), m.arena().params.data() + m.arena().layout.total());
}

void Batch(int step, int B, int Tn, int V, std::vector<int32_t>* tok, std::vector<int32_t>* tgt) {
  Rng rng(5, RngPurpose::kData, static_cast<uint64_t>(step));
  tok->resize(static_cast<size_t>(B) * Tn);
  tgt->resize(tok->size());
  for (size_t i = 0; i < tok->size(); ++i) {
    (*tok)[i] = static_cast<int32_t>(rng.Next() % static_cast<uint64_t>(V));
    (*tgt)[i] = static_cast<int32_t>(rng.Next() % static_cast<uint64_t>(V));
  }
  (*tgt)[3] = -1;
}

// max |a - b| / max |b| over each tensor of the layout; the worst tensor's figure and name.
std::pair<double, std::string> WorstTensor(const ParamLayout& L, const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0;
  std::string name;
  for (const ParamSpec& s : L.specs()) {
    double d = 0, m = 0;
    for (int64_t i = 0; i < s.numel; ++i) {
      const size_t k = s.offset + static_cast<size_t>(i);
      d = std::max(d, std::fabs(static_cast<double>(a[k]) - b[k]));
      m = std::max(m, std::fabs(static_cast<double>(b[k])));
    }
    const double rel = m > 0 ? d / m : d;
    if (rel > worst) {
      worst = rel;
      name = s.name;
    }
  }
  return {worst, name};
}

struct TpCase {
  int T;
  float dropout;
};

class TensorParallelGpt : public ::testing::TestWithParam<TpCase> {};

// One forward and backward: the loss and every gradient (gathered) equal the whole model's.
TEST_P(TensorParallelGpt, OneStepEqualsTheWholeModel) {
  const TpCase c = GetParam();
  const GptConfig g = SmallGpt(c.dropout);
  const int B = 3, Tn = 16;
  const std::vector<float> init = InitialParams(g);
  std::vector<int32_t> tok, tgt;
  Batch(0, B, Tn, g.vocab_size, &tok, &tgt);

  Gpt<float> ref(g);
  std::copy(init.begin(), init.end(), ref.arena().params.data());
  ref.arena().grads.Zero();
  const double want_loss = ref.Forward(tok.data(), tgt.data(), B, Tn, true, 3, 0, 0);
  ref.Backward(1.0f);
  const ParamLayout& FL = ref.arena().layout;
  const std::vector<float> want(ref.arena().grads.data(), ref.arena().grads.data() + FL.total());

  std::vector<double> losses(static_cast<size_t>(c.T));
  std::vector<std::vector<float>> grads(static_cast<size_t>(c.T)), replicated(static_cast<size_t>(c.T));
  auto st = testing::RunRanks(c.T, [&](coll::Communicator& comm) -> Status {
    Gpt<float> m(g, &comm);
    ParamArena<float>& A = m.arena();
    ScatterFull(FL, init.data(), A.layout, A.params.data());  // loaded, not re-drawn
    A.grads.Zero();
    const double loss = m.Forward(tok.data(), tgt.data(), B, Tn, true, 3, 0, 0);
    RT_RETURN_IF_ERROR(m.tp_status());
    m.Backward(1.0f);
    RT_RETURN_IF_ERROR(m.tp_status());
    const size_t r = static_cast<size_t>(comm.rank());
    losses[r] = loss;
    for (const ParamSpec& s : A.layout.specs())
      if (!s.sharded()) replicated[r].insert(replicated[r].end(), A.grads.data() + s.offset,
                                             A.grads.data() + s.offset + s.numel);
    return GatherFull(A.layout, A.grads.data(), FL, &comm, &grads[r]);
  });
  for (const Status& s : st) ASSERT_TRUE(s.ok()) << s.message();
  for (int r = 0; r < c.T; ++r) {
    EXPECT_NEAR(losses[static_cast<size_t>(r)], want_loss, 1e-5 * want_loss) << "rank " << r;
    EXPECT_TRUE(grads[static_cast<size_t>(r)] == grads[0]) << "rank " << r << " gathered different gradients";
    EXPECT_TRUE(replicated[static_cast<size_t>(r)] == replicated[0])
        << "replicated tensors' gradients differ between TP rank " << r << " and 0";
  }
  const auto [worst, name] = WorstTensor(FL, grads[0], want);
  EXPECT_LE(worst, 1e-5) << "gradient of " << name;
  std::printf("  T=%d dropout %.1f: loss %.6f vs %.6f, worst gradient tensor %s at %.3g relative\n", c.T, c.dropout,
              losses[0], want_loss, name.c_str(), worst);
}

// 20 optimizer steps (SGD with momentum and weight decay; see data_parallel_test.cc on why not
// Adam for an exactness test): the parameters stay equal to the whole model's.
TEST_P(TensorParallelGpt, TwentyStepsEqualTheWholeModel) {
  const TpCase c = GetParam();
  const GptConfig g = SmallGpt(c.dropout);
  const int B = 2, Tn = 16, kSteps = 20;
  const std::vector<float> init = InitialParams(g);
  OptimConfig oc;
  oc.kind = OptimKind::kSgd;
  oc.lr = 0.1f;
  oc.momentum = 0.9f;
  oc.weight_decay = 0.01f;
  // The whole model and each part run the same loop; the parts' replicated tensors get identical
  // gradients, so identical updates.
  auto train = [&](Gpt<float>& m) -> Status {
    ParamArena<float>& A = m.arena();
    OptimState os;
    os.Allocate(oc, A.layout.total(), 0);
    const auto decay = A.layout.DecayRanges();
    std::vector<int32_t> tok, tgt;
    for (int s = 0; s < kSteps; ++s) {
      Batch(s, B, Tn, g.vocab_size, &tok, &tgt);
      A.grads.Zero();
      m.Forward(tok.data(), tgt.data(), B, Tn, true, 3, static_cast<uint64_t>(s), 0);
      RT_RETURN_IF_ERROR(m.tp_status());
      m.Backward(1.0f);
      RT_RETURN_IF_ERROR(m.tp_status());
      OptimizerUpdate(oc, oc.lr, s + 1, 1.0f, A.params.data(), A.grads.data(), os, 0, A.layout.total(), decay);
    }
    return Status::Ok();
  };
  Gpt<float> ref(g);
  std::copy(init.begin(), init.end(), ref.arena().params.data());
  ASSERT_TRUE(train(ref).ok());
  const ParamLayout& FL = ref.arena().layout;
  const std::vector<float> want(ref.arena().params.data(), ref.arena().params.data() + FL.total());

  std::vector<std::vector<float>> got(static_cast<size_t>(c.T));
  auto st = testing::RunRanks(c.T, [&](coll::Communicator& comm) -> Status {
    Gpt<float> m(g, &comm);
    ScatterFull(FL, init.data(), m.arena().layout, m.arena().params.data());
    RT_RETURN_IF_ERROR(train(m));
    return GatherFull(m.arena().layout, m.arena().params.data(), FL, &comm, &got[static_cast<size_t>(comm.rank())]);
  });
  for (const Status& s : st) ASSERT_TRUE(s.ok()) << s.message();
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i)
    worst = std::max(worst, std::fabs(static_cast<double>(got[0][i]) - want[i]));
  EXPECT_LE(worst, 1e-5) << "largest parameter difference after " << kSteps << " steps";
  // And training moved them: the comparison is not of two untouched copies.
  double moved = 0;
  for (size_t i = 0; i < want.size(); ++i) moved = std::max(moved, std::fabs(static_cast<double>(want[i]) - init[i]));
  EXPECT_GT(moved, 1e-2);
  std::printf("  T=%d dropout %.1f: after %d steps the largest parameter difference is %.3g (moved up to %.3g)\n", c.T,
              c.dropout, kSteps, worst, moved);
}

INSTANTIATE_TEST_SUITE_P(Degrees, TensorParallelGpt,
                         ::testing::Values(TpCase{2, 0.0f}, TpCase{4, 0.0f}, TpCase{2, 0.1f}, TpCase{4, 0.1f}),
                         [](const ::testing::TestParamInfo<TpCase>& i) {
                           return "T" + std::to_string(i.param.T) + (i.param.dropout > 0 ? "_dropout" : "");
                         });

// The parts' layouts tile every tensor exactly once (sharded) or copy it (replicated), and the
// initial values equal the whole model's (drawn from the whole tensor's stream).
TEST(TensorParallelGpt, PartsTileTheWholeModelAndInitialiseLikeIt) {
  const GptConfig g = SmallGpt(0.0f);
  Gpt<float> whole(g);
  whole.InitWeights(3);
  const ParamLayout& FL = whole.arena().layout;
  for (int T : {2, 4}) {
    std::vector<int> count(FL.total(), 0);
    for (int r = 0; r < T; ++r) {
      const ParamLayout L = Gpt<float>::LayoutFor(g, r, T);
      ASSERT_EQ(L.specs().size(), FL.specs().size());
      ParamArena<float> part;
      part.layout = L;
      part.Allocate();
      part.Initialize(3);
      for (const ParamSpec& s : L.specs()) {
        const ParamSpec& f = FL.spec(FL.Find(s.name));
        ASSERT_EQ(s.global_shape, f.shape) << s.name;
        std::vector<float> mine(static_cast<size_t>(s.numel)), expect(static_cast<size_t>(s.numel));
        std::copy(part.params.data() + s.offset, part.params.data() + s.offset + s.numel, mine.begin());
        GlobalToLocal(s, whole.arena().params.data() + f.offset, expect.data());
        EXPECT_TRUE(mine == expect) << s.name << " part " << r << " of " << T << " initialised differently";
        // Mark the elements this part covers.
        std::vector<float> ones(static_cast<size_t>(s.numel), 1.f), g_mark(static_cast<size_t>(f.numel), 0.f);
        LocalToGlobal(s, ones.data(), g_mark.data());
        for (int64_t i = 0; i < f.numel; ++i)
          if (g_mark[static_cast<size_t>(i)] != 0) ++count[f.offset + static_cast<size_t>(i)];
      }
    }
    for (const ParamSpec& f : FL.specs()) {
      const bool split = Gpt<float>::LayoutFor(g, 0, T).spec(FL.Find(f.name)).sharded();
      for (int64_t i = 0; i < f.numel; ++i)
        ASSERT_EQ(count[f.offset + static_cast<size_t>(i)], split ? 1 : T) << f.name << " element " << i << " T=" << T;
    }
  }
}

}  // namespace
}  // namespace ringtrain
