"""``Learn2Splat``: the learned optimizer as a ``torch.optim.Optimizer``.

This module owns parameter groups, per-Gaussian state and the per-name views gsplat's
training loop and strategies expect; the math of a step lives in :mod:`l2s_optim.step`.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .hub import load_network
from .knn import knn
from .network import Learn2SplatNet
from .step import (
    ROLES,
    Autocast,
    GaussianState,
    active_rows,
    apply_learned_step,
    autocast_policy,
    check_gaussians,
    knn_graph,
    role_of,
    sh_degree_of,
    take,
)

ParamsLike = Mapping[str, Tensor] | torch.nn.ParameterDict | Iterable[dict[str, Any]]


def _named_groups(params: ParamsLike) -> list[dict[str, Any]]:
    if isinstance(params, (Mapping, torch.nn.ParameterDict)):
        return [{"params": [p], "name": name} for name, p in params.items()]
    groups = []
    for group in params:
        if not isinstance(group, Mapping) or "name" not in group:
            raise ValueError("Learn2Splat needs named parameters: pass a dict name -> tensor (e.g. gsplat's "
                             "`splats` ParameterDict) or param groups with a 'name' key")
        tensors = [group["params"]] if isinstance(group["params"], Tensor) else list(group["params"])
        if len(tensors) != 1:
            raise ValueError(f"param group {group['name']!r} must hold exactly one tensor, got {len(tensors)}")
        groups.append({**group, "params": tensors})
    return groups


class Learn2Splat(Optimizer):
    """Learned optimizer for 3D Gaussian Splatting, a drop-in for ``torch.optim.Adam``.

    One ``step()`` updates every attribute of every Gaussian jointly: a kNN point transformer
    over the means reads the raw parameters, their Adam-normalised gradients and a per-Gaussian
    latent state, and predicts the update. Gaussians whose gradient is exactly zero this step
    (unseen) are left untouched, state included.

    Args:
        params: named Gaussian attributes, raw (pre-activation) and N first, as gsplat stores
            them: a dict / ``nn.ParameterDict`` name -> tensor, or param groups (one tensor each)
            with a ``"name"`` key. Names ``means, scales, quats, opacities, sh0`` and optional
            ``shN`` (or the INRIA names ``xyz, scaling, rotation, opacity, features_dc,
            features_rest``); see :mod:`l2s_optim.step` for shapes and activations.
        checkpoint: ``"dense"``/``"sparse"`` (bundled weights), a local folder or file
            (``config.json`` + ``model.safetensors``, or the authors' ``.ckpt``), a Hugging Face
            Hub repo id, or a :class:`Learn2SplatNet`.
        lr: multiplier on the predicted update (1.0 = as meta-trained); per group, so lr
            schedulers work. Checkpoints are meta-trained on normalised scenes (cameras about 1
            from the centre): for another scale, give the ``means`` group that scale as its lr.
        seed: seeds the N(0,1) initial latent state of fresh Gaussians (reproducible resumes).
        knn_every: recompute the neighbour graph every this many steps (1 = every step, as
            released and exact; larger values reuse a graph over all Gaussians, for big scenes).
        knn_backend: see :func:`l2s_optim.knn.knn`.
        autocast: the network's autocast policy, shared with meta-training: ``"auto"`` (bf16 on
            CUDA, fp32 on CPU), ``"bf16"`` (also on CPU) or ``"fp32"``; ``True``/``False`` mean
            ``"auto"``/``"fp32"``.
        init_features: [N, feature_dim] per-Gaussian features of a feed-forward initialiser
            (sparse setting); the initial latent state is their projection by the checkpoint.
        betas, eps, fused, foreach: accepted so that code written for Adam keeps working;
            ignored (the network was meta-trained with its own normalisation constants).
    """

    def __init__(
        self,
        params: ParamsLike,
        checkpoint: str | os.PathLike | Learn2SplatNet = "dense",
        *,
        lr: float = 1.0,
        seed: int = 0,
        knn_every: int = 1,
        knn_backend: str = "auto",
        autocast: Autocast | bool = "auto",
        init_features: Tensor | None = None,
        betas: Any = None,
        eps: Any = None,
        fused: Any = None,
        foreach: Any = None,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate multiplier: {lr}")
        if knn_every < 1:
            raise ValueError(f"knn_every must be >= 1, got {knn_every}")
        super().__init__(_named_groups(params), {"lr": lr})
        roles = [role_of(g["name"]) for g in self.param_groups]
        unknown = [g["name"] for g, r in zip(self.param_groups, roles) if r is None]
        if unknown:
            raise ValueError(f"unknown parameter name(s) {unknown}; expected {list(ROLES)} or the INRIA names")
        if len(set(roles)) != len(roles):
            raise ValueError(f"each Gaussian attribute may appear once, got names {[g['name'] for g in self.param_groups]}")
        params_by_role = self._params_by_role()
        n = check_gaussians(params_by_role)
        self.net = load_network(checkpoint).to(params_by_role["means"].device).eval()
        config = self.net.config
        if sh_degree_of(params_by_role) > config.sh_degree:
            raise ValueError(f"parameters have SH degree {sh_degree_of(params_by_role)} but the checkpoint "
                             f"was trained for degree {config.sh_degree}")
        if n < config.k:
            raise ValueError(f"Learn2Splat needs at least k={config.k} Gaussians, got N={n}")
        self.seed = seed
        self.knn_every = knn_every
        self.knn_backend = knn_backend
        self.autocast = autocast_policy(autocast)
        self._knn_cache: tuple[weakref.ref, int, int, Tensor] | None = None
        self._consumed_grads: list[tuple[weakref.ref, int]] = []
        if init_features is not None:
            means = params_by_role["means"]
            if init_features.shape[0] != n:
                raise ValueError(f"init_features has {init_features.shape[0]} rows, expected N={n}")
            with torch.no_grad():
                latent = self.net.project_features(init_features.to(means.device, torch.float32))
            self.state[means]["latent"] = latent.float()

    # ----------------------------------------------------------------------------- bookkeeping
    def _params_by_role(self) -> dict[str, Tensor]:
        return {role_of(g["name"]): g["params"][0] for g in self.param_groups}

    def _lrs_by_role(self) -> dict[str, float]:
        return {role_of(g["name"]): g["lr"] for g in self.param_groups}

    def _state_rows(self, role: str, param: Tensor, n: int) -> dict[str, Tensor]:
        """The per-Gaussian state of one attribute, created on first use, checked to have N rows."""
        state = self.state[param]
        state.setdefault("exp_avg", torch.zeros_like(param, memory_format=torch.preserve_format))
        state.setdefault("exp_avg_sq", torch.zeros_like(param, memory_format=torch.preserve_format))
        state.setdefault("gaussian_step", torch.zeros(n, dtype=torch.float32, device=param.device))
        if role == "means":
            state.setdefault("latent", torch.zeros(n, self.net.config.width, device=param.device))
            state.setdefault("step", torch.zeros((), dtype=torch.float32))
        for key, value in state.items():
            if key != "step" and value.shape[0] != n:
                raise ValueError(f"optimizer state {key!r} of {role!r} has {value.shape[0]} rows but the "
                                 f"parameter has N={n}: when Gaussians are added or removed, remap the state "
                                 "too (gsplat's strategy ops do, through per_name_optimizers())")
        return state

    def _fresh_latent(self, count: int, step: int, device: torch.device) -> Tensor:
        generator = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + step)
        return torch.randn(count, self.net.config.width, generator=generator, device=device)

    def _neighbours(self, means: Tensor, active: Tensor | None, step: int) -> tuple[Tensor, Tensor]:
        """[A,k] neighbour rows among the active Gaussians (``active`` [A] indices, None: all) and their
        validity mask."""
        if self.knn_every == 1:
            return knn_graph(take(means, active), self.net.config.k, self.knn_backend)
        n = means.shape[0]
        cache = self._knn_cache
        if cache is None or cache[0]() is not means or cache[1] != n or step - cache[2] >= self.knn_every:
            cache = (weakref.ref(means), n, step, knn(means, min(self.net.config.k, n), self.knn_backend))
            self._knn_cache = cache
        if active is None:
            return cache[3], torch.ones_like(cache[3], dtype=torch.bool)
        row_of = torch.full((n,), -1, dtype=torch.long, device=means.device)
        row_of[active] = torch.arange(active.shape[0], device=means.device)
        neighbours = row_of[cache[3][active]]
        return neighbours.clamp(min=0), neighbours >= 0

    # ----------------------------------------------------------------------------------- steps
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, visibility: Tensor | None = None) -> Any:
        """Update all Gaussians with non-zero gradients (and ``visibility``, a [N] bool mask, if given).

        Validation happens before anything is written: on bad input (missing attributes,
        mismatched N, NaN/Inf gradients, stale state) a ``ValueError`` leaves parameters and state
        untouched.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = self._params_by_role()
        n = check_gaussians(params)
        if all(p.grad is None for p in params.values()):
            return loss
        grads = {}
        for role, p in params.items():
            g = torch.zeros_like(p) if p.grad is None else p.grad
            if g.is_sparse or g.shape != p.shape:
                raise ValueError(f"gradient of {role!r} must be dense with the parameter's shape {list(p.shape)}")
            grads[role] = g
        active = active_rows(grads)
        if visibility is not None:
            if visibility.shape != (n,):
                raise ValueError(f"visibility must be a [N]={n} mask, got {list(visibility.shape)}")
            active &= visibility.to(active.device, torch.bool)
        states = {role: self._state_rows(role, p, n) for role, p in params.items()}
        self._record_consumed_grads()
        means_state = states["means"]
        step = int(means_state["step"])
        state = GaussianState(
            *({role: s[key] for role, s in states.items()} for key in ("exp_avg", "exp_avg_sq", "gaussian_step")),
            means_state["latent"],
        )
        applied = apply_learned_step(
            self.net, params, grads, state, active,
            fresh_latent=lambda count: self._fresh_latent(count, step, params["means"].device),
            neighbours=lambda idx: self._neighbours(params["means"], idx, step),
            lrs=self._lrs_by_role(), autocast=self.autocast, in_place=True,
        )
        if applied is not None:
            means_state["step"] += 1
        return loss

    def _record_consumed_grads(self) -> None:
        self._consumed_grads = [
            (weakref.ref(p.grad), p.grad._version) for g in self.param_groups for p in g["params"] if p.grad is not None
        ]

    def _has_unconsumed_grads(self) -> bool:
        consumed = [(ref(), version) for ref, version in self._consumed_grads]
        for group in self.param_groups:
            grad = group["params"][0].grad
            if grad is not None and not any(t is grad and v == grad._version for t, v in consumed):
                return True
        return False

    def per_name_optimizers(self) -> dict[str, Optimizer]:
        """``{name: torch.optim.Optimizer}`` views for gsplat's per-name training loop and strategies.

        Each view holds one of this optimizer's param groups (the same dict) and shares its
        ``state``, so gsplat's densification ops (which swap the group's parameter and remap its
        state) and lr schedulers act on this optimizer. Stepping any view runs the joint step once
        per backward pass: the first view stepped after ``loss.backward()`` updates everything,
        the others (whose gradients were consumed) do nothing. ``step(visibility)`` accepts
        gsplat SelectiveAdam's positional [N] visibility mask.
        """
        return {group["name"]: _NamedView(self, group) for group in self.param_groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        width = self.net.config.width
        for saved in state_dict["state"].values():
            if "latent" in saved and saved["latent"].shape[-1] != width:
                raise ValueError(f"optimizer state has a latent width of {saved['latent'].shape[-1]} but the "
                                 f"loaded checkpoint's network has width {width}: load the same checkpoint")
        super().load_state_dict(state_dict)
        self._knn_cache = None


class _NamedView(Optimizer):
    """One attribute's view of a :class:`Learn2Splat` (see ``Learn2Splat.per_name_optimizers``)."""

    def __init__(self, joint: Learn2Splat, group: dict[str, Any]) -> None:
        super().__init__(group["params"], {"lr": group["lr"]})
        self.joint = joint
        self.param_groups = [group]
        self.state = joint.state

    @torch.no_grad()
    def step(self, visibility: Tensor | Callable[[], Any] | None = None, closure: Callable[[], Any] | None = None) -> Any:
        if callable(visibility):
            visibility, closure = None, visibility
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.joint._has_unconsumed_grads():
            self.joint.step(visibility=visibility)
        return loss

    def state_dict(self) -> dict[str, Any]:
        """This attribute's group and state only (the joint optimizer's ``state_dict`` has all)."""
        shared = self.state
        self.state = {p: shared[p] for p in self.param_groups[0]["params"] if p in shared}
        try:
            return super().state_dict()
        finally:
            self.state = shared

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        shared_state, shared_group = self.state, self.param_groups[0]
        super().load_state_dict(state_dict)
        shared_group.update({k: v for k, v in self.param_groups[0].items() if k != "params"})
        shared_state.update(self.state)
        self.state, self.param_groups = shared_state, [shared_group]
