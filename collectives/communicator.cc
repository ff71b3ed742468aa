#include "collectives/communicator.h"

#include <algorithm>
#include <cstring>
#include <tuple>

#include "collectives/algorithms/algorithms.h"

namespace ringtrain::coll {

namespace {

bool IsPow2(int n) { return n > 0 && (n & (n - 1)) == 0; }
bool Is16Bit(DataType t) { return t == DataType::kBF16 || t == DataType::kF16; }
constexpr uint32_t kP2pChannel = 0x80000000u;  // context bit of point-to-point traffic

void Widen(float* dst, const void* src, int64_t n, DataType t) {
  const auto* s = static_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = t == DataType::kBF16 ? Bf16ToFloat(s[i]) : Fp16ToFloat(s[i]);
}
void Narrow(void* dst, const float* src, int64_t n, DataType t) {
  auto* d = static_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) d[i] = t == DataType::kBF16 ? FloatToBf16(src[i]) : FloatToFp16(src[i]);
}

template <typename T>
void DivideBy(T* x, int64_t n, int d) {
  for (int64_t i = 0; i < n; ++i) x[i] /= static_cast<T>(d);
}
void Average(void* data, int64_t n, DataType t, int size) {
  switch (t) {
    case DataType::kF32: return DivideBy(static_cast<float*>(data), n, size);
    case DataType::kF64: return DivideBy(static_cast<double*>(data), n, size);
    case DataType::kI64: return DivideBy(static_cast<int64_t*>(data), n, size);
    case DataType::kI32: return DivideBy(static_cast<int32_t*>(data), n, size);
    default: RT_CHECK_MSG(false, "16-bit averages happen in fp32");
  }
}

uint32_t MixContext(uint32_t parent, uint64_t seq, int color) {
  uint64_t x = (static_cast<uint64_t>(parent) << 32) ^ (seq * 0x9E3779B97F4A7C15ull) ^ static_cast<uint64_t>(color);
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return static_cast<uint32_t>(x) & ~kP2pChannel;
}

}  // namespace

const char* AlgorithmName(Algorithm a) {
  switch (a) {
    case Algorithm::kAuto: return "auto";
    case Algorithm::kRing: return "ring";
    case Algorithm::kHalvingDoubling: return "halving_doubling";
    case Algorithm::kTree: return "tree";
  }
  return "?";
}

StatusOr<Algorithm> ParseAlgorithm(const std::string& name) {
  for (Algorithm a : {Algorithm::kAuto, Algorithm::kRing, Algorithm::kHalvingDoubling, Algorithm::kTree})
    if (name == AlgorithmName(a)) return a;
  return InvalidArgument("unknown all-reduce algorithm '" + name + "' (auto, ring, halving_doubling or tree)");
}

Status Work::Wait() {
  if (!f_.valid()) return Internal("Wait() on an empty Work handle");
  return f_.get();
}

Communicator::Communicator(std::shared_ptr<Transport> t, CommOptions opts)
    : t_(std::move(t)), opts_(opts), rank_(t_->rank()), context_(0), name_("world") {
  opts_.segment_bytes = std::min(opts_.segment_bytes, t_->max_segment_bytes());
  for (int i = 0; i < t_->size(); ++i) members_.push_back(i);
}

Communicator::Communicator(std::shared_ptr<Transport> t, CommOptions opts, std::vector<int> members, int rank,
                           uint32_t context, std::string name)
    : t_(std::move(t)), opts_(opts), members_(std::move(members)), rank_(rank), context_(context), name_(std::move(name)) {}

Communicator::~Communicator() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

FrameHeader Communicator::Proto(OpKind op, DataType t, uint8_t reduce, int root, int64_t count) {
  FrameHeader h;
  h.context = context_;
  h.seq = ++seq_;
  h.op = static_cast<uint8_t>(op);
  h.dtype = static_cast<uint8_t>(t);
  h.reduce = reduce;
  h.root = root;
  h.count = static_cast<uint64_t>(count);
  return h;
}

uint8_t* Communicator::Scratch(size_t bytes) {
  if (scratch_.size() < bytes) scratch_.resize(bytes);
  return scratch_.data();
}

Status Communicator::CheckCount(int64_t count, const char* what) const {
  if (count < 0) return InvalidArgument(std::string(what) + ": negative element count " + std::to_string(count));
  return Status::Ok();
}

Status Communicator::CheckRank(int r, const char* what, const char* role) const {
  if (r < 0 || r >= size())
    return InvalidArgument(std::string(what) + ": " + role + " " + std::to_string(r) + " outside a communicator of " +
                           std::to_string(size()) + " ranks");
  return Status::Ok();
}

