"""``l2s-demo``: the one-command tour. Fits a procedural scene (no download) from SfM-like points
with Adam and with Learn2Splat for a few hundred steps on CPU, prints the table and writes
``psnr.png``. Both train as the checkpoint's recipe says (views per step, background, SH schedule, ...;
printed), unless ``--batch`` or ``--background`` override it. Without bundled weights it runs Adam
alone and says why."""

from __future__ import annotations

import argparse

from .bench import main as bench_main
from .cli import positive_int, unit_float
from .hub import load_network


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="l2s-demo", description=__doc__)
    p.add_argument("--steps", type=positive_int, default=300)
    p.add_argument("--checkpoint", default="dense", help="Learn2Splat checkpoint to race against Adam")
    p.add_argument("--out", default="l2s-demo-out")
    p.add_argument("--batch", type=positive_int, default=None, help="views per step (default: the checkpoint's recipe)")
    p.add_argument("--background", type=unit_float, nargs=3, default=None, help="RGB (default: the checkpoint's recipe)")
    args = p.parse_args(argv)
    overrides = [] if args.batch is None else ["--batch", str(args.batch)]
    overrides += [] if args.background is None else ["--background", *map(str, args.background)]
    optimizers = f"adam,l2s:{args.checkpoint}"
    try:
        load_network(args.checkpoint)
    except (FileNotFoundError, ValueError) as err:
        print(f"Learn2Splat is left out of this demo: {err}\nRunning Adam alone.\n")
        optimizers = "adam"
    bench_main(["--scene", "synthetic", "--init", "dense", "--steps", str(args.steps), "--optimizers", optimizers,
                "--out", args.out, *overrides])
