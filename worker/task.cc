#include "worker/task.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <sstream>

#include "datasets/image_data.h"
#include "datasets/token_data.h"
#include "models/cnn.h"
#ifdef RINGTRAIN_HAVE_CUDA
#include "models/cnn_gpu.h"
#include "models/gpt_gpu.h"
#endif
#ifdef RINGTRAIN_HAVE_NCCL
#include "collectives/nccl/nccl_communicator.h"
#endif
#include "worker/metrics.h"

namespace ringtrain {

namespace {

// What both tasks share under device cuda: the GPU model's DeviceArena (the task sets dev_ once
// its GPU model exists), the optimizer on the device, the data-parallel gradient averages through
// NCCL, and the micro-step that keeps the host arena the master (optimizer on the host). Without
// CUDA in the build it adds nothing to Task.
class DeviceTask : public Task {
#ifdef RINGTRAIN_HAVE_CUDA
 public:
  std::string DeviceName() const override { return dev_ ? dev_->DeviceName() : "cpu"; }
  bool CanOptimizeOnDevice(bool data_parallel) const override {
    if (!dev_) return false;
    if (!data_parallel) return true;
#ifdef RINGTRAIN_HAVE_NCCL
    // NCCL needs a GPU of its own per rank; ranks sharing GPUs reduce on the host.
    return shard_.local_size <= CudaDeviceCount();
#else
    return false;  // no NCCL in this build: the host reduces
#endif
  }
  Status DeviceStart(const OptimConfig& oc, const OptimState& st) override {
    RT_CHECK(dev_ && st.base == 0);
#ifdef RINGTRAIN_HAVE_NCCL
    if (shard_.comm && shard_.comm->size() > 1 && !nccl_) {
      RT_ASSIGN_OR_RETURN(nccl_, coll::NcclCommunicator::Create(*shard_.comm, dev_->device(), deadline_s_));
    }
#endif
    const float* m = st.m.size() ? st.m.data() : nullptr;
    const float* v = st.v.size() ? st.v.data() : nullptr;
    RT_RETURN_IF_ERROR(dev_->StartOptimizer(oc, arena().params.data(), m, v).WithContext("starting the device optimizer"));
    resident_ = true;
    return Status::Ok();
  }
  Status DeviceZeroGrads() override { return dev_->ZeroGrads(); }
  Status DeviceFinishBackward() override { return dev_->Synchronize("backward on the device"); }
  Status DeviceFinishGradSync() override {
#ifdef RINGTRAIN_HAVE_NCCL
    Status first = grad_sync_error_;
    for (coll::Work& w : grad_works_) {
      const Status s = w.Wait();
      if (first.ok() && !s.ok()) first = s;
    }
    grad_works_.clear();
    grad_sync_error_ = Status::Ok();
    return first.WithContext("averaging gradients over the data-parallel group (NCCL)");
#else
    return Status::Ok();
#endif
  }
  StatusOr<double> DeviceGradSumSquares() override { return dev_->GradSumSquares(); }
  Status DeviceOptimizerUpdate(const OptimConfig& oc, double lr, int64_t t, float grad_scale,
                               const std::vector<std::pair<size_t, size_t>>& decay_ranges) override {
    RT_CHECK(resident_);
    return dev_->OptimizerStep(oc, lr, t, grad_scale, decay_ranges);
  }
  Status DeviceFetch(OptimState* st) override {
    RT_CHECK(resident_);
    RT_RETURN_IF_ERROR(dev_->DownloadParams(arena().params.data()));
    const size_t n = dev_->size();
    st->base = 0;
    if (dev_->has_m() && st->m.size() != n) st->m.Resize(n);
    if (dev_->has_v() && st->v.size() != n) st->v.Resize(n);
    return dev_->DownloadMoments(dev_->has_m() ? st->m.data() : nullptr, dev_->has_v() ? st->v.data() : nullptr);
  }

