"""Issue 11, categories 6-8: bad checkpoints, scene files and command lines are refused with an error
naming the file and the field (or the argument); see docs/errors.md."""

import json
import math
import re
import struct

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import TINY, random_net
from PIL import Image
from release_fixture import PREFIX, release_state
from test_data import write_colmap, write_colmap_text, write_transforms

import l2s_optim.hub
from l2s_optim import bench, demo, load_network
from l2s_optim.convert import convert_release_checkpoint
from l2s_optim.data import load_scene
from l2s_optim.data.colmap import load_colmap
from l2s_optim.data.images import read_image
from l2s_optim.hub import hub_reference

# ------------------------------------------------------------------------- 6. checkpoint resolution


def test_a_safetensors_path_loads_that_file(tmp_path):
    random_net(seed=0).save_pretrained(tmp_path)
    other = random_net(seed=1)
    safetensors.torch.save_file(other.state_dict(), tmp_path / "sparse.safetensors")
    loaded = load_network(tmp_path / "sparse.safetensors")
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in loaded.state_dict().items())


@pytest.fixture
def no_hub(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the Hub was queried")

    monkeypatch.setattr(l2s_optim.hub, "hf_hub_download", refuse)
    monkeypatch.setattr(l2s_optim.hub, "snapshot_download", refuse)


@pytest.mark.parametrize("spec", ["runs/meta/model.safetensors", "./meta", "/no/such/model", "~/no/such/model",
                                  "runs\\meta", "model.safetensors", "owner/model.safetensors", "owner/repo/sub/x.pt"])
def test_anything_that_looks_like_a_path_is_missing_without_a_hub_call(spec, no_hub):
    with pytest.raises(FileNotFoundError, match=re.escape(f"checkpoint {spec!r} not found: no such file or folder")):
        load_network(spec)


def test_a_local_folder_shadows_the_hub(tmp_path, monkeypatch, no_hub):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    assert hub_reference("runs/meta") is None
    assert hub_reference("acme/l2s-tiny") == ("acme/l2s-tiny", "")
    assert hub_reference("acme/repo/joint/epoch.ckpt") == ("acme/repo", "joint/epoch.ckpt")


def write_folder(tmp_path, config_changes=None, weights=None):
    net = random_net()
    net.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **(config_changes or {})}))
    if weights is not None:
        safetensors.torch.save_file(weights(net.state_dict()), tmp_path / "model.safetensors")
    return tmp_path


@pytest.mark.parametrize("changes, message", [
    ({"adam_beta1": 1.0}, r"config field 'adam_beta1' must be in \[0, 1\), got 1.0"),
    ({"adam_eps": 0.0}, "config field 'adam_eps' must be a finite number > 0, got 0.0"),
    ({"log_scale_min": 2.0}, "config fields 'log_scale_min' < 'log_scale_max' required"),
    ({"adam_lrs": [1e-4, 1e-3, 1e-3, 5e-2, math.nan, 1e-4]}, "config field 'adam_lrs' must be finite numbers > 0"),
    ({"width": "32"}, "config field 'width' must be of type <class 'int'>, got '32'"),
    ({"multiplier_decay_steps": -5.0}, "multiplier_decay_steps must be None or a finite number > 0, got -5.0"),
    ({"multiplier_decay_steps": "100"}, "config field 'multiplier_decay_steps' must be of type float | None, got '100'"),
    ({"k": True}, "config field 'k' must be of type <class 'int'>, got True"),
    ({"width": 10**9}, r"weight 'input_proj.weight' has shape \[32, 150\] but the config needs \[1000000000, "),
    ({"depth": 3}, r"the weights do not match the architecture: missing \['blocks.2.attn.proj.bias'"),
])
def test_config_fields_are_checked_before_use(tmp_path, changes, message):
    write_folder(tmp_path, changes)
    with pytest.raises(ValueError, match="corrupt or mismatched Learn2Splat checkpoint in .*: (config.json|model.safetensors): "
                                         + message):
        load_network(tmp_path)


def test_nonfinite_weights_are_refused(tmp_path):
    write_folder(tmp_path, weights=lambda s: {**s, "update_mlp.2.bias": torch.full_like(s["update_mlp.2.bias"], math.nan)})
    with pytest.raises(ValueError, match="model.safetensors: weight 'update_mlp.2.bias' contains NaN or Inf"):
        load_network(tmp_path)


