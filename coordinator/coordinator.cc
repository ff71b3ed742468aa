#include "coordinator/coordinator.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "coordinator/request.h"
#include "core/config.h"
#include "parameter_server/auth.h"

namespace ringtrain::coord {

namespace asio = boost::asio;
using asio::ip::tcp;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {
double Now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}
bool Terminal(const std::string& s) { return s == "succeeded" || s == "failed" || s == "cancelled"; }
}  // namespace

Status Coordinator::Conn::Send(proto::CoordType t, const json& j, const std::string& data) {
  proto::CoordMsg m;
  m.set_version(1);
  m.set_type(t);
  m.set_json(j.dump());
  m.set_data(data);
  std::lock_guard<std::mutex> l(send_mu);
  return fc.SendMessage(m, ps::After(30));
}

StatusOr<std::unique_ptr<Coordinator>> Coordinator::Start(const CoordinatorOptions& o) {
  if (o.token.empty()) return InvalidArgument("coordinator: no authentication token");
  if (o.state.empty()) return InvalidArgument("coordinator: --state FILE.db is required");
  std::unique_ptr<Coordinator> c(new Coordinator(o));
  if (c->opts_.run_root.empty()) c->opts_.run_root = o.state + ".d";
  // Agents start processes in their own working directories: hand them absolute paths.
  c->opts_.run_root = fs::absolute(c->opts_.run_root).lexically_normal().string();
  std::error_code ec;
  fs::create_directories(c->opts_.run_root + "/logs", ec);
  if (ec) return IoError("coordinator: creating " + c->opts_.run_root + ": " + ec.message());
  RT_ASSIGN_OR_RETURN(c->store_, Store::Open(o.state));
  RT_RETURN_IF_ERROR(c->Load());
  RT_ASSIGN_OR_RETURN(c->acceptor_, ps::Listen(c->io_, o.host, o.port, "coordinator"));
  c->port_ = c->acceptor_->local_endpoint().port();
  c->acceptor_thread_ = std::thread([p = c.get()] { p->AcceptLoop(); });
  c->scheduler_thread_ = std::thread([p = c.get()] { p->SchedulerLoop(); });
  return c;
}

// Reads the state file back. Workers are presumed alive from now on, until they miss the
// heartbeat timeout: an agent that still runs re-registers with the processes it runs.
Status Coordinator::Load() {
  started_ = Now();
  RT_ASSIGN_OR_RETURN(auto jobs, store_->Jobs());
  for (auto& [id, doc] : jobs) jobs_[id] = std::move(doc);
  RT_ASSIGN_OR_RETURN(auto workers, store_->Workers());
  for (auto& [id, doc] : workers) {
    Worker w;
    w.doc = std::move(doc);
    w.last_seen = started_;
    workers_[id] = std::move(w);
  }
  return Status::Ok();
}

Coordinator::~Coordinator() { Stop(); }

void Coordinator::Stop() {
  if (stop_.exchange(true)) return;
  cv_.notify_all();
  if (acceptor_thread_.joinable()) acceptor_thread_.join();
  if (scheduler_thread_.joinable()) scheduler_thread_.join();
  boost::system::error_code ec;
  acceptor_->close(ec);
  std::vector<std::thread> ts;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto& c : conns_) c->fc.Shutdown();
    ts.swap(threads_);
  }
  for (auto& t : ts) t.join();
}

void Coordinator::AcceptLoop() {
  while (!stop_) {
    tcp::socket sock(io_);
    std::string peer;
    if (!ps::AcceptWithin(*acceptor_, 100, &sock, &peer)) continue;
    auto c = std::make_shared<Conn>(std::move(sock), peer);
    std::lock_guard<std::mutex> l(mu_);
    conns_.push_back(c);
    threads_.emplace_back([this, c] { Serve(c); });
  }
}

