// Where this process sits in a job: rank, world size, local rank and the rendezvous address,
// read from the launcher's environment. The only place that reads these variables.
//   Open MPI:  OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK / _LOCAL_SIZE
//   torchrun-style (and `ringtrain launch`): RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
//   nothing: one process.
// Slurm detection arrives with the data-parallel issue.
#pragma once

#include <string>

#include "core/status.h"

namespace ringtrain {

struct LaunchContext {
  int rank = 0;
  int size = 1;
  int local_rank = 0;
  int local_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string source = "single process";  // which launcher the values came from
  bool under_mpirun = false;
};

// Partial or contradictory variables (RANK without WORLD_SIZE, RANK >= WORLD_SIZE, OMPI and RANK
// disagreeing) are an error naming the variables.
StatusOr<LaunchContext> DetectLaunch();

}  // namespace ringtrain
