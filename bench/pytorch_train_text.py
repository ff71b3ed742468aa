"""PyTorch reference training run for a char-level ringtrain config (numerics, not speed).

Trains the same GPT-2 model (bench/pytorch_gpt.py) with the same recipe on the same text file and
split (last val_fraction of the characters), and prints validation loss every eval_interval steps,
so a ringtrain run can be compared with an independent implementation.

  /usr/bin/python3 bench/pytorch_train_text.py --config examples/shakespeare_char.yaml \
      --data ../shared/data/tinyshakespeare/input.txt
"""
import argparse
import math
import os
import sys

import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pytorch_gpt as pg  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    raw = yaml.safe_load(open(a.config)) or {}
    text = open(a.data, encoding="utf-8").read()
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    data = torch.tensor([stoi[ch] for ch in text], dtype=torch.long)
    g = lambda k, d: pg.get(raw, k, d)  # noqa: E731
    raw.setdefault("model", {})["vocab_size"] = len(chars)
    c = pg.Config(raw)
    seed = a.seed if a.seed is not None else c.seed
    torch.manual_seed(seed)
    n_val = int(len(data) * float(g("data.val_fraction", 0.1)))
    train, val = data[: len(data) - n_val], data[len(data) - n_val:]
    model = pg.GPT(c)
    for name, p in model.named_parameters():  # GPT-2 scaled init of residual projections
        if name.endswith("proj.weight"):
            torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": c.weight_decay},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps)
    steps = int(g("train.steps", 2000))
    warmup = int(g("schedule.warmup", 100))
    min_lr = float(g("schedule.min_lr", 1e-4))
    decay = int(g("schedule.decay_steps", 0)) or steps
    eval_interval = int(g("train.eval_interval", 250))
    eval_batches = int(g("train.eval_batches", 200))
    B, T = c.batch_size, c.block_size

    def batch(src):
        ix = torch.randint(len(src) - T - 1, (B,))
        x = torch.stack([src[i:i + T] for i in ix])
        y = torch.stack([src[i + 1:i + 1 + T] for i in ix])
        return x, y

    def lr_at(s):
        if s < warmup:
            return c.lr * (s + 1) / warmup
        r = min(1.0, (s - warmup) / max(1, decay - warmup))
        return min_lr + 0.5 * (1 + math.cos(math.pi * r)) * (c.lr - min_lr)

    for s in range(steps):
        for grp in optim.param_groups:
            grp["lr"] = lr_at(s)
        x, y = batch(train)
        loss = model(x, y)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
        optim.step()
        if (s + 1) % eval_interval == 0 or s + 1 == steps:
            model.eval()
            with torch.no_grad():
                v = sum(model(*batch(val)).item() for _ in range(eval_batches)) / eval_batches
            model.train()
            print(f"step {s + 1}: train loss {loss.item():.4f} val loss {v:.4f}", flush=True)


if __name__ == "__main__":
    main()
