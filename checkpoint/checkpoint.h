// Sharded, verified, atomic training checkpoints (DESIGN.md idea 7). One directory per saved step,
// ROOT/step-00000020/, holding one shard file per rank and a manifest (manifest.pb, protobuf,
// with a magic, length and CRC32C in front; manifest.json for humans). The manifest lists every
// tensor's global shape ("param/<name>", "optim.m/<name>", "optim.v/<name>") and, per shard, the
// element ranges of tensors it holds with a CRC32C each. ROOT/latest names the newest complete
// checkpoint.
//
// Saving (collective): rank 0 makes ROOT/step-N.tmp; every rank writes the arena ranges it is
// given (parameters and optimizer moments) into its shard and fsyncs; rank 0 gathers the slice
// lists, writes and fsyncs the manifest, renames the directory into place, fsyncs ROOT, then
// replaces `latest` atomically and prunes to the newest `keep`. A crash at any point leaves
// `latest` naming a complete checkpoint.
//
// Loading (collective) re-slices for the current layout: every rank reads all its parameters
// (its tensor-parallel part of each) and the moment ranges its optimizer state covers, whatever
// world size, tensor-parallel degree or ZeRO-1 setting saved them.
// Every slice read is CRC-checked; all ranks agree on success, and in auto mode fall back to the
// next older checkpoint when any rank finds a problem.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "collectives/communicator.h"
#include "core/arena.h"
#include "core/status.h"
#include "models/optim.h"

namespace ringtrain {

// What a checkpoint holds of one rank: the whole parameter arena and this rank's moments.
struct CheckpointContent {
  const ParamLayout* layout = nullptr;
  float* params = nullptr;            // layout.total() elements (from `base` on, see below)
  std::vector<OptimState*> states;    // each covers [base, base + m.size()) of the arena
  bool has_m = false, has_v = false;  // which moments the optimizer keeps
  // Tensor parallelism: leave replicated tensors out of this rank's shard (every TP rank but the
  // first holds copies of them).
  bool skip_replicated = false;
  // A parameter-server shard holds only part of the arena: params[0] is arena element `base`, and
  // the states' bases count from it too. Writing only (WriteShardFile).
  size_t base = 0;
};

struct CheckpointMeta {
  int64_t step = 0;  // optimizer steps completed
  nlohmann::json trainer_state = nlohmann::json::object();
  std::string config_json;
  std::string data_fingerprint;
  int world_size = 1;
  int tensor_parallel = 1;
  bool zero1 = false;
  std::string path;  // the directory it was loaded from or saved to
};

// Shard lists written by others (parameter servers) into a checkpoint's temporary directory:
// SaveCheckpoint calls this on rank 0 after every rank's shard is written and before the
// manifest, and adds the lists to it.
using ExtraShards = std::function<Status(const std::string& tmp_dir, std::vector<std::string>* slice_lists)>;

// Writes ROOT/step-<meta.step>. write_set: the arena ranges this rank writes; over all ranks they
// must cover every parameter once, and lie inside this rank's moment states. comm null: alone.
Status SaveCheckpoint(coll::Communicator* comm, const std::string& root, const CheckpointContent& c,
                      const CheckpointMeta& meta, const std::vector<std::pair<size_t, size_t>>& write_set, int keep,
                      const ExtraShards& extra = nullptr);

// Writes one shard file `file_name` into `dir` (fsynced) holding write_set's ranges of c, and
// returns its slice list (a serialised ringtrain.proto.ShardFile) for the manifest. `writer`
// names who wrote it (a rank; parameter-server shard i writes as -1 - i).
Status WriteShardFile(const std::string& dir, const std::string& file_name, int writer, const CheckpointContent& c,
                      const std::vector<std::pair<size_t, size_t>>& write_set, std::string* slice_list);

// from: a checkpoint directory, or a root (its `latest`). With auto_fallback, an unusable
// checkpoint is reported on stderr and the next older one in the root is tried; NotFound when the
// root holds no checkpoint at all. Fills c (parameters and moments) and returns the metadata.
StatusOr<CheckpointMeta> LoadCheckpoint(coll::Communicator* comm, const std::string& from, bool auto_fallback,
                                        CheckpointContent& c);

// The parameters of one checkpoint directory, without a model: a layout rebuilt from the
// manifest's param/ tensors (in manifest order) and their values, CRC-checked.
struct CheckpointParams {
  ParamLayout layout;
  std::vector<float> values;  // layout.total() elements (alignment padding zero)
  CheckpointMeta meta;
};
StatusOr<CheckpointParams> ReadCheckpointParams(const std::string& dir);

// The state whose moments cover arena range [b, e), or null.
const OptimState* CoveringState(const std::vector<OptimState*>& states, size_t b, size_t e);

// The ranges rank r of n writes when every rank holds everything: an even, 16-aligned split.
std::vector<std::pair<size_t, size_t>> EvenSplit(size_t total, int rank, int n);

// Test hook: when RINGTRAIN_CKPT_CRASH names a point (after_shard, after_manifest, after_rename,
// after_latest), optionally with ":STEP", the saving process exits at once with status 86 there,
// as a kill would.
constexpr int kCrashHookExit = 86;

}  // namespace ringtrain
