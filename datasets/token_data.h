// Language-modelling data: a token stream split into train and validation, from a char-level text
// file, little-endian uint16 token files (train.bin / val.bin), or the built-in synthetic Markov
// source whose entropy rate is known exactly. Batches are drawn deterministically from
// (seed, step, micro-step, row), so any rank can draw its own rows of a global batch.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/status.h"

namespace ringtrain {

// Character vocabulary over Unicode code points, sorted.
class CharVocab {
 public:
  CharVocab() = default;
  explicit CharVocab(std::vector<char32_t> chars);
  // Builds from UTF-8 text; errors name the byte offset of invalid UTF-8.
  static StatusOr<CharVocab> FromText(const std::string& utf8, const std::string& origin);
  int size() const { return static_cast<int>(chars_.size()); }
  const std::vector<char32_t>& chars() const { return chars_; }
  // Encodes UTF-8 text; a character outside the vocabulary is an error naming it.
  StatusOr<std::vector<int32_t>> Encode(const std::string& utf8, const std::string& origin) const;
  std::string Decode(const std::vector<int32_t>& ids) const;
  std::string DecodeOne(int32_t id) const;

 private:
  std::vector<char32_t> chars_;
};

// Decodes UTF-8 into code points; error names the offset.
StatusOr<std::vector<char32_t>> DecodeUtf8(const std::string& s, const std::string& origin);
std::string EncodeUtf8(char32_t c);

enum class Split { kTrain, kVal };

struct TokenData {
  std::string source;  // "synthetic", "text", "tokens"
  std::string description;
  int vocab_size = 0;
  std::optional<CharVocab> vocab;  // text source only
  std::vector<uint16_t> train, val;
  std::optional<double> entropy_rate;  // synthetic source only (nats per token)
  uint64_t fingerprint = 0;            // FNV-1a over all tokens

  // Loads according to data.* config keys.
  static StatusOr<TokenData> Load(const Config& c);

  // Fills tokens/targets (rows, Tn) with rows [row_begin, row_begin+rows) of batch `index` of a
  // split; windows start at offsets drawn from (seed, split, index, row).
  void SampleBatch(Split split, uint64_t seed, uint64_t index, int row_begin, int rows, int Tn, int32_t* tokens,
                   int32_t* targets) const;
  const std::vector<uint16_t>& Tokens(Split s) const { return s == Split::kTrain ? train : val; }
};

// The synthetic source: an order-k Markov chain over V symbols; each context has `branching`
// likely successors with random weights, mixed with a uniform distribution (weight 0.02) so the
// chain is irreducible and aperiodic. Its entropy rate is computed exactly from the stationary
// distribution of the chain over contexts.
struct MarkovSource {
  int vocab = 16, order = 2, branching = 3;
  std::vector<double> probs;  // (V^order, V)
  static MarkovSource Make(int vocab, int order, int branching, uint64_t seed);
  double EntropyRate() const;
  std::vector<uint16_t> Generate(int64_t n, uint64_t seed) const;
};

StatusOr<std::string> ReadFile(const std::string& path, const std::string& what);

}  // namespace ringtrain
