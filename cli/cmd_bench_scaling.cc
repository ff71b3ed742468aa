// `ringtrain bench scaling --workers 1,2,4 --sync ring,ps --ps-servers 1,2 [--emulate BW,LAT]
// [--config F] [--set k=v ...] --out DIR`: a scaling experiment. Each point (a worker count, and a
// sync mode: ring all-reduce, or parameter servers with k shards) runs `ringtrain bench train` as a
// job of its own, and the per-step figures it reports go to DIR/results.csv next to the alpha-beta
// model's prediction; gnuplot draws the plots (SVG and PNG).
//
// Where the processes run:
//   local (default)  on this host, rendezvous on loopback (the transport local ranks pick);
//                    every process runs one thread (RINGTRAIN_THREADS=1), so on a host with fewer
//                    cores than processes the compute slows down too: only the links are emulated;
//   --emulate BW,LAT an emulated cluster: every worker and server in a network namespace of its
//                    own on a bridge, each link shaped to BW with tc tbf, TCP between them. tc netem
//                    is not available here, so LAT is not added to the links; it enters the model.
//   --launcher mpirun|srun  one mpirun / srun job per point on a real cluster; a parameter-server
//                    point first starts each server as a one-task job of its own on a host of
//                    --ps-nodes (default: this host), reached by that host's name, then the
//                    workers' job with sync.ps_hosts pointing at them (srun steps of the servers
//                    use --overlap, so an allocation of exactly the workers' tasks suffices).
// The model: predicted step = compute time (measured at 1 worker) + communication, with
//   ring  2(n-1)/n * M/B + 2(n-1) * alpha,
//   ps    per direction max(M/B, n*M/(k*B)) + alpha, push then pull,
// M the gradient bytes, B the link bandwidth (--emulate, or --model BW,LAT on a real cluster).
// With parallel.tensor = t > 1, a replica spans t workers (n/t replicas sync gradients), the
// baseline is one replica, and the TP all-reduces add 2(t-1)/t * P/B + 2(t-1) * alpha per
// all-reduce ((4 L + 3) per micro-step), P the closed-form TP payload bench train reports.
// A failing point stops the run with an error naming it; the namespaces are removed in every case.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cluster/netns_cluster.h"
#include "core/config.h"
#include "parameter_server/auth.h"

namespace ringtrain::cli {

namespace {

namespace fs = std::filesystem;

struct ScalingArgs {
  std::string config;
  std::vector<std::string> sets;
  std::string workers = "1,2,4";
  std::string sync = "ring,ps";
  std::string ps_servers = "1,2";
  std::string emulate;  // "BW,LAT"
  std::string model;    // "BW,LAT" for the model only
  std::string launcher = "local";
  std::string ps_nodes;  // hosts of the servers under mpirun/srun (default: this host)
  std::string out = "scaling";
  bool barrier = false;
  int steps = 6;
  int warmup = 2;
  double point_timeout_s = 900;
};

std::atomic<int> g_stop{0};
void OnStop(int sig) { g_stop.store(sig); }

StatusOr<std::vector<int>> IntList(const std::string& s, const char* what) {
  std::vector<int> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) {
    char* end = nullptr;
    const long v = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end || v < 1 || v > 250)
      return InvalidArgument(std::string(what) + ": '" + item + "' is not a count from 1 to 250");
    out.push_back(static_cast<int>(v));
  }
  if (out.empty()) return InvalidArgument(std::string(what) + " is empty");
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

// A number with one of the units in `scale` (case-insensitive), times that unit's factor.
StatusOr<double> ParseQuantity(const std::string& s, const std::map<std::string, double>& scale, bool zero_ok,
                               const std::string& what, const char* expected) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  std::string unit(end);
  for (char& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  auto it = scale.find(unit);
  if (end == s.c_str() || it == scale.end() || !(zero_ok ? v >= 0 : v > 0))
    return InvalidArgument(what + " '" + s + "': expected " + expected);
  return v * it->second;
}

// "1gbit", "500mbit", "100kbit", "1e9" (bits/s); returns bits per second.
StatusOr<double> ParseBandwidth(const std::string& s) {
  return ParseQuantity(s, {{"", 1}, {"bit", 1}, {"kbit", 1e3}, {"mbit", 1e6}, {"gbit", 1e9}}, false, "bandwidth",
                       "a number with kbit, mbit or gbit (e.g. 1gbit)");
}

// "0", "200us", "0.5ms", "1s"; returns seconds.
StatusOr<double> ParseLatency(const std::string& s) {
  return ParseQuantity(s, {{"", 1}, {"s", 1}, {"ms", 1e-3}, {"us", 1e-6}}, true, "latency",
                       "a number with s, ms or us (e.g. 0.1ms)");
}

struct Link {
  double bps = 0, alpha_s = 0;
  bool known = false;
};

StatusOr<Link> ParseLink(const std::string& s, const char* what) {
  Link l;
  if (s.empty()) return l;
  const size_t comma = s.find(',');
  auto bw = ParseBandwidth(s.substr(0, comma));
  if (!bw.ok()) return bw.status().WithContext(what);
  l.bps = *bw;
  if (comma != std::string::npos) {
    auto lat = ParseLatency(s.substr(comma + 1));
    if (!lat.ok()) return lat.status().WithContext(what);
    l.alpha_s = *lat;
  }
  l.known = true;
  return l;
}

struct Point {
  int workers = 1;
  std::string sync;  // "ring" or "ps"
  int servers = 0;
  std::string Label() const {
    return std::to_string(workers) + (workers == 1 ? " worker, " : " workers, ") +
           (sync == "ring" ? std::string("ring") : "ps " + std::to_string(servers) + (servers == 1 ? " server" : " servers"));
  }
  std::string Tag() const {
    return "w" + std::to_string(workers) + "-" + sync + (sync == "ps" ? std::to_string(servers) : std::string());
  }
};

struct Result {
  Point p;
  // Measured (bench train, averaged over ranks; the step time is the slowest rank's).
  double step_ms = 0, items_per_s = 0, comm_ms = 0, exposed_ms = 0, hidden_ms = 0, bytes_sent = 0;
  double transfer_ms = NAN;  // communication after the slowest worker's backward (shared clock)
  double grad_bytes = 0;      // the gradient a rank syncs per step (its arena under TP)
  int tp = 1;                 // tensor-parallel degree
  double tp_payload = 0;      // closed-form TP all-reduce payload per rank per step
  double tp_bytes = 0;        // measured TP all-reduce payload per rank per step
  std::string unit = "tokens";
  // Derived against the 1-worker point, and the model.
  double efficiency = 0, pred_comm_ms = NAN, pred_step_ms = NAN, pred_items_per_s = NAN, pred_efficiency = NAN;
  double pred_tp_ms = 0;  // the tensor-parallel all-reduces inside forward and backward
  std::string Series() const { return p.sync == "ring" ? "ring" : "ps" + std::to_string(p.servers); }
};

struct Proc {
  pid_t pid = -1;
  std::string label;  // "rank 2 (namespace x)" / "ps 1 (...)"
  std::string log;
  bool server = false;
  bool done = false;
};

std::string SelfExe() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string("ringtrain") : p.string();
}

