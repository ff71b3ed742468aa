// CNN models on the GPU (models/cnn_gpu.h, device cuda) against the CPU model (Cnn<float>), fp32:
//  - one training forward and backward of an MLP, LeNet-5 (cross-entropy and MSE), ResNet-8 with
//    BatchNorm and ResNet-8 without it but with dropout: the loss and the logits within 1e-5, every
//    parameter gradient tensor within 1e-4 of its largest magnitude, BatchNorm's running statistics
//    after the forward within 1e-5, and the ranges backward reports ready, in the same order;
//  - through the trainer: steps with device cuda (SGD with momentum and weight decay; optimizer on
//    the device and on the host; with dropout) equal device cpu within 1e-4 relative, and the
//    evaluation's loss and accuracy agree;
//  - the device optimizer's SGD and Adam with the L1/L2 penalties equal the CPU optimizer;
//  - activations come from the device's caching allocator and are reused by the next model.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "core/caching_allocator.h"
#include "core/cuda/memory.h"
#include "models/cnn.h"
#include "models/cnn_gpu.h"
#include "models/optim.h"
#include "tests/gpu/gpu_test_util.h"

namespace ringtrain {
namespace {

using testing::Dev;
using testing::ExpectClose;
using testing::ExpectTensorsClose;
using testing::MakeTrainer;
using testing::Random;

struct CnnCase {
  const char* name;
  CnnConfig cfg;
  int N;
};
void PrintTo(const CnnCase& c, std::ostream* os) { *os << c.name; }

CnnConfig ImageModel(const std::string& arch, int channels, int size, int classes) {
  CnnConfig c;
  c.arch = arch;
  c.channels = channels;
  c.height = c.width_px = size;
  c.classes = classes;
  return c;
}

std::vector<CnnCase> Cases() {
  std::vector<CnnCase> v;
  CnnConfig mlp = ImageModel("mlp", 1, 12, 10);
  mlp.hidden = {32, 16};
  v.push_back({"mlp", mlp, 5});
  v.push_back({"lenet", ImageModel("lenet", 1, 28, 10), 4});
  CnnConfig mse = ImageModel("lenet", 2, 16, 7);
  mse.loss = "mse";
  v.push_back({"lenet_mse", mse, 3});
  CnnConfig res = ImageModel("resnet", 3, 16, 10);
  res.depth = 8;
  res.width = 4;
  v.push_back({"resnet8_bn", res, 6});
  CnnConfig drop = ImageModel("resnet", 3, 8, 5);
  drop.depth = 8;
  drop.width = 4;
  drop.batch_norm = false;
  drop.dropout = 0.3f;
  v.push_back({"resnet8_dropout", drop, 4});
  return v;
}

class GpuCnnModel : public ::testing::TestWithParam<CnnCase> {};

TEST_P(GpuCnnModel, ForwardBackwardEqualsCpu) {
  SKIP_WITHOUT_GPU();
  const CnnCase& tc = GetParam();
  const CnnConfig& cfg = tc.cfg;
  Cnn<float> cpu(cfg);
  cpu.InitWeights(7);
  auto gpu = GpuCnn::Create(cpu, 0);
  ASSERT_TRUE(gpu.ok()) << gpu.status().message();
  GpuCnn& g = **gpu;
  ASSERT_EQ(g.layout().total(), cpu.arena().layout.total());
  ASSERT_TRUE(g.arena().UploadParams(cpu.arena().params.data()).ok());
  ASSERT_TRUE(g.arena().Synchronize().ok());  // the CPU forward below moves the running statistics
  const int N = tc.N;
  const std::vector<float> images = Random(static_cast<size_t>(N) * cfg.channels * cfg.height * cfg.width_px, 11);
  std::vector<int32_t> labels(static_cast<size_t>(N));
  for (int i = 0; i < N; ++i) labels[static_cast<size_t>(i)] = (i * 7 + 3) % cfg.classes;
  // A data-parallel rank's rows (dropout masks are keyed by global row).
  const uint64_t seed = 5, key = 2;
  const int64_t row_begin = 3;
  const double want = cpu.Forward(images.data(), labels.data(), N, true, seed, key, row_begin);
  auto got = g.Forward(images.data(), labels.data(), N, true, seed, key, row_begin);
  ASSERT_TRUE(got.ok()) << got.status().message();
  EXPECT_NEAR(*got, want, 1e-5 * std::fabs(want)) << "loss";
  std::vector<float> logits(static_cast<size_t>(N) * cfg.classes);
  ASSERT_TRUE(g.DownloadLogits(logits.data()).ok());
  ExpectClose(logits, std::vector<float>(cpu.logits(), cpu.logits() + logits.size()), "logits");

  std::vector<std::pair<size_t, size_t>> cpu_ranges, gpu_ranges;
  cpu.Backward(0.5f, [&](size_t b, size_t e) { cpu_ranges.emplace_back(b, e); });
  ASSERT_TRUE(g.Backward(0.5f, [&](size_t b, size_t e) { gpu_ranges.emplace_back(b, e); }).ok());
  EXPECT_EQ(gpu_ranges, cpu_ranges);
  EXPECT_FALSE(cpu_ranges.empty());
  const size_t n = cpu.arena().layout.total();
  std::vector<float> grads(n), params(n);
  ASSERT_TRUE(g.arena().DownloadGrads(grads.data()).ok());
  ExpectTensorsClose(cpu.arena().layout, grads.data(), cpu.arena().grads.data(), 1e-4, "gradient");
  // The gradients are not all zero (the comparison above is not between two empty vectors).
  EXPECT_GT(*std::max_element(grads.begin(), grads.end()), 0.f);
  // BatchNorm's running statistics moved on both, to the same values.
  ASSERT_TRUE(g.arena().DownloadParams(params.data()).ok());
  const auto state = cpu.StateRanges();
  EXPECT_EQ(state.empty(), !(cfg.arch == "resnet" && cfg.batch_norm));
  for (const auto& [b, e] : state)
    ExpectClose(std::vector<float>(params.begin() + static_cast<long>(b), params.begin() + static_cast<long>(e)),
                std::vector<float>(cpu.arena().params.data() + b, cpu.arena().params.data() + e),
                "BatchNorm running statistics");

  // Evaluation mode: running statistics, no dropout.
  const double want_eval = cpu.Forward(images.data(), labels.data(), N, false);
  auto got_eval = g.Forward(images.data(), labels.data(), N, false);
  ASSERT_TRUE(got_eval.ok()) << got_eval.status().message();
  EXPECT_NEAR(*got_eval, want_eval, 1e-5 * std::fabs(want_eval)) << "evaluation loss";
}

INSTANTIATE_TEST_SUITE_P(Archs, GpuCnnModel, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<CnnCase>& i) { return std::string(i.param.name); });

std::vector<std::string> CnnSets(const std::string& device) {
  return {"device=" + device,       "threads=1",
          "model.type=resnet",      "model.depth=8",
          "model.width=4",          "data.source=synthetic_images",
          "data.synthetic.channels=3", "data.synthetic.train_images=200",
          "data.synthetic.test_images=50", "train.batch_size=8",
          "optim.name=sgd",         "optim.momentum=0.9",
          "optim.lr=0.05",          "optim.weight_decay=5e-4",
          "optim.grad_clip=1.0",    "schedule.warmup=2",
          "train.eval_interval=1000000"};
}

// Issue 10 acceptance 2 for the CNN: steps through the trainer on the GPU equal the CPU's.
TEST(GpuCnnTrainer, StepsEqualCpu) {
  SKIP_WITHOUT_GPU();
  for (const std::vector<std::string>& extra :
       {std::vector<std::string>{}, std::vector<std::string>{"optim.on_device=off"},
        std::vector<std::string>{"model.batch_norm=false", "model.dropout=0.2"},
        std::vector<std::string>{"model.type=lenet", "data.synthetic.image_size=28", "optim.name=adamw",
                                 "optim.lr=1e-3"}}) {
    const std::string what = extra.empty() ? std::string("resnet-8") : extra[0];
    std::vector<float> params[2];
    double eval_loss[2] = {0, 0}, accuracy[2] = {0, 0};
    const int steps = 3;
    for (int k = 0; k < 2; ++k) {
      auto sets = CnnSets(k == 0 ? "cpu" : "cuda");
      sets.insert(sets.end(), extra.begin(), extra.end());
      auto t = MakeTrainer(sets);
      ASSERT_TRUE(t.ok()) << what << ": " << t.status().message();
      if (k == 1) {
        EXPECT_EQ((*t)->optimizer_on_device(), extra.empty() || extra[0] != "optim.on_device=off") << what;
      }
      for (int s = 0; s < steps; ++s) {
        auto l = (*t)->Step(s);
        ASSERT_TRUE(l.ok()) << what << " step " << s + 1 << ": " << l.status().message();
      }
      auto p = (*t)->FullParams();
      ASSERT_TRUE(p.ok()) << p.status().message();
      params[k] = std::move(*p);
      auto ev = (*t)->Evaluate();
      ASSERT_TRUE(ev.ok()) << ev.status().message();
      eval_loss[k] = ev->loss;
      accuracy[k] = ev->metrics.value("accuracy", -1.0);
    }
    ASSERT_EQ(params[0].size(), params[1].size());
    // Adam's g/sqrt(v) turns rounding-level gradient differences into steps of size lr: its
    // parameters are compared to lr, SGD's to 1e-4 of each parameter's size.
    const bool adam = std::find(extra.begin(), extra.end(), "optim.name=adamw") != extra.end();
    double worst = 0;
    for (size_t i = 0; i < params[0].size(); ++i) {
      const double d = std::fabs(static_cast<double>(params[1][i]) - params[0][i]);
      worst = std::max(worst, adam ? d / 1e-3 : d / std::max(1e-2, std::fabs(static_cast<double>(params[0][i]))));
    }
    EXPECT_LE(worst, adam ? 0.1 : 1e-4) << what << ": parameters after " << steps << " steps, cuda vs cpu";
    EXPECT_NEAR(eval_loss[1], eval_loss[0], 1e-4 * std::fabs(eval_loss[0])) << what << ": evaluation loss";
    EXPECT_NEAR(accuracy[1], accuracy[0], 0.021) << what << ": accuracy (50 images: one may flip)";
    EXPECT_GE(accuracy[0], 0.0) << what << ": no accuracy in the evaluation metrics";
  }
}

// The device optimizer's SGD (momentum, nesterov) and Adam/AdamW with the L1 and L2 penalties on
// part of the arena equal the CPU optimizer, through DeviceArena::OptimizerStep.
TEST(GpuDeviceArena, OptimizerStepEqualsCpu) {
  SKIP_WITHOUT_GPU();
  const size_t n = 20011;
  const std::vector<std::pair<size_t, size_t>> decay = {{100, 9000}, {12000, 20000}};
  struct Kind {
    OptimKind kind;
    double momentum;
    bool nesterov;
  };
  for (Kind k : {Kind{OptimKind::kSgd, 0, false}, Kind{OptimKind::kSgd, 0.9, false}, Kind{OptimKind::kSgd, 0.9, true},
                 Kind{OptimKind::kAdam, 0, false}, Kind{OptimKind::kAdamW, 0, false}}) {
    OptimConfig oc;
    oc.kind = k.kind;
    oc.momentum = k.momentum;
    oc.nesterov = k.nesterov;
    oc.lr = 3e-2;
    oc.weight_decay = 0.1;
    oc.l1 = 1e-3;
    oc.l2 = 1e-2;
    const std::string what = std::string(k.kind == OptimKind::kSgd ? "sgd" : k.kind == OptimKind::kAdam ? "adam" : "adamw") +
                             (k.momentum > 0 ? " momentum" : "") + (k.nesterov ? " nesterov" : "");
    std::vector<float> p = Random(n, 60), g = Random(n, 61);
    OptimState st;
    st.Allocate(oc, n);
    if (st.m.size()) std::fill(st.m.data(), st.m.data() + n, 0.f);
    if (st.v.size()) std::fill(st.v.data(), st.v.data() + n, 0.f);
    auto dev = DeviceArena::Create(n, 0);
    ASSERT_TRUE(dev.ok()) << dev.status().message();
    DeviceArena& d = **dev;
    ASSERT_TRUE(d.StartOptimizer(oc, p.data(), nullptr, nullptr).ok());
    EXPECT_EQ(d.has_m(), st.m.size() == n) << what;
    EXPECT_EQ(d.has_v(), st.v.size() == n) << what;
    ASSERT_EQ(cudaMemcpyAsync(d.grads(), g.data(), n * sizeof(float), cudaMemcpyHostToDevice, d.stream()), cudaSuccess);
    ASSERT_TRUE(d.Synchronize().ok());
    for (int64_t t = 1; t <= 3; ++t) {
      OptimizerUpdate(oc, oc.lr, t, 0.5f, p.data(), g.data(), st, 0, n, decay);
      ASSERT_TRUE(d.OptimizerStep(oc, oc.lr, t, 0.5f, decay).ok()) << what;
    }
    std::vector<float> got(n), m(n), v(n);
    ASSERT_TRUE(d.DownloadParams(got.data()).ok());
    ExpectClose(got, p, what.c_str());
    ASSERT_TRUE(d.DownloadMoments(d.has_m() ? m.data() : nullptr, d.has_v() ? v.data() : nullptr).ok());
    if (d.has_m()) ExpectClose(m, std::vector<float>(st.m.data(), st.m.data() + n), (what + " m").c_str());
    if (d.has_v()) ExpectClose(v, std::vector<float>(st.v.data(), st.v.data() + n), (what + " v").c_str());
  }
}

// Activations come from the device's caching allocator: a second model of the same shape gets the
// first one's blocks back (no cudaMalloc), and a request larger than the device is one clear error.
TEST(GpuDeviceCache, ModelsReuseActivationBlocks) {
  SKIP_WITHOUT_GPU();
  Cnn<float> cpu(ImageModel("lenet", 1, 28, 10));
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  CachingAllocator& cache = cuda::DeviceCache(0);
  {
    auto g = GpuCnn::Create(cpu, 0);
    ASSERT_TRUE(g.ok()) << g.status().message();
    ASSERT_TRUE((*g)->PlanActivations(32).ok());
  }
  const CachingAllocator::Stats before = cache.stats();
  EXPECT_GT(before.cached_bytes, 0u) << "the first model's activations did not go back to the cache";
  {
    auto g = GpuCnn::Create(cpu, 0);
    ASSERT_TRUE(g.ok()) << g.status().message();
    ASSERT_TRUE((*g)->PlanActivations(32).ok());
    const CachingAllocator::Stats during = cache.stats();
    EXPECT_EQ(during.backend_allocs, before.backend_allocs) << "the second model's activations were not reused";
    EXPECT_GT(during.hits, before.hits);
  }
  cuda::DeviceBuffer<float> huge;
  const Status st = huge.AllocateCached(size_t{1} << 42, "a test buffer");  // 16 TiB
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("out of memory"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("a test buffer"), std::string::npos) << st.message();
}

// Without a GPU, device cuda for a CNN is one clear error (this case runs on machines without one).
TEST(GpuCnnTrainer, NoGpuIsOneClearError) {
  if (testing::HaveGpu()) GTEST_SKIP() << "this machine has a GPU; the no-GPU error path cannot be reached";
  auto t = MakeTrainer(CnnSets("cuda"));
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("device cuda: no CUDA device"), std::string::npos) << t.status().message();
  EXPECT_EQ(t.status().message().find('\n'), std::string::npos) << t.status().message();
}

}  // namespace
}  // namespace ringtrain
