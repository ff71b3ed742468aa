#include "models/cnn.h"

#include <cmath>
#include <cstring>
#include <sstream>

#include "core/cpu/ops.h"

namespace ringtrain {

StatusOr<CnnConfig> CnnConfig::FromConfig(const Config& c, int channels, int height, int width, int classes) {
  CnnConfig m;
  m.arch = c.Str("model.type");
  m.channels = channels;
  m.height = height;
  m.width_px = width;
  m.classes = classes;
  m.depth = static_cast<int>(c.Int("model.depth"));
  m.width = static_cast<int>(c.Int("model.width"));
  m.batch_norm = c.Bool("model.batch_norm");
  m.bn_momentum = static_cast<float>(c.Float("model.bn_momentum"));
  m.dropout = static_cast<float>(c.Float("model.dropout"));
  m.loss = c.Str("model.loss");
  std::stringstream ss(c.Str("model.hidden"));
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    char* end;
    const long v = std::strtol(item.c_str(), &end, 10);
    if (*end != 0 || v < 1 || v > 1 << 20)
      return InvalidArgument("config key model.hidden: '" + item + "' is not a positive layer size (e.g. 256,128)");
    m.hidden.push_back(static_cast<int>(v));
  }
  if (m.arch == "resnet" && (m.depth < 8 || (m.depth - 2) % 6 != 0))
    return InvalidArgument("config key model.depth = " + std::to_string(m.depth) + " must be 6n+2 (8, 14, 20, ...)");
  if (m.arch == "lenet" && (height < 16 || width < 16))
    return InvalidArgument("model lenet needs images of at least 16x16, the data has " + std::to_string(height) + "x" +
                           std::to_string(width));
  if (m.arch == "resnet" && (height < 8 || width < 8))
    return InvalidArgument("model resnet needs images of at least 8x8");
  return m;
}

template <typename T>
int Cnn<T>::Add(Node n) {
  if (n.in >= 0) nodes_[n.in].consumers++;
  if (n.in2 >= 0) nodes_[n.in2].consumers++;
  nodes_.push_back(n);
  return static_cast<int>(nodes_.size()) - 1;
}

template <typename T>
typename Cnn<T>::Node Cnn<T>::Follow(int in, Kind kind) const {
  Node n{};
  n.kind = kind;
  n.in = in;
  n.C = nodes_[in].C;
  n.H = nodes_[in].H;
  n.W = nodes_[in].W;
  return n;
}

template <typename T>
int Cnn<T>::Conv(int in, int oc, int k, int stride, int pad, bool bias, const std::string& name) {
  const Node& src = nodes_[in];
  Node n{};
  n.kind = Kind::kConv;
  n.in = in;
  n.conv.C = src.C;
  n.conv.H = src.H;
  n.conv.W = src.W;
  n.conv.OC = oc;
  n.conv.KH = n.conv.KW = k;
  n.conv.stride = stride;
  n.conv.pad = pad;
  n.C = oc;
  n.H = n.conv.OH();
  n.W = n.conv.OW();
  // PyTorch's defaults: weight and bias uniform in +-1/sqrt(fan_in).
  const float bound = 1.0f / std::sqrt(static_cast<float>(src.C * k * k));
  n.w = arena_.layout.Add(name + ".weight", {oc, src.C, k, k}, true, InitKind::kUniform, bound);
  if (bias) n.b = arena_.layout.Add(name + ".bias", {oc}, false, InitKind::kUniform, bound);
  return Add(n);
}

template <typename T>
int Cnn<T>::Bn(int in, const std::string& name) {
  Node n = Follow(in, Kind::kBatchNorm);
  n.w = arena_.layout.Add(name + ".weight", {n.C}, false, InitKind::kOnes);
  n.b = arena_.layout.Add(name + ".bias", {n.C}, false, InitKind::kZeros);
  n.rm = arena_.layout.Add(name + ".running_mean", {n.C}, false, InitKind::kZeros);
  n.rv = arena_.layout.Add(name + ".running_var", {n.C}, false, InitKind::kOnes);
  return Add(n);
}

