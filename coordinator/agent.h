// The worker agent (`ringtrain worker`, issue 9): registers this host's slots with the
// coordinator, heartbeats, starts the training processes it is assigned (`ringtrain train` with
// RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT set), streams their
// output back, reports their exits, and stops them on request. A job's parameter servers are
// processes too (`ringtrain ps`), each taking a slot. With --gpus each process gets its own
// device (CUDA_VISIBLE_DEVICES). Its processes die with it (PR_SET_PDEATHSIG). When the
// coordinator goes away the agent keeps its processes running and reconnects, re-registering with
// the processes it runs and the exits it saw meanwhile.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"

namespace ringtrain::coord {

struct AgentOptions {
  std::string coordinator;  // HOST:PORT
  std::string token;
  int slots = 1;
  std::string addr = "127.0.0.1";  // where this host's rank 0 is reachable (rendezvous)
  std::string id;                  // default: hostname:pid
  std::vector<std::string> gpus;   // device ids; each process gets one as CUDA_VISIBLE_DEVICES
  double heartbeat_s = 1;
  double connect_timeout_s = 60;   // how long to wait for the coordinator at start
};

// Runs until SIGTERM or SIGINT (then stops its processes and exits 0).
Status RunAgent(const AgentOptions& o);

}  // namespace ringtrain::coord