StatusOr<pid_t> Spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env_add, const std::string& log) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) env.emplace_back(*e);
  for (const auto& kv : env_add) {
    const std::string key = kv.substr(0, kv.find('=') + 1);
    env.erase(std::remove_if(env.begin(), env.end(), [&](const std::string& x) { return x.rfind(key, 0) == 0; }), env.end());
    env.push_back(kv);
  }
  std::vector<char*> a, e;
  for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
  a.push_back(nullptr);
  for (const auto& s : env) e.push_back(const_cast<char*>(s.c_str()));
  e.push_back(nullptr);
  const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return IoError("creating " + log + ": " + std::strerror(errno));
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fd);
    return IoError(std::string("fork: ") + std::strerror(errno));
  }
  if (pid == 0) {
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(1);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::execvpe(a[0], a.data(), e.data());
    std::fprintf(stderr, "cannot run %s: %s\n", a[0], std::strerror(errno));
    ::_exit(127);
  }
  ::close(fd);
  return pid;
}

std::string LastLines(const std::string& path, int n) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  std::string out;
  for (size_t i = lines.size() > static_cast<size_t>(n) ? lines.size() - static_cast<size_t>(n) : 0; i < lines.size(); ++i)
    out.append("\n    ").append(lines[i]);
  return out;
}

void KillAll(std::vector<Proc>& procs, int sig) {
  for (auto& p : procs)
    if (!p.done && p.pid > 0) ::kill(-p.pid, sig);
}

void Reap(std::vector<Proc>& procs) {
  for (auto& p : procs) {
    if (p.done || p.pid <= 0) continue;
    int status = 0;
    while (::waitpid(p.pid, &status, 0) < 0 && errno == EINTR) {
    }
    p.done = true;
  }
}

std::string Why(int status) {
  return WIFEXITED(status) ? "exited with status " + std::to_string(WEXITSTATUS(status))
                           : "was killed by signal " + std::to_string(WTERMSIG(status));
}

// argv as a one-task job on `host` through the cluster's launcher. An srun step of a server
// overlaps the other steps, so the workers' step still finds its CPUs in the allocation.
std::vector<std::string> OneTaskOn(const std::string& launcher, const std::string& host, const std::vector<std::string>& argv) {
  std::vector<std::string> out =
      launcher == "mpirun" ? std::vector<std::string>{"mpirun", "-x", "RINGTRAIN_TOKEN", "-np", "1", "--host", host}
                           : std::vector<std::string>{"srun", "-n", "1", "-N", "1", "-w", host, "--overlap"};
  out.insert(out.end(), argv.begin(), argv.end());
  return out;
}

