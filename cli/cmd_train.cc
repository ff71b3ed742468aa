// `ringtrain train [--config F.yaml] [--set key=value ...] [--run-dir DIR]`
#include <chrono>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "worker/trainer.h"

namespace ringtrain::cli {

namespace {
struct TrainArgs {
  std::string config;
  std::vector<std::string> sets;
  std::string run_dir;
};

std::string DefaultRunDir(const std::string& name) {
  const std::time_t now = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", std::localtime(&now));
  return "runs/" + name + "-" + buf;
}
}  // namespace

void AddTrain(CLI::App& app, Action& action) {
  auto args = std::make_shared<TrainArgs>();
  CLI::App* cmd = app.add_subcommand("train", "train a model (with no config: the built-in default)");
  cmd->add_option("--config", args->config, "YAML config file");
  cmd->add_option("--set", args->sets, "override a config key: key=value (repeatable)")->allow_extra_args(false);
  cmd->add_option("--run-dir", args->run_dir, "output directory (default runs/<name>-<time>)");
  cmd->callback([&action, args]() {
    action = [args]() -> Status {
      RT_ASSIGN_OR_RETURN(Config config, Config::Load(args->config, args->sets));
      TrainOptions opts;
      opts.run_dir = args->run_dir.empty() ? DefaultRunDir(config.Str("name")) : args->run_dir;
      RT_ASSIGN_OR_RETURN(std::unique_ptr<Trainer> trainer, Trainer::Create(config, opts));
      RT_ASSIGN_OR_RETURN(TrainSummary s, trainer->Run());
      (void)s;
      return Status::Ok();
    };
  });
}

}  // namespace ringtrain::cli
