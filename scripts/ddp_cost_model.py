#!/usr/bin/env python3
"""The data-parallel cost model of docs/distributed.md: the speed-up of N machines over
one, from measured compute per image and the gradients' size, for a ring all-reduce at a
given network bandwidth, with the sums hidden behind the backward pass.

    python3 scripts/ddp_cost_model.py            # the tables of docs/distributed.md

Per step on each machine, with B images per machine:

- compute   T_c = B t_img, of which the backward pass is T_b = f_b T_c;
- all-reduce of G bytes on p machines (ring): T_ar = 2 (p-1)/p G / BW + 2 (p-1) alpha;
- the sums start bucket by bucket during the backward pass, so what shows is
  exposed = max(T_ar - T_b, T_ar k / G)  (k: one bucket, which can only start at the
  end: the last gradients are the first layer's);
- speed-up S(p) = p T_c / (T_c + exposed): images per second of p machines over one;
- communication stops hiding when T_b < T_ar, below B* = T_ar / (f_b t_img) images per
  machine.
"""

import argparse

# Measured on the 2-core Intel host (docs/benchmarks.md, 2026-12-05): seconds per image
# of a training step (forward + backward + update) with 2 threads, and the backward
# pass's share of it (rank 0's forward/backward timings under mpirun).
MODELS = {
    # ResNet-20 at 32 x 32: 2 ranks x 1 thread, batch 64: forward 43 ms + backward 88 ms
    # per rank per step, i.e. 2.05 ms per image per core, 1.02 ms per image for 2 cores.
    "ResNet-20 (32x32, 1.1 MB of gradients)": dict(t_img=1.02e-3, f_b=0.67, grad_bytes=1.08e6),
    # ResNet-50 at 224 x 224, batch 8, 2 threads: 1282 ms per step.
    "ResNet-50 (224x224, 102 MB of gradients)": dict(t_img=1282e-3 / 8, f_b=0.67, grad_bytes=102.2e6),
}
BANDWIDTHS = {"10 Gbit/s": 10e9, "25 Gbit/s": 25e9, "100 Gbit/s": 100e9}
MACHINES = [2, 4, 8, 16, 32, 64]


def model(t_img, f_b, grad_bytes, p, batch, bits, alpha, efficiency, bucket):
    bw = bits / 8 * efficiency
    t_ar = 2 * (p - 1) / p * grad_bytes / bw + 2 * (p - 1) * alpha
    t_c = batch * t_img
    t_b = f_b * t_c
    exposed = max(t_ar - t_b, t_ar * min(1.0, bucket / grad_bytes))
    return p * t_c / (t_c + exposed), t_ar, t_ar / (f_b * t_img)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alpha", type=float, default=25e-6, help="latency per message hop, s (default 25 us, TCP)")
    ap.add_argument("--efficiency", type=float, default=0.9, help="share of the line rate reached (default 0.9)")
    ap.add_argument("--bucket", type=float, default=1 << 20, help="bucket bytes (default 1 MiB)")
    ap.add_argument("--speedup", type=float, default=1.0,
                    help="machines this many times faster than the 2-core host (8: 16 cores)")
    args = ap.parse_args()
    for name, m in MODELS.items():
        t_img = m["t_img"] / args.speedup
        for batch in ([64, 128] if "20" in name else [8, 32]):
            print(f"\n{name}, batch {batch} per machine, compute {1e3 * batch * t_img:.1f} ms per step:\n")
            print("| machines | " + " | ".join(f"{b}: speed-up (all-reduce ms)" for b in BANDWIDTHS) + " |")
            print("|---|" + "---|" * len(BANDWIDTHS))
            for p in MACHINES:
                cells = []
                for bits in BANDWIDTHS.values():
                    s, t_ar, _ = model(t_img, m["f_b"], m["grad_bytes"], p, batch, bits,
                                       args.alpha, args.efficiency, args.bucket)
                    cells.append(f"{s:.1f} ({1e3 * t_ar:.1f})")
                print(f"| {p} | " + " | ".join(cells) + " |")
        print(f"\n{name}: per-machine batch below which the sums no longer hide (B*):\n")
        print("| machines | " + " | ".join(BANDWIDTHS) + " |")
        print("|---|" + "---|" * len(BANDWIDTHS))
        for p in MACHINES:
            cells = []
            for bits in BANDWIDTHS.values():
                _, _, b_star = model(t_img, m["f_b"], m["grad_bytes"], p, 1, bits,
                                     args.alpha, args.efficiency, args.bucket)
                cells.append(f"{b_star:.1f}")
            print(f"| {p} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
