#!/usr/bin/python3
"""PyTorch reference for `ringtrain bench train`: the same GPT-2 model and training step in eager
PyTorch (or torch.compile), timed on one CPU thread (or OMP_NUM_THREADS threads) or on a GPU.

Usage (Debian's python3-torch, CPU):
  OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \
    /usr/bin/python3 bench/pytorch_gpt.py --config bench/configs/gpt_s.yaml [--steps 20] [--warmup 3] [--json]
On a GPU (issue 10; GPT-2 124M, bf16 autocast with fp32 weights, eager and torch.compile):
  python3 bench/pytorch_gpt.py --config bench/configs/gpt2_124m.yaml --device cuda --dtype bf16 --mode both

--dtype fp32 on a GPU turns TF32 off (ringtrain's fp32 mode); bf16 runs forward and backward under
autocast. Each mode prints tokens/s and, on a GPU whose peak it knows (or with --peak-tflops), MFU
by the formula ringtrain prints: 6N + 12*L*C*T FLOPs per token over the dense bf16 peak.
torch.compile needs PyTorch 2.0+; with an older one that mode is reported as skipped.

It reads the YAML config that `ringtrain` reads and times full optimizer steps: zero_grad, forward,
cross-entropy loss, backward, clip_grad_norm_ (optim.grad_clip), AdamW step (weight decay on 2-D
parameters only), on random token batches of shape (train.batch_size, model.block_size).
Figures, not pass/fail. tokens/step = batch_size * block_size (grad_accum is ignored: 1).
"""
import argparse
import json
import math
import os
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    sys.stderr.write("pytorch_gpt.py: cannot import torch; install python3-torch "
                     "(apt-get install python3-torch) and run with /usr/bin/python3\n")
    sys.exit(1)
try:
    import yaml
except ImportError:
    sys.stderr.write("pytorch_gpt.py: cannot import yaml; install python3-yaml\n")
    sys.exit(1)


def get(cfg, dotted, default):
    """Nested lookup: get(cfg, "model.n_layer", 2). Also accepts flat dotted keys."""
    if dotted in cfg and cfg[dotted] is not None:
        return cfg[dotted]
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node or node[part] is None:
            return default
        node = node[part]
    return node


class Config:
    def __init__(self, cfg):
        self.n_layer = int(get(cfg, "model.n_layer", 2))
        self.n_head = int(get(cfg, "model.n_head", 4))
        self.n_embd = int(get(cfg, "model.n_embd", 64))
        self.block_size = int(get(cfg, "model.block_size", 64))
        vocab = int(get(cfg, "model.vocab_size", 0))
        if vocab <= 0:  # ringtrain takes it from the data; the synthetic source's alphabet
            vocab = int(get(cfg, "data.synthetic.vocab", 16))
        self.vocab_size = vocab
        self.dropout = float(get(cfg, "model.dropout", 0.0))
        self.bias = bool(get(cfg, "model.bias", True))
        self.batch_size = int(get(cfg, "train.batch_size", 16))
        self.lr = float(get(cfg, "optim.lr", 3e-3))
        self.beta1 = float(get(cfg, "optim.beta1", 0.9))
        self.beta2 = float(get(cfg, "optim.beta2", 0.99))
        self.eps = float(get(cfg, "optim.eps", 1e-8))
        self.weight_decay = float(get(cfg, "optim.weight_decay", 0.1))
        self.grad_clip = float(get(cfg, "optim.grad_clip", 1.0))
        self.seed = int(get(cfg, "seed", 1337))
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"model.n_head ({self.n_head}) must divide model.n_embd ({self.n_embd})")


class CausalSelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.n_head = c.n_head
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd, bias=c.bias)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)
        self.attn_drop = nn.Dropout(c.dropout)
        self.resid_drop = nn.Dropout(c.dropout)
        mask = torch.triu(torch.ones(c.block_size, c.block_size, dtype=torch.bool), diagonal=1)
        self.register_buffer("mask", mask, persistent=False)  # True above the diagonal

    def forward(self, x):  # (B,T,C)
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B,nh,T,hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        if x.is_cuda and hasattr(F, "scaled_dot_product_attention"):  # PyTorch 2: fused (flash) attention
            p = self.attn_drop.p if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
            return self.resid_drop(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B,nh,T,T)
        att = att.masked_fill(self.mask[:T, :T], float("-inf"))
        att = self.attn_drop(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c_fc = nn.Linear(c.n_embd, 4 * c.n_embd, bias=c.bias)
        self.c_proj = nn.Linear(4 * c.n_embd, c.n_embd, bias=c.bias)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x):
        return self.drop(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.n_embd, eps=1e-5, elementwise_affine=True)
        self.attn = CausalSelfAttention(c)
        self.ln_2 = nn.LayerNorm(c.n_embd, eps=1e-5, elementwise_affine=True)
        self.mlp = MLP(c)
        if not c.bias:  # LayerNorm without bias (torch 1.13 has no bias=False): freeze a zero bias
            for ln in (self.ln_1, self.ln_2):
                ln.bias.requires_grad_(False)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.drop = nn.Dropout(c.dropout)
        self.h = nn.ModuleList([Block(c) for _ in range(c.n_layer)])
        self.ln_f = nn.LayerNorm(c.n_embd, eps=1e-5)
        if not c.bias:
            self.ln_f.bias.requires_grad_(False)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "ln_" in name:
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, mean=0.0, std=0.02)

    def forward(self, idx, targets):  # idx, targets: (B,T) int64
        B, T = idx.shape
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B,T,C)
        for block in self.h:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.t()  # (B,T,V), tied
        return F.cross_entropy(logits.float().view(B * T, -1), targets.reshape(B * T))


