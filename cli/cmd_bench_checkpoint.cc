// `ringtrain bench checkpoint [--size-mb 1024] [--dir D] [--json]`: writes and reads back one
// checkpoint of a synthetic model whose parameters plus AdamW moments total the given size,
// through the real SaveCheckpoint / LoadCheckpoint (CRC32C, fsync, rename), and prints MB/s.
// bench/checkpoint_io.sh puts these beside dd's fsync'ed sequential write in the same run.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "checkpoint/checkpoint.h"
#include "cli/commands.h"
#include "core/rng.h"

namespace ringtrain::cli {

namespace {
struct CkptArgs {
  double size_mb = 1024;
  std::string dir = "bench-checkpoint";
  bool json = false;
  bool keep = false;
};

Status Run(const CkptArgs& a) {
  if (a.size_mb <= 0) return InvalidArgument("--size-mb must be positive");
  // Parameters + m + v, fp32: size / 12 parameters, in 64 tensors.
  const size_t n = static_cast<size_t>(a.size_mb * (1 << 20) / 12);
  ParamArena<float> arena;
  const int tensors = 64;
  for (int i = 0; i < tensors; ++i) {
    std::string name = "t";
    name.append(std::to_string(i)).append(".weight");
    arena.layout.Add(name, {static_cast<int64_t>(n / tensors / 64), 64}, true, InitKind::kNormal);
  }
  arena.Allocate();
  arena.Initialize(7);
  OptimConfig oc;
  OptimState st;
  st.Allocate(oc, arena.layout.total());
  for (size_t i = 0; i < arena.layout.total(); ++i) {
    st.m.data()[i] = arena.params.data()[i] * 0.5f;
    st.v.data()[i] = arena.params.data()[i] * arena.params.data()[i];
  }
  CheckpointContent c;
  c.layout = &arena.layout;
  c.params = arena.params.data();
  c.states = {&st};
  c.has_m = c.has_v = true;
  CheckpointMeta meta;
  meta.step = 1;
  const double bytes = static_cast<double>(arena.layout.total()) * 12;
  std::error_code ec;
  std::filesystem::remove_all(a.dir, ec);
  using Clock = std::chrono::steady_clock;
  auto t0 = Clock::now();
  RT_RETURN_IF_ERROR(SaveCheckpoint(nullptr, a.dir, c, meta, {{0, arena.layout.total()}}, 1));
  const double save_s = std::chrono::duration<double>(Clock::now() - t0).count();
  arena.params.Zero();
  t0 = Clock::now();
  RT_RETURN_IF_ERROR(LoadCheckpoint(nullptr, a.dir, false, c).status());
  const double load_s = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!a.keep) std::filesystem::remove_all(a.dir, ec);
  const double mb = bytes / (1 << 20);
  if (a.json) {
    std::printf("%s\n", nlohmann::json{{"bytes", bytes}, {"save_s", save_s}, {"load_s", load_s},
                                       {"save_mb_per_s", mb / save_s}, {"load_mb_per_s", mb / load_s}}
                            .dump()
                            .c_str());
  } else {
    std::printf("bench checkpoint: %.0f MB (parameters + AdamW moments, %zu parameters) in %s\n", mb,
                arena.layout.total(), a.dir.c_str());
    std::printf("  save %.2f s = %.0f MB/s (write, fsync, rename)   load %.2f s = %.0f MB/s (read, CRC32C)\n",
                save_s, mb / save_s, load_s, mb / load_s);
  }
  return Status::Ok();
}
}  // namespace

void AddBenchCheckpoint(CLI::App* bench, Action& action) {
  auto args = std::make_shared<CkptArgs>();
  CLI::App* cmd = bench->add_subcommand("checkpoint", "time saving and loading one checkpoint");
  cmd->add_option("--size-mb", args->size_mb, "parameters + moments in MB (default 1024)");
  cmd->add_option("--dir", args->dir, "where to write it (default ./bench-checkpoint, removed after)");
  cmd->add_flag("--keep", args->keep, "leave the checkpoint on disk");
  cmd->add_flag("--json", args->json, "print one JSON object");
  cmd->callback([&action, args]() { action = [args]() { return Run(*args); }; });
}

}  // namespace ringtrain::cli
