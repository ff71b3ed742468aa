// Parameter server (issue 8), in-process: real PsServer shards on loopback TCP, workers as threads
// (their own collectives on the local transport).
//   - BSP with 1, 2 and 3 servers equals ring all-reduce data parallelism after 20 steps
//     (acceptance 1), for AdamW with global-norm clipping and for SGD with 3 workers;
//   - SSP: a slow worker; the servers' step records show nobody ran more than s steps ahead,
//     and some worker did run ahead; s = 0 equals BSP (acceptance 2);
//   - ASP with one worker equals BSP; with two it trains;
//   - checkpoints written by the servers resume bitwise, also under ring all-reduce;
//   - faults: a worker that disconnects or never pushes is named by the servers; a dead server is
//     named by the workers;
//   - hostile input (acceptance 4): wrong token, truncated frame, oversized frame, random bytes,
//     out-of-range key range; each is refused and the server goes on serving.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "parameter_server/auth.h"
#include "parameter_server/client.h"
#include "parameter_server/server.h"
#include "tests/util/run_ranks.h"
#include "tests/util/temp_dir.h"
#include "worker/trainer.h"

namespace ringtrain {
namespace {

namespace fs = std::filesystem;
using testing::RunRanks;

const char* kToken = "test-token-0123456789";

std::string TokenFile() {
  static const std::string path = [] {
    const std::string p = testing::TestTemp("ps_token");
    std::ofstream(p) << kToken << "\n";
    return p;
  }();
  return path;
}

struct Servers {
  std::vector<std::unique_ptr<ps::PsServer>> s;
  std::string hosts;
  explicit Servers(int k, uint64_t max_payload = 64u << 20) {
    for (int i = 0; i < k; ++i) {
      ps::PsServerOptions o;
      o.shard = i;
      o.shards = k;
      o.token = kToken;
      o.log_stderr = false;
      o.limits.max_payload_bytes = max_payload;
      auto srv = ps::PsServer::Start(o);
      EXPECT_TRUE(srv.ok()) << srv.status().message();
      if (i) hosts += ',';
      hosts += (*srv)->address();
      s.push_back(std::move(*srv));
    }
  }
  bool Logged(const std::string& needle) const {
    for (const auto& srv : s)
      for (const std::string& e : srv->events())
        if (e.find(needle) != std::string::npos) return true;
    return false;
  }
};

std::vector<std::string> GptSets() {
  return {"threads=1",           "train.batch_size=4",          "model.n_layer=2",  "model.n_embd=32",
          "model.n_head=4",      "model.block_size=16",         "schedule.warmup=5", "data.synthetic.length=20000",
          "train.steps=20",      "train.eval_interval=1000000", "optim.grad_clip=0.5",
          "dist.deadline_s=60"};  // a rank that fails leaves the others waiting this long, not 300 s
}

std::vector<std::string> WithPs(std::vector<std::string> sets, const Servers& sv, const std::string& consistency) {
  sets.push_back("sync.ps_hosts=" + sv.hosts);
  sets.push_back("sync.token_file=" + TokenFile());
  sets.push_back("sync.consistency=" + consistency);
  return sets;
}

using Params = std::vector<float>;

// Trains `steps` steps on every rank; rank r's parameters land in out[r]. before_step(rank, step)
// runs before each step (to make a worker slow).
std::vector<Status> TrainAll(int workers, const std::vector<std::string>& sets, int steps, std::vector<Params>* out,
                             const std::string& job, const std::function<void(int, int)>& before_step = nullptr,
                             TrainOptions base = {}) {
  out->assign(static_cast<size_t>(workers), {});
  return RunRanks(workers, [&](coll::Communicator& comm) -> Status {
    RT_ASSIGN_OR_RETURN(Config c, Config::Load("", sets));
    TrainOptions o = base;
    o.print = false;
    o.comm = &comm;
    o.job_id = job;
    RT_ASSIGN_OR_RETURN(std::unique_ptr<Trainer> t, Trainer::Create(c, o));
    for (int s = static_cast<int>(t->start_step()); s < steps; ++s) {
      if (before_step) before_step(comm.rank(), s);
      RT_RETURN_IF_ERROR(t->Step(s).status());
    }
    const auto& A = t->task().arena();
    (*out)[static_cast<size_t>(comm.rank())].assign(A.params.data(), A.params.data() + A.layout.total());
    return Status::Ok();
  });
}

void ExpectAllOk(const std::vector<Status>& st) {
  for (size_t r = 0; r < st.size(); ++r) ASSERT_TRUE(st[r].ok()) << "rank " << r << ": " << st[r].message();
}

// max |a - b| / max |b|
double RelDiff(const Params& a, const Params& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0, m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    d = std::max(d, static_cast<double>(std::fabs(a[i] - b[i])));
    m = std::max(m, static_cast<double>(std::fabs(b[i])));
  }
  return d / std::max(m, 1e-30);
}

class BspEqualsRing : public ::testing::TestWithParam<int> {};

TEST_P(BspEqualsRing, AdamWWithClippingTwoWorkers) {
  const int k = GetParam();
  std::vector<Params> ring, ps;
  ExpectAllOk(TrainAll(2, GptSets(), 20, &ring, "ring"));
  Servers sv(k);
  ExpectAllOk(TrainAll(2, WithPs(GptSets(), sv, "bsp"), 20, &ps, std::string("bsp-").append(std::to_string(k))));
  EXPECT_LE(RelDiff(ps[0], ring[0]), 1e-5);
  EXPECT_EQ(ps[0], ps[1]) << "the workers pulled different parameters";
  EXPECT_GT(RelDiff(ps[0], Params(ps[0].size(), 0.f)), 0.5) << "sanity: parameters are not zero";
}

TEST_P(BspEqualsRing, SgdThreeWorkers) {
  const int k = GetParam();
  std::vector<std::string> sets = GptSets();
  for (const char* kv : {"optim.name=sgd", "optim.momentum=0.9", "optim.lr=0.1", "optim.weight_decay=0.01"})
    sets.push_back(kv);
  std::vector<Params> ring, ps;
  ExpectAllOk(TrainAll(3, sets, 20, &ring, "ring"));
  Servers sv(k);
  ExpectAllOk(TrainAll(3, WithPs(sets, sv, "bsp"), 20, &ps, std::string("bsp3-").append(std::to_string(k))));
  EXPECT_LE(RelDiff(ps[0], ring[0]), 1e-5);
  EXPECT_EQ(ps[0], ps[2]);
}

INSTANTIATE_TEST_SUITE_P(Servers, BspEqualsRing, ::testing::Values(1, 2, 3));

// Pushes after backward, tiny buckets (many frames per step), and gradient accumulation.
TEST(Bsp, PushModesAndAccumulationEqualRing) {
  for (const char* kv : {"dist.overlap=false", "dist.bucket_mb=0.004", "train.grad_accum=2"}) {
    std::vector<std::string> sets = GptSets();
    sets.push_back(kv);
    std::vector<Params> ring, ps;
    ExpectAllOk(TrainAll(2, sets, 12, &ring, "ring"));
    Servers sv(2);
    ExpectAllOk(TrainAll(2, WithPs(sets, sv, "bsp"), 12, &ps, std::string("modes-").append(kv)));
    EXPECT_LE(RelDiff(ps[0], ring[0]), 1e-5) << kv;
  }
}

TEST(Ssp, SlowWorkerNeverMoreThanSStepsBehind) {
  constexpr int kS = 2;
  Servers sv(2);
  std::vector<std::string> sets = WithPs(GptSets(), sv, "ssp");
  sets.push_back("sync.staleness=" + std::to_string(kS));
  sets.push_back("train.log_interval=1000");  // the workers meet only at the last step
  std::vector<Params> out;
  ExpectAllOk(TrainAll(2, sets, 20, &out, "ssp", [](int rank, int) {
    if (rank == 1) std::this_thread::sleep_for(std::chrono::milliseconds(40));
  }));
  int64_t most_ahead = -1000;
  size_t n = 0;
  for (const auto& srv : sv.s)
    for (const ps::StepRecord& r : srv->records()) {
      ++n;
      EXPECT_LE(r.step - r.slowest, kS) << "worker " << r.worker << " ran step " << r.step << " while the slowest was at "
                                        << r.slowest;
      most_ahead = std::max(most_ahead, r.step - r.slowest);
    }
  EXPECT_GE(n, 2u * 2u * 19u);  // every worker's pull of every step, on both servers
  EXPECT_EQ(most_ahead, kS) << "the fast worker never ran ahead: the test did not exercise SSP";
  EXPECT_EQ(out[0], out[1]) << "after the last step every worker holds the servers' final parameters";
}

TEST(Ssp, StalenessZeroEqualsBsp) {
  std::vector<Params> bsp, ssp;
  {
    Servers sv(2);
    ExpectAllOk(TrainAll(2, WithPs(GptSets(), sv, "bsp"), 20, &bsp, "b"));
  }
  Servers sv(2);
  std::vector<std::string> sets = WithPs(GptSets(), sv, "ssp");
  sets.push_back("sync.staleness=0");
  ExpectAllOk(TrainAll(2, sets, 20, &ssp, "s0", [](int rank, int) {
    if (rank == 1) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }));
  EXPECT_EQ(ssp[0], bsp[0]);
  for (const auto& srv : sv.s)
    for (const ps::StepRecord& r : srv->records()) EXPECT_LE(r.step - r.slowest, 0);
}

TEST(Asp, OneWorkerEqualsBsp) {
  std::vector<Params> bsp, asp;
  {
    Servers sv(1);
    ExpectAllOk(TrainAll(1, WithPs(GptSets(), sv, "bsp"), 20, &bsp, "b"));
  }
  Servers sv(1);
  ExpectAllOk(TrainAll(1, WithPs(GptSets(), sv, "asp"), 20, &asp, "a"));
  EXPECT_EQ(asp[0], bsp[0]);
}

TEST(Asp, TwoWorkersTrainAndEndTogether) {
  Servers sv(2);
  std::vector<std::string> sets = WithPs(GptSets(), sv, "asp");
  sets.push_back("train.steps=60");
  double first = 0, last = 0;
  std::vector<Params> out(2);
  auto st = RunRanks(2, [&](coll::Communicator& comm) -> Status {
    RT_ASSIGN_OR_RETURN(Config c, Config::Load("", sets));
    TrainOptions o;
    o.print = false;
    o.comm = &comm;
    o.job_id = "asp2";
    RT_ASSIGN_OR_RETURN(std::unique_ptr<Trainer> t, Trainer::Create(c, o));
    RT_ASSIGN_OR_RETURN(EvalResult e0, t->Evaluate());
    for (int s = 0; s < 60; ++s) RT_RETURN_IF_ERROR(t->Step(s).status());
    RT_ASSIGN_OR_RETURN(EvalResult e1, t->Evaluate());
    if (comm.rank() == 0) {
      first = e0.loss;
      last = e1.loss;
    }
    const auto& A = t->task().arena();
    out[static_cast<size_t>(comm.rank())].assign(A.params.data(), A.params.data() + A.layout.total());
    return Status::Ok();
  });
  ExpectAllOk(st);
  EXPECT_LT(last, first - 0.1) << "validation loss " << first << " -> " << last;  // 2.79 -> 2.61 (BSP: the same)
  EXPECT_EQ(out[0], out[1]);
}

TEST(PsCheckpoint, ServersWriteShardsAndResumeIsBitwise) {
  const std::string root = testing::TestTemp("ps_ckpt");
  fs::remove_all(root);
  std::vector<std::string> base = GptSets();
  base.push_back("checkpoint.every_steps=10");
  std::vector<Params> full, resumed, ring_resumed;
  TrainOptions o;
  o.checkpoint_root = root;
  {
    Servers sv(2);
    ExpectAllOk(TrainAll(2, WithPs(base, sv, "bsp"), 20, &full, "ck", nullptr, o));
  }
  // Step() does not save; run the saving step through MaybeCheckpoint in a second pass.
  fs::remove_all(root);
  {
    Servers sv(2);
    auto st = RunRanks(2, [&](coll::Communicator& comm) -> Status {
      RT_ASSIGN_OR_RETURN(Config c, Config::Load("", WithPs(base, sv, "bsp")));
      TrainOptions oo = o;
      oo.print = false;
      oo.comm = &comm;
      oo.job_id = "ck";
      RT_ASSIGN_OR_RETURN(std::unique_ptr<Trainer> t, Trainer::Create(c, oo));
      for (int s = 0; s < 10; ++s) RT_RETURN_IF_ERROR(t->Step(s).status());
      return t->MaybeCheckpoint(10, false);
    });
    ExpectAllOk(st);
  }
  const std::string dir = root + "/step-00000010";
  ASSERT_TRUE(fs::exists(dir + "/ps-shard-00000-of-00002.bin"));
  ASSERT_TRUE(fs::exists(dir + "/ps-shard-00001-of-00002.bin"));
  // Resume on fresh servers: bitwise the uninterrupted run.
  o.resume = dir;
  {
    Servers sv(2);
    ExpectAllOk(TrainAll(2, WithPs(base, sv, "bsp"), 20, &resumed, "ck2", nullptr, o));
  }
  EXPECT_EQ(resumed[0], full[0]);
  // The same checkpoint under ring all-reduce (its moments come from the servers' shards).
  ExpectAllOk(TrainAll(2, base, 20, &ring_resumed, "ring", nullptr, o));
  EXPECT_LE(RelDiff(ring_resumed[0], full[0]), 1e-5);
  fs::remove_all(root);
}

// --- Protocol-level tests with PsClient and raw frames --------------------------------------

nlohmann::json SmallJob(int workers, double deadline_s, size_t n) {
  Config c;
  EXPECT_TRUE(c.Set("optim.name", "sgd").ok());
  EXPECT_TRUE(c.Set("optim.lr", "0.5").ok());
  EXPECT_TRUE(c.Set("optim.grad_clip", "0").ok());
  EXPECT_TRUE(c.Set("schedule.name", "constant").ok());
  EXPECT_TRUE(c.Set("schedule.warmup", "0").ok());
  return {{"workers", workers},
          {"consistency", "bsp"},
          {"staleness", 0},
          {"deadline_s", deadline_s},
          {"step", 0},
          {"config", c.ToJson()},
          {"specs", nlohmann::json::array({{{"name", "w"}, {"shape", {n}}, {"decay", false}, {"offset", 0}}})}};
}

StatusOr<std::unique_ptr<ps::PsClient>> Client(const Servers& sv, int worker, int workers, size_t total,
                                               const std::string& token = kToken, const std::string& job = "j") {
  ps::PsClientOptions o;
  RT_ASSIGN_OR_RETURN(o.hosts, ps::ParseHostList(sv.hosts));
  o.token = token;
  o.job_id = job;
  o.worker = worker;
  o.workers = workers;
  o.total = total;
  o.deadline_s = 30;
  return ps::PsClient::Connect(o);
}

// A complete, correct exchange with one worker: init, push, pull; checks the SGD update.
void ExpectServes(const Servers& sv, const std::string& job) {
  const size_t n = 64;
  auto c = Client(sv, 0, 1, n, kToken, job);
  ASSERT_TRUE(c.ok()) << c.status().message();
  std::vector<float> p(n, 1.f), g(n, 0.25f);
  ASSERT_TRUE((*c)->Init(SmallJob(1, 30, n), p.data(), nullptr, nullptr).ok());
  (*c)->Push(0, 0, n, g.data());
  ASSERT_TRUE((*c)->WaitPushes().ok());
  std::vector<float> out(n, 0.f);
  Status s = (*c)->Pull(1, 0, {}, out.data());
  ASSERT_TRUE(s.ok()) << s.message();
  for (float x : out) ASSERT_EQ(x, 1.f - 0.5f * 0.25f);
}

TEST(PsFaults, DisconnectedWorkerIsNamedAtOnce) {
  Servers sv(1);
  const size_t n = 32;
  auto w0 = Client(sv, 0, 2, n);
  auto w1 = Client(sv, 1, 2, n);
  ASSERT_TRUE(w0.ok() && w1.ok());
  std::vector<float> p(n, 0.f), g(n, 1.f);
  ASSERT_TRUE((*w0)->Init(SmallJob(2, 60, n), p.data(), nullptr, nullptr).ok());
  for (auto* w : {w0->get(), w1->get()}) w->Push(0, 0, n, g.data());
  ASSERT_TRUE((*w0)->WaitPushes().ok() && (*w1)->WaitPushes().ok());
  (*w0)->Push(1, 0, n, g.data());
  ASSERT_TRUE((*w0)->WaitPushes().ok());
  (*w1)->Abort();  // dies before pushing step 1
  const auto t0 = std::chrono::steady_clock::now();
  Status s = (*w0)->Pull(2, 0, {}, p.data());
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("worker 1 disconnected"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(sv.s[0]->address()), std::string::npos) << s.message();
  EXPECT_LT(waited, 60.0) << "it waited for the deadline instead of noticing the disconnect";
  EXPECT_TRUE(sv.Logged("worker 1 disconnected"));
}

TEST(PsFaults, MissingWorkerIsNamedAtTheDeadline) {
  Servers sv(1);
  const size_t n = 32;
  auto w0 = Client(sv, 0, 2, n);
  auto w1 = Client(sv, 1, 2, n);  // connected, but never pushes
  ASSERT_TRUE(w0.ok() && w1.ok());
  std::vector<float> p(n, 0.f), g(n, 1.f);
  ASSERT_TRUE((*w0)->Init(SmallJob(2, 0.5, n), p.data(), nullptr, nullptr).ok());
  (*w0)->Push(0, 0, n, g.data());
  ASSERT_TRUE((*w0)->WaitPushes().ok());
  Status s = (*w0)->Pull(1, 0, {}, p.data());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kAborted) << s.message();
  EXPECT_NE(s.message().find("after 0.5 s still waiting for worker 1 (has pushed 0 step(s), step 0 missing)"),
            std::string::npos)
      << s.message();
  EXPECT_TRUE(sv.Logged("still waiting for worker 1"));
}

