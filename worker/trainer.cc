#include "worker/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "checkpoint/model_file.h"
#include "core/threads.h"

namespace ringtrain {

namespace {

using Clock = std::chrono::steady_clock;

std::string FormatDuration(double s) {
  if (!std::isfinite(s) || s < 0) s = 0;
  const int64_t t = static_cast<int64_t>(s + 0.5);
  char buf[32];
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", (long long)(t / 3600), (long long)(t / 60 % 60), (long long)(t % 60));
  else std::snprintf(buf, sizeof buf, "%lld:%02lld", (long long)(t / 60), (long long)(t % 60));
  return buf;
}

}  // namespace

StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const Config& config, const TrainOptions& opts) {
  std::unique_ptr<Trainer> t(new Trainer(config, opts));
  SetThreadBudget(static_cast<int>(config.Int("threads")));
  RT_ASSIGN_OR_RETURN(t->data_, TokenData::Load(config));
  RT_ASSIGN_OR_RETURN(GptConfig gc, GptConfig::FromConfig(config, t->data_.vocab_size));
  RT_ASSIGN_OR_RETURN(t->oc_, OptimConfig::FromConfig(config));
  RT_ASSIGN_OR_RETURN(t->sched_, LrSchedule::FromConfig(config));
  t->batch_ = static_cast<int>(config.Int("train.batch_size"));
  t->block_ = gc.block_size;
  t->accum_ = static_cast<int>(config.Int("train.grad_accum"));
  t->seed_ = static_cast<uint64_t>(config.Int("seed"));
  t->model_ = std::make_unique<Gpt<float>>(gc);
  t->model_->InitWeights(t->seed_);
  t->model_->PlanActivations(t->batch_, t->block_);
  t->opt_state_.Allocate(t->oc_, t->model_->arena().layout.total());
  t->decay_ranges_ = t->model_->arena().layout.DecayRanges();
  t->sync_ = std::make_unique<NoSync>();
  const size_t n = static_cast<size_t>(t->batch_) * t->block_;
  t->tokens_.resize(n);
  t->targets_.resize(n);
  return t;
}

StatusOr<double> Trainer::Step(int64_t step) {
  ParamArena<float>& A = model_->arena();
  A.grads.Zero();
  double loss = 0;
  const size_t total = A.layout.total();
  for (int micro = 0; micro < accum_; ++micro) {
    const uint64_t index = static_cast<uint64_t>(step) * accum_ + micro;
    data_.SampleBatch(Split::kTrain, seed_, index, 0, batch_, block_, tokens_.data(), targets_.data());
    loss += model_->Forward(tokens_.data(), targets_.data(), batch_, block_, true, seed_, index);
    GradReadyFn ready;
    if (micro == accum_ - 1) ready = [&](size_t b, size_t e) { sync_->OnGradReady(A.grads.data(), b, e); };
    model_->Backward(1.0f / static_cast<float>(accum_), ready);
  }
  RT_RETURN_IF_ERROR(sync_->Finish(A.grads.data(), total).WithContext("gradient sync at step " + std::to_string(step)));
  last_grad_norm_ = std::sqrt(SumSquares(A.grads.data(), total));
  const float scale = ClipScale(last_grad_norm_, oc_.grad_clip);
  OptimizerUpdate(oc_, sched_.At(step), step + 1, scale, A.params.data(), A.grads.data(), opt_state_, 0, total,
                  decay_ranges_);
  opt_state_.step = step + 1;
  return loss / accum_;
}

