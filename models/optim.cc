#include "models/optim.h"

#include <algorithm>
#include <cmath>

namespace ringtrain {

StatusOr<OptimConfig> OptimConfig::FromConfig(const Config& c) {
  OptimConfig o;
  const std::string& n = c.Str("optim.name");
  o.kind = n == "sgd" ? OptimKind::kSgd : n == "adam" ? OptimKind::kAdam : OptimKind::kAdamW;
  o.lr = c.Float("optim.lr");
  o.beta1 = c.Float("optim.beta1");
  o.beta2 = c.Float("optim.beta2");
  o.eps = c.Float("optim.eps");
  o.weight_decay = c.Float("optim.weight_decay");
  o.momentum = c.Float("optim.momentum");
  o.nesterov = c.Bool("optim.nesterov");
  o.l1 = c.Float("optim.l1");
  o.l2 = c.Float("optim.l2");
  o.grad_clip = c.Float("optim.grad_clip");
  if (o.nesterov && (o.kind != OptimKind::kSgd || o.momentum <= 0))
    return InvalidArgument("config key optim.nesterov needs optim.name=sgd and optim.momentum > 0");
  return o;
}

void OptimState::Allocate(const OptimConfig& oc, size_t n, size_t first) {
  base = first;
  const bool need_m = oc.kind != OptimKind::kSgd || oc.momentum > 0;
  const bool need_v = oc.kind != OptimKind::kSgd;
  if (need_m && m.size() != n) m.Resize(n);
  if (need_v && v.size() != n) v.Resize(n);
}

namespace {

// One contiguous segment with a fixed decay flag.
void UpdateSegment(const OptimConfig& oc, double lr, int64_t t, float gs, bool decay, float* p, const float* g,
                   float* m, float* v, size_t base, size_t b, size_t e) {
  const float l1 = decay ? static_cast<float>(oc.l1) : 0.f;
  const float l2 = decay ? static_cast<float>(oc.l2) : 0.f;
  const float wd = decay ? static_cast<float>(oc.weight_decay) : 0.f;
  const float flr = static_cast<float>(lr);
  switch (oc.kind) {
    case OptimKind::kSgd: {
      const float mu = static_cast<float>(oc.momentum);
      const float coupled = l2 + wd;
#pragma omp parallel for schedule(static)
      for (size_t i = b; i < e; ++i) {
        float gi = g[i] * gs + coupled * p[i] + (l1 != 0.f ? l1 * ((p[i] > 0.f) - (p[i] < 0.f)) : 0.f);
        if (m) {
          float& mi = m[i - base];
          mi = mu * mi + gi;
          gi = oc.nesterov ? gi + mu * mi : mi;
        }
        p[i] -= flr * gi;
      }
      break;
    }
    case OptimKind::kAdam:
    case OptimKind::kAdamW: {
      const bool decoupled = oc.kind == OptimKind::kAdamW;
      const float coupled = l2 + (decoupled ? 0.f : wd);
      const float b1 = static_cast<float>(oc.beta1), b2 = static_cast<float>(oc.beta2);
      const float eps = static_cast<float>(oc.eps);
      // 1 - beta in double, then rounded: (1.f - 0.999f) is off by 1e-5 relative.
      const float omb1 = static_cast<float>(1.0 - oc.beta1), omb2 = static_cast<float>(1.0 - oc.beta2);
      const double bc1 = 1.0 - std::pow(oc.beta1, static_cast<double>(t));
      const double bc2 = 1.0 - std::pow(oc.beta2, static_cast<double>(t));
      const float step_size = static_cast<float>(lr / bc1);
      const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
      const float decay_mul = decoupled ? 1.f - flr * wd : 1.f;
#pragma omp parallel for schedule(static)
      for (size_t i = b; i < e; ++i) {
        const float gi = g[i] * gs + coupled * p[i] + (l1 != 0.f ? l1 * ((p[i] > 0.f) - (p[i] < 0.f)) : 0.f);
        float& mi = m[i - base];
        float& vi = v[i - base];
        mi = b1 * mi + omb1 * gi;
        vi = b2 * vi + omb2 * gi * gi;
        const float denom = std::sqrt(vi) * inv_sqrt_bc2 + eps;
        p[i] = p[i] * decay_mul - step_size * mi / denom;
      }
      break;
    }
  }
}

}  // namespace

void OptimizerUpdate(const OptimConfig& oc, double lr, int64_t t, float grad_scale, float* params,
                     const float* grads, OptimState& st, size_t begin, size_t end,
                     const std::vector<std::pair<size_t, size_t>>& decay_ranges) {
  RT_CHECK(begin >= st.base && (st.m.size() == 0 || end <= st.base + st.m.size()));
  float* m = st.m.size() ? st.m.data() : nullptr;
  float* v = st.v.size() ? st.v.data() : nullptr;
  ForEachDecaySegment(begin, end, decay_ranges, [&](size_t b, size_t e, bool decay) {
    UpdateSegment(oc, lr, t, grad_scale, decay, params, grads, m, v, st.base, b, e);
  });
}

double SumSquares(const float* g, size_t n) {
  // Fixed 8192-element blocks summed in order: the result does not depend on the thread count.
  const size_t kBlock = 8192;
  const size_t nb = (n + kBlock - 1) / kBlock;
  // The caller's buffer, reused across steps (no allocation per step). Workers write through
  // `out`: naming the thread_local inside the parallel region would give each its own empty copy.
  static thread_local std::vector<double> partial;
  partial.assign(nb, 0.0);
  double* out = partial.data();
#pragma omp parallel for schedule(static)
  for (size_t b = 0; b < nb; ++b) {
    double s = 0;
    const size_t e = std::min(n, (b + 1) * kBlock);
    for (size_t i = b * kBlock; i < e; ++i) s += static_cast<double>(g[i]) * g[i];
    out[b] = s;
  }
  double total = 0;
  for (double s : partial) total += s;
  return total;
}

float ClipScale(double global_norm, double clip) {
  if (clip <= 0) return 1.f;
  const double c = clip / (global_norm + 1e-6);
  return c < 1.0 ? static_cast<float>(c) : 1.f;
}

StatusOr<LrSchedule> LrSchedule::FromConfig(const Config& c) {
  LrSchedule s;
  const std::string& n = c.Str("schedule.name");
  s.kind = n == "cosine"     ? ScheduleKind::kCosine
           : n == "step"     ? ScheduleKind::kStep
           : n == "exponential" ? ScheduleKind::kExponential
                            : ScheduleKind::kConstant;
  s.peak = c.Float("optim.lr");
  s.min_lr = c.Float("schedule.min_lr");
  s.gamma = c.Float("schedule.gamma");
  s.warmup = c.Int("schedule.warmup");
  s.decay_steps = c.Int("schedule.decay_steps");
  if (s.decay_steps == 0) s.decay_steps = c.Int("train.steps");
  s.step_size = c.Int("schedule.step_size");
  if (s.kind == ScheduleKind::kCosine && s.min_lr > s.peak)
    return InvalidArgument("config key schedule.min_lr = " + std::to_string(s.min_lr) +
                           " is above optim.lr = " + std::to_string(s.peak));
  return s;
}

double LrSchedule::At(int64_t step) const {
  if (step < warmup) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const int64_t k = step - warmup;
  switch (kind) {
    case ScheduleKind::kConstant: return peak;
    case ScheduleKind::kCosine: {
      const int64_t span = decay_steps - warmup;
      if (span <= 0 || k >= span) return min_lr;
      const double ratio = static_cast<double>(k) / static_cast<double>(span);
      return min_lr + 0.5 * (1.0 + std::cos(M_PI * ratio)) * (peak - min_lr);
    }
    case ScheduleKind::kStep: return peak * std::pow(gamma, static_cast<double>(k / step_size));
    case ScheduleKind::kExponential: return peak * std::pow(gamma, static_cast<double>(k));
  }
  return peak;
}

}  // namespace ringtrain
