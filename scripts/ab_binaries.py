#!/usr/bin/env python3
"""Interleaved before/after timing of two `resnet` binaries (a refactor's A/B).

Runs each case with the old binary, then the new one, then the old again, ... for
--rounds rounds (the order alternates each round, so neither side always runs first on a
warm or a cold host), reads the `--json` line each prints, and reports per case the best
and the median of each side and the ratio new / old of both (below 1: the new binary is
faster). On a shared, drifting host only the interleaving makes the two comparable.

    scripts/ab_binaries.py OLD NEW [--rounds 5] [--seconds 2] [--cases all]

Cases: r18b1, r18b16, r50b1, r50b16 (`bench model`, 2 threads), train1, train2 (`bench
train`, ResNet-20 at batch 128, 1 and 2 threads), and, named in --cases only, train18
and train50 (`bench train`, ResNet-18 and ResNet-50 at 224 x 224, batch 8, 2 threads). Build each binary with
`cargo build --release -p resnet-cli` at its commit (a `git worktree` for the old one).
"""

import argparse
import json
import statistics
import subprocess
import sys

CASES = {
    "r18b1": (["--threads", "2", "bench", "model", "--arch", "resnet18", "--batch", "1"], "ms"),
    "r18b16": (["--threads", "2", "bench", "model", "--arch", "resnet18", "--batch", "16"], "ms"),
    "r50b1": (["--threads", "2", "bench", "model", "--arch", "resnet50", "--batch", "1"], "ms"),
    "r50b16": (["--threads", "2", "bench", "model", "--arch", "resnet50", "--batch", "16"], "ms"),
    "train1": (["--threads", "1", "bench", "train"], "ms_per_step"),
    "train2": (["--threads", "2", "bench", "train"], "ms_per_step"),
    # ResNet-18 at 224 x 224, batch 8: the projection shortcuts' blocks (not in ResNet-20).
    "train18": (
        ["--threads", "2", "bench", "train", "--arch", "resnet18", "--batch", "8"],
        "ms_per_step",
    ),
    # ResNet-50 at 224 x 224, batch 8: the scaling issue's training case.
    "train50": (
        ["--threads", "2", "bench", "train", "--arch", "resnet50", "--batch", "8"],
        "ms_per_step",
    ),
}


def run(binary, args, seconds, key):
    out = subprocess.run(
        [binary, *args, "--json", "--seconds", str(seconds)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{"):
            row = json.loads(line)
            if key in row:
                return float(row[key])
    sys.exit(f"no '{key}' in the output of {binary} {' '.join(args)}:\n{out}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--cases", default="all", help="comma-separated, or 'all'")
    a = p.parse_args()
    default = [c for c in CASES if c not in ("train18", "train50")]
    names = default if a.cases == "all" else a.cases.split(",")
    for name in names:
        if name not in CASES:
            sys.exit(f"unknown case {name!r}: {', '.join(CASES)}")
    print(f"case      old best   new best  best new/old   old med   new med  med new/old   ({a.rounds} rounds, interleaved)")
    for name in names:
        args, key = CASES[name]
        times = {"old": [], "new": []}
        for r in range(a.rounds):
            order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
            for side in order:
                times[side].append(run(getattr(a, side), args, a.seconds, key))
        ob, nb = min(times["old"]), min(times["new"])
        om, nm = statistics.median(times["old"]), statistics.median(times["new"])
        print(
            f"{name:<8} {ob:9.2f} {nb:10.2f} {nb / ob:13.3f} {om:9.2f} {nm:9.2f} {nm / om:12.3f}",
            flush=True,
        )
        print("         old: " + " ".join(f"{t:.2f}" for t in times["old"]), flush=True)
        print("         new: " + " ".join(f"{t:.2f}" for t in times["new"]), flush=True)


if __name__ == "__main__":
    main()
