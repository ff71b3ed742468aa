// Ring reduce-scatter / all-gather / all-reduce. With n ranks the buffer is cut into n blocks; in
// each of n-1 steps every rank sends one block to rank+1 and receives one from rank-1. Messages are
// cut into segments of at most segment_bytes. A step keeps kWindow segments of its outgoing block
// in flight ahead of the one it receives (sends never wait for the receiver), so a rank reduces
// segment k while the next ones are already on the way, and a transport with bounded buffers
// (shared memory) never has to hold more than the window.
#include <algorithm>
#include <cstring>

#include "collectives/algorithms/algorithms.h"

namespace ringtrain::coll {

namespace {

int Mod(int a, int n) { return ((a % n) + n) % n; }

int64_t SegmentElems(size_t esize, size_t segment_bytes) {
  return std::max<int64_t>(1, static_cast<int64_t>(segment_bytes / esize));
}

constexpr int64_t kWindow = 2;  // outgoing segments sent ahead of each receive

// One ring step: the segments of [s0, s1) go to `next` while those of [r0, r1) arrive, each
// handed to recv(c, d) (elements [c, d)); kWindow sends run ahead of the receives.
template <typename RecvFn>
Status RingStep(Link& l, const uint8_t* data, size_t es, int64_t seg, int next, int64_t s0, int64_t s1, int64_t r0,
                int64_t r1, RecvFn recv) {
  int64_t a = s0;
  auto send_one = [&]() -> Status {
    const int64_t b = std::min(s1, a + seg);
    Status st = l.Send(next, data + a * es, static_cast<size_t>(b - a) * es);
    a = b;
    return st;
  };
  for (int64_t k = 0; k < kWindow && a < s1; ++k) RT_RETURN_IF_ERROR(send_one());
  for (int64_t c = r0; c < r1; c += seg) {
    RT_RETURN_IF_ERROR(recv(c, std::min(r1, c + seg)));
    if (a < s1) RT_RETURN_IF_ERROR(send_one());
  }
  while (a < s1) RT_RETURN_IF_ERROR(send_one());
  return Status::Ok();
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
    // The whole outgoing block is final (reduced in the previous step), so its segments may go
    // out in any order relative to the incoming ones, which are reduced one by one.
    RT_RETURN_IF_ERROR(RingStep(l, data, es, seg, next, s0, s1, r0, r1, [&](int64_t c, int64_t d) {
      return l.RecvReduce(prev, data + c * es, static_cast<size_t>(d - c) * es, t, op, tmp);
    }));
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
    RT_RETURN_IF_ERROR(RingStep(l, data, es, seg, next, s0, s1, r0, r1, [&](int64_t c, int64_t d) {
      return l.Recv(prev, data + c * es, static_cast<size_t>(d - c) * es);
    }));
  }
  return Status::Ok();
}

Status RingAllReduce(Link& l, uint8_t* data, int64_t count, DataType t, ReduceOp op, uint8_t* tmp,
                     size_t segment_bytes) {
  RT_RETURN_IF_ERROR(RingReduceScatter(l, data, count, t, op, tmp, segment_bytes));
  return RingAllGather(l, data, count, DataTypeSize(t), segment_bytes);
}

}  // namespace ringtrain::coll
