#include "collectives/shm/shm_transport.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>

#include "core/threads.h"

namespace ringtrain::coll {

namespace {

constexpr uint64_t kSegMagic = 0x314D48535452ull;  // "RTSHM1"
constexpr size_t kCtlRingBytes = 64 << 10;
constexpr size_t kRingHead = 256;   // Ring's control block before its data
constexpr size_t kRec = 64;         // record header
constexpr uint32_t kBootContext = 0x5348424Fu;  // CreateOver's name exchange

enum RecKind : uint32_t { kRecHeader = 1, kRecChunk = 2, kRecWrap = 3 };

struct Rec {
  uint32_t kind;
  uint32_t pad;
  uint64_t n;     // payload bytes following this record (chunks)
  FrameHeader h;  // kRecHeader
};
static_assert(sizeof(Rec) <= kRec, "a record header fits 64 bytes");

size_t Round64(size_t n) { return (n + 63) / 64 * 64; }

struct RankInfo {
  std::atomic<int64_t> pid;
  std::atomic<uint32_t> closed;
  char pad[64 - sizeof(std::atomic<int64_t>) - sizeof(std::atomic<uint32_t>)];
};
static_assert(sizeof(RankInfo) == 64, "one cache line per rank");

void Pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// When ranks outnumber the cores, a waiter spins this long (pause, then yield) before it sleeps on
// the ring's doorbell, handing its core to the rank it waits for instead of burning it. With a core
// per rank it never sleeps: there the waits are short and the peer is running, so a wake-up (a
// futex call and, on a VM, waking an idle vCPU) would only add to them.
constexpr auto kSpinBeforeSleep = std::chrono::microseconds(50);
// The longest single sleep: the waiter then checks for control frames, a dead peer and its deadline.
constexpr long kSleepNs = 2'000'000;

// Cross-process futex on a word in the shared segment (not FUTEX_PRIVATE).
void FutexWait(std::atomic<uint32_t>* word, uint32_t expected, long ns) {
  struct timespec ts{0, ns};
  (void)::syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT, expected, &ts, nullptr, 0);
}

void FutexWakeAll(std::atomic<uint32_t>* word) {
  (void)::syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE, INT32_MAX, nullptr, nullptr, 0);
}

size_t HeaderBytes(int size) { return (64 + 64 * static_cast<size_t>(size) + 4095) / 4096 * 4096; }
size_t Pairs(int size) { return static_cast<size_t>(size) * static_cast<size_t>(std::max(0, size - 1)); }

}  // namespace

// In shared memory: the segment header, then one RankInfo per rank.
struct ShmTransport::Segment {
  std::atomic<uint64_t> magic;
  uint32_t size;
  uint32_t pad;
  uint64_t ring_bytes;
  std::atomic<uint32_t> attached;
  RankInfo* ranks() { return reinterpret_cast<RankInfo*>(reinterpret_cast<uint8_t*>(this) + 64); }
};

// In shared memory: a single-producer single-consumer byte ring. head and tail count bytes since
// the start and only grow; records are 64-byte aligned and never wrap (a wrap record skips the end).
// A consumer with nothing to read sleeps on `bell` (a futex word) once it has spun a while; every
// publish rings it, and wakes the sleepers if there are any.
struct ShmTransport::Ring {
  alignas(64) std::atomic<uint64_t> head;  // written by the producer
  alignas(64) std::atomic<uint64_t> tail;  // written by the consumer
  alignas(64) uint64_t cap;
  alignas(64) std::atomic<uint32_t> bell;      // bumped after every publish
  std::atomic<uint32_t> sleepers;              // consumers asleep on bell (or about to be)
  uint8_t* data() { return reinterpret_cast<uint8_t*>(this) + kRingHead; }
  // Wakes whoever sleeps on this ring (after a publish, a stash, or a close).
  void Wake() {
    bell.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers.load(std::memory_order_seq_cst) != 0) FutexWakeAll(&bell);
  }
};
static_assert(sizeof(ShmTransport::Ring) <= kRingHead, "the ring's control block fits kRingHead");
static_assert(sizeof(std::atomic<uint64_t>) == 8 && std::atomic<uint64_t>::is_always_lock_free,
              "ring counters must be lock-free to be shared between processes");

