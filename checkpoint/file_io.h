// Large-file I/O for checkpoint shards without the page cache's extra copy. Filling fresh page-cache
// pages is the slow part of a buffered write or a cold buffered read on the machines measured (a
// copy into or out of newly backed memory, plus dirty-page throttling); O_DIRECT moves the bytes
// between the device and buffers this process already owns. Where a filesystem refuses O_DIRECT
// (tmpfs, some network filesystems) both fall back to ordinary buffered I/O.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "core/buffer.h"
#include "core/status.h"

namespace ringtrain {

// Buffers O_DIRECT can transfer: address (and, as used here, length) a multiple of 4 KiB.
using DirectBuffer = AlignedBuffer<uint8_t, 4096>;

// Sequential writer: the caller's bytes are copied into aligned staging buffers which a background
// thread writes while the caller fills the next one.
class SequentialFileWriter {
 public:
  // Creates (truncates) path. buffer_bytes is rounded up to 4 KiB; two buffers are used.
  static StatusOr<std::unique_ptr<SequentialFileWriter>> Create(const std::string& path,
                                                                size_t buffer_bytes = 8 << 20);
  ~SequentialFileWriter();  // without Finish: stops the thread and closes (the file is incomplete)
  SequentialFileWriter(const SequentialFileWriter&) = delete;
  SequentialFileWriter& operator=(const SequentialFileWriter&) = delete;

  // Appends n bytes. With crc, also folds them into *crc (CRC32C, as Crc32c(data, n, *crc)) while
  // they are in cache. Errors of earlier background writes surface here or in Finish.
  Status Append(const void* data, size_t n, uint32_t* crc = nullptr);
  // Writes what is left, sets the file's exact length, fsyncs and closes. Call once.
  Status Finish();
  uint64_t bytes() const { return total_; }
  // Whether writes bypass the page cache (O_DIRECT accepted by the filesystem).
  bool direct() const { return direct_; }

 private:
  SequentialFileWriter() = default;
  // Hands buf_[cur_] (fill_ bytes, padded to 4 KiB when direct) to the writer thread after the
  // previous write finished, then switches to the other buffer.
  Status Submit();
  Status WaitIdle();  // the background write in flight, if any, has finished; returns its status
  Status WriteOut(const uint8_t* p, size_t n);  // on the writer thread (or the caller's, at the end)
  void Loop();

  std::string path_;
  int fd_ = -1;
  std::atomic<bool> direct_{false};  // cleared by the writer thread if a write refuses O_DIRECT
  size_t cap_ = 0;
  DirectBuffer buf_[2];
  int cur_ = 0;
  size_t fill_ = 0;
  uint64_t total_ = 0;

  std::mutex mu_;
  std::condition_variable cv_;
  const uint8_t* job_ = nullptr;  // the buffer the thread writes (mu_)
  size_t job_bytes_ = 0;
  bool busy_ = false, stop_ = false;
  Status error_;  // the first failed background write (mu_)
  std::thread thread_;
};

// Reads byte ranges of one file, O_DIRECT when the filesystem allows it, into aligned buffers it
// owns. Prefetch starts reading a range the caller will ask for next on a helper thread, so the
// device works while the caller checks and copies the current one.
class RangeReader {
 public:
  static StatusOr<std::unique_ptr<RangeReader>> Open(const std::string& path);
  ~RangeReader();  // waits for a prefetch in flight
  RangeReader(const RangeReader&) = delete;
  RangeReader& operator=(const RangeReader&) = delete;
  // Bytes [offset, offset + n) of the file; the pointer stays valid until the next Read. A file
  // that ends before offset + n is a DataLoss error naming it.
  StatusOr<const uint8_t*> Read(uint64_t offset, size_t n);
  // Starts reading [offset, offset + n) in the background; a Read of exactly that range takes it
  // (another Read waits for it and discards it). Errors surface in that Read.
  void Prefetch(uint64_t offset, size_t n);
  bool direct() const { return direct_; }

 private:
  RangeReader() = default;
  // Reads the range into b; *out points at its first byte.
  Status ReadInto(DirectBuffer& b, uint64_t offset, size_t n, const uint8_t** out);

  std::string path_;
  int fd_ = -1;
  std::atomic<bool> direct_{false};  // cleared if a read refuses O_DIRECT
  DirectBuffer cur_, spare_;        // cur_: what the last Read returned; spare_: the prefetch's
  std::thread prefetch_;
  uint64_t pf_offset_ = 0;
  size_t pf_bytes_ = 0;
  const uint8_t* pf_out_ = nullptr;
  Status pf_status_;  // written by the prefetch thread, read after joining it
};

}  // namespace ringtrain
