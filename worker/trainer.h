// The training loop: one loop for every task (GPT language modelling, CNN classification), data
// source and gradient sync engine. It owns the task, optimizer state and schedule, runs optimizer
// steps (with gradient accumulation), evaluates, prints progress, writes metrics (JSONL) and the
// summary, and saves the model.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "checkpoint/checkpoint.h"
#include "core/config.h"
#include "models/optim.h"
#include "worker/grad_sync.h"
#include "worker/task.h"

namespace ringtrain {

class ParameterServerSync;

struct TrainOptions {
  std::string run_dir;     // empty: no files written (benchmarks, ranks other than 0)
  bool print = true;       // progress and summary lines on stdout
  // Benchmarks: after backward every rank waits for all others before the gradient sync starts,
  // so the sync's time is communication alone (use with dist.overlap=false).
  bool barrier_before_sync = false;
  // The group this process trains with (not owned; null or size 1: alone) and the number of
  // ranks on this node (threads = 0 splits the cores between them). With parallel.tensor = T the
  // trainer splits it into tensor-parallel groups of T adjacent ranks and data-parallel groups of
  // the ranks at the same position in theirs.
  coll::Communicator* comm = nullptr;
  int local_size = 1;
  int local_rank = 0;  // this process's index on its node (device cuda: the GPU it uses)
  // Checkpoints: the root every rank saves into and resumes from (empty: no checkpoints), and
  // what to resume: "" (start fresh), "auto" (the newest usable checkpoint in the root, else
  // fresh) or a checkpoint directory.
  std::string checkpoint_root;
  std::string resume;
  // Initial parameters from a safetensors file (GPT-2 names for GPT), instead of the seeded init.
  std::string init_from;
  // Parameter servers the launcher started (HOST:PORT,...; sync.ps_hosts takes precedence), and
  // the job's name on them (the same on every rank).
  std::string ps_hosts;
  std::string job_id = "ringtrain";
};

// Exit status of a run stopped by SIGTERM or SIGUSR1 after saving a checkpoint (EX_TEMPFAIL):
// resubmit it with --resume auto.
constexpr int kPreemptedExitCode = 75;
// Makes SIGTERM and SIGUSR1 request a checkpoint and a clean stop at the next step boundary.
void InstallPreemptionHandlers();

struct TrainSummary {
  double final_train_loss = 0, final_val_loss = 0, items_per_s = 0, wall_s = 0;
  int64_t steps = 0;
  std::optional<double> entropy_rate;
  nlohmann::json final_metrics = nlohmann::json::object();  // classification metrics
};

class Trainer {
 public:
  // Validates the config against the data and builds everything; no step runs yet.
  static StatusOr<std::unique_ptr<Trainer>> Create(const Config& config, const TrainOptions& opts);

  // Runs train.steps optimizer steps with evaluation, metrics, summary and model saving.
  StatusOr<TrainSummary> Run();
  // One optimizer step (all micro-steps); returns the mean training loss of the step.
  StatusOr<double> Step(int64_t step);
  // Validation loss (and metrics) of the task, over the whole group.
  StatusOr<EvalResult> Evaluate() { return task_->Evaluate(); }

  // Tokens (language models) or images (classifiers) per optimizer step, over all ranks.
  int64_t ItemsPerStep() const { return task_->ItemsPerMicroStep() * accum_ * dp_; }
  int world_size() const { return world_; }
  int tensor_parallel() const { return tp_; }
  int data_parallel() const { return dp_; }
  // The whole model's parameters (gathered over the tensor-parallel group; collective there;
  // copied from the device first when the optimizer runs there).
  StatusOr<std::vector<float>> FullParams();
  // Whether the optimizer runs on the device (device cuda, no TP/ZeRO-1/PS, optim.on_device auto; data
  // parallelism through NCCL): then the host arena is brought up to date only by checkpoints,
  // FullParams and the saved model.
  bool optimizer_on_device() const { return on_device_; }
  // How gradients are made consistent, for reports: the sync engine's name, or "nccl (device)"
  // when data-parallel ranks average them on their GPUs.
  std::string SyncName() const { return on_device_ && dp_ > 1 ? "nccl (device)" : sync_->name(); }
  // Payload bytes of the last step's tensor-parallel all-reduces (model activations and gradients,
  // plus the replicated-parameter broadcast) and of its data-parallel gradient sync, per rank
  // (parameter servers: the bytes pushed and pulled).
  uint64_t last_tp_bytes() const { return last_tp_bytes_; }
  uint64_t last_dp_bytes() const { return last_dp_bytes_; }
  Task& task() { return *task_; }
  GradientSync& sync() { return *sync_; }
  // Seconds of the last step spent waiting for communication that backward did not hide: the
  // gradient sync after backward (which includes waiting for slower ranks to finish theirs), the
  // parameter all-gather (ZeRO-1) and the loss average.
  double last_exposed_comm_s() const { return last_exposed_s_; }
  // Seconds the gradient sync's communication was in progress during the last step (hidden behind
  // backward or waited for), and payload bytes this rank sent (collectives of every kind, and
  // pushes to parameter servers).
  double last_comm_busy_s() const { return last_comm_busy_s_; }
  uint64_t last_bytes_sent() const { return last_bytes_sent_; }
  // Steady-clock times (seconds) of the last step: backward done on this rank, gradients synced.
  // On one host the clock is shared, so max over ranks of backward_end tells how much of the wait
  // was for the slowest rank rather than for the transfer.
  double last_backward_end_s() const { return last_backward_end_s_; }
  double last_synced_s() const { return last_synced_s_; }

