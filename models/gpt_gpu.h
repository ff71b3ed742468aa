// GPT on one CUDA device, fp32 or bf16 mixed precision: the same architecture, parameter layout
// and formulas as models/gpt.h (Gpt<float> at tensor-parallel degree 1), so a host arena copies
// onto the device as one block and back, and the CPU model is the reference the GPU tests compare
// against. Parameters, gradients and activations live in device memory planned once per shape (no
// allocation inside a step); every kernel runs on the model's own stream. In fp32 attention is
// the fused (flash-style) kernel where the head size allows (16, 32, 64, 128) and there is no
// dropout, so no (T,T) matrix is stored; under bf16 the attention key decides (see Create). Dropout draws the CPU model's masks bit for bit (same streams and sites), so a
// training step with dropout equals the CPU's too. No tensor parallelism yet.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/arena.h"
#include "core/cuda/memory.h"
#include "core/cuda/ops.h"
#include "models/device_arena.h"
#include "models/gpt.h"
#include "models/optim.h"

namespace ringtrain {

class GpuGpt {
 public:
  // The model on visible CUDA device local_rank mod (number of visible devices): one GPU per local
  // rank. Fails with one line when there is no device or when the config asks for what the GPU
  // path lacks. bf16: mixed precision. Every Linear's product (the lm head's too) runs on tensor
  // cores from bf16 inputs with fp32 accumulation, and the activations the products read are
  // stored in bf16 (the LayerNorm outputs, the MLP's pre-activation and GELU output, a copy of the
  // attention output); the fp32 master parameters (rounded to a bf16 copy once per forward),
  // gradients, optimizer state, the residual stream, attention, the logits and every reduction
  // stay fp32. Otherwise strict fp32 (no TF32). attention: the config key's auto, flash or
  // materialized (see core/config_schema.cc); flash where it cannot apply is an error.
  static StatusOr<std::unique_ptr<GpuGpt>> Create(const GptConfig& cfg, int local_rank, bool bf16 = false,
                                                  const std::string& attention = "auto");
  ~GpuGpt();
  GpuGpt(const GpuGpt&) = delete;
  GpuGpt& operator=(const GpuGpt&) = delete;

  const GptConfig& config() const { return cfg_; }
  // The layout of Gpt<float>(cfg) at TP = 1: element i of the device arena is element i there.
  const ParamLayout& layout() const { return layout_; }
  // Parameters, gradients and the optimizer on the device (its stream runs every kernel).
  DeviceArena& arena() { return *arena_; }
  std::string DeviceName() const { return arena_->DeviceName(); }

  // Plans device activation memory for up to B sequences of up to Tn tokens (idempotent when it fits).
  Status PlanActivations(int B, int Tn);
  // tokens, targets (B,Tn) on the host; targets may be null (no loss). Returns the mean loss over
  // targets >= 0, summed in double on the host (0 without targets). Waits for the device.
  // train enables dropout with the CPU model's masks: keyed by (seed, dropout_key, site), rows
  // numbered from row_begin in the global batch (Gpt<float>::Forward's arguments).
  StatusOr<double> Forward(const int32_t* tokens, const int32_t* targets, int B, int Tn, bool train = false,
                           uint64_t seed = 0, uint64_t dropout_key = 0, int64_t row_begin = 0);
  // Backward of (loss_scale * mean loss) of the last Forward with targets; parameter gradients
  // accumulate into the device gradients. Enqueued on the model's stream; returns once enqueued.
  // on_ready(begin, end) is called on this thread as soon as the kernels that finish the
  // gradients of arena range [begin, end) are enqueued (ln_f, then each block from the last, then
  // the embeddings: Gpt<float>'s ranges), so a caller can queue their all-reduce behind them on
  // another stream while the rest of backward is still being enqueued and run.
  Status Backward(float loss_scale, const GradReadyFn& on_ready = nullptr);
  // Waits for everything enqueued on the model's stream.
  Status Synchronize() { return arena_->Synchronize("GPT step on the device"); }
  // The attention path the current plan uses, for logs: "flash (fused, fp32)", "flash (fused, bf16
  // tensor cores)", "materialized (cuBLAS, fp32)" or "materialized (cuBLAS, TF32 tensor cores)".
  std::string AttentionPath() const;

