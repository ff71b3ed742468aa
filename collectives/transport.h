// The point-to-point interface every collective algorithm runs over, and the frame header that
// travels with every message. Transports (local/, tcp/, mpi/) move frames; they know nothing of
// algorithms. The header lets a receiver detect a mismatched collective (another operation, count
// or sequence number) instead of reducing the wrong bytes.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/status.h"

namespace ringtrain::coll {

using Clock = std::chrono::steady_clock;

constexpr uint32_t kFrameMagic = 0x4C435452;  // "RTCL"
constexpr uint8_t kFrameAbort = 1;  // payload: the error text; fails every waiter on the context
constexpr uint8_t kFrameStuck = 2;  // payload: "seq waiter waited_for" (communicator ranks) after a timeout

struct FrameHeader {
  uint32_t magic = kFrameMagic;
  uint32_t context = 0;  // communicator id, equal on all members
  uint64_t seq = 0;      // collective sequence number within the communicator (from 1)
  uint8_t op = 0;        // OpKind
  uint8_t dtype = 0;     // DataType
  uint8_t reduce = 0;    // ReduceOp (0 when not a reduction)
  uint8_t flags = 0;     // kFrameAbort
  int32_t root = -1;     // broadcast/reduce root (-1 otherwise)
  uint64_t count = 0;    // element count of the collective, as the sender called it
  uint64_t bytes = 0;    // payload bytes after the header
};
static_assert(sizeof(FrameHeader) == 40, "FrameHeader is a wire format");

class Transport {
 public:
  virtual ~Transport() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "mpi", "tcp" or "local" (for progress lines and benchmarks).
  virtual const char* kind() const = 0;

  // Payload bytes the collectives of every communicator on this transport sent to other ranks
  // (counted by Link; benchmarks report it per step).
  uint64_t bytes_sent() const { return bytes_sent_.load(std::memory_order_relaxed); }
  void CountSent(uint64_t n) { bytes_sent_.fetch_add(n, std::memory_order_relaxed); }

  // Patient: waits for a peer sleep instead of spinning, whatever the transport would choose.
  // For a rank that idles while another computes alone (bench train's one-rank baseline), so
  // that its wait leaves the host as idle as an absent rank would. Transports that block in the
  // kernel anyway (TCP, in-process) ignore it.
  void set_patient(bool p) { patient_.store(p, std::memory_order_relaxed); }
  bool patient() const { return patient_.load(std::memory_order_relaxed); }

  // Sends one frame (h.bytes of payload) to peer. Returns once `payload` may be reused. It must
  // not wait for the peer to post a receive (the receiving side buffers), so a ring in which every
  // rank sends before it receives cannot deadlock. Thread-safe.
  virtual Status Send(int peer, const FrameHeader& h, const void* payload) = 0;

  // Receives the next frame from `peer` on `context`: header into *h and payload into buf (at most
  // cap bytes; a larger payload is an error). Frames with flags are control frames: the transport
  // keeps them per context instead of queueing them. Fails with
  //   Aborted          once an abort frame for `context` has arrived from any peer (its text),
  //   Unavailable      when `peer` is dead (disconnected) and nothing from it is left to read,
  //   DeadlineExceeded at `deadline`, or once a stuck notice for `context` has arrived.
  // Thread-safe for distinct (peer, context) pairs.
  virtual Status Recv(int peer, uint32_t context, FrameHeader* h, void* buf, size_t cap,
                      Clock::time_point deadline) = 0;

  // Payload pieces of a received frame, in order: (its header, offset in the payload, bytes, n).
  // Called once with n = 0 for an empty payload. A non-OK return rejects the frame: the rest of
  // it is skipped and RecvDirect returns that status.
  using PayloadSink = std::function<Status(const FrameHeader& h, size_t offset, const uint8_t* data, size_t n)>;
  // Whether RecvDirect hands payloads over in place, without a copy (the shared-memory transport:
  // a reduction reads straight out of its ring). Link falls back to Recv + a scratch buffer.
  virtual bool direct_receive() const { return false; }
  // The largest message the ring algorithms should send in one piece on this transport (the
  // communicator's segment_bytes is clamped to it).
  virtual size_t max_segment_bytes() const { return SIZE_MAX; }
  // Recv, but the payload goes to sink instead of a buffer (only when direct_receive()).
  virtual Status RecvDirect(int peer, uint32_t context, FrameHeader* h, const PayloadSink& sink,
                            Clock::time_point deadline) {
    (void)peer, (void)context, (void)h, (void)sink, (void)deadline;
    return Internal(std::string(kind()) + " transport has no direct receive");
  }

  // Aborted(text) once an abort frame for `context` has arrived (waiting for one until `until`),
  // else OK. Lets a rank whose own failure is a consequence (a peer that quit after an error, its
  // abort frame still in flight) report the root cause instead.
  virtual Status PendingAbort(uint32_t context, Clock::time_point until) = 0;

  // Payloads of the stuck notices received so far on `context`.
  virtual std::vector<std::string> StuckNotices(uint32_t context) = 0;

  // How error messages name a peer: "rank 3", or "rank 3 (10.0.0.2:29500)".
  virtual std::string PeerName(int peer) const { return "rank " + std::to_string(peer); }

 private:
  std::atomic<uint64_t> bytes_sent_{0};
  std::atomic<bool> patient_{false};
};

}  // namespace ringtrain::coll
