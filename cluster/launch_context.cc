#include "cluster/launch_context.h"

#include <cerrno>
#include <cstdlib>
#include <sstream>

namespace ringtrain {

namespace {

const char* Env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

StatusOr<long> ParseLong(const std::string& what, const std::string& v, long min, long max) {
  char* end = nullptr;
  errno = 0;
  const long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0 || x < min || x > max)
    return InvalidArgument(what + "='" + v + "' is not a valid value");
  return x;
}

Status ParseInt(const char* name, int min, int* out) {
  RT_ASSIGN_OR_RETURN(long x, ParseLong("environment variable " + std::string(name), Env(name), min, 1 << 24));
  *out = static_cast<int>(x);
  return Status::Ok();
}

// Splits at commas that are not inside brackets.
std::vector<std::string> SplitTopLevel(const std::string& s) {
  std::vector<std::string> parts;
  int depth = 0;
  std::string cur;
  for (char c : s) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (c == ',' && depth == 0) {
      parts.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  parts.push_back(cur);
  return parts;
}

Status ExpandOne(const std::string& name, const std::string& whole, std::vector<std::string>* out) {
  const size_t open = name.find('[');
  if (open == std::string::npos) {
    if (name.find(']') != std::string::npos) return InvalidArgument("host list '" + whole + "': unmatched ']'");
    out->push_back(name);
    return Status::Ok();
  }
  const size_t close = name.find(']', open);
  if (close == std::string::npos) return InvalidArgument("host list '" + whole + "': unmatched '['");
  const std::string prefix = name.substr(0, open), body = name.substr(open + 1, close - open - 1);
  const std::string suffix = name.substr(close + 1);
  if (body.empty()) return InvalidArgument("host list '" + whole + "': empty brackets");
  std::stringstream ss(body);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const size_t dash = item.find('-');
    const std::string lo_s = item.substr(0, dash);
    const std::string hi_s = dash == std::string::npos ? lo_s : item.substr(dash + 1);
    if (lo_s.empty() || hi_s.empty() || lo_s.find_first_not_of("0123456789") != std::string::npos ||
        hi_s.find_first_not_of("0123456789") != std::string::npos)
      return InvalidArgument("host list '" + whole + "': '" + item + "' is not a number or range");
    const long lo = std::strtol(lo_s.c_str(), nullptr, 10), hi = std::strtol(hi_s.c_str(), nullptr, 10);
    if (hi < lo) return InvalidArgument("host list '" + whole + "': range '" + item + "' runs backwards");
    if (hi - lo > 100000) return InvalidArgument("host list '" + whole + "': range '" + item + "' is too large");
    const size_t width = lo_s.size();
    for (long i = lo; i <= hi; ++i) {
      std::string num = std::to_string(i);
      if (num.size() < width) num.insert(0, width - num.size(), '0');
      RT_RETURN_IF_ERROR(ExpandOne(prefix + num + suffix, whole, out));
    }
  }
  return Status::Ok();
}

Status DetectSlurm(LaunchContext* c) {
  if (!Env("SLURM_NTASKS") && !Env("SLURM_NPROCS"))
    return InvalidArgument("Slurm environment incomplete: SLURM_PROCID is set but SLURM_NTASKS is not");
  RT_RETURN_IF_ERROR(ParseInt("SLURM_PROCID", 0, &c->rank));
  RT_RETURN_IF_ERROR(ParseInt(Env("SLURM_NTASKS") ? "SLURM_NTASKS" : "SLURM_NPROCS", 1, &c->size));
  if (Env("SLURM_LOCALID")) RT_RETURN_IF_ERROR(ParseInt("SLURM_LOCALID", 0, &c->local_rank));
  c->local_size = 1;
  const char* tpn = Env("SLURM_STEP_TASKS_PER_NODE") ? Env("SLURM_STEP_TASKS_PER_NODE") : Env("SLURM_TASKS_PER_NODE");
  if (tpn) {
    int node = 0;
    if (Env("SLURM_NODEID")) RT_RETURN_IF_ERROR(ParseInt("SLURM_NODEID", 0, &node));
    RT_ASSIGN_OR_RETURN(c->local_size, TasksOnNode(tpn, node));
  }
  const char* nodelist = Env("SLURM_STEP_NODELIST") ? Env("SLURM_STEP_NODELIST")
                         : Env("SLURM_JOB_NODELIST") ? Env("SLURM_JOB_NODELIST")
                                                     : Env("SLURM_NODELIST");
  if (!nodelist && c->size > 1 && !Env("MASTER_ADDR"))
    return InvalidArgument("Slurm environment incomplete: SLURM_JOB_NODELIST is not set (and no MASTER_ADDR)");
  if (nodelist) {
    auto hosts = ExpandHostList(nodelist);
    if (!hosts.ok()) return hosts.status().WithContext("Slurm node list");
    c->master_addr = hosts->front();
  }
  if (Env("SLURM_JOB_ID")) c->job_id = Env("SLURM_JOB_ID");
  // Concurrent jobs on shared nodes must not collide on the rendezvous port.
  if (!c->job_id.empty()) {
    RT_ASSIGN_OR_RETURN(long id, ParseLong("environment variable SLURM_JOB_ID", c->job_id, 0, 1L << 62));
    c->master_port = 20000 + static_cast<int>(id % 20000);
  }
  c->source = "Slurm";
  return Status::Ok();
}

}  // namespace

StatusOr<std::vector<std::string>> ExpandHostList(const std::string& list) {
  std::vector<std::string> out;
  for (const std::string& part : SplitTopLevel(list)) {
    if (part.empty()) return InvalidArgument("host list '" + list + "': empty host name");
    RT_RETURN_IF_ERROR(ExpandOne(part, list, &out));
  }
  return out;
}

