#!/usr/bin/env bash
# Memory at scale: the optimizer step alone at 1e5 and 1e6 random Gaussians, bundled `dense` network, with
# the network run in chunks of 65,536 Gaussians (Learn2Splat's default) and without chunking, and a
# released-size network (random weights) at 1e5. One thread, one process at a time. Per row: ms per step,
# the step's peak working memory (peak RSS growth over the RSS before the step, in a fresh child process per
# size and optimizer) and the optimizer state in bytes per Gaussian.
#   bash benchmarks/scale.sh [OUT]      (default OUT: benchmarks/scale)
set -euo pipefail
OUT=${1:-benchmarks/scale}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
l2s-bench micro --sizes 1e5,1e6 --checkpoint dense --repeats 2 --threads 1 \
  --out "$OUT/dense" | tee "$OUT/dense.txt"
l2s-bench micro --sizes 1e5,1e6 --checkpoint dense --repeats 2 --threads 1 --chunk-size 0 \
  --out "$OUT/dense_unchunked" | tee "$OUT/dense_unchunked.txt"
l2s-bench micro --sizes 1e5 --checkpoint released-random --repeats 2 --threads 1 \
  --out "$OUT/released" | tee "$OUT/released.txt"
