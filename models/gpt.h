// GPT with the GPT-2 architecture: token + position embedding, pre-norm blocks of causal
// multi-head self-attention and a GELU MLP, final LayerNorm, output layer tied to the token
// embedding. Parameters live in one ParamArena (names follow Hugging Face's GPT-2 where they
// exist); activations live in one arena planned by PlanActivations, so a training step allocates
// nothing.
//
// Tensor parallelism (Megatron-style): given a TP group of T ranks, each rank holds n_head/T heads
// (the QKV projection column-parallel, the attention output projection row-parallel), 4C/T of the
// MLP's hidden units (column- then row-parallel) and a vocabulary-parallel token embedding, which
// is also the output layer, with a vocabulary-parallel cross-entropy. LayerNorms, position
// embedding and the row-parallel layers' biases are replicated. Per block, forward all-reduces the
// two row-parallel outputs and backward the two column-parallel input gradients, each (B,T,C).
// The same code runs T = 1 with plain layers and no communication.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "core/arena.h"
#include "core/buffer.h"
#include "core/config.h"
#include "models/layers.h"
#include "models/tensor_parallel.h"

namespace ringtrain {

struct GptConfig {
  int n_layer = 2, n_head = 4, n_embd = 64, block_size = 64, vocab_size = 16;
  float dropout = 0.0f;
  bool bias = true;
  // Reads model.* keys; vocab_size 0 in the config means "from the data" (data_vocab).
  static StatusOr<GptConfig> FromConfig(const Config& c, int data_vocab);
  // Whether the model splits over t tensor-parallel ranks: CheckTensorParallelHeads, and every
  // rank gets part of the vocabulary.
  Status CheckTensorParallel(int t) const;
};

// Whether n_head heads split over t tensor-parallel ranks (t must divide n_head). The trainer
// checks this from the config before anything else happens.
Status CheckTensorParallelHeads(int n_head, int t);

// Called during backward when the gradients of the parameter range [begin, end) of the arena are
// final for this micro-step (blocks in reverse order, embeddings last). Gradient sync engines use
// it to start bucket all-reduces while backward continues.
using GradReadyFn = std::function<void(size_t begin, size_t end)>;

template <typename T>
class Gpt {
 public:
  // tp: the tensor-parallel group (not owned; null or one rank: the whole model here).
  explicit Gpt(const GptConfig& cfg, coll::Communicator* tp = nullptr);
  // The parameter layout tensor-parallel rank r of t holds, without allocating anything.
  static ParamLayout LayoutFor(const GptConfig& cfg, int r, int t);

  const GptConfig& config() const { return cfg_; }
  ParamArena<T>& arena() { return arena_; }
  const ParamArena<T>& arena() const { return arena_; }
  void InitWeights(uint64_t seed) { arena_.Initialize(seed); }
  // Parameters of the whole model (all tensor-parallel parts).
  int64_t NumParams() const {
    int64_t n = 0;
    for (const auto& s : arena_.layout.specs()) {
      int64_t k = 1;
      for (int64_t d : s.global_shape) k *= d;
      n += k;
    }
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

  // Logits (B,Tn,V) of the last Forward (overwritten by Backward); under tensor parallelism this
  // rank's columns (B,Tn,vocab_local()) starting at token id vocab_begin().
  const T* logits() const { return logits_; }
  int vocab_local() const { return vocab_local_; }
  int64_t vocab_begin() const { return vocab_begin_; }

  // The tensor-parallel group, and the first error of its collectives (check after Forward and
  // Backward; once it is set the model's results are meaningless).
  TpGroup& tp() { return tp_; }
  const Status& tp_status() const { return tp_.status(); }

 private:
  Gpt(const GptConfig& cfg, int tp_rank, int tp_size, bool allocate);
  void Register(int tp_rank, int tp_size);

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
  TpGroup tp_;
  int heads_local_ = 0, width_local_ = 0, vocab_local_ = 0;  // n_head/T, n_embd/T, this rank's vocabulary
  int64_t vocab_begin_ = 0;
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
    *losses_ = nullptr, *ce_max_ = nullptr, *ce_sum_ = nullptr;
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
