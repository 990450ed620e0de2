"""Initial Gaussians in gsplat's raw storage (``means, scales, quats, opacities, sh0, shN``).

- ``dense``: SfM points (optionally a random subset), isotropic scale from the 3 nearest neighbours;
- ``random``: points uniformly in a box;
- ``sparse``: pixel-aligned Gaussians from a few context views (one per ``block`` x ``block``
  pixels), unprojected with the scene's depth, or depth interpolated from SfM points: a stand-in
  for a feed-forward initialiser.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..gaussians import SH_C0
from ..knn import knn
from .scene import Scene


def gaussians_from_points(
    points: Tensor, colors: Tensor, scales: Tensor | None = None, *, sh_degree: int = 3, opacity: float = 0.1
) -> nn.ParameterDict:
    """Raw gsplat parameters for Gaussians at ``points`` [N,3] with RGB ``colors`` [N,3] in [0,1].

    ``scales`` [N] are isotropic standard deviations; by default sqrt of the mean squared distance
    to the 3 nearest other points (the released initialisation).
    """
    n = points.shape[0]
    if n < 4:
        raise ValueError(f"need at least 4 points to initialise Gaussians, got {n}")
    if scales is None:
        idx = knn(points, 4)[:, 1:]
        scales = (points[idx] - points[:, None]).square().sum(-1).mean(-1).sqrt().clamp_min(1e-7)
    params = {
        "means": points.float(),
        "scales": scales.float().log()[:, None].repeat(1, 3),
        "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1),
        "opacities": torch.full((n,), math.log(opacity / (1 - opacity))),
        "sh0": ((colors.float() - 0.5) / SH_C0)[:, None, :],
    }
    if sh_degree > 0:
        params["shN"] = torch.zeros(n, (sh_degree + 1) ** 2 - 1, 3)
    return nn.ParameterDict({k: nn.Parameter(v.contiguous()) for k, v in params.items()})


def dense_init(scene: Scene, *, fraction: float = 1.0, sh_degree: int = 3, seed: int = 0) -> nn.ParameterDict:
    """Gaussians on the scene's SfM points; ``fraction`` keeps a random subset."""
    if scene.points is None:
        raise ValueError("dense init needs SfM points, and this scene has none: use init='random' or 'sparse'")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    keep = torch.randperm(len(scene.points), generator=torch.Generator().manual_seed(seed))
    keep = keep[: max(4, round(fraction * len(keep)))].sort().values
    colors = scene.point_colors[keep] if scene.point_colors is not None else torch.full((len(keep), 3), 0.5)
    return gaussians_from_points(scene.points[keep], colors, sh_degree=sh_degree)


def random_init(
    scene: Scene, *, n: int = 20_000, extent: float | None = None, sh_degree: int = 3, seed: int = 0
) -> nn.ParameterDict:
    """``n`` Gaussians uniformly in a cube of half-size ``extent`` around the point the cameras look at
    (:attr:`Scene.focus`; default extent: half its mean distance to the cameras), random colours."""
    g = torch.Generator().manual_seed(seed)
    focus = scene.focus.cpu()
    if extent is None:
        extent = 0.5 * (scene.camera_centers.cpu() - focus).norm(dim=-1).mean().item()
    points = focus + (torch.rand(n, 3, generator=g) * 2 - 1) * extent
    return gaussians_from_points(points, torch.rand(n, 3, generator=g), sh_degree=sh_degree)


def _interpolated_depth(scene: Scene, view: int, pixels: Tensor, k: int = 4) -> Tensor:
    """Depth at pixel positions [M,2] by inverse-distance weighting of the k nearest projected SfM points."""
    cam = scene.points @ scene.viewmats[view, :3, :3].T + scene.viewmats[view, :3, 3]
    front = cam[:, 2] > 1e-6
    if front.sum() < k:
        raise ValueError(f"view {scene.names[view]} sees fewer than {k} SfM points: cannot interpolate depth")
    cam = cam[front]
    K = scene.Ks[view]
    uv = cam[:, :2] / cam[:, 2:] * K.diagonal()[:2] + K[:2, 2]
    d2 = torch.cdist(pixels, uv).square()
    nearest = d2.topk(k, dim=1, largest=False)
    weights = 1.0 / (nearest.values + 1.0)
    return (cam[nearest.indices, 2] * weights).sum(1) / weights.sum(1)


def sparse_init(scene: Scene, views: list[int] | None = None, *, block: int = 4, opacity: float = 0.5,
                sh_degree: int = 3) -> nn.ParameterDict:
    """Pixel-aligned Gaussians from context ``views`` (default: up to 8 spread over the train views)."""
    if scene.depths is None and scene.points is None:
        raise ValueError("sparse init needs depth maps or SfM points to place Gaussians, and this scene has neither")
    if views is None:
        train = (~scene.test).nonzero().squeeze(1)
        views = train[torch.linspace(0, len(train) - 1, min(8, len(train))).round().long()].tolist()
    means, colors, scales = [], [], []
    h, w = scene.height // block * block, scene.width // block * block
    ys, xs = torch.meshgrid(torch.arange(h // block), torch.arange(w // block), indexing="ij")
    pixels = torch.stack([xs, ys], -1).reshape(-1, 2).float() * block + block / 2  # block centres
    for v in views:
        image = scene.images[v, :h, :w].reshape(h // block, block, w // block, block, 3)
        if scene.depths is not None:
            depth = scene.depths[v, :h, :w].reshape(h // block, block, w // block, block)
            valid = depth > 0
            depth = (depth * valid).sum((1, 3)) / valid.sum((1, 3)).clamp_min(1)
            depth = depth.reshape(-1)
        else:
            depth = _interpolated_depth(scene, v, pixels)
        keep = depth > 0
        K = scene.Ks[v]
        rays = torch.cat([(pixels - K[:2, 2]) / K.diagonal()[:2], torch.ones(len(pixels), 1)], -1)
        cam = rays[keep] * depth[keep, None]
        c2w = torch.linalg.inv(scene.viewmats[v])
        means.append(cam @ c2w[:3, :3].T + c2w[:3, 3])
        colors.append(image.mean((1, 3)).reshape(-1, 3)[keep])
        scales.append(depth[keep] * block / K[0, 0] / 2)
    return gaussians_from_points(torch.cat(means), torch.cat(colors), torch.cat(scales), sh_degree=sh_degree,
                                 opacity=opacity)
