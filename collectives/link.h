// What a collective algorithm sees: point-to-point sends and receives among the communicator's
// ranks for one collective call. The Link stamps every frame with the call's header (context,
// sequence number, operation, type, count, root), checks the header of every frame it receives,
// enforces the call's deadline, and turns any failure into one message that it also sends to every
// other member as an abort frame, so all surviving ranks report the same cause.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "collectives/transport.h"
#include "collectives/types.h"

namespace ringtrain::coll {

class Link {
 public:
  // members: transport rank of each communicator rank; me: this rank's communicator rank.
  // members and comm_name are the communicator's and must outlive the Link (one call).
  Link(Transport* t, const std::vector<int>& members, int me, const FrameHeader& proto, double deadline_s,
       const std::string& comm_name);

  int rank() const { return me_; }
  int size() const { return static_cast<int>(members_.size()); }

  // Sends bytes to communicator rank `to` (does not wait for the receiver).
  Status Send(int to, const void* data, size_t bytes);
  // Receives exactly `bytes` from communicator rank `from`.
  Status Recv(int from, void* data, size_t bytes);
  // Receives exactly `bytes` from `from` and reduces them into data (elements of t, op): straight
  // out of the transport's buffer when it has a direct receive, else through tmp (bytes long).
  Status RecvReduce(int from, uint8_t* data, size_t bytes, DataType t, ReduceOp op, uint8_t* tmp);
  // Send then receive; safe in rings because sends never wait for the receiver.
  Status SendRecv(int to, const void* sdata, size_t sbytes, int from, void* rdata, size_t rbytes);

  // "allreduce #5 (1000003 x f32, sum) on world": names this call in messages.
  std::string Describe() const;

 private:
  // Returns s; unless s came from another rank's abort frame, first sends it to every other member
  // as an abort frame so they report the same cause.
  Status Fail(const Status& s, bool propagate = true);
  // After a timeout: tells the others whom this rank waits for, collects their notices for a grace
  // period, and names the ranks that were waited for but never reported waiting themselves: the
  // ones that did not arrive (not merely the blocked neighbour).
  Status DiagnoseTimeout(int from);
  std::string Summary(const FrameHeader& h) const;
  // Whether a received header belongs to this call (same context, sequence, operation, count...).
  bool Matches(const FrameHeader& h) const;
  // Turns a receive's outcome into this call's error (timeout diagnosis, abort, dead peer,
  // mismatched collective); rejected: the header failed Matches during a direct receive.
  Status Finish(const Status& s, const FrameHeader& h, int from, size_t bytes, bool rejected);

  Transport* t_;
  const std::vector<int>& members_;
  int me_;
  FrameHeader proto_;
  double deadline_s_;
  Clock::time_point deadline_;
  const std::string& comm_name_;
  bool failed_ = false;
};

}  // namespace ringtrain::coll
