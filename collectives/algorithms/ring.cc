// Ring reduce-scatter / all-gather / all-reduce. With n ranks the buffer is cut into n blocks; in
// each of n-1 steps every rank sends one block to rank+1 and receives one from rank-1. Messages are
// cut into segments of at most segment_bytes; a step sends all its segments first (sends never wait
// for the receiver), so a rank reduces segment k while segment k+1 is already in flight.
#include <algorithm>
#include <cstring>

#include "collectives/algorithms/algorithms.h"

namespace ringtrain::coll {

namespace {

int Mod(int a, int n) { return ((a % n) + n) % n; }

int64_t SegmentElems(size_t esize, size_t segment_bytes) {
  return std::max<int64_t>(1, static_cast<int64_t>(segment_bytes / esize));
}

}  // namespace

size_t RingScratchBytes(int64_t count, int n, size_t esize, size_t segment_bytes) {
  const int64_t block = n > 0 ? (count + n - 1) / n : count;
  return static_cast<size_t>(std::min<int64_t>(block, SegmentElems(esize, segment_bytes))) * esize;
}

Status RingReduceScatter(Link& l, uint8_t* data, int64_t count, DataType t, ReduceOp op, uint8_t* tmp,
                         size_t segment_bytes) {
  const int n = l.size(), r = l.rank();
  if (n == 1) return Status::Ok();
  const size_t es = DataTypeSize(t);
  const int64_t seg = SegmentElems(es, segment_bytes);
  const int next = Mod(r + 1, n), prev = Mod(r - 1, n);
  for (int step = 0; step < n - 1; ++step) {
    // Send block (r - step - 1) as reduced so far; receive block (r - step - 2) and add ours to it.
    const int sb = Mod(r - step - 1, n), rb = Mod(r - step - 2, n);
    const int64_t s0 = BlockBegin(count, n, sb), s1 = BlockBegin(count, n, sb + 1);
    const int64_t r0 = BlockBegin(count, n, rb), r1 = BlockBegin(count, n, rb + 1);
    // The whole outgoing block is final, so all its segments go out first; incoming segments
    // are then reduced one by one while the later ones are still arriving.
    for (int64_t a = s0; a < s1; a += seg) RT_RETURN_IF_ERROR(l.Send(next, data + a * es, std::min(seg, s1 - a) * es));
    for (int64_t c = r0; c < r1; c += seg) {
      const int64_t d = std::min(r1, c + seg);
      RT_RETURN_IF_ERROR(l.Recv(prev, tmp, (d - c) * es));
      ReduceInto(data + c * es, tmp, d - c, t, op);
    }
  }
  return Status::Ok();
}

Status RingAllGather(Link& l, uint8_t* data, int64_t count, size_t es, size_t segment_bytes) {
  const int n = l.size(), r = l.rank();
  if (n == 1) return Status::Ok();
  const int64_t seg = SegmentElems(es, segment_bytes);
  const int next = Mod(r + 1, n), prev = Mod(r - 1, n);
  for (int step = 0; step < n - 1; ++step) {
    // Forward block (r - step), which we hold; receive block (r - step - 1) into place.
    const int sb = Mod(r - step, n), rb = Mod(r - step - 1, n);
    const int64_t s0 = BlockBegin(count, n, sb), s1 = BlockBegin(count, n, sb + 1);
    const int64_t r0 = BlockBegin(count, n, rb), r1 = BlockBegin(count, n, rb + 1);
    for (int64_t a = s0; a < s1; a += seg) RT_RETURN_IF_ERROR(l.Send(next, data + a * es, std::min(seg, s1 - a) * es));
    for (int64_t c = r0; c < r1; c += seg)
      RT_RETURN_IF_ERROR(l.Recv(prev, data + c * es, (std::min(r1, c + seg) - c) * es));
  }
  return Status::Ok();
}

Status RingAllReduce(Link& l, uint8_t* data, int64_t count, DataType t, ReduceOp op, uint8_t* tmp,
                     size_t segment_bytes) {
  RT_RETURN_IF_ERROR(RingReduceScatter(l, data, count, t, op, tmp, segment_bytes));
  return RingAllGather(l, data, count, DataTypeSize(t), segment_bytes);
}

}  // namespace ringtrain::coll
