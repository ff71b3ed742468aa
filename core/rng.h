// Deterministic random streams. Every stream is derived from (seed, purpose, index...) so that the
// numbers a rank draws never depend on scheduling, thread count or world size.
#pragma once

#include <cmath>
#include <cstdint>

// The stream functions also compile for CUDA device code (dropout masks drawn on the GPU are
// the CPU's, bit for bit).
#ifdef __CUDACC__
#define RT_HOST_DEVICE __host__ __device__
#else
#define RT_HOST_DEVICE
#endif

namespace ringtrain {

// Purposes of random streams; values are part of the reproducibility contract, never renumber.
enum class RngPurpose : uint64_t {
  kInit = 1,       // parameter initialisation (index: parameter tensor)
  kDropout = 2,    // dropout masks (index: step, micro-step, layer site)
  kData = 3,       // batch sampling (index: step)
  kSynthetic = 4,  // synthetic data source construction
  kSample = 5,     // text generation
  kTest = 99,      // tests
};

RT_HOST_DEVICE inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

RT_HOST_DEVICE inline uint64_t MixKey(uint64_t seed, RngPurpose purpose, uint64_t a = 0, uint64_t b = 0, uint64_t c = 0) {
  uint64_t h = SplitMix64(seed ^ 0x5851F42D4C957F2Dull);
  h = SplitMix64(h ^ static_cast<uint64_t>(purpose));
  h = SplitMix64(h ^ a);
  h = SplitMix64(h ^ (b * 0x9E3779B97F4A7C15ull));
  return SplitMix64(h ^ (c * 0xD1B54A32D192ED03ull));
}

// xoshiro256** seeded from a mixed key. Small, fast, good statistical quality.
class Rng {
 public:
  RT_HOST_DEVICE explicit Rng(uint64_t key) {
    uint64_t x = key;
    for (auto& s : s_) {
      x = SplitMix64(x);
      s = x;
    }
  }
  RT_HOST_DEVICE Rng(uint64_t seed, RngPurpose purpose, uint64_t a = 0, uint64_t b = 0, uint64_t c = 0)
      : Rng(MixKey(seed, purpose, a, b, c)) {}

  RT_HOST_DEVICE uint64_t Next() {
    const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = Rotl(s_[3], 45);
    return result;
  }
  // Uniform in [0, 1) with 53 bits.
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }
  // Uniform in [0, 1) with 24 bits (float).
  float UniformF() { return static_cast<float>(Next() >> 40) * 0x1.0p-24f; }
  // Uniform integer in [0, n), n > 0 (Lemire's method, unbiased).
  uint64_t Below(uint64_t n) {
    __uint128_t m = static_cast<__uint128_t>(Next()) * n;
    uint64_t low = static_cast<uint64_t>(m);
    if (low < n) {
      const uint64_t threshold = -n % n;
      while (low < threshold) {
        m = static_cast<__uint128_t>(Next()) * n;
        low = static_cast<uint64_t>(m);
      }
    }
    return static_cast<uint64_t>(m >> 64);
  }
  // Standard normal (Box-Muller, both values used).
  double Normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u1 = Uniform();
    const double u2 = Uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(2.0 * M_PI * u2);
    has_spare_ = true;
    return r * std::cos(2.0 * M_PI * u2);
  }

 private:
  RT_HOST_DEVICE static uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
  double spare_ = 0;
  bool has_spare_ = false;
};

// Index drawn from unnormalised weights w[0, n) that sum to `total`: the first i whose running
// sum exceeds Uniform() * total (the last index if rounding leaves none).
inline int SampleCategorical(Rng& rng, const double* w, int n, double total = 1.0) {
  const double u = rng.Uniform() * total;
  double acc = 0;
  for (int i = 0; i < n; ++i) {
    acc += w[i];
    if (u < acc) return i;
  }
  return n - 1;
}

}  // namespace ringtrain
