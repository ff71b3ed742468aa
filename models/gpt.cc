#include "models/gpt.h"

#include <cmath>
#include <cstring>

namespace ringtrain {

StatusOr<GptConfig> GptConfig::FromConfig(const Config& c, int data_vocab) {
  GptConfig g;
  g.n_layer = static_cast<int>(c.Int("model.n_layer"));
  g.n_head = static_cast<int>(c.Int("model.n_head"));
  g.n_embd = static_cast<int>(c.Int("model.n_embd"));
  g.block_size = static_cast<int>(c.Int("model.block_size"));
  g.dropout = static_cast<float>(c.Float("model.dropout"));
  g.bias = c.Bool("model.bias");
  const int64_t v = c.Int("model.vocab_size");
  if (v == 0) {
    g.vocab_size = data_vocab;
  } else {
    if (v < data_vocab)
      return InvalidArgument("config key model.vocab_size = " + std::to_string(v) +
                             " is smaller than the data's vocabulary (" + std::to_string(data_vocab) + ")");
    g.vocab_size = static_cast<int>(v);
  }
  if (g.n_embd % g.n_head != 0)
    return InvalidArgument("config key model.n_head = " + std::to_string(g.n_head) +
                           " must divide model.n_embd = " + std::to_string(g.n_embd));
  return g;
}

Status CheckTensorParallelHeads(int n_head, int t) {
  if (t < 1) return InvalidArgument("parallel.tensor = " + std::to_string(t) + " must be at least 1");
  if (n_head % t != 0)
    return InvalidArgument("parallel.tensor = " + std::to_string(t) + " must divide model.n_head = " +
                           std::to_string(n_head) + " (attention heads are split across the tensor-parallel group)");
  return Status::Ok();
}

Status GptConfig::CheckTensorParallel(int t) const {
  RT_RETURN_IF_ERROR(CheckTensorParallelHeads(n_head, t));
  if (vocab_size < t)
    return InvalidArgument("parallel.tensor = " + std::to_string(t) + " exceeds the vocabulary size " +
                           std::to_string(vocab_size));
  return Status::Ok();
}

template <typename T>
Gpt<T>::Gpt(const GptConfig& cfg, coll::Communicator* tp) : cfg_(cfg), tp_(tp) {
  const Status ok = cfg.CheckTensorParallel(tp_.size());
  RT_CHECK_MSG(ok.ok(), ok.message());
  Register(tp_.rank(), tp_.size());
  arena_.Allocate();
}

template <typename T>
Gpt<T>::Gpt(const GptConfig& cfg, int tp_rank, int tp_size, bool allocate) : cfg_(cfg) {
  Register(tp_rank, tp_size);
  if (allocate) arena_.Allocate();
}

template <typename T>
ParamLayout Gpt<T>::LayoutFor(const GptConfig& cfg, int r, int t) {
  return Gpt<T>(cfg, r, t, false).arena_.layout;
}

template <typename T>
void Gpt<T>::Register(int r, int t) {
  const int C = cfg_.n_embd;
  heads_local_ = cfg_.n_head / t;
  width_local_ = C / t;
  const auto [vb, vl] = SplitRange(cfg_.vocab_size, r, t);
  vocab_begin_ = vb;
  vocab_local_ = static_cast<int>(vl);
  ParamLayout& L = arena_.layout;
  if (t == 1) {
    wte_ = L.Add("wte.weight", {cfg_.vocab_size, C}, true, InitKind::kNormal, 0.02f);
  } else {
    wte_ = L.AddSharded("wte.weight", {cfg_.vocab_size, C}, {{{vb, 0}, {vl, C}}}, true, InitKind::kNormal, 0.02f);
  }
  wpe_ = L.Add("wpe.weight", {cfg_.block_size, C}, true, InitKind::kNormal, 0.02f);
  const float proj_std = 0.02f / std::sqrt(2.0f * static_cast<float>(cfg_.n_layer));
  blocks_.resize(cfg_.n_layer);
  for (int l = 0; l < cfg_.n_layer; ++l) {
    Block& b = blocks_[l];
    const std::string p = "h." + std::to_string(l) + ".";
    b.ln_1.Register(L, p + "ln_1", C, cfg_.bias);
    b.c_attn.RegisterColumnParallel(L, p + "attn.c_attn", C, 3 * C, cfg_.bias, 0.02f, 3, r, t);
    b.c_proj.RegisterRowParallel(L, p + "attn.c_proj", C, C, cfg_.bias, proj_std, r, t);
    b.ln_2.Register(L, p + "ln_2", C, cfg_.bias);
    b.c_fc.RegisterColumnParallel(L, p + "mlp.c_fc", C, 4 * C, cfg_.bias, 0.02f, 1, r, t);
    b.mlp_proj.RegisterRowParallel(L, p + "mlp.c_proj", 4 * C, C, cfg_.bias, proj_std, r, t);
    b.begin = L.spec(b.ln_1.w).offset;
    const int last = b.mlp_proj.b >= 0 ? b.mlp_proj.b : b.mlp_proj.w;
    b.end = L.spec(last).offset + static_cast<size_t>(L.spec(last).numel);
  }
  ln_f_.Register(L, "ln_f", C, cfg_.bias);
}

template <typename T>
void Gpt<T>::PlanActivations(int B, int Tn) {
  RT_CHECK(Tn <= cfg_.block_size);
  if (B <= planB_ && Tn <= planT_) return;
  planB_ = std::max(B, planB_);
  planT_ = std::max(Tn, planT_);
  B = planB_;
  Tn = planT_;
  // C: the residual stream's width; Cl, NH, V: this rank's attention width, heads and vocabulary.
  const int64_t N = static_cast<int64_t>(B) * Tn, C = cfg_.n_embd, Cl = width_local_, V = vocab_local_,
                NH = heads_local_;
  const int64_t att = static_cast<int64_t>(B) * NH * Tn * Tn;
  const bool drop = cfg_.dropout > 0;
  // Sizes first, then carve. Each piece is rounded to 16 elements to keep alignment.
  auto r = [](int64_t n) { return (n + 15) / 16 * 16; };
  int64_t per_block = r(N * C) * 6 + r(N * Cl) + r(N) * 4 + r(N * 3 * Cl) + r(att) * (drop ? 2 : 1) + r(N * 4 * Cl) * 2;
  int64_t total = per_block * cfg_.n_layer + r(N * C) * 2 + r(N) * 5 + r(N * V);
  // Backward scratch: dres, dtmp (N,C), dbig (N,4Cl), dqkv (N,3Cl), attention scratch.
  const int64_t att_scratch = cpu::AttentionScratchSize(Tn);
  total += r(N * C) * 2 + r(N * 4 * Cl) + r(N * 3 * Cl) + r(att_scratch);
  acts_.Resize(static_cast<size_t>(total));
  T* p = acts_.data();
  auto take = [&](int64_t n) {
    T* q = p;
    p += r(n);
    return q;
  };
  int64_t mask_total = drop ? (r(N * C) + cfg_.n_layer * (r(att) + 2 * r(N * C))) : 0;
  masks_.Resize(static_cast<size_t>(mask_total));
  uint8_t* mp = masks_.data();
  auto take_mask = [&](int64_t n) {
    uint8_t* q = mp;
    mp += r(n);
    return q;
  };
  encoded_ = take(N * C);
  keep_emb_ = drop ? take_mask(N * C) : nullptr;
  ba_.assign(cfg_.n_layer, BlockActs{});
  for (auto& a : ba_) {
    a.ln1 = take(N * C);
    a.ln1_mean = take(N);
    a.ln1_rstd = take(N);
    a.qkv = take(N * 3 * Cl);
    a.att = take(att);
    a.att_drop = drop ? take(att) : nullptr;
    a.atty = take(N * Cl);
    a.attproj = take(N * C);
    a.res1 = take(N * C);
    a.ln2 = take(N * C);
    a.ln2_mean = take(N);
    a.ln2_rstd = take(N);
    a.fch = take(N * 4 * Cl);
    a.fch_gelu = take(N * 4 * Cl);
    a.fcproj = take(N * C);
    a.res2 = take(N * C);
    a.keep_att = drop ? take_mask(att) : nullptr;
    a.keep_attproj = drop ? take_mask(N * C) : nullptr;
    a.keep_fcproj = drop ? take_mask(N * C) : nullptr;
  }
  lnf_ = take(N * C);
  lnf_mean_ = take(N);
  lnf_rstd_ = take(N);
  logits_ = take(N * V);
  losses_ = take(N);
  ce_max_ = take(N);
  ce_sum_ = take(N);
  dres_ = take(N * C);
  dtmp_ = take(N * C);
  dbig_ = take(N * 4 * Cl);
  dqkv_ = take(N * 3 * Cl);
  datt_scratch_ = take(att_scratch);
  RT_CHECK(p <= acts_.data() + acts_.size());
}

template <typename T>
double Gpt<T>::Forward(const int32_t* tokens, const int32_t* targets, int B, int Tn, bool train, uint64_t seed,
                       uint64_t dropout_key, int64_t row_begin) {
  PlanActivations(B, Tn);
  const int N = B * Tn, C = cfg_.n_embd, V = vocab_local_, NH = heads_local_, Cl = width_local_;
  const int64_t NC = static_cast<int64_t>(N) * C;
  const int64_t att_row = static_cast<int64_t>(NH) * Tn * Tn;  // one batch row's attention (local heads)
  const int64_t head0 = static_cast<int64_t>(tp_.rank()) * NH;  // first local head's global index
  const T p = static_cast<T>(cfg_.dropout);
  const bool drop = train && cfg_.dropout > 0;
  const bool tp = tp_.active();
  curB_ = B;
  curT_ = Tn;
  cur_dropout_ = drop;
  tokens_.assign(tokens, tokens + N);
  // Mask sites: 0 embedding, then 3 per block. Masks on the residual stream (N,C) are keyed by
  // global batch row, so they match across a TP group; attention masks are keyed by (global row,
  // global head), so each rank draws its own heads' masks, the ones TP = 1 draws for them.
  auto mask = [&](uint8_t* keep, int64_t n, uint64_t site) {
    cpu::DropoutMaskRows(keep, cfg_.dropout, B, n / B, row_begin, seed, dropout_key * 4096 + site);
  };
  auto att_mask = [&](uint8_t* keep, uint64_t site) {
    for (int b = 0; b < B; ++b)
      cpu::DropoutMaskRows(keep + b * att_row, cfg_.dropout, NH, static_cast<int64_t>(Tn) * Tn,
                           (row_begin + b) * cfg_.n_head + head0, seed, dropout_key * 4096 + site);
  };
  // Row-parallel output: partial sums over the group, then the replicated bias.
  auto row_parallel = [&](const Linear<T>& lin, T* out, const T* in, const char* what) {
    if (!tp) return lin.Forward(arena_, out, in, N);
    lin.ForwardNoBias(arena_, out, in, N);
    tp_.AllReduceSum(out, NC, what);
    if (lin.b >= 0) {
      const T* bias = arena_.param(lin.b);
#pragma omp parallel for schedule(static)
      for (int n = 0; n < N; ++n)
        for (int c = 0; c < C; ++c) out[static_cast<int64_t>(n) * C + c] += bias[c];
    }
  };

  if (!tp) {
    cpu::EmbeddingForward(encoded_, tokens, arena_.param(wte_), arena_.param(wpe_), B, Tn, C);
  } else {
    VocabParallelEmbeddingForward(encoded_, tokens, arena_.param(wte_), vocab_begin_, V, N, C);
    tp_.AllReduceSum(encoded_, NC, "token embedding");
    AddPositionEmbedding(encoded_, arena_.param(wpe_), B, Tn, C);
  }
  if (drop) {
    mask(keep_emb_, NC, 0);
    cpu::DropoutApply(encoded_, encoded_, keep_emb_, p, NC);
  }
  const T* x = encoded_;
  for (int l = 0; l < cfg_.n_layer; ++l) {
    Block& b = blocks_[l];
    BlockActs& a = ba_[l];
    b.ln_1.Forward(arena_, a.ln1, a.ln1_mean, a.ln1_rstd, x, N);
    b.c_attn.Forward(arena_, a.qkv, a.ln1, N);
    if (drop) att_mask(a.keep_att, 1 + 3 * l);
    cpu::AttentionForward(a.atty, a.att, a.att_drop, drop ? a.keep_att : nullptr, p, a.qkv, B, Tn, Cl, NH);
    row_parallel(b.c_proj, a.attproj, a.atty, "attention output");
    if (drop) {
      mask(a.keep_attproj, NC, 2 + 3 * l);
      cpu::DropoutApply(a.attproj, a.attproj, a.keep_attproj, p, NC);
    }
    cpu::ResidualForward(a.res1, x, a.attproj, NC);
    b.ln_2.Forward(arena_, a.ln2, a.ln2_mean, a.ln2_rstd, a.res1, N);
    b.c_fc.Forward(arena_, a.fch, a.ln2, N);
    cpu::GeluForward(a.fch_gelu, a.fch, static_cast<int64_t>(N) * 4 * Cl);
    row_parallel(b.mlp_proj, a.fcproj, a.fch_gelu, "MLP output");
    if (drop) {
      mask(a.keep_fcproj, NC, 3 + 3 * l);
      cpu::DropoutApply(a.fcproj, a.fcproj, a.keep_fcproj, p, NC);
    }
    cpu::ResidualForward(a.res2, a.res1, a.fcproj, NC);
    x = a.res2;
  }
  ln_f_.Forward(arena_, lnf_, lnf_mean_, lnf_rstd_, x, N);
  // Output layer tied to the token embedding: logits (N,V) = lnf (N,C) @ wte^T (this rank's
  // vocabulary columns under TP).
  cpu::LinearForward<T>(logits_, lnf_, arena_.param(wte_), nullptr, N, C, V);
  if (!targets) {
    targets_.clear();
    cur_valid_ = 0;
    return 0.0;
  }
  targets_.assign(targets, targets + N);
  cur_valid_ = 0;
  for (int i = 0; i < N; ++i) cur_valid_ += targets[i] >= 0 ? 1 : 0;
  const double sum = tp ? VocabParallelCrossEntropy<T>(losses_, ce_max_, ce_sum_, logits_, targets, N, V,
                                                       vocab_begin_, tp_)
                        : cpu::SoftmaxCrossEntropy<T>(losses_, nullptr, logits_, targets, N, V, T(0));
  return cur_valid_ > 0 ? sum / static_cast<double>(cur_valid_) : 0.0;
}

template <typename T>
void Gpt<T>::Backward(T loss_scale, const GradReadyFn& on_ready) {
  RT_CHECK_MSG(!targets_.empty(), "Backward needs a Forward with targets");
  const int B = curB_, Tn = curT_, N = B * Tn, C = cfg_.n_embd, V = vocab_local_, NH = heads_local_,
            Cl = width_local_;
  const int64_t NC = static_cast<int64_t>(N) * C;
  const T p = static_cast<T>(cfg_.dropout);
  const bool drop = cur_dropout_;
  const bool tp = tp_.active();
  const T scale = cur_valid_ > 0 ? loss_scale / static_cast<T>(cur_valid_) : T(0);
  // dlogits in place of logits.
  if (tp) {
    VocabParallelCrossEntropyBackward<T>(logits_, logits_, ce_max_, ce_sum_, targets_.data(), N, V, vocab_begin_, scale);
  } else {
    cpu::SoftmaxCrossEntropy<T>(losses_, logits_, logits_, targets_.data(), N, V, scale);
  }
  // Output layer: dlnf = dlogits @ wte (summed over the vocabulary parts); dwte += dlogits^T @ lnf.
  cpu::LinearBackward<T>(dtmp_, arena_.grad(wte_), nullptr, logits_, lnf_, arena_.param(wte_), N, C, V);
  tp_.AllReduceSum(dtmp_, NC, "output layer input gradient");
  std::memset(static_cast<void*>(dres_), 0, sizeof(T) * NC);
  const T* xlast = cfg_.n_layer > 0 ? ba_.back().res2 : encoded_;
  ln_f_.Backward(arena_, dres_, dtmp_, xlast, lnf_mean_, lnf_rstd_, N);
  if (on_ready) {
    const ParamSpec& s = arena_.layout.spec(ln_f_.b >= 0 ? ln_f_.b : ln_f_.w);
    on_ready(arena_.layout.spec(ln_f_.w).offset, s.offset + static_cast<size_t>(s.numel));
  }
  for (int l = cfg_.n_layer - 1; l >= 0; --l) {
    Block& b = blocks_[l];
    BlockActs& a = ba_[l];
    const T* x = l > 0 ? ba_[l - 1].res2 : encoded_;
    // MLP branch: dres holds d(res2).
    const T* dfcproj = dres_;
    if (drop) {
      cpu::DropoutApply(dtmp_, dres_, a.keep_fcproj, p, NC);
      dfcproj = dtmp_;
    }
    b.mlp_proj.Backward(arena_, dbig_, dfcproj, a.fch_gelu, N);
    cpu::GeluBackward(dbig_, dbig_, a.fch, static_cast<int64_t>(N) * 4 * Cl);
    b.c_fc.Backward(arena_, dtmp_, dbig_, a.ln2, N);
    tp_.AllReduceSum(dtmp_, NC, "MLP input gradient");
    b.ln_2.Backward(arena_, dres_, dtmp_, a.res1, a.ln2_mean, a.ln2_rstd, N);  // dres now d(res1)
    // Attention branch.
    const T* dattproj = dres_;
    if (drop) {
      cpu::DropoutApply(dtmp_, dres_, a.keep_attproj, p, NC);
      dattproj = dtmp_;
    }
    T* datty = dbig_;  // reuse (N,Cl) of the (N,4Cl) scratch
    b.c_proj.Backward(arena_, datty, dattproj, a.atty, N);
    cpu::AttentionBackward(dqkv_, datt_scratch_, datty, a.qkv, a.att, a.att_drop, drop ? a.keep_att : nullptr, p,
                           B, Tn, Cl, NH);
    b.c_attn.Backward(arena_, dtmp_, dqkv_, a.ln1, N);
    tp_.AllReduceSum(dtmp_, NC, "attention input gradient");
    b.ln_1.Backward(arena_, dres_, dtmp_, x, a.ln1_mean, a.ln1_rstd, N);  // dres now d(x)
    if (on_ready) on_ready(b.begin, b.end);
  }
  if (drop) cpu::DropoutApply(dres_, dres_, keep_emb_, p, NC);
  cpu::EmbeddingBackward(arena_.grad(wte_), arena_.grad(wpe_), dres_, tokens_.data(), B, Tn, C, vocab_begin_, V);
  if (on_ready) {
    const ParamSpec& s = arena_.layout.spec(wpe_);
    on_ready(arena_.layout.spec(wte_).offset, s.offset + static_cast<size_t>(s.numel));
  }
}

template class Gpt<float>;
template class Gpt<double>;

}  // namespace ringtrain
