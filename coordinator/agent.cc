#include "coordinator/agent.h"

#include <fcntl.h>
#include <filesystem>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "coord.pb.h"
#include "coordinator/coordinator.h"
#include "parameter_server/auth.h"
#include "parameter_server/wire.h"

namespace ringtrain::coord {

namespace {
using nlohmann::json;
namespace asio = boost::asio;

std::atomic<int> g_stop{0};
void OnStop(int sig) { g_stop.store(sig); }

struct Proc {
  pid_t pid = -1;
  int fd = -1;  // its stdout + stderr
  int64_t job = 0;
  int attempt = 0, rank = 0;
  std::string label;    // "rank 3", "ps 0": the prefix of its log lines
  std::string gpu;      // its CUDA_VISIBLE_DEVICES, when the agent has GPUs
  std::string pending;  // output not yet a whole line
};

// The connection to the coordinator; any thread may send.
struct Link {
  std::unique_ptr<asio::io_context> io;
  std::unique_ptr<ps::FrameConn> conn;
  std::mutex mu;
  bool up = false;
  Status Send(proto::CoordType t, const json& j, const std::string& data = "") {
    std::lock_guard<std::mutex> l(mu);
    if (!up) return Unavailable("not connected");
    proto::CoordMsg m;
    m.set_version(1);
    m.set_type(t);
    m.set_json(j.dump());
    m.set_data(data);
    Status s = conn->SendMessage(m, ps::After(10));
    if (!s.ok()) {
      up = false;
      conn->Shutdown();
    }
    return s;
  }
};

std::string SelfExe() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "/proc/self/exe";
  buf[n] = '\0';
  return buf;
}

// How logs name the process a START describes: "rank 3", or "ps 0" for a parameter server.
std::string Label(const json& s) {
  return s.contains("ps") ? "ps " + std::to_string(s["ps"].get<int>()) : "rank " + std::to_string(s["rank"].get<int>());
}

// Starts one process of a job: a training rank (`ringtrain train`), or one of its parameter
// servers (`ringtrain ps`) when the START names a shard. `token` is the pool's token; the job's
// servers and ranks share the token derived from it (JobToken).
StatusOr<Proc> Spawn(const json& s, const std::string& token, const std::string& gpu) {
  const std::string run_dir = s["run_dir"];
  const int64_t job = s["job"];
  const int attempt = s["attempt"], rank = s["rank"];
  const bool server = s.contains("ps");
  std::error_code ec;
  std::filesystem::create_directories(run_dir, ec);
  if (ec) return IoError("creating " + run_dir + ": " + ec.message());
  std::vector<std::string> args;
  std::vector<std::pair<std::string, std::string>> env;
  if (server) {
    args = {"ringtrain", "ps", "--listen", s["listen"].get<std::string>(), "--shard",
            std::to_string(s["ps"].get<int>()) + "/" + std::to_string(s["ps_count"].get<int>())};
    env.push_back({"RINGTRAIN_TOKEN", JobToken(token, job, attempt)});
  } else {
    // The validated config as JSON (which YAML reads), one file per rank: ranks on one host must
    // not race on a shared file.
    const std::string cfg = run_dir + "/.config-a" + std::to_string(attempt) + "-r" + std::to_string(rank) + ".yaml";
    {
      std::ofstream f(cfg);
      f << s["config"].dump(2) << "\n";
      if (!f) return IoError("writing " + cfg);
    }
    args = {"ringtrain", "train", "--config", cfg, "--run-dir", run_dir};
    if (s.value("resume", false)) {
      args.push_back("--resume");
      args.push_back("auto");
    }
    env = {{"RANK", std::to_string(rank)},
           {"WORLD_SIZE", std::to_string(s["world"].get<int>())},
           {"LOCAL_RANK", std::to_string(s["local_rank"].get<int>())},
           {"LOCAL_WORLD_SIZE", std::to_string(s["local_world"].get<int>())},
           {"MASTER_ADDR", s["master_addr"].get<std::string>()},
           {"MASTER_PORT", std::to_string(s["master_port"].get<int>())}};
    const std::string ps_hosts = s.value("ps_hosts", std::string());
    if (!ps_hosts.empty()) {
      env.push_back({"RINGTRAIN_PS_HOSTS", ps_hosts});
      env.push_back({"RINGTRAIN_TOKEN", JobToken(token, job, attempt)});
    }
  }
  env.push_back({"RINGTRAIN_JOB_ID", "job-" + std::to_string(job)});
  if (!gpu.empty()) env.push_back({"CUDA_VISIBLE_DEVICES", gpu});
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return IoError(std::string("pipe: ") + std::strerror(errno));
  const std::string exe = SelfExe();
  // The environment and argv are built before fork: the agent has threads, so the child only
  // makes async-signal-safe calls until exec.
  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    const std::string k = kv.substr(0, kv.find('='));
    bool drop = false;
    for (const char* v : {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                          "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_ID",
                          "RINGTRAIN_PS_HOSTS", "RINGTRAIN_TOKEN", "CUDA_VISIBLE_DEVICES"})
      drop |= k == v;
    for (const auto& kv2 : env) drop |= k == kv2.first;
    if (!drop) envs.push_back(kv);
  }
  for (const auto& [k, v] : env) envs.push_back(k + "=" + v);
  std::vector<char*> argv, envp;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : envs) envp.push_back(e.data());
  envp.push_back(nullptr);
  const pid_t agent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) return IoError(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != agent) _exit(127);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    ::dup2(p[1], STDOUT_FILENO);
    ::dup2(p[1], STDERR_FILENO);
    ::execve(exe.c_str(), argv.data(), envp.data());
    _exit(127);
  }
  ::setpgid(pid, pid);
  ::close(p[1]);
  Proc pr;
  pr.pid = pid;
  pr.fd = p[0];
  pr.job = job;
  pr.attempt = attempt;
  pr.rank = rank;
  pr.label = Label(s);
  pr.gpu = gpu;
  return pr;
}
}  // namespace

