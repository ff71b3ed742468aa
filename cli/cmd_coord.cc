// The coordinator's commands (issue 9): `ringtrain coordinator`, `ringtrain worker` (the agent),
// and the clients `submit`, `jobs`, `job`, `cancel`, `logs`, `workers` (tables, or --json).
// The token comes from --token-file or RINGTRAIN_TOKEN; the coordinator's address from
// --coordinator or RINGTRAIN_COORDINATOR (default 127.0.0.1:7070).
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

#include <yaml-cpp/yaml.h>

#include "cli/commands.h"
#include "coordinator/agent.h"
#include "coordinator/coordinator.h"
#include "parameter_server/auth.h"

namespace ringtrain::cli {

namespace {
using nlohmann::json;

struct CoordArgs {
  std::string listen = "127.0.0.1:7070";
  std::string state;
  std::string token_file;
  double heartbeat_timeout = 10;
  std::string coordinator;
  int slots = 1;
  std::string addr = "127.0.0.1";
  std::string id;
  std::string gpus;
  double connect_timeout = 60;
  std::string spec;
  int64_t job = 0;
  bool json_out = false;
  bool follow = false;
};

std::string CoordinatorAddress(const CoordArgs& a) {
  if (!a.coordinator.empty()) return a.coordinator;
  if (const char* e = std::getenv("RINGTRAIN_COORDINATOR")) return e;
  return "127.0.0.1:7070";
}

Status RunCoordinator(const CoordArgs& a) {
  coord::CoordinatorOptions o;
  RT_ASSIGN_OR_RETURN(auto hp, ps::SplitHostPort(a.listen, "--listen"));
  o.host = hp.first;
  o.port = hp.second;
  o.state = a.state;
  o.heartbeat_timeout_s = a.heartbeat_timeout;
  RT_ASSIGN_OR_RETURN(o.token, ps::LoadToken(a.token_file));
  const sigset_t set = BlockStopSignals();
  signal(SIGPIPE, SIG_IGN);
  RT_ASSIGN_OR_RETURN(auto c, coord::Coordinator::Start(o));
  std::printf("coordinator: listening on %s:%d, state %s\n", o.host.c_str(), c->port(), o.state.c_str());
  std::fflush(stdout);
  WaitForStopSignal(set);
  c->Stop();
  return Status::Ok();
}

// A job spec file (YAML) as the JSON the coordinator takes; `config` names a training config
// file, whose text is sent along; relative paths (config, run_dir) are relative to the spec file.
StatusOr<json> ReadSpec(const std::string& path) {
  YAML::Node n;
  try {
    n = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    return InvalidArgument("job spec " + path + ": " + e.what());
  }
  if (!n.IsMap()) return InvalidArgument("job spec " + path + ": not a mapping of keys");
  json spec = json::object();
  for (const auto& kv : n) {
    const std::string k = kv.first.as<std::string>();
    const YAML::Node& v = kv.second;
    if (v.IsSequence()) {
      json arr = json::array();
      for (const auto& x : v) arr.push_back(x.as<std::string>());
      spec[k] = arr;
    } else if (v.IsScalar()) {
      const std::string s = v.as<std::string>();
      char* end = nullptr;
      const long long i = std::strtoll(s.c_str(), &end, 10);
      if (!s.empty() && *end == '\0') spec[k] = i;
      else spec[k] = s;
    } else {
      return InvalidArgument("job spec " + path + ": key " + k + " must be a value or a list");
    }
  }
  for (const char* k : {"run_dir", "config", "name"})
    if (spec.contains(k) && !spec[k].is_string()) spec[k] = spec[k].dump();  // a number-like path is still a path
  if (spec.contains("run_dir")) {
    std::filesystem::path rd = spec["run_dir"].get<std::string>();
    if (rd.is_relative()) rd = std::filesystem::absolute(std::filesystem::path(path).parent_path() / rd);
    spec["run_dir"] = rd.lexically_normal().string();
  }
  if (spec.contains("config")) {
    std::filesystem::path cp = spec["config"].get<std::string>();
    if (cp.is_relative()) cp = std::filesystem::path(path).parent_path() / cp;
    std::ifstream f(cp);
    if (!f) return InvalidArgument("job spec " + path + ": config file " + cp.string() + " cannot be read");
    std::ostringstream ss;
    ss << f.rdbuf();
    spec["config"] = ss.str();
  }
  return spec;
}

Status Client(const CoordArgs& a, const std::string& op) {
  RT_ASSIGN_OR_RETURN(std::string token, ps::LoadToken(a.token_file));
  const std::string where = CoordinatorAddress(a);
  json req = {{"op", op}};
  if (op == "submit") {
    RT_ASSIGN_OR_RETURN(req["spec"], ReadSpec(a.spec));
  } else if (op == "job" || op == "cancel" || op == "logs") {
    req["id"] = a.job;
  }
  if (op == "logs") {
    int64_t off = 0;
    for (;;) {
      req["offset"] = off;
      std::string data;
      RT_ASSIGN_OR_RETURN(json r, coord::CoordinatorRequest(where, token, req, &data));
      std::fwrite(data.data(), 1, data.size(), stdout);
      std::fflush(stdout);
      off = r["offset"].get<int64_t>();
      const std::string st = r["state"];
      const bool done = st == "succeeded" || st == "failed" || st == "cancelled";
      if (!a.follow || (done && data.empty())) return Status::Ok();
      if (data.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
  }
  RT_ASSIGN_OR_RETURN(json r, coord::CoordinatorRequest(where, token, req));
  if (a.json_out) {
    std::printf("%s\n", r.dump().c_str());
    return Status::Ok();
  }
  if (op == "submit") {
    std::printf("submitted job %lld\n", (long long)r["id"].get<int64_t>());
  } else if (op == "jobs") {
    std::printf("%-5s %-20s %-10s %5s %8s %8s  %s\n", "ID", "NAME", "STATE", "PROCS", "PRIORITY", "RESTARTS", "REASON");
    for (const auto& j : r["jobs"])
      std::printf("%-5lld %-20s %-10s %5d %8d %8d  %s\n", (long long)j["id"].get<int64_t>(), j["name"].get<std::string>().c_str(),
                  j["state"].get<std::string>().c_str(), j["world"].get<int>(), j["priority"].get<int>(),
                  j["restarts"].get<int>(), j["reason"].get<std::string>().c_str());
  } else if (op == "workers") {
    std::printf("%-28s %-16s %5s %5s %-6s %s\n", "ID", "ADDRESS", "SLOTS", "USED", "STATE", "GPUS");
    for (const auto& w : r["workers"]) {
      std::string gpus;
      for (const auto& g : w.value("gpus", json::array())) {
        if (!gpus.empty()) gpus += ",";
        gpus += g.get<std::string>();
      }
      std::printf("%-28s %-16s %5d %5d %-6s %s\n", w["id"].get<std::string>().c_str(), w["addr"].get<std::string>().c_str(),
                  w["slots"].get<int>(), w["used"].get<int>(), w["alive"].get<bool>() ? "alive" : "lost",
                  gpus.empty() ? "-" : gpus.c_str());
    }
  } else if (op == "cancel") {
    std::printf("cancelled job %lld\n", (long long)a.job);
  } else {  // job
    const int k = r.value("ps_servers", 0);
    std::printf("job %lld (%s): %s, attempt %d, %d process(es)%s, %d restart(s) of %d\n", (long long)a.job,
                r["name"].get<std::string>().c_str(), r["state"].get<std::string>().c_str(), r.value("attempt", 0),
                r.value("world", 0), k ? (" and " + std::to_string(k) + " parameter server(s)").c_str() : "",
                r.value("restarts", 0), r.value("max_restarts", 0));
    std::printf("run directory: %s\n", r.value("run_dir", std::string()).c_str());
    for (const auto& p : r["placements"])
      std::printf("  %s on %s: %s%s\n",
                  (p.contains("ps") ? "ps " + std::to_string(p["ps"].get<int>()) + " (" + p["listen"].get<std::string>() + ")"
                                    : "rank " + std::to_string(p["rank"].get<int>())).c_str(),
                  p["worker"].get<std::string>().c_str(),
                  p["state"].get<std::string>().c_str(),
                  p["status"].is_null() ? "" : (" (status " + std::to_string(p["status"].get<int>()) + ")").c_str());
    for (const auto& e : r["events"])
      std::printf("  event %s: %s\n", e["kind"].get<std::string>().c_str(), e["reason"].get<std::string>().c_str());
  }
  return Status::Ok();
}
}  // namespace

void AddCoordinator(CLI::App& app, Action& action) {
  auto a = std::make_shared<CoordArgs>();
  CLI::App* c = app.add_subcommand("coordinator", "run the job coordinator: coordinator --listen HOST:PORT --state FILE.db");
  c->add_option("--listen", a->listen, "address to listen on (default 127.0.0.1:7070)");
  c->add_option("--state", a->state, "SQLite state file (created if missing)")->required();
  c->add_option("--token-file", a->token_file, "file holding the shared token (default: RINGTRAIN_TOKEN)");
  c->add_option("--heartbeat-timeout", a->heartbeat_timeout, "seconds without a heartbeat before an agent is lost (default 10)");
  c->callback([&action, a]() { action = [a]() { return RunCoordinator(*a); }; });

  CLI::App* w = app.add_subcommand("worker", "run a worker agent: worker --coordinator HOST:PORT --slots N");
  w->add_option("--coordinator", a->coordinator, "coordinator HOST:PORT (default RINGTRAIN_COORDINATOR or 127.0.0.1:7070)");
  w->add_option("--slots", a->slots, "processes this host runs at once (default 1)");
  w->add_option("--addr", a->addr, "address other hosts reach this one at (default 127.0.0.1)");
  w->add_option("--id", a->id, "agent id (default hostname:pid)");
  w->add_option("--gpus", a->gpus, "GPU ids, comma-separated (e.g. 0,1,2,3): one process per GPU, slots = their number");
  w->add_option("--connect-timeout", a->connect_timeout, "seconds to wait for the coordinator at start (default 60)");
  w->add_option("--token-file", a->token_file, "file holding the shared token (default: RINGTRAIN_TOKEN)");
  w->callback([&action, a, w]() {
    action = [a, w]() -> Status {
      coord::AgentOptions o;
      o.coordinator = CoordinatorAddress(*a);
      o.slots = a->slots;
      o.connect_timeout_s = a->connect_timeout;
      std::stringstream gs(a->gpus);
      for (std::string g; std::getline(gs, g, ',');) {
        if (g.empty() || g.find_first_not_of("0123456789") != std::string::npos)
          return InvalidArgument("--gpus " + a->gpus + ": expected device numbers separated by commas, e.g. 0,1,2,3");
        o.gpus.push_back(g);
      }
      if (!o.gpus.empty() && w->get_option("--slots")->count() == 0) o.slots = static_cast<int>(o.gpus.size());
      o.addr = a->addr;
      o.id = a->id;
      RT_ASSIGN_OR_RETURN(o.token, ps::LoadToken(a->token_file));
      return coord::RunAgent(o);
    };
  });

  struct ClientCmd {
    const char* name;
    const char* help;
  };
  for (const ClientCmd& cc : {ClientCmd{"submit", "submit a job: submit job.yaml"}, ClientCmd{"jobs", "list the jobs"},
                              ClientCmd{"job", "one job, its placements and events: job ID"},
                              ClientCmd{"cancel", "cancel a job: cancel ID"}, ClientCmd{"logs", "a job's output: logs ID [-f]"},
                              ClientCmd{"workers", "list the worker agents"}}) {
    CLI::App* s = app.add_subcommand(cc.name, cc.help);
    const std::string op = cc.name;
    if (op == "submit") s->add_option("spec", a->spec, "job spec (YAML)")->required();
    if (op == "job" || op == "cancel" || op == "logs") s->add_option("id", a->job, "job id")->required();
    if (op == "logs") s->add_flag("-f,--follow", a->follow, "follow until the job ends");
    s->add_option("--coordinator", a->coordinator, "coordinator HOST:PORT (default RINGTRAIN_COORDINATOR or 127.0.0.1:7070)");
    s->add_option("--token-file", a->token_file, "file holding the shared token (default: RINGTRAIN_TOKEN)");
    s->add_flag("--json", a->json_out, "JSON instead of a table");
    s->callback([&action, a, op]() { action = [a, op]() { return Client(*a, op); }; });
  }
}

}  // namespace ringtrain::cli
