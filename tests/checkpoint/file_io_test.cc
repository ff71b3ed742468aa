// SequentialFileWriter and RangeReader (checkpoint shard I/O with O_DIRECT): every byte written
// comes back, whatever the sizes of the appends relative to the 4 KiB blocks and the staging
// buffers; the CRC folded in while appending equals Crc32c of the bytes; the file has its exact
// length (the O_DIRECT tail padding is cut off); ranges at any offset read back exactly, also when
// prefetched; a range past the end is an error naming the file. Run on the temporary directory
// (O_DIRECT on a disk filesystem) and on /dev/shm (tmpfs may refuse O_DIRECT: the fallback).
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "checkpoint/file_io.h"
#include "core/crc32c.h"

namespace ringtrain {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> Dirs() {
  std::vector<std::string> d{fs::temp_directory_path().string()};
  if (fs::is_directory("/dev/shm")) d.push_back("/dev/shm");
  return d;
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(FileIo, WriterKeepsEveryByteAndTheExactLength) {
  std::mt19937 rng(5);
  for (const std::string& dir : Dirs()) {
    // Appends straddling blocks and a 16 KiB staging buffer, a zero-length one, and one larger
    // than both buffers together.
    for (const std::vector<size_t>& sizes : std::vector<std::vector<size_t>>{
             {}, {1}, {4096}, {4095, 2}, {16384}, {16385}, {0, 7, 4096, 12289, 70001, 3}, {100000}}) {
      const std::string path = dir + "/ringtrain-file-io-" + std::to_string(::getpid()) + ".bin";
      auto w = SequentialFileWriter::Create(path, 16384);
      ASSERT_TRUE(w.ok()) << w.status().message();
      std::string want;
      uint32_t crc = 0;
      for (size_t n : sizes) {
        std::string piece(n, '\0');
        for (char& c : piece) c = static_cast<char>(rng());
        ASSERT_TRUE((*w)->Append(piece.data(), n, &crc).ok());
        want += piece;
      }
      EXPECT_EQ((*w)->bytes(), want.size());
      ASSERT_TRUE((*w)->Finish().ok());
      SCOPED_TRACE(dir + ", " + std::to_string(sizes.size()) + " appends of " + std::to_string(want.size()) + " bytes");
      EXPECT_EQ(fs::file_size(path), want.size());
      EXPECT_TRUE(Slurp(path) == want);
      EXPECT_EQ(crc, Crc32c(want.data(), want.size()));
      EXPECT_FALSE((*w)->Finish().ok()) << "a second Finish must fail";
      fs::remove(path);
    }
  }
}

TEST(FileIo, ReaderReturnsExactRangesAndNamesATruncatedFile) {
  std::mt19937 rng(9);
  for (const std::string& dir : Dirs()) {
    const std::string path = dir + "/ringtrain-file-io-r-" + std::to_string(::getpid()) + ".bin";
    std::string data(50000, '\0');
    for (char& c : data) c = static_cast<char>(rng());
    std::ofstream(path, std::ios::binary).write(data.data(), static_cast<std::streamsize>(data.size()));
    auto r = RangeReader::Open(path);
    ASSERT_TRUE(r.ok()) << r.status().message();
    for (auto [off, n] : std::vector<std::pair<size_t, size_t>>{
             {0, 50000}, {0, 1}, {4095, 2}, {4096, 4096}, {12345, 20000}, {49999, 1}, {100, 0}, {0, 8192}}) {
      auto got = (*r)->Read(off, n);
      ASSERT_TRUE(got.ok()) << dir << " [" << off << ", +" << n << "): " << got.status().message();
      EXPECT_EQ(std::string(reinterpret_cast<const char*>(*got), n), data.substr(off, n)) << dir << " at " << off;
    }
    // Prefetched ranges: taken when asked for, discarded when another range is read instead; the
    // pointer of the previous Read stays intact while the next range is being prefetched.
    auto first = (*r)->Read(100, 3000);
    ASSERT_TRUE(first.ok());
    (*r)->Prefetch(3100, 9000);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(*first), 3000), data.substr(100, 3000));
    auto taken = (*r)->Read(3100, 9000);
    ASSERT_TRUE(taken.ok());
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(*taken), 9000), data.substr(3100, 9000));
    (*r)->Prefetch(20000, 100);
    auto other = (*r)->Read(777, 5000);
    ASSERT_TRUE(other.ok());
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(*other), 5000), data.substr(777, 5000));
    (*r)->Prefetch(49000, 1001);  // past the end: the error belongs to the Read that takes it
    auto fine = (*r)->Read(0, 10);
    ASSERT_TRUE(fine.ok()) << fine.status().message();
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(*fine), 10), data.substr(0, 10));
    (*r)->Prefetch(49000, 1001);
    EXPECT_FALSE((*r)->Read(49000, 1001).ok());
    auto past = (*r)->Read(49000, 1001);
    ASSERT_FALSE(past.ok()) << dir;
    EXPECT_NE(past.status().message().find(path), std::string::npos) << past.status().message();
    EXPECT_NE(past.status().message().find("truncated"), std::string::npos) << past.status().message();
    fs::remove(path);
  }
  auto missing = RangeReader::Open("/nonexistent-dir/shard.bin");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent-dir/shard.bin"), std::string::npos);
}

}  // namespace
}  // namespace ringtrain
