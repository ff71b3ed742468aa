#include "parameter_server/wire.h"

#include <poll.h>

#include <bit>
#include <cstring>
#include <thread>

namespace ringtrain::ps {

static_assert(std::endian::native == std::endian::little, "payloads are little-endian on the wire");

namespace asio = boost::asio;
using asio::ip::tcp;

Clock::time_point After(double seconds) {
  if (!(seconds < 1e9)) return Clock::time_point::max();
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

const char* TypeName(proto::PsType t) {
  switch (t) {
    case proto::PS_CHALLENGE: return "CHALLENGE";
    case proto::PS_AUTH: return "AUTH";
    case proto::PS_AUTH_OK: return "AUTH_OK";
    case proto::PS_INIT: return "INIT";
    case proto::PS_LOAD: return "LOAD";
    case proto::PS_SYNC: return "SYNC";
    case proto::PS_PUSH: return "PUSH";
    case proto::PS_NORMS: return "NORMS";
    case proto::PS_NORMS_REPLY: return "NORMS_REPLY";
    case proto::PS_PULL: return "PULL";
    case proto::PS_PARAMS: return "PARAMS";
    case proto::PS_SAVE: return "SAVE";
    case proto::PS_SAVED: return "SAVED";
    case proto::PS_OK: return "OK";
    case proto::PS_ERROR: return "ERROR";
    case proto::PS_BYE: return "BYE";
    default: return "UNKNOWN";
  }
}

Status ValidateHeader(const proto::PsHeader& h, const FrameLimits& lim) {
  if (h.version() != kProtocolVersion)
    return InvalidArgument("protocol version " + std::to_string(h.version()) + " (this build speaks " +
                           std::to_string(kProtocolVersion) + ")");
  const int t = static_cast<int>(h.type());
  if (t <= proto::PS_UNKNOWN || t > proto::PS_BYE) return InvalidArgument("unknown message type " + std::to_string(t));
  const std::string what = std::string(TypeName(h.type())) + " frame: ";
  if (h.payload_bytes() > lim.max_payload_bytes)
    return InvalidArgument(what + "payload of " + std::to_string(h.payload_bytes()) + " bytes is over the limit of " +
                           std::to_string(lim.max_payload_bytes));
  if (h.step() < 0 || h.step_from() < 0) return InvalidArgument(what + "negative step");
  switch (h.type()) {
    case proto::PS_PUSH:
    case proto::PS_LOAD:
    case proto::PS_PARAMS:
      if (h.begin() > h.end()) return InvalidArgument(what + "range begins after it ends");
      if (h.end() - h.begin() > lim.max_payload_bytes / 4 || h.payload_bytes() != (h.end() - h.begin()) * 4)
        return InvalidArgument(what + "payload of " + std::to_string(h.payload_bytes()) + " bytes does not hold [" +
                               std::to_string(h.begin()) + ", " + std::to_string(h.end()) + ") as f32");
      if (h.type() == proto::PS_LOAD && h.kind() > 2) return InvalidArgument(what + "unknown tensor kind");
      break;
    case proto::PS_NORMS_REPLY:
      if (h.payload_bytes() % 8 != 0) return InvalidArgument(what + "payload is not a whole number of f64");
      break;
    case proto::PS_NORMS:
      if (h.step_from() > h.step() || h.step_needed() > h.step()) return InvalidArgument(what + "step_from or step_needed after step");
      if (h.step() - h.step_from() >= 1 << 20) return InvalidArgument(what + "more than 2^20 steps");
      [[fallthrough]];
    default:
      if (h.payload_bytes() != 0) return InvalidArgument(what + "carries no payload");
  }
  if ((h.type() == proto::PS_CHALLENGE || h.type() == proto::PS_AUTH) && h.nonce().size() != 32)
    return InvalidArgument(what + "nonce must be 32 bytes");
  if ((h.type() == proto::PS_AUTH || h.type() == proto::PS_AUTH_OK) && h.mac().size() != 32)
    return InvalidArgument(what + "MAC must be 32 bytes");
  return Status::Ok();
}

namespace {
uint32_t ReadLe32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

Status ParseHeader(const uint8_t* data, uint32_t len, const FrameLimits& lim, proto::PsHeader* h) {
  if (!h->ParseFromArray(data, static_cast<int>(len))) return InvalidArgument("frame header does not parse");
  return ValidateHeader(*h, lim);
}

Status CheckLength(uint32_t len, uint32_t max_bytes) {
  if (len == 0 || len > max_bytes)
    return InvalidArgument("frame header length " + std::to_string(len) + " is outside [1, " +
                           std::to_string(max_bytes) + "]");
  return Status::Ok();
}
}  // namespace

Status DecodeFrame(const uint8_t* data, size_t n, const FrameLimits& lim, proto::PsHeader* h,
                   const uint8_t** payload) {
  if (n < 4) return InvalidArgument("truncated frame: " + std::to_string(n) + " bytes, no length prefix");
  const uint32_t len = ReadLe32(data);
  RT_RETURN_IF_ERROR(CheckLength(len, lim.max_header_bytes));
  if (n - 4 < len) return InvalidArgument("truncated frame: header of " + std::to_string(len) + " bytes announced");
  RT_RETURN_IF_ERROR(ParseHeader(data + 4, len, lim, h));
  const size_t rest = n - 4 - len;
  if (rest != h->payload_bytes())
    return InvalidArgument(std::string(rest < h->payload_bytes() ? "truncated" : "oversized") + " frame: " +
                           std::to_string(rest) + " payload bytes, header announces " +
                           std::to_string(h->payload_bytes()));
  *payload = data + 4 + len;
  return Status::Ok();
}

namespace {
// [u32 LE length][serialised message]
std::string Prefixed(const google::protobuf::MessageLite& m) {
  std::string body;
  m.SerializeToString(&body);
  std::string out(4, '\0');
  const uint32_t len = static_cast<uint32_t>(body.size());
  std::memcpy(out.data(), &len, 4);
  out += body;
  return out;
}
}  // namespace

std::string EncodeHeader(const proto::PsHeader& h) { return Prefixed(h); }

FrameConn::FrameConn(tcp::socket sock, std::string peer) : sock_(std::move(sock)), peer_(std::move(peer)) {
  boost::system::error_code ec;
  sock_.non_blocking(true, ec);
  sock_.set_option(tcp::no_delay(true), ec);
}

FrameConn::~FrameConn() {
  boost::system::error_code ec;
  sock_.close(ec);
}

void FrameConn::Shutdown() {
  boost::system::error_code ec;
  sock_.shutdown(tcp::socket::shutdown_both, ec);
}

namespace {
// Waits until fd is ready for `events` or the deadline passes; false on timeout.
bool WaitFd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    int ms = -1;
    if (deadline != Clock::time_point::max()) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return false;
      ms = static_cast<int>(std::min<long long>(left, 1 << 30));
    }
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, ms);
    if (r > 0) return true;
    if (r == 0) return false;
    if (errno != EINTR) return true;  // let the read or write report the error
  }
}
}  // namespace

