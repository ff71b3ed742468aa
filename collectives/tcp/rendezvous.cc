#include "collectives/tcp/rendezvous.h"

#include <poll.h>
#include <sys/socket.h>

#include <sstream>

namespace ringtrain::coll {

namespace asio = boost::asio;
using asio::ip::tcp;

StatusOr<tcp::endpoint> ResolveEndpoint(asio::io_context& io, const std::string& host, int port) {
  boost::system::error_code ec;
  const auto addr = asio::ip::make_address(host, ec);
  if (!ec) return tcp::endpoint(addr, static_cast<unsigned short>(port));
  tcp::resolver resolver(io);
  auto results = resolver.resolve(tcp::v4(), host, std::to_string(port), ec);
  if (ec || results.empty()) return InvalidArgument("cannot resolve host '" + host + "': " + ec.message());
  return results.begin()->endpoint();
}

StatusOr<std::unique_ptr<RendezvousServer>> RendezvousServer::Start(const std::string& host, int port) {
  std::unique_ptr<RendezvousServer> s(new RendezvousServer());
  RT_ASSIGN_OR_RETURN(tcp::endpoint ep, ResolveEndpoint(s->io_, host, port));
  boost::system::error_code ec;
  s->acceptor_ = std::make_unique<tcp::acceptor>(s->io_);
  s->acceptor_->open(ep.protocol(), ec);
  if (!ec) s->acceptor_->set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) s->acceptor_->bind(ep, ec);
  if (!ec) s->acceptor_->listen(128, ec);
  if (ec)
    return IoError("rendezvous store: cannot listen on " + host + ":" + std::to_string(port) + ": " + ec.message());
  s->port_ = s->acceptor_->local_endpoint().port();
  s->acceptor_thread_ = std::thread([p = s.get()] { p->AcceptLoop(); });
  return s;
}

RendezvousServer::~RendezvousServer() {
  stop_ = true;
  if (acceptor_thread_.joinable()) acceptor_thread_.join();
  boost::system::error_code ec;
  acceptor_->close(ec);
  // Wake the serving threads with shutdown(2) (safe while they sit in recv on the socket); the
  // sockets are closed only after the threads are gone.
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& c : clients_) ::shutdown(c->native_handle(), SHUT_RDWR);
  }
  for (auto& t : threads_) t.join();
}

void RendezvousServer::AcceptLoop() {
  // Non-blocking accept after poll(2) says a connection waits (closing an acceptor does not wake a
  // blocked accept()). The poll times out every 100 ms to look at stop_: the store lives as long as
  // the job, and a tighter loop would wake rank 0's core 200 times a second while it trains.
  boost::system::error_code ec;
  acceptor_->non_blocking(true, ec);
  while (!stop_) {
    pollfd pfd{acceptor_->native_handle(), POLLIN, 0};
    if (::poll(&pfd, 1, 100) <= 0) continue;
    auto sock = std::make_shared<tcp::socket>(io_);
    acceptor_->accept(*sock, ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) continue;
    if (ec) return;  // closed
    sock->non_blocking(false, ec);
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) return;
    clients_.push_back(sock);
    threads_.emplace_back([this, sock] { Serve(sock); });
  }
}

void RendezvousServer::Serve(std::shared_ptr<tcp::socket> s) {
  asio::streambuf buf;
  for (;;) {
    boost::system::error_code ec;
    asio::read_until(*s, buf, '\n', ec);
    if (ec) return;
    std::istream is(&buf);
    std::string line;
    std::getline(is, line);
    std::istringstream ls(line);
    std::string cmd, key, value, reply = "ERR\n";
    ls >> cmd >> key;
    if (cmd == "SET" && (ls >> value)) {
      std::lock_guard<std::mutex> lock(mu_);
      kv_.emplace_back(key, value);
      reply = "OK\n";
    } else if (cmd == "GET") {
      std::lock_guard<std::mutex> lock(mu_);
      reply = "NONE\n";
      for (auto it = kv_.rbegin(); it != kv_.rend(); ++it)
        if (it->first == key) {
          reply = "VAL " + it->second + "\n";
          break;
        }
    }
    asio::write(*s, asio::buffer(reply), ec);
    if (ec) return;
  }
}

StatusOr<std::unique_ptr<RendezvousClient>> RendezvousClient::Connect(const std::string& host, int port,
                                                                      Clock::time_point deadline) {
  std::unique_ptr<RendezvousClient> c(new RendezvousClient());
  c->where_ = host + ":" + std::to_string(port);
  RT_ASSIGN_OR_RETURN(tcp::endpoint ep, ResolveEndpoint(c->io_, host, port));
  std::string last;
  for (;;) {
    c->sock_ = std::make_unique<tcp::socket>(c->io_);
    boost::system::error_code ec;
    c->sock_->connect(ep, ec);
    if (!ec) return c;
    last = ec.message();
    if (Clock::now() >= deadline)
      return DeadlineExceeded("rendezvous store at " + c->where_ + " did not answer in time (" + last + ")");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

StatusOr<std::string> RendezvousClient::Call(const std::string& line) {
  boost::system::error_code ec;
  asio::write(*sock_, asio::buffer(line), ec);
  asio::streambuf buf;
  if (!ec) asio::read_until(*sock_, buf, '\n', ec);
  if (ec) return Unavailable("rendezvous store at " + where_ + " closed the connection: " + ec.message());
  std::istream is(&buf);
  std::string reply;
  std::getline(is, reply);
  return reply;
}

Status RendezvousClient::Set(const std::string& key, const std::string& value) {
  RT_ASSIGN_OR_RETURN(std::string reply, Call("SET " + key + " " + value + "\n"));
  if (reply != "OK") return Internal("rendezvous store refused SET " + key + ": " + reply);
  return Status::Ok();
}

StatusOr<std::string> RendezvousClient::Get(const std::string& key, Clock::time_point deadline, const std::string& who) {
  for (;;) {
    RT_ASSIGN_OR_RETURN(std::string reply, Call("GET " + key + "\n"));
    if (reply.rfind("VAL ", 0) == 0) return reply.substr(4);
    if (Clock::now() >= deadline)
      return DeadlineExceeded("rendezvous at " + where_ + ": " + who + " did not register in time");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::string RendezvousClient::LocalAddress() const {
  boost::system::error_code ec;
  auto ep = sock_->local_endpoint(ec);
  return ec ? std::string("127.0.0.1") : ep.address().to_string();
}

}  // namespace ringtrain::coll
