// The coordinator's scheduler and job service (issue 9), in process: the placement plan as a pure
// function (against a brute-force minimum of workers), and a real Coordinator (real TCP on
// loopback, a real SQLite file) driven by an agent written against the wire protocol, so the
// test sees exactly the START and STOP messages a job produces. Processes of real agents and
// training runs are in tests/e2e/coordinator.sh.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "coord.pb.h"
#include "coordinator/coordinator.h"
#include "parameter_server/auth.h"
#include "parameter_server/wire.h"

namespace ringtrain::coord {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

int Distinct(const std::vector<std::string>& w) { return static_cast<int>(std::set<std::string>(w.begin(), w.end()).size()); }

TEST(PlanPlacement, BestFitOnOneWorkerWhenOneHoldsTheJob) {
  // Worker b holds the 2 processes exactly; a keeps its 4 free slots for a bigger job.
  EXPECT_EQ(PlanPlacement({{"a", 4}, {"b", 2}}, 2, 2, 0), (std::vector<std::string>{"b", "b"}));
  // Equal candidates: the lowest id.
  EXPECT_EQ(PlanPlacement({{"c", 2}, {"a", 2}, {"b", 2}}, 2, 2, 0), (std::vector<std::string>{"a", "a"}));
}

TEST(PlanPlacement, FewestWorkersThenBestFitForTheRest) {
  EXPECT_EQ(PlanPlacement({{"a", 2}, {"b", 2}, {"c", 2}}, 4, 4, 0), (std::vector<std::string>{"a", "a", "b", "b"}));
  // 3 on a, then the 1 left on c (which holds it exactly), not on b.
  EXPECT_EQ(PlanPlacement({{"a", 3}, {"b", 2}, {"c", 1}}, 4, 4, 0), (std::vector<std::string>{"a", "a", "a", "c"}));
}

TEST(PlanPlacement, ElasticTakesTheMostThatFitsAndNothingBelowTheMinimum) {
  EXPECT_EQ(PlanPlacement({{"a", 2}, {"b", 1}}, 2, 4, 0).size(), 3u);
  EXPECT_EQ(PlanPlacement({{"a", 8}}, 2, 4, 0).size(), 4u);
  EXPECT_TRUE(PlanPlacement({{"a", 2}, {"b", 2}}, 5, 8, 0).empty());
  EXPECT_TRUE(PlanPlacement({}, 1, 1, 0).empty());
  EXPECT_TRUE(PlanPlacement({{"a", 0}, {"b", -1}}, 1, 1, 0).empty());
}

TEST(PlanPlacement, ParameterServersTakeSlotsAfterTheRanks) {
  // 2 ranks + 1 server: the ranks on a, the server on b.
  EXPECT_EQ(PlanPlacement({{"a", 2}, {"b", 2}}, 2, 2, 1), (std::vector<std::string>{"a", "a", "b"}));
  // Without room for the server the job does not start at all (gang).
  EXPECT_TRUE(PlanPlacement({{"a", 2}}, 2, 2, 1).empty());
  // Elastic: the servers are reserved first, the ranks get what is left.
  EXPECT_EQ(PlanPlacement({{"a", 3}, {"b", 2}}, 1, 8, 2).size(), 5u);
}

TEST(PlanPlacement, RandomPoolsNeverOvercommitAndUseTheFewestWorkers) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 2000; ++trial) {
    std::map<std::string, int> free;
    const int nw = 1 + static_cast<int>(rng() % 6);
    for (int i = 0; i < nw; ++i) free[std::string(1, static_cast<char>('a' + i))] = static_cast<int>(rng() % 5);
    const int lo = 1 + static_cast<int>(rng() % 6), hi = lo + static_cast<int>(rng() % 4), extra = static_cast<int>(rng() % 3);
    int total = 0;
    std::vector<int> sizes;
    for (const auto& [w, f] : free) {
      total += f;
      sizes.push_back(f);
    }
    const auto plan = PlanPlacement(free, lo, hi, extra);
    const int n = std::min(hi, total - extra);
    if (n < lo) {
      EXPECT_TRUE(plan.empty());
      continue;
    }
    ASSERT_EQ(static_cast<int>(plan.size()), n + extra);
    std::map<std::string, int> used;
    for (const auto& w : plan) ++used[w];
    for (const auto& [w, u] : used) EXPECT_LE(u, free[w]) << w;
    // Brute-force minimum of workers: the largest ones first.
    std::sort(sizes.rbegin(), sizes.rend());
    int need = n + extra, fewest = 0;
    for (int s : sizes)
      if (need > 0) {
        need -= s;
        ++fewest;
      }
    EXPECT_EQ(Distinct(plan), fewest);
    // Each worker's processes are adjacent (local ranks are contiguous).
    for (size_t i = 2; i < plan.size(); ++i)
      if (plan[i] == plan[i - 2]) {
        EXPECT_EQ(plan[i - 1], plan[i]);
      }
  }
}

