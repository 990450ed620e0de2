"""Property test of issue 11: random densification sequences through the per-name views (gsplat's ops),
interleaved with steps, visibility masks, frozen attributes, save/load and bad inputs, keep every
invariant (see tests/fuzzing.py). CI-sized; ``benchmarks/fuzz.py`` runs the long version."""

import json

import pytest
import torch
from conftest import TINY, random_net
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_data import write_colmap, write_transforms

from l2s_optim import load_network
from l2s_optim.data import load_scene

pytest.importorskip("gsplat")
from fuzzing import BAD_INPUTS, OPS, run_sequence

sequences = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 2**31 - 1)), min_size=1, max_size=16)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(sequence=sequences, n=st.integers(50, 300), knn_every=st.sampled_from([1, 3]), seed=st.integers(0, 999))
def test_random_sequences_keep_every_invariant(sequence, n, knn_every, seed):
    result = run_sequence(sequence, n=n, knn_every=knn_every, seed=seed)
    assert not result.violations, result.violations[0]


@pytest.mark.parametrize("bad", BAD_INPUTS)
def test_each_bad_input_is_refused_after_training_and_densification(bad):
    """Every category at least once in CI, on a state that has seen steps and every densification op."""
    warm = [("step", 1), ("duplicate", 2), ("step_visible", 3), ("split", 4), ("relocate", 5), ("sample_add", 6),
            ("remove", 7), ("freeze", 8), ("step", 9), ("reset_opa", 10), ("step", 11)]
    for seed in range(3):
        result = run_sequence([*warm, (bad, seed), ("step", 12), ("save_load", 13), (bad, seed + 100)],
                              n=120, knn_every=3, seed=seed)
        assert not result.violations, result.violations[0]
        assert result.ops == len(warm) + 4


# ------------------------------------------------------- files: random corruption of scenes and checkpoints
FILE_ERRORS = (ValueError, TypeError, OSError)  # OSError: a missing or unreadable file, named by its path


def loads_finite_or_names(load, root) -> None:
    """``load()`` gives finite tensors, or fails with an error that names a file under ``root``."""
    try:
        loaded = load()
    except FILE_ERRORS as err:
        assert str(root) in str(err), repr(err)
        return
    tensors = [loaded.images, loaded.viewmats, loaded.Ks] if hasattr(loaded, "images") else list(loaded.parameters())
    assert all(torch.isfinite(t).all() for t in tensors)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True)
@given(file=st.sampled_from(["cameras.bin", "images.bin", "points3D.bin"]), keep=st.floats(0, 1),
       writes=st.lists(st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=8)), max_size=3))
def test_corrupt_colmap_files_load_finite_or_fail_naming_the_file(tmp_path_factory, file, keep, writes):
    root = tmp_path_factory.mktemp("colmap")
    write_colmap(root, n_images=3)
    path = root / "sparse" / "0" / file
    data = bytearray(path.read_bytes())
    for where, chunk in writes:  # overwrite some bytes (counts, ids, doubles, names), then maybe truncate
        start = int(where * (len(data) - 1))
        data[start : start + len(chunk)] = chunk
    path.write_bytes(bytes(data[: round(keep * len(data))]) if keep < 0.9 else bytes(data))
    loads_finite_or_names(lambda: load_scene(root), root)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**40), 10**40) | st.floats() | st.text(max_size=4),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=8)


def json_slots(value, slots):
    """Every (container, key) of a JSON value, depth first."""
    for key in (range(len(value)) if isinstance(value, list) else list(value) if isinstance(value, dict) else []):
        slots.append((value, key))
        json_slots(value[key], slots)
    return slots


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True)
@given(style=st.sampled_from(["ngp", "blender"]), slot=st.integers(0, 10**6), value=json_values)
def test_corrupt_transforms_load_finite_or_fail_naming_the_file(tmp_path_factory, style, slot, value):
    root = tmp_path_factory.mktemp("transforms")
    write_transforms(root, style)
    meta = json.loads((root / "transforms.json").read_text())
    container, key = json_slots(meta, [])[slot % len(json_slots(meta, []))]
    container[key] = value
    (root / "transforms.json").write_text(json.dumps(meta))
    loads_finite_or_names(lambda: load_scene(root), root)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True)
@given(field=st.sampled_from(sorted(TINY.__dict__)), value=json_values)
def test_corrupt_network_configs_load_finite_or_fail_naming_the_folder(tmp_path_factory, field, value):
    root = tmp_path_factory.mktemp("net")
    random_net().save_pretrained(root)
    config = json.loads((root / "config.json").read_text())
    (root / "config.json").write_text(json.dumps({**config, field: value}))
    loads_finite_or_names(lambda: load_network(root), root)
