// Vectorisable elementary functions for the float kernels. libm's expf/tanhf are scalar calls
// that block auto-vectorisation (GELU through tanhf took 40% of a GPT step); these inline versions
// vectorise under -O3. The double overloads call libm, so the float64 reference kernels used by
// the gradient checks stay exact.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

namespace ringtrain::cpu {

// exp(x) for float: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial for
// e^r (Cephes coefficients), scaled by 2^n built in the exponent bits. Relative error ~2 ulp;
// inputs are clamped to [-87, 88] (results stay normal, no inf).
inline float Exp(float x) {
  x = std::max(std::min(x, 88.0f), -87.0f);  // min/max, not ?:, so the loop stays branch-free
  // Round to nearest by adding and subtracting 1.5 * 2^23 (floorf is a libm call that blocks
  // vectorisation unless -fno-trapping-math).
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * std::bit_cast<float>(bits);
}
inline double Exp(double x) { return std::exp(x); }

// tanh(x) = 1 - 2 / (e^{2x} + 1); absolute error ~1e-7 (what GELU needs), saturates cleanly.
inline float Tanh(float x) {
  x = std::max(std::min(x, 9.0f), -9.0f);
  return 1.0f - 2.0f / (Exp(2.0f * x) + 1.0f);
}
inline double Tanh(double x) { return std::tanh(x); }

}  // namespace ringtrain::cpu
