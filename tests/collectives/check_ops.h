// The collective operations under test and their exact checks, shared by collectives_test (in
// process and TCP) and collectives_mpi_check (MPI under mpirun). Inputs are small integers stored
// as floats, so every sum is exact and results compare bitwise with references computed here.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "collectives/communicator.h"
#include "tests/util/run_ranks.h"  // Via

namespace ringtrain::testing {

using coll::Algorithm;
using coll::Communicator;
using coll::DataType;
using coll::ReduceOp;

enum class Op { kSum, kAvg, kMax, kMin, kAsyncSum, kReduceScatter, kAllGather, kBroadcast, kReduce, kBarrier, kSendRecv };
inline const char* OpLabel(Op op) {
  switch (op) {
    case Op::kSum: return "AllReduceSum";
    case Op::kAvg: return "AllReduceAvg";
    case Op::kMax: return "AllReduceMax";
    case Op::kMin: return "AllReduceMin";
    case Op::kAsyncSum: return "IAllReduceSum";
    case Op::kReduceScatter: return "ReduceScatter";
    case Op::kAllGather: return "AllGather";
    case Op::kBroadcast: return "Broadcast";
    case Op::kReduce: return "Reduce";
    case Op::kBarrier: return "Barrier";
    case Op::kSendRecv: return "SendRecv";
  }
  return "?";
}
inline bool IsAllReduce(Op op) { return op <= Op::kAsyncSum; }

// Rank r's input element i: an integer in [-15, 15].
inline float Input(int64_t i, int r) { return static_cast<float>((i * 7 + r * 13) % 31 - 15); }

// Input(i, r) depends on i only through i % 31, so a reference over the ranks is a 31-entry table
// (checking 16M elements then costs a lookup each, not a loop over the ranks).
template <typename Fold>
std::array<float, 31> RefTable(Fold fold) {
  std::array<float, 31> t{};
  for (int m = 0; m < 31; ++m) t[m] = fold(m);
  return t;
}

// large: include 16M elements (many segments, frames larger than any transport buffer).
inline std::vector<int64_t> Counts(int n, bool large = true) {
  if (!large) return {0, 1, 7, n - 1, 1000003};
  return {0, 1, 7, n - 1, 1000003, 16 << 20};
}

// Runs op on every rank of comm and checks rank comm.rank()'s result for `count`. Host buffers:
// a device communicator is checked through a group that stages them (tests/collectives/nccl_test.cc).
inline Status RunAndCheck(coll::CollectiveGroup& comm, Op op, int64_t count) {
  const int n = comm.size(), r = comm.rank();
  auto fail = [&](int64_t i, double got, double want) {
    std::ostringstream os;
    os << OpLabel(op) << " count " << count << " rank " << r << "/" << n << ": element " << i << " = " << got
       << ", want " << want;
    return Internal(os.str());
  };
  if (IsAllReduce(op)) {
    std::vector<float> x(count);
    const float scale = op == Op::kAvg ? static_cast<float>(n) : 1.f;  // so the average is an integer
    for (int64_t i = 0; i < count; ++i) x[i] = Input(i, r) * scale;
    if (op == Op::kAsyncSum) {
      coll::Work w = comm.IAllReduce(x.data(), count, DataType::kF32, ReduceOp::kSum);
      RT_RETURN_IF_ERROR(w.Wait());
    } else {
      const ReduceOp ro = op == Op::kAvg ? ReduceOp::kAvg : op == Op::kMax ? ReduceOp::kMax
                          : op == Op::kMin ? ReduceOp::kMin : ReduceOp::kSum;
      RT_RETURN_IF_ERROR(comm.AllReduce(x.data(), count, DataType::kF32, ro));
    }
    const auto ref = RefTable([&](int m) {
      float want = op == Op::kMax ? -1e9f : op == Op::kMin ? 1e9f : 0.f;
      for (int q = 0; q < n; ++q) {
        const float v = Input(m, q);
        want = op == Op::kMax ? std::max(want, v) : op == Op::kMin ? std::min(want, v) : want + v;
      }
      return want;
    });
    for (int64_t i = 0; i < count; ++i)
      if (x[i] != ref[i % 31]) return fail(i, x[i], ref[i % 31]);
    return Status::Ok();
  }
  const int64_t per = (count + n - 1) / n;  // per-rank block for reduce_scatter / allgather
  switch (op) {
    case Op::kReduceScatter: {
      std::vector<float> in(per * n), out(per, NAN);
      for (int64_t i = 0; i < per * n; ++i) in[i] = Input(i, r);
      RT_RETURN_IF_ERROR(comm.ReduceScatter(in.data(), out.data(), per, DataType::kF32, ReduceOp::kSum));
      const auto sum = RefTable([&](int m) {
        float want = 0;
        for (int q = 0; q < n; ++q) want += Input(m, q);
        return want;
      });
      for (int64_t i = 0; i < per; ++i)
        if (out[i] != sum[(r * per + i) % 31]) return fail(i, out[i], sum[(r * per + i) % 31]);
      return Status::Ok();
    }
    case Op::kAllGather: {
      std::vector<float> in(per), out(per * n, NAN);
      for (int64_t i = 0; i < per; ++i) in[i] = Input(i, r);
      RT_RETURN_IF_ERROR(comm.AllGather(in.data(), out.data(), per, DataType::kF32));
      for (int64_t i = 0; i < per * n; ++i)
        if (out[i] != Input(i % std::max<int64_t>(per, 1), static_cast<int>(i / std::max<int64_t>(per, 1))))
          return fail(i, out[i], Input(i % per, static_cast<int>(i / per)));
      return Status::Ok();
    }
    case Op::kBroadcast: {
      const int root = n - 1;
      std::vector<float> x(count);
      for (int64_t i = 0; i < count; ++i) x[i] = Input(i, r);
      RT_RETURN_IF_ERROR(comm.Broadcast(x.data(), count, DataType::kF32, root));
      for (int64_t i = 0; i < count; ++i)
        if (x[i] != Input(i, root)) return fail(i, x[i], Input(i, root));
      return Status::Ok();
    }
    case Op::kReduce: {
      const int root = n / 2;
      std::vector<float> x(count);
      for (int64_t i = 0; i < count; ++i) x[i] = Input(i, r);
      RT_RETURN_IF_ERROR(comm.Reduce(x.data(), count, DataType::kF32, ReduceOp::kSum, root));
      const auto want = RefTable([&](int m) {
        if (r != root) return Input(m, r);  // unchanged off the root
        float sum = 0;
        for (int q = 0; q < n; ++q) sum += Input(m, q);
        return sum;
      });
      for (int64_t i = 0; i < count; ++i)
        if (x[i] != want[i % 31]) return fail(i, x[i], want[i % 31]);
      return Status::Ok();
    }
    case Op::kBarrier: return comm.Barrier();
    case Op::kSendRecv: {
      // Shift around the ring: send to r+1, receive from r-1.
      std::vector<float> out(count), in(count, NAN);
      for (int64_t i = 0; i < count; ++i) out[i] = Input(i, r);
      const int from = (r + n - 1) % n;
      RT_RETURN_IF_ERROR(comm.Send(out.data(), count, DataType::kF32, (r + 1) % n));
      RT_RETURN_IF_ERROR(comm.Recv(in.data(), count, DataType::kF32, from));
      for (int64_t i = 0; i < count; ++i)
        if (in[i] != Input(i, from)) return fail(i, in[i], Input(i, from));
      return Status::Ok();
    }
    default: return Internal("unhandled op");
  }
}

struct Case {
  Op op;
  int n;
  Algorithm algo;
  Via via;
};

// gtest prints parameters with this (found by argument-dependent lookup), not as raw bytes.
inline void PrintTo(const Case& c, std::ostream* os) {
  *os << OpLabel(c.op) << " n=" << c.n << " " << coll::AlgorithmName(c.algo)
      << (c.via == Via::kTcp ? " tcp" : c.via == Via::kShm ? " shm" : " local");
}

inline std::vector<Case> AllCases(Via via) {
  std::vector<Case> cases;
  for (int n = 1; n <= 8; ++n) {
    for (Op op : {Op::kSum, Op::kAvg, Op::kMax, Op::kMin, Op::kAsyncSum}) {
      for (Algorithm a : {Algorithm::kRing, Algorithm::kHalvingDoubling, Algorithm::kTree, Algorithm::kAuto}) {
        if (a == Algorithm::kHalvingDoubling && (n & (n - 1)) != 0) continue;  // power-of-two sizes only
        cases.push_back({op, n, a, via});
      }
    }
    for (Op op : {Op::kReduceScatter, Op::kAllGather, Op::kBroadcast, Op::kReduce, Op::kBarrier, Op::kSendRecv})
      cases.push_back({op, n, Algorithm::kAuto, via});
  }
  return cases;
}

}  // namespace ringtrain::testing