void Coordinator::Serve(std::shared_ptr<Conn> c) {
  ps::FrameLimits lim;
  Status s = ps::ServerHandshake(c->fc, opts_.token, ps::After(10), lim);
  if (!s.ok()) {
    std::fprintf(stderr, "coordinator: %s\n", s.message().c_str());
  } else {
    proto::CoordMsg m;
    s = c->fc.RecvMessage(&m, kMaxCoordFrame, ps::After(30), 30);
    if (s.ok() && m.type() == proto::CO_REGISTER) {
      try {
        ServeAgent(c, m);
      } catch (const json::exception& e) {  // a field of the wrong type: drop the agent's connection
        std::fprintf(stderr, "coordinator: closing the agent connection from %s: malformed message: %s\n",
                     c->fc.peer().c_str(), e.what());
      }
    } else if (s.ok() && m.type() == proto::CO_REQUEST) {
      std::string data, op;
      StatusOr<json> r = ParseRequest(m.json(), &op);
      if (r.ok()) {
        try {
          r = Request(*r, &data);
        } catch (const json::exception& e) {  // a field of the wrong type
          r = InvalidArgument(std::string("malformed request: ") + e.what());
        }
      }
      if (r.ok()) {
        (void)c->Send(proto::CO_REPLY, *r, data);
      } else {
        proto::CoordMsg e;
        e.set_version(1);
        e.set_type(proto::CO_ERROR);
        e.set_error(r.status().message());
        (void)c->fc.SendMessage(e, ps::After(5));
      }
    } else {
      const std::string why = s.ok() ? "unexpected first message" : s.message();
      proto::CoordMsg e;
      e.set_version(1);
      e.set_type(proto::CO_ERROR);
      e.set_error(why);
      (void)c->fc.SendMessage(e, ps::After(1));
      std::fprintf(stderr, "coordinator: closing the connection from %s: %s\n", c->fc.peer().c_str(), why.c_str());
    }
  }
  std::lock_guard<std::mutex> l(mu_);
  for (auto& [id, w] : workers_)
    if (w.conn == c) w.conn.reset();  // the agent's link is gone; heartbeats decide liveness
  conns_.erase(std::remove(conns_.begin(), conns_.end(), c), conns_.end());
  c->fc.Shutdown();
}

