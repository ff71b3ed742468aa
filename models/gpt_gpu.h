// GPT on one CUDA device, fp32: the same architecture, parameter layout and formulas as
// models/gpt.h (Gpt<float> at tensor-parallel degree 1), so a host arena copies onto the device
// as one block and back, and the CPU model is the reference the GPU tests compare against.
// Parameters, gradients and activations live in device memory planned once (no allocation inside
// a step); every kernel runs on the model's own stream. Attention is the fused (flash-style)
// kernel where the head size allows (16, 32, 64, 128) and there is no dropout, so no (T,T) matrix
// is stored. Dropout draws the CPU model's masks bit for bit (same streams and sites), so a
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
#include "models/gpt.h"
#include "models/optim.h"

namespace ringtrain {

class GpuGpt {
 public:
  // The model on visible CUDA device local_rank mod (number of visible devices): one GPU per local
  // rank. Fails with one line when there is no device or when the config asks for what the GPU
  // path lacks. bf16: mixed precision, every Linear's product (the lm head's too) from bf16
  // inputs on tensor cores with fp32 accumulation; parameters, gradients, activations, attention
  // and every reduction stay fp32. Otherwise strict fp32 (no TF32).
  static StatusOr<std::unique_ptr<GpuGpt>> Create(const GptConfig& cfg, int local_rank, bool bf16 = false);
  ~GpuGpt();
  GpuGpt(const GpuGpt&) = delete;
  GpuGpt& operator=(const GpuGpt&) = delete;

  const GptConfig& config() const { return cfg_; }
  // The layout of Gpt<float>(cfg) at TP = 1: element i of the device arena is element i there.
  const ParamLayout& layout() const { return layout_; }
  // The device's name as CUDA reports it ("NVIDIA H200").
  std::string DeviceName() const;
  // Host <-> device copies of the whole parameter / gradient vector (layout().total() floats);
  // DownloadGrads waits for the device.
  Status UploadParams(const float* host);
  Status DownloadGrads(float* host);
  Status ZeroGrads();

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
  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  // Device gradients (layout().total() floats), for collectives on them.
  float* grads() { return grads_.data(); }
  // Waits for everything enqueued on the model's stream.
  Status Synchronize();

  // The optimizer on the device (Adam/AdamW): moments m and v in device memory with the arena's
  // layout, so parameters, gradients and moments stay on the GPU between steps. StartOptimizer
  // uploads the parameters and the moments (null: zeros) and allocates what it needs; call it
  // again after the host copies changed (a resume).
  Status StartOptimizer(const float* params, const float* m, const float* v);
  // Sum of squares of the device gradients (double; waits for the device).
  StatusOr<double> GradSumSquares();
  // One update of every parameter: a.weight_decay applies on decay_ranges (sorted, disjoint
  // arena element ranges) and 0 elsewhere, as OptimizerUpdate on the host. Enqueued.
  Status AdamStep(const gpu::AdamArgs& a, const std::vector<std::pair<size_t, size_t>>& decay_ranges);
  // Device -> host copies (layout().total() floats each; m, v may be null); wait for the device.
  Status DownloadParams(float* host);
  Status DownloadMoments(float* m, float* v);

 private:
  GpuGpt(const GptConfig& cfg) : cfg_(cfg) {}
  struct Block {
    int ln1_w, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, fcproj_w, fcproj_b;
    std::pair<size_t, size_t> range;  // the block's parameters in the arena
  };
  struct BlockActs {
    // att: the (B,NH,T,T) probabilities, or with flash attention the (B,NH,T) log-sum-exps.
    float *ln1, *ln1_mean, *ln1_rstd, *qkv, *att, *atty, *attproj, *res1;
    float *ln2, *ln2_mean, *ln2_rstd, *fch, *fch_gelu, *fcproj, *res2;
    float* att_drop;  // dropout: the (B,NH,T,T) probabilities after dropout (else null)
    uint8_t *keep_att, *keep_attproj, *keep_fcproj;  // dropout keep masks (else null)
  };
  float* P(int i) { return i >= 0 ? params_.data() + layout_.spec(i).offset : nullptr; }
  const gpu::bf16* W16(int i) const { return wbf_.data() + layout_.spec(i).offset; }
  // A Linear (parameter indices w and b; b < 0: none): fp32 or, in bf16 mode, with bf16 products.
  Status Lin(float* out, const float* in, int w, int b, int N, int C, int OC);
  Status LinBack(float* din, int w, int b, const float* dout, const float* in, int N, int C, int OC);
  float* G(int i) { return i >= 0 ? grads_.data() + layout_.spec(i).offset : nullptr; }

  GptConfig cfg_;
  ParamLayout layout_;
  int device_ = 0;
  bool flash_ = false;  // fused attention (head sizes it supports), else the materialised kernels
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<gpu::Blas> blas_;
  bool bf16_ = false;
  std::unique_ptr<gpu::Blas> blas16_;  // bf16 mode: a handle free to use any tensor-core kernel
  cuda::DeviceBuffer<gpu::bf16> wbf_;  // bf16 mode: the parameters rounded, refreshed every Forward
  cuda::DeviceBuffer<gpu::bf16> xbf_, dbf_;  // bf16 mode: one matmul's input / output gradient
  cuda::DeviceBuffer<float> params_, grads_;
  cuda::DeviceBuffer<float> m_, v_;      // optimizer moments (StartOptimizer)
  cuda::DeviceBuffer<double> sumsq_;     // SumSquares scratch
  int wte_ = -1, wpe_ = -1, lnf_w_ = -1, lnf_b_ = -1;
  std::vector<Block> blocks_;
  std::pair<size_t, size_t> lnf_range_, emb_range_;

  int planB_ = 0, planT_ = 0;
  cuda::DeviceBuffer<float> acts_;
  cuda::DeviceBuffer<int32_t> ids_;  // tokens then targets, (B,Tn) each
  cuda::DeviceBuffer<uint8_t> masks_;  // dropout keep masks (model.dropout > 0)
  uint8_t* keep_emb_ = nullptr;
  std::vector<BlockActs> ba_;
  float *encoded_ = nullptr, *lnf_ = nullptr, *lnf_mean_ = nullptr, *lnf_rstd_ = nullptr, *logits_ = nullptr,
        *losses_ = nullptr, *dres_ = nullptr, *dtmp_ = nullptr, *dbig_ = nullptr, *dqkv_ = nullptr,
        *datt_ = nullptr;
  std::vector<float> host_losses_;
  int curB_ = 0, curT_ = 0;
  int64_t cur_valid_ = 0;
  bool have_targets_ = false;
  bool cur_dropout_ = false;  // the last Forward applied dropout
};

// Number of CUDA devices this process sees (0 when there is no driver or no device; then `why`,
// if given, receives CUDA's reason).
int CudaDeviceCount(std::string* why = nullptr);

}  // namespace ringtrain