 private:
  Trainer(const Config& c, const TrainOptions& o) : config_(c), opts_(o) {}
  Status WriteSummary(const TrainSummary& s);
  Status Resume();
  Status SaveCheckpointAt(int64_t step);
  // Optimizer on the device: copies its parameters and moments into the host arena and
  // opt_states_[0] if a step changed them since the last copy.
  Status SyncHost();

 public:
  ~Trainer();
  // After step `done` (1-based count) of Run: saves a checkpoint when one is due (every_steps,
  // every_minutes, the last step, or a stop signal, after which it returns the preemption status).
  Status MaybeCheckpoint(int64_t done, bool last);
  // Whether the last MaybeCheckpoint saved (or started saving) a checkpoint.
  bool last_step_saved() const { return last_step_saved_; }
  // Waits for an asynchronous save in flight; returns its status.
  Status WaitForSave();
  // First step of Run (non-zero after a resume).
  int64_t start_step() const { return start_step_; }

 private:
  int64_t start_step_ = 0;
  // checkpoint.* keys, read once.
  int64_t ckpt_every_steps_ = 0;
  double ckpt_every_minutes_ = 0;
  bool ckpt_async_ = false;
  bool last_step_saved_ = false;
  // checkpoint.async: the copy being written and the thread writing it (over save_comm_, a
  // communicator of its own, so its collectives never interleave with training's).
  struct SaveSnapshot {
    std::vector<float> params;
    std::vector<OptimState> states;
    CheckpointContent content;
  };
  SaveSnapshot* PrepareSnapshot(const std::vector<std::pair<size_t, size_t>>& write_set, const CheckpointContent& c);
  std::vector<std::pair<size_t, size_t>> CheckpointWriteSet();
  std::shared_ptr<SaveSnapshot> save_snap_;
  std::unique_ptr<coll::Communicator> save_comm_;
  std::thread save_thread_;
  Status save_status_;
  bool stop_requested_ = false, time_save_due_ = false;
  double last_save_time_ = 0;

  Config config_;
  TrainOptions opts_;
  std::unique_ptr<Task> task_;
  OptimConfig oc_;
  LrSchedule sched_;
  std::vector<OptimState> opt_states_;  // one per owned range of the sync engine
  int64_t opt_step_ = 0;
  std::unique_ptr<GradientSync> sync_;
  ParameterServerSync* ps_ = nullptr;  // sync_ when gradients go to parameter servers
  Status StartParameterServers(const std::string& hosts);
  int world_ = 1, tp_ = 1, dp_ = 1;
  // Tensor parallelism: the groups (owned), the data-parallel group used (dp_comm_ or the world),
  // and the replicated parameters' ranges (left out of the clip norm on TP ranks but the first,
  // and re-broadcast from TP rank 0 after every update when DP > 2).
  std::unique_ptr<coll::Communicator> tp_comm_, dp_comm_;
  coll::Communicator* dp_group_ = nullptr;
  Ranges replicated_;
  std::vector<float> replicated_buf_;
  uint64_t last_tp_bytes_ = 0, last_dp_bytes_ = 0, ps_bytes_seen_ = 0;
  double last_exposed_s_ = 0, last_backward_end_s_ = 0, last_synced_s_ = 0;
  double last_comm_busy_s_ = 0, comm_busy_seen_s_ = 0;
  uint64_t last_bytes_sent_ = 0, bytes_sent_seen_ = 0;
  std::vector<std::pair<size_t, size_t>> decay_ranges_;
  int accum_ = 1;
  bool on_device_ = false;   // the task's device holds the master parameters and the moments
  bool host_stale_ = false;  // on_device_, and a step ran since the host copies were updated
  double last_grad_norm_ = 0;
  std::FILE* metrics_ = nullptr;
};

}  // namespace ringtrain
