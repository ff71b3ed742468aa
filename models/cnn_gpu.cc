#include "models/cnn_gpu.h"

#include <algorithm>

#include "core/cuda/conv_ops.h"

namespace ringtrain {

StatusOr<std::unique_ptr<GpuCnn>> GpuCnn::Create(const Cnn<float>& host, int local_rank) {
  std::unique_ptr<GpuCnn> g(new GpuCnn(host));
  RT_ASSIGN_OR_RETURN(g->arena_, DeviceArena::Create(g->layout_.total(), local_rank));
  g->stream_ = g->arena_->stream();
  RT_ASSIGN_OR_RETURN(gpu::Blas blas, gpu::Blas::Create(g->stream_));
  g->blas_ = std::make_unique<gpu::Blas>(std::move(blas));
  return g;
}

GpuCnn::~GpuCnn() {
  // Kernels still queued may read what is freed below.
  if (arena_) (void)arena_->Synchronize();
}

Status GpuCnn::PlanActivations(int N) {
  if (N <= planN_) return Status::Ok();
  // The old plan goes back to the device's cache: nothing queued may still use it.
  RT_RETURN_IF_ERROR(Synchronize());
  RT_RETURN_IF_ERROR(arena_->SetDevice());
  planN_ = 0;  // no plan until the one below is complete (a failed one is redone)
  const int64_t kAlign = 64;  // 256-byte aligned pieces
  const Cnn<float>::PlanSizes sizes = Cnn<float>::PlanFor(nodes_, N, kAlign);
  int64_t scratch = 0;
  for (const Node& n : nodes_) {
    if (n.kind != Kind::kConv) continue;
    gpu::ConvShape s = n.conv;
    s.N = N;
    scratch = std::max(scratch, gpu::Conv2dScratchFloats(s));
  }
  const int64_t outputs = static_cast<int64_t>(N) * cfg_.classes;
  RT_RETURN_IF_ERROR(acts_.AllocateCached(static_cast<size_t>(sizes.acts), "CNN activations"));
  RT_RETURN_IF_ERROR(argmax_.AllocateCached(static_cast<size_t>(sizes.argmax), "max-pooling indices"));
  RT_RETURN_IF_ERROR(masks_.AllocateCached(static_cast<size_t>(sizes.masks), "dropout masks"));
  RT_RETURN_IF_ERROR(scratch_.AllocateCached(static_cast<size_t>(scratch), "convolution scratch"));
  RT_RETURN_IF_ERROR(tmp_.AllocateCached(static_cast<size_t>(sizes.largest), "gradient scratch"));
  RT_RETURN_IF_ERROR(losses_.AllocateCached(static_cast<size_t>(N), "losses"));
  RT_RETURN_IF_ERROR(labels_.AllocateCached(static_cast<size_t>(N), "labels"));
  if (cfg_.loss == "mse") {
    RT_RETURN_IF_ERROR(onehot_.AllocateCached(static_cast<size_t>(outputs), "one-hot targets"));
    RT_RETURN_IF_ERROR(mse_.AllocateCached(1 + (gpu::MseScratchBytes(outputs) + 7) / 8, "MSE scratch"));
  }
  Cnn<float>::AssignPlan(nodes_, N, kAlign, acts_.data(), argmax_.data(), masks_.data());
  planN_ = N;
  host_losses_.resize(static_cast<size_t>(N));
  return Status::Ok();
}

StatusOr<double> GpuCnn::Forward(const float* images, const int32_t* labels, int N, bool train, uint64_t seed,
                                 uint64_t key, int64_t row_begin) {
  RT_RETURN_IF_ERROR(PlanActivations(N));
  curN_ = N;
  have_labels_ = false;
  RT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(nodes_[0].out, images, sizeof(float) * static_cast<size_t>(N * nodes_[0].Size()),
                                          cudaMemcpyHostToDevice, stream_),
                          "copying images to the device");
  for (size_t i = 1; i < nodes_.size(); ++i) {
    Node& n = nodes_[i];
    const Node& in = nodes_[static_cast<size_t>(n.in)];
    const int64_t sz = static_cast<int64_t>(N) * n.Size();
    switch (n.kind) {
      case Kind::kConv: {
        gpu::ConvShape s = n.conv;
        s.N = N;
        RT_RETURN_IF_ERROR(gpu::Conv2dForward(n.out, in.out, P(n.w), P(n.b), s, stream_));
        break;
      }
      case Kind::kBatchNorm:
        RT_RETURN_IF_ERROR(gpu::BatchNormForward(n.out, n.mean, n.rstd, P(n.rm), P(n.rv), in.out, P(n.w), P(n.b), N,
                                                 n.C, n.H * n.W, train, cfg_.bn_momentum, 1e-5f, stream_));
        break;
      case Kind::kRelu: RT_RETURN_IF_ERROR(gpu::ReluForward(n.out, in.out, sz, stream_)); break;
      case Kind::kMaxPool:
        RT_RETURN_IF_ERROR(gpu::MaxPoolForward(n.out, n.argmax, in.out, N, in.C, in.H, in.W, n.k, n.stride, stream_));
        break;
      case Kind::kAvgPool:
        RT_RETURN_IF_ERROR(gpu::AvgPoolForward(n.out, in.out, N, in.C, in.H, in.W, n.k, n.stride, stream_));
        break;
      case Kind::kLinear:
        RT_RETURN_IF_ERROR(
            gpu::LinearForward(*blas_, n.out, in.out, P(n.w), P(n.b), N, static_cast<int>(in.Size()), n.C));
        break;
      case Kind::kAdd:
        RT_RETURN_IF_ERROR(gpu::ResidualForward(n.out, in.out, nodes_[static_cast<size_t>(n.in2)].out, sz, stream_));
        break;
      case Kind::kDropout:
        if (train) {
          // Cnn<float>'s site key: the node's index under the micro-step's key.
          RT_RETURN_IF_ERROR(gpu::DropoutMaskRows(n.keep, cfg_.dropout, N, n.Size(), row_begin, seed, key * 4096 + i,
                                                  stream_));
          RT_RETURN_IF_ERROR(gpu::DropoutApply(n.out, in.out, n.keep, cfg_.dropout, sz, stream_));
        } else {
          RT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(n.out, in.out, sizeof(float) * static_cast<size_t>(sz),
                                                  cudaMemcpyDeviceToDevice, stream_),
                                  "dropout (evaluation)");
        }
        break;
      case Kind::kInput: break;
    }
  }
  if (!labels) {
    RT_RETURN_IF_ERROR(Synchronize());
    return 0.0;
  }
  have_labels_ = true;
  const Node& last = nodes_.back();
  const int K = cfg_.classes;
  const int64_t outputs = static_cast<int64_t>(N) * K;
  if (cfg_.loss == "mse") {
    host_onehot_.assign(static_cast<size_t>(outputs), 0.f);
    for (int i = 0; i < N; ++i) host_onehot_[static_cast<size_t>(i) * K + labels[i]] = 1.f;
    RT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(onehot_.data(), host_onehot_.data(), sizeof(float) * outputs,
                                            cudaMemcpyHostToDevice, stream_),
                            "copying targets to the device");
    RT_RETURN_IF_ERROR(gpu::MseLoss(mse_.data(), nullptr, last.out, onehot_.data(), outputs, 0.f, mse_.data() + 1,
                                    stream_));
    double sq = 0;
    RT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(&sq, mse_.data(), sizeof(double), cudaMemcpyDeviceToHost, stream_),
                            "copying the loss from the device");
    RT_RETURN_IF_ERROR(Synchronize());
    return outputs > 0 ? sq / static_cast<double>(outputs) : 0.0;
  }
  RT_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(labels_.data(), labels, sizeof(int32_t) * N, cudaMemcpyHostToDevice, stream_),
      "copying labels to the device");
  RT_RETURN_IF_ERROR(gpu::SoftmaxCrossEntropy(losses_.data(), nullptr, last.out, labels_.data(), N, K, 0.f, stream_));
  RT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_losses_.data(), losses_.data(), sizeof(float) * N,
                                          cudaMemcpyDeviceToHost, stream_),
                          "copying losses from the device");
  RT_RETURN_IF_ERROR(Synchronize());
  double sum = 0;
  for (int i = 0; i < N; ++i) sum += host_losses_[static_cast<size_t>(i)];
  return N > 0 ? sum / N : 0.0;
}

