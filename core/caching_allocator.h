// A cache of memory blocks in front of a slow allocator (cudaMalloc/cudaFree, which synchronise the
// whole device): blocks given back are kept and handed out again for requests they fit, so
// activation and scratch buffers re-planned for another batch shape, or made by several models in
// one process, cost no device allocation after the first. The backend is two functions, so the
// caching logic is tested on the host (tests/core/caching_allocator_test.cc); core/cuda/memory.h
// puts one in front of each CUDA device. Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>

namespace ringtrain {

class CachingAllocator {
 public:
  struct Backend {
    std::function<void*(size_t)> alloc;  // null when out of memory
    std::function<void(void*)> free;
  };
  struct Stats {
    size_t in_use_bytes = 0;   // handed out (rounded sizes)
    size_t cached_bytes = 0;   // given back, kept for reuse
    size_t peak_bytes = 0;     // most in_use + cached at once (what the backend held)
    uint64_t backend_allocs = 0, backend_frees = 0;
    uint64_t hits = 0;         // requests served from the cache
    uint64_t misses = 0;       // requests that went to the backend
  };

  explicit CachingAllocator(Backend backend) : backend_(std::move(backend)) {}
  // Frees the cached blocks; blocks still handed out stay with their owners (not freed).
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  // Sizes are rounded up: below 1 MiB to a multiple of 512 bytes, from 1 MiB to a multiple of
  // 2 MiB, so near sizes share blocks.
  static size_t RoundSize(size_t bytes);
  // A block of at least `bytes` (0: null). The smallest cached block that fits and is at most
  // twice the rounded size is reused; otherwise the backend allocates the rounded size, and if it
  // is out of memory the cache is released to it and it is asked once more. Null when that fails.
  void* Allocate(size_t bytes);
  // Gives back a block from Allocate (null: nothing). The caller guarantees that no queued device
  // work still uses it (its owner has synchronised its stream), so any stream may reuse it.
  void Free(void* p);
  // Frees every cached block to the backend.
  void ReleaseCached();
  Stats stats() const;

 private:
  void ReleaseCachedLocked();
  Backend backend_;
  mutable std::mutex mu_;
  std::multimap<size_t, void*> cached_;        // rounded size -> block
  std::unordered_map<void*, size_t> in_use_;   // block -> rounded size
  Stats stats_;
};

}  // namespace ringtrain
