#include "collectives/mpi/mpi_transport.h"

#include <cstdlib>
#include <cstring>
#include <thread>

#ifdef RINGTRAIN_HAVE_MPI
#include <mpi.h>
#endif

namespace ringtrain::coll {

#ifdef RINGTRAIN_HAVE_MPI

namespace {

constexpr int kCtrlTag = 1;  // control frames: header and text in one message

// Tags of a context's data messages: header and payload. Contexts are 32-bit hashes; MPI tags
// are at least 15 bits, Open MPI's 31. Two communicators whose contexts share a tag are still safe
// unless they carry traffic between the same pair of ranks at the same time.
int TagUpperBound() {
  void* v = nullptr;
  int flag = 0;
  MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &v, &flag);
  return flag ? *static_cast<int*>(v) : 32767;
}
int HeaderTag(uint32_t context) {
  static const int ub = TagUpperBound();
  const uint32_t folded = (context ^ (context >> 29)) % static_cast<uint32_t>((ub - 2) / 2);
  return 2 + static_cast<int>(folded) * 2;
}
int PayloadTag(uint32_t context) { return HeaderTag(context) + 1; }

Status MpiError(int code, const std::string& what) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, msg, &len);
  return IoError(what + ": " + std::string(msg, len));
}

void FinalizeAtExit() {
  int fin = 0;
  MPI_Finalized(&fin);
  if (!fin) MPI_Finalize();
}

}  // namespace

struct MpiTransport::PendingSend {
  std::vector<uint8_t> data;  // header followed by payload (kept alive until both complete)
  MPI_Request req[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
};

bool MpiAvailable() { return true; }

Status MpiInit() {
  int inited = 0;
  MPI_Initialized(&inited);
  if (inited) return Status::Ok();
  int provided = 0;
  const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
  if (rc != MPI_SUCCESS) return MpiError(rc, "MPI_Init_thread");
  if (provided < MPI_THREAD_SERIALIZED)
    return Internal("MPI provides thread level " + std::to_string(provided) + "; ringtrain needs SERIALIZED or better");
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  std::atexit(FinalizeAtExit);
  return Status::Ok();
}

int MpiRank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int MpiSize() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

StatusOr<std::shared_ptr<MpiTransport>> MpiTransport::Create() {
  RT_RETURN_IF_ERROR(MpiInit());
  std::shared_ptr<MpiTransport> t(new MpiTransport());
  t->rank_ = MpiRank();
  t->size_ = MpiSize();
  return t;
}

MpiTransport::~MpiTransport() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& s : sends_) MPI_Waitall(2, s->req, MPI_STATUSES_IGNORE);
}

void MpiTransport::ReapSends() {
  while (!sends_.empty()) {
    int done = 0;
    MPI_Testall(2, sends_.front()->req, &done, MPI_STATUSES_IGNORE);
    if (!done) return;
    sends_.pop_front();
  }
}

