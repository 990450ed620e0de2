"""The training recipe a checkpoint was meta-trained under, stored beside it as ``recipe.json``.

A learned optimizer is trained for one kind of training loop: how many views one gradient sums,
the background colour, the world's units, the SH schedule, the rasterizer and the loss whose
gradient it reads. Integrations (``l2s-bench``, ``l2s-demo``, ``examples/gsplat_simple_trainer.py``)
set their loop from the loaded checkpoint's :class:`Recipe` unless the user overrides a setting;
:class:`~l2s_optim.Learn2Splat` warns where it can tell the loop deviates (see its ``recipe``).

The recipe is a file of its own, not keys in ``config.json``: ``config.json`` describes the
architecture and is read with unknown keys rejected (by this and by earlier versions of
l2s-optim, which would then refuse every new checkpoint), and the recipe is about the loop, not
the network. A checkpoint without ``recipe.json`` loads with ``Recipe()``, the conditions of
l2s-optim's own meta-training (``l2s-meta-train`` with its defaults), which produced every
l2s-optim checkpoint written before recipes existed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

RECIPE_FILE = "recipe.json"
RASTERIZE_MODES = ("classic", "antialiased")


@dataclass(frozen=True)
class Recipe:
    """How the training loop around a checkpoint must look (defaults: l2s-optim's meta-training).

    Attributes:
        views_per_step: training views whose losses are summed into one gradient per step, drawn
            from the view pool without replacement (gsplat's ``batch_size``).
        background: [3] RGB in [0,1] composited behind the Gaussians (and behind RGBA images).
        normalize_world: the scene was recentred and rescaled so that cameras lie about 1 from
            the centre (gsplat's ``normalize_world_space``); False: raw COLMAP units.
        means_lr: the ``means`` group's update multiplier as meta-trained, constant over the run,
            in the units ``normalize_world`` gives.
        sh_degree_interval: 0 = every SH band rendered and optimised from step 0; ``s`` > 0 =
            gsplat's schedule, one more band every ``s`` steps (gsplat's default 1000).
        rasterize_mode: ``"classic"`` or ``"antialiased"`` (gsplat's ``rasterize_mode``).
        eps2d: the rasterizer's low-pass filter added to every projected 2D covariance.
        ssim_weight: the gradient's loss is ``(1 - ssim_weight) * L1 + ssim_weight * (1 - SSIM)``
            per view (gsplat's ``ssim_lambda``).
    """

    views_per_step: int = 1
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    normalize_world: bool = True
    means_lr: float = 1.0
    sh_degree_interval: int = 0
    rasterize_mode: str = "classic"
    eps2d: float = 0.3
    ssim_weight: float = 0.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "background", tuple(float(c) for c in self.background))  # JSON gives a list
        if isinstance(self.views_per_step, bool) or int(self.views_per_step) != self.views_per_step or self.views_per_step < 1:
            raise ValueError(f"views_per_step must be a positive integer, got {self.views_per_step!r}")
        if len(self.background) != 3 or not all(0.0 <= c <= 1.0 for c in self.background):
            raise ValueError(f"background must be 3 numbers in [0,1], got {self.background!r}")
        if not isinstance(self.normalize_world, bool):
            raise TypeError(f"normalize_world must be true or false, got {self.normalize_world!r}")
        if not (math.isfinite(self.means_lr) and self.means_lr > 0):
            raise ValueError(f"means_lr must be a positive number, got {self.means_lr!r}")
        if isinstance(self.sh_degree_interval, bool) or int(self.sh_degree_interval) != self.sh_degree_interval \
                or self.sh_degree_interval < 0:
            raise ValueError(f"sh_degree_interval must be an integer >= 0, got {self.sh_degree_interval!r}")
        if self.rasterize_mode not in RASTERIZE_MODES:
            raise ValueError(f"rasterize_mode must be one of {RASTERIZE_MODES}, got {self.rasterize_mode!r}")
        if not (math.isfinite(self.eps2d) and self.eps2d >= 0):
            raise ValueError(f"eps2d must be a number >= 0, got {self.eps2d!r}")
        if not 0.0 <= self.ssim_weight <= 1.0:
            raise ValueError(f"ssim_weight must be in [0,1], got {self.ssim_weight!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Recipe:
        """The recipe of a ``recipe.json`` mapping; unknown keys are an error (``ValueError``)."""
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown recipe keys: {sorted(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping, the inverse of :meth:`from_dict`."""
        return {**asdict(self), "background": list(self.background)}

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/recipe.json``; returns its path."""
        path = Path(folder) / RECIPE_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> Recipe:
        """The recipe stored in ``folder/recipe.json``, or ``Recipe()`` when there is none."""
        path = Path(folder) / RECIPE_FILE
        return cls.from_dict(json.loads(path.read_text())) if path.is_file() else cls()

    def with_overrides(self, **overrides: Any) -> tuple[Recipe, list[str]]:
        """This recipe with the settings that are not None in ``overrides`` replaced, and the names of
        those that changed it."""
        given = {k: v for k, v in overrides.items() if v is not None}
        updated = replace(self, **given)
        return updated, [k for k in given if getattr(updated, k) != getattr(self, k)]

    def describe(self, names: list[str] | None = None) -> str:
        """One line of the settings ``names`` (default: all), e.g. ``batch 1, background 0 0 0, ...``."""
        text = {
            "views_per_step": f"batch {self.views_per_step}",
            "background": "background " + " ".join(f"{c:g}" for c in self.background),
            "normalize_world": "world " + ("normalised" if self.normalize_world else "in raw units (not normalised)"),
            "means_lr": f"means lr {self.means_lr:g} (no schedule)",
            "sh_degree_interval": "SH " + ("all bands from step 0" if self.sh_degree_interval == 0
                                          else f"one more band every {self.sh_degree_interval} steps"),
            "rasterize_mode": f"{self.rasterize_mode} rasterizer",
            "eps2d": f"eps2d {self.eps2d:g}",
            "ssim_weight": f"loss {1 - self.ssim_weight:g} L1 + {self.ssim_weight:g} (1 - SSIM)",
        }
        return ", ".join(text[name] for name in (names or text))

    def announce(self, source: str, overridden: list[str]) -> str:
        """What an integration prints: the recipe it follows and the user's overrides."""
        line = f"recipe of {source}: {self.describe()}"
        return line + (f"\n  overridden by the user: {self.describe(overridden)}" if overridden else "")


RELEASE_RECIPE = Recipe(views_per_step=8, background=(0.0, 0.0, 0.0), normalize_world=False, means_lr=1.0,
                        sh_degree_interval=0, rasterize_mode="classic", eps2d=1e-4, ssim_weight=0.2)
"""The authors' released joint model: 8 views per step, black background, raw COLMAP / DL3DV units, every
SH band from step 0, classic rasterizer with eps2d 1e-4, loss 0.8 L1 + 0.2 (1 - SSIM)."""
