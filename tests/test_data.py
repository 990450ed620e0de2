import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from l2s_optim.data import dense_init, load_scene, random_init, sparse_init, synthetic_scene
from l2s_optim.data.colmap import load_colmap, read_cameras, read_images, read_points
from l2s_optim.data.images import undistort
from l2s_optim.gaussians import SH_C0

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def project(points, viewmat, K):
    cam = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    return cam[:, :2] / cam[:, 2:] * K.diagonal()[:2] + K[:2, 2], cam[:, 2]


def write_colmap(root: Path, n_images=10, size=(40, 30)):
    """A tiny COLMAP binary model written from its documented format, with PNG images."""
    sparse = root / "sparse" / "0"
    sparse.mkdir(parents=True)
    (root / "images").mkdir()
    w, h = size
    with open(sparse / "cameras.bin", "wb") as f:
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<iiQQ", 1, 1, w, h) + struct.pack("<4d", 50.0, 52.0, 20.0, 15.0))  # PINHOLE
    poses = []
    with open(sparse / "images.bin", "wb") as f:
        f.write(struct.pack("<Q", n_images))
        for i in range(n_images):
            angle = 0.3 * i
            q = (math.cos(angle / 2), 0.0, math.sin(angle / 2), 0.0)  # rotation about y
            t = (0.1 * i, -0.2, 4.0)
            poses.append((q, t))
            name = f"img_{n_images - i:02d}.png"  # written in reverse name order
            f.write(struct.pack("<i4d3di", i + 1, *q, *t, 1) + name.encode() + b"\0")
            f.write(struct.pack("<Q", 2) + struct.pack("<ddq", 1.0, 2.0, -1) * 2)
            Image.fromarray(np.full((h, w, 3), 10 * i, dtype=np.uint8)).save(root / "images" / name)
    points = np.random.default_rng(0).normal(size=(20, 3))
    with open(sparse / "points3D.bin", "wb") as f:
        f.write(struct.pack("<Q", len(points)))
        f.writelines(struct.pack("<Q3d3Bd", j + 1, *p, 255, 128, 0, 0.5) + struct.pack("<Q", 1) + struct.pack("<ii", 1, 0) for j, p in enumerate(points))
    return poses, points


def test_colmap_reader_poses_intrinsics_points_and_split(tmp_path):
    poses, points = write_colmap(tmp_path)
    scene = load_colmap(tmp_path)
    assert scene.images.shape == (10, 30, 40, 3) and scene.names[0] == "img_01.png"
    assert scene.test.tolist() == [i % 8 == 0 for i in range(10)]
    torch.testing.assert_close(scene.Ks[0], torch.tensor([[50.0, 0, 20.0], [0, 52.0, 15.0], [0, 0, 1.0]]))
    t = poses[9][1]  # img_01 is the last image written
    angle = 0.3 * 9
    rot = torch.tensor([[math.cos(angle), 0, math.sin(angle)], [0, 1.0, 0], [-math.sin(angle), 0, math.cos(angle)]])
    torch.testing.assert_close(scene.viewmats[0, :3, :3], rot)
    torch.testing.assert_close(scene.viewmats[0, :3, 3], torch.tensor(t))
    assert scene.images[0].max().item() == pytest.approx(90 / 255)
    torch.testing.assert_close(scene.points, torch.from_numpy(points).float())
    torch.testing.assert_close(scene.point_colors[0], torch.tensor([1.0, 128 / 255, 0.0]))
    half = load_colmap(tmp_path, factor=2)
    assert half.images.shape == (10, 15, 20, 3) and half.Ks[0, 0, 0] == 25.0


def write_colmap_text(root: Path) -> None:
    """Replace the binary model of ``root`` by its text equivalent (``cameras.txt``, ``images.txt``,
    ``points3D.txt``, as COLMAP writes them: comments, two lines per image, the second one blank or a list of
    observations), with one more, unused camera."""
    sparse = root / "sparse" / "0"
    cameras, images = read_cameras(sparse / "cameras.bin"), read_images(sparse / "images.bin")
    points, colors = read_points(sparse / "points3D.bin")

    def numbers(values) -> str:
        return " ".join(map(repr, values))  # floats round-trip exactly

    lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
    lines += [f"{i} {model} {w} {h} {numbers(params)}" for i, (model, w, h, params) in cameras.items()]
    lines.append("9 SIMPLE_RADIAL 40 30 50.0 20.0 15.0 0.01")
    (sparse / "cameras.txt").write_text("\n".join(lines) + "\n")
    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME", "#   POINTS2D[] as (X, Y, POINT3D_ID)"]
    for i, (name, camera_id, q, t) in enumerate(images, 1):
        observations = "" if i % 2 else "1.0 2.0 -1 3.5 4.5 1"
        lines += [f"{i} {numbers([*q.tolist(), *t.tolist()])} {camera_id} {name}", observations]
    (sparse / "images.txt").write_text("\n".join(lines) + "\n")
    lines = ["# 3D point list with one line of data per point:"]
    lines += [f"{j} {numbers(p.tolist())} {numbers(c.tolist())} 0.5 1 0"
              for j, (p, c) in enumerate(zip(points, colors), 1)]
    (sparse / "points3D.txt").write_text("\n".join(lines) + "\n")
    for name in ("cameras", "images", "points3D"):
        (sparse / f"{name}.bin").unlink()


