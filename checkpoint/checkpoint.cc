#include "checkpoint/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <sstream>

#include <google/protobuf/util/json_util.h>

#include "checkpoint.pb.h"
#include "checkpoint/file_io.h"
#include "checkpoint/model_file.h"  // WriteFileAtomic
#include "core/crc32c.h"
#include "datasets/token_data.h"  // ReadFile

namespace ringtrain {

namespace fs = std::filesystem;
using Ranges = std::vector<std::pair<size_t, size_t>>;

namespace {

constexpr char kManifestMagic[8] = {'R', 'T', 'C', 'K', 'P', 'T', 'M', '1'};
constexpr uint32_t kFormatVersion = 1;

std::string StepDirName(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", static_cast<long long>(step));
  return buf;
}

// RINGTRAIN_CKPT_CRASH=point or point:step.
void CrashHook(const char* point, int64_t step) {
  const char* env = std::getenv("RINGTRAIN_CKPT_CRASH");
  if (!env) return;
  const std::string want(env);
  const size_t colon = want.find(':');
  const bool match = want.substr(0, colon) == point &&
                     (colon == std::string::npos || want.substr(colon + 1) == std::to_string(step));
  if (match) {
    std::fprintf(stderr, "ringtrain: checkpoint crash hook: exiting at %s\n", point);
    std::fflush(stderr);
    _exit(kCrashHookExit);
  }
}

std::string Errno(const std::string& what) { return what + ": " + std::strerror(errno); }

Status FsyncPath(const std::string& path, bool dir) {
  const int fd = ::open(path.c_str(), dir ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) return IoError(Errno("opening " + path + " to fsync"));
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return IoError(Errno("fsync " + path));
  return Status::Ok();
}

// The tensor slices of arena range [b, e): (spec index, first element, end element).
struct Piece {
  int spec;
  size_t begin, end;  // tensor elements
};
std::vector<Piece> PiecesOf(const ParamLayout& L, size_t b, size_t e) {
  std::vector<Piece> out;
  for (int i = 0; i < static_cast<int>(L.specs().size()); ++i) {
    const ParamSpec& s = L.spec(i);
    const size_t lo = std::max(b, s.offset), hi = std::min(e, s.offset + static_cast<size_t>(s.numel));
    if (lo < hi) out.push_back({i, lo - s.offset, hi - s.offset});
  }
  return out;
}

// Collective "did every rank succeed?" (true when alone).
StatusOr<bool> AllOk(coll::Communicator* comm, bool ok) {
  if (!comm) return ok;
  int32_t bad = ok ? 0 : 1;
  RT_RETURN_IF_ERROR(comm->AllReduce(&bad, 1, coll::DataType::kI32, coll::ReduceOp::kMax));
  return bad == 0;
}

// Writes this rank's shard; fills `shard` with its slices.
Status WriteShard(const std::string& dir, const std::string& name, int rank, const CheckpointContent& c,
                  const Ranges& write_set, proto::ShardFile* shard) {
  const std::string path = dir + "/" + name;
  shard->set_name(name);
  shard->set_rank(rank);
  RT_ASSIGN_OR_RETURN(auto out, SequentialFileWriter::Create(path));
  uint64_t offset = 0;
  Status s;
  // Elements [begin, end) of `box` (null: the whole tensor) from src.
  auto put = [&](const std::string& tensor, const float* src, int64_t begin, int64_t end, const TensorBox* box) {
    if (!s.ok()) return;
    const size_t bytes = static_cast<size_t>(end - begin) * sizeof(float);
    uint32_t crc = 0;
    s = out->Append(src, bytes, &crc);
    proto::Slice* sl = shard->add_slices();
    sl->set_tensor(tensor);
    sl->set_begin(static_cast<uint64_t>(begin));
    sl->set_end(static_cast<uint64_t>(end));
    sl->set_offset(offset);
    sl->set_crc32c(crc);
    if (box) {
      for (int64_t d : box->start) sl->add_box_start(d);
      for (int64_t d : box->shape) sl->add_box_shape(d);
    }
    offset += bytes;
  };
  const ParamLayout& L = *c.layout;
  for (const auto& [b, e] : write_set) {
    const OptimState* st = (c.has_m || c.has_v) ? CoveringState(c.states, b - c.base, e - c.base) : nullptr;
    if ((c.has_m || c.has_v) && !st) {
      s = Internal("checkpoint write range outside this rank's optimizer state");
      break;
    }
    for (const Piece& p : PiecesOf(L, b, e)) {
      const ParamSpec& spec = L.spec(p.spec);
      if (c.skip_replicated && !spec.sharded()) continue;
      for (const BoxRange& br : BoxRangesOf(spec, static_cast<int64_t>(p.begin), static_cast<int64_t>(p.end))) {
        const size_t arena = spec.offset + static_cast<size_t>(br.local) - c.base;  // index into c.params
        const TensorBox* box = spec.sharded() ? &spec.boxes[static_cast<size_t>(br.box)] : nullptr;
        put("param/" + spec.name, c.params + arena, br.begin, br.end, box);
        if (c.has_m) put("optim.m/" + spec.name, st->m.data() + (arena - st->base), br.begin, br.end, box);
        if (c.has_v) put("optim.v/" + spec.name, st->v.data() + (arena - st->base), br.begin, br.end, box);
      }
    }
  }
  if (s.ok()) s = out->Finish();  // the rest, fsync
  shard->set_bytes(offset);
  return s;
}

std::string ManifestBytes(const proto::Manifest& m) {
  std::string body;
  m.SerializeToString(&body);
  std::string out(kManifestMagic, sizeof kManifestMagic);
  const uint32_t crc = Crc32c(body.data(), body.size());
  const uint64_t len = body.size();
  out.append(reinterpret_cast<const char*>(&crc), 4);
  out.append(reinterpret_cast<const char*>(&len), 8);
  out += body;
  return out;
}

StatusOr<proto::Manifest> ReadManifest(const std::string& dir) {
  const std::string path = dir + "/manifest.pb";
  RT_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path, "checkpoint manifest"));
  if (bytes.size() < 20 || std::memcmp(bytes.data(), kManifestMagic, 8) != 0)
    return DataLoss("checkpoint manifest " + path + ": not a ringtrain manifest (bad magic)");
  uint32_t crc;
  uint64_t len;
  std::memcpy(&crc, bytes.data() + 8, 4);
  std::memcpy(&len, bytes.data() + 12, 8);
  if (len != bytes.size() - 20)
    return DataLoss("checkpoint manifest " + path + ": " + std::to_string(bytes.size() - 20) +
                    " bytes after the header, header says " + std::to_string(len) + " (truncated)");
  if (Crc32c(bytes.data() + 20, len) != crc) return DataLoss("checkpoint manifest " + path + ": CRC mismatch (corrupt)");
  proto::Manifest m;
  if (!m.ParseFromArray(bytes.data() + 20, static_cast<int>(len)))
    return DataLoss("checkpoint manifest " + path + ": cannot parse");
  if (m.format_version() != kFormatVersion)
    return DataLoss("checkpoint manifest " + path + ": format version " + std::to_string(m.format_version()) +
                    ", this ringtrain reads " + std::to_string(kFormatVersion));
  return m;
}

