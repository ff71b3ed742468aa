#include "checkpoint/file_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "core/crc32c.h"

namespace ringtrain {

namespace {
constexpr size_t kAlign = 4096;  // O_DIRECT: buffer address, length and file offset
size_t RoundUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
std::string Errno(const std::string& what) { return what + ": " + std::strerror(errno); }
}  // namespace

StatusOr<std::unique_ptr<SequentialFileWriter>> SequentialFileWriter::Create(const std::string& path,
                                                                              size_t buffer_bytes) {
  std::unique_ptr<SequentialFileWriter> w(new SequentialFileWriter());
  w->path_ = path;
  w->cap_ = RoundUp(std::max<size_t>(buffer_bytes, kAlign));
  for (auto& b : w->buf_) {
    b.reset(static_cast<uint8_t*>(std::aligned_alloc(kAlign, w->cap_)));
    if (!b) return IoError("allocating a " + std::to_string(w->cap_) + "-byte write buffer for " + path);
  }
  w->fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT, 0644);
  w->direct_ = w->fd_ >= 0;  // the first write still may refuse it (WriteOut falls back)
  if (w->fd_ < 0 && errno == EINVAL) w->fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (w->fd_ < 0) return IoError(Errno("creating " + path));
  w->thread_ = std::thread([p = w.get()] { p->Loop(); });
  return w;
}

SequentialFileWriter::~SequentialFileWriter() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (fd_ >= 0) ::close(fd_);
}

Status SequentialFileWriter::WriteOut(const uint8_t* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EINVAL && direct_) {  // opened with O_DIRECT, but this filesystem will not do it
        const int fl = ::fcntl(fd_, F_GETFL);
        if (fl < 0 || ::fcntl(fd_, F_SETFL, fl & ~O_DIRECT) != 0) return IoError(Errno("writing " + path_));
        direct_ = false;
        continue;
      }
      return IoError(Errno("writing " + path_));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return Status::Ok();
}

void SequentialFileWriter::Loop() {
  std::unique_lock<std::mutex> l(mu_);
  for (;;) {
    cv_.wait(l, [&] { return stop_ || job_ != nullptr; });
    if (!job_) return;
    const uint8_t* p = job_;
    const size_t n = job_bytes_;
    l.unlock();
    Status s = WriteOut(p, n);
    l.lock();
    job_ = nullptr;
    busy_ = false;
    if (!s.ok() && error_.ok()) error_ = std::move(s);
    cv_.notify_all();
  }
}

Status SequentialFileWriter::WaitIdle() {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] { return !busy_; });
  return error_;
}

Status SequentialFileWriter::Submit() {
  RT_RETURN_IF_ERROR(WaitIdle());
  {
    std::lock_guard<std::mutex> l(mu_);
    job_ = buf_[cur_].get();
    job_bytes_ = fill_;
    busy_ = true;
  }
  cv_.notify_all();
  cur_ ^= 1;
  fill_ = 0;
  return Status::Ok();
}

Status SequentialFileWriter::Append(const void* data, size_t n, uint32_t* crc) {
  if (fd_ < 0) return Internal("writing " + path_ + " after it was finished");
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const size_t k = std::min(n, cap_ - fill_);
    if (crc) *crc = Crc32c(p, k, *crc);
    std::memcpy(buf_[cur_].get() + fill_, p, k);
    fill_ += k;
    total_ += k;
    p += k;
    n -= k;
    if (fill_ == cap_) RT_RETURN_IF_ERROR(Submit());
  }
  return Status::Ok();
}

Status SequentialFileWriter::Finish() {
  if (fd_ < 0) return Internal("finishing " + path_ + " twice");
  Status s = WaitIdle();
  if (s.ok() && fill_ > 0) {
    // The tail: with O_DIRECT a whole number of blocks (zero padding), cut back to size below.
    const size_t n = direct_ ? RoundUp(fill_) : fill_;
    std::memset(buf_[cur_].get() + fill_, 0, n - fill_);
    s = WriteOut(buf_[cur_].get(), n);
    if (s.ok() && n != fill_ && ::ftruncate(fd_, static_cast<off_t>(total_)) != 0) s = IoError(Errno("truncating " + path_));
    fill_ = 0;
  }
  if (s.ok() && ::fsync(fd_) != 0) s = IoError(Errno("fsync " + path_));
  if (::close(fd_) != 0 && s.ok()) s = IoError(Errno("closing " + path_));
  fd_ = -1;
  return s;
}

