// The caching allocator's policy on a host backend that counts and checks its calls (the CUDA
// backend in core/cuda/memory.cc is the same class over cudaMalloc/cudaFree): reuse of given-back
// blocks, size rounding, best fit within twice the size, release and retry when the backend is out
// of memory, statistics, and many threads at once.
#include "core/caching_allocator.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

namespace ringtrain {
namespace {

// malloc with a size limit; records live blocks so double frees and leaks are caught.
struct HostBackend {
  size_t budget = SIZE_MAX;  // largest size alloc grants
  std::set<void*> live;
  std::vector<size_t> sizes;  // every size asked of alloc, in order
  CachingAllocator::Backend Make() {
    return {[this](size_t n) -> void* {
              sizes.push_back(n);
              if (n > budget) return nullptr;
              void* p = std::malloc(n);
              live.insert(p);
              return p;
            },
            [this](void* p) {
              EXPECT_EQ(live.erase(p), 1u) << "freed a block the backend does not hold";
              std::free(p);
            }};
  }
};

TEST(CachingAllocator, RoundsSizes) {
  EXPECT_EQ(CachingAllocator::RoundSize(1), 512u);
  EXPECT_EQ(CachingAllocator::RoundSize(512), 512u);
  EXPECT_EQ(CachingAllocator::RoundSize(513), 1024u);
  EXPECT_EQ(CachingAllocator::RoundSize((1u << 20) - 1), 1u << 20);
  EXPECT_EQ(CachingAllocator::RoundSize(1u << 20), 2u << 20);
  EXPECT_EQ(CachingAllocator::RoundSize((2u << 20) + 1), 4u << 20);
}

TEST(CachingAllocator, ReusesGivenBackBlocks) {
  HostBackend b;
  {
    CachingAllocator a(b.Make());
    EXPECT_EQ(a.Allocate(0), nullptr);
    void* p = a.Allocate(1000);
    ASSERT_NE(p, nullptr);
    std::memset(p, 1, 1000);
    a.Free(p);
    void* q = a.Allocate(900);  // rounds to 1024, as 1000 did: the same block
    EXPECT_EQ(q, p);
    void* r = a.Allocate(900);  // the cached one is taken: a new block
    EXPECT_NE(r, p);
    const auto st = a.stats();
    EXPECT_EQ(st.hits, 1u);
    EXPECT_EQ(st.misses, 2u);
    EXPECT_EQ(st.backend_allocs, 2u);
    EXPECT_EQ(st.in_use_bytes, 2048u);
    EXPECT_EQ(st.cached_bytes, 0u);
    a.Free(q);
    a.Free(r);
    EXPECT_EQ(a.stats().cached_bytes, 2048u);
    EXPECT_EQ(a.stats().in_use_bytes, 0u);
    EXPECT_EQ(a.stats().peak_bytes, 2048u);
    EXPECT_EQ(b.live.size(), 2u);  // kept, not freed
  }
  EXPECT_TRUE(b.live.empty()) << "the destructor did not free the cache";
}

TEST(CachingAllocator, BestFitWithinTwiceTheSize) {
  HostBackend b;
  CachingAllocator a(b.Make());
  void* small = a.Allocate(4096);
  void* mid = a.Allocate(16384);
  void* big = a.Allocate(8u << 20);
  a.Free(small);
  a.Free(mid);
  a.Free(big);
  // 3000 rounds to 3072: 4096 fits within twice, 16384 would too but is larger: the 4096 block.
  EXPECT_EQ(a.Allocate(3000), small);
  // 6000 -> 6144: 16384 is more than twice, so the backend allocates; the cached blocks stay.
  void* fresh = a.Allocate(6000);
  EXPECT_NE(fresh, mid);
  EXPECT_NE(fresh, big);
  EXPECT_EQ(b.sizes.back(), 6144u);
  // 5 MiB -> 6 MiB: the 8 MiB block fits within twice.
  EXPECT_EQ(a.Allocate(5u << 20), big);
  EXPECT_EQ(a.stats().cached_bytes, 16384u);
  for (void* p : {small, fresh, big}) a.Free(p);
}

TEST(CachingAllocator, OutOfMemoryReleasesTheCache) {
  HostBackend b;
  CachingAllocator a(b.Make());
  void* p = a.Allocate(1500000);  // a 2 MiB block, then cached
  ASSERT_NE(p, nullptr);
  a.Free(p);
  b.budget = 0;  // the backend refuses everything now
  const size_t calls = b.sizes.size();
  // 1 KiB: the cached 2 MiB block is more than twice the size, so the backend is asked; it is out
  // of memory, the cache goes back to it, and it is asked once more.
  EXPECT_EQ(a.Allocate(1024), nullptr);
  EXPECT_EQ(b.sizes.size(), calls + 2) << "one attempt, the cache released, one retry";
  EXPECT_EQ(a.stats().cached_bytes, 0u);
  EXPECT_EQ(a.stats().backend_frees, 1u);
  EXPECT_TRUE(b.live.empty());
  b.budget = SIZE_MAX;
  void* r = a.Allocate(1024);
  EXPECT_NE(r, nullptr);
  a.Free(r);
}

// A backend that fails once while the cache holds a block, then succeeds: the retry after the
// release gets the memory.
TEST(CachingAllocator, RetryAfterReleaseSucceeds) {
  int fail_next = 0;
  std::set<void*> live;
  CachingAllocator a(CachingAllocator::Backend{[&](size_t n) -> void* {
                                                 if (fail_next > 0) {
                                                   --fail_next;
                                                   return nullptr;
                                                 }
                                                 void* p = std::malloc(n);
                                                 live.insert(p);
                                                 return p;
                                               },
                                               [&](void* p) {
                                                 live.erase(p);
                                                 std::free(p);
                                               }});
  void* big = a.Allocate(4u << 20);
  a.Free(big);
  fail_next = 1;
  void* p = a.Allocate(64);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(live.count(big), 0u) << "the cached block was not released before the retry";
  EXPECT_EQ(live.size(), 1u);
  a.Free(p);
}

TEST(CachingAllocator, ManyThreads) {
  std::mutex mu;
  std::set<void*> live;
  CachingAllocator a(CachingAllocator::Backend{[&](size_t n) -> void* {
                                                 void* p = std::malloc(n);
                                                 std::lock_guard<std::mutex> l(mu);
                                                 live.insert(p);
                                                 return p;
                                               },
                                               [&](void* p) {
                                                 {
                                                   std::lock_guard<std::mutex> l(mu);
                                                   live.erase(p);
                                                 }
                                                 std::free(p);
                                               }});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&a, t] {
      for (int i = 0; i < 2000; ++i) {
        const size_t n = 512 * static_cast<size_t>(1 + (i * 7 + t) % 9);
        auto* p = static_cast<unsigned char*>(a.Allocate(n));
        ASSERT_NE(p, nullptr);
        // Nobody else holds this block: what is written stays.
        std::memset(p, t + 1, n);
        for (size_t k = 0; k < n; k += 97) ASSERT_EQ(p[k], t + 1);
        a.Free(p);
      }
    });
  for (auto& th : threads) th.join();
  const auto st = a.stats();
  EXPECT_EQ(st.in_use_bytes, 0u);
  EXPECT_EQ(st.hits + st.misses, 8000u);
  EXPECT_GT(st.hits, st.misses) << "the cache was hardly used";
  a.ReleaseCached();
  EXPECT_TRUE(live.empty());
}

}  // namespace
}  // namespace ringtrain
