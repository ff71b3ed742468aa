// MPI transport: frames over Open MPI point-to-point (MPI_COMM_WORLD ranks). The header travels as
// its own small message, so the payload lands directly in the receiver's buffer; control frames
// (aborts, stuck notices) use a tag of their own and are probed for while waiting. Sends copy the
// payload into a staging buffer so Send returns at once (rings cannot deadlock on MPI's rendezvous
// protocol) and the caller may reuse its buffer. Waits poll MPI_Test until the deadline.
// A dead MPI process usually takes the whole job down (mpirun's policy), so dead-peer detection
// is the launcher's; deadlines and mismatch detection work as on every transport.
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "collectives/transport.h"

namespace ringtrain::coll {

// True when this build has MPI.
bool MpiAvailable();
// Initialises MPI (thread level MULTIPLE) once per process; finalised at exit.
Status MpiInit();
// The MPI world rank and size (after MpiInit).
int MpiRank();
int MpiSize();

class MpiTransport : public Transport {
 public:
  static StatusOr<std::shared_ptr<MpiTransport>> Create();
  ~MpiTransport() override;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* kind() const override { return "mpi"; }
  Status Send(int peer, const FrameHeader& h, const void* payload) override;
  Status Recv(int peer, uint32_t context, FrameHeader* h, void* buf, size_t cap,
              Clock::time_point deadline) override;
  std::vector<std::string> StuckNotices(uint32_t context) override;
  Status PendingAbort(uint32_t context, Clock::time_point until) override;

 private:
  MpiTransport() = default;
  void PollControl();  // moves arrived control frames into aborts_/stuck_ (mu_ held)
  void ReapSends();    // frees completed sends (mu_ held)

  struct PendingSend;
  int rank_ = 0, size_ = 1;
  std::mutex mu_;  // serialises every MPI call made through this transport
  std::deque<std::unique_ptr<PendingSend>> sends_;
  std::map<uint32_t, std::string> aborts_;
  std::map<uint32_t, std::vector<std::string>> stuck_;
};

}  // namespace ringtrain::coll
