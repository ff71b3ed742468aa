// A trained model on disk: DIR/model.json (the full config, the model shape, the vocabulary and
// data description) and DIR/params.bin (magic, element count, CRC32, then fp32 little-endian
// parameters in arena order). Written to a temporary name and renamed, so a crash never leaves a
// half-written model. The sharded, resumable checkpoint format comes with the checkpoint issue.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/arena.h"
#include "core/config.h"
#include "core/status.h"
#include "datasets/token_data.h"

namespace ringtrain {

struct SavedModel {
  nlohmann::json meta;        // model.json
  std::vector<float> params;  // arena order
};

// `meta` holds task fields (vocab_size, vocab_chars, image shape, normalisation, data description);
// format, config and num_params are added here.
Status SaveModel(const std::string& dir, const Config& config, const nlohmann::json& meta, const float* params,
                 size_t n);
// dir may be a run directory (then DIR/model is used) or the model directory itself.
StatusOr<SavedModel> LoadModel(const std::string& dir);

// Copies a saved model's parameters into an arena built from its config; a count mismatch is an
// error naming `what` (the model the config builds).
Status LoadParams(const SavedModel& saved, ParamArena<float>& arena, const std::string& what);

Status WriteFileAtomic(const std::string& path, const std::string& bytes);

}  // namespace ringtrain
