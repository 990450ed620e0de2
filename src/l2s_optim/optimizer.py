"""``Learn2Splat``: the learned optimizer as a ``torch.optim.Optimizer``.

This module owns parameter groups, per-Gaussian state and the per-name views gsplat's
training loop and strategies expect; the math of a step lives in :mod:`l2s_optim.step`.
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from .gaussians import ALIASES, ROLES, check_gaussians, role_of, sh_degree_of
from .hub import load_network
from .knn import knn, resolve_backend
from .network import Learn2SplatNet, NetConfig
from .recipe import Recipe
from .state_io import (
    FORMAT_KEY,
    ROW_KEYS,
    check_lr,
    checked_graph,
    checked_state_dict,
    format_entry,
    load_in_place,
)
from .step import (
    Autocast,
    GaussianState,
    active_rows,
    apply_learned_step,
    autocast_policy,
    check_finite_rows,
    knn_graph,
    take,
)

ParamsLike = Mapping[str, Tensor] | torch.nn.ParameterDict | Iterable[dict[str, Any]]


class _KnnGraph(NamedTuple):
    """The neighbour graph over all Gaussians reused for ``knn_every`` steps."""

    means: weakref.ref  # the means Parameter it was built from
    n: int
    built_at: int  # the step it was built at
    neighbours: Tensor  # [N,min(k,N)]


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


# Below this a group's lr reads as an absolute Adam learning rate: gsplat's defaults are 1.6e-4 (means, times
# the scene scale) to 5e-2 (opacities), while a multiplier this small shrinks the meta-trained update at least
# 20-fold, which freezes training (0, to freeze a group on purpose, is not warned about).
ADAM_LIKE_LR = 0.05


def _warn_adam_arguments(groups: list[dict[str, Any]], config: NetConfig, betas: Any, eps: Any, fused: Any,
                         foreach: Any) -> None:
    """One ``RuntimeWarning`` naming the groups whose lr looks like an Adam learning rate (see
    :data:`ADAM_LIKE_LR`), and one naming Adam's arguments given with values that would change Adam's steps
    (``betas``, ``eps`` other than the network's) or implementation (``fused``, ``foreach`` True), which
    Learn2Splat ignores."""
    absolute = [f"{g['name']!r} (lr {g['lr']:g})" for g in groups if 0 < g["lr"] <= ADAM_LIKE_LR]
    if absolute:
        warnings.warn(f"Learn2Splat: param group(s) {', '.join(absolute)} have an lr that looks like an Adam learning "
                      "rate, but Learn2Splat's lr multiplies the learned update (1.0 = as meta-trained), so these "
                      "attributes will barely move: leave lr at 1.0 (scale the means group's lr only, by the scene "
                      "scale)", RuntimeWarning, stacklevel=3)
    ours = (config.adam_beta1, config.adam_beta2)
    given = {"betas": betas, "eps": eps, "fused": fused, "foreach": foreach}
    matters = {"betas": betas is not None and tuple(betas) != ours, "eps": eps is not None and eps != config.adam_eps,
               "fused": bool(fused), "foreach": bool(foreach)}
    ignored = [f"{name}={given[name]!r}" for name, flag in matters.items() if flag]
    if ignored:
        warnings.warn(f"Learn2Splat ignores {', '.join(ignored)}: the network reads Adam moments with the constants it "
                      f"was meta-trained with (betas {ours}, eps {config.adam_eps:g}) and has one implementation",
                      RuntimeWarning, stacklevel=3)


class Learn2Splat(Optimizer):
    """Learned optimizer for 3D Gaussian Splatting, a drop-in for ``torch.optim.Adam``.

    One ``step()`` updates every attribute of every Gaussian jointly: a kNN point transformer
    over the means reads the raw parameters, their Adam-normalised gradients and a per-Gaussian
    latent state, and predicts the update. Gaussians whose gradient is exactly zero this step
    (unseen) are left untouched, state included, and so are attributes without a gradient. Bad input
    is refused before anything is written (see ``docs/errors.md``). Unlike Adam's, its ``lr`` is not a
    learning rate but a multiplier of the learned update: leave it at 1.0 (see ``lr`` below).

    Args:
        params: named Gaussian attributes, raw (pre-activation) and N first, as gsplat stores
            them: a dict / ``nn.ParameterDict`` name -> tensor, or param groups (one tensor each)
            with a ``"name"`` key. Names ``means, scales, quats, opacities, sh0`` and optional
            ``shN`` (or the INRIA names ``xyz, scaling, rotation, opacity, features_dc,
            features_rest``, or nerfstudio splatfacto's, with ``features_dc`` [N,3]); see
            :mod:`l2s_optim.gaussians` for shapes and activations.
        checkpoint: ``"dense"``/``"sparse"`` (bundled weights), a local folder or file
            (``config.json`` + ``model.safetensors``, or the authors' ``.ckpt``), a Hugging Face
            Hub repo id, or a :class:`Learn2SplatNet`.
        lr: NOT a learning rate: a multiplier on the learned update, 1.0 = the step the network was
            meta-trained to take (the default; leave it). Per group, so lr schedulers work. Adam's
            learning rates (gsplat's: 1.6e-4 to 5e-2) would shrink the update that much and freeze
            training: a group lr in (0, 0.05] warns (``RuntimeWarning``). The means update is in the
            world units of the checkpoint's ``recipe`` (bundled: normalised scenes, cameras about 1 from
            the centre; the release: raw COLMAP units): for another scale, give the ``means`` group that
            scale as its lr.
        seed: seeds the N(0,1) initial latent state of fresh Gaussians (reproducible resumes).
        knn_every: recompute the neighbour graph every this many steps (1 = every step, as
            released and exact; larger values reuse a graph over all Gaussians, for big scenes).
        knn_backend: see :func:`l2s_optim.knn.knn`.
        autocast: the network's autocast policy, shared with meta-training: ``"auto"`` (bf16 on
            CUDA, fp32 on CPU), ``"bf16"`` (also on CPU) or ``"fp32"``; ``True``/``False`` mean
            ``"auto"``/``"fp32"``.
        init_features: [N, feature_dim] per-Gaussian features of a feed-forward initialiser
            (sparse setting); the initial latent state is their projection by the checkpoint.
        chunk_size: run the network over at most this many Gaussians at a time (the attention's
            keys and values of all Gaussians are computed first), so a step's working memory stays
            bounded at any N; the result is the same as unchunked. None: one pass over all.
        betas, eps, fused, foreach: accepted so that code written for Adam keeps working, and
            ignored: the network reads Adam moments with the constants it was meta-trained with
            (``NetConfig.adam_beta1``, ``adam_beta2``, ``adam_eps``) and has one implementation.
            Values that would change Adam's steps (betas or eps other than the network's) or its
            implementation (``fused``/``foreach`` True) warn (``RuntimeWarning``).
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
        chunk_size: int | None = 65_536,
        betas: Any = None,
        eps: Any = None,
        fused: Any = None,
        foreach: Any = None,
    ) -> None:
        check_lr(lr, "lr")
        if knn_every < 1:
            raise ValueError(f"knn_every must be >= 1, got {knn_every}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        super().__init__(_named_groups(params), {"lr": lr})
        roles = [role_of(g["name"]) for g in self.param_groups]
        unknown = [g["name"] for g, r in zip(self.param_groups, roles) if r is None]
        if unknown:
            raise ValueError(f"unknown parameter name(s) {unknown}; expected {list(ROLES)} or the INRIA / splatfacto "
                             f"names {list(ALIASES)}")
        if len(set(roles)) != len(roles):
            names = [g["name"] for g in self.param_groups]
            raise ValueError(f"each Gaussian attribute may appear once, got names {names}")
        self._lrs_by_role()  # checks every group's lr
        params_by_role = self._params_by_role()
        n = check_gaussians(params_by_role)
        resolve_backend(knn_backend, params_by_role["means"].device)
        self.net = load_network(checkpoint).to(params_by_role["means"].device).eval()
        config = self.net.config
        if sh_degree_of(params_by_role) > config.sh_degree:
            raise ValueError(f"parameters have SH degree {sh_degree_of(params_by_role)} but the checkpoint "
                             f"was trained for degree {config.sh_degree}")
        self.seed = seed
        self.knn_every = knn_every
        self.chunk_size = chunk_size
        _warn_adam_arguments(self.param_groups, config, betas=betas, eps=eps, fused=fused, foreach=foreach)
        self._warned: set[str] = set()
        if sh_degree_of(params_by_role) < config.sh_degree and self.recipe.sh_degree_interval == 0:
            self._warn_deviation("sh_degree", f"the parameters have SH degree {sh_degree_of(params_by_role)} but "
                                 f"the checkpoint was meta-trained on degree-{config.sh_degree} splats with every band "
                                 "optimised from step 0 (the authors' release pads missing bands and optimises them)")
        self.knn_backend = knn_backend
        self.autocast = autocast_policy(autocast)
        self._knn_cache: _KnnGraph | None = None
        self._consumed_grads: list[tuple[weakref.ref, int]] = []
        if init_features is not None:
            means = params_by_role["means"]
            if init_features.shape[0] != n:
                raise ValueError(f"init_features has {init_features.shape[0]} rows, expected N={n}")
            check_finite_rows({"init_features": init_features}, None, "feature tensor")
            with torch.no_grad():
                latent = self.net.project_features(init_features.to(means.device, torch.float32))
            self.state[means]["latent"] = latent.float()

    @property
    def recipe(self) -> Recipe:
        """The training recipe of the checkpoint (views per step, background, world units, SH schedule,
        rasterizer, loss; see :class:`~l2s_optim.recipe.Recipe`): the loop it was meta-trained for. The
        optimizer warns once (``RuntimeWarning``) where it can tell the loop deviates from it."""
        return getattr(self.net, "recipe", Recipe())

    def _warn_deviation(self, key: str, message: str) -> None:
        """A ``RuntimeWarning`` about a deviation from the recipe, once per kind (``key``) and optimizer."""
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"Learn2Splat: {message}. Results may fall short of the checkpoint's.", RuntimeWarning,
                          stacklevel=3)

    def _check_recipe(self, grads: dict[str, Tensor], active: Tensor) -> None:
        """Warn when every higher-band SH gradient is zero although the recipe optimises all bands from step 0
        (the loop renders fewer bands, e.g. gsplat's SH schedule)."""
        if ("shN" in grads and self.recipe.sh_degree_interval == 0 and "sh_bands" not in self._warned
                and bool(active.any()) and not bool(grads["shN"].any())):
            self._warn_deviation("sh_bands", "every shN gradient is exactly zero, but the checkpoint's recipe renders "
                                 "and optimises every SH band from step 0 (sh_degree_interval 0): render at the "
                                 "splats' full SH degree (in gsplat's trainer, not with its SH schedule)")

    # ----------------------------------------------------------------------------- bookkeeping
    def _params_by_role(self) -> dict[str, Tensor]:
        return {role_of(g["name"]): g["params"][0] for g in self.param_groups}

    def _lrs_by_role(self) -> dict[str, float]:
        """Each attribute's lr multiplier, checked (schedulers and users may set any value)."""
        for group in self.param_groups:
            check_lr(group["lr"], f"param group {group['name']!r}")
        return {role_of(g["name"]): g["lr"] for g in self.param_groups}

    def _state_rows(self, role: str, param: Tensor, n: int) -> dict[str, Tensor]:
        """The per-Gaussian state of one attribute (its tensors, and zeros for entries not created yet),
        checked to have N rows; ``self.state`` is not modified."""
        state = dict(self.state.get(param, {}))
        for key in ROW_KEYS[:2]:
            state.setdefault(key, torch.zeros_like(param, memory_format=torch.preserve_format))
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

    def _cached_graph(self, means: Tensor) -> _KnnGraph | None:
        """The cached graph over all Gaussians if it was built from ``means`` (the same Parameter and N)."""
        cache = self._knn_cache
        return cache if cache is not None and cache.means() is means and cache.n == means.shape[0] else None

    def _graph(self, means: Tensor, step: int) -> _KnnGraph | None:
        """The graph over all Gaussians that step ``step`` uses (the cached one, or a new one every
        ``knn_every`` steps and after the means change); None with ``knn_every`` 1. Not cached here."""
        if self.knn_every == 1:
            return None
        cache = self._cached_graph(means)
        if cache is None or step - cache.built_at >= self.knn_every:
            check_finite_rows({"means": means}, None)  # the search reads every row
            n = means.shape[0]
            cache = _KnnGraph(weakref.ref(means), n, step, knn(means, min(self.net.config.k, n), self.knn_backend))
        return cache

    def _neighbours(self, means: Tensor, active: Tensor | None, graph: _KnnGraph | None) -> tuple[Tensor, Tensor]:
        """[A,k] neighbour rows among the active Gaussians (``active`` [A] indices, None: all) and their
        validity mask: from ``graph`` over all Gaussians, or (None) exact among the active ones."""
        if graph is None:
            return knn_graph(take(means, active), self.net.config.k, self.knn_backend)
        if active is None:
            return graph.neighbours, torch.ones_like(graph.neighbours, dtype=torch.bool)
        row_of = torch.full((graph.n,), -1, dtype=torch.long, device=means.device)
        row_of[active] = torch.arange(active.shape[0], device=means.device)
        neighbours = row_of[graph.neighbours[active]]
        return neighbours.clamp(min=0), neighbours >= 0

    # ----------------------------------------------------------------------------------- steps
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, visibility: Tensor | None = None) -> Any:
        """Update all Gaussians with non-zero gradients (and ``visibility``, a [N] bool mask, if given).
        As in torch's optimizers, an attribute without a gradient (``requires_grad=False``, or none this
        step) is left untouched, its state included; the network still reads it.

        Validation happens before anything is written: on bad input (missing attributes, wrong dtypes,
        mismatched N, NaN/Inf gradients, NaN/Inf parameters in the rows the step reads, stale state, a
        result that would not be finite) a ``ValueError``/``TypeError`` leaves parameters and state untouched.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = self._params_by_role()
        n = check_gaussians(params)
        lrs = self._lrs_by_role()
        frozen = {role for role, p in params.items() if p.grad is None}
        if len(frozen) == len(params):
            return loss
        grads = {}
        for role, p in params.items():
            g = torch.zeros_like(p) if p.grad is None else p.grad
            if g.is_sparse or g.shape != p.shape:
                raise ValueError(f"gradient of {role!r} must be dense with the parameter's shape {list(p.shape)}")
            grads[role] = g
        active = active_rows(grads)
        if visibility is not None:
            if not isinstance(visibility, Tensor) or visibility.shape != (n,):
                raise ValueError(f"visibility must be a [N]={n} mask, got {getattr(visibility, 'shape', visibility)!r}")
            active &= visibility.to(active.device, torch.bool)
        check_finite_rows(params, active)
        states = {role: self._state_rows(role, p, n) for role, p in params.items()}
        self._check_recipe({role: g for role, g in grads.items() if role not in frozen}, active)
        if not bool(active.any()):
            self._record_consumed_grads()
            return loss
        step = int(states["means"]["step"])
        graph = self._graph(params["means"], step)
        # frozen attributes step on scratch copies (the network reads them together); nothing is written back
        used = {role: {k: v.clone() if k in ROW_KEYS else v for k, v in s.items()} if role in frozen else s
                for role, s in states.items()}
        apply_learned_step(
            self.net, {role: p.detach().clone() if role in frozen else p for role, p in params.items()}, grads,
            GaussianState(*({role: s[key] for role, s in used.items()} for key in ROW_KEYS), used["means"]["latent"]),
            active, fresh_latent=lambda count: self._fresh_latent(count, step, params["means"].device),
            neighbours=lambda idx: self._neighbours(params["means"], idx, graph),
            lrs=lrs, autocast=self.autocast, in_place=True, chunk_size=self.chunk_size, validate=True,
        )
        for role, p in params.items():  # commit: the new state entries, the step counter, the graph
            if role not in frozen or role == "means":
                self.state[p] = states[role]
        states["means"]["step"] += 1
        self._knn_cache = graph
        self._record_consumed_grads()
        return loss

    def _record_consumed_grads(self) -> None:
        self._consumed_grads = [
            (weakref.ref(p.grad), p.grad._version) for g in self.param_groups for p in g["params"] if p.grad is not None
        ]

    def _is_unconsumed(self, grad: Tensor | None) -> bool:
        """Whether ``grad`` holds a gradient that no step has consumed (a new tensor, or written since)."""
        return grad is not None and not any(ref() is grad and version == grad._version
                                            for ref, version in self._consumed_grads)

    def per_name_optimizers(self) -> dict[str, Optimizer]:
        """``{name: torch.optim.Optimizer}`` views for gsplat's per-name training loop and strategies.

        Each view holds one of this optimizer's param groups (the same dict) and shares its
        ``state``, so gsplat's densification ops (which swap the group's parameter and remap its
        state) and lr schedulers act on this optimizer. Stepping any view runs the joint step once
        per backward pass: a view steps everything when its own attribute's gradient is new (not
        consumed by a step yet); so the first view stepped after ``loss.backward()`` updates
        everything and the others do nothing, even when each view zeroes its gradient in place
        (``zero_grad(set_to_none=False)``) right after its step. ``step(visibility)`` accepts
        gsplat SelectiveAdam's positional [N] visibility mask.
        """
        return {group["name"]: _NamedView(self, group) for group in self.param_groups}

    def state_dict(self) -> dict[str, Any]:
        """torch's ``state_dict`` plus a format entry holding, with ``knn_every > 1``, the neighbour graph
        in use, so that a resume is bit-identical (see :mod:`l2s_optim.state_io`)."""
        state_dict = super().state_dict()
        graph = self._cached_graph(self._params_by_role()["means"])
        state_dict[FORMAT_KEY] = format_entry(None if graph is None else (graph.built_at, graph.neighbours))
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict` saved with the current parameters (restore them first). Groups are
        matched by name; another optimizer's state, or a mismatched or corrupt one, raises
        ``ValueError``/``TypeError`` naming the group and entry, and leaves this optimizer unchanged."""
        means = self._params_by_role()["means"]
        checked = checked_state_dict(state_dict, self.param_groups, self.net.config.width)
        graph = checked_graph(state_dict, means.shape[0], self.net.config.k)
        load_in_place(self, checked)
        self._knn_cache = None if graph is None or self.knn_every == 1 else _KnnGraph(
            weakref.ref(means), means.shape[0], graph[0], graph[1].to(means.device))


