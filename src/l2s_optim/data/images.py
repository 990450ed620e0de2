"""Image reading, downscaling and lens undistortion shared by the loaders."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def read_image(path: Path, factor: int, background: tuple[float, float, float]) -> Tensor:
    """[H/factor, W/factor, 3] float in [0,1]; RGBA is composited onto ``background``."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGBA") if im.mode in ("RGBA", "LA", "P") else im.convert("RGB")
        if factor > 1:
            im = im.resize((im.width // factor, im.height // factor), Image.Resampling.BOX)
        array = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
    if array.shape[-1] == 4:
        rgb, alpha = array[..., :3], array[..., 3:]
        array = rgb * alpha + (1 - alpha) * torch.tensor(background)
    return array


def scale_intrinsics(K: Tensor, factor: int) -> Tensor:
    """Intrinsics for an image downscaled by an integer factor (pixel-corner convention)."""
    K = K.clone()
    K[:2] /= factor
    return K


def undistort(image: Tensor, K: Tensor, radial: tuple[float, ...], tangential: tuple[float, float] = (0.0, 0.0)) -> Tensor:
    """Resample an image [H,W,3] taken through a lens with OpenCV-style radial (k1, k2, ...) and
    tangential (p1, p2) distortion onto the ideal pinhole camera with the same ``K``."""
    h, w = image.shape[:2]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    x, y = (xs + 0.5 - cx) / fx, (ys + 0.5 - cy) / fy
    r2 = x * x + y * y
    gain = 1 + sum(k * r2 ** (i + 1) for i, k in enumerate(radial))
    p1, p2 = tangential
    xd = x * gain + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * gain + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    u, v = xd * fx + cx, yd * fy + cy  # distorted pixel positions (corner convention)
    grid = torch.stack([2 * u / w - 1, 2 * v / h - 1], -1)[None].float()
    out = F.grid_sample(image.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0].permute(1, 2, 0)


def warn_unsupported_distortion(model: str) -> None:
    warnings.warn(f"camera model {model} is treated as a pinhole camera: its distortion is NOT removed", stacklevel=3)
