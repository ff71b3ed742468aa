#include "collectives/mailbox.h"

#include <cstring>

namespace ringtrain::coll {

void Mailbox::Deliver(int src, const FrameHeader& h, std::vector<uint8_t> payload) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (h.flags & kFrameAbort) {
      aborts_.emplace(h.context, std::string(payload.begin(), payload.end()));
    } else if (h.flags & kFrameStuck) {
      stuck_[h.context].emplace_back(payload.begin(), payload.end());
    } else {
      frames_[{src, h.context}].push_back(Frame{h, std::move(payload)});
    }
  }
  cv_.notify_all();
}

void Mailbox::MarkDead(int src, const std::string& reason) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    dead_.emplace(src, reason);
  }
  cv_.notify_all();
}

Status Mailbox::Take(int peer, uint32_t context, FrameHeader* h, void* buf, size_t cap, Clock::time_point deadline,
                     const std::function<std::string(int)>& name) {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    auto it = frames_.find({peer, context});
    if (it != frames_.end() && !it->second.empty()) {
      Frame f = std::move(it->second.front());
      it->second.pop_front();
      *h = f.h;
      if (f.h.bytes > cap)
        return Internal("frame of " + std::to_string(f.h.bytes) + " bytes for a " + std::to_string(cap) +
                        "-byte buffer");
      if (f.h.bytes) std::memcpy(buf, f.payload.data(), f.h.bytes);
      return Status::Ok();
    }
    auto ab = aborts_.find(context);
    if (ab != aborts_.end()) return Aborted(ab->second);
    if (stuck_.count(context)) return DeadlineExceeded("a peer reported a stuck collective");
    auto d = dead_.find(peer);
    if (d != dead_.end()) return Unavailable(name(peer) + " died (" + d->second + ")");
    if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && Clock::now() >= deadline)
      return DeadlineExceeded("timed out waiting for " + name(peer));
  }
}

Status Mailbox::PendingAbort(uint32_t context, Clock::time_point until) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_until(lock, until, [&] { return aborts_.count(context) > 0; });
  auto it = aborts_.find(context);
  return it == aborts_.end() ? Status::Ok() : Aborted(it->second);
}

std::vector<std::string> Mailbox::StuckNotices(uint32_t context) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = stuck_.find(context);
  return it == stuck_.end() ? std::vector<std::string>{} : it->second;
}

}  // namespace ringtrain::coll
