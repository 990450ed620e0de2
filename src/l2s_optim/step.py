"""The math of one Learn2Splat step on plain tensors: validation, packing, Adam normalisation,
the network call, unpacking and clamps, and :func:`apply_learned_step`, the one driver that turns
per-Gaussian state into a step for both ``Learn2Splat.step`` and meta-training. No optimizer
bookkeeping (param groups, ``state_dict``) lives here.

Gaussian attributes follow gsplat's raw, pre-activation storage, N first:

=============  ===============  ==========================================================
role           shape            meaning
=============  ===============  ==========================================================
``means``      [N,3]            world positions (no activation)
``scales``     [N,3]            log standard deviations (activation ``exp``)
``quats``      [N,4]            unnormalised rotation, scalar first (w, x, y, z)
``opacities``  [N] or [N,1]     opacity logits (activation ``sigmoid``)
``sh0``        [N,1,3]          SH DC coefficients (RGB last)
``shN``        [N,K-1,3]        higher SH coefficients, K = (degree + 1)^2; optional (degree 0)
=============  ===============  ==========================================================

The INRIA 3DGS names ``xyz, scaling, rotation, opacity, features_dc, features_rest`` are the
same tensors under other names.

The network sees each Gaussian as one packed row of P = 11 + 3 * K_net numbers in the layout the
released model was trained on: means | log-scales | quaternion (x, y, z, w) | opacity logit |
SH channel-major (3 colours x K_net coefficients). Parameters of a lower SH degree than the
network's are zero-padded; the padded entries' updates are dropped.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from .knn import knn
from .network import Learn2SplatNet, NetConfig

ROLES = ("means", "scales", "quats", "opacities", "sh0", "shN")
REQUIRED_ROLES = ROLES[:5]
INRIA_NAMES = {
    "xyz": "means",
    "scaling": "scales",
    "rotation": "quats",
    "opacity": "opacities",
    "features_dc": "sh0",
    "features_rest": "shN",
}
_ROW_SHAPES = {"means": [(3,)], "scales": [(3,)], "quats": [(4,)], "opacities": [(), (1,)], "sh0": [(1, 3)]}
Autocast = Literal["auto", "bf16", "fp32"]
AUTOCAST = ("auto", "bf16", "fp32")


def role_of(name: str) -> str | None:
    """The attribute role of a parameter name (gsplat or INRIA naming), or None."""
    return name if name in ROLES else INRIA_NAMES.get(name)


def sh_degree_of(tensors: Mapping[str, Tensor]) -> int:
    """SH degree implied by ``shN`` (0 when absent)."""
    if "shN" not in tensors:
        return 0
    coeffs = tensors["shN"].shape[1] + 1
    degree = round(coeffs**0.5) - 1
    if (degree + 1) ** 2 != coeffs or degree > 3:
        raise ValueError(f"shN must be [N,K-1,3] with K in (4, 9, 16), got {list(tensors['shN'].shape)}")
    return degree


def check_gaussians(tensors: Mapping[str, Tensor], what: str = "parameter") -> int:
    """Validate a role -> tensor mapping (parameters or gradients); return N.

    Raises ``ValueError`` naming the missing role, the wrong shape or the mismatched N.
    """
    missing = [r for r in REQUIRED_ROLES if r not in tensors]
    if missing:
        raise ValueError(f"missing Gaussian {what}(s) {missing}: Learn2Splat needs means, scales, quats, "
                         "opacities and sh0 (shN optional), by gsplat or INRIA names")
    n = tensors["means"].shape[0] if tensors["means"].ndim else -1
    for role, t in tensors.items():
        if t.ndim == 0 or t.shape[0] != n:
            raise ValueError(f"{what} {role!r} has shape {list(t.shape)} but means has N={n} rows; "
                             "every attribute must have the same number of Gaussians first")
        allowed = _ROW_SHAPES.get(role)
        if allowed is not None and tuple(t.shape[1:]) not in allowed:
            raise ValueError(f"{what} {role!r} must be [N,{','.join(map(str, allowed[-1]))}], got {list(t.shape)}")
    if "shN" in tensors and (tensors["shN"].ndim != 3 or tensors["shN"].shape[2] != 3):
        raise ValueError(f"{what} 'shN' must be [N,K-1,3], got {list(tensors['shN'].shape)}")
    sh_degree_of(tensors)
    return n


def active_rows(grads: Mapping[str, Tensor]) -> Tensor:
    """[N] bool: the Gaussians with any non-zero gradient entry (the others are not stepped).

    One pass over each attribute also rejects NaN/Inf: ``ValueError`` naming the attribute.
    """
    n = grads["means"].shape[0]
    active = torch.zeros(n, dtype=torch.bool, device=grads["means"].device)
    for role, g in grads.items():
        peak = g.reshape(n, -1).abs().amax(1)  # NaN and Inf survive the max
        if not torch.isfinite(peak).all():
            raise ValueError(f"gradient of {role!r} contains NaN or Inf; parameters and state left unchanged")
        active |= peak > 0
    return active


def _views(packed: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Views of packed [N,P] rows: means [N,3], log-scales [N,3], quaternion (x, y, z, w) [N,4],
    opacity logit [N,1] and SH [N,K_net,3] (stored channel-major)."""
    means, scales, quats, opacities, sh = packed.split([3, 3, 4, 1, packed.shape[1] - 11], dim=1)
    return means, scales, quats, opacities, sh.unflatten(1, (3, -1)).transpose(1, 2)


