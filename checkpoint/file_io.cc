#include "checkpoint/file_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>

#include "core/crc32c.h"

namespace ringtrain {

namespace {
constexpr size_t kAlign = 4096;  // O_DIRECT: buffer address, length and file offset
size_t RoundUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
std::string Errno(const std::string& what) { return what + ": " + std::strerror(errno); }

// Opens path with flags | O_DIRECT, or without O_DIRECT where the filesystem refuses it at open.
int OpenMaybeDirect(const std::string& path, int flags, bool* direct) {
  int fd = ::open(path.c_str(), flags | O_DIRECT, 0644);
  *direct = fd >= 0;
  if (fd < 0 && errno == EINVAL) fd = ::open(path.c_str(), flags, 0644);
  return fd;
}

// A filesystem that accepted O_DIRECT at open but refuses it on a transfer: go through the page
// cache from now on.
bool DropDirect(int fd) {
  const int fl = ::fcntl(fd, F_GETFL);
  return fl >= 0 && ::fcntl(fd, F_SETFL, fl & ~O_DIRECT) == 0;
}
}  // namespace

StatusOr<std::unique_ptr<SequentialFileWriter>> SequentialFileWriter::Create(const std::string& path,
                                                                              size_t buffer_bytes) {
  std::unique_ptr<SequentialFileWriter> w(new SequentialFileWriter());
  w->path_ = path;
  w->cap_ = RoundUp(std::max<size_t>(buffer_bytes, kAlign));
  for (auto& b : w->buf_) b.Resize(w->cap_);
  bool direct = false;  // a write may still refuse it (WriteOut falls back)
  w->fd_ = OpenMaybeDirect(path, O_WRONLY | O_CREAT | O_TRUNC, &direct);
  if (w->fd_ < 0) return IoError(Errno("creating " + path));
  w->direct_ = direct;
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
        if (!DropDirect(fd_)) return IoError(Errno("writing " + path_));
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
    job_ = buf_[cur_].data();
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
    std::memcpy(buf_[cur_].data() + fill_, p, k);
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
    std::memset(buf_[cur_].data() + fill_, 0, n - fill_);
    s = WriteOut(buf_[cur_].data(), n);
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
  bool direct = false;
  r->fd_ = OpenMaybeDirect(path, O_RDONLY, &direct);
  if (r->fd_ < 0) return IoError(Errno("opening " + path));
  r->direct_ = direct;
  return r;
}

RangeReader::~RangeReader() {
  if (prefetch_.joinable()) prefetch_.join();
  if (fd_ >= 0) ::close(fd_);
}

Status RangeReader::ReadInto(DirectBuffer& b, uint64_t offset, size_t n, const uint8_t** out) {
  for (;;) {
    const bool direct = direct_;
    const uint64_t a0 = direct ? offset / kAlign * kAlign : offset;
    const size_t span = direct ? RoundUp(static_cast<size_t>(offset - a0) + n) : n;
    if (span > b.size()) b.Resize(RoundUp(std::max(span, b.size() * 3 / 2)));
    const size_t need = static_cast<size_t>(offset - a0) + n;  // the rest of span may lie past the end
    size_t got = 0;
    bool refused = false;
    while (got < need) {
      const ssize_t r = ::pread(fd_, b.data() + got, span - got, static_cast<off_t>(a0 + got));
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
      *out = b.data() + (offset - a0);
      return Status::Ok();
    }
    if (!DropDirect(fd_)) return IoError(Errno("reading " + path_));  // reads refuse O_DIRECT
    direct_ = false;
  }
}

void RangeReader::Prefetch(uint64_t offset, size_t n) {
  if (prefetch_.joinable()) prefetch_.join();  // an earlier one nobody asked for
  pf_offset_ = offset;
  pf_bytes_ = n;
  pf_out_ = nullptr;
  prefetch_ = std::thread([this, offset, n] {
    try {
      pf_status_ = ReadInto(spare_, offset, n, &pf_out_);
    } catch (const std::bad_alloc&) {  // growing the buffer; reported by the Read that takes it
      pf_status_ = IoError("out of memory for a " + std::to_string(n) + "-byte read of " + path_);
    }
  });
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