def test_colmap_text_model_loads_as_the_binary_one(tmp_path):
    write_colmap(tmp_path)
    binary = load_colmap(tmp_path)
    write_colmap_text(tmp_path)
    assert not any((tmp_path / "sparse" / "0").glob("*.bin"))
    text = load_colmap(tmp_path)
    assert text.names == binary.names and torch.equal(text.test, binary.test)
    for key in ("images", "viewmats", "Ks", "points", "point_colors"):
        assert torch.equal(getattr(text, key), getattr(binary, key)), key


def test_undistort_recovers_the_pinhole_image():
    h, w = 60, 80
    K = torch.tensor([[70.0, 0, 40.0], [0, 70.0, 30.0], [0, 0, 1.0]])
    k1 = 0.3

    def pattern(x, y):  # a smooth picture in normalised pinhole coordinates
        return torch.stack([0.5 + 0.4 * torch.sin(20 * x), 0.5 + 0.4 * torch.cos(18 * y), 0.5 + 0.2 * x * y], -1)

    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    xd, yd = (xs + 0.5 - 40) / 70, (ys + 0.5 - 30) / 70
    x, y = xd.clone(), yd.clone()
    for _ in range(20):  # invert the distortion by fixed-point iteration
        gain = 1 + k1 * (x * x + y * y)
        x, y = xd / gain, yd / gain
    distorted = pattern(x, y).float()
    ideal = pattern((xs + 0.5 - 40) / 70, (ys + 0.5 - 30) / 70).float()
    recovered = undistort(distorted, K, (k1,))
    inner = (slice(5, -5), slice(5, -5))
    error_before = (distorted[inner] - ideal[inner]).abs().mean()
    error_after = (recovered[inner] - ideal[inner]).abs().mean()
    assert error_before > 0.01 and error_after < 0.15 * error_before


