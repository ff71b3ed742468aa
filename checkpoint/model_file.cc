#include "checkpoint/model_file.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace ringtrain {

namespace {
constexpr char kMagic[8] = {'R', 'T', 'M', 'O', 'D', 'E', 'L', '1'};

std::string Errno() { return std::strerror(errno); }
}  // namespace

Status WriteFileAtomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return IoError("writing " + tmp + ": " + Errno());
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t w = ::write(fd, bytes.data() + off, bytes.size() - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      Status s = IoError("writing " + tmp + " at offset " + std::to_string(off) + ": " + Errno());
      ::close(fd);
      return s;
    }
    off += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0) {
    Status s = IoError("fsync " + tmp + ": " + Errno());
    ::close(fd);
    return s;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return IoError("rename " + tmp + " -> " + path + ": " + Errno());
  return Status::Ok();
}

Status SaveModel(const std::string& dir, const Config& config, const nlohmann::json& task_meta, const float* params,
                 size_t n) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return IoError("creating model directory " + dir + ": " + ec.message());
  nlohmann::json meta = task_meta;
  meta["format"] = "ringtrain-model-1";
  meta["config"] = config.ToJson();
  meta["num_params"] = n;
  std::string bin(sizeof kMagic + 8 + 4, '\0');
  std::memcpy(bin.data(), kMagic, sizeof kMagic);
  const uint64_t count = n;
  std::memcpy(bin.data() + 8, &count, 8);
  const uint32_t crc = static_cast<uint32_t>(
      crc32(0L, reinterpret_cast<const Bytef*>(params), static_cast<uInt>(n * sizeof(float))));
  std::memcpy(bin.data() + 16, &crc, 4);
  bin.append(reinterpret_cast<const char*>(params), n * sizeof(float));
  RT_RETURN_IF_ERROR(WriteFileAtomic(dir + "/params.bin", bin));
  return WriteFileAtomic(dir + "/model.json", meta.dump(2) + "\n");
}

Status LoadParams(const SavedModel& saved, ParamArena<float>& arena, const std::string& what) {
  if (arena.layout.total() != saved.params.size())
    return DataLoss("model: " + std::to_string(saved.params.size()) + " parameters stored, but the config builds " +
                    what + " with " + std::to_string(arena.layout.total()));
  std::memcpy(arena.params.data(), saved.params.data(), saved.params.size() * sizeof(float));
  return Status::Ok();
}

StatusOr<SavedModel> LoadModel(const std::string& dir_in) {
  std::string dir = dir_in;
  std::error_code ec;
  if (!std::filesystem::exists(dir + "/model.json", ec) && std::filesystem::exists(dir + "/model/model.json", ec))
    dir += "/model";
  RT_ASSIGN_OR_RETURN(std::string json_text, ReadFile(dir + "/model.json", "model file"));
  SavedModel m;
  try {
    m.meta = nlohmann::json::parse(json_text);
  } catch (const std::exception& e) {
    return DataLoss("model file " + dir + "/model.json: not valid JSON: " + e.what());
  }
  if (!m.meta.is_object() || m.meta.value("format", "") != "ringtrain-model-1")
    return DataLoss("model file " + dir + "/model.json: not a ringtrain model (format field)");
  RT_ASSIGN_OR_RETURN(std::string bin, ReadFile(dir + "/params.bin", "model file"));
  const std::string path = dir + "/params.bin";
  if (bin.size() < 20 || std::memcmp(bin.data(), kMagic, 8) != 0)
    return DataLoss("model file " + path + ": bad magic");
  uint64_t count;
  uint32_t crc;
  std::memcpy(&count, bin.data() + 8, 8);
  std::memcpy(&crc, bin.data() + 16, 4);
  if (bin.size() != 20 + count * sizeof(float))
    return DataLoss("model file " + path + ": size " + std::to_string(bin.size()) + " does not match " +
                    std::to_string(count) + " parameters (truncated?)");
  m.params.resize(count);
  std::memcpy(m.params.data(), bin.data() + 20, count * sizeof(float));
  const uint32_t actual = static_cast<uint32_t>(
      crc32(0L, reinterpret_cast<const Bytef*>(m.params.data()), static_cast<uInt>(count * sizeof(float))));
  if (actual != crc) return DataLoss("model file " + path + ": CRC mismatch (corrupt)");
  return m;
}

}  // namespace ringtrain