StatusOr<std::unique_ptr<RangeReader>> RangeReader::Open(const std::string& path) {
  std::unique_ptr<RangeReader> r(new RangeReader());
  r->path_ = path;
  r->fd_ = ::open(path.c_str(), O_RDONLY | O_DIRECT);
  r->direct_ = r->fd_ >= 0;
  if (r->fd_ < 0 && errno == EINVAL) r->fd_ = ::open(path.c_str(), O_RDONLY);
  if (r->fd_ < 0) return IoError(Errno("opening " + path));
  return r;
}

RangeReader::~RangeReader() {
  if (prefetch_.joinable()) prefetch_.join();
  if (fd_ >= 0) ::close(fd_);
}

Status RangeReader::ReadInto(Buffer& b, uint64_t offset, size_t n, const uint8_t** out) {
  for (;;) {
    const bool direct = direct_;
    const uint64_t a0 = direct ? offset / kAlign * kAlign : offset;
    const size_t span = direct ? RoundUp(static_cast<size_t>(offset - a0) + n) : n;
    if (span > b.cap || !b.p) {
      b.cap = RoundUp(std::max(span, b.cap * 3 / 2));
      b.p.reset(static_cast<uint8_t*>(std::aligned_alloc(kAlign, b.cap)));
      if (!b.p) {
        b.cap = 0;
        return IoError("allocating a " + std::to_string(span) + "-byte read buffer for " + path_);
      }
    }
    const size_t need = static_cast<size_t>(offset - a0) + n;  // the rest of span may lie past the end
    size_t got = 0;
    bool refused = false;
    while (got < need) {
      const ssize_t r = ::pread(fd_, b.p.get() + got, span - got, static_cast<off_t>(a0 + got));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && errno == EINVAL && direct) {
        refused = true;
        break;
      }
      if (r < 0) return IoError(Errno("reading " + path_));
      if (r == 0 || (direct && r % kAlign != 0 && got + static_cast<size_t>(r) < need))
        return DataLoss(path_ + ": the file ends before byte " + std::to_string(offset + n) + " (truncated)");
      got += static_cast<size_t>(r);
    }
    if (!refused) {
      *out = b.p.get() + (offset - a0);
      return Status::Ok();
    }
    // Opened with O_DIRECT, but reads refuse it: read through the page cache from now on.
    const int fl = ::fcntl(fd_, F_GETFL);
    if (fl < 0 || ::fcntl(fd_, F_SETFL, fl & ~O_DIRECT) != 0) return IoError(Errno("reading " + path_));
    direct_ = false;
  }
}

void RangeReader::Prefetch(uint64_t offset, size_t n) {
  if (prefetch_.joinable()) prefetch_.join();  // an earlier one nobody asked for
  pf_offset_ = offset;
  pf_bytes_ = n;
  pf_out_ = nullptr;
  prefetch_ = std::thread([this, offset, n] { pf_status_ = ReadInto(spare_, offset, n, &pf_out_); });
}

StatusOr<const uint8_t*> RangeReader::Read(uint64_t offset, size_t n) {
  if (prefetch_.joinable()) {
    prefetch_.join();
    if (pf_offset_ == offset && pf_bytes_ == n) {
      std::swap(cur_, spare_);  // the caller's old pointer (into cur_) is no longer needed
      RT_RETURN_IF_ERROR(pf_status_);
      return pf_out_;
    }
  }
  const uint8_t* out = nullptr;
  RT_RETURN_IF_ERROR(ReadInto(cur_, offset, n, &out));
  return out;
}

}  // namespace ringtrain
