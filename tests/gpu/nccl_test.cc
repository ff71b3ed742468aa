// The NCCL communicator against the same exact checks as the host collectives (check_ops.h), one
// in-process rank per GPU. Cases needing more GPUs than the machine has skip with a message; the
// no-GPU path (a clear error, no hang) is checked where no GPU is present.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <future>
#include <string>
#include <vector>

#include "collectives/nccl/nccl_communicator.h"
#include "tests/collectives/check_ops.h"
#include "tests/util/run_ranks.h"

namespace ringtrain {
namespace {

using coll::CollectiveGroup;
using coll::DataType;
using coll::NcclCommunicator;
using coll::ReduceOp;
using coll::Work;

int DeviceCount() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

#define SKIP_UNLESS_GPUS(n)                                                                               \
  do {                                                                                                   \
    const int have_ = DeviceCount();                                                                     \
    if (have_ < (n)) GTEST_SKIP() << "needs " << (n) << " CUDA device(s), this machine has " << have_;   \
  } while (0)

// Device memory for one call, freed on scope exit.
struct DeviceBuffer {
  void* p = nullptr;
  explicit DeviceBuffer(size_t bytes) { RT_CHECK(cudaMalloc(&p, bytes == 0 ? 1 : bytes) == cudaSuccess); }
  ~DeviceBuffer() { cudaFree(p); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

Status Copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (bytes == 0) return Status::Ok();
  return cudaMemcpy(dst, src, bytes, kind) == cudaSuccess ? Status::Ok() : Internal("cudaMemcpy failed");
}

// A CollectiveGroup on host buffers that runs every call on the NCCL communicator through device
// copies, so check_ops.h's exact checks apply unchanged.
class Staged final : public CollectiveGroup {
 public:
  explicit Staged(NcclCommunicator& c) : c_(c) {}
  int rank() const override { return c_.rank(); }
  int size() const override { return c_.size(); }

  Status AllReduce(void* data, int64_t count, DataType t, ReduceOp op) override {
    return IAllReduce(data, count, t, op).Wait();
  }
  Status ReduceScatter(const void* in, void* out, int64_t n, DataType t, ReduceOp op) override {
    return IReduceScatter(in, out, n, t, op).Wait();
  }
  Status AllGather(const void* in, void* out, int64_t n, DataType t) override { return IAllGather(in, out, n, t).Wait(); }
  Status Broadcast(void* data, int64_t count, DataType t, int root) override {
    return IBroadcast(data, count, t, root).Wait();
  }
  Status Reduce(void* data, int64_t count, DataType t, ReduceOp op, int root) override {
    const size_t b = Bytes(count, t);
    DeviceBuffer d(b);
    RT_RETURN_IF_ERROR(Copy(d.p, data, b, cudaMemcpyHostToDevice));
    RT_RETURN_IF_ERROR(c_.Reduce(d.p, count, t, op, root));
    return Copy(data, d.p, b, cudaMemcpyDeviceToHost);
  }
  Status Barrier() override { return c_.Barrier(); }
  Status Send(const void* data, int64_t count, DataType t, int peer) override {
    // The NCCL Send is deferred to the next Recv, so its device copy must outlive this call.
    const size_t b = Bytes(count, t);
    auto d = std::make_shared<DeviceBuffer>(b);
    RT_RETURN_IF_ERROR(Copy(d->p, data, b, cudaMemcpyHostToDevice));
    sends_.push_back(d);
    return c_.Send(d->p, count, t, peer);
  }
  Status Recv(void* data, int64_t count, DataType t, int peer) override {
    const size_t b = Bytes(count, t);
    DeviceBuffer d(b);
    Status st = c_.Recv(d.p, count, t, peer);
    sends_.clear();
    RT_RETURN_IF_ERROR(st);
    return Copy(data, d.p, b, cudaMemcpyDeviceToHost);
  }