 protected:
  // The model's forward, then its backward enqueued with the given ready callback (null: none);
  // returns the loss.
  using RunFn = std::function<StatusOr<double>(const GradReadyFn&)>;
  // One micro-step on the device. Optimizer on the device: parameters and gradients stay there
  // (the trainer zeroes the gradients per step), and with data parallelism the step's last
  // micro-step (given `ready`) queues each range's average over the group on the NCCL stream
  // behind the kernels that finish it, while the rest of backward runs. Otherwise the host arena
  // is the master: the parameters go up, the gradients come down and are added into the host
  // gradients (all ready at once for the sync engine), and so does the state the forward
  // changes in place (state_ranges_).
  StatusOr<double> DeviceMicroStep(const RunFn& run, const GradReadyFn& ready) {
    if (resident_) {
#ifdef RINGTRAIN_HAVE_NCCL
      if (nccl_ && ready) {
        grad_works_.clear();
        grad_sync_error_ = Status::Ok();
        return run([this](size_t b, size_t e) {
          if (!grad_sync_error_.ok()) return;
          grad_sync_error_ = nccl_->WaitFor(dev_->stream());
          if (grad_sync_error_.ok())
            grad_works_.push_back(nccl_->IAllReduce(dev_->grads() + b, static_cast<int64_t>(e - b),
                                                    coll::DataType::kF32, coll::ReduceOp::kAvg));
        });
      }
#endif
      return run(nullptr);
    }
    ParamArena<float>& A = arena();
    const size_t n = A.layout.total();
    grad_buf_.resize(n);
    RT_RETURN_IF_ERROR(dev_->UploadParams(A.params.data()));
    RT_RETURN_IF_ERROR(dev_->ZeroGrads());
    RT_ASSIGN_OR_RETURN(const double loss, run(nullptr));
    RT_RETURN_IF_ERROR(dev_->DownloadGrads(grad_buf_.data()));
    if (!state_ranges_.empty()) RT_RETURN_IF_ERROR(dev_->DownloadParamRanges(A.params.data(), state_ranges_));
    float* g = A.grads.data();
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) g[i] += grad_buf_[i];
    if (ready) ready(0, n);
    return loss;
  }
  // Before evaluating on the device: until the device holds the master parameters, the host's go up.
  Status DevicePrepareEval() {
    if (resident_) return Status::Ok();
    return dev_->UploadParams(arena().params.data()).WithContext("evaluating");
  }

  DeviceArena* dev_ = nullptr;  // the GPU model's (owned by the derived task); null on the CPU
  std::vector<std::pair<size_t, size_t>> state_ranges_;  // arena ranges the training forward writes

 private:
  std::vector<float> grad_buf_;
  bool resident_ = false;  // DeviceStart ran: the device holds the master parameters
#ifdef RINGTRAIN_HAVE_NCCL
  // The group's communicator on the devices, the step's queued gradient averages, and the first
  // error queueing them.
  std::unique_ptr<coll::NcclCommunicator> nccl_;
  std::vector<coll::Work> grad_works_;
  Status grad_sync_error_;
#endif
#endif  // RINGTRAIN_HAVE_CUDA

