// `ringtrain bench train --config F [--steps N] [--warmup W] [--json] [--set key=value ...]`:
// times optimizer steps after warm-up and prints tokens/s and ms/step. Under a launcher (mpirun,
// srun, ringtrain launch) it times the data-parallel job: aggregate throughput over all ranks and
// the share of each step spent waiting for communication that backward did not hide. Figures,
// not pass/fail.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/threads.h"
#include "worker/trainer.h"

namespace ringtrain::cli {

namespace {
struct BenchArgs {
  std::string config;
  std::vector<std::string> sets;
  int steps = 20;
  int warmup = 3;
  bool json = false;
  bool barrier_before_sync = false;
  std::string checkpoint_dir;
  bool vs_one_rank = false;  // also time rank 0 alone, in blocks alternating with the job's steps
  int block = 10;
  double peak_tflops = 0;  // 0: from the GPU's name (device cuda), else no MFU
};

// Dense (no sparsity) bf16 tensor-core peak of the GPUs we know, in TFLOP/s, from their names as
// CUDA reports them; 0 for any other device.
double DenseBf16PeakTflops(const std::string& name) {
  struct Known {
    const char* part;
    double tflops;
  };
  // Most specific first: "H200 NVL" before "H200", "H100 PCIe" before "H100".
  static const Known kKnown[] = {{"H200 NVL", 835.0}, {"H200", 989.4},  {"H100 PCIe", 756.0}, {"H100 NVL", 835.0},
                                 {"H100", 989.4},     {"A100", 312.0},  {"L40S", 362.0},      {"A10G", 70.0}};
  for (const auto& k : kKnown)
    if (name.find(k.part) != std::string::npos) return k.tflops;
  return 0.0;
}

using BenchClock = std::chrono::steady_clock;

double MsSince(BenchClock::time_point t0) {
  return std::chrono::duration<double, std::milli>(BenchClock::now() - t0).count();
}

// Milliseconds from t0 (a step's start) to the end of that step's last backward.
double BackwardEndMs(const Trainer& t, BenchClock::time_point t0) {
  return t.last_backward_end_s() * 1000.0 - std::chrono::duration<double, std::milli>(t0.time_since_epoch()).count();
}

Status BenchTrain(const BenchArgs& a) {
  if (a.steps < 1) return InvalidArgument("--steps must be >= 1");
  if (a.warmup < 0) return InvalidArgument("--warmup must be >= 0");
  if (a.block < 1) return InvalidArgument("--block must be >= 1");
  RT_ASSIGN_OR_RETURN(Config config, Config::Load(a.config, a.sets));
  RT_ASSIGN_OR_RETURN(Distributed dist, SetUpDistributed(config));
  TrainOptions opts;
  opts.print = false;
  opts.comm = dist.comm.get();
  opts.local_size = dist.launch.local_size;
  opts.local_rank = dist.launch.local_rank;
  opts.checkpoint_root = a.checkpoint_dir;
  opts.ps_hosts = dist.launch.ps_hosts;
  opts.job_id = "bench";
  opts.barrier_before_sync = a.barrier_before_sync;
  RT_ASSIGN_OR_RETURN(std::unique_ptr<Trainer> trainer, Trainer::Create(config, opts));
  for (int i = 0; i < a.warmup; ++i) RT_RETURN_IF_ERROR(trainer->Step(i).status());
  std::vector<double> ms, save_ms;  // save_ms: steps that included a checkpoint save
  double loss = 0, exposed_ms = 0, skew_ms = 0, comm_ms = 0, hidden_ms = 0, sent_bytes = 0, compute_ms = 0;
  // On one host (a shared steady clock) the wait for the slowest rank's backward is split off.
  // (RINGTRAIN_SHARED_CLOCK=1: ranks in network namespaces of one host, as bench scaling starts them.)
  const bool one_host = dist.comm && (dist.launch.local_size == dist.launch.size || std::getenv("RINGTRAIN_SHARED_CLOCK"));
  int64_t next = a.warmup;  // the job's next step
  auto timed_step = [&]() -> Status {
    const int64_t i = next++;
    const auto t0 = BenchClock::now();
    RT_ASSIGN_OR_RETURN(loss, trainer->Step(i));
    if (!a.checkpoint_dir.empty()) RT_RETURN_IF_ERROR(trainer->MaybeCheckpoint(i + 1, false));
    const double step_ms = MsSince(t0);
    compute_ms += BackwardEndMs(*trainer, t0);
    (!a.checkpoint_dir.empty() && trainer->last_step_saved() ? save_ms : ms).push_back(step_ms);
    exposed_ms += trainer->last_exposed_comm_s() * 1000.0;
    comm_ms += trainer->last_comm_busy_s() * 1000.0;
    // Communication that ran while backward still computed: busy time beyond the wait after it.
    hidden_ms += std::max(0.0, trainer->last_comm_busy_s() - trainer->last_exposed_comm_s()) * 1000.0;
    sent_bytes += static_cast<double>(trainer->last_bytes_sent());
    if (one_host) {  // outside the timed step
      double last_ready = trainer->last_backward_end_s();
      RT_RETURN_IF_ERROR(dist.comm->AllReduce(&last_ready, 1, coll::DataType::kF64, coll::ReduceOp::kMax));
      const double wait = trainer->last_synced_s() - trainer->last_backward_end_s();
      skew_ms += std::min(wait, std::max(0.0, last_ready - trainer->last_backward_end_s())) * 1000.0;
    }
    return Status::Ok();
  };
  const int world = trainer->world_size();
  const bool vs_one = a.vs_one_rank && world > 1;
  double solo_ms = 0, solo_compute_ms = 0;  // rank 0 alone, over a.steps timed steps
  int64_t solo_items = 0;
  if (!vs_one) {
    for (int i = 0; i < a.steps; ++i) RT_RETURN_IF_ERROR(timed_step());
  } else {
    // The reference for data-parallel speed-up is one rank alone at the same per-rank batch and
    // threads. Timed in separate runs it drifts with the host between runs (this machine's 1-rank
    // step time moves by up to 30% from minute to minute), so it is timed here, in blocks that
    // alternate with the job's: rank 0 trains a model of its own, alone, while the other ranks
    // sleep in a barrier (patient waits: their cores idle, as if they were absent). Each block's
    // first step is untimed, for both sides (caches, and ranks waking from their sleep).
    std::unique_ptr<Trainer> solo;
    if (dist.comm->rank() == 0) {
      TrainOptions so = opts;
      so.comm = nullptr;
      so.checkpoint_root.clear();
      RT_ASSIGN_OR_RETURN(solo, Trainer::Create(config, so));
      for (int i = 0; i < a.warmup; ++i) RT_RETURN_IF_ERROR(solo->Step(i).status());
      solo_items = solo->ItemsPerStep();
    }
    int64_t solo_next = a.warmup;
    for (int done = 0; done < a.steps;) {
      const int k = std::min(a.block, a.steps - done);
      RT_RETURN_IF_ERROR(dist.comm->Barrier());
      if (solo) {
        for (int j = 0; j <= k; ++j) {
          const auto t0 = BenchClock::now();
          RT_RETURN_IF_ERROR(solo->Step(solo_next++).status());
          if (j == 0) continue;
          solo_ms += MsSince(t0);
          solo_compute_ms += BackwardEndMs(*solo, t0);
        }
      }
      dist.comm->set_patient(!solo);
      const Status met = dist.comm->Barrier();
      dist.comm->set_patient(false);
      RT_RETURN_IF_ERROR(met);
      RT_RETURN_IF_ERROR(trainer->Step(next++).status());  // untimed
      for (int j = 0; j < k; ++j) RT_RETURN_IF_ERROR(timed_step());
      done += k;
    }
  }
  RT_RETURN_IF_ERROR(trainer->WaitForSave());
  if (ms.empty()) return InvalidArgument("every timed step saved a checkpoint; raise checkpoint.every_steps");
  double total = 0;
  for (double m : ms) total += m;
  double save_total = 0;
  for (double m : save_ms) save_total += m;
  // The job is as fast as its slowest rank; exposed communication is averaged over ranks.
  double sums[7] = {total, exposed_ms, skew_ms, comm_ms, hidden_ms, sent_bytes, compute_ms};
  if (world > 1) {
    RT_RETURN_IF_ERROR(dist.comm->AllReduce(&sums[0], 1, coll::DataType::kF64, coll::ReduceOp::kMax));
    RT_RETURN_IF_ERROR(dist.comm->AllReduce(&sums[1], 6, coll::DataType::kF64, coll::ReduceOp::kAvg));
  }
  compute_ms = sums[6];
  total = sums[0];
  exposed_ms = sums[1];
  skew_ms = sums[2];
  comm_ms = sums[3];
  hidden_ms = sums[4];
  sent_bytes = sums[5];
  const double mean = total / static_cast<double>(ms.size());
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2];
  const double per_s = static_cast<double>(trainer->ItemsPerStep()) / (mean / 1000.0);
  const double exposed_share = exposed_ms / total;
  // Rank 0's mean step and forward-backward times alone, sent to all.
  double solo_mean[2] = {solo_ms / a.steps, solo_compute_ms / a.steps};
  if (vs_one) RT_RETURN_IF_ERROR(dist.comm->Broadcast(solo_mean, 2, coll::DataType::kF64, 0));
  const double solo_per_s = vs_one ? static_cast<double>(solo_items) / (solo_mean[0] / 1000.0) : 0.0;
  const char* unit = trainer->task().ItemUnit();
  // Tensor-parallel traffic: the payload each rank all-reduced in the last step, against the
  // closed form per step: 4 all-reduces of (B,T,C) per block (forward: attention and MLP outputs;
  // backward: their input gradients), plus the token embedding (forward), the output layer's input
  // gradient (backward) and the cross-entropy's 3 values per token; the gradient norm (and with
  // DP > 2 the replicated parameters' broadcast) come on top.
  const int tp = trainer->tensor_parallel();
  const double accum = static_cast<double>(config.Int("train.grad_accum"));
  const double bt = static_cast<double>(config.Int("train.batch_size") * config.Int("model.block_size"));
  const double btc = bt * static_cast<double>(config.Int("model.n_embd"));
  const double tp_blocks = tp > 1 ? 4.0 * static_cast<double>(config.Int("model.n_layer")) * btc * 4.0 * accum : 0.0;
  const double tp_edges = tp > 1 ? (2.0 * btc + 3.0 * bt) * 4.0 * accum : 0.0;
  const double tp_bytes = static_cast<double>(trainer->last_tp_bytes());
  const double dp_bytes = static_cast<double>(trainer->last_dp_bytes());
  const double tp_bus = tp > 1 ? 2.0 * (tp - 1) / tp : 0.0, dp_bus = 2.0 * (trainer->data_parallel() - 1) /
                                                                     std::max(1, trainer->data_parallel());
  // Model FLOPs utilisation (GPT): 6N + 12 L C T FLOPs per token (forward and backward of every
  // parameter, plus attention's score and value products), over the device's dense bf16 peak.
  const bool lm = std::string(unit) == "tokens";
  const double flops_per_token =
      lm ? 6.0 * static_cast<double>(trainer->task().NumParams()) +
               12.0 * static_cast<double>(config.Int("model.n_layer") * config.Int("model.n_embd") *
                                          config.Int("model.block_size"))
         : 0.0;
  const std::string device = trainer->task().DeviceName();
  const double peak = a.peak_tflops > 0 ? a.peak_tflops : DenseBf16PeakTflops(device);
  const double achieved_tflops = flops_per_token * per_s / 1e12;
  const double mfu = peak > 0 && lm ? achieved_tflops / (peak * world) : 0.0;
  if (dist.launch.rank != 0) return Status::Ok();
  if (a.json) {
    nlohmann::json j = {{std::string(unit) + "_per_s", per_s},
                        {"ms_per_step", mean},
                        {"ms_per_step_median", median},
                        {"steps", a.steps},
                        {std::string(unit) + "_per_step", trainer->ItemsPerStep()},
                        {"threads", ThreadBudget()},
                        {"num_params", trainer->task().NumParams()},
                        {"ranks", world},
                        {"transport", world > 1 ? dist.comm->transport_kind() : "none"},
                        {"sync", trainer->SyncName()},
                        {"exposed_comm_ms_per_step", exposed_ms / static_cast<double>(a.steps)},
                        {"exposed_comm_share", exposed_share},
                        // Averages over ranks: time communication was in progress per step, the
                        // part of it hidden behind backward, and payload bytes sent per step.
                        {"comm_ms_per_step", comm_ms / static_cast<double>(a.steps)},
                        {"hidden_comm_ms_per_step", hidden_ms / static_cast<double>(a.steps)},
                        {"bytes_sent_per_step", sent_bytes / static_cast<double>(a.steps)},
                        // Forward and backward (every micro-step), until the wait for the sync.
                        {"compute_ms_per_step", compute_ms / static_cast<double>(a.steps)},
                        // The part of the exposed wait spent waiting for the slowest rank's
                        // backward (load imbalance), and the rest: communication proper.
                        {"skew_wait_ms_per_step", one_host ? nlohmann::json(skew_ms / a.steps) : nlohmann::json()},
                        {"exposed_transfer_share",
                         one_host ? nlohmann::json((exposed_ms - skew_ms) / total) : nlohmann::json()},
                        {"transfer_ms_per_step",
                         one_host ? nlohmann::json((exposed_ms - skew_ms) / static_cast<double>(a.steps)) : nlohmann::json()},
                        {"final_loss", loss},
                        {"tensor_parallel", tp},
                        {"data_parallel", trainer->data_parallel()},
                        {"tp_allreduce_bytes_per_step", tp_bytes},
                        {"tp_closed_form_blocks_bytes", tp_blocks},
                        {"tp_closed_form_embedding_output_ce_bytes", tp_edges},
                        {"tp_bus_bytes_per_step", tp_bytes * tp_bus},
                        {"dp_allreduce_bytes_per_step", dp_bytes},
                        {"dp_bus_bytes_per_step", dp_bytes * dp_bus},
                        {"device", device},
                        {"precision", config.Str("precision")},
                        {"optimizer_on_device", trainer->optimizer_on_device()},
                        {"model_flops_per_token", lm ? nlohmann::json(flops_per_token) : nlohmann::json()},
                        {"model_tflops", lm ? nlohmann::json(achieved_tflops) : nlohmann::json()},
                        {"peak_tflops_per_device", peak > 0 ? nlohmann::json(peak) : nlohmann::json()},
                        {"mfu", mfu > 0 ? nlohmann::json(mfu) : nlohmann::json()}};
    if (vs_one) {
      j["one_rank_" + std::string(unit) + "_per_s"] = solo_per_s;
      j["one_rank_" + std::string(unit) + "_per_step"] = solo_items;
      j["one_rank_ms_per_step"] = solo_mean[0];
      j["one_rank_compute_ms_per_step"] = solo_mean[1];
      j["speedup_vs_one_rank"] = per_s / solo_per_s;
    }
    if (!save_ms.empty()) {
      j["checkpoint_steps"] = save_ms.size();
      j["ms_per_checkpoint_step"] = save_total / static_cast<double>(save_ms.size());
      j["checkpoint_stall_share"] = (save_total / static_cast<double>(save_ms.size()) - mean) / mean;
      j["checkpoint_async"] = config.Bool("checkpoint.async");
    }
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("bench train: %s, %lld params, %d threads\n", a.config.empty() ? "default config" : a.config.c_str(),
                (long long)trainer->task().NumParams(), ThreadBudget());
    std::printf("  %d steps after %d warm-up: %.1f ms/step (median %.1f), %.0f %s/s%s\n", a.steps, a.warmup, mean,
                median, per_s, unit, world > 1 ? " over all ranks" : "");
    if (lm) {
      std::printf("  device %s (%s%s): model FLOPs 6N + 12LCT = %.3f GFLOP/token, %.3f TFLOP/s", device.c_str(),
                  config.Str("precision").c_str(), trainer->optimizer_on_device() ? ", optimizer on the device" : "",
                  flops_per_token / 1e9, achieved_tflops);
      if (peak > 0)
        std::printf("; MFU %.1f%% of %d x %.1f TFLOP/s (dense bf16 peak%s)\n", 100.0 * mfu, world, peak,
                    a.peak_tflops > 0 ? ", --peak-tflops" : "");
      else
        std::printf("%s\n", device == "cpu" ? "" : "; MFU: peak unknown for this device (give --peak-tflops)");
    }
    if (world > 1)
      std::printf("  %d ranks (%s, sync %s): exposed communication %.2f ms/step = %.1f%% of the step\n", world,
                  dist.comm->transport_kind(), trainer->SyncName().c_str(), exposed_ms / static_cast<double>(a.steps),
                  100.0 * exposed_share);
    if (vs_one)
      std::printf("  1 rank alone (rank 0, same per-rank batch and threads, in %d-step blocks alternating with the "
                  "job's): %.1f ms/step, %.0f %s/s; the job is %.2fx that\n",
                  a.block, solo_mean[0], solo_per_s, unit, per_s / solo_per_s);
    if (one_host)
      std::printf("    of which waiting for the slowest rank's backward %.2f ms/step; transfer %.1f%% of the step\n",
                  skew_ms / static_cast<double>(a.steps), 100.0 * (exposed_ms - skew_ms) / total);
    if (tp > 1)
      std::printf("  tensor parallel %d x data parallel %d: TP all-reduce payload %.3f MB/step per rank (closed form: "
                  "blocks %.3f MB + embedding/output/cross-entropy %.3f MB; the rest, %.3f MB, is the gradient norm "
                  "and, with more than 2 DP ranks, the replicated-parameter broadcast); bus traffic %.3f MB/step\n",
                  tp, trainer->data_parallel(), tp_bytes / 1e6, tp_blocks / 1e6, tp_edges / 1e6,
                  (tp_bytes - tp_blocks - tp_edges) / 1e6, tp_bytes * tp_bus / 1e6);
    if (trainer->data_parallel() > 1)
      std::printf("  DP gradient all-reduce payload %.3f MB/step per rank; bus traffic %.3f MB/step\n", dp_bytes / 1e6,
                  dp_bytes * dp_bus / 1e6);
  }
  return Status::Ok();
}
}  // namespace

