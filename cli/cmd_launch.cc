// `ringtrain launch --nproc N [--ps K] [--bind core|none] [--master-port P] [--grace S] -- train ...`: the local launcher.
// Starts N processes of this binary with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR
// and MASTER_PORT set (they meet over TCP at MASTER_ADDR:MASTER_PORT and then, all being on this
// host, use shared memory by default), prefixes every line they print with their rank,
// forwards SIGINT, SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 to them, and when one fails stops the
// others (SIGTERM, then SIGKILL after the grace period) and exits with the failed rank's status.
// Each rank runs in its own process group, which is killed at the end, and dies with the launcher
// (PR_SET_PDEATHSIG), so no process outlives the job. With --bind core (the default) and no more
// ranks than CPUs, each rank is bound to its own share of the launcher's CPUs, as mpirun binds
// ranks to cores: a rank's compute thread no longer migrates onto its neighbour's core.
// With --ps K it first starts K parameter-server shards (`ringtrain ps --shard i/K` on loopback
// ports), gives the ranks their addresses (RINGTRAIN_PS_HOSTS) and a fresh shared token
// (RINGTRAIN_TOKEN, unless one is set), and stops the servers (SIGTERM) once every rank succeeded;
// a server that exits before that fails the job like a rank would.
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "parameter_server/auth.h"

namespace ringtrain::cli {

namespace {

struct LaunchArgs {
  int nproc = 0;
  int ps = 0;
  int master_port = 0;
  std::string master_addr = "127.0.0.1";
  double grace_s = 10;
  std::string bind = "core";
  std::vector<std::string> command;
};

// The CPUs this launcher may run on, in order.
std::vector<int> AllowedCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  return cpus;
}

// --bind core: rank r of n gets its own share of the allowed CPUs (n <= CPUs), as mpirun binds
// ranks to cores; with more ranks than CPUs nothing is bound. Empty: leave the rank unbound.
std::vector<int> RankCpus(const std::vector<int>& cpus, int r, int n, const std::string& bind) {
  if (bind != "core" || n < 1 || static_cast<size_t>(n) > cpus.size()) return {};
  const size_t k = cpus.size() / static_cast<size_t>(n);
  return std::vector<int>(cpus.begin() + static_cast<std::ptrdiff_t>(k * static_cast<size_t>(r)),
                          cpus.begin() + static_cast<std::ptrdiff_t>(k * static_cast<size_t>(r + 1)));
}

std::atomic<int> g_signal{0};
void OnSignal(int sig) { g_signal.store(sig); }

// A free TCP port on the loopback interface (the kernel picks; the rendezvous binds it next).
StatusOr<int> FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return IoError(std::string("socket: ") + std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    const std::string e = std::strerror(errno);
    ::close(fd);
    return IoError("finding a free port: " + e);
  }
  ::close(fd);
  return static_cast<int>(ntohs(a.sin_port));
}

// One output stream of one rank: bytes are cut into lines, each printed with the rank prefix.
struct Stream {
  int fd = -1;
  std::string label;  // "rank 3", "ps 1"
  std::FILE* out = nullptr;
  std::string pending;

  void Emit(const std::string& line) {
    std::fprintf(out, "[%s] %s\n", label.c_str(), line.c_str());
    std::fflush(out);
  }
  // Returns false at end of stream.
  bool Read() {
    char buf[4096];
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return true;
    if (n <= 0) {
      if (!pending.empty()) Emit(pending);
      pending.clear();
      ::close(fd);
      fd = -1;
      return false;
    }
    pending.append(buf, static_cast<size_t>(n));
    size_t start = 0;
    for (size_t i = 0; i < pending.size(); ++i) {
      if (pending[i] == '\n' || pending[i] == '\r') {
        if (i > start) Emit(pending.substr(start, i - start));
        start = i + 1;
      }
    }
    pending.erase(0, start);
    return true;
  }
};

struct Child {
  pid_t pid = -1;
  bool running = false;
  int status = 0;
  std::string label;
  bool server = false;
};

