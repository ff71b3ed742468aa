#include "models/device_arena.h"

#include <tuple>

#include "core/cuda/ops.h"

namespace ringtrain {

int CudaDeviceCount(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no driver" error
    if (why) *why = cudaGetErrorString(e);
    return 0;
  }
  if (why && n == 0) *why = "no device visible";
  return n;
}

StatusOr<std::unique_ptr<DeviceArena>> DeviceArena::Create(size_t n, int local_rank) {
  std::string why;
  const int count = CudaDeviceCount(&why);
  if (count == 0) return Unavailable("device cuda: no CUDA device on this machine (" + why + ")");
  std::unique_ptr<DeviceArena> a(new DeviceArena());
  a->n_ = n;
  a->device_ = local_rank % count;
  RT_CUDA_RETURN_IF_ERROR(cudaSetDevice(a->device_), "cudaSetDevice(" + std::to_string(a->device_) + ")");
  RT_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&a->stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  RT_RETURN_IF_ERROR(a->params_.Allocate(n, "parameters"));
  RT_RETURN_IF_ERROR(a->grads_.Allocate(n, "gradients"));
  RT_RETURN_IF_ERROR(a->ZeroGrads());
  return a;
}

DeviceArena::~DeviceArena() {
  if (stream_ != nullptr) {
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }
}

std::string DeviceArena::DeviceName() const {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device_) != cudaSuccess) return "cuda:" + std::to_string(device_);
  return prop.name;
}

Status DeviceArena::Synchronize(const char* what) {
  RT_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_), what);
  return Status::Ok();
}

Status DeviceArena::UploadParams(const float* host) {
  RT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(params_.data(), host, n_ * sizeof(float), cudaMemcpyHostToDevice, stream_),
                          "copying parameters to the device");
  return Status::Ok();
}

Status DeviceArena::DownloadParams(float* host) { return DownloadParamRanges(host, {{0, n_}}); }

Status DeviceArena::DownloadParamRanges(float* host, const std::vector<std::pair<size_t, size_t>>& ranges) {
  for (const auto& [b, e] : ranges) {
    RT_CHECK(b <= e && e <= n_);
    RT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host + b, params_.data() + b, (e - b) * sizeof(float),
                                            cudaMemcpyDeviceToHost, stream_),
                            "copying parameters from the device");
  }
  return Synchronize("copying parameters from the device");
}

Status DeviceArena::DownloadGrads(float* host) {
  RT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host, grads_.data(), n_ * sizeof(float), cudaMemcpyDeviceToHost, stream_),
                          "copying gradients from the device");
  return Synchronize("copying gradients from the device");
}

Status DeviceArena::ZeroGrads() {
  RT_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(grads_.data(), 0, n_ * sizeof(float), stream_), "zeroing gradients");
  return Status::Ok();
}

Status DeviceArena::SetDevice() {
  RT_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_), "cudaSetDevice(" + std::to_string(device_) + ")");
  return Status::Ok();
}

Status DeviceArena::StartOptimizer(const OptimConfig& oc, const float* params, const float* m, const float* v) {
  RT_RETURN_IF_ERROR(SetDevice());  // allocations go to the current device
  // The moments OptimState::Allocate gives the host optimizer.
  const bool need_m = oc.kind != OptimKind::kSgd || oc.momentum > 0;
  const bool need_v = oc.kind != OptimKind::kSgd;
  if (need_m != has_m()) RT_RETURN_IF_ERROR(m_.Allocate(need_m ? n_ : 0, "optimizer moment m"));
  if (need_v != has_v()) RT_RETURN_IF_ERROR(v_.Allocate(need_v ? n_ : 0, "optimizer moment v"));
  RT_RETURN_IF_ERROR(UploadParams(params));
  for (auto [dst, src, what] : {std::tuple{m_.data(), m, "copying the optimizer moment m to the device"},
                                std::tuple{v_.data(), v, "copying the optimizer moment v to the device"}}) {
    if (dst == nullptr) continue;
    if (src)
      RT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, n_ * sizeof(float), cudaMemcpyHostToDevice, stream_), what);
    else
      RT_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(dst, 0, n_ * sizeof(float), stream_), what);
  }
  started_ = true;
  // The host buffers may change once this returns.
  return Synchronize("starting the optimizer on the device");
}

StatusOr<double> DeviceArena::GradSumSquares() {
  if (sumsq_.size() == 0) {
    RT_RETURN_IF_ERROR(SetDevice());
    const size_t scratch = static_cast<size_t>(gpu::SumSquaresScratch(static_cast<int64_t>(n_)));
    RT_RETURN_IF_ERROR(sumsq_.Allocate(scratch, "gradient norm scratch"));
  }
  RT_RETURN_IF_ERROR(gpu::SumSquares(sumsq_.data(), grads_.data(), static_cast<int64_t>(n_), stream_));
  double sq = 0;
  RT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(&sq, sumsq_.data(), sizeof(double), cudaMemcpyDeviceToHost, stream_),
                          "copying the gradient norm from the device");
  RT_RETURN_IF_ERROR(Synchronize("the gradient norm on the device"));
  return sq;
}

Status DeviceArena::OptimizerStep(const OptimConfig& oc, double lr, int64_t t, float grad_scale,
                                  const std::vector<std::pair<size_t, size_t>>& decay_ranges) {
  RT_CHECK_MSG(started_, "StartOptimizer before OptimizerStep");
  gpu::OptimArgs on;
  on.lr = lr;
  on.beta1 = oc.beta1;
  on.beta2 = oc.beta2;
  on.eps = oc.eps;
  on.momentum = oc.momentum;
  on.weight_decay = oc.weight_decay;
  on.l1 = oc.l1;
  on.l2 = oc.l2;
  on.grad_scale = grad_scale;
  on.t = t;
  on.decoupled = oc.kind == OptimKind::kAdamW;
  on.nesterov = oc.nesterov;
  gpu::OptimArgs off = on;  // outside the decay ranges: no penalties
  off.weight_decay = off.l1 = off.l2 = 0;
  const bool sgd = oc.kind == OptimKind::kSgd;
  RT_CHECK(sgd ? has_m() == (oc.momentum > 0) : (has_m() && has_v()));
  Status st;
  ForEachDecaySegment(0, n_, decay_ranges, [&](size_t b, size_t e, bool decay) {
    if (!st.ok()) return;
    const gpu::OptimArgs& a = decay ? on : off;
    const auto n = static_cast<int64_t>(e - b);
    float* m = has_m() ? m_.data() + b : nullptr;
    st = sgd ? gpu::SgdUpdate(params_.data() + b, grads_.data() + b, m, n, a, stream_)
             : gpu::AdamUpdate(params_.data() + b, grads_.data() + b, m, v_.data() + b, n, a, stream_);
  });
  return st;
}

Status DeviceArena::DownloadMoments(float* m, float* v) {
  for (auto [dst, src, what] : {std::tuple{m, m_.data(), "copying the optimizer moment m from the device"},
                                std::tuple{v, v_.data(), "copying the optimizer moment v from the device"}}) {
    if (!dst || !src) continue;
    RT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, n_ * sizeof(float), cudaMemcpyDeviceToHost, stream_), what);
  }
  return Synchronize("copying the optimizer moments from the device");
}

}  // namespace ringtrain
