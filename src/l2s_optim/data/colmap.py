"""COLMAP sparse models (``sparse/0/{cameras,images,points3D}.bin``, or the ``.txt`` files of COLMAP's
text format) + ``images/``.

Reads COLMAP's documented binary and text formats directly (no pycolmap needed); content that cannot be
read raises a ``ValueError`` naming the file and the byte offset (binary) or the line (text). Poses are
COLMAP's world-to-camera (R from a w-first quaternion, t), already OpenCV axes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..gaussians import quat_to_rotmat
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
MODEL_PARAMS = dict(CAMERA_MODELS.values())  # model name -> number of parameters (text format)
Camera = tuple[str, int, int, tuple[float, ...]]  # model name, width, height, params
Image = tuple[str, int, np.ndarray, np.ndarray]  # name, camera id, quaternion wxyz, translation


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


class _TextReader:
    """The lines of a COLMAP text model file; conversions name what they read, so that malformed content
    raises a ``ValueError`` naming the file and the line."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"COLMAP model file missing: {path}")
        try:
            self.lines = path.read_text().splitlines()
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not UTF-8 text (corrupt COLMAP model file)") from None
        self.path, self.read = path, 0  # lines read so far

    def error(self, line: int, problem: str) -> ValueError:
        return ValueError(f"{self.path}, line {line}: {problem} (corrupt COLMAP model file)")

    def next_line(self, data: bool = True) -> tuple[int, str] | None:
        """(line number, stripped text) of the next line, by default of the next data line (neither blank nor a
        ``#`` comment); None at the end of the file."""
        while self.read < len(self.lines):
            self.read += 1
            text = self.lines[self.read - 1].strip()
            if not data or (text and not text.startswith("#")):
                return self.read, text
        return None

    def fields(self, line: int, values: list[str], types: tuple[type, ...], what: str) -> list:
        """``values`` converted by ``types`` (one each), or an error naming the line and ``what`` it should hold."""
        try:
            if len(values) != len(types):
                raise ValueError
            return [kind(value) for kind, value in zip(types, values)]
        except ValueError:
            raise self.error(line, f"expected {what}, got {' '.join(values)!r}") from None


def read_cameras(path: Path) -> dict[int, Camera]:
    """camera id -> (model name, width, height, params), from ``cameras.bin`` or ``cameras.txt``."""
    if path.suffix == ".txt":
        return _cameras_text(path)
    r, cameras = _Reader(path), {}
    for _ in range(r.read("Q", "the number of cameras")[0]):
        camera_id, model_id, width, height = r.read("iiQQ", "a camera's id, model and size")
        if model_id not in CAMERA_MODELS:
            raise ValueError(f"{path}: camera {camera_id} has the unknown camera model id {model_id} "
                             f"(COLMAP's are {min(CAMERA_MODELS)}..{max(CAMERA_MODELS)})")
        name, n_params = CAMERA_MODELS[model_id]
        params = r.read(f"{n_params}d", f"the parameters of camera {camera_id}")
        cameras[camera_id] = _checked_camera(str(path), camera_id, (name, width, height, params))
    return cameras


def _cameras_text(path: Path) -> dict[int, Camera]:
    """:func:`read_cameras` of a ``cameras.txt``: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS...`` per line."""
    r, cameras = _TextReader(path), {}
    for line, text in iter(r.next_line, None):
        values = text.split()
        camera_id, model, width, height = r.fields(line, values[:4], (int, str, int, int),
                                                   "CAMERA_ID MODEL WIDTH HEIGHT PARAMS...")
        if model not in MODEL_PARAMS:
            raise r.error(line, f"camera {camera_id} has the unknown camera model {model!r} (COLMAP's are "
                          f"{', '.join(MODEL_PARAMS)})")
        n_params = MODEL_PARAMS[model]
        params = r.fields(line, values[4:], (float,) * n_params, f"the {n_params} parameters of a {model} camera")
        cameras[camera_id] = _checked_camera(f"{path}, line {line}", camera_id, (model, width, height, tuple(params)))
    return cameras


def _checked_camera(where: str, camera_id: int, camera: Camera) -> Camera:
    """``camera``, or a ``ValueError`` naming ``where`` when a parameter is not finite."""
    if not all(map(math.isfinite, camera[3])):
        raise ValueError(f"{where}: camera {camera_id} ({camera[0]}) has non-finite parameters {list(camera[3])}")
    return camera


def read_images(path: Path) -> list[Image]:
    """(name, camera id, quaternion wxyz, translation) of every registered image, from ``images.bin`` or
    ``images.txt``."""
    if path.suffix == ".txt":
        return _images_text(path)
    r, images = _Reader(path), []
    for _ in range(r.read("Q", "the number of images")[0]):
        image_id, qw, qx, qy, qz, tx, ty, tz, camera_id = r.read("idddddddi", "an image's pose")
        name = r.string(f"the name of image {image_id}")
        r.skip(r.read("Q", f"the observation count of image {name!r}")[0], "ddq", f"the observations of image {name!r}")
        images.append(_checked_image(str(path), (name, camera_id, np.array([qw, qx, qy, qz]), np.array([tx, ty, tz]))))
    return images


