// Gradient sync engines (DESIGN.md idea 4): the trainer asks a GradientSync to make gradients
// globally consistent. OnGradReady is called from the backward pass (trainer thread) as ranges of
// the gradient arena become final, so an engine can start communication early; Finish blocks until
// the whole arena is consistent. One process needs NoSync; all-reduce (bucketed, ZeRO-1) and
// parameter-server engines come with the data-parallel and parameter-server issues.
#pragma once

#include <cstddef>

#include "core/status.h"

namespace ringtrain {

class GradientSync {
 public:
  virtual ~GradientSync() = default;
  virtual const char* name() const = 0;
  virtual void OnGradReady(float* grads, size_t begin, size_t end) = 0;
  virtual Status Finish(float* grads, size_t n) = 0;
};

class NoSync final : public GradientSync {
 public:
  const char* name() const override { return "none"; }
  void OnGradReady(float*, size_t, size_t) override {}
  Status Finish(float*, size_t) override { return Status::Ok(); }
};

}  // namespace ringtrain