def test_a_network_object_is_checked_too():
    net = random_net()
    with torch.no_grad():
        net.input_proj.bias[0] = math.inf
    with pytest.raises(ValueError, match="weight 'input_proj.bias' contains NaN or Inf"):
        load_network(net)


SMALL = {"width": 32, "param_dim": 59, "depth": 1, "attn": 16, "hidden": 32, "feature_dim": None}


@pytest.mark.parametrize("content, error, message", [
    ({"state_dict": [1, 2]}, TypeError, "is not a checkpoint: expected a dict of weights"),
    ({"state_dict": {**release_state(**SMALL), PREFIX + "delta_head.0.bias": 3}}, ValueError,
     f"weight '{PREFIX}delta_head.0.bias' must be a floating-point tensor"),
    ({"state_dict": {**release_state(**SMALL), PREFIX + "point_transformer.0.linear.weight": torch.zeros(5)}},
     ValueError, r"the weight 'input_proj.weight' \(mapped from the release's names\) must be a matrix, found \[5\]"),
    ({"state_dict": {**release_state(**SMALL), PREFIX + "point_transformer.0.linear.weight": torch.zeros(32, 7)}},
     ValueError, "no SH degree 0..3 gives 7 inputs"),
    ({"state_dict": {**release_state(**SMALL), PREFIX + "delta_head.0.weight": torch.zeros(32, 31)}}, ValueError,
     r"weight 'update_mlp.0.weight' has shape \[32, 31\] but the config needs \[32, 32\]"),
    ({"state_dict": {**release_state(**SMALL), PREFIX + "delta_head.0.bias": torch.full((32,), math.nan)}},
     ValueError, "contains NaN or Inf"),
])
def test_malformed_release_checkpoints_are_refused_naming_the_file(tmp_path, content, error, message):
    torch.save(content, tmp_path / "bad.ckpt")
    with pytest.raises(error, match=f"{tmp_path / 'bad.ckpt'}.*{message}"):
        convert_release_checkpoint(tmp_path / "bad.ckpt")


# ----------------------------------------------------------------------------------------- 7. loaders
def patch(path, offset, data):
    content = bytearray(path.read_bytes())
    content[offset : offset + len(data)] = data
    path.write_bytes(bytes(content))


@pytest.mark.parametrize("file, size, message", [
    ("cameras.bin", 20, "truncated at byte 8 reading a camera's id, model and size"),
    ("images.bin", 60, r"truncated at byte 8 reading an image's pose"),
    ("images.bin", 80, "truncated at byte 72 reading the name of image 1"),
    ("points3D.bin", 60, "truncated at byte 59 reading the track of point 1"),
])
def test_a_truncated_colmap_file_names_the_file_and_field(tmp_path, file, size, message):
    write_colmap(tmp_path)
    path = tmp_path / "sparse" / "0" / file
    path.write_bytes(path.read_bytes()[:size])
    with pytest.raises(ValueError, match=f"{path}: {message}"):
        load_colmap(tmp_path)


@pytest.mark.parametrize("offset, data, message", [
    (12, struct.pack("<i", 99), r"cameras.bin: camera 1 has the unknown camera model id 99"),
    (8, struct.pack("<i", 7), r"images.bin: image 'img_01.png' refers to camera 1, which .*cameras.bin does not define"),
    (32, struct.pack("<d", -5.0), r"cameras.bin, camera 1 \(PINHOLE\): invalid intrinsics"),
])
def test_bad_cameras_are_named(tmp_path, offset, data, message):
    write_colmap(tmp_path)
    patch(tmp_path / "sparse" / "0" / "cameras.bin", offset, data)
    with pytest.raises(ValueError, match=message):
        load_colmap(tmp_path)


@pytest.mark.parametrize("quaternion", [(0.0, 0.0, 0.0, 0.0), (math.nan, 0.0, 0.0, 1.0)])
def test_an_invalid_image_pose_is_named(tmp_path, quaternion):
    write_colmap(tmp_path)
    patch(tmp_path / "sparse" / "0" / "images.bin", 12, struct.pack("<4d", *quaternion))
    with pytest.raises(ValueError, match=r"images.bin: image 'img_10.png' has an invalid pose"):
        load_colmap(tmp_path)