def _images_text(path: Path) -> list[Image]:
    """:func:`read_images` of an ``images.txt``: per image a line ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME``
    and a line of observations (not read; may be blank)."""
    r, images = _TextReader(path), []
    for line, text in iter(r.next_line, None):
        values = text.split(maxsplit=9)
        _, qw, qx, qy, qz, tx, ty, tz, camera_id, name = r.fields(
            line, values, (int,) + (float,) * 7 + (int, str), "IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
        r.next_line(data=False)  # the image's observations
        pose = (name, camera_id, np.array([qw, qx, qy, qz]), np.array([tx, ty, tz]))
        images.append(_checked_image(f"{path}, line {line}", pose))
    return images


def _checked_image(where: str, image: Image) -> Image:
    """``image``, or a ``ValueError`` naming ``where`` when its pose is not finite in float32 or its quaternion is
    zero."""
    name, _, q, t = image
    if not (_finite32(q).all() and _finite32(t).all() and np.linalg.norm(q) > 1e-12):
        raise ValueError(f"{where}: image {name!r} has an invalid pose: quaternion {q.tolist()} (must be finite "
                         f"and non-zero), translation {t.tolist()} (must be finite in float32)")
    return image


def read_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """SfM points [P,3] and their colours [P,3] uint8, from ``points3D.bin`` or ``points3D.txt``."""
    if path.suffix == ".txt":
        return _points_text(path)
    r, ids, xyz, rgb = _Reader(path), [], [], []
    for _ in range(r.read("Q", "the number of points")[0]):
        values = r.read("QdddBBBd", "a point")
        ids.append(values[0])
        xyz.append(values[1:4])
        rgb.append(values[4:7])
        r.skip(r.read("Q", f"the track length of point {values[0]}")[0], "ii", f"the track of point {values[0]}")
    return _checked_points(ids, xyz, rgb, lambda _: str(path))


def _points_text(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_points` of a ``points3D.txt``: ``POINT3D_ID X Y Z R G B ERROR TRACK...`` per line."""
    r, ids, xyz, rgb, lines = _TextReader(path), [], [], [], []
    for line, text in iter(r.next_line, None):
        values = r.fields(line, text.split()[:8], (int, float, float, float, int, int, int, float),
                          "POINT3D_ID X Y Z R G B ERROR TRACK...")
        if not all(0 <= c <= 255 for c in values[4:7]):
            raise r.error(line, f"point {values[0]} has colour {values[4:7]}, not 8-bit RGB")
        ids.append(values[0])
        xyz.append(values[1:4])
        rgb.append(values[4:7])
        lines.append(line)
    return _checked_points(ids, xyz, rgb, lambda i: f"{path}, line {lines[i]}")


def _checked_points(ids: list[int], xyz: list, rgb: list, where: Callable[[int], str]) -> tuple[np.ndarray, np.ndarray]:
    """Points [P,3] float64 and colours [P,3] uint8, or a ``ValueError`` naming ``where(i)`` of the first point
    ``i`` not finite in float32."""
    points = np.array(xyz, dtype=np.float64).reshape(-1, 3)
    bad = np.flatnonzero(~_finite32(points).all(1))
    if len(bad):
        raise ValueError(f"{where(bad[0])}: point {ids[bad[0]]} has coordinates not finite in float32 "
                         f"{points[bad[0]].tolist()} ({len(bad)} such points)")
    return points, np.array(rgb, dtype=np.uint8).reshape(-1, 3)


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
    """A COLMAP folder: ``sparse/0`` (or ``sparse``) + ``images`` (``images_{factor}`` used when present). The model
    is binary (``cameras.bin``, ``images.bin``, ``points3D.bin``) or, when there is no ``cameras.bin``, text
    (``cameras.txt``, ``images.txt``, ``points3D.txt``).

    Images are sorted by name; every ``test_every``-th is held out. Distortion of SIMPLE_RADIAL,
    RADIAL and OPENCV cameras is removed by resampling; other models warn.
    """
    check_factor(factor)
    root = Path(root)
    sparse = root / "sparse" / "0" if (root / "sparse" / "0").is_dir() else root / "sparse"
    suffix = ".txt" if (sparse / "cameras.txt").is_file() and not (sparse / "cameras.bin").is_file() else ".bin"
    cameras_file, images_file = sparse / f"cameras{suffix}", sparse / f"images{suffix}"
    cameras = read_cameras(cameras_file)
    registered = sorted(read_images(images_file), key=lambda item: item[0])
    if not registered:
        raise ValueError(f"COLMAP model in {sparse} has no registered images")
    points, colors = read_points(sparse / f"points3D{suffix}")
    folder, extra_factor = root / f"{images_dir}_{factor}", 1
    if factor == 1 or not folder.is_dir():
        folder, extra_factor = root / images_dir, factor
    images, viewmats, Ks = [], [], []
    for name, camera_id, q, t in registered:
        if camera_id not in cameras:
            raise ValueError(f"{images_file}: image {name!r} refers to camera {camera_id}, which "
                             f"{cameras_file} does not define (it has {sorted(cameras)})")
        model, _, _, params = cameras[camera_id]
        K, radial, tangential = _intrinsics(model, params)
        check_intrinsics(K, f"{cameras_file}, camera {camera_id} ({model})")
        K = scale_intrinsics(K, factor)
        image = read_image(folder / name, extra_factor, (0.0, 0.0, 0.0))
        if any(radial) or any(tangential):
            image = undistort(image, K, radial, tangential)
        view = torch.eye(4)
        view[:3, :3], view[:3, 3] = quat_to_rotmat(torch.from_numpy(q)), torch.from_numpy(t)
        images.append(image)
        viewmats.append(view)
        Ks.append(K)
    return Scene(
        images=stack_images(images, [item[0] for item in registered], str(folder)), viewmats=torch.stack(viewmats),
        Ks=torch.stack(Ks),
        names=[item[0] for item in registered], test=every_nth_is_test(len(registered), test_every),
        points=torch.from_numpy(points).float() if len(points) else None,
        point_colors=torch.from_numpy(colors).float() / 255 if len(points) else None,
    )