def pack(tensors: Mapping[str, Tensor], sh_coeffs: int) -> Tensor:
    """Pack role -> [N,...] tensors into [N,P] rows in the network's layout (see module doc), written
    in one pass into a new tensor."""
    n = tensors["means"].shape[0]
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors.values()))
    packed = tensors["means"].new_empty(n, 11 + 3 * sh_coeffs, dtype=dtype)
    means, scales, quats, opacities, sh = _views(packed)
    means.copy_(tensors["means"])
    scales.copy_(tensors["scales"])
    quats[:, :3].copy_(tensors["quats"][:, 1:])  # w, x, y, z -> x, y, z, w
    quats[:, 3].copy_(tensors["quats"][:, 0])
    opacities.copy_(tensors["opacities"].reshape(n, 1))
    sh[:, :1].copy_(tensors["sh0"])
    coeffs = 1
    if "shN" in tensors:
        coeffs += tensors["shN"].shape[1]
        sh[:, 1:coeffs].copy_(tensors["shN"])
    sh[:, coeffs:].zero_()  # a lower SH degree than the network's
    return packed


def unpack(packed: Tensor, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`pack`: [N,P] rows -> role -> [N, *row shape of ``like[role]``] (views, but the
    reordered quaternion)."""
    n = packed.shape[0]
    means, scales, quats, opacities, sh = _views(packed)
    out = {
        "means": means,
        "scales": scales,
        "quats": torch.cat([quats[:, 3:], quats[:, :3]], dim=1),  # x, y, z, w -> w, x, y, z
        "opacities": opacities.reshape(n, *like["opacities"].shape[1:]),
        "sh0": sh[:, :1],
    }
    if "shN" in like:
        out["shN"] = sh[:, 1 : like["shN"].shape[1] + 1]
    return out


def pack_broadcast(values: Mapping[str, Tensor], like: Mapping[str, Tensor], sh_coeffs: int) -> Tensor:
    """Pack one number per row and role: ``values[role]`` [A] (or [1], for every row) fills each entry of
    that role's row shape in ``like``; returns [A,P] (or [1,P]) in the layout of :func:`pack`."""
    return pack(
        {r: v.view(-1, *(1,) * (like[r].ndim - 1)).expand(-1, *like[r].shape[1:]) for r, v in values.items()},
        sh_coeffs,
    )


def take(t: Tensor, idx: Tensor | None) -> Tensor:
    """Rows ``idx`` [A] of ``t``, or ``t`` itself when ``idx`` is None (every row)."""
    return t if idx is None else t.index_select(0, idx)


def put(full: Tensor, rows: Tensor, idx: Tensor | None, in_place: bool) -> Tensor:
    """``full`` [N,...] with its rows ``idx`` (None: every row) set to ``rows`` [A,...]: written into
    ``full``, or returned as a new tensor (differentiable w.r.t. ``rows``)."""
    if in_place:
        return full.copy_(rows) if idx is None else full.index_copy_(0, idx, rows)
    return rows.contiguous() if idx is None else full.index_put((idx,), rows)


@dataclass
class GaussianState:
    """The learned optimizer's per-Gaussian state of N Gaussians (or of A selected rows).

    ``exp_avg``/``exp_avg_sq``: role -> Adam moments shaped like the parameter; ``count``: role -> [N]
    Adam steps taken (fp32); ``latent``: [N,W] the network's latent state. A row is fresh (gets an
    initial latent at its first step) when its ``means`` counter is 0 and its latent is all zero: rows
    appended as zeros by gsplat's densification are fresh, latents projected from ``init_features`` are kept.
    """

    exp_avg: dict[str, Tensor]
    exp_avg_sq: dict[str, Tensor]
    count: dict[str, Tensor]
    latent: Tensor

    def rows(self, idx: Tensor | None) -> GaussianState:
        """The state of rows ``idx`` [A] (this state when ``idx`` is None)."""
        if idx is None:
            return self
        mappings = (self.exp_avg, self.exp_avg_sq, self.count)
        return GaussianState(*({r: take(t, idx) for r, t in d.items()} for d in mappings), take(self.latent, idx))

    def put_rows(self, rows: GaussianState, idx: Tensor | None, in_place: bool) -> GaussianState:
        """This state with rows ``idx`` set to ``rows`` (see :func:`put`)."""
        mappings = ((self.exp_avg, rows.exp_avg), (self.exp_avg_sq, rows.exp_avg_sq), (self.count, rows.count))
        return GaussianState(*({r: put(full[r], new[r], idx, in_place) for r in full} for full, new in mappings),
                             put(self.latent, rows.latent, idx, in_place))

    def fresh_rows(self) -> Tensor:
        """[F] indices of the fresh rows (see the class doc); only never-stepped rows are scanned."""
        never = self.count["means"].eq(0).nonzero().squeeze(1)
        return never[self.latent.detach()[never].eq(0).all(1)]


def bias_corrections(
    steps: Mapping[str, Tensor], like: Mapping[str, Tensor], config: NetConfig
) -> tuple[Tensor, Tensor]:
    """Adam's bias corrections ``1 / (1 - beta1^t)`` and ``1 / sqrt(1 - beta2^t)`` of step ``t``
    (role -> [A], fp32, from ``expm1``: accurate for small t), packed to [A,P] like ``like``."""

    def packed(beta: float, correction: Callable[[Tensor], Tensor]) -> Tensor:
        values = {r: correction(-torch.expm1(t * math.log(beta))) for r, t in steps.items()}
        return pack_broadcast(values, like, config.sh_coeffs)

    return packed(config.adam_beta1, torch.reciprocal), packed(config.adam_beta2, torch.rsqrt)


def adam_normalise_(
    grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, corrections: tuple[Tensor, Tensor], config: NetConfig
) -> Tensor:
    """Adam's moment update, in place, and its bias-corrected direction ``m_hat / (sqrt(v_hat) + eps)``,
    on packed rows (one pass per operation for all attributes).

    Args:
        grad: [A,P] packed gradients.
        exp_avg, exp_avg_sq: [A,P] packed moments, updated in place (pass packed copies).
        corrections: [A,P] each, from :func:`bias_corrections`.

    Returns:
        The normalised gradient [A,P].
    """
    first, second = corrections
    exp_avg.lerp_(grad, 1 - config.adam_beta1)
    exp_avg_sq.mul_(config.adam_beta2).addcmul_(grad, grad, value=1 - config.adam_beta2)
    return (exp_avg * first).div_(exp_avg_sq.sqrt().mul_(second).add_(config.adam_eps))


def clamp_bounds(config: NetConfig, like: Mapping[str, Tensor]) -> Tensor:
    """[2,P] lower and upper bounds of the packed entries after an update (means and quaternions free)."""
    ranges = {
        "scales": (config.log_scale_min, config.log_scale_max),
        "opacities": (config.opacity_logit_min, config.opacity_logit_max),
        "sh0": (config.sh_min, config.sh_max),
        "shN": (config.sh_min, config.sh_max),
    }
    bounds = {r: t.new_tensor(ranges.get(r, (-math.inf, math.inf))) for r, t in like.items()}
    return pack_broadcast(bounds, like, config.sh_coeffs)


def autocast_policy(value: Autocast | bool) -> Autocast:
    """A checked autocast policy: ``"auto"`` (bf16 on CUDA, fp32 elsewhere), ``"bf16"`` (bf16 on every
    device) or ``"fp32"``; ``True``/``False`` (the former boolean option) mean ``"auto"``/``"fp32"``."""
    policy = ("auto" if value else "fp32") if isinstance(value, bool) else value
    if policy not in AUTOCAST:
        raise ValueError(f"autocast must be one of {AUTOCAST} (or a bool), got {value!r}")
    return policy


def autocast_dtype(policy: Autocast, device: torch.device) -> torch.dtype | None:
    """The network's autocast dtype on ``device`` under ``policy`` (None: plain fp32)."""
    return torch.bfloat16 if policy == "bf16" or (policy == "auto" and device.type == "cuda") else None


@dataclass
class StepResult:
    """New values of the stepped rows."""

    params: dict[str, Tensor]  # role -> [A,...], clamped
    state: GaussianState  # [A] rows
    normalised: dict[str, Tensor]  # role -> [A,...] the Adam-normalised gradients the network saw


def learned_step(
    net: Learn2SplatNet,
    params: Mapping[str, Tensor],
    grads: Mapping[str, Tensor],
    state: GaussianState,
    graph: tuple[Tensor, Tensor],
    lrs: Mapping[str, float],
    autocast: Autocast = "auto",
) -> StepResult:
    """One learned update of A Gaussians; pure (inputs are not modified).

    Args:
        params, grads: role -> [A,...] rows.
        state: their state, with no fresh rows left.
        graph: neighbours [A,k] (indices into the A rows, column 0 = self) and valid [A,k] bool.
        lrs: role -> multiplier of that role's update (1.0 = as meta-trained).
        autocast: the network's autocast policy (see :func:`autocast_policy`).
    """
    config = net.config
    sh = config.sh_coeffs
    x = pack(params, sh)
    count = {r: c + 1 for r, c in state.count.items()}
    exp_avg, exp_avg_sq = pack(state.exp_avg, sh), pack(state.exp_avg_sq, sh)
    normalised = adam_normalise_(pack(grads, sh), exp_avg, exp_avg_sq, bias_corrections(count, grads, config), config)
    net_dtype = next(net.parameters()).dtype
    dtype = autocast_dtype(autocast, x.device)
    with torch.autocast(x.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        delta, latent = net(x.to(net_dtype), state.latent.to(net_dtype), normalised.to(net_dtype), *graph)
    lr = pack_broadcast({r: x.new_tensor([lrs[r]]) for r in params}, params, sh)
    updated = torch.addcmul(x, lr, delta.to(x.dtype), value=-1).clamp_(*clamp_bounds(config, params))
    new_state = GaussianState(unpack(exp_avg, state.exp_avg), unpack(exp_avg_sq, state.exp_avg_sq), count,
                              latent.to(state.latent.dtype))
    return StepResult(unpack(updated, params), new_state, unpack(normalised, grads))


def knn_graph(means: Tensor, k: int, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """The exact kNN graph of A means [A,3]: neighbours [A,min(k,A)] (self first) and an all-True valid mask."""
    neighbours = knn(means, min(k, means.shape[0]), backend)
    return neighbours, torch.ones_like(neighbours, dtype=torch.bool)


@dataclass
class AppliedStep:
    """The outcome of :func:`apply_learned_step`."""

    params: dict[str, Tensor]  # role -> [N,...] (the given tensors when written in place)
    state: GaussianState  # [N] rows
    active: Tensor | None  # [A] indices of the stepped rows; None when every row was stepped
    rows: StepResult  # the stepped rows' update


def apply_learned_step(
    net: Learn2SplatNet,
    params: Mapping[str, Tensor],
    grads: Mapping[str, Tensor],
    state: GaussianState,
    active: Tensor,
    *,
    fresh_latent: Callable[[int], Tensor],
    neighbours: Callable[[Tensor | None], tuple[Tensor, Tensor]] | None = None,
    lrs: Mapping[str, float] | None = None,
    autocast: Autocast = "auto",
    in_place: bool = False,
) -> AppliedStep | None:
    """One learned step of the ``active`` Gaussians from their optimizer state: the one driver of
    ``Learn2Splat.step`` and of meta-training's inner step.

    Selects the active rows (nothing is gathered or scattered when every row is active), gives fresh
    rows (see :class:`GaussianState`) their initial latent, builds the neighbour graph, runs
    :func:`learned_step` and writes the rows back.

    Args:
        params, grads: role -> [N,...]; gradients already checked (see :func:`active_rows`).
        state: the N rows' state.
        active: [N] bool, the Gaussians to step.
        fresh_latent: count -> [count,W] initial latent states, in row order.
        neighbours: active indices [A] (None: every row) -> neighbours [A,k] among the active rows and
            valid [A,k]; default :func:`knn_graph` of the active means.
        lrs: role -> update multiplier (default 1.0).
        autocast: the network's autocast policy (see :func:`autocast_policy`).
        in_place: write into ``params`` and ``state`` (deployment, without autograd) instead of
            returning new tensors (meta-training: differentiable through the network and the latent).

    Returns:
        The new parameters and state, or None when no row is active.
    """
    idx = None if bool(active.all()) else active.nonzero().squeeze(1)
    if idx is not None and idx.numel() == 0:
        return None
    rows = state.rows(idx)
    fresh = rows.fresh_rows()
    if fresh.numel():
        rows = replace(rows, latent=rows.latent.index_put((fresh,), fresh_latent(fresh.numel())))
    param_rows = {r: take(p, idx) for r, p in params.items()}
    graph = knn_graph(param_rows["means"], net.config.k) if neighbours is None else neighbours(idx)
    result = learned_step(net, param_rows, {r: take(g, idx) for r, g in grads.items()}, rows, graph,
                          lrs or dict.fromkeys(params, 1.0), autocast)
    new_params = {r: put(p, result.params[r], idx, in_place) for r, p in params.items()}
    return AppliedStep(new_params, state.put_rows(result.state, idx, in_place), idx, result)
