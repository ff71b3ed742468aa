#include "worker/grad_sync.h"

#include <algorithm>
#include <cstring>

#include "models/optim.h"

namespace ringtrain {

using coll::DataType;
using coll::ReduceOp;

double GradientSync::SumSquaresOf(const float* g, size_t b, size_t e) const {
  double s = 0;
  size_t at = b;
  for (const auto& [sb, se] : norm_skip_) {
    if (se <= at) continue;
    if (sb >= e) break;
    if (sb > at) s += SumSquares(g + at, sb - at);
    at = std::max(at, se);
  }
  if (at < e) s += SumSquares(g + at, e - at);
  return s;
}

StatusOr<double> NoSync::GradSumSquares() { return SumSquaresOf(a_.grads.data(), 0, a_.layout.total()); }

AllReduceSync::AllReduceSync(coll::Communicator* comm, ParamArena<float>& arena, const AllReduceSyncOptions& o)
    : comm_(comm), a_(arena), opts_(o) {
  const size_t total = a_.layout.total();
  const size_t n = static_cast<size_t>(comm_->size());
  for (const ParamSpec& s : a_.layout.specs())
    if (s.numel > 0) spans_.push_back({s.offset, s.offset + static_cast<size_t>(s.numel)});
  std::sort(spans_.begin(), spans_.end());
  span_prefix_.assign(spans_.size() + 1, 0);
  for (size_t i = 0; i < spans_.size(); ++i) span_prefix_[i + 1] = span_prefix_[i] + spans_[i].second - spans_[i].first;

  // Bucket lengths are multiples of size * 16 elements (all but the last), so ZeRO-1 pieces are
  // equal and cache-line aligned.
  const size_t quantum = n * ParamLayout::kAlign;
  const size_t want = std::max<size_t>(1, opts_.bucket_bytes / sizeof(float));
  const size_t len = std::max(quantum, want / quantum * quantum);
  for (size_t b = 0; b < total; b += len) {
    Bucket k;
    k.begin = b;
    k.end = std::min(total, b + len);
    k.needed = ParamElems(k.begin, k.end);
    const size_t blen = k.end - k.begin;
    k.per_rank = static_cast<int64_t>((blen + n - 1) / n);
    k.staged = blen % n != 0;
    const size_t r = static_cast<size_t>(comm_->rank());
    k.piece_begin = std::min(k.end, k.begin + r * static_cast<size_t>(k.per_rank));
    k.piece_end = std::min(k.end, k.piece_begin + static_cast<size_t>(k.per_rank));
    if (opts_.zero1 && k.staged) {
      stage_.assign(n * static_cast<size_t>(k.per_rank), 0.f);
      stage_out_.assign(static_cast<size_t>(k.per_rank), 0.f);
    }
    buckets_.push_back(k);
  }
  if (!opts_.zero1) {
    owned_ = {{0, total}};
  } else {
    for (const Bucket& k : buckets_)
      if (k.piece_end > k.piece_begin) owned_.push_back({k.piece_begin, k.piece_end});
  }
}

size_t AllReduceSync::ParamElems(size_t lo, size_t hi) const {
  // P(x): parameter elements in [0, x), from the prefix sums of the sorted, disjoint spans.
  auto below = [&](size_t x) {
    const size_t i = static_cast<size_t>(
        std::upper_bound(spans_.begin(), spans_.end(), x, [](size_t v, const auto& sp) { return v < sp.first; }) -
        spans_.begin());
    if (i == 0) return size_t{0};
    return span_prefix_[i - 1] + std::min(x, spans_[i - 1].second) - spans_[i - 1].first;
  };
  return hi > lo ? below(hi) - below(lo) : 0;
}

void AllReduceSync::OnGradReady(size_t begin, size_t end) {
  if (!opts_.overlap || begin >= end) return;
  const size_t len = buckets_.front().end - buckets_.front().begin;
  for (size_t i = begin / len; i < buckets_.size() && buckets_[i].begin < end; ++i) {
    Bucket& k = buckets_[i];
    k.ready += ParamElems(std::max(begin, k.begin), std::min(end, k.end));
    RT_CHECK_MSG(k.ready <= k.needed, "a gradient range was reported ready twice in one step");
    if (k.ready == k.needed && !k.launched) Launch(k);
  }
}

void AllReduceSync::Launch(Bucket& k) {
  k.launched = true;
  order_.push_back(static_cast<int>(&k - buckets_.data()));
  float* g = a_.grads.data() + k.begin;
  const int64_t len = static_cast<int64_t>(k.end - k.begin);
  if (!opts_.zero1) {
    k.work = comm_->IAllReduce(g, len, DataType::kF32, ReduceOp::kAvg);
  } else if (!k.staged) {
    k.work = comm_->IReduceScatter(g, g + static_cast<size_t>(k.per_rank) * comm_->rank(), k.per_rank, DataType::kF32,
                                   ReduceOp::kAvg);
  } else {
    std::copy(g, g + len, stage_.begin());
    std::fill(stage_.begin() + len, stage_.end(), 0.f);
    k.work = comm_->IReduceScatter(stage_.data(), stage_out_.data(), k.per_rank, DataType::kF32, ReduceOp::kAvg);
  }
}

Status AllReduceSync::Finish() {
  Status first;
  if (!opts_.overlap && !opts_.zero1) {
    // Plain: one all-reduce of the whole arena after backward.
    // (Through the async path, so the communicator's busy time counts it like the buckets.)
    first = comm_->IAllReduce(a_.grads.data(), static_cast<int64_t>(a_.layout.total()), DataType::kF32, ReduceOp::kAvg)
                .Wait();
  } else {
    // Buckets backward did not complete (and every bucket without overlap), last first, as
    // backward would have: every rank launches in the same order.
    for (size_t i = buckets_.size(); i-- > 0;)
      if (!buckets_[i].launched) Launch(buckets_[i]);
    for (int i : order_) {
      Status s = buckets_[static_cast<size_t>(i)].work.Wait();
      if (first.ok() && !s.ok()) first = s;
    }
    if (first.ok() && opts_.zero1) {
      for (const Bucket& k : buckets_) {
        if (!k.staged) continue;
        std::copy(stage_out_.begin(), stage_out_.begin() + static_cast<ptrdiff_t>(k.piece_end - k.piece_begin),
                  a_.grads.data() + k.piece_begin);
      }
    }
  }
  order_.clear();
  for (Bucket& k : buckets_) {
    k.ready = 0;
    k.launched = false;
    k.work = coll::Work();
  }
  return first;
}

StatusOr<double> AllReduceSync::GradSumSquares() {
  if (!opts_.zero1) return SumSquaresOf(a_.grads.data(), 0, a_.layout.total());
  double s = 0;
  for (const auto& [b, e] : owned_) s += SumSquaresOf(a_.grads.data(), b, e);
  RT_RETURN_IF_ERROR(comm_->AllReduce(&s, 1, DataType::kF64, ReduceOp::kSum).WithContext("gradient norm (ZeRO-1)"));
  return s;
}

Status AllReduceSync::AfterUpdate() {
  if (!opts_.zero1) return Status::Ok();
  std::vector<coll::Work> works;
  const Bucket* staged = nullptr;
  for (const Bucket& k : buckets_) {
    float* p = a_.params.data() + k.begin;
    if (!k.staged) {
      works.push_back(comm_->IAllGather(a_.params.data() + k.piece_begin, p, k.per_rank, DataType::kF32));
    } else {
      staged = &k;
      std::fill(stage_out_.begin(), stage_out_.end(), 0.f);
      std::copy(a_.params.data() + k.piece_begin, a_.params.data() + k.piece_end, stage_out_.begin());
      works.push_back(comm_->IAllGather(stage_out_.data(), stage_.data(), k.per_rank, DataType::kF32));
    }
  }
  Status first;
  for (coll::Work& w : works) {
    Status s = w.Wait();
    if (first.ok() && !s.ok()) first = s;
  }
  RT_RETURN_IF_ERROR(first.WithContext("all-gathering parameters (ZeRO-1)"));
  if (staged) std::copy(stage_.begin(), stage_.begin() + static_cast<ptrdiff_t>(staged->end - staged->begin),
                        a_.params.data() + staged->begin);
  return Status::Ok();
}

std::unique_ptr<GradientSync> MakeGradientSync(coll::Communicator* comm, ParamArena<float>& arena,
                                               const AllReduceSyncOptions& o) {
  if (!comm || comm->size() == 1) return std::make_unique<NoSync>(arena);
  return std::make_unique<AllReduceSync>(comm, arena, o);
}

}  // namespace ringtrain