template <typename T>
int Cnn<T>::Relu(int in) {
  return Add(Follow(in, Kind::kRelu));
}

template <typename T>
int Cnn<T>::Linear(int in, int out, const std::string& name) {
  const Node& src = nodes_[in];
  Node n{};
  n.kind = Kind::kLinear;
  n.in = in;
  n.C = out;
  n.H = n.W = 1;
  const int fan_in = static_cast<int>(src.Size());
  // PyTorch's defaults: weight and bias uniform in +-1/sqrt(fan_in).
  const float bound = 1.0f / std::sqrt(static_cast<float>(fan_in));
  n.w = arena_.layout.Add(name + ".weight", {out, fan_in}, true, InitKind::kUniform, bound);
  n.b = arena_.layout.Add(name + ".bias", {out}, false, InitKind::kUniform, bound);
  return Add(n);
}

template <typename T>
Cnn<T>::Cnn(const CnnConfig& cfg) : cfg_(cfg) {
  Node input{};
  input.kind = Kind::kInput;
  input.C = cfg.channels;
  input.H = cfg.height;
  input.W = cfg.width_px;
  int x = Add(input);
  auto pool = [&](int in, Kind kind, int k, int st) {
    Node n = Follow(in, kind);
    n.k = k;
    n.stride = st;
    n.H = (n.H - k) / st + 1;
    n.W = (n.W - k) / st + 1;
    return Add(n);
  };
  auto head = [&](int in, const std::string& name) {
    if (cfg.dropout > 0) in = Add(Follow(in, Kind::kDropout));
    return Linear(in, cfg.classes, name);
  };
  if (cfg.arch == "mlp") {
    for (size_t i = 0; i < cfg.hidden.size(); ++i) x = Relu(Linear(x, cfg.hidden[i], "fc" + std::to_string(i + 1)));
    head(x, "fc" + std::to_string(cfg.hidden.size() + 1));
  } else if (cfg.arch == "lenet") {
    x = pool(Relu(Conv(x, 6, 5, 1, 2, true, "conv1")), Kind::kMaxPool, 2, 2);
    x = pool(Relu(Conv(x, 16, 5, 1, 0, true, "conv2")), Kind::kMaxPool, 2, 2);
    x = Relu(Linear(x, 120, "fc1"));
    x = Relu(Linear(x, 84, "fc2"));
    head(x, "fc3");
  } else {  // resnet
    const bool bn = cfg.batch_norm;
    auto conv_bn = [&](int in, int oc, int k, int st, int pad, const std::string& name) {
      int y = Conv(in, oc, k, st, pad, !bn, name);
      return bn ? Bn(y, name + "_bn") : y;
    };
    x = Relu(conv_bn(x, cfg.width, 3, 1, 1, "conv1"));
    const int blocks = (cfg.depth - 2) / 6;
    int ch = cfg.width;
    for (int stage = 0; stage < 3; ++stage) {
      for (int blk = 0; blk < blocks; ++blk) {
        const std::string p = "layer" + std::to_string(stage + 1) + "." + std::to_string(blk);
        const int st = (stage > 0 && blk == 0) ? 2 : 1;
        const int oc = cfg.width << stage;
        int y = Relu(conv_bn(x, oc, 3, st, 1, p + ".conv1"));
        y = conv_bn(y, oc, 3, 1, 1, p + ".conv2");
        int sc = x;
        if (st != 1 || oc != ch) sc = conv_bn(x, oc, 1, st, 0, p + ".shortcut");
        Node add = Follow(y, Kind::kAdd);
        add.in2 = sc;
        x = Relu(Add(add));
        ch = oc;
      }
    }
    x = pool(x, Kind::kAvgPool, nodes_[x].H, 1);  // global average pooling (square maps)
    head(x, "fc");
  }
  arena_.Allocate();
}