std::string ShapeString(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? "," : "") << s[i];
  os << "]";
  return os.str();
}

// Loads one checkpoint directory into c; any problem is an error naming the file and tensor.
StatusOr<CheckpointMeta> TryLoad(const std::string& dir, CheckpointContent& c) {
  RT_ASSIGN_OR_RETURN(proto::Manifest m, ReadManifest(dir));
  const std::string mpath = dir + "/manifest.pb";
  const ParamLayout& L = *c.layout;
  std::map<std::string, const proto::TensorInfo*> tensors;
  for (const auto& t : m.tensors()) tensors[t.name()] = &t;
  auto check_tensor = [&](const std::string& name, const ParamSpec& s) -> Status {
    auto it = tensors.find(name);
    if (it == tensors.end()) return DataLoss("checkpoint " + mpath + ": no tensor " + name);
    std::vector<int64_t> shape(it->second->shape().begin(), it->second->shape().end());
    if (shape != s.global_shape)
      return DataLoss("checkpoint " + mpath + ": tensor " + name + " has shape " + ShapeString(shape) +
                      ", the model's is " + ShapeString(s.global_shape));
    if (it->second->dtype() != "f32")
      return DataLoss("checkpoint " + mpath + ": tensor " + name + " has dtype " + it->second->dtype());
    return Status::Ok();
  };
  for (const ParamSpec& s : L.specs()) {
    RT_RETURN_IF_ERROR(check_tensor("param/" + s.name, s));
    if (c.has_m) RT_RETURN_IF_ERROR(check_tensor("optim.m/" + s.name, s));
    if (c.has_v) RT_RETURN_IF_ERROR(check_tensor("optim.v/" + s.name, s));
  }
  // Slices by tensor, each with the box of the tensor it is a range of (validated once here).
  struct Where {
    const proto::ShardFile* file;
    const proto::Slice* slice;
    TensorBox box;
  };
  std::map<std::string, std::vector<Where>> by_tensor;
  std::map<std::string, std::unique_ptr<RangeReader>> readers;  // by path, opened on first use
  // For each slice this load reads, the one after it in its file that it also reads (prefetched).
  std::map<const proto::Slice*, const proto::Slice*> next_in_file;
  for (const auto& sh : m.shards()) {
    const std::string path = dir + "/" + sh.name();
    const proto::Slice* prev = nullptr;
    struct stat st{};
    if (::stat(path.c_str(), &st) != 0) return DataLoss("checkpoint shard " + path + ": " + std::strerror(errno));
    if (static_cast<uint64_t>(st.st_size) != sh.bytes())
      return DataLoss("checkpoint shard " + path + ": " + std::to_string(st.st_size) + " bytes, the manifest says " +
                      std::to_string(sh.bytes()) + " (truncated or overwritten)");
    for (const auto& sl : sh.slices()) {
      auto t = tensors.find(sl.tensor());
      if (t == tensors.end()) continue;  // not a tensor this load reads
      const std::vector<int64_t> g(t->second->shape().begin(), t->second->shape().end());
      const size_t D = g.size();
      TensorBox box{{sl.box_start().begin(), sl.box_start().end()}, {sl.box_shape().begin(), sl.box_shape().end()}};
      if (box.start.empty() && box.shape.empty()) box = TensorBox{std::vector<int64_t>(D, 0), g};
      bool valid = box.start.size() == D && box.shape.size() == D;
      for (size_t d = 0; valid && d < D; ++d)
        valid = box.start[d] >= 0 && box.shape[d] > 0 && box.start[d] + box.shape[d] <= g[d];
      if (!valid || sl.end() > static_cast<uint64_t>(box.numel()))
        return DataLoss("checkpoint " + mpath + ": a slice of " + sl.tensor() + " in " + sh.name() +
                        " lies outside the tensor " + ShapeString(g));
      by_tensor[sl.tensor()].push_back({&sh, &sl, std::move(box)});
      if (prev && prev->offset() < sl.offset()) next_in_file[prev] = &sl;
      prev = &sl;
    }
  }
  const uint8_t* slice_bytes = nullptr;
  // Reads slice w (slice_bytes points at it until the next read), CRC-checked.
  auto read_slice = [&](const std::string& tensor, const Where& w) -> Status {
    const std::string path = dir + "/" + w.file->name();
    auto it = readers.find(path);
    if (it == readers.end()) {
      auto opened = RangeReader::Open(path);
      if (!opened.ok()) return DataLoss("checkpoint shard " + opened.status().message());
      it = readers.emplace(path, std::move(*opened)).first;
    }
    const size_t n = (w.slice->end() - w.slice->begin()) * sizeof(float);
    if (w.slice->end() < w.slice->begin() || w.slice->offset() + n > w.file->bytes())
      return DataLoss("checkpoint " + mpath + ": slice of " + tensor + " lies outside " + path);
    auto got = it->second->Read(w.slice->offset(), n);
    if (!got.ok()) return DataLoss("checkpoint shard " + got.status().message() + " (reading tensor " + tensor + ")");
    slice_bytes = *got;
    // Loads in the saved layout ask for the slices of a file in order: have the next one read
    // while this one is checked and copied.
    if (auto nx = next_in_file.find(w.slice); nx != next_in_file.end() && nx->second->end() >= nx->second->begin())
      it->second->Prefetch(nx->second->offset(), (nx->second->end() - nx->second->begin()) * sizeof(float));
    if (Crc32c(slice_bytes, n) != w.slice->crc32c())
      return DataLoss("checkpoint shard " + path + ": CRC mismatch in tensor " + tensor + " elements [" +
                      std::to_string(w.slice->begin()) + ", " + std::to_string(w.slice->end()) + ") (corrupt)");
    return Status::Ok();
  };
  // Copies elements [lo, hi) of box `tb` of `tensor` (shape g) into dst[0, hi - lo), verifying
  // every slice it reads. A source slice of the same box is a range intersection; one of another
  // box (another tensor-parallel layout) is intersected row by row of the last dimension.
  auto fetch = [&](const std::string& tensor, const std::vector<int64_t>& g, const TensorBox& tb, size_t lo, size_t hi,
                   float* dst) -> Status {
    const size_t D = g.size();
    size_t covered = 0;
    for (const Where& w : by_tensor[tensor]) {
      const TensorBox& sb = w.box;
      if (sb.start == tb.start && sb.shape == tb.shape) {
        const size_t b = std::max<size_t>(lo, w.slice->begin()), e = std::min<size_t>(hi, w.slice->end());
        if (b >= e) continue;
        RT_RETURN_IF_ERROR(read_slice(tensor, w));
        std::memcpy(dst + (b - lo), slice_bytes + (b - w.slice->begin()) * sizeof(float), (e - b) * sizeof(float));
        covered += e - b;
        continue;
      }
      bool meet = true;
      for (size_t d = 0; meet && d < D; ++d)
        meet = std::max(sb.start[d], tb.start[d]) < std::min(sb.start[d] + sb.shape[d], tb.start[d] + tb.shape[d]);
      if (!meet || D == 0) continue;
      bool read = false;
      const int64_t tin = tb.shape[D - 1], sin = sb.shape[D - 1];
      const int64_t sbeg = static_cast<int64_t>(w.slice->begin()), send = static_cast<int64_t>(w.slice->end());
      for (int64_t i = static_cast<int64_t>(lo); i < static_cast<int64_t>(hi);) {
        const int64_t row = i / tin, col = i % tin;
        const int64_t run = std::min<int64_t>(static_cast<int64_t>(hi) - i, tin - col);
        // This run's coordinates in dimensions 0..D-2, as a row of the source box.
        int64_t rem = row, srow = 0, stride = 1;
        bool inside = true;
        for (size_t d = D - 1; d-- > 0;) {
          const int64_t gc = tb.start[d] + rem % tb.shape[d];
          rem /= tb.shape[d];
          if (gc < sb.start[d] || gc >= sb.start[d] + sb.shape[d]) {
            inside = false;
            break;
          }
          srow += (gc - sb.start[d]) * stride;
          stride *= sb.shape[d];
        }
        if (inside) {
          const int64_t g0 = tb.start[D - 1] + col;
          const int64_t a = std::max(g0, sb.start[D - 1]), z = std::min(g0 + run, sb.start[D - 1] + sin);
          if (a < z) {
            const int64_t j0 = srow * sin + (a - sb.start[D - 1]);
            const int64_t jb = std::max(j0, sbeg), je = std::min(j0 + (z - a), send);
            if (jb < je) {
              if (!read) {
                RT_RETURN_IF_ERROR(read_slice(tensor, w));
                read = true;
              }
              std::memcpy(dst + (i - static_cast<int64_t>(lo)) + (a - g0) + (jb - j0),
                          slice_bytes + static_cast<size_t>(jb - sbeg) * sizeof(float),
                          static_cast<size_t>(je - jb) * sizeof(float));
              covered += static_cast<size_t>(je - jb);
            }
          }
        }
        i += run;
      }
    }
    if (covered != hi - lo)
      return DataLoss("checkpoint " + dir + ": tensor " + tensor + " elements [" + std::to_string(lo) + ", " +
                      std::to_string(hi) + ") of the part this rank needs are not all present (" +
                      std::to_string(covered) + " found)");
    return Status::Ok();
  };
  // Local elements [lo, hi) of a parameter's tensor (its boxes under tensor parallelism).
  auto fetch_local = [&](const std::string& tensor, const ParamSpec& s, size_t lo, size_t hi, float* dst) -> Status {
    for (const BoxRange& br : BoxRangesOf(s, static_cast<int64_t>(lo), static_cast<int64_t>(hi)))
      RT_RETURN_IF_ERROR(fetch(tensor, s.global_shape, s.boxes[static_cast<size_t>(br.box)],
                               static_cast<size_t>(br.begin), static_cast<size_t>(br.end),
                               dst + (static_cast<size_t>(br.local) - lo)));
    return Status::Ok();
  };
  // Tensor by tensor: the parameter, then its moments in this rank's optimizer states. That is the
  // order WriteShard lays them out, so a load in the saved layout reads each file front to back.
  for (const ParamSpec& s : L.specs()) {
    RT_RETURN_IF_ERROR(fetch_local("param/" + s.name, s, 0, static_cast<size_t>(s.numel), c.params + s.offset));
    for (OptimState* st : c.states) {
      const size_t n = std::max(st->m.size(), st->v.size());
      const size_t b = std::max(st->base, s.offset), e = std::min(st->base + n, s.offset + static_cast<size_t>(s.numel));
      if (b >= e) continue;
      for (const Piece& p : PiecesOf(L, b, e)) {
        const ParamSpec& spec = L.spec(p.spec);
        const size_t at = spec.offset + p.begin - st->base;
        if (c.has_m) RT_RETURN_IF_ERROR(fetch_local("optim.m/" + spec.name, spec, p.begin, p.end, st->m.data() + at));
        if (c.has_v) RT_RETURN_IF_ERROR(fetch_local("optim.v/" + spec.name, spec, p.begin, p.end, st->v.data() + at));
      }
    }
  }
  CheckpointMeta meta;
  meta.step = m.step();
  meta.world_size = m.world_size();
  meta.zero1 = m.zero1();
  meta.tensor_parallel = std::max(1, m.tensor_parallel());
  meta.config_json = m.config_json();
  meta.data_fingerprint = m.data_fingerprint();
  meta.trainer_state = nlohmann::json::parse(m.trainer_state_json(), nullptr, false);
  if (meta.trainer_state.is_discarded()) return DataLoss("checkpoint " + mpath + ": trainer state is not JSON");
  meta.path = dir;
  return meta;
}

