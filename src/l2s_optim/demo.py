"""l2s-demo: the one-command tour. Races Adam, tuned Adam (a short learning-rate sweep) and Learn2Splat on a
procedural scene (no download), from SfM-like points, for a few hundred steps on CPU; prints the table and
writes results.json and psnr.png (an l2s-bench race). Every optimizer trains as the checkpoint's recipe says
(views per step, background, SH schedule, ...; printed), unless --batch or --background override it.

A --checkpoint that cannot be loaded is an error; without one, and without bundled weights in this install,
the demo races the two Adams alone and says why.
"""

from __future__ import annotations

from .bench.cli import add_recipe_overrides, add_run_options, recipe_overrides, set_threads
from .bench.race import BenchError, RaceConfig, Workload, load_checkpoints, run_race
from .cli import ArgumentParser, HelpFormatter, positive_int


def main(argv: list[str] | None = None) -> None:
    """``l2s-demo [OPTIONS]``."""
    p = ArgumentParser(prog="l2s-demo", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--steps", type=positive_int, default=300, help="training steps of every optimizer")
    p.add_argument("--checkpoint", default=None,
                   help="Learn2Splat checkpoint to race against Adam: a bundled name, folder or Hub reference "
                   "(default: the bundled dense)")
    p.add_argument("--tune-steps", type=positive_int, default=50, help="adam-tuned: steps of each sweep run")
    add_recipe_overrides(p, ("views_per_step", "background"))
    add_run_options(p, out="l2s-demo-out")
    args = p.parse_args(argv)
    set_threads(args.threads)
    optimizers = ("adam", "adam-tuned", f"l2s:{args.checkpoint or 'dense'}")
    try:
        load_checkpoints(optimizers[2:])
    except BenchError as err:
        if args.checkpoint is not None:
            p.error(str(err))
        print(f"Learn2Splat is left out of this demo: {err}\nRacing Adam and tuned Adam alone.\n")
        optimizers = optimizers[:2]
    config = RaceConfig(Workload(scene="synthetic", init="dense", recipe_overrides=recipe_overrides(args)),
                        optimizers, args.steps, args.tune_steps, args.device, args.out)
    try:
        run_race(config)
    except BenchError as err:
        p.error(str(err))
