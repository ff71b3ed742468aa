// RunRanks(n, fn): runs fn(comm) on n threads, one in-process rank each (collectives/local), and
// returns each rank's Status. The harness for collectives, sync engines and tensor parallelism.
#pragma once

#include <unistd.h>

#include <atomic>
#include <functional>
#include <string>
#include <memory>
#include <thread>
#include <vector>

#include "collectives/communicator.h"
#include "collectives/local/local_transport.h"
#include "collectives/shm/shm_transport.h"
#include "collectives/tcp/tcp_transport.h"

namespace ringtrain::testing {

inline std::vector<Status> RunRanks(int n, const std::function<Status(coll::Communicator&)>& fn,
                                    coll::CommOptions opts = {},
                                    std::shared_ptr<coll::LocalWorld> world = nullptr) {
  if (!world) world = coll::LocalWorld::Create(n);
  std::vector<Status> out(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      coll::Communicator comm(world->Rank(r), opts);
      out[r] = fn(comm);
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

// A free TCP port on loopback (bound, read and released: another process could take it in
// between, which is unlikely enough for tests).
inline int FreePort() {
  boost::asio::io_context io;
  boost::asio::ip::tcp::acceptor a(io, boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), 0));
  return a.local_endpoint().port();
}

// One thread per rank: make(r) builds rank r's transport (an error is that rank's result), fn
// runs on a Communicator over it. With leave_together, ranks that succeeded meet in a barrier
// before tearing their transports down, which would otherwise look like deaths to ranks still
// finishing.
template <typename T>
std::vector<Status> RunTransportRanks(int n, const std::function<StatusOr<std::shared_ptr<T>>(int)>& make,
                                      const std::function<Status(coll::Communicator&, T&)>& fn,
                                      coll::CommOptions opts, bool leave_together) {
  std::vector<Status> out(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      auto t = make(r);
      if (!t.ok()) {
        out[r] = t.status();
        return;
      }
      coll::Communicator comm(*t, opts);
      out[r] = fn(comm, **t);
      if (leave_together && out[r].ok()) out[r] = comm.Barrier();
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

// Like RunRanks, over real TCP connections on loopback (one TcpTransport per thread, rendezvous
// at 127.0.0.1:<free port>); fn also gets the rank's transport (to Close() it, as a dying process
// would).
inline std::vector<Status> RunTcpRanksWith(
    int n, const std::function<Status(coll::Communicator&, coll::TcpTransport&)>& fn, coll::CommOptions opts = {},
    bool leave_together = true) {
  const int port = FreePort();
  std::function<StatusOr<std::shared_ptr<coll::TcpTransport>>(int)> make = [&](int r) {
    coll::TcpOptions o;
    o.rank = r;
    o.size = n;
    o.master_addr = "127.0.0.1";
    o.master_port = port;
    o.bind = "127.0.0.1";
    o.connect_timeout_s = 60;
    return coll::TcpTransport::Create(o);
  };
  return RunTransportRanks<coll::TcpTransport>(n, make, fn, opts, leave_together);
}

inline std::vector<Status> RunTcpRanks(int n, const std::function<Status(coll::Communicator&)>& fn,
                                       coll::CommOptions opts = {}) {
  return RunTcpRanksWith(n, [&](coll::Communicator& c, coll::TcpTransport&) { return fn(c); }, opts);
}

// Like RunRanks, over the shared-memory transport: one ShmTransport per thread on a fresh segment
// (the same code path as separate processes; the kernel does not care). ring_bytes is per pair.
inline std::vector<Status> RunShmRanksWith(
    int n, const std::function<Status(coll::Communicator&, coll::ShmTransport&)>& fn, coll::CommOptions opts = {},
    size_t ring_bytes = coll::ShmOptions{}.ring_bytes, bool leave_together = true) {
  static std::atomic<int> serial{0};
  const std::string name = "/ringtrain-test-" + std::to_string(::getpid()) + "-" + std::to_string(serial++);
  std::function<StatusOr<std::shared_ptr<coll::ShmTransport>>(int)> make = [&](int r) {
    coll::ShmOptions o;
    o.rank = r;
    o.size = n;
    o.name = name;
    o.ring_bytes = ring_bytes;
    o.connect_timeout_s = 60;
    return coll::ShmTransport::Create(o);
  };
  return RunTransportRanks<coll::ShmTransport>(n, make, fn, opts, leave_together);
}

inline std::vector<Status> RunShmRanks(int n, const std::function<Status(coll::Communicator&)>& fn,
                                       coll::CommOptions opts = {}, size_t ring_bytes = coll::ShmOptions{}.ring_bytes) {
  return RunShmRanksWith(n, [&](coll::Communicator& c, coll::ShmTransport&) { return fn(c); }, opts, ring_bytes);
}

enum class Via { kLocal, kTcp, kShm };  // the transport a test's ranks run on

// fn on n ranks (one thread each) over that transport: in process, TCP on loopback, shared memory.
inline std::vector<Status> RunVia(Via via, int n, const std::function<Status(coll::Communicator&)>& fn,
                                  coll::CommOptions opts = {}) {
  if (via == Via::kTcp) return RunTcpRanks(n, fn, opts);
  if (via == Via::kShm) return RunShmRanks(n, fn, opts);
  return RunRanks(n, fn, opts);
}

// Test-name suffix of a transport parameter.
inline const char* ViaName(Via v) { return v == Via::kTcp ? "Tcp" : v == Via::kShm ? "Shm" : "Local"; }

}  // namespace ringtrain::testing
