// TestTemp(name): a path in a directory of this process's own, removed when the process exits.
// ctest runs each test as its own process, in parallel: a fixed name in /tmp shared between two
// tests is a race (one test read a token file another was rewriting, and found it empty).
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>
#include <system_error>

namespace ringtrain::testing {

inline const std::filesystem::path& ProcessTempDir() {
  struct Dir {
    std::filesystem::path path = std::filesystem::temp_directory_path() / ("ringtrain_test_" + std::to_string(::getpid()));
    Dir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
      std::filesystem::create_directories(path);
    }
    ~Dir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static const Dir dir;
  return dir.path;
}

inline std::string TestTemp(const std::string& name) { return (ProcessTempDir() / name).string(); }

}  // namespace ringtrain::testing
