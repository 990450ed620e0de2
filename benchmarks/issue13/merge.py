"""Merge the per-optimizer parts of the held-out races (run by ``benchmarks/races.sh`` and, for the
candidates, by the same ``l2s-bench`` command with ``--optimizers l2s:<run>/model``) into one
``results.json`` per race here, naming the curves after what they became:

- ``l2s:runs/B_greedy/model`` -> ``l2s:dense-candidate`` (saved in ``dense_candidate/``; not shipped:
  it drifts 3.9 dB below its best over 10,000 steps, see ``long_10k/``),
- ``l2s:runs/S_sparse/model`` -> ``l2s:sparse-candidate`` (not shipped: it lost to ``sparse``);
- ``l2s:dense`` and ``l2s:sparse`` are the bundled networks.

    python benchmarks/issue13/merge.py runs/heldout room_dense lego_held gold_cape_random room_sparse
    python benchmarks/issue13/merge.py runs long_10k      # runs/long_10k/parts: adam and the candidate
"""

import json
import sys
from pathlib import Path

from l2s_optim.bench import Curve
from l2s_optim.bench.report import plot

RENAMES = {"l2s:runs/B_greedy/model": "l2s:dense-candidate", "l2s:runs/S_sparse/model": "l2s:sparse-candidate"}
ORDER = ["adam", "adam-tuned", "l2s:dense", "l2s:dense-candidate", "l2s:sparse", "l2s:sparse-candidate"]

runs = Path(sys.argv[1])
for race in sys.argv[2:]:
    merged = None
    for part in sorted((runs / race / "parts").glob("*/results.json")):
        saved = json.loads(part.read_text())
        merged = merged or {**saved, "curves": {}}
        merged["curves"].update({RENAMES.get(name, name): curve for name, curve in saved["curves"].items()})
    merged["curves"] = {n: {**merged["curves"][n], "name": n} for n in ORDER if n in merged["curves"]}
    out = Path(__file__).parent / race
    out.mkdir(exist_ok=True)
    (out / "results.json").write_text(json.dumps(merged, indent=1))
    machine, settings = merged["machine"], merged["settings"]
    plot({n: Curve(**c) for n, c in merged["curves"].items()}, out / "psnr.png",
         f"{race}: {settings['init']} init, {settings['steps']} steps, "
         f"{machine['torch_threads']} thread(s) on {machine['device']}")
    print(f"{out / 'results.json'}: {', '.join(merged['curves'])}")
