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
- `ddp_step.safetensors`: the same step under PyTorch DistributedDataParallel, two
  processes (gloo backend, per-rank batch norm, DDP's defaults), each on 4 of the 8
  images `input` (rank r: images 4r..4r+4): `input`, `targets` (int64), `loss.<r>`
  (each rank's loss on its part), `after.<key>` for every parameter after the step and `after.<r>.<key>` for each
  rank's running statistics after it (DDP broadcasts rank 0's only at the next forward);
  `grad64.<key>`: the gradient DDP averaged, computed in float64 (stored as float32),
  which the test measures against: this step is ill-conditioned (PyTorch's own float32
  gradients, checked equal on both ranks but not stored, differ from it by up to 8e-2
  from layer3.0 upstream, a ReLU decision that rounding flips; downstream of it they
  agree to 1e-6).
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
- `jpeg.safetensors`: PIL's decoding (`Image.open(f).convert("RGB")`, `[H, W, 3]`
  uint8, `decoded.<file>`) of the small JPEGs in `crates/resnet/tests/images/jpeg/`:
  baseline, progressive and restart intervals at 4:2:0, 4:2:2, 4:4:4 and grey, odd and
  tiny sizes, quality 3 to 100, CMYK and RGB-coded, made by PIL from crops of the photos
  and from a saturated synthetic image; 4:4:0, 4:1:1 and the like by libjpeg-turbo's
  `cjpeg` (see `jpeg_fixture`). The metadata names the Pillow and libjpeg-turbo versions.
- `resnet18_stages.safetensors`, `resnet50_stages.safetensors`,
  `wide_resnet50_2_stages.safetensors`, `wide_resnet101_2_stages.safetensors`:
  torchvision ResNet-18 (batch 2), ResNet-50, Wide ResNet-50-2 and Wide ResNet-101-2
  (batch 1) in eval mode on 64x64 inputs: `input`, and the
  output of `stem` (after the max pool), `layer1`..`layer4`, `features`, `logits`.
- `resnext50_32x4d_stages.safetensors`: the same for torchvision's ResNeXt-50 32x4d
  (grouped 3x3 convolutions), batch 1 on 64x64.
- `resnet50_os8_stages.safetensors`: torchvision's ResNet-50 with
  `replace_stride_with_dilation=[False, True, True]` (output stride 8: layer3 and layer4
  dilated by 2 and 4), batch 1 on 64x64.
- `resnext50_step.safetensors`: one training step of ResNeXt-50 32x4d (batch 2, 64x64,
  training mode, label smoothing 0.1): `input`, `targets`, `loss`, the gradients of the
  stem, of a grouped 3x3 convolution of every stage, of a batch norm and of `fc.bias`
  (`grad.<key>`; all of them would be 100 MB), and running statistics after the step
  (`after.<key>`); the loss and those gradients of the same step in float64 (`loss_f64`,
  `grad64.<key>`), which the test measures against (the step is ill-conditioned).
- `resnet26d_stages.safetensors`: the same for timm's ResNet-26-D (deep stem,
  average-pooling shortcuts; `pip install timm`, random init, nothing downloaded), batch
  1 on 72x72 inputs, so that two shortcut pools see odd sizes (`ceil_mode`).

- `png.safetensors`: PIL's decoding (`convert("RGB")`) of the PNGs in
  `crates/resnet/tests/images/png/`, written by hand for every colour type and bit
  depth, with transparency and Adam7 interlacing (see `png_fixture`).
- `pth/`: PyTorch checkpoints written by `torch.save` for the `.pth` reader: the
  fixture CIFAR ResNet-8 state dict in f32 (`resnet8.pth`), f16 (`resnet8_f16.pth`, and
  the same as `resnet8_f16.safetensors`), bf16, and with parameters and views into one
  shared storage (`resnet8_views.pth`); a transposed (non-contiguous) tensor, a hostile
  pickle that would call `os.system`, a dict that is not a state dict, and the legacy
  (pre-1.6) format.

With `--weights DIR` it writes the generated ResNet-18 and ResNet-50 weights as
torchvision-named `.safetensors` files (46 MB and 102 MB) for trying `resnet classify`
and fine-tuning, and no fixture unless `--only` names some.
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


