// Layers with explicit forward/backward (DESIGN.md idea 2). A layer holds the indices of its
// parameters in the model's ParamArena and its sizes; activations are owned by the model's
// activation arena and passed in. Parameter gradients accumulate; input gradients follow the
// contract of the kernel they call (core/cpu/ops.h). A tensor-parallel Linear registers only its
// part of the weight (RegisterColumnParallel / RegisterRowParallel) and then computes with local
// sizes; the model adds the all-reduces around it (models/gpt.cc).
#pragma once

#include <string>
#include <vector>

#include "core/arena.h"
#include "core/cpu/ops.h"

namespace ringtrain {

template <typename T>
struct LayerNorm {
  int w = -1, b = -1;  // b = -1 when bias is off
  int C = 0;
  void Register(ParamLayout& L, const std::string& name, int channels, bool bias) {
    C = channels;
    w = L.Add(name + ".weight", {C}, false, InitKind::kOnes);
    if (bias) b = L.Add(name + ".bias", {C}, false, InitKind::kZeros);
  }
  // out, in (N,C); mean, rstd (N) saved for backward.
  void Forward(ParamArena<T>& A, T* out, T* mean, T* rstd, const T* in, int N) const {
    cpu::LayerNormForward(out, mean, rstd, in, A.param(w), b >= 0 ? A.param(b) : nullptr, N, C);
  }
  // din (N,C) += gradient.
  void Backward(ParamArena<T>& A, T* din, const T* dout, const T* in, const T* mean, const T* rstd, int N) const {
    cpu::LayerNormBackward(din, A.grad(w), b >= 0 ? A.grad(b) : nullptr, dout, in, A.param(w), mean, rstd, N, C);
  }
};

template <typename T>
struct Linear {
  int w = -1, b = -1;
  int in_features = 0, out_features = 0;
  void Register(ParamLayout& L, const std::string& name, int in, int out, bool bias, float std) {
    in_features = in;
    out_features = out;
    w = L.Add(name + ".weight", {out, in}, true, InitKind::kNormal, std);
    if (bias) b = L.Add(name + ".bias", {out}, false, InitKind::kZeros);
  }
  // Column-parallel part r of t: output features split, in `groups` equal groups (the Q, K and V
  // of an attention projection) each split over the ranks; bias split the same way.
  void RegisterColumnParallel(ParamLayout& L, const std::string& name, int in, int out, bool bias, float std,
                              int groups, int r, int t) {
    if (t == 1) return Register(L, name, in, out, bias, std);
    const int per = out / groups / t;
    std::vector<TensorBox> wb, bb;
    for (int g = 0; g < groups; ++g) {
      const int64_t row = static_cast<int64_t>(g) * (out / groups) + static_cast<int64_t>(r) * per;
      wb.push_back({{row, 0}, {per, in}});
      bb.push_back({{row}, {per}});
    }
    in_features = in;
    out_features = per * groups;
    w = L.AddSharded(name + ".weight", {out, in}, wb, true, InitKind::kNormal, std);
    if (bias) b = L.AddSharded(name + ".bias", {out}, bb, false, InitKind::kZeros);
  }
  // Row-parallel part r of t: input features split; the bias is replicated (added once, after
  // the partial outputs are summed).
  void RegisterRowParallel(ParamLayout& L, const std::string& name, int in, int out, bool bias, float std, int r,
                           int t) {
    if (t == 1) return Register(L, name, in, out, bias, std);
    const int per = in / t;
    in_features = per;
    out_features = out;
    w = L.AddSharded(name + ".weight", {out, in}, {{{0, static_cast<int64_t>(r) * per}, {out, per}}}, true,
                     InitKind::kNormal, std);
    if (bias) b = L.Add(name + ".bias", {out}, false, InitKind::kZeros);
  }
  // out (N,out) = in (N,in) @ W^T + b
  void Forward(ParamArena<T>& A, T* out, const T* in, int N) const {
    cpu::LinearForward(out, in, A.param(w), b >= 0 ? A.param(b) : nullptr, N, in_features, out_features);
  }
  // out (N,out) = in (N,in) @ W^T, without the bias (row-parallel partial sums).
  void ForwardNoBias(ParamArena<T>& A, T* out, const T* in, int N) const {
    cpu::LinearForward<T>(out, in, A.param(w), nullptr, N, in_features, out_features);
  }
  // din (N,in) overwritten (or accumulated); din may be null when not needed.
  void Backward(ParamArena<T>& A, T* din, const T* dout, const T* in, int N, bool accumulate_din = false) const {
    cpu::LinearBackward(din, A.grad(w), b >= 0 ? A.grad(b) : nullptr, dout, in, A.param(w), N, in_features,
                        out_features, accumulate_din);
  }
};

}  // namespace ringtrain