TEST(JobToken, DerivedPerJobAndAttempt) {
  const std::string t = JobToken("pool", 3, 1);
  EXPECT_EQ(t.size(), 64u);
  EXPECT_EQ(t.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_EQ(t, JobToken("pool", 3, 1));
  EXPECT_NE(t, JobToken("pool", 3, 2));
  EXPECT_NE(t, JobToken("pool", 4, 1));
  EXPECT_NE(t, JobToken("other", 3, 1));
}

// An agent speaking the protocol by hand: registers, then reads what the coordinator sends.
class WireAgent {
 public:
  WireAgent(int port, const std::string& token, const std::string& id, int slots) {
    auto sock = ps::ConnectWithRetry(io_, "127.0.0.1", port, ps::After(5));
    EXPECT_TRUE(sock.ok()) << sock.status().message();
    conn_ = std::make_unique<ps::FrameConn>(std::move(*sock), "coordinator");
    Status s = ps::ClientHandshake(*conn_, token, ps::After(5), {});
    EXPECT_TRUE(s.ok()) << s.message();
    Send(proto::CO_REGISTER, {{"id", id}, {"host", "test"}, {"addr", "127.0.0.1"}, {"slots", slots}});
    const auto reply = Recv(5);
    EXPECT_EQ(reply.first, proto::CO_REPLY);
  }
  void Send(proto::CoordType t, const json& j) {
    proto::CoordMsg m;
    m.set_version(1);
    m.set_type(t);
    m.set_json(j.dump());
    ASSERT_TRUE(conn_->SendMessage(m, ps::After(5)).ok());
  }
  std::pair<proto::CoordType, json> Recv(double seconds) {
    proto::CoordMsg m;
    Status s = conn_->RecvMessage(&m, kMaxCoordFrame, ps::After(seconds), 5);
    if (!s.ok()) return {proto::CO_UNKNOWN, json()};
    return {m.type(), json::parse(m.json(), nullptr, false)};
  }
  // The next `n` START messages (heartbeating meanwhile).
  std::vector<json> Starts(int n) {
    std::vector<json> out;
    for (int i = 0; i < 50 && static_cast<int>(out.size()) < n; ++i) {
      Send(proto::CO_HEARTBEAT, {{"worker", "x"}, {"running", json::array()}});
      auto [t, j] = Recv(0.2);
      if (t == proto::CO_START) out.push_back(j);
    }
    return out;
  }

 private:
  boost::asio::io_context io_;
  std::unique_ptr<ps::FrameConn> conn_;
};

class CoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string name = "rt-coord-test-";
    name.append(std::to_string(::getpid())).append("-").append(::testing::UnitTest::GetInstance()->current_test_info()->name());
    dir_ = fs::temp_directory_path() / name;
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    StartCoordinator();
  }
  void TearDown() override {
    coord_.reset();
    fs::remove_all(dir_);
  }
  void StartCoordinator() {
    coord_.reset();
    CoordinatorOptions o;
    o.port = 0;
    o.state = (dir_ / "state.db").string();
    o.token = token_;
    o.heartbeat_timeout_s = 60;
    auto c = Coordinator::Start(o);
    ASSERT_TRUE(c.ok()) << c.status().message();
    coord_ = std::move(*c);
  }
  StatusOr<json> Ask(const json& req) { return CoordinatorRequest("127.0.0.1:" + std::to_string(coord_->port()), token_, req); }
  StatusOr<json> Submit(const json& spec) { return Ask({{"op", "submit"}, {"spec", spec}}); }
  std::string SubmitError(const json& spec) {
    auto r = Submit(spec);
    return r.ok() ? "accepted" : r.status().message();
  }
  std::string State(int64_t id) {
    auto r = Ask({{"op", "job"}, {"id", id}});
    return r.ok() ? (*r)["state"].get<std::string>() : r.status().message();
  }
  bool WaitState(int64_t id, const std::string& want) {
    for (int i = 0; i < 100; ++i) {
      if (State(id) == want) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  fs::path dir_;
  std::string token_ = "unit-test-token";
  std::unique_ptr<Coordinator> coord_;
};

TEST_F(CoordinatorTest, SpecErrorsAreRejectedAtSubmit) {
  EXPECT_NE(SubmitError({{"nprocs", 2}}).find("unknown key 'nprocs'"), std::string::npos);
  EXPECT_NE(SubmitError({{"nproc", "two"}}).find("nproc must be an integer"), std::string::npos);
  EXPECT_NE(SubmitError({{"min_nproc", 4}, {"max_nproc", 2}}).find("min_nproc <= max_nproc"), std::string::npos);
  EXPECT_NE(SubmitError({{"set", json::array({"optim.lrr=1"})}}).find("optim.lrr"), std::string::npos);
  EXPECT_NE(SubmitError({{"config", "model: [unclosed"}}).find("the job's config"), std::string::npos);
  EXPECT_NE(SubmitError({{"nproc", 3}, {"set", json::array({"parallel.tensor=2"})}}).find("must divide"), std::string::npos);
  EXPECT_NE(SubmitError({{"ps_servers", -1}}).find("ps_servers must be in"), std::string::npos);
  EXPECT_NE(SubmitError({{"ps_servers", 1}, {"nproc", 2}, {"set", json::array({"parallel.tensor=2"})}}).find("parallel.tensor"),
            std::string::npos);
  EXPECT_NE(SubmitError({{"ps_servers", 1}, {"set", json::array({"dist.zero1=true"})}}).find("dist.zero1"), std::string::npos);
  EXPECT_NE(SubmitError({{"ps_servers", 1}, {"set", json::array({"sync.mode=allreduce"})}}).find("allreduce"), std::string::npos);
  EXPECT_NE(SubmitError({{"set", json::array({"sync.mode=ps"})}}).find("needs ps_servers"), std::string::npos);
  // A field of the wrong type is an error, and the coordinator keeps serving (the first one is the
  // input libFuzzer found: "op" as a number).
  auto bad_op = Ask({{"op", 8056365317048056365.0}});
  ASSERT_FALSE(bad_op.ok());
  EXPECT_NE(bad_op.status().message().find("\"op\" string"), std::string::npos) << bad_op.status().message();
  EXPECT_NE(SubmitError({{"name", 5}}).find("malformed request"), std::string::npos);
  auto jobs = Ask({{"op", "jobs"}});
  ASSERT_TRUE(jobs.ok()) << jobs.status().message();
  EXPECT_TRUE((*jobs)["jobs"].empty());
  // With a pool registered, a job it can never hold is refused, servers counted.
  WireAgent a(coord_->port(), token_, "a", 3);
  EXPECT_NE(SubmitError({{"nproc", 4}}).find("needs 4 process(es), but the pool has 3 slot(s) on 1 worker(s)"), std::string::npos);
  EXPECT_NE(SubmitError({{"nproc", 3}, {"ps_servers", 1}}).find("needs 3 process(es) and 1 parameter server(s)"),
            std::string::npos);
  EXPECT_EQ(SubmitError({{"nproc", 2}, {"ps_servers", 1}}), "accepted");
}

TEST_F(CoordinatorTest, ParameterServerJobGetsServersAddressesAndADerivedToken) {
  WireAgent a(coord_->port(), token_, "a", 3);
  auto id = Submit({{"nproc", 2}, {"ps_servers", 1}, {"set", json::array({"train.steps=5"})}});
  ASSERT_TRUE(id.ok()) << id.status().message();
  const int64_t job = (*id)["id"];
  const auto starts = a.Starts(3);
  ASSERT_EQ(starts.size(), 3u);
  std::vector<json> ranks, servers;
  for (const auto& s : starts) (s.contains("ps") ? servers : ranks).push_back(s);
  ASSERT_EQ(ranks.size(), 2u);
  ASSERT_EQ(servers.size(), 1u);
  EXPECT_EQ(servers[0]["ps"], 0);
  EXPECT_EQ(servers[0]["ps_count"], 1);
  const std::string listen = servers[0]["listen"];
  for (const auto& r : ranks) {
    EXPECT_EQ(r["world"], 2);
    EXPECT_EQ(r["ps_hosts"], listen);
    EXPECT_EQ(r["master_port"].get<int>() + 1, std::stoi(listen.substr(listen.rfind(':') + 1)));
    EXPECT_EQ(r["config"]["train"]["steps"], 5);
    EXPECT_FALSE(r.contains("token"));  // derived by each agent, never sent
  }
  EXPECT_EQ(State(job), "running");
  // Both ranks succeed: the job succeeds and its server is stopped.
  for (const auto& r : ranks) a.Send(proto::CO_EXITED, {{"job", job}, {"attempt", 1}, {"rank", r["rank"]}, {"status", 0}});
  ASSERT_TRUE(WaitState(job, "succeeded"));
  bool stopped = false;
  for (int i = 0; i < 20 && !stopped; ++i) {
    auto [t, j] = a.Recv(0.2);
    stopped = t == proto::CO_STOP && j["job"] == job;
  }
  EXPECT_TRUE(stopped);
}

TEST_F(CoordinatorTest, AServerExitFailsTheAttemptAndTheJobRestarts) {
  WireAgent a(coord_->port(), token_, "a", 3);
  auto id = Submit({{"nproc", 2}, {"ps_servers", 1}, {"max_restarts", 1}});
  ASSERT_TRUE(id.ok());
  const int64_t job = (*id)["id"];
  auto starts = a.Starts(3);
  ASSERT_EQ(starts.size(), 3u);
  int server_rank = -1;
  for (const auto& s : starts)
    if (s.contains("ps")) server_rank = s["rank"];
  a.Send(proto::CO_EXITED, {{"job", job}, {"attempt", 1}, {"rank", server_rank}, {"status", 1}});
  // STOP for the ranks, then (once they exited) attempt 2, resuming.
  bool stop = false;
  for (int i = 0; i < 20 && !stop; ++i) stop = a.Recv(0.2).first == proto::CO_STOP;
  ASSERT_TRUE(stop);
  for (const auto& s : starts)
    if (!s.contains("ps")) a.Send(proto::CO_EXITED, {{"job", job}, {"attempt", 1}, {"rank", s["rank"]}, {"status", 137}});
  starts = a.Starts(3);
  ASSERT_EQ(starts.size(), 3u);
  for (const auto& s : starts) {
    EXPECT_EQ(s["attempt"], 2);
    if (!s.contains("ps")) {
      EXPECT_EQ(s["resume"], true);
    }
  }
  auto j = Ask({{"op", "job"}, {"id", job}});
  ASSERT_TRUE(j.ok());
  EXPECT_EQ((*j)["restarts"], 1);
  EXPECT_NE((*j)["reason"].get<std::string>().find("parameter server 0 on a exited with status 1"), std::string::npos);
}

TEST_F(CoordinatorTest, PriorityThenFifoWhenSlotsFree) {
  WireAgent a(coord_->port(), token_, "a", 2);
  auto first = Submit({{"nproc", 2}, {"name", "first"}});
  ASSERT_TRUE(first.ok());
  ASSERT_EQ(a.Starts(2).size(), 2u);
  auto low = Submit({{"nproc", 2}, {"name", "low"}});
  auto high = Submit({{"nproc", 2}, {"name", "high"}, {"priority", 5}});
  auto low2 = Submit({{"nproc", 2}, {"name", "low2"}});
  ASSERT_TRUE(low.ok() && high.ok() && low2.ok());
  EXPECT_EQ(State((*low)["id"]), "pending");
  for (int r = 0; r < 2; ++r) a.Send(proto::CO_EXITED, {{"job", (*first)["id"]}, {"attempt", 1}, {"rank", r}, {"status", 0}});
  auto next = a.Starts(2);
  ASSERT_EQ(next.size(), 2u);
  EXPECT_EQ(next[0]["job"], (*high)["id"]);
  for (int r = 0; r < 2; ++r) a.Send(proto::CO_EXITED, {{"job", (*high)["id"]}, {"attempt", 1}, {"rank", r}, {"status", 0}});
  next = a.Starts(2);
  ASSERT_EQ(next.size(), 2u);
  EXPECT_EQ(next[0]["job"], (*low)["id"]);  // FIFO among equal priority
  EXPECT_EQ(State((*low2)["id"]), "pending");
}

TEST_F(CoordinatorTest, StatePersistsAcrossARestartWithoutDuplicates) {
  auto a = Submit({{"nproc", 1}, {"name", "kept"}});
  ASSERT_TRUE(a.ok());
  StartCoordinator();  // same state file
  auto jobs = Ask({{"op", "jobs"}});
  ASSERT_TRUE(jobs.ok());
  ASSERT_EQ((*jobs)["jobs"].size(), 1u);
  EXPECT_EQ((*jobs)["jobs"][0]["name"], "kept");
  EXPECT_EQ((*jobs)["jobs"][0]["state"], "pending");
  auto b = Submit({{"nproc", 1}});
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)["id"].get<int64_t>(), (*a)["id"].get<int64_t>() + 1);
  auto j = Ask({{"op", "job"}, {"id", (*a)["id"]}});
  ASSERT_TRUE(j.ok());
  EXPECT_EQ((*j)["events"][0]["kind"], "submitted");
}

TEST_F(CoordinatorTest, WrongTokenIsRefused) {
  auto r = CoordinatorRequest("127.0.0.1:" + std::to_string(coord_->port()), "not-the-token", {{"op", "jobs"}});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("token"), std::string::npos) << r.status().message();
  EXPECT_TRUE(Ask({{"op", "jobs"}}).ok());
}

}  // namespace
}  // namespace ringtrain::coord
