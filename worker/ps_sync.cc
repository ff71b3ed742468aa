#include "worker/ps_sync.h"

#include <algorithm>
#include <cmath>

namespace ringtrain {

ParameterServerSync::ParameterServerSync(std::unique_ptr<ps::PsClient> client, ParamArena<float>& arena,
                                         const PsSyncOptions& o, int64_t start_step)
    : client_(std::move(client)), a_(arena), opts_(o), step_(start_step), norms_known_(start_step) {
  name_ = std::string("parameter server ") + ps::ConsistencyName(o.mode);
  if (o.mode == ps::Consistency::kSsp) {
    name_ += '(';
    name_ += std::to_string(o.staleness);
    name_ += ')';
  }
  name_ += ", ";
  name_ += std::to_string(client_->servers());
  name_ += " server(s)";
}

void ParameterServerSync::BeginStep(int64_t step) {
  step_ = step;
  pushed_.clear();
  run_b_ = run_e_ = 0;
  first_push_ = {};
}

void ParameterServerSync::Flush() {
  if (run_b_ < run_e_) {
    if (first_push_ == std::chrono::steady_clock::time_point{}) first_push_ = std::chrono::steady_clock::now();
    client_->Push(step_, run_b_, run_e_, a_.grads.data());
    pushed_.push_back({run_b_, run_e_});
  }
  run_b_ = run_e_ = 0;
}

void ParameterServerSync::OnGradReady(size_t b, size_t e) {
  if (!opts_.overlap || b >= e) return;
  // Backward finishes tensors back to front: a range ending where the bucket begins (alignment
  // padding aside) extends it; anything else starts a new bucket.
  if (run_b_ < run_e_ && e <= run_b_ && run_b_ - e < ParamLayout::kAlign) {
    run_b_ = b;
  } else if (run_b_ < run_e_ && b >= run_e_ && b - run_e_ < ParamLayout::kAlign) {
    run_e_ = e;
  } else {
    Flush();
    run_b_ = b;
    run_e_ = e;
  }
  if ((run_e_ - run_b_) * sizeof(float) >= opts_.bucket_bytes) Flush();
}

Status ParameterServerSync::Finish() {
  Flush();
  // Whatever backward did not report (everything without overlap; alignment padding) goes now:
  // every server waits for its whole range.
  std::sort(pushed_.begin(), pushed_.end());
  size_t at = 0;
  for (const auto& [b, e] : pushed_) {
    if (b > at) client_->Push(step_, at, b, a_.grads.data());
    at = std::max(at, e);
  }
  if (first_push_ == std::chrono::steady_clock::time_point{}) first_push_ = std::chrono::steady_clock::now();
  if (at < a_.layout.total()) client_->Push(step_, at, a_.layout.total(), a_.grads.data());
  Status st = client_->WaitPushes();
  busy_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - first_push_).count();
  return st;
}

StatusOr<double> ParameterServerSync::GradSumSquares() {
  if (opts_.mode == ps::Consistency::kAsp) {
    last_sq_ = SumSquares(a_.grads.data(), a_.layout.total());
    scales_from_ = step_;
    scales_ = {ClipScale(std::sqrt(last_sq_), opts_.grad_clip)};
    return last_sq_;
  }
  // The next step needs steps < need applied; their norms give their clip factors. Norms of
  // later steps that every worker already pushed come along, so the servers can apply those
  // steps without waiting for a later pull.
  const int64_t need = step_ + 1 - (opts_.mode == ps::Consistency::kSsp ? opts_.staleness : 0);
  scales_.clear();
  scales_from_ = norms_known_;
  if (step_ >= norms_known_) {
    const auto t0 = std::chrono::steady_clock::now();
    RT_ASSIGN_OR_RETURN(std::vector<double> sq, client_->Norms(norms_known_, need - 1, step_));
    busy_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (double s : sq) scales_.push_back(ClipScale(std::sqrt(s), opts_.grad_clip));
    if (!sq.empty()) last_sq_ = sq.back();
    norms_known_ += static_cast<int64_t>(sq.size());
  }
  return last_sq_;
}

Status ParameterServerSync::AfterUpdate() {
  const auto t0 = std::chrono::steady_clock::now();
  Status st = client_->Pull(step_ + 1, scales_from_, scales_, a_.params.data());
  busy_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return st;
}

Status ParameterServerSync::Refresh(int64_t steps) {
  if (opts_.mode == ps::Consistency::kBsp) return Status::Ok();
  if (opts_.mode == ps::Consistency::kAsp) return client_->Pull(steps, steps, {}, a_.params.data());
  // SSP: the last s steps are still open; apply them all (their clip factors first).
  step_ = steps - 1 + opts_.staleness;
  RT_RETURN_IF_ERROR(GradSumSquares().status());
  return client_->Pull(steps + opts_.staleness, scales_from_, scales_, a_.params.data());
}

}  // namespace ringtrain
