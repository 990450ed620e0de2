"""README's benchmark tables, generated from the committed ``results.json`` of ``l2s-bench`` races.

    python benchmarks/tables.py                 # print the markdown
    python benchmarks/tables.py --write README.md

``--write`` replaces the text between ``<!-- benchmark-tables:begin -->`` and
``<!-- benchmark-tables:end -->``. Each race folder gets one table (columns as ``l2s-bench``'s summary:
PSNR at fixed steps, steps and seconds to Adam's final PSNR, PSNR at Adam's wall-clock, the largest
drop below a curve's own best, ms per step and its ratio to Adam's) under a heading with its settings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from l2s_optim.bench import Curve, summary_cells, summary_rows

ROOT = Path(__file__).resolve().parent
# (title, race folder relative to benchmarks/), in README order
RACES = [
    ("llff_room, dense init (held out), 2,000 steps", "issue13/room_dense_2k"),
    ("nerd_gold_cape, random init (held out), 2,000 steps", "issue13/gold_cape_random_2k"),
    ("lego_200, random init (held out), 2,000 steps", "issue13/lego_held_2k"),
    ("llff_room, sparse init (held out)", "issue13/room_sparse"),
    ("procedural scene never seen in meta-training, 10,000 steps: the decaying bound", "issue13/decay_long_10k"),
    ("llff_flower held-out views, dense init (selection, training scene)", "issue13/flower_select"),
    ("dtu_scan65 held-out views, random init (selection, training scene)", "issue13/dtu_select"),
    ("dtu_scan65 held-out views, random init, 2,000 steps (selection of the bound, training scene)",
     "issue13/dtu_2k_select"),
    ("llff_flower held-out views, dense init, 1,500 steps at factor 8 (selection of the bound, training scene)",
     "issue13/decay_select"),
    ("beer held-out views, sparse init (selection, training scene)", "issue13/beer_sparse_select"),
]
BEGIN, END = "<!-- benchmark-tables:begin -->", "<!-- benchmark-tables:end -->"


def table(results: dict) -> str:
    curves = {name: Curve(**c) for name, c in results["curves"].items()}
    settings, machine = results["settings"], results["machine"]
    rows = summary_rows(curves)
    cells = [summary_cells(r) for r in rows]
    tuned = curves.get("adam-tuned")
    recipe = settings["recipe"]
    lines = [f"{settings['steps']} steps, {settings['init']} init, image factor {settings['factor']}, "
             f"{recipe['views_per_step']} view(s) per step, background {' '.join(f'{v:g}' for v in recipe['background'])}, "
             f"{machine['torch_threads']} thread(s) on "
             f"{machine['device']}" + (f"; adam-tuned chose x{tuned.extra['lr_multiplier']:g}" if tuned else ""), "",
             "| optimizer | " + " | ".join(cells[0]) + " |", "|---" * (len(cells[0]) + 1) + "|"]
    lines += [f"| {r['optimizer']} | " + " | ".join(c.values()) + " |" for r, c in zip(rows, cells)]
    return "\n".join(lines)


def markdown() -> str:
    parts = []
    for title, folder in RACES:
        path = ROOT / folder / "results.json"
        if path.is_file():
            parts.append(f"#### {title}\n\nFrom `benchmarks/{folder}/results.json`: "
                         + table(json.loads(path.read_text())))
    return "\n\n".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", type=Path, help="file whose table section is replaced (e.g. README.md)")
    args = p.parse_args()
    text = markdown()
    if args.write is None:
        print(text)
        return
    readme = args.write.read_text()
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"{args.write} has no {BEGIN} ... {END} section to replace")
    head, rest = readme.split(BEGIN, 1)
    args.write.write_text(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])
    print(f"wrote the benchmark tables into {args.write}")


if __name__ == "__main__":
    main()
