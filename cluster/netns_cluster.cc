#include "cluster/netns_cluster.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sstream>

namespace ringtrain {

StatusOr<std::string> RunTool(const std::vector<std::string>& argv) {
  std::string line;
  for (const auto& a : argv) line.append(line.empty() ? "" : " ").append(a);
  int fds[2];
  if (::pipe(fds) != 0) return IoError("running " + line + ": pipe: " + std::strerror(errno));
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return IoError("running " + line + ": fork: " + std::strerror(errno));
  }
  if (pid == 0) {
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    ::close(fds[0]);
    ::close(fds[1]);
    ::execvp(args[0], args.data());
    std::fprintf(stderr, "cannot run %s: %s\n", args[0], std::strerror(errno));
    ::_exit(127);
  }
  ::close(fds[1]);
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return out;
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  std::string why = WIFEXITED(status) ? "exit status " + std::to_string(WEXITSTATUS(status))
                                      : "killed by signal " + std::to_string(WTERMSIG(status));
  return Unavailable(line + ": " + why + (out.empty() ? std::string() : ": " + out));
}

namespace {
std::string Num(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.0f", v);
  return b;
}
}  // namespace

StatusOr<std::unique_ptr<NetnsCluster>> NetnsCluster::Create(const std::string& prefix, int nodes, double bandwidth_bps) {
  if (nodes < 1 || nodes > 250) return InvalidArgument("an emulated cluster has 1 to 250 nodes, not " + std::to_string(nodes));
  if (!(bandwidth_bps >= 1e3)) return InvalidArgument("emulated link bandwidth must be at least 1 kbit/s");
  std::unique_ptr<NetnsCluster> c(new NetnsCluster());
  c->hub_ = prefix + "hub";
  // Token bucket: a burst of 1 ms at the link rate (at least 64 KiB, one GSO segment), and at most
  // 20 ms of queue before drops, as a switch port would have.
  const std::vector<std::string> tbf = {"root", "tbf", "rate", Num(bandwidth_bps) + "bit", "burst",
                                        Num(std::max(65536.0, bandwidth_bps / 8 / 1000)), "latency", "20ms"};
  auto run = [&](std::vector<std::string> argv) -> Status { return RunTool(argv).status(); };
  auto make = [&]() -> Status {
    RT_RETURN_IF_ERROR(run({"ip", "netns", "add", c->hub_}));
    c->made_.push_back(c->hub_);
    RT_RETURN_IF_ERROR(run({"ip", "-n", c->hub_, "link", "set", "lo", "up"}));
    RT_RETURN_IF_ERROR(run({"ip", "-n", c->hub_, "link", "add", "br0", "type", "bridge"}));
    RT_RETURN_IF_ERROR(run({"ip", "-n", c->hub_, "link", "set", "br0", "up"}));
    for (int i = 0; i < nodes; ++i) {
      NetnsNode n;
      n.ns = prefix;
      n.ns.append("n").append(std::to_string(i));
      n.iface = "eth0";
      n.addr = "10.77.0.";
      n.addr.append(std::to_string(i + 1));
      std::string port = "p";
      port.append(std::to_string(i));
      RT_RETURN_IF_ERROR(run({"ip", "netns", "add", n.ns}));
      c->made_.push_back(n.ns);
      RT_RETURN_IF_ERROR(
          run({"ip", "link", "add", n.iface, "netns", n.ns, "type", "veth", "peer", "name", port, "netns", c->hub_}));
      RT_RETURN_IF_ERROR(run({"ip", "-n", c->hub_, "link", "set", port, "master", "br0", "up"}));
      RT_RETURN_IF_ERROR(run({"ip", "-n", n.ns, "addr", "add", n.addr + "/24", "dev", n.iface}));
      RT_RETURN_IF_ERROR(run({"ip", "-n", n.ns, "link", "set", n.iface, "up"}));
      RT_RETURN_IF_ERROR(run({"ip", "-n", n.ns, "link", "set", "lo", "up"}));
      // Both directions of the link: what the node sends, and what the hub sends to it.
      std::vector<std::string> up = {"tc", "-n", n.ns, "qdisc", "add", "dev", n.iface};
      up.insert(up.end(), tbf.begin(), tbf.end());
      RT_RETURN_IF_ERROR(run(up));
      std::vector<std::string> down = {"tc", "-n", c->hub_, "qdisc", "add", "dev", port};
      down.insert(down.end(), tbf.begin(), tbf.end());
      RT_RETURN_IF_ERROR(run(down));
      c->nodes_.push_back(std::move(n));
    }
    return Status::Ok();
  };
  Status s = make();
  if (!s.ok()) {
    c->Teardown();
    return s.WithContext("building the emulated cluster");
  }
  return c;
}

NetnsCluster::~NetnsCluster() { Teardown(); }

std::vector<std::string> NetnsCluster::Wrap(int node, const std::vector<std::string>& argv) const {
  std::vector<std::string> out = {"ip", "netns", "exec", nodes_.at(static_cast<size_t>(node)).ns};
  out.insert(out.end(), argv.begin(), argv.end());
  return out;
}

void NetnsCluster::Teardown() {
  for (auto it = made_.rbegin(); it != made_.rend(); ++it) {
    auto pids = RunTool({"ip", "netns", "pids", *it});
    if (pids.ok()) {
      std::istringstream in(*pids);
      for (long pid; in >> pid;)
        if (pid > 1) ::kill(static_cast<pid_t>(pid), SIGKILL);
    }
    (void)RunTool({"ip", "netns", "del", *it});
  }
  made_.clear();
  nodes_.clear();
}

}  // namespace ringtrain
