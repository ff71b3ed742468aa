// CRC32C against the published check value and a bitwise reference, split and whole.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/crc32c.h"

namespace ringtrain {
namespace {

uint32_t Reference(const uint8_t* p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
  }
  return ~c;
}

TEST(Crc32c, CheckValue) {
  const char* s = "123456789";
  EXPECT_EQ(Crc32c(s, 9), 0xE3069283u);  // the CRC-32C catalogue's check value
  EXPECT_EQ(Crc32c(s, 0), 0u);
}

TEST(Crc32c, MatchesBitwiseReferenceAndChains) {
  std::vector<uint8_t> b(1000);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(i * 131 + 7);
  for (size_t n : {1, 7, 8, 9, 63, 64, 1000}) {
    EXPECT_EQ(Crc32c(b.data(), n), Reference(b.data(), n)) << n;
    for (size_t cut : {size_t{0}, n / 3, n}) EXPECT_EQ(Crc32c(b.data() + cut, n - cut, Crc32c(b.data(), cut)), Reference(b.data(), n));
  }
  const uint32_t before = Crc32c(b.data(), b.size());
  b[500] ^= 1;  // one flipped bit changes the checksum
  EXPECT_NE(Crc32c(b.data(), b.size()), before);
}

}  // namespace
}  // namespace ringtrain
