#include "worker/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "checkpoint/checkpoint.h"
#include "checkpoint/model_file.h"
#include "checkpoint/safetensors.h"
#include "core/threads.h"
#include "models/tensor_parallel.h"
#include "parameter_server/auth.h"
#include "worker/ps_sync.h"

namespace ringtrain {

namespace {

using Clock = std::chrono::steady_clock;

std::atomic<int> g_stop_signal{0};
void OnStopSignal(int sig) { g_stop_signal.store(sig); }

double NowS() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

std::string FormatDuration(double s) {
  if (!std::isfinite(s) || s < 0) s = 0;
  const int64_t t = static_cast<int64_t>(s + 0.5);
  char buf[32];
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", (long long)(t / 3600), (long long)(t / 60 % 60), (long long)(t % 60));
  else std::snprintf(buf, sizeof buf, "%lld:%02lld", (long long)(t / 60), (long long)(t % 60));
  return buf;
}

}  // namespace

namespace {
CheckpointContent ContentOf(Task& task, std::vector<OptimState>& states, const OptimConfig& oc) {
  CheckpointContent c;
  c.layout = &task.arena().layout;
  c.params = task.arena().params.data();
  for (OptimState& s : states) c.states.push_back(&s);
  c.has_m = oc.kind != OptimKind::kSgd || oc.momentum > 0;
  c.has_v = oc.kind != OptimKind::kSgd;
  return c;
}
}  // namespace

void InstallPreemptionHandlers() {
  struct sigaction sa{};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGUSR1, &sa, nullptr);
}

StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const Config& config, const TrainOptions& opts) {
  std::unique_ptr<Trainer> t(new Trainer(config, opts));
  SetThreadBudget(static_cast<int>(config.Int("threads")), opts.local_size);
  RT_ASSIGN_OR_RETURN(t->oc_, OptimConfig::FromConfig(config));
  RT_ASSIGN_OR_RETURN(t->sched_, LrSchedule::FromConfig(config));
  coll::Communicator* comm = opts.comm && opts.comm->size() > 1 ? opts.comm : nullptr;
  t->world_ = comm ? comm->size() : 1;
  // Process groups: TP groups of T adjacent ranks (inside a node), DP groups across them. The
  // layout is checked before anything else happens, identically on every rank.
  const int64_t tp = config.Int("parallel.tensor");
  // Parameter servers: sync.ps_hosts, else the servers the launcher started.
  const std::string ps_hosts = config.Str("sync.ps_hosts").empty() ? opts.ps_hosts : config.Str("sync.ps_hosts");
  const bool use_ps = config.Str("sync.mode") == "ps" || (config.Str("sync.mode") == "auto" && !ps_hosts.empty());
  if (use_ps) {
    if (ps_hosts.empty())
      return InvalidArgument("sync.mode = ps needs servers: set sync.ps_hosts=HOST:PORT,... or start the job with "
                             "ringtrain launch --ps K");
    if (tp > 1) return InvalidArgument("sync.mode = ps does not combine with parallel.tensor > 1");
    if (config.Bool("dist.zero1"))
      return InvalidArgument("dist.zero1 does not apply to sync.mode = ps (the servers hold the optimizer state)");
    RT_RETURN_IF_ERROR(ps::ParseHostList(ps_hosts).status());
  }
  if (t->world_ % tp != 0)
    return InvalidArgument("parallel.tensor = " + std::to_string(tp) + " must divide the world size " +
                           std::to_string(t->world_) + " (tensor-parallel groups of " + std::to_string(tp) +
                           " ranks)");
  if (tp > 1 && config.Str("model.type") != "gpt")
    return InvalidArgument("config: parallel.tensor > 1 needs model.type gpt (model.type is " +
                           config.Str("model.type") + ")");
  if (tp > 1) RT_RETURN_IF_ERROR(CheckTensorParallelHeads(static_cast<int>(config.Int("model.n_head")), static_cast<int>(tp)));
  t->tp_ = static_cast<int>(tp);
  t->dp_ = t->world_ / t->tp_;
  t->dp_group_ = comm;
  if (t->tp_ > 1) {
    const int r = comm->rank();
    RT_ASSIGN_OR_RETURN(t->tp_comm_, comm->Split(r / t->tp_, r % t->tp_));
    RT_ASSIGN_OR_RETURN(t->dp_comm_, comm->Split(r % t->tp_, r / t->tp_));
    t->dp_group_ = t->dp_ > 1 ? t->dp_comm_.get() : nullptr;
  }
  coll::Communicator* dpc = t->dp_group_;
  TaskShard shard;
  if (dpc) shard = {dpc->rank(), dpc->size(), dpc, nullptr};
  shard.tp = t->tp_comm_.get();
  shard.local_rank = opts.local_rank;
  shard.local_size = opts.local_size;
  RT_ASSIGN_OR_RETURN(t->task_, MakeTask(config, nullptr, shard));
  t->accum_ = static_cast<int>(config.Int("train.grad_accum"));
  ParamArena<float>& A = t->task_->arena();
  t->decay_ranges_ = A.layout.DecayRanges();
  if (!opts.init_from.empty()) {
    if (t->tp_ == 1) {
      RT_RETURN_IF_ERROR(ImportGptSafetensors(opts.init_from, A).WithContext("--init-from"));
    } else {
      // The whole model, then this rank's part of it.
      ParamArena<float> full;
      full.layout = t->task_->FullLayout();
      full.Allocate();
      RT_RETURN_IF_ERROR(ImportGptSafetensors(opts.init_from, full).WithContext("--init-from"));
      ScatterFull(full.layout, full.params.data(), A.layout, A.params.data());
    }
  }
  if (dpc) {
    // Every rank starts from the parameters of the first rank of its data-parallel group.
    RT_RETURN_IF_ERROR(dpc->Broadcast(A.params.data(), static_cast<int64_t>(A.layout.total()), coll::DataType::kF32, 0)
                           .WithContext("broadcasting the initial parameters from rank 0"));
  }
  if (t->tp_ > 1) {
    for (const ParamSpec& sp : A.layout.specs())
      if (!sp.sharded()) t->replicated_.push_back({sp.offset, sp.offset + static_cast<size_t>(sp.numel)});
    std::sort(t->replicated_.begin(), t->replicated_.end());
    size_t n = 0;
    for (const auto& [b, e] : t->replicated_) n += e - b;
    if (t->dp_ > 2) t->replicated_buf_.resize(n);
  }
  AllReduceSyncOptions so;
  so.bucket_bytes = static_cast<size_t>(config.Float("dist.bucket_mb") * (1 << 20));
  so.overlap = config.Bool("dist.overlap");
  so.zero1 = config.Bool("dist.zero1");
  t->ckpt_every_steps_ = config.Int("checkpoint.every_steps");
  t->ckpt_every_minutes_ = config.Float("checkpoint.every_minutes");
  t->ckpt_async_ = config.Bool("checkpoint.async");
  if (use_ps) {
    // Worker 0 holds the whole optimizer state only while resuming, to hand it to the servers.
    const bool lead = !dpc || dpc->rank() == 0;
    if (lead && !opts.resume.empty()) {
      t->opt_states_.emplace_back();
      t->opt_states_.back().Allocate(t->oc_, A.layout.total(), 0);
    }
    if (!opts.resume.empty()) RT_RETURN_IF_ERROR(t->Resume());
    RT_RETURN_IF_ERROR(t->StartParameterServers(ps_hosts));
    t->opt_states_.clear();
    t->ckpt_async_ = false;  // the servers write their shards synchronously
  } else {
    // device cuda: the optimizer runs on the device, so nothing crosses between host and device in
    // a step; with data parallelism the task averages the gradients on the devices (NCCL), queued
    // behind backward. (Tensor parallelism, ZeRO-1 and parameter servers work on the host arena;
    // optim.on_device = off keeps the host.)
    t->on_device_ = t->tp_ == 1 && !(so.zero1 && t->dp_ > 1) && config.Str("optim.on_device") == "auto" &&
                    t->task_->CanOptimizeOnDevice(t->dp_ > 1);
    if (dpc && config.Str("device") == "cuda") {
      // Every rank of the group must take the same path (their collectives differ): all or none.
      double all = t->on_device_ ? 1.0 : 0.0;
      RT_RETURN_IF_ERROR(dpc->AllReduce(&all, 1, coll::DataType::kF64, coll::ReduceOp::kMin)
                             .WithContext("agreeing where the optimizer runs"));
      t->on_device_ = all > 0.5;
    }
    t->sync_ = t->on_device_ ? std::unique_ptr<GradientSync>(std::make_unique<NoSync>(A)) : MakeGradientSync(dpc, A, so);
    // The gradient norm sums over the TP group; replicated tensors count once (TP rank 0's).
    if (t->tp_ > 1 && t->tp_comm_->rank() != 0) t->sync_->set_norm_skip(t->replicated_);
    for (const auto& [b, e] : t->sync_->Owned()) {
      t->opt_states_.emplace_back();
      t->opt_states_.back().Allocate(t->oc_, e - b, b);
    }
    if (!opts.resume.empty()) RT_RETURN_IF_ERROR(t->Resume());
  }
  if (t->on_device_) {
    // After a resume: the loaded parameters and moments go up.
    RT_CHECK(t->opt_states_.size() == 1 && t->opt_states_[0].base == 0);
    RT_RETURN_IF_ERROR(t->task_->DeviceStart(t->oc_, t->opt_states_[0]));
  }
  if (!opts.checkpoint_root.empty() && t->ckpt_async_)
    t->PrepareSnapshot(t->CheckpointWriteSet(), ContentOf(*t->task_, t->opt_states_, t->oc_));
  t->last_save_time_ = NowS();
  return t;
}

