// Shared-memory transport for ranks on one host. One POSIX shared-memory segment per job holds,
// for every ordered pair of ranks, a single-producer single-consumer byte ring for data frames and
// a small one for control frames (aborts, stuck notices). A frame is a header record followed by
// payload chunks of at most a quarter of the ring, so any frame streams through a ring of any size.
//
// Copies: Send copies the payload into the ring once; Recv copies it out once, and RecvDirect hands
// it to the caller in place (the ring all-reduce reduces straight out of the ring: one copy less
// than a socket or MPI path). Send never waits for the receiver: what does not fit in the ring goes
// to a per-peer overflow queue that a progress thread (and every waiting call) streams in as the
// receiver drains. Waits spin briefly, then yield the CPU; when the ranks outnumber the cores a
// waiter then sleeps on a futex in the ring, woken by the next publish.
//
// Dead peers: every rank writes its pid into the segment; a rank waiting on a peer whose process
// is gone (kill(pid, 0) fails), or that closed its transport, gets Unavailable once nothing from it
// is left to read. The segment is unlinked as soon as every rank has mapped it, so nothing is left
// in /dev/shm even when processes are killed.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "collectives/transport.h"

namespace ringtrain::coll {

struct ShmOptions {
  int rank = 0, size = 1;
  std::string name;                // segment name ("/ringtrain-..."); rank 0 creates it
  size_t ring_bytes = 4 << 20;     // per ordered pair of ranks (rounded to 64 bytes)
  double connect_timeout_s = 300;  // how long ranks wait for each other to attach
};

class ShmTransport : public Transport {
 public:
  // Rank 0 creates the segment, the others open it (retrying until it exists); returns once every
  // rank has attached. All ranks of the job call it with the same name and size.
  static StatusOr<std::shared_ptr<ShmTransport>> Create(const ShmOptions& o);
  // Agrees on a fresh segment name over another transport of the same ranks (rank 0 picks it and
  // sends it to the others), then Create. `boot` is kept (its connections stay open, unused).
  static StatusOr<std::shared_ptr<ShmTransport>> CreateOver(std::shared_ptr<Transport> boot, ShmOptions o);
  // Bytes of shared memory a job of `size` ranks needs with rings of `ring_bytes`.
  static size_t SegmentBytes(int size, size_t ring_bytes);
  // Whether /dev/shm has room for that segment (auto transport selection falls back otherwise:
  // writing past a full tmpfs would be a SIGBUS, not an error).
  static bool Fits(int size, size_t ring_bytes);

  ~ShmTransport() override;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* kind() const override { return "shm"; }
  Status Send(int peer, const FrameHeader& h, const void* payload) override;
  Status Recv(int peer, uint32_t context, FrameHeader* h, void* buf, size_t cap,
              Clock::time_point deadline) override;
  bool direct_receive() const override { return true; }
  // A sixteenth of a ring: messages that small stream through without overflowing even when a
  // rank runs several ring steps ahead of its successor (ranks sharing cores).
  size_t max_segment_bytes() const override { return std::max<size_t>(4096, ring_bytes_ / 16 / 64 * 64); }
  Status RecvDirect(int peer, uint32_t context, FrameHeader* h, const PayloadSink& sink,
                    Clock::time_point deadline) override;
  Status PendingAbort(uint32_t context, Clock::time_point until) override;
  std::vector<std::string> StuckNotices(uint32_t context) override;
  std::string PeerName(int peer) const override;
  // This rank leaves: peers waiting on it fail once they drained what it sent (as on a closed
  // socket). Later calls fail.
  void Close();

 // Layouts in the shared segment (defined in the .cc).
  struct Ring;
  struct Segment;

 private:
  struct Pending {  // a frame (or its rest) waiting for room in a ring
    FrameHeader h;
    bool header_written = false;
    const uint8_t* src = nullptr;  // the caller's payload (during Send), else own
    std::vector<uint8_t> own;      // payload bytes [own_from, h.bytes), copied when it overflowed
    size_t own_from = 0;
    size_t done = 0;  // payload bytes already in the ring
  };
  ShmTransport() = default;
  Ring* DataRing(int from, int to) const;
  Ring* CtlRing(int from, int to) const;
  // Writes as much of p as fits into ring r now; true when all of it is in.
  static bool Pump(Ring* r, Pending& p);
  // Writes one record (a 64-byte record header, then n bytes) if it fits now.
  static bool PutRecord(Ring* r, const void* rec, size_t rec_bytes, const uint8_t* data, size_t n);
  // Streams overflowed frames into their rings (try-lock: never blocks a caller).
  void PumpAll();
  void ProgressLoop();
  // Moves arrived control frames of every peer into aborts_/stuck_, then returns Aborted if an
  // abort for `context` arrived (and, with stuck_too, DeadlineExceeded for a stuck notice).
  Status PollControl(uint32_t context, bool stuck_too);
  size_t PairIndex(int from, int to) const;
  bool PeerGone(int peer) const;
  // Waits until ring r (from peer) holds a record, or (with stash_seen) until another receiver
  // stashed a frame since stash_gen_ was *stash_seen; Unavailable / Aborted / DeadlineExceeded as Recv.
  Status WaitRecord(Ring* r, int peer, uint32_t context, Clock::time_point deadline, bool in_frame,
                    const uint64_t* stash_seen = nullptr);
  // Receives the next frame of `context` from peer; payload pieces go to sink (nullptr: the frame
  // was stashed for another context and the loop goes on).
  Status RecvFrame(int peer, uint32_t context, FrameHeader* h, const PayloadSink& sink, Clock::time_point deadline);

  int rank_ = 0, size_ = 1;
  size_t ring_bytes_ = 0;
  std::shared_ptr<Transport> boot_;
  void* base_ = nullptr;
  size_t mapped_ = 0;
  Segment* seg_ = nullptr;
  std::atomic<bool> closed_{false};
  bool sleep_when_idle_ = false;  // ranks outnumber the host's CPUs: waiters sleep

  std::unique_ptr<std::mutex[]> out_mu_;  // per peer: the producer side of its data ring
  std::unique_ptr<std::mutex[]> in_mu_;   // per peer: the consumer side of its data ring
  std::vector<std::deque<Pending>> overflow_;  // per peer, under out_mu_
  std::atomic<int> overflowing_{0};            // peers with a non-empty overflow
  std::mutex ctl_out_mu_, ctl_in_mu_;
  std::map<std::pair<int, uint32_t>, std::deque<std::pair<FrameHeader, std::vector<uint8_t>>>> stash_;  // in_mu_
  std::mutex stash_mu_;
  // Bumped (under stash_mu_) whenever a frame is stashed: a receiver that found no frame of its
  // own and waits on the ring also wakes for one a concurrent receiver set aside for it.
  std::atomic<uint64_t> stash_gen_{0};
  std::vector<FrameHeader> ctl_h_;     // per peer: a control frame being read (ctl_in_mu_)
  std::vector<std::string> ctl_text_;
  std::map<uint32_t, std::string> aborts_;  // ctl_in_mu_
  std::map<uint32_t, std::vector<std::string>> stuck_;

  std::mutex progress_mu_;
  std::condition_variable progress_cv_;
  bool stop_ = false;
  std::thread progress_;
};

}  // namespace ringtrain::coll
