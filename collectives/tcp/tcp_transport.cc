#include "collectives/tcp/tcp_transport.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <cstring>
#include <sstream>

namespace ringtrain::coll {

namespace asio = boost::asio;
using asio::ip::tcp;

namespace {

constexpr uint32_t kHelloMagic = 0x4F4C4548;  // "HELO"
constexpr uint64_t kMaxFrameBytes = uint64_t{1} << 38;

struct Hello {
  uint32_t magic;
  int32_t rank;
  int32_t size;
  uint32_t reserved;
};

void SetRecvTimeout(tcp::socket& s, double seconds) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(seconds);
  tv.tv_usec = static_cast<suseconds_t>((seconds - static_cast<double>(tv.tv_sec)) * 1e6);
  ::setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

void Tune(tcp::socket& s) {
  boost::system::error_code ec;
  s.set_option(tcp::no_delay(true), ec);
  s.set_option(asio::socket_base::send_buffer_size(4 << 20), ec);
  s.set_option(asio::socket_base::receive_buffer_size(4 << 20), ec);
}

double Remaining(Clock::time_point deadline) {
  return std::max(0.001, std::chrono::duration<double>(deadline - Clock::now()).count());
}

}  // namespace

StatusOr<std::string> ResolveBindAddress(const std::string& bind) {
  if (bind.empty()) return std::string("0.0.0.0");
  boost::system::error_code ec;
  asio::ip::make_address_v4(bind, ec);
  if (!ec) return bind;
  ifaddrs* ifs = nullptr;
  if (getifaddrs(&ifs) != 0) return IoError("getifaddrs failed: " + std::string(std::strerror(errno)));
  std::string found;
  for (ifaddrs* i = ifs; i; i = i->ifa_next) {
    if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET && bind == i->ifa_name) {
      char buf[INET_ADDRSTRLEN];
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, buf, sizeof(buf));
      found = buf;
      break;
    }
  }
  freeifaddrs(ifs);
  if (found.empty()) return InvalidArgument("bind address '" + bind + "' is neither an IPv4 address nor an interface with one");
  return found;
}

StatusOr<std::shared_ptr<TcpTransport>> TcpTransport::Create(const TcpOptions& o) {
  if (o.size < 1 || o.rank < 0 || o.rank >= o.size)
    return InvalidArgument("tcp transport: rank " + std::to_string(o.rank) + " outside a world of " +
                           std::to_string(o.size));
  std::shared_ptr<TcpTransport> t(new TcpTransport());
  t->rank_ = o.rank;
  t->size_ = o.size;
  for (int i = 0; i < o.size; ++i) t->peers_.push_back(std::make_unique<Peer>());
  Status s = t->Connect(o);
  if (!s.ok()) return s.WithContext("tcp transport, rank " + std::to_string(o.rank));
  return t;
}

