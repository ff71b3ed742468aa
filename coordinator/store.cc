#include "coordinator/store.h"

#include <sqlite3.h>

#include <chrono>

namespace ringtrain::coord {

namespace {
// A prepared statement that finalizes itself.
struct Stmt {
  sqlite3_stmt* s = nullptr;
  ~Stmt() {
    if (s) sqlite3_finalize(s);
  }
};
double Now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}
}  // namespace

Status Store::Check(int rc, const std::string& what) {
  if (rc == SQLITE_OK || rc == SQLITE_DONE || rc == SQLITE_ROW) return Status::Ok();
  return IoError("state file " + path_ + ": " + what + ": " + sqlite3_errmsg(db_));
}

Status Store::Exec(const std::string& sql) {
  char* err = nullptr;
  const int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err);
  std::string msg = err ? err : "";
  sqlite3_free(err);
  if (rc != SQLITE_OK) return IoError("state file " + path_ + ": " + msg);
  return Status::Ok();
}

StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& path) {
  std::unique_ptr<Store> s(new Store());
  s->path_ = path;
  if (sqlite3_open(path.c_str(), &s->db_) != SQLITE_OK)
    return IoError("state file " + path + ": cannot open: " + (s->db_ ? sqlite3_errmsg(s->db_) : "out of memory"));
  sqlite3_busy_timeout(s->db_, 5000);
  // WAL: a crash never leaves a half-written state; synchronous=FULL: a committed change survives
  // power loss too.
  RT_RETURN_IF_ERROR(s->Exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"));
  RT_RETURN_IF_ERROR(s->Exec(
      "CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, doc TEXT NOT NULL);"
      "CREATE TABLE IF NOT EXISTS workers (id TEXT PRIMARY KEY, doc TEXT NOT NULL);"
      "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, job INTEGER NOT NULL, "
      "time REAL NOT NULL, kind TEXT NOT NULL, reason TEXT NOT NULL);"));
  // A file that is not a ringtrain state file fails here rather than later.
  Stmt st;
  RT_RETURN_IF_ERROR(s->Check(sqlite3_prepare_v2(s->db_, "SELECT count(*) FROM jobs", -1, &st.s, nullptr), "reading"));
  return s;
}

Store::~Store() {
  if (db_) sqlite3_close(db_);
}

StatusOr<int64_t> Store::AddJob(const nlohmann::json& doc) {
  Stmt st;
  RT_RETURN_IF_ERROR(Check(sqlite3_prepare_v2(db_, "INSERT INTO jobs (doc) VALUES (?)", -1, &st.s, nullptr), "adding a job"));
  const std::string d = doc.dump();
  sqlite3_bind_text(st.s, 1, d.c_str(), -1, SQLITE_TRANSIENT);
  RT_RETURN_IF_ERROR(Check(sqlite3_step(st.s), "adding a job"));
  return static_cast<int64_t>(sqlite3_last_insert_rowid(db_));
}

Status Store::PutJob(int64_t id, const nlohmann::json& doc) {
  Stmt st;
  RT_RETURN_IF_ERROR(Check(sqlite3_prepare_v2(db_, "UPDATE jobs SET doc = ? WHERE id = ?", -1, &st.s, nullptr), "updating a job"));
  const std::string d = doc.dump();
  sqlite3_bind_text(st.s, 1, d.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(st.s, 2, id);
  return Check(sqlite3_step(st.s), "updating job " + std::to_string(id));
}

StatusOr<std::vector<std::pair<int64_t, nlohmann::json>>> Store::Jobs() {
  Stmt st;
  RT_RETURN_IF_ERROR(Check(sqlite3_prepare_v2(db_, "SELECT id, doc FROM jobs ORDER BY id", -1, &st.s, nullptr), "reading jobs"));
  std::vector<std::pair<int64_t, nlohmann::json>> out;
  int rc;
  while ((rc = sqlite3_step(st.s)) == SQLITE_ROW) {
    const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(st.s, 1));
    nlohmann::json j = nlohmann::json::parse(text ? text : "", nullptr, false);
    if (j.is_discarded()) return DataLoss("state file " + path_ + ": job " + std::to_string(sqlite3_column_int64(st.s, 0)) + " is not JSON");
    out.push_back({sqlite3_column_int64(st.s, 0), std::move(j)});
  }
  RT_RETURN_IF_ERROR(Check(rc, "reading jobs"));
  return out;
}

Status Store::PutWorker(const std::string& id, const nlohmann::json& doc) {
  Stmt st;
  RT_RETURN_IF_ERROR(Check(sqlite3_prepare_v2(db_, "INSERT OR REPLACE INTO workers (id, doc) VALUES (?, ?)", -1, &st.s, nullptr),
                           "updating a worker"));
  const std::string d = doc.dump();
  sqlite3_bind_text(st.s, 1, id.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st.s, 2, d.c_str(), -1, SQLITE_TRANSIENT);
  return Check(sqlite3_step(st.s), "updating worker " + id);
}

StatusOr<std::vector<std::pair<std::string, nlohmann::json>>> Store::Workers() {
  Stmt st;
  RT_RETURN_IF_ERROR(Check(sqlite3_prepare_v2(db_, "SELECT id, doc FROM workers ORDER BY id", -1, &st.s, nullptr), "reading workers"));
  std::vector<std::pair<std::string, nlohmann::json>> out;
  int rc;
  while ((rc = sqlite3_step(st.s)) == SQLITE_ROW) {
    const auto* id = reinterpret_cast<const char*>(sqlite3_column_text(st.s, 0));
    const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(st.s, 1));
    nlohmann::json j = nlohmann::json::parse(text ? text : "", nullptr, false);
    if (j.is_discarded()) return DataLoss("state file " + path_ + ": worker " + (id ? id : "?") + " is not JSON");
    out.push_back({id ? id : "", std::move(j)});
  }
  RT_RETURN_IF_ERROR(Check(rc, "reading workers"));
  return out;
}

Status Store::AddEvent(int64_t job, const std::string& kind, const std::string& reason) {
  Stmt st;
  RT_RETURN_IF_ERROR(Check(sqlite3_prepare_v2(db_, "INSERT INTO events (job, time, kind, reason) VALUES (?, ?, ?, ?)", -1, &st.s, nullptr),
                           "adding an event"));
  sqlite3_bind_int64(st.s, 1, job);
  sqlite3_bind_double(st.s, 2, Now());
  sqlite3_bind_text(st.s, 3, kind.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st.s, 4, reason.c_str(), -1, SQLITE_TRANSIENT);
  return Check(sqlite3_step(st.s), "adding an event");
}

StatusOr<nlohmann::json> Store::Events(int64_t job) {
  Stmt st;
  RT_RETURN_IF_ERROR(Check(sqlite3_prepare_v2(db_, "SELECT time, kind, reason FROM events WHERE job = ? ORDER BY id", -1, &st.s, nullptr),
                           "reading events"));
  sqlite3_bind_int64(st.s, 1, job);
  nlohmann::json out = nlohmann::json::array();
  int rc;
  while ((rc = sqlite3_step(st.s)) == SQLITE_ROW) {
    const auto* k = reinterpret_cast<const char*>(sqlite3_column_text(st.s, 1));
    const auto* r = reinterpret_cast<const char*>(sqlite3_column_text(st.s, 2));
    out.push_back({{"time", sqlite3_column_double(st.s, 0)}, {"kind", k ? k : ""}, {"reason", r ? r : ""}});
  }
  RT_RETURN_IF_ERROR(Check(rc, "reading events"));
  return out;
}

}  // namespace ringtrain::coord
