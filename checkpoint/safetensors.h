// safetensors files (Hugging Face's format: an 8-byte little-endian header length, a JSON header
// mapping each tensor name to {dtype, shape, data_offsets}, then the raw little-endian data), and
// the GPT naming bridge: ringtrain's GPT tensors exported as Hugging Face GPT-2 names them
// (transformer.h.0.attn.c_attn.weight, ...), with Linear weights transposed to GPT-2's Conv1D
// (in, out) layout, and imported back to initialise training.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/arena.h"
#include "core/status.h"

namespace ringtrain {

struct NamedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> data;  // row-major
};

// F32 tensors, in the order given; metadata goes under "__metadata__" (string values).
Status WriteSafetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                        const std::map<std::string, std::string>& metadata);
// Reads F32 tensors (other dtypes are an error naming the tensor); checks offsets and sizes.
StatusOr<std::vector<NamedTensor>> ReadSafetensors(const std::string& path);

// Exports the parameters of a checkpoint directory. A GPT checkpoint gets Hugging Face GPT-2
// names and layouts; other models keep ringtrain's names.
Status ExportCheckpointSafetensors(const std::string& checkpoint_dir, const std::string& out);

// Fills a GPT arena from a safetensors file with GPT-2 names (with or without the
// "transformer." prefix). Every parameter must be present with the right shape; lm_head.weight
// (tied to wte) and GPT-2's attention-mask buffers are ignored; anything else is an error.
Status ImportGptSafetensors(const std::string& path, ParamArena<float>& arena);

// GPT-2 name and layout of a ringtrain GPT tensor: whether its (out, in) Linear weight is stored
// transposed.
std::string Gpt2Name(const std::string& ours);
bool Gpt2Transposed(const std::string& ours);

}  // namespace ringtrain
