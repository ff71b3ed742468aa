// The Communicator: rank, size and the collectives every distributed part of ringtrain uses (data
// parallelism, ZeRO-1, tensor parallelism, metric aggregation). It runs the algorithms in
// algorithms/ over any Transport and chooses one per call by message size and world size unless
// the options force one. Every call has a sequence number and a deadline; a dead, missing or
// mismatched peer is an error naming the operation, its sequence number and the rank(s), on every
// surviving rank.
//
// Threading: one thread owns a Communicator and calls its methods. Asynchronous variants (I*) run
// in order on the communicator's own worker thread; a blocking call first waits for them, so calls
// execute in program order on every rank. Buffers given to an I* call must stay valid until Wait().
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "collectives/group.h"
#include "collectives/link.h"
#include "collectives/transport.h"
#include "collectives/types.h"

namespace ringtrain::coll {

enum class Algorithm { kAuto, kRing, kHalvingDoubling, kTree };
const char* AlgorithmName(Algorithm a);
StatusOr<Algorithm> ParseAlgorithm(const std::string& name);  // auto|ring|halving_doubling|tree

struct CommOptions {
  double deadline_s = 300;                 // per collective
  Algorithm algorithm = Algorithm::kAuto;  // all-reduce algorithm
  size_t small_bytes = 64 << 10;           // auto: at most this many bytes is a "small" all-reduce
  size_t segment_bytes = 1 << 20;          // ring: largest single message
};

class Communicator final : public CollectiveGroup {
 public:
  // The world communicator over a transport (ranks = transport ranks).
  Communicator(std::shared_ptr<Transport> t, CommOptions opts = {});
  ~Communicator() override;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(members_.size()); }
  const std::string& name() const { return name_; }
  const char* transport_kind() const { return t_->kind(); }
  // See Transport::set_patient (affects every communicator on this transport).
  void set_patient(bool p) { t_->set_patient(p); }
  // Payload bytes this rank's transport sent for collectives so far (all communicators on it).
  uint64_t transport_bytes_sent() const { return t_->bytes_sent(); }
  // Seconds the asynchronous calls (I*) of this communicator have spent running so far: the time
  // communication was in progress, whether hidden behind compute or waited for.
  double async_busy_s() const { return static_cast<double>(async_busy_ns_.load()) * 1e-9; }
  const CommOptions& options() const { return opts_; }
  void set_deadline(double seconds) { opts_.deadline_s = seconds; }
  void set_algorithm(Algorithm a) { opts_.algorithm = a; }
  // Transport rank of communicator rank r.
  int TransportRank(int r) const { return members_[r]; }

  // In place: every rank ends with the reduction of all ranks' data. kAvg divides the sum by size
  // (integer division for integer types). bf16/fp16 are summed in fp32.
  Status AllReduce(void* data, int64_t count, DataType t, ReduceOp op) override;
  // in: size*count_per_rank elements; out: this rank's block (count_per_rank) of the reduction.
  Status ReduceScatter(const void* in, void* out, int64_t count_per_rank, DataType t, ReduceOp op) override;
  // in: count_per_rank elements; out: size*count_per_rank, rank r's block at r*count_per_rank.
  Status AllGather(const void* in, void* out, int64_t count_per_rank, DataType t) override;
  Status Broadcast(void* data, int64_t count, DataType t, int root) override;
  // The reduction lands in data on root; other ranks' data is left unchanged.
  Status Reduce(void* data, int64_t count, DataType t, ReduceOp op, int root) override;
  Status Barrier() override;
  // Point-to-point on a channel of their own (never confused with collective traffic).
  Status Send(const void* data, int64_t count, DataType t, int peer) override;
  Status Recv(void* data, int64_t count, DataType t, int peer) override;

  // Sub-group of the ranks that pass the same color, ordered by (key, rank). A negative color
  // takes no part and gets nullptr. Collective over this communicator.
  StatusOr<std::unique_ptr<Communicator>> Split(int color, int key);

  Work IAllReduce(void* data, int64_t count, DataType t, ReduceOp op) override;
  Work IReduceScatter(const void* in, void* out, int64_t count_per_rank, DataType t, ReduceOp op) override;
  Work IAllGather(const void* in, void* out, int64_t count_per_rank, DataType t) override;
  Work IBroadcast(void* data, int64_t count, DataType t, int root) override;

  // The all-reduce algorithm the options select for this many bytes on this many ranks.
  Algorithm ChooseAllReduce(size_t bytes) const;

 private:
  Communicator(std::shared_ptr<Transport> t, CommOptions opts, std::vector<int> members, int rank,
               uint32_t context, std::string name);
  FrameHeader Proto(OpKind op, DataType t, uint8_t reduce, int root, int64_t count);
  uint8_t* Scratch(size_t bytes);
  Status CheckCount(int64_t count, const char* what) const;
  // role: "root" or "peer", for the message.
  Status CheckRank(int r, const char* what, const char* role) const;
  // Runs all-reduce algorithm `algo` on buf (count elements of at) with scratch tmp.
  Status RunAllReduce(Link& l, Algorithm algo, uint8_t* buf, int64_t count, DataType at, ReduceOp op, uint8_t* tmp);
  // Point-to-point transfer on the communicator's p2p channel; seq is this pair's counter.
  Status PointToPoint(bool send, void* data, int64_t count, DataType t, int peer);
  void DrainAsync();
  Work Submit(std::function<Status()> fn);
  void WorkerLoop();

  Status DoAllReduce(void* data, int64_t count, DataType t, ReduceOp op);
  Status DoReduceScatter(const void* in, void* out, int64_t count_per_rank, DataType t, ReduceOp op);
  Status DoAllGather(const void* in, void* out, int64_t count_per_rank, DataType t);
  Status DoBroadcast(void* data, int64_t count, DataType t, int root);

  std::shared_ptr<Transport> t_;
  CommOptions opts_;
  std::vector<int> members_;
  int rank_;
  uint32_t context_;
  std::string name_;
  uint64_t seq_ = 0;
  std::map<int, uint64_t> p2p_sent_, p2p_recv_;
  std::vector<uint8_t> scratch_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::packaged_task<Status()>> queue_;
  int pending_ = 0;  // queued or running async calls
  std::atomic<int64_t> async_busy_ns_{0};
  bool stop_ = false;
  std::thread worker_;
};

}  // namespace ringtrain::coll