Status Communicator::RunAllReduce(Link& l, Algorithm algo, uint8_t* buf, int64_t count, DataType at, ReduceOp op,
                                  uint8_t* tmp) {
  switch (algo) {
    case Algorithm::kHalvingDoubling: return HalvingDoublingAllReduce(l, buf, count, at, op, tmp);
    case Algorithm::kTree:
      RT_RETURN_IF_ERROR(BinomialReduce(l, buf, count, at, op, 0, tmp));
      return BinomialBroadcast(l, buf, static_cast<size_t>(count) * DataTypeSize(at), 0);
    default: return RingAllReduce(l, buf, count, at, op, tmp, opts_.segment_bytes);
  }
}

Algorithm Communicator::ChooseAllReduce(size_t bytes) const {
  if (opts_.algorithm != Algorithm::kAuto) {
    if (opts_.algorithm == Algorithm::kHalvingDoubling && !IsPow2(size())) return Algorithm::kRing;
    return opts_.algorithm;
  }
  if (bytes <= opts_.small_bytes) return IsPow2(size()) ? Algorithm::kHalvingDoubling : Algorithm::kTree;
  return Algorithm::kRing;
}

// ---- asynchronous machinery ----

void Communicator::WorkerLoop() {
  for (;;) {
    std::packaged_task<Status()> task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_ and nothing left
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    const auto started = Clock::now();
    task();
    async_busy_ns_.fetch_add(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - started).count());
    {
      std::lock_guard<std::mutex> lock(mu_);
      --pending_;
    }
    cv_.notify_all();
  }
}

Work Communicator::Submit(std::function<Status()> fn) {
  std::packaged_task<Status()> task(std::move(fn));
  Work w(task.get_future().share());
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!worker_.joinable()) worker_ = std::thread([this] { WorkerLoop(); });
    queue_.push_back(std::move(task));
    ++pending_;
  }
  cv_.notify_all();
  return w;
}

void Communicator::DrainAsync() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return pending_ == 0; });
}

// ---- operations ----

Status Communicator::AllReduce(void* data, int64_t count, DataType t, ReduceOp op) {
  DrainAsync();
  return DoAllReduce(data, count, t, op);
}

Status Communicator::DoAllReduce(void* data, int64_t count, DataType t, ReduceOp op) {
  RT_RETURN_IF_ERROR(CheckCount(count, "allreduce"));
  const FrameHeader proto = Proto(OpKind::kAllReduce, t, static_cast<uint8_t>(op), -1, count);
  if (size() == 1 || count == 0) return Status::Ok();
  const bool wide = Is16Bit(t);
  const DataType at = wide ? DataType::kF32 : t;
  const size_t es = DataTypeSize(at), bytes = static_cast<size_t>(count) * es;
  const Algorithm algo = ChooseAllReduce(bytes);
  size_t tmp_bytes = algo == Algorithm::kRing ? RingScratchBytes(count, size(), es, opts_.segment_bytes)
                     : algo == Algorithm::kHalvingDoubling ? HalvingDoublingScratchBytes(count, es)
                                                           : bytes;
  tmp_bytes = (tmp_bytes + 63) / 64 * 64;
  uint8_t* tmp = Scratch(tmp_bytes + (wide ? bytes : 0));
  uint8_t* buf = static_cast<uint8_t*>(data);
  if (wide) {
    buf = tmp + tmp_bytes;
    Widen(reinterpret_cast<float*>(buf), data, count, t);
  }
  Link l(t_.get(), members_, rank_, proto, opts_.deadline_s, name_);
  RT_RETURN_IF_ERROR(RunAllReduce(l, algo, buf, count, at, op, tmp));
  if (op == ReduceOp::kAvg) Average(buf, count, at, size());
  if (wide) Narrow(data, reinterpret_cast<float*>(buf), count, t);
  return Status::Ok();
}

Status Communicator::ReduceScatter(const void* in, void* out, int64_t count_per_rank, DataType t, ReduceOp op) {
  DrainAsync();
  return DoReduceScatter(in, out, count_per_rank, t, op);
}

