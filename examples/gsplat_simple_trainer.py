"""Run gsplat's ``examples/simple_trainer.py`` with Learn2Splat in place of Adam.

Nothing of gsplat's script is copied: this wrapper runs it unchanged (every one of its CLI options
works) and swaps the optimizers of its ``Runner`` after construction for the per-name views of one
joint Learn2Splat, which its densification strategies and lr scheduler drive as they would Adam.

    cd gsplat/examples   # a gsplat checkout, with its examples' requirements installed (CUDA)
    python /path/to/l2s-optim/examples/gsplat_simple_trainer.py default \\
        --optimizer l2s --l2s-checkpoint dense \\
        --data_dir data/360_v2/garden --data_factor 4 --result_dir results/garden_l2s

``--optimizer adam`` runs gsplat's own optimizers. Notes on the swap:
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

import gsplat.distributed

from l2s_optim import Learn2Splat

parser = argparse.ArgumentParser(add_help=False)
parser.add_argument("--optimizer", choices=["adam", "l2s"], default="l2s")
parser.add_argument("--l2s-checkpoint", default="dense")
parser.add_argument("--trainer", default="simple_trainer.py", help="path of gsplat's examples/simple_trainer.py")
ours, theirs = parser.parse_known_args()


def with_learn2splat(runner_class: type) -> type:
    class Learn2SplatRunner(runner_class):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            if self.cfg.sparse_grad:
                raise SystemExit("--sparse_grad (SparseAdam) cannot be combined with Learn2Splat")
            adam_means_lr = self.optimizers["means"].param_groups[0]["lr"]
            self.l2s = Learn2Splat(self.splats, ours.l2s_checkpoint)
            self.optimizers = self.l2s.per_name_optimizers()
            if hasattr(self.cfg.strategy, "noise_lr"):  # MCMC: same position noise as with Adam
                self.cfg.strategy.noise_lr *= adam_means_lr
            self.cfg.strategy.check_sanity(self.splats, self.optimizers)

    return Learn2SplatRunner


original_cli = gsplat.distributed.cli


def cli(fn, cfg, verbose: bool = False):
    if ours.optimizer == "l2s":
        fn.__globals__["Runner"] = with_learn2splat(fn.__globals__["Runner"])
    return original_cli(fn, cfg, verbose)


gsplat.distributed.cli = cli  # simple_trainer imports `cli` from here when it starts
sys.argv = [ours.trainer, *theirs]
sys.path.insert(0, os.path.dirname(os.path.abspath(ours.trainer)))
runpy.run_path(ours.trainer, run_name="__main__")
