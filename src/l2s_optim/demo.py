"""``l2s-demo``: the one-command tour. Fits a procedural scene (no download) from SfM-like points
with Adam and with Learn2Splat for a few hundred steps on CPU, prints the table and writes
``psnr.png``. Without bundled weights it runs Adam alone and says why."""

from __future__ import annotations

import argparse

from .bench import main as bench_main
from .hub import load_network


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="l2s-demo", description=__doc__)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--checkpoint", default="dense", help="Learn2Splat checkpoint to race against Adam")
    p.add_argument("--out", default="l2s-demo-out")
    args = p.parse_args(argv)
    optimizers = f"adam,l2s:{args.checkpoint}"
    try:
        load_network(args.checkpoint)
    except (FileNotFoundError, ValueError) as err:
        print(f"Learn2Splat is left out of this demo: {err}\nRunning Adam alone.\n")
        optimizers = "adam"
    bench_main(["--scene", "synthetic", "--init", "dense", "--background", "0", "0", "0", "--steps", str(args.steps),
                "--optimizers", optimizers, "--out", args.out])
