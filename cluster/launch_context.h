// Where this process sits in a job: rank, world size, local rank and the rendezvous address,
// read from the launcher's environment. The only place that reads these variables.
//   Open MPI:  OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK / _LOCAL_SIZE
//   torchrun-style (and `ringtrain launch`): RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
//     MASTER_ADDR, MASTER_PORT
//   Slurm job step (srun): SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_STEP_TASKS_PER_NODE,
//     SLURM_NODEID, SLURM_JOB_NODELIST, SLURM_JOB_ID; the rendezvous is the first host of the
//     node list (MASTER_ADDR overrides) at MASTER_PORT or a port derived from the job id.
//   nothing: one process.
//   ringtrain launch --ps K also sets RINGTRAIN_PS_HOSTS and RINGTRAIN_JOB_ID.
// Precedence: Open MPI, then RANK/WORLD_SIZE, then Slurm. A Slurm batch script itself (no
// SLURM_STEP_ID) is one process: its tasks are started by srun.
#pragma once

#include <string>
#include <vector>

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
  std::string job_id;  // Slurm job id (or RINGTRAIN_JOB_ID from ringtrain launch), when there is one
  // Parameter servers started for this job (RINGTRAIN_PS_HOSTS, set by `ringtrain launch --ps K`).
  std::string ps_hosts;
};

// Partial or contradictory variables (RANK without WORLD_SIZE, RANK >= WORLD_SIZE, OMPI and RANK
// disagreeing, SLURM_PROCID without SLURM_NTASKS) are an error naming the variables.
StatusOr<LaunchContext> DetectLaunch();

// Expands a Slurm host list: "node[01-04,07],gpu3" -> node01 node02 node03 node04 node07 gpu3.
// Zero padding of range bounds is kept; several bracket groups in one name multiply out.
StatusOr<std::vector<std::string>> ExpandHostList(const std::string& list);

// Tasks on node `node_id` from a Slurm tasks-per-node list such as "2(x3),1".
StatusOr<int> TasksOnNode(const std::string& tasks_per_node, int node_id);

}  // namespace ringtrain