class _NamedView(Optimizer):
    """One attribute's view of a :class:`Learn2Splat` (see ``Learn2Splat.per_name_optimizers``)."""

    def __init__(self, joint: Learn2Splat, group: dict[str, Any]) -> None:
        super().__init__(group["params"], {"lr": group["lr"]})
        self.joint = joint
        self.param_groups = [group]
        self.state = joint.state

    @torch.no_grad()
    def step(
        self, visibility: Tensor | Callable[[], Any] | None = None, closure: Callable[[], Any] | None = None
    ) -> Any:
        if callable(visibility):
            visibility, closure = None, visibility
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.joint._is_unconsumed(self.param_groups[0]["params"][0].grad):  # once per backward pass
            self.joint.step(visibility=visibility)
        return loss

    def state_dict(self) -> dict[str, Any]:
        """This attribute's group and state only (the joint optimizer's ``state_dict`` has all)."""
        shared = self.state
        self.state = {p: shared[p] for p in self.param_groups[0]["params"] if p in shared}
        try:
            return {**super().state_dict(), FORMAT_KEY: format_entry(None)}
        finally:
            self.state = shared

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load this attribute's :meth:`state_dict`, validated as ``Learn2Splat.load_state_dict`` does."""
        load_in_place(self, checked_state_dict(state_dict, self.param_groups, self.joint.net.config.width))
