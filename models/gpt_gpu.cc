#include "models/gpt_gpu.h"

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <cstdio>
#include <string>
#include <tuple>

namespace ringtrain {

StatusOr<std::unique_ptr<GpuGpt>> GpuGpt::Create(const GptConfig& cfg, int local_rank, bool bf16,
                                                 const std::string& attention) {
  if (attention == "flash" && !CanFlash(cfg))
    return InvalidArgument("config: attention flash needs a head size (model.n_embd / model.n_head = " +
                           std::to_string(cfg.n_embd / cfg.n_head) + ") of 16, 32, 64 or 128 and model.dropout 0");
  if (attention != "auto" && attention != "flash" && attention != "materialized")
    return InvalidArgument("config: attention " + attention + " is not auto, flash or materialized");
  std::unique_ptr<GpuGpt> g(new GpuGpt(cfg));
  g->layout_ = Gpt<float>::LayoutFor(cfg, 0, 1);
  RT_ASSIGN_OR_RETURN(g->arena_, DeviceArena::Create(g->layout_.total(), local_rank));
  g->stream_ = g->arena_->stream();
  RT_ASSIGN_OR_RETURN(gpu::Blas blas, gpu::Blas::Create(g->stream_));
  g->blas_ = std::make_unique<gpu::Blas>(std::move(blas));
  g->bf16_ = bf16;
  if (bf16) {
    RT_ASSIGN_OR_RETURN(gpu::Blas blas16, gpu::Blas::Create(g->stream_, /*pedantic=*/false));
    g->blas16_ = std::make_unique<gpu::Blas>(std::move(blas16));
  }
  g->attention_ = attention;
  const ParamLayout& L = g->layout_;
  auto find = [&](const std::string& name) { return L.Find(name); };
  g->wte_ = find("wte.weight");
  g->wpe_ = find("wpe.weight");
  g->lnf_w_ = find("ln_f.weight");
  g->lnf_b_ = find("ln_f.bias");
  for (int l = 0; l < cfg.n_layer; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    g->blocks_.push_back(Block{find(p + "ln_1.weight"), find(p + "ln_1.bias"), find(p + "attn.c_attn.weight"),
                               find(p + "attn.c_attn.bias"), find(p + "attn.c_proj.weight"),
                               find(p + "attn.c_proj.bias"), find(p + "ln_2.weight"), find(p + "ln_2.bias"),
                               find(p + "mlp.c_fc.weight"), find(p + "mlp.c_fc.bias"), find(p + "mlp.c_proj.weight"),
                               find(p + "mlp.c_proj.bias"), {}});
  }
  RT_CHECK(g->wte_ >= 0 && g->wpe_ >= 0 && g->lnf_w_ >= 0);
  // Each block's parameters are one contiguous range of the arena (as in Gpt<float>).
  auto range = [&L](std::initializer_list<int> ids) {
    size_t b = SIZE_MAX, e = 0;
    for (int i : ids) {
      if (i < 0) continue;
      b = std::min(b, L.spec(i).offset);
      e = std::max(e, L.spec(i).offset + static_cast<size_t>(L.spec(i).numel));
    }
    return std::pair<size_t, size_t>{b, e};
  };
  for (Block& b : g->blocks_)
    b.range = range({b.ln1_w, b.ln1_b, b.attn_w, b.attn_b, b.proj_w, b.proj_b, b.ln2_w, b.ln2_b, b.fc_w, b.fc_b,
                     b.fcproj_w, b.fcproj_b});
  g->lnf_range_ = range({g->lnf_w_, g->lnf_b_});
  g->emb_range_ = range({g->wte_, g->wpe_});
  if (bf16) RT_RETURN_IF_ERROR(g->wbf_.Allocate(L.total(), "bf16 weights"));
  return g;
}

GpuGpt::~GpuGpt() {
  // Kernels still queued may read what is freed below.
  if (arena_) (void)arena_->Synchronize();
}

std::string GpuGpt::AttentionPath() const {
  if (flash_) return flash_tc_ ? "flash (fused, bf16 tensor cores)" : "flash (fused, fp32)";
  return bf16_ ? "materialized (cuBLAS, TF32 tensor cores)" : "materialized (cuBLAS, fp32)";
}

Status GpuGpt::Lin(float* out, Act in, int w, int b, int N, int C, int OC) {
  if (!bf16_) return gpu::LinearForward(*blas_, out, in.f, P(w), P(b), N, C, OC);
  RT_CHECK(in.h != nullptr);
  return gpu::LinearForwardBf16(*blas16_, out, in.h, W16(w), P(b), N, C, OC);
}

Status GpuGpt::LinBack(float* din, int w, int b, const float* dout, Act in, int N, int C, int OC) {
  if (!bf16_) return gpu::LinearBackward(*blas_, din, G(w), G(b), dout, in.f, P(w), N, C, OC);
  RT_CHECK(in.h != nullptr);
  RT_RETURN_IF_ERROR(gpu::ToBf16(dbf_.data(), dout, static_cast<int64_t>(N) * OC, stream_));
  return gpu::LinearBackwardBf16(*blas16_, din, G(w), G(b), dout, dbf_.data(), in.h, W16(w), N, C, OC);
}

Status GpuGpt::LnForward(Act out, float* mean, float* rstd, const float* in, int w, int b, int N, int C) {
  if (!bf16_) return gpu::LayerNormForward(out.f, mean, rstd, in, P(w), P(b), N, C, stream_);
  return gpu::LayerNormForwardBf16(out.h, mean, rstd, in, P(w), P(b), N, C, stream_);
}

Status GpuGpt::PlanActivations(int B, int Tn) {
  RT_CHECK(Tn <= cfg_.block_size);
  if (B <= planB_ && Tn <= planT_) return Status::Ok();
  // The old plan goes back to the device's cache: nothing queued may still use it.
  RT_RETURN_IF_ERROR(Synchronize());
  RT_RETURN_IF_ERROR(arena_->SetDevice());
  const int newB = std::max(B, planB_), newT = std::max(Tn, planT_);
  planB_ = planT_ = 0;  // no plan until the one below is complete (a failed one is redone)
  const int64_t N = static_cast<int64_t>(newB) * newT, C = cfg_.n_embd, V = cfg_.vocab_size,
                NH = cfg_.n_head;
  // The attention path. Dropout on the probabilities needs them stored (materialised). Under
  // bf16 the fused kernel runs on tensor cores where the head size allows (32, 64, 128); else the
  // materialised products do (TF32), much faster than the fp32 fused kernel, while every layer's
  // (B,NH,T,T) scores (and backward's scratch) take at most a quarter of the device's memory;
  // past that, at long context, the fp32 fused kernel stores none.
  const int hs = static_cast<int>(C / NH);
  const bool can_flash = CanFlash(cfg_);
  flash_tc_ = bf16_ && can_flash && gpu::FlashAttentionTcSupports(hs);
  if (attention_ == "flash" || attention_ == "materialized") {
    flash_ = attention_ == "flash";
  } else if (!can_flash || !bf16_ || flash_tc_) {
    flash_ = can_flash;
  } else {
    size_t free_bytes = 0, total_bytes = 0;
    RT_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
    const double scores = static_cast<double>(cfg_.n_layer + 1) * newB * NH * newT * newT * sizeof(float);
    flash_ = scores > 0.25 * static_cast<double>(total_bytes);
  }
  const int64_t att = static_cast<int64_t>(newB) * NH * newT * (flash_ ? 1 : newT);
  const bool drop = cfg_.dropout > 0;
  // One walk over the pieces, run twice: first counting (null bases), then assigning. Pieces are
  // 256-byte aligned (64 fp32, 128 bf16 or 256 mask elements).
  int64_t used32 = 0, used16 = 0, used8 = 0;
  auto take = [](auto* base, int64_t& used, int64_t align, int64_t n) {
    auto* p = base ? base + used : nullptr;
    used += (n + align - 1) / align * align;
    return p;
  };
  auto carve = [&](float* fb, gpu::bf16* hb, uint8_t* mb) {
    used32 = used16 = used8 = 0;
    auto f32 = [&](int64_t n) { return take(fb, used32, 64, n); };
    auto m8 = [&](int64_t n) { return take(mb, used8, 256, n); };
    // An activation a matmul reads: bf16 in bf16 mode, else fp32.
    auto act = [&](int64_t n) {
      Act a;
      if (bf16_)
        a.h = take(hb, used16, 128, n);
      else
        a.f = f32(n);
      return a;
    };
    keep_emb_ = drop ? m8(N * C) : nullptr;
    encoded_ = f32(N * C);
    // Under bf16 without the fused kernel, the fp32 attention output is only the source of its
    // bf16 copy (the fused backward is what reads it later): one buffer serves every layer.
    float* shared_atty = bf16_ && !flash_ ? f32(N * C) : nullptr;
    ba_.assign(static_cast<size_t>(cfg_.n_layer), BlockActs{});
    for (auto& a : ba_) {
      a.ln1 = act(N * C);
      a.ln1_mean = f32(N);
      a.ln1_rstd = f32(N);
      a.qkv = f32(N * 3 * C);
      a.att = f32(att);
      a.att_drop = drop ? f32(att) : nullptr;
      a.keep_att = drop ? m8(att) : nullptr;
      a.keep_attproj = drop ? m8(N * C) : nullptr;
      a.keep_fcproj = drop ? m8(N * C) : nullptr;
      a.atty = shared_atty ? shared_atty : f32(N * C);
      a.atty_in = bf16_ ? act(N * C) : Act{a.atty, nullptr};
      a.attproj = f32(N * C);
      a.res1 = f32(N * C);
      a.ln2 = act(N * C);
      a.ln2_mean = f32(N);
      a.ln2_rstd = f32(N);
      a.fch = act(N * 4 * C);
      a.fch_gelu = act(N * 4 * C);
      a.fcproj = f32(N * C);
      a.res2 = f32(N * C);
    }
    lnf_ = act(N * C);
    lnf_mean_ = f32(N);
    lnf_rstd_ = f32(N);
    logits_ = f32(N * V);
    dres_ = f32(N * C);
    dtmp_ = f32(N * C);
    dbig_ = f32(N * 4 * C);
    dqkv_ = f32(N * 3 * C);
    datt_ = f32(att);
    losses_ = f32(N);
  };
  carve(nullptr, nullptr, nullptr);
  const int64_t n32 = used32, n16 = used16, n8 = used8;
  RT_RETURN_IF_ERROR(acts_.AllocateCached(static_cast<size_t>(n32), "activations"));
  RT_RETURN_IF_ERROR(acts16_.AllocateCached(static_cast<size_t>(n16), "bf16 activations"));
  RT_RETURN_IF_ERROR(masks_.AllocateCached(static_cast<size_t>(n8), "dropout masks"));
  RT_RETURN_IF_ERROR(ids_.AllocateCached(static_cast<size_t>(2 * N), "token ids"));
  // bf16 mode: the widest output gradient a product reads rounded, (N,V) or (N,4C).
  if (bf16_)
    RT_RETURN_IF_ERROR(dbf_.AllocateCached(static_cast<size_t>(N * std::max<int64_t>(V, 4 * C)), "bf16 output gradients"));
  carve(acts_.data(), acts16_.data(), masks_.data());
  RT_CHECK(used32 == n32 && used16 == n16 && used8 == n8);
  host_losses_.resize(static_cast<size_t>(N));
  planB_ = newB;
  planT_ = newT;
  return Status::Ok();
}

StatusOr<double> GpuGpt::Forward(const int32_t* tokens, const int32_t* targets, int B, int Tn, bool train,
                                 uint64_t seed, uint64_t dropout_key, int64_t row_begin) {
  RT_RETURN_IF_ERROR(PlanActivations(B, Tn));
  const int N = B * Tn, C = cfg_.n_embd, V = cfg_.vocab_size, NH = cfg_.n_head;
  const int64_t NC = static_cast<int64_t>(N) * C;
  const float p = cfg_.dropout;
  const bool drop = train && cfg_.dropout > 0;
  cur_dropout_ = drop;
  // The CPU model's mask sites and keys (models/gpt.cc): 0 the embedding, then 3 per block;
  // residual masks keyed by global batch row, attention masks by (global row, head), which for
  // the B rows here are the B*NH consecutive rows from row_begin*NH.
  auto mask = [&](uint8_t* keep, int64_t n, uint64_t site) {
    return gpu::DropoutMaskRows(keep, p, B, n / B, row_begin, seed, dropout_key * 4096 + site, stream_);
  };
  auto att_mask = [&](uint8_t* keep, uint64_t site) {
    return gpu::DropoutMaskRows(keep, p, static_cast<int64_t>(B) * NH, static_cast<int64_t>(Tn) * Tn,
                                row_begin * NH, seed, dropout_key * 4096 + site, stream_);
  };
  curB_ = B;
  curT_ = Tn;
  have_targets_ = targets != nullptr;
  cur_valid_ = 0;
  int32_t* d_tokens = ids_.data();
  int32_t* d_targets = ids_.data() + N;
  RT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_tokens, tokens, sizeof(int32_t) * N, cudaMemcpyHostToDevice, stream_),
                          "copying tokens to the device");
  if (targets)
    RT_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(d_targets, targets, sizeof(int32_t) * N, cudaMemcpyHostToDevice, stream_),
        "copying targets to the device");
  // The attention's products: TF32 tensor cores under bf16, strict fp32 otherwise.
  const gpu::Blas& blas = bf16_ ? *blas16_ : *blas_;
  // bf16: the weights rounded once per forward (parameters change between steps, not within one).
  if (bf16_)
    RT_RETURN_IF_ERROR(gpu::ToBf16(wbf_.data(), arena_->params(), static_cast<int64_t>(layout_.total()), stream_));
  RT_RETURN_IF_ERROR(gpu::EmbeddingForward(encoded_, d_tokens, P(wte_), P(wpe_), B, Tn, C, stream_));
  if (drop) {
    RT_RETURN_IF_ERROR(mask(keep_emb_, NC, 0));
    RT_RETURN_IF_ERROR(gpu::DropoutApply(encoded_, encoded_, keep_emb_, p, NC, stream_));
  }
  const float* x = encoded_;
  for (int l = 0; l < cfg_.n_layer; ++l) {
    const Block& b = blocks_[static_cast<size_t>(l)];
    const BlockActs& a = ba_[static_cast<size_t>(l)];
    RT_RETURN_IF_ERROR(LnForward(a.ln1, a.ln1_mean, a.ln1_rstd, x, b.ln1_w, b.ln1_b, N, C));
    RT_RETURN_IF_ERROR(Lin(a.qkv, a.ln1, b.attn_w, b.attn_b, N, C, 3 * C));
    if (drop) RT_RETURN_IF_ERROR(att_mask(a.keep_att, 1 + 3 * static_cast<uint64_t>(l)));
    RT_RETURN_IF_ERROR(flash_ ? (flash_tc_ ? gpu::FlashAttentionForwardTc(a.atty, a.att, a.qkv, B, Tn, C, NH, stream_)
                                           : gpu::FlashAttentionForward(a.atty, a.att, a.qkv, B, Tn, C, NH, stream_))
                              : gpu::AttentionForward(blas, a.atty, a.att, a.att_drop, drop ? a.keep_att : nullptr, p,
                                                      a.qkv, B, Tn, C, NH));
    if (bf16_) RT_RETURN_IF_ERROR(gpu::ToBf16(a.atty_in.h, a.atty, NC, stream_));
    RT_RETURN_IF_ERROR(Lin(a.attproj, a.atty_in, b.proj_w, b.proj_b, N, C, C));
    if (drop) {
      RT_RETURN_IF_ERROR(mask(a.keep_attproj, NC, 2 + 3 * static_cast<uint64_t>(l)));
      RT_RETURN_IF_ERROR(gpu::DropoutApply(a.attproj, a.attproj, a.keep_attproj, p, NC, stream_));
    }
    RT_RETURN_IF_ERROR(gpu::ResidualForward(a.res1, x, a.attproj, NC, stream_));
    RT_RETURN_IF_ERROR(LnForward(a.ln2, a.ln2_mean, a.ln2_rstd, a.res1, b.ln2_w, b.ln2_b, N, C));
    if (bf16_) {
      // The pre-activation in fp32 into backward's (N,4C) scratch (free during forward), then
      // stored rounded with its GELU.
      RT_RETURN_IF_ERROR(Lin(dbig_, a.ln2, b.fc_w, b.fc_b, N, C, 4 * C));
      RT_RETURN_IF_ERROR(gpu::GeluForwardBf16(a.fch.h, a.fch_gelu.h, dbig_, 4 * NC, stream_));
    } else {
      RT_RETURN_IF_ERROR(Lin(a.fch.f, a.ln2, b.fc_w, b.fc_b, N, C, 4 * C));
      RT_RETURN_IF_ERROR(gpu::GeluForward(a.fch_gelu.f, a.fch.f, 4 * NC, stream_));
    }
    RT_RETURN_IF_ERROR(Lin(a.fcproj, a.fch_gelu, b.fcproj_w, b.fcproj_b, N, 4 * C, C));
    if (drop) {
      RT_RETURN_IF_ERROR(mask(a.keep_fcproj, NC, 3 + 3 * static_cast<uint64_t>(l)));
      RT_RETURN_IF_ERROR(gpu::DropoutApply(a.fcproj, a.fcproj, a.keep_fcproj, p, NC, stream_));
    }
    RT_RETURN_IF_ERROR(gpu::ResidualForward(a.res2, a.res1, a.fcproj, NC, stream_));
    x = a.res2;
  }
  RT_RETURN_IF_ERROR(LnForward(lnf_, lnf_mean_, lnf_rstd_, x, lnf_w_, lnf_b_, N, C));
  // Output layer tied to the token embedding: logits (N,V) = lnf (N,C) @ wte^T.
  RT_RETURN_IF_ERROR(Lin(logits_, lnf_, wte_, -1, N, C, V));
  if (!targets) {
    RT_RETURN_IF_ERROR(Synchronize());
    return 0.0;
  }
  for (int i = 0; i < N; ++i) cur_valid_ += targets[i] >= 0 ? 1 : 0;
  RT_RETURN_IF_ERROR(gpu::SoftmaxCrossEntropy(losses_, nullptr, logits_, d_targets, N, V, 0.f, stream_));
  RT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_losses_.data(), losses_, sizeof(float) * N, cudaMemcpyDeviceToHost,
                                          stream_),
                          "copying losses from the device");
  RT_RETURN_IF_ERROR(Synchronize());
  double sum = 0;
  for (int i = 0; i < N; ++i) sum += host_losses_[static_cast<size_t>(i)];
  return cur_valid_ > 0 ? sum / static_cast<double>(cur_valid_) : 0.0;
}

