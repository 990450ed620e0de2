"""Compare the PSNR curves and step times of two l2s-bench results.json files of the same race.

    python benchmarks/compare_curves.py OLD/results.json NEW/results.json [--out comparison.json]

Prints, per optimizer, the PSNR of both runs at every evaluated step, their largest absolute
difference, and the training milliseconds per step of each run with their ratio.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def compare(old: dict, new: dict) -> dict[str, dict]:
    """Per optimizer present in both: steps, both PSNR lists, max |difference| and ms/step of each."""
    rows = {}
    for name in old["curves"].keys() & new["curves"].keys():
        a, b = old["curves"][name], new["curves"][name]
        steps = sorted(set(a["steps"]) & set(b["steps"]))
        psnr_a = [a["psnr"][a["steps"].index(s)] for s in steps]
        psnr_b = [b["psnr"][b["steps"].index(s)] for s in steps]
        ms_a, ms_b = (1000 * c["seconds"][-1] / max(c["steps"][-1], 1) for c in (a, b))
        rows[name] = {"steps": steps, "psnr_old": psnr_a, "psnr_new": psnr_b,
                      "max_abs_psnr_difference": max(abs(x - y) for x, y in zip(psnr_a, psnr_b)),
                      "ms_per_step_old": ms_a, "ms_per_step_new": ms_b, "speedup": ms_a / ms_b}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--out", type=Path, help="also write the comparison as JSON")
    args = parser.parse_args()
    rows = compare(json.loads(args.old.read_text()), json.loads(args.new.read_text()))
    for name, row in sorted(rows.items()):
        pairs = " ".join(f"{s}:{x:.2f}/{y:.2f}" for s, x, y in zip(row["steps"], row["psnr_old"], row["psnr_new"]))
        print(f"{name:>12}  max |dPSNR| {row['max_abs_psnr_difference']:.3f} dB  ms/step {row['ms_per_step_old']:.0f}"
              f" -> {row['ms_per_step_new']:.0f} (x{row['speedup']:.1f})  step:old/new {pairs}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