Status Communicator::DoReduceScatter(const void* in, void* out, int64_t count, DataType t, ReduceOp op) {
  RT_RETURN_IF_ERROR(CheckCount(count, "reduce_scatter"));
  const FrameHeader proto = Proto(OpKind::kReduceScatter, t, static_cast<uint8_t>(op), -1, count);
  const bool wide = Is16Bit(t);
  const DataType at = wide ? DataType::kF32 : t;
  const size_t es = DataTypeSize(at), total = static_cast<size_t>(count) * size();
  size_t tmp_bytes = (RingScratchBytes(static_cast<int64_t>(total), size(), es, opts_.segment_bytes) + 63) / 64 * 64;
  uint8_t* tmp = Scratch(tmp_bytes + total * es);
  uint8_t* buf = tmp + tmp_bytes;
  if (wide) {
    Widen(reinterpret_cast<float*>(buf), in, static_cast<int64_t>(total), t);
  } else if (total) {
    std::memcpy(buf, in, total * es);
  }
  if (size() > 1 && count > 0) {
    Link l(t_.get(), members_, rank_, proto, opts_.deadline_s, name_);
    RT_RETURN_IF_ERROR(RingReduceScatter(l, buf, static_cast<int64_t>(total), at, op, tmp, opts_.segment_bytes));
  }
  uint8_t* mine = buf + static_cast<size_t>(count) * rank_ * es;
  if (op == ReduceOp::kAvg) Average(mine, count, at, size());
  if (wide) {
    Narrow(out, reinterpret_cast<float*>(mine), count, t);
  } else if (count) {
    std::memcpy(out, mine, static_cast<size_t>(count) * es);
  }
  return Status::Ok();
}

Status Communicator::AllGather(const void* in, void* out, int64_t count_per_rank, DataType t) {
  DrainAsync();
  return DoAllGather(in, out, count_per_rank, t);
}

Status Communicator::DoAllGather(const void* in, void* out, int64_t count, DataType t) {
  RT_RETURN_IF_ERROR(CheckCount(count, "allgather"));
  const FrameHeader proto = Proto(OpKind::kAllGather, t, 0, -1, count);
  const size_t es = DataTypeSize(t);
  auto* o = static_cast<uint8_t*>(out);
  if (count) std::memmove(o + static_cast<size_t>(count) * rank_ * es, in, static_cast<size_t>(count) * es);
  if (size() == 1 || count == 0) return Status::Ok();
  Link l(t_.get(), members_, rank_, proto, opts_.deadline_s, name_);
  return RingAllGather(l, o, count * size(), es, opts_.segment_bytes);
}

Status Communicator::Broadcast(void* data, int64_t count, DataType t, int root) {
  DrainAsync();
  return DoBroadcast(data, count, t, root);
}

Status Communicator::DoBroadcast(void* data, int64_t count, DataType t, int root) {
  RT_RETURN_IF_ERROR(CheckCount(count, "broadcast"));
  RT_RETURN_IF_ERROR(CheckRank(root, "broadcast", "root"));
  const FrameHeader proto = Proto(OpKind::kBroadcast, t, 0, root, count);
  if (size() == 1) return Status::Ok();
  Link l(t_.get(), members_, rank_, proto, opts_.deadline_s, name_);
  return BinomialBroadcast(l, static_cast<uint8_t*>(data), static_cast<size_t>(count) * DataTypeSize(t), root);
}

Status Communicator::Reduce(void* data, int64_t count, DataType t, ReduceOp op, int root) {
  DrainAsync();
  RT_RETURN_IF_ERROR(CheckCount(count, "reduce"));
  RT_RETURN_IF_ERROR(CheckRank(root, "reduce", "root"));
  const FrameHeader proto = Proto(OpKind::kReduce, t, static_cast<uint8_t>(op), root, count);
  const bool wide = Is16Bit(t);
  const DataType at = wide ? DataType::kF32 : t;
  const size_t es = DataTypeSize(at), bytes = static_cast<size_t>(count) * es;
  // Work on a copy except where the result lands in place (the root, full-width types).
  const bool in_place = rank_ == root && !wide;
  const size_t tmp_bytes = (bytes + 63) / 64 * 64;
  uint8_t* tmp = Scratch(tmp_bytes + (in_place ? 0 : bytes));
  uint8_t* buf = in_place ? static_cast<uint8_t*>(data) : tmp + tmp_bytes;
  if (!in_place) {
    if (wide) {
      Widen(reinterpret_cast<float*>(buf), data, count, t);
    } else if (bytes) {
      std::memcpy(buf, data, bytes);
    }
  }
  if (size() > 1) {
    Link l(t_.get(), members_, rank_, proto, opts_.deadline_s, name_);
    RT_RETURN_IF_ERROR(BinomialReduce(l, buf, count, at, op, root, tmp));
  }
  if (rank_ == root) {
    if (op == ReduceOp::kAvg) Average(buf, count, at, size());
    if (wide) Narrow(data, reinterpret_cast<float*>(buf), count, t);
  }
  return Status::Ok();
}

