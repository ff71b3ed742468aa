#include "parameter_server/client.h"

#include "checkpoint/checkpoint.h"
#include "parameter_server/auth.h"

namespace ringtrain::ps {

StatusOr<std::vector<std::string>> ParseHostList(const std::string& s) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at <= s.size()) {
    const size_t c = s.find(',', at);
    const std::string item = s.substr(at, c == std::string::npos ? std::string::npos : c - at);
    if (!item.empty()) {
      RT_RETURN_IF_ERROR(SplitHostPort(item, "sync.ps_hosts entry").status());
      out.push_back(item);
    }
    if (c == std::string::npos) break;
    at = c + 1;
  }
  if (out.empty()) return InvalidArgument("sync.ps_hosts is empty: give HOST:PORT of every server, comma-separated");
  return out;
}

std::string PsClient::Describe(int j) const {
  return "parameter server " + servers_[static_cast<size_t>(j)]->addr + " (shard " + std::to_string(j) + "/" +
         std::to_string(servers_.size()) + ")";
}

Status PsClient::Named(int j, const Status& s) const {
  if (s.ok()) return s;
  std::string m = s.message();
  if (s.code() == StatusCode::kUnavailable && m.rfind("sending to ", 0) == 0 && servers_[static_cast<size_t>(j)]->conn) {
    // A server that refuses a frame says why before it closes the connection: prefer its words.
    proto::PsHeader h;
    if (servers_[static_cast<size_t>(j)]->conn->RecvHeader(&h, opts_.limits, After(0.5), 0.5).ok() &&
        h.type() == proto::PS_ERROR)
      return Status(StatusCode::kAborted, Describe(j) + ": " + h.error());
  }
  if (s.code() == StatusCode::kUnavailable) m = "connection lost (" + m + "): did the server die?";
  return Status(s.code(), Describe(j) + ": " + m);
}

StatusOr<std::unique_ptr<PsClient>> PsClient::Connect(const PsClientOptions& o) {
  std::unique_ptr<PsClient> c(new PsClient(o));
  const int k = static_cast<int>(o.hosts.size());
  for (int j = 0; j < k; ++j) {
    auto s = std::make_unique<Server>();
    s->addr = o.hosts[static_cast<size_t>(j)];
    const auto r = EvenSplit(o.total, j, k);
    s->b = r.empty() ? o.total : r[0].first;
    s->e = r.empty() ? o.total : r[0].second;
    c->servers_.push_back(std::move(s));
  }
  const Clock::time_point deadline = After(std::min(o.deadline_s, 120.0));
  for (int j = 0; j < k; ++j) {
    Server& s = *c->servers_[static_cast<size_t>(j)];
    RT_ASSIGN_OR_RETURN(auto hp, SplitHostPort(s.addr, "sync.ps_hosts entry"));
    auto sock = ConnectWithRetry(c->io_, hp.first, hp.second, deadline);
    if (!sock.ok()) return c->Named(j, sock.status());
    s.conn = std::make_unique<FrameConn>(std::move(*sock), s.addr);
    RT_RETURN_IF_ERROR(c->Named(j, ClientHandshake(*s.conn, o.token, After(30), o.limits)));
  }
  for (auto& s : c->servers_) s->sender = std::thread([p = c.get(), sp = s.get()] { p->SendLoop(*sp); });
  return c;
}

PsClient::~PsClient() {
  for (auto& s : servers_) {
    {
      std::lock_guard<std::mutex> l(s->mu);
      s->quit = true;
    }
    s->cv.notify_all();
    if (s->sender.joinable()) s->sender.join();
    if (s->conn && s->error.ok()) (void)s->conn->Send(Header(proto::PS_BYE), After(1));
  }
}

void PsClient::Abort() {
  for (auto& s : servers_) {
    {
      std::lock_guard<std::mutex> l(s->mu);
      s->error = Aborted("aborted");  // no goodbye at destruction
    }
    if (s->conn) s->conn->Shutdown();
  }
}

