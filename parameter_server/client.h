// The worker side of the parameter server (issue 8): one authenticated connection per server
// (sync.ps_hosts, in shard order; server j owns EvenSplit(total, j, k) of the flat parameter
// vector). Gradient pushes are queued and sent by one thread per server, so backward goes on while
// they travel; requests (norms, pull, save) go to every server at once and then collect the
// replies. Every wait is bounded: a dead server is an error naming its address.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "parameter_server/wire.h"

namespace ringtrain::ps {

struct PsClientOptions {
  std::vector<std::string> hosts;  // HOST:PORT of every server, shard order
  std::string token;
  std::string job_id;
  int worker = 0, workers = 1;
  size_t total = 0;                // elements of the flat parameter vector
  double deadline_s = 300;         // the servers' waits; replies may take this plus a margin
  FrameLimits limits;
  size_t chunk_bytes = 16u << 20;  // largest payload this client puts in one frame
};

class PsClient {
 public:
  static StatusOr<std::unique_ptr<PsClient>> Connect(const PsClientOptions& o);
  ~PsClient();  // says goodbye to every server

  int servers() const { return static_cast<int>(servers_.size()); }
  size_t begin(int j) const { return servers_[static_cast<size_t>(j)]->b; }
  size_t end(int j) const { return servers_[static_cast<size_t>(j)]->e; }
  std::string Describe(int j) const;  // "parameter server HOST:PORT (shard j/k)"

  // Queues the gradients of elements [b, e) for step `step`; g must stay valid and unchanged until
  // WaitPushes returns.
  void Push(int64_t step, size_t b, size_t e, const float* g);
  Status WaitPushes();
  // Worker 0: starts the job on every server (description `job` gains shard, shards, total) with
  // the given whole-vector parameters and, when resuming, moments (null: zeros).
  Status Init(nlohmann::json job, const float* params, const float* m, const float* v);
  // Sums of squares of the averaged gradients of steps from, from + 1, ..., summed over the
  // servers: all of [from, needed] (waiting for them), and of (needed, to] those every server has.
  StatusOr<std::vector<double>> Norms(int64_t from, int64_t needed, int64_t to);
  // Parameters for running `step` into params (the whole vector); scales: clip factors of steps
  // scales_from, scales_from + 1, ... (asp: the one factor of this worker's step scales_from).
  Status Pull(int64_t step, int64_t scales_from, const std::vector<float>& scales, float* params);
  // Every server writes its shard into dir; returns their slice lists.
  StatusOr<std::vector<std::string>> Save(int64_t step, const std::string& dir);

  // Drops every connection without a goodbye, as the death of this process would (tests).
  void Abort();

  uint64_t bytes_pushed() const { return bytes_pushed_; }
  uint64_t bytes_pulled() const { return bytes_pulled_; }

 private:
  struct Item {
    int64_t step;
    size_t b, e;
    const float* g;
  };
  struct Server {
    std::string addr;
    size_t b = 0, e = 0;
    std::unique_ptr<FrameConn> conn;
    std::thread sender;
    std::mutex mu;
    std::condition_variable cv;
    std::deque<Item> queue;
    bool busy = false, quit = false;
    Status error;
  };
  explicit PsClient(const PsClientOptions& o) : opts_(o) {}
  proto::PsHeader Header(proto::PsType t) const;
  void SendLoop(Server& s);
  // Reads the next reply from server j, expecting type `want`; a PS_ERROR or lost connection
  // becomes an error naming the server.
  Status Expect(int j, proto::PsType want, proto::PsHeader* h);
  Status Named(int j, const Status& s) const;

  PsClientOptions opts_;
  boost::asio::io_context io_;
  std::vector<std::unique_ptr<Server>> servers_;
  std::atomic<uint64_t> bytes_pushed_{0}, bytes_pulled_{0};
};

// "h1:p1,h2:p2" -> the list (every entry checked as HOST:PORT).
StatusOr<std::vector<std::string>> ParseHostList(const std::string& s);

}  // namespace ringtrain::ps
