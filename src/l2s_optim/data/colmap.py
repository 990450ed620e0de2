"""COLMAP sparse models (``sparse/0/{cameras,images,points3D}.bin`` + ``images/``).

Reads COLMAP's documented binary format directly (no pycolmap needed). Poses are COLMAP's
world-to-camera (R from a w-first quaternion, t), already OpenCV axes.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import torch

from .images import (
    check_factor,
    check_intrinsics,
    read_image,
    scale_intrinsics,
    stack_images,
    undistort,
    warn_unsupported_distortion,
)
from .scene import Scene, every_nth_is_test

# model id -> (name, number of parameters)
CAMERA_MODELS = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5), 4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5), 8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
}


def _finite32(values: np.ndarray) -> np.ndarray:
    """Which entries stay finite as float32 (the scene's dtype)."""
    return np.abs(values) <= np.finfo(np.float32).max


class _Reader:
    """Little-endian fields of a COLMAP binary file; each read names its ``field``, so that truncated or
    corrupt content raises a ``ValueError`` naming the file, the field and the byte offset."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"COLMAP model file missing: {path}")
        self.path, self.data, self.pos = path, path.read_bytes(), 0

    def error(self, field: str, problem: str = "truncated") -> ValueError:
        return ValueError(f"{self.path}: {problem} at byte {self.pos} reading {field} (corrupt COLMAP model file)")

    def read(self, fmt: str, field: str) -> tuple:
        try:
            values = struct.unpack_from("<" + fmt, self.data, self.pos)
        except struct.error:
            raise self.error(field) from None
        self.pos += struct.calcsize("<" + fmt)
        return values

    def skip(self, count: int, fmt: str, field: str) -> None:
        end = self.pos + count * struct.calcsize("<" + fmt)
        if end > len(self.data):
            raise self.error(field)
        self.pos = end

    def string(self, field: str) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise self.error(field)
        try:
            text = self.data[self.pos : end].decode()
        except UnicodeDecodeError:
            raise self.error(field, "not UTF-8 text") from None
        self.pos = end + 1
        return text


def read_cameras(path: Path) -> dict[int, tuple[str, int, int, tuple[float, ...]]]:
    """camera id -> (model name, width, height, params)."""
    r, cameras = _Reader(path), {}
    for _ in range(r.read("Q", "the number of cameras")[0]):
        camera_id, model_id, width, height = r.read("iiQQ", "a camera's id, model and size")
        if model_id not in CAMERA_MODELS:
            raise ValueError(f"{path}: camera {camera_id} has the unknown camera model id {model_id} "
                             f"(COLMAP's are {min(CAMERA_MODELS)}..{max(CAMERA_MODELS)})")
        name, n_params = CAMERA_MODELS[model_id]
        params = r.read(f"{n_params}d", f"the parameters of camera {camera_id}")
        if not all(map(math.isfinite, params)):
            raise ValueError(f"{path}: camera {camera_id} ({name}) has non-finite parameters {list(params)}")
        cameras[camera_id] = (name, width, height, params)
    return cameras


def read_images(path: Path) -> list[tuple[str, int, np.ndarray, np.ndarray]]:
    """(name, camera id, quaternion wxyz, translation) of every registered image."""
    r, images = _Reader(path), []
    for _ in range(r.read("Q", "the number of images")[0]):
        image_id, qw, qx, qy, qz, tx, ty, tz, camera_id = r.read("idddddddi", "an image's pose")
        name = r.string(f"the name of image {image_id}")
        r.skip(r.read("Q", f"the observation count of image {name!r}")[0], "ddq", f"the observations of image {name!r}")
        q, t = np.array([qw, qx, qy, qz]), np.array([tx, ty, tz])
        if not (_finite32(q).all() and _finite32(t).all() and np.linalg.norm(q) > 1e-12):
            raise ValueError(f"{path}: image {name!r} has an invalid pose: quaternion {q.tolist()} (must be finite "
                             f"and non-zero), translation {t.tolist()} (must be finite in float32)")
        images.append((name, camera_id, q, t))
    return images


def read_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """SfM points [P,3] and their colours [P,3] uint8."""
    r, ids, xyz, rgb = _Reader(path), [], [], []
    for _ in range(r.read("Q", "the number of points")[0]):
        values = r.read("QdddBBBd", "a point")
        ids.append(values[0])
        xyz.append(values[1:4])
        rgb.append(values[4:7])
        r.skip(r.read("Q", f"the track length of point {values[0]}")[0], "ii", f"the track of point {values[0]}")
    points = np.array(xyz, dtype=np.float64).reshape(-1, 3)
    bad = np.flatnonzero(~_finite32(points).all(1))
    if len(bad):
        raise ValueError(f"{path}: point {ids[bad[0]]} has coordinates not finite in float32 {points[bad[0]].tolist()} "
                         f"({len(bad)} such points)")
    return points, np.array(rgb, dtype=np.uint8).reshape(-1, 3)


def _rotation(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def _intrinsics(model: str, params: tuple[float, ...]) -> tuple[torch.Tensor, tuple[float, ...], tuple[float, float]]:
    """K, radial and tangential distortion coefficients of a COLMAP camera."""
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "FOV"):
        fx = fy = params[0]
        cx, cy = params[1:3]
        extra = params[3:]
    else:
        fx, fy, cx, cy = params[:4]
        extra = params[4:]
    K = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    if model in ("SIMPLE_PINHOLE", "PINHOLE"):
        return K, (), (0.0, 0.0)
    if model in ("SIMPLE_RADIAL", "RADIAL"):
        return K, tuple(extra), (0.0, 0.0)
    if model == "OPENCV":
        return K, tuple(extra[:2]), tuple(extra[2:4])
    warn_unsupported_distortion(model)
    return K, (), (0.0, 0.0)


def load_colmap(root: Path, factor: int = 1, test_every: int = 8, images_dir: str = "images") -> Scene:
    """A COLMAP folder: ``sparse/0`` (or ``sparse``) + ``images`` (``images_{factor}`` used when present).

    Images are sorted by name; every ``test_every``-th is held out. Distortion of SIMPLE_RADIAL,
    RADIAL and OPENCV cameras is removed by resampling; other models warn.
    """
    check_factor(factor)
    root = Path(root)
    sparse = root / "sparse" / "0" if (root / "sparse" / "0").is_dir() else root / "sparse"
    cameras = read_cameras(sparse / "cameras.bin")
    registered = sorted(read_images(sparse / "images.bin"), key=lambda item: item[0])
    if not registered:
        raise ValueError(f"COLMAP model in {sparse} has no registered images")
    points, colors = read_points(sparse / "points3D.bin")
    folder, extra_factor = root / f"{images_dir}_{factor}", 1
    if factor == 1 or not folder.is_dir():
        folder, extra_factor = root / images_dir, factor
    images, viewmats, Ks = [], [], []
    for name, camera_id, q, t in registered:
        if camera_id not in cameras:
            raise ValueError(f"{sparse / 'images.bin'}: image {name!r} refers to camera {camera_id}, which "
                             f"{sparse / 'cameras.bin'} does not define (it has {sorted(cameras)})")
        model, _, _, params = cameras[camera_id]
        K, radial, tangential = _intrinsics(model, params)
        check_intrinsics(K, f"{sparse / 'cameras.bin'}, camera {camera_id} ({model})")
        K = scale_intrinsics(K, factor)
        image = read_image(folder / name, extra_factor, (0.0, 0.0, 0.0))
        if any(radial) or any(tangential):
            image = undistort(image, K, radial, tangential)
        view = torch.eye(4)
        view[:3, :3], view[:3, 3] = torch.from_numpy(_rotation(q)), torch.from_numpy(t)
        images.append(image)
        viewmats.append(view)
        Ks.append(K)
    return Scene(
        images=stack_images(images, [item[0] for item in registered], str(folder)), viewmats=torch.stack(viewmats), Ks=torch.stack(Ks),
        names=[item[0] for item in registered], test=every_nth_is_test(len(registered), test_every),
        points=torch.from_numpy(points).float() if len(points) else None,
        point_colors=torch.from_numpy(colors).float() / 255 if len(points) else None,
    )