def _ddp_worker(rank, world, init_file, result_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = CifarResNet(20, 10)
    fill(model)
    model.train()
    ddp = DDP(model)
    x = tensor_of("ddp_input", (8, 3, 32, 32))
    targets = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6], dtype=torch.int64)
    part = slice(4 * rank, 4 * rank + 4)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt.zero_grad()
    loss = F.cross_entropy(ddp(x[part]), targets[part], label_smoothing=0.1)
    loss.backward()
    tensors = {f"loss.{rank}": loss.detach().reshape(1)}
    for key, p in model.named_parameters():
        tensors[f"grad.{key}"] = p.grad.detach().clone()
    opt.step()
    for key, t in model.state_dict().items():
        if key.endswith("running_mean") or key.endswith("running_var"):
            tensors[f"after.{rank}.{key}"] = t.detach().clone()
        elif not key.endswith("num_batches_tracked"):
            tensors[f"after.{key}"] = t.detach().clone()
    if rank == 0:
        tensors["input"] = x
        tensors["targets"] = targets
    torch.save(tensors, os.path.join(result_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def ddp_step_fixture(out):
    """One DDP step on two processes (see the module docs), merged into one file."""
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(_ddp_worker, args=(2, init_file, tmp), nprocs=2, join=True)
        r0 = torch.load(os.path.join(tmp, "rank0.pt"))
        r1 = torch.load(os.path.join(tmp, "rank1.pt"))
    for key, t in r0.items():
        if key.startswith("grad.") or (key.startswith("after.") and key in r1):
            assert torch.equal(t, r1[key]), f"{key} differs between the ranks"
    tensors = {k: v for k, v in r0.items() if not k.startswith("grad.")}
    tensors.update({k: v for k, v in r1.items() if k.startswith("after.1.") or k.startswith("loss.")})
    # The DDP gradient (the mean of the two ranks') in float64.
    x, targets = tensors["input"], tensors["targets"]
    grad64 = {}
    for rank in range(2):
        model = CifarResNet(20, 10)
        fill(model)
        model.double().train()
        part = slice(4 * rank, 4 * rank + 4)
        F.cross_entropy(model(x[part].double()), targets[part], label_smoothing=0.1).backward()
        for key, p in model.named_parameters():
            grad64[key] = grad64.get(key, 0) + 0.5 * p.grad
    for key, g in grad64.items():
        tensors[f"grad64.{key}"] = g.float()
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, "ddp_step.safetensors"))
    print(f"ddp_step: losses {tensors['loss.0'].item():.6f} {tensors['loss.1'].item():.6f}")


# The gradients the ResNeXt step fixture keeps (all of them would be 100 MB): the stem,
# a grouped 3x3 of every stage (two of them strided), a batch norm and the head.
RESNEXT_STEP_GRADS = [
    "conv1.weight",
    "layer1.0.conv2.weight",
    "layer1.0.bn2.weight",
    "layer2.0.conv2.weight",
    "layer3.1.conv2.weight",
    "layer4.0.conv2.weight",
    "fc.bias",
]


def resnext_step_fixture(out):
    """One training step of torchvision's ResNeXt-50 32x4d (batch 2, 64x64, training
    mode, cross-entropy with label smoothing 0.1): the loss, the gradients of
    RESNEXT_STEP_GRADS, and the running statistics of `layer1.0.bn2` (after a grouped
    convolution) and `bn1` after the step."""
    model = torchvision.models.resnext50_32x4d(weights=None)
    fill(model)
    model.train()
    x = tensor_of("input", (2, 3, 64, 64))
    targets = torch.tensor([3, 917], dtype=torch.int64)
    loss = F.cross_entropy(model(x), targets, label_smoothing=0.1)
    loss.backward()
    tensors = {"input": x, "targets": targets, "loss": loss.detach().reshape(1)}
    params = dict(model.named_parameters())
    for key in RESNEXT_STEP_GRADS:
        tensors[f"grad.{key}"] = params[key].grad.detach().clone()
    state = model.state_dict()
    for key in ["layer1.0.bn2.running_mean", "layer1.0.bn2.running_var", "bn1.running_mean", "bn1.running_var"]:
        tensors[f"after.{key}"] = state[key].detach().clone()
    # The same step in float64. This step is ill-conditioned (training-mode batch norm
    # over 8 values a channel at layer4, millions of ReLU decisions): PyTorch's own
    # float32 gradients are 2-5% from the float64 ones, so the test measures ours and
    # PyTorch's against these (`loss_f64`, `grad64.<key>`, rounded to float32).
    m64 = torchvision.models.resnext50_32x4d(weights=None)
    fill(m64)
    m64 = m64.double().train()
    loss64 = F.cross_entropy(m64(x.double()), targets, label_smoothing=0.1)
    loss64.backward()
    tensors["loss_f64"] = loss64.detach().float().reshape(1)
    params64 = dict(m64.named_parameters())
    for key in RESNEXT_STEP_GRADS:
        tensors[f"grad64.{key}"] = params64[key].grad.detach().float().clone()
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, "resnext50_step.safetensors"))
    print(f"resnext50_step: loss {loss.item():.6f}")


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