size_t ShmTransport::SegmentBytes(int size, size_t ring_bytes) {
  ring_bytes = std::max<size_t>(4096, Round64(ring_bytes));
  return HeaderBytes(size) + Pairs(size) * (2 * kRingHead + ring_bytes + kCtlRingBytes);
}

bool ShmTransport::Fits(int size, size_t ring_bytes) {
  struct statvfs st{};
  if (::statvfs("/dev/shm", &st) != 0) return false;
  return static_cast<double>(st.f_bavail) * static_cast<double>(st.f_frsize) >=
         2.0 * static_cast<double>(SegmentBytes(size, ring_bytes));
}

// The ordered pair (from, to), from != to, as an index in [0, Pairs(size)).
size_t ShmTransport::PairIndex(int from, int to) const {
  return static_cast<size_t>(from) * static_cast<size_t>(size_ - 1) + static_cast<size_t>(to < from ? to : to - 1);
}

// Layout after the header: every pair's data ring, then every pair's control ring.
ShmTransport::Ring* ShmTransport::DataRing(int from, int to) const {
  return reinterpret_cast<Ring*>(static_cast<uint8_t*>(base_) + HeaderBytes(size_) +
                                 PairIndex(from, to) * (kRingHead + ring_bytes_));
}

ShmTransport::Ring* ShmTransport::CtlRing(int from, int to) const {
  return reinterpret_cast<Ring*>(static_cast<uint8_t*>(base_) + HeaderBytes(size_) + Pairs(size_) * (kRingHead + ring_bytes_) +
                                 PairIndex(from, to) * (kRingHead + kCtlRingBytes));
}

