#!/usr/bin/env python3
"""Writes the PyTorch fixtures the Rust tests compare against.

    pip install torch torchvision safetensors numpy
    python3 scripts/make_fixtures.py            # writes crates/resnet/tests/fixtures/
    python3 scripts/make_fixtures.py --only schedules   # just one of them

Every weight is made by a tiny counter-based generator (splitmix64 of the tensor's
torchvision key and the element index, see `hash_uniform`) that the Rust tests
reimplement, so the fixtures carry inputs and outputs but no weights: the tests rebuild
the very same weights themselves. Batch-norm running statistics and affine parameters
are random too (non-trivial), so folding and normalisation are really exercised.

Files (all float32 unless noted):

- `resnet20_step.safetensors`: one SGD step (lr 0.1, momentum 0.9, weight decay 5e-4,
  label smoothing 0.1) of the CIFAR ResNet-20 in training mode on a batch of 8 images
  32x32: `input`, `targets` (int64), `loss`, `grad.<key>` for every parameter,
  `after.<key>` for every parameter and running statistic after the step.
- `sgd_steps.safetensors`: three steps of torch.optim.SGD on one tensor under three
  settings (`<setting>.p0`, `.g1..g3`, `.p1..p3`).
- `schedules.safetensors`: the learning rate per epoch (base 0.1) under `StepLR`,
  `MultiStepLR`, `CosineAnnealingLR` and `LinearLR` then cosine (`SequentialLR`).
- `images.safetensors`: torchvision's standard evaluation transform (PIL `Resize(256)`,
  `CenterCrop(224)`, `ToTensor`, `Normalize` with the ImageNet statistics) of the photos
  in `crates/resnet/tests/images/`: rows 0, 56, 112, 168 and 223 of each channel
  (`pre.<file>`, `[3, 5, 224]`), and the logits of the fixture ResNet-18 on the whole
  preprocessed image (`logits.<file>`).
- `preprocess.safetensors`: the same transform step by step (PIL's decoding, the
  8-bit resize and crop, the normalised result) on the photos and on images made from
  them in `crates/resnet/tests/images/generated/` (grey, palette, RGBA, upsampled PNGs;
  baseline and progressive JPEGs, 4:2:0 and 4:4:4, grey): see `preprocess_fixture`.
- `resnet18_stages.safetensors`, `resnet50_stages.safetensors`: torchvision ResNet-18
  (batch 2) and ResNet-50 (batch 1) in eval mode on 64x64 inputs: `input`, and the
  output of `stem` (after the max pool), `layer1`..`layer4`, `features`, `logits`.

With `--weights DIR` it also writes the generated ResNet-18 and ResNet-50 weights as
torchvision-named `.safetensors` files (46 MB and 102 MB) for trying `resnet classify`.
"""

import argparse
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

BASE_SEED = 2026
MASK = (1 << 64) - 1


def fnv1a(name: str) -> int:
    h = 0xCBF29CE484222325
    for b in name.encode():
        h ^= b
        h = (h * 0x100000001B3) & MASK
    return h


def hash_uniform(key: str, n: int, lo: float, hi: float) -> np.ndarray:
    """Element i (from 0) is lo + (hi - lo) * u_i with u_i the top 24 bits of
    splitmix64(seed + (i + 1) * golden) over 2^24, seed = fnv1a(key) ^ BASE_SEED; the
    arithmetic is in float64, rounded to float32 at the end."""
    seed = np.uint64(fnv1a(key) ^ BASE_SEED)
    i = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = seed + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float64) / float(1 << 24)
    return (lo + (hi - lo) * u).astype(np.float32)


def fixture_range(key: str, shape) -> tuple:
    """The generator's range for a tensor, by its key and shape (mirrored in Rust)."""
    if key.endswith("running_var"):
        return 0.5, 2.0
    if key.endswith("running_mean"):
        return -0.2, 0.2
    if len(shape) == 4:  # conv weight: He uniform, var = 2 / fan_in
        fan_in = shape[1] * shape[2] * shape[3]
        b = (6.0 / fan_in) ** 0.5
        return -b, b
    if key.startswith("fc."):
        b = 1.0 / (FC_IN[0] ** 0.5)
        return -b, b
    if key.endswith(".weight"):  # batch-norm gamma
        return 0.5, 1.0
    return -0.2, 0.2  # batch-norm beta


FC_IN = [1]


def fill(model: nn.Module):
    FC_IN[0] = model.fc.in_features
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if key.endswith("num_batches_tracked"):
                continue
            lo, hi = fixture_range(key, t.shape)
            t.copy_(torch.from_numpy(hash_uniform(key, t.numel(), lo, hi)).reshape(t.shape))