void Coordinator::ServeAgent(const std::shared_ptr<Conn>& c, const proto::CoordMsg& reg) {
  json r = json::parse(reg.json(), nullptr, false);
  std::string id;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!r.is_object() || !r.contains("id") || !r.contains("slots") || !r["slots"].is_number_integer() ||
        r["slots"].get<int>() < 1) {
      std::fprintf(stderr, "coordinator: bad REGISTER from %s\n", c->fc.peer().c_str());
      return;
    }
    id = r["id"].get<std::string>();
    Worker& w = workers_[id];
    const bool back = w.doc.contains("alive") && !w.doc["alive"].get<bool>();
    w.doc = {{"id", id}, {"host", r.value("host", "")}, {"addr", r.value("addr", "127.0.0.1")},
             {"slots", r["slots"]}, {"gpus", r.value("gpus", json::array())}, {"alive", true}};
    w.conn = c;
    w.last_seen = Now();
    SaveWorker(id);
    Event(0, back ? "worker_back" : "worker_registered", id + " with " + std::to_string(r["slots"].get<int>()) + " slot(s)");
    // Reconciliation: exits that happened while this coordinator was away.
    for (const auto& e : r.value("exited", json::array())) {
      auto it = jobs_.find(e.value("job", int64_t{0}));
      if (it == jobs_.end() || it->second["attempt"] != e["attempt"]) continue;
      for (auto& p : it->second["placements"])
        if (p["rank"] == e["rank"] && p["state"] == "running") {
          p["state"] = "exited";
          p["status"] = e["status"];
        }
      Save(it->first);
    }
    // A process the state says runs here, which the agent neither runs nor saw exit, is lost.
    for (auto& [jid, job] : jobs_) {
      if (job["state"] != "running") continue;
      bool changed = false;
      for (auto& p : job["placements"]) {
        if (p["worker"] != id || p["state"] != "running") continue;
        bool known = false;
        for (const auto& q : r.value("running", json::array()))
          known |= q.value("job", int64_t{0}) == jid && q["attempt"] == job["attempt"] && q["rank"] == p["rank"];
        if (!known) {
          p["state"] = "exited";
          p["status"] = -1;
          changed = true;
        }
      }
      if (changed) Save(jid);
    }
  }
  (void)c->Send(proto::CO_REPLY, {{"worker", id}});
  cv_.notify_all();
  for (;;) {
    proto::CoordMsg m;
    Status s = c->fc.RecvMessage(&m, kMaxCoordFrame, ps::Clock::time_point::max(), 30);
    if (!s.ok()) break;
    const json j = json::parse(m.json(), nullptr, false);
    if (!j.is_object()) break;
    std::lock_guard<std::mutex> l(mu_);
    Worker& w = workers_[id];
    w.last_seen = Now();
    if (m.type() == proto::CO_EXITED) {
      auto it = jobs_.find(j.value("job", int64_t{0}));
      if (it != jobs_.end()) {
        json& job = it->second;
        if (job["attempt"] == j["attempt"])
          for (auto& p : job["placements"])
            if (p["rank"] == j["rank"] && p["worker"] == id) {
              p["state"] = "exited";
              p["status"] = j["status"];
            }
        // A stopped attempt's process is gone: its slot is free again.
        json keep = json::array();
        for (auto& p : job["draining"])
          if (!(p["attempt"] == j["attempt"] && p["rank"] == j["rank"] && p["worker"] == id)) keep.push_back(p);
        job["draining"] = keep;
        Save(it->first);
      }
      cv_.notify_all();
    } else if (m.type() == proto::CO_LOG) {
      std::ofstream(LogPath(j.value("job", int64_t{0})), std::ios::app) << m.data();
    }
  }
}

std::string Coordinator::LogPath(int64_t job) const { return opts_.run_root + "/logs/job-" + std::to_string(job) + ".log"; }

void Coordinator::Event(int64_t job, const std::string& kind, const std::string& reason) {
  Status s = store_->AddEvent(job, kind, reason);
  std::fprintf(stderr, "coordinator: %s%s: %s\n", job ? ("job " + std::to_string(job) + " ").c_str() : "", kind.c_str(),
               reason.c_str());
  if (!s.ok()) std::fprintf(stderr, "coordinator: %s\n", s.message().c_str());
}

void Coordinator::Save(int64_t job) {
  Status s = store_->PutJob(job, jobs_[job]);
  if (!s.ok()) std::fprintf(stderr, "coordinator: %s\n", s.message().c_str());
}

void Coordinator::SaveWorker(const std::string& id) {
  Status s = store_->PutWorker(id, workers_[id].doc);
  if (!s.ok()) std::fprintf(stderr, "coordinator: %s\n", s.message().c_str());
}

int Coordinator::UsedSlots(const std::string& worker) const {
  int n = 0;
  for (const auto& [id, j] : jobs_) {
    for (const char* list : {"placements", "draining"}) {
      if (!j.contains(list)) continue;
      if (std::string(list) == "placements" && j["state"] != "running") continue;
      for (const auto& p : j[list])
        if (p["worker"] == worker && p["state"] != "exited") ++n;
    }
  }
  return n;
}

void Coordinator::SchedulerLoop() {
  std::unique_lock<std::mutex> l(mu_);
  while (!stop_) {
    Tick();
    cv_.wait_for(l, std::chrono::milliseconds(200));
  }
}

