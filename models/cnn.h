// Convolutional classifiers (NCHW): MLP, LeNet-5 and CIFAR-style ResNet (basic blocks), built as a
// small graph of nodes with explicit forward/backward over the same ParamArena as GPT. A node's
// output gradient is accumulated from all its consumers (a residual block's input has two), so
// each backward adds into its input's gradient. BatchNorm running statistics live in the arena as
// parameters that never decay and never receive gradient, so every optimizer leaves them exactly
// unchanged while checkpoints and model files carry them like any weight.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/arena.h"
#include "core/buffer.h"
#include "core/config.h"
#include "core/cpu/conv_ops.h"
#include "models/gpt.h"

namespace ringtrain {

struct CnnConfig {
  std::string arch = "lenet";    // mlp | lenet | resnet
  std::vector<int> hidden;       // mlp hidden sizes
  int depth = 8;                 // resnet: 6n + 2
  int width = 16;                // resnet: channels of the first stage
  int channels = 1, height = 28, width_px = 28, classes = 10;
  bool batch_norm = true;        // resnet
  float bn_momentum = 0.1f;
  float dropout = 0.0f;          // before the final Linear
  std::string loss = "cross_entropy";  // or mse (against one-hot targets)
  static StatusOr<CnnConfig> FromConfig(const Config& c, int channels, int height, int width, int classes);
};

template <typename T>
class Cnn {
 public:
  explicit Cnn(const CnnConfig& cfg);
  const CnnConfig& config() const { return cfg_; }
  ParamArena<T>& arena() { return arena_; }
  const ParamArena<T>& arena() const { return arena_; }
  void InitWeights(uint64_t seed);
  int64_t NumParams() const;  // trainable parameters
  void PlanActivations(int N);
  // images (N,C,H,W), labels (N) (may be null: logits only). Returns the mean loss.
  // row_begin: index of this batch's first image in the global batch (dropout masks per global row).
  double Forward(const T* images, const int32_t* labels, int N, bool train, uint64_t seed = 0, uint64_t key = 0,
                 int64_t row_begin = 0);
  void Backward(T loss_scale, const GradReadyFn& on_ready = nullptr);
  const T* logits() const;  // (N, classes) of the last Forward
  std::string Describe() const;
  // Arena ranges the training forward writes (BatchNorm's running statistics), in order; each
  // layer's two statistics are one range (with the alignment gap between them).
  std::vector<std::pair<size_t, size_t>> StateRanges() const;

  // The graph, in topological order (node 0 is the input); GpuCnn runs the same one.
  enum class Kind { kInput, kConv, kBatchNorm, kRelu, kMaxPool, kAvgPool, kLinear, kAdd, kDropout };
  struct Node {
    Kind kind;
    int in = -1, in2 = -1;       // producer nodes
    int C = 0, H = 0, W = 0;     // output shape per image (Linear: C = features, H = W = 1)
    cpu::ConvShape conv;         // conv (N filled per call)
    int k = 0, stride = 1;       // pooling
    int w = -1, b = -1, rm = -1, rv = -1;  // arena indices
    int consumers = 0;
    int64_t Size() const { return static_cast<int64_t>(C) * H * W; }
    // Activations of the planned batch (host memory here; device memory in GpuCnn's copy).
    T *out = nullptr, *grad = nullptr, *mean = nullptr, *rstd = nullptr;
    int32_t* argmax = nullptr;
    uint8_t* keep = nullptr;
  };
  const std::vector<Node>& nodes() const { return nodes_; }
  // The activation plan for N images, every piece rounded up to `align` elements: PlanSizes
  // gives the element counts (out and grad of every node plus BatchNorm's mean and rstd; the
  // max-pooling indices; the dropout masks; the largest node output), AssignPlan points each
  // node's activation members into buffers of those sizes. Cnn and GpuCnn share the plan.
  struct PlanSizes {
    int64_t acts = 0, argmax = 0, masks = 0, largest = 0;
  };
  static PlanSizes PlanFor(const std::vector<Node>& nodes, int N, int64_t align);
  static void AssignPlan(std::vector<Node>& nodes, int N, int64_t align, T* acts, int32_t* argmax, uint8_t* masks);
  // The arena range of node n's parameters (weight to last of bias / running statistics), which
  // Backward reports to on_ready once their gradients are final; n.w >= 0.
  static std::pair<size_t, size_t> ParamRange(const Node& n, const ParamLayout& layout);

 private:
  int Add(Node n);
  // A parameterless node of `kind` reading `in`, with its producer's output shape.
  Node Follow(int in, Kind kind) const;
  int Conv(int in, int oc, int k, int stride, int pad, bool bias, const std::string& name);
  int Bn(int in, const std::string& name);
  int Relu(int in);
  int Linear(int in, int out, const std::string& name);

  CnnConfig cfg_;
  ParamArena<T> arena_;
  std::vector<Node> nodes_;
  int planN_ = 0, curN_ = 0;
  bool cur_train_ = false;
  AlignedBuffer<T> acts_, scratch_, tmp_;
  AlignedBuffer<int32_t> argmax_;
  AlignedBuffer<uint8_t> masks_;
  std::vector<int32_t> labels_;
  AlignedBuffer<T> losses_;
  std::vector<T> onehot_;
};

}  // namespace ringtrain
