#include "worker/task.h"

#include <algorithm>
#include <cstring>
#include <sstream>

#include "datasets/image_data.h"
#include "datasets/token_data.h"
#include "models/cnn.h"
#ifdef RINGTRAIN_HAVE_CUDA
#include "models/gpt_gpu.h"
#endif
#ifdef RINGTRAIN_HAVE_NCCL
#include "collectives/nccl/nccl_communicator.h"
#endif
#include "worker/metrics.h"

namespace ringtrain {

namespace {

// GPT on a token stream.
class LmTask final : public Task {
 public:
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
      RT_ASSIGN_OR_RETURN(t->gpu_, GpuGpt::Create(gc, shard.local_rank, c.Str("precision") == "bf16"));
      RT_RETURN_IF_ERROR(t->gpu_->PlanActivations(t->batch_, t->block_));
      t->grad_buf_.resize(t->model_->arena().layout.total());
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
    if (gpu_) return GpuMicroStep(index, row0, loss_scale, ready);
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
        // Device-resident: the device holds the current parameters, the host copy may be stale.
        if (i == 0 && !resident_)
          RT_RETURN_IF_ERROR(gpu_->UploadParams(model_->arena().params.data()).WithContext("evaluating"));
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
    return buf;
  }
  std::optional<double> EntropyRate() const override { return data_.entropy_rate; }
  std::string DataDescription() const override { return data_.description; }
#ifdef RINGTRAIN_HAVE_CUDA
  std::string DeviceName() const override { return gpu_ ? gpu_->DeviceName() : "cpu"; }
  bool CanOptimizeOnDevice(bool data_parallel) const override {
    if (!gpu_) return false;
    if (!data_parallel) return true;
#ifdef RINGTRAIN_HAVE_NCCL
    // NCCL needs a GPU of its own per rank; ranks sharing GPUs reduce on the host.
    return shard_.local_size <= CudaDeviceCount();
#else
    return false;  // no NCCL in this build: the host reduces
#endif
  }
  Status DeviceStart(const OptimState& st) override {
    RT_CHECK(gpu_ && st.base == 0);
#ifdef RINGTRAIN_HAVE_NCCL
    if (shard_.comm && shard_.comm->size() > 1 && !nccl_) {
      RT_ASSIGN_OR_RETURN(nccl_, coll::NcclCommunicator::Create(*shard_.comm, gpu_->device(), deadline_s_));
    }
#endif
    const float* m = st.m.size() ? st.m.data() : nullptr;
    const float* v = st.v.size() ? st.v.data() : nullptr;
    RT_RETURN_IF_ERROR(gpu_->StartOptimizer(model_->arena().params.data(), m, v).WithContext("starting the device optimizer"));
    resident_ = true;
    return Status::Ok();
  }
  Status DeviceZeroGrads() override { return gpu_->ZeroGrads(); }
  Status DeviceFinishBackward() override { return gpu_->Synchronize(); }
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
  StatusOr<double> DeviceGradSumSquares() override { return gpu_->GradSumSquares(); }
  Status DeviceOptimizerUpdate(const OptimConfig& oc, double lr, int64_t t, float grad_scale,
                               const std::vector<std::pair<size_t, size_t>>& decay_ranges) override {
    RT_CHECK(resident_ && oc.kind != OptimKind::kSgd && oc.l1 == 0 && oc.l2 == 0);
    gpu::AdamArgs a{lr, oc.beta1, oc.beta2, oc.eps, oc.weight_decay, grad_scale, t, oc.kind == OptimKind::kAdamW};
    return gpu_->AdamStep(a, decay_ranges);
  }
  Status DeviceFetch(OptimState* st) override {
    RT_CHECK(resident_);
    ParamArena<float>& A = model_->arena();
    RT_RETURN_IF_ERROR(gpu_->DownloadParams(A.params.data()));
    const size_t n = A.layout.total();
    st->base = 0;
    if (st->m.size() != n) st->m.Resize(n);
    if (st->v.size() != n) st->v.Resize(n);
    return gpu_->DownloadMoments(st->m.data(), st->v.data());
  }
#endif
  nlohmann::json ModelMeta() const override {
    nlohmann::json m = {{"task", "lm"}, {"vocab_size", model_->config().vocab_size}, {"data", data_.description}};
    if (data_.vocab) m["vocab_chars"] = std::vector<uint32_t>(data_.vocab->chars().begin(), data_.vocab->chars().end());
    return m;
  }

