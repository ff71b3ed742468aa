// NcclCommunicator: see the header for the contracts (device buffers, one stream, deadlines).
#include "collectives/nccl/nccl_communicator.h"

#include <chrono>
#include <future>
#include <thread>

#include "collectives/nccl/nccl_kernels.h"
#include "core/cuda/checks.h"

namespace ringtrain::coll {

namespace {

using Clock = std::chrono::steady_clock;
using cuda::CudaStatus;
using cuda::NcclStatus;

ncclDataType_t NcclType(DataType t) {
  switch (t) {
    case DataType::kF32: return ncclFloat32;
    case DataType::kF64: return ncclFloat64;
    case DataType::kI64: return ncclInt64;
    case DataType::kI32: return ncclInt32;
    case DataType::kBF16: return ncclBfloat16;
    case DataType::kF16: return ncclFloat16;
  }
  RT_CHECK_MSG(false, "unknown DataType");
  return ncclFloat32;
}

ncclRedOp_t NcclOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kAvg: return ncclAvg;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kMin: return ncclMin;
  }
  RT_CHECK_MSG(false, "unknown ReduceOp");
  return ncclSum;
}

bool Is16Bit(DataType t) { return t == DataType::kBF16 || t == DataType::kF16; }
bool IsInt(DataType t) { return t == DataType::kI32 || t == DataType::kI64; }
// Sums (and averages) of 16-bit floats are widened to fp32 first, so they accumulate in fp32
// exactly as the host Communicator's do; max and min are exact in any width.
bool Widens(DataType t, ReduceOp op) { return Is16Bit(t) && (op == ReduceOp::kSum || op == ReduceOp::kAvg); }

// Owns a CUDA event for as long as a Work may still wait on it.
struct EventHolder {
  cudaEvent_t ev = nullptr;
  ~EventHolder() {
    if (ev != nullptr) cudaEventDestroy(ev);
  }
};

// Short spins first (a collective of a few KB finishes in microseconds), then sleeps of up to 1 ms.
void Backoff(int& round) {
  ++round;
  if (round < 64) return;
  std::this_thread::sleep_for(std::chrono::microseconds(std::min(1000, 10 * (round - 63))));
}

ncclConfig_t NonBlockingConfig() {
  ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
  cfg.blocking = 0;
  return cfg;
}

}  // namespace

NcclCommunicator::NcclCommunicator(int device, double deadline_s) : device_(device), deadline_s_(deadline_s) {}

StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(Communicator& host, int device,
                                                                     double deadline_s) {
  const std::string who = "rank " + std::to_string(host.rank()) + " of " + std::to_string(host.size());
  int ndev = 0;
  Status st = CudaStatus(cudaGetDeviceCount(&ndev), "NCCL communicator of " + who + ": looking for CUDA devices");
  if (st.ok() && (device < 0 || device >= ndev))
    st = InvalidArgument("NCCL communicator of " + who + ": CUDA device " + std::to_string(device) +
                         " does not exist (this node has " + std::to_string(ndev) + ")");
  if (st.ok()) st = CudaStatus(cudaSetDevice(device), "cudaSetDevice(" + std::to_string(device) + ")");
  ncclUniqueId id{};
  if (st.ok() && host.rank() == 0) st = NcclStatus(ncclGetUniqueId(&id), "ncclGetUniqueId");
  // Every rank learns whether every other could take part; otherwise the healthy ones would wait
  // in ncclCommInitRank until their deadline for a rank that already gave up.
  int32_t fine = st.ok() ? 1 : 0;
  RT_RETURN_IF_ERROR(host.AllReduce(&fine, 1, DataType::kI32, ReduceOp::kMin));
  if (!st.ok()) return st;
  if (fine == 0) return Aborted("NCCL communicator of " + who + ": another rank could not set up its GPU");
  static_assert(sizeof(ncclUniqueId) % 4 == 0, "the id travels as int32 words");
  RT_RETURN_IF_ERROR(host.Broadcast(&id, sizeof(id) / 4, DataType::kI32, 0));

  std::unique_ptr<NcclCommunicator> c(new NcclCommunicator(device, deadline_s));
  c->rank_ = host.rank();
  c->size_ = host.size();
  RT_RETURN_IF_ERROR(c->AllocateResources());
  ncclConfig_t cfg = NonBlockingConfig();
  const std::string what = "creating the NCCL communicator of " + who + " on device " + std::to_string(device);
  RT_RETURN_IF_ERROR(NcclStatus(ncclCommInitRankConfig(&c->comm_, c->size_, id, c->rank_, &cfg), what));
  RT_RETURN_IF_ERROR(c->Settle(what));
  return c;
}