def write_transforms(root: Path, style: str):
    (root / "imgs").mkdir(parents=True)
    frames = []
    for i in range(9):
        c2w = torch.eye(4)
        c2w[:3, 3] = torch.tensor([0.0, 0.0, 3.0 + 0.1 * i])  # OpenGL camera on +z looking down -z
        rgba = np.zeros((16, 20, 4), dtype=np.uint8)
        rgba[4:12, 5:15] = (255, 0, 0, 255)
        Image.fromarray(rgba).save(root / "imgs" / f"{i}.png")
        frames.append({"file_path": f"imgs/{i}", "transform_matrix": c2w.tolist()})
    meta = {"frames": frames}
    if style == "ngp":
        meta.update(fl_x=40.0, fl_y=42.0, cx=10.0, cy=8.0, w=20, h=16)
    else:
        meta["camera_angle_x"] = 2 * math.atan(10 / 40.0)
    (root / "transforms.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("style", ["ngp", "blender"])
def test_transforms_json_conventions(tmp_path, style):
    write_transforms(tmp_path, style)
    scene = load_scene(tmp_path, background=(0.0, 0.0, 1.0), normalize=False)
    assert scene.images.shape == (9, 16, 20, 3) and scene.test.sum() == 2
    torch.testing.assert_close(scene.images[0, 0, 0], torch.tensor([0.0, 0.0, 1.0]))  # composited background
    torch.testing.assert_close(scene.images[0, 8, 10], torch.tensor([1.0, 0.0, 0.0]))
    assert scene.Ks[0, 0, 0] == pytest.approx(40.0) and scene.Ks[0, 1, 1] == pytest.approx(42.0 if style == "ngp" else 40.0)
    uv, depth = project(torch.zeros(1, 3), scene.viewmats[0], scene.Ks[0])  # the origin: ahead, image centre
    assert depth.item() == pytest.approx(3.0) and torch.allclose(uv, torch.tensor([[10.0, 8.0]]))
    uv, _ = project(torch.tensor([[0.1, 0.1, 0.0]]), scene.viewmats[0], scene.Ks[0])  # world +y is image up
    assert uv[0, 0] > 10 and uv[0, 1] < 8


def test_normalisation_preserves_projections(tmp_path):
    write_colmap(tmp_path)
    raw = load_colmap(tmp_path)
    scene = raw.normalised()
    assert scene.camera_centers.sub(scene.camera_centers.mean(0)).norm(dim=-1).max().item() == pytest.approx(1.0, abs=1e-5)
    for v in range(3):
        torch.testing.assert_close(project(scene.points, scene.viewmats[v], scene.Ks[v])[0],
                                   project(raw.points, raw.viewmats[v], raw.Ks[v])[0], rtol=1e-4, atol=1e-3)


def test_dense_init_follows_the_release_recipe():
    scene = synthetic_scene(n_views=8, size=16, n_gaussians=400)
    splats = dense_init(scene)
    points = scene.points
    d2 = (points[:, None] - points[None]).square().sum(-1)
    expected = d2.sort(dim=1).values[:, 1:4].mean(1).sqrt()
    torch.testing.assert_close(splats["scales"][:, 0].exp(), expected, rtol=1e-4, atol=1e-6)
    assert torch.sigmoid(splats["opacities"]).sub(0.1).abs().max() < 1e-6
    torch.testing.assert_close(splats["sh0"][:, 0] * SH_C0 + 0.5, scene.point_colors)
    assert splats["shN"].shape == (100, 15, 3) and splats["shN"].abs().max() == 0
    assert len(dense_init(scene, fraction=0.3)["means"]) == 30


def test_sparse_init_places_gaussians_on_the_surface():
    scene = synthetic_scene(n_views=8, size=32, n_gaussians=1500)
    splats = sparse_init(scene, views=[1, 2], block=4)
    uv, _ = project(sparse_init(scene, views=[1], block=4)["means"].detach(), scene.viewmats[1], scene.Ks[1])
    centres = (uv - 2) / 4
    assert torch.allclose(centres, centres.round(), atol=1e-3)  # pixel-aligned at 4x4 block centres
    obj = scene.points
    nearest = torch.cdist(splats["means"].detach(), obj).min(1).values
    assert nearest.median() < 0.05  # on the object's surface
    sfm_only = sparse_init(type(scene)(**{**scene.__dict__, "depths": None}), views=[1])
    assert len(sfm_only["means"]) == 64


def test_random_init_and_errors():
    scene = synthetic_scene(n_views=8, size=16, n_gaussians=400)
    assert scene.focus.norm() < 1e-3  # orbit cameras look at the origin
    splats = random_init(scene, n=500, extent=0.3)
    assert splats["means"].abs().max() <= 0.3 + 1e-3 and len(splats["means"]) == 500
    no_points = type(scene)(**{**scene.__dict__, "points": None, "point_colors": None, "depths": None})
    with pytest.raises(ValueError, match="needs SfM points"):
        dense_init(no_points)
    with pytest.raises(ValueError, match="neither"):
        sparse_init(no_points)
    with pytest.raises(FileNotFoundError):
        load_scene("/no/such/scene")


@pytest.mark.skipif(not (SHARED / "beer").is_dir(), reason="shared data absent")
def test_beer_scene():
    scene = load_scene(SHARED / "beer", factor=8)
    assert scene.images.shape == (71, 160, 90, 3) and scene.test.sum() == 9 and len(scene.points) == 4414
    uv, depth = project(scene.points, scene.viewmats[5], scene.Ks[5])
    inside = (depth > 0) & (uv[:, 0] > 0) & (uv[:, 0] < 90) & (uv[:, 1] > 0) & (uv[:, 1] < 160)
    assert inside.float().mean() > 0.85


@pytest.mark.skipif(not (SHARED / "lego_200").is_dir(), reason="shared data absent")
def test_lego_scene():
    scene = load_scene(SHARED / "lego_200", background=(1.0, 1.0, 1.0))
    assert scene.images.shape == (125, 200, 200, 3) and scene.test.sum() == 25 and scene.test[-25:].all()
    assert scene.Ks[0, 0, 0].item() == pytest.approx(100 / math.tan(0.6911112070083618 / 2), rel=1e-5)
    torch.testing.assert_close(scene.images[:, 0, 0], torch.ones(125, 3))  # white background corners
    raw = load_scene(SHARED / "lego_200", normalize=False)
    assert raw.focus.norm() < 0.2  # the cameras look at the object at the origin
    for v in range(0, 125, 10):  # the object at the world origin is ahead of every camera, near the centre
        uv, depth = project(torch.zeros(1, 3), raw.viewmats[v], raw.Ks[v])
        assert depth.item() > 2 and (uv - 100).abs().max() < 5
