"""Checkpoint names: bundled weights, local folders and files, Hugging Face Hub references, and the
checks every network passes before use. The authors' released ``.ckpt`` is read by
:mod:`l2s_optim.convert`.

Our format is a folder with ``config.json`` + ``model.safetensors`` (``Learn2SplatNet.save_pretrained``)
and, optionally, ``recipe.json`` (the training recipe, :mod:`l2s_optim.recipe`; ``Recipe()`` when absent).
Nothing here unpickles a file unless the caller explicitly trusts it.
"""

from __future__ import annotations

import json
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from huggingface_hub import hf_hub_download, snapshot_download
from safetensors import SafetensorError
from torch import Tensor

from .network import Learn2SplatNet, NetConfig
from .recipe import RECIPE_FILE, Recipe

BUNDLED = ("dense", "sparse")
HUB_REPO_ENV = "L2S_OPTIM_HUB_REPO"  # a Hub repo with dense/ and sparse/ folders, tried before the bundled weights
RELEASE_REPO = "autonomousvision/learn2splat"
RELEASE_FILE = "joint/checkpoints/epoch_7-step_150000.ckpt"
WEIGHTS_FILE = "model.safetensors"
_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # one part of a Hub repo id
_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".json")
_CLAMP_RANGES = (("log_scale_min", "log_scale_max"), ("opacity_logit_min", "opacity_logit_max"), ("sh_min", "sh_max"))


def bundled_path(name: str) -> Path:
    """Folder of the bundled ``name`` weights inside the installed package."""
    return Path(str(resources.files("l2s_optim") / "weights" / name))


def load_network(spec: str | os.PathLike | Learn2SplatNet, *, trust_pickle: bool = False) -> Learn2SplatNet:
    """Resolve a checkpoint reference to a network (on CPU, fp32).

    ``spec`` is a :class:`Learn2SplatNet`; ``"dense"``/``"sparse"`` (bundled weights, or the Hub repo
    named by ``$L2S_OPTIM_HUB_REPO`` when set and reachable); a local folder (``config.json`` +
    ``model.safetensors``); a local ``.ckpt``/``.pt`` release checkpoint; a Hub repo id in our format
    (``owner/name``); or ``owner/name/path/in/repo.ckpt`` for a release checkpoint on the Hub
    (``autonomousvision/learn2splat`` alone means the authors' joint checkpoint). Downloads go
    through ``huggingface_hub`` (cached; ``HF_HUB_OFFLINE=1`` honoured). A reference that looks like a
    local path (see :func:`hub_reference`) and does not exist raises ``FileNotFoundError`` without a Hub
    query. Configs and weights are checked before use (:func:`checked_config`, :func:`build_network`);
    a network object's config and weights too.
    """
    if isinstance(spec, torch.nn.Module):
        check_config(spec.config)
        for key, value in spec.state_dict().items():
            check_weight(key, value)
        return spec
    text = os.fspath(spec)
    if text in BUNDLED:
        return _load_named(text)
    path = Path(text).expanduser()
    if path.is_dir():
        return _load_folder(path)
    if path.is_file():
        if path.suffix == ".safetensors":
            return _load_folder(path.parent, path.name)
        return _convert(path, trust_pickle)
    reference = hub_reference(text)
    if reference is None:
        raise FileNotFoundError(f"checkpoint {text!r} not found: no such file or folder (nor is it 'dense'/'sparse' "
                                "or a Hub reference owner/name or owner/name/path.ckpt)")
    return _load_hub(*reference, trust_pickle=trust_pickle)


def hub_reference(spec: str) -> tuple[str, str] | None:
    """``(repo_id, file)`` when ``spec`` reads as a Hub reference, ``owner/name`` (file ``""``) or
    ``owner/name/path/in/repo.ckpt``; None when it looks like a local path: absolute, ``./``, ``~``,
    backslashes, a first part that exists here, a file name in the repo id, a file other than ``.ckpt``
    (so that a mistyped local path fails at once rather than after Hub retries)."""
    parts = spec.split("/")
    if (len(parts) < 2 or spec.startswith((".", "~")) or "\\" in spec or Path(parts[0]).exists()
            or not all(_HUB_NAME.fullmatch(part) for part in parts[:2]) or parts[1].endswith(_FILE_SUFFIXES)):
        return None
    file = "/".join(parts[2:])
    return None if file and not file.endswith(".ckpt") else ("/".join(parts[:2]), file)


def _load_named(name: str) -> Learn2SplatNet:
    repo = os.environ.get(HUB_REPO_ENV)
    hub_error = None
    if repo:
        try:
            return _load_folder(Path(snapshot_download(repo, allow_patterns=[f"{name}/*"])) / name)
        except (OSError, ValueError) as err:  # unreachable Hub, offline without a cache, missing folder
            hub_error = err
    folder = bundled_path(name)
    if (folder / "model.safetensors").is_file():
        return _load_folder(folder)
    tried = f" (also tried ${HUB_REPO_ENV}={repo}: {hub_error})" if repo else ""
    raise FileNotFoundError(
        f"no bundled {name!r} weights ship with this version of l2s-optim{tried}. Pass a checkpoint "
        "explicitly: a folder with config.json + model.safetensors, a Hub repo id, or the authors' released "
        f"checkpoint ({RELEASE_REPO!r}, or a local .ckpt converted with `l2s-convert`)."
    )