# Dense bf16 tensor-core peaks (TFLOP/s) by device name, most specific first: ringtrain bench
# train's table.
PEAKS = [("H200 NVL", 835.0), ("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4),
         ("A100", 312.0), ("L40S", 362.0), ("A10G", 70.0)]


def main():
    ap = argparse.ArgumentParser(description="PyTorch GPT training-speed reference for ringtrain bench train")
    ap.add_argument("--config", required=True, help="YAML config (the one ringtrain reads)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (default 3)")
    ap.add_argument("--json", action="store_true", help="print one JSON object per mode")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                    help="fp32 (TF32 off on GPUs) or bf16 autocast with fp32 weights")
    ap.add_argument("--mode", choices=["eager", "compile", "both"], default="eager")
    ap.add_argument("--peak-tflops", type=float, default=0.0,
                    help="peak TFLOP/s for MFU (default: the GPU's dense bf16 peak when known)")
    a = ap.parse_args()
    if a.steps < 1 or a.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.stderr.write(f"pytorch_gpt.py: --device {a.device}, but this PyTorch sees no CUDA device\n")
        sys.exit(1)
    if a.device.startswith("cuda") and a.dtype == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    for mode in (["eager", "compile"] if a.mode == "both" else [a.mode]):
        run(a, mode)


def run(a, mode):
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    with open(a.config) as f:
        raw = yaml.safe_load(f) or {}
    c = Config(raw)
    torch.manual_seed(c.seed)

    dev = torch.device(a.device)
    model = GPT(c).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": c.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps)
    model.train()
    fwd = model
    if mode == "compile":
        if not hasattr(torch, "compile"):
            why = f"torch.compile needs PyTorch 2.0+, this is {torch.__version__}"
            print(json.dumps({"mode": mode, "skipped": why}) if a.json else f"pytorch compile: skipped: {why}")
            return
        fwd = torch.compile(model)

    gen = torch.Generator().manual_seed(c.seed)
    B, T = c.batch_size, c.block_size
    bf16 = a.dtype == "bf16"

    def step():
        x = torch.randint(0, c.vocab_size, (B, T), generator=gen).to(dev, non_blocking=True)
        y = torch.randint(0, c.vocab_size, (B, T), generator=gen).to(dev, non_blocking=True)
        optim.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = fwd(x, y)
        loss.backward()
        if c.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
        optim.step()
        return loss.item()  # waits for the device

    for _ in range(a.warmup):
        step()
    ms = []
    loss = 0.0
    for _ in range(a.steps):
        t0 = time.perf_counter()
        loss = step()
        ms.append((time.perf_counter() - t0) * 1000.0)
    mean = sum(ms) / len(ms)
    median = sorted(ms)[len(ms) // 2]
    tokens_per_step = B * T
    tok_s = tokens_per_step / (mean / 1000.0)
    n_params = sum(p.numel() for p in params)
    flops_per_token = 6 * n_params + 12 * c.n_layer * c.n_embd * c.block_size
    tflops = flops_per_token * tok_s / 1e12
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    peak = a.peak_tflops or next((p for part, p in PEAKS if part in name), 0.0)
    if a.json:
        print(json.dumps({"mode": mode, "dtype": a.dtype, "device": name, "tokens_per_s": tok_s,
                          "ms_per_step": mean, "ms_per_step_median": median, "steps": a.steps,
                          "tokens_per_step": tokens_per_step, "threads": threads, "num_params": n_params,
                          "model_flops_per_token": flops_per_token, "model_tflops": tflops,
                          "peak_tflops": peak or None, "mfu": tflops / peak if peak else None,
                          "final_loss": loss, "torch": torch.__version__}))
    else:
        mfu = f", MFU {100 * tflops / peak:.1f}% of {peak:.1f}" if peak else ""
        print(f"pytorch {mode} {a.dtype} on {name}: {mean:.1f} ms/step, {tok_s:.0f} tokens/s, "
              f"{tflops:.3f} TFLOP/s{mfu} (median {median:.1f} ms, {a.steps} steps after {a.warmup} warm-up, "
              f"{threads} threads, {n_params} params, torch {torch.__version__})")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