def test_a_nonfinite_point_is_named(tmp_path):
    write_colmap(tmp_path)
    patch(tmp_path / "sparse" / "0" / "points3D.bin", 16, struct.pack("<d", math.inf))
    with pytest.raises(ValueError, match=r"points3D.bin: point 1 has coordinates not finite in float32"):
        load_colmap(tmp_path)


def replace_field(text: str, index: int, value: str) -> str:
    fields = text.split(" ")
    return " ".join(fields[:index] + [value] + fields[index + 1 :])


@pytest.mark.parametrize("file, line, change, message", [
    ("cameras.txt", 3, lambda t: t.replace("PINHOLE", "PINHOLEX"), "camera 1 has the unknown camera model 'PINHOLEX'"),
    ("cameras.txt", 3, lambda t: t.rsplit(" ", 1)[0], "expected the 4 parameters of a PINHOLE camera, got '50.0"),
    ("cameras.txt", 3, lambda t: replace_field(t, 4, "nan"), r"camera 1 \(PINHOLE\) has non-finite parameters"),
    ("images.txt", 6, lambda t: replace_field(t, 1, "abc"), "expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME"),
    ("images.txt", 4, lambda t: " ".join(["1", *["0.0"] * 4, *t.split(" ")[5:]]),
     "image 'img_10.png' has an invalid pose"),
    ("points3D.txt", 2, lambda t: replace_field(t, 2, "inf"), "point 1 has coordinates not finite in float32"),
    ("points3D.txt", 3, lambda t: replace_field(t, 4, "300"), r"point 2 has colour \[300, 128, 0\], not 8-bit RGB"),
])
def test_a_bad_colmap_text_line_names_the_file_and_line(tmp_path, file, line, change, message):
    write_colmap(tmp_path)
    write_colmap_text(tmp_path)
    path = tmp_path / "sparse" / "0" / file
    lines = path.read_text().split("\n")
    lines[line - 1] = change(lines[line - 1])
    path.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=f"{path}, line {line}: {message}"):
        load_colmap(tmp_path)


def test_a_single_registered_image_cannot_be_normalised(tmp_path):
    write_colmap(tmp_path, n_images=1)
    with pytest.raises(ValueError, match=f"{tmp_path}: cannot normalise a scene whose 1 camera centre"):
        load_scene(tmp_path)
    assert load_scene(tmp_path, normalize=False).images.shape[0] == 1


@pytest.mark.parametrize("style", ["colmap", "blender"])
def test_factor_zero_is_refused(tmp_path, style):
    write_colmap(tmp_path) if style == "colmap" else write_transforms(tmp_path, style)
    with pytest.raises(ValueError, match="the image downscale factor must be an integer >= 1, got 0"):
        load_scene(tmp_path, factor=0)


def test_sixteen_bit_greyscale_keeps_its_scale(tmp_path):
    Image.fromarray(np.full((4, 6), 32768, dtype=np.uint16)).save(tmp_path / "grey16.png")
    image = read_image(tmp_path / "grey16.png", 1, (0.0, 0.0, 0.0))
    assert image.shape == (4, 6, 3) and image.sub(32768 / 65535).abs().max() < 1e-6
    assert read_image(tmp_path / "grey16.png", 2, (0.0, 0.0, 0.0)).shape == (2, 3, 3)


def edit_transforms(root, change):
    meta = json.loads((root / "transforms.json").read_text())
    change(meta)
    (root / "transforms.json").write_text(json.dumps(meta))


def singular(meta):
    meta["frames"][1]["transform_matrix"][0][:3] = [0.0, 0.0, 0.0]


