// Optimizers over the flat arena (DESIGN.md idea 1): one loop over a [begin, end) range of the
// parameter vector, so the same code updates the whole model, a ZeRO-1 shard or a parameter-server
// key range. Moments (m, v) have the arena's layout. Also: global-norm clipping and LR schedules.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "core/buffer.h"
#include "core/config.h"

namespace ringtrain {

enum class OptimKind { kSgd, kAdam, kAdamW };

struct OptimConfig {
  OptimKind kind = OptimKind::kAdamW;
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  // AdamW: decoupled (w -= lr * wd * w). SGD and Adam: added to the gradient (wd * w), as PyTorch.
  // Either way only on tensors marked decay (matrices and embeddings, not biases or norms).
  double weight_decay = 0.0;
  double momentum = 0.0;
  bool nesterov = false;
  double l1 = 0.0, l2 = 0.0;  // penalties added to the gradient on decayed tensors
  double grad_clip = 0.0;     // global-norm clipping threshold (0: off)
  static StatusOr<OptimConfig> FromConfig(const Config& c);
};

// Optimizer state for arena elements [base, base + n): the whole arena, or one ZeRO-1 shard
// (m[i - base] belongs to element i). Buffers are allocated on first use.
struct OptimState {
  AlignedBuffer<float> m, v;
  size_t base = 0;
  int64_t step = 0;  // number of updates applied
  void Allocate(const OptimConfig& oc, size_t n, size_t first = 0);
};

// Applies update number `t` (1-based) with learning rate `lr` to params[begin, end), which must lie
// inside the state's range.
// grad_scale multiplies every gradient first (clipping). decay_ranges: sorted, disjoint element
// ranges of the whole arena that receive weight decay / L1 / L2.
void OptimizerUpdate(const OptimConfig& oc, double lr, int64_t t, float grad_scale, float* params,
                     const float* grads, OptimState& st, size_t begin, size_t end,
                     const std::vector<std::pair<size_t, size_t>>& decay_ranges);

// Cuts [begin, end) into consecutive segments at the edges of decay_ranges (sorted, disjoint) and
// calls fn(b, e, decay) for each non-empty one in order; decay: the segment lies in a decay range.
// The one walk OptimizerUpdate and the device optimizer share.
template <typename Fn>
void ForEachDecaySegment(size_t begin, size_t end, const std::vector<std::pair<size_t, size_t>>& decay_ranges, Fn fn) {
  size_t pos = begin;
  for (const auto& [db, de] : decay_ranges) {
    if (de <= pos) continue;
    if (db >= end) break;
    const size_t s = db > pos ? db : pos, e = de < end ? de : end;
    if (s > pos) fn(pos, s, false);
    fn(s, e, true);
    pos = e;
  }
  if (pos < end) fn(pos, end, false);
}

// Sum of squares of g[0, n) in double (deterministic blocked reduction).
double SumSquares(const float* g, size_t n);
// The factor clipping by global norm applies: min(1, clip / (norm + 1e-6)); 1 when clip <= 0.
float ClipScale(double global_norm, double clip);

enum class ScheduleKind { kConstant, kCosine, kStep, kExponential };

struct LrSchedule {
  ScheduleKind kind = ScheduleKind::kConstant;
  double peak = 1e-3, min_lr = 0.0, gamma = 0.1;
  int64_t warmup = 0, decay_steps = 0, step_size = 1;
  static StatusOr<LrSchedule> FromConfig(const Config& c);
  // Learning rate for optimizer step `step` (0-based).
  double At(int64_t step) const;
};

}  // namespace ringtrain
