#include "parameter_server/server.h"

#include <algorithm>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "checkpoint/checkpoint.h"
#include "parameter_server/auth.h"

namespace ringtrain::ps {

namespace asio = boost::asio;
using asio::ip::tcp;

StatusOr<Consistency> ParseConsistency(const std::string& s) {
  if (s == "bsp") return Consistency::kBsp;
  if (s == "ssp") return Consistency::kSsp;
  if (s == "asp") return Consistency::kAsp;
  return InvalidArgument("consistency '" + s + "' is not bsp, ssp or asp");
}

const char* ConsistencyName(Consistency c) {
  switch (c) {
    case Consistency::kBsp: return "bsp";
    case Consistency::kSsp: return "ssp";
    default: return "asp";
  }
}

struct PsServer::Conn {
  Conn(tcp::socket s, std::string peer) : fc(std::move(s), std::move(peer)) {}
  FrameConn fc;
  int worker = -1;          // the worker this connection speaks for, once known
  uint64_t generation = 0;  // of the job it spoke for
  bool bye = false;
};

StatusOr<std::unique_ptr<PsServer>> PsServer::Start(const PsServerOptions& o) {
  if (o.token.empty()) return InvalidArgument("parameter server: no authentication token");
  if (o.shards < 1 || o.shard < 0 || o.shard >= o.shards)
    return InvalidArgument("parameter server: shard " + std::to_string(o.shard) + "/" + std::to_string(o.shards) +
                           " is not i/k with 0 <= i < k");
  std::unique_ptr<PsServer> s(new PsServer(o));
  RT_ASSIGN_OR_RETURN(s->acceptor_, Listen(s->io_, o.host, o.port, "parameter server"));
  s->port_ = s->acceptor_->local_endpoint().port();
  if (!o.step_log.empty()) {
    s->step_log_ = std::fopen(o.step_log.c_str(), "a");
    if (!s->step_log_) return IoError("parameter server: cannot open step log " + o.step_log);
  }
  s->acceptor_thread_ = std::thread([p = s.get()] { p->AcceptLoop(); });
  return s;
}

PsServer::~PsServer() {
  Stop();
  if (step_log_) std::fclose(step_log_);
}

void PsServer::Stop() {
  if (stop_.exchange(true)) return;
  if (acceptor_thread_.joinable()) acceptor_thread_.join();
  boost::system::error_code ec;
  acceptor_->close(ec);
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto& c : conns_) c->fc.Shutdown();
  }
  cv_.notify_all();
  std::vector<std::thread> ts;
  {
    std::lock_guard<std::mutex> l(mu_);
    ts.swap(threads_);
  }
  for (auto& t : ts) t.join();
}

std::string PsServer::Name() const {
  return "ps shard " + std::to_string(opts_.shard) + "/" + std::to_string(opts_.shards);
}

void PsServer::Log(const std::string& line) {
  std::lock_guard<std::mutex> l(log_mu_);
  events_.push_back(line);
  if (opts_.log_stderr) {
    std::fprintf(stderr, "%s: %s\n", Name().c_str(), line.c_str());
    std::fflush(stderr);
  }
}

std::vector<std::string> PsServer::events() const {
  std::lock_guard<std::mutex> l(log_mu_);
  return events_;
}

std::vector<StepRecord> PsServer::records() const {
  std::lock_guard<std::mutex> l(mu_);
  return records_;
}

void PsServer::AcceptLoop() {
  while (!stop_) {
    tcp::socket sock(io_);
    std::string peer;
    if (!AcceptWithin(*acceptor_, 100, &sock, &peer)) continue;
    auto c = std::make_shared<Conn>(std::move(sock), peer);
    std::lock_guard<std::mutex> l(mu_);
    if (stop_) return;
    conns_.push_back(c);
    threads_.emplace_back([this, c] { Serve(c); });
  }
}