proto::PsHeader PsClient::Header(proto::PsType t) const {
  proto::PsHeader h;
  h.set_type(t);
  h.set_job_id(opts_.job_id);
  h.set_worker(opts_.worker);
  return h;
}

void PsClient::SendLoop(Server& s) {
  std::unique_lock<std::mutex> l(s.mu);
  for (;;) {
    s.cv.wait(l, [&] { return s.quit || !s.queue.empty(); });
    if (s.queue.empty()) return;  // quit
    const Item it = s.queue.front();
    s.queue.pop_front();
    if (!s.error.ok()) continue;  // drop: the connection already failed
    s.busy = true;
    l.unlock();
    Status st;
    const size_t per = std::max<size_t>(1, opts_.chunk_bytes / sizeof(float));
    for (size_t b = it.b; b < it.e && st.ok(); b += per) {
      const size_t e = std::min(it.e, b + per);
      proto::PsHeader h = Header(proto::PS_PUSH);
      h.set_step(it.step);
      h.set_begin(b);
      h.set_end(e);
      st = s.conn->Send(h, it.g + b, (e - b) * sizeof(float), After(opts_.deadline_s));
      if (st.ok()) bytes_pushed_ += (e - b) * sizeof(float);
    }
    l.lock();
    s.busy = false;
    if (!st.ok()) s.error = st;
    s.cv.notify_all();
  }
}

void PsClient::Push(int64_t step, size_t b, size_t e, const float* g) {
  for (auto& s : servers_) {
    const size_t lo = std::max(b, s->b), hi = std::min(e, s->e);
    if (lo >= hi) continue;
    {
      std::lock_guard<std::mutex> l(s->mu);
      s->queue.push_back({step, lo, hi, g});
    }
    s->cv.notify_all();
  }
}

Status PsClient::WaitPushes() {
  Status first;
  for (int j = 0; j < servers(); ++j) {
    Server& s = *servers_[static_cast<size_t>(j)];
    Status e;
    {
      std::unique_lock<std::mutex> l(s.mu);
      s.cv.wait(l, [&] { return s.queue.empty() && !s.busy; });
      e = s.error;
    }
    if (!e.ok() && first.ok()) first = Named(j, e);
  }
  return first;
}

Status PsClient::Expect(int j, proto::PsType want, proto::PsHeader* h) {
  Server& s = *servers_[static_cast<size_t>(j)];
  Status st = s.conn->RecvHeader(h, opts_.limits, After(opts_.deadline_s + 30), 60);
  if (!st.ok()) return Named(j, st);
  if (h->type() == proto::PS_ERROR) return Named(j, Status(StatusCode::kAborted, h->error()));
  if (h->type() != want)
    return Named(j, Internal(std::string("sent ") + TypeName(h->type()) + " where " + TypeName(want) + " was expected"));
  return Status::Ok();
}

Status PsClient::Init(nlohmann::json job, const float* params, const float* m, const float* v) {
  RT_RETURN_IF_ERROR(WaitPushes());
  for (int j = 0; j < servers(); ++j) {
    Server& s = *servers_[static_cast<size_t>(j)];
    job["shard"] = j;
    job["shards"] = servers();
    job["total"] = opts_.total;
    proto::PsHeader h = Header(proto::PS_INIT);
    h.set_text(job.dump());
    RT_RETURN_IF_ERROR(Named(j, s.conn->Send(h, After(opts_.deadline_s))));
    const size_t per = std::max<size_t>(1, opts_.chunk_bytes / sizeof(float));
    const float* src[3] = {params, m, v};
    for (uint32_t kind = 0; kind < 3; ++kind) {
      if (!src[kind]) continue;
      for (size_t b = s.b; b < s.e; b += per) {
        const size_t e = std::min(s.e, b + per);
        proto::PsHeader l = Header(proto::PS_LOAD);
        l.set_kind(kind);
        l.set_begin(b);
        l.set_end(e);
        RT_RETURN_IF_ERROR(Named(j, s.conn->Send(l, src[kind] + b, (e - b) * sizeof(float), After(opts_.deadline_s))));
      }
    }
    RT_RETURN_IF_ERROR(Named(j, s.conn->Send(Header(proto::PS_SYNC), After(opts_.deadline_s))));
  }
  for (int j = 0; j < servers(); ++j) {
    proto::PsHeader h;
    RT_RETURN_IF_ERROR(Expect(j, proto::PS_OK, &h));
  }
  return Status::Ok();
}