Status Communicator::Barrier() {
  DrainAsync();
  const FrameHeader proto = Proto(OpKind::kBarrier, DataType::kI64, static_cast<uint8_t>(ReduceOp::kSum), -1, 1);
  if (size() == 1) return Status::Ok();
  int64_t one = 1, tmp = 0;
  Link l(t_.get(), members_, rank_, proto, opts_.deadline_s, name_);
  // An all-reduce of one element: every rank's contribution reaches every rank, so nobody leaves
  // before everybody arrived. Small-message selection (latency-bound algorithms) unless forced.
  return RunAllReduce(l, ChooseAllReduce(sizeof(one)), reinterpret_cast<uint8_t*>(&one), 1, DataType::kI64,
                      ReduceOp::kSum, reinterpret_cast<uint8_t*>(&tmp));
}

Status Communicator::Send(const void* data, int64_t count, DataType t, int peer) {
  return PointToPoint(true, const_cast<void*>(data), count, t, peer);  // only read when sending
}

Status Communicator::Recv(void* data, int64_t count, DataType t, int peer) {
  return PointToPoint(false, data, count, t, peer);
}

Status Communicator::PointToPoint(bool send, void* data, int64_t count, DataType t, int peer) {
  DrainAsync();
  const char* what = send ? "send" : "recv";
  RT_RETURN_IF_ERROR(CheckCount(count, what));
  RT_RETURN_IF_ERROR(CheckRank(peer, what, "peer"));
  FrameHeader h;
  h.context = context_ | kP2pChannel;
  h.seq = ++(send ? p2p_sent_ : p2p_recv_)[peer];
  h.op = static_cast<uint8_t>(OpKind::kSendRecv);
  h.dtype = static_cast<uint8_t>(t);
  h.count = static_cast<uint64_t>(count);
  Link l(t_.get(), members_, rank_, h, opts_.deadline_s, name_);
  const size_t bytes = static_cast<size_t>(count) * DataTypeSize(t);
  return send ? l.Send(peer, data, bytes) : l.Recv(peer, data, bytes);
}

StatusOr<std::unique_ptr<Communicator>> Communicator::Split(int color, int key) {
  DrainAsync();
  const int n = size();
  const FrameHeader proto = Proto(OpKind::kSplit, DataType::kI64, 0, -1, 3);
  const uint64_t split_seq = proto.seq;
  std::vector<int64_t> all(static_cast<size_t>(3) * n);
  all[3 * rank_] = color;
  all[3 * rank_ + 1] = key;
  all[3 * rank_ + 2] = rank_;
  if (n > 1) {
    Link l(t_.get(), members_, rank_, proto, opts_.deadline_s, name_);
    RT_RETURN_IF_ERROR(RingAllGather(l, reinterpret_cast<uint8_t*>(all.data()), 3LL * n, 8, opts_.segment_bytes));
  }
  if (color < 0) return std::unique_ptr<Communicator>();
  std::vector<std::tuple<int64_t, int64_t>> group;  // (key, parent rank)
  for (int r = 0; r < n; ++r)
    if (all[3 * r] == color) group.emplace_back(all[3 * r + 1], all[3 * r + 2]);
  std::sort(group.begin(), group.end());
  std::vector<int> members;
  int me = -1;
  for (const auto& g : group) {
    const int parent = static_cast<int>(std::get<1>(g));
    if (parent == rank_) me = static_cast<int>(members.size());
    members.push_back(members_[parent]);
  }
  return std::unique_ptr<Communicator>(new Communicator(t_, opts_, std::move(members), me,
                                                        MixContext(context_, split_seq, color),
                                                        name_ + "/split(" + std::to_string(color) + ")"));
}

Work Communicator::IAllReduce(void* data, int64_t count, DataType t, ReduceOp op) {
  return Submit([=, this] { return DoAllReduce(data, count, t, op); });
}
Work Communicator::IReduceScatter(const void* in, void* out, int64_t count_per_rank, DataType t, ReduceOp op) {
  return Submit([=, this] { return DoReduceScatter(in, out, count_per_rank, t, op); });
}
Work Communicator::IAllGather(const void* in, void* out, int64_t count_per_rank, DataType t) {
  return Submit([=, this] { return DoAllGather(in, out, count_per_rank, t); });
}
Work Communicator::IBroadcast(void* data, int64_t count, DataType t, int root) {
  return Submit([=, this] { return DoBroadcast(data, count, t, root); });
}

}  // namespace ringtrain::coll