  Work IAllReduce(void* data, int64_t count, DataType t, ReduceOp op) override {
    return Stage(data, Bytes(count, t), data, Bytes(count, t),
                 [&](void* d, void*) { return c_.IAllReduce(d, count, t, op); });
  }
  Work IReduceScatter(const void* in, void* out, int64_t n, DataType t, ReduceOp op) override {
    return Stage(in, Bytes(n * size(), t), out, Bytes(n, t),
                 [&](void* din, void* dout) { return c_.IReduceScatter(din, dout, n, t, op); });
  }
  Work IAllGather(const void* in, void* out, int64_t n, DataType t) override {
    return Stage(in, Bytes(n, t), out, Bytes(n * size(), t),
                 [&](void* din, void* dout) { return c_.IAllGather(din, dout, n, t); });
  }
  Work IBroadcast(void* data, int64_t count, DataType t, int root) override {
    return Stage(data, Bytes(count, t), data, Bytes(count, t),
                 [&](void* d, void*) { return c_.IBroadcast(d, count, t, root); });
  }

 private:
  static size_t Bytes(int64_t count, DataType t) { return static_cast<size_t>(std::max<int64_t>(count, 0)) * coll::DataTypeSize(t); }
  // Copies bin bytes of `in` to the device, issues call(device in, device out) and, on Wait, copies
  // bout bytes back to `out`. In place (in == out) both device pointers are one buffer.
  template <typename Call>
  static Work Stage(const void* in, size_t bin, void* out, size_t bout, Call call) {
    auto din = std::make_shared<DeviceBuffer>(bin);
    auto dout = in == out ? din : std::make_shared<DeviceBuffer>(bout);
    if (Status st = Copy(din->p, in, bin, cudaMemcpyHostToDevice); !st.ok()) return Work::Finished(st);
    Work w = call(din->p, dout->p);
    return Work(std::async(std::launch::deferred, [w, din, dout, out, bout]() mutable -> Status {
                  RT_RETURN_IF_ERROR(w.Wait());
                  return Copy(out, dout->p, bout, cudaMemcpyDeviceToHost);
                }).share());
  }

