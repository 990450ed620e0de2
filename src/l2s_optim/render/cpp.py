"""The compiled CPU rasterizer (``backend="cpp"``): ``csrc/rasterize.cpp``, built on first use.

The C++ source ships in the package and is compiled by :func:`torch.utils.cpp_extension.load`
(ninja and a C++17 compiler) into torch's extensions folder (``$TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``); later processes reuse the build. Same math and outputs as the
pure-PyTorch reference :func:`l2s_optim.render.cpu.rasterize_cpu`, with hand-written backward
passes for its three stages (projection, SH colours, compositing) wrapped as autograd Functions.
Gradients reach ``means``, ``quats``, ``scales``, ``opacities``, ``colors``, ``backgrounds`` and
``info["means2d"]`` (gsplat's strategies read its ``.grad``); cameras are not differentiable here.
Work is split over torch's intra-op threads (``torch.get_num_threads()``), and every gradient is
summed in a fixed order: results are bit-identical at any thread count.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

SOURCE = Path(__file__).with_name("csrc") / "rasterize.cpp"


@functools.cache
def extension() -> ModuleType:
    """The compiled module (built by the first call on this machine, then loaded from the cache).

    Raises what the build raises (no compiler, no ninja, a compile error); the caller decides on a fallback.
    """
    from torch.utils.cpp_extension import load

    # OpenMP simd pragmas and -fno-trapping-math let the per-pixel loops vectorise; -ffp-contract=off keeps every copy of
    # a formula rounded alike, so that the forward and backward take the same decisions. No -march: the summation
    # order of vectorised reductions must not depend on the machine's vector width or on memory alignment.
    # -fopenmp: torch's at::parallel_for runs the bands on torch's own OpenMP threads (libgomp.so.1, already loaded).
    flags = ["-O3", "-fopenmp", "-fno-trapping-math", "-ffp-contract=off"]
    return load(name="l2s_optim_rasterize", sources=[str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"])


class _Project(torch.autograd.Function):
    """EWA projection of N Gaussians into C cameras -> means2d [C,N,2], conics [C,N,3], depths [C,N], radii."""

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, eps2d):
        outputs = extension().project_forward(
            means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, eps2d
        )
        ctx.save_for_backward(means, quats, scales, viewmats, Ks)
        ctx.settings = (width, height, eps2d)
        ctx.mark_non_differentiable(outputs[3])
        return tuple(outputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, v_means2d, v_conics, v_depths, _v_radii):
        grads = extension().project_backward(
            *ctx.saved_tensors, *ctx.settings, v_means2d.contiguous(), v_conics.contiguous(), v_depths.contiguous()
        )
        return (*grads, None, None, None, None, None, None, None, None)


class _ShColours(torch.autograd.Function):
    """Colours [C,N,3] = clamp_min(SH(coeffs [N,K,3]) along dirs [C,N,3] + 0.5, 0); dirs are constants."""

    @staticmethod
    def forward(ctx, coeffs, dirs, degree):
        ctx.save_for_backward(coeffs, dirs)
        ctx.degree = degree
        return extension().sh_forward(coeffs, dirs, degree)

    @staticmethod
    @once_differentiable
    def backward(ctx, v_colors):
        coeffs, dirs = ctx.saved_tensors
        return extension().sh_backward(coeffs, dirs, ctx.degree, v_colors.contiguous()), None, None


class _Composite(torch.autograd.Function):
    """Front-to-back compositing -> images [C,H,W,D] and alphas [C,H,W,1]."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, radii, depths, width, height):
        image, transmittance, last, band_offsets, band_ids = extension().rasterize_forward(
            means2d, conics, colors, opacities, backgrounds, radii, depths, width, height
        )
        ctx.save_for_backward(
            means2d, conics, colors, opacities, backgrounds, radii, transmittance, last, band_offsets, band_ids
        )
        ctx.size = (width, height)
        return image, (1 - transmittance)[..., None]

    @staticmethod
    @once_differentiable
    def backward(ctx, v_image, v_alpha):
        saved = ctx.saved_tensors
        v_means2d, v_conics, v_colors, v_opacities, v_backgrounds = extension().rasterize_backward(
            *saved, *ctx.size, v_image.contiguous(), v_alpha.contiguous()
        )
        v_backgrounds = v_backgrounds if saved[4].numel() else None
        return v_means2d, v_conics, v_colors, v_opacities, v_backgrounds, None, None, None, None


def rasterize_cpp(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
    viewmats: Tensor, Ks: Tensor, width: int, height: int, *, sh_degree: int | None = None,
    backgrounds: Tensor | None = None, near_plane: float = 0.01, far_plane: float = 1e10, eps2d: float = 0.3,
) -> tuple[Tensor, Tensor, dict]:
    """Render C views on the CPU with the compiled kernels; arguments and outputs as
    :func:`l2s_optim.render.rasterization` (inputs already validated: CPU, one float dtype)."""
    n_cameras = viewmats.shape[0]
    means, quats, scales, opacities = (t.contiguous() for t in (means, quats, scales, opacities))
    viewmats, Ks = viewmats.detach().contiguous(), Ks.detach().contiguous()
    means2d, conics, depths, radii = _Project.apply(
        means, quats, scales, opacities.detach(), viewmats, Ks, width, height, near_plane, far_plane, eps2d
    )
    if sh_degree is not None:
        campos = torch.linalg.inv(viewmats)[:, :3, 3]
        dirs = (means.detach()[None] - campos[:, None]).contiguous()
        cam_colors = _ShColours.apply(colors.contiguous(), dirs, sh_degree)
    else:
        cam_colors = (colors if colors.ndim == 3 else colors.expand(n_cameras, *colors.shape)).contiguous()
    if backgrounds is None:
        backgrounds = means.new_empty(0)
    images, alphas = _Composite.apply(
        means2d, conics, cam_colors, opacities, backgrounds.contiguous(), radii, depths.detach(), width, height
    )
    info = {"means2d": means2d, "radii": radii, "depths": depths, "conics": conics, "width": width,
            "height": height, "n_cameras": n_cameras, "gaussian_ids": None}
    return images, alphas, info
