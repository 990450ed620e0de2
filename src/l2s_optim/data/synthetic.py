"""Procedural scenes: a ground-truth Gaussian object rendered by our renderer from cameras around
it, with depth maps. Unlimited, download-free data for the demo, tests and meta-training."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..render import rasterization
from .scene import Scene


def look_at(eye: Tensor, target: Tensor, up: Tensor) -> Tensor:
    """World-to-camera [4,4], OpenCV axes (x right, y down, z forward)."""
    forward = torch.nn.functional.normalize(target - eye, dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, up), dim=0)
    down = torch.linalg.cross(forward, right)
    rot = torch.stack([right, down, forward])
    view = torch.eye(4)
    view[:3, :3], view[:3, 3] = rot, -rot @ eye
    return view


def orbit_cameras(n: int, radius: float = 1.0, elevation: tuple[float, float] = (-0.2, 0.8), seed: int = 0) -> Tensor:
    """[n,4,4] cameras on a sphere around the origin looking at it (golden-angle spiral, z up)."""
    g = torch.Generator().manual_seed(seed)
    offset = torch.rand((), generator=g).item() * 2 * math.pi
    views = []
    for i in range(n):
        z = elevation[0] + (elevation[1] - elevation[0]) * (i + 0.5) / n
        theta = offset + i * math.pi * (3 - math.sqrt(5))
        r = math.sqrt(max(1 - z * z, 0.0))
        eye = radius * torch.tensor([r * math.cos(theta), r * math.sin(theta), z])
        views.append(look_at(eye, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0])))
    return torch.stack(views)


def textured_object(n: int = 3000, seed: int = 0) -> dict[str, Tensor]:
    """Activated Gaussians (means, quats, scales, opacities, rgb) on a few random textured blobs."""
    g = torch.Generator().manual_seed(seed)
    n_blobs = 3
    centers = (torch.rand(n_blobs, 3, generator=g) - 0.5) * 0.3
    radii = torch.rand(n_blobs, 3, generator=g) * 0.1 + 0.1
    owner = torch.randint(0, n_blobs, (n,), generator=g)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = centers[owner] + direction * radii[owner]
    freq = torch.rand(n_blobs, 3, generator=g) * 20 + 5
    phase = torch.rand(n_blobs, 3, generator=g) * 2 * math.pi
    rgb = 0.5 + 0.45 * torch.sin(freq[owner] * direction + phase[owner])  # stripes per blob
    return {
        "means": means,
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.rand(n, 3, generator=g) * 0.012 + 0.004,
        "opacities": torch.rand(n, generator=g) * 0.3 + 0.7,
        "rgb": rgb,
    }


@torch.no_grad()
def synthetic_scene(n_views: int = 24, size: int = 64, n_gaussians: int = 3000, seed: int = 0,
                    test_every: int = 8, background: float = 0.0) -> Scene:
    """A procedural scene rendered at ``size`` x ``size`` with depth maps and 'SfM' points sampled
    from the object's surface (with noise), in a normalised frame (cameras at distance 1)."""
    obj = textured_object(n_gaussians, seed)
    viewmats = orbit_cameras(n_views, seed=seed)
    focal = 1.2 * size
    Ks = torch.tensor([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]]).expand(n_views, 3, 3).clone()
    depth_per_view = (obj["means"] @ viewmats[:, :3, :3].transpose(1, 2) + viewmats[:, None, :3, 3])[..., 2:]  # [V,N,1]
    args = (obj["means"], obj["quats"], obj["scales"], obj["opacities"])
    backgrounds = torch.full((n_views, 3), background)
    images, alphas, _ = rasterization(*args, obj["rgb"], viewmats, Ks, size, size, backgrounds=backgrounds)
    depth, _, _ = rasterization(*args, depth_per_view, viewmats, Ks, size, size)
    depths = torch.where(alphas[..., 0] > 0.5, depth[..., 0] / alphas[..., 0].clamp_min(1e-6), torch.zeros(()))
    g = torch.Generator().manual_seed(seed + 1)
    pick = torch.randperm(n_gaussians, generator=g)[: n_gaussians // 4]
    points = obj["means"][pick] + 0.005 * torch.randn(len(pick), 3, generator=g)
    return Scene(
        images=images.clamp(0, 1), viewmats=viewmats, Ks=Ks, names=[f"view_{i:03d}" for i in range(n_views)],
        test=torch.arange(n_views) % test_every == 0, points=points, point_colors=obj["rgb"][pick],
        depths=depths, background=(background,) * 3,
    )