void MpiTransport::PollControl() {
  for (;;) {
    int flag = 0;
    MPI_Status st;
    MPI_Iprobe(MPI_ANY_SOURCE, kCtrlTag, MPI_COMM_WORLD, &flag, &st);
    if (!flag) return;
    int n = 0;
    MPI_Get_count(&st, MPI_BYTE, &n);
    std::vector<uint8_t> msg(static_cast<size_t>(n));
    MPI_Recv(msg.data(), n, MPI_BYTE, st.MPI_SOURCE, kCtrlTag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    if (msg.size() < sizeof(FrameHeader)) continue;
    FrameHeader h;
    std::memcpy(&h, msg.data(), sizeof(h));
    std::string text(msg.begin() + sizeof(FrameHeader), msg.end());
    if (h.flags & kFrameAbort) aborts_.emplace(h.context, text);
    if (h.flags & kFrameStuck) stuck_[h.context].push_back(text);
  }
}

Status MpiTransport::Send(int peer, const FrameHeader& h, const void* payload) {
  if (peer < 0 || peer >= size_) return Internal("mpi send to rank " + std::to_string(peer));
  auto s = std::make_unique<PendingSend>();
  s->data.resize(sizeof(h) + h.bytes);
  std::memcpy(s->data.data(), &h, sizeof(h));
  if (h.bytes) std::memcpy(s->data.data() + sizeof(h), payload, h.bytes);
  std::lock_guard<std::mutex> lock(mu_);
  int rc;
  if (h.flags) {
    rc = MPI_Isend(s->data.data(), static_cast<int>(s->data.size()), MPI_BYTE, peer, kCtrlTag, MPI_COMM_WORLD, &s->req[0]);
  } else {
    rc = MPI_Isend(s->data.data(), static_cast<int>(sizeof(h)), MPI_BYTE, peer, HeaderTag(h.context), MPI_COMM_WORLD,
                   &s->req[0]);
    if (rc == MPI_SUCCESS && h.bytes) {
      if (h.bytes > static_cast<uint64_t>(INT32_MAX)) return Internal("MPI message over 2 GiB");
      rc = MPI_Isend(s->data.data() + sizeof(h), static_cast<int>(h.bytes), MPI_BYTE, peer, PayloadTag(h.context),
                     MPI_COMM_WORLD, &s->req[1]);
    }
  }
  if (rc != MPI_SUCCESS) return MpiError(rc, "MPI_Isend to rank " + std::to_string(peer));
  sends_.push_back(std::move(s));
  ReapSends();
  return Status::Ok();
}

Status MpiTransport::Recv(int peer, uint32_t context, FrameHeader* h, void* buf, size_t cap,
                          Clock::time_point deadline) {
  MPI_Request req = MPI_REQUEST_NULL;
  auto wait = [&](MPI_Request* r) -> Status {
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        int done = 0;
        MPI_Test(r, &done, MPI_STATUS_IGNORE);
        ReapSends();
        if (done) return Status::Ok();
        PollControl();
        auto ab = aborts_.find(context);
        if (ab != aborts_.end() || stuck_.count(context) || Clock::now() >= deadline) {
          MPI_Cancel(r);
          MPI_Request_free(r);
          if (ab != aborts_.end()) return Aborted(ab->second);
          return DeadlineExceeded(stuck_.count(context) ? "a peer reported a stuck collective"
                                                        : "timed out waiting for " + PeerName(peer));
        }
      }
      if (patient())
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      else
        std::this_thread::yield();
    }
  };
  {
    std::lock_guard<std::mutex> lock(mu_);
    MPI_Irecv(h, sizeof(FrameHeader), MPI_BYTE, peer, HeaderTag(context), MPI_COMM_WORLD, &req);
  }
  RT_RETURN_IF_ERROR(wait(&req));
  if (h->magic != kFrameMagic) return DataLoss("corrupt frame header from " + PeerName(peer));
  if (h->bytes == 0) return Status::Ok();
  // The payload follows on its own tag; receive it directly when it fits, else drain and fail.
  std::vector<uint8_t> sink;
  void* dst = buf;
  if (h->bytes > cap) {
    sink.resize(h->bytes);
    dst = sink.data();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    MPI_Irecv(dst, static_cast<int>(h->bytes), MPI_BYTE, peer, PayloadTag(context), MPI_COMM_WORLD, &req);
  }
  RT_RETURN_IF_ERROR(wait(&req));
  if (h->bytes > cap)
    return Internal("frame of " + std::to_string(h->bytes) + " bytes for a " + std::to_string(cap) + "-byte buffer");
  return Status::Ok();
}

Status MpiTransport::PendingAbort(uint32_t context, Clock::time_point until) {
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      PollControl();
      auto it = aborts_.find(context);
      if (it != aborts_.end()) return Aborted(it->second);
    }
    if (Clock::now() >= until) return Status::Ok();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

std::vector<std::string> MpiTransport::StuckNotices(uint32_t context) {
  std::lock_guard<std::mutex> lock(mu_);
  PollControl();
  auto it = stuck_.find(context);
  return it == stuck_.end() ? std::vector<std::string>{} : it->second;
}

#else  // no MPI in this build

struct MpiTransport::PendingSend {};
bool MpiAvailable() { return false; }
Status MpiInit() { return Internal("this ringtrain was built without MPI"); }
int MpiRank() { return 0; }
int MpiSize() { return 1; }
StatusOr<std::shared_ptr<MpiTransport>> MpiTransport::Create() { return MpiInit(); }
MpiTransport::~MpiTransport() = default;
void MpiTransport::PollControl() {}
void MpiTransport::ReapSends() {}
Status MpiTransport::Send(int, const FrameHeader&, const void*) { return MpiInit(); }
Status MpiTransport::Recv(int, uint32_t, FrameHeader*, void*, size_t, Clock::time_point) { return MpiInit(); }
std::vector<std::string> MpiTransport::StuckNotices(uint32_t) { return {}; }
Status MpiTransport::PendingAbort(uint32_t, Clock::time_point) { return Status::Ok(); }

#endif

}  // namespace ringtrain::coll