// Checkpoint directories under root, newest first: `latest` then step-* by step.
std::vector<std::string> Candidates(const std::string& root) {
  std::vector<std::string> out;
  std::FILE* f = std::fopen((root + "/latest").c_str(), "r");
  if (f) {
    char buf[256] = {0};
    if (std::fgets(buf, sizeof buf, f)) {
      std::string name(buf);
      while (!name.empty() && (name.back() == '\n' || name.back() == '\r')) name.pop_back();
      if (!name.empty() && name.find('/') == std::string::npos) out.push_back(root + "/" + name);
    }
    std::fclose(f);
  }
  std::vector<std::string> steps;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind("step-", 0) == 0 && n.find(".tmp") == std::string::npos) steps.push_back(n);
  }
  std::sort(steps.rbegin(), steps.rend());
  for (const auto& n : steps)
    if (std::find(out.begin(), out.end(), root + "/" + n) == out.end()) out.push_back(root + "/" + n);
  return out;
}

}  // namespace

const OptimState* CoveringState(const std::vector<OptimState*>& states, size_t b, size_t e) {
  for (const OptimState* st : states) {
    const size_t n = std::max(st->m.size(), st->v.size());
    if (b >= st->base && e <= st->base + n) return st;
  }
  return nullptr;
}

Ranges EvenSplit(size_t total, int rank, int n) {
  auto at = [&](int r) { return std::min(total, (total * static_cast<size_t>(r) / static_cast<size_t>(n) + 15) / 16 * 16); };
  const size_t b = at(rank), e = rank == n - 1 ? total : at(rank + 1);
  if (b >= e) return {};
  return {{b, e}};
}

