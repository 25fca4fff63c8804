#!/usr/bin/env python3
"""Peak resident memory of one training step: ours against PyTorch's, each in a fresh
process, so that one's memory does not count against the other.

    pip install torch torchvision
    cargo build --release -p resnet-cli
    python3 scripts/train_peak_rss.py --arch resnet18 --batch 16
    python3 scripts/train_peak_rss.py --arch resnet50 --batch 8 --threads 2

Ours: `resnet bench train`, which reports its process's peak RSS (the model, the
optimiser's state, the step's activations and scratch, the binary). PyTorch: a child
Python process that builds torchvision's model (random weights), runs `--steps` steps
(forward, cross-entropy, backward, SGD with momentum and weight decay, as
`scripts/bench_peers.py` times them) plain or channels-last, and reports its own peak
RSS (`ru_maxrss`; the interpreter and libtorch included, as a user running it pays
them). `--arch cifar-resnet20` is the CIFAR ResNet-20 on 32 x 32.
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r"""
import resource, sys, torch, torch.nn.functional as F, torchvision
sys.path.insert(0, {here!r})
arch, batch, steps, cl, threads = {arch!r}, {batch}, {steps}, {cl}, {threads}
torch.set_num_threads(threads)
torch.manual_seed(0)
if arch == "cifar-resnet20":
    from make_fixtures import CifarResNet
    model, size, classes = CifarResNet(20), 32, 10
else:
    model, size, classes = getattr(torchvision.models, arch)(weights=None), 224, 1000
model = model.train()
x = torch.randn(batch, 3, size, size)
y = torch.randint(0, classes, (batch,))
if cl:
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
for _ in range(steps):
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def torch_peak(arch, batch, steps, channels_last, threads):
    code = CHILD.format(
        here=HERE, arch=arch, batch=batch, steps=steps, cl=channels_last, threads=threads
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def ours_peak(binary, arch, batch, threads):
    cmd = [binary, "--threads", str(threads), "bench", "train", "--arch", arch, "--batch",
           str(batch), "--seconds", "1", "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    row = json.loads(out.strip().splitlines()[-1])
    return float(row["peak_rss_mb"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="PyTorch's steps (the first allocates)")
    ap.add_argument("--binary", default=os.path.join(HERE, "..", "target", "release", "resnet"))
    args = ap.parse_args()
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} not found: cargo build --release -p resnet-cli first")
    rows = [
        ("ours", ours_peak(args.binary, args.arch, args.batch, args.threads)),
        ("pytorch", torch_peak(args.arch, args.batch, args.steps, False, args.threads)),
        ("pytorch_channels_last", torch_peak(args.arch, args.batch, args.steps, True, args.threads)),
    ]
    print(f"{args.arch}, batch {args.batch}, {args.threads} threads: peak RSS of a training step")
    for name, mb in rows:
        print(f"  {name:22s} {mb:8.1f} MB   ours / this {rows[0][1] / mb:5.2f}")


if __name__ == "__main__":
    main()
