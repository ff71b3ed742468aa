// A model's flat parameter arena on one CUDA device: parameters, gradients and the optimizer's
// moments with the host arena's layout (element i here is element i there), the stream every
// kernel of the model runs on, and the optimizer over the whole arena (SGD, Adam, AdamW with the
// CPU optimizer's formulas). GpuGpt and GpuCnn each own one; the worker's tasks drive it.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/cuda/memory.h"
#include "core/status.h"
#include "models/optim.h"

namespace ringtrain {

class DeviceArena {
 public:
  // n elements on visible CUDA device local_rank mod (number of visible devices): one GPU per
  // local rank. Fails with one line when there is no device. Gradients start at zero.
  static StatusOr<std::unique_ptr<DeviceArena>> Create(size_t n, int local_rank);
  ~DeviceArena();
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;

  size_t size() const { return n_; }
  int device() const { return device_; }
  // The device's name as CUDA reports it ("NVIDIA H200").
  std::string DeviceName() const;
  // The stream every kernel of the model is enqueued on.
  cudaStream_t stream() const { return stream_; }
  float* params() { return params_.data(); }
  float* grads() { return grads_.data(); }

  // Host <-> device copies of the whole vector (size() floats). Uploads are enqueued (the host
  // buffer must stay unchanged until the next Synchronize); downloads wait for the device.
  Status UploadParams(const float* host);
  Status DownloadParams(float* host);
  // Elements [b, e) of the parameters into host[b, e) for each range (state the forward changes
  // in place, such as BatchNorm's running statistics). One wait for all of them.
  Status DownloadParamRanges(float* host, const std::vector<std::pair<size_t, size_t>>& ranges);
  Status DownloadGrads(float* host);
  Status ZeroGrads();
  // Makes the arena's device current on the calling thread (before allocating for it).
  Status SetDevice();
  // Waits for everything enqueued on the stream; `what` names the work in an error.
  Status Synchronize(const char* what = "the model's work on the device");

  // The optimizer on the device. StartOptimizer allocates the moments oc needs (as
  // OptimState::Allocate) and uploads the parameters and the moments (null: zeros); call it
  // again after the host copies changed (a resume). Waits.
  Status StartOptimizer(const OptimConfig& oc, const float* params, const float* m, const float* v);
  bool has_m() const { return m_.size() == n_; }
  bool has_v() const { return v_.size() == n_; }
  // Sum of squares of the gradients (double, blocked as the CPU's SumSquares; waits).
  StatusOr<double> GradSumSquares();
  // OptimizerUpdate over the whole arena: weight decay and the L1/L2 penalties on decay_ranges
  // (sorted, disjoint), none elsewhere. Update number t (1-based). Enqueued.
  Status OptimizerStep(const OptimConfig& oc, double lr, int64_t t, float grad_scale,
                       const std::vector<std::pair<size_t, size_t>>& decay_ranges);
  // The moments to the host (size() floats each; null or absent on the device: skipped). Waits.
  Status DownloadMoments(float* m, float* v);

 private:
  DeviceArena() = default;
  size_t n_ = 0;
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cuda::DeviceBuffer<float> params_, grads_, m_, v_;
  cuda::DeviceBuffer<double> sumsq_;  // SumSquares scratch (made by the first GradSumSquares)
  bool started_ = false;
};

// Number of CUDA devices this process sees (0 when there is no driver or no device; then `why`,
// if given, receives CUDA's reason).
int CudaDeviceCount(std::string* why = nullptr);

}  // namespace ringtrain
