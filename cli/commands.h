// Subcommands of the ringtrain binary; each registers itself on the CLI11 app and returns the
// process exit code through the Status it produces.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

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

}  // namespace ringtrain::cli
