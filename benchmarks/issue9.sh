#!/usr/bin/env bash
# The timings behind the fast-CPU-training issue (9): the rasterizer backends side by side, whole training
# steps of Adam and Learn2Splat, and the optimizer step alone, each at 1 and 2 threads (one process at a
# time, so that ratios are measured on a quiet machine). The README's races are rerun with
# `OUT=benchmarks/issue9 bash benchmarks/races.sh beer_dense lego_random beer_sparse`.
#   bash benchmarks/issue9.sh [OUT]      (default OUT: benchmarks/issue9)
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${1:-benchmarks/issue9}
BEER="--scene $DATA/beer --init dense --factor 8 --background 0 0 0"
mkdir -p "$OUT"

for threads in 1 2; do
  export OMP_NUM_THREADS=$threads
  l2s-bench render-speed $BEER --sizes 1e4 --render-size 200 --views 4 --repeats 5 --threads "$threads" \
    --out "$OUT/render_speed_${threads}t" | tee "$OUT/render_speed_${threads}t.txt"
  l2s-bench step-speed $BEER --optimizers adam,l2s:dense --repeats 20 --threads "$threads" \
    --out "$OUT/step_speed_${threads}t" | tee "$OUT/step_speed_${threads}t.txt"
  l2s-bench micro --sizes 1e3,1e4,1e5 --checkpoint dense --repeats 5 --threads "$threads" \
    --out "$OUT/micro_${threads}t" | tee "$OUT/micro_${threads}t.txt"
done