 protected:
  // Derived tasks call this first in their destructor: the device communicator goes before the
  // GPU model whose memory its work reads.
  void ReleaseDevice() {
#ifdef RINGTRAIN_HAVE_NCCL
    grad_works_.clear();
    nccl_.reset();
#endif
  }
  TaskShard shard_;
  double deadline_s_ = 300;  // dist.deadline_s: collectives' deadline
};

// GPT on a token stream.
class LmTask final : public DeviceTask {
 public:
  ~LmTask() override { ReleaseDevice(); }
  static StatusOr<std::unique_ptr<Task>> Make(const Config& c, const SavedModel* saved, const TaskShard& shard) {
    auto t = std::unique_ptr<LmTask>(new LmTask());
    t->shard_ = shard;
    RT_ASSIGN_OR_RETURN(t->data_, TokenData::Load(c));
    int vocab = t->data_.vocab_size;
    if (saved) {
      // The model's vocabulary decides; the data must fit it.
      const int mv = saved->meta.value("vocab_size", 0);
      if (vocab > mv)
        return InvalidArgument("data: " + std::to_string(vocab) + " token ids, the model's vocabulary has " +
                               std::to_string(mv));
      vocab = mv;
    }
    RT_ASSIGN_OR_RETURN(GptConfig gc, GptConfig::FromConfig(c, vocab));
    if (shard.tp && shard.tp->size() > 1) RT_RETURN_IF_ERROR(gc.CheckTensorParallel(shard.tp->size()));
    t->model_ = std::make_unique<Gpt<float>>(gc, shard.tp);
    t->seed_ = static_cast<uint64_t>(c.Int("seed"));
    t->batch_ = static_cast<int>(c.Int("train.batch_size"));
    t->block_ = gc.block_size;
    t->eval_batches_ = static_cast<int>(c.Int("train.eval_batches"));
    t->deadline_s_ = c.Float("dist.deadline_s");
    t->model_->InitWeights(t->seed_);
    if (saved) RT_RETURN_IF_ERROR(LoadParams(*saved, t->model_->arena(), "GPT"));
    if (c.Str("device") == "cuda") {
      if (shard.tp && shard.tp->size() > 1)
        return InvalidArgument("device cuda does not combine with parallel.tensor > 1 yet");
#ifdef RINGTRAIN_HAVE_CUDA
      RT_ASSIGN_OR_RETURN(t->gpu_,
                          GpuGpt::Create(gc, shard.local_rank, c.Str("precision") == "bf16", c.Str("attention")));
      RT_RETURN_IF_ERROR(t->gpu_->PlanActivations(t->batch_, t->block_));
      t->dev_ = &t->gpu_->arena();
#else
      return InvalidArgument("device cuda: this ringtrain was built without CUDA (no nvcc when it was configured)");
#endif
    } else {
      t->model_->PlanActivations(t->batch_, t->block_);
    }
    t->tokens_.resize(static_cast<size_t>(t->batch_) * t->block_);
    t->targets_.resize(t->tokens_.size());
    return std::unique_ptr<Task>(std::move(t));
  }
  ParamArena<float>& arena() override { return model_->arena(); }
  ParamLayout FullLayout() const override { return Gpt<float>::LayoutFor(model_->config(), 0, 1); }
  uint64_t TakeTpBytes() override {
    const uint64_t r = model_->tp().bytes();
    model_->tp().ResetBytes();
    return r;
  }
  int64_t NumParams() const override { return model_->NumParams(); }
  int64_t ItemsPerMicroStep() const override { return static_cast<int64_t>(batch_) * block_; }
  const char* ItemName() const override { return "tok"; }
  const char* ItemUnit() const override { return "tokens"; }
  std::string BatchShape() const override {
    return std::to_string(batch_) + " x " + std::to_string(block_) + " tokens";
  }
  StatusOr<double> MicroStep(uint64_t index, float loss_scale, const GradReadyFn& ready) override {
    const int row0 = shard_.rank * batch_;
    data_.SampleBatch(Split::kTrain, seed_, index, row0, batch_, block_, tokens_.data(), targets_.data());
#ifdef RINGTRAIN_HAVE_CUDA
    if (gpu_) {
      // Dropout (train) draws the CPU model's masks: keyed by the micro-step index and global rows.
      return DeviceMicroStep(
          [&](const GradReadyFn& on_ready) -> StatusOr<double> {
            RT_ASSIGN_OR_RETURN(const double loss, gpu_->Forward(tokens_.data(), targets_.data(), batch_, block_,
                                                                 true, seed_, index, row0));
            RT_RETURN_IF_ERROR(gpu_->Backward(loss_scale, on_ready));
            return loss;
          },
          ready);
    }
#endif
    const double loss = model_->Forward(tokens_.data(), targets_.data(), batch_, block_, true, seed_, index, row0);
    RT_RETURN_IF_ERROR(model_->tp_status());
    model_->Backward(loss_scale, ready);
    RT_RETURN_IF_ERROR(model_->tp_status());
    return loss;
  }
  // Every rank takes its rows of each of the eval_batches global batches; equal row counts make the
  // average of the ranks' means the global mean.
  StatusOr<EvalResult> Evaluate() override {
    double sum = 0;
    for (int i = 0; i < eval_batches_; ++i) {
      data_.SampleBatch(Split::kVal, seed_, static_cast<uint64_t>(i), shard_.rank * batch_, batch_, block_,
                        tokens_.data(), targets_.data());
#ifdef RINGTRAIN_HAVE_CUDA
      if (gpu_) {
        if (i == 0) RT_RETURN_IF_ERROR(DevicePrepareEval());
        RT_ASSIGN_OR_RETURN(const double l, gpu_->Forward(tokens_.data(), targets_.data(), batch_, block_));
        sum += l;
        continue;
      }
#endif
      sum += model_->Forward(tokens_.data(), targets_.data(), batch_, block_, false);
      RT_RETURN_IF_ERROR(model_->tp_status().WithContext("evaluating"));
    }
    double mean = sum / eval_batches_;
    if (shard_.comm)
      RT_RETURN_IF_ERROR(shard_.comm->AllReduce(&mean, 1, coll::DataType::kF64, coll::ReduceOp::kAvg)
                             .WithContext("averaging the validation loss"));
    EvalResult r;
    r.loss = mean;
    return r;
  }
  std::string Header() const override {
    const GptConfig& g = model_->config();
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "data: %s; %zu train / %zu val tokens\nmodel: GPT %d layers, %d heads, width %d, context %d, vocab "
                  "%d: %.2fM parameters\n",
                  data_.description.c_str(), data_.train.size(), data_.val.size(), g.n_layer, g.n_head, g.n_embd,
                  g.block_size, g.vocab_size, static_cast<double>(model_->NumParams()) / 1e6);
#ifdef RINGTRAIN_HAVE_CUDA
    if (gpu_) return std::string(buf) + "attention: " + gpu_->AttentionPath() + "\n";
#endif
    return buf;
  }
  std::optional<double> EntropyRate() const override { return data_.entropy_rate; }
  std::string DataDescription() const override { return data_.description; }
  nlohmann::json ModelMeta() const override {
    nlohmann::json m = {{"task", "lm"}, {"vocab_size", model_->config().vocab_size}, {"data", data_.description}};
    if (data_.vocab) m["vocab_chars"] = std::vector<uint32_t>(data_.vocab->chars().begin(), data_.vocab->chars().end());
    return m;
  }

