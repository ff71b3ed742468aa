#include "core/arena.h"

#include "core/rng.h"

namespace ringtrain {

int ParamLayout::Add(const std::string& name, std::vector<int64_t> shape, bool decay, InitKind init,
                     float init_std) {
  RT_CHECK_MSG(index_.find(name) == index_.end(), "duplicate parameter " + name);
  ParamSpec s;
  s.name = name;
  s.numel = 1;
  for (int64_t d : shape) {
    RT_CHECK(d > 0);
    s.numel *= d;
  }
  s.shape = std::move(shape);
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
      case InitKind::kNormal: {
        Rng rng(seed, RngPurpose::kInit, HashName(s.name));
        for (int64_t j = 0; j < s.numel; ++j) p[j] = static_cast<T>(rng.Normal() * s.init_std);
        break;
      }
    }
  }
}

template struct ParamArena<float>;
template struct ParamArena<double>;

}  // namespace ringtrain
