"""l2s-bench: Learn2Splat against Adam, one subcommand per benchmark.

  race          Adam, tuned Adam and Learn2Splat fit the same initial Gaussians of one scene: results.json
                (every curve, the machine, the settings), psnr.png (test PSNR and SSIM against steps and
                seconds) and a table; running the same race again resumes it
  micro         the optimizer step alone on N random Gaussians: ms, peak working memory, state per Gaussian
  render-speed  the rasterizer backends side by side, forward and forward+backward, on the same views
  step-speed    whole training steps (render, loss, backward, optimizer step) per optimizer, per phase

"l2s-bench SUBCOMMAND --help" lists its options with their defaults. Arguments, optimizer names and
checkpoints are checked before any scene is loaded or any run starts: a user error is one line on stderr
and exit status 2. Each subcommand prints the threads and device it ran with and where it wrote its files.

The command line is built with argparse subparsers rather than tyro: the standard library, no extra
dependency for a package whose core needs only torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..cli import (
    ArgumentParser,
    HelpFormatter,
    bounded,
    non_negative_float,
    non_negative_int,
    positive_int,
    size_list,
    unit_float,
)
from ..render import BACKENDS
from .race import INITS, BenchError, RaceConfig, Workload, check_optimizer_names, run_race
from .timing import (
    RELEASED_RANDOM,
    MicroConfig,
    RenderSpeedConfig,
    StepSpeedConfig,
    run_micro,
    run_render_speed,
    run_step_speed,
)

# recipe setting -> the option that overrides it: its flag and add_argument's keywords
RECIPE_OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "views_per_step": ("--batch", {"type": positive_int, "help": "views per step (default: the recipe's)"}),
    "background": ("--background", {"type": unit_float, "nargs": 3, "metavar": ("R", "G", "B"),
                                    "help": "background colour in [0,1] (default: the recipe's)"}),
    "normalize_world": ("--normalize-world", {
        "action": argparse.BooleanOptionalAction,
        "help": "recentre and rescale the scene so cameras lie about 1 from the centre (default: the recipe's)"}),
    "sh_degree_interval": ("--sh-degree-interval", {
        "type": non_negative_int,
        "help": "0: render every SH band from step 0; s: one more band every s steps (default: the recipe's)"}),
    "eps2d": ("--eps2d", {"type": non_negative_float, "help": "rasterizer 2D low-pass (default: the recipe's)"}),
}


def optimizer_list(*, tuned: bool) -> Callable[[str], tuple[str, ...]]:
    """``type=`` of ``--optimizers``: a comma list of ``adam``, ``adam-tuned`` (when ``tuned``) and
    ``l2s[:CHECKPOINT]`` (the checkpoints are loaded before the run, see ``load_checkpoints``)."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(text.split(","))
        try:
            check_optimizer_names(names, tuned=tuned)
        except BenchError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return names

    return parse


def scene_folder(text: str) -> str:
    """``type=`` of ``--scene``: ``synthetic`` or an existing folder (its content is read when the scene loads)."""
    if text != "synthetic" and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {text!r} (a COLMAP or transforms.json folder, or 'synthetic')")
    return text


def device_name(text: str) -> str:
    """``type=`` of ``--device``: ``auto`` or a torch device name."""
    if text != "auto":
        try:
            torch.device(text)
        except RuntimeError:
            raise argparse.ArgumentTypeError(f"expected 'auto' or a torch device such as cpu or cuda:0, got {text!r}") from None
    return text


def backend_list(text: str) -> tuple[str, ...]:
    """``type=`` of ``--backends``: a comma list of rasterizer backends."""
    names = tuple(text.split(","))
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown backend(s) {unknown}: choose from {', '.join(BACKENDS)}")
    return names


def add_recipe_overrides(p: argparse.ArgumentParser, settings: Sequence[str] = tuple(RECIPE_OPTIONS)) -> None:
    """The options of :data:`RECIPE_OPTIONS` of ``settings``: each replaces that setting of the first Learn2Splat
    checkpoint's training recipe."""
    for key in settings:
        flag, options = RECIPE_OPTIONS[key]
        p.add_argument(flag, default=None, **options)


def recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Recipe setting -> the value given on the command line (None: not given) of :func:`add_recipe_overrides`."""
    return {key: getattr(args, flag[2:].replace("-", "_"), None) for key, (flag, _) in RECIPE_OPTIONS.items()}


def add_workload(p: argparse.ArgumentParser, *, scene: str | None = "synthetic",
                 settings: Sequence[str] = tuple(RECIPE_OPTIONS)) -> None:
    """The scene, initial Gaussians and recipe overrides (of ``settings``) of a :class:`Workload`; ``scene``:
    ``--scene``'s default."""
    p.add_argument("--scene", type=scene_folder, default=scene,
                   help="COLMAP or transforms.json folder, or 'synthetic' (the procedural scene)"
                   + ("" if scene else "; without it, random Gaussians only"))
    p.add_argument("--init", default="dense", choices=INITS,
                   help="initial Gaussians: SfM points, random ones in the scene's box, or pixel-aligned from 8 views")
    p.add_argument("--factor", type=positive_int, default=1, help="image downscale factor")
    p.add_argument("--fraction", type=bounded(float, 0, inclusive=False, high=1), default=1.0,
                   help="dense init: fraction of SfM points kept")
    p.add_argument("--n-random", type=bounded(int, 4), default=20_000, help="random init: number of Gaussians")
    p.add_argument("--seed", type=int, default=0, help="initial Gaussians, view order and Learn2Splat's seed")
    add_recipe_overrides(p, settings)


def workload(args: argparse.Namespace) -> Workload:
    """The :class:`Workload` of :func:`add_workload`'s options."""
    return Workload(scene=args.scene, init=args.init, factor=args.factor, fraction=args.fraction,
                    n_random=args.n_random, seed=args.seed, recipe_overrides=recipe_overrides(args))


