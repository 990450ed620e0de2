"""Saving and loading a :class:`~l2s_optim.optimizer.Learn2Splat`'s state.

A Learn2Splat ``state_dict`` carries a format entry (so that another optimizer's state, e.g.
``torch.optim.Adam``'s, is refused rather than loaded with its learning rates taken for lr
multipliers) and, with ``knn_every > 1``, the neighbour graph in use (so that a resume is
bit-identical). Loading validates everything against the current parameters first and matches
param groups by name, then loads into the optimizer's own group dicts and state mapping, which
its per-name views share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .gaussians import role_of

FORMAT_KEY = "learn2splat"
FORMAT_VERSION = 1
ROW_KEYS = ("exp_avg", "exp_avg_sq", "gaussian_step")  # per-Gaussian state of every attribute
MEANS_KEYS = ("latent", "step")  # the joint state, kept with the means


def check_lr(value: Any, where: str) -> None:
    """Refuse an lr multiplier that is not a finite number >= 0 (``ValueError`` naming ``where``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"Invalid learning rate multiplier for {where}: {value!r} (must be a finite number >= 0)")


def format_entry(graph: tuple[int, Tensor] | None) -> dict[str, Any]:
    """The format entry of a state_dict, with the kNN graph ``(built_at_step, neighbours [N,k])`` in use."""
    return {"version": FORMAT_VERSION,
            "knn_graph": None if graph is None else {"built_at": graph[0], "neighbours": graph[1]}}


def _format(state_dict: Any) -> Mapping[str, Any]:
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= state_dict.keys():
        raise TypeError("expected an optimizer state_dict: a dict with 'state' and 'param_groups'")
    entry = state_dict.get(FORMAT_KEY)
    if entry is None:
        raise ValueError(f"not a Learn2Splat state_dict (it has no {FORMAT_KEY!r} entry): another optimizer's state, "
                         "e.g. torch.optim.Adam's, cannot be loaded (its lrs are learning rates, Learn2Splat's are "
                         "multipliers of the learned update, and its moments lack the per-Gaussian latent state)")
    if not isinstance(entry, Mapping) or entry.get("version") != FORMAT_VERSION:
        raise ValueError(f"unsupported Learn2Splat state_dict format {entry!r}: expected version {FORMAT_VERSION}")
    return entry


def _check_tensor(value: Any, where: str, shape: tuple[int, ...], needs: str) -> None:
    if not isinstance(value, Tensor) or not value.is_floating_point():
        raise ValueError(f"{where} must be a floating-point tensor, got {type(value).__name__}")
    if tuple(value.shape) != shape:
        raise ValueError(f"{where} has shape {list(value.shape)} but {needs} needs {list(shape)}: load a state "
                         "saved with these Gaussians (restore the parameters first)")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{where} contains NaN or Inf")


def _check_counts(value: Tensor, where: str) -> None:
    if bool((value < 0).any()) or not torch.equal(value, value.round()):
        raise ValueError(f"{where} must hold whole step counts >= 0")


def _check_entry(entry: Any, name: str, param: Tensor, width: int) -> None:
    """One attribute's saved state against its current parameter [N,...]. Besides the full entry, an empty
    one (never stepped: gsplat's ops leave one for an attribute without state) and, for the means, the
    latent alone (projected from ``init_features``, before the first step) are valid."""
    where = f"saved state of {name!r}"
    full = set(ROW_KEYS) | (set(MEANS_KEYS) if role_of(name) == "means" else set())
    if not isinstance(entry, Mapping) or set(entry) not in (full, set(), {"latent"} & full):
        got = sorted(entry) if isinstance(entry, Mapping) else type(entry).__name__
        raise ValueError(f"{where} must have the entries {sorted(full)}, got {got}")
    n = param.shape[0]
    needs = f"the parameter {name!r} of {n} Gaussians"
    shapes = {"exp_avg": tuple(param.shape), "exp_avg_sq": tuple(param.shape), "gaussian_step": (n,),
              "latent": (n, width), "step": ()}
    for key, value in entry.items():
        width_too = f" and latent width {width}" if key == "latent" else ""
        _check_tensor(value, f"{where} {key!r}", shapes[key], needs + width_too)
    if "exp_avg_sq" in entry and bool((entry["exp_avg_sq"] < 0).any()):
        raise ValueError(f"{where} 'exp_avg_sq' has negative entries (a second moment is >= 0)")
    for key in ("gaussian_step", "step"):
        if key in entry:
            _check_counts(entry[key], f"{where} {key!r}")


