"""``l2s-convert``: the authors' released Lightning checkpoint (``.ckpt``) to our format, a folder with
``config.json`` + ``model.safetensors`` + ``recipe.json`` (the release's training recipe).

Every key of the release's optimizer is mapped onto :class:`~l2s_optim.network.Learn2SplatNet`'s
names, and a missing or unexpected key is an error. The file is read with
``torch.load(weights_only=True)`` unless the caller explicitly trusts it (``--trust-pickle``).
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from pathlib import Path

import torch
from torch import Tensor

from .hub import RELEASE_REPO, build_network, check_weight, load_network
from .network import Learn2SplatNet, NetConfig
from .recipe import RECIPE_FILE, RELEASE_RECIPE

RELEASE_PREFIX = "scene_trainer.optimizer."
_RELEASE_ALIASES = {"update_module.": "point_transformer.", "update_head.": "delta_head."}
_RELEASE_TO_OURS = [
    (r"point_transformer\.0\.linear\.", "input_proj."),
    (r"point_transformer\.1\.blocks\.(\d+)\.", r"blocks.\1."),
    (r"state_scale_head\.", "state_scale."),
    (r"delta_head\.", "update_mlp."),
    (r"state_proj\.", "feature_proj."),
]


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
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict):
        raise TypeError(f"{path} is not a checkpoint: expected a dict of weights (or one under 'state_dict'), "
                         f"got {type(state).__name__}")
    return state


def release_state_to_ours(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], NetConfig]:
    """Map the optimizer weights of a released Lightning ``state_dict`` onto our layout.

    Fails on a checkpoint without Learn2Splat weights and on any key it cannot map.
    """
    ours = {}
    for key, value in state.items():
        if not (isinstance(key, str) and key.startswith(RELEASE_PREFIX)):
            continue
        check_weight(key, value)
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
    """The release's architecture, from the shapes of its weights (then checked by :func:`build_network`)."""

    def matrix(key: str) -> tuple[int, int]:
        if key not in state or state[key].ndim != 2:
            found = list(state[key].shape) if key in state else "nothing"
            raise ValueError(f"the weight {key!r} (mapped from the release's names) must be a matrix, found {found}")
        return state[key].shape

    width, input_dim = matrix("input_proj.weight")
    degrees = [d for d in range(4) if NetConfig(sh_degree=d, width=width).input_dim == input_dim]
    if not degrees:
        raise ValueError(f"input_proj.weight is {width} x {input_dim}: no SH degree 0..3 gives {input_dim} inputs "
                         f"for width {width}")
    feature = state.get("feature_proj.weight")
    return NetConfig(
        sh_degree=degrees[0],
        width=width,
        depth=len({k.split(".")[1] for k in state if k.startswith("blocks.")}),
        heads=1,  # the release uses one head and k = 4; neither is visible in the weights
        attn_dim=matrix("blocks.0.attn.qkv.weight")[0] // 3,
        mlp_hidden=matrix("blocks.0.mlp.fc1.weight")[0],
        k=4,
        feature_dim=None if feature is None else feature.shape[1],
    )


def convert_release_checkpoint(path: str | os.PathLike, *, trust_pickle: bool = False) -> Learn2SplatNet:
    """Load the authors' Lightning ``.ckpt`` into a :class:`Learn2SplatNet` (every key mapped, none left),
    with the release's training recipe (:data:`~l2s_optim.recipe.RELEASE_RECIPE`)."""
    state = _read_checkpoint(path, trust_pickle)
    try:
        weights, config = release_state_to_ours(state)
        net = build_network(config, weights)
    except ValueError as err:
        raise ValueError(f"release checkpoint {path}: {err}") from err
    net.recipe = RELEASE_RECIPE
    return net


def convert_main(argv: list[str] | None = None) -> None:
    """``l2s-convert``: release ``.ckpt`` (local or Hub) -> our ``config.json`` + ``model.safetensors`` +
    ``recipe.json`` (the release's training recipe) folder."""
    parser = argparse.ArgumentParser(prog="l2s-convert", description=convert_main.__doc__)
    parser.add_argument("checkpoint", help=f"a local .ckpt, or owner/repo/path.ckpt on the Hub (e.g. {RELEASE_REPO})")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow full unpickling (runs code from the file): only for files you trust")
    args = parser.parse_args(argv)
    net = load_network(args.checkpoint, trust_pickle=args.trust_pickle)
    net.save_pretrained(args.out)
    print(f"wrote {args.out}/config.json, model.safetensors ({sum(p.numel() for p in net.parameters()):,} weights) "
          f"and {RECIPE_FILE}: {net.recipe.describe()}")