// Connects this worker to every server; worker 0 starts the job on them with the current
// parameters (and, after a resume, the optimizer moments it loaded), and every worker waits for
// that before its first push.
Status Trainer::StartParameterServers(const std::string& hosts) {
  ParamArena<float>& A = task_->arena();
  coll::Communicator* dpc = dp_group_;
  ps::PsClientOptions co;
  RT_ASSIGN_OR_RETURN(co.hosts, ps::ParseHostList(hosts));
  RT_ASSIGN_OR_RETURN(co.token, ps::LoadToken(config_.Str("sync.token_file")));
  co.job_id = opts_.job_id;
  co.worker = dpc ? dpc->rank() : 0;
  co.workers = dp_;
  co.total = A.layout.total();
  co.deadline_s = config_.Float("dist.deadline_s");
  co.chunk_bytes = std::min<size_t>(16u << 20, std::max<size_t>(1 << 16, static_cast<size_t>(config_.Float("dist.bucket_mb") * (1 << 20))));
  auto client = ps::PsClient::Connect(co);
  if (!client.ok()) return client.status().WithContext("connecting to the parameter servers");
  PsSyncOptions po;
  RT_ASSIGN_OR_RETURN(po.mode, ps::ParseConsistency(config_.Str("sync.consistency")));
  po.staleness = po.mode == ps::Consistency::kSsp ? config_.Int("sync.staleness") : 0;
  po.grad_clip = oc_.grad_clip;
  po.bucket_bytes = static_cast<size_t>(config_.Float("dist.bucket_mb") * (1 << 20));
  po.overlap = config_.Bool("dist.overlap");
  auto sync = std::make_unique<ParameterServerSync>(std::move(*client), A, po, start_step_);
  if (co.worker == 0) {
    nlohmann::json job = {{"workers", dp_},
                          {"consistency", config_.Str("sync.consistency")},
                          {"staleness", po.staleness},
                          {"deadline_s", co.deadline_s},
                          {"step", start_step_},
                          {"config", config_.ToJson()}};
    nlohmann::json specs = nlohmann::json::array();
    for (const ParamSpec& sp : A.layout.specs())
      specs.push_back({{"name", sp.name}, {"shape", sp.shape}, {"decay", sp.decay}, {"offset", sp.offset}});
    job["specs"] = specs;
    const OptimState* st = opt_states_.empty() ? nullptr : &opt_states_[0];
    const float* m = st && st->m.size() ? st->m.data() : nullptr;
    const float* v = st && st->v.size() ? st->v.data() : nullptr;
    RT_RETURN_IF_ERROR(sync->client().Init(job, A.params.data(), m, v).WithContext("starting the job on the parameter servers"));
  }
  if (dpc) {
    int32_t go = 0;
    RT_RETURN_IF_ERROR(dpc->AllReduce(&go, 1, coll::DataType::kI32, coll::ReduceOp::kMax)
                           .WithContext("waiting for worker 0 to start the parameter servers"));
  }
  ps_ = sync.get();
  sync_ = std::move(sync);
  return Status::Ok();
}

Status Trainer::Resume() {
  const bool autom = opts_.resume == "auto";
  if (autom && opts_.checkpoint_root.empty()) return InvalidArgument("--resume auto needs a run directory or checkpoint.dir");
  const std::string from = autom ? opts_.checkpoint_root : opts_.resume;
  coll::Communicator* comm = world_ > 1 ? opts_.comm : nullptr;
  CheckpointContent c = ContentOf(*task_, opt_states_, oc_);
  auto meta = LoadCheckpoint(comm, from, autom, c);
  if (!meta.ok()) {
    if (autom && meta.status().code() == StatusCode::kNotFound) {
      if (opts_.print) std::printf("resume: no checkpoint in %s; starting from step 0\n", from.c_str());
      return Status::Ok();
    }
    return meta.status().WithContext("resuming");
  }
  if (meta->data_fingerprint != task_->DataDescription())
    return InvalidArgument("resuming from " + meta->path + ": it was trained on '" + meta->data_fingerprint +
                           "', this run's data is '" + task_->DataDescription() + "'");
  start_step_ = meta->step;
  opt_step_ = meta->step;
  if (opts_.print)
    std::printf("resumed from %s at step %lld (saved by %d rank(s)%s%s)\n", meta->path.c_str(), (long long)meta->step,
                meta->world_size,
                meta->tensor_parallel > 1 ? (", tensor parallel " + std::to_string(meta->tensor_parallel)).c_str() : "",
                meta->zero1 ? " with ZeRO-1" : "");
  return Status::Ok();
}

Status Trainer::SyncHost() {
  if (!host_stale_) return Status::Ok();
  RT_RETURN_IF_ERROR(task_->DeviceFetch(&opt_states_[0]).WithContext("copying parameters and optimizer state from the device"));
  host_stale_ = false;
  return Status::Ok();
}