std::string Describe(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    return "was killed by signal " + std::to_string(sig) + " (" + strsignal(sig) + ")";
  }
  return "stopped";
}

int ExitCodeOf(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

Status Launch(const LaunchArgs& a) {
  if (a.nproc < 1) return InvalidArgument("--nproc must be at least 1");
  if (a.command.empty()) return InvalidArgument("nothing to launch: give the command after --, e.g. launch --nproc 2 -- train");
  if (a.grace_s < 0) return InvalidArgument("--grace must be >= 0");
  int port = a.master_port;
  if (port == 0) {
    RT_ASSIGN_OR_RETURN(port, FreePort());
  } else if (port < 1 || port > 65535) {
    return InvalidArgument("--master-port " + std::to_string(port) + " is not a TCP port");
  }
  // A ringtrain subcommand runs this binary; a path (containing '/') runs that program.
  std::string exe = a.command[0].find('/') != std::string::npos ? a.command[0] : "/proc/self/exe";
  std::vector<std::string> argv_s;
  argv_s.push_back(exe == "/proc/self/exe" ? "ringtrain" : a.command[0]);
  for (size_t i = exe == "/proc/self/exe" ? 0 : 1; i < a.command.size(); ++i) argv_s.push_back(a.command[i]);
  std::string self_exe;
  {
    char self[4096];
    const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return IoError("cannot find this program's path (/proc/self/exe)");
    self[n] = '\0';
    self_exe = self;
  }
  if (exe == "/proc/self/exe") exe = self_exe;
  if (a.ps < 0) return InvalidArgument("--ps must be >= 0");

  struct sigaction sa{};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  const int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2};
  for (int s : forwarded) sigaction(s, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  std::vector<Child> kids;
  std::vector<Stream> streams;
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t launcher = ::getpid();
  // Forks one child (this binary for a server, else the command) with extra environment variables.
  auto spawn = [&](const std::string& label, bool server, const std::vector<std::string>& args,
                   const std::vector<std::pair<std::string, std::string>>& env,
                   const std::vector<int>& cpus = {}) -> Status {
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0)
      return IoError(std::string("pipe: ") + std::strerror(errno));
    const pid_t pid = ::fork();
    if (pid < 0) return IoError(std::string("fork: ") + std::strerror(errno));
    if (pid == 0) {
      ::setpgid(0, 0);
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != launcher) _exit(127);  // the launcher died before the prctl
      for (int s : forwarded) signal(s, SIG_DFL);
      signal(SIGPIPE, SIG_DFL);
      ::dup2(out[1], STDOUT_FILENO);
      ::dup2(err[1], STDERR_FILENO);
      // Open MPI's variables would take precedence over RANK/WORLD_SIZE; these ranks are ours.
      for (const char* v : {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                            "OMPI_COMM_WORLD_LOCAL_SIZE"})
        ::unsetenv(v);
      for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
      if (!cpus.empty()) {
        cpu_set_t set;
        CPU_ZERO(&set);
        for (int c : cpus) CPU_SET(c, &set);
        (void)::sched_setaffinity(0, sizeof set, &set);  // best effort, as mpirun's binding
      }
      std::vector<char*> argv;
      for (const std::string& x : args) argv.push_back(const_cast<char*>(x.c_str()));
      argv.push_back(nullptr);
      const char* path = server ? self_exe.c_str() : exe.c_str();
      ::execv(path, argv.data());
      std::fprintf(stderr, "ringtrain launch: cannot run %s: %s\n", path, std::strerror(errno));
      _exit(127);
    }
    ::setpgid(pid, pid);  // also here, so the group exists before the parent signals it
    ::close(out[1]);
    ::close(err[1]);
    kids.push_back({pid, true, 0, label, server});
    streams.push_back({out[0], label, stdout, {}});
    streams.push_back({err[0], label, stderr, {}});
    return Status::Ok();
  };
  std::vector<std::pair<std::string, std::string>> common;
  if (a.ps > 0) {
    // One token per job unless the user brought one; servers and workers share it.
    if (!std::getenv("RINGTRAIN_TOKEN")) common.push_back({"RINGTRAIN_TOKEN", ps::RandomTokenHex()});
    std::string hosts;
    for (int i = 0; i < a.ps; ++i) {
      RT_ASSIGN_OR_RETURN(int p, FreePort());
      const std::string addr = a.master_addr + ":" + std::to_string(p);
      hosts += (i ? "," : "") + addr;
      RT_RETURN_IF_ERROR(spawn("ps " + std::to_string(i), true,
                               {"ringtrain", "ps", "--listen", addr, "--shard", std::to_string(i) + "/" + std::to_string(a.ps)},
                               common));
    }
    common.push_back({"RINGTRAIN_PS_HOSTS", hosts});
  }
  const std::vector<int> allowed = AllowedCpus();
  for (int r = 0; r < a.nproc; ++r) {
    auto env = common;
    env.push_back({"RANK", std::to_string(r)});
    env.push_back({"WORLD_SIZE", std::to_string(a.nproc)});
    env.push_back({"LOCAL_RANK", std::to_string(r)});
    env.push_back({"LOCAL_WORLD_SIZE", std::to_string(a.nproc)});
    env.push_back({"MASTER_ADDR", a.master_addr});
    env.push_back({"MASTER_PORT", std::to_string(port)});
    RT_RETURN_IF_ERROR(spawn("rank " + std::to_string(r), false, argv_s, env, RankCpus(allowed, r, a.nproc, a.bind)));
  }

  {
    std::string pids;
    for (const Child& k : kids) pids += (pids.empty() ? "" : " ") + std::to_string(k.pid);
    std::fprintf(stderr, "ringtrain launch: %d ranks%s started (pids %s), rendezvous %s:%d\n", a.nproc,
                 a.ps ? (" and " + std::to_string(a.ps) + " parameter server(s)").c_str() : "", pids.c_str(),
                 a.master_addr.c_str(), port);
    std::fflush(stderr);
  }
  using Clock = std::chrono::steady_clock;
  int failed = -1, failed_status = 0, signalled = 0;
  Clock::time_point kill_at{};
  bool stopping = false, killed = false, servers_stopped = false, server_down = false;
  Clock::time_point ranks_stop_at{};
  auto stop_all = [&](int sig) {
    for (const Child& k : kids)
      if (k.running) ::kill(-k.pid, sig);
  };
  auto begin_stop = [&] {
    stop_all(SIGTERM);
    stopping = true;
    kill_at = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(a.grace_s));
  };
  size_t open_streams = streams.size();
  int running = static_cast<int>(kids.size());
  int ranks_running = a.nproc;
  while (running > 0 || open_streams > 0) {
    std::vector<pollfd> fds;
    std::vector<size_t> idx;
    for (size_t i = 0; i < streams.size(); ++i)
      if (streams[i].fd >= 0) {
        fds.push_back({streams[i].fd, POLLIN, 0});
        idx.push_back(i);
      }
    const int n = fds.empty() ? (::usleep(50000), 0) : ::poll(fds.data(), fds.size(), 50);
    for (size_t i = 0; n > 0 && i < fds.size(); ++i)
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR))
        if (!streams[idx[i]].Read()) --open_streams;
    if (const int sig = g_signal.exchange(0)) {
      signalled = sig;
      stop_all(sig);  // forwarded: the ranks decide what a signal means (stop, save, ...)
      if (!stopping && (sig == SIGINT || sig == SIGTERM || sig == SIGHUP)) {
        stopping = true;
        kill_at = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(a.grace_s));
      }
    }
    for (size_t r = 0; r < kids.size(); ++r) {
      Child& k = kids[r];
      if (!k.running) continue;
      int st = 0;
      const pid_t p = ::waitpid(k.pid, &st, WNOHANG);
      if (p != k.pid) continue;
      k.running = false;
      k.status = st;
      --running;
      if (!k.server) --ranks_running;
      // A rank must exit 0; a server must not exit before the ranks are done.
      const bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0 && (!k.server || servers_stopped);
      if (!ok && !stopping) {
        if (failed < 0) {
          failed = static_cast<int>(r);
          failed_status = st;
        }
        std::fflush(stdout);
        if (k.server && !server_down) {
          // The ranks notice a dead server themselves and say which one: give them the grace
          // period to do so before stopping them.
          std::fprintf(stderr, "ringtrain launch: %s %s while the ranks were running\n", k.label.c_str(),
                       Describe(st).c_str());
          server_down = true;
          ranks_stop_at = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(a.grace_s));
        } else if (!k.server) {
          std::fprintf(stderr, "ringtrain launch: %s %s; stopping the other %d process(es)\n", k.label.c_str(),
                       Describe(st).c_str(), running);
          begin_stop();
        }
        std::fflush(stderr);
      }
    }
    if (server_down && !stopping && Clock::now() >= ranks_stop_at) {
      std::fprintf(stderr, "ringtrain launch: the ranks still run %.0f s after a server died; stopping them\n", a.grace_s);
      begin_stop();
    }
    if (ranks_running == 0 && !servers_stopped) {
      // Every rank is done: the servers' work is over.
      servers_stopped = true;
      for (const Child& k : kids)
        if (k.server && k.running) ::kill(-k.pid, SIGTERM);
      if (!stopping) {
        stopping = true;
        kill_at = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(a.grace_s));
      }
    }
    if (stopping && !killed && running > 0 && Clock::now() >= kill_at) {
      std::fprintf(stderr, "ringtrain launch: %d process(es) still running after %.0f s; killing them\n", running, a.grace_s);
      stop_all(SIGKILL);
      killed = true;
    }
    // Output still open after every child exited belongs to a leftover grandchild: kill it.
    if (running == 0 && open_streams > 0) {
      for (const Child& k : kids) ::kill(-k.pid, SIGKILL);
    }
  }
  for (const Child& k : kids) ::kill(-k.pid, SIGKILL);  // anything a child left in its group
  if (failed >= 0) {
    const Child& k = kids[static_cast<size_t>(failed)];
    const std::string who = k.server ? "parameter server " + k.label.substr(3) + " of " + std::to_string(a.ps)
                                     : k.label + " of " + std::to_string(a.nproc);
    return Status(StatusCode::kAborted, who + " " + Describe(failed_status)).WithExitCode(std::max(1, ExitCodeOf(failed_status)));
  }
  for (const Child& k : kids) {
    if (k.server) continue;
    const int st = k.status;
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
      return Status(StatusCode::kAborted, k.label + " " + Describe(st) +
                                              (signalled ? std::string(" after signal ") + strsignal(signalled) : ""))
          .WithExitCode(ExitCodeOf(st));
  }
  return Status::Ok();
}

}  // namespace

void AddLaunch(CLI::App& app, Action& action) {
  auto args = std::make_shared<LaunchArgs>();
  CLI::App* cmd = app.add_subcommand("launch", "start N local ranks of a command (rendezvous over TCP): launch --nproc N -- train ...");
  cmd->add_option("--nproc", args->nproc, "number of processes")->required();
  cmd->add_option("--ps", args->ps, "also start K parameter-server shards on loopback (sync.mode ps)");
  cmd->add_option("--master-port", args->master_port, "rendezvous port (default: a free one)");
  cmd->add_option("--master-addr", args->master_addr, "rendezvous address (default 127.0.0.1)");
  cmd->add_option("--bind", args->bind,
                  "core: each rank runs on its own share of the CPUs when there are at least as many CPUs as "
                  "ranks (the default, as mpirun); none: leave placement to the kernel")
      ->check(CLI::IsMember({"core", "none"}));
  cmd->add_option("--grace", args->grace_s, "seconds the other ranks get to stop after a failure (default 10)");
  cmd->add_option("command", args->command, "the ringtrain subcommand and its arguments, after --")->required();
  cmd->callback([&action, args]() { action = [args]() { return Launch(*args); }; });
}

}  // namespace ringtrain::cli
