"""``transforms.json`` scenes: NeRF-synthetic (``camera_angle_x``), instant-ngp and nerfstudio
(``fl_x, fl_y, cx, cy, w, h``, top level or per frame). Poses are camera-to-world in OpenGL axes."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .images import check_factor, check_intrinsics, read_image, scale_intrinsics, stack_images, undistort
from .scene import Scene, every_nth_is_test

_OPENGL_TO_OPENCV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def _image_path(root: Path, file_path: str) -> Path:
    path = root / file_path
    if path.suffix:
        return path
    for suffix in (".png", ".jpg", ".jpeg", ".PNG", ".JPG"):
        if path.with_suffix(suffix).is_file():
            return path.with_suffix(suffix)
    raise FileNotFoundError(f"no image file for {path} (.png/.jpg)")


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise TypeError(f"{path}: expected a JSON object with a 'frames' list")
    return meta


def _number(settings: Mapping[str, Any], key: str, where: str, default: float | None = None,
            positive: bool = False) -> float:
    """``settings[key]`` (or ``default``) as a finite number (> 0 if ``positive``); ``ValueError`` naming it."""
    value = settings.get(key, default)
    if value is None:
        raise ValueError(f"{where}: missing {key!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            positive and value <= 0):
        raise ValueError(f"{where}: {key!r} must be a finite number{' > 0' if positive else ''}, got {value!r}")
    return float(value)


def _viewmat(matrix: Any, where: str) -> Tensor:
    """World-to-camera [4,4] (OpenCV axes) from a rigid camera-to-world 4x4 (or 3x4, the bottom row implied)
    transform in OpenGL axes, finite in float32."""
    try:
        c2w = torch.tensor(matrix, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        c2w = torch.empty(0)
    if c2w.shape == (3, 4):
        c2w = torch.cat([c2w, c2w.new_tensor([[0.0, 0.0, 0.0, 1.0]])])
    if c2w.shape != (4, 4) or not bool(torch.isfinite(c2w).all()):
        raise ValueError(f"{where}: must be a 4x4 (or 3x4) matrix of finite numbers, got {matrix!r:.200}")
    rotation = c2w[:3, :3]
    orthonormal = (rotation.T @ rotation - torch.eye(3, dtype=torch.float64)).abs().max() < 1e-3
    if not (orthonormal and torch.linalg.det(rotation) > 0 and torch.equal(c2w[3], c2w.new_tensor([0.0, 0, 0, 1]))):
        raise ValueError(f"{where}: not a rigid camera pose (the rotation must be orthonormal with determinant +1 "
                         f"and the bottom row 0 0 0 1), got {c2w.tolist()}")
    viewmat = torch.linalg.inv(c2w.float() @ _OPENGL_TO_OPENCV)
    if not bool(torch.isfinite(viewmat).all()):
        raise ValueError(f"{where}: the camera position overflows float32, got {c2w[:3, 3].tolist()}")
    return viewmat


def _frames(root: Path, path: Path, factor: int,
            background: tuple[float, float, float]) -> Iterator[tuple[str, Tensor, Tensor, Tensor]]:
    meta = _read_meta(path)
    for i, frame in enumerate(meta["frames"]):
        where = f"{path}: frames[{i}]"
        if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str):
            raise TypeError(f"{where}: needs a 'file_path' string")
        if "transform_matrix" not in frame:
            raise ValueError(f"{where}: missing 'transform_matrix'")
        settings = {**meta, **frame}
        image = read_image(_image_path(root, frame["file_path"]), 1, background)
        h, w = image.shape[:2]
        if "fl_x" in settings:
            fx = _number(settings, "fl_x", where, positive=True)
            fy = _number(settings, "fl_y", where, fx, positive=True)
            cx, cy = _number(settings, "cx", where, w / 2), _number(settings, "cy", where, h / 2)
            scale = w / _number(settings, "w", where, w, positive=True)  # the json may describe full-resolution images
            fx, fy, cx, cy = fx * scale, fy * scale, cx * scale, cy * scale
        elif "camera_angle_x" in settings:
            angle = _number(settings, "camera_angle_x", where, positive=True)
            if angle >= math.pi:
                raise ValueError(f"{where}: 'camera_angle_x' is a field of view in radians, below pi, got {angle!r}")
            fx = fy = 0.5 * w / torch.tan(torch.tensor(0.5 * angle)).item()
            cx, cy = w / 2, h / 2
        else:
            raise ValueError(f"{where}: neither the frame nor the file gives 'fl_x' or 'camera_angle_x'")
        K = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        check_intrinsics(K, where)
        radial = tuple(_number(settings, k, where, 0.0) for k in ("k1", "k2", "k3", "k4"))
        tangential = (_number(settings, "p1", where, 0.0), _number(settings, "p2", where, 0.0))
        if any(radial) or any(tangential):
            image = undistort(image, K, radial, tangential)
        if factor > 1:
            image = image[: h - h % factor, : w - w % factor].reshape(h // factor, factor, w // factor, factor, 3).mean((1, 3))
            K = scale_intrinsics(K, factor)
        yield frame["file_path"], image, _viewmat(frame["transform_matrix"], f"{where}.transform_matrix"), K


def load_transforms(root: Path, factor: int = 1, test_every: int = 8,
                    background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Scene:
    """``transforms_train.json`` + ``transforms_test.json`` (their split is kept) or one
    ``transforms.json`` (every ``test_every``-th view held out). RGBA images are composited onto
    ``background``."""
    check_factor(factor)
    root = Path(root)
    split_files = [root / "transforms_train.json", root / "transforms_test.json"]
    if all(f.is_file() for f in split_files):
        parts = [list(_frames(root, f, factor, background)) for f in split_files]
        frames = parts[0] + parts[1]
        test = torch.cat([torch.zeros(len(parts[0]), dtype=torch.bool), torch.ones(len(parts[1]), dtype=torch.bool)])
    elif (root / "transforms.json").is_file():
        frames = list(_frames(root, root / "transforms.json", factor, background))
        test = every_nth_is_test(len(frames), test_every)
    else:
        raise FileNotFoundError(f"{root} has no transforms.json (nor transforms_train/test.json)")
    if not frames:
        raise ValueError(f"{root}: transforms lists no frames")
    names, images, viewmats, Ks = zip(*frames)
    return Scene(images=stack_images(list(images), list(names), str(root)), viewmats=torch.stack(viewmats), Ks=torch.stack(Ks), names=list(names),
                 test=test, background=background)
