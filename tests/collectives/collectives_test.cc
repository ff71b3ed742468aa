// Every Communicator operation x world size 1..8 x algorithm, each over the element counts
// 0, 1, 7, world_size-1, 1000003 and 16M, on the in-process transport, on TCP over loopback and
// on shared memory. Inputs are small integers stored as floats, so every sum is exact and results
// are compared bitwise against references computed here from the input formula. Sub-groups from Split get the same treatment.
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "tests/collectives/check_ops.h"
#include "tests/util/run_ranks.h"

namespace ringtrain {
namespace {

using coll::Algorithm;
using coll::Communicator;
using testing::Case;
using testing::Counts;
using testing::OpLabel;
using testing::RunAndCheck;
using testing::RunRanks;

class Collective : public ::testing::TestWithParam<Case> {};

TEST_P(Collective, ExactOnEveryRankForEveryCount) {
  const Case c = GetParam();
  coll::CommOptions opts;
  opts.algorithm = c.algo;
  opts.deadline_s = 120;
  // 16M elements everywhere in process; over sockets and shared memory with the algorithms that
  // carry large messages (ring, auto), not forced tree or halving-doubling (checked at 16M in
  // process already; over a transport they would only cost minutes).
  const bool large = c.via == testing::Via::kLocal || (c.algo != Algorithm::kTree && c.algo != Algorithm::kHalvingDoubling);
  for (int64_t count : Counts(c.n, large)) {
    if (count < 0) continue;
    SCOPED_TRACE("count " + std::to_string(count));
    auto fn = [&](Communicator& comm) { return RunAndCheck(comm, c.op, count); };
    auto st = testing::RunVia(c.via, c.n, fn, opts);
    for (int r = 0; r < c.n; ++r) ASSERT_TRUE(st[r].ok()) << "rank " << r << ": " << st[r].message();
  }
}

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  std::ostringstream os;
  os << OpLabel(info.param.op) << "_n" << info.param.n << "_" << coll::AlgorithmName(info.param.algo);
  return os.str();
}

INSTANTIATE_TEST_SUITE_P(Local, Collective, ::testing::ValuesIn(testing::AllCases(testing::Via::kLocal)), CaseName);
INSTANTIATE_TEST_SUITE_P(Tcp, Collective, ::testing::ValuesIn(testing::AllCases(testing::Via::kTcp)), CaseName);
INSTANTIATE_TEST_SUITE_P(Shm, Collective, ::testing::ValuesIn(testing::AllCases(testing::Via::kShm)), CaseName);

}  // namespace
}  // namespace ringtrain
