// The rendezvous key-value store: rank 0 serves it at MASTER_ADDR:MASTER_PORT; every rank puts
// its data address there and reads the others'. Line protocol over TCP (Boost.Asio):
//   "SET key value\n" -> "OK\n";  "GET key\n" -> "VAL value\n" or "NONE\n" (clients poll).
// Keys and values are single words.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <utility>  // before Boost 1.74 Asio, which uses std::exchange without it

#include <boost/asio.hpp>

#include "collectives/transport.h"

namespace ringtrain::coll {

class RendezvousServer {
 public:
  // Listens on host:port (port 0: any free port, see port()).
  static StatusOr<std::unique_ptr<RendezvousServer>> Start(const std::string& host, int port);
  ~RendezvousServer();
  int port() const { return port_; }

 private:
  RendezvousServer() = default;
  void AcceptLoop();
  void Serve(std::shared_ptr<boost::asio::ip::tcp::socket> s);

  boost::asio::io_context io_;
  std::unique_ptr<boost::asio::ip::tcp::acceptor> acceptor_;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<std::pair<std::string, std::string>> kv_;
  std::vector<std::shared_ptr<boost::asio::ip::tcp::socket>> clients_;
  std::vector<std::thread> threads_;
  std::thread acceptor_thread_;
};

class RendezvousClient {
 public:
  // Connects to host:port, retrying until the deadline (rank 0 may start last).
  static StatusOr<std::unique_ptr<RendezvousClient>> Connect(const std::string& host, int port,
                                                             Clock::time_point deadline);
  Status Set(const std::string& key, const std::string& value);
  // Polls until the key exists or the deadline passes; `who` names the missing party in errors.
  StatusOr<std::string> Get(const std::string& key, Clock::time_point deadline, const std::string& who);
  // The local address of the connection: the interface that routes to the store.
  std::string LocalAddress() const;

 private:
  StatusOr<std::string> Call(const std::string& line);
  boost::asio::io_context io_;
  std::unique_ptr<boost::asio::ip::tcp::socket> sock_;
  std::string where_;
};

// host:port -> endpoint (numeric addresses or names via the resolver).
StatusOr<boost::asio::ip::tcp::endpoint> ResolveEndpoint(boost::asio::io_context& io, const std::string& host,
                                                         int port);

}  // namespace ringtrain::coll
