// Collective algorithms over a Link's point-to-point sends and receives; one algorithm family per
// file. Buffers are raw bytes of `count` elements of `t`; reductions use ReduceInto (bf16/fp16 are
// widened to fp32 by the Communicator before they get here). `tmp` is scratch the caller sizes
// with the matching *ScratchBytes function. Every rank gets bitwise identical results: each element
// is reduced in one place, in one order, and then copied.
#pragma once

#include <cstddef>
#include <cstdint>

#include "collectives/link.h"
#include "collectives/types.h"

namespace ringtrain::coll {

// Element range [begin, end) of block i when count elements are split into n near-equal blocks.
inline int64_t BlockBegin(int64_t count, int n, int i) { return count * i / n; }

// ring.cc: chunked ring. ReduceScatter leaves the reduced block r (BlockBegin(count, n, r)...) on
// rank r; AllGather assumes rank r holds block r and fills the rest; AllReduce is both.
// segment_bytes bounds each message so that reduction of one segment overlaps the next one's
// transfer.
size_t RingScratchBytes(int64_t count, int n, size_t esize, size_t segment_bytes);
Status RingReduceScatter(Link& l, uint8_t* data, int64_t count, DataType t, ReduceOp op, uint8_t* tmp,
                         size_t segment_bytes);
Status RingAllGather(Link& l, uint8_t* data, int64_t count, size_t esize, size_t segment_bytes);
Status RingAllReduce(Link& l, uint8_t* data, int64_t count, DataType t, ReduceOp op, uint8_t* tmp,
                     size_t segment_bytes);

// halving_doubling.cc: recursive halving reduce-scatter then recursive doubling all-gather, for
// power-of-two sizes (log2(n) steps each way: the choice for small messages).
size_t HalvingDoublingScratchBytes(int64_t count, size_t esize);
Status HalvingDoublingAllReduce(Link& l, uint8_t* data, int64_t count, DataType t, ReduceOp op, uint8_t* tmp);

// tree.cc: binomial trees rooted at `root`. Reduce leaves the result in data on the root and
// clobbers data elsewhere (the Communicator passes a copy there).
Status BinomialBroadcast(Link& l, uint8_t* data, size_t bytes, int root);
Status BinomialReduce(Link& l, uint8_t* data, int64_t count, DataType t, ReduceOp op, int root, uint8_t* tmp);

}  // namespace ringtrain::coll
