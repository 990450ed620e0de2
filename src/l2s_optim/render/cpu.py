"""A pure-PyTorch 3DGS rasterizer (gsplat has none on CPU), differentiable by autograd.

Same math as gsplat 1.5.3's classic pinhole path: EWA projection with gsplat's frustum clamp of
the Jacobian, a 0.3-pixel low-pass (``eps2d``), an opacity-aware rectangular footprint of at most
3.33 sigma, alpha = min(0.999, opacity * exp(-sigma)) with alpha < 1/255 skipped, front-to-back
compositing that stops before transmittance would fall to 1e-4, pixel centres at +0.5.

Instead of tiles it builds the list of (Gaussian, pixel) pairs inside each footprint, sorts them
by pixel then depth, gets transmittance by a segmented exclusive cumulative sum of log(1 - alpha)
and accumulates colour by scatter-add: all vectorised, in row bands that bound memory.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..gaussians import SH_C0, quat_to_rotmat

ALPHA_THRESHOLD = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
MAX_EXTEND = 3.33

_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
          -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def sh_basis(dirs: Tensor, degree: int) -> Tensor:
    """Real SH basis [..., (degree+1)^2] at unit directions [..., 3] (3DGS/gsplat sign convention)."""
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-_SH_C1 * y, _SH_C1 * z, -_SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [_SH_C2[0] * xy, _SH_C2[1] * yz, _SH_C2[2] * (2 * zz - xx - yy), _SH_C2[3] * xz,
                _SH_C2[4] * (xx - yy)]
    if degree >= 3:
        out += [
            _SH_C3[0] * y * (3 * xx - yy),
            _SH_C3[1] * xy * z,
            _SH_C3[2] * y * (4 * zz - xx - yy),
            _SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            _SH_C3[4] * x * (4 * zz - xx - yy),
            _SH_C3[5] * z * (xx - yy),
            _SH_C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, dim=-1)


def sh_to_rgb(coeffs: Tensor, dirs: Tensor, degree: int) -> Tensor:
    """Colours [N,3] from SH coefficients [N,K,3] seen along directions [N,3]: clamp_min(sh + 0.5, 0)."""
    k = (degree + 1) ** 2
    basis = sh_basis(F.normalize(dirs, dim=-1), degree)  # [N,k]
    return torch.clamp_min((basis[..., None] * coeffs[:, :k]).sum(-2) + 0.5, 0.0)


def project(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmat: Tensor, K: Tensor,
    width: int, height: int, near_plane: float, far_plane: float, eps2d: float,
) -> dict[str, Tensor]:
    """EWA projection of N Gaussians into one pinhole camera (world-to-camera ``viewmat``, OpenCV).

    Returns means2d [N,2] (pixels), conics [N,3] (inverse 2D covariance a, b, c), depths [N],
    radii [N,2] int (0 = culled).
    """
    rot, trans = viewmat[:3, :3], viewmat[:3, 3]
    mean_c = means @ rot.T + trans  # [N,3]
    x, y, z = mean_c.unbind(-1)
    m = quat_to_rotmat(quats) * scales[:, None, :]  # R S
    cov_c = rot @ (m @ m.transpose(1, 2)) @ rot.T  # [N,3,3]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    safe_z = torch.where(z > 0, z, torch.ones_like(z))
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    tx = safe_z * torch.clamp(x / safe_z, -(cx / fx + 0.3 * tan_x), (width - cx) / fx + 0.3 * tan_x)
    ty = safe_z * torch.clamp(y / safe_z, -(cy / fy + 0.3 * tan_y), (height - cy) / fy + 0.3 * tan_y)
    zeros = torch.zeros_like(z)
    jac = torch.stack([fx / safe_z, zeros, -fx * tx / safe_z**2, zeros, fy / safe_z, -fy * ty / safe_z**2], -1)
    jac = jac.reshape(-1, 2, 3)
    cov2d = jac @ cov_c @ jac.transpose(1, 2) + eps2d * torch.eye(2, dtype=means.dtype, device=means.device)
    a, b, c = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    det = a * c - b * b
    safe_det = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / safe_det, -b / safe_det, a / safe_det], -1)
    means2d = torch.stack([fx * x / safe_z + cx, fy * y / safe_z + cy], -1)
    with torch.no_grad():
        extend = torch.sqrt(2 * torch.log(opacities.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp_max(MAX_EXTEND)
        radii = torch.stack([torch.ceil(extend * a.sqrt()), torch.ceil(extend * c.sqrt())], -1)
        mx, my = means2d.unbind(-1)
        visible = (
            (z >= near_plane) & (z <= far_plane) & (det > 0) & (opacities >= ALPHA_THRESHOLD)
            & (mx + radii[:, 0] > 0) & (mx - radii[:, 0] < width) & (my + radii[:, 1] > 0) & (my - radii[:, 1] < height)
        )
        radii = torch.where(visible[:, None], radii, torch.zeros_like(radii)).to(torch.int32)
    return {"means2d": means2d, "conics": conics, "depths": z, "radii": radii}


def _footprints(means2d: Tensor, radii: Tensor, width: int, height: int) -> Tensor:
    """Integer pixel boxes [N,4] (x0, y0, x1, y1), end-exclusive, clipped to the image."""
    with torch.no_grad():
        lo = torch.floor(means2d - radii).clamp_min(0)
        hi = torch.ceil(means2d + radii)
        hi = torch.stack([hi[:, 0].clamp_max(width), hi[:, 1].clamp_max(height)], -1)
        return torch.cat([lo, hi], -1).long()


def _pairs_in_band(boxes: Tensor, ids: Tensor, y0: int, y1: int, width: int) -> tuple[Tensor, Tensor]:
    """(Gaussian id, pixel index) for every pixel of every box inside rows [y0, y1)."""
    top, bottom = boxes[:, 1].clamp_min(y0), boxes[:, 3].clamp_max(y1)
    w, h = boxes[:, 2] - boxes[:, 0], (bottom - top).clamp_min(0)
    counts = w * h
    keep = counts > 0
    ids, counts, w, left, top = ids[keep], counts[keep], w[keep], boxes[keep, 0], top[keep]
    owner = torch.repeat_interleave(torch.arange(len(ids), device=ids.device), counts)
    starts = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    local = torch.arange(int(counts.sum()), device=ids.device) - starts
    px = left[owner] + local % w[owner]
    py = top[owner] + torch.div(local, w[owner], rounding_mode="floor")
    return ids[owner], py * width + px


def _composite_band(
    gauss: Tensor, pixel: Tensor, means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor,
    depth_rank: Tensor, width: int, n_pixels: int, pixel_offset: int,
) -> tuple[Tensor, Tensor]:
    """Colour [n_pixels, D] and alpha [n_pixels] of one band from its (Gaussian, pixel) pairs."""
    order = torch.argsort(pixel * len(depth_rank) + depth_rank[gauss])
    gauss, pixel = gauss[order], pixel[order]
    row = torch.div(pixel, width, rounding_mode="floor")
    centre = torch.stack([(pixel % width).to(means2d.dtype), row.to(means2d.dtype)], -1) + 0.5
    d = centre - means2d[gauss]
    a, b, c = conics[gauss].unbind(-1)
    sigma = 0.5 * (a * d[:, 0] ** 2 + c * d[:, 1] ** 2) + b * d[:, 0] * d[:, 1]
    alpha = torch.clamp_max(opacities[gauss] * torch.exp(-sigma), ALPHA_MAX)
    alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, torch.zeros_like(alpha))
    log_keep = torch.log1p(-alpha).double()
    inclusive = log_keep.cumsum(0)
    first = torch.ones_like(pixel, dtype=torch.bool)
    first[1:] = pixel[1:] != pixel[:-1]
    segment = first.cumsum(0) - 1
    exclusive = inclusive - log_keep
    base = exclusive[first][segment]  # cumulative sum before each pixel's first pair
    log_t = (exclusive - base).to(alpha.dtype)  # log transmittance in front of each pair
    done = (log_t + log_keep.to(alpha.dtype)) <= math.log(T_MIN)
    weight = torch.where(done, torch.zeros_like(alpha), alpha * torch.exp(log_t))
    local = pixel - pixel_offset
    image = torch.zeros(n_pixels, colors.shape[-1], dtype=colors.dtype, device=colors.device)
    image = image.index_add(0, local, weight[:, None] * colors[gauss])
    alphas = torch.zeros(n_pixels, dtype=weight.dtype, device=weight.device).index_add(0, local, weight)
    return image, alphas


def rasterize_cpu(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
    viewmats: Tensor, Ks: Tensor, width: int, height: int, *, sh_degree: int | None = None,
    backgrounds: Tensor | None = None, near_plane: float = 0.01, far_plane: float = 1e10,
    eps2d: float = 0.3, max_pairs: int = 1 << 22,
) -> tuple[Tensor, Tensor, dict]:
    """Render C views; arguments as :func:`l2s_optim.render.rasterization`. ``max_pairs`` bounds the
    (Gaussian, pixel) pairs processed at once (memory)."""
    campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C,3]
    views = [project(means, quats, scales, opacities, viewmats[c], Ks[c], width, height, near_plane, far_plane, eps2d)
             for c in range(viewmats.shape[0])]
    proj = {key: torch.stack([v[key] for v in views]) for key in views[0]}  # [C,N,...]
    images, alphas = [], []
    for cam in range(viewmats.shape[0]):
        if sh_degree is not None:
            cam_colors = sh_to_rgb(colors, means.detach() - campos[cam], sh_degree)
        else:
            cam_colors = colors[cam] if colors.ndim == 3 else colors
        view = {key: value[cam] for key, value in proj.items()}
        image, alpha = _render_view(view, opacities, cam_colors, width, height, max_pairs)
        if backgrounds is not None:
            image = image + (1 - alpha[..., None]) * backgrounds[cam]
        images.append(image)
        alphas.append(alpha[..., None])
    info = {"means2d": proj["means2d"], "radii": proj["radii"], "depths": proj["depths"], "conics": proj["conics"],
            "width": width, "height": height, "n_cameras": viewmats.shape[0], "gaussian_ids": None}
    return torch.stack(images), torch.stack(alphas), info


def _render_view(proj: dict, opacities: Tensor, colors: Tensor, width: int, height: int, max_pairs: int):
    visible = (proj["radii"] > 0).all(-1)
    ids = visible.nonzero().squeeze(1)
    boxes = _footprints(proj["means2d"][ids].detach(), proj["radii"][ids], width, height)
    depth_rank = torch.zeros(len(proj["depths"]), dtype=torch.long, device=ids.device)
    depth_rank[ids[torch.argsort(proj["depths"][ids].detach())]] = torch.arange(len(ids), device=ids.device)
    pairs_per_row = torch.zeros(height + 1, dtype=torch.long)
    area_rows = (boxes[:, 2] - boxes[:, 0]).cpu()
    pairs_per_row.index_add_(0, boxes[:, 1].cpu(), area_rows)
    pairs_per_row.index_add_(0, boxes[:, 3].cpu(), -area_rows)
    pairs_per_row = pairs_per_row.cumsum(0)[:height]
    image_rows, alpha_rows, y0 = [], [], 0
    while y0 < height:
        cumulative = pairs_per_row[y0:].cumsum(0)
        y1 = y0 + max(1, int((cumulative <= max_pairs).sum()))
        gauss, pixel = _pairs_in_band(boxes, ids, y0, y1, width)
        image, alpha = _composite_band(
            gauss, pixel, proj["means2d"], proj["conics"], opacities, colors, depth_rank, width, (y1 - y0) * width,
            y0 * width,
        )
        image_rows.append(image)
        alpha_rows.append(alpha)
        y0 = y1
    return torch.cat(image_rows).reshape(height, width, -1), torch.cat(alpha_rows).reshape(height, width)