StatusOr<int> TasksOnNode(const std::string& tpn, int node_id) {
  int node = 0;
  for (const std::string& item : SplitTopLevel(tpn)) {
    const size_t paren = item.find("(x");
    const std::string count_s = item.substr(0, paren);
    long reps = 1;
    if (paren != std::string::npos) {
      if (item.back() != ')') return InvalidArgument("tasks per node '" + tpn + "': malformed '" + item + "'");
      RT_ASSIGN_OR_RETURN(reps, ParseLong("tasks per node '" + tpn + "' repeat", item.substr(paren + 2, item.size() - paren - 3), 1, 1 << 24));
    }
    RT_ASSIGN_OR_RETURN(long count, ParseLong("tasks per node '" + tpn + "' count", count_s, 0, 1 << 24));
    if (node_id < node + reps) return static_cast<int>(count);
    node += static_cast<int>(reps);
  }
  return InvalidArgument("tasks per node '" + tpn + "' lists " + std::to_string(node) + " nodes; this is node " +
                         std::to_string(node_id));
}

StatusOr<LaunchContext> DetectLaunch() {
  LaunchContext c;
  const bool ompi = Env("OMPI_COMM_WORLD_RANK") || Env("OMPI_COMM_WORLD_SIZE");
  const bool torch = Env("RANK") || Env("WORLD_SIZE");
  // Only a job step started by srun has per-task variables; the batch script itself is one process.
  const bool slurm = Env("SLURM_STEP_ID") && (Env("SLURM_PROCID") || Env("SLURM_NTASKS"));
  if (ompi) {
    if (!Env("OMPI_COMM_WORLD_RANK") || !Env("OMPI_COMM_WORLD_SIZE"))
      return InvalidArgument("Open MPI environment incomplete: OMPI_COMM_WORLD_RANK and OMPI_COMM_WORLD_SIZE must both be set");
    RT_RETURN_IF_ERROR(ParseInt("OMPI_COMM_WORLD_RANK", 0, &c.rank));
    RT_RETURN_IF_ERROR(ParseInt("OMPI_COMM_WORLD_SIZE", 1, &c.size));
    if (Env("OMPI_COMM_WORLD_LOCAL_RANK")) RT_RETURN_IF_ERROR(ParseInt("OMPI_COMM_WORLD_LOCAL_RANK", 0, &c.local_rank));
    if (Env("OMPI_COMM_WORLD_LOCAL_SIZE")) RT_RETURN_IF_ERROR(ParseInt("OMPI_COMM_WORLD_LOCAL_SIZE", 1, &c.local_size));
    c.source = "mpirun";
    c.under_mpirun = true;
  } else if (slurm && !torch) {
    if (!Env("SLURM_PROCID"))
      return InvalidArgument("Slurm environment incomplete: SLURM_NTASKS is set but SLURM_PROCID is not");
    RT_RETURN_IF_ERROR(DetectSlurm(&c));
  }
  if (torch) {
    if (!Env("RANK") || !Env("WORLD_SIZE"))
      return InvalidArgument("launch environment incomplete: RANK and WORLD_SIZE must both be set");
    LaunchContext t;
    RT_RETURN_IF_ERROR(ParseInt("RANK", 0, &t.rank));
    RT_RETURN_IF_ERROR(ParseInt("WORLD_SIZE", 1, &t.size));
    if (ompi && (t.rank != c.rank || t.size != c.size))
      return InvalidArgument("RANK/WORLD_SIZE (" + std::to_string(t.rank) + "/" + std::to_string(t.size) +
                             ") contradict OMPI_COMM_WORLD_RANK/SIZE (" + std::to_string(c.rank) + "/" +
                             std::to_string(c.size) + ")");
    if (!ompi) {
      c.rank = t.rank;
      c.size = t.size;
      c.local_rank = c.rank;
      c.local_size = c.size;
      if (Env("LOCAL_RANK")) RT_RETURN_IF_ERROR(ParseInt("LOCAL_RANK", 0, &c.local_rank));
      if (Env("LOCAL_WORLD_SIZE")) RT_RETURN_IF_ERROR(ParseInt("LOCAL_WORLD_SIZE", 1, &c.local_size));
      c.source = "RANK/WORLD_SIZE environment";
    }
  }
  if (c.rank >= c.size)
    return InvalidArgument("rank " + std::to_string(c.rank) + " is not below the world size " + std::to_string(c.size) +
                           " (" + c.source + ")");
  if (c.local_rank >= c.local_size)
    return InvalidArgument("local rank " + std::to_string(c.local_rank) + " is not below the local size " +
                           std::to_string(c.local_size) + " (" + c.source + ")");
  if (c.local_size > c.size)
    return InvalidArgument("local size " + std::to_string(c.local_size) + " exceeds the world size " +
                           std::to_string(c.size) + " (" + c.source + ")");
  if (Env("MASTER_ADDR")) c.master_addr = Env("MASTER_ADDR");
  if (Env("MASTER_PORT")) RT_RETURN_IF_ERROR(ParseInt("MASTER_PORT", 1, &c.master_port));
  if (c.master_port > 65535) return InvalidArgument("MASTER_PORT=" + std::to_string(c.master_port) + " is not a TCP port");
  if (Env("RINGTRAIN_PS_HOSTS")) c.ps_hosts = Env("RINGTRAIN_PS_HOSTS");
  if (Env("RINGTRAIN_JOB_ID")) c.job_id = Env("RINGTRAIN_JOB_ID");
  return c;
}

}  // namespace ringtrain