StatusOr<std::vector<double>> PsClient::Norms(int64_t from, int64_t needed, int64_t to) {
  for (int j = 0; j < servers(); ++j) {
    proto::PsHeader h = Header(proto::PS_NORMS);
    h.set_step_from(from);
    h.set_step_needed(needed);
    h.set_step(to);
    RT_RETURN_IF_ERROR(Named(j, servers_[static_cast<size_t>(j)]->conn->Send(h, After(opts_.deadline_s))));
  }
  // Every server answers a prefix of [from, to] covering [from, needed]; the steps all of them
  // answered are known.
  std::vector<double> sum(static_cast<size_t>(to - from + 1), 0.0);
  size_t known = sum.size();
  std::vector<double> part(sum.size());
  for (int j = 0; j < servers(); ++j) {
    proto::PsHeader h;
    RT_RETURN_IF_ERROR(Expect(j, proto::PS_NORMS_REPLY, &h));
    const size_t n = h.payload_bytes() / sizeof(double);
    if (n > sum.size() || static_cast<int64_t>(n) < needed - from + 1)
      return Named(j, Internal("answered NORMS with " + std::to_string(n) + " value(s)"));
    RT_RETURN_IF_ERROR(Named(j, servers_[static_cast<size_t>(j)]->conn->RecvPayload(part.data(), h.payload_bytes(), After(60))));
    for (size_t i = 0; i < n; ++i) sum[i] += part[i];
    known = std::min(known, n);
  }
  sum.resize(known);
  return sum;
}

Status PsClient::Pull(int64_t step, int64_t scales_from, const std::vector<float>& scales, float* params) {
  for (int j = 0; j < servers(); ++j) {
    Server& s = *servers_[static_cast<size_t>(j)];
    proto::PsHeader h = Header(proto::PS_PULL);
    h.set_step(step);
    h.set_step_from(scales_from);
    for (float x : scales) h.add_scales(x);
    h.set_begin(s.b);
    h.set_end(s.e);
    RT_RETURN_IF_ERROR(Named(j, s.conn->Send(h, After(opts_.deadline_s))));
  }
  for (int j = 0; j < servers(); ++j) {
    Server& s = *servers_[static_cast<size_t>(j)];
    size_t at = s.b;
    do {
      proto::PsHeader h;
      RT_RETURN_IF_ERROR(Expect(j, proto::PS_PARAMS, &h));
      if (h.begin() != at || h.end() > s.e)
        return Named(j, Internal("sent parameters [" + std::to_string(h.begin()) + ", " + std::to_string(h.end()) +
                                 ") where [" + std::to_string(at) + ", ...) was expected"));
      RT_RETURN_IF_ERROR(Named(j, s.conn->RecvPayload(params + h.begin(), h.payload_bytes(), After(60))));
      bytes_pulled_ += h.payload_bytes();
      at = h.end();
    } while (at < s.e);
  }
  return Status::Ok();
}

StatusOr<std::vector<std::string>> PsClient::Save(int64_t step, const std::string& dir) {
  for (int j = 0; j < servers(); ++j) {
    proto::PsHeader h = Header(proto::PS_SAVE);
    h.set_step(step);
    h.set_text(dir);
    RT_RETURN_IF_ERROR(Named(j, servers_[static_cast<size_t>(j)]->conn->Send(h, After(opts_.deadline_s))));
  }
  std::vector<std::string> lists;
  for (int j = 0; j < servers(); ++j) {
    proto::PsHeader h;
    RT_RETURN_IF_ERROR(Expect(j, proto::PS_SAVED, &h));
    lists.push_back(h.blob());
  }
  return lists;
}

}  // namespace ringtrain::ps
