// The coordinator's persistent state (issue 9): jobs, workers and events in one SQLite file (WAL
// mode). Jobs and workers are stored as JSON documents keyed by id, so a restarted coordinator
// reads back exactly what it held; every change is one transaction. Not thread-safe: the
// coordinator serialises calls under its own mutex.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"

struct sqlite3;

namespace ringtrain::coord {

class Store {
 public:
  static StatusOr<std::unique_ptr<Store>> Open(const std::string& path);
  ~Store();

  // A new job document; returns its id (1, 2, ...).
  StatusOr<int64_t> AddJob(const nlohmann::json& doc);
  Status PutJob(int64_t id, const nlohmann::json& doc);
  StatusOr<std::vector<std::pair<int64_t, nlohmann::json>>> Jobs();
  Status PutWorker(const std::string& id, const nlohmann::json& doc);
  StatusOr<std::vector<std::pair<std::string, nlohmann::json>>> Workers();
  // An event of a job (0: the pool), with its reason; time is seconds since the epoch.
  Status AddEvent(int64_t job, const std::string& kind, const std::string& reason);
  StatusOr<nlohmann::json> Events(int64_t job);

 private:
  Store() = default;
  Status Exec(const std::string& sql);
  Status Check(int rc, const std::string& what);
  sqlite3* db_ = nullptr;
  std::string path_;
};

}  // namespace ringtrain::coord
