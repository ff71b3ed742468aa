// `ringtrain ps --listen HOST:PORT --shard i/k`: one parameter-server shard (parameter_server/).
// Serves until SIGTERM or SIGINT, then closes every connection and exits 0. The shared token
// comes from --token-file or RINGTRAIN_TOKEN, never from the command line.
#include <signal.h>

#include <cstdio>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "core/threads.h"
#include "parameter_server/auth.h"
#include "parameter_server/server.h"

namespace ringtrain::cli {

namespace {
struct PsArgs {
  std::string listen = "127.0.0.1:0";
  std::string shard = "0/1";
  std::string token_file;
  double max_frame_mb = 64;
  std::string step_log;
  int threads = 1;
};

Status RunPs(const PsArgs& a) {
  ps::PsServerOptions o;
  RT_ASSIGN_OR_RETURN(auto hp, ps::SplitHostPort(a.listen, "--listen"));
  o.host = hp.first;
  o.port = hp.second;
  const size_t slash = a.shard.find('/');
  try {
    if (slash == std::string::npos) throw std::invalid_argument("no slash");
    size_t used = 0;
    o.shard = std::stoi(a.shard.substr(0, slash), &used);
    if (used != slash) throw std::invalid_argument("junk");
    o.shards = std::stoi(a.shard.substr(slash + 1), &used);
    if (used != a.shard.size() - slash - 1) throw std::invalid_argument("junk");
  } catch (const std::exception&) {
    return InvalidArgument("--shard " + a.shard + ": expected i/k, e.g. 0/2");
  }
  if (!(a.max_frame_mb >= 0.01 && a.max_frame_mb <= 4096)) return InvalidArgument("--max-frame-mb must be in [0.01, 4096]");
  o.limits.max_payload_bytes = static_cast<uint64_t>(a.max_frame_mb * (1 << 20));
  o.step_log = a.step_log;
  RT_ASSIGN_OR_RETURN(o.token, ps::LoadToken(a.token_file));
  SetThreadBudget(a.threads, 1);
  const sigset_t set = BlockStopSignals();
  RT_ASSIGN_OR_RETURN(std::unique_ptr<ps::PsServer> server, ps::PsServer::Start(o));
  std::printf("ps shard %d/%d: listening on %s (frames up to %.3g MB, %d thread(s))\n", o.shard, o.shards,
              server->address().c_str(), a.max_frame_mb, a.threads);
  std::fflush(stdout);
  const int sig = WaitForStopSignal(set);
  std::printf("ps shard %d/%d: stopping on %s\n", o.shard, o.shards, sig == SIGTERM ? "SIGTERM" : "SIGINT");
  std::fflush(stdout);
  server->Stop();
  return Status::Ok();
}
}  // namespace

void AddPs(CLI::App& app, Action& action) {
  auto args = std::make_shared<PsArgs>();
  CLI::App* cmd = app.add_subcommand("ps", "run one parameter-server shard: ps --listen HOST:PORT --shard i/k");
  cmd->add_option("--listen", args->listen, "address to listen on (default 127.0.0.1:0, any free port)");
  cmd->add_option("--shard", args->shard, "this server's part of the parameters: i/k (default 0/1)");
  cmd->add_option("--token-file", args->token_file, "file holding the shared token (default: RINGTRAIN_TOKEN)");
  cmd->add_option("--max-frame-mb", args->max_frame_mb, "largest frame payload accepted, MB (default 64)");
  cmd->add_option("--step-log", args->step_log, "append a JSON line per answered pull (worker, step, applied, slowest)");
  cmd->add_option("--threads", args->threads, "threads for the optimizer update (default 1)");
  cmd->callback([&action, args]() { action = [args]() { return RunPs(*args); }; });
}

}  // namespace ringtrain::cli
