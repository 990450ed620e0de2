"""Image reading, downscaling and lens undistortion shared by the loaders."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# greyscale modes of more than 8 bits (16-bit PNGs open as "I;16"), by their white level
_HIGH_DEPTH_WHITE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}


def check_factor(factor: int) -> None:
    """Refuse an image downscale factor that is not a positive integer."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"the image downscale factor must be an integer >= 1, got {factor!r}")


def read_image(path: Path, factor: int, background: tuple[float, float, float]) -> Tensor:
    """[H/factor, W/factor, 3] float in [0,1]; RGBA is composited onto ``background``; 16-bit greyscale
    is scaled by its own white level (65535), not clipped to 8 bits."""
    from PIL import Image

    with Image.open(path) as im:
        white = _HIGH_DEPTH_WHITE.get(im.mode, 255.0)
        if im.mode in _HIGH_DEPTH_WHITE:
            im = im.convert("F")
        else:
            im = im.convert("RGBA") if im.mode in ("RGBA", "LA", "P") else im.convert("RGB")
        if factor > 1:
            im = im.resize((im.width // factor, im.height // factor), Image.Resampling.BOX)
        pixels = np.asarray(im, dtype=np.float32) / white
    array = torch.from_numpy(pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=-1))
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


def check_intrinsics(K: Tensor, where: str) -> None:
    """Refuse a pinhole ``K`` [3,3] with a non-finite entry or a focal length <= 0 (``ValueError`` naming
    ``where``, the file and camera it came from)."""
    if not bool(torch.isfinite(K).all()) or not (K[0, 0] > 0 and K[1, 1] > 0):
        raise ValueError(f"{where}: invalid intrinsics (focal lengths must be > 0 and every entry finite), K = "
                         f"{K.tolist()}")


def stack_images(images: list[Tensor], names: list[str], where: str) -> Tensor:
    """[V,H,W,3] from finite images of one size; ``ValueError`` naming the first image of another size or
    with NaN/Inf pixels (from extreme distortion coefficients)."""
    broken = [name for name, image in zip(names, images) if not bool(torch.isfinite(image).all())]
    if broken:
        raise ValueError(f"{where}: image {broken[0]} has NaN or Inf pixels once undistorted (check its camera's "
                         "distortion coefficients)")
    odd = [i for i, image in enumerate(images) if image.shape != images[0].shape]
    if odd:
        raise ValueError(f"{where}: images differ in size ({names[0]} is {list(images[0].shape[:2])}, {names[odd[0]]} "
                         f"is {list(images[odd[0]].shape[:2])}, {len(odd)} differ); batch rendering needs one size")
    return torch.stack(images)


def warn_unsupported_distortion(model: str) -> None:
    warnings.warn(f"camera model {model} is treated as a pinhole camera: its distortion is NOT removed", stacklevel=3)
