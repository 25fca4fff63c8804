#!/usr/bin/env python3
"""Trains the same ResNet-20 on the same digits split with PyTorch, for comparison with
`resnet train` (docs/training.md).

    pip install torch numpy
    python3 scripts/train_digits_pytorch.py [--threads 2] [--epochs 30]

Same data (crates/resnet/data/digits.csv.gz, every fifth image in the test set, pixels
/16, three equal channels, normalised by the training set's mean and std), same net (the
CIFAR ResNet-20 with option-A shortcuts, PyTorch's default initialisation instead of
ours), same schedule (SGD with Nesterov momentum 0.9, weight decay 5e-4, batch 64, peak
lr 0.1 after a 2-epoch linear warm-up from 0.01, cosine to 0 per step) and the same kind
of augmentation (random crop with 1-pixel zero padding, rotation in [-10, 10] degrees,
bilinear). Prints one line per epoch and the wall time.
"""

import argparse
import gzip
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import CifarResNet  # noqa: E402


def load_digits():
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "crates", "resnet", "data", "digits.csv.gz")
    rows = np.loadtxt(gzip.open(path), delimiter=",", dtype=np.float32)
    x = rows[:, :64].reshape(-1, 1, 8, 8) / 16.0
    y = rows[:, 64].astype(np.int64)
    test = np.arange(len(y)) % 5 == 0
    x = np.repeat(x, 3, axis=1)
    mean, std = x[~test].mean(), x[~test].std()
    x = (x - mean) / std
    return (torch.from_numpy(x[~test]), torch.from_numpy(y[~test])), (torch.from_numpy(x[test]), torch.from_numpy(y[test]))


def augment(x, gen):
    """Rotation in [-10, 10] degrees (bilinear, zero fill), then a 1-pixel padded crop."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 20 - 10) * math.pi / 180
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    padded = F.pad(x, (1, 1, 1, 1))
    out = torch.empty_like(x)
    offs = torch.randint(0, 3, (n, 2), generator=gen)
    for i in range(n):
        dy, dx = offs[i].tolist()
        out[i] = padded[i, :, dy : dy + 8, dx : dx + 8]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    (xtr, ytr), (xte, yte) = load_digits()
    model = CifarResNet(20, 10)
    batch, base_lr, warm = 64, 0.1, 2
    steps_per_epoch = math.ceil(len(ytr) / batch)
    total, warm_steps = args.epochs * steps_per_epoch, warm * steps_per_epoch
    opt = torch.optim.SGD(model.parameters(), lr=base_lr, momentum=0.9, weight_decay=5e-4, nesterov=True)

    def lr_at(t):
        if t < warm_steps:
            return base_lr * (0.1 + 0.9 * t / warm_steps)
        t -= warm_steps
        return base_lr * (1 + math.cos(math.pi * t / max(1, total - warm_steps))) / 2

    start = time.time()
    step = 0
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(ytr), generator=gen)
        for b in range(steps_per_epoch):
            idx = perm[b * batch : (b + 1) * batch]
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            x = augment(xtr[idx], gen)
            loss = F.cross_entropy(model(x), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        model.eval()
        with torch.no_grad():
            acc = (model(xte).argmax(1) == yte).float().mean().item()
        print(f"epoch {epoch + 1:>3}  test acc {100 * acc:.2f}%  {time.time() - start:.1f}s", flush=True)
    print(f"final test accuracy {100 * acc:.2f}% in {time.time() - start:.1f}s ({args.threads} threads, torch {torch.__version__})")


if __name__ == "__main__":
    main()
