#include "models/tensor_parallel.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace ringtrain {

namespace {
template <typename T>
coll::DataType TypeOf();
template <>
coll::DataType TypeOf<float>() { return coll::DataType::kF32; }
template <>
coll::DataType TypeOf<double>() { return coll::DataType::kF64; }
}  // namespace

template <typename T>
void TpGroup::Run(T* x, int64_t n, coll::ReduceOp op, const char* what) {
  if (!comm_ || !status_.ok() || n == 0) return;
  bytes_ += static_cast<uint64_t>(n) * sizeof(T);
  ++calls_;
  Status s = comm_->AllReduce(x, n, TypeOf<T>(), op);
  if (!s.ok()) status_ = s.WithContext(std::string("tensor-parallel all-reduce (") + what + ")");
}

template <typename T>
void TpGroup::AllReduceSum(T* x, int64_t n, const char* what) {
  Run(x, n, coll::ReduceOp::kSum, what);
}
template <typename T>
void TpGroup::AllReduceMax(T* x, int64_t n, const char* what) {
  Run(x, n, coll::ReduceOp::kMax, what);
}

std::pair<int64_t, int64_t> SplitRange(int64_t n, int r, int t) {
  const int64_t base = n / t, extra = n % t;
  const int64_t begin = r * base + std::min<int64_t>(r, extra);
  return {begin, base + (r < extra ? 1 : 0)};
}

Status GatherFull(const ParamLayout& local, const float* values, const ParamLayout& full, coll::Communicator* tp,
                  std::vector<float>* out) {
  out->assign(full.total(), 0.f);
  const int rank = tp ? tp->rank() : 0;
  for (const ParamSpec& s : local.specs()) {
    const int i = full.Find(s.name);
    if (i < 0) return Internal("parameter " + s.name + " is not in the full model's layout");
    if (!s.sharded() && rank != 0) continue;
    LocalToGlobal(s, values + s.offset, out->data() + full.spec(i).offset);
  }
  if (!tp || tp->size() == 1) return Status::Ok();
  return tp->AllReduce(out->data(), static_cast<int64_t>(out->size()), coll::DataType::kF32, coll::ReduceOp::kSum)
      .WithContext("gathering the tensor-parallel parts of the model");
}

void ScatterFull(const ParamLayout& full, const float* full_values, const ParamLayout& local, float* out) {
  for (const ParamSpec& s : local.specs()) {
    const int i = full.Find(s.name);
    RT_CHECK_MSG(i >= 0, "parameter " + s.name + " is not in the full model's layout");
    GlobalToLocal(s, full_values + full.spec(i).offset, out + s.offset);
  }
}

template <typename T>
void VocabParallelEmbeddingForward(T* out, const int32_t* tokens, const T* wte_local, int64_t v_begin, int Vl, int N,
                                   int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    T* o = out + static_cast<int64_t>(n) * C;
    const int64_t row = tokens[n] - v_begin;
    if (row >= 0 && row < Vl) {
      std::copy(wte_local + row * C, wte_local + (row + 1) * C, o);
    } else {
      std::fill(o, o + C, T(0));
    }
  }
}

template <typename T>
void AddPositionEmbedding(T* out, const T* wpe, int B, int Tn, int C) {
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < static_cast<int64_t>(B) * Tn; ++bt) {
    T* o = out + bt * C;
    const T* p = wpe + (bt % Tn) * C;
    for (int c = 0; c < C; ++c) o[c] += p[c];
  }
}

template <typename T>
double VocabParallelCrossEntropy(T* losses, T* row_max, T* row_sum, const T* logits_local, const int32_t* targets,
                                 int N, int Vl, int64_t v_begin, TpGroup& tp) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const T* x = logits_local + static_cast<int64_t>(n) * Vl;
    T mx = -INFINITY;
    for (int v = 0; v < Vl; ++v) mx = std::max(mx, x[v]);
    row_max[n] = mx;
  }
  tp.AllReduceMax(row_max, N, "cross-entropy row max");
  // [sum of exp(x - max) over this rank's columns..., the target's logit if this rank holds it...]
  std::vector<T> st(2 * static_cast<size_t>(N));
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const T* x = logits_local + static_cast<int64_t>(n) * Vl;
    const T mx = row_max[n];
    T sum = 0;
    for (int v = 0; v < Vl; ++v) sum += std::exp(x[v] - mx);
    st[static_cast<size_t>(n)] = sum;
    const int64_t t = targets[n] - v_begin;
    st[static_cast<size_t>(N + n)] = targets[n] >= 0 && t >= 0 && t < Vl ? x[t] : T(0);
  }
  tp.AllReduceSum(st.data(), 2 * static_cast<int64_t>(N), "cross-entropy sums");
  double total = 0;
  for (int n = 0; n < N; ++n) {
    row_sum[n] = st[static_cast<size_t>(n)];
    const T loss = targets[n] < 0 ? T(0) : std::log(row_sum[n]) + row_max[n] - st[static_cast<size_t>(N + n)];
    losses[n] = loss;
    total += static_cast<double>(loss);
  }
  return total;
}

template <typename T>
void VocabParallelCrossEntropyBackward(T* dlogits_local, const T* logits_local, const T* row_max, const T* row_sum,
                                       const int32_t* targets, int N, int Vl, int64_t v_begin, T scale) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const T* x = logits_local + static_cast<int64_t>(n) * Vl;
    T* d = dlogits_local + static_cast<int64_t>(n) * Vl;
    if (targets[n] < 0) {
      std::fill(d, d + Vl, T(0));
      continue;
    }
    const T logsum = std::log(row_sum[n]) + row_max[n];
    for (int v = 0; v < Vl; ++v) d[v] = std::exp(x[v] - logsum) * scale;
    const int64_t t = targets[n] - v_begin;
    if (t >= 0 && t < Vl) d[t] -= scale;
  }
}

#define RT_TP_INSTANTIATE(T)                                                                                    \
  template void TpGroup::AllReduceSum<T>(T*, int64_t, const char*);                                             \
  template void TpGroup::AllReduceMax<T>(T*, int64_t, const char*);                                             \
  template void VocabParallelEmbeddingForward<T>(T*, const int32_t*, const T*, int64_t, int, int, int);         \
  template void AddPositionEmbedding<T>(T*, const T*, int, int, int);                                           \
  template double VocabParallelCrossEntropy<T>(T*, T*, T*, const T*, const int32_t*, int, int, int64_t, TpGroup&); \
  template void VocabParallelCrossEntropyBackward<T>(T*, const T*, const T*, const T*, const int32_t*, int, int, \
                                                     int64_t, T);
RT_TP_INSTANTIATE(float)
RT_TP_INSTANTIATE(double)

}  // namespace ringtrain
