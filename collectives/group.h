// CollectiveGroup: the collective calls every communicator offers, whatever moves the bytes. The
// Communicator implements it on host memory (algorithms over a Transport), the NcclCommunicator
// on device memory (NCCL); code written against CollectiveGroup runs on either.
#pragma once

#include <cstdint>
#include <future>
#include <utility>

#include "collectives/types.h"
#include "core/status.h"

namespace ringtrain::coll {

// Handle of an asynchronous call.
class Work {
 public:
  Work() = default;
  // The call's outcome; a deferred future runs its waiting on the first Wait().
  explicit Work(std::shared_future<Status> f) : f_(std::move(f)) {}
  // An already finished call with outcome st (errors found before anything was issued).
  static Work Finished(Status st) {
    std::promise<Status> p;
    p.set_value(std::move(st));
    return Work(p.get_future().share());
  }
  // Blocks until the call has finished; returns its status (the same on every call of Wait).
  Status Wait();
  bool valid() const { return f_.valid(); }

 private:
  std::shared_future<Status> f_;
};

// Contracts (both implementations): every rank of the group makes the same calls in the same
// order; a blocking call returns when this rank's result is in place; buffers given to an I* call
// must stay valid until Wait(). A dead, missing or mismatched peer is an error, never a hang.
class CollectiveGroup {
 public:
  virtual ~CollectiveGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // In place: every rank ends with the reduction of all ranks' data. kAvg divides the sum by size
  // (integer division for integer types). bf16/fp16 are summed in fp32.
  virtual Status AllReduce(void* data, int64_t count, DataType t, ReduceOp op) = 0;
  // in: size*count_per_rank elements; out: this rank's block (count_per_rank) of the reduction.
  virtual Status ReduceScatter(const void* in, void* out, int64_t count_per_rank, DataType t, ReduceOp op) = 0;
  // in: count_per_rank elements; out: size*count_per_rank, rank r's block at r*count_per_rank.
  virtual Status AllGather(const void* in, void* out, int64_t count_per_rank, DataType t) = 0;
  virtual Status Broadcast(void* data, int64_t count, DataType t, int root) = 0;
  // The reduction lands in data on root; other ranks' data is left unchanged.
  virtual Status Reduce(void* data, int64_t count, DataType t, ReduceOp op, int root) = 0;
  virtual Status Barrier() = 0;
  // Point-to-point, never confused with collective traffic.
  virtual Status Send(const void* data, int64_t count, DataType t, int peer) = 0;
  virtual Status Recv(void* data, int64_t count, DataType t, int peer) = 0;

  virtual Work IAllReduce(void* data, int64_t count, DataType t, ReduceOp op) = 0;
  virtual Work IReduceScatter(const void* in, void* out, int64_t count_per_rank, DataType t, ReduceOp op) = 0;
  virtual Work IAllGather(const void* in, void* out, int64_t count_per_rank, DataType t) = 0;
  virtual Work IBroadcast(void* data, int64_t count, DataType t, int root) = 0;
};

}  // namespace ringtrain::coll