Status GpuCnn::Backward(float loss_scale, const GradReadyFn& on_ready) {
  RT_CHECK_MSG(have_labels_, "Backward needs a Forward with labels");
  const int N = curN_;
  Node& last = nodes_.back();
  const int64_t outputs = static_cast<int64_t>(N) * cfg_.classes;
  if (cfg_.loss == "mse") {
    RT_RETURN_IF_ERROR(gpu::MseLoss(mse_.data(), last.grad, last.out, onehot_.data(), outputs, loss_scale,
                                    mse_.data() + 1, stream_));
  } else {
    RT_RETURN_IF_ERROR(gpu::SoftmaxCrossEntropy(losses_.data(), last.grad, last.out, labels_.data(), N, cfg_.classes,
                                                loss_scale / static_cast<float>(N), stream_));
  }
  // Gradients of nodes read by several consumers accumulate; the others are overwritten.
  for (Node& n : nodes_)
    if (n.consumers > 1)
      RT_CUDA_RETURN_IF_ERROR(
          cudaMemsetAsync(n.grad, 0, sizeof(float) * static_cast<size_t>(N * n.Size()), stream_),
          "zeroing an activation gradient");
  for (int i = static_cast<int>(nodes_.size()) - 1; i >= 1; --i) {
    Node& n = nodes_[static_cast<size_t>(i)];
    Node& in = nodes_[static_cast<size_t>(n.in)];
    const int64_t in_sz = static_cast<int64_t>(N) * in.Size();
    const bool to_input = n.in > 0;  // no gradient for the images
    const bool accumulate = in.consumers > 1;
    float* din = !to_input ? nullptr : (accumulate ? tmp_.data() : in.grad);
    switch (n.kind) {
      case Kind::kConv: {
        gpu::ConvShape s = n.conv;
        s.N = N;
        RT_RETURN_IF_ERROR(
            gpu::Conv2dBackward(din, G(n.w), G(n.b), n.grad, in.out, P(n.w), s, scratch_.data(),
                                static_cast<int64_t>(scratch_.size()), stream_));
        break;
      }
      case Kind::kBatchNorm:
        if (din)
          RT_RETURN_IF_ERROR(gpu::BatchNormBackward(din, G(n.w), G(n.b), n.grad, in.out, P(n.w), n.mean, n.rstd, N,
                                                    n.C, n.H * n.W, stream_));
        break;
      case Kind::kRelu:
        if (din) RT_RETURN_IF_ERROR(gpu::ReluBackward(din, n.grad, n.out, in_sz, stream_));
        break;
      case Kind::kMaxPool:
        if (din)
          RT_RETURN_IF_ERROR(
              gpu::MaxPoolBackward(din, n.grad, n.argmax, N, in.C, in.H, in.W, n.k, n.stride, stream_));
        break;
      case Kind::kAvgPool:
        if (din) RT_RETURN_IF_ERROR(gpu::AvgPoolBackward(din, n.grad, N, in.C, in.H, in.W, n.k, n.stride, stream_));
        break;
      case Kind::kLinear:
        RT_RETURN_IF_ERROR(gpu::LinearBackward(*blas_, din, G(n.w), G(n.b), n.grad, in.out, P(n.w), N,
                                               static_cast<int>(in.Size()), n.C));
        break;
      case Kind::kDropout:
        if (din) RT_RETURN_IF_ERROR(gpu::DropoutApply(din, n.grad, n.keep, cfg_.dropout, in_sz, stream_));
        break;
      case Kind::kAdd: {
        // Both inputs receive the full gradient.
        for (int src : {n.in, n.in2}) {
          Node& s = nodes_[static_cast<size_t>(src)];
          const int64_t sz = static_cast<int64_t>(N) * s.Size();
          if (s.consumers > 1) {
            RT_RETURN_IF_ERROR(gpu::ResidualForward(s.grad, s.grad, n.grad, sz, stream_));
          } else {
            RT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.grad, n.grad, sizeof(float) * static_cast<size_t>(sz),
                                                    cudaMemcpyDeviceToDevice, stream_),
                                    "residual gradient");
          }
        }
        din = nullptr;
        break;
      }
      case Kind::kInput: break;
    }
    if (din && accumulate) RT_RETURN_IF_ERROR(gpu::ResidualForward(in.grad, in.grad, din, in_sz, stream_));
    if (on_ready && n.w >= 0) {
      const auto [b, e] = Cnn<float>::ParamRange(n, layout_);
      on_ready(b, e);
    }
  }
  return Status::Ok();
}

Status GpuCnn::DownloadLogits(float* host) {
  const Node& last = nodes_.back();
  RT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host, last.out, sizeof(float) * static_cast<size_t>(curN_) * cfg_.classes,
                                          cudaMemcpyDeviceToHost, stream_),
                          "copying logits from the device");
  return Synchronize();
}

}  // namespace ringtrain
