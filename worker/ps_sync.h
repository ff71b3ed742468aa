// ParameterServerSync (DESIGN.md idea 4, issue 8): gradients go to the parameter servers, which
// own the optimizer, and fresh parameters come back. Gradient ranges are pushed as backward
// finishes them (merged into buckets of dist.bucket_mb), then, per consistency model:
//   BSP/SSP  GradSumSquares asks every server for its part of the averaged gradient's sum of
//            squares of the steps the next pull needs (clipping by global norm, as the trainer
//            does), and AfterUpdate pulls with those steps' clip factors; servers apply each step
//            once every worker pushed it (SSP: a worker runs at most s steps ahead).
//   ASP      each worker clips its own gradient and commits it with its pull; servers apply it
//            at once.
// The trainer updates nothing itself under this engine (Owned() is empty).
#pragma once

#include <chrono>
#include <memory>
#include <vector>

#include "parameter_server/client.h"
#include "parameter_server/server.h"
#include "worker/grad_sync.h"

namespace ringtrain {

struct PsSyncOptions {
  ps::Consistency mode = ps::Consistency::kBsp;
  int64_t staleness = 0;
  double grad_clip = 0;
  size_t bucket_bytes = 25u << 20;
  bool overlap = true;
};

class ParameterServerSync final : public GradientSync {
 public:
  // The arena's buffers must not move while the engine exists. start_step: the first step this
  // run takes (after a resume).
  ParameterServerSync(std::unique_ptr<ps::PsClient> client, ParamArena<float>& arena, const PsSyncOptions& o,
                      int64_t start_step);
  const char* name() const override { return name_.c_str(); }
  void BeginStep(int64_t step) override;
  void OnGradReady(size_t begin, size_t end) override;
  Status Finish() override;
  const Ranges& Owned() const override { return none_; }
  StatusOr<double> GradSumSquares() override;
  Status AfterUpdate() override;
  bool Lockstep() const override { return opts_.mode == ps::Consistency::kBsp; }
  Status Refresh(int64_t steps) override;
  ps::PsClient& client() { return *client_; }
  double CommBusySeconds() const override { return busy_s_; }

 private:
  void Flush();  // pushes the bucket being gathered

  std::unique_ptr<ps::PsClient> client_;
  ParamArena<float>& a_;
  PsSyncOptions opts_;
  std::string name_;
  Ranges none_;
  int64_t step_ = 0;
  size_t run_b_ = 0, run_e_ = 0;  // the bucket being gathered (adjacent ready ranges)
  Ranges pushed_;                 // ranges pushed this step
  std::chrono::steady_clock::time_point first_push_{};  // this step's first push (pushes run in the background)
  double busy_s_ = 0;               // pushes (first push to all acknowledged), norms and pulls
  int64_t norms_known_ = 0;       // global norms (and clip factors) known for steps < this
  int64_t scales_from_ = 0;
  std::vector<float> scales_;     // clip factors to send with the next pull
  double last_sq_ = 0;
};

}  // namespace ringtrain