def timm_model(arch):
    """A timm model with random init (no download), or a clear error without timm."""
    try:
        import timm
    except ImportError:
        raise SystemExit(f"the {arch} fixture needs timm: pip install timm")
    return timm.create_model(arch, pretrained=False)


def stages_fixture(out, arch, batch, size=64, dilate=None, name=None):
    if arch.endswith("d") and arch.startswith("resnet"):
        model = timm_model(arch)
        relu = model.act1
    elif dilate:
        model = getattr(torchvision.models, arch)(weights=None, replace_stride_with_dilation=dilate)
        relu = model.relu
    else:
        model = getattr(torchvision.models, arch)(weights=None)
        relu = model.relu
    fill(model)
    model.eval()
    x = tensor_of("input", (batch, 3, size, size))
    tensors = {"input": x}
    with torch.no_grad():
        h = model.maxpool(relu(model.bn1(model.conv1(x))))
        tensors["stem"] = h
        for i in range(1, 5):
            h = getattr(model, f"layer{i}")(h)
            tensors[f"layer{i}"] = h
        f = torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)
        tensors["features"] = f
        tensors["logits"] = model.fc(f)
    name = name or f"{arch}_stages"
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, f"{name}.safetensors"))
    print(f"{name}: logits[0, :3] = {tensors['logits'][0, :3].tolist()}")


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


