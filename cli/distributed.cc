// The data-parallel world of `train` and `bench train`, from the launch context and dist.* keys;
// the stop-signal helpers of the long-running daemons (ps, coordinator).
#include "cli/commands.h"
#include "cluster/world.h"

namespace ringtrain::cli {

std::string& ErrorTag() {
  static std::string tag;
  return tag;
}

StatusOr<Distributed> SetUpDistributed(const Config& config) {
  Distributed d;
  RT_ASSIGN_OR_RETURN(d.launch, DetectLaunch());
  const std::string& transport = config.Str("dist.transport");
  if (d.launch.size == 1 && transport == "auto") return d;
  ErrorTag() = "rank " + std::to_string(d.launch.rank) + " of " + std::to_string(d.launch.size) + ": ";
  WorldOptions wo;
  wo.transport = transport;
  wo.tcp_bind = config.Str("dist.bind");
  wo.comm.deadline_s = config.Float("dist.deadline_s");
  wo.connect_timeout_s = wo.comm.deadline_s;
  RT_ASSIGN_OR_RETURN(wo.comm.algorithm, coll::ParseAlgorithm(config.Str("dist.algorithm")));
  auto comm = MakeWorld(d.launch, wo);
  if (!comm.ok())
    return comm.status().WithContext("setting up " + std::to_string(d.launch.size) + " ranks (" + d.launch.source + ")");
  d.comm = std::move(comm.value());
  return d;
}

sigset_t BlockStopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

int WaitForStopSignal(const sigset_t& set) {
  int sig = 0;
  sigwait(&set, &sig);
  return sig;
}

}  // namespace ringtrain::cli
