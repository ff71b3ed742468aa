// Recursive halving / doubling all-reduce for a power-of-two number of ranks. Halving: in step k
// rank r and its partner r ^ (n >> (k+1)) split their common range in two; each sends the half it
// gives up and reduces the half it keeps. After log2(n) steps each rank holds one reduced block.
// Doubling retraces the steps, exchanging the kept halves, until everyone holds everything.
// 2*log2(n) messages per rank: the latency-bound choice for small buffers.
#include <vector>

#include "collectives/algorithms/algorithms.h"

namespace ringtrain::coll {

size_t HalvingDoublingScratchBytes(int64_t count, size_t esize) {
  return static_cast<size_t>((count + 1) / 2) * esize;
}

Status HalvingDoublingAllReduce(Link& l, uint8_t* data, int64_t count, DataType t, ReduceOp op, uint8_t* tmp) {
  const int n = l.size(), r = l.rank();
  RT_CHECK_MSG((n & (n - 1)) == 0, "halving-doubling needs a power-of-two number of ranks");
  const size_t es = DataTypeSize(t);
  struct Level {
    int partner;
    int64_t keep0, keep1, give0, give1;
  };
  std::vector<Level> levels;
  int64_t lo = 0, hi = count;
  for (int mask = n / 2; mask >= 1; mask /= 2) {
    const int partner = r ^ mask;
    const int64_t mid = lo + (hi - lo) / 2;
    Level lv{partner, lo, mid, mid, hi};
    if (r & mask) lv = Level{partner, mid, hi, lo, mid};
    if (lv.give1 > lv.give0) RT_RETURN_IF_ERROR(l.Send(partner, data + lv.give0 * es, (lv.give1 - lv.give0) * es));
    if (lv.keep1 > lv.keep0) {
      RT_RETURN_IF_ERROR(l.RecvReduce(partner, data + lv.keep0 * es, (lv.keep1 - lv.keep0) * es, t, op, tmp));
    }
    levels.push_back(lv);
    lo = lv.keep0;
    hi = lv.keep1;
  }
  for (auto it = levels.rbegin(); it != levels.rend(); ++it) {
    if (it->keep1 > it->keep0) RT_RETURN_IF_ERROR(l.Send(it->partner, data + it->keep0 * es, (it->keep1 - it->keep0) * es));
    if (it->give1 > it->give0) RT_RETURN_IF_ERROR(l.Recv(it->partner, data + it->give0 * es, (it->give1 - it->give0) * es));
  }
  return Status::Ok();
}

}  // namespace ringtrain::coll