Status NcclCommunicator::AllocateResources() {
  RT_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  RT_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&dep_event_, cudaEventDisableTiming), "cudaEventCreate");
  RT_CUDA_RETURN_IF_ERROR(cudaMalloc(&barrier_word_, sizeof(int)), "cudaMalloc of the barrier word");
  return Status::Ok();
}

NcclCommunicator::~NcclCommunicator() {
  if (comm_ != nullptr) {
    // A clean finalize flushes pending work; one that cannot finish by the deadline (a peer is
    // gone) is aborted instead, so destruction never hangs.
    Status st = NcclStatus(ncclCommFinalize(comm_), "finalizing the NCCL communicator", comm_);
    if (st.ok()) st = Settle("finalizing the NCCL communicator");
    if (comm_ != nullptr) {
      if (st.ok()) {
        ncclCommDestroy(comm_);
      } else {
        ncclCommAbort(comm_);
      }
    }
  }
  if (wide_ != nullptr) cudaFree(wide_);
  if (barrier_word_ != nullptr) cudaFree(barrier_word_);
  if (dep_event_ != nullptr) cudaEventDestroy(dep_event_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

std::string NcclCommunicator::Describe(OpKind op, uint64_t seq, int64_t count, DataType t, const char* extra) const {
  std::string s = "nccl ";
  s.append(OpName(op)).append(" #").append(std::to_string(seq)).append(" (").append(std::to_string(count));
  s.append(" x ").append(DataTypeName(t));
  if (extra != nullptr && extra[0] != '\0') s.append(" ").append(extra);
  s.append(") on rank ").append(std::to_string(rank_)).append(" of ").append(std::to_string(size_));
  return s;
}

Status NcclCommunicator::Fail(Status st) {
  if (broken_.ok()) broken_ = st;
  if (comm_ != nullptr) {
    ncclCommAbort(comm_);
    comm_ = nullptr;
  }
  return st;
}

Status NcclCommunicator::Settle(const std::string& what) {
  const auto start = Clock::now();
  for (int round = 0;; Backoff(round)) {
    if (comm_ == nullptr) return broken_.ok() ? Internal(what + ": no NCCL communicator") : broken_;
    ncclResult_t async = ncclSuccess;
    Status st = NcclStatus(ncclCommGetAsyncError(comm_, &async), what + ": querying the communicator", comm_);
    if (!st.ok()) return Fail(st);
    if (async == ncclSuccess) return Status::Ok();
    if (async != ncclInProgress) return Fail(NcclStatus(async, what, comm_));
    if (std::chrono::duration<double>(Clock::now() - start).count() > deadline_s_)
      return Fail(DeadlineExceeded(what + ": NCCL did not finish within the deadline of " +
                                   std::to_string(static_cast<int>(deadline_s_)) +
                                   " s; a peer rank died or never arrived (NCCL cannot say which)"));
  }
}

Status NcclCommunicator::WaitEvent(cudaEvent_t ev, Clock::time_point start, const std::string& what) {
  for (int round = 0;; Backoff(round)) {
    if (!broken_.ok()) return broken_;
    const cudaError_t e = cudaEventQuery(ev);
    if (e == cudaSuccess) return Status::Ok();
    if (e != cudaErrorNotReady) return Fail(CudaStatus(e, what));
    ncclResult_t async = ncclSuccess;
    Status st = NcclStatus(ncclCommGetAsyncError(comm_, &async), what + ": querying the communicator", comm_);
    if (!st.ok()) return Fail(st);
    if (async != ncclSuccess && async != ncclInProgress) return Fail(NcclStatus(async, what, comm_));
    if (std::chrono::duration<double>(Clock::now() - start).count() > deadline_s_)
      return Fail(DeadlineExceeded(what + ": not finished within the deadline of " +
                                   std::to_string(static_cast<int>(deadline_s_)) +
                                   " s; a peer rank died, hangs, or called a different collective "
                                   "(NCCL cannot say which rank)"));
  }
}

StatusOr<float*> NcclCommunicator::Wide(int64_t count) {
  if (count > wide_count_) {
    if (wide_ != nullptr) {
      // cudaFree waits for the device, so an in-flight collective never loses its buffer.
      RT_CUDA_RETURN_IF_ERROR(cudaFree(wide_), "freeing the fp32 scratch");
      wide_ = nullptr;
      wide_count_ = 0;
    }
    RT_CUDA_RETURN_IF_ERROR(cudaMalloc(&wide_, static_cast<size_t>(count) * sizeof(float)),
                            "cudaMalloc of " + std::to_string(count * 4) + " bytes of fp32 scratch");
    wide_count_ = count;
  }
  return wide_;
}

Status NcclCommunicator::WaitFor(cudaStream_t producer) {
  RT_CUDA_RETURN_IF_ERROR(cudaEventRecord(dep_event_, producer), "recording the producer stream's event");
  RT_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(stream_, dep_event_, 0), "ordering the NCCL stream after the producer");
  return Status::Ok();
}

template <typename Fn>
Work NcclCommunicator::Enqueue(OpKind op, int64_t count, DataType t, const char* extra, Fn issue) {
  const std::string what = Describe(op, ++seq_, count, t, extra);
  if (!broken_.ok()) return Work::Finished(broken_.WithContext(what + ": the communicator failed earlier"));
  if (count < 0) return Work::Finished(InvalidArgument(what + ": negative count"));
  const auto start = Clock::now();
  // Sends recorded by Send() go first (Recv takes them into its own group, leaving none here).
  Status st = op == OpKind::kSendRecv ? Status::Ok() : IssueP2p(what, nullptr);
  if (st.ok()) st = issue();
  if (st.ok()) st = Settle(what);
  if (!st.ok()) return Work::Finished(Fail(st.WithContext(what)));
  auto holder = std::make_shared<EventHolder>();
  st = CudaStatus(cudaEventCreateWithFlags(&holder->ev, cudaEventDisableTiming), what + ": cudaEventCreate");
  if (st.ok()) st = CudaStatus(cudaEventRecord(holder->ev, stream_), what + ": cudaEventRecord");
  if (!st.ok()) return Work::Finished(Fail(st));
  return Work(std::async(std::launch::deferred, [this, holder, start, what] {
                return WaitEvent(holder->ev, start, what);
              }).share());
}

Work NcclCommunicator::IAllReduce(void* data, int64_t count, DataType t, ReduceOp op) {
  return Enqueue(OpKind::kAllReduce, count, t, ReduceOpName(op), [&]() -> Status {
    if (Widens(t, op)) {
      RT_ASSIGN_OR_RETURN(float* w, Wide(count));
      RT_RETURN_IF_ERROR(LaunchWiden(data, w, count, t, stream_));
      RT_RETURN_IF_ERROR(NcclStatus(ncclAllReduce(w, w, count, ncclFloat32, ncclSum, comm_, stream_), "ncclAllReduce", comm_));
      return LaunchNarrow(w, data, count, t, op == ReduceOp::kAvg ? static_cast<float>(size_) : 1.f, stream_);
    }
    if (IsInt(t) && op == ReduceOp::kAvg) {
      RT_RETURN_IF_ERROR(NcclStatus(ncclAllReduce(data, data, count, NcclType(t), ncclSum, comm_, stream_), "ncclAllReduce", comm_));
      return LaunchDivideInt(data, count, t, size_, stream_);
    }
    return NcclStatus(ncclAllReduce(data, data, count, NcclType(t), NcclOp(op), comm_, stream_), "ncclAllReduce", comm_);
  });
}

Work NcclCommunicator::IReduceScatter(const void* in, void* out, int64_t count_per_rank, DataType t, ReduceOp op) {
  return Enqueue(OpKind::kReduceScatter, count_per_rank, t, ReduceOpName(op), [&]() -> Status {
    if (Widens(t, op)) {
      const int64_t total = count_per_rank * size_;
      RT_ASSIGN_OR_RETURN(float* w, Wide(total));
      RT_RETURN_IF_ERROR(LaunchWiden(in, w, total, t, stream_));
      float* mine = w + count_per_rank * rank_;  // in place: NCCL's recvbuff = sendbuff + rank*recvcount
      RT_RETURN_IF_ERROR(NcclStatus(ncclReduceScatter(w, mine, count_per_rank, ncclFloat32, ncclSum, comm_, stream_),
                                    "ncclReduceScatter", comm_));
      return LaunchNarrow(mine, out, count_per_rank, t, op == ReduceOp::kAvg ? static_cast<float>(size_) : 1.f, stream_);
    }
    const ncclRedOp_t nop = IsInt(t) && op == ReduceOp::kAvg ? ncclSum : NcclOp(op);
    RT_RETURN_IF_ERROR(NcclStatus(ncclReduceScatter(in, out, count_per_rank, NcclType(t), nop, comm_, stream_),
                                  "ncclReduceScatter", comm_));
    if (IsInt(t) && op == ReduceOp::kAvg) return LaunchDivideInt(out, count_per_rank, t, size_, stream_);
    return Status::Ok();
  });
}

Work NcclCommunicator::IAllGather(const void* in, void* out, int64_t count_per_rank, DataType t) {
  return Enqueue(OpKind::kAllGather, count_per_rank, t, "", [&]() -> Status {
    return NcclStatus(ncclAllGather(in, out, count_per_rank, NcclType(t), comm_, stream_), "ncclAllGather", comm_);
  });
}

Work NcclCommunicator::IBroadcast(void* data, int64_t count, DataType t, int root) {
  const std::string extra = "root " + std::to_string(root);
  return Enqueue(OpKind::kBroadcast, count, t, extra.c_str(), [&]() -> Status {
    if (root < 0 || root >= size_) return InvalidArgument("root " + std::to_string(root) + " is not a rank of the group");
    return NcclStatus(ncclBroadcast(data, data, count, NcclType(t), root, comm_, stream_), "ncclBroadcast", comm_);
  });
}

Status NcclCommunicator::AllReduce(void* data, int64_t count, DataType t, ReduceOp op) {
  return IAllReduce(data, count, t, op).Wait();
}
Status NcclCommunicator::ReduceScatter(const void* in, void* out, int64_t count_per_rank, DataType t, ReduceOp op) {
  return IReduceScatter(in, out, count_per_rank, t, op).Wait();
}
Status NcclCommunicator::AllGather(const void* in, void* out, int64_t count_per_rank, DataType t) {
  return IAllGather(in, out, count_per_rank, t).Wait();
}
Status NcclCommunicator::Broadcast(void* data, int64_t count, DataType t, int root) {
  return IBroadcast(data, count, t, root).Wait();
}

Status NcclCommunicator::Reduce(void* data, int64_t count, DataType t, ReduceOp op, int root) {
  const std::string extra = std::string(ReduceOpName(op)) + " to root " + std::to_string(root);
  return Enqueue(OpKind::kReduce, count, t, extra.c_str(), [&]() -> Status {
           if (root < 0 || root >= size_) return InvalidArgument("root " + std::to_string(root) + " is not a rank of the group");
           const bool at_root = rank_ == root;
           if (Widens(t, op)) {
             RT_ASSIGN_OR_RETURN(float* w, Wide(count));
             RT_RETURN_IF_ERROR(LaunchWiden(data, w, count, t, stream_));
             RT_RETURN_IF_ERROR(NcclStatus(ncclReduce(w, w, count, ncclFloat32, ncclSum, root, comm_, stream_), "ncclReduce", comm_));
             if (!at_root) return Status::Ok();
             return LaunchNarrow(w, data, count, t, op == ReduceOp::kAvg ? static_cast<float>(size_) : 1.f, stream_);
           }
           const ncclRedOp_t nop = IsInt(t) && op == ReduceOp::kAvg ? ncclSum : NcclOp(op);
           // In place: on other ranks NCCL only reads data, so it is left unchanged there.
           RT_RETURN_IF_ERROR(NcclStatus(ncclReduce(data, data, count, NcclType(t), nop, root, comm_, stream_), "ncclReduce", comm_));
           if (at_root && IsInt(t) && op == ReduceOp::kAvg) return LaunchDivideInt(data, count, t, size_, stream_);
           return Status::Ok();
         })
      .Wait();
}

Status NcclCommunicator::Barrier() {
  // A one-word all-reduce: nobody's finishes before everybody's has started.
  return Enqueue(OpKind::kBarrier, 1, DataType::kI32, "", [&]() -> Status {
           return NcclStatus(ncclAllReduce(barrier_word_, barrier_word_, 1, ncclInt32, ncclSum, comm_, stream_),
                             "ncclAllReduce", comm_);
         })
      .Wait();
}

Status NcclCommunicator::Send(const void* data, int64_t count, DataType t, int peer) {
  if (peer < 0 || peer >= size_ || peer == rank_)
    return InvalidArgument(Describe(OpKind::kSendRecv, seq_ + 1, count, t, "send") + ": peer " + std::to_string(peer) +
                           " is not another rank of the group");
  if (count < 0) return InvalidArgument(Describe(OpKind::kSendRecv, seq_ + 1, count, t, "send") + ": negative count");
  pending_sends_.push_back({data, count, t, peer});
  return Status::Ok();
}

Status NcclCommunicator::IssueP2p(const std::string& what, const P2pCall* recv) {
  if (pending_sends_.empty() && recv == nullptr) return Status::Ok();
  std::vector<P2pCall> sends;
  sends.swap(pending_sends_);
  RT_RETURN_IF_ERROR(NcclStatus(ncclGroupStart(), what + ": ncclGroupStart"));
  Status st;
  for (const P2pCall& p : sends) {
    st = NcclStatus(ncclSend(p.data, p.count, NcclType(p.type), p.peer, comm_, stream_), what + ": ncclSend", comm_);
    if (!st.ok()) break;
  }
  if (st.ok() && recv != nullptr)
    st = NcclStatus(ncclRecv(const_cast<void*>(recv->data), recv->count, NcclType(recv->type), recv->peer, comm_, stream_),
                    what + ": ncclRecv", comm_);
  // The group is always closed, also after a failed call inside it.
  const Status end = NcclStatus(ncclGroupEnd(), what + ": ncclGroupEnd", comm_);
  return st.ok() ? end : st;
}

Status NcclCommunicator::Recv(void* data, int64_t count, DataType t, int peer) {
  const std::string extra = "from rank " + std::to_string(peer);
  return Enqueue(OpKind::kSendRecv, count, t, extra.c_str(), [&]() -> Status {
           if (peer < 0 || peer >= size_ || peer == rank_)
             return InvalidArgument("peer " + std::to_string(peer) + " is not another rank of the group");
           // The recorded sends and this receive form one NCCL group, so a ring shift (everyone
           // sends, then receives) cannot deadlock.
           const P2pCall r{data, count, t, peer};
           return IssueP2p("", &r);
         })
      .Wait();
}

StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Split(int color, int key) {
  const std::string what = Describe(OpKind::kSplit, ++seq_, 0, DataType::kI32, ("color " + std::to_string(color)).c_str());
  if (!broken_.ok()) return broken_.WithContext(what + ": the communicator failed earlier");
  std::unique_ptr<NcclCommunicator> c(new NcclCommunicator(device_, deadline_s_));
  ncclConfig_t cfg = NonBlockingConfig();
  Status st = NcclStatus(ncclCommSplit(comm_, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &c->comm_, &cfg), what, comm_);
  if (!st.ok()) return Fail(st);
  RT_RETURN_IF_ERROR(Settle(what));
  if (color < 0) return std::unique_ptr<NcclCommunicator>();
  RT_RETURN_IF_ERROR(c->Settle(what + ": the new communicator"));
  RT_RETURN_IF_ERROR(NcclStatus(ncclCommUserRank(c->comm_, &c->rank_), what + ": ncclCommUserRank", c->comm_));
  RT_RETURN_IF_ERROR(NcclStatus(ncclCommCount(c->comm_, &c->size_), what + ": ncclCommCount", c->comm_));
  RT_RETURN_IF_ERROR(c->AllocateResources());
  return c;
}

}  // namespace ringtrain::coll