// Waits for the workers of a point; stops the servers once every worker succeeded.
Status Supervise(std::vector<Proc>& procs, const Point& pt, double timeout_s) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  for (;;) {
    bool workers_left = false;
    for (auto& p : procs) {
      if (p.done) continue;
      int st = 0;
      const pid_t r = ::waitpid(p.pid, &st, WNOHANG);
      if (r == p.pid) {
        p.done = true;
        const bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
        if (!ok || p.server) {
          KillAll(procs, SIGKILL);
          Reap(procs);
          const std::string tail = LastLines(p.log, 5);
          return Unavailable("point '" + pt.Label() + "': " + p.label + " " + Why(st) +
                             (p.server ? " before the workers finished" : "") +
                             (tail.empty() ? "; its log " + p.log + " is empty" : "; last lines of " + p.log + ":" + tail));
        }
      } else if (!p.server) {
        workers_left = true;
      }
    }
    if (!workers_left) break;
    if (g_stop.load()) {
      KillAll(procs, SIGKILL);
      Reap(procs);
      return Aborted("stopped by signal " + std::to_string(g_stop.load()) + " during point '" + pt.Label() + "'");
    }
    if (std::chrono::steady_clock::now() > give_up) {
      KillAll(procs, SIGKILL);
      Reap(procs);
      return DeadlineExceeded("point '" + pt.Label() + "' did not finish within " + std::to_string(static_cast<int>(timeout_s)) + " s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  // The servers: SIGTERM (a launcher forwards it to its task), SIGKILL after 10 s.
  KillAll(procs, SIGTERM);
  const auto grace = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (bool left = true; left && std::chrono::steady_clock::now() < grace;) {
    left = false;
    for (auto& p : procs) {
      if (p.done || p.pid <= 0) continue;
      int st = 0;
      if (::waitpid(p.pid, &st, WNOHANG) == p.pid) p.done = true;
      else left = true;
    }
    if (left) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  KillAll(procs, SIGKILL);
  Reap(procs);
  return Status::Ok();
}

StatusOr<Result> ParseResult(const Point& pt, const std::string& log) {
  std::ifstream in(log);
  std::string json;
  for (std::string l; std::getline(in, l);) {
    const size_t b = l.find('{');
    if (b != std::string::npos && l.find("\"ms_per_step\"") != std::string::npos) json = l.substr(b);
  }
  if (json.empty()) return DataLoss("point '" + pt.Label() + "': no result line in " + log);
  auto j = nlohmann::json::parse(json, nullptr, false);
  if (j.is_discarded() || !j.contains("ms_per_step")) return DataLoss("point '" + pt.Label() + "': unreadable result in " + log);
  Result r;
  r.p = pt;
  r.unit = j.contains("tokens_per_s") ? "tokens" : "images";
  r.items_per_s = j.value(r.unit + "_per_s", 0.0);
  r.step_ms = j.value("ms_per_step", 0.0);
  r.comm_ms = j.value("comm_ms_per_step", 0.0);
  r.exposed_ms = j.value("exposed_comm_ms_per_step", 0.0);
  r.hidden_ms = j.value("hidden_comm_ms_per_step", 0.0);
  r.bytes_sent = j.value("bytes_sent_per_step", 0.0);
  if (j.contains("transfer_ms_per_step") && j["transfer_ms_per_step"].is_number()) r.transfer_ms = j["transfer_ms_per_step"].get<double>();
  r.tp = j.value("tensor_parallel", 1);
  // Under TP a rank holds a slice of the model: its arena, as the DP all-reduce reports it (with
  // one replica there is no DP all-reduce, and the model uses no gradient bytes).
  const double dp_bytes = j.value("dp_allreduce_bytes_per_step", 0.0);
  r.grad_bytes = r.tp > 1 && dp_bytes > 0 ? dp_bytes : 4 * j.value("num_params", 0.0);
  r.tp_payload = j.value("tp_closed_form_blocks_bytes", 0.0) + j.value("tp_closed_form_embedding_output_ce_bytes", 0.0);
  r.tp_bytes = j.value("tp_allreduce_bytes_per_step", 0.0);
  return r;
}

// The closed forms, in ms: the gradient sync of n data-parallel replicas (workers / tp).
double PredictedCommMs(const Point& p, int tp, double grad_bytes, const Link& l) {
  const double n = p.workers / tp, B = l.bps / 8.0;
  if (!l.known || (n == 1 && p.sync == "ring")) return 0;
  if (p.sync == "ring") return 1e3 * (2 * (n - 1) / n * grad_bytes / B + 2 * (n - 1) * l.alpha_s);
  const double per_dir = std::max(grad_bytes / B, n * grad_bytes / (p.servers * B)) + l.alpha_s;
  return 1e3 * 2 * per_dir;
}

// Tensor parallelism: the ring all-reduces of its payload inside forward and backward,
// 2(t-1)/t * P/B, plus 2(t-1) latencies for each of the (4 L + 3) * accum all-reduces of a step.
double PredictedTpMs(int tp, double payload, int layers, int accum, const Link& l) {
  if (!l.known || tp <= 1) return 0;
  const double t = tp;
  return 1e3 * (2 * (t - 1) / t * payload / (l.bps / 8.0) + (4.0 * layers + 3.0) * accum * 2 * (t - 1) * l.alpha_s);
}

std::string Fmt(double v, int digits = 3) {
  if (!std::isfinite(v)) return "";
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

std::string SeriesTitle(const std::string& s) {
  if (s == "ring") return "ring all-reduce";
  return "parameter server, " + s.substr(2) + (s.substr(2) == "1" ? " server" : " servers");
}

Status WriteCsv(const std::string& path, const std::vector<Result>& rs) {
  std::ofstream f(path);
  if (!f) return IoError("creating " + path);
  f << "workers,sync,ps_servers,step_ms,items_per_s,unit,efficiency,compute_ms,comm_ms,exposed_comm_ms,hidden_comm_ms,"
       "transfer_ms,bytes_sent_per_worker,gradient_bytes,tensor_parallel,tp_bytes_per_worker,predicted_tp_comm_ms,"
       "predicted_comm_ms,predicted_step_ms,comm_measured_to_predicted\n";
  for (const auto& r : rs) {
    // Measured against the model: the communication once every worker was ready (transfer) where
    // the ranks share a clock, else all the time communication was in progress.
    const double measured = std::isfinite(r.transfer_ms) ? r.transfer_ms : r.comm_ms;
    const double ratio = r.pred_comm_ms > 0 ? measured / r.pred_comm_ms : NAN;
    f << r.p.workers << ',' << r.p.sync << ',' << r.p.servers << ',' << Fmt(r.step_ms) << ',' << Fmt(r.items_per_s, 1) << ','
      << r.unit << ',' << Fmt(r.efficiency, 4) << ',' << Fmt(r.step_ms - r.exposed_ms) << ',' << Fmt(r.comm_ms) << ','
      << Fmt(r.exposed_ms) << ',' << Fmt(r.hidden_ms) << ',' << Fmt(r.transfer_ms) << ',' << Fmt(r.bytes_sent, 0) << ','
      << Fmt(r.grad_bytes, 0) << ',' << r.tp << ',' << Fmt(r.tp_bytes, 0) << ','
      << Fmt(r.pred_tp_ms) << ',' << Fmt(r.pred_comm_ms) << ',' << Fmt(r.pred_step_ms) << ',' << Fmt(ratio, 3) << '\n';
  }
  f.close();
  if (!f) return IoError("writing " + path);
  return Status::Ok();
}

// gnuplot draws throughput and efficiency against workers (one line per sync mode, the model
// dashed in the same colour) and the step-time breakdown, each as SVG and PNG.
Status WritePlots(const std::string& dir, const std::vector<Result>& rs, bool model, const std::string& subtitle) {
  std::vector<std::string> series;
  for (const auto& r : rs)
    if (std::find(series.begin(), series.end(), r.Series()) == series.end()) series.push_back(r.Series());
  std::vector<int> xs;
  for (const auto& r : rs)
    if (std::find(xs.begin(), xs.end(), r.p.workers) == xs.end()) xs.push_back(r.p.workers);
  std::sort(xs.begin(), xs.end());
  for (const auto& s : series) {
    std::ofstream f(dir + "/plot-" + s + ".dat");
    f << "# workers items_per_s efficiency predicted_items_per_s predicted_efficiency\n";
    for (const auto& r : rs)
      if (r.Series() == s)
        f << r.p.workers << ' ' << Fmt(r.items_per_s, 1) << ' ' << Fmt(r.efficiency, 4) << ' '
          << (std::isfinite(r.pred_items_per_s) ? Fmt(r.pred_items_per_s, 1) : "NaN") << ' '
          << (std::isfinite(r.pred_efficiency) ? Fmt(r.pred_efficiency, 4) : "NaN") << '\n';
  }
  {
    std::ofstream f(dir + "/plot-breakdown.dat");
    f << "# point compute_ms exposed_comm_ms\n";
    for (const auto& s : series)
      for (const auto& r : rs)
        if (r.Series() == s)
          f << '"' << r.p.workers << ' ' << s << "\" " << Fmt(r.step_ms - r.exposed_ms)
            << ' ' << Fmt(r.exposed_ms) << '\n';
  }
  const std::string unit = rs.empty() ? "tokens" : rs.front().unit;
  std::ostringstream gp;
  std::string xtics;
  for (int x : xs) xtics.append(xtics.empty() ? "" : ", ").append(std::to_string(x));
  gp << "set datafile missing 'NaN'\nset grid\nset key left top\nset xlabel 'workers'\nset xtics (" << xtics << ")\n"
     << "set xrange [" << xs.front() - 0.5 << ":" << xs.back() + 0.5 << "]\n";
  auto lines = [&](int col_meas, int col_pred) {
    std::string cmd;
    for (size_t i = 0; i < series.size(); ++i) {
      const std::string file = "'" + dir + "/plot-" + series[i] + ".dat'";
      const std::string lc = std::to_string(i + 1);
      cmd.append(cmd.empty() ? "plot " : ", ")
          .append(file + " using 1:" + std::to_string(col_meas) + " with linespoints lw 2 pt 7 lc " + lc + " title '" +
                  SeriesTitle(series[i]) + "'");
      if (model)
        cmd.append(", " + file + " using 1:" + std::to_string(col_pred) + " with lines lw 2 dt 2 lc " + lc + " title '" +
                   SeriesTitle(series[i]) + " (model)'");
    }
    return cmd + "\n";
  };
  for (const std::string term : {"svg", "png"}) {
    const std::string t = term == "svg" ? "set terminal svg size 900,560 dynamic font 'sans,12'\n"
                                        : "set terminal pngcairo size 900,560 font 'sans,11'\n";
    gp << t << "set output '" << dir << "/throughput." << term << "'\nset title 'Throughput" << subtitle << "'\n"
       << "set ylabel '" << unit << "/s (all workers)'\nset yrange [0:*]\n" << lines(2, 4);
    gp << "set output '" << dir << "/efficiency." << term << "'\nset title 'Scaling efficiency" << subtitle << "'\n"
       << "set ylabel 'efficiency (throughput / (workers x 1-worker throughput))'\nset yrange [0:1.1]\n" << lines(3, 5);
    gp << "set output '" << dir << "/breakdown." << term << "'\nset title 'Step time" << subtitle << "'\n"
       << "set ylabel 'ms per step'\nset yrange [0:*]\nset xrange [*:*]\nset xlabel 'workers, sync'\n"
       << "set style data histograms\nset style histogram rowstacked\nset style fill solid 0.8 border -1\nset boxwidth 0.7\n"
       << "set xtics rotate by -30 ()\n"
       << "plot '" << dir << "/plot-breakdown.dat' using 2:xtic(1) title 'compute (incl. hidden communication)' lc 3, "
       << "'' using 3 title 'exposed communication' lc 7\n"
       << "unset style data\nset xtics (" << xtics << ") norotate\nset xlabel 'workers'\nset xrange [" << xs.front() - 0.5
       << ":" << xs.back() + 0.5 << "]\nset output\n";
  }
  const std::string script = dir + "/plots.gp";
  {
    std::ofstream f(script);
    f << gp.str();
    if (!f) return IoError("writing " + script);
  }
  auto r = RunTool({"gnuplot", script});
  if (!r.ok()) return r.status().WithContext("drawing the plots (is gnuplot installed? scripts/install-deps.sh installs gnuplot-nox)");
  return Status::Ok();
}

Status RunScaling(const ScalingArgs& a) {
  RT_ASSIGN_OR_RETURN(std::vector<int> workers, IntList(a.workers, "--workers"));
  RT_ASSIGN_OR_RETURN(std::vector<int> servers, IntList(a.ps_servers, "--ps-servers"));
  bool ring = false, ps = false;
  {
    std::stringstream in(a.sync);
    for (std::string m; std::getline(in, m, ',');) {
      if (m == "ring") ring = true;
      else if (m == "ps") ps = true;
      else return InvalidArgument("--sync: '" + m + "' is neither ring nor ps");
    }
  }
  if (!ring && !ps) return InvalidArgument("--sync names no mode (ring, ps)");
  if (a.launcher != "local" && a.launcher != "mpirun" && a.launcher != "srun")
    return InvalidArgument("--launcher must be local, mpirun or srun, not '" + a.launcher + "'");
  if (!a.emulate.empty() && a.launcher != "local") return InvalidArgument("--emulate runs everything on this host: it needs --launcher local");
  if (!a.ps_nodes.empty() && a.launcher == "local")
    return InvalidArgument("--ps-nodes places servers of an mpirun/srun run: it needs --launcher mpirun or srun");
  std::vector<std::string> ps_nodes;
  if (a.launcher != "local" && ps) {
    std::stringstream in(a.ps_nodes);
    for (std::string h; std::getline(in, h, ',');) {
      if (h.empty() || h.find_first_of(" \t:") != std::string::npos)
        return InvalidArgument("--ps-nodes: '" + h + "' is not a host name");
      ps_nodes.push_back(h);
    }
    if (ps_nodes.empty()) {
      char host[256] = {};
      if (::gethostname(host, sizeof host - 1) != 0) return IoError("gethostname failed; name the servers' hosts with --ps-nodes");
      ps_nodes.push_back(host);
    }
  }
  if (a.steps < 1 || a.warmup < 0) return InvalidArgument("--steps must be at least 1 and --warmup at least 0");
  RT_ASSIGN_OR_RETURN(Link emu, ParseLink(a.emulate, "--emulate"));
  RT_ASSIGN_OR_RETURN(Link mod, ParseLink(a.model, "--model"));
  const Link link = mod.known ? mod : emu;
  if (!a.config.empty() && !fs::exists(a.config)) return NotFound("--config " + a.config + ": no such file");

  // The model's shape: tensor-parallel degree (one replica spans tp workers), layers, accumulation.
  RT_ASSIGN_OR_RETURN(Config cfg, Config::Load(a.config, a.sets));
  const int tp = static_cast<int>(cfg.Int("parallel.tensor"));
  const int layers = static_cast<int>(cfg.Int("model.n_layer")), accum = static_cast<int>(cfg.Int("train.grad_accum"));
  if (tp > 1 && ps) return InvalidArgument("--sync ps: parameter servers do not combine with parallel.tensor > 1");
  for (int n : workers)
    if (n % tp != 0)
      return InvalidArgument("--workers: " + std::to_string(n) + " is not a multiple of parallel.tensor = " + std::to_string(tp));

  // Points: every sync mode at every worker count; one replica with ring (no gradient sync) is the
  // compute baseline and runs even when it is not in --workers.
  std::vector<Point> points;
  points.push_back({tp, "ring", 0});
  for (int n : workers) {
    if (ring && n > tp) points.push_back({n, "ring", 0});
    if (ps)
      for (int k : servers) points.push_back({n, "ps", k});
  }
  const std::string out = fs::absolute(a.out).string();
  std::error_code ec;
  fs::create_directories(out + "/logs", ec);
  if (ec) return IoError("creating " + out + "/logs: " + ec.message());

  struct sigaction sa{}, old_int{}, old_term{};
  sa.sa_handler = OnStop;
  ::sigaction(SIGINT, &sa, &old_int);
  ::sigaction(SIGTERM, &sa, &old_term);
  struct Restore {
    struct sigaction i, t;
    ~Restore() {
      ::sigaction(SIGINT, &i, nullptr);
      ::sigaction(SIGTERM, &t, nullptr);
    }
  } restore{old_int, old_term};

  const int max_workers = workers.back();
  const int max_servers = ps ? servers.back() : 0;
  std::unique_ptr<NetnsCluster> cluster;
  if (emu.known) {
    const std::string prefix = "rtscale" + std::to_string(::getpid()) + "-";
    std::printf("bench scaling: emulated cluster of %d namespaces (%d workers + %d servers), links %s bit/s each way%s\n",
                max_workers + max_servers, max_workers, max_servers, Fmt(emu.bps, 0).c_str(),
                emu.alpha_s > 0 ? " (latency enters the model only: tc netem is not available)" : "");
    std::fflush(stdout);
    RT_ASSIGN_OR_RETURN(cluster, NetnsCluster::Create(prefix, max_workers + max_servers, emu.bps));
  }
  const std::string exe = SelfExe();
  const std::string token = ps::RandomTokenHex();  // servers and workers of every point share it
  // What every point's `bench train` gets; points add their sync mode and transport.
  std::vector<std::string> train_common = {"bench", "train", "--steps", std::to_string(a.steps), "--warmup",
                                           std::to_string(a.warmup), "--json"};
  if (!a.config.empty()) train_common.insert(train_common.end(), {"--config", fs::absolute(a.config).string()});
  if (a.barrier) train_common.insert(train_common.end(), {"--barrier-before-sync", "--set", "dist.overlap=false"});
  for (const auto& kv : a.sets) train_common.insert(train_common.end(), {"--set", kv});
  std::vector<Result> results;
  const int base_port = 20000 + static_cast<int>(::getpid() % 20000);
  for (size_t i = 0; i < points.size(); ++i) {
    const Point& pt = points[i];
    const int port = base_port + static_cast<int>(i) * 16;
    std::vector<Proc> procs;
    auto addr_of = [&](int node) { return cluster ? cluster->nodes()[static_cast<size_t>(node)].addr : std::string("127.0.0.1"); };
    auto where = [&](int node) { return cluster ? " (namespace " + cluster->nodes()[static_cast<size_t>(node)].ns + ")" : std::string(); };
    auto wrap = [&](int node, std::vector<std::string> argv) { return cluster ? cluster->Wrap(node, argv) : argv; };
    // Starts p (its label and log set); when that fails, stops what this point started.
    auto start = [&](Proc p, const std::vector<std::string>& argv, const std::vector<std::string>& env) -> Status {
      auto pid = Spawn(argv, env, p.log);
      if (!pid.ok()) {
        KillAll(procs, SIGKILL);
        Reap(procs);
        return pid.status();
      }
      p.pid = *pid;
      procs.push_back(std::move(p));
      return Status::Ok();
    };
    std::string ps_hosts;
    std::vector<std::string> train = train_common;
    if (pt.sync == "ps") {
      train.insert(train.end(), {"--set", "sync.mode=ps"});
      for (int j = 0; j < pt.servers; ++j) {
        const bool remote = a.launcher != "local";
        const std::string host = remote ? ps_nodes[static_cast<size_t>(j) % ps_nodes.size()] : addr_of(max_workers + j);
        const std::string hp = host + ":" + std::to_string(port + 1 + j);
        ps_hosts.append(ps_hosts.empty() ? "" : ",").append(hp);
        Proc p;
        p.server = true;
        p.label = "ps " + std::to_string(j) + (remote ? " on " + host : where(max_workers + j));
        p.log = out + "/logs/" + pt.Tag() + "-ps" + std::to_string(j) + ".log";
        // On a cluster host the server listens on every interface (workers reach it by the host's
        // name; the token keeps strangers out).
        const std::string listen = remote ? "0.0.0.0:" + std::to_string(port + 1 + j) : hp;
        const std::vector<std::string> serve = {exe, "ps", "--listen", listen, "--shard",
                                                std::to_string(j) + "/" + std::to_string(pt.servers)};
        RT_RETURN_IF_ERROR(start(p, remote ? OneTaskOn(a.launcher, host, serve) : wrap(max_workers + j, serve),
                                 {"RINGTRAIN_TOKEN=" + token}));
      }
      // The workers' job gets the servers by config (a launcher does not forward RINGTRAIN_PS_HOSTS).
      if (a.launcher != "local") train.insert(train.end(), {"--set", "sync.ps_hosts=" + ps_hosts});
    }
    // Between namespaces: TCP, on the node's own interface (also the PS workers' world, which
    // averages the loss).
    if (pt.workers > 1 && cluster)
      train.insert(train.end(), {"--set", "dist.transport=tcp", "--set", "dist.bind=" + cluster->nodes()[0].iface});
    if (a.launcher == "local") {
      for (int r = 0; r < pt.workers; ++r) {
        std::vector<std::string> argv = {exe};
        argv.insert(argv.end(), train.begin(), train.end());
        std::vector<std::string> env = {"RANK=" + std::to_string(r), "WORLD_SIZE=" + std::to_string(pt.workers),
                                        "LOCAL_RANK=" + std::to_string(cluster ? 0 : r),
                                        "LOCAL_WORLD_SIZE=" + std::to_string(cluster ? 1 : pt.workers),
                                        "MASTER_ADDR=" + addr_of(0), "MASTER_PORT=" + std::to_string(port),
                                        "RINGTRAIN_TOKEN=" + token, "RINGTRAIN_THREADS=1", "RINGTRAIN_SHARED_CLOCK=1"};
        if (!ps_hosts.empty()) env.push_back("RINGTRAIN_PS_HOSTS=" + ps_hosts);
        Proc p;
        p.label = "rank " + std::to_string(r) + where(r);
        p.log = out + "/logs/" + pt.Tag() + "-rank" + std::to_string(r) + ".log";
        RT_RETURN_IF_ERROR(start(p, wrap(r, argv), env));
      }
    } else {
      // Threads per rank are the job's business here (threads=N in --set, or the launcher's binding).
      // The token reaches the ranks through the launcher (mpirun forwards only what -x names; srun
      // exports the whole environment).
      std::vector<std::string> argv = a.launcher == "mpirun"
                                          ? std::vector<std::string>{"mpirun", "-x", "RINGTRAIN_TOKEN", "-np",
                                                                     std::to_string(pt.workers), exe}
                                          : std::vector<std::string>{"srun", "-n", std::to_string(pt.workers), exe};
      argv.insert(argv.end(), train.begin(), train.end());
      Proc p;
      p.label = a.launcher + " job";
      p.log = out + "/logs/" + pt.Tag() + ".log";
      RT_RETURN_IF_ERROR(start(p, argv, {"RINGTRAIN_TOKEN=" + token}));
    }
    std::printf("point %zu/%zu: %s ...", i + 1, points.size(), pt.Label().c_str());
    std::fflush(stdout);
    Status st = Supervise(procs, pt, a.point_timeout_s);
    if (!st.ok()) {
      std::printf(" failed\n");
      std::fflush(stdout);
      return st;
    }
    std::string rank0;
    for (const auto& p : procs)
      if (!p.server) {
        rank0 = p.log;
        break;
      }
    RT_ASSIGN_OR_RETURN(Result r, ParseResult(pt, rank0));
    r.pred_comm_ms = link.known ? PredictedCommMs(pt, tp, r.grad_bytes, link) : NAN;
    r.pred_tp_ms = PredictedTpMs(tp, r.tp_payload, layers, accum, link);
    std::printf(" %.1f ms/step, %.0f %s/s, communication %.1f ms/step (exposed %.1f, after the slowest backward %s)%s\n",
                r.step_ms, r.items_per_s, r.unit.c_str(), r.comm_ms, r.exposed_ms,
                std::isfinite(r.transfer_ms) ? Fmt(r.transfer_ms, 1).c_str() : "n/a",
                std::isfinite(r.pred_comm_ms) && r.pred_comm_ms > 0 ? (", model " + Fmt(r.pred_comm_ms, 1) + " ms").c_str() : "");
    std::fflush(stdout);
    results.push_back(r);
  }
  cluster.reset();  // tears the namespaces down before the plots are drawn
  // Derived figures against the one-replica point. The model's compute is that point's step time
  // less its predicted tensor-parallel communication (none without TP).
  const Result* base = nullptr;
  for (const auto& r : results)
    if (r.p.workers == tp && r.p.sync == "ring") base = &r;
  if (!base) return Internal("no one-replica point");
  const double base_ms = base->step_ms, items1 = base->items_per_s, compute1 = base_ms - base->pred_tp_ms;
  for (auto& r : results) {
    const double replicas = static_cast<double>(r.p.workers / tp);
    r.efficiency = r.items_per_s / (replicas * items1);
    if (link.known) {
      r.pred_step_ms = compute1 + r.pred_tp_ms + r.pred_comm_ms;
      r.pred_efficiency = base_ms / r.pred_step_ms;
      r.pred_items_per_s = replicas * items1 * r.pred_efficiency;
    }
  }
  // The 1-worker ring point belongs to the ring series only when ring was asked for.
  if (!ring) results.erase(results.begin());
  RT_RETURN_IF_ERROR(WriteCsv(out + "/results.csv", results));
  std::string subtitle = emu.known ? " (emulated links " + Fmt(emu.bps / 1e6, 0) + " Mbit/s)" : std::string();
  if (!emu.known && a.launcher == "local") subtitle = " (one host)";
  RT_RETURN_IF_ERROR(WritePlots(out, results, link.known, subtitle));
  std::printf("bench scaling: %zu points; %s/results.csv; plots %s/{throughput,efficiency,breakdown}.{svg,png}\n",
              results.size(), out.c_str(), out.c_str());
  return Status::Ok();
}

}  // namespace

void AddBenchScaling(CLI::App* bench, Action& action) {
  auto a = std::make_shared<ScalingArgs>();
  CLI::App* c = bench->add_subcommand("scaling", "scaling experiment: step time and throughput against workers, ring vs parameter servers");
  c->add_option("--config", a->config, "YAML config of the model to train (default: the built-in default)");
  c->add_option("--set", a->sets, "override a config key for every point: key=value (repeatable)");
  c->add_option("--workers", a->workers, "worker counts (default 1,2,4)");
  c->add_option("--sync", a->sync, "sync modes: ring, ps or ring,ps (default)");
  c->add_option("--ps-servers", a->ps_servers, "parameter-server shard counts for the ps points (default 1,2)");
  c->add_option("--emulate", a->emulate,
                "BANDWIDTH[,LATENCY]: run every worker and server in a network namespace of its own, links shaped to "
                "BANDWIDTH (e.g. 1gbit,0.1ms); needs root (CAP_NET_ADMIN)");
  c->add_option("--model", a->model, "BANDWIDTH[,LATENCY] for the alpha-beta model when not emulating (a real cluster)");
  c->add_option("--launcher", a->launcher, "local (default), mpirun or srun (one job per point)");
  c->add_option("--ps-nodes", a->ps_nodes,
                "with --launcher mpirun|srun: hosts for the parameter servers, comma-separated, used in turn "
                "(default: this host)");
  c->add_option("--steps", a->steps, "timed steps per point (default 6)");
  c->add_flag("--barrier", a->barrier,
              "communication in isolation, to check the model: no overlap with backward, and every worker "
              "waits for the others before the sync");
  c->add_option("--warmup", a->warmup, "untimed warm-up steps per point (default 2)");
  c->add_option("--point-timeout", a->point_timeout_s, "seconds one point may take (default 900)");
  c->add_option("--out", a->out, "directory for results.csv, the plots and logs/ (default scaling)");
  c->callback([&action, a]() { action = [a]() { return RunScaling(*a); }; });
}

}  // namespace ringtrain::cli
