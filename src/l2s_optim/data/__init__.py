"""Scenes (COLMAP, transforms.json, procedural) and initial Gaussians."""

from __future__ import annotations

from pathlib import Path

from .colmap import load_colmap
from .init import dense_init, gaussians_from_points, random_init, sparse_init
from .scene import Scene
from .synthetic import synthetic_scene
from .transforms import load_transforms

__all__ = ["Scene", "dense_init", "gaussians_from_points", "load_colmap", "load_scene", "load_transforms",
           "random_init", "sparse_init", "synthetic_scene"]


def load_scene(path: str | Path, *, factor: int = 1, test_every: int = 8,
               background: tuple[float, float, float] = (1.0, 1.0, 1.0), normalize: bool = True) -> Scene:
    """Load a COLMAP folder or a transforms.json folder (detected by content); ``"synthetic"`` gives
    the procedural scene. ``normalize`` (gsplat's name for it) recentres and rescales so the farthest camera is at
    distance 1 (:meth:`Scene.normalised`)."""
    if str(path) == "synthetic":
        return synthetic_scene()
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"scene folder not found: {root}")
    if (root / "sparse").is_dir():
        scene = load_colmap(root, factor=factor, test_every=test_every)
    elif any(root.glob("transforms*.json")):
        scene = load_transforms(root, factor=factor, test_every=test_every, background=background)
    else:
        raise ValueError(f"{root} is neither a COLMAP folder (sparse/) nor a transforms.json scene")
    if not normalize:
        return scene
    try:
        return scene.normalised()
    except ValueError as err:
        raise ValueError(f"{root}: {err}") from err