Status WriteShardFile(const std::string& dir, const std::string& file_name, int writer, const CheckpointContent& c,
                      const Ranges& write_set, std::string* slice_list) {
  proto::ShardFile shard;
  RT_RETURN_IF_ERROR(WriteShard(dir, file_name, writer, c, write_set, &shard));
  shard.SerializeToString(slice_list);
  return Status::Ok();
}

Status SaveCheckpoint(coll::Communicator* comm, const std::string& root, const CheckpointContent& c,
                      const CheckpointMeta& meta, const Ranges& write_set, int keep, const ExtraShards& extra) {
  const int rank = comm ? comm->rank() : 0, world = comm ? comm->size() : 1;
  const std::string name = StepDirName(meta.step);
  const std::string final_dir = root + "/" + name, tmp = final_dir + ".tmp";
  Status local;
  if (rank == 0) {
    std::error_code ec;
    fs::create_directories(root, ec);
    if (ec) local = IoError("creating checkpoint directory " + root + ": " + ec.message());
    fs::remove_all(tmp, ec);  // a save that died half-way
    if (local.ok() && !fs::create_directory(tmp, ec)) local = IoError("creating " + tmp + ": " + ec.message());
  }
  RT_ASSIGN_OR_RETURN(bool ok, AllOk(comm, local.ok()));
  if (!ok) return local.ok() ? IoError("rank 0 could not create " + tmp) : local;

  proto::ShardFile shard;
  {
    char shard_name[64];
    std::snprintf(shard_name, sizeof shard_name, "shard-%05d-of-%05d.bin", rank, world);
    local = WriteShard(tmp, shard_name, rank, c, write_set, &shard);
  }
  if (local.ok()) CrashHook("after_shard", meta.step);
  RT_ASSIGN_OR_RETURN(ok, AllOk(comm, local.ok()));
  if (!ok) return local.ok() ? IoError("another rank failed to write its shard of " + tmp) : local;

  // Rank 0 gathers every rank's slice list.
  std::vector<std::string> lists(static_cast<size_t>(world));
  shard.SerializeToString(&lists[static_cast<size_t>(rank)]);
  if (comm) {
    if (rank == 0) {
      for (int r = 1; r < world; ++r) {
        int64_t len = 0;
        RT_RETURN_IF_ERROR(comm->Recv(&len, 1, coll::DataType::kI64, r));
        std::vector<int32_t> words(static_cast<size_t>((len + 3) / 4));
        RT_RETURN_IF_ERROR(comm->Recv(words.data(), static_cast<int64_t>(words.size()), coll::DataType::kI32, r));
        lists[static_cast<size_t>(r)].assign(reinterpret_cast<const char*>(words.data()), static_cast<size_t>(len));
      }
    } else {
      const std::string& mine = lists[static_cast<size_t>(rank)];
      int64_t len = static_cast<int64_t>(mine.size());
      std::vector<int32_t> words(static_cast<size_t>((len + 3) / 4), 0);
      std::memcpy(words.data(), mine.data(), mine.size());
      RT_RETURN_IF_ERROR(comm->Send(&len, 1, coll::DataType::kI64, 0));
      RT_RETURN_IF_ERROR(comm->Send(words.data(), static_cast<int64_t>(words.size()), coll::DataType::kI32, 0));
    }
  }
  if (rank == 0) {
    proto::Manifest m;
    m.set_format_version(kFormatVersion);
    m.set_step(meta.step);
    m.set_world_size(world);
    m.set_zero1(meta.zero1);
    m.set_tensor_parallel(meta.tensor_parallel);
    m.set_trainer_state_json(meta.trainer_state.dump());
    m.set_config_json(meta.config_json);
    m.set_data_fingerprint(meta.data_fingerprint);
    for (const ParamSpec& s : c.layout->specs()) {
      for (const char* kind : {"param/", "optim.m/", "optim.v/"}) {
        if ((kind[6] == 'm' && !c.has_m) || (kind[6] == 'v' && !c.has_v)) continue;
        proto::TensorInfo* t = m.add_tensors();
        std::string tname(kind);
        tname.append(s.name);
        t->set_name(tname);
        t->set_dtype("f32");
        for (int64_t d : s.global_shape) t->add_shape(d);
      }
    }
    if (extra) {
      Status x = extra(tmp, &lists);
      if (!x.ok()) local = x;
    }
    for (const std::string& l : lists) {
      if (!m.add_shards()->ParseFromString(l)) local = Internal("a shard's slice list did not parse");
    }
    std::string json;
    google::protobuf::util::JsonPrintOptions jo;
    jo.add_whitespace = true;
    (void)google::protobuf::util::MessageToJsonString(m, &json, jo);
    if (local.ok()) local = WriteFileAtomic(tmp + "/manifest.pb", ManifestBytes(m));
    if (local.ok()) local = WriteFileAtomic(tmp + "/manifest.json", json);
    if (local.ok()) local = FsyncPath(tmp, true);
    if (local.ok()) CrashHook("after_manifest", meta.step);
    if (local.ok()) {
      std::error_code ec;
      fs::remove_all(final_dir, ec);  // the same step saved again (e.g. a preempted run's last)
      if (::rename(tmp.c_str(), final_dir.c_str()) != 0) local = IoError(Errno("renaming " + tmp + " to " + final_dir));
    }
    if (local.ok()) local = FsyncPath(root, true);
    if (local.ok()) CrashHook("after_rename", meta.step);
    if (local.ok()) local = WriteFileAtomic(root + "/latest", name + "\n");
    if (local.ok()) local = FsyncPath(root, true);
    if (local.ok()) CrashHook("after_latest", meta.step);
    if (local.ok() && keep > 0) {
      // Prune the oldest complete checkpoints beyond `keep` (never the one just written).
      std::vector<std::string> all = Candidates(root);
      std::sort(all.rbegin(), all.rend());
      for (size_t i = static_cast<size_t>(keep); i < all.size(); ++i)
        if (all[i] != final_dir) {
          std::error_code ec;
          fs::remove_all(all[i], ec);
        }
    }
  }
  RT_ASSIGN_OR_RETURN(ok, AllOk(comm, local.ok()));
  if (!ok) return local.ok() ? IoError("rank 0 failed to finish checkpoint " + final_dir) : local;
  return Status::Ok();
}

