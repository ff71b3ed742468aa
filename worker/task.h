// What the one training loop trains: a model together with its data. LmTask is GPT on token data
// (language modelling), ImageTask a CNN on image data (classification). The trainer only sees
// this interface: micro-steps, evaluation, the parameter arena and saving.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "checkpoint/model_file.h"
#include "core/arena.h"
#include "core/config.h"
#include "collectives/communicator.h"
#include "models/gpt.h"
#include "models/optim.h"

namespace ringtrain {

struct EvalResult {
  double loss = 0;
  nlohmann::json metrics = nlohmann::json::object();  // classification: accuracy, macro_f1, ...
  std::string report;                                 // multi-line table for the terminal ("" for LM)
};

// This process's part of a data-parallel job: it holds rows [rank*b, (rank+1)*b) of every global
// batch of size*b rows, and evaluation is split across the group and reduced over comm.
// With tensor parallelism, rank/size/comm are the data-parallel group's and tp is the
// tensor-parallel group the model's layers are split over (GPT only).
struct TaskShard {
  int rank = 0;
  int size = 1;
  coll::Communicator* comm = nullptr;  // not owned; null for one process
  coll::Communicator* tp = nullptr;    // not owned; null: no tensor parallelism
  int local_rank = 0;                  // on this node (picks the GPU under device cuda)
  int local_size = 1;                  // processes of the job on this node
};

class Task {
 public:
  virtual ~Task() = default;
  virtual ParamArena<float>& arena() = 0;
  // The layout of the whole model (equal to arena().layout without tensor parallelism).
  virtual ParamLayout FullLayout() const = 0;
  // Payload bytes of tensor-parallel all-reduces since the last call (0 without TP).
  virtual uint64_t TakeTpBytes() { return 0; }
  virtual int64_t NumParams() const = 0;
  virtual int64_t ItemsPerMicroStep() const = 0;  // tokens or images
  virtual const char* ItemName() const = 0;       // "tok" or "img" (progress line)
  virtual const char* ItemUnit() const = 0;       // "tokens" or "images" (metric keys: <unit>_per_s)
  virtual std::string BatchShape() const = 0;     // e.g. "16 x 128 tokens", "64 images"
  // Draws this rank's rows of global micro-batch `index`, runs forward and backward
  // (loss * loss_scale); returns the mean loss over those rows. Fails only when a tensor-parallel
  // collective does.
  virtual StatusOr<double> MicroStep(uint64_t index, float loss_scale, const GradReadyFn& ready) = 0;
  // Validation over the whole group (each rank evaluates its part; the result is reduced, so every
  // rank gets the same figures, equal to one process's up to rounding). Collective.
  virtual StatusOr<EvalResult> Evaluate() = 0;
  virtual std::string Header() const = 0;  // data and model lines printed at the start
  virtual std::optional<double> EntropyRate() const { return std::nullopt; }
  virtual std::string DataDescription() const = 0;
  // Where forward/backward run: "cpu", or the GPU's name under device cuda.
  virtual std::string DeviceName() const { return "cpu"; }

  // The optimizer on the device (device cuda; the trainer decides when to use it): parameters,
  // gradients and Adam/AdamW moments stay in device memory between steps, micro-steps copy
  // nothing between host and device, and the host copies (arena().params and the optimizer state)
  // are brought up to date only by DeviceFetch. Until DeviceStart, the host arena is the master.
  // data_parallel: whether the job has several data-parallel ranks, whose gradients the task must
  // then average on the devices itself (NCCL).
  virtual bool CanOptimizeOnDevice(bool data_parallel) const { (void)data_parallel; return false; }
  // Uploads the host parameters and the moments of st that oc uses (the whole arena; absent: zeros)
  // and switches to device-resident micro-steps. Again after the host copies changed (a resume).
  // With data parallelism (collective over the group): sets up the device communicator; from then
  // on the micro-step given a ready callback (the step's last) queues each range's average over
  // the group as soon as backward has finished it, and DeviceGradSumSquares waits for them.
  virtual Status DeviceStart(const OptimConfig& oc, const OptimState& st) {
    (void)oc, (void)st;
    return Internal("this task has no device optimizer");
  }
  virtual Status DeviceZeroGrads() { return Internal("this task has no device optimizer"); }
  // After the micro-steps: waits until the device has finished backward, then (data parallelism)
  // until the gradient averages queued behind it have finished. The trainer times the second
  // wait as exposed communication.
  virtual Status DeviceFinishBackward() { return Internal("this task has no device optimizer"); }
  virtual Status DeviceFinishGradSync() { return Internal("this task has no device optimizer"); }
  // Sum of squares of the device gradients (double; after DeviceFinishGradSync).
  virtual StatusOr<double> DeviceGradSumSquares() { return Internal("this task has no device optimizer"); }
  // OptimizerUpdate's update of the whole arena (SGD, Adam or AdamW), on the device.
  virtual Status DeviceOptimizerUpdate(const OptimConfig& oc, double lr, int64_t t, float grad_scale,
                                       const std::vector<std::pair<size_t, size_t>>& decay_ranges) {
    (void)oc, (void)lr, (void)t, (void)grad_scale, (void)decay_ranges;
    return Internal("this task has no device optimizer");
  }
  // Copies the device parameters into arena().params and the moments oc uses into st (allocated).
  virtual Status DeviceFetch(OptimState* st) { (void)st; return Internal("this task has no device optimizer"); }
  // model.json fields that describe the data (vocabulary, image shape, normalisation).
  virtual nlohmann::json ModelMeta() const = 0;
};

// Builds the task the config asks for (GPT for model.type gpt, CNN otherwise). With `saved`, the
// parameters (and data settings such as the vocabulary or normalisation) come from a saved model
// and must match it.
StatusOr<std::unique_ptr<Task>> MakeTask(const Config& config, const SavedModel* saved = nullptr,
                                         const TaskShard& shard = {});

}  // namespace ringtrain