 private:
#ifdef RINGTRAIN_HAVE_CUDA
  std::unique_ptr<GpuGpt> gpu_;
#endif
  TokenData data_;
  std::unique_ptr<Gpt<float>> model_;
  uint64_t seed_ = 0;
  int batch_ = 0, block_ = 0, eval_batches_ = 1;
  std::vector<int32_t> tokens_, targets_;
};

// A CNN (or MLP) classifier on images.
class ImageTask final : public DeviceTask {
 public:
  ~ImageTask() override { ReleaseDevice(); }
  static StatusOr<std::unique_ptr<Task>> Make(const Config& c, const SavedModel* saved, const TaskShard& shard) {
    auto t = std::unique_ptr<ImageTask>(new ImageTask());
    t->shard_ = shard;
    std::vector<float> mean, sd;
    if (saved && saved->meta.contains("image")) {
      mean = saved->meta["image"].value("mean", std::vector<float>{});
      sd = saved->meta["image"].value("std", std::vector<float>{});
    }
    RT_ASSIGN_OR_RETURN(t->data_, ImageData::Load(c, mean.empty() ? nullptr : &mean, sd.empty() ? nullptr : &sd));
    if (saved && saved->meta.contains("image")) {
      const auto& im = saved->meta["image"];
      const int mc = im.value("channels", 0), mh = im.value("height", 0), mw = im.value("width", 0);
      if (mc != t->data_.channels || mh != t->data_.height || mw != t->data_.width)
        return InvalidArgument("data: images are " + std::to_string(t->data_.channels) + "x" +
                               std::to_string(t->data_.height) + "x" + std::to_string(t->data_.width) +
                               ", the model expects " + std::to_string(mc) + "x" + std::to_string(mh) + "x" +
                               std::to_string(mw));
      if (im.value("classes", 0) != t->data_.classes)
        return InvalidArgument("data: " + std::to_string(t->data_.classes) + " classes, the model has " +
                               std::to_string(im.value("classes", 0)));
    }
    RT_ASSIGN_OR_RETURN(CnnConfig cc, CnnConfig::FromConfig(c, t->data_.channels, t->data_.height, t->data_.width,
                                                            t->data_.classes));
    t->model_ = std::make_unique<Cnn<float>>(cc);
    t->seed_ = static_cast<uint64_t>(c.Int("seed"));
    t->batch_ = static_cast<int>(c.Int("train.batch_size"));
    t->deadline_s_ = c.Float("dist.deadline_s");
    t->model_->InitWeights(t->seed_);
    if (saved) RT_RETURN_IF_ERROR(LoadParams(*saved, t->model_->arena(), t->model_->Describe()));
    if (c.Str("device") == "cuda") {
#ifdef RINGTRAIN_HAVE_CUDA
      RT_ASSIGN_OR_RETURN(t->gpu_, GpuCnn::Create(*t->model_, shard.local_rank));
      RT_RETURN_IF_ERROR(t->gpu_->PlanActivations(t->batch_));
      t->dev_ = &t->gpu_->arena();
      t->state_ranges_ = t->model_->StateRanges();
      t->logits_.resize(static_cast<size_t>(t->batch_) * t->data_.classes);
#else
      return InvalidArgument("device cuda: this ringtrain was built without CUDA (no nvcc when it was configured)");
#endif
    } else {
      t->model_->PlanActivations(t->batch_);
    }
    t->images_.resize(static_cast<size_t>(t->batch_ * t->data_.ImageSize()));
    t->labels_.resize(static_cast<size_t>(t->batch_));
    return std::unique_ptr<Task>(std::move(t));
  }
  ParamArena<float>& arena() override { return model_->arena(); }
  ParamLayout FullLayout() const override { return model_->arena().layout; }
  int64_t NumParams() const override { return model_->NumParams(); }
  int64_t ItemsPerMicroStep() const override { return batch_; }
  const char* ItemName() const override { return "img"; }
  const char* ItemUnit() const override { return "images"; }
  std::string BatchShape() const override { return std::to_string(batch_) + " images"; }
  StatusOr<double> MicroStep(uint64_t index, float loss_scale, const GradReadyFn& ready) override {
    const int row0 = shard_.rank * batch_;
    data_.SampleBatch(Split::kTrain, seed_, index, row0, batch_, shard_.size * batch_, true, images_.data(),
                      labels_.data());
#ifdef RINGTRAIN_HAVE_CUDA
    if (gpu_) {
      return DeviceMicroStep(
          [&](const GradReadyFn& on_ready) -> StatusOr<double> {
            RT_ASSIGN_OR_RETURN(const double loss,
                                gpu_->Forward(images_.data(), labels_.data(), batch_, true, seed_, index, row0));
            RT_RETURN_IF_ERROR(gpu_->Backward(loss_scale, on_ready));
            return loss;
          },
          ready);
    }
#endif
    const double loss = model_->Forward(images_.data(), labels_.data(), batch_, true, seed_, index, row0);
    model_->Backward(loss_scale, ready);
    return loss;
  }
  // The whole test split, in order, in evaluation mode; each rank takes a contiguous part and the
  // loss sum and confusion matrix are summed over the group.
  StatusOr<EvalResult> Evaluate() override {
    const int K = data_.classes;
    ClassificationMetrics m(K);
    double loss_sum = 0;
    const int64_t n = data_.Count(Split::kVal);
    const int64_t first = n * shard_.rank / shard_.size, last = n * (shard_.rank + 1) / shard_.size;
    for (int64_t b = first; b < last; b += batch_) {
      const int rows = static_cast<int>(std::min<int64_t>(batch_, last - b));
      data_.OrderedBatch(Split::kVal, b, rows, images_.data(), labels_.data());
      const float* logits = nullptr;
#ifdef RINGTRAIN_HAVE_CUDA
      if (gpu_) {
        if (b == first) RT_RETURN_IF_ERROR(DevicePrepareEval());
        RT_ASSIGN_OR_RETURN(const double l, gpu_->Forward(images_.data(), labels_.data(), rows, false));
        loss_sum += l * rows;
        RT_RETURN_IF_ERROR(gpu_->DownloadLogits(logits_.data()));
        logits = logits_.data();
      }
#endif
      if (!logits) {
        loss_sum += model_->Forward(images_.data(), labels_.data(), rows, false) * rows;
        logits = model_->logits();
      }
      for (int r = 0; r < rows; ++r) {
        const float* l = logits + static_cast<int64_t>(r) * K;
        m.Add(labels_[r], static_cast<int>(std::max_element(l, l + K) - l));
      }
    }
    if (shard_.comm) {
      // Counts are exact in float64 (below 2^53).
      std::vector<double> v(m.confusion.begin(), m.confusion.end());
      v.push_back(loss_sum);
      RT_RETURN_IF_ERROR(shard_.comm->AllReduce(v.data(), static_cast<int64_t>(v.size()), coll::DataType::kF64,
                                                coll::ReduceOp::kSum)
                             .WithContext("summing the evaluation over ranks"));
      loss_sum = v.back();
      m.total = m.correct = 0;
      for (int i = 0; i < K * K; ++i) {
        m.confusion[static_cast<size_t>(i)] = static_cast<int64_t>(v[static_cast<size_t>(i)]);
        m.total += m.confusion[static_cast<size_t>(i)];
        if (i / K == i % K) m.correct += m.confusion[static_cast<size_t>(i)];
      }
    }
    m.Finish();
    EvalResult res;
    res.loss = loss_sum / static_cast<double>(n);
    res.metrics = m.ToJson();
    res.report = m.Table();
    return res;
  }
  std::string Header() const override {
    char buf[320];
    std::snprintf(buf, sizeof buf, "data: %s; %lld train / %lld test images\nmodel: %s: %.3fM parameters\n",
                  data_.description.c_str(), static_cast<long long>(data_.Count(Split::kTrain)),
                  static_cast<long long>(data_.Count(Split::kVal)), model_->Describe().c_str(),
                  static_cast<double>(model_->NumParams()) / 1e6);
    return buf;
  }
  std::string DataDescription() const override { return data_.description; }
  nlohmann::json ModelMeta() const override {
    return {{"task", "classification"},
            {"data", data_.description},
            {"image",
             {{"channels", data_.channels},
              {"height", data_.height},
              {"width", data_.width},
              {"classes", data_.classes},
              {"mean", data_.mean},
              {"std", data_.std}}}};
  }