def add_run_options(p: argparse.ArgumentParser, *, out: str) -> None:
    """``--device``, ``--threads`` and ``--out`` (default ``out``), which every tool takes."""
    p.add_argument("--device", type=device_name, default="auto", help="'auto' (CUDA when available, else CPU) or a torch device")
    p.add_argument("--threads", type=positive_int, default=None,
                   help=f"torch threads (default: torch's choice, {torch.get_num_threads()} here)")
    p.add_argument("--out", type=Path, default=Path(out), help="output folder")


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads`` when ``--threads`` is given."""
    if threads is not None:
        torch.set_num_threads(threads)


def _race_options(p: argparse.ArgumentParser) -> None:
    add_workload(p)
    p.add_argument("--optimizers", type=optimizer_list(tuned=True), default="adam,adam-tuned,l2s:dense",
                   help="comma list, raced in order: adam (gsplat's defaults), adam-tuned (the best lr multiplier of a "
                   "sweep), l2s:CHECKPOINT (a bundled name, folder or Hub reference; l2s alone: the bundled dense)")
    p.add_argument("--steps", type=positive_int, default=2000, help="training steps of every optimizer")
    p.add_argument("--tune-steps", type=positive_int, default=500, help="adam-tuned: steps of each sweep run")


def _race_config(args: argparse.Namespace) -> RaceConfig:
    return RaceConfig(workload(args), args.optimizers, args.steps, args.tune_steps, args.device, args.out)


def _add_repeats(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--repeats", type=positive_int, default=5, help=f"timed {what} (after one warm-up)")


def _micro_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=size_list, default="1e3,1e4,1e5", help="numbers of random Gaussians, one row each")
    _add_repeats(p, "steps per optimizer and size")
    p.add_argument("--chunk-size", type=non_negative_int, default=65_536,
                   help="Learn2Splat's chunk_size (Gaussians per network pass; 0: no chunking)")
    p.add_argument("--checkpoint", default="dense",
                   help=f"Learn2Splat checkpoint, or '{RELEASED_RANDOM}' for the released architecture's size")


def _micro_config(args: argparse.Namespace) -> MicroConfig:
    return MicroConfig(tuple(args.sizes), args.repeats, args.chunk_size or None, args.checkpoint, args.device, args.out)


def _render_speed_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=size_list, default="1e3,1e4,1e5", help="numbers of random Gaussians, one workload each")
    p.add_argument("--render-size", type=positive_int, default=200, help="image size of the random workloads")
    p.add_argument("--backends", type=backend_list, default="cpp,torch",
                   help="rasterizer backends to compare (images are compared to the first's)")
    _add_repeats(p, "runs per backend and workload")
    add_workload(p, scene=None, settings=("background", "normalize_world"))  # what loading the scene reads
    p.add_argument("--views", type=positive_int, default=4, help="with --scene: training views timed")


def _render_speed_config(args: argparse.Namespace) -> RenderSpeedConfig:
    return RenderSpeedConfig(tuple(args.sizes), args.render_size, args.backends, args.repeats,
                             None if args.scene is None else workload(args), args.views, args.device, args.out)


def _step_speed_options(p: argparse.ArgumentParser) -> None:
    add_workload(p)
    p.add_argument("--optimizers", type=optimizer_list(tuned=False), default="adam,l2s:dense",
                   help="comma list: adam, l2s[:CHECKPOINT]; ratios are to the first")
    _add_repeats(p, "steps per optimizer")


def _step_speed_config(args: argparse.Namespace) -> StepSpeedConfig:
    return StepSpeedConfig(workload(args), args.optimizers, args.repeats, args.device, args.out)


@dataclass(frozen=True)
class Command:
    """A subcommand: its one-line help, its description, its options, the config they make and the function
    that runs it."""

    help: str
    description: str
    options: Callable[[argparse.ArgumentParser], None]
    config: Callable[[argparse.Namespace], Any]
    run: Callable[[Any], Any]


COMMANDS = {
    "race": Command(
        "race optimizers from the same initial Gaussians: results.json, psnr.png, a table",
        "Fit the same initial Gaussians of --scene with each of --optimizers for --steps steps, all under the\n"
        "training recipe of the first Learn2Splat checkpoint (printed; --batch, --background,\n"
        "--[no-]normalize-world, --sh-degree-interval and --eps2d override it), evaluating test PSNR and SSIM at\n"
        "log-spaced steps. Writes OUT/results.json (after each optimizer: every curve, the machine, the settings)\n"
        "and OUT/psnr.png, and prints the table. The same race run again skips the optimizers in results.json.",
        _race_options, _race_config, run_race),
    "micro": Command(
        "time the optimizer step alone on random Gaussians: ms, peak memory, state",
        "The optimizer step alone, gradients given, on N random Gaussians of each --sizes: ms per step of Adam\n"
        "(foreach, gsplat's learning rates), Learn2Splat, and Learn2Splat without its kNN search; the step's peak\n"
        "working memory (MB; on CPU in a fresh child process) and the optimizer state per Gaussian.\n"
        "Writes OUT/micro.json.",
        _micro_options, _micro_config, run_micro),
    "render-speed": Command(
        "time the rasterizer backends side by side, forward and forward+backward",
        "ms per view of each of --backends, forward and forward+backward, on random Gaussians of each --sizes in a\n"
        "--render-size square view and, with --scene, on its first --views training views with its --init\n"
        "Gaussians; the speed-up of cpp over torch and each backend's largest pixel difference from the first's.\n"
        "Writes OUT/render_speed.json.",
        _render_speed_options, _render_speed_config, run_render_speed),
    "step-speed": Command(
        "time whole training steps per optimizer, per phase",
        "ms per whole training step on --scene (render, loss, backward, optimizer step, each synchronised; the\n"
        "median of --repeats steps after a warm-up) for each of --optimizers, with the ratio to the first, under\n"
        "the recipe of the first Learn2Splat checkpoint. Writes OUT/step_speed.json.",
        _step_speed_options, _step_speed_config, run_step_speed),
}


def parsers() -> tuple[ArgumentParser, dict[str, ArgumentParser]]:
    """``l2s-bench``'s parser and its subcommands' parsers by name."""
    top = ArgumentParser(prog="l2s-bench", description=__doc__, formatter_class=HelpFormatter)
    commands = top.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    subs = {}
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.description, formatter_class=HelpFormatter)
        command.options(sub)
        add_run_options(sub, out="bench-out")
        subs[name] = sub
    return top, subs


def main(argv: list[str] | None = None) -> None:
    """``l2s-bench SUBCOMMAND [OPTIONS]``."""
    top, subs = parsers()
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):  # the options of earlier versions
        top.error(f"the subcommand comes first (l2s-bench race {argv[0]} ...): choose from {', '.join(COMMANDS)}")
    args = top.parse_args(argv)
    command = COMMANDS[args.command]
    set_threads(args.threads)
    try:
        command.run(command.config(args))
    except BenchError as err:
        subs[args.command].error(str(err))