void PsServer::Serve(std::shared_ptr<Conn> c) {
  Status s = ServerHandshake(c->fc, opts_.token, After(10), opts_.limits);
  bool eof_between_frames = false;  // the peer simply went away
  if (s.ok()) {
    for (;;) {
      proto::PsHeader h;
      s = c->fc.RecvHeader(&h, opts_.limits, Clock::time_point::max(), opts_.frame_timeout_s);
      if (!s.ok()) {
        eof_between_frames = s.code() == StatusCode::kUnavailable && s.message().find("in the middle") == std::string::npos;
        break;
      }
      s = Handle(*c, h);
      if (!s.ok() || c->bye) break;
    }
  }
  if (!s.ok() && !stop_) {
    if (!eof_between_frames) {
      proto::PsHeader e;
      e.set_type(proto::PS_ERROR);
      e.set_error(s.message());
      (void)c->fc.Send(e, After(1));
      Log("closing the connection from " + c->fc.peer() + ": " + s.message());
    }
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    if (c->worker >= 0 && !c->bye && job_ && job_->generation == c->generation) {
      Job& J = *job_;
      const size_t w = static_cast<size_t>(c->worker);
      if (J.gone[w].empty()) {
        J.gone[w] = "disconnected (connection from " + c->fc.peer() + ": " + (s.ok() ? "closed" : s.message()) +
                    ") after pushing " + std::to_string(J.pushed[w]) + " step(s)";
        if (!stop_) Log("worker " + std::to_string(w) + " " + J.gone[w]);
      }
    }
    conns_.erase(std::remove(conns_.begin(), conns_.end(), c), conns_.end());
  }
  cv_.notify_all();
  c->fc.Shutdown();
}

Status PsServer::CheckJob(const proto::PsHeader& h, bool range) const {
  if (!job_) return InvalidArgument(std::string(TypeName(h.type())) + " before any INIT: this server holds no job");
  const Job& J = *job_;
  if (h.job_id() != J.id)
    return InvalidArgument(std::string(TypeName(h.type())) + " for job '" + h.job_id() + "', but this server holds job '" +
                           J.id + "'");
  if (h.worker() < 0 || h.worker() >= J.workers)
    return InvalidArgument("worker " + std::to_string(h.worker()) + " is not one of the job's " +
                           std::to_string(J.workers) + " workers");
  if (range && (h.begin() < J.begin || h.end() > J.end || h.begin() > h.end()))
    return InvalidArgument(std::string(TypeName(h.type())) + " range [" + std::to_string(h.begin()) + ", " +
                           std::to_string(h.end()) + ") is outside this shard's [" + std::to_string(J.begin) + ", " +
                           std::to_string(J.end) + ")");
  return Status::Ok();
}

Status PsServer::Handle(Conn& c, const proto::PsHeader& h) {
  switch (h.type()) {
    case proto::PS_INIT: return HandleInit(c, h);
    case proto::PS_LOAD: {
      std::shared_ptr<Job> J;
      float* dst = nullptr;
      {
        std::lock_guard<std::mutex> l(mu_);
        RT_RETURN_IF_ERROR(CheckJob(h, true));
        if (h.worker() != 0) return InvalidArgument("LOAD from worker " + std::to_string(h.worker()) + " (only worker 0 initialises)");
        Job& j = *job_;
        if ((h.kind() == 1 && !j.has_m) || (h.kind() == 2 && !j.has_v))
          return InvalidArgument("LOAD of optimizer moments the job's optimizer does not keep");
        float* base = h.kind() == 0 ? j.params.data() : h.kind() == 1 ? j.st.m.data() : j.st.v.data();
        dst = base + (h.begin() - j.begin);
      }
      return c.fc.RecvPayload(dst, h.payload_bytes(), After(opts_.frame_timeout_s));
    }
    case proto::PS_SYNC: {
      proto::PsHeader ok;
      ok.set_type(proto::PS_OK);
      return c.fc.Send(ok, After(opts_.frame_timeout_s));
    }
    case proto::PS_PUSH: return HandlePush(c, h);
    case proto::PS_NORMS: return HandleNorms(c, h);
    case proto::PS_PULL: return HandlePull(c, h);
    case proto::PS_SAVE: return HandleSave(c, h);
    case proto::PS_BYE: c.bye = true; return Status::Ok();
    default: return InvalidArgument(std::string("unexpected ") + TypeName(h.type()) + " frame from a worker");
  }
}