template <typename T>
void Cnn<T>::InitWeights(uint64_t seed) {
  arena_.Initialize(seed);
}

template <typename T>
int64_t Cnn<T>::NumParams() const {
  int64_t n = 0;
  for (const auto& s : arena_.layout.specs())
    if (s.name.find("running_") == std::string::npos) n += s.numel;
  return n;
}

template <typename T>
std::string Cnn<T>::Describe() const {
  std::ostringstream os;
  os << cfg_.arch;
  if (cfg_.arch == "resnet") os << "-" << cfg_.depth << (cfg_.batch_norm ? "" : " (no batch norm)");
  os << ", input " << cfg_.channels << "x" << cfg_.height << "x" << cfg_.width_px << ", " << cfg_.classes << " classes";
  return os.str();
}

template <typename T>
typename Cnn<T>::PlanSizes Cnn<T>::PlanFor(const std::vector<Node>& nodes, int N, int64_t align) {
  auto r = [align](int64_t n) { return (n + align - 1) / align * align; };
  PlanSizes p;
  for (const Node& n : nodes) {
    const int64_t sz = static_cast<int64_t>(N) * n.Size();
    p.acts += r(sz) * 2 + (n.kind == Kind::kBatchNorm ? 2 * r(n.C) : 0);
    if (n.kind == Kind::kMaxPool) p.argmax += r(sz);
    if (n.kind == Kind::kDropout) p.masks += r(sz);
    p.largest = std::max(p.largest, sz);
  }
  return p;
}

template <typename T>
void Cnn<T>::AssignPlan(std::vector<Node>& nodes, int N, int64_t align, T* acts, int32_t* argmax, uint8_t* masks) {
  auto r = [align](int64_t n) { return (n + align - 1) / align * align; };
  for (Node& n : nodes) {
    const int64_t sz = static_cast<int64_t>(N) * n.Size();
    n.out = acts;
    acts += r(sz);
    n.grad = acts;
    acts += r(sz);
    n.mean = n.rstd = nullptr;
    n.argmax = nullptr;
    n.keep = nullptr;
    if (n.kind == Kind::kBatchNorm) {
      n.mean = acts;
      acts += r(n.C);
      n.rstd = acts;
      acts += r(n.C);
    }
    if (n.kind == Kind::kMaxPool) {
      n.argmax = argmax;
      argmax += r(sz);
    }
    if (n.kind == Kind::kDropout) {
      n.keep = masks;
      masks += r(sz);
    }
  }
}

template <typename T>
void Cnn<T>::PlanActivations(int N) {
  if (N <= planN_) return;
  planN_ = N;
  const int64_t kAlign = 16;
  const PlanSizes sizes = PlanFor(nodes_, N, kAlign);
  int64_t scratch = 0;
  for (const Node& n : nodes_) {
    if (n.kind != Kind::kConv) continue;
    cpu::ConvShape s = n.conv;
    s.N = N;
    scratch = std::max(scratch, cpu::ConvScratchSize(s));
  }
  acts_.Resize(static_cast<size_t>(sizes.acts));
  argmax_.Resize(static_cast<size_t>(sizes.argmax));
  masks_.Resize(static_cast<size_t>(sizes.masks));
  scratch_.Resize(static_cast<size_t>(scratch));
  tmp_.Resize(static_cast<size_t>(sizes.largest));
  losses_.Resize(static_cast<size_t>(N));
  AssignPlan(nodes_, N, kAlign, acts_.data(), argmax_.data(), masks_.data());
}

