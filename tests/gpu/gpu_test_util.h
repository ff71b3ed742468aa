// Helpers of the GPU tests: skipping without a device, random inputs, device copies of host
// vectors, the relative comparisons (per vector, per parameter tensor), and a quiet trainer.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/arena.h"
#include "core/config.h"
#include "core/rng.h"
#include "worker/trainer.h"

namespace ringtrain::testing {

inline bool HaveGpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define SKIP_WITHOUT_GPU() \
  if (!::ringtrain::testing::HaveGpu()) GTEST_SKIP() << "no CUDA device on this machine"

inline std::vector<float> Random(size_t n, uint64_t key, float scale = 1.f) {
  Rng r(key);
  std::vector<float> v(n);
  for (auto& x : v) x = (r.UniformF() * 2.f - 1.f) * scale;
  return v;
}

// A device copy of a host vector; Host() copies it back.
template <typename T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  explicit Dev(const std::vector<T>& h) : n(h.size()) {
    EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(1, n) * sizeof(T)), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  explicit Dev(size_t count) : Dev(std::vector<T>(count)) {}
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  std::vector<T> Host() const {
    std::vector<T> h(n);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }
};

// Largest |got - want| relative to the largest |want|.
inline void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, const char* what,
                        double tol = 1e-5) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double diff = 0, mag = 1e-30;
  size_t at = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (d > diff) {
      diff = d;
      at = i;
    }
    mag = std::max(mag, std::fabs(static_cast<double>(want[i])));
  }
  EXPECT_LE(diff / mag, tol) << what << ": element " << at << " is " << got[at] << ", reference " << want[at];
}

// Largest |got - want| over the largest |want|, per tensor of the layout.
inline void ExpectTensorsClose(const ParamLayout& L, const float* got, const float* want, double tol,
                               const char* what) {
  for (const ParamSpec& s : L.specs()) {
    double diff = 0, mag = 1e-30;
    for (int64_t i = 0; i < s.numel; ++i) {
      const size_t k = s.offset + static_cast<size_t>(i);
      diff = std::max(diff, std::fabs(static_cast<double>(got[k]) - want[k]));
      mag = std::max(mag, std::fabs(static_cast<double>(want[k])));
    }
    EXPECT_LE(diff / mag, tol) << what << " of " << s.name << ": largest difference " << diff << ", largest value "
                               << mag;
  }
}

// A trainer that prints nothing, for the config overrides `sets` and options o (communicator,
// checkpoints).
inline StatusOr<std::unique_ptr<Trainer>> MakeTrainer(const std::vector<std::string>& sets, TrainOptions o = {}) {
  RT_ASSIGN_OR_RETURN(Config c, Config::Load("", sets));
  o.print = false;
  return Trainer::Create(c, o);
}

}  // namespace ringtrain::testing
