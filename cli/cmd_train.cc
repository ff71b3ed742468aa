// `ringtrain train [--config F.yaml] [--set key=value ...] [--run-dir DIR]`
#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <cstdio>
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
  std::string resume;
  std::string init_from;
  bool help_config = false;
};

// Prints every config key with its type, default, range or choices, and meaning.
void PrintConfigSchema() {
  static const char* kTypes[] = {"int", "float", "bool", "string"};
  for (const ConfigKey& k : ConfigSchema()) {
    std::string range;
    if (!k.choices.empty()) {
      for (const auto& c : k.choices) range += (range.empty() ? "" : "|") + c;
    } else if (k.type == ConfigType::kInt || k.type == ConfigType::kFloat) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "[%g, %g]", k.min, k.max);
      range = buf;
    }
    std::printf("%-26s %-6s default %-10s %-22s %s\n", k.key.c_str(), kTypes[static_cast<int>(k.type)],
                k.default_value.empty() ? "\"\"" : k.default_value.c_str(), range.c_str(), k.help.c_str());
  }
}

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
  cmd->add_option("--resume", args->resume,
                  "auto (the newest usable checkpoint of the run directory, else start fresh) or a checkpoint directory");
  cmd->add_option("--init-from", args->init_from, "initial parameters from a safetensors file (GPT-2 names for GPT)");
  cmd->add_flag("--help-config", args->help_config, "list every config key with its default and range, then exit");
  cmd->callback([&action, args]() {
    action = [args]() -> Status {
      if (args->help_config) {
        PrintConfigSchema();
        return Status::Ok();
      }
      RT_ASSIGN_OR_RETURN(Config config, Config::Load(args->config, args->sets));
      RT_ASSIGN_OR_RETURN(Distributed dist, SetUpDistributed(config));
      TrainOptions opts;
      opts.comm = dist.comm.get();
      opts.local_size = dist.launch.local_size;
      opts.local_rank = dist.launch.local_rank;
      // Rank 0 prints and writes the run directory; the other ranks only train (and write their
      // checkpoint shards into it: every rank uses rank 0's name for it).
      const bool lead = dist.launch.rank == 0;
      opts.print = lead;
      std::string run_dir = args->run_dir.empty() ? DefaultRunDir(config.Str("name")) : args->run_dir;
      if (dist.comm && args->run_dir.empty()) {
        std::vector<int32_t> words(256, 0);
        std::memcpy(words.data(), run_dir.data(), std::min<size_t>(run_dir.size(), 1020));
        RT_RETURN_IF_ERROR(dist.comm->Broadcast(words.data(), 256, coll::DataType::kI32, 0));
        run_dir = reinterpret_cast<const char*>(words.data());
      }
      if (lead) opts.run_dir = run_dir;
      opts.checkpoint_root = config.Str("checkpoint.dir").empty() ? run_dir + "/checkpoints" : config.Str("checkpoint.dir");
      opts.resume = args->resume;
      opts.init_from = args->init_from;
      opts.ps_hosts = dist.launch.ps_hosts;
      opts.job_id = (dist.launch.job_id.empty() ? "" : dist.launch.job_id + ":") + run_dir;
      if (!opts.resume.empty() && opts.resume != "auto" && opts.resume.find('/') == std::string::npos &&
          !std::filesystem::exists(opts.resume))
        return InvalidArgument("--resume " + opts.resume + ": use auto or a checkpoint directory");
      InstallPreemptionHandlers();
      RT_ASSIGN_OR_RETURN(std::unique_ptr<Trainer> trainer, Trainer::Create(config, opts));
      RT_ASSIGN_OR_RETURN(TrainSummary s, trainer->Run());
      (void)s;
      return Status::Ok();
    };
  });
}

}  // namespace ringtrain::cli
