// In-process transport: one thread per rank, frames copied into per-destination mailboxes. For
// tests (the RunRanks harness) and for anything that wants several ranks in one process.
// Kill(rank) simulates a process dying: its peers' receives fail as they would on a closed socket.
#pragma once

#include <atomic>
#include <memory>
#include <vector>

#include "collectives/mailbox.h"
#include "collectives/transport.h"

namespace ringtrain::coll {

class LocalWorld : public std::enable_shared_from_this<LocalWorld> {
 public:
  static std::shared_ptr<LocalWorld> Create(int size);
  int size() const { return size_; }
  // The transport of rank r; all of them share this world.
  std::shared_ptr<Transport> Rank(int r);
  // Rank r is dead from now on: frames to it fail, receives from it fail with Unavailable.
  void Kill(int r);
  bool IsDead(int r) const { return dead_[r].load(); }

 private:
  friend class LocalTransport;
  explicit LocalWorld(int size);
  int size_;
  std::vector<std::unique_ptr<Mailbox>> inbox_;
  std::unique_ptr<std::atomic<bool>[]> dead_;
};

}  // namespace ringtrain::coll
