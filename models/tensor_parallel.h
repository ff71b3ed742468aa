// Tensor parallelism (Megatron-style, DESIGN.md idea 3): the tensor-parallel group a model's
// layers talk over, how dimensions are split across it, and the vocabulary-parallel embedding and
// cross-entropy, which never gather the full vocabulary. With a group of one everything here is a
// no-op and the model runs its plain single-process kernels.
#pragma once

#include <cstdint>
#include <utility>

#include <vector>

#include "collectives/communicator.h"
#include "core/arena.h"
#include "core/status.h"

namespace ringtrain {

// The group a tensor-parallel model's collectives run on (not owned; null: TP = 1). The model's
// Forward and Backward cannot return a Status in the middle of a layer, so the first failure is
// kept here, every later collective is skipped, and the caller checks status() after each
// Forward/Backward. Called from the trainer thread only.
class TpGroup {
 public:
  TpGroup() = default;
  explicit TpGroup(coll::Communicator* comm) : comm_(comm && comm->size() > 1 ? comm : nullptr) {}
  int rank() const { return comm_ ? comm_->rank() : 0; }
  int size() const { return comm_ ? comm_->size() : 1; }
  bool active() const { return comm_ != nullptr; }
  coll::Communicator* comm() const { return comm_; }

  // In place over the group; `what` names the operation in an error.
  template <typename T>
  void AllReduceSum(T* x, int64_t n, const char* what);
  template <typename T>
  void AllReduceMax(T* x, int64_t n, const char* what);

  const Status& status() const { return status_; }
  // Payload bytes all-reduced since the last ResetBytes (what each rank contributes).
  uint64_t bytes() const { return bytes_; }
  uint64_t calls() const { return calls_; }
  void ResetBytes() { bytes_ = calls_ = 0; }

 private:
  template <typename T>
  void Run(T* x, int64_t n, coll::ReduceOp op, const char* what);
  coll::Communicator* comm_ = nullptr;
  Status status_;
  uint64_t bytes_ = 0, calls_ = 0;
};

// Rank r's part [begin, begin + count) of n items split over t ranks: even, with the remainder
// going one each to the first ranks (a vocabulary that t does not divide).
std::pair<int64_t, int64_t> SplitRange(int64_t n, int r, int t);

// The whole model's values (in `full`'s layout) from every tensor-parallel rank's part (`local`
// layout, `values`): each rank puts its part into a zeroed buffer, replicated tensors from TP rank
// 0 only, and the buffers are summed over the group, so every rank gets them exactly. Collective
// over tp (null or one rank: a copy). Works for parameters and gradients alike.
Status GatherFull(const ParamLayout& local, const float* values, const ParamLayout& full, coll::Communicator* tp,
                  std::vector<float>* out);
// The inverse: this rank's part (local layout) of whole-model values in `full`'s layout.
void ScatterFull(const ParamLayout& full, const float* full_values, const ParamLayout& local, float* out);

// out (N,C) = this rank's rows of the token embedding (zeros for tokens held elsewhere); the sum
// over the group is the embedding. wte_local (Vl,C) holds token ids [v_begin, v_begin + Vl).
template <typename T>
void VocabParallelEmbeddingForward(T* out, const int32_t* tokens, const T* wte_local, int64_t v_begin, int Vl, int N,
                                   int C);
// out (B,Tn,C) += wpe (Tn,C) per position. (The backward of both is cpu::EmbeddingBackward with
// the rank's vocabulary range.)
template <typename T>
void AddPositionEmbedding(T* out, const T* wpe, int B, int Tn, int C);
// Cross-entropy of logits split by vocabulary: logits_local (N,Vl) are columns [v_begin, v_begin+Vl)
// of the full (N,V) logits. Three all-reduces of N values (row max; sum of exponentials and the
// target's logit) replace gathering N*V logits. losses (N) per row (0 where target < 0); row_max,
// row_sum (N) are kept for the backward. Returns the sum of the losses.
template <typename T>
double VocabParallelCrossEntropy(T* losses, T* row_max, T* row_sum, const T* logits_local, const int32_t* targets,
                                 int N, int Vl, int64_t v_begin, TpGroup& tp);
// dlogits_local (N,Vl) = scale * (softmax - onehot(target)) on this rank's columns; may alias
// logits_local.
template <typename T>
void VocabParallelCrossEntropyBackward(T* dlogits_local, const T* logits_local, const T* row_max, const T* row_sum,
                                       const int32_t* targets, int N, int Vl, int64_t v_begin, T scale);

}  // namespace ringtrain