StatusOr<std::shared_ptr<ShmTransport>> ShmTransport::Create(const ShmOptions& o) {
  if (o.size < 1 || o.rank < 0 || o.rank >= o.size) return InvalidArgument("shm transport: bad rank/size");
  if (o.name.empty() || o.name[0] != '/') return InvalidArgument("shm transport: the segment name must start with '/'");
  std::shared_ptr<ShmTransport> t(new ShmTransport());
  t->rank_ = o.rank;
  t->size_ = o.size;
  t->ring_bytes_ = std::max<size_t>(4096, Round64(o.ring_bytes));
  const size_t bytes = SegmentBytes(o.size, t->ring_bytes_);
  const auto give_up = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.connect_timeout_s));
  int fd = -1;
  if (o.rank == 0) {
    fd = ::shm_open(o.name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) return IoError("shm transport: creating " + o.name + ": " + std::strerror(errno));
    if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
      const int e = errno;
      ::close(fd);
      ::shm_unlink(o.name.c_str());
      return IoError("shm transport: sizing " + o.name + " to " + std::to_string(bytes) + " bytes: " + std::strerror(e));
    }
  } else {
    // Rank 0 may not have created it yet; and it must have its full size before we map it.
    for (;;) {
      fd = ::shm_open(o.name.c_str(), O_RDWR, 0600);
      struct stat st{};
      if (fd >= 0 && ::fstat(fd, &st) == 0 && static_cast<size_t>(st.st_size) == bytes) break;
      if (fd >= 0) ::close(fd);
      fd = -1;
      if (Clock::now() >= give_up) return Unavailable("shm transport: segment " + o.name + " did not appear (is rank 0 running on this host?)");
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) {
    if (o.rank == 0) ::shm_unlink(o.name.c_str());
    return IoError("shm transport: mapping " + o.name + ": " + std::strerror(errno));
  }
  t->base_ = p;
  t->mapped_ = bytes;
  t->seg_ = static_cast<Segment*>(p);
  Segment* s = t->seg_;
  if (o.rank == 0) {
    s->size = static_cast<uint32_t>(o.size);
    s->ring_bytes = t->ring_bytes_;
    for (int a = 0; a < o.size; ++a)
      for (int b = 0; b < o.size; ++b)
        if (a != b) {
          t->DataRing(a, b)->cap = t->ring_bytes_;
          t->CtlRing(a, b)->cap = kCtlRingBytes;
        }
    s->magic.store(kSegMagic, std::memory_order_release);
  } else {
    while (s->magic.load(std::memory_order_acquire) != kSegMagic) {
      if (Clock::now() >= give_up) return Unavailable("shm transport: segment " + o.name + " was never initialised");
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (s->size != static_cast<uint32_t>(o.size) || s->ring_bytes != t->ring_bytes_)
      return InvalidArgument("shm transport: segment " + o.name + " was made for another job layout");
  }
  s->ranks()[o.rank].pid.store(::getpid());
  s->attached.fetch_add(1);
  while (s->attached.load() < static_cast<uint32_t>(o.size)) {
    if (Clock::now() >= give_up) {
      if (o.rank == 0) ::shm_unlink(o.name.c_str());
      return Unavailable("shm transport: only " + std::to_string(s->attached.load()) + " of " + std::to_string(o.size) +
                         " ranks attached to " + o.name + " within " + std::to_string(o.connect_timeout_s) + " s");
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  // Everyone has it mapped: the name can go (the memory lives until the last unmap).
  if (o.rank == 0) ::shm_unlink(o.name.c_str());
  t->out_mu_.reset(new std::mutex[static_cast<size_t>(o.size)]);
  t->in_mu_.reset(new std::mutex[static_cast<size_t>(o.size)]);
  t->overflow_.resize(static_cast<size_t>(o.size));
  t->ctl_h_.resize(static_cast<size_t>(o.size));
  t->ctl_text_.resize(static_cast<size_t>(o.size));
  // The host's CPUs, not this process's affinity mask: mpirun and launch bind each of 2 ranks to
  // one core of 2, and those ranks must not sleep.
  t->sleep_when_idle_ = o.size > HardwareThreads();
  t->progress_ = std::thread([p = t.get()] { p->ProgressLoop(); });
  return t;
}

StatusOr<std::shared_ptr<ShmTransport>> ShmTransport::CreateOver(std::shared_ptr<Transport> boot, ShmOptions o) {
  o.rank = boot->rank();
  o.size = boot->size();
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.connect_timeout_s));
  FrameHeader h;
  h.context = kBootContext;
  h.seq = 1;
  if (o.rank == 0) {
    std::random_device rd;
    char name[64];
    std::snprintf(name, sizeof name, "/ringtrain-%d-%08x%08x", static_cast<int>(::getpid()), rd(), rd());
    o.name = name;
    h.bytes = o.name.size();
    for (int r = 1; r < o.size; ++r) RT_RETURN_IF_ERROR(boot->Send(r, h, o.name.data()));
  } else {
    char buf[256];
    RT_RETURN_IF_ERROR(boot->Recv(0, kBootContext, &h, buf, sizeof buf, deadline));
    o.name.assign(buf, h.bytes);
  }
  RT_ASSIGN_OR_RETURN(auto t, Create(o));
  t->boot_ = std::move(boot);
  return t;
}

ShmTransport::~ShmTransport() {
  {
    std::lock_guard<std::mutex> l(progress_mu_);
    stop_ = true;
  }
  progress_cv_.notify_all();
  if (progress_.joinable()) progress_.join();
  if (seg_) Close();
  if (base_) ::munmap(base_, mapped_);
}

void ShmTransport::Close() {
  closed_ = true;
  seg_->ranks()[rank_].closed.store(1, std::memory_order_release);
  for (int peer = 0; peer < size_; ++peer)
    if (peer != rank_) DataRing(rank_, peer)->Wake();  // its receivers notice at once
}

std::string ShmTransport::PeerName(int peer) const {
  const int64_t pid = seg_ && peer >= 0 && peer < size_ ? seg_->ranks()[peer].pid.load() : 0;
  return "rank " + std::to_string(peer) + (pid ? " (pid " + std::to_string(pid) + ")" : std::string());
}

bool ShmTransport::PeerGone(int peer) const {
  RankInfo& ri = seg_->ranks()[peer];
  if (ri.closed.load(std::memory_order_acquire)) return true;
  const int64_t pid = ri.pid.load();
  return pid > 0 && pid != ::getpid() && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

bool ShmTransport::Pump(Ring* r, Pending& p) {
  const size_t chunk = std::max<size_t>(64, (r->cap / 4) / 64 * 64);
  if (!p.header_written) {
    Rec rec{};
    rec.kind = kRecHeader;
    rec.h = p.h;
    if (!PutRecord(r, &rec, sizeof rec, nullptr, 0)) return false;
    p.header_written = true;
  }
  while (p.done < p.h.bytes) {
    const size_t n = std::min<size_t>(chunk, p.h.bytes - p.done);
    Rec rec{};
    rec.kind = kRecChunk;
    rec.n = n;
    const uint8_t* src = p.src ? p.src + p.done : p.own.data() + (p.done - p.own_from);
    if (!PutRecord(r, &rec, sizeof rec, src, n)) return false;
    p.done += n;
  }
  return true;
}

bool ShmTransport::PutRecord(Ring* r, const void* rec, size_t rec_bytes, const uint8_t* data, size_t n) {
  const uint64_t cap = r->cap;
  const size_t need = kRec + Round64(n);
  uint64_t head = r->head.load(std::memory_order_relaxed);
  const uint64_t tail = r->tail.load(std::memory_order_acquire);
  uint64_t off = head % cap;
  const uint64_t contiguous = cap - off;
  if (contiguous < need) {
    if (cap - (head - tail) < contiguous + need) return false;
    Rec wrap{};
    wrap.kind = kRecWrap;
    std::memcpy(r->data() + off, &wrap, sizeof wrap);
    head += contiguous;
    off = 0;
  } else if (cap - (head - tail) < need) {
    return false;
  }
  std::memcpy(r->data() + off, rec, rec_bytes);
  if (n) std::memcpy(r->data() + off + kRec, data, n);
  r->head.store(head + need, std::memory_order_release);
  r->Wake();
  return true;
}

Status ShmTransport::Send(int peer, const FrameHeader& h, const void* payload) {
  if (peer < 0 || peer >= size_) return Internal("shm send to rank " + std::to_string(peer));
  if (closed_) return Unavailable("the shared-memory transport of rank " + std::to_string(rank_) + " is closed");
  if (peer == rank_) {  // to itself: straight into the stash its receive looks at first
    if (h.flags) return Status::Ok();
    const auto* b = static_cast<const uint8_t*>(payload);
    std::lock_guard<std::mutex> l(stash_mu_);
    stash_[{peer, h.context}].emplace_back(h, std::vector<uint8_t>(b, b + h.bytes));
    stash_gen_.fetch_add(1, std::memory_order_release);
    return Status::Ok();
  }
  Pending p;
  p.h = h;
  p.src = static_cast<const uint8_t*>(payload);
  if (h.flags) {  // control frames: small, on their own ring; dropped if that ring is full
    std::lock_guard<std::mutex> l(ctl_out_mu_);
    (void)Pump(CtlRing(rank_, peer), p);
    return Status::Ok();
  }
  std::lock_guard<std::mutex> l(out_mu_[peer]);
  auto& q = overflow_[static_cast<size_t>(peer)];
  if (q.empty() && Pump(DataRing(rank_, peer), p)) return Status::Ok();
  if (PeerGone(peer)) return Unavailable(PeerName(peer) + " is gone");
  // The rest waits in memory; Send returns now (the caller may reuse its buffer).
  p.own_from = p.done;
  if (h.bytes > p.done) p.own.assign(p.src + p.done, p.src + h.bytes);
  p.src = nullptr;
  if (q.empty()) overflowing_.fetch_add(1);
  q.push_back(std::move(p));
  progress_cv_.notify_all();
  return Status::Ok();
}

void ShmTransport::PumpAll() {
  if (overflowing_.load(std::memory_order_relaxed) == 0) return;
  for (int peer = 0; peer < size_; ++peer) {
    std::unique_lock<std::mutex> l(out_mu_[peer], std::try_to_lock);
    if (!l.owns_lock()) continue;
    auto& q = overflow_[static_cast<size_t>(peer)];
    if (q.empty()) continue;
    while (!q.empty() && Pump(DataRing(rank_, peer), q.front())) q.pop_front();
    if (!q.empty() && PeerGone(peer)) q.clear();  // nobody will read it
    if (q.empty()) overflowing_.fetch_sub(1);
  }
}

void ShmTransport::ProgressLoop() {
  std::unique_lock<std::mutex> l(progress_mu_);
  while (!stop_) {
    if (overflowing_.load() == 0) {
      progress_cv_.wait_for(l, std::chrono::milliseconds(100));
      continue;
    }
    l.unlock();
    PumpAll();
    std::this_thread::sleep_for(std::chrono::microseconds(50));
    l.lock();
  }
}

// The record at r's tail (wrap records skipped), if one has been published. The consumer's side.
static bool PeekRecord(ShmTransport::Ring* r, Rec* rec) {
  for (;;) {
    const uint64_t tail = r->tail.load(std::memory_order_relaxed);
    if (r->head.load(std::memory_order_acquire) == tail) return false;
    std::memcpy(rec, r->data() + tail % r->cap, sizeof *rec);
    if (rec->kind != kRecWrap) return true;
    r->tail.store(tail + (r->cap - tail % r->cap), std::memory_order_release);
  }
}

Status ShmTransport::PollControl(uint32_t context, bool stuck_too) {
  std::lock_guard<std::mutex> l(ctl_in_mu_);
  for (int peer = 0; peer < size_; ++peer) {
    if (peer == rank_) continue;
    Ring* r = CtlRing(peer, rank_);
    // A frame whose chunk is not written yet stays half-read here until the next poll.
    FrameHeader& h = ctl_h_[static_cast<size_t>(peer)];
    std::string& text = ctl_text_[static_cast<size_t>(peer)];
    for (Rec rec; PeekRecord(r, &rec);) {
      const uint64_t tail = r->tail.load(std::memory_order_relaxed);
      if (rec.kind == kRecHeader) {
        h = rec.h;
        text.clear();
      } else {
        text.append(reinterpret_cast<const char*>(r->data() + tail % r->cap + kRec), rec.n);
      }
      r->tail.store(tail + kRec + Round64(rec.n), std::memory_order_release);
      if (text.size() < h.bytes) continue;
      if (h.flags & kFrameAbort) aborts_.emplace(h.context, text);
      if (h.flags & kFrameStuck) stuck_[h.context].push_back(text);
      h = FrameHeader{};
      text.clear();
    }
  }
  auto ab = aborts_.find(context);
  if (ab != aborts_.end()) return Aborted(ab->second);
  if (stuck_too && stuck_.count(context)) return DeadlineExceeded("a peer reported a stuck collective");
  return Status::Ok();
}

Status ShmTransport::PendingAbort(uint32_t context, Clock::time_point until) {
  for (;;) {
    Status s = PollControl(context, /*stuck_too=*/false);
    if (!s.ok() || Clock::now() >= until) return s;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

std::vector<std::string> ShmTransport::StuckNotices(uint32_t context) {
  (void)PollControl(context, /*stuck_too=*/false);
  std::lock_guard<std::mutex> l(ctl_in_mu_);
  auto it = stuck_.find(context);
  return it == stuck_.end() ? std::vector<std::string>{} : it->second;
}

Status ShmTransport::WaitRecord(Ring* r, int peer, uint32_t context, Clock::time_point deadline, bool in_frame,
                               const uint64_t* stash_seen) {
  const auto start = Clock::now();
  auto last_check = start;
  auto empty = [r] { return r->head.load(std::memory_order_acquire) == r->tail.load(std::memory_order_relaxed); };
  auto stashed = [&] { return stash_seen && stash_gen_.load(std::memory_order_acquire) != *stash_seen; };
  for (uint64_t spin = 0;; ++spin) {
    // Read before looking at the ring: a publish after the look changes it, so the sleep below
    // returns at once instead of missing that publish.
    const uint32_t bell = r->bell.load(std::memory_order_seq_cst);
    if (!empty() || stashed()) return Status::Ok();
    PumpAll();
    if ((spin & 15) == 15) {
      const auto now = Clock::now();
      if (!in_frame) RT_RETURN_IF_ERROR(PollControl(context, /*stuck_too=*/true));
      if (now - last_check > std::chrono::milliseconds(20)) {
        last_check = now;
        if (PeerGone(peer) && empty())
          return Unavailable(PeerName(peer) + (seg_->ranks()[peer].closed.load() ? " closed its transport" : " died"));
      }
      if (now >= deadline) return DeadlineExceeded("timed out waiting for " + PeerName(peer));
      if ((sleep_when_idle_ || patient()) && now - start >= kSpinBeforeSleep && overflowing_.load(std::memory_order_relaxed) == 0) {
        const long left = static_cast<long>(std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now).count());
        r->sleepers.fetch_add(1, std::memory_order_seq_cst);
        if (empty() && !stashed()) FutexWait(&r->bell, bell, std::clamp(left, 1000L, kSleepNs));
        r->sleepers.fetch_sub(1, std::memory_order_seq_cst);
        continue;
      }
    }
    if (spin < 64) Pause();
    else std::this_thread::yield();
  }
}

Status ShmTransport::RecvFrame(int peer, uint32_t context, FrameHeader* h, const PayloadSink& sink, Clock::time_point deadline) {
  if (peer < 0 || peer >= size_) return Internal("shm receive from rank " + std::to_string(peer));
  Ring* r = peer == rank_ ? nullptr : DataRing(peer, rank_);
  for (;;) {
    // Read before looking at the stash: a frame stashed after the look changes it, so the wait
    // below cannot miss it (a concurrent receiver on another context may take our frame off the
    // ring between our look at the stash and our look at the ring).
    const uint64_t stash_seen = stash_gen_.load(std::memory_order_acquire);
    {  // A frame another receiver set aside for this context.
      std::unique_lock<std::mutex> l(stash_mu_);
      auto it = stash_.find({peer, context});
      if (it != stash_.end() && !it->second.empty()) {
        auto f = std::move(it->second.front());
        it->second.pop_front();
        l.unlock();
        *h = f.first;
        return sink(*h, 0, f.second.data(), f.second.size());
      }
    }
    if (!r) {  // from itself: only the stash
      if (Clock::now() >= deadline) return DeadlineExceeded("timed out waiting for " + PeerName(peer));
      std::this_thread::sleep_for(std::chrono::microseconds(50));
      continue;
    }
    std::unique_lock<std::mutex> l(in_mu_[peer], std::try_to_lock);
    Rec rec;
    if (l.owns_lock() && PeekRecord(r, &rec)) {
      const uint64_t tail = r->tail.load(std::memory_order_relaxed);
      if (rec.kind != kRecHeader) return DataLoss("corrupt shared-memory ring from " + PeerName(peer));
      r->tail.store(tail + kRec, std::memory_order_release);
      const FrameHeader fh = rec.h;
      // The payload's chunks follow; they go to the sink, or into the stash for another context.
      const bool mine = fh.context == context;
      std::vector<uint8_t> keep;
      if (!mine) keep.reserve(fh.bytes);
      Status st = Status::Ok();
      if (fh.bytes == 0 && mine) st = sink(fh, 0, nullptr, 0);
      for (size_t off = 0; off < fh.bytes;) {
        RT_RETURN_IF_ERROR(WaitRecord(r, peer, context, deadline, /*in_frame=*/true));
        Rec c;
        if (!PeekRecord(r, &c)) continue;  // it was a wrap record
        const uint64_t t = r->tail.load(std::memory_order_relaxed);
        if (c.kind != kRecChunk || off + c.n > fh.bytes) return DataLoss("corrupt shared-memory ring from " + PeerName(peer));
        const uint8_t* d = r->data() + t % r->cap + kRec;
        if (!mine) keep.insert(keep.end(), d, d + c.n);
        else if (st.ok()) st = sink(fh, off, d, c.n);
        off += c.n;
        r->tail.store(t + kRec + Round64(c.n), std::memory_order_release);
      }
      if (mine) {
        *h = fh;
        return st;
      }
      {
        std::lock_guard<std::mutex> sl(stash_mu_);
        stash_[{peer, fh.context}].emplace_back(fh, std::move(keep));
        stash_gen_.fetch_add(1, std::memory_order_release);
      }
      r->Wake();  // a receiver of that context may sleep on this ring
      continue;
    }
    if (l.owns_lock()) {
      l.unlock();
      RT_RETURN_IF_ERROR(WaitRecord(r, peer, context, deadline, /*in_frame=*/false, &stash_seen));
    } else {
      std::this_thread::yield();  // another receiver is reading this peer's ring
      if (Clock::now() >= deadline) return DeadlineExceeded("timed out waiting for " + PeerName(peer));
    }
  }
}

Status ShmTransport::Recv(int peer, uint32_t context, FrameHeader* h, void* buf, size_t cap, Clock::time_point deadline) {
  auto* out = static_cast<uint8_t*>(buf);
  return RecvFrame(peer, context, h, [&](const FrameHeader& fh, size_t off, const uint8_t* d, size_t n) -> Status {
    if (fh.bytes > cap)
      return Internal("frame of " + std::to_string(fh.bytes) + " bytes for a " + std::to_string(cap) + "-byte buffer");
    if (n) std::memcpy(out + off, d, n);
    return Status::Ok();
  }, deadline);
}

Status ShmTransport::RecvDirect(int peer, uint32_t context, FrameHeader* h, const PayloadSink& sink, Clock::time_point deadline) {
  return RecvFrame(peer, context, h, sink, deadline);
}

}  // namespace ringtrain::coll
