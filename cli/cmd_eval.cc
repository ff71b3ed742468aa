// `ringtrain eval --model DIR [--set data.key=value ...] [--json]`: loss and metrics of a saved
// model on the test split of its data (or of data given with --set).
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "checkpoint/model_file.h"
#include "cli/commands.h"
#include "core/threads.h"
#include "worker/task.h"

namespace ringtrain::cli {

namespace {
struct EvalArgs {
  std::string model;
  std::vector<std::string> sets;
  bool json = false;
};

Status Eval(const EvalArgs& a) {
  RT_ASSIGN_OR_RETURN(SavedModel saved, LoadModel(a.model));
  RT_ASSIGN_OR_RETURN(Config config, Config::FromJson(saved.meta["config"]));
  for (const auto& s : a.sets) {
    if (s.rfind("data.", 0) != 0 && s.rfind("train.batch_size=", 0) != 0 && s.rfind("train.eval_batches=", 0) != 0 &&
        s.rfind("threads=", 0) != 0)
      return InvalidArgument("--set " + s + ": eval takes data.*, train.batch_size, train.eval_batches and threads");
    RT_RETURN_IF_ERROR(config.SetOverride(s));
  }
  SetThreadBudget(static_cast<int>(config.Int("threads")));
  RT_ASSIGN_OR_RETURN(std::unique_ptr<Task> task, MakeTask(config, &saved));
  RT_ASSIGN_OR_RETURN(EvalResult r, task->Evaluate());
  if (a.json) {
    nlohmann::json j = r.metrics;
    j["loss"] = r.loss;
    j["data"] = task->DataDescription();
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("data: %s\nloss %.4f\n%s", task->DataDescription().c_str(), r.loss, r.report.c_str());
  }
  return Status::Ok();
}
}  // namespace

void AddEval(CLI::App& app, Action& action) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand("eval", "loss and metrics of a trained model on its test split");
  cmd->add_option("--model", args->model, "model or run directory")->required();
  cmd->add_option("--set", args->sets, "other data: data.key=value (repeatable)");
  cmd->add_flag("--json", args->json, "print one JSON object");
  cmd->callback([&action, args]() { action = [args]() { return Eval(*args); }; });
}

}  // namespace ringtrain::cli
