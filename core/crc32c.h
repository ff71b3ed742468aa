// CRC32C (Castagnoli), the checksum of checkpoint slices: SSE4.2's crc32 instruction when the
// build targets it, else a table. Crc32c(b, n, Crc32c(a, m)) == Crc32c(a ++ b).
#pragma once

#include <cstddef>
#include <cstdint>

namespace ringtrain {

uint32_t Crc32c(const void* data, size_t n, uint32_t crc = 0);

}  // namespace ringtrain
