// collectives_mpi_check: run under `mpirun -np N`. Every operation x algorithm x count of
// check_ops.h over the MPI transport at world size N, plus a Split into even/odd ranks. Prints one
// line per failure; exit 0 only when every check on this rank passed.
#include <cstdio>
#include <memory>

#include "collectives/mpi/mpi_transport.h"
#include "tests/collectives/check_ops.h"

using namespace ringtrain;  // a test program's main

int main() {
  auto t = coll::MpiTransport::Create();
  if (!t.ok()) {
    std::fprintf(stderr, "collectives_mpi_check: %s\n", t.status().message().c_str());
    return 1;
  }
  const int n = (*t)->size(), r = (*t)->rank();
  int failures = 0, checks = 0;
  for (const testing::Case& c : testing::AllCases(testing::Via::kLocal)) {
    if (c.n != n) continue;
    coll::CommOptions opts;
    opts.algorithm = c.algo;
    opts.deadline_s = 120;
    coll::Communicator comm(*t, opts);
    for (int64_t count : testing::Counts(n)) {
      if (count < 0) continue;
      ++checks;
      Status s = testing::RunAndCheck(comm, c.op, count);
      if (!s.ok()) {
        ++failures;
        std::fprintf(stderr, "rank %d: %s %s count %lld: %s\n", r, testing::OpLabel(c.op), coll::AlgorithmName(c.algo),
                     static_cast<long long>(count), s.message().c_str());
        if (s.code() != StatusCode::kInternal) return 1;  // transport failure: the communicator is gone
      }
    }
  }
  // Sub-groups: even and odd ranks.
  coll::Communicator world(*t);
  auto sub = world.Split(r % 2, r);
  if (!sub.ok()) {
    std::fprintf(stderr, "rank %d: split: %s\n", r, sub.status().message().c_str());
    return 1;
  }
  for (testing::Op op : {testing::Op::kSum, testing::Op::kAllGather, testing::Op::kBroadcast}) {
    ++checks;
    Status s = testing::RunAndCheck(**sub, op, 1000003);
    if (!s.ok()) {
      ++failures;
      std::fprintf(stderr, "rank %d: split %s: %s\n", r, testing::OpLabel(op), s.message().c_str());
    }
  }
  if (r == 0) std::printf("collectives_mpi_check: %d ranks, %d checks per rank, %d failures on rank 0\n", n, checks, failures);
  return failures ? 1 : 0;
}
