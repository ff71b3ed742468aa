// Received frames waiting for a receive call, kept per (source rank, context), plus each context's
// control frames (aborts, stuck notices) and which sources are dead. Transports that buffer on the
// receiving side (in-process, TCP) deliver into one Mailbox per rank and serve Recv from it.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "collectives/transport.h"

namespace ringtrain::coll {

class Mailbox {
 public:
  // Stores a frame from src (control frames go to their context's lists) and wakes receivers.
  void Deliver(int src, const FrameHeader& h, std::vector<uint8_t> payload);
  // src is gone; receives from it fail once its queued frames are consumed.
  void MarkDead(int src, const std::string& reason);
  // Transport::Recv semantics; name(peer) names a rank in messages.
  Status Take(int peer, uint32_t context, FrameHeader* h, void* buf, size_t cap, Clock::time_point deadline,
              const std::function<std::string(int)>& name);
  std::vector<std::string> StuckNotices(uint32_t context);
  Status PendingAbort(uint32_t context, Clock::time_point until);

 private:
  struct Frame {
    FrameHeader h;
    std::vector<uint8_t> payload;
  };
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::pair<int, uint32_t>, std::deque<Frame>> frames_;
  std::map<uint32_t, std::string> aborts_;
  std::map<uint32_t, std::vector<std::string>> stuck_;
  std::map<int, std::string> dead_;
};

}  // namespace ringtrain::coll
