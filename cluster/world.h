// The world communicator of this process, built from the launch context: shared memory when every
// rank is on this host (started over MPI or TCP), else the MPI transport under mpirun (when built
// with MPI), TCP with rendezvous at MASTER_ADDR:MASTER_PORT otherwise.
#pragma once

#include <memory>
#include <string>

#include "cluster/launch_context.h"
#include "collectives/communicator.h"

namespace ringtrain {

struct WorldOptions {
  std::string transport = "auto";  // auto | mpi | tcp | shm
  std::string tcp_bind;            // address or interface for TCP data connections
  double connect_timeout_s = 300;
  coll::CommOptions comm;
};

// Which transport "auto" picks for this context.
std::string ResolveTransport(const LaunchContext& c, const std::string& requested);

StatusOr<std::unique_ptr<coll::Communicator>> MakeWorld(const LaunchContext& c, const WorldOptions& o);

}  // namespace ringtrain
