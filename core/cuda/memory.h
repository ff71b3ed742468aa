// Device memory owned by one object: a typed cudaMalloc'd block, freed with the owner. Allocation
// failures come back as a Status naming the size and CUDA's message (out of memory, no device).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <string>
#include <utility>

#include "core/cuda/checks.h"

namespace ringtrain::cuda {

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      Free();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  ~DeviceBuffer() { Free(); }

  // Replaces the contents with n uninitialised elements (what was there is freed first).
  Status Allocate(size_t n, const std::string& what) {
    Free();
    if (n == 0) return Status::Ok();
    void* p = nullptr;
    std::string msg = "cudaMalloc of ";
    msg.append(std::to_string(n * sizeof(T))).append(" bytes for ").append(what);
    RT_CUDA_RETURN_IF_ERROR(cudaMalloc(&p, n * sizeof(T)), msg);
    p_ = static_cast<T*>(p);
    n_ = n;
    return Status::Ok();
  }
  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }

 private:
  void Free() {
    if (p_ != nullptr) cudaFree(p_);
    p_ = nullptr;
    n_ = 0;
  }
  T* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace ringtrain::cuda
