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

StatusOr<Proc> Spawn(const json& s) {
  const std::string run_dir = s["run_dir"];
  const int64_t job = s["job"];
  const int attempt = s["attempt"], rank = s["rank"];
  std::error_code ec;
  std::filesystem::create_directories(run_dir, ec);
  if (ec) return IoError("creating " + run_dir + ": " + ec.message());
  // The validated config as JSON (which YAML reads), one file per rank: ranks on one host must not
  // race on a shared file.
  const std::string cfg = run_dir + "/.config-a" + std::to_string(attempt) + "-r" + std::to_string(rank) + ".yaml";
  {
    std::ofstream f(cfg);
    f << s["config"].dump(2) << "\n";
    if (!f) return IoError("writing " + cfg);
  }
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return IoError(std::string("pipe: ") + std::strerror(errno));
  const std::string exe = SelfExe();
  std::vector<std::string> args = {"ringtrain", "train", "--config", cfg, "--run-dir", run_dir};
  if (s.value("resume", false)) {
    args.push_back("--resume");
    args.push_back("auto");
  }
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
    for (const char* v : {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                          "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_ID"})
      ::unsetenv(v);
    ::setenv("RANK", std::to_string(rank).c_str(), 1);
    ::setenv("WORLD_SIZE", std::to_string(s["world"].get<int>()).c_str(), 1);
    ::setenv("LOCAL_RANK", std::to_string(s["local_rank"].get<int>()).c_str(), 1);
    ::setenv("LOCAL_WORLD_SIZE", std::to_string(s["local_world"].get<int>()).c_str(), 1);
    ::setenv("MASTER_ADDR", s["master_addr"].get<std::string>().c_str(), 1);
    ::setenv("MASTER_PORT", std::to_string(s["master_port"].get<int>()).c_str(), 1);
    ::setenv("RINGTRAIN_JOB_ID", ("job-" + std::to_string(job)).c_str(), 1);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(exe.c_str(), argv.data());
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
  return pr;
}
}  // namespace

Status RunAgent(const AgentOptions& o) {
  if (o.slots < 1) return InvalidArgument("--slots must be at least 1");
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
    m.set_json(json{{"id", id}, {"host", host}, {"addr", o.addr}, {"slots", o.slots}, {"running", running}, {"exited", exited}}.dump());
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
  Status first = connect();
  if (!first.ok()) return first.WithContext("ringtrain worker");
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
        out += "[rank " + std::to_string(p.rank) + "] " + p.pending.substr(at, e - at) + "\n";
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
        auto p = Spawn(j);
        if (!p.ok()) {
          json e = {{"job", j["job"]}, {"attempt", j["attempt"]}, {"rank", j["rank"]}, {"status", 127}};
          (void)link.Send(proto::CO_LOG, {{"job", j["job"]}, {"rank", j["rank"]}}, "[agent] " + p.status().message() + "\n");
          (void)link.Send(proto::CO_EXITED, e);
        } else {
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
