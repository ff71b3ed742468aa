// Element types, reduction operators and operation names shared by the Communicator, the
// algorithms and the wire format; plus the one reduction kernel every algorithm uses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace ringtrain::coll {

enum class DataType : uint8_t { kF32 = 1, kF64, kI64, kI32, kBF16, kF16 };
enum class ReduceOp : uint8_t { kSum = 1, kAvg, kMax, kMin };
enum class OpKind : uint8_t {
  kAllReduce = 1,
  kReduceScatter,
  kAllGather,
  kBroadcast,
  kReduce,
  kBarrier,
  kSendRecv,
  kSplit,
};

size_t DataTypeSize(DataType t);
const char* DataTypeName(DataType t);
const char* ReduceOpName(ReduceOp op);
const char* OpName(OpKind op);
bool ValidDataType(uint8_t t);

// dst[i] = dst[i] (op) src[i] for count elements. kAvg reduces as a sum (the division happens once,
// at the end, in the Communicator). bf16/fp16 are not reduced here: the Communicator widens them to
// fp32 first so sums accumulate in fp32.
void ReduceInto(void* dst, const void* src, size_t count, DataType t, ReduceOp op);

// bf16/fp16 <-> fp32 (round to nearest even).
float Bf16ToFloat(uint16_t h);
uint16_t FloatToBf16(float f);
float Fp16ToFloat(uint16_t h);
uint16_t FloatToFp16(float f);

}  // namespace ringtrain::coll
