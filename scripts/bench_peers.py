#!/usr/bin/env python3
"""Times this engine against PyTorch and ONNX Runtime on the same machine, in turns.

    pip install torch torchvision onnx onnxscript onnxruntime
    cargo build --release -p resnet-cli
    python3 scripts/bench_peers.py                    # 3 rounds, 2 threads
    python3 scripts/bench_peers.py --cases train --rounds 5 --json

Cases (the targets of the ResNet and autograd issues):

- `resnet18` .. `resnet152`, `wide_resnet50_2`, `wide_resnet101_2`,
  `resnext50_32x4d`, `resnext101_32x8d`, `resnext101_64x4d`, and timm's
  `resnet26d`, `resnet50d`, `resnet101d` (`pip install timm`; random init, nothing
  downloaded): inference at batch `--batch` (default 1) on 224 x 224 (`resnet bench model`
  for ours; torchvision's (timm's) model in eval mode under `torch.inference_mode`, plain
  and channels-last; the same model exported to ONNX and run by ONNX Runtime with every
  graph optimisation on);
- `train`: one training step of the CIFAR ResNet-20 at batch 128 on 32 x 32 (`resnet
  bench train` for ours; for PyTorch forward, cross-entropy, backward and
  `torch.optim.SGD` with momentum 0.9 and weight decay 5e-4, plain and channels-last).

This host's speed drifts by tens of percent from minute to minute, so figures from
different minutes cannot be compared. Each round therefore runs every implementation of
a case back to back, and the ratios are taken within a round. Every implementation
reports the best of its timed runs over `--seconds` after a warm-up, as `resnet bench`
does. Weights are random (seeded): speed does not depend on their values.
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import CifarResNet  # noqa: E402


def best_of(run, seconds):
    """Warms up, then calls `run` until `seconds` have passed; the best time in ms."""
    run()
    run()
    best, start = float("inf"), time.perf_counter()
    while True:
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() - start >= seconds:
            return best * 1e3


def ours(binary, threads, args, seconds):
    cmd = [binary, "--threads", str(threads), "bench", *args, "--seconds", str(seconds), "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    row = json.loads(out.strip().splitlines()[-1])
    return row["ms"] if "ms" in row else row["ms_per_step"]


TORCHVISION = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
               "wide_resnet50_2", "wide_resnet101_2",
               "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d")
TIMM = ("resnet26d", "resnet50d", "resnet101d")


def build(arch):
    """A fresh model in eval mode: torchvision's, or timm's for the ResNet-D names."""
    if arch in TIMM:
        from make_fixtures import timm_model

        return timm_model(arch).eval()
    return getattr(torchvision.models, arch)(weights=None).eval()


class Inference:
    """torchvision's (or timm's) model and its ONNX export, built once and timed every
    round."""

    def __init__(self, arch, threads, workdir, batch=1):
        torch.manual_seed(0)
        self.arch = arch
        self.model = build(arch)
        self.x = torch.randn(batch, 3, 224, 224)
        self.model_cl = build(arch)
        self.model_cl.load_state_dict(self.model.state_dict())
        self.model_cl = self.model_cl.to(memory_format=torch.channels_last)
        self.x_cl = self.x.contiguous(memory_format=torch.channels_last)
        self.ort = None
        try:
            import onnxruntime as ort

            path = os.path.join(workdir, f"{arch}.onnx")
            # The exporter reports progress on stdout: keep it off the table and JSON.
            with contextlib.redirect_stdout(sys.stderr):
                torch.onnx.export(self.model, (self.x,), path, opset_version=18)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self.ort = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            self.ort_input = {self.ort.get_inputs()[0].name: self.x.numpy()}
            # The export must compute what PyTorch does before it is timed.
            with torch.inference_mode():
                want = self.model(self.x).numpy()
            got = self.ort.run(None, self.ort_input)[0]
            err = float(abs(got - want).max())
            if err > 1e-3 * float(abs(want).max()) + 1e-4:
                raise RuntimeError(f"ONNX Runtime's logits differ from PyTorch's by {err}")
        except Exception as e:  # noqa: BLE001 (reported, and the peer left out)
            print(f"onnxruntime: left out for {arch}: {e}", file=sys.stderr)
            self.ort = None

    def peers(self):
        def torch_run(model, x):
            def run():
                with torch.inference_mode():
                    model(x)

            return run

        out = [
            ("pytorch", torch_run(self.model, self.x)),
            ("pytorch_channels_last", torch_run(self.model_cl, self.x_cl)),
        ]
        if self.ort is not None:
            out.append(("onnxruntime", lambda: self.ort.run(None, self.ort_input)))
        return out


class Train:
    """PyTorch's training step of the CIFAR ResNet-20 at batch 128."""

    def __init__(self, batch=128):
        torch.manual_seed(0)
        self.x = torch.randn(batch, 3, 32, 32)
        self.y = torch.randint(0, 10, (batch,))

    def peers(self):
        def step_of(channels_last):
            model = CifarResNet(20).train()
            x = self.x
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

            def run():
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), self.y).backward()
                opt.step()

            return run

        return [("pytorch", step_of(False)), ("pytorch_channels_last", step_of(True))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ours", default="target/release/resnet", help="the resnet binary")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per run")
    ap.add_argument("--cases", default="resnet50,resnet18,train")
    ap.add_argument("--batch", type=int, default=1, help="images per batch of the inference cases")
    ap.add_argument("--json", action="store_true", help="one JSON object per measurement")
    args = ap.parse_args()
    if not os.path.exists(args.ours):
        sys.exit(f"{args.ours} not found: build it with `cargo build --release -p resnet-cli`")
    torch.set_num_threads(args.threads)
    cases = [c for c in args.cases.split(",") if c]
    if not args.json:
        print(
            f"torch {torch.__version__}, {args.threads} threads, best of {args.seconds} s "
            "per run; ratio = peer ms / ours ms in the same round"
        )
    with tempfile.TemporaryDirectory() as workdir:
        for case in cases:
            if case == "train":
                bench, peers = ["train", "--arch", "cifar-resnet20", "--batch", "128"], Train().peers()
                batch, unit = 128, "ms/step"
            elif case in TORCHVISION + TIMM:
                bench = ["model", "--arch", case, "--batch", str(args.batch)]
                peers = Inference(case, args.threads, workdir, args.batch).peers()
                batch, unit = args.batch, "ms/batch"
            else:
                sys.exit(
                    f"unknown case {case!r} (resnet18/34/50/101/152, wide_resnet50_2/101_2, "
                    "resnext50_32x4d/resnext101_32x8d/resnext101_64x4d, resnet26d/50d/101d or train)"
                )
            ratios = {name: [] for name, _ in peers}
            for r in range(args.rounds):
                mine = ours(args.ours, args.threads, bench, args.seconds)
                times = [("ours", mine)] + [(n, best_of(f, args.seconds)) for n, f in peers]
                for name, ms in times:
                    if name != "ours":
                        ratios[name].append(ms / mine)
                    if args.json:
                        print(
                            json.dumps(
                                {
                                    "bench": "peers",
                                    "case": case,
                                    "batch": batch,
                                    "threads": args.threads,
                                    "round": r + 1,
                                    "impl": name,
                                    "ms": round(ms, 3),
                                    "vs_ours": round(ms / mine, 3),
                                }
                            ),
                            flush=True,
                        )
                if not args.json:
                    cells = "  ".join(f"{n} {ms:7.1f}" for n, ms in times)
                    print(f"{case:9} round {r + 1}  {unit}: {cells}", flush=True)
            if not args.json:
                for name, rs in ratios.items():
                    print(
                        f"{case:9} {name} / ours: median {statistics.median(rs):.2f}, "
                        f"range {min(rs):.2f}-{max(rs):.2f} over {len(rs)} rounds"
                    )


if __name__ == "__main__":
    main()
