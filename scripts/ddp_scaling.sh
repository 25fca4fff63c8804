#!/usr/bin/env bash
# Data-parallel scaling on one machine, interleaved: 1 rank x 2 threads against 2 MPI
# ranks x 1 thread at the same global batch, the latter with the gradient sums
# overlapped (the default), after the backward pass (--no-overlap) and with
# synchronised batch norm. Per-epoch seconds from metrics.csv (the epochs after the
# first), and rank 0's per-step timings.
#
#   cargo build --release -p resnet-cli --features mpi
#   target/release/resnet export-folder --data digits --out /tmp/dfold
#   scripts/ddp_scaling.sh /tmp/dfold cifar-resnet20 32 64 4 3
#   scripts/ddp_scaling.sh /tmp/dfold resnet50 64 8 2 2
set -euo pipefail
folder=$1 arch=$2 size=$3 batch=$4 epochs=$5 rounds=$6
R=target/release/resnet
M="mpirun --allow-run-as-root --oversubscribe -np 2"
common="train --data folder:$folder --arch $arch --size $size --epochs $epochs --val-fraction 0 --overwrite"
tmp=$(mktemp -d)
for round in $(seq "$rounds"); do
  for mode in 1x2 2x1 2x1-no-overlap 2x1-sync-bn; do
    out="$tmp/$mode"
    case $mode in
      1x2) cmd="$R --threads 2 $common --batch $((2 * batch)) --out $out" ;;
      2x1) cmd="$M $R --threads 1 $common --batch $batch --out $out" ;;
      2x1-no-overlap) cmd="$M $R --threads 1 $common --batch $batch --no-overlap --out $out" ;;
      2x1-sync-bn) cmd="$M $R --threads 1 $common --batch $batch --sync-bn --out $out" ;;
    esac
    log=$($cmd 2>&1)
    secs=$(tail -n +3 "$out/metrics.csv" | cut -d, -f9 | tr '\n' ' ')
    comm=$(echo "$log" | grep "^communication" | sed 's/.*per step): //' || true)
    echo "round $round $mode: epoch seconds $secs| $comm"
  done
done
rm -rf "$tmp"