// Sends STOP for the current attempt's live processes; they stay as draining (their slots taken)
// until they exit or their agent is lost.
void Coordinator::StopAttempt(int64_t id) {
  json& job = jobs_[id];
  json draining = job.value("draining", json::array());
  for (auto& p : job["placements"]) {
    if (p["state"] == "exited") continue;
    auto w = workers_.find(p["worker"].get<std::string>());
    if (w == workers_.end() || !w->second.doc.value("alive", false)) continue;
    if (w->second.conn) (void)w->second.conn->Send(proto::CO_STOP, {{"job", id}, {"attempt", job["attempt"]}});
    json d = p;
    d["attempt"] = job["attempt"];
    draining.push_back(d);
  }
  job["draining"] = draining;
}

void Coordinator::FailAttempt(int64_t id, const std::string& reason, bool restart) {
  json& job = jobs_[id];
  StopAttempt(id);
  job["reason"] = reason;
  const int restarts = job.value("restarts", 0);
  if (restart && restarts < job.value("max_restarts", 0)) {
    job["state"] = "pending";
    job["restarts"] = restarts + 1;
    job["resume"] = true;
    Event(id, "restarting", reason + " (restart " + std::to_string(restarts + 1) + " of " +
                                std::to_string(job.value("max_restarts", 0)) + ", from the latest checkpoint)");
  } else {
    job["state"] = restart ? "failed" : "cancelled";
    job["ended"] = Now();
    Event(id, restart ? "failed" : "cancelled", reason);
  }
  Save(id);
}

void Coordinator::Tick() {
  const double now = Now();
  for (auto& [id, w] : workers_) {
    if (w.doc.value("alive", false) && now - w.last_seen > opts_.heartbeat_timeout_s) {
      w.doc["alive"] = false;
      SaveWorker(id);
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.0f", opts_.heartbeat_timeout_s);
      Event(0, "worker_lost", id + " missed heartbeats for " + buf + " s");
    }
  }
  for (auto& [id, job] : jobs_) {
    // Draining placements on lost workers are gone with them.
    if (job.contains("draining")) {
      json keep = json::array();
      for (auto& p : job["draining"]) {
        auto w = workers_.find(p["worker"].get<std::string>());
        if (p["state"] != "exited" && w != workers_.end() && w->second.doc.value("alive", false)) keep.push_back(p);
      }
      job["draining"] = keep;
    }
    if (job["state"] != "running") continue;
    std::string bad;
    bool all_ok = true;
    for (const auto& p : job["placements"]) {
      const std::string wid = p["worker"];
      auto w = workers_.find(wid);
      // Servers run until the job stops them, so any exit of one is a failure.
      const bool server = p.contains("ps");
      const std::string who = server ? "parameter server " + std::to_string(p["ps"].get<int>())
                                     : "rank " + std::to_string(p["rank"].get<int>());
      if (p["state"] == "exited") {
        if (server || p["status"] != 0) {
          bad = who + " on " + wid +
                (p["status"] == -1 ? std::string(" was gone when its agent re-registered")
                                   : " exited with status " + std::to_string(p["status"].get<int>()));
          break;
        }
      } else {
        all_ok &= server;
        if (w == workers_.end() || !w->second.doc.value("alive", false)) {
          bad = who + "'s worker " + wid + " was lost";
          break;
        }
      }
    }
    if (!bad.empty()) {
      FailAttempt(id, bad, true);
    } else if (all_ok) {
      StopAttempt(id);  // the parameter servers, if any
      job["state"] = "succeeded";
      job["ended"] = now;
      Event(id, "succeeded", "every rank exited 0");
      Save(id);
    }
  }
  std::vector<int64_t> pending;
  for (const auto& [id, job] : jobs_)
    if (job["state"] == "pending" && job.value("draining", json::array()).empty()) pending.push_back(id);
  std::stable_sort(pending.begin(), pending.end(), [&](int64_t a, int64_t b) {
    return jobs_[a].value("priority", 0) > jobs_[b].value("priority", 0);
  });
  for (int64_t id : pending) TryPlace(id);
  // Elastic jobs grow back: a running job below max_nproc whose attempt has run a while restarts
  // from its latest checkpoint with more processes when the slots left after every pending job
  // had its chance would hold them. (Not a failure: max_restarts is not charged.)
  for (auto& [id, job] : jobs_) {
    if (job["state"] != "running" || job.value("world", 0) >= job["max_nproc"].get<int>()) continue;
    if (now - job.value("attempt_started", now) < 2.0) continue;
    int free = 0;
    for (const auto& [wid, w] : workers_)
      if (w.doc.value("alive", false) && w.conn) free += std::max(0, w.doc["slots"].get<int>() - UsedSlots(wid));
    const int target = std::min(job["max_nproc"].get<int>(), job.value("world", 0) + free);
    if (target <= job.value("world", 0)) continue;
    StopAttempt(id);
    job["state"] = "pending";
    job["resume"] = true;
    Event(id, "growing", std::to_string(free) + " slot(s) free: restarting with up to " + std::to_string(target) +
                             " process(es) from the latest checkpoint");
    Save(id);
  }
}