@pytest.mark.parametrize("change, error, message", [
    (lambda m: m.pop("frames"), TypeError, "transforms.json: expected a JSON object with a 'frames' list"),
    (lambda m: m["frames"][2].pop("transform_matrix"), ValueError, r"frames\[2\]: missing 'transform_matrix'"),
    (lambda m: m["frames"][0].pop("file_path"), TypeError, r"frames\[0\]: needs a 'file_path' string"),
    (lambda m: m.pop("camera_angle_x"), ValueError, r"frames\[0\]: neither the frame nor the file gives 'fl_x'"),
    (lambda m: m.update(camera_angle_x=-1.0), ValueError, r"frames\[0\]: 'camera_angle_x' must be a finite number > 0"),
    (singular, ValueError, r"frames\[1\].transform_matrix: not a rigid camera pose"),
    (lambda m: m["frames"][3]["transform_matrix"][1].__setitem__(3, math.nan), ValueError,
     r"frames\[3\].transform_matrix: must be a 4x4 \(or 3x4\) matrix of finite numbers"),
    (lambda m: m["frames"][3].update(transform_matrix=[[1, 0], [0, 1]]), ValueError, "must be a 4x4"),
])
def test_malformed_transforms_name_the_file_and_field(tmp_path, change, error, message):
    write_transforms(tmp_path, "blender")
    edit_transforms(tmp_path, change)
    with pytest.raises(error, match=message):
        load_scene(tmp_path)


def test_a_3x4_transform_is_the_4x4_one(tmp_path):
    write_transforms(tmp_path, "blender")
    full = load_scene(tmp_path, normalize=False)
    edit_transforms(tmp_path, lambda m: [frame["transform_matrix"].pop() for frame in m["frames"]])
    assert torch.equal(load_scene(tmp_path, normalize=False).viewmats, full.viewmats)


def test_mixed_image_sizes_and_bad_json_are_named(tmp_path):
    write_transforms(tmp_path, "ngp")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "imgs" / "4.png")
    with pytest.raises(ValueError, match=r"images differ in size \(imgs/0 is \[16, 20\], imgs/4 is \[8, 8\], 1 differ"):
        load_scene(tmp_path)
    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(ValueError, match="transforms.json: not valid JSON"):
        load_scene(tmp_path)


# ------------------------------------------------------------------------------------------- 8. CLIs
@pytest.mark.parametrize("flags, message", [
    (["race", "--steps", "0"], "argument --steps: must be >= 1, got 0"),
    (["race", "--steps", "-3"], "argument --steps: must be >= 1, got -3"),
    (["race", "--batch", "-1"], "argument --batch: must be >= 1, got -1"),
    (["micro", "--repeats", "0"], "argument --repeats: must be >= 1, got 0"),
    (["step-speed", "--factor", "0"], "argument --factor: must be >= 1, got 0"),
    (["race", "--fraction", "0"], "argument --fraction: must be > 0 and <= 1, got 0"),
    (["race", "--background", "0", "nan", "0"], "argument --background: must be >= 0 and <= 1, got nan"),
    (["render-speed", "--sizes", "1e3,x"], "argument --sizes: expected a comma list of whole counts >= 1, got 'x'"),
    (["race", "--optimizers", "adam,sgd"], r"argument --optimizers: unknown optimizer\(s\) \['sgd'\]"),
    (["race", "--n-random", "3"], "argument --n-random: must be >= 4, got 3"),
    (["race", "--steps", "ten"], "argument --steps: expected an integer, got 'ten'"),
])
def test_bench_arguments_are_checked_at_parse_time(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*flags, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1  # one line, no usage, no traceback
    assert re.search(f"^l2s-bench {flags[0]}: error: {message}", err)
    assert not (tmp_path / "out").exists()


def test_demo_arguments_are_checked_at_parse_time(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--steps", "0"])
    assert "argument --steps: must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", json.dumps({"settings": {}, "curves": {"adam": {"x": 1}}}).encode()])
def test_an_unreadable_results_file_is_never_overwritten(tmp_path, capsys, monkeypatch, content):
    from l2s_optim.data import synthetic_scene

    monkeypatch.setattr(bench.race, "load_scene", lambda *a, **k: synthetic_scene(n_views=9, size=24, n_gaussians=600))
    (tmp_path / "results.json").write_bytes(content)
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["race", "--optimizers", "adam", "--steps", "2", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"{tmp_path / 'results.json'} cannot be read as l2s-bench results" in capsys.readouterr().err
    assert (tmp_path / "results.json").read_bytes() == content


def test_tiny_config_stays_valid():
    assert l2s_optim.hub.checked_config(json.loads(json.dumps(TINY.__dict__))) == TINY
