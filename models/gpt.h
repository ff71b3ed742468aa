// GPT with the GPT-2 architecture: token + position embedding, pre-norm blocks of causal
// multi-head self-attention and a GELU MLP, final LayerNorm, output layer tied to the token
// embedding. Parameters live in one ParamArena (names follow Hugging Face's GPT-2 where they
// exist); activations live in one arena planned by PlanActivations, so a training step allocates
// nothing.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "core/arena.h"
#include "core/buffer.h"
#include "core/config.h"
#include "models/layers.h"

namespace ringtrain {

struct GptConfig {
  int n_layer = 2, n_head = 4, n_embd = 64, block_size = 64, vocab_size = 16;
  float dropout = 0.0f;
  bool bias = true;
  // Reads model.* keys; vocab_size 0 in the config means "from the data" (data_vocab).
  static StatusOr<GptConfig> FromConfig(const Config& c, int data_vocab);
};

// Called during backward when the gradients of the parameter range [begin, end) of the arena are
// final for this micro-step (blocks in reverse order, embeddings last). Gradient sync engines use
// it to start bucket all-reduces while backward continues.
using GradReadyFn = std::function<void(size_t begin, size_t end)>;

template <typename T>
class Gpt {
 public:
  explicit Gpt(const GptConfig& cfg);

  const GptConfig& config() const { return cfg_; }
  ParamArena<T>& arena() { return arena_; }
  const ParamArena<T>& arena() const { return arena_; }
  void InitWeights(uint64_t seed) { arena_.Initialize(seed); }
  int64_t NumParams() const {
    int64_t n = 0;
    for (const auto& s : arena_.layout.specs()) n += s.numel;
    return n;
  }

  // Plans (allocates) activation memory for up to B sequences of up to Tn tokens. Idempotent for
  // shapes that fit the current plan.
  void PlanActivations(int B, int Tn);

  // tokens, targets (B,Tn); targets may be null (no loss). train enables dropout, whose masks are
  // drawn from (seed, dropout_key, site). Returns the mean loss over targets >= 0 (0 without targets).
  // row_begin: index of this batch's first row in the global batch (data parallelism), so dropout
  // masks depend on global rows only.
  double Forward(const int32_t* tokens, const int32_t* targets, int B, int Tn, bool train, uint64_t seed = 0,
                 uint64_t dropout_key = 0, int64_t row_begin = 0);
  // Backward of (loss_scale * mean loss) of the last Forward with targets; parameter gradients
  // accumulate into arena().grads.
  void Backward(T loss_scale, const GradReadyFn& on_ready = nullptr);

  // Logits (B,Tn,V) of the last Forward (overwritten by Backward).
  const T* logits() const { return logits_; }

 private:
  struct Block {
    LayerNorm<T> ln_1, ln_2;
    Linear<T> c_attn, c_proj, c_fc, mlp_proj;
    size_t begin = 0, end = 0;  // arena range of this block's parameters
  };
  struct BlockActs {
    T *ln1, *ln1_mean, *ln1_rstd, *qkv, *att, *att_drop, *atty, *attproj, *res1;
    T *ln2, *ln2_mean, *ln2_rstd, *fch, *fch_gelu, *fcproj, *res2;
    uint8_t *keep_att, *keep_attproj, *keep_fcproj;
  };

  GptConfig cfg_;
  ParamArena<T> arena_;
  int wte_ = -1, wpe_ = -1;
  std::vector<Block> blocks_;
  LayerNorm<T> ln_f_;

  // Activation arena.
  int planB_ = 0, planT_ = 0;
  AlignedBuffer<T> acts_;
  AlignedBuffer<uint8_t> masks_;
  std::vector<BlockActs> ba_;
  T *encoded_ = nullptr, *lnf_ = nullptr, *lnf_mean_ = nullptr, *lnf_rstd_ = nullptr, *logits_ = nullptr,
    *losses_ = nullptr;
  uint8_t* keep_emb_ = nullptr;
  // Backward scratch.
  T *dres_ = nullptr, *dtmp_ = nullptr, *dbig_ = nullptr, *dqkv_ = nullptr, *datt_scratch_ = nullptr;
  // State of the last forward.
  int curB_ = 0, curT_ = 0;
  bool cur_dropout_ = false;
  int64_t cur_valid_ = 0;
  std::vector<int32_t> tokens_, targets_;
};

}  // namespace ringtrain