Status Trainer::SaveCheckpointAt(int64_t step) {
  if (opts_.checkpoint_root.empty()) return Status::Ok();
  RT_RETURN_IF_ERROR(SyncHost().WithContext("saving the checkpoint of step " + std::to_string(step)));
  const bool async = ckpt_async_;
  coll::Communicator* comm = world_ > 1 ? opts_.comm : nullptr;
  CheckpointContent c = ContentOf(*task_, opt_states_, oc_);
  CheckpointMeta meta;
  meta.step = step;
  meta.zero1 = config_.Bool("dist.zero1") && dp_ > 1;
  meta.tensor_parallel = tp_;
  c.skip_replicated = tp_ > 1 && tp_comm_->rank() != 0;
  meta.config_json = config_.ToJson().dump();
  meta.data_fingerprint = task_->DataDescription();
  meta.trainer_state = {{"step", step},
                        {"consumed_items", step * ItemsPerStep()},
                        {"seed", config_.Int("seed")},
                        {"optimizer_step", opt_step_},
                        {"lr_next", sched_.At(step)},
                        {"world_size", world_},
                        {"tensor_parallel", tp_}};
  const Ranges write_set = CheckpointWriteSet();
  const int keep = static_cast<int>(config_.Int("checkpoint.keep"));
  const std::string what = "saving the checkpoint of step " + std::to_string(step);
  RT_RETURN_IF_ERROR(WaitForSave());
  last_save_time_ = NowS();
  if (ps_) {
    // The servers hold the parameters and moments: they write their shards into the checkpoint.
    // Every worker has pushed all of its steps by now, so after Refresh (SSP: the open steps
    // applied) the servers' state is the cut at this step.
    RT_RETURN_IF_ERROR(ps_->Refresh(step).WithContext(what));
    const ExtraShards servers = [this, step](const std::string& tmp, std::vector<std::string>* lists) -> Status {
      RT_ASSIGN_OR_RETURN(std::vector<std::string> l, ps_->client().Save(step, tmp));
      lists->insert(lists->end(), l.begin(), l.end());
      return Status::Ok();
    };
    return SaveCheckpoint(comm, opts_.checkpoint_root, c, meta, write_set, keep, servers).WithContext(what);
  }
  if (!async || stop_requested_) return SaveCheckpoint(comm, opts_.checkpoint_root, c, meta, write_set, keep).WithContext(what);
  // Asynchronous: copy what this rank writes (parameters and moments of its write set) and let a
  // background thread write it over a communicator of its own, while training goes on.
  if (comm && !save_comm_) {
    RT_ASSIGN_OR_RETURN(save_comm_, comm->Split(0, comm->rank()));
  }
  SaveSnapshot* snap = PrepareSnapshot(write_set, c);
  for (size_t k = 0; k < write_set.size(); ++k) {
    const auto [b, e] = write_set[k];
    std::copy(c.params + b, c.params + e, snap->params.begin() + static_cast<ptrdiff_t>(b));
    const OptimState* src = CoveringState(c.states, b, e);
    if (!src) continue;  // no moments (SGD without momentum)
    OptimState& st = snap->states[k];
    if (c.has_m) std::copy(src->m.data() + (b - src->base), src->m.data() + (e - src->base), st.m.data());
    if (c.has_v) std::copy(src->v.data() + (b - src->base), src->v.data() + (e - src->base), st.v.data());
  }
  snap->content = c;
  snap->content.params = snap->params.data();
  snap->content.states.clear();
  if (c.has_m || c.has_v)
    for (OptimState& st : snap->states) snap->content.states.push_back(&st);
  coll::Communicator* sc = save_comm_.get();
  const std::string root = opts_.checkpoint_root;
  save_thread_ = std::thread([this, snap, sc, root, meta, write_set, keep, what] {
    save_status_ = SaveCheckpoint(sc, root, snap->content, meta, write_set, keep).WithContext(what);
  });
  return Status::Ok();
}

// The copy's buffers live from one save to the next (the previous save has finished by then), and
// are allocated and touched when the trainer is built: fresh pages fault on first touch, which
// was most of the stall of an asynchronous save.
Trainer::SaveSnapshot* Trainer::PrepareSnapshot(const Ranges& write_set, const CheckpointContent& c) {
  if (!save_snap_) save_snap_ = std::make_shared<SaveSnapshot>();
  SaveSnapshot* snap = save_snap_.get();
  snap->params.resize(task_->arena().layout.total());
  snap->states.resize(write_set.size());
  for (size_t k = 0; k < write_set.size(); ++k) {
    const auto [b, e] = write_set[k];
    OptimState& st = snap->states[k];
    st.base = b;
    if (c.has_m && st.m.size() != e - b) st.m.Resize(e - b);
    if (c.has_v && st.v.size() != e - b) st.v.Resize(e - b);
  }
  return snap;
}