double Trainer::Evaluate() {
  const int nb = static_cast<int>(config_.Int("train.eval_batches"));
  double sum = 0;
  for (int i = 0; i < nb; ++i) {
    data_.SampleBatch(Split::kVal, seed_, static_cast<uint64_t>(i), 0, batch_, block_, tokens_.data(), targets_.data());
    sum += model_->Forward(tokens_.data(), targets_.data(), batch_, block_, false);
  }
  return sum / nb;
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
    metrics_ = std::fopen(mpath.c_str(), "w");
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

  if (opts_.print) {
    std::printf("data: %s; %zu train / %zu val tokens\n", data_.description.c_str(), data_.train.size(), data_.val.size());
    const GptConfig& g = model_->config();
    std::printf("model: GPT %d layers, %d heads, width %d, context %d, vocab %d: %.2fM parameters\n", g.n_layer,
                g.n_head, g.n_embd, g.block_size, g.vocab_size, static_cast<double>(model_->NumParams()) / 1e6);
    std::printf("train: %lld steps of %lld tokens (batch %d x %d x accum %d), %s lr %.2e, %d threads\n",
                (long long)steps, (long long)TokensPerStep(), batch_, block_, accum_, config_.Str("optim.name").c_str(),
                oc_.lr, ThreadBudget());
    if (data_.entropy_rate)
      std::printf("synthetic source entropy rate: %.4f nats/token (the floor the loss should approach)\n",
                  *data_.entropy_rate);
    std::fflush(stdout);
  }

  TrainSummary sum;
  sum.entropy_rate = data_.entropy_rate;
  const auto t0 = Clock::now();
  double window_loss = 0;
  int64_t window_n = 0;
  double last_val = std::nan("");
  auto t_last = t0;
  int64_t step_last = 0;
  double tok_s = 0;
  for (int64_t step = 0; step < steps; ++step) {
    RT_ASSIGN_OR_RETURN(double loss, Step(step));
    if (!std::isfinite(loss))
      return Internal("training diverged: loss is " + std::to_string(loss) + " at step " + std::to_string(step + 1) +
                      " (lower optim.lr or enable optim.grad_clip)");
    window_loss += loss;
    ++window_n;
    const int64_t done = step + 1;
    const bool last = done == steps;
    if (done % eval_interval == 0 || last) {
      last_val = Evaluate();
      if (metrics_) {
        nlohmann::json row = {{"step", done}, {"val_loss", last_val}};
        std::fprintf(metrics_, "%s\n", row.dump().c_str());
      }
      if (opts_.print) {
        std::printf("%sstep %lld: val loss %.4f", tty ? "\r\x1b[K" : "", (long long)done, last_val);
        if (data_.entropy_rate) std::printf(" (entropy rate %.4f)", *data_.entropy_rate);
        std::printf("\n");
      }
    }
    if (done % log_interval == 0 || last) {
      const auto now = Clock::now();
      const double dt = std::chrono::duration<double>(now - t_last).count();
      tok_s = dt > 0 ? static_cast<double>((done - step_last) * TokensPerStep()) / dt : 0;
      t_last = now;
      step_last = done;
      const double elapsed = std::chrono::duration<double>(now - t0).count();
      const double eta = elapsed / static_cast<double>(done) * static_cast<double>(steps - done);
      const double mean = window_loss / static_cast<double>(window_n);
      sum.final_train_loss = mean;
      window_loss = 0;
      window_n = 0;
      const double lr = sched_.At(step);
      if (metrics_) {
        nlohmann::json row = {{"step", done}, {"loss", mean}, {"lr", lr}, {"grad_norm", last_grad_norm_},
                              {"tokens_per_s", tok_s}, {"time_s", elapsed}};
        std::fprintf(metrics_, "%s\n", row.dump().c_str());
        std::fflush(metrics_);
      }
      if (opts_.print) {
        std::printf("%sstep %lld/%lld | loss %.4f | lr %.2e | %.0f tok/s | ETA %s%s", tty ? "\r\x1b[K" : "",
                    (long long)done, (long long)steps, mean, lr, tok_s, FormatDuration(eta).c_str(), tty ? "" : "\n");
        std::fflush(stdout);
      }
    }
  }
  if (tty) std::printf("\n");
  sum.wall_s = std::chrono::duration<double>(Clock::now() - t0).count();
  sum.steps = steps;
  sum.final_val_loss = steps > 0 ? last_val : Evaluate();
  sum.tokens_per_s = sum.wall_s > 0 ? static_cast<double>(steps * TokensPerStep()) / sum.wall_s : 0;
  if (!opts_.run_dir.empty()) {
    const auto& A = model_->arena();
    RT_RETURN_IF_ERROR(SaveModel(opts_.run_dir + "/model", config_, model_->config().vocab_size, data_.vocab,
                                 data_.description, A.params.data(), A.layout.total()));
    RT_RETURN_IF_ERROR(WriteSummary(sum));
  }
  if (opts_.print) {
    std::printf("done: %lld steps in %.1f s, %.0f tokens/s; final train loss %.4f, val loss %.4f", (long long)steps,
                sum.wall_s, sum.tokens_per_s, sum.final_train_loss, sum.final_val_loss);
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
                      {"tokens_per_s", s.tokens_per_s},
                      {"wall_s", s.wall_s},
                      {"num_params", model_->NumParams()},
                      {"data", data_.description}};
  if (s.entropy_rate) j["entropy_rate"] = *s.entropy_rate;
  return WriteFileAtomic(opts_.run_dir + "/summary.json", j.dump(2) + "\n");
}

}  // namespace ringtrain
