#include "core/arena.h"

#include <algorithm>
#include <vector>

#include "core/rng.h"

namespace ringtrain {

int ParamLayout::Add(const std::string& name, std::vector<int64_t> shape, bool decay, InitKind init,
                     float init_std) {
  TensorBox whole{std::vector<int64_t>(shape.size(), 0), shape};
  return AddSharded(name, shape, {whole}, decay, init, init_std);
}

int ParamLayout::AddSharded(const std::string& name, std::vector<int64_t> global_shape, std::vector<TensorBox> boxes,
                            bool decay, InitKind init, float init_std) {
  RT_CHECK_MSG(index_.find(name) == index_.end(), "duplicate parameter " + name);
  RT_CHECK(!boxes.empty());
  ParamSpec s;
  s.name = name;
  std::vector<int64_t> shape = boxes[0].shape;
  for (size_t k = 0; k < boxes.size(); ++k) {
    const TensorBox& b = boxes[k];
    RT_CHECK(b.start.size() == global_shape.size() && b.shape.size() == global_shape.size());
    for (size_t d = 0; d < global_shape.size(); ++d) {
      RT_CHECK(b.start[d] >= 0 && b.shape[d] > 0 && b.start[d] + b.shape[d] <= global_shape[d]);
      if (k > 0 && d > 0) RT_CHECK_MSG(b.shape[d] == shape[d], "stacked boxes of " + name + " differ beyond dim 0");
    }
    if (k > 0) shape[0] += b.shape[0];
  }
  s.numel = 1;
  for (int64_t d : shape) {
    RT_CHECK(d > 0);
    s.numel *= d;
  }
  s.shape = std::move(shape);
  s.global_shape = std::move(global_shape);
  s.boxes = std::move(boxes);
  s.offset = (total_ + kAlign - 1) / kAlign * kAlign;
  s.decay = decay;
  s.init = init;
  s.init_std = init_std;
  total_ = s.offset + static_cast<size_t>(s.numel);
  index_[name] = static_cast<int>(specs_.size());
  specs_.push_back(std::move(s));
  return static_cast<int>(specs_.size()) - 1;
}

int ParamLayout::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? -1 : it->second;
}

std::vector<std::pair<size_t, size_t>> ParamLayout::DecayRanges() const {
  std::vector<std::pair<size_t, size_t>> r;
  for (const auto& s : specs_) {
    if (!s.decay) continue;
    size_t b = s.offset, e = s.offset + static_cast<size_t>(s.numel);
    if (!r.empty() && r.back().second == b) r.back().second = e;
    else r.emplace_back(b, e);
  }
  return r;
}

std::vector<BoxRange> BoxRangesOf(const ParamSpec& s, int64_t lo, int64_t hi) {
  std::vector<BoxRange> out;
  int64_t at = 0;
  for (int k = 0; k < static_cast<int>(s.boxes.size()); ++k) {
    const int64_t n = s.boxes[static_cast<size_t>(k)].numel();
    const int64_t b = std::max(lo, at), e = std::min(hi, at + n);
    if (b < e) out.push_back({k, b - at, e - at, b});
    at += n;
  }
  return out;
}

int64_t BoxToGlobalIndex(const std::vector<int64_t>& g, const TensorBox& b, int64_t i) {
  int64_t idx = 0, stride = 1;
  for (size_t d = g.size(); d-- > 0;) {
    const int64_t c = i % b.shape[d];
    i /= b.shape[d];
    idx += (b.start[d] + c) * stride;
    stride *= g[d];
  }
  return idx;
}

namespace {
// Calls fn(global_index, local_index, run_length) for every contiguous run (a row of the last
// dimension) of the local tensor.
template <typename Fn>
void ForEachRun(const ParamSpec& s, Fn fn) {
  int64_t local = 0;
  for (const TensorBox& b : s.boxes) {
    const int64_t inner = b.shape.empty() ? 1 : b.shape.back();
    const int64_t n = b.numel();
    for (int64_t i = 0; i < n; i += inner, local += inner) fn(BoxToGlobalIndex(s.global_shape, b, i), local, inner);
  }
}
}  // namespace

template <typename T>
void GlobalToLocal(const ParamSpec& s, const T* global, T* local) {
  ForEachRun(s, [&](int64_t g, int64_t l, int64_t n) { std::copy(global + g, global + g + n, local + l); });
}

template <typename T>
void LocalToGlobal(const ParamSpec& s, const T* local, T* global) {
  ForEachRun(s, [&](int64_t g, int64_t l, int64_t n) { std::copy(local + l, local + l + n, global + g); });
}

template void GlobalToLocal<float>(const ParamSpec&, const float*, float*);
template void GlobalToLocal<double>(const ParamSpec&, const double*, double*);
template void LocalToGlobal<float>(const ParamSpec&, const float*, float*);
template void LocalToGlobal<double>(const ParamSpec&, const double*, double*);

uint64_t HashName(const std::string& s) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

template <typename T>
void ParamArena<T>::Initialize(uint64_t seed) {
  params.Zero();
  for (int i = 0; i < static_cast<int>(layout.specs().size()); ++i) {
    const ParamSpec& s = layout.spec(i);
    T* p = param(i);
    switch (s.init) {
      case InitKind::kZeros: break;
      case InitKind::kOnes:
        for (int64_t j = 0; j < s.numel; ++j) p[j] = T(1);
        break;
      case InitKind::kNormal:
      case InitKind::kUniform: {
        Rng rng(seed, RngPurpose::kInit, HashName(s.name));
        const bool normal = s.init == InitKind::kNormal;
        auto draw = [&]() {
          return static_cast<T>(normal ? rng.Normal() * s.init_std : (2.0 * rng.Uniform() - 1.0) * s.init_std);
        };
        if (!s.sharded()) {
          for (int64_t j = 0; j < s.numel; ++j) p[j] = draw();
        } else {
          // Draw the whole tensor's stream and keep this rank's part of it.
          int64_t n = 1;
          for (int64_t d : s.global_shape) n *= d;
          std::vector<T> whole(static_cast<size_t>(n));
          for (T& v : whole) v = draw();
          GlobalToLocal(s, whole.data(), p);
        }
        break;
      }
    }
  }
}

template struct ParamArena<float>;
template struct ParamArena<double>;

}  // namespace ringtrain