Status PsServer::HandleInit(Conn& c, const proto::PsHeader& h) {
  if (h.worker() != 0) return InvalidArgument("INIT from worker " + std::to_string(h.worker()) + " (only worker 0 initialises)");
  if (h.job_id().empty()) return InvalidArgument("INIT without a job id");
  const nlohmann::json j = nlohmann::json::parse(h.text(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return InvalidArgument("INIT: the job description is not a JSON object");
  auto job = std::make_shared<Job>();
  try {
    job->id = h.job_id();
    job->workers = j.at("workers").get<int>();
    const size_t total = j.at("total").get<size_t>();
    const int shard = j.at("shard").get<int>(), shards = j.at("shards").get<int>();
    if (shard != opts_.shard || shards != opts_.shards)
      return InvalidArgument("INIT addresses shard " + std::to_string(shard) + "/" + std::to_string(shards) + ", but this is " +
                             Name() + " (is sync.ps_hosts in shard order?)");
    if (job->workers < 1 || job->workers > 1 << 16) return InvalidArgument("INIT: worker count out of range");
    RT_ASSIGN_OR_RETURN(job->mode, ParseConsistency(j.at("consistency").get<std::string>()));
    job->staleness = j.at("staleness").get<int64_t>();
    job->deadline_s = j.at("deadline_s").get<double>();
    job->applied = j.at("step").get<int64_t>();
    if (job->staleness < 0 || job->applied < 0 || !(job->deadline_s > 0)) return InvalidArgument("INIT: bad staleness, step or deadline");
    RT_ASSIGN_OR_RETURN(Config cfg, Config::FromJson(j.at("config")));
    RT_ASSIGN_OR_RETURN(job->oc, OptimConfig::FromConfig(cfg));
    RT_ASSIGN_OR_RETURN(job->sched, LrSchedule::FromConfig(cfg));
    job->clip = job->oc.grad_clip > 0;
    for (const auto& s : j.at("specs")) {
      const int i = job->layout.Add(s.at("name").get<std::string>(), s.at("shape").get<std::vector<int64_t>>(),
                                    s.at("decay").get<bool>(), InitKind::kZeros);
      if (job->layout.spec(i).offset != s.at("offset").get<size_t>())
        return InvalidArgument("INIT: tensor " + s.at("name").get<std::string>() + " has another offset in this build's layout");
    }
    if (job->layout.total() != total) return InvalidArgument("INIT: the layout's size does not match the stated total");
    const auto r = EvenSplit(total, shard, shards);
    job->begin = r.empty() ? total : r[0].first;
    job->end = r.empty() ? total : r[0].second;
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgument(std::string("INIT: job description: ") + e.what());
  }
  const size_t len = job->end - job->begin;
  job->params.assign(len, 0.f);
  job->st.Allocate(job->oc, len, 0);
  job->has_m = job->st.m.size() > 0;
  job->has_v = job->st.v.size() > 0;
  if (job->has_m) job->st.m.Zero();
  if (job->has_v) job->st.v.Zero();
  for (const auto& [db, de] : job->layout.DecayRanges()) {
    const size_t lo = std::max(db, job->begin), hi = std::min(de, job->end);
    if (lo < hi) job->decay_local.push_back({lo - job->begin, hi - job->begin});
  }
  job->pushed.assign(static_cast<size_t>(job->workers), job->applied);
  job->gone.assign(static_cast<size_t>(job->workers), "");
  {
    std::lock_guard<std::mutex> l(mu_);
    job->generation = job_ ? job_->generation + 1 : 1;
    job_ = job;
    c.worker = 0;
    c.generation = job->generation;
  }
  cv_.notify_all();
  char buf[256];
  std::snprintf(buf, sizeof buf, "job '%s': %d worker(s), %s%s, elements [%zu, %zu) of %zu (%.2f MB), from step %lld",
                job->id.c_str(), job->workers, ConsistencyName(job->mode),
                job->mode == Consistency::kSsp ? ("(" + std::to_string(job->staleness) + ")").c_str() : "", job->begin,
                job->end, job->layout.total(), static_cast<double>(len) * 4 / 1e6, (long long)job->applied);
  Log(buf);
  return Status::Ok();
}

std::vector<float> PsServer::TakeBuffer(size_t n) {
  Job& J = *job_;
  std::vector<float> b;
  if (!J.pool.empty()) {
    b = std::move(J.pool.back());
    J.pool.pop_back();
  }
  b.resize(n);
  return b;
}

Status PsServer::HandlePush(Conn& c, const proto::PsHeader& h) {
  std::shared_ptr<Job> J;
  float* dst = nullptr;
  const size_t w = static_cast<size_t>(h.worker());
  const size_t n = h.end() - h.begin();
  {
    std::lock_guard<std::mutex> l(mu_);
    RT_RETURN_IF_ERROR(CheckJob(h, true));
    J = job_;
    c.worker = h.worker();
    c.generation = J->generation;
    if (h.step() != J->pushed[w])
      return InvalidArgument("worker " + std::to_string(w) + " pushed gradients for step " + std::to_string(h.step()) +
                             ", but its next step is " + std::to_string(J->pushed[w]));
    const size_t len = J->end - J->begin;
    StepAcc& acc = J->steps[h.step()];
    if (acc.g.empty()) {
      acc.g.resize(static_cast<size_t>(J->workers));
      acc.covered.assign(static_cast<size_t>(J->workers), 0);
    }
    if (acc.g[w].empty()) acc.g[w] = TakeBuffer(len);
    if (acc.covered[w] + n > len)
      return InvalidArgument("worker " + std::to_string(w) + " pushed more gradient elements for step " +
                             std::to_string(h.step()) + " than this shard holds");
    dst = acc.g[w].data() + (h.begin() - J->begin);
  }
  RT_RETURN_IF_ERROR(c.fc.RecvPayload(dst, n * sizeof(float), After(opts_.frame_timeout_s)));
  std::lock_guard<std::mutex> l(mu_);
  if (job_ != J) return Status::Ok();  // the job was restarted meanwhile: this gradient is moot
  const size_t len = J->end - J->begin;
  StepAcc& acc = J->steps[h.step()];
  acc.covered[w] += n;
  if (acc.covered[w] < len) return Status::Ok();
  J->pushed[w] = h.step() + 1;
  if (J->mode != Consistency::kAsp && ++acc.complete == J->workers) {
    // The step's average, summed in worker order (deterministic), then its sum of squares.
    float* g0 = acc.g[0].data();
    for (size_t k = 1; k < acc.g.size(); ++k) {
      const float* gk = acc.g[k].data();
      for (size_t i = 0; i < len; ++i) g0[i] += gk[i];
      J->pool.push_back(std::move(acc.g[k]));
      acc.g[k].clear();
    }
    if (J->workers > 1) {
      const float d = static_cast<float>(J->workers);
      for (size_t i = 0; i < len; ++i) g0[i] /= d;
    }
    J->partials[h.step()] = SumSquares(g0, len);
    acc.reduced = true;
    TryApply();
  } else if (J->mode == Consistency::kAsp) {
    ++acc.complete;
  }
  cv_.notify_all();
  return Status::Ok();
}

void PsServer::TryApply() {
  Job& J = *job_;
  const size_t len = J.end - J.begin;
  for (;;) {
    auto it = J.steps.find(J.applied);
    if (it == J.steps.end() || !it->second.reduced) return;
    float scale = 1.f;
    if (J.clip) {
      auto s = J.scales.find(J.applied);
      if (s == J.scales.end()) return;  // waits for a pull to bring this step's clip factor
      scale = s->second;
      J.scales.erase(s);
    }
    {
      std::unique_lock<std::shared_mutex> pl(params_mu_);
      OptimizerUpdate(J.oc, J.sched.At(J.applied), J.applied + 1, scale, J.params.data(), it->second.g[0].data(), J.st, 0,
                      len, J.decay_local);
    }
    J.pool.push_back(std::move(it->second.g[0]));
    J.steps.erase(it);
    ++J.applied;
    J.partials.erase(J.partials.begin(), J.partials.lower_bound(J.applied - 1024));
  }
}

std::string PsServer::MissingReason(int64_t need_pushed) const {
  const Job& J = *job_;
  for (size_t w = 0; w < J.pushed.size(); ++w)
    if (J.pushed[w] < need_pushed && !J.gone[w].empty())
      return "worker " + std::to_string(w) + " " + J.gone[w] + ", and " + ConsistencyName(J.mode) +
             " cannot go on without its step " + std::to_string(J.pushed[w]);
  return "";
}

std::string PsServer::Missing(int64_t need_pushed) const {
  const Job& J = *job_;
  std::string out;
  for (size_t w = 0; w < J.pushed.size(); ++w)
    if (J.pushed[w] < need_pushed)
      out += (out.empty() ? "" : ", ") + ("worker " + std::to_string(w) + " (has pushed " + std::to_string(J.pushed[w]) +
                                          " step(s), step " + std::to_string(J.pushed[w]) + " missing)");
  return out;
}

namespace {
// Waits on cv until done() or an error: the job replaced, the server stopping, a needed worker
// gone, or the deadline. Caller holds lk on the job's mutex.
template <typename Done, typename Reason, typename Missing>
Status WaitFor(std::unique_lock<std::mutex>& lk, std::condition_variable& cv, Done done, const std::atomic<bool>& stop,
               const std::function<bool()>& replaced, Reason reason, Missing missing, double deadline_s,
               const std::string& what) {
  const Clock::time_point deadline = After(deadline_s);
  while (!done()) {
    if (replaced()) return Aborted(what + ": the job was restarted by another INIT");
    if (stop) return Unavailable(what + ": the server is stopping");
    const std::string r = reason();
    if (!r.empty()) return Unavailable(what + ": " + r);
    if (cv.wait_until(lk, deadline) == std::cv_status::timeout && !done()) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%g", deadline_s);
      return DeadlineExceeded(what + ": after " + buf + " s still waiting for " + missing());
    }
  }
  return Status::Ok();
}
}  // namespace

Status PsServer::HandleNorms(Conn& c, const proto::PsHeader& h) {
  std::vector<double> out;
  {
    std::unique_lock<std::mutex> lk(mu_);
    RT_RETURN_IF_ERROR(CheckJob(h, false));
    std::shared_ptr<Job> J = job_;
    c.worker = h.worker();
    c.generation = J->generation;
    if (J->mode == Consistency::kAsp) return InvalidArgument("NORMS under asp (each worker clips its own gradient)");
    const int64_t from = h.step_from(), to = std::max(h.step_needed(), from - 1), want = h.step();
    auto done = [&] {
      for (int64_t u = from; u <= to; ++u)
        if (!J->partials.count(u)) return false;
      return true;
    };
    if (from < J->applied - 1000)
      return InvalidArgument("NORMS for step " + std::to_string(from) + ", older than this server keeps");
    const std::string what = "gradient norms of steps " + std::to_string(from) + ".." + std::to_string(to);
    Status s = WaitFor(
        lk, cv_, done, stop_, [&] { return job_ != J; }, [&] { return MissingReason(to + 1); },
        [&] { return Missing(to + 1); }, J->deadline_s, what);
    if (!s.ok()) {
      Log("worker " + std::to_string(h.worker()) + ": " + s.message());
      return s;
    }
    for (int64_t u = from; u <= want && J->partials.count(u); ++u) out.push_back(J->partials[u]);
  }
  proto::PsHeader r;
  r.set_type(proto::PS_NORMS_REPLY);
  r.set_step(h.step_from());  // the payload holds steps step_from, step_from + 1, ...
  r.set_step_from(h.step_from());
  return c.fc.Send(r, out.data(), out.size() * sizeof(double), After(opts_.frame_timeout_s));
}

Status PsServer::HandlePull(Conn& c, const proto::PsHeader& h) {
  std::shared_ptr<Job> J;
  int64_t version = 0;
  {
    std::unique_lock<std::mutex> lk(mu_);
    RT_RETURN_IF_ERROR(CheckJob(h, true));
    J = job_;
    const size_t w = static_cast<size_t>(h.worker());
    c.worker = h.worker();
    c.generation = J->generation;
    const size_t len = J->end - J->begin;
    if (J->mode == Consistency::kAsp) {
      if (h.scales_size() > 0) {
        // Commit: apply this worker's gradient of step step_from now.
        const int64_t u = h.step_from();
        auto it = J->steps.find(u);
        if (it == J->steps.end() || it->second.g.size() <= w || it->second.covered[w] != len)
          return InvalidArgument("worker " + std::to_string(w) + " commits step " + std::to_string(u) +
                                 " without having pushed all of its gradient");
        {
          std::unique_lock<std::shared_mutex> pl(params_mu_);
          OptimizerUpdate(J->oc, J->sched.At(u), u + 1, h.scales(0), J->params.data(), it->second.g[w].data(), J->st, 0,
                          len, J->decay_local);
        }
        ++J->applied;
        J->pool.push_back(std::move(it->second.g[w]));
        it->second.g[w].clear();
        if (it->second.complete == J->workers &&
            std::all_of(it->second.g.begin(), it->second.g.end(), [](const auto& v) { return v.empty(); }))
          J->steps.erase(it);
      }
    } else {
      for (int i = 0; i < h.scales_size(); ++i) {
        const int64_t u = h.step_from() + i;
        if (J->clip && u >= J->applied) J->scales.emplace(u, h.scales(i));
      }
      TryApply();
      const int64_t need = h.step() - (J->mode == Consistency::kSsp ? J->staleness : 0);
      const std::string what = "pull of worker " + std::to_string(w) + " for step " + std::to_string(h.step());
      Status s = WaitFor(
          lk, cv_, [&] { return J->applied >= need; }, stop_, [&] { return job_ != J; },
          [&] { return MissingReason(need); }, [&] { return Missing(need); }, J->deadline_s, what);
      if (!s.ok()) {
        Log(s.message());
        return s;
      }
    }
    version = J->applied;
    StepRecord rec{h.worker(), h.step(), J->applied, *std::min_element(J->pushed.begin(), J->pushed.end())};
    records_.push_back(rec);
    if (step_log_) {
      std::fprintf(step_log_, "{\"worker\":%d,\"step\":%lld,\"applied\":%lld,\"slowest\":%lld}\n", rec.worker,
                   (long long)rec.step, (long long)rec.applied, (long long)rec.slowest);
      std::fflush(step_log_);
    }
  }
  std::shared_lock<std::shared_mutex> pl(params_mu_);
  const uint64_t chunk = std::max<uint64_t>(1, opts_.limits.max_payload_bytes / 4);
  for (uint64_t b = h.begin(); b < h.end() || b == h.begin(); b += chunk) {
    const uint64_t e = std::min<uint64_t>(h.end(), b + chunk);
    proto::PsHeader r;
    r.set_type(proto::PS_PARAMS);
    r.set_step(version);
    r.set_begin(b);
    r.set_end(e);
    RT_RETURN_IF_ERROR(c.fc.Send(r, J->params.data() + (b - J->begin), (e - b) * sizeof(float), After(opts_.frame_timeout_s)));
    if (e >= h.end()) break;
  }
  return Status::Ok();
}

Status PsServer::HandleSave(Conn& c, const proto::PsHeader& h) {
  std::string list;
  {
    std::lock_guard<std::mutex> l(mu_);  // no update runs while the shard is written: one cut
    RT_RETURN_IF_ERROR(CheckJob(h, false));
    Job& J = *job_;
    CheckpointContent content;
    content.layout = &J.layout;
    content.params = J.params.data();
    content.base = J.begin;
    content.has_m = J.has_m;
    content.has_v = J.has_v;
    if (J.has_m || J.has_v) content.states.push_back(&J.st);
    char name[64];
    std::snprintf(name, sizeof name, "ps-shard-%05d-of-%05d.bin", opts_.shard, opts_.shards);
    std::vector<std::pair<size_t, size_t>> ws;
    if (J.begin < J.end) ws.push_back({J.begin, J.end});
    Status s = WriteShardFile(h.text(), name, -1 - opts_.shard, content, ws, &list);
    if (!s.ok()) {
      Log("checkpoint of step " + std::to_string(h.step()) + ": " + s.message());
      return s;
    }
    Log("wrote " + h.text() + "/" + name + " (step " + std::to_string(h.step()) + ", " + std::to_string(J.applied) +
        " step(s) applied)");
  }
  proto::PsHeader r;
  r.set_type(proto::PS_SAVED);
  r.set_step(h.step());
  r.set_blob(list);
  return c.fc.Send(r, After(opts_.frame_timeout_s));
}

}  // namespace ringtrain::ps