  NcclCommunicator& c_;
  std::vector<std::shared_ptr<DeviceBuffer>> sends_;  // device copies of deferred sends
};

// Rank r of a host world builds its NCCL communicator on GPU r and runs fn.
std::vector<Status> RunNcclRanks(int n, double deadline_s, const std::function<Status(NcclCommunicator&)>& fn) {
  return testing::RunRanks(n, [&](coll::Communicator& host) -> Status {
    RT_ASSIGN_OR_RETURN(auto nccl, NcclCommunicator::Create(host, host.rank(), deadline_s));
    return fn(*nccl);
  });
}

TEST(Nccl, WithoutAGpuCreateFailsWithOneClearErrorOnEveryRank) {
  if (DeviceCount() > 0) GTEST_SKIP() << "a CUDA device is present: the no-GPU path cannot be reached";
  auto st = RunNcclRanks(2, 5, [](NcclCommunicator&) { return Status::Ok(); });
  for (int r = 0; r < 2; ++r) {
    ASSERT_FALSE(st[r].ok()) << "rank " << r;
    EXPECT_NE(st[r].message().find("rank " + std::to_string(r) + " of 2"), std::string::npos) << st[r].message();
    EXPECT_NE(st[r].message().find("CUDA"), std::string::npos) << st[r].message();
  }
}

struct NcclCase {
  testing::Op op;
  int n;
};
void PrintTo(const NcclCase& c, std::ostream* os) { *os << testing::OpLabel(c.op) << " n=" << c.n; }

class NcclOps : public ::testing::TestWithParam<NcclCase> {};

TEST_P(NcclOps, ExactAgainstReference) {
  const NcclCase c = GetParam();
  SKIP_UNLESS_GPUS(c.n);
  for (int64_t count : testing::Counts(c.n)) {
    auto st = RunNcclRanks(c.n, 60, [&](NcclCommunicator& nccl) {
      Staged staged(nccl);
      return testing::RunAndCheck(staged, c.op, count);
    });
    for (int r = 0; r < c.n; ++r) ASSERT_TRUE(st[r].ok()) << "count " << count << " rank " << r << ": " << st[r].message();
  }
}

std::vector<NcclCase> NcclCases() {
  std::vector<NcclCase> v;
  for (int n : {1, 2, 3, 4, 8})
    for (testing::Op op : {testing::Op::kSum, testing::Op::kAvg, testing::Op::kMax, testing::Op::kMin,
                           testing::Op::kAsyncSum, testing::Op::kReduceScatter, testing::Op::kAllGather,
                           testing::Op::kBroadcast, testing::Op::kReduce, testing::Op::kBarrier, testing::Op::kSendRecv}) {
      if (op == testing::Op::kSendRecv && n == 1) continue;  // NCCL has no send to oneself here
      v.push_back({op, n});
    }
  return v;
}
INSTANTIATE_TEST_SUITE_P(Gpu, NcclOps, ::testing::ValuesIn(NcclCases()), [](const auto& info) {
  return std::string(testing::OpLabel(info.param.op)) + "_n" + std::to_string(info.param.n);
});

// bf16 sums accumulate in fp32: 256 + 1 + 1 is 258 (representable in bf16), whereas summing in
// bf16 rounds 256 + 1 back to 256 at every step. int64 averages divide like the host's.
TEST(Nccl, Bf16SumsAccumulateInFp32AndIntegerAveragesTruncate) {
  SKIP_UNLESS_GPUS(3);
  auto st = RunNcclRanks(3, 60, [](NcclCommunicator& nccl) -> Status {
    Staged s(nccl);
    const int r = nccl.rank();
    std::vector<uint16_t> x(1000, coll::FloatToBf16(r == 0 ? 256.f : 1.f));
    RT_RETURN_IF_ERROR(s.AllReduce(x.data(), static_cast<int64_t>(x.size()), DataType::kBF16, ReduceOp::kSum));
    for (uint16_t v : x)
      if (coll::Bf16ToFloat(v) != 258.f) return Internal("bf16 sum " + std::to_string(coll::Bf16ToFloat(v)) + ", want 258");
    std::vector<int64_t> y(17, r == 0 ? 10 : 1);  // (10 + 1 + 1) / 3 = 4
    RT_RETURN_IF_ERROR(s.AllReduce(y.data(), static_cast<int64_t>(y.size()), DataType::kI64, ReduceOp::kAvg));
    for (int64_t v : y)
      if (v != 4) return Internal("int64 average " + std::to_string(v) + ", want 4");
    return Status::Ok();
  });
  for (int r = 0; r < 3; ++r) EXPECT_TRUE(st[r].ok()) << st[r].message();
}

// A rank that never arrives: the other's all-reduce fails within its deadline, naming the
// operation and its sequence number, and later calls return the same error instead of hanging.
TEST(Nccl, MissingPeerIsADeadlineErrorNamingTheOperation) {
  SKIP_UNLESS_GPUS(2);
  auto st = RunNcclRanks(2, 3, [](NcclCommunicator& nccl) -> Status {
    DeviceBuffer d(4096);
    if (nccl.rank() == 1) return Status::Ok();  // leaves without calling
    Status first = nccl.AllReduce(d.p, 1024, DataType::kF32, ReduceOp::kSum);
    if (first.ok()) return Internal("the all-reduce finished without its peer");
    if (first.code() != StatusCode::kDeadlineExceeded && first.code() != StatusCode::kUnavailable)
      return Internal("unexpected error kind: " + first.message());
    if (first.message().find("nccl allreduce #1") == std::string::npos)
      return Internal("the error does not name the operation: " + first.message());
    Status later = nccl.Barrier();
    if (later.ok() || later.message().find("failed earlier") == std::string::npos)
      return Internal("a later call did not report the earlier failure: " + later.message());
    return Status::Ok();
  });
  EXPECT_TRUE(st[0].ok()) << st[0].message();
}

}  // namespace
}  // namespace ringtrain