std::vector<std::string> PlanPlacement(const std::map<std::string, int>& free, int lo, int hi, int extra) {
  int total = 0;
  for (const auto& [wid, f] : free) total += std::max(0, f);
  const int n = std::min(hi, total - extra);
  if (n < lo || n < 1) return {};
  std::vector<std::pair<int, std::string>> left;  // (free, id), largest first, ties by id
  for (const auto& [wid, f] : free)
    if (f > 0) left.push_back({f, wid});
  std::sort(left.begin(), left.end(), [](const auto& a, const auto& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; });
  std::vector<std::string> where;
  int need = n + extra;
  while (need > 0) {
    // The smallest worker that holds the rest alone, else the largest.
    size_t pick = 0;
    bool alone = false;
    for (size_t i = 0; i < left.size(); ++i)
      if (left[i].first >= need && (!alone || left[i].first < left[pick].first)) {
        pick = i;
        alone = true;
      }
    const int take = std::min(need, left[pick].first);
    where.insert(where.end(), static_cast<size_t>(take), left[pick].second);
    need -= take;
    left.erase(left.begin() + static_cast<std::ptrdiff_t>(pick));
  }
  return where;
}

std::string JobToken(const std::string& pool_token, int64_t job, int attempt) {
  return ps::ToHex(ps::HmacSha256(pool_token, "ringtrain job " + std::to_string(job) + " attempt " + std::to_string(attempt)));
}

