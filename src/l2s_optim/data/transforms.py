"""``transforms.json`` scenes: NeRF-synthetic (``camera_angle_x``), instant-ngp and nerfstudio
(``fl_x, fl_y, cx, cy, w, h``, top level or per frame). Poses are camera-to-world in OpenGL axes."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .images import read_image, scale_intrinsics, undistort
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


def _frames(root: Path, meta: dict, factor: int, background: tuple[float, float, float]):
    for frame in meta["frames"]:
        settings = {**meta, **frame}
        image = read_image(_image_path(root, frame["file_path"]), 1, background)
        h, w = image.shape[:2]
        if "fl_x" in settings:
            fx, fy = settings["fl_x"], settings.get("fl_y", settings["fl_x"])
            cx, cy = settings.get("cx", w / 2), settings.get("cy", h / 2)
            scale = w / settings.get("w", w)  # the json may describe the full-resolution images
            fx, fy, cx, cy = fx * scale, fy * scale, cx * scale, cy * scale
        elif "camera_angle_x" in settings:
            fx = fy = 0.5 * w / torch.tan(torch.tensor(0.5 * settings["camera_angle_x"])).item()
            cx, cy = w / 2, h / 2
        else:
            raise ValueError(f"{root}: a frame has neither fl_x nor camera_angle_x")
        K = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        radial = tuple(settings.get(k, 0.0) for k in ("k1", "k2", "k3", "k4"))
        tangential = (settings.get("p1", 0.0), settings.get("p2", 0.0))
        if any(radial) or any(tangential):
            image = undistort(image, K, radial, tangential)
        if factor > 1:
            image = image[: h - h % factor, : w - w % factor].reshape(h // factor, factor, w // factor, factor, 3).mean((1, 3))
            K = scale_intrinsics(K, factor)
        c2w = torch.tensor(frame["transform_matrix"], dtype=torch.float32) @ _OPENGL_TO_OPENCV
        yield frame["file_path"], image, torch.linalg.inv(c2w), K


def load_transforms(root: Path, factor: int = 1, test_every: int = 8,
                    background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Scene:
    """``transforms_train.json`` + ``transforms_test.json`` (their split is kept) or one
    ``transforms.json`` (every ``test_every``-th view held out). RGBA images are composited onto
    ``background``."""
    root = Path(root)
    split_files = [root / "transforms_train.json", root / "transforms_test.json"]
    if all(f.is_file() for f in split_files):
        parts = [list(_frames(root, json.loads(f.read_text()), factor, background)) for f in split_files]
        frames = parts[0] + parts[1]
        test = torch.cat([torch.zeros(len(parts[0]), dtype=torch.bool), torch.ones(len(parts[1]), dtype=torch.bool)])
    elif (root / "transforms.json").is_file():
        frames = list(_frames(root, json.loads((root / "transforms.json").read_text()), factor, background))
        test = every_nth_is_test(len(frames), test_every)
    else:
        raise FileNotFoundError(f"{root} has no transforms.json (nor transforms_train/test.json)")
    if not frames:
        raise ValueError(f"{root}: transforms lists no frames")
    names, images, viewmats, Ks = zip(*frames)
    return Scene(images=torch.stack(images), viewmats=torch.stack(viewmats), Ks=torch.stack(Ks), names=list(names),
                 test=test, background=background)