template <typename T>
double Cnn<T>::Forward(const T* images, const int32_t* labels, int N, bool train, uint64_t seed, uint64_t key,
                       int64_t row_begin) {
  PlanActivations(N);
  curN_ = N;
  cur_train_ = train;
  std::memcpy(nodes_[0].out, images, sizeof(T) * static_cast<size_t>(N * nodes_[0].Size()));
  for (size_t i = 1; i < nodes_.size(); ++i) {
    Node& n = nodes_[i];
    const Node& in = nodes_[n.in];
    const int64_t sz = static_cast<int64_t>(N) * n.Size();
    switch (n.kind) {
      case Kind::kConv: {
        cpu::ConvShape s = n.conv;
        s.N = N;
        cpu::Conv2dForward(n.out, in.out, arena_.param(n.w), n.b >= 0 ? arena_.param(n.b) : nullptr, s, scratch_.data());
        break;
      }
      case Kind::kBatchNorm:
        cpu::BatchNormForward(n.out, n.mean, n.rstd, arena_.param(n.rm), arena_.param(n.rv), in.out, arena_.param(n.w),
                              arena_.param(n.b), N, n.C, n.H * n.W, train, static_cast<T>(cfg_.bn_momentum), T(1e-5));
        break;
      case Kind::kRelu: cpu::ReluForward(n.out, in.out, sz); break;
      case Kind::kMaxPool: cpu::MaxPoolForward(n.out, n.argmax, in.out, N, in.C, in.H, in.W, n.k, n.stride); break;
      case Kind::kAvgPool: cpu::AvgPoolForward(n.out, in.out, N, in.C, in.H, in.W, n.k, n.stride); break;
      case Kind::kLinear:
        cpu::LinearForward(n.out, in.out, arena_.param(n.w), arena_.param(n.b), N, static_cast<int>(in.Size()), n.C);
        break;
      case Kind::kAdd: cpu::ResidualForward(n.out, in.out, nodes_[n.in2].out, sz); break;
      case Kind::kDropout:
        if (train) {
          cpu::DropoutMaskRows(n.keep, cfg_.dropout, N, n.Size(), row_begin, seed, key * 4096 + i);
          cpu::DropoutApply(n.out, in.out, n.keep, static_cast<T>(cfg_.dropout), sz);
        } else {
          std::memcpy(n.out, in.out, sizeof(T) * static_cast<size_t>(sz));
        }
        break;
      case Kind::kInput: break;
    }
  }
  if (!labels) {
    labels_.clear();
    return 0.0;
  }
  labels_.assign(labels, labels + N);
  const Node& last = nodes_.back();
  if (cfg_.loss == "mse") {
    onehot_.assign(static_cast<size_t>(N) * cfg_.classes, T(0));
    for (int i = 0; i < N; ++i) onehot_[static_cast<size_t>(i) * cfg_.classes + labels[i]] = T(1);
    return cpu::MseLoss<T>(nullptr, last.out, onehot_.data(), static_cast<int64_t>(N) * cfg_.classes, T(0));
  }
  return cpu::SoftmaxCrossEntropy<T>(losses_.data(), nullptr, last.out, labels, N, cfg_.classes, T(0)) / N;
}