Status FrameConn::ReadExact(void* dst, size_t n, Clock::time_point deadline, bool* got_none) {
  auto* p = static_cast<uint8_t*>(dst);
  size_t got = 0;
  while (got < n) {
    boost::system::error_code ec;
    const size_t k = sock_.read_some(asio::buffer(p + got, n - got), ec);
    got += k;
    if (!ec) continue;
    if (ec == asio::error::would_block || ec == asio::error::try_again || ec == asio::error::interrupted) {
      if (!WaitFd(sock_.native_handle(), POLLIN, deadline))
        return DeadlineExceeded("no data from " + peer_ + " before the deadline (" + std::to_string(got) + " of " +
                                std::to_string(n) + " bytes)");
      continue;
    }
    if (got_none) *got_none = got == 0;
    if (ec == asio::error::eof)
      return Unavailable(peer_ + " closed the connection" +
                         (got ? " in the middle of a frame (" + std::to_string(got) + " of " + std::to_string(n) + " bytes)"
                              : std::string()));
    return Unavailable("reading from " + peer_ + ": " + ec.message());
  }
  return Status::Ok();
}

Status FrameConn::WriteAll(const void* const* bufs, const size_t* lens, int count, Clock::time_point deadline) {
  for (int i = 0; i < count; ++i) {
    const auto* p = static_cast<const uint8_t*>(bufs[i]);
    size_t done = 0;
    while (done < lens[i]) {
      boost::system::error_code ec;
      // Asio sends with MSG_NOSIGNAL: a closed peer is an error here, not SIGPIPE.
      const size_t k = sock_.write_some(asio::buffer(p + done, lens[i] - done), ec);
      done += k;
      if (!ec) continue;
      if (ec == asio::error::would_block || ec == asio::error::try_again || ec == asio::error::interrupted) {
        if (!WaitFd(sock_.native_handle(), POLLOUT, deadline))
          return DeadlineExceeded("sending to " + peer_ + " did not finish before the deadline");
        continue;
      }
      return Unavailable("sending to " + peer_ + ": " + ec.message());
    }
  }
  return Status::Ok();
}

Status FrameConn::Send(proto::PsHeader h, const void* payload, size_t n, Clock::time_point deadline) {
  h.set_version(kProtocolVersion);
  h.set_payload_bytes(n);
  const std::string head = EncodeHeader(h);
  const void* bufs[2] = {head.data(), payload};
  const size_t lens[2] = {head.size(), n};
  return WriteAll(bufs, lens, n ? 2 : 1, deadline);
}

Status FrameConn::SendMessage(const google::protobuf::MessageLite& m, Clock::time_point deadline) {
  const std::string out = Prefixed(m);
  return SendRaw(out.data(), out.size(), deadline);
}

