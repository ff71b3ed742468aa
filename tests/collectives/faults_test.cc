// Sub-groups, other element types, and failures: a rank that dies mid-allreduce, a rank that never
// arrives, and mismatched collectives. Every surviving rank must return an error that names the
// operation, its sequence number and the missing or mismatched rank, well within the deadline.
#include <gtest/gtest.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <initializer_list>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "tests/collectives/check_ops.h"
#include "tests/util/run_ranks.h"

namespace ringtrain {
namespace {

using coll::Communicator;
using coll::DataType;
using coll::ReduceOp;
using testing::RunRanks;

float Input(int64_t i, int r) { return static_cast<float>((i * 7 + r * 13) % 31 - 15); }

// Split 8 ranks into "TP" groups of 2 (color r/2) and "DP" groups (color r%2, reversed key order).
// Each sub-group runs every operation of check_ops.h exactly, like a world of its size, on the
// in-process transport and on TCP.
class CollectiveSplit : public ::testing::TestWithParam<testing::Via> {};

TEST_P(CollectiveSplit, SubGroupsBehaveLikeWorlds) {
  const int n = 8;
  auto fn = [&](Communicator& world) -> Status {
    const int r = world.rank();
    for (int mode = 0; mode < 2; ++mode) {
      const int color = mode == 0 ? r / 2 : r % 2;
      const int key = mode == 0 ? r : -r;  // DP groups ordered by descending world rank
      RT_ASSIGN_OR_RETURN(auto sub, world.Split(color, key));
      std::vector<int> group;
      for (int q = 0; q < n; ++q)
        if ((mode == 0 ? q / 2 : q % 2) == color) group.push_back(q);
      if (mode == 1) std::reverse(group.begin(), group.end());
      if (sub->size() != static_cast<int>(group.size()) || group[sub->rank()] != r)
        return Internal("split placed rank " + std::to_string(r) + " at " + std::to_string(sub->rank()));
      for (testing::Op op : {testing::Op::kSum, testing::Op::kAvg, testing::Op::kMax, testing::Op::kMin,
                             testing::Op::kAsyncSum, testing::Op::kReduceScatter, testing::Op::kAllGather,
                             testing::Op::kBroadcast, testing::Op::kReduce, testing::Op::kBarrier,
                             testing::Op::kSendRecv}) {
        for (int64_t count : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{sub->size() - 1}, int64_t{1000003}}) {
          Status s = testing::RunAndCheck(*sub, op, count);
          if (!s.ok()) return s.WithContext(std::string(mode == 0 ? "TP" : "DP") + " group " + std::to_string(color));
        }
      }
      // The world still works between sub-group calls (contexts keep traffic apart).
      int64_t one = 1;
      RT_RETURN_IF_ERROR(world.AllReduce(&one, 1, DataType::kI64, ReduceOp::kSum));
      if (one != n) return Internal("world allreduce after split: " + std::to_string(one));
    }
    // A negative color takes no part.
    RT_ASSIGN_OR_RETURN(auto none, world.Split(r == 0 ? -1 : 1, 0));
    if ((r == 0) != (none == nullptr)) return Internal("negative color should give no communicator");
    return Status::Ok();
  };
  auto st = testing::RunVia(GetParam(), n, fn);
  for (int r = 0; r < n; ++r) EXPECT_TRUE(st[r].ok()) << "rank " << r << ": " << st[r].message();
}

INSTANTIATE_TEST_SUITE_P(Transports, CollectiveSplit,
                         ::testing::Values(testing::Via::kLocal, testing::Via::kTcp, testing::Via::kShm),
                         [](const auto& info) { return std::string(testing::ViaName(info.param)); });

// Two threads of each rank use two communicators of the same transport at once (the trainer's
// gradient sync next to its asynchronous checkpoint writer): frames of one context arriving while
// the other thread reads the peer's stream must reach their receiver, never be left waiting for a
// deadline. Small messages make the interleaving dense, large ones overflow rings mid-frame; the short deadline turns a lost frame into
// a failure within seconds instead of a hang.
class CollectiveConcurrent : public ::testing::TestWithParam<testing::Via> {};

TEST_P(CollectiveConcurrent, TwoThreadsOnTwoCommunicatorsNeverLoseFrames) {
  const int n = 3, iters = 400;
  coll::CommOptions opts;
  opts.deadline_s = 20;
  auto fn = [&](Communicator& world) -> Status {
    RT_ASSIGN_OR_RETURN(auto other, world.Split(0, world.rank()));
    const int r = world.rank();
    auto loop = [&](Communicator& c, int salt) -> Status {
      for (int it = 0; it < iters; ++it) {
        // Mostly small; every 50th a frame larger than a shared-memory ring (streamed in pieces).
        const int64_t count = it % 50 == 49 ? 1500007 : 1 + (it * 37 + salt) % 300;
        std::vector<float> v(static_cast<size_t>(count));
        for (int64_t i = 0; i < count; ++i) v[static_cast<size_t>(i)] = Input(i + it + salt, r);
        RT_RETURN_IF_ERROR(c.AllReduce(v.data(), count, DataType::kF32, ReduceOp::kSum));
        for (int64_t i = 0; i < count; ++i) {
          float want = 0;
          for (int q = 0; q < n; ++q) want += Input(i + it + salt, q);
          if (v[static_cast<size_t>(i)] != want)
            return Internal("iteration " + std::to_string(it) + " salt " + std::to_string(salt) + ": wrong sum");
        }
      }
      return Status::Ok();
    };
    Status side;
    std::thread t([&] { side = loop(*other, 11); });
    Status main = loop(world, 0);
    t.join();
    RT_RETURN_IF_ERROR(main);
    return side;
  };
  auto st = testing::RunVia(GetParam(), n, fn, opts);
  for (int r = 0; r < n; ++r) EXPECT_TRUE(st[r].ok()) << "rank " << r << ": " << st[r].message();
}

INSTANTIATE_TEST_SUITE_P(Transports, CollectiveConcurrent,
                         ::testing::Values(testing::Via::kLocal, testing::Via::kTcp, testing::Via::kShm),
                         [](const auto& info) { return std::string(testing::ViaName(info.param)); });

TEST(CollectiveTypes, Int64Bf16Fp16AndDouble) {
  for (int n : {2, 3, 4}) {
    auto st = RunRanks(n, [&](Communicator& c) -> Status {
      const int r = c.rank();
      std::vector<int64_t> a(1001);
      for (size_t i = 0; i < a.size(); ++i) a[i] = (int64_t{1} << 40) * (r + 1) + static_cast<int64_t>(i);
      RT_RETURN_IF_ERROR(c.AllReduce(a.data(), 1001, DataType::kI64, ReduceOp::kSum));
      for (size_t i = 0; i < a.size(); ++i)
        if (a[i] != (int64_t{1} << 40) * (n * (n + 1) / 2) + n * static_cast<int64_t>(i))
          return Internal("i64 sum wrong at " + std::to_string(i));
      std::vector<double> d(513);
      for (size_t i = 0; i < d.size(); ++i) d[i] = Input(static_cast<int64_t>(i), r) * 0.5;
      RT_RETURN_IF_ERROR(c.AllReduce(d.data(), 513, DataType::kF64, ReduceOp::kMax));
      for (size_t i = 0; i < d.size(); ++i) {
        double want = -1e9;
        for (int q = 0; q < n; ++q) want = std::max(want, Input(static_cast<int64_t>(i), q) * 0.5);
        if (d[i] != want) return Internal("f64 max wrong");
      }
      // 16-bit sums accumulate in fp32: n copies of 1 + 2^-8 (exact in bf16) plus 256 from one rank.
      // In bf16 arithmetic 256 + (1 + 2^-8) would round back to 257 at every step; in fp32 the
      // sum is 256 + n*(1 + 2^-8), then rounded once.
      for (DataType t : {DataType::kBF16, DataType::kF16}) {
        auto enc = [&](float f) { return t == DataType::kBF16 ? coll::FloatToBf16(f) : coll::FloatToFp16(f); };
        auto dec = [&](uint16_t h) { return t == DataType::kBF16 ? coll::Bf16ToFloat(h) : coll::Fp16ToFloat(h); };
        std::vector<uint16_t> h(64);
        for (size_t i = 0; i < h.size(); ++i) h[i] = enc(static_cast<float>(Input(static_cast<int64_t>(i), r)));
        RT_RETURN_IF_ERROR(c.AllReduce(h.data(), 64, t, ReduceOp::kSum));
        for (size_t i = 0; i < h.size(); ++i) {
          float want = 0;
          for (int q = 0; q < n; ++q) want += Input(static_cast<int64_t>(i), q);
          if (dec(h[i]) != want) return Internal(std::string(coll::DataTypeName(t)) + " sum wrong");
        }
        uint16_t v = enc(r == 0 ? 256.f + 1.f / 64 : 1.f / 64);
        RT_RETURN_IF_ERROR(c.AllReduce(&v, 1, t, ReduceOp::kSum));
        const float exact = 256.f + n / 64.f;
        if (dec(v) != dec(enc(exact)))
          return Internal(std::string(coll::DataTypeName(t)) + " sum not accumulated in fp32: got " +
                          std::to_string(dec(v)) + ", want " + std::to_string(dec(enc(exact))));
      }
      return Status::Ok();
    });
    for (int r = 0; r < n; ++r) EXPECT_TRUE(st[r].ok()) << "n " << n << " rank " << r << ": " << st[r].message();
  }
}

TEST(CollectiveTypes, HalfPrecisionConversionsRoundToNearestEven) {
  EXPECT_EQ(coll::FloatToFp16(1.f), 0x3C00);
  EXPECT_EQ(coll::FloatToFp16(-2.f), 0xC000);
  EXPECT_EQ(coll::FloatToFp16(65504.f), 0x7BFF);
  EXPECT_EQ(coll::FloatToFp16(1e6f), 0x7C00);
  EXPECT_EQ(coll::FloatToFp16(0x1p-24f), 0x0001);
  EXPECT_EQ(coll::FloatToFp16(1.f + 0x1p-11f), 0x3C00);  // tie -> even
  EXPECT_EQ(coll::FloatToFp16(1.f + 3 * 0x1p-11f), 0x3C02);
  EXPECT_EQ(coll::FloatToBf16(1.f + 0x1p-8f), 0x3F80);   // tie -> even
  EXPECT_EQ(coll::FloatToBf16(1.f + 3 * 0x1p-8f), 0x3F82);
  for (uint32_t h = 0; h < 0x7C00; ++h) EXPECT_EQ(coll::FloatToFp16(coll::Fp16ToFloat(h)), h);
}

bool Contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Every rank but `skip` failed, and each message contains every one of `parts`.
void ExpectSurvivorsReport(const std::vector<Status>& st, int skip, std::initializer_list<const char*> parts) {
  for (int r = 0; r < static_cast<int>(st.size()); ++r) {
    if (r == skip) continue;
    ASSERT_FALSE(st[r].ok()) << "rank " << r;
    for (const char* part : parts) EXPECT_TRUE(Contains(st[r].message(), part)) << st[r].message();
  }
}

// Three allreduces of 1000003 floats; then the victim dies (die()) and the others start a fourth.
Status AllReduceThenDie(Communicator& c, int victim, const std::function<void()>& die) {
  std::vector<float> x(1000003, 1.f);
  for (int k = 0; k < 3; ++k) RT_RETURN_IF_ERROR(c.AllReduce(x.data(), 1000003, DataType::kF32, ReduceOp::kSum));
  if (c.rank() == victim) {
    die();
    return Status::Ok();
  }
  return c.AllReduce(x.data(), 1000003, DataType::kF32, ReduceOp::kSum);
}

// One rank dies (its transport is killed, as a process exit closes its sockets) in the middle of a
// stream of allreduces. The others must fail promptly, naming allreduce, the sequence number and
// the dead rank: well before the 30 s deadline.
TEST(CollectiveFaults, DeadRankIsNamedByEverySurvivor) {
  const int n = 4, victim = 2;
  auto world = coll::LocalWorld::Create(n);
  coll::CommOptions opts;
  opts.deadline_s = 30;
  const auto t0 = std::chrono::steady_clock::now();
  auto st = RunRanks(
      n, [&](Communicator& c) { return AllReduceThenDie(c, victim, [&] { world->Kill(victim); }); }, opts, world);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(took, 20.0) << "survivors should not wait for the deadline when a peer is known dead";
  ExpectSurvivorsReport(st, victim, {"allreduce #4", "rank 2 died"});
}

// A rank that never calls the collective: survivors time out after the (short) deadline and name it,
// including the ranks whose direct ring neighbour is alive but blocked.
TEST(CollectiveFaults, MissingRankTimesOutWithItsName) {
  const int n = 4, missing = 1;
  coll::CommOptions opts;
  opts.deadline_s = 1;
  const auto t0 = std::chrono::steady_clock::now();
  auto st = RunRanks(
      n,
      [&](Communicator& c) -> Status {
        std::vector<float> x(4096, 1.f);
        RT_RETURN_IF_ERROR(c.AllReduce(x.data(), 4096, DataType::kF32, ReduceOp::kSum));
        if (c.rank() == missing) {
          std::this_thread::sleep_for(std::chrono::milliseconds(3000));
          return Status::Ok();
        }
        return c.AllReduce(x.data(), 4096, DataType::kF32, ReduceOp::kSum);
      },
      opts);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(took, 10.0);
  ExpectSurvivorsReport(st, missing, {"allreduce #2", ": rank 1 did not arrive within 1 s"});
}

// Rank 0 calls allreduce of 10 floats while rank 1 calls broadcast; then counts that differ.
// Both ranks report the mismatch (the detecting rank tells the other).
TEST(CollectiveFaults, MismatchedCollectiveReportedOnEveryRank) {
  coll::CommOptions opts;
  opts.deadline_s = 20;
  auto st = RunRanks(
      2,
      [&](Communicator& c) -> Status {
        std::vector<float> x(10, 1.f);
        if (c.rank() == 0) return c.AllReduce(x.data(), 10, DataType::kF32, ReduceOp::kSum);
        return c.Broadcast(x.data(), 10, DataType::kF32, 0);
      },
      opts);
  for (int r = 0; r < 2; ++r) {
    ASSERT_FALSE(st[r].ok()) << "rank " << r;
    EXPECT_TRUE(Contains(st[r].message(), "mismatched collective")) << st[r].message();
    EXPECT_TRUE(Contains(st[r].message(), "allreduce #1")) << st[r].message();
    EXPECT_TRUE(Contains(st[r].message(), "broadcast #1")) << st[r].message();
  }
  st = RunRanks(
      3,
      [&](Communicator& c) -> Status {
        std::vector<float> x(12, 1.f);
        return c.AllReduce(x.data(), c.rank() == 2 ? 12 : 10, DataType::kF32, ReduceOp::kSum);
      },
      opts);
  for (int r = 0; r < 3; ++r) {
    ASSERT_FALSE(st[r].ok()) << "rank " << r;
    EXPECT_TRUE(Contains(st[r].message(), "mismatched collective")) << st[r].message();
    EXPECT_TRUE(Contains(st[r].message(), "12 x f32")) << st[r].message();
  }
}

TEST(CollectiveArgs, BadRootAndNegativeCount) {
  auto st = RunRanks(2, [&](Communicator& c) -> Status {
    float x = 0;
    Status a = c.Broadcast(&x, 1, DataType::kF32, 2);
    Status b = c.AllReduce(&x, -1, DataType::kF32, ReduceOp::kSum);
    if (a.ok() || !Contains(a.message(), "root 2")) return Internal("bad root accepted: " + a.message());
    if (b.ok() || !Contains(b.message(), "negative")) return Internal("negative count accepted: " + b.message());
    return Status::Ok();
  });
  for (int r = 0; r < 2; ++r) EXPECT_TRUE(st[r].ok()) << st[r].message();
}

}  // namespace
}  // namespace ringtrain

