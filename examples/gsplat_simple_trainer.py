"""Run gsplat's ``examples/simple_trainer.py`` with Learn2Splat in place of Adam.

Nothing of gsplat's script is copied: this wrapper runs it unchanged (every one of its CLI options
works) and swaps the optimizers of its ``Runner`` after construction for the per-name views of one
joint Learn2Splat, which its densification strategies and lr scheduler drive as they would Adam.

    cd gsplat/examples   # a gsplat checkout, with its examples' requirements installed (CUDA)
    python /path/to/l2s-optim/examples/gsplat_simple_trainer.py default \\
        --optimizer l2s --l2s-checkpoint dense \\
        --data_dir data/360_v2/garden --data_factor 4 --result_dir results/garden_l2s

``--optimizer adam`` runs gsplat's own optimizers. With ``--optimizer l2s`` the trainer follows the
checkpoint's training recipe (``l2s_optim.recipe``, printed at start): ``batch_size`` (views per step),
``normalize_world_space``, the SH schedule (recipe interval 0: every band is rendered from step 0, which
gsplat's ``step // sh_degree_interval`` cannot express, so the wrapper's ``rasterize_splats`` does it),
``antialiased``, ``ssim_lambda``, black background (no ``random_bkgd``) and the rasterizer's eps2d. Any
of those options given on the command line (and ``--l2s-eps2d``) wins over the recipe, and is printed.
Notes on the swap:
- gsplat's ExponentialLR on ``means`` keeps working: it scales Learn2Splat's means update (1 -> 0.01
  over the run), like Adam's means learning rate;
- MCMC's position noise is proportional to the means learning rate, which is now a multiplier: its
  ``noise_lr`` is rescaled by Adam's initial means learning rate so the noise is what Adam gets;
- ``--sparse_grad`` (SparseAdam) is not supported; ``--visible_adam`` passes its visibility mask;
- gsplat's checkpoints hold the splats only; to resume exactly, also save ``runner.l2s.state_dict()``
  (see ``examples/minimal_loop.py``).
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from typing import Any

import gsplat.distributed

from l2s_optim import Learn2Splat, Learn2SplatNet, load_network
from l2s_optim.recipe import Recipe

parser = argparse.ArgumentParser(add_help=False)
parser.add_argument("--optimizer", choices=["adam", "l2s"], default="l2s")
parser.add_argument("--l2s-checkpoint", default="dense")
parser.add_argument("--l2s-eps2d", type=float, default=None, help="rasterizer eps2d (default: the checkpoint's recipe)")
parser.add_argument("--trainer", default="simple_trainer.py", help="path of gsplat's examples/simple_trainer.py")
ours, theirs = parser.parse_known_args()


def given(option: str) -> bool:
    """Whether gsplat's ``option`` is on the command line (tyro's spellings: underscores or hyphens, ``--no-`` for
    a false flag)."""
    names = {option, option.replace("_", "-")}
    flags = (arg.split("=")[0].removeprefix("--") for arg in theirs if arg.startswith("--"))
    return any(flag in names or flag[3:] in names and flag[:3] in ("no-", "no_") for flag in flags)


def follow_recipe(cfg: Any, recipe: Recipe) -> Recipe:
    """Set gsplat's ``cfg`` as ``recipe`` says, except for the options given on the command line; print both.
    Returns the recipe in force (the options given replacing its settings)."""
    resolved, overridden = recipe.with_overrides(
        views_per_step=cfg.batch_size if given("batch_size") else None,
        normalize_world=cfg.normalize_world_space if given("normalize_world_space") else None,
        sh_degree_interval=cfg.sh_degree_interval if given("sh_degree_interval") else None,
        rasterize_mode=("antialiased" if cfg.antialiased else "classic") if given("antialiased") else None,
        ssim_weight=cfg.ssim_lambda if given("ssim_lambda") else None,
        eps2d=ours.l2s_eps2d,
    )
    cfg.batch_size = resolved.views_per_step
    cfg.normalize_world_space = resolved.normalize_world
    cfg.antialiased = resolved.rasterize_mode == "antialiased"
    cfg.ssim_lambda = resolved.ssim_weight
    # gsplat renders sh degree step // interval: 0 cannot be given (every band: see rasterize_splats)
    cfg.sh_degree_interval = resolved.sh_degree_interval or cfg.sh_degree_interval or 1000
    print(resolved.announce(f"l2s:{ours.l2s_checkpoint}", overridden))
    if any(resolved.background) or given("random_bkgd") and cfg.random_bkgd:
        print(f"  deviation: gsplat's trainer renders on {'random' if cfg.random_bkgd else 'black'}, "
              f"not the recipe's background {resolved.describe(['background'])}")
    print("  deviation: gsplat's ExponentialLR decays the means lr to 0.01 over the run (the recipe keeps it)")
    return resolved


def with_learn2splat(runner_class: type, net: Learn2SplatNet, recipe: Recipe) -> type:
    class Learn2SplatRunner(runner_class):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            if self.cfg.sparse_grad:
                raise SystemExit("--sparse_grad (SparseAdam) cannot be combined with Learn2Splat")
            adam_means_lr = self.optimizers["means"].param_groups[0]["lr"]
            self.l2s = Learn2Splat(self.splats, net)
            self.optimizers = self.l2s.per_name_optimizers()
            if hasattr(self.cfg.strategy, "noise_lr"):  # MCMC: same position noise as with Adam
                self.cfg.strategy.noise_lr *= adam_means_lr
            self.cfg.strategy.check_sanity(self.splats, self.optimizers)

        def rasterize_splats(self, *args: Any, **kwargs: Any) -> Any:
            """gsplat's, with the recipe's eps2d, and every SH band when the recipe renders all from step 0."""
            kwargs.setdefault("eps2d", recipe.eps2d)
            if recipe.sh_degree_interval == 0 and "sh_degree" in kwargs:
                kwargs["sh_degree"] = self.cfg.sh_degree
            return super().rasterize_splats(*args, **kwargs)

    return Learn2SplatRunner


original_cli = gsplat.distributed.cli


def cli(fn, cfg, verbose: bool = False):
    if ours.optimizer == "l2s":
        net = load_network(ours.l2s_checkpoint)
        fn.__globals__["Runner"] = with_learn2splat(fn.__globals__["Runner"], net, follow_recipe(cfg, net.recipe))
    return original_cli(fn, cfg, verbose)


gsplat.distributed.cli = cli  # simple_trainer imports `cli` from here when it starts
sys.argv = [ours.trainer, *theirs]
sys.path.insert(0, os.path.dirname(os.path.abspath(ours.trainer)))
runpy.run_path(ours.trainer, run_name="__main__")