 private:
  GpuGpt(const GptConfig& cfg) : cfg_(cfg) {}
  struct Block {
    int ln1_w, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, fcproj_w, fcproj_b;
    std::pair<size_t, size_t> range;  // the block's parameters in the arena
  };
  // An activation a matmul reads: fp32 (f), or in bf16 mode stored rounded to bf16 (h); the other
  // pointer is null.
  struct Act {
    float* f = nullptr;
    gpu::bf16* h = nullptr;
  };
  struct BlockActs {
    // att: the (B,NH,T,T) probabilities, or with flash attention the (B,NH,T) log-sum-exps.
    float *ln1_mean, *ln1_rstd, *qkv, *att, *atty, *attproj, *res1;
    float *ln2_mean, *ln2_rstd, *fcproj, *res2;
    Act ln1, ln2;        // the LayerNorms' outputs
    Act fch, fch_gelu;   // the MLP's pre-activation and GELU output
    Act atty_in;         // the attention output as the projection reads it (fp32: atty itself)
    float* att_drop;  // dropout: the (B,NH,T,T) probabilities after dropout (else null)
    uint8_t *keep_att, *keep_attproj, *keep_fcproj;  // dropout keep masks (else null)
  };
  // Whether the fused attention applies: a head size it supports and no dropout (dropout on the
  // probabilities needs them stored).
  static bool CanFlash(const GptConfig& cfg) {
    return gpu::FlashAttentionSupports(cfg.n_embd / cfg.n_head) && cfg.dropout == 0;
  }
  float* P(int i) { return i >= 0 ? arena_->params() + layout_.spec(i).offset : nullptr; }
  const gpu::bf16* W16(int i) const { return wbf_.data() + layout_.spec(i).offset; }
  // A Linear (parameter indices w and b; b < 0: none): fp32, or in bf16 mode bf16 products from
  // the bf16 activation and weights.
  Status Lin(float* out, Act in, int w, int b, int N, int C, int OC);
  Status LinBack(float* din, int w, int b, const float* dout, Act in, int N, int C, int OC);
  // A LayerNorm into an fp32 or bf16 activation.
  Status LnForward(Act out, float* mean, float* rstd, const float* in, int w, int b, int N, int C);
  float* G(int i) { return i >= 0 ? arena_->grads() + layout_.spec(i).offset : nullptr; }

  GptConfig cfg_;
  ParamLayout layout_;
  // Declared before the cuBLAS handles, which are bound to its stream: destroyed after them.
  std::unique_ptr<DeviceArena> arena_;
  cudaStream_t stream_ = nullptr;  // arena_->stream()
  std::string attention_ = "auto";  // the config's choice
  bool flash_ = false;     // the plan's path: fused attention, else the materialised kernels
  bool flash_tc_ = false;  // the fused kernel on tensor cores (bf16 mode, head sizes 32, 64, 128)
  std::unique_ptr<gpu::Blas> blas_;
  bool bf16_ = false;
  std::unique_ptr<gpu::Blas> blas16_;  // bf16 mode: a handle free to use any tensor-core kernel
  cuda::DeviceBuffer<gpu::bf16> wbf_;  // bf16 mode: the parameters rounded, refreshed every Forward
  cuda::DeviceBuffer<gpu::bf16> dbf_;  // bf16 mode: one matmul's output gradient, rounded
  int wte_ = -1, wpe_ = -1, lnf_w_ = -1, lnf_b_ = -1;
  std::vector<Block> blocks_;
  std::pair<size_t, size_t> lnf_range_, emb_range_;

  int planB_ = 0, planT_ = 0;
  cuda::DeviceBuffer<float> acts_;
  cuda::DeviceBuffer<gpu::bf16> acts16_;  // bf16 mode: the activations stored in bf16
  cuda::DeviceBuffer<int32_t> ids_;  // tokens then targets, (B,Tn) each
  cuda::DeviceBuffer<uint8_t> masks_;  // dropout keep masks (model.dropout > 0)
  uint8_t* keep_emb_ = nullptr;
  std::vector<BlockActs> ba_;
  Act lnf_;
  float *encoded_ = nullptr, *lnf_mean_ = nullptr, *lnf_rstd_ = nullptr, *logits_ = nullptr,
        *losses_ = nullptr, *dres_ = nullptr, *dtmp_ = nullptr, *dbig_ = nullptr, *dqkv_ = nullptr,
        *datt_ = nullptr;
  std::vector<float> host_losses_;
  int curB_ = 0, curT_ = 0;
  int64_t cur_valid_ = 0;
  bool have_targets_ = false;
  bool cur_dropout_ = false;  // the last Forward applied dropout
};

}  // namespace ringtrain