namespace ringtrain {
namespace {

// The TCP version of the dead-rank test: rank 2 closes all its connections (what the kernel does
// when its process dies) before the fourth allreduce; the others name it promptly.
TEST(CollectiveFaultsTcp, DeadRankIsNamedByEverySurvivor) {
  const int n = 4, victim = 2;
  coll::CommOptions opts;
  opts.deadline_s = 30;
  const auto t0 = std::chrono::steady_clock::now();
  auto st = testing::RunTcpRanksWith(
      n, [&](Communicator& c, coll::TcpTransport& t) { return AllReduceThenDie(c, victim, [&] { t.Close(); }); },
      opts, /*leave_together=*/false);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(took, 20.0);
  EXPECT_TRUE(st[victim].ok()) << st[victim].message();
  ExpectSurvivorsReport(st, victim, {"allreduce #4", "rank 2 (127.0.0.1:", "died"});
}

TEST(CollectiveFaultsTcp, MismatchReportedOnEveryRank) {
  coll::CommOptions opts;
  opts.deadline_s = 20;
  auto st = testing::RunTcpRanks(
      2,
      [&](Communicator& c) -> Status {
        std::vector<float> x(10, 1.f);
        if (c.rank() == 0) return c.AllReduce(x.data(), 10, DataType::kF32, ReduceOp::kSum);
        return c.Broadcast(x.data(), 10, DataType::kF32, 0);
      },
      opts);
  for (int r = 0; r < 2; ++r) {
    ASSERT_FALSE(st[r].ok()) << "rank " << r;
    EXPECT_TRUE(Contains(st[r].message(), "mismatched collective")) << st[r].message();
  }
}

TEST(CollectiveTcp, BadBindAddressIsOneClearError) {
  coll::TcpOptions o;
  o.rank = 0;
  o.size = 2;
  o.master_port = testing::FreePort();
  o.bind = "no-such-interface0";
  o.connect_timeout_s = 2;
  auto t = coll::TcpTransport::Create(o);
  ASSERT_FALSE(t.ok());
  EXPECT_TRUE(Contains(t.status().message(), "no-such-interface0")) << t.status().message();
}

TEST(CollectiveTcp, MissingRankAtSetUpTimesOutNamingIt) {
  coll::TcpOptions o;
  o.rank = 0;
  o.size = 2;
  o.master_port = testing::FreePort();
  o.bind = "127.0.0.1";
  o.connect_timeout_s = 0.5;
  auto t = coll::TcpTransport::Create(o);
  ASSERT_FALSE(t.ok());
  EXPECT_TRUE(Contains(t.status().message(), "1")) << t.status().message();
  EXPECT_EQ(t.status().code(), StatusCode::kDeadlineExceeded) << t.status().message();
}

// Shared memory: a rank that closes its transport mid-stream (as an exiting process would be seen)
// is named by every survivor, promptly.
TEST(CollectiveFaultsShm, DeadRankIsNamedByEverySurvivor) {
  const int n = 4, victim = 2;
  coll::CommOptions opts;
  opts.deadline_s = 30;
  const auto t0 = std::chrono::steady_clock::now();
  auto st = testing::RunShmRanksWith(
      n, [&](Communicator& c, coll::ShmTransport& t) { return AllReduceThenDie(c, victim, [&] { t.Close(); }); }, opts,
      coll::ShmOptions{}.ring_bytes, /*leave_together=*/false);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(took, 20.0);
  EXPECT_TRUE(st[victim].ok()) << st[victim].message();
  ExpectSurvivorsReport(st, victim, {"allreduce #4", "rank 2 (pid ", "closed its transport"});
}

// The direct receive (reducing straight out of the ring) must reject a mismatched frame before
// touching the buffer, and both ranks report it.
TEST(CollectiveFaultsShm, MismatchReportedOnEveryRankAndBufferUntouched) {
  coll::CommOptions opts;
  opts.deadline_s = 20;
  opts.algorithm = coll::Algorithm::kRing;
  std::vector<float> kept(2);
  auto st = testing::RunShmRanksWith(
      2,
      [&](Communicator& c, coll::ShmTransport&) -> Status {
        std::vector<float> x(1000, 1.f);
        Status s = c.AllReduce(x.data(), c.rank() == 0 ? 1000 : 999, DataType::kF32, ReduceOp::kSum);
        kept[static_cast<size_t>(c.rank())] = x[0];
        return s;
      },
      opts, coll::ShmOptions{}.ring_bytes, /*leave_together=*/false);
  for (int r = 0; r < 2; ++r) {
    ASSERT_FALSE(st[r].ok()) << "rank " << r;
    EXPECT_TRUE(Contains(st[r].message(), "mismatched collective")) << st[r].message();
    EXPECT_EQ(kept[static_cast<size_t>(r)], 1.f) << "rank " << r << " reduced a frame it should have rejected";
  }
}

// Rings far smaller than the messages: every frame streams through in chunks and most of each
// send overflows into memory, drained by the progress thread; results stay exact.
TEST(CollectiveShm, TinyRingsStreamLargeFramesExactly) {
  for (int n : {2, 3, 5}) {
    for (testing::Op op : {testing::Op::kSum, testing::Op::kAsyncSum, testing::Op::kBroadcast, testing::Op::kAllGather,
                           testing::Op::kReduce, testing::Op::kSendRecv}) {
      auto st = testing::RunShmRanks(
          n, [&](Communicator& c) { return testing::RunAndCheck(c, op, 1000003); }, {}, /*ring_bytes=*/4096);
      for (int r = 0; r < n; ++r) EXPECT_TRUE(st[r].ok()) << "n " << n << " rank " << r << ": " << st[r].message();
    }
  }
}

double ThreadCpuSeconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// With a core per rank, a waiting rank spins; a patient one (bench train --vs-one-rank's idle
// ranks) sleeps on the ring's futex instead: 400 ms in a barrier cost it little CPU, and the
// barrier still completes as soon as the late rank arrives.
TEST(CollectiveShm, PatientWaiterSleepsInsteadOfSpinning) {
  double cpu = -1, wall = -1;
  auto st = testing::RunShmRanks(2, [&](Communicator& c) -> Status {
    if (c.rank() == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(400));
      RT_RETURN_IF_ERROR(c.Barrier());
      return c.Barrier();
    }
    c.set_patient(true);
    const double c0 = ThreadCpuSeconds();
    const auto t0 = std::chrono::steady_clock::now();
    Status s = c.Barrier();
    cpu = ThreadCpuSeconds() - c0;
    wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    c.set_patient(false);
    RT_RETURN_IF_ERROR(s);
    return c.Barrier();  // and waits go on working after it
  });
  for (int r = 0; r < 2; ++r) ASSERT_TRUE(st[r].ok()) << "rank " << r << ": " << st[r].message();
  EXPECT_GT(wall, 0.3);
  EXPECT_LT(cpu, 0.25 * wall) << "the patient rank used " << cpu << " s of CPU in a " << wall << " s wait";
}

// A segment name nobody creates: a clear error after the timeout, naming it.
TEST(CollectiveShm, MissingSegmentIsOneClearError) {
  coll::ShmOptions o;
  o.rank = 1;
  o.size = 2;
  o.name = "/ringtrain-test-nobody-" + std::to_string(::getpid());
  o.connect_timeout_s = 0.3;
  auto t = coll::ShmTransport::Create(o);
  ASSERT_FALSE(t.ok());
  EXPECT_TRUE(Contains(t.status().message(), o.name)) << t.status().message();
}

}  // namespace
}  // namespace ringtrain