 private:
#ifdef RINGTRAIN_HAVE_CUDA
  // device cuda: the host arena stays the master copy (optimizer, sync, checkpoints); each
  // micro-step uploads the parameters, runs forward and backward on the GPU, and adds the GPU's
  // gradients into the host gradients. All of them are ready at once for the sync engine.
  // Dropout (train) draws the CPU model's masks: keyed by the micro-step index and global rows.
  StatusOr<double> GpuMicroStep(uint64_t index, int row0, float loss_scale, const GradReadyFn& ready) {
    if (resident_) {
      // Parameters and gradients stay on the device; the trainer zeroes the gradients per step.
      RT_ASSIGN_OR_RETURN(const double loss,
                          gpu_->Forward(tokens_.data(), targets_.data(), batch_, block_, true, seed_, index, row0));
#ifdef RINGTRAIN_HAVE_NCCL
      if (nccl_ && ready) {
        // The step's last micro-step: each range's average over the group goes on the NCCL
        // stream behind the kernels that finish it, while the rest of backward runs.
        grad_works_.clear();
        grad_sync_error_ = Status::Ok();
        RT_RETURN_IF_ERROR(gpu_->Backward(loss_scale, [this](size_t b, size_t e) {
          if (!grad_sync_error_.ok()) return;
          grad_sync_error_ = nccl_->WaitFor(gpu_->stream());
          if (grad_sync_error_.ok())
            grad_works_.push_back(nccl_->IAllReduce(gpu_->grads() + b, static_cast<int64_t>(e - b),
                                                    coll::DataType::kF32, coll::ReduceOp::kAvg));
        }));
        return loss;
      }
#endif
      RT_RETURN_IF_ERROR(gpu_->Backward(loss_scale));
      return loss;
    }
    ParamArena<float>& A = model_->arena();
    RT_RETURN_IF_ERROR(gpu_->UploadParams(A.params.data()));
    RT_RETURN_IF_ERROR(gpu_->ZeroGrads());
    RT_ASSIGN_OR_RETURN(const double loss,
                        gpu_->Forward(tokens_.data(), targets_.data(), batch_, block_, true, seed_, index, row0));
    RT_RETURN_IF_ERROR(gpu_->Backward(loss_scale));
    RT_RETURN_IF_ERROR(gpu_->DownloadGrads(grad_buf_.data()));
    float* g = A.grads.data();
    const size_t n = grad_buf_.size();
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) g[i] += grad_buf_[i];
    if (ready) ready(0, n);
    return loss;
  }
  std::unique_ptr<GpuGpt> gpu_;
  std::vector<float> grad_buf_;
  bool resident_ = false;  // DeviceStart ran: the device holds the master parameters
#endif
#ifdef RINGTRAIN_HAVE_NCCL
  // Data parallelism with the optimizer on the device: the group's communicator on the devices,
  // the step's queued gradient averages, and the first error queueing them.
  std::unique_ptr<coll::NcclCommunicator> nccl_;
  std::vector<coll::Work> grad_works_;
  Status grad_sync_error_;
#endif
  double deadline_s_ = 300;
  TokenData data_;
  TaskShard shard_;
  std::unique_ptr<Gpt<float>> model_;
  uint64_t seed_ = 0;
  int batch_ = 0, block_ = 0, eval_batches_ = 1;
  std::vector<int32_t> tokens_, targets_;
};

// A CNN (or MLP) classifier on images.
class ImageTask final : public Task {
 public:
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
    t->model_->InitWeights(t->seed_);
    if (saved) RT_RETURN_IF_ERROR(LoadParams(*saved, t->model_->arena(), t->model_->Describe()));
    t->model_->PlanActivations(t->batch_);
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
      loss_sum += model_->Forward(images_.data(), labels_.data(), rows, false) * rows;
      const float* logits = model_->logits();
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
  ImageData data_;
  TaskShard shard_;
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
  if (type != "gpt" && config.Str("device") == "cuda")
    return InvalidArgument("config: device cuda runs GPT models only so far (model.type is " + type + ")");
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