Status TcpTransport::Connect(const TcpOptions& o) {
  const auto deadline =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.connect_timeout_s));
  if (size_ == 1) return Status::Ok();
  if (rank_ == 0) {
    RT_ASSIGN_OR_RETURN(store_, RendezvousServer::Start(o.master_addr, o.master_port));
  }
  RT_ASSIGN_OR_RETURN(std::string bind_ip, ResolveBindAddress(o.bind));
  // Our data listener.
  boost::system::error_code ec;
  tcp::acceptor acceptor(io_);
  const tcp::endpoint bind_ep(asio::ip::make_address(bind_ip), 0);
  acceptor.open(bind_ep.protocol(), ec);
  if (!ec) acceptor.bind(bind_ep, ec);
  if (!ec) acceptor.listen(256, ec);
  if (ec) return IoError("cannot listen on " + bind_ip + ": " + ec.message());
  RT_ASSIGN_OR_RETURN(auto store, RendezvousClient::Connect(o.master_addr, o.master_port, deadline));
  const std::string host = bind_ip == "0.0.0.0" ? store->LocalAddress() : bind_ip;
  const std::string me = host + ":" + std::to_string(acceptor.local_endpoint().port());
  peers_[rank_]->addr = me;
  RT_RETURN_IF_ERROR(store->Set("addr/" + std::to_string(rank_), me));
  // Lower ranks accept, higher ranks connect: connect to every rank below us.
  for (int p = 0; p < rank_; ++p) {
    RT_ASSIGN_OR_RETURN(std::string addr, store->Get("addr/" + std::to_string(p), deadline, "rank " + std::to_string(p)));
    const size_t colon = addr.rfind(':');
    RT_ASSIGN_OR_RETURN(tcp::endpoint ep, ResolveEndpoint(io_, addr.substr(0, colon), std::stoi(addr.substr(colon + 1))));
    auto sock = std::make_unique<tcp::socket>(io_);
    for (;;) {
      sock->connect(ep, ec);
      if (!ec) break;
      if (Clock::now() >= deadline) return DeadlineExceeded("could not connect to rank " + std::to_string(p) + " at " + addr + ": " + ec.message());
      sock = std::make_unique<tcp::socket>(io_);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    Tune(*sock);
    const Hello hello{kHelloMagic, rank_, size_, 0};
    asio::write(*sock, asio::buffer(&hello, sizeof(hello)), ec);
    if (ec) return Unavailable("handshake with rank " + std::to_string(p) + " at " + addr + " failed: " + ec.message());
    peers_[p]->addr = addr;
    peers_[p]->sock = std::move(sock);
  }
  // Accept every rank above us.
  acceptor.non_blocking(true, ec);
  for (int accepted = 0; accepted < size_ - 1 - rank_;) {
    auto sock = std::make_unique<tcp::socket>(io_);
    acceptor.accept(*sock, ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) {
      if (Clock::now() >= deadline) {
        std::ostringstream os;
        os << "ranks that never connected:";
        for (int p = rank_ + 1; p < size_; ++p)
          if (!peers_[p]->sock) os << " " << p;
        return DeadlineExceeded(os.str() + " (within " + std::to_string(o.connect_timeout_s) + " s)");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      continue;
    }
    if (ec) return IoError("accept failed: " + ec.message());
    sock->non_blocking(false, ec);
    Tune(*sock);
    SetRecvTimeout(*sock, Remaining(deadline));
    Hello hello{};
    asio::read(*sock, asio::buffer(&hello, sizeof(hello)), ec);
    SetRecvTimeout(*sock, 0);
    if (ec || hello.magic != kHelloMagic) continue;  // not one of ours: drop it
    if (hello.size != size_ || hello.rank <= rank_ || hello.rank >= size_ || peers_[hello.rank]->sock)
      return InvalidArgument("rank " + std::to_string(hello.rank) + " of a world of " + std::to_string(hello.size) +
                             " connected to rank " + std::to_string(rank_) + " of a world of " +
                             std::to_string(size_) + " (two jobs on one port?)");
    const auto rep = sock->remote_endpoint(ec);
    peers_[hello.rank]->addr = ec ? "?" : rep.address().to_string() + ":" + std::to_string(rep.port());
    peers_[hello.rank]->sock = std::move(sock);
    ++accepted;
  }
  for (int p = 0; p < size_; ++p)
    if (p != rank_) peers_[p]->reader = std::thread([this, p] { ReadLoop(p); });
  // Nobody leaves set-up (and rank 0 keeps the store up) until all ranks have their connections.
  RT_RETURN_IF_ERROR(store->Set("ready/" + std::to_string(rank_), "1"));
  for (int p = 0; p < size_; ++p)
    RT_RETURN_IF_ERROR(store->Get("ready/" + std::to_string(p), deadline, "rank " + std::to_string(p)).status());
  return Status::Ok();
}

void TcpTransport::Close() {
  closing_ = true;
  // The raw shutdown(2), not Asio's: the reader thread is inside a read on the same socket object,
  // and only the kernel call is safe to make concurrently with it.
  for (auto& p : peers_)
    if (p->sock) ::shutdown(p->sock->native_handle(), SHUT_RDWR);
}

TcpTransport::~TcpTransport() {
  Close();
  for (auto& p : peers_)
    if (p->reader.joinable()) p->reader.join();
}

std::string TcpTransport::PeerName(int peer) const {
  if (peer < 0 || peer >= size_ || peers_[peer]->addr.empty()) return "rank " + std::to_string(peer);
  return "rank " + std::to_string(peer) + " (" + peers_[peer]->addr + ")";
}

void TcpTransport::ReadLoop(int peer) {
  Peer& p = *peers_[peer];
  for (;;) {
    FrameHeader h;
    boost::system::error_code ec;
    asio::read(*p.sock, asio::buffer(&h, sizeof(h)), ec);
    if (!ec && (h.magic != kFrameMagic || h.bytes > kMaxFrameBytes)) {
      std::ostringstream os;
      os << "sent a corrupt frame (magic 0x" << std::hex << h.magic << std::dec << ", " << h.bytes << " bytes)";
      p.dead = true;
      box_.MarkDead(peer, os.str());
      return;
    }
    std::vector<uint8_t> payload;
    if (!ec && h.bytes) {
      payload.resize(h.bytes);
      asio::read(*p.sock, asio::buffer(payload.data(), payload.size()), ec);
    }
    if (ec) {
      p.dead = true;
      if (!closing_) box_.MarkDead(peer, ec == asio::error::eof ? "connection closed" : ec.message());
      return;
    }
    box_.Deliver(peer, h, std::move(payload));
  }
}

Status TcpTransport::Send(int peer, const FrameHeader& h, const void* payload) {
  if (peer < 0 || peer >= size_) return Internal("tcp send to rank " + std::to_string(peer));
  if (peer == rank_) {  // to ourselves: straight into our own mailbox
    const auto* b = static_cast<const uint8_t*>(payload);
    box_.Deliver(rank_, h, std::vector<uint8_t>(b, b + h.bytes));
    return Status::Ok();
  }
  Peer& p = *peers_[peer];
  if (p.dead) return Unavailable(PeerName(peer) + " died (disconnected)");
  std::lock_guard<std::mutex> lock(p.send_mu);
  std::array<asio::const_buffer, 2> bufs = {asio::buffer(&h, sizeof(h)), asio::buffer(payload, h.bytes)};
  boost::system::error_code ec;
  asio::write(*p.sock, bufs, ec);
  if (ec) {
    p.dead = true;
    return Unavailable(PeerName(peer) + " died (" + ec.message() + ")");
  }
  return Status::Ok();
}

Status TcpTransport::Recv(int peer, uint32_t context, FrameHeader* h, void* buf, size_t cap,
                          Clock::time_point deadline) {
  return box_.Take(peer, context, h, buf, cap, deadline, [this](int q) { return PeerName(q); });
}

}  // namespace ringtrain::coll