Status RunAgent(const AgentOptions& o) {
  if (o.slots < 1) return InvalidArgument("--slots must be at least 1");
  if (!o.gpus.empty() && static_cast<int>(o.gpus.size()) != o.slots)
    return InvalidArgument("--slots " + std::to_string(o.slots) + " but --gpus lists " + std::to_string(o.gpus.size()) +
                           " device(s): one process per GPU");
  RT_ASSIGN_OR_RETURN(auto hp, ps::SplitHostPort(o.coordinator, "--coordinator"));
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  const std::string id = o.id.empty() ? std::string(host) + ":" + std::to_string(::getpid()) : o.id;
  struct sigaction sa{};
  sa.sa_handler = OnStop;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  Link link;
  std::mutex qmu;
  std::deque<proto::CoordMsg> inbox;  // from the coordinator, for the main loop
  std::map<pid_t, Proc> procs;
  json exited = json::array();  // exits reported (resent on every re-registration)
  std::thread reader;
  auto connect = [&]() -> Status {
    auto io = std::make_unique<asio::io_context>();
    RT_ASSIGN_OR_RETURN(auto sock, ps::ConnectWithRetry(*io, hp.first, hp.second, ps::After(1)));
    auto conn = std::make_unique<ps::FrameConn>(std::move(sock), o.coordinator);
    RT_RETURN_IF_ERROR(ps::ClientHandshake(*conn, o.token, ps::After(10), {}));
    json running = json::array();
    for (const auto& [pid, p] : procs) running.push_back({{"job", p.job}, {"attempt", p.attempt}, {"rank", p.rank}, {"pid", pid}});
    proto::CoordMsg m;
    m.set_version(1);
    m.set_type(proto::CO_REGISTER);
    m.set_json(json{{"id", id}, {"host", host}, {"addr", o.addr}, {"slots", o.slots}, {"gpus", o.gpus},
                    {"running", running}, {"exited", exited}}.dump());
    RT_RETURN_IF_ERROR(conn->SendMessage(m, ps::After(10)));
    proto::CoordMsg r;
    RT_RETURN_IF_ERROR(conn->RecvMessage(&r, kMaxCoordFrame, ps::After(30), 30));
    if (r.type() == proto::CO_ERROR) return InvalidArgument("coordinator " + o.coordinator + " refused: " + r.error());
    if (reader.joinable()) reader.join();
    {
      std::lock_guard<std::mutex> l(link.mu);
      link.io = std::move(io);
      link.conn = std::move(conn);
      link.up = true;
    }
    ps::FrameConn* c = link.conn.get();
    reader = std::thread([&, c] {
      for (;;) {
        proto::CoordMsg in;
        if (!c->RecvMessage(&in, kMaxCoordFrame, ps::Clock::time_point::max(), 30).ok()) break;
        std::lock_guard<std::mutex> l(qmu);
        inbox.push_back(in);
      }
      std::lock_guard<std::mutex> l(link.mu);
      link.up = false;
    });
    std::fprintf(stderr, "ringtrain worker %s: registered with %s (%d slot(s))\n", id.c_str(), o.coordinator.c_str(), o.slots);
    return Status::Ok();
  };
  // An agent may start before its coordinator: it waits up to connect_timeout_s for it (a
  // refused token fails at once).
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::duration<double>(o.connect_timeout_s);
  for (bool said = false;;) {
    Status first = connect();
    if (first.ok()) break;
    if (first.code() != StatusCode::kUnavailable || std::chrono::steady_clock::now() >= give_up || g_stop.load())
      return first.WithContext("ringtrain worker");
    if (!said) std::fprintf(stderr, "ringtrain worker %s: waiting for the coordinator: %s\n", id.c_str(), first.message().c_str());
    said = true;
  }
  auto last_beat = std::chrono::steady_clock::now();
  auto last_try = last_beat;
  while (!g_stop.load()) {
    // Output of the processes, as lines.
    std::vector<pollfd> fds;
    std::vector<pid_t> who;
    for (auto& [pid, p] : procs)
      if (p.fd >= 0) {
        fds.push_back({p.fd, POLLIN, 0});
        who.push_back(pid);
      }
    const int n = fds.empty() ? (::usleep(100000), 0) : ::poll(fds.data(), fds.size(), 100);
    for (size_t i = 0; n > 0 && i < fds.size(); ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      Proc& p = procs[who[i]];
      char buf[8192];
      const ssize_t k = ::read(p.fd, buf, sizeof buf);
      if (k <= 0) {
        ::close(p.fd);
        p.fd = -1;
        continue;
      }
      p.pending.append(buf, static_cast<size_t>(k));
      const size_t cut = p.pending.rfind('\n');
      if (cut == std::string::npos) continue;
      std::string out;
      size_t at = 0;
      while (at <= cut) {
        const size_t e = p.pending.find('\n', at);
        out += "[" + p.label + "] " + p.pending.substr(at, e - at) + "\n";
        at = e + 1;
      }
      p.pending.erase(0, cut + 1);
      (void)link.Send(proto::CO_LOG, {{"job", p.job}, {"rank", p.rank}}, out);
    }
    // Exits.
    for (auto it = procs.begin(); it != procs.end();) {
      int st = 0;
      if (it->second.fd < 0 && ::waitpid(it->first, &st, WNOHANG) == it->first) {
        const int status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        json e = {{"job", it->second.job}, {"attempt", it->second.attempt}, {"rank", it->second.rank}, {"status", status}};
        exited.push_back(e);
        if (exited.size() > 256) exited.erase(exited.begin());
        (void)link.Send(proto::CO_EXITED, e);
        it = procs.erase(it);
      } else {
        ++it;
      }
    }
    // Commands.
    std::deque<proto::CoordMsg> todo;
    {
      std::lock_guard<std::mutex> l(qmu);
      todo.swap(inbox);
    }
    for (const auto& m : todo) {
      const json j = json::parse(m.json(), nullptr, false);
      if (!j.is_object()) continue;
      if (m.type() == proto::CO_START) {
        // One device per process when this host has GPUs (the coordinator never places more
        // processes than slots, and a stopped process keeps its slot until it exits).
        std::string gpu;
        StatusOr<Proc> p = Unavailable("no free GPU on this agent");
        if (!o.gpus.empty()) {
          for (const auto& g : o.gpus) {
            bool taken = false;
            for (const auto& [pid, q] : procs) taken |= q.gpu == g;
            if (!taken) {
              gpu = g;
              break;
            }
          }
        }
        if (o.gpus.empty() || !gpu.empty()) p = Spawn(j, o.token, gpu);
        const std::string what = Label(j);
        if (!p.ok()) {
          json e = {{"job", j["job"]}, {"attempt", j["attempt"]}, {"rank", j["rank"]}, {"status", 127}};
          (void)link.Send(proto::CO_LOG, {{"job", j["job"]}, {"rank", j["rank"]}}, "[agent " + id + "] " + what + ": " + p.status().message() + "\n");
          (void)link.Send(proto::CO_EXITED, e);
        } else {
          if (!gpu.empty())
            (void)link.Send(proto::CO_LOG, {{"job", j["job"]}, {"rank", j["rank"]}},
                            "[agent " + id + "] " + what + " (pid " + std::to_string(p->pid) + ") on GPU " + gpu + "\n");
          procs[p->pid] = *p;
        }
      } else if (m.type() == proto::CO_STOP) {
        for (auto& [pid, p] : procs)
          if (p.job == j.value("job", int64_t{0}) && p.attempt == j.value("attempt", 0)) ::kill(-pid, SIGKILL);
      }
    }
    const auto now = std::chrono::steady_clock::now();
    bool up;
    {
      std::lock_guard<std::mutex> l(link.mu);
      up = link.up;
    }
    if (up && now - last_beat >= std::chrono::duration<double>(o.heartbeat_s)) {
      json running = json::array();
      for (const auto& [pid, p] : procs) running.push_back({{"job", p.job}, {"attempt", p.attempt}, {"rank", p.rank}, {"pid", pid}});
      (void)link.Send(proto::CO_HEARTBEAT, {{"worker", id}, {"running", running}});
      last_beat = now;
    }
    if (!up && now - last_try >= std::chrono::seconds(1)) {
      last_try = now;
      Status s = connect();
      if (!s.ok()) std::fprintf(stderr, "ringtrain worker %s: reconnecting: %s\n", id.c_str(), s.message().c_str());
    }
  }
  for (auto& [pid, p] : procs) ::kill(-pid, SIGKILL);
  {
    std::lock_guard<std::mutex> l(link.mu);
    if (link.conn) link.conn->Shutdown();
  }
  if (reader.joinable()) reader.join();
  return Status::Ok();
}

}  // namespace ringtrain::coord
