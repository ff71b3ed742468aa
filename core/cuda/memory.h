// Device memory owned by one object: a typed block, freed with the owner, either from plain
// cudaMalloc (parameters, gradients, optimizer state: allocated once) or from the device's caching
// allocator (activations and scratch, re-planned per batch shape: given back to the cache, not to
// CUDA). Allocation failures come back as a Status naming the size and CUDA's message.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <string>
#include <utility>

#include "core/caching_allocator.h"
#include "core/cuda/checks.h"

namespace ringtrain::cuda {

// The caching allocator in front of cudaMalloc/cudaFree for CUDA device `device` (one per device,
// made on first use, never destroyed: blocks may outlive static destruction's order).
CachingAllocator& DeviceCache(int device);

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)), cache_(std::exchange(o.cache_, nullptr)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      Free();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
      cache_ = std::exchange(o.cache_, nullptr);
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
  // The same from the current device's caching allocator: what was there goes back to the cache,
  // so the caller must have synchronised the stream that used it.
  Status AllocateCached(size_t n, const std::string& what) {
    Free();
    if (n == 0) return Status::Ok();
    int device = 0;
    RT_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device), "cudaGetDevice");
    CachingAllocator& cache = DeviceCache(device);
    void* p = cache.Allocate(n * sizeof(T));
    if (p == nullptr) {
      const CachingAllocator::Stats st = cache.stats();
      std::string msg = "cudaMalloc of ";
      msg.append(std::to_string(n * sizeof(T))).append(" bytes for ").append(what);
      msg.append(": out of memory (");
      msg.append(std::to_string(st.in_use_bytes >> 20)).append(" MiB in use by activations on device ");
      msg.append(std::to_string(device)).append(")");
      return Internal(msg);
    }
    p_ = static_cast<T*>(p);
    n_ = n;
    cache_ = &cache;
    return Status::Ok();
  }
  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }

 private:
  void Free() {
    if (p_ != nullptr) {
      if (cache_ != nullptr)
        cache_->Free(p_);
      else
        cudaFree(p_);
    }
    p_ = nullptr;
    n_ = 0;
    cache_ = nullptr;
  }
  T* p_ = nullptr;
  size_t n_ = 0;
  CachingAllocator* cache_ = nullptr;  // where p_ came from (null: cudaMalloc)
};

}  // namespace ringtrain::cuda
