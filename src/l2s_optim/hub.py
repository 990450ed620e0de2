"""Checkpoint names, bundled weights, Hugging Face Hub loading and the converter for the authors'
released Lightning checkpoint.

Our format is a folder with ``config.json`` + ``model.safetensors`` (``Learn2SplatNet.save_pretrained``).
Nothing here unpickles a file unless the caller explicitly trusts it.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
from importlib import resources
from pathlib import Path

import safetensors.torch
import torch
from huggingface_hub import hf_hub_download, snapshot_download
from safetensors import SafetensorError
from torch import Tensor

from .network import Learn2SplatNet, NetConfig

BUNDLED = ("dense", "sparse")
HUB_REPO_ENV = "L2S_OPTIM_HUB_REPO"  # a Hub repo with dense/ and sparse/ folders, tried before the bundled weights
RELEASE_REPO = "autonomousvision/learn2splat"
RELEASE_FILE = "joint/checkpoints/epoch_7-step_150000.ckpt"
RELEASE_PREFIX = "scene_trainer.optimizer."
_RELEASE_ALIASES = {"update_module.": "point_transformer.", "update_head.": "delta_head."}
_RELEASE_TO_OURS = [
    (r"point_transformer\.0\.linear\.", "input_proj."),
    (r"point_transformer\.1\.blocks\.(\d+)\.", r"blocks.\1."),
    (r"state_scale_head\.", "state_scale."),
    (r"delta_head\.", "update_mlp."),
    (r"state_proj\.", "feature_proj."),
]


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
    through ``huggingface_hub`` (cached; ``HF_HUB_OFFLINE=1`` honoured).
    """
    if isinstance(spec, torch.nn.Module):
        return spec
    text = os.fspath(spec)
    if text in BUNDLED:
        return _load_named(text)
    path = Path(text).expanduser()
    if path.is_dir():
        return _load_folder(path)
    if path.is_file():
        if path.suffix == ".safetensors":
            return _load_folder(path.parent)
        return convert_release_checkpoint(path, trust_pickle=trust_pickle)
    return _load_hub(text, trust_pickle=trust_pickle)


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


def _load_folder(folder: Path) -> Learn2SplatNet:
    missing = [f for f in ("config.json", "model.safetensors") if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a Learn2Splat checkpoint folder: missing {missing}")
    try:
        net = Learn2SplatNet(NetConfig.from_dict(json.loads((folder / "config.json").read_text())))
        net.load_state_dict(safetensors.torch.load_file(folder / "model.safetensors"), strict=True)
    except (RuntimeError, ValueError, TypeError, OSError, SafetensorError) as err:
        raise ValueError(f"corrupt or mismatched Learn2Splat checkpoint in {folder}: {err}") from err
    return net


def _load_hub(spec: str, *, trust_pickle: bool) -> Learn2SplatNet:
    parts = spec.split("/")
    if len(parts) < 2 or not all(parts):
        raise FileNotFoundError(f"checkpoint {spec!r} is neither 'dense'/'sparse', a local path, nor a Hub repo id")
    repo_id, file = "/".join(parts[:2]), "/".join(parts[2:])
    if repo_id == RELEASE_REPO and not file:
        file = RELEASE_FILE
    if file:
        return convert_release_checkpoint(hf_hub_download(repo_id, file), trust_pickle=trust_pickle)
    return _load_folder(Path(snapshot_download(repo_id, allow_patterns=["config.json", "model.safetensors"])))


# ----------------------------------------------------------------------------- release converter
def _read_checkpoint(path: str | os.PathLike, trust_pickle: bool) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds objects that the safe loader (torch.load(weights_only=True)) refuses: {err}. "
            "If, and only if, you trust this file, convert it with `l2s-convert --trust-pickle`."
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(obj, dict):
        raise TypeError(f"{path} is not a checkpoint dictionary")
    return obj.get("state_dict", obj)


def release_state_to_ours(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], NetConfig]:
    """Map the optimizer weights of a released Lightning ``state_dict`` onto our layout.

    Fails on a checkpoint without Learn2Splat weights and on any key it cannot map.
    """
    ours = {}
    for key, value in state.items():
        if not key.startswith(RELEASE_PREFIX):
            continue
        key = key[len(RELEASE_PREFIX) :]
        for old, new in _RELEASE_ALIASES.items():
            key = new + key[len(old) :] if key.startswith(old) else key
        for pattern, target in _RELEASE_TO_OURS:
            mapped, hits = re.subn("^" + pattern, target, key)
            if hits:
                break
        else:
            raise ValueError(f"unexpected key in release checkpoint: {RELEASE_PREFIX}{key}")
        if mapped == "feature_proj.weight":
            value = value.reshape(value.shape[0], -1)  # 1x1 convolution -> linear
        ours[mapped] = value.float()
    if not ours:
        raise ValueError(f"no Learn2Splat optimizer weights (keys starting with {RELEASE_PREFIX!r}) in checkpoint")
    return ours, _infer_config(ours)


def _infer_config(state: dict[str, Tensor]) -> NetConfig:
    try:
        width, input_dim = state["input_proj.weight"].shape
        param_dim = (input_dim - width) // 2
        coeffs = (param_dim - 11) // 3
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        feature = state.get("feature_proj.weight")
        return NetConfig(
            sh_degree=round(coeffs**0.5) - 1,
            width=width,
            depth=depth,
            heads=1,  # the release uses one head and k = 4; neither is visible in the weights
            attn_dim=state["blocks.0.attn.qkv.weight"].shape[0] // 3,
            mlp_hidden=state["blocks.0.mlp.fc1.weight"].shape[0],
            k=4,
            feature_dim=None if feature is None else feature.shape[1],
        )
    except KeyError as err:
        raise ValueError(f"release checkpoint is missing {err}") from err


def convert_release_checkpoint(path: str | os.PathLike, *, trust_pickle: bool = False) -> Learn2SplatNet:
    """Load the authors' Lightning ``.ckpt`` into a :class:`Learn2SplatNet` (every key mapped, none left)."""
    state, config = release_state_to_ours(_read_checkpoint(path, trust_pickle))
    net = Learn2SplatNet(config)
    result = net.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"release checkpoint {path} does not match the architecture: missing "
                         f"{result.missing_keys}, unexpected {result.unexpected_keys}")
    return net


def convert_main(argv: list[str] | None = None) -> None:
    """``l2s-convert``: release ``.ckpt`` (local or Hub) -> our ``config.json`` + ``model.safetensors`` folder."""
    parser = argparse.ArgumentParser(prog="l2s-convert", description=convert_main.__doc__)
    parser.add_argument("checkpoint", help=f"a local .ckpt, or owner/repo/path.ckpt on the Hub (e.g. {RELEASE_REPO})")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow full unpickling (runs code from the file): only for files you trust")
    args = parser.parse_args(argv)
    net = load_network(args.checkpoint, trust_pickle=args.trust_pickle)
    net.save_pretrained(args.out)
    print(f"wrote {args.out}/config.json and model.safetensors ({sum(p.numel() for p in net.parameters()):,} weights)")
