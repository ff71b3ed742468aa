// Binomial-tree broadcast and reduce: ceil(log2(n)) rounds. Ranks are renumbered relative to the
// root (v = rank - root mod n); in broadcast, v receives from v - 2^k (its lowest set bit) and then
// sends to v + 2^j for every smaller j; reduce runs the same tree leaves-first.
#include "collectives/algorithms/algorithms.h"

namespace ringtrain::coll {

Status BinomialBroadcast(Link& l, uint8_t* data, size_t bytes, int root) {
  const int n = l.size();
  const int v = (l.rank() - root + n) % n;
  int mask = 1;
  while (mask < n) {
    if (v & mask) {
      RT_RETURN_IF_ERROR(l.Recv((v - mask + root) % n, data, bytes));
      break;
    }
    mask <<= 1;
  }
  for (mask >>= 1; mask > 0; mask >>= 1)
    if (v + mask < n) RT_RETURN_IF_ERROR(l.Send((v + mask + root) % n, data, bytes));
  return Status::Ok();
}

Status BinomialReduce(Link& l, uint8_t* data, int64_t count, DataType t, ReduceOp op, int root, uint8_t* tmp) {
  const int n = l.size();
  const int v = (l.rank() - root + n) % n;
  const size_t bytes = static_cast<size_t>(count) * DataTypeSize(t);
  for (int mask = 1; mask < n; mask <<= 1) {
    if (v & mask) return l.Send((v - mask + root) % n, data, bytes);
    if (v + mask < n) {
      RT_RETURN_IF_ERROR(l.RecvReduce((v + mask + root) % n, data, bytes, t, op, tmp));
    }
  }
  return Status::Ok();
}

}  // namespace ringtrain::coll
