"""One rendering entry point with gsplat's conventions and three backends:

- ``"gsplat"``: gsplat's CUDA rasterizer (CUDA tensors, the ``gsplat`` extra);
- ``"cpp"``: our compiled CPU rasterizer (:mod:`l2s_optim.render.cpp`, built on first use);
- ``"torch"``: our pure-PyTorch rasterizer (:mod:`l2s_optim.render.cpu`), the readable reference.

``"auto"`` picks gsplat for CUDA tensors and cpp otherwise; when the extension cannot be built it
warns once, saying why, and falls back to torch. ``L2S_OPTIM_RENDER_BACKEND=torch`` (or ``cpp``)
replaces ``"auto"`` for CPU tensors in the whole process.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from collections.abc import Mapping

import torch
from torch import Tensor

from ..gaussians import sh_degree_of
from . import cpp
from .cpu import rasterize_cpu, sh_to_rgb

__all__ = ["BACKENDS", "cpp_available", "rasterization", "render_splats", "sh_to_rgb"]

BACKENDS = ("auto", "gsplat", "cpp", "torch")


@functools.cache
def cpp_available() -> bool:
    """Whether the compiled CPU rasterizer builds and loads here; warns once, with the reason, when not."""
    try:
        cpp.extension()
    except Exception as error:  # noqa: BLE001 - no compiler, no ninja, a compile or load error: use the reference
        reason = str(error).strip().splitlines()
        warnings.warn(
            "l2s_optim: the compiled CPU rasterizer could not be built, falling back to the pure-PyTorch one "
            f"(10-30x slower). Reason: {' / '.join(reason[-6:])}",
            RuntimeWarning,
            stacklevel=4,  # the caller of rasterization()
        )
        return False
    return True


def _check_inputs(tensors: dict[str, Tensor]) -> None:
    """Every tensor floating point, of means' dtype and on means' device, or a ValueError naming it."""
    means = tensors["means"]
    for name, tensor in tensors.items():
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            kind = tensor.dtype if isinstance(tensor, Tensor) else type(tensor).__name__
            raise ValueError(f"{name} must be a floating-point tensor, got {kind}")
        if tensor.dtype != means.dtype:
            raise ValueError(f"{name} is {tensor.dtype} but means is {means.dtype}: pass one float dtype")
        if tensor.device != means.device:
            raise ValueError(f"{name} is on {tensor.device} but means is on {means.device}: pass one device")


def _check_colours(colors: Tensor, backgrounds: Tensor | None, sh_degree: int | None, n: int, n_cameras: int) -> None:
    """Shapes of colors ([N,K,3] SH, else [N,D] or [C,N,D]) and backgrounds ([C,D]), or a ValueError."""
    if sh_degree is not None:
        if int(sh_degree) != sh_degree or not 0 <= sh_degree <= 3:
            raise ValueError(f"sh_degree must be an integer in 0..3, got {sh_degree}")
        if colors.ndim != 3 or colors.shape[0] != n or colors.shape[2] != 3 or colors.shape[1] < (sh_degree + 1) ** 2:
            raise ValueError(f"colors must be [N={n}, K >= {(sh_degree + 1) ** 2}, 3] SH coefficients for "
                             f"sh_degree={sh_degree}, got {list(colors.shape)}")
    elif not ((colors.ndim == 2 and colors.shape[0] == n) or (colors.ndim == 3 and colors.shape[:2] == (n_cameras, n))):
        raise ValueError(f"colors must be [N={n},D] or [C={n_cameras},N,D] without sh_degree, got {list(colors.shape)}")
    channels = 3 if sh_degree is not None else colors.shape[-1]
    if backgrounds is not None and tuple(backgrounds.shape) != (n_cameras, channels):
        raise ValueError(f"backgrounds must be [C={n_cameras}, D={channels}], got {list(backgrounds.shape)}")


def _resolve_backend(backend: str, means: Tensor, cpp_refusal: str | None) -> str:
    """The backend to run; ``cpp_refusal`` says why cpp cannot serve this call (None when it can)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown render backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto" and means.is_cuda:
        return "gsplat" if importlib.util.find_spec("gsplat") else "torch"
    if backend == "auto":
        backend = os.environ.get("L2S_OPTIM_RENDER_BACKEND", "auto")
        if backend not in ("auto", "cpp", "torch"):
            raise ValueError(f"L2S_OPTIM_RENDER_BACKEND={backend!r} is not one of 'auto', 'cpp', 'torch'")
    if backend == "auto":
        return "cpp" if cpp_refusal is None and cpp_available() else "torch"
    if backend == "cpp" and cpp_refusal is not None:
        raise ValueError(f"render backend 'cpp' {cpp_refusal}; use backend='torch'")
    if backend == "cpp" and not cpp_available():
        raise RuntimeError("render backend 'cpp': the C++ extension could not be built (see the warning above)")
    return backend


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
        backend: ``"auto"``, ``"gsplat"``, ``"cpp"`` or ``"torch"`` (see the module doc); on CPU
            ``"auto"`` picks torch where cpp cannot serve: viewmats or Ks that need gradients.

    Returns:
        images [C,H,W,D], alphas [C,H,W,1] and an info dict with gsplat's keys for its strategies
        (``means2d`` [C,N,2] in pixels, ``radii`` [C,N,2], ``depths`` [C,N], ``width``, ``height``,
        ``n_cameras``, ``gaussian_ids``).
    """
    if means.ndim != 2 or means.shape[1] != 3:
        raise ValueError(f"means must be [N,3], got {list(means.shape)}")
    n = means.shape[0]
    for name, tensor, shape in (("quats", quats, (n, 4)), ("scales", scales, (n, 3)), ("opacities", opacities, (n,))):
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must be {list(shape)} for N={n} means, got {list(tensor.shape)}")
    if viewmats.ndim != 3 or viewmats.shape[1:] != (4, 4) or Ks.shape != (viewmats.shape[0], 3, 3):
        raise ValueError(f"viewmats must be [C,4,4] and Ks [C,3,3], got {list(viewmats.shape)} and {list(Ks.shape)}")
    if viewmats.shape[0] < 1:
        raise ValueError("viewmats must hold at least one camera, got C=0")
    if int(width) != width or int(height) != height or width < 1 or height < 1:
        raise ValueError(f"width and height must be positive integers, got {width} x {height}")
    _check_colours(colors, backgrounds, sh_degree, n, viewmats.shape[0])
    width, height, sh_degree = int(width), int(height), None if sh_degree is None else int(sh_degree)
    tensors = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "colors": colors,
               "viewmats": viewmats, "Ks": Ks}
    if backgrounds is not None:
        tensors["backgrounds"] = backgrounds
    _check_inputs(tensors)
    cpp_refusal = None
    if means.device.type != "cpu":
        cpp_refusal = f"runs on CPU tensors, got {means.device}"
    elif means.dtype not in (torch.float32, torch.float64):
        cpp_refusal = f"computes in float32 or float64, got {means.dtype}"
    elif torch.is_grad_enabled() and (viewmats.requires_grad or Ks.requires_grad):
        cpp_refusal = "gives no gradients to viewmats or Ks"
    backend = _resolve_backend(backend, means, cpp_refusal)
    if backend == "gsplat":
        import gsplat

        return gsplat.rasterization(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane=near_plane,
            far_plane=far_plane, eps2d=eps2d, sh_degree=sh_degree, backgrounds=backgrounds, packed=False,
        )
    rasterize = cpp.rasterize_cpp if backend == "cpp" else rasterize_cpu
    return rasterize(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree=sh_degree,
        backgrounds=backgrounds, near_plane=near_plane, far_plane=far_plane, eps2d=eps2d,
    )


def render_splats(
    splats: Mapping[str, Tensor], viewmats: Tensor, Ks: Tensor, width: int, height: int,
    background: Tensor | None = None, sh_degree: int | None = None, **kwargs,
) -> tuple[Tensor, Tensor, dict]:
    """Render gsplat-style raw parameters (``exp`` of scales, ``sigmoid`` of opacities, SH colours
    from ``sh0``/``shN``). ``background``: [3] colour for every view; ``sh_degree``: the SH bands
    rendered (default: the splats' full degree; a lower one leaves the higher bands' gradients zero,
    as gsplat's SH schedule does); ``kwargs`` go to :func:`rasterization`."""
    colors = splats["sh0"]
    if "shN" in splats:
        colors = torch.cat([colors, splats["shN"]], 1)
    full_degree = sh_degree_of(splats)
    sh_degree = full_degree if sh_degree is None else min(sh_degree, full_degree)
    backgrounds = None if background is None else background.to(colors).expand(viewmats.shape[0], 3)
    return rasterization(
        splats["means"], splats["quats"], splats["scales"].exp(), torch.sigmoid(splats["opacities"]).reshape(-1),
        colors, viewmats, Ks, width, height, sh_degree=sh_degree, backgrounds=backgrounds, **kwargs,
    )
