// Subcommands of the ringtrain binary; each registers itself on the CLI11 app and returns the
// process exit code through the Status it produces.
#pragma once

#include <CLI/CLI.hpp>
#include <signal.h>

#include <functional>
#include <memory>
#include <string>

#include "cluster/launch_context.h"
#include "collectives/communicator.h"
#include "core/config.h"
#include "core/status.h"

namespace ringtrain::cli {

// A registered subcommand runs this when selected.
using Action = std::function<Status()>;

void AddTrain(CLI::App& app, Action& action);
void AddGenerate(CLI::App& app, Action& action);
void AddBench(CLI::App& app, Action& action);
void AddEval(CLI::App& app, Action& action);
// `bench allreduce`, registered under the bench command by AddBench.
void AddBenchAllreduce(CLI::App* bench, Action& action);
void AddLaunch(CLI::App& app, Action& action);
void AddExport(CLI::App& app, Action& action);
void AddBenchCheckpoint(CLI::App* bench, Action& action);
void AddPs(CLI::App& app, Action& action);
void AddBenchPs(CLI::App* bench, Action& action);
// `bench scaling` (cmd_bench_scaling.cc).
void AddBenchScaling(CLI::App* bench, Action& action);
// coordinator, worker, submit, jobs, job, cancel, logs, workers
void AddCoordinator(CLI::App& app, Action& action);

// The data-parallel world of a train or bench run: the launch context and, when the job has more
// than one process (or the config names a transport), the world communicator built from the dist.*
// config keys. Sets ErrorTag() so error lines name this rank.
struct Distributed {
  LaunchContext launch;
  std::unique_ptr<coll::Communicator> comm;  // null: one process
};
StatusOr<Distributed> SetUpDistributed(const Config& config);
// Daemons (ps, coordinator): BlockStopSignals() before starting any thread, so every thread
// inherits the mask; WaitForStopSignal() then returns the SIGTERM or SIGINT that arrived.
sigset_t BlockStopSignals();
int WaitForStopSignal(const sigset_t& set);
// Prefix of the error line main() prints ("" for one process, "rank 1 of 4: " in a job).
std::string& ErrorTag();

}  // namespace ringtrain::cli
