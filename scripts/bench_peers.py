#!/usr/bin/env python3
"""Times this engine against PyTorch and ONNX Runtime on the same machine, in turns.

    pip install torch torchvision onnx onnxscript onnxruntime
    cargo build --release -p resnet-cli
    python3 scripts/bench_peers.py                    # 3 rounds, 2 threads
    python3 scripts/bench_peers.py --cases train --rounds 5 --json
    python3 scripts/bench_peers.py --cases resnet50,resnet50@16,resnet18 --threads 1,2,4,8,16

Cases (the targets of the ResNet and autograd issues):

- `resnet18` .. `resnet152`, `wide_resnet50_2`, `wide_resnet101_2`,
  `resnext50_32x4d`, `resnext101_32x8d`, `resnext101_64x4d`, and timm's
  `resnet26d`, `resnet50d`, `resnet101d` (`pip install timm`; random init, nothing
  downloaded): inference at batch `--batch` (default 1) on 224 x 224 (`resnet bench model`
  for ours; torchvision's (timm's) model in eval mode under `torch.inference_mode`, plain
  and channels-last; the same model exported to ONNX and run by ONNX Runtime with every
  graph optimisation on);
- `NAME@B` (e.g. `resnet50@16`): the inference case `NAME` at batch `B`, whatever
  `--batch` says, so one run can hold batch 1 and batch 16;
- `train`: one training step of the CIFAR ResNet-20 at batch 128 on 32 x 32 (`resnet
  bench train` for ours; for PyTorch forward, cross-entropy, backward and
  `torch.optim.SGD` with momentum 0.9 and weight decay 5e-4, plain and channels-last);
- `train-NAME@B` (e.g. `train-resnet18@16`, `train-resnet50@8`): the same training step
  of the ImageNet net `NAME` (1000 classes) at batch `B` (default 16) on 224 x 224.

`--threads` takes one count or a list (`1,2,4,8,16`): every case runs at each count in
turn (PyTorch's `set_num_threads`, ONNX Runtime's `intra_op_num_threads`, our
`--threads`), and a last table gives each peer's median ratio per thread count. Counts
above the machine's CPUs are skipped with a note (oversubscribed timings mean nothing).

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

    def __init__(self, arch, workdir, batch=1):
        torch.manual_seed(0)
        self.arch = arch
        self.model = build(arch)
        self.x = torch.randn(batch, 3, 224, 224)
        self.model_cl = build(arch)
        self.model_cl.load_state_dict(self.model.state_dict())
        self.model_cl = self.model_cl.to(memory_format=torch.channels_last)
        self.x_cl = self.x.contiguous(memory_format=torch.channels_last)
        # ONNX Runtime: the export, once; a session per thread count (`session`).
        self.onnx_path = None
        self.sessions = {}
        try:
            path = os.path.join(workdir, f"{arch}-b{batch}.onnx")
            # The exporter reports progress on stdout: keep it off the table and JSON.
            with contextlib.redirect_stdout(sys.stderr):
                torch.onnx.export(self.model, (self.x,), path, opset_version=18)
            self.onnx_path = path
        except Exception as e:  # noqa: BLE001 (reported, and the peer left out)
            print(f"onnxruntime: left out for {arch}: {e}", file=sys.stderr)

    def session(self, threads):
        """ONNX Runtime's session with `threads` intra-op threads, checked against
        PyTorch's logits before it is timed; None where it cannot run."""
        if self.onnx_path is None:
            return None
        if threads not in self.sessions:
            try:
                import onnxruntime as ort

                opts = ort.SessionOptions()
                opts.intra_op_num_threads = threads
                opts.inter_op_num_threads = 1
                opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                sess = ort.InferenceSession(
                    self.onnx_path, opts, providers=["CPUExecutionProvider"]
                )
                feed = {sess.get_inputs()[0].name: self.x.numpy()}
                # The export must compute what PyTorch does before it is timed.
                with torch.inference_mode():
                    want = self.model(self.x).numpy()
                got = sess.run(None, feed)[0]
                err = float(abs(got - want).max())
                if err > 1e-3 * float(abs(want).max()) + 1e-4:
                    raise RuntimeError(f"ONNX Runtime's logits differ from PyTorch's by {err}")
                self.sessions[threads] = (sess, feed)
            except Exception as e:  # noqa: BLE001 (reported, and the peer left out)
                print(f"onnxruntime: left out for {self.arch}: {e}", file=sys.stderr)
                self.onnx_path = None
                return None
        return self.sessions[threads]

    def peers(self, threads):
        def torch_run(model, x):
            def run():
                with torch.inference_mode():
                    model(x)

            return run

        out = [
            ("pytorch", torch_run(self.model, self.x)),
            ("pytorch_channels_last", torch_run(self.model_cl, self.x_cl)),
        ]
        session = self.session(threads)
        if session is not None:
            sess, feed = session
            out.append(("onnxruntime", lambda: sess.run(None, feed)))
        return out


class Train:
    """PyTorch's training step: of the CIFAR ResNet-20 at batch 128 on 32 x 32, or of
    an ImageNet net (`arch`) on 224 x 224."""

    def __init__(self, batch=128, arch=None):
        torch.manual_seed(0)
        self.arch = arch
        size, classes = (32, 10) if arch is None else (224, 1000)
        self.x = torch.randn(batch, 3, size, size)
        self.y = torch.randint(0, classes, (batch,))

    def peers(self, threads):  # noqa: ARG002 (PyTorch's count is global)
        def step_of(channels_last):
            model = (CifarResNet(20) if self.arch is None else build(self.arch)).train()
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