// Gang placement: all processes of the job (ranks, then its parameter servers) start together or
// none does, with the largest process count in [min_nproc, max_nproc] that fits (PlanPlacement).
bool Coordinator::TryPlace(int64_t id) {
  json& job = jobs_[id];
  std::map<std::string, int> free;
  for (const auto& [wid, w] : workers_)
    if (w.doc.value("alive", false) && w.conn) free[wid] = w.doc["slots"].get<int>() - UsedSlots(wid);
  const int k = job.value("ps_servers", 0);
  const std::vector<std::string> where = PlanPlacement(free, job["min_nproc"], job["max_nproc"], k);
  if (where.empty()) return false;
  const int n = static_cast<int>(where.size()) - k;
  const int attempt = job.value("attempt", 0) + 1;
  job["attempt"] = attempt;
  job["world"] = n;
  job["state"] = "running";
  if (!job.contains("started")) job["started"] = Now();
  job["attempt_started"] = Now();
  // Rendezvous at rank 0's host; server i listens on its host at the port after it + i.
  const int port = opts_.base_port + static_cast<int>((id * 131 + attempt * 17) % 2000);
  const json& w0 = workers_[where[0]].doc;
  json placements = json::array();
  std::map<std::string, int> local_size, local_next;
  for (int r = 0; r < n; ++r) ++local_size[where[static_cast<size_t>(r)]];
  std::string nodes, ps_hosts;
  for (size_t r = 0; r < where.size(); ++r) {
    json p = {{"rank", static_cast<int>(r)}, {"worker", where[r]}, {"state", "running"}, {"status", nullptr}};
    if (static_cast<int>(r) >= n) {
      const int i = static_cast<int>(r) - n;
      p["ps"] = i;
      p["listen"] = workers_[where[r]].doc["addr"].get<std::string>() + ":" + std::to_string(port + 1 + i);
      ps_hosts += (ps_hosts.empty() ? "" : ",");
      ps_hosts += p["listen"].get<std::string>();
    }
    placements.push_back(p);
    if (r == 0 || where[r] != where[r - 1]) {
      if (!nodes.empty()) nodes += ", ";
      nodes += where[r];
    }
  }
  job["placements"] = placements;
  Save(id);
  Event(id, "started", "attempt " + std::to_string(attempt) + ": " + std::to_string(n) + " process(es)" +
                           (k ? " and " + std::to_string(k) + " parameter server(s)" : std::string()) + " on " + nodes +
                           (job.value("resume", false) ? ", resuming from the latest checkpoint" : ""));
  for (const json& p : placements) {
    const std::string wid = p["worker"];
    const int r = p["rank"];
    json start = {{"job", id}, {"attempt", attempt}, {"rank", r}, {"run_dir", job["run_dir"]}};
    if (p.contains("ps")) {
      start["ps"] = p["ps"];
      start["ps_count"] = k;
      start["listen"] = p["listen"];
    } else {
      start.update({{"world", n},
                    {"local_rank", local_next[wid]++},
                    {"local_world", local_size[wid]},
                    {"master_addr", w0["addr"]},
                    {"master_port", port},
                    {"ps_hosts", ps_hosts},
                    {"config", job["config"]},
                    {"resume", job.value("resume", false)}});
    }
    Worker& w = workers_[wid];
    if (w.conn) (void)w.conn->Send(proto::CO_START, start);
  }
  return true;
}

