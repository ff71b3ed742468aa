#include "collectives/link.h"

#include <algorithm>
#include <set>
#include <sstream>
#include <thread>

namespace ringtrain::coll {

namespace {
// How long a rank that finds a peer gone waits for that peer's abort frame (sent just before it
// quit, possibly still unread behind the connection's end) before blaming the peer itself.
constexpr auto kRootCauseWait = std::chrono::milliseconds(200);
}  // namespace

Link::Link(Transport* t, const std::vector<int>& members, int me, const FrameHeader& proto, double deadline_s,
           const std::string& comm_name)
    : t_(t),
      members_(members),
      me_(me),
      proto_(proto),
      deadline_s_(deadline_s),
      deadline_(Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(deadline_s))),
      comm_name_(comm_name) {}

std::string Link::Summary(const FrameHeader& h) const {
  std::ostringstream os;
  os << OpName(static_cast<OpKind>(h.op)) << " #" << h.seq << " (" << h.count << " x "
     << (ValidDataType(h.dtype) ? DataTypeName(static_cast<DataType>(h.dtype)) : "?");
  if (h.reduce) os << ", " << ReduceOpName(static_cast<ReduceOp>(h.reduce));
  if (h.root >= 0) os << ", root " << h.root;
  os << ")";
  return os.str();
}

std::string Link::Describe() const { return Summary(proto_) + " on " + comm_name_; }

Status Link::Fail(const Status& s, bool propagate) {
  if (!failed_ && propagate) {
    FrameHeader h = proto_;
    h.flags = kFrameAbort;
    const std::string& text = s.message();
    h.bytes = text.size();
    for (int m = 0; m < size(); ++m)
      if (m != me_) (void)t_->Send(members_[m], h, text.data());
  }
  failed_ = true;
  return s;
}

Status Link::Send(int to, const void* data, size_t bytes) {
  FrameHeader h = proto_;
  h.bytes = bytes;
  Status s = t_->Send(members_[to], h, data);
  if (s.ok() && members_[to] != t_->rank()) t_->CountSent(bytes);
  if (!s.ok()) {
    // A peer that quit after another rank's failure: report that root cause if it reached us.
    Status root = t_->PendingAbort(proto_.context, Clock::now() + kRootCauseWait);
    if (!root.ok()) return Fail(root, /*propagate=*/false);
  }
  if (!s.ok())
    return Fail(Status(s.code(), Describe() + ": rank " + std::to_string(me_) + " could not send to " +
                                     t_->PeerName(members_[to]) + ": " + s.message()));
  return s;
}

Status Link::DiagnoseTimeout(int from) {
  FrameHeader h = proto_;
  h.flags = kFrameStuck;
  const std::string mine = std::to_string(proto_.seq) + " " + std::to_string(me_) + " " + std::to_string(from);
  h.bytes = mine.size();
  for (int m = 0; m < size(); ++m)
    if (m != me_) (void)t_->Send(members_[m], h, mine.data());
  const double grace = std::clamp(0.2 * deadline_s_, 0.25, 2.0);
  std::this_thread::sleep_for(std::chrono::duration<double>(grace));
  std::set<int> waiting = {me_}, waited = {from};
  for (const std::string& text : t_->StuckNotices(proto_.context)) {
    std::istringstream is(text);
    uint64_t seq;
    int waiter, target;
    if (!(is >> seq >> waiter >> target) || seq != proto_.seq) continue;
    waiting.insert(waiter);
    waited.insert(target);
  }
  std::vector<int> missing;
  for (int r : waited)
    if (!waiting.count(r)) missing.push_back(r);
  if (missing.empty()) missing.push_back(from);  // everyone waits on someone: name our own peer
  std::ostringstream os;
  os << Describe() << ": ";
  for (size_t i = 0; i < missing.size(); ++i) os << (i ? ", " : "") << t_->PeerName(members_[missing[i]]);
  os << " did not arrive within " << deadline_s_ << " s";
  return Fail(DeadlineExceeded(os.str()), /*propagate=*/false);
}

Status Link::Recv(int from, void* data, size_t bytes) {
  FrameHeader h;
  Status s = t_->Recv(members_[from], proto_.context, &h, data, bytes, deadline_);
  return Finish(s, h, from, bytes, /*rejected=*/false);
}

bool Link::Matches(const FrameHeader& h) const {
  return h.magic == proto_.magic && h.seq == proto_.seq && h.op == proto_.op && h.dtype == proto_.dtype &&
         h.reduce == proto_.reduce && h.root == proto_.root && h.count == proto_.count;
}

Status Link::RecvReduce(int from, uint8_t* data, size_t bytes, DataType t, ReduceOp op, uint8_t* tmp) {
  const size_t es = DataTypeSize(t);
  if (!t_->direct_receive()) {
    RT_RETURN_IF_ERROR(Recv(from, tmp, bytes));
    ReduceInto(data, tmp, bytes / es, t, op);
    return Status::Ok();
  }
  // Reduced piece by piece straight out of the transport's buffer, once the header checked out.
  FrameHeader h;
  bool rejected = false;
  Status s = t_->RecvDirect(
      members_[from], proto_.context, &h,
      [&](const FrameHeader& fh, size_t off, const uint8_t* d, size_t n) -> Status {
        if (off == 0 && (!Matches(fh) || fh.bytes != bytes)) {
          rejected = true;
          return Aborted("mismatched frame");
        }
        ReduceInto(data + off, d, n / es, t, op);
        return Status::Ok();
      },
      deadline_);
  return Finish(s, h, from, bytes, rejected);
}

Status Link::Finish(const Status& s, const FrameHeader& h, int from, size_t bytes, bool rejected) {
  if (!rejected) {
    if (s.code() == StatusCode::kDeadlineExceeded) return DiagnoseTimeout(from);
    if (s.code() == StatusCode::kAborted) return Fail(s, /*propagate=*/false);
    if (s.code() == StatusCode::kUnavailable) {
      Status root = t_->PendingAbort(proto_.context, Clock::now() + kRootCauseWait);
      if (!root.ok()) return Fail(root, /*propagate=*/false);
      return Fail(Unavailable(Describe() + ": " + s.message() + " (detected by rank " + std::to_string(me_) + ")"));
    }
  }
  const bool same = Matches(h);
  if (rejected || !s.ok() || !same || h.bytes != bytes) {
    std::ostringstream os;
    os << "mismatched collective on " << comm_name_ << ": rank " << me_ << " called " << Summary(proto_) << " but "
       << t_->PeerName(members_[from]) << " called " << Summary(h);
    if (same) os << " (frame of " << h.bytes << " bytes, expected " << bytes << ")";
    return Fail(Aborted(os.str()));
  }
  return s;
}

Status Link::SendRecv(int to, const void* sdata, size_t sbytes, int from, void* rdata, size_t rbytes) {
  RT_RETURN_IF_ERROR(Send(to, sdata, sbytes));
  return Recv(from, rdata, rbytes);
}

}  // namespace ringtrain::coll
