// RunRanks(n, fn): runs fn(comm) on n threads, one in-process rank each (collectives/local), and
// returns each rank's Status. The harness for collectives, sync engines and tensor parallelism.
#pragma once

#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "collectives/communicator.h"
#include "collectives/local/local_transport.h"

namespace ringtrain::testing {

inline std::vector<Status> RunRanks(int n, const std::function<Status(coll::Communicator&)>& fn,
                                    coll::CommOptions opts = {},
                                    std::shared_ptr<coll::LocalWorld> world = nullptr) {
  if (!world) world = coll::LocalWorld::Create(n);
  std::vector<Status> out(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      coll::Communicator comm(world->Rank(r), opts);
      out[r] = fn(comm);
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

}  // namespace ringtrain::testing