StatusOr<json> Coordinator::Submit(const json& spec) {
  static const std::vector<std::string> kKeys = {"name", "nproc", "min_nproc", "max_nproc", "ps_servers", "priority",
                                                 "max_restarts", "config", "set", "run_dir"};
  for (auto it = spec.begin(); it != spec.end(); ++it)
    if (std::find(kKeys.begin(), kKeys.end(), it.key()) == kKeys.end())
      return InvalidArgument("job spec: unknown key '" + it.key() + "' (known: name, nproc, min_nproc, max_nproc, "
                             "ps_servers, priority, max_restarts, config, set, run_dir)");
  auto geti = [&](const char* k, int def) -> StatusOr<int> {
    if (!spec.contains(k)) return def;
    if (!spec[k].is_number_integer()) return InvalidArgument(std::string("job spec: ") + k + " must be an integer");
    return spec[k].get<int>();
  };
  RT_ASSIGN_OR_RETURN(int nproc, geti("nproc", 1));
  RT_ASSIGN_OR_RETURN(int lo, geti("min_nproc", spec.contains("nproc") || !spec.contains("max_nproc") ? nproc : 1));
  RT_ASSIGN_OR_RETURN(int hi, geti("max_nproc", spec.contains("min_nproc") && !spec.contains("nproc") ? lo : nproc));
  if (spec.contains("min_nproc") && !spec.contains("nproc") && !spec.contains("max_nproc")) hi = lo;
  RT_ASSIGN_OR_RETURN(int priority, geti("priority", 0));
  RT_ASSIGN_OR_RETURN(int max_restarts, geti("max_restarts", 3));
  if (lo < 1 || hi < lo) return InvalidArgument("job spec: need 1 <= min_nproc <= max_nproc (got " + std::to_string(lo) + ", " + std::to_string(hi) + ")");
  if (max_restarts < 0) return InvalidArgument("job spec: max_restarts must be >= 0");
  RT_ASSIGN_OR_RETURN(int ps_servers, geti("ps_servers", 0));
  if (ps_servers < 0 || ps_servers > 256) return InvalidArgument("job spec: ps_servers must be in [0, 256]");
  // The training config: its text (the client read the file) and --set overrides, validated now.
  std::vector<std::string> sets;
  if (spec.contains("set")) {
    if (!spec["set"].is_array()) return InvalidArgument("job spec: set must be a list of key=value");
    for (const auto& s : spec["set"]) {
      if (!s.is_string()) return InvalidArgument("job spec: set must be a list of key=value");
      sets.push_back(s.get<std::string>());
    }
  }
  Config cfg;
  if (spec.contains("config") && spec["config"].is_string()) {
    RT_ASSIGN_OR_RETURN(cfg, Config::FromYamlString(spec["config"].get<std::string>(), "the job's config"));
  }
  for (const auto& s : sets) {
    Status st = cfg.SetOverride(s);
    if (!st.ok()) return InvalidArgument("job spec: " + st.message());
  }
  const int64_t tp = cfg.Int("parallel.tensor");
  if (lo % tp != 0 || hi % tp != 0)
    return InvalidArgument("job spec: parallel.tensor = " + std::to_string(tp) + " must divide the process count");
  if (ps_servers > 0) {  // what the trainer would refuse with servers, refused now
    if (tp > 1) return InvalidArgument("job spec: ps_servers does not combine with parallel.tensor > 1");
    if (cfg.Bool("dist.zero1")) return InvalidArgument("job spec: ps_servers does not combine with dist.zero1 (the servers hold the optimizer state)");
    if (cfg.Str("sync.mode") == "allreduce") return InvalidArgument("job spec: ps_servers needs sync.mode ps or auto, not allreduce");
    if (!cfg.Str("sync.ps_hosts").empty())
      return InvalidArgument("job spec: ps_servers and sync.ps_hosts both name servers; give one");
  } else if (cfg.Str("sync.mode") == "ps" && cfg.Str("sync.ps_hosts").empty()) {
    return InvalidArgument("job spec: sync.mode = ps needs ps_servers: K (or sync.ps_hosts)");
  }
  std::lock_guard<std::mutex> l(mu_);
  int pool = 0;
  for (const auto& [id, w] : workers_) pool += w.doc["slots"].get<int>();
  if (!workers_.empty() && lo + ps_servers > pool)
    return InvalidArgument("job spec: needs " + std::to_string(lo) + " process(es)" +
                           (ps_servers ? " and " + std::to_string(ps_servers) + " parameter server(s)" : std::string()) +
                           ", but the pool has " + std::to_string(pool) + " slot(s) on " +
                           std::to_string(workers_.size()) + " worker(s)");
  json doc = {{"name", spec.value("name", std::string("job"))},
              {"min_nproc", lo},
              {"max_nproc", hi},
              {"ps_servers", ps_servers},
              {"priority", priority},
              {"max_restarts", max_restarts},
              {"restarts", 0},
              {"attempt", 0},
              {"config", cfg.ToJson()},
              {"steps", cfg.Int("train.steps")},
              {"state", "pending"},
              {"submitted", Now()},
              {"placements", json::array()},
              {"draining", json::array()}};
  RT_ASSIGN_OR_RETURN(int64_t id, store_->AddJob(doc));
  doc["run_dir"] = spec.value("run_dir", opts_.run_root + "/job-" + std::to_string(id));
  jobs_[id] = doc;
  Save(id);
  Event(id, "submitted", doc["name"].get<std::string>() + ": " + std::to_string(lo) +
                             (hi != lo ? "-" + std::to_string(hi) : "") + " process(es), priority " + std::to_string(priority));
  cv_.notify_all();
  return json{{"id", id}};
}

