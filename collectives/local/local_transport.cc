#include "collectives/local/local_transport.h"

#include <cstring>

namespace ringtrain::coll {

class LocalTransport : public Transport {
 public:
  LocalTransport(std::shared_ptr<LocalWorld> w, int rank) : w_(std::move(w)), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return w_->size_; }
  const char* kind() const override { return "local"; }

  Status Send(int peer, const FrameHeader& h, const void* payload) override {
    if (peer < 0 || peer >= w_->size_) return Internal("send to rank " + std::to_string(peer) + " outside the world");
    if (w_->IsDead(rank_)) return Unavailable("rank " + std::to_string(rank_) + " is dead");
    if (w_->IsDead(peer)) return Unavailable(PeerName(peer) + " died (disconnected)");
    std::vector<uint8_t> copy(h.bytes);
    if (h.bytes) std::memcpy(copy.data(), payload, h.bytes);
    w_->inbox_[peer]->Deliver(rank_, h, std::move(copy));
    return Status::Ok();
  }

  Status Recv(int peer, uint32_t context, FrameHeader* h, void* buf, size_t cap,
              Clock::time_point deadline) override {
    return w_->inbox_[rank_]->Take(peer, context, h, buf, cap, deadline, [this](int p) { return PeerName(p); });
  }

  std::vector<std::string> StuckNotices(uint32_t context) override { return w_->inbox_[rank_]->StuckNotices(context); }
  Status PendingAbort(uint32_t context, Clock::time_point until) override {
    return w_->inbox_[rank_]->PendingAbort(context, until);
  }

 private:
  std::shared_ptr<LocalWorld> w_;
  int rank_;
};

LocalWorld::LocalWorld(int size) : size_(size), dead_(new std::atomic<bool>[size]) {
  for (int i = 0; i < size; ++i) {
    inbox_.push_back(std::make_unique<Mailbox>());
    dead_[i] = false;
  }
}

std::shared_ptr<LocalWorld> LocalWorld::Create(int size) { return std::shared_ptr<LocalWorld>(new LocalWorld(size)); }

std::shared_ptr<Transport> LocalWorld::Rank(int r) { return std::make_shared<LocalTransport>(shared_from_this(), r); }

void LocalWorld::Kill(int r) {
  dead_[r] = true;
  for (int i = 0; i < size_; ++i)
    if (i != r) inbox_[i]->MarkDead(r, "disconnected");
}

}  // namespace ringtrain::coll