class CifarBlock(nn.Module):
    """The CIFAR paper's basic block with the option-A shortcut."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, (cout - cin) // 2
        self.option_a = stride != 1 or cin != cout

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x
        if self.option_a:
            sc = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + sc)


class CifarResNet(nn.Module):
    def __init__(self, depth=20, classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for s, width in enumerate([16, 32, 64]):
            blocks = []
            for b in range(n):
                stride = 2 if s > 0 and b == 0 else 1
                blocks.append(CifarBlock(cin, width, stride))
                cin = width
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def tensor_of(key, shape, lo=-1.0, hi=1.0):
    n = int(np.prod(shape))
    return torch.from_numpy(hash_uniform(key, n, lo, hi)).reshape(shape)


def train_step_fixture(out):
    model = CifarResNet(20, 10)
    fill(model)
    model.train()
    x = tensor_of("input", (8, 3, 32, 32))
    targets = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6], dtype=torch.int64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt.zero_grad()
    loss = F.cross_entropy(model(x), targets, label_smoothing=0.1)
    loss.backward()
    tensors = {"input": x, "targets": targets, "loss": loss.detach().reshape(1)}
    for key, p in model.named_parameters():
        tensors[f"grad.{key}"] = p.grad.detach().clone()
    opt.step()
    for key, t in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            tensors[f"after.{key}"] = t.detach().clone()
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, "resnet20_step.safetensors"))
    print(f"resnet20_step: loss {loss.item():.6f}")


def sgd_fixture(out):
    settings = {
        "momentum": dict(lr=0.1, momentum=0.9, weight_decay=5e-4),
        "nesterov": dict(lr=0.05, momentum=0.9, weight_decay=1e-4, nesterov=True),
        "dampening": dict(lr=0.2, momentum=0.5, dampening=0.1),
    }
    tensors = {}
    for name, cfg in settings.items():
        p = torch.nn.Parameter(tensor_of(f"{name}.p0", (37,)))
        tensors[f"{name}.p0"] = p.detach().clone()
        opt = torch.optim.SGD([p], **cfg)
        for step in range(1, 4):
            g = tensor_of(f"{name}.g{step}", (37,))
            p.grad = g.clone()
            opt.step()
            tensors[f"{name}.g{step}"] = g
            tensors[f"{name}.p{step}"] = p.detach().clone()
    save_file(tensors, os.path.join(out, "sgd_steps.safetensors"))
    print("sgd_steps: 3 settings x 3 steps")


def schedules_fixture(out):
    """The learning rate per epoch of torch.optim.lr_scheduler's schedules (base 0.1),
    as `<name>` ([epochs]); the Rust test rebuilds each as an `autograd::Schedule`."""
    def run(make, epochs):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        sched = make(opt)
        lrs = []
        for _ in range(epochs):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return torch.tensor(lrs, dtype=torch.float32)

    lr_s = torch.optim.lr_scheduler
    tensors = {
        "step": run(lambda o: lr_s.StepLR(o, step_size=3, gamma=0.1), 12),
        "multistep": run(lambda o: lr_s.MultiStepLR(o, milestones=[4, 9], gamma=0.2), 12),
        # Up to t_max: past it PyTorch's cosine climbs back, where ours holds eta_min.
        "cosine": run(lambda o: lr_s.CosineAnnealingLR(o, T_max=10, eta_min=0.001), 11),
        "warmup_cosine": run(
            lambda o: lr_s.SequentialLR(
                o,
                [lr_s.LinearLR(o, start_factor=0.1, total_iters=5), lr_s.CosineAnnealingLR(o, T_max=10)],
                milestones=[5],
            ),
            16,
        ),
    }
    save_file(tensors, os.path.join(out, "schedules.safetensors"))
    print("schedules: " + ", ".join(tensors))


def stages_fixture(out, arch, batch):
    model = getattr(torchvision.models, arch)(weights=None)
    fill(model)
    model.eval()
    x = tensor_of("input", (batch, 3, 64, 64))
    tensors = {"input": x}
    with torch.no_grad():
        h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        tensors["stem"] = h
        for i in range(1, 5):
            h = getattr(model, f"layer{i}")(h)
            tensors[f"layer{i}"] = h
        f = torch.flatten(model.avgpool(h), 1)
        tensors["features"] = f
        tensors["logits"] = model.fc(f)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, f"{arch}_stages.safetensors"))
    print(f"{arch}_stages: logits[0, :3] = {tensors['logits'][0, :3].tolist()}")


IMAGE_ROWS = [0, 56, 112, 168, 223]


def images_fixture(out, image_dir):
    from PIL import Image
    from torchvision import transforms

    tf = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    model = torchvision.models.resnet18(weights=None)
    fill(model)
    model.eval()
    tensors = {}
    for name in sorted(os.listdir(image_dir)):
        if not name.endswith((".png", ".jpg")):
            continue
        x = tf(Image.open(os.path.join(image_dir, name)).convert("RGB"))
        tensors[f"pre.{name}"] = x[:, IMAGE_ROWS, :].contiguous()
        with torch.no_grad():
            tensors[f"logits.{name}"] = model(x.unsqueeze(0))[0].contiguous()
    save_file(tensors, os.path.join(out, "images.safetensors"))
    print(f"images: {sorted(k for k in tensors if k.startswith('pre.'))}")


# The images the preprocessing parity test reads, made from the two photos by PIL
# (`preprocess_fixture`), each exercising one way an image reaches `convert("RGB")`
# and one size class: downsampled (both sides over 256) or upsampled.
GENERATED = {
    "rgb.png": ("chelsea.png", "RGB", {}),
    "grey.png": ("chelsea.png", "L", {}),
    "palette.png": ("chelsea.png", "P", {}),
    "rgba.png": ("chelsea.png", "RGBA", {}),
    "small.png": ("chelsea.png", "RGB", {"size": (131, 97)}),
    "baseline420.jpg": ("rocket.jpg", "RGB", {"quality": 90, "subsampling": 2}),
    "baseline444.jpg": ("rocket.jpg", "RGB", {"quality": 90, "subsampling": 0}),
    "progressive420.jpg": ("rocket.jpg", "RGB", {"quality": 85, "subsampling": 2, "progressive": True}),
    "progressive444.jpg": ("rocket.jpg", "RGB", {"quality": 85, "subsampling": 0, "progressive": True}),
    "grey.jpg": ("rocket.jpg", "L", {"quality": 90}),
}


def make_generated(image_dir):
    """Writes `GENERATED` into `image_dir/generated/` (deterministic: PIL's encoders)."""
    from PIL import Image

    gen = os.path.join(image_dir, "generated")
    os.makedirs(gen, exist_ok=True)
    for name, (src, mode, opts) in GENERATED.items():
        im = Image.open(os.path.join(image_dir, src)).convert("RGB")
        opts = dict(opts)
        size = opts.pop("size", None)
        # A 320-wide crop keeps the files small; both sides stay over 256 or (`size`)
        # well under it.
        im = im.crop((0, 0, 320, 280))
        if size:
            im = im.resize(size, Image.NEAREST)
        if mode == "P":
            im = im.quantize(colors=64)
        elif mode == "RGBA":
            im = im.convert("RGBA")
            alpha = Image.linear_gradient("L").resize(im.size)
            im.putalpha(alpha)
        else:
            im = im.convert(mode)
        im.save(os.path.join(gen, name), **opts)
    return [os.path.join("generated", n) for n in GENERATED]


def preprocess_fixture(out, image_dir):
    """torchvision's evaluation transform, step by step, on every test image.

    - `decoded.<name>`: PIL's decoding, converted to RGB as `ImageFolder` does
      (`Image.open(f).convert("RGB")`), `[H, W, 3]` uint8; for the JPEGs only (what
      the decoder comparison needs; PNG decoding is exact by construction).
    - `crop.<name>`: after `Resize(256)` and `CenterCrop(224)` (PIL, 8-bit), `[224, 224,
      3]` uint8: the resize is compared bit for bit.
    - `eval.<name>`: the whole transform (`ToTensor`, `Normalize`), rows `IMAGE_ROWS` of
      each channel, `[3, 5, 224]` float32.
    """
    import numpy as np
    from PIL import Image
    from torchvision import transforms

    names = ["chelsea.png", "rocket.jpg"] + make_generated(image_dir)
    crop = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    norm = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    )
    tensors = {}
    for name in names:
        key = name.replace("generated/", "")
        im = Image.open(os.path.join(image_dir, name)).convert("RGB")
        if name.endswith(".jpg"):
            tensors[f"decoded.{key}"] = torch.from_numpy(np.asarray(im).copy())
        c = crop(im)
        tensors[f"crop.{key}"] = torch.from_numpy(np.asarray(c).copy())
        tensors[f"eval.{key}"] = norm(c)[:, IMAGE_ROWS, :].contiguous()
    save_file(tensors, os.path.join(out, "preprocess.safetensors"))
    print(f"preprocess: {len(names)} images")