StatusOr<json> Coordinator::Request(const json& req, std::string* data) {
  const std::string op = req["op"].get<std::string>();  // ParseRequest checked it
  if (op == "submit") {
    if (!req.contains("spec") || !req["spec"].is_object()) return InvalidArgument("submit: no job spec");
    return Submit(req["spec"]);
  }
  std::lock_guard<std::mutex> l(mu_);
  auto job_of = [&]() -> StatusOr<int64_t> {
    const int64_t id = req.value("id", int64_t{0});
    if (!jobs_.count(id)) return NotFound("no job " + std::to_string(id));
    return id;
  };
  if (op == "jobs") {
    json out = json::array();
    for (const auto& [id, j] : jobs_)
      out.push_back({{"id", id}, {"name", j["name"]}, {"state", j["state"]}, {"world", j.value("world", 0)},
                     {"priority", j["priority"]}, {"restarts", j["restarts"]}, {"reason", j.value("reason", "")}});
    return json{{"jobs", out}};
  }
  if (op == "job") {
    RT_ASSIGN_OR_RETURN(int64_t id, job_of());
    json j = jobs_[id];
    j["id"] = id;
    RT_ASSIGN_OR_RETURN(j["events"], store_->Events(id));
    return j;
  }
  if (op == "cancel") {
    RT_ASSIGN_OR_RETURN(int64_t id, job_of());
    const std::string st = jobs_[id]["state"];
    if (Terminal(st)) return InvalidArgument("job " + std::to_string(id) + " already " + st);
    FailAttempt(id, "cancelled by a client", false);
    return json{{"id", id}, {"state", "cancelled"}};
  }
  if (op == "logs") {
    RT_ASSIGN_OR_RETURN(int64_t id, job_of());
    std::ifstream f(LogPath(id), std::ios::binary);
    const int64_t off = req.value("offset", int64_t{0});
    std::string s;
    if (f) {
      f.seekg(off);
      s.assign(std::istreambuf_iterator<char>(f), {});
    }
    if (s.size() > (1u << 20)) s.resize(1u << 20);
    *data = s;
    return json{{"offset", off + static_cast<int64_t>(s.size())}, {"state", jobs_[id]["state"]}};
  }
  if (op == "workers") {
    json out = json::array();
    for (const auto& [id, w] : workers_) {
      json d = w.doc;
      d["used"] = UsedSlots(id);
      out.push_back(d);
    }
    return json{{"workers", out}};
  }
  return InvalidArgument("unknown request '" + op + "'");
}

StatusOr<json> CoordinatorRequest(const std::string& address, const std::string& token, const json& req,
                                  std::string* data) {
  RT_ASSIGN_OR_RETURN(auto hp, ps::SplitHostPort(address, "coordinator address"));
  asio::io_context io;
  auto sock = ps::ConnectWithRetry(io, hp.first, hp.second, ps::After(5));
  if (!sock.ok()) return Unavailable("coordinator " + address + ": " + sock.status().message());
  ps::FrameConn c(std::move(*sock), address);
  Status s = ps::ClientHandshake(c, token, ps::After(10), {});
  if (!s.ok()) return Status(s.code(), "coordinator " + address + ": " + s.message());
  proto::CoordMsg m;
  m.set_version(1);
  m.set_type(proto::CO_REQUEST);
  m.set_json(req.dump());
  RT_RETURN_IF_ERROR(c.SendMessage(m, ps::After(10)));
  proto::CoordMsg r;
  s = c.RecvMessage(&r, kMaxCoordFrame, ps::After(60), 30);
  if (!s.ok()) return Status(s.code(), "coordinator " + address + ": " + s.message());
  if (r.type() == proto::CO_ERROR) return InvalidArgument(r.error());
  const json j = json::parse(r.json(), nullptr, false);
  if (j.is_discarded()) return Internal("coordinator " + address + ": reply is not JSON");
  if (data) *data = r.data();
  return j;
}

}  // namespace ringtrain::coord
