// The parameter server's wire protocol (issue 8), shared with the coordinator: length-prefixed
// protobuf frames over TCP,
//   [u32 little-endian header length][PsHeader (proto/ps.proto)][payload: header.payload_bytes]
// with raw little-endian payloads. Limits bound both parts, and a frame is checked against them
// (and its header against the message type's rules) before any payload byte is read.
// FrameConn does deadline-bounded whole-frame I/O on a Boost.Asio socket.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include <utility>  // before Boost 1.74 Asio, which uses std::exchange without it

#include <boost/asio.hpp>

#include "core/status.h"
#include "ps.pb.h"

namespace ringtrain::ps {

using Clock = std::chrono::steady_clock;

constexpr uint32_t kProtocolVersion = 1;

struct FrameLimits {
  uint32_t max_header_bytes = 1u << 20;   // protobuf header (the INIT JSON is the largest)
  uint64_t max_payload_bytes = 64u << 20;  // raw payload of one frame
};

// Checks a parsed header: known type and version, payload size within the limit and consistent
// with the type (f32 payloads match [begin, end), norms are f64 per step).
Status ValidateHeader(const proto::PsHeader& h, const FrameLimits& lim);

// Decodes one whole frame from bytes (the fuzz target's entry point): the length prefix, the
// header (parsed and validated) and exactly header.payload_bytes bytes after it. Sets *payload to
// the payload's first byte.
Status DecodeFrame(const uint8_t* data, size_t n, const FrameLimits& lim, proto::PsHeader* h,
                   const uint8_t** payload);

// Serialises a frame's prefix and header (payload_bytes must already be set).
std::string EncodeHeader(const proto::PsHeader& h);

const char* TypeName(proto::PsType t);

// A connected socket with whole-frame reads and writes bounded by deadlines. Not thread-safe:
// one reader and one writer at a time (they may be different threads). Shutdown() may be called
// from any thread to wake both.
class FrameConn {
 public:
  FrameConn(boost::asio::ip::tcp::socket sock, std::string peer);
  ~FrameConn();
  const std::string& peer() const { return peer_; }

  // Sends header + payload (sets header.payload_bytes = n).
  Status Send(proto::PsHeader h, const void* payload, size_t n, Clock::time_point deadline);
  Status Send(const proto::PsHeader& h, Clock::time_point deadline) { return Send(h, nullptr, 0, deadline); }
  // Reads and validates the next frame's header. The first byte may take until first_deadline
  // (an idle peer); the rest of the header must follow within frame_timeout_s.
  Status RecvHeader(proto::PsHeader* h, const FrameLimits& lim, Clock::time_point first_deadline,
                    double frame_timeout_s);
  // Reads the payload announced by the last header (all of it, or skips it).
  Status RecvPayload(void* dst, size_t n, Clock::time_point deadline);
  Status SkipPayload(size_t n, Clock::time_point deadline);
  void Shutdown();
  // Frames whose header is another protobuf message and that carry no payload (the coordinator's
  // protocol): the same length prefix, limits and deadlines.
  Status SendMessage(const google::protobuf::MessageLite& m, Clock::time_point deadline);
  Status RecvMessage(google::protobuf::MessageLite* m, uint32_t max_bytes, Clock::time_point first_deadline,
                     double frame_timeout_s);
  // Raw bytes, no framing (tests and tools that must send malformed frames).
  Status SendRaw(const void* data, size_t n, Clock::time_point deadline);

 private:
  Status ReadExact(void* dst, size_t n, Clock::time_point deadline, bool* got_none = nullptr);
  // A frame's length prefix and the body it announces (length checked against [1, max_bytes]).
  Status RecvBody(std::string* body, uint32_t max_bytes, Clock::time_point first_deadline, double frame_timeout_s);
  Status WriteAll(const void* const* bufs, const size_t* lens, int count, Clock::time_point deadline);
  boost::asio::ip::tcp::socket sock_;
  std::string peer_;
};

// A listening socket on host:port (port 0: any free one), non-blocking for AcceptWithin; `what`
// names the service in errors ("parameter server").
StatusOr<std::unique_ptr<boost::asio::ip::tcp::acceptor>> Listen(boost::asio::io_context& io, const std::string& host,
                                                                  int port, const std::string& what);
// Waits up to timeout_ms for a connection on a Listen()ed socket; false when none came. Polled:
// closing a listening socket does not wake a thread blocked in accept().
bool AcceptWithin(boost::asio::ip::tcp::acceptor& a, int timeout_ms, boost::asio::ip::tcp::socket* sock,
                  std::string* peer);

// Connects to host:port, retrying refused connections until the deadline (a server may start
// after its workers).
StatusOr<boost::asio::ip::tcp::socket> ConnectWithRetry(boost::asio::io_context& io, const std::string& host, int port,
                                                        Clock::time_point deadline);

// "host:port" -> (host, port), with a clear error naming `what`.
StatusOr<std::pair<std::string, int>> SplitHostPort(const std::string& s, const std::string& what);

Clock::time_point After(double seconds);

}  // namespace ringtrain::ps