def weights_files(out):
    os.makedirs(out, exist_ok=True)
    for arch in ["resnet18", "resnet50"]:
        model = getattr(torchvision.models, arch)(weights=None)
        fill(model)
        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        path = os.path.join(out, f"{arch}-fixture.safetensors")
        save_file(sd, path)
        print(f"wrote {path}")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.join(here, "..", "crates", "resnet", "tests", "fixtures")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=default_out, help="fixture folder (default: %(default)s)")
    ap.add_argument("--weights", metavar="DIR", help="also write resnet18/50 weight files here")
    fixtures = {
        "resnet20_step": lambda out: train_step_fixture(out),
        "sgd_steps": lambda out: sgd_fixture(out),
        "schedules": lambda out: schedules_fixture(out),
        "resnet18_stages": lambda out: stages_fixture(out, "resnet18", 2),
        "resnet50_stages": lambda out: stages_fixture(out, "resnet50", 1),
        "images": lambda out: images_fixture(
            out, os.path.join(here, "..", "crates", "resnet", "tests", "images")
        ),
        "preprocess": lambda out: preprocess_fixture(
            out, os.path.join(here, "..", "crates", "resnet", "tests", "images")
        ),
    }
    ap.add_argument(
        "--only", choices=sorted(fixtures), action="append", help="write only this fixture (repeatable)"
    )
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    for name, make in fixtures.items():
        if not args.only or name in args.only:
            make(args.out)
    if args.weights:
        weights_files(args.weights)


if __name__ == "__main__":
    main()
