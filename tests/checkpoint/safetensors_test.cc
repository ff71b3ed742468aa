// safetensors export and import (issue 6, acceptance 4). The exported file is parsed by a reader
// written here from the format's description (8-byte little-endian header length, JSON header,
// raw little-endian data), not by the exporter's own ReadSafetensors, and checked against the
// model: GPT-2 names, GPT-2's Conv1D (in, out) layout for Linear weights, F32, contiguous
// in-bounds offsets. Importing the file into a differently initialised model gives back the
// parameters bitwise; a GPT-2 124M shaped model round-trips too.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "checkpoint/checkpoint.h"
#include "checkpoint/safetensors.h"
#include "models/gpt.h"

namespace ringtrain {
namespace {

namespace fs = std::filesystem;

struct Parsed {
  nlohmann::json header;
  std::string data;  // the byte buffer after the header
};

// The independent reader.
Parsed ParseFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::string raw((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_GE(raw.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(raw[static_cast<size_t>(i)]);  // little-endian
  EXPECT_LE(n + 8, raw.size());
  Parsed p;
  p.header = nlohmann::json::parse(raw.substr(8, n));
  p.data = raw.substr(8 + n);
  return p;
}

std::string TempDir(const std::string& name) {
  const std::string d = (fs::temp_directory_path() / ("rt-safetensors-" + name + "-" + std::to_string(::getpid()))).string();
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// Saves the model as a checkpoint (parameters only), exports it, and checks the file.
void ExportAndCheck(const GptConfig& gc, const std::string& name, bool check_values) {
  Gpt<float> model(gc);
  model.InitWeights(11);
  const ParamArena<float>& A = model.arena();
  const std::string dir = TempDir(name);
  CheckpointContent c;
  c.layout = &A.layout;
  c.params = const_cast<float*>(A.params.data());
  CheckpointMeta meta;
  meta.step = 3;
  meta.config_json = R"({"model": {"type": "gpt"}})";
  ASSERT_TRUE(SaveCheckpoint(nullptr, dir, c, meta, {{0, A.layout.total()}}, 1).ok());
  const std::string file = dir + "/model.safetensors";
  Status s = ExportCheckpointSafetensors(dir + "/step-00000003", file);
  ASSERT_TRUE(s.ok()) << s.message();

  Parsed p = ParseFile(file);
  EXPECT_EQ(p.header["__metadata__"]["format"], "pt");
  std::map<uint64_t, uint64_t> spans;
  size_t tensors = 0;
  for (const ParamSpec& spec : A.layout.specs()) {
    const std::string hf = "transformer." + spec.name;
    ASSERT_TRUE(p.header.contains(hf)) << hf;
    const auto& e = p.header[hf];
    EXPECT_EQ(e["dtype"], "F32");
    // GPT-2 keeps Linear weights of the blocks as Conv1D (in, out); ours are (out, in).
    const bool conv1d = spec.name.find(".attn.c_") != std::string::npos || spec.name.find(".mlp.c_") != std::string::npos;
    const bool matrix = spec.shape.size() == 2;
    std::vector<int64_t> want = spec.shape;
    if (conv1d && matrix) want = {spec.shape[1], spec.shape[0]};
    EXPECT_EQ(e["shape"].get<std::vector<int64_t>>(), want) << hf;
    const auto off = e["data_offsets"].get<std::vector<uint64_t>>();
    ASSERT_EQ(off.size(), 2u);
    ASSERT_EQ(off[1] - off[0], static_cast<uint64_t>(spec.numel) * 4) << hf;
    ASSERT_LE(off[1], p.data.size()) << hf;
    spans[off[0]] = off[1];
    ++tensors;
    if (!check_values) continue;
    std::vector<float> v(static_cast<size_t>(spec.numel));
    std::memcpy(v.data(), p.data.data() + off[0], off[1] - off[0]);
    const float* ours = A.params.data() + spec.offset;
    for (int64_t i = 0; i < spec.numel; ++i) {
      // Element (r, c) of GPT-2's (in, out) matrix is our (c, r).
      const int64_t src = (conv1d && matrix) ? (i % spec.shape[0]) * spec.shape[1] + i / spec.shape[0] : i;
      ASSERT_EQ(v[static_cast<size_t>(i)], ours[src]) << hf << " element " << i;
    }
  }
  EXPECT_EQ(tensors + 1, p.header.size()) << "extra entries in the header";
  uint64_t at = 0;
  for (const auto& [b, e] : spans) {  // contiguous, non-overlapping, covering the data
    EXPECT_EQ(b, at);
    at = e;
  }
  EXPECT_EQ(at, p.data.size());

  // Import into a differently initialised model: bitwise the original parameters.
  Gpt<float> other(gc);
  other.InitWeights(12);
  s = ImportGptSafetensors(file, other.arena());
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(std::memcmp(other.arena().params.data(), A.params.data(), A.layout.total() * sizeof(float)), 0);
  fs::remove_all(dir);
}

TEST(Safetensors, SmallGptExportsWithGpt2NamesAndImportsBitwise) {
  GptConfig gc;
  gc.n_layer = 2;
  gc.n_head = 2;
  gc.n_embd = 32;
  gc.block_size = 16;
  gc.vocab_size = 40;
  ExportAndCheck(gc, "small", true);
}

TEST(Safetensors, Gpt2SmallShapeRoundTrips) {
  GptConfig gc;  // GPT-2 124M: 12 layers, 12 heads, 768 wide, context 1024, vocabulary 50257
  gc.n_layer = 12;
  gc.n_head = 12;
  gc.n_embd = 768;
  gc.block_size = 1024;
  gc.vocab_size = 50257;
  ExportAndCheck(gc, "gpt2", false);
}

TEST(Safetensors, ImportErrorsNameTheTensor) {
  GptConfig gc;
  gc.n_layer = 1;
  gc.n_embd = 16;
  gc.n_head = 2;
  gc.block_size = 8;
  Gpt<float> model(gc);
  const std::string dir = TempDir("errors");
  // A file missing ln_f and one with a wrong shape.
  std::vector<NamedTensor> ts;
  for (const ParamSpec& s : model.arena().layout.specs()) {
    if (s.name.rfind("ln_f", 0) == 0) continue;
    std::vector<int64_t> shape = s.shape;  // GPT-2 layout: block Linear weights (in, out)
    if (shape.size() == 2 && s.name.rfind("h.", 0) == 0) shape = {s.shape[1], s.shape[0]};
    ts.push_back({"transformer." + s.name, shape, std::vector<float>(static_cast<size_t>(s.numel), 1.f)});
  }
  ASSERT_TRUE(WriteSafetensors(dir + "/missing.safetensors", ts, {}).ok());
  Status s = ImportGptSafetensors(dir + "/missing.safetensors", model.arena());
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("no tensor transformer.ln_f.weight"), std::string::npos) << s.message();
  ts[0].shape = {7, 16};
  ts[0].data.assign(7 * 16, 0.f);
  ASSERT_TRUE(WriteSafetensors(dir + "/shape.safetensors", ts, {}).ok());
  s = ImportGptSafetensors(dir + "/shape.safetensors", model.arena());
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("tensor transformer.wte.weight has shape [7,16]"), std::string::npos) << s.message();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace ringtrain