# The JPEG stress fixture (`jpeg_fixture`): small files, each (source, (width, height),
# PIL mode, PIL save options). Sources: a crop of `rocket.jpg` or `chelsea.png` at a
# fixed origin (`JPEG_CROP`), or `bars`, a synthetic saturated high-contrast image
# (`synthetic_bars`) that drives the colour conversion and the IDCT into clamping.
JPEG_CROP = {"rocket": ("rocket.jpg", (275, 300)), "chelsea": ("chelsea.png", (150, 75))}
JPEG_FILES = {
    # Baseline, 4:2:0 (subsampling=2), 4:2:2 (1) and 4:4:4 (0), odd sizes.
    "rocket_420_q90_37x29.jpg": ("rocket", (37, 29), "RGB", {"quality": 90, "subsampling": 2}),
    "chelsea_420_q75_33x17.jpg": ("chelsea", (33, 17), "RGB", {"quality": 75, "subsampling": 2}),
    "bars_420_q90_37x29.jpg": ("bars", (37, 29), "RGB", {"quality": 90, "subsampling": 2}),
    "rocket_420_q90_99x67.jpg": ("rocket", (99, 67), "RGB", {"quality": 90, "subsampling": 2}),
    "chelsea_422_q85_35x21.jpg": ("chelsea", (35, 21), "RGB", {"quality": 85, "subsampling": 1}),
    "bars_422_q90_29x19.jpg": ("bars", (29, 19), "RGB", {"quality": 90, "subsampling": 1}),
    "rocket_444_q90_45x31.jpg": ("rocket", (45, 31), "RGB", {"quality": 90, "subsampling": 0}),
    "bars_444_q95_41x23.jpg": ("bars", (41, 23), "RGB", {"quality": 95, "subsampling": 0}),
    # Quality 100 (every quantiser 1) and 3-5 (huge coefficients), optimised Huffman tables.
    "rocket_420_q100_49x37.jpg": ("rocket", (49, 37), "RGB", {"quality": 100, "subsampling": 2}),
    "bars_444_q100_37x29.jpg": ("bars", (37, 29), "RGB", {"quality": 100, "subsampling": 0}),
    "chelsea_420_q3_43x35.jpg": ("chelsea", (43, 35), "RGB", {"quality": 3, "subsampling": 2}),
    "rocket_422_q3_41x27.jpg": ("rocket", (41, 27), "RGB", {"quality": 3, "subsampling": 1}),
    "bars_420_q4_37x29.jpg": ("bars", (37, 29), "RGB", {"quality": 4, "subsampling": 2}),
    "bars_444_q5_33x17.jpg": ("bars", (33, 17), "RGB", {"quality": 5, "subsampling": 0}),
    "rocket_420_optimize_51x39.jpg": (
        "rocket", (51, 39), "RGB",
        {"quality": 90, "subsampling": 2, "optimize": True},
    ),
    "bars_444_optimize_q60_37x29.jpg": (
        "bars", (37, 29), "RGB",
        {"quality": 60, "subsampling": 0, "optimize": True},
    ),
    # Restart intervals (in MCUs, or in MCU rows), baseline and progressive.
    "rocket_420_rst1_53x41.jpg": (
        "rocket", (53, 41), "RGB",
        {"quality": 90, "subsampling": 2, "restart_marker_blocks": 1},
    ),
    "bars_420_rst3_37x29.jpg": (
        "bars", (37, 29), "RGB",
        {"quality": 90, "subsampling": 2, "restart_marker_blocks": 3},
    ),
    "chelsea_422_rstrow1_47x33.jpg": (
        "chelsea", (47, 33), "RGB",
        {"quality": 85, "subsampling": 1, "restart_marker_rows": 1},
    ),
    "bars_444_rstrow2_q100_35x27.jpg": (
        "bars", (35, 27), "RGB",
        {"quality": 100, "subsampling": 0, "restart_marker_rows": 2},
    ),
    "chelsea_grey_rst5_37x29.jpg": ("chelsea", (37, 29), "L", {"quality": 90, "restart_marker_blocks": 5}),
    "rocket_prog420_rst2_45x33.jpg": (
        "rocket", (45, 33), "RGB",
        {"quality": 85, "subsampling": 2, "progressive": True, "restart_marker_blocks": 2},
    ),
    "chelsea_prog444_rstrow1_37x29.jpg": (
        "chelsea", (37, 29), "RGB",
        {"quality": 85, "subsampling": 0, "progressive": True, "restart_marker_rows": 1},
    ),
    "rocket_proggrey_rst1_29x21.jpg": (
        "rocket", (29, 21), "L",
        {"quality": 85, "progressive": True, "restart_marker_blocks": 1},
    ),
    # Progressive, odd sizes.
    "rocket_prog420_37x29.jpg": (
        "rocket", (37, 29), "RGB",
        {"quality": 85, "subsampling": 2, "progressive": True},
    ),
    "chelsea_prog422_35x27.jpg": (
        "chelsea", (35, 27), "RGB",
        {"quality": 85, "subsampling": 1, "progressive": True},
    ),
    "bars_prog444_33x17.jpg": (
        "bars", (33, 17), "RGB",
        {"quality": 90, "subsampling": 0, "progressive": True},
    ),
    "chelsea_prog444_100x75.jpg": (
        "chelsea", (100, 75), "RGB",
        {"quality": 85, "subsampling": 0, "progressive": True},
    ),
    "rocket_proggrey_41x29.jpg": ("rocket", (41, 29), "L", {"quality": 85, "progressive": True}),
    "bars_prog420_q100_29x23.jpg": (
        "bars", (29, 23), "RGB",
        {"quality": 100, "subsampling": 2, "progressive": True},
    ),
    "bars_prog420_q4_37x29.jpg": (
        "bars", (37, 29), "RGB",
        {"quality": 4, "subsampling": 2, "progressive": True},
    ),
    # Grey baseline.
    "chelsea_grey_37x29.jpg": ("chelsea", (37, 29), "L", {"quality": 90}),
    "bars_grey_q5_31x23.jpg": ("bars", (31, 23), "L", {"quality": 5}),
    "rocket_grey_q100_17x13.jpg": ("rocket", (17, 13), "L", {"quality": 100}),
    # Tiny sizes: a chroma plane 1 or 2 samples wide takes its own upsampling path.
    "bars_420_1x1.jpg": ("bars", (1, 1), "RGB", {"quality": 90, "subsampling": 2}),
    "bars_420_2x2.jpg": ("bars", (2, 2), "RGB", {"quality": 90, "subsampling": 2}),
    "bars_420_3x5.jpg": ("bars", (3, 5), "RGB", {"quality": 90, "subsampling": 2}),
    "bars_420_4x4.jpg": ("bars", (4, 4), "RGB", {"quality": 90, "subsampling": 2}),
    "bars_420_17x1.jpg": ("bars", (17, 1), "RGB", {"quality": 90, "subsampling": 2}),
    "bars_420_1x17.jpg": ("bars", (1, 17), "RGB", {"quality": 90, "subsampling": 2}),
    "bars_420_6x6.jpg": ("bars", (6, 6), "RGB", {"quality": 90, "subsampling": 2}),
    "rocket_420_16x16.jpg": ("rocket", (16, 16), "RGB", {"quality": 90, "subsampling": 2}),
    "chelsea_420_2x2.jpg": ("chelsea", (2, 2), "RGB", {"quality": 90, "subsampling": 2}),
    "bars_422_5x3.jpg": ("bars", (5, 3), "RGB", {"quality": 90, "subsampling": 1}),
    "bars_prog420_3x5.jpg": ("bars", (3, 5), "RGB", {"quality": 90, "subsampling": 2, "progressive": True}),
    "bars_prog420_17x1.jpg": ("bars", (17, 1), "RGB", {"quality": 90, "subsampling": 2, "progressive": True}),
    # CMYK (PIL writes it inverted, with an Adobe marker) and RGB-coded (Adobe transform 0).
    "chelsea_cmyk_37x29.jpg": ("chelsea", (37, 29), "CMYK", {"quality": 90}),
    "bars_cmyk_q50_33x17.jpg": ("bars", (33, 17), "CMYK", {"quality": 50}),
    "rocket_cmykprog_29x23.jpg": ("rocket", (29, 23), "CMYK", {"quality": 85, "progressive": True}),
    "bars_rgbcoded_37x29.jpg": ("bars", (37, 29), "RGB", {"quality": 90, "keep_rgb": True}),
}

