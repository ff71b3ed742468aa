// TCP transport (Boost.Asio sockets) for runs without MPI: a full mesh of connections, found
// through the rendezvous store that rank 0 serves at master_addr:master_port. One reader thread per
// peer drains its socket into a Mailbox, so a send never waits for the receiver to post a receive,
// and a peer that disconnects (process death) is noticed at once and named.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <utility>  // before Boost 1.74 Asio, which uses std::exchange without it

#include <boost/asio.hpp>

#include "collectives/mailbox.h"
#include "collectives/tcp/rendezvous.h"
#include "collectives/transport.h"

namespace ringtrain::coll {

struct TcpOptions {
  int rank = 0;
  int size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // Where this rank listens for its peers: an IPv4 address or an interface name ("eth0"). Empty:
  // all interfaces, advertising the address of the interface that routes to the master.
  std::string bind;
  double connect_timeout_s = 300;  // rendezvous and connection set-up
};

class TcpTransport : public Transport {
 public:
  static StatusOr<std::shared_ptr<TcpTransport>> Create(const TcpOptions& o);
  ~TcpTransport() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* kind() const override { return "tcp"; }
  Status Send(int peer, const FrameHeader& h, const void* payload) override;
  Status Recv(int peer, uint32_t context, FrameHeader* h, void* buf, size_t cap,
              Clock::time_point deadline) override;
  std::vector<std::string> StuckNotices(uint32_t context) override { return box_.StuckNotices(context); }
  Status PendingAbort(uint32_t context, Clock::time_point until) override { return box_.PendingAbort(context, until); }
  std::string PeerName(int peer) const override;
  // Shuts every connection down, as the death of this process would (tests use it).
  void Close();

 private:
  struct Peer {
    std::unique_ptr<boost::asio::ip::tcp::socket> sock;
    std::mutex send_mu;
    std::string addr;
    std::thread reader;
    std::atomic<bool> dead{false};
  };
  TcpTransport() = default;
  Status Connect(const TcpOptions& o);
  void ReadLoop(int peer);

  int rank_ = 0, size_ = 1;
  boost::asio::io_context io_;
  std::unique_ptr<RendezvousServer> store_;
  std::vector<std::unique_ptr<Peer>> peers_;
  Mailbox box_;
  std::atomic<bool> closing_{false};
};

// An IPv4 address, or the IPv4 address of the named interface.
StatusOr<std::string> ResolveBindAddress(const std::string& bind);

}  // namespace ringtrain::coll
