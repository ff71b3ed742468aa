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

// kNormal: N(0, init_std^2); kUniform: U(-init_std, init_std) (PyTorch's default for conv and linear).
enum class InitKind { kZeros, kOnes, kNormal, kUniform };

// A box of a global tensor: start and extent in every dimension.
struct TensorBox {
  std::vector<int64_t> start, shape;
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

struct ParamSpec {
  std::string name;            // e.g. "h.0.attn.c_attn.weight"
  std::vector<int64_t> shape;  // local shape (this rank's part under tensor parallelism)
  int64_t numel = 0;
  size_t offset = 0;           // element offset into the arena
  bool decay = true;           // AdamW weight decay applies (false for biases, norms)
  InitKind init = InitKind::kNormal;
  float init_std = 0.02f;
  // Tensor parallelism: the whole tensor's shape, and the boxes of it this rank holds, stacked
  // along dimension 0 of the local tensor in this order (so each box is a contiguous run of the
  // local elements, in its own row-major order). A replicated tensor has one box, the whole of it.
  std::vector<int64_t> global_shape;
  std::vector<TensorBox> boxes;
  bool sharded() const { return global_shape != shape || boxes.size() != 1; }
};

// A piece of a tensor: elements [begin, end) of one of its boxes, in the box's row-major order,
// stored at local element `local` of the rank's tensor.
struct BoxRange {
  int box = 0;
  int64_t begin = 0, end = 0;
  int64_t local = 0;
};
// The box pieces of local elements [lo, hi) of a tensor.
std::vector<BoxRange> BoxRangesOf(const ParamSpec& s, int64_t lo, int64_t hi);

// Copies between a whole tensor (row-major, s.global_shape) and this rank's local part of it.
template <typename T>
void GlobalToLocal(const ParamSpec& s, const T* global, T* local);
template <typename T>
void LocalToGlobal(const ParamSpec& s, const T* local, T* global);

// Element i of box b's row-major order, as a row-major index of the whole tensor.
int64_t BoxToGlobalIndex(const std::vector<int64_t>& global_shape, const TensorBox& b, int64_t i);

// The size table. Offsets are aligned to 16 elements (64 bytes of fp32) so every tensor view
// starts on a cache line.
class ParamLayout {
 public:
  static constexpr size_t kAlign = 16;

  // Returns the index of the new entry.
  int Add(const std::string& name, std::vector<int64_t> shape, bool decay, InitKind init,
          float init_std = 0.02f);
  // A tensor-parallel part of a tensor of shape global_shape: the given boxes, stacked along
  // dimension 0 (several boxes must span every dimension but 0 fully).
  int AddSharded(const std::string& name, std::vector<int64_t> global_shape, std::vector<TensorBox> boxes, bool decay,
                 InitKind init, float init_std = 0.02f);
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
  // values do not depend on layout order. A sharded tensor gets its part of the whole tensor's
  // values, so the model starts the same at every tensor-parallel degree.
  void Initialize(uint64_t seed);
};

uint64_t HashName(const std::string& s);

}  // namespace ringtrain
