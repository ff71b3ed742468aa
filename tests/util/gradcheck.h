// Finite-difference gradient checking in float64: central differences of a scalar loss against
// an analytic gradient, with the tolerance stated at each call site.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/rng.h"

namespace ringtrain::testing {

inline std::vector<double> RandomVec(size_t n, uint64_t key, double scale = 1.0) {
  Rng r(7, RngPurpose::kTest, key);
  std::vector<double> v(n);
  for (auto& x : v) x = r.Normal() * scale;
  return v;
}

// Checks analytic[i] == d loss / d x[i] for every i (or the first max_checks of a strided sample)
// with central differences of step h. Passes when |a - n| <= atol + rtol * max(|a|, |n|).
inline void ExpectGradientMatches(const std::function<double()>& loss, double* x, const double* analytic, size_t n,
                                  const std::string& what, double rtol = 1e-6, double atol = 1e-9,
                                  double h = 1e-5, size_t max_checks = 100000) {
  const size_t stride = n > max_checks ? n / max_checks : 1;
  int failures = 0;
  for (size_t i = 0; i < n; i += stride) {
    const double saved = x[i];
    x[i] = saved + h;
    const double lp = loss();
    x[i] = saved - h;
    const double lm = loss();
    x[i] = saved;
    const double numeric = (lp - lm) / (2 * h);
    const double a = analytic[i];
    const double tol = atol + rtol * std::max(std::fabs(a), std::fabs(numeric));
    if (std::fabs(a - numeric) > tol) {
      if (++failures <= 5)
        ADD_FAILURE() << what << "[" << i << "]: analytic " << a << " vs numeric " << numeric << " (tol " << tol << ")";
    }
  }
  EXPECT_EQ(failures, 0) << what << ": " << failures << " gradient entries off";
}

inline double Dot(const double* a, const double* b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace ringtrain::testing
