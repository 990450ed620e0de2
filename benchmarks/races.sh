#!/usr/bin/env bash
# The benchmark races behind the README's tables. One optimizer per process (one thread each) so that a
# 2-core machine runs two at a time; the per-optimizer results are then merged, and the same l2s-bench
# command resumes all of them from the merged results.json to print the table and draw psnr.png.
#   OUT=benchmarks/issue13 bash benchmarks/races.sh RACE...
# Races on the scenes held out of meta-training (issue 13): room_dense gold_cape_random lego_held room_sparse
# (images of about 100-125 px: what this project's 2-core CPU could afford, not the issue's 250 px), and the
# same three dense races over the issue's 2,000 steps: room_dense_2k gold_cape_random_2k lego_held_2k;
# selection races on training scenes' held-out views (issue 13's ablation): flower_select dtu_select
# beer_sparse_select;
# earlier ones (issue 5, on training scenes): beer_dense beer_sparse lego_random synthetic_10k.
# CANDIDATES="l2s:runs/x/model ..." adds checkpoints under evaluation to every race; PARALLEL=1 runs one
# optimizer at a time (default 2).
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/issue5}
export OMP_NUM_THREADS=1

race_args() {
  case $1 in
    beer_dense) echo "--scene $DATA/beer --init dense --factor 8 --background 0 0 0 --steps 2000 --tune-steps 200";;
    beer_sparse) echo "--scene $DATA/beer --init sparse --factor 8 --background 0 0 0 --steps 1000 --tune-steps 200";;
    lego_random) echo "--scene $DATA/lego_200 --init random --n-random 10000 --factor 2 --background 1 1 1 --steps 1000 --tune-steps 200";;
    synthetic_10k) echo "--scene synthetic --init dense --background 0 0 0 --steps 10000";;
    flower_select) echo "--scene $DATA/llff_flower --init dense --factor 4 --background 0 0 0 --steps 500 --tune-steps 150";;
    beer_sparse_select) echo "--scene $DATA/beer --init sparse --factor 8 --background 0 0 0 --steps 500 --tune-steps 200";;
    dtu_select) echo "--scene $DATA/dtu_scan65 --init random --n-random 3000 --factor 4 --background 0 0 0 --steps 500 --tune-steps 150";;
    room_dense) echo "--scene $DATA/llff_room --init dense --factor 4 --background 0 0 0 --steps 1000 --tune-steps 300";;
    gold_cape_random) echo "--scene $DATA/nerd_gold_cape --init random --n-random 10000 --factor 4 --background 0 0 0 --steps 1000 --tune-steps 300";;
    lego_held) echo "--scene $DATA/lego_200 --init random --n-random 10000 --factor 2 --background 0 0 0 --steps 1000 --tune-steps 300";;
    room_sparse) echo "--scene $DATA/llff_room --init sparse --factor 4 --background 0 0 0 --steps 500 --tune-steps 200";;
    room_dense_2k|gold_cape_random_2k|lego_held_2k) echo "$(race_args "${1%_2k}" | sed 's/--steps 1000/--steps 2000/')";;
    *) echo "unknown race $1" >&2; exit 2;;
  esac
}
optimizers() {
  case $1 in
    beer_dense) echo "adam adam-tuned l2s:dense l2s:sparse";;
    beer_sparse|beer_sparse_select) echo "adam adam-tuned l2s:sparse l2s:dense";;
    lego_random) echo "adam adam-tuned l2s:dense";;
    synthetic_10k) echo "adam l2s:dense";;
    room_dense|gold_cape_random|lego_held|room_dense_2k|gold_cape_random_2k|lego_held_2k|flower_select|dtu_select)
      echo "adam adam-tuned l2s:dense";;
    room_sparse) echo "adam adam-tuned l2s:sparse l2s:dense";;
  esac
  echo "${CANDIDATES:-}"
}

for race in "$@"; do
  args=$(race_args "$race")
  mkdir -p "$OUT/$race/parts"
  # one part folder per optimizer, named without the / and : of checkpoint paths
  for opt in $(optimizers "$race"); do echo "$opt"; done | xargs -P "${PARALLEL:-2}" -I{} sh -c \
    'part="$0/parts/$(printf %s "$1" | tr "/:" "__")"; l2s-bench race $2 --optimizers "$1" --out "$part" > "$part.log" 2>/dev/null' \
    "$OUT/$race" {} "$args"
  python "$(dirname "$0")/merge_parts.py" "$OUT/$race"
  l2s-bench race $args --optimizers "$(optimizers "$race" | xargs | tr ' ' ',')" --out "$OUT/$race" 2>/dev/null | tee "$OUT/$race/table.txt"
done
