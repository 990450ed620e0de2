"""Merge a race's per-optimizer parts (``RACE/parts/*/results.json``, one ``l2s-bench race`` run each,
as ``benchmarks/races.sh`` makes them) into one ``results.json``.

    python benchmarks/merge_parts.py RACE                        # RACE/results.json (races.sh does this)
    python benchmarks/merge_parts.py RACE --out DIR --rename OLD=NEW ... --order NAME ... --plot

``--rename`` names curves after what they became, ``--order`` orders them (names not listed follow),
``--plot`` also draws ``DIR/psnr.png``. Issue 13's held-out tables were merged with

    for race in room_dense lego_held gold_cape_random room_sparse long_10k; do
      python benchmarks/merge_parts.py runs/heldout/$race --out benchmarks/issue13/$race --plot \\
        --rename l2s:runs/B_greedy/model=l2s:dense-candidate l2s:runs/S_sparse/model=l2s:sparse-candidate \\
        --order adam adam-tuned l2s:dense l2s:dense-candidate l2s:sparse l2s:sparse-candidate
    done

(``long_10k``'s parts lay in ``runs/long_10k``): the candidates are the networks meta-trained for issue 13
(``benchmarks/issue13/dense_candidate/`` holds the dense one), ``l2s:dense`` and ``l2s:sparse`` the bundled ones.
"""

import argparse
import json
from pathlib import Path


def merge(race: Path, renames: dict[str, str], order: list[str]) -> dict:
    """The parts' results with all their curves, renamed and ordered; settings and machine of the first part."""
    merged = None
    for part in sorted((race / "parts").glob("*/results.json")):
        saved = json.loads(part.read_text())
        merged = merged or {**saved, "curves": {}}
        merged["curves"].update({renames.get(n, n): {**c, "name": renames.get(n, n)} for n, c in saved["curves"].items()})
    if merged is None:
        raise SystemExit(f"no parts in {race / 'parts'}")
    names = [n for n in order if n in merged["curves"]] + [n for n in merged["curves"] if n not in order]
    merged["curves"] = {n: merged["curves"][n] for n in names}
    return merged


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("race", type=Path, help="the race folder holding parts/")
    p.add_argument("--out", type=Path, help="where results.json goes (default: the race folder)")
    p.add_argument("--rename", nargs="*", default=[], metavar="OLD=NEW", help="curve names to change")
    p.add_argument("--order", nargs="*", default=[], metavar="NAME", help="curves first, in this order")
    p.add_argument("--plot", action="store_true", help="also draw psnr.png")
    args = p.parse_args()
    merged = merge(args.race, dict(r.split("=", 1) for r in args.rename), args.order)
    out = args.out or args.race
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(merged, indent=1))
    if args.plot:
        from l2s_optim.bench import Curve
        from l2s_optim.bench.report import plot

        settings, machine = merged["settings"], merged["machine"]
        plot({n: Curve(**c) for n, c in merged["curves"].items()}, out / "psnr.png",
             f"{out.name}: {settings['init']} init, {settings['steps']} steps, "
             f"{machine['torch_threads']} thread(s) on {machine['device']}")
    print(f"{out / 'results.json'}: {', '.join(merged['curves'])}")


if __name__ == "__main__":
    main()