// Within each data-parallel group the ranks split the arena (their ZeRO-1 shards, or evenly);
// with tensor parallelism every group writes its own part of the model (WriteShard leaves the
// replicated tensors to TP rank 0's group).
Ranges Trainer::CheckpointWriteSet() {
  if (ps_) return {};  // the servers write everything
  return config_.Bool("dist.zero1") && dp_ > 1
             ? sync_->Owned()
             : EvenSplit(task_->arena().layout.total(), dp_group_ ? dp_group_->rank() : 0, dp_);
}

StatusOr<std::vector<float>> Trainer::FullParams() {
  RT_RETURN_IF_ERROR(SyncHost());
  const ParamArena<float>& A = task_->arena();
  if (tp_ == 1) return std::vector<float>(A.params.data(), A.params.data() + A.layout.total());
  std::vector<float> full;
  RT_RETURN_IF_ERROR(GatherFull(A.layout, A.params.data(), task_->FullLayout(), tp_comm_.get(), &full));
  return full;
}

Status Trainer::WaitForSave() {
  if (!save_thread_.joinable()) return Status::Ok();
  save_thread_.join();
  Status s = save_status_;
  save_status_ = Status::Ok();
  return s;
}

Trainer::~Trainer() {
  if (save_thread_.joinable()) save_thread_.join();
}

Status Trainer::MaybeCheckpoint(int64_t done, bool last) {
  last_step_saved_ = false;
  const int64_t every = ckpt_every_steps_;
  const bool saving = !opts_.checkpoint_root.empty() && (every > 0 || ckpt_every_minutes_ > 0);
  if (!(stop_requested_ || (saving && ((every > 0 && done % every == 0) || time_save_due_ || last)))) return Status::Ok();
  last_step_saved_ = true;
  if (stop_requested_ && opts_.checkpoint_root.empty())
    return Aborted("stopped by a signal at step " + std::to_string(done) + " (no run directory: nothing saved)")
        .WithExitCode(kPreemptedExitCode);
  RT_RETURN_IF_ERROR(SaveCheckpointAt(done));
  if (!stop_requested_) return Status::Ok();
  if (opts_.print) {
    std::printf("stopping at step %lld on a signal: checkpoint saved in %s/; continue with --resume auto\n",
                (long long)done, opts_.checkpoint_root.c_str());
    std::fflush(stdout);
  }
  return Aborted("preempted at step " + std::to_string(done) + " (checkpoint saved)").WithExitCode(kPreemptedExitCode);
}