StatusOr<CheckpointParams> ReadCheckpointParams(const std::string& dir) {
  RT_ASSIGN_OR_RETURN(proto::Manifest m, ReadManifest(dir));
  CheckpointParams out;
  for (const auto& t : m.tensors()) {
    if (t.name().rfind("param/", 0) != 0) continue;
    out.layout.Add(t.name().substr(6), std::vector<int64_t>(t.shape().begin(), t.shape().end()), false,
                   InitKind::kZeros);
  }
  out.values.assign(out.layout.total(), 0.f);
  CheckpointContent c;
  c.layout = &out.layout;
  c.params = out.values.data();
  RT_ASSIGN_OR_RETURN(out.meta, TryLoad(dir, c));
  return out;
}

StatusOr<CheckpointMeta> LoadCheckpoint(coll::Communicator* comm, const std::string& from, bool auto_fallback,
                                        CheckpointContent& c) {
  std::vector<std::string> cands;
  std::error_code ec;
  const bool is_ckpt = fs::exists(from + "/manifest.pb", ec);
  if (is_ckpt) {
    cands.push_back(from);
  } else {
    if (!fs::is_directory(from, ec)) {
      if (auto_fallback) return NotFound("no checkpoint directory " + from);
      return NotFound("checkpoint " + from + ": no such directory");
    }
    cands = Candidates(from);
    if (cands.empty()) {
      if (auto_fallback) return NotFound("no checkpoint in " + from);
      return NotFound("checkpoint " + from + ": neither a checkpoint (no manifest.pb) nor a directory of them");
    }
    if (!auto_fallback) cands.resize(1);
  }
  std::string first_error;
  for (const std::string& dir : cands) {
    auto r = TryLoad(dir, c);
    RT_ASSIGN_OR_RETURN(bool ok, AllOk(comm, r.ok()));
    if (ok) return r;
    const std::string why = r.ok() ? "another rank found it unusable" : r.status().message();
    if (first_error.empty()) first_error = why;
    if (!auto_fallback) return r.ok() ? DataLoss("checkpoint " + dir + ": another rank found it unusable") : r.status();
    if (!r.ok() || !comm || comm->rank() == 0)
      std::fprintf(stderr, "ringtrain: warning: %scheckpoint %s is unusable (%s); trying the previous one\n",
                   comm ? ("rank " + std::to_string(comm->rank()) + ": ").c_str() : "", dir.c_str(), why.c_str());
  }
  return DataLoss("no usable checkpoint in " + from + " (newest: " + first_error + ")");
}

}  // namespace ringtrain
