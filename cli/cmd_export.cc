// `ringtrain export --checkpoint DIR --format safetensors --out model.safetensors`: a checkpoint's
// parameters as a safetensors file; GPT tensors get Hugging Face GPT-2 names and layouts.
#include <memory>
#include <string>

#include "checkpoint/safetensors.h"
#include "cli/commands.h"

namespace ringtrain::cli {

namespace {
struct ExportArgs {
  std::string checkpoint, format = "safetensors", out;
};
}  // namespace

void AddExport(CLI::App& app, Action& action) {
  auto a = std::make_shared<ExportArgs>();
  CLI::App* cmd = app.add_subcommand("export", "write a checkpoint's parameters in another format (safetensors)");
  cmd->add_option("--checkpoint", a->checkpoint, "checkpoint directory (runs/X/checkpoints/step-N)")->required();
  cmd->add_option("--format", a->format, "output format (safetensors)");
  cmd->add_option("--out", a->out, "output file")->required();
  cmd->callback([&action, a]() {
    action = [a]() -> Status {
      if (a->format != "safetensors") return InvalidArgument("--format " + a->format + ": only safetensors is supported");
      RT_RETURN_IF_ERROR(ExportCheckpointSafetensors(a->checkpoint, a->out));
      std::printf("exported %s to %s\n", a->checkpoint.c_str(), a->out.c_str());
      return Status::Ok();
    };
  });
}

}  // namespace ringtrain::cli
