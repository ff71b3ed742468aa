// A parameter-server shard (`ringtrain ps`, issue 8): owns a contiguous range of the flat
// parameter vector (EvenSplit of the model over k servers) with its optimizer state, and applies
// the trainer's own optimizer code (models/optim) to it.
//
// Protocol per worker connection (frames of parameter_server/wire.h, after the token handshake):
//   INIT (worker 0) + LOAD...   start a job: config, layout, worker count, consistency model, start
//                               step, initial parameters (and moments when resuming)
//   PUSH step [b, e)            gradients; no reply
//   NORMS [from, to]            BSP/SSP with clipping: this shard's sum of squares of each step's
//                               averaged gradient (waits until every worker pushed those steps)
//   PULL step, scales           parameters for running `step`; the scales are the clip factors of
//                               steps step_from.. (from NORMS, summed over the servers by the worker)
//   SAVE step dir               write this shard (parameters and moments) into a checkpoint directory
// Consistency:
//   BSP     an update per step from the average of every worker's gradient for that step; a pull
//           for step t waits until steps 0..t-1 are applied.
//   SSP(s)  the same per-step updates, but a pull for step t only waits for steps 0..t-s-1: a
//           worker runs at most s steps ahead of the slowest. s = 0 is BSP.
//   ASP     each worker's gradient is applied when its pull (which commits the step) arrives.
// Faults: a worker whose connection drops is named to every pull or NORMS that waits for it, at
// once; one that is merely missing, when the job's deadline passes. A malformed frame closes that
// connection (logged); every other connection is served as before.
// Threads: one per connection; the job state is guarded by one mutex, the parameter values by a
// reader-writer lock (pulls read them while nothing is applied).
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/arena.h"
#include "models/optim.h"
#include "parameter_server/wire.h"

namespace ringtrain::ps {

enum class Consistency { kBsp, kSsp, kAsp };
StatusOr<Consistency> ParseConsistency(const std::string& s);
const char* ConsistencyName(Consistency c);

struct PsServerOptions {
  std::string host = "127.0.0.1";  // bind address (loopback unless told otherwise)
  int port = 0;                     // 0: any free port (see PsServer::port())
  int shard = 0, shards = 1;        // this server is shard `shard` of `shards`
  std::string token;                // shared secret (required)
  FrameLimits limits;
  double frame_timeout_s = 60;      // a frame, once begun, must arrive within this
  std::string step_log;             // JSONL file of step records (empty: kept in memory only)
  bool log_stderr = true;           // event lines on stderr
};

// One per answered pull: worker `worker` was let through to run step `step` when the parameters
// had `applied` steps applied and the slowest worker had pushed `slowest` steps (it was at step
// `slowest`). SSP's promise is step - slowest <= s.
struct StepRecord {
  int worker = 0;
  int64_t step = 0, applied = 0, slowest = 0;
};

class PsServer {
 public:
  static StatusOr<std::unique_ptr<PsServer>> Start(const PsServerOptions& o);
  ~PsServer();
  int port() const { return port_; }
  std::string address() const { return opts_.host + ":" + std::to_string(port_); }
  // Closes the listener and every connection, and joins the threads.
  void Stop();
  std::vector<StepRecord> records() const;
  std::vector<std::string> events() const;  // every event line logged so far

 private:
  struct Conn;
  struct StepAcc {
    std::vector<std::vector<float>> g;  // per worker: its gradient of this shard's range
    std::vector<size_t> covered;        // per worker: elements received
    int complete = 0;                   // workers whose whole range arrived
    bool reduced = false;               // g[0] holds the average (BSP/SSP)
  };
  struct Job {
    std::string id;
    uint64_t generation = 0;
    int workers = 0;
    size_t begin = 0, end = 0;
    Consistency mode = Consistency::kBsp;
    int64_t staleness = 0;
    double deadline_s = 300;
    bool clip = false;
    OptimConfig oc;
    LrSchedule sched;
    ParamLayout layout;
    bool has_m = false, has_v = false;
    std::vector<std::pair<size_t, size_t>> decay_local;
    std::vector<float> params;  // elements [begin, end)
    OptimState st;              // indexed from `begin` (st.base = 0 is element `begin`)
    int64_t applied = 0;        // BSP/SSP: steps applied (the parameters' version)
    std::map<int64_t, StepAcc> steps;
    std::map<int64_t, double> partials;  // reduced steps' sums of squares (recent ones)
    std::map<int64_t, float> scales;     // clip factors received for steps not yet applied
    std::vector<int64_t> pushed;         // per worker: steps fully pushed
    std::vector<std::string> gone;       // per worker: why it is gone ("" while alive)
    std::vector<std::vector<float>> pool;
  };

  explicit PsServer(const PsServerOptions& o) : opts_(o) {}
  void AcceptLoop();
  void Serve(std::shared_ptr<Conn> c);
  Status Handle(Conn& c, const proto::PsHeader& h);
  Status HandleInit(Conn& c, const proto::PsHeader& h);
  Status HandlePush(Conn& c, const proto::PsHeader& h);
  Status HandleNorms(Conn& c, const proto::PsHeader& h);
  Status HandlePull(Conn& c, const proto::PsHeader& h);
  Status HandleSave(Conn& c, const proto::PsHeader& h);
  // Checks the frame belongs to the current job and a valid worker; with `range`, that
  // [begin, end) lies in this shard. Caller holds mu_.
  Status CheckJob(const proto::PsHeader& h, bool range) const;
  // Applies every complete step in order (BSP/SSP). Caller holds mu_.
  void TryApply();
  // Why waiting for `step` of every worker cannot succeed (a worker is gone), or "".
  std::string MissingReason(int64_t need_pushed) const;
  std::string Missing(int64_t need_pushed) const;
  std::vector<float> TakeBuffer(size_t n);
  void Log(const std::string& line);
  std::string Name() const;

  PsServerOptions opts_;
  boost::asio::io_context io_;
  std::unique_ptr<boost::asio::ip::tcp::acceptor> acceptor_;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread acceptor_thread_;

  mutable std::mutex mu_;  // job_, records_, conns_
  std::condition_variable cv_;
  std::shared_ptr<Job> job_;
  std::shared_mutex params_mu_;  // job_->params values: shared to read (pulls, saves), unique to update
  std::vector<StepRecord> records_;
  std::vector<std::shared_ptr<Conn>> conns_;
  std::vector<std::thread> threads_;
  mutable std::mutex log_mu_;
  std::vector<std::string> events_;
  std::FILE* step_log_ = nullptr;
};

}  // namespace ringtrain::ps