TEST(PsFaults, DeadServerIsNamedByItsAddress) {
  Servers sv(2);
  const size_t n = 64;
  auto w0 = Client(sv, 0, 2, n);
  ASSERT_TRUE(w0.ok());
  std::vector<float> p(n, 0.f), g(n, 1.f);
  ASSERT_TRUE((*w0)->Init(SmallJob(2, 60, n), p.data(), nullptr, nullptr).ok());
  (*w0)->Push(0, 0, n, g.data());
  ASSERT_TRUE((*w0)->WaitPushes().ok());
  const std::string addr = sv.s[0]->address();
  std::thread killer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    sv.s[0]->Stop();
  });
  Status s = (*w0)->Pull(1, 0, {}, p.data());  // waits for worker 1, which never comes
  killer.join();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("parameter server " + addr + " (shard 0/2): connection lost"), std::string::npos)
      << s.message();
}

// Connects and authenticates a raw frame connection.
std::unique_ptr<ps::FrameConn> RawConn(boost::asio::io_context& io, const ps::PsServer& srv, bool auth = true) {
  auto sock = ps::ConnectWithRetry(io, "127.0.0.1", srv.port(), ps::After(10));
  EXPECT_TRUE(sock.ok());
  auto c = std::make_unique<ps::FrameConn>(std::move(*sock), srv.address());
  if (auth) {
    Status s = ps::ClientHandshake(*c, kToken, ps::After(10), {});
    EXPECT_TRUE(s.ok()) << s.message();
  }
  return c;
}