template <typename T>
void Cnn<T>::Backward(T loss_scale, const GradReadyFn& on_ready) {
  RT_CHECK_MSG(!labels_.empty(), "Backward needs a Forward with labels");
  const int N = curN_;
  Node& last = nodes_.back();
  if (cfg_.loss == "mse") {
    cpu::MseLoss<T>(last.grad, last.out, onehot_.data(), static_cast<int64_t>(N) * cfg_.classes, loss_scale);
  } else {
    cpu::SoftmaxCrossEntropy<T>(losses_.data(), last.grad, last.out, labels_.data(), N, cfg_.classes,
                                loss_scale / static_cast<T>(N));
  }
  // Gradients of nodes read by several consumers accumulate; the others are overwritten.
  for (Node& n : nodes_)
    if (n.consumers > 1) std::memset(static_cast<void*>(n.grad), 0, sizeof(T) * static_cast<size_t>(N * n.Size()));
  auto range_ready = [&](const Node& n) {
    if (!on_ready || n.w < 0) return;
    const auto [b, e] = ParamRange(n, arena_.layout);
    on_ready(b, e);
  };
  for (int i = static_cast<int>(nodes_.size()) - 1; i >= 1; --i) {
    Node& n = nodes_[i];
    Node& in = nodes_[n.in];
    const int64_t in_sz = static_cast<int64_t>(N) * in.Size();
    const bool to_input = n.in > 0;  // no gradient for the images
    const bool accumulate = in.consumers > 1;
    T* din = !to_input ? nullptr : (accumulate ? tmp_.data() : in.grad);
    switch (n.kind) {
      case Kind::kConv: {
        cpu::ConvShape s = n.conv;
        s.N = N;
        cpu::Conv2dBackward(din, arena_.grad(n.w), n.b >= 0 ? arena_.grad(n.b) : nullptr, n.grad, in.out,
                            arena_.param(n.w), s, scratch_.data());
        break;
      }
      case Kind::kBatchNorm:
        if (din)
          cpu::BatchNormBackward(din, arena_.grad(n.w), arena_.grad(n.b), n.grad, in.out, arena_.param(n.w), n.mean,
                                 n.rstd, N, n.C, n.H * n.W);
        break;
      case Kind::kRelu:
        if (din) cpu::ReluBackward(din, n.grad, n.out, in_sz);
        break;
      case Kind::kMaxPool:
        if (din) cpu::MaxPoolBackward(din, n.grad, n.argmax, N, in.C, in.H, in.W, n.k, n.stride);
        break;
      case Kind::kAvgPool:
        if (din) cpu::AvgPoolBackward(din, n.grad, N, in.C, in.H, in.W, n.k, n.stride);
        break;
      case Kind::kLinear:
        cpu::LinearBackward(din, arena_.grad(n.w), arena_.grad(n.b), n.grad, in.out, arena_.param(n.w), N,
                            static_cast<int>(in.Size()), n.C);
        break;
      case Kind::kDropout:
        if (din) cpu::DropoutApply(din, n.grad, n.keep, static_cast<T>(cfg_.dropout), in_sz);
        break;
      case Kind::kAdd: {
        // Both inputs receive the full gradient.
        for (int src : {n.in, n.in2}) {
          Node& s = nodes_[src];
          const int64_t sz = static_cast<int64_t>(N) * s.Size();
          if (s.consumers > 1) {
            for (int64_t j = 0; j < sz; ++j) s.grad[j] += n.grad[j];
          } else {
            std::memcpy(s.grad, n.grad, sizeof(T) * static_cast<size_t>(sz));
          }
        }
        din = nullptr;
        break;
      }
      case Kind::kInput: break;
    }
    if (din && accumulate)
      for (int64_t j = 0; j < in_sz; ++j) in.grad[j] += din[j];
    range_ready(n);
  }
}

template <typename T>
std::pair<size_t, size_t> Cnn<T>::ParamRange(const Node& n, const ParamLayout& layout) {
  int last_idx = n.w;
  for (int idx : {n.b, n.rm, n.rv}) last_idx = std::max(last_idx, idx);
  const ParamSpec& e = layout.spec(last_idx);
  return {layout.spec(n.w).offset, e.offset + static_cast<size_t>(e.numel)};
}

template <typename T>
std::vector<std::pair<size_t, size_t>> Cnn<T>::StateRanges() const {
  std::vector<std::pair<size_t, size_t>> r;
  for (const Node& n : nodes_) {
    if (n.kind != Kind::kBatchNorm) continue;
    for (int idx : {n.rm, n.rv}) {
      const ParamSpec& s = arena_.layout.spec(idx);
      const size_t b = s.offset, e = s.offset + static_cast<size_t>(s.numel);
      // Neighbours (running_mean then running_var, up to the arena's alignment) become one range.
      if (!r.empty() && b >= r.back().second && b - r.back().second < ParamLayout::kAlign)
        r.back().second = e;
      else
        r.emplace_back(b, e);
    }
  }
  return r;
}

template <typename T>
const T* Cnn<T>::logits() const {
  return nodes_.back().out;
}

template class Cnn<float>;
template class Cnn<double>;

}  // namespace ringtrain
