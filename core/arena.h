// The flat parameter arena (DESIGN.md idea 1): every parameter of a model lives in one contiguous
// buffer built from a size table; named tensors are views (offsets) into it. Gradients, optimizer
// moments and master weights use the same layout, so the optimizer, bucketed all-reduce, ZeRO-1
// sharding, the parameter server and checkpoints all work on ranges of one vector.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/buffer.h"
#include "core/status.h"

namespace ringtrain {

enum class InitKind { kZeros, kOnes, kNormal };

struct ParamSpec {
  std::string name;            // e.g. "h.0.attn.c_attn.weight"
  std::vector<int64_t> shape;  // local shape (this rank's slice once tensor parallelism exists)
  int64_t numel = 0;
  size_t offset = 0;           // element offset into the arena
  bool decay = true;           // AdamW weight decay applies (false for biases, norms)
  InitKind init = InitKind::kNormal;
  float init_std = 0.02f;
};

// The size table. Offsets are aligned to 16 elements (64 bytes of fp32) so every tensor view
// starts on a cache line.
class ParamLayout {
 public:
  static constexpr size_t kAlign = 16;

  // Returns the index of the new entry.
  int Add(const std::string& name, std::vector<int64_t> shape, bool decay, InitKind init,
          float init_std = 0.02f);
  size_t total() const { return total_; }
  const std::vector<ParamSpec>& specs() const { return specs_; }
  const ParamSpec& spec(int i) const { return specs_[i]; }
  int Find(const std::string& name) const;  // -1 when absent
  // Per-element weight decay mask as [begin,end) ranges that decay (sorted, disjoint).
  std::vector<std::pair<size_t, size_t>> DecayRanges() const;

 private:
  std::vector<ParamSpec> specs_;
  std::unordered_map<std::string, int> index_;
  size_t total_ = 0;
};

// Parameters and gradients of one model in arena layout.
template <typename T>
struct ParamArena {
  ParamLayout layout;
  AlignedBuffer<T> params;
  AlignedBuffer<T> grads;

  void Allocate() {
    params.Resize(layout.total());
    grads.Resize(layout.total());
  }
  T* param(int i) { return params.data() + layout.spec(i).offset; }
  T* grad(int i) { return grads.data() + layout.spec(i).offset; }
  const T* param(int i) const { return params.data() + layout.spec(i).offset; }
  // Fills parameters from the per-tensor init spec; each tensor's stream is keyed by its name, so
  // values do not depend on layout order.
  void Initialize(uint64_t seed);
};

uint64_t HashName(const std::string& s);

}  // namespace ringtrain
