// Gradient sync engines (DESIGN.md idea 4): the trainer asks a GradientSync to make gradients
// globally consistent, updates the ranges the engine says this rank owns, and lets the engine make
// the parameters consistent again. The same loop runs every engine:
//   NoSync         one process.
//   AllReduceSync  data parallelism: gradients averaged over the group by all-reduce, either in
//                  buckets started during backward as they fill (overlap) or in one call after it;
//                  with ZeRO-1 each bucket is reduce-scattered instead, every rank updates its
//                  piece of each bucket (parameters and optimizer state), and the updated pieces
//                  are all-gathered.
// Threading: every method is called from the trainer thread; OnGradReady from inside backward.
#pragma once

#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

#include "collectives/communicator.h"
#include "core/arena.h"
#include "core/status.h"

namespace ringtrain {

using Ranges = std::vector<std::pair<size_t, size_t>>;

class GradientSync {
 public:
  virtual ~GradientSync() = default;
  virtual const char* name() const = 0;
  // [begin, end) of the gradient arena is final for this step (called during backward).
  virtual void OnGradReady(size_t begin, size_t end) = 0;
  // Blocks until the gradients of every owned range are averaged over the group.
  virtual Status Finish() = 0;
  // The element ranges this rank's optimizer updates (sorted, disjoint).
  virtual const Ranges& Owned() const = 0;
  // Sum of squares of the averaged gradient over the whole arena; the same on every rank.
  virtual StatusOr<double> GradSumSquares() = 0;
  // After the owned ranges were updated: make the parameters identical on every rank.
  virtual Status AfterUpdate() { return Status::Ok(); }
  // Before step `step` (0-based) begins.
  virtual void BeginStep(int64_t step) { (void)step; }
  // Whether the workers move in lockstep (false: SSP/ASP parameter servers, where the trainer
  // only meets the other workers at log, evaluation and checkpoint steps).
  virtual bool Lockstep() const { return true; }
  // After the last of `steps` steps, every worker having finished: fetch the final parameters.
  virtual Status Refresh(int64_t steps) { (void)steps; return Status::Ok(); }
  // Cumulative seconds communication was in progress (hidden behind backward or waited for), for
  // benchmarks; the trainer takes per-step differences.
  virtual double CommBusySeconds() const { return 0; }
  // Arena ranges GradSumSquares leaves out (sorted, disjoint). Tensor parallelism: replicated
  // tensors on every TP rank but the first, so a sum over the TP group counts them once.
  void set_norm_skip(Ranges r) { norm_skip_ = std::move(r); }

 protected:
  // Sum of squares of g over [b, e) minus the skipped ranges.
  double SumSquaresOf(const float* g, size_t b, size_t e) const;
  Ranges norm_skip_;
};

class NoSync final : public GradientSync {
 public:
  explicit NoSync(ParamArena<float>& a) : a_(a), owned_{{0, a.layout.total()}} {}
  const char* name() const override { return "none"; }
  void OnGradReady(size_t, size_t) override {}
  Status Finish() override { return Status::Ok(); }
  const Ranges& Owned() const override { return owned_; }
  StatusOr<double> GradSumSquares() override;

 private:
  ParamArena<float>& a_;
  Ranges owned_;
};

struct AllReduceSyncOptions {
  size_t bucket_bytes = 25u << 20;  // gradient bytes per bucket
  bool overlap = true;              // start buckets during backward (else one call after it)
  bool zero1 = false;               // reduce-scatter + sharded update + all-gather
};

class AllReduceSync final : public GradientSync {
 public:
  // comm: the data-parallel group (not owned; outlives the engine). The arena's buffers must not
  // move while the engine exists.
  AllReduceSync(coll::Communicator* comm, ParamArena<float>& arena, const AllReduceSyncOptions& o);
  const char* name() const override { return opts_.zero1 ? "allreduce+zero1" : "allreduce"; }
  void OnGradReady(size_t begin, size_t end) override;
  Status Finish() override;
  const Ranges& Owned() const override { return owned_; }
  double CommBusySeconds() const override { return comm_->async_busy_s(); }
  StatusOr<double> GradSumSquares() override;
  Status AfterUpdate() override;
  size_t num_buckets() const { return buckets_.size(); }

 private:
  struct Bucket {
    size_t begin = 0, end = 0;
    size_t needed = 0, ready = 0;  // parameter elements (alignment padding excluded)
    bool launched = false;
    int64_t per_rank = 0;           // ZeRO-1: piece length (the bucket padded to size * per_rank)
    size_t piece_begin = 0, piece_end = 0;  // ZeRO-1: this rank's piece, clipped to the bucket
    bool staged = false;            // ZeRO-1: length not a multiple of the group size
    coll::Work work;
  };
  size_t ParamElems(size_t lo, size_t hi) const;  // parameter elements of the arena inside [lo, hi)
  void Launch(Bucket& b);

  coll::Communicator* comm_;
  ParamArena<float>& a_;
  AllReduceSyncOptions opts_;
  std::vector<Bucket> buckets_;
  std::vector<int> order_;  // bucket indices in launch order this step
  Ranges spans_;            // parameter spans of the layout, by offset
  std::vector<size_t> span_prefix_;
  Ranges owned_;
  std::vector<float> stage_, stage_out_;  // ZeRO-1 staging for the one bucket that needs it
};

// Builds the engine the config asks for (dist.* keys): NoSync without a communicator or on a group
// of one process, AllReduceSync otherwise.
std::unique_ptr<GradientSync> MakeGradientSync(coll::Communicator* comm, ParamArena<float>& arena,
                                               const AllReduceSyncOptions& o);

}  // namespace ringtrain