// Reads until the server closes; returns the error it sent, if any.
std::string ServerError(ps::FrameConn& c) {
  proto::PsHeader h;
  Status s = c.RecvHeader(&h, {}, ps::After(10), 10);
  if (s.ok() && h.type() == proto::PS_ERROR) return h.error();
  return s.ok() ? std::string("frame ") + ps::TypeName(h.type()) : s.message();
}

class PsHostile : public ::testing::Test {
 protected:
  PsHostile() : sv(1, 1u << 20) {}
  void TearDown() override { ExpectServes(sv, "after"); }
  Servers sv;
  boost::asio::io_context io;
};

TEST_F(PsHostile, WrongToken) {
  auto c = Client(sv, 0, 1, 16, "not-the-token");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("authentication failed: wrong token"), std::string::npos) << c.status().message();
  for (int i = 0; i < 100 && !sv.Logged("failed authentication"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_TRUE(sv.Logged("failed authentication (wrong token)"));
}

TEST_F(PsHostile, TruncatedFrame) {
  ExpectServes(sv, "j");
  auto c = RawConn(io, *sv.s[0]);
  proto::PsHeader h;
  h.set_version(ps::kProtocolVersion);
  h.set_type(proto::PS_PUSH);
  h.set_job_id("j");
  h.set_step(1);  // ExpectServes pushed step 0
  h.set_begin(0);
  h.set_end(64);
  h.set_payload_bytes(256);
  const std::string head = ps::EncodeHeader(h);
  ASSERT_TRUE(c->SendRaw(head.data(), head.size(), ps::After(5)).ok());
  std::vector<float> part(10, 1.f);
  ASSERT_TRUE(c->SendRaw(part.data(), 40, ps::After(5)).ok());
  c.reset();  // closes mid-payload
  for (int i = 0; i < 100 && !sv.Logged("in the middle of a frame"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_TRUE(sv.Logged("in the middle of a frame (40 of 256 bytes)"));
}

TEST_F(PsHostile, FrameOverTheSizeLimit) {
  auto c = RawConn(io, *sv.s[0]);
  proto::PsHeader h;
  h.set_version(ps::kProtocolVersion);
  h.set_type(proto::PS_PUSH);
  h.set_begin(0);
  h.set_end(1u << 20);
  h.set_payload_bytes(4u << 20);
  const std::string head = ps::EncodeHeader(h);
  ASSERT_TRUE(c->SendRaw(head.data(), head.size(), ps::After(5)).ok());
  EXPECT_NE(ServerError(*c).find("is over the limit of 1048576"), std::string::npos);
}

TEST_F(PsHostile, RandomBytes) {
  std::mt19937 rng(7);
  std::vector<uint8_t> junk(4096);
  for (auto& b : junk) b = static_cast<uint8_t>(rng());
  {
    auto c = RawConn(io, *sv.s[0]);  // after authentication
    ASSERT_TRUE(c->SendRaw(junk.data(), junk.size(), ps::After(5)).ok());
    EXPECT_FALSE(ServerError(*c).empty());
  }
  {
    auto c = RawConn(io, *sv.s[0], /*auth=*/false);  // instead of authenticating
    proto::PsHeader ch;
    ASSERT_TRUE(c->RecvHeader(&ch, {}, ps::After(5), 5).ok());
    ASSERT_TRUE(c->SendRaw(junk.data(), junk.size(), ps::After(5)).ok());
    EXPECT_FALSE(ServerError(*c).empty());
  }
  EXPECT_TRUE(sv.Logged("closing the connection"));
}

TEST_F(PsHostile, KeyRangeOutsideTheShard) {
  ExpectServes(sv, "j");  // the job holds 64 elements
  auto c = RawConn(io, *sv.s[0]);
  proto::PsHeader h;
  h.set_type(proto::PS_PULL);
  h.set_job_id("j");
  h.set_step(1);
  h.set_begin(32);
  h.set_end(1000);
  ASSERT_TRUE(c->Send(h, ps::After(5)).ok());
  EXPECT_NE(ServerError(*c).find("PULL range [32, 1000) is outside this shard's [0, 64)"), std::string::npos);
}

TEST(PsWire, DecodeFrameChecksEveryPart) {
  ps::FrameLimits lim;
  lim.max_payload_bytes = 1024;
  proto::PsHeader h;
  h.set_version(ps::kProtocolVersion);
  h.set_type(proto::PS_PUSH);
  h.set_begin(4);
  h.set_end(8);
  h.set_payload_bytes(16);
  std::string f = ps::EncodeHeader(h) + std::string(16, '\0');
  proto::PsHeader out;
  const uint8_t* payload = nullptr;
  auto dec = [&](const std::string& s) {
    return ps::DecodeFrame(reinterpret_cast<const uint8_t*>(s.data()), s.size(), lim, &out, &payload);
  };
  ASSERT_TRUE(dec(f).ok());
  EXPECT_EQ(out.end(), 8u);
  EXPECT_FALSE(dec(f.substr(0, f.size() - 1)).ok());  // truncated payload
  EXPECT_FALSE(dec(f + "x").ok());                    // trailing bytes
  EXPECT_FALSE(dec(f.substr(0, 3)).ok());             // no length prefix
  h.set_payload_bytes(12);                            // does not match [4, 8) as f32
  EXPECT_FALSE(dec(ps::EncodeHeader(h) + std::string(12, '\0')).ok());
  h.set_payload_bytes(16);
  h.set_version(9);
  EXPECT_FALSE(dec(ps::EncodeHeader(h) + std::string(16, '\0')).ok());
}

TEST(PsAuth, HmacMatchesRfc4231Case2) {
  const std::string mac = ps::HmacSha256("Jefe", "what do ya want for nothing?");
  static const char* kHex = "0123456789abcdef";
  std::string hex;
  for (unsigned char c : mac) hex += std::string{kHex[c >> 4], kHex[c & 15]};
  EXPECT_EQ(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  EXPECT_TRUE(ps::ConstantTimeEqual(mac, mac));
  EXPECT_FALSE(ps::ConstantTimeEqual(mac, mac.substr(1)));
}

}  // namespace
}  // namespace ringtrain