def thread_counts(spec):
    """`--threads`: one count or a comma-separated list, each a positive integer."""
    try:
        counts = [int(t) for t in spec.split(",") if t.strip()]
    except ValueError:
        sys.exit(f"--threads {spec!r}: expected a count or a list such as 1,2,4,8,16")
    if not counts or min(counts) < 1:
        sys.exit(f"--threads {spec!r}: expected positive counts")
    return counts


def parse_case(case, default_batch):
    """`NAME` or `NAME@B`: the case and its batch."""
    name, _, batch = case.partition("@")
    if not batch:
        return name, default_batch
    if not batch.isdigit() or int(batch) < 1:
        sys.exit(f"case {case!r}: the batch after @ must be a positive integer")
    if name == "train":
        sys.exit("case 'train' has its own batch (128); drop the @")
    return name, int(batch)


def train_arch(name):
    """The ImageNet net of a `train-NAME` case, else None."""
    return name[len("train-"):] if name.startswith("train-") else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ours", default="target/release/resnet", help="the resnet binary")
    ap.add_argument(
        "--threads", default="2", help="thread count, or a list of them (1,2,4,8,16)"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per run")
    ap.add_argument("--cases", default="resnet50,resnet18,train")
    ap.add_argument(
        "--batch", type=int, default=1,
        help="images per batch of the inference cases without an @B",
    )
    ap.add_argument(
        "--winograd-memory", type=int, default=None,
        help="MiB our inference models may spend on Winograd's costlier layers "
        "(`resnet bench model --winograd-memory`; default: the library's)",
    )
    ap.add_argument("--json", action="store_true", help="one JSON object per measurement")
    args = ap.parse_args()
    if not os.path.exists(args.ours):
        sys.exit(f"{args.ours} not found: build it with `cargo build --release -p resnet-cli`")
    cpus = os.cpu_count() or 1
    counts = []
    for t in thread_counts(args.threads):
        if t > cpus:
            print(f"--threads {t}: skipped, this machine has {cpus} CPUs", file=sys.stderr)
        else:
            counts.append(t)
    if not counts:
        sys.exit("no thread count left to run")
    cases = [parse_case(c, args.batch) for c in args.cases.split(",") if c]
    # An ImageNet training case without an @B trains at batch 16.
    cases = [
        (n, 16 if train_arch(n) and "@" not in c else b)
        for c, (n, b) in zip([c for c in args.cases.split(",") if c], cases)
    ]
    for name, _ in cases:
        if name != "train" and (train_arch(name) or name) not in TORCHVISION + TIMM:
            sys.exit(
                f"unknown case {name!r} (resnet18/34/50/101/152, wide_resnet50_2/101_2, "
                "resnext50_32x4d/resnext101_32x8d/resnext101_64x4d, resnet26d/50d/101d, "
                "each with an optional @batch; train; or train-NAME@B for those nets)"
            )
    if not args.json:
        print(
            f"torch {torch.__version__}, threads {','.join(map(str, counts))}, best of "
            f"{args.seconds} s per run; ratio = peer ms / ours ms in the same round"
        )
    # Median ratio per (case label, peer, threads), for the last table.
    summary = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name, batch in cases:
            label = name if name == "train" else f"{name}@{batch}"
            if name == "train":
                bench, runner = ["train", "--arch", "cifar-resnet20", "--batch", "128"], Train()
                batch, unit = 128, "ms/step"
            elif train_arch(name):
                arch = train_arch(name)
                bench = ["train", "--arch", arch, "--batch", str(batch)]
                runner, unit = Train(batch, arch), "ms/step"
            else:
                bench = ["model", "--arch", name, "--batch", str(batch)]
                if args.winograd_memory is not None:
                    bench += ["--winograd-memory", str(args.winograd_memory)]
                runner = Inference(name, workdir, batch)
                unit = "ms/batch"
            for threads in counts:
                torch.set_num_threads(threads)
                peers = runner.peers(threads)
                ratios = {n: [] for n, _ in peers}
                for r in range(args.rounds):
                    mine = ours(args.ours, threads, bench, args.seconds)
                    times = [("ours", mine)] + [(n, best_of(f, args.seconds)) for n, f in peers]
                    for n, ms in times:
                        if n != "ours":
                            ratios[n].append(ms / mine)
                        if args.json:
                            print(
                                json.dumps(
                                    {
                                        "bench": "peers",
                                        "case": name,
                                        "batch": batch,
                                        "threads": threads,
                                        "round": r + 1,
                                        "impl": n,
                                        "ms": round(ms, 3),
                                        "vs_ours": round(ms / mine, 3),
                                    }
                                ),
                                flush=True,
                            )
                    if not args.json:
                        cells = "  ".join(f"{n} {ms:7.1f}" for n, ms in times)
                        print(f"{label:12} {threads:2} thr round {r + 1}  {unit}: {cells}", flush=True)
                for n, rs in ratios.items():
                    summary[(label, n, threads)] = statistics.median(rs)
                    if not args.json:
                        print(
                            f"{label:12} {threads:2} thr {n} / ours: median "
                            f"{statistics.median(rs):.2f}, range {min(rs):.2f}-{max(rs):.2f} "
                            f"over {len(rs)} rounds"
                        )
    if not args.json and summary:
        # One table: a row per case and thread count, a column per peer.
        names = sorted({n for (_, n, _) in summary})
        print("\nmedian peer ms / ours ms (above 1: we are faster)")
        print(f"{'case':16} {'threads':>7}  " + "  ".join(f"{n:>22}" for n in names))
        for label in dict.fromkeys(k[0] for k in summary):
            for threads in counts:
                cells = [summary.get((label, n, threads)) for n in names]
                text = "  ".join(f"{c:22.2f}" if c is not None else f"{'-':>22}" for c in cells)
                print(f"{label:16} {threads:7}  {text}")


if __name__ == "__main__":
    main()
