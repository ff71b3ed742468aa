"""PyTorch 1.13 (CPU, eager) reference for `ringtrain bench train` on CNN configs (issue 3).

Builds the same LeNet-5 or CIFAR ResNet (basic blocks, BatchNorm, 1x1 projection shortcuts) from a
ringtrain YAML config and times full training steps (forward, cross-entropy, backward, optimizer)
on random images of the config's shape.

  OMP_NUM_THREADS=1 /usr/bin/python3 bench/pytorch_cnn.py --config bench/configs/lenet.yaml --steps 20 --json
"""
import argparse
import json
import os
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml


def get(cfg, dotted, default):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


class LeNet(nn.Module):
    def __init__(self, c, h, classes):
        super().__init__()
        self.conv1 = nn.Conv2d(c, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        s = ((h // 2) - 4) // 2
        self.fc1 = nn.Linear(16 * s * s, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.sc = None
        if stride != 1 or cin != cout:
            self.sc = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        return F.relu(y + (x if self.sc is None else self.sc(x)))


class ResNet(nn.Module):
    def __init__(self, c, depth, width, classes):
        super().__init__()
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(c, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        layers, cin = [], width
        for stage in range(3):
            cout = width << stage
            for b in range(n):
                layers.append(Block(cin, cout, 2 if stage > 0 and b == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (a GPU: the figure for device cuda)")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = yaml.safe_load(open(a.config)) or {}
    arch = get(cfg, "model.type", "lenet")
    c = int(get(cfg, "data.synthetic.channels", 1))
    h = int(get(cfg, "data.synthetic.image_size", 28))
    k = int(get(cfg, "data.synthetic.classes", 10))
    B = int(get(cfg, "train.batch_size", 64))
    torch.manual_seed(1)
    if arch == "lenet":
        model = LeNet(c, h, k)
    else:
        model = ResNet(c, int(get(cfg, "model.depth", 20)), int(get(cfg, "model.width", 16)), k)
    model = model.to(a.device)
    lr = float(get(cfg, "optim.lr", 1e-3))
    if get(cfg, "optim.name", "adam") == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=float(get(cfg, "optim.momentum", 0.9)),
                              weight_decay=float(get(cfg, "optim.weight_decay", 0.0)))
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    x = torch.randn(B, c, h, h, device=a.device)
    y = torch.randint(0, k, (B,), device=a.device)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()  # waits for the device

    for _ in range(a.warmup):
        step()
    ms = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        ms.append((time.perf_counter() - t0) * 1000)
    med = statistics.median(ms)
    out = {"images_per_s": B / (statistics.mean(ms) / 1000), "ms_per_step": statistics.mean(ms),
           "ms_per_step_median": med, "images_per_step": B, "steps": a.steps, "torch": torch.__version__,
           "device": a.device}
    print(json.dumps(out) if a.json else "pytorch: %.1f ms/step, %.0f images/s" % (med, B / (med / 1000)))


if __name__ == "__main__":
    main()