StatusOr<double> Trainer::Step(int64_t step) {
  ParamArena<float>& A = task_->arena();
  if (on_device_)
    RT_RETURN_IF_ERROR(task_->DeviceZeroGrads().WithContext("step " + std::to_string(step + 1)));
  else
    A.grads.Zero();
  sync_->BeginStep(step);
  double loss = 0;
  for (int micro = 0; micro < accum_; ++micro) {
    const uint64_t index = static_cast<uint64_t>(step) * accum_ + micro;
    GradReadyFn ready;
    // One sync per optimizer step: buckets start during the last micro-step's backward.
    if (micro == accum_ - 1) ready = [this](size_t b, size_t e) { sync_->OnGradReady(b, e); };
    StatusOr<double> l = task_->MicroStep(index, 1.0f / static_cast<float>(accum_), ready);
    if (!l.ok()) return l.status().WithContext("step " + std::to_string(step + 1));
    loss += *l;
  }
  loss /= accum_;
  const std::string where = "gradient sync at step " + std::to_string(step + 1);
  if (opts_.barrier_before_sync && world_ > 1)
    RT_RETURN_IF_ERROR(opts_.comm->Barrier().WithContext("barrier before the gradient sync at step " + std::to_string(step + 1)));
  // Optimizer on the device: backward was only enqueued, so backward's end (t0) is when the
  // device finished it, and the wait for the gradient averages queued behind it is the exposed
  // communication.
  if (on_device_) RT_RETURN_IF_ERROR(task_->DeviceFinishBackward().WithContext("step " + std::to_string(step + 1)));
  const auto t0 = Clock::now();
  RT_RETURN_IF_ERROR(sync_->Finish().WithContext(where));
  if (on_device_) RT_RETURN_IF_ERROR(task_->DeviceFinishGradSync().WithContext(where));
  const auto t_synced = Clock::now();
  double exposed = std::chrono::duration<double>(t_synced - t0).count();
  last_backward_end_s_ = std::chrono::duration<double>(t0.time_since_epoch()).count();
  last_synced_s_ = std::chrono::duration<double>(t_synced.time_since_epoch()).count();
  RT_ASSIGN_OR_RETURN(double sq, on_device_ ? task_->DeviceGradSumSquares() : sync_->GradSumSquares());
  // Under PS the norm is a round trip to the servers (they have summed every worker's push):
  // communication, not compute. (All-reduce sync: a local sum and one 8-byte all-reduce.)
  if (ps_) exposed += std::chrono::duration<double>(Clock::now() - t_synced).count();
  if (tp_ > 1)
    RT_RETURN_IF_ERROR(tp_comm_->AllReduce(&sq, 1, coll::DataType::kF64, coll::ReduceOp::kSum)
                           .WithContext("gradient norm over the tensor-parallel group"));
  last_grad_norm_ = std::sqrt(sq);
  const float scale = ClipScale(last_grad_norm_, oc_.grad_clip);
  const Ranges& owned = sync_->Owned();
  if (on_device_) {
    RT_RETURN_IF_ERROR(task_->DeviceOptimizerUpdate(oc_, sched_.At(step), step + 1, scale, decay_ranges_)
                           .WithContext("optimizer step " + std::to_string(step + 1) + " on the device"));
    host_stale_ = true;
  } else {
    for (size_t i = 0; i < owned.size(); ++i)
      OptimizerUpdate(oc_, sched_.At(step), step + 1, scale, A.params.data(), A.grads.data(), opt_states_[i],
                      owned[i].first, owned[i].second, decay_ranges_);
  }
  opt_step_ = step + 1;
  const auto t1 = Clock::now();
  RT_RETURN_IF_ERROR(sync_->AfterUpdate().WithContext(where));
  last_tp_bytes_ = task_->TakeTpBytes();
  last_dp_bytes_ = dp_ > 1 ? task_->arena().layout.total() * sizeof(float) : 0;
  // This step's share of running totals.
  auto since = [](auto now, auto* seen) {
    const auto d = now - *seen;
    *seen = now;
    return d;
  };
  if (ps_) last_dp_bytes_ = since(ps_->client().bytes_pushed() + ps_->client().bytes_pulled(), &ps_bytes_seen_);
  last_comm_busy_s_ = since(sync_->CommBusySeconds(), &comm_busy_seen_s_);
  // Everything this rank's transport sent for collectives (gradient sync, tensor parallelism, the
  // loss average), plus what it pushed to parameter servers.
  last_bytes_sent_ = since((opts_.comm ? opts_.comm->transport_bytes_sent() : 0) + (ps_ ? ps_->client().bytes_pushed() : 0),
                           &bytes_sent_seen_);
  if (tp_ > 1) last_tp_bytes_ += sizeof(double);  // the gradient norm
  if (tp_ > 1 && dp_ > 2) {
    // Replicated parameters (LayerNorms, position embedding, row-parallel biases) get the same
    // gradients on every TP rank, but each TP position's DP group reduces them in buckets cut
    // differently; with more than 2 ranks the summation order, and so the rounding, can differ.
    // TP rank 0's copy is authoritative. (With 1 or 2 DP ranks the sums are bitwise equal.)
    float* P = task_->arena().params.data();
    auto at = replicated_buf_.begin();
    for (const auto& [b, e] : replicated_) at = std::copy(P + b, P + e, at);
    RT_RETURN_IF_ERROR(tp_comm_->Broadcast(replicated_buf_.data(), static_cast<int64_t>(replicated_buf_.size()),
                                           coll::DataType::kF32, 0)
                           .WithContext("broadcasting replicated parameters over the tensor-parallel group"));
    at = replicated_buf_.begin();
    for (const auto& [b, e] : replicated_) {
      std::copy(at, at + static_cast<ptrdiff_t>(e - b), P + b);
      at += static_cast<ptrdiff_t>(e - b);
    }
    last_tp_bytes_ += replicated_buf_.size() * sizeof(float);
  }
  // Step-boundary decisions every rank must share: stop (a preemption signal reached any rank)
  // and a time-based checkpoint (rank 0's clock decides).
  const double minutes = ckpt_every_minutes_;
  const bool lead = world_ == 1 || opts_.comm->rank() == 0;
  double v[3] = {loss, g_stop_signal.load() != 0 ? 1.0 : 0.0,
                 lead && minutes > 0 && NowS() - last_save_time_ >= minutes * 60 ? 1.0 : 0.0};
  // Workers that do not move in lockstep (SSP/ASP parameter servers) meet only at log steps and
  // the last step; in between each reports its own loss and decides nothing.
  const int64_t done = step + 1, steps = config_.Int("train.steps");
  const bool meet = sync_->Lockstep() || done % config_.Int("train.log_interval") == 0 || done >= steps;
  if (!meet) v[1] = v[2] = 0;
  if (world_ > 1 && meet) {
    // Every rank reports (and checks for divergence on) the same, global loss.
    RT_RETURN_IF_ERROR(opts_.comm->AllReduce(v, 3, coll::DataType::kF64, coll::ReduceOp::kSum)
                           .WithContext("averaging the loss at step " + std::to_string(step + 1)));
    loss = v[0] / world_;
  }
  stop_requested_ = v[1] > 0;
  time_save_due_ = v[2] > 0;
  // SSP/ASP: once every worker is done, everyone takes the servers' final parameters.
  if (!sync_->Lockstep() && done == steps) RT_RETURN_IF_ERROR(sync_->Refresh(steps).WithContext(where));
  exposed += std::chrono::duration<double>(Clock::now() - t1).count();
  last_exposed_s_ = exposed;
  return loss;
}