def _load_folder(folder: Path, weights: str = WEIGHTS_FILE) -> Learn2SplatNet:
    """Our format: ``config.json`` and the ``weights`` file (``model.safetensors``) of ``folder``."""
    missing = [f for f in ("config.json", weights) if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a Learn2Splat checkpoint folder: missing {missing}")
    try:
        try:
            config = checked_config(json.loads((folder / "config.json").read_text()))
        except (ValueError, TypeError) as err:
            raise ValueError(f"config.json: {err}") from err
        try:
            net = build_network(config, safetensors.torch.load_file(folder / weights))
        except (ValueError, SafetensorError) as err:
            raise ValueError(f"{weights}: {err}") from err
        net.recipe = Recipe.load(folder)
    except (RuntimeError, ValueError, TypeError, OSError, SafetensorError) as err:
        raise ValueError(f"corrupt or mismatched Learn2Splat checkpoint in {folder}: {err}") from err
    return net


def _convert(path: str | os.PathLike, trust_pickle: bool) -> Learn2SplatNet:
    """The authors' release checkpoint at ``path`` (:func:`l2s_optim.convert.convert_release_checkpoint`)."""
    from .convert import convert_release_checkpoint  # imported here: the converter builds on this module

    return convert_release_checkpoint(path, trust_pickle=trust_pickle)


def _load_hub(repo_id: str, file: str, *, trust_pickle: bool) -> Learn2SplatNet:
    """A Hub reference (see :func:`hub_reference`): a release checkpoint, or a repo in our format."""
    if repo_id == RELEASE_REPO and not file:
        file = RELEASE_FILE
    if file:
        return _convert(hf_hub_download(repo_id, file), trust_pickle)
    files = ["config.json", WEIGHTS_FILE, RECIPE_FILE]
    return _load_folder(Path(snapshot_download(repo_id, allow_patterns=files)))


# ---------------------------------------------------------------------------------- validation
def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value has the type ``hint`` of a :class:`NetConfig` field (no bool for a number)."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_matches(value, h) for h in args)
    if typing.get_origin(hint) is tuple:
        return isinstance(value, (list, tuple)) and all(_matches(v, args[0]) for v in value)
    if hint in (int, float):
        return isinstance(value, (int, hint)) and not isinstance(value, bool)
    return isinstance(value, hint)


def checked_config(values: Any) -> NetConfig:
    """A :class:`NetConfig` from JSON ``values``, every field's type and range checked first
    (``ValueError`` naming the field)."""
    if not isinstance(values, Mapping):
        raise TypeError(f"the network config must be a JSON object, got {type(values).__name__}")
    hints = typing.get_type_hints(NetConfig)
    for name, value in values.items():
        if name in hints and not _matches(value, hints[name]):
            raise ValueError(f"config field {name!r} must be of type {hints[name]}, got {value!r}")
    config = NetConfig.from_dict(dict(values))
    check_config(config)
    return config


def check_config(config: NetConfig) -> None:
    """The ranges :class:`NetConfig` itself leaves unchecked: Adam's constants, update multipliers and
    clamp ranges (``ValueError`` naming the field)."""
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(config, name) < 1:
            raise ValueError(f"config field {name!r} must be in [0, 1), got {getattr(config, name)!r}")
    if not (math.isfinite(config.adam_eps) and config.adam_eps > 0):
        raise ValueError(f"config field 'adam_eps' must be a finite number > 0, got {config.adam_eps!r}")
    if not (math.isfinite(config.max_log_multiplier) and config.max_log_multiplier >= 0):
        raise ValueError("config field 'max_log_multiplier' must be a finite number >= 0, got "
                         f"{config.max_log_multiplier!r}")
    if not all(math.isfinite(lr) and lr > 0 for lr in config.adam_lrs):
        raise ValueError(f"config field 'adam_lrs' must be finite numbers > 0, got {config.adam_lrs!r}")
    for low, high in _CLAMP_RANGES:
        if not getattr(config, low) < getattr(config, high):
            raise ValueError(f"config fields {low!r} < {high!r} required, got {getattr(config, low)!r} and "
                             f"{getattr(config, high)!r}")
    if config.feature_dim is not None and config.feature_dim < 1:
        raise ValueError(f"config field 'feature_dim' must be None or >= 1, got {config.feature_dim!r}")


def check_weight(key: str, value: Any) -> None:
    """Refuse a weight that is not a finite floating-point tensor (``ValueError`` naming ``key``)."""
    if not isinstance(value, Tensor) or not value.is_floating_point():
        raise ValueError(f"weight {key!r} must be a floating-point tensor, got {getattr(value, 'dtype', type(value))}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"weight {key!r} contains NaN or Inf")


def build_network(config: NetConfig, weights: Mapping[str, Any]) -> Learn2SplatNet:
    """A network of a checked ``config`` holding ``weights``, which are checked first against the
    architecture's names and shapes (built on the meta device: nothing is allocated for a config that
    does not match) and for finiteness (``ValueError`` naming the weight)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Learn2SplatNet(config).state_dict().items()}
    missing, unexpected = sorted(expected.keys() - weights.keys()), sorted(weights.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(f"the weights do not match the architecture: missing {missing}, unexpected {unexpected}")
    for key, shape in expected.items():
        check_weight(key, weights[key])
        if tuple(weights[key].shape) != shape:
            raise ValueError(f"weight {key!r} has shape {list(weights[key].shape)} but the config needs {list(shape)}")
    net = Learn2SplatNet(config)
    net.load_state_dict(weights)
    return net
