// RunRanks(n, fn): runs fn(comm) on n threads, one in-process rank each (collectives/local), and
// returns each rank's Status. The harness for collectives, sync engines and tensor parallelism.
#pragma once

#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "collectives/communicator.h"
#include "collectives/local/local_transport.h"
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

// Like RunRanks, over real TCP connections on loopback (one TcpTransport per thread, rendezvous
// at 127.0.0.1:<free port>); fn also gets the rank's transport (to Close() it, as a dying process
// would). A rank whose transport cannot be built returns that error. With leave_together, ranks
// that succeeded meet in a barrier before tearing down their sockets, which would otherwise look
// like deaths to ranks still finishing.
inline std::vector<Status> RunTcpRanksWith(
    int n, const std::function<Status(coll::Communicator&, coll::TcpTransport&)>& fn, coll::CommOptions opts = {},
    bool leave_together = true) {
  const int port = FreePort();
  std::vector<Status> out(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      coll::TcpOptions o;
      o.rank = r;
      o.size = n;
      o.master_addr = "127.0.0.1";
      o.master_port = port;
      o.bind = "127.0.0.1";
      o.connect_timeout_s = 60;
      auto t = coll::TcpTransport::Create(o);
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

inline std::vector<Status> RunTcpRanks(int n, const std::function<Status(coll::Communicator&)>& fn,
                                       coll::CommOptions opts = {}) {
  return RunTcpRanksWith(n, [&](coll::Communicator& c, coll::TcpTransport&) { return fn(c); }, opts);
}

}  // namespace ringtrain::testing
