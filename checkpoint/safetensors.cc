#include "checkpoint/safetensors.h"

#include <cstdio>
#include <cstring>
#include <map>
#include <sstream>

#include "checkpoint/checkpoint.h"
#include "checkpoint/model_file.h"
#include "datasets/token_data.h"  // ReadFile

namespace ringtrain {

namespace {

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// (rows, cols) row-major -> (cols, rows).
std::vector<float> Transpose(const float* src, int64_t rows, int64_t cols) {
  std::vector<float> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[static_cast<size_t>(c * rows + r)] = src[r * cols + c];
  return out;
}

}  // namespace

std::string Gpt2Name(const std::string& ours) { return "transformer." + ours; }

bool Gpt2Transposed(const std::string& ours) {
  return ours.rfind("h.", 0) == 0 && (EndsWith(ours, "attn.c_attn.weight") || EndsWith(ours, "attn.c_proj.weight") ||
                                      EndsWith(ours, "mlp.c_fc.weight") || EndsWith(ours, "mlp.c_proj.weight"));
}

Status WriteSafetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const NamedTensor& t : tensors) {
    if (static_cast<int64_t>(t.data.size()) != Numel(t.shape))
      return Internal("safetensors: tensor " + t.name + " has " + std::to_string(t.data.size()) + " values for its shape");
    const uint64_t bytes = t.data.size() * sizeof(float);
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // the data starts 8-byte aligned
  std::string bytes(8, '\0');
  const uint64_t hl = h.size();
  std::memcpy(bytes.data(), &hl, 8);
  bytes += h;
  bytes.reserve(bytes.size() + offset);
  for (const NamedTensor& t : tensors)
    bytes.append(reinterpret_cast<const char*>(t.data.data()), t.data.size() * sizeof(float));
  return WriteFileAtomic(path, bytes);
}

StatusOr<std::vector<NamedTensor>> ReadSafetensors(const std::string& path) {
  RT_ASSIGN_OR_RETURN(std::string raw, ReadFile(path, "safetensors file"));
  if (raw.size() < 8) return DataLoss("safetensors file " + path + ": shorter than its 8-byte header length");
  uint64_t hl;
  std::memcpy(&hl, raw.data(), 8);
  if (hl > raw.size() - 8) return DataLoss("safetensors file " + path + ": header length " + std::to_string(hl) + " exceeds the file");
  const auto header = nlohmann::json::parse(raw.begin() + 8, raw.begin() + 8 + static_cast<ptrdiff_t>(hl), nullptr, false);
  if (header.is_discarded() || !header.is_object()) return DataLoss("safetensors file " + path + ": header is not a JSON object");
  const uint64_t data_size = raw.size() - 8 - hl;
  const char* data = raw.data() + 8 + hl;
  // In file order (by offset), as the tensors were written.
  std::vector<std::pair<uint64_t, NamedTensor>> found;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const auto& v = it.value();
    const std::string where = "safetensors file " + path + ": tensor " + it.key();
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      return DataLoss(where + ": entry lacks dtype, shape or data_offsets");
    if (v["dtype"] != "F32") return DataLoss(where + ": dtype " + v["dtype"].dump() + " (only F32 is read)");
    NamedTensor t;
    t.name = it.key();
    t.shape = v["shape"].get<std::vector<int64_t>>();
    const auto off = v["data_offsets"].get<std::vector<uint64_t>>();
    if (off.size() != 2 || off[1] < off[0] || off[1] > data_size)
      return DataLoss(where + ": data_offsets outside the data");
    if (off[1] - off[0] != static_cast<uint64_t>(Numel(t.shape)) * sizeof(float))
      return DataLoss(where + ": " + std::to_string(off[1] - off[0]) + " bytes for its shape");
    t.data.resize(static_cast<size_t>(Numel(t.shape)));
    std::memcpy(t.data.data(), data + off[0], off[1] - off[0]);
    found.push_back({off[0], std::move(t)});
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<NamedTensor> out;
  for (auto& [o, t] : found) out.push_back(std::move(t));
  return out;
}

Status ExportCheckpointSafetensors(const std::string& dir, const std::string& out) {
  RT_ASSIGN_OR_RETURN(CheckpointParams cp, ReadCheckpointParams(dir));
  const auto config = nlohmann::json::parse(cp.meta.config_json, nullptr, false);
  // The config is stored nested ({"model": {"type": ...}}); accept a flat key too.
  bool gpt = false;
  if (!config.is_discarded() && config.is_object()) {
    if (config.contains("model") && config["model"].is_object())
      gpt = config["model"].value("type", std::string()) == "gpt";
    else
      gpt = config.value("model.type", std::string()) == "gpt";
  }
  std::vector<NamedTensor> tensors;
  for (const ParamSpec& s : cp.layout.specs()) {
    NamedTensor t;
    const float* src = cp.values.data() + s.offset;
    if (gpt && Gpt2Transposed(s.name)) {
      t.shape = {s.shape[1], s.shape[0]};
      t.data = Transpose(src, s.shape[0], s.shape[1]);
    } else {
      t.shape = s.shape;
      t.data.assign(src, src + s.numel);
    }
    t.name = gpt ? Gpt2Name(s.name) : s.name;
    tensors.push_back(std::move(t));
  }
  return WriteSafetensors(out, tensors,
                          {{"format", "pt"}, {"producer", "ringtrain"}, {"step", std::to_string(cp.meta.step)},
                           {"names", gpt ? "gpt2" : "ringtrain"}});
}

Status ImportGptSafetensors(const std::string& path, ParamArena<float>& arena) {
  RT_ASSIGN_OR_RETURN(std::vector<NamedTensor> tensors, ReadSafetensors(path));
  std::map<std::string, const NamedTensor*> by_name;
  for (const NamedTensor& t : tensors) {
    std::string n = t.name.rfind("transformer.", 0) == 0 ? t.name.substr(12) : t.name;
    by_name[n] = &t;
  }
  for (const ParamSpec& s : arena.layout.specs()) {
    auto it = by_name.find(s.name);
    if (it == by_name.end()) return InvalidArgument("safetensors file " + path + ": no tensor " + Gpt2Name(s.name));
    const NamedTensor& t = *it->second;
    const bool tr = Gpt2Transposed(s.name);
    const std::vector<int64_t> want = tr ? std::vector<int64_t>{s.shape[1], s.shape[0]} : s.shape;
    if (t.shape != want) {
      std::ostringstream os;
      os << "safetensors file " << path << ": tensor " << t.name << " has shape [";
      for (size_t i = 0; i < t.shape.size(); ++i) os << (i ? "," : "") << t.shape[i];
      os << "], the model needs [";
      for (size_t i = 0; i < want.size(); ++i) os << (i ? "," : "") << want[i];
      os << "]";
      return InvalidArgument(os.str());
    }
    float* dst = arena.params.data() + s.offset;
    if (tr) {
      const std::vector<float> back = Transpose(t.data.data(), t.shape[0], t.shape[1]);
      std::copy(back.begin(), back.end(), dst);
    } else {
      std::copy(t.data.begin(), t.data.end(), dst);
    }
    by_name.erase(it);
  }
  for (const auto& [n, t] : by_name) {
    if (n == "lm_head.weight" || EndsWith(n, "attn.bias") || EndsWith(n, "attn.masked_bias")) continue;
    return InvalidArgument("safetensors file " + path + ": tensor " + t->name + " is not part of this model");
  }
  return Status::Ok();
}

}  // namespace ringtrain