Status FrameConn::RecvBody(std::string* body, uint32_t max_bytes, Clock::time_point first_deadline,
                           double frame_timeout_s) {
  uint8_t pre[4];
  // The first byte may be a long time coming (a worker computing); the rest of the frame not.
  RT_RETURN_IF_ERROR(ReadExact(pre, 1, first_deadline));
  const Clock::time_point rest = After(frame_timeout_s);
  RT_RETURN_IF_ERROR(ReadExact(pre + 1, 3, rest));
  const uint32_t len = ReadLe32(pre);
  RT_RETURN_IF_ERROR(CheckLength(len, max_bytes));
  body->assign(len, '\0');
  return ReadExact(body->data(), len, rest);
}

Status FrameConn::RecvMessage(google::protobuf::MessageLite* m, uint32_t max_bytes, Clock::time_point first_deadline,
                              double frame_timeout_s) {
  std::string body;
  RT_RETURN_IF_ERROR(RecvBody(&body, max_bytes, first_deadline, frame_timeout_s));
  if (!m->ParseFromString(body)) return InvalidArgument("frame does not parse");
  return Status::Ok();
}

Status FrameConn::SendRaw(const void* data, size_t n, Clock::time_point deadline) {
  const void* bufs[1] = {data};
  const size_t lens[1] = {n};
  return WriteAll(bufs, lens, 1, deadline);
}

Status FrameConn::RecvHeader(proto::PsHeader* h, const FrameLimits& lim, Clock::time_point first_deadline,
                             double frame_timeout_s) {
  std::string body;
  RT_RETURN_IF_ERROR(RecvBody(&body, lim.max_header_bytes, first_deadline, frame_timeout_s));
  return ParseHeader(reinterpret_cast<const uint8_t*>(body.data()), static_cast<uint32_t>(body.size()), lim, h);
}

Status FrameConn::RecvPayload(void* dst, size_t n, Clock::time_point deadline) { return ReadExact(dst, n, deadline); }

Status FrameConn::SkipPayload(size_t n, Clock::time_point deadline) {
  char buf[65536];
  while (n > 0) {
    const size_t k = std::min(n, sizeof buf);
    RT_RETURN_IF_ERROR(ReadExact(buf, k, deadline));
    n -= k;
  }
  return Status::Ok();
}

StatusOr<std::pair<std::string, int>> SplitHostPort(const std::string& s, const std::string& what) {
  const size_t c = s.rfind(':');
  if (c == std::string::npos || c == 0 || c + 1 == s.size())
    return InvalidArgument(what + " '" + s + "' is not HOST:PORT");
  int port = 0;
  for (size_t i = c + 1; i < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9' || port > 65535) return InvalidArgument(what + " '" + s + "': bad port");
    port = port * 10 + (s[i] - '0');
  }
  if (port > 65535) return InvalidArgument(what + " '" + s + "': bad port");
  return std::make_pair(s.substr(0, c), port);
}

StatusOr<std::unique_ptr<tcp::acceptor>> Listen(asio::io_context& io, const std::string& host, int port,
                                                const std::string& what) {
  boost::system::error_code ec;
  const auto addr = asio::ip::make_address(host, ec);
  if (ec) return InvalidArgument(what + ": listen address '" + host + "' is not an IP address");
  auto a = std::make_unique<tcp::acceptor>(io);
  const tcp::endpoint ep(addr, static_cast<unsigned short>(port));
  a->open(ep.protocol(), ec);
  if (!ec) a->set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) a->bind(ep, ec);
  if (!ec) a->listen(asio::socket_base::max_listen_connections, ec);
  if (!ec) a->non_blocking(true, ec);
  if (ec) return Unavailable(what + ": cannot listen on " + host + ":" + std::to_string(port) + ": " + ec.message());
  return a;
}

bool AcceptWithin(tcp::acceptor& a, int timeout_ms, tcp::socket* sock, std::string* peer) {
  pollfd p{a.native_handle(), POLLIN, 0};
  if (::poll(&p, 1, timeout_ms) <= 0) return false;
  boost::system::error_code ec;
  tcp::socket s = a.accept(ec);
  if (ec) {
    if (ec != asio::error::would_block && ec != asio::error::try_again)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));  // e.g. out of descriptors
    return false;
  }
  const auto ep = s.remote_endpoint(ec);
  *peer = ec ? "?" : ep.address().to_string() + ":" + std::to_string(ep.port());
  *sock = std::move(s);
  return true;
}

StatusOr<tcp::socket> ConnectWithRetry(asio::io_context& io, const std::string& host, int port,
                                       Clock::time_point deadline) {
  boost::system::error_code ec;
  tcp::resolver res(io);
  auto eps = res.resolve(host, std::to_string(port), ec);
  if (ec) return Unavailable("resolving " + host + ": " + ec.message());
  std::string last;
  auto pause = std::chrono::milliseconds(20);
  for (;;) {
    for (const auto& ep : eps) {
      tcp::socket s(io);
      s.connect(ep.endpoint(), ec);
      if (!ec) return s;
      last = ec.message();
    }
    if (Clock::now() + pause >= deadline)
      return Unavailable("cannot connect to " + host + ":" + std::to_string(port) + ": " + last);
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(500));
  }
}

}  // namespace ringtrain::ps
