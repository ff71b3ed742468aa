#include "collectives/local/local_transport.h"

#include <cstring>

namespace ringtrain::coll {

class LocalTransport : public Transport {
 public:
  LocalTransport(std::shared_ptr<LocalWorld> w, int rank) : w_(std::move(w)), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return w_->size_; }

  Status Send(int peer, const FrameHeader& h, const void* payload) override {
    if (peer < 0 || peer >= w_->size_) return Internal("send to rank " + std::to_string(peer) + " outside the world");
    if (w_->IsDead(rank_)) return Unavailable("rank " + std::to_string(rank_) + " is dead");
    if (w_->IsDead(peer)) return Unavailable(PeerName(peer) + " died (disconnected)");
    auto& box = *w_->inbox_[peer];
    {
      std::lock_guard<std::mutex> lock(box.mu);
      if (h.flags & kFrameAbort) {
        box.aborts.emplace(h.context, std::string(static_cast<const char*>(payload), h.bytes));
      } else if (h.flags & kFrameStuck) {
        box.stuck[h.context].emplace_back(static_cast<const char*>(payload), h.bytes);
      } else {
        LocalWorld::Frame f{h, std::vector<uint8_t>(h.bytes)};
        if (h.bytes) std::memcpy(f.payload.data(), payload, h.bytes);
        box.frames[{rank_, h.context}].push_back(std::move(f));
      }
    }
    box.cv.notify_all();
    return Status::Ok();
  }

  Status Recv(int peer, uint32_t context, FrameHeader* h, void* buf, size_t cap,
              Clock::time_point deadline) override {
    auto& box = *w_->inbox_[rank_];
    std::unique_lock<std::mutex> lock(box.mu);
    for (;;) {
      auto it = box.frames.find({peer, context});
      if (it != box.frames.end() && !it->second.empty()) {
        LocalWorld::Frame f = std::move(it->second.front());
        it->second.pop_front();
        *h = f.h;
        if (f.h.bytes > cap) return Internal("frame of " + std::to_string(f.h.bytes) + " bytes for a " +
                                             std::to_string(cap) + "-byte buffer");
        if (f.h.bytes) std::memcpy(buf, f.payload.data(), f.h.bytes);
        return Status::Ok();
      }
      auto ab = box.aborts.find(context);
      if (ab != box.aborts.end()) return Aborted(ab->second);
      if (box.stuck.count(context)) return DeadlineExceeded("a peer reported a stuck collective");
      if (w_->IsDead(peer)) return Unavailable(PeerName(peer) + " died (disconnected)");
      if (box.cv.wait_until(lock, deadline) == std::cv_status::timeout && Clock::now() >= deadline)
        return DeadlineExceeded("timed out waiting for " + PeerName(peer));
    }
  }

  std::vector<std::string> StuckNotices(uint32_t context) override {
    auto& box = *w_->inbox_[rank_];
    std::lock_guard<std::mutex> lock(box.mu);
    auto it = box.stuck.find(context);
    return it == box.stuck.end() ? std::vector<std::string>{} : it->second;
  }

 private:
  std::shared_ptr<LocalWorld> w_;
  int rank_;
};

LocalWorld::LocalWorld(int size) : size_(size), dead_(new std::atomic<bool>[size]) {
  for (int i = 0; i < size; ++i) {
    inbox_.push_back(std::make_unique<Inbox>());
    dead_[i] = false;
  }
}

std::shared_ptr<LocalWorld> LocalWorld::Create(int size) { return std::shared_ptr<LocalWorld>(new LocalWorld(size)); }

std::shared_ptr<Transport> LocalWorld::Rank(int r) { return std::make_shared<LocalTransport>(shared_from_this(), r); }

void LocalWorld::Kill(int r) {
  dead_[r] = true;
  for (auto& box : inbox_) {
    { std::lock_guard<std::mutex> lock(box->mu); }
    box->cv.notify_all();
  }
}

}  // namespace ringtrain::coll
