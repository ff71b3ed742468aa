// Status / StatusOr for recoverable failures (I/O, config, bad data) and RT_CHECK for broken
// invariants. The CLI turns a non-OK Status into one error line and exit code 2 (user error) or 1.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace ringtrain {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  // bad config, bad user input: exit code 2
  kNotFound,         // missing file: exit code 2
  kDataLoss,         // corrupt or truncated data: exit code 2
  kIoError,          // the OS refused: exit code 1
  kInternal,         // a bug: exit code 1
  kDeadlineExceeded,  // a peer did not arrive in time: exit code 1
  kUnavailable,       // a peer died or disconnected: exit code 1
  kAborted,           // a collective was abandoned (mismatch, or another rank's failure): exit code 1
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // Prefixes context: Status("x").WithContext("reading f") -> "reading f: x".
  Status WithContext(const std::string& context) const {
    if (ok()) return *this;
    Status s(code_, context + ": " + message_);
    s.exit_code_ = exit_code_;
    return s;
  }
  // An explicit process exit code (a launcher passing on its failed rank's status).
  Status WithExitCode(int code) const {
    Status s = *this;
    s.exit_code_ = code;
    return s;
  }
  // Exit code for the CLI: 2 for the user's mistakes, 1 for everything else.
  int ExitCode() const {
    if (exit_code_ > 0 && !ok()) return exit_code_;
    switch (code_) {
      case StatusCode::kOk: return 0;
      case StatusCode::kInvalidArgument:
      case StatusCode::kNotFound:
      case StatusCode::kDataLoss: return 2;
      default: return 1;
    }
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
  int exit_code_ = 0;
};

inline Status InvalidArgument(std::string m) { return Status(StatusCode::kInvalidArgument, std::move(m)); }
inline Status NotFound(std::string m) { return Status(StatusCode::kNotFound, std::move(m)); }
inline Status DataLoss(std::string m) { return Status(StatusCode::kDataLoss, std::move(m)); }
inline Status IoError(std::string m) { return Status(StatusCode::kIoError, std::move(m)); }
inline Status Internal(std::string m) { return Status(StatusCode::kInternal, std::move(m)); }
inline Status DeadlineExceeded(std::string m) { return Status(StatusCode::kDeadlineExceeded, std::move(m)); }
inline Status Unavailable(std::string m) { return Status(StatusCode::kUnavailable, std::move(m)); }
inline Status Aborted(std::string m) { return Status(StatusCode::kAborted, std::move(m)); }

template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(Status s) : v_(std::move(s)) {  // NOLINT: implicit by design
    if (std::get<Status>(v_).ok()) v_ = Status(StatusCode::kInternal, "StatusOr built from OK status");
  }
  StatusOr(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design

  bool ok() const { return std::holds_alternative<T>(v_); }
  Status status() const { return ok() ? Status::Ok() : std::get<Status>(v_); }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<Status, T> v_;
};

[[noreturn]] void CheckFailed(const char* cond, const char* file, int line, const std::string& msg);

}  // namespace ringtrain

namespace rt = ringtrain;

#define RT_CHECK(cond)                                                    \
  do {                                                                    \
    if (!(cond)) ::ringtrain::CheckFailed(#cond, __FILE__, __LINE__, ""); \
  } while (0)
#define RT_CHECK_MSG(cond, msg)                                            \
  do {                                                                     \
    if (!(cond)) ::ringtrain::CheckFailed(#cond, __FILE__, __LINE__, msg); \
  } while (0)

#define RT_CONCAT_INNER(a, b) a##b
#define RT_CONCAT(a, b) RT_CONCAT_INNER(a, b)
#define RT_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::ringtrain::Status _st = (expr);        \
    if (!_st.ok()) return _st;               \
  } while (0)
#define RT_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.status();            \
  lhs = std::move(tmp).value()
#define RT_ASSIGN_OR_RETURN(lhs, expr) RT_ASSIGN_OR_RETURN_IMPL(RT_CONCAT(_sor_, __LINE__), lhs, expr)