def checked_state_dict(state_dict: Any, groups: list[dict[str, Any]], width: int) -> dict[str, Any]:
    """``state_dict`` validated against ``groups`` (an optimizer's param groups, with the current
    parameters) and its groups put in their order, matched by ``"name"``. Raises ``ValueError``/``TypeError``
    naming the group, entry and field before anything is loaded; ``width``: the network's latent width."""
    _format(state_dict)
    saved_groups = state_dict["param_groups"]
    if not isinstance(saved_groups, list) or not all(isinstance(g, Mapping) and isinstance(g.get("params"), list)
                                                     and len(g["params"]) == 1 for g in saved_groups):
        raise ValueError("saved 'param_groups' must be a list of groups holding one parameter each")
    by_name = {g.get("name"): g for g in saved_groups}
    names = [g["name"] for g in groups]
    if len(by_name) != len(saved_groups) or set(by_name) != set(names):
        raise ValueError(f"the saved param groups are named {[g.get('name') for g in saved_groups]} but this "
                         f"optimizer's are {names}: groups are matched by name")
    ordered = [by_name[name] for name in names]
    state = state_dict["state"]
    if not isinstance(state, Mapping):
        raise TypeError("saved 'state' must be a dict")
    ids = {g["params"][0]: (g["name"], group["params"][0]) for g, group in zip(ordered, groups)}
    stray = set(state) - set(ids)
    if stray:
        raise ValueError(f"saved 'state' has entries {sorted(map(str, stray))} that belong to no saved param group")
    for saved in ordered:
        check_lr(saved.get("lr"), f"saved group {saved['name']!r}")
    for param_id, entry in state.items():
        _check_entry(entry, *ids[param_id], width)
    return {**state_dict, "param_groups": ordered}


def checked_graph(state_dict: Mapping[str, Any], n: int, k: int) -> tuple[int, Tensor] | None:
    """The saved kNN graph ``(built_at_step, neighbours [N,min(k,N)] int64)`` of a state_dict already
    checked by :func:`checked_state_dict`, validated for N Gaussians; None when it holds none."""
    graph = state_dict[FORMAT_KEY].get("knn_graph")
    if graph is None:
        return None
    where = "saved kNN graph"
    built_at, neighbours = (
        (graph.get("built_at"), graph.get("neighbours")) if isinstance(graph, Mapping) else (None, None)
    )
    if isinstance(built_at, bool) or not isinstance(built_at, int) or built_at < 0:
        raise ValueError(f"{where} 'built_at' must be a step number >= 0, got {built_at!r}")
    shape = (n, min(k, n))
    if not isinstance(neighbours, Tensor) or neighbours.dtype != torch.int64 or tuple(neighbours.shape) != shape:
        got = list(neighbours.shape) if isinstance(neighbours, Tensor) else type(neighbours).__name__
        raise ValueError(f"{where} 'neighbours' must be an int64 tensor of shape {list(shape)}, got {got}")
    if n and not (0 <= int(neighbours.min()) and int(neighbours.max()) < n):
        raise ValueError(f"{where} 'neighbours' holds row indices outside [0, {n})")
    return built_at, neighbours


def load_in_place(optimizer: Optimizer, state_dict: Mapping[str, Any]) -> None:
    """``torch.optim.Optimizer.load_state_dict`` that keeps ``optimizer``'s group dicts and state mapping
    (objects shared with other views of the same state) and updates them instead of replacing them."""
    groups, state = optimizer.param_groups, optimizer.state
    Optimizer.load_state_dict(optimizer, state_dict)
    for group, loaded in zip(groups, optimizer.param_groups):
        group.update(loaded)
        state.pop(group["params"][0], None)
    state.update(optimizer.state)
    optimizer.param_groups, optimizer.state = groups, state
