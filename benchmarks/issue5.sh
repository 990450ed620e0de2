#!/usr/bin/env bash
# The benchmark runs behind the README's tables for the bundled checkpoints (issue 5).
# One optimizer per process (one thread each) so that a 2-core machine runs two at a time; the
# per-optimizer results are then merged, and the same l2s-bench command resumes all of them from the
# merged results.json to print the table and draw psnr.png.
#   bash benchmarks/issue5.sh RACE...     races: beer_dense beer_sparse lego_random synthetic_10k
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
    *) echo "unknown race $1" >&2; exit 2;;
  esac
}
optimizers() {
  case $1 in
    beer_dense) echo "adam adam-tuned l2s:dense l2s:sparse";;
    beer_sparse) echo "adam adam-tuned l2s:sparse l2s:dense";;
    lego_random) echo "adam adam-tuned l2s:dense";;
    synthetic_10k) echo "adam l2s:dense";;
  esac
}

for race in "$@"; do
  args=$(race_args "$race")
  mkdir -p "$OUT/$race/parts"
  for opt in $(optimizers "$race"); do echo "$opt"; done | xargs -P 2 -I{} sh -c \
    "l2s-bench $args --optimizers {} --out $OUT/$race/parts/{} > $OUT/$race/parts/{}.log 2>/dev/null"
  python - "$OUT/$race" <<'PY'
import json, sys
from pathlib import Path
race = Path(sys.argv[1])
merged = None
for part in sorted((race / "parts").glob("*/results.json")):
    saved = json.loads(part.read_text())
    merged = merged or {**saved, "curves": {}}
    merged["curves"].update(saved["curves"])
(race / "results.json").write_text(json.dumps(merged, indent=1))
PY
  l2s-bench $args --optimizers "$(optimizers "$race" | tr ' ' ',')" --out "$OUT/$race" 2>/dev/null | tee "$OUT/$race/table.txt"
done
