#include "core/cuda/memory.h"

#include <map>
#include <mutex>

namespace ringtrain::cuda {

CachingAllocator& DeviceCache(int device) {
  static std::mutex mu;
  // Never destroyed: the CUDA runtime may be gone by static destruction, and buffers owned by
  // other statics may still return their blocks.
  static auto* caches = new std::map<int, CachingAllocator*>();
  std::lock_guard<std::mutex> lock(mu);
  CachingAllocator*& c = (*caches)[device];
  if (c == nullptr) {
    // The backend runs on the caller's thread with `device` current (DeviceBuffer::AllocateCached
    // asks for the current device's cache); frees may come with another device current.
    c = new CachingAllocator(CachingAllocator::Backend{
        [](size_t bytes) -> void* {
          void* p = nullptr;
          if (cudaMalloc(&p, bytes) != cudaSuccess) {
            (void)cudaGetLastError();  // out of memory is not sticky; clear it for the retry
            return nullptr;
          }
          return p;
        },
        [device](void* p) {
          int current = 0;
          cudaGetDevice(&current);
          if (current != device) cudaSetDevice(device);
          cudaFree(p);
          if (current != device) cudaSetDevice(current);
        }});
  }
  return *c;
}

}  // namespace ringtrain::cuda
