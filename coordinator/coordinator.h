// The coordinator (`ringtrain coordinator`, issue 9): accepts training jobs, places them on the
// worker agents' slots (gang scheduling, priority then FIFO, packed onto as few nodes as
// possible, never more processes than slots), hands each rank its environment (rank, world size,
// rendezvous address), collects logs and exits, and restarts failed attempts from their latest
// checkpoint (`--resume auto`), elastic jobs with fewer processes when slots are missing.
// State lives in SQLite (coordinator/store.h), so a restarted coordinator continues: agents
// re-register with the processes they still run, and running jobs are kept or restarted.
// Protocol: FrameConn frames after the parameter server's token handshake
// (parameter_server/wire.h, auth.h); bodies are proto/coord.proto messages with JSON.
// Threads: one per connection, one scheduler; all state under one mutex.
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "coord.pb.h"
#include "coordinator/store.h"
#include "parameter_server/wire.h"

namespace ringtrain::coord {

struct CoordinatorOptions {
  std::string host = "127.0.0.1";
  int port = 7070;
  std::string state;               // SQLite file
  std::string token;
  double heartbeat_timeout_s = 10;  // an agent silent this long is lost
  int base_port = 29700;           // rendezvous ports are drawn from [base_port, base_port + 2000)
  std::string run_root;            // default run directories: run_root/job-<id> (default: <state>.d)
};

constexpr uint32_t kMaxCoordFrame = 4u << 20;

class Coordinator {
 public:
  static StatusOr<std::unique_ptr<Coordinator>> Start(const CoordinatorOptions& o);
  ~Coordinator();
  int port() const { return port_; }
  void Stop();

 private:
  struct Conn {
    Conn(boost::asio::ip::tcp::socket s, std::string peer) : fc(std::move(s), std::move(peer)) {}
    ps::FrameConn fc;
    std::mutex send_mu;
    Status Send(proto::CoordType t, const nlohmann::json& j, const std::string& data = "");
  };
  struct Worker {
    nlohmann::json doc;  // id, host, addr, slots, alive
    std::shared_ptr<Conn> conn;
    double last_seen = 0;
  };
  explicit Coordinator(const CoordinatorOptions& o) : opts_(o) {}
  Status Load();
  void AcceptLoop();
  void Serve(std::shared_ptr<Conn> c);
  void ServeAgent(const std::shared_ptr<Conn>& c, const proto::CoordMsg& reg);
  StatusOr<nlohmann::json> Request(const nlohmann::json& req, std::string* data);
  StatusOr<nlohmann::json> Submit(const nlohmann::json& spec);
  void SchedulerLoop();
  // Caller holds mu_.
  void Tick();
  void Event(int64_t job, const std::string& kind, const std::string& reason);
  void Save(int64_t job);
  void SaveWorker(const std::string& id);
  void StopAttempt(int64_t id);
  void FailAttempt(int64_t id, const std::string& reason, bool restart);
  bool TryPlace(int64_t id);
  int UsedSlots(const std::string& worker) const;
  std::string LogPath(int64_t job) const;

  CoordinatorOptions opts_;
  boost::asio::io_context io_;
  std::unique_ptr<boost::asio::ip::tcp::acceptor> acceptor_;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread acceptor_thread_, scheduler_thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::unique_ptr<Store> store_;
  std::map<int64_t, nlohmann::json> jobs_;
  std::map<std::string, Worker> workers_;
  std::vector<std::shared_ptr<Conn>> conns_;
  std::vector<std::thread> threads_;
  double started_ = 0;
};

// Gang placement over the free slots of the live workers (id -> free slots): the most processes
// in [lo, hi] that fit beside `extra` more (the job's parameter servers, placed after its ranks).
// Returns one worker id per process, ranks first, each worker's processes adjacent; empty when
// not even lo fit. Fewest workers first: the largest free worker is taken while none alone holds
// what is still needed, then the smallest one that does (best fit, leaving big holes for big jobs).
std::vector<std::string> PlanPlacement(const std::map<std::string, int>& free, int lo, int hi, int extra);

// The token a job attempt's parameter servers and ranks share: derived from the pool's token
// (HMAC-SHA256 of the job and attempt, hex), so every agent computes it and none is sent.
std::string JobToken(const std::string& pool_token, int64_t job, int attempt);

// A client of the coordinator: one authenticated request and its reply.
StatusOr<nlohmann::json> CoordinatorRequest(const std::string& address, const std::string& token,
                                            const nlohmann::json& req, std::string* data = nullptr);

}  // namespace ringtrain::coord