void AddBench(CLI::App& app, Action& action) {
  CLI::App* bench = app.add_subcommand("bench", "benchmarks that print figures");
  bench->require_subcommand(1);
  auto args = std::make_shared<BenchArgs>();
  CLI::App* train = bench->add_subcommand("train", "time training steps (tokens/s, ms/step)");
  train->add_option("--config", args->config, "YAML config file");
  train->add_option("--set", args->sets, "override a config key: key=value (repeatable)");
  train->add_option("--steps", args->steps, "timed steps (default 20)");
  train->add_option("--warmup", args->warmup, "untimed warm-up steps (default 3)");
  train->add_flag("--json", args->json, "print one JSON object");
  train->add_flag("--barrier-before-sync", args->barrier_before_sync,
                  "ranks wait for each other after backward, so the sync time is communication alone "
                  "(with --set dist.overlap=false)");
  train->add_option("--checkpoint-dir", args->checkpoint_dir,
                    "save checkpoints here (checkpoint.every_steps, checkpoint.async) and report the stall");
  train->add_flag("--vs-one-rank", args->vs_one_rank,
                  "under several ranks, also time one rank alone (rank 0, same per-rank batch and threads; the "
                  "others idle) in blocks alternating with the job's steps, and report the speed-up");
  train->add_option("--block", args->block, "steps per block with --vs-one-rank (default 10)");
  train->add_option("--peak-tflops", args->peak_tflops,
                    "peak TFLOP/s per device for MFU (default: the GPU's dense bf16 peak when known)");
  train->callback([&action, args]() { action = [args]() { return BenchTrain(*args); }; });
  AddBenchAllreduce(bench, action);
  AddBenchCheckpoint(bench, action);
  AddBenchPs(bench, action);
  AddBenchScaling(bench, action);
}

}  // namespace ringtrain::cli