Status GpuGpt::Backward(float loss_scale, const GradReadyFn& on_ready) {
  RT_CHECK_MSG(have_targets_, "Backward needs a Forward with targets");
  const int B = curB_, Tn = curT_, N = B * Tn, C = cfg_.n_embd, V = cfg_.vocab_size, NH = cfg_.n_head;
  const int64_t NC = static_cast<int64_t>(N) * C;
  const float scale = cur_valid_ > 0 ? loss_scale / static_cast<float>(cur_valid_) : 0.f;
  const float p = cfg_.dropout;
  const bool drop = cur_dropout_;
  const int32_t* d_tokens = ids_.data();
  const int32_t* d_targets = ids_.data() + N;
  // The attention's products: TF32 tensor cores under bf16, strict fp32 otherwise.
  const gpu::Blas& blas = bf16_ ? *blas16_ : *blas_;
  // dlogits in place of the logits.
  RT_RETURN_IF_ERROR(gpu::SoftmaxCrossEntropy(losses_, logits_, logits_, d_targets, N, V, scale, stream_));
  RT_RETURN_IF_ERROR(LinBack(dtmp_, wte_, -1, logits_, lnf_, N, C, V));
  RT_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(dres_, 0, sizeof(float) * NC, stream_), "zeroing the residual gradient");
  const float* xlast = cfg_.n_layer > 0 ? ba_.back().res2 : encoded_;
  RT_RETURN_IF_ERROR(
      gpu::LayerNormBackward(dres_, G(lnf_w_), G(lnf_b_), dtmp_, xlast, P(lnf_w_), lnf_mean_, lnf_rstd_, N, C, stream_));
  if (on_ready) on_ready(lnf_range_.first, lnf_range_.second);
  for (int l = cfg_.n_layer - 1; l >= 0; --l) {
    const Block& b = blocks_[static_cast<size_t>(l)];
    const BlockActs& a = ba_[static_cast<size_t>(l)];
    const float* x = l > 0 ? ba_[static_cast<size_t>(l - 1)].res2 : encoded_;
    // MLP branch: dres holds d(res2); with dropout, the gradient of the branch before it is dtmp.
    const float* dfcproj = dres_;
    if (drop) {
      RT_RETURN_IF_ERROR(gpu::DropoutApply(dtmp_, dres_, a.keep_fcproj, p, NC, stream_));
      dfcproj = dtmp_;
    }
    RT_RETURN_IF_ERROR(LinBack(dbig_, b.fcproj_w, b.fcproj_b, dfcproj, a.fch_gelu, N, 4 * C, C));
    RT_RETURN_IF_ERROR(bf16_ ? gpu::GeluBackwardBf16(dbig_, dbig_, a.fch.h, 4 * NC, stream_)
                             : gpu::GeluBackward(dbig_, dbig_, a.fch.f, 4 * NC, stream_));
    RT_RETURN_IF_ERROR(LinBack(dtmp_, b.fc_w, b.fc_b, dbig_, a.ln2, N, C, 4 * C));
    RT_RETURN_IF_ERROR(gpu::LayerNormBackward(dres_, G(b.ln2_w), G(b.ln2_b), dtmp_, a.res1, P(b.ln2_w), a.ln2_mean,
                                              a.ln2_rstd, N, C, stream_));  // dres now d(res1)
    // Attention branch.
    const float* dattproj = dres_;
    if (drop) {
      RT_RETURN_IF_ERROR(gpu::DropoutApply(dtmp_, dres_, a.keep_attproj, p, NC, stream_));
      dattproj = dtmp_;
    }
    float* datty = dbig_;  // (N,C) of the (N,4C) scratch
    RT_RETURN_IF_ERROR(
        LinBack(datty, b.proj_w, b.proj_b, dattproj, a.atty_in, N, C, C));
    RT_RETURN_IF_ERROR(flash_ ? (flash_tc_ ? gpu::FlashAttentionBackwardTc(dqkv_, datt_, datty, a.qkv, a.atty, a.att,
                                                                           B, Tn, C, NH, stream_)
                                           : gpu::FlashAttentionBackward(dqkv_, datt_, datty, a.qkv, a.atty, a.att, B,
                                                                         Tn, C, NH, stream_))
                              : gpu::AttentionBackward(blas, dqkv_, datt_, datty, a.qkv, a.att, a.att_drop,
                                                       drop ? a.keep_att : nullptr, p, B, Tn, C, NH));
    RT_RETURN_IF_ERROR(
        LinBack(dtmp_, b.attn_w, b.attn_b, dqkv_, a.ln1, N, C, 3 * C));
    RT_RETURN_IF_ERROR(gpu::LayerNormBackward(dres_, G(b.ln1_w), G(b.ln1_b), dtmp_, x, P(b.ln1_w), a.ln1_mean,
                                              a.ln1_rstd, N, C, stream_));  // dres now d(x)
    if (on_ready) on_ready(b.range.first, b.range.second);
  }
  if (drop) RT_RETURN_IF_ERROR(gpu::DropoutApply(dres_, dres_, keep_emb_, p, NC, stream_));
  RT_RETURN_IF_ERROR(gpu::EmbeddingBackward(G(wte_), G(wpe_), dres_, d_tokens, B, Tn, C, stream_));
  if (on_ready) on_ready(emb_range_.first, emb_range_.second);
  return Status::Ok();
}

}  // namespace ringtrain
