// NCCL collectives on one GPU per rank behind the CollectiveGroup calls: the same operations,
// element types and reduction operators as the host Communicator, on device buffers, enqueued on
// the communicator's own stream. The NCCL unique id travels over a host Communicator (rank 0
// makes it, a Broadcast carries it), so a job started by mpirun, Slurm or the TCP rendezvous needs
// nothing more. Built only when CUDA and NCCL are found (RINGTRAIN_HAVE_NCCL).
//
// Deadlines: the communicator is non-blocking; every call has a sequence number and waits at most
// deadline_s. A peer that dies or never arrives makes the call fail with the operation, its
// sequence number and NCCL's own message (NCCL does not say which peer is missing; ranks that
// are still alive report the same deadline). The NCCL communicator is then aborted and every
// later call returns that first error.
//
// Threading: one thread owns an NcclCommunicator. I* calls are enqueued at once, in program
// order, on stream(); their Work waits for completion on the first Wait().
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "collectives/communicator.h"
#include "collectives/group.h"

namespace ringtrain::coll {

class NcclCommunicator final : public CollectiveGroup {
 public:
  // Collective over `host`: every rank of host calls it with the CUDA device it owns (usually its
  // local rank). Sets that device current on the calling thread.
  static StatusOr<std::unique_ptr<NcclCommunicator>> Create(Communicator& host, int device, double deadline_s);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int device() const { return device_; }
  // The stream every operation runs on. Data produced on another stream must be ready first:
  // see WaitFor.
  cudaStream_t stream() const { return stream_; }
  // Makes every later operation wait (on the device, not the host) for the work enqueued so far
  // on `producer`, e.g. the backward pass that wrote the gradients.
  Status WaitFor(cudaStream_t producer);

  // Blocking calls: enqueue, then wait for completion (at most the deadline). Device pointers.
  Status AllReduce(void* data, int64_t count, DataType t, ReduceOp op) override;
  Status ReduceScatter(const void* in, void* out, int64_t count_per_rank, DataType t, ReduceOp op) override;
  Status AllGather(const void* in, void* out, int64_t count_per_rank, DataType t) override;
  Status Broadcast(void* data, int64_t count, DataType t, int root) override;
  Status Reduce(void* data, int64_t count, DataType t, ReduceOp op, int root) override;
  Status Barrier() override;
  // NCCL completes a send only when the peer receives it, and runs a communicator's operations in
  // order, so a ring shift (every rank sends, then receives) would deadlock if each call ran on
  // its own. Send therefore only records the send; it is issued together with this rank's next
  // Recv as one NCCL group (or on its own before any other call). `data` must stay valid and
  // unchanged until that next call has returned.
  Status Send(const void* data, int64_t count, DataType t, int peer) override;
  Status Recv(void* data, int64_t count, DataType t, int peer) override;

  Work IAllReduce(void* data, int64_t count, DataType t, ReduceOp op) override;
  Work IReduceScatter(const void* in, void* out, int64_t count_per_rank, DataType t, ReduceOp op) override;
  Work IAllGather(const void* in, void* out, int64_t count_per_rank, DataType t) override;
  Work IBroadcast(void* data, int64_t count, DataType t, int root) override;

  // Sub-group of the ranks passing the same color, ordered by (key, rank) (ncclCommSplit). A
  // negative color takes no part and gets nullptr. Collective over this communicator.
  StatusOr<std::unique_ptr<NcclCommunicator>> Split(int color, int key);

 private:
  NcclCommunicator(int device, double deadline_s);
  // The stream, WaitFor's event and the barrier word every communicator (world or split) owns.
  Status AllocateResources();
  // Describes call `seq` for messages: "nccl all_reduce #12 (1024 x float32 sum) on rank 0 of 2".
  std::string Describe(OpKind op, uint64_t seq, int64_t count, DataType t, const char* extra) const;
  // Waits until the non-blocking communicator has finished its pending NCCL call.
  Status Settle(const std::string& what);
  // Polls `ev` until it has completed, NCCL reports an error, or the deadline (counted from
  // `start`, when the call was enqueued) passes.
  Status WaitEvent(cudaEvent_t ev, std::chrono::steady_clock::time_point start, const std::string& what);
  // Records the first error, aborts the NCCL communicator; returns the error.
  Status Fail(Status st);
  // Enqueues op (a function issuing NCCL calls on stream_) and returns a deferred wait for it.
  template <typename Fn>
  Work Enqueue(OpKind op, int64_t count, DataType t, const char* extra, Fn issue);
  struct P2pCall {  // one send or receive of a group
    const void* data;  // a receive's buffer was given as void* to Recv
    int64_t count;
    DataType type;
    int peer;
  };
  // Issues the recorded sends, and `recv` if not null, as one NCCL group on stream_.
  Status IssueP2p(const std::string& what, const P2pCall* recv);
  // fp32 scratch on the device, at least `count` elements (bf16/fp16 sums are widened into it).
  StatusOr<float*> Wide(int64_t count);

  int device_;
  double deadline_s_;
  int rank_ = 0, size_ = 1;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  uint64_t seq_ = 0;
  Status broken_;  // the first failure; every later call returns it
  float* wide_ = nullptr;
  int64_t wide_count_ = 0;
  int* barrier_word_ = nullptr;
  cudaEvent_t dep_event_ = nullptr;  // WaitFor's marker on the producer stream
  std::vector<P2pCall> pending_sends_;  // recorded by Send, issued by the next call
};

}  // namespace ringtrain::coll
