#include "collectives/types.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/status.h"

namespace ringtrain::coll {

size_t DataTypeSize(DataType t) {
  switch (t) {
    case DataType::kF32: return 4;
    case DataType::kF64: return 8;
    case DataType::kI64: return 8;
    case DataType::kI32: return 4;
    case DataType::kBF16: return 2;
    case DataType::kF16: return 2;
  }
  return 0;
}

bool ValidDataType(uint8_t t) { return t >= 1 && t <= static_cast<uint8_t>(DataType::kF16); }

const char* DataTypeName(DataType t) {
  switch (t) {
    case DataType::kF32: return "f32";
    case DataType::kF64: return "f64";
    case DataType::kI64: return "i64";
    case DataType::kI32: return "i32";
    case DataType::kBF16: return "bf16";
    case DataType::kF16: return "f16";
  }
  return "?";
}

const char* ReduceOpName(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kAvg: return "avg";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kMin: return "min";
  }
  return "?";
}

const char* OpName(OpKind op) {
  switch (op) {
    case OpKind::kAllReduce: return "allreduce";
    case OpKind::kReduceScatter: return "reduce_scatter";
    case OpKind::kAllGather: return "allgather";
    case OpKind::kBroadcast: return "broadcast";
    case OpKind::kReduce: return "reduce";
    case OpKind::kBarrier: return "barrier";
    case OpKind::kSendRecv: return "send/recv";
    case OpKind::kSplit: return "split";
  }
  return "unknown operation";
}

namespace {

template <typename T>
void ReduceTyped(T* d, const T* s, size_t n, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg:
#pragma omp simd
      for (size_t i = 0; i < n; ++i) d[i] += s[i];
      break;
    case ReduceOp::kMax:
      for (size_t i = 0; i < n; ++i) d[i] = std::max(d[i], s[i]);
      break;
    case ReduceOp::kMin:
      for (size_t i = 0; i < n; ++i) d[i] = std::min(d[i], s[i]);
      break;
  }
}

}  // namespace

void ReduceInto(void* dst, const void* src, size_t count, DataType t, ReduceOp op) {
  switch (t) {
    case DataType::kF32: return ReduceTyped(static_cast<float*>(dst), static_cast<const float*>(src), count, op);
    case DataType::kF64: return ReduceTyped(static_cast<double*>(dst), static_cast<const double*>(src), count, op);
    case DataType::kI64: return ReduceTyped(static_cast<int64_t*>(dst), static_cast<const int64_t*>(src), count, op);
    case DataType::kI32: return ReduceTyped(static_cast<int32_t*>(dst), static_cast<const int32_t*>(src), count, op);
    case DataType::kBF16:
    case DataType::kF16: RT_CHECK_MSG(false, "16-bit types are reduced in fp32 by the Communicator");
  }
}

float Bf16ToFloat(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t FloatToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7FFF + ((u >> 16) & 1);  // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}

float Fp16ToFloat(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const int exp = (h >> 10) & 0x1F;
  const uint32_t mant = h & 0x3FF;
  float f;
  if (exp == 0) {
    f = std::ldexp(static_cast<float>(mant), -24);  // zero or subnormal
  } else if (exp == 31) {
    f = mant ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  } else {
    f = std::ldexp(static_cast<float>(mant | 0x400), exp - 25);
  }
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u |= sign;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t FloatToFp16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000);
  const float a = std::fabs(f);
  if (std::isnan(f)) return sign | 0x7E00;
  if (a >= 65520.f) return sign | 0x7C00;  // rounds to infinity
  if (a < 0x1p-14f) {
    // Subnormal: units of 2^-24, round to nearest even.
    const float q = a * 0x1p24f;
    float r = std::nearbyint(q);
    return sign | static_cast<uint16_t>(r);
  }
  int e;
  const float m = std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  // 11 significant bits: scale m to [1024, 2048).
  float sig = std::nearbyint(m * 2048.f);
  if (sig >= 2048.f) {
    sig /= 2.f;
    ++e;
  }
  const int biased = e - 1 + 15;
  return sign | static_cast<uint16_t>((biased << 10) | (static_cast<uint32_t>(sig) & 0x3FF));
}

}  // namespace ringtrain::coll