# Made by libjpeg-turbo's `cjpeg` (samplings PIL cannot ask for), from a PPM written by
# PIL: (source, (width, height), cjpeg options). Committed as made; remade only where
# `cjpeg` is on PATH (made with libjpeg-turbo 2.1.5's cjpeg, Debian libjpeg-turbo-progs).
JPEG_CJPEG = {
    "rocket_440_37x29.jpg": ("rocket", (37, 29), ["-quality", "90", "-sample", "1x2"]),
    "bars_440_29x19.jpg": ("bars", (29, 19), ["-quality", "90", "-sample", "1x2"]),
    "rocket_prog440_33x25.jpg": ("rocket", (33, 25), ["-quality", "85", "-sample", "1x2", "-progressive"]),
    "rocket_411_37x29.jpg": ("rocket", (37, 29), ["-quality", "90", "-sample", "4x1"]),
    "bars_411_45x17.jpg": ("bars", (45, 17), ["-quality", "90", "-sample", "4x1"]),
    "bars_411_7x3.jpg": ("bars", (7, 3), ["-quality", "90", "-sample", "4x1"]),
    "chelsea_rgb_33x17.jpg": ("chelsea", (33, 17), ["-quality", "90", "-rgb"]),
    # Quality 5 without PIL's force_baseline: 16-bit quantisation tables, SOF1 (cjpeg
    # says "quantization tables are too coarse for baseline JPEG").
    "bars_rgb_q5_29x19.jpg": ("bars", (29, 19), ["-quality", "5", "-rgb"]),
    "rocket_luma22_chroma21_37x29.jpg": ("rocket", (37, 29), ["-quality", "90", "-sample", "2x2,2x1,2x1"]),
}

# The eight saturated colours of the synthetic bars.
BAR_COLOURS = [
    (255, 255, 255), (255, 255, 0), (0, 255, 255), (0, 255, 0),
    (255, 0, 255), (255, 0, 0), (0, 0, 255), (0, 0, 0),
]


