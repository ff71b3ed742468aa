#include "core/caching_allocator.h"

#include <algorithm>

#include "core/status.h"

namespace ringtrain {

CachingAllocator::~CachingAllocator() { ReleaseCached(); }

size_t CachingAllocator::RoundSize(size_t bytes) {
  constexpr size_t kSmall = 512, kLarge = size_t{2} << 20, kLargeFrom = size_t{1} << 20;
  if (bytes < kLargeFrom) return (bytes + kSmall - 1) / kSmall * kSmall;
  return (bytes + kLarge - 1) / kLarge * kLarge;
}

void* CachingAllocator::Allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
  const size_t size = RoundSize(bytes);
  std::lock_guard<std::mutex> lock(mu_);
  // Best fit among the cached blocks, but not one more than twice the size (it would strand memory
  // a larger request could use).
  auto it = cached_.lower_bound(size);
  if (it != cached_.end() && it->first <= 2 * size) {
    void* p = it->second;
    const size_t got = it->first;
    cached_.erase(it);
    in_use_.emplace(p, got);
    stats_.cached_bytes -= got;
    stats_.in_use_bytes += got;
    stats_.hits++;
    return p;
  }
  void* p = backend_.alloc(size);
  if (p == nullptr && !cached_.empty()) {
    ReleaseCachedLocked();
    p = backend_.alloc(size);
  }
  if (p == nullptr) return nullptr;
  stats_.backend_allocs++;
  stats_.misses++;
  in_use_.emplace(p, size);
  stats_.in_use_bytes += size;
  stats_.peak_bytes = std::max(stats_.peak_bytes, stats_.in_use_bytes + stats_.cached_bytes);
  return p;
}

void CachingAllocator::Free(void* p) {
  if (p == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = in_use_.find(p);
  RT_CHECK_MSG(it != in_use_.end(), "CachingAllocator::Free of a block it did not hand out");
  const size_t size = it->second;
  in_use_.erase(it);
  cached_.emplace(size, p);
  stats_.in_use_bytes -= size;
  stats_.cached_bytes += size;
}

void CachingAllocator::ReleaseCached() {
  std::lock_guard<std::mutex> lock(mu_);
  ReleaseCachedLocked();
}

void CachingAllocator::ReleaseCachedLocked() {
  for (const auto& [size, p] : cached_) {
    backend_.free(p);
    stats_.backend_frees++;
  }
  cached_.clear();
  stats_.cached_bytes = 0;
}

CachingAllocator::Stats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace ringtrain