StatusOr<TrainSummary> Trainer::Run() {
  const int64_t steps = config_.Int("train.steps");
  const int64_t eval_interval = config_.Int("train.eval_interval");
  const int64_t log_interval = config_.Int("train.log_interval");
  const bool tty = opts_.print && ::isatty(STDOUT_FILENO);
  if (!opts_.run_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(opts_.run_dir, ec);
    if (ec) return IoError("creating run directory " + opts_.run_dir + ": " + ec.message());
    const std::string mpath = opts_.run_dir + "/metrics.jsonl";
    metrics_ = std::fopen(mpath.c_str(), start_step_ > 0 ? "a" : "w");
    if (!metrics_) return IoError("opening " + mpath + " for writing");
    RT_RETURN_IF_ERROR(WriteFileAtomic(opts_.run_dir + "/config.json", config_.ToJson().dump(2) + "\n"));
  }
  struct Closer {
    std::FILE*& f;
    ~Closer() {
      if (f) std::fclose(f);
      f = nullptr;
    }
  } closer{metrics_};

  const std::optional<double> entropy = task_->EntropyRate();
  if (opts_.print) {
    std::printf("%s", task_->Header().c_str());
    std::printf("train: %lld steps of %lld %s (%s per micro-step x accum %d%s), %s lr %.2e, %d threads%s\n",
                (long long)steps, (long long)ItemsPerStep(), task_->ItemName(), task_->BatchShape().c_str(), accum_,
                dp_ > 1 ? (" x " + std::to_string(dp_) + " data-parallel ranks").c_str() : "", config_.Str("optim.name").c_str(),
                oc_.lr, ThreadBudget(), world_ > 1 ? " per rank" : "");
    if (tp_ > 1)
      std::printf("tensor parallel: %d ranks per group (%d heads each), %d group(s) (%s)\n", tp_,
                  static_cast<int>(config_.Int("model.n_head")) / tp_, dp_, opts_.comm->transport_kind());
    if (ps_)
      std::printf("parameter servers: %d worker(s), %s, bucket %.3g MB, %s\n", dp_, sync_->name(),
                  config_.Float("dist.bucket_mb"), config_.Bool("dist.overlap") ? "pushed during backward" : "pushed after backward");
    else if (dp_ > 1 && on_device_)
      std::printf("data parallel: %d ranks, gradients averaged on the devices by NCCL, each block's queued as "
                  "backward finishes it\n", dp_);
    else if (dp_ > 1)
      std::printf("data parallel: %d ranks, gradient sync %s (%s, bucket %.3g MB, %s)\n", dp_, sync_->name(),
                  opts_.comm->transport_kind(), config_.Float("dist.bucket_mb"),
                  config_.Bool("dist.overlap") ? "overlapped with backward" : "after backward");
    if (on_device_)
      std::printf("optimizer: %s on %s (parameters, gradients and moments stay on the device)\n",
                  config_.Str("optim.name").c_str(), task_->DeviceName().c_str());
    if (entropy)
      std::printf("synthetic source entropy rate: %.4f nats/token (the floor the loss should approach)\n", *entropy);
    std::fflush(stdout);
  }

  TrainSummary sum;
  sum.entropy_rate = entropy;
  const auto t0 = Clock::now();
  double window_loss = 0;
  int64_t window_n = 0;
  double last_val = std::nan("");
  auto t_last = t0;
  int64_t step_last = 0;
  double rate = 0;
  for (int64_t step = start_step_; step < steps; ++step) {
    RT_ASSIGN_OR_RETURN(double loss, Step(step));
    if (!std::isfinite(loss))
      return Internal("training diverged: loss is " + std::to_string(loss) + " at step " + std::to_string(step + 1) +
                      " (lower optim.lr or enable optim.grad_clip)");
    window_loss += loss;
    ++window_n;
    const int64_t done = step + 1;
    const bool last = done == steps;
    if (done % eval_interval == 0 || last) {
      RT_ASSIGN_OR_RETURN(EvalResult ev, task_->Evaluate());
      last_val = ev.loss;
      sum.final_metrics = ev.metrics;
      if (metrics_) {
        nlohmann::json row = {{"step", done}, {"val_loss", last_val}};
        for (auto it = ev.metrics.begin(); it != ev.metrics.end(); ++it) row[it.key()] = it.value();
        std::fprintf(metrics_, "%s\n", row.dump().c_str());
      }
      if (opts_.print) {
        std::printf("%sstep %lld: val loss %.4f", tty ? "\r\x1b[K" : "", (long long)done, last_val);
        if (entropy) std::printf(" (entropy rate %.4f)", *entropy);
        if (ev.metrics.contains("accuracy"))
          std::printf(", accuracy %.4f, macro-F1 %.4f", ev.metrics["accuracy"].get<double>(),
                      ev.metrics["macro_f1"].get<double>());
        std::printf("\n%s", ev.report.c_str());
      }
    }
    if (done % log_interval == 0 || last) {
      const auto now = Clock::now();
      const double dt = std::chrono::duration<double>(now - t_last).count();
      rate = dt > 0 ? static_cast<double>((done - step_last) * ItemsPerStep()) / dt : 0;
      t_last = now;
      step_last = done;
      const double elapsed = std::chrono::duration<double>(now - t0).count();
      const double eta = elapsed / static_cast<double>(done - start_step_) * static_cast<double>(steps - done);
      const double mean = window_loss / static_cast<double>(window_n);
      sum.final_train_loss = mean;
      window_loss = 0;
      window_n = 0;
      const double lr = sched_.At(step);
      if (metrics_) {
        nlohmann::json row = {{"step", done}, {"loss", mean}, {"lr", lr}, {"grad_norm", last_grad_norm_},
                              {std::string(task_->ItemUnit()) + "_per_s", rate},
                              {"time_s", elapsed}};
        std::fprintf(metrics_, "%s\n", row.dump().c_str());
        std::fflush(metrics_);
      }
      if (opts_.print) {
        std::printf("%sstep %lld/%lld | loss %.4f | lr %.2e | %.0f %s/s | ETA %s%s", tty ? "\r\x1b[K" : "",
                    (long long)done, (long long)steps, mean, lr, rate, task_->ItemName(), FormatDuration(eta).c_str(),
                    tty ? "" : "\n");
        std::fflush(stdout);
      }
    }
    if (stop_requested_ && opts_.print && tty) std::printf("\n");
    RT_RETURN_IF_ERROR(MaybeCheckpoint(done, last));
  }
  RT_RETURN_IF_ERROR(WaitForSave());
  if (tty) std::printf("\n");
  sum.wall_s = std::chrono::duration<double>(Clock::now() - t0).count();
  sum.steps = steps;
  if (steps == 0) {
    RT_ASSIGN_OR_RETURN(EvalResult ev, task_->Evaluate());
    sum.final_val_loss = ev.loss;
    sum.final_metrics = ev.metrics;
  } else {
    sum.final_val_loss = last_val;
  }
  sum.items_per_s = sum.wall_s > 0 ? static_cast<double>(steps * ItemsPerStep()) / sum.wall_s : 0;
  if (tp_ > 1) {
    // The model file holds the whole model: gather it (collective over the TP group).
    RT_ASSIGN_OR_RETURN(std::vector<float> full, FullParams());
    if (!opts_.run_dir.empty()) {
      RT_RETURN_IF_ERROR(SaveModel(opts_.run_dir + "/model", config_, task_->ModelMeta(), full.data(), full.size()));
      RT_RETURN_IF_ERROR(WriteSummary(sum));
    }
  } else if (!opts_.run_dir.empty()) {
    RT_RETURN_IF_ERROR(SyncHost().WithContext("saving the model"));
    const auto& A = task_->arena();
    RT_RETURN_IF_ERROR(
        SaveModel(opts_.run_dir + "/model", config_, task_->ModelMeta(), A.params.data(), A.layout.total()));
    RT_RETURN_IF_ERROR(WriteSummary(sum));
  }
  if (opts_.print) {
    std::printf("done: %lld steps in %.1f s, %.0f %s/s; final train loss %.4f, val loss %.4f", (long long)steps,
                sum.wall_s, sum.items_per_s, task_->ItemName(), sum.final_train_loss, sum.final_val_loss);
    if (sum.final_metrics.contains("accuracy"))
      std::printf(", accuracy %.4f", sum.final_metrics["accuracy"].get<double>());
    if (sum.entropy_rate) std::printf(" (entropy rate %.4f, gap %.4f)", *sum.entropy_rate, sum.final_val_loss - *sum.entropy_rate);
    std::printf("\n");
    if (!opts_.run_dir.empty()) std::printf("run directory: %s\n", opts_.run_dir.c_str());
  }
  return sum;
}

Status Trainer::WriteSummary(const TrainSummary& s) {
  nlohmann::json j = {{"final_train_loss", s.final_train_loss},
                      {"final_val_loss", s.final_val_loss},
                      {"steps", s.steps},
                      {std::string(task_->ItemUnit()) + "_per_s", s.items_per_s},
                      {"wall_s", s.wall_s},
                      {"num_params", task_->NumParams()},
                      {"data", task_->DataDescription()}};
  if (s.entropy_rate) j["entropy_rate"] = *s.entropy_rate;
  if (s.final_metrics.contains("accuracy")) {
    j["final_accuracy"] = s.final_metrics["accuracy"];
    j["final_macro_f1"] = s.final_metrics["macro_f1"];
  }
  return WriteFileAtomic(opts_.run_dir + "/summary.json", j.dump(2) + "\n");
}

}  // namespace ringtrain
