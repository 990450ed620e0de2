"""One rendering entry point with gsplat's conventions: gsplat's CUDA rasterizer on CUDA tensors,
our pure-PyTorch rasterizer (:mod:`l2s_optim.render.cpu`) everywhere else."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping

import torch
from torch import Tensor

from .cpu import rasterize_cpu, sh_to_rgb

__all__ = ["rasterization", "render_splats", "sh_to_rgb"]


def rasterization(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, dict]:
    """Render N Gaussians into C pinhole views, differentiable w.r.t. every Gaussian input.

    Args:
        means: [N,3] world positions.
        quats: [N,4] rotations (w, x, y, z), any norm.
        scales: [N,3] standard deviations, ACTIVATED (``exp`` of gsplat's stored log-scales).
        opacities: [N] in [0,1], ACTIVATED (``sigmoid`` of the stored logits).
        colors: [N,K,3] SH coefficients when ``sh_degree`` is given (gsplat's ``cat([sh0, shN], 1)``),
            else [N,D] or [C,N,D] colours.
        viewmats: [C,4,4] world-to-camera, OpenCV axes (x right, y down, z forward).
        Ks: [C,3,3] pinhole intrinsics in pixels.
        width, height: image size in pixels.
        sh_degree: SH degree to evaluate (<= the degree of ``colors``), or None.
        backgrounds: [C,D] colour behind the Gaussians (default: none, i.e. black).
        backend: ``"auto"`` (gsplat on CUDA when installed, else ``"cpu"``), ``"gsplat"`` or ``"cpu"``.

    Returns:
        images [C,H,W,D], alphas [C,H,W,1] and an info dict with gsplat's keys for its strategies
        (``means2d`` [C,N,2] in pixels, ``radii`` [C,N,2], ``depths`` [C,N], ``width``, ``height``,
        ``n_cameras``, ``gaussian_ids``).
    """
    n = means.shape[0]
    for name, tensor, shape in (("quats", quats, (n, 4)), ("scales", scales, (n, 3)), ("opacities", opacities, (n,))):
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must be {list(shape)} for N={n} means, got {list(tensor.shape)}")
    if means.ndim != 2 or means.shape[1] != 3:
        raise ValueError(f"means must be [N,3], got {list(means.shape)}")
    if viewmats.ndim != 3 or viewmats.shape[1:] != (4, 4) or Ks.shape != (viewmats.shape[0], 3, 3):
        raise ValueError(f"viewmats must be [C,4,4] and Ks [C,3,3], got {list(viewmats.shape)} and {list(Ks.shape)}")
    if backend == "auto":
        backend = "gsplat" if means.is_cuda and importlib.util.find_spec("gsplat") else "cpu"
    if backend == "gsplat":
        import gsplat

        return gsplat.rasterization(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane=near_plane,
            far_plane=far_plane, eps2d=eps2d, sh_degree=sh_degree, backgrounds=backgrounds, packed=False,
        )
    if backend != "cpu":
        raise ValueError(f"unknown render backend {backend!r}; choose 'auto', 'gsplat' or 'cpu'")
    return rasterize_cpu(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree=sh_degree,
        backgrounds=backgrounds, near_plane=near_plane, far_plane=far_plane, eps2d=eps2d,
    )


def render_splats(
    splats: Mapping[str, Tensor], viewmats: Tensor, Ks: Tensor, width: int, height: int,
    background: Tensor | None = None, **kwargs,
) -> tuple[Tensor, Tensor, dict]:
    """Render gsplat-style raw parameters (``exp`` of scales, ``sigmoid`` of opacities, SH colours
    from ``sh0``/``shN`` at their full degree). ``background``: [3] colour for every view."""
    colors = splats["sh0"]
    if "shN" in splats:
        colors = torch.cat([colors, splats["shN"]], 1)
    sh_degree = round(colors.shape[1] ** 0.5) - 1
    backgrounds = None if background is None else background.to(colors).expand(viewmats.shape[0], 3)
    return rasterization(
        splats["means"], splats["quats"], splats["scales"].exp(), torch.sigmoid(splats["opacities"]).reshape(-1),
        colors, viewmats, Ks, width, height, sh_degree=sh_degree, backgrounds=backgrounds, **kwargs,
    )
