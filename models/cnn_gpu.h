// A convolutional classifier (models/cnn.h: MLP, LeNet-5, ResNet) on one CUDA device, fp32: the
// host model's graph, parameter layout and formulas, so its arena copies onto the device as one
// block and back, and Cnn<float> is the reference the GPU tests compare against. Activations are
// planned once per batch size (no allocation inside a step); convolutions are im2col + SGEMM
// (core/cuda/conv_ops.h); every kernel runs on the arena's stream. BatchNorm's running statistics
// are parameters the training forward updates in place on the device, as the CPU model does in
// its arena; dropout draws the CPU model's masks bit for bit.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/cuda/memory.h"
#include "core/cuda/ops.h"
#include "models/cnn.h"
#include "models/device_arena.h"

namespace ringtrain {

class GpuCnn {
 public:
  // The graph and layout of `host` (which may go away afterwards) on visible device local_rank
  // mod (number of visible devices). Fails with one line when there is no device.
  static StatusOr<std::unique_ptr<GpuCnn>> Create(const Cnn<float>& host, int local_rank);
  ~GpuCnn();
  GpuCnn(const GpuCnn&) = delete;
  GpuCnn& operator=(const GpuCnn&) = delete;

  const ParamLayout& layout() const { return layout_; }
  DeviceArena& arena() { return *arena_; }
  std::string DeviceName() const { return arena_->DeviceName(); }

  // Plans device activation memory for up to N images (idempotent when it fits).
  Status PlanActivations(int N);
  // images (N,C,H,W) and labels (N) (may be null: logits only) on the host; Cnn<float>::Forward's
  // other arguments. Returns the mean loss (0 without labels). Waits for the device.
  StatusOr<double> Forward(const float* images, const int32_t* labels, int N, bool train, uint64_t seed = 0,
                           uint64_t key = 0, int64_t row_begin = 0);
  // Backward of (loss_scale * mean loss) of the last Forward with labels: parameter gradients
  // accumulate into the device gradients. Enqueued; on_ready(begin, end) as GpuGpt::Backward's,
  // for each layer's parameters once their kernels are enqueued (Cnn<float>'s ranges).
  Status Backward(float loss_scale, const GradReadyFn& on_ready = nullptr);
  // The (N, classes) logits of the last Forward into host memory. Waits.
  Status DownloadLogits(float* host);
  Status Synchronize() { return arena_->Synchronize("CNN step on the device"); }

 private:
  using Node = Cnn<float>::Node;
  using Kind = Cnn<float>::Kind;
  explicit GpuCnn(const Cnn<float>& host) : cfg_(host.config()), nodes_(host.nodes()), layout_(host.arena().layout) {}
  float* P(int i) { return i >= 0 ? arena_->params() + layout_.spec(i).offset : nullptr; }
  float* G(int i) { return i >= 0 ? arena_->grads() + layout_.spec(i).offset : nullptr; }

  CnnConfig cfg_;
  std::vector<Node> nodes_;  // the host graph, activation pointers into the device plan below
  ParamLayout layout_;
  // Declared before the cuBLAS handle, which is bound to its stream: destroyed after it.
  std::unique_ptr<DeviceArena> arena_;
  cudaStream_t stream_ = nullptr;  // arena_->stream()
  std::unique_ptr<gpu::Blas> blas_;

  int planN_ = 0, curN_ = 0;
  bool have_labels_ = false;
  cuda::DeviceBuffer<float> acts_, scratch_, tmp_, losses_, onehot_;
  cuda::DeviceBuffer<int32_t> argmax_, labels_;
  cuda::DeviceBuffer<uint8_t> masks_;
  cuda::DeviceBuffer<double> mse_;  // MSE: the sum of squares, then MseLoss's scratch
  std::vector<float> host_losses_, host_onehot_;
};

}  // namespace ringtrain