def synthetic_bars(w, h):
    """A saturated, sharp-edged RGB image of `w` x `h`: colour bars 5 pixels wide in the
    top third, a one-pixel red/blue and green/magenta checkerboard in the middle one,
    black/white diagonals crossed by yellow/blue squares below; under 8 pixels on a side,
    a different saturated colour at each pixel."""
    from PIL import Image

    bars = np.array(BAR_COLOURS, dtype=np.uint8)
    y, x = np.mgrid[0:h, 0:w]
    if w < 8 or h < 8:
        return Image.fromarray(bars[(5 * x + 3 * y) % 8], "RGB")
    out = bars[(x // 5) % 8].copy()
    mid = (y >= h // 3) & (y < 2 * h // 3)
    checker = np.where(((x + y) % 2 == 0)[..., None],
                       np.where((y % 4 < 2)[..., None], bars[5], bars[3]),
                       np.where((y % 4 < 2)[..., None], bars[6], bars[4]))
    out[mid] = checker[mid]
    low = y >= 2 * h // 3
    diag = np.where((((x + 2 * y) // 7) % 2 == 0)[..., None], bars[0], bars[7])
    square = ((x // 3) % 3 == 0) & ((y // 3) % 2 == 0)
    diag = np.where(square[..., None], np.where(((x // 9) % 2 == 0)[..., None], bars[1], bars[6]), diag)
    out[low] = diag[low]
    return Image.fromarray(out, "RGB")


def jpeg_source(image_dir, source, size):
    """The RGB pixels a fixture JPEG is made from: a crop of a photo, or the bars."""
    from PIL import Image

    w, h = size
    if source == "bars":
        return synthetic_bars(w, h)
    name, (x0, y0) = JPEG_CROP[source]
    return Image.open(os.path.join(image_dir, name)).convert("RGB").crop((x0, y0, x0 + w, y0 + h))


def to_cmyk(im):
    """RGB to a CMYK with real black (k = 3/4 of 255 - max) and ink left in C, M and Y
    (PIL's own RGB to CMYK leaves k at 0), so that PIL's CMYK to RGB multiplies."""
    from PIL import Image

    a = np.asarray(im).astype(np.int32)
    k = (255 - a.max(axis=2)) * 3 // 4
    cmy = np.clip(255 - a - k[..., None], 0, 255)
    return Image.fromarray(np.dstack([cmy, k]).astype(np.uint8), "CMYK")


def save_file_sorted_metadata(tensors, path, metadata):
    """`save_file` with the metadata's keys in sorted order: safetensors writes them
    in the order of a Rust `HashMap`, which changes from run to run."""
    import json

    from safetensors.torch import save

    raw = save(tensors, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= n, "the re-ordered header is longer"
    with open(path, "wb") as f:
        f.write(raw[:8] + text + b" " * (n - len(text)) + raw[8 + n :])


def jpeg_fixture(out, image_dir):
    """The JPEG stress fixture: writes `JPEG_FILES` (by PIL) and `JPEG_CJPEG` (by
    `cjpeg`, where it is on PATH; the committed files otherwise) into
    `image_dir/jpeg/`, and `jpeg.safetensors` with `decoded.<file>`: PIL's decoding as
    `Image.open(f).convert("RGB")`, `[H, W, 3]` uint8. The metadata names the Pillow and
    libjpeg-turbo versions that decoded them."""
    import shutil
    import subprocess
    import tempfile

    import PIL
    import PIL.features
    from PIL import Image

    jdir = os.path.join(image_dir, "jpeg")
    os.makedirs(jdir, exist_ok=True)
    for name, (source, size, mode, opts) in JPEG_FILES.items():
        im = jpeg_source(image_dir, source, size)
        im = to_cmyk(im) if mode == "CMYK" else im.convert(mode)
        im.save(os.path.join(jdir, name), "JPEG", **opts)
    cjpeg = shutil.which("cjpeg")
    for name, (source, size, args) in JPEG_CJPEG.items():
        path = os.path.join(jdir, name)
        if cjpeg is None:
            if not os.path.exists(path):
                raise SystemExit(f"jpeg: {path} is missing and cjpeg is not on PATH "
                                 "(apt-get install libjpeg-turbo-progs)")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            ppm = os.path.join(tmp, "in.ppm")
            jpeg_source(image_dir, source, size).save(ppm, "PPM")
            subprocess.run([cjpeg, *args, "-outfile", path, ppm], check=True)
    if cjpeg is None:
        print(f"jpeg: cjpeg is not on PATH: kept the {len(JPEG_CJPEG)} committed cjpeg files")
    tensors = {}
    for name in list(JPEG_FILES) + list(JPEG_CJPEG):
        with Image.open(os.path.join(jdir, name)) as im:
            tensors[f"decoded.{name}"] = torch.from_numpy(np.asarray(im.convert("RGB")).copy())
    metadata = {
        "pillow": PIL.__version__,
        "libjpeg_turbo": str(PIL.features.version("libjpeg_turbo")),
    }
    save_file_sorted_metadata(tensors, os.path.join(out, "jpeg.safetensors"), metadata)
    print(f"jpeg: {len(tensors)} files, decoded by Pillow {metadata['pillow']} "
          f"(libjpeg-turbo {metadata['libjpeg_turbo']})")


def write_png(path, w, h, colortype, bitdepth, pixels, interlace=False, plte=None, trns=None):
    """A PNG written by hand (zlib, filter 0), so that every colour type, bit depth and
    Adam7 interlacing can be made: `pixels` is a `[h, w, samples]` array of the sample
    values (big-endian for 16 bits, packed for depths under 8)."""
    import struct
    import zlib

    samples = pixels.shape[2]

    def pack(row):
        if bitdepth == 16:
            return row.astype(">u2").tobytes()
        if bitdepth == 8:
            return row.astype(np.uint8).tobytes()
        bits = "".join(format(int(v), f"0{bitdepth}b") for v in row.reshape(-1))
        bits += "0" * (-len(bits) % 8)
        return int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""

    raw = b""
    if not interlace:
        for y in range(h):
            raw += b"\0" + pack(pixels[y])
    else:
        # Adam7: seven passes, each a small image of its own rows.
        for x0, y0, dx, dy in [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4),
                               (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]:
            sub = pixels[y0::dy, x0::dx]
            if sub.shape[0] == 0 or sub.shape[1] == 0:
                continue
            for y in range(sub.shape[0]):
                raw += b"\0" + pack(sub[y])

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    out = b"\x89PNG\r\n\x1a\n" + chunk(
        b"IHDR", struct.pack(">IIBBBBB", w, h, bitdepth, colortype, 0, 0, int(interlace)))
    if plte is not None:
        out += chunk(b"PLTE", plte)
    if trns is not None:
        out += chunk(b"tRNS", trns)
    out += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    assert samples >= 1
    with open(path, "wb") as f:
        f.write(out)


def png_fixture(out, image_dir):
    """PNGs of every colour type and bit depth (1, 2, 4, 8, 16; palette with
    transparency; grey with a tRNS colour; 16-bit grey with alpha; Adam7 interlaced) in
    `image_dir/png/`, and `png.safetensors` with `decoded.<file>`: PIL's
    `Image.open(f).convert("RGB")`, `[H, W, 3]` uint8."""
    import struct

    import PIL
    from PIL import Image

    d = os.path.join(image_dir, "png")
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(7)
    w, h = 13, 11
    r = lambda hi, n: rng.integers(0, hi, (h, w, n))  # noqa: E731
    cases = {
        "grey1.png": (0, 1, r(2, 1), {}),
        "grey2.png": (0, 2, r(4, 1), {}),
        "grey4.png": (0, 4, r(16, 1), {}),
        "grey16.png": (0, 16, r(65536, 1), {}),
        "grey8_trns.png": (0, 8, r(256, 1), {"trns": struct.pack(">H", 7)}),
        "greyalpha16.png": (4, 16, r(65536, 2), {}),
        "rgb16.png": (2, 16, r(65536, 3), {}),
        "rgba16.png": (6, 16, r(65536, 4), {}),
        "palette4_trns.png": (3, 4, r(16, 1), {"plte": bytes(rng.integers(0, 256, 48).astype(np.uint8)),
                                                "trns": bytes([0, 128, 255])}),
        "rgb8_adam7.png": (2, 8, r(256, 3), {"interlace": True}),
        "grey16_adam7.png": (0, 16, r(65536, 1), {"interlace": True}),
    }
    tensors = {}
    for name, (ct, bd, px, kw) in cases.items():
        path = os.path.join(d, name)
        write_png(path, w, h, ct, bd, px, **kw)
        with Image.open(path) as im:
            tensors[f"decoded.{name}"] = torch.from_numpy(np.asarray(im.convert("RGB")).copy())
    metadata = {"pillow": PIL.__version__}
    save_file_sorted_metadata(tensors, os.path.join(out, "png.safetensors"), metadata)
    print(f"png: {len(tensors)} files, decoded by Pillow {metadata['pillow']}")


class Evil:
    """Pickles as a call of os.system: what a hostile checkpoint holds."""

    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def pth_fixture(out):
    """PyTorch checkpoints as torch.save writes them, for the `.pth` reader."""
    d = os.path.join(out, "pth")
    os.makedirs(d, exist_ok=True)
    model = CifarResNet(8, 10)
    fill(model)
    sd = model.state_dict()
    torch.save(sd, os.path.join(d, "resnet8.pth"))
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    torch.save(half, os.path.join(d, "resnet8_f16.pth"))
    save_file({k: v.contiguous() for k, v in half.items()}, os.path.join(d, "resnet8_f16.safetensors"))
    bf = {k: (v.bfloat16() if v.is_floating_point() else v) for k, v in sd.items()}
    torch.save(bf, os.path.join(d, "resnet8_bf16.pth"))
    # Parameters (keep_vars), and tensors that are views into one storage at offsets.
    params = model.state_dict(keep_vars=True)
    big = torch.cat([v.detach().reshape(-1) for v in sd.values() if v.is_floating_point()])
    views, at = {}, 0
    for k, v in sd.items():
        if v.is_floating_point():
            views[k] = big[at:at + v.numel()].view(v.shape)
            at += v.numel()
        else:
            views[k] = v
    torch.save({k: params[k] if k.endswith("conv1.weight") else views[k] for k in sd},
               os.path.join(d, "resnet8_views.pth"))
    torch.save({"fc.weight": sd["fc.weight"].t()}, os.path.join(d, "transposed.pth"))
    torch.save({"fc.weight": Evil()}, os.path.join(d, "hostile.pth"))
    torch.save({"model": sd["fc.bias"], "epoch": 3}, os.path.join(d, "not_a_state_dict.pth"))
    torch.save({"fc.bias": sd["fc.bias"]}, os.path.join(d, "legacy.pth"),
               _use_new_zipfile_serialization=False)
    print(f"pth: CIFAR ResNet-8 in f32, f16, bf16 and as views; hostile, legacy and odd files "
          f"(torch {torch.__version__})")


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
    ap.add_argument("--weights", metavar="DIR", help="write resnet18/50 weight files here (only these, unless --only)")
    fixtures = {
        "resnet20_step": lambda out: train_step_fixture(out),
        "ddp_step": lambda out: ddp_step_fixture(out),
        "sgd_steps": lambda out: sgd_fixture(out),
        "schedules": lambda out: schedules_fixture(out),
        "resnet18_stages": lambda out: stages_fixture(out, "resnet18", 2),
        "resnet50_stages": lambda out: stages_fixture(out, "resnet50", 1),
        "wide_resnet50_2_stages": lambda out: stages_fixture(out, "wide_resnet50_2", 1),
        "wide_resnet101_2_stages": lambda out: stages_fixture(out, "wide_resnet101_2", 1),
        # 72 x 72: odd maps (9, 5) before two of the average-pooling shortcuts.
        "resnet26d_stages": lambda out: stages_fixture(out, "resnet26d", 1, 72),
        "resnext50_32x4d_stages": lambda out: stages_fixture(out, "resnext50_32x4d", 1),
        "resnet50_os8_stages": lambda out: stages_fixture(
            out, "resnet50", 1, 64, [False, True, True], "resnet50_os8_stages"
        ),
        "resnext50_step": lambda out: resnext_step_fixture(out),
        "images": lambda out: images_fixture(
            out, os.path.join(here, "..", "crates", "resnet", "tests", "images")
        ),
        "preprocess": lambda out: preprocess_fixture(
            out, os.path.join(here, "..", "crates", "resnet", "tests", "images")
        ),
        "pth": lambda out: pth_fixture(out),
        "png": lambda out: png_fixture(
            out, os.path.join(here, "..", "crates", "resnet", "tests", "images")
        ),
        "jpeg": lambda out: jpeg_fixture(
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
        # `--weights` alone writes only the weight files.
        if (not args.only and not args.weights) or (args.only and name in args.only):
            make(args.out)
    if args.weights:
        weights_files(args.weights)


if __name__ == "__main__":
    main()