 private:
#ifdef RINGTRAIN_HAVE_CUDA
  std::unique_ptr<GpuCnn> gpu_;
  std::vector<float> logits_;  // one evaluation batch's, from the device
#endif
  ImageData data_;
  std::unique_ptr<Cnn<float>> model_;
  uint64_t seed_ = 0;
  int batch_ = 0;
  std::vector<float> images_;
  std::vector<int32_t> labels_;
};

}  // namespace

StatusOr<std::unique_ptr<Task>> MakeTask(const Config& config, const SavedModel* saved, const TaskShard& shard) {
  const std::string& type = config.Str("model.type");
  const std::string& source = config.Str("data.source");
  const bool image_data = source == "mnist" || source == "cifar10" || source == "synthetic_images";
  if (type != "gpt" && config.Str("precision") != "fp32")
    return InvalidArgument("config: precision " + config.Str("precision") + " is for GPT models; model.type " + type +
                           " trains in fp32");
  if (config.Str("precision") != "fp32" && config.Str("device") != "cuda")
    return InvalidArgument("config: precision " + config.Str("precision") +
                           " needs device cuda (device cpu computes in fp32)");
  if (type == "gpt") {
    if (image_data)
      return InvalidArgument("config: model.type gpt needs token data, but data.source is " + source +
                             " (use model.type mlp, lenet or resnet)");
    return LmTask::Make(config, saved, shard);
  }
  if (!image_data)
    return InvalidArgument("config: model.type " + type +
                           " classifies images; set data.source to mnist, cifar10 or synthetic_images");
  return ImageTask::Make(config, saved, shard);
}

}  // namespace ringtrain
