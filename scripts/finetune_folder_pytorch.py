#!/usr/bin/env python3
"""Fine-tunes a torchvision ResNet-18 on an image folder with PyTorch, the way
`resnet train --init ... --data folder:DIR` does, for the comparison in
docs/training.md ("Fine-tuning, step by step").

    pip install torch torchvision safetensors pillow numpy
    python3 scripts/finetune_folder_pytorch.py --data digits-folder \
        --weights w/resnet18-fixture.safetensors [--threads 2] [--epochs 8]

The same recipe as `resnet train` on a folder: images resized (shorter side) and
centre-cropped to --size once, with torchvision's PIL transforms; training
augmentation a random resized crop (area 0.35 to 1) and a horizontal flip; ImageNet
normalisation; the head replaced by a fresh one for the folder's classes; 10% of each
class of the training set held out (seeded) as the validation set that picks the
model; SGD with Nesterov momentum 0.9, weight decay 5e-4, batch 64, the backbone at
--backbone-lr-scale times the head's rate; a 2-epoch linear warm-up from a tenth of
--lr, then cosine to 0, per step. Prints one line per epoch, then the test accuracy of
the model picked by validation, and the wall time.
"""

import argparse
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T
from PIL import Image
from safetensors.torch import load_file

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def load_split(root, size):
    """All images of root/<class>/*, resized and cropped as `resnet` does, as uint8."""
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    prep = T.Compose([T.Resize(size), T.CenterCrop(size)])
    images, labels = [], []
    for label, c in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(root, c))):
            with Image.open(os.path.join(root, c, f)) as im:
                images.append(np.asarray(prep(im.convert("RGB"))))
            labels.append(label)
    return classes, np.stack(images), np.array(labels)


def hold_out(labels, fraction, seed):
    rng = np.random.default_rng(seed)
    val = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            continue
        take = min(max(round(len(idx) * fraction), 1), len(idx) - 1)
        val[rng.permutation(idx)[:take]] = True
    return val


def to_tensor(batch_u8):
    x = torch.from_numpy(batch_u8).permute(0, 3, 1, 2).float() / 255.0
    return T.functional.normalize(x, MEAN, STD)


def evaluate(model, x, y, batch=256):
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            out = model(to_tensor(x[i:i + batch]))
            t = torch.from_numpy(y[i:i + batch])
            loss += F.cross_entropy(out, t, reduction="sum").item()
            correct += (out.argmax(1) == t).sum().item()
    return loss / len(y), correct / len(y)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder with train/ and test/")
    ap.add_argument("--weights", required=True, help="torchvision-named ResNet-18 .safetensors")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--backbone-lr-scale", type=float, default=0.1)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.time()

    classes, x, y = load_split(os.path.join(args.data, "train"), args.size)
    _, xt, yt = load_split(os.path.join(args.data, "test"), args.size)
    val = hold_out(y, args.val_fraction, args.seed)
    xv, yv, x, y = x[val], y[val], x[~val], y[~val]
    print(f"{len(y)} training, {len(yv)} validation, {len(yt)} test images, {len(classes)} classes")

    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(load_file(args.weights), strict=True)
    model.fc = nn.Linear(model.fc.in_features, len(classes))
    head = list(model.fc.parameters())
    backbone = [p for n, p in model.named_parameters() if not n.startswith("fc.")]
    opt = torch.optim.SGD(
        [{"params": backbone, "lr_scale": args.backbone_lr_scale}, {"params": head, "lr_scale": 1.0}],
        lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4,
    )
    batches = math.ceil(len(y) / args.batch)
    warm, total = 2 * batches, args.epochs * batches

    def rate(step):
        if step < warm:
            return args.lr * (0.1 + 0.9 * step / warm)
        t = (step - warm) / max(total - warm, 1)
        return args.lr * 0.5 * (1 + math.cos(math.pi * t))

    augment = T.Compose([T.RandomResizedCrop(args.size, scale=(0.35, 1.0), antialias=True),
                         T.RandomHorizontalFlip()])
    best, step = (-1.0, None, 0), 0
    for epoch in range(args.epochs):
        model.train()
        t0 = time.time()
        order = np.random.default_rng(args.seed + epoch).permutation(len(y))
        loss_sum, correct = 0.0, 0
        for b in range(batches):
            idx = order[b * args.batch:(b + 1) * args.batch]
            xb = torch.stack([augment(im) for im in to_tensor(x[idx])])
            tb = torch.from_numpy(y[idx])
            for g in opt.param_groups:
                g["lr"] = rate(step) * g["lr_scale"]
            out = model(xb)
            loss = F.cross_entropy(out, tb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.item() * len(idx)
            correct += (out.argmax(1) == tb).sum().item()
        vl, va = evaluate(model, xv, yv)
        tl, ta = evaluate(model, xt, yt)
        if va > best[0]:
            best = (va, ta, epoch + 1)
        print(f"epoch {epoch + 1:3}/{args.epochs}  train loss {loss_sum / len(y):.4f} acc "
              f"{100 * correct / len(y):.2f}%  val acc {100 * va:.2f}%  test loss {tl:.4f} acc "
              f"{100 * ta:.2f}%  {time.time() - t0:.1f}s")
    print(f"done in {time.time() - start:.0f} s: final test accuracy {100 * ta:.2f}%; the model "
          f"picked by validation (epoch {best[2]}, {100 * best[0]:.2f}%) has test accuracy "
          f"{100 * best[1]:.2f}%")


if __name__ == "__main__":
    main()
