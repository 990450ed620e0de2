"""Image losses and metrics on [..., H, W, 3] images in [0,1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _gaussian_window(size: int = 11, sigma: float = 1.5, device=None, dtype=None) -> Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Structural similarity per image [...] (11x11 Gaussian window, sigma 1.5, valid region),
    averaged over pixels and channels.

    The window is separable: the five local moments (means, second moments, covariance) are blurred
    together, by one 11-tap convolution along rows and one along columns.
    """
    lead = a.shape[:-3]
    x = a.reshape(-1, *a.shape[-3:]).permute(0, 3, 1, 2)
    y = b.reshape(-1, *b.shape[-3:]).permute(0, 3, 1, 2)
    c = x.shape[1]
    moments = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [B,5C,H,W]
    w = _gaussian_window(device=x.device, dtype=x.dtype)
    blurred = F.conv2d(moments, w.view(1, 1, -1, 1).expand(5 * c, 1, -1, 1), groups=5 * c)
    blurred = F.conv2d(blurred, w.view(1, 1, 1, -1).expand(5 * c, 1, 1, -1), groups=5 * c)
    mu_x, mu_y, xx, yy, xy = blurred.split(c, dim=1)
    var_x = xx - mu_x**2
    var_y = yy - mu_y**2
    cov = xy - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return value.mean((1, 2, 3)).reshape(lead)


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """PSNR in dB per image [...] for images in [0,1]."""
    mse = (a - b).square().mean((-3, -2, -1))
    return -10 * torch.log10(mse.clamp_min(1e-10))


def photometric_loss(rendered: Tensor, target: Tensor, ssim_weight: float = 0.2) -> Tensor:
    """3DGS's (1 - w) * L1 + w * (1 - SSIM), per view averaged over pixels, summed over the views."""
    l1 = (rendered - target).abs().mean((-3, -2, -1))
    return ((1 - ssim_weight) * l1 + ssim_weight * (1 - ssim(rendered, target))).sum()
