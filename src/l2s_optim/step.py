"""The math of one Learn2Splat step on plain tensors: validation, packing, Adam normalisation,
the network call, unpacking and clamps, and :func:`apply_learned_step`, the one driver that turns
per-Gaussian state into a step for both ``Learn2Splat.step`` and meta-training. No optimizer
bookkeeping (param groups, ``state_dict``) lives here.

Gaussian attributes are role -> [N,...] tensors, raw and N first (roles, shapes and names:
:mod:`l2s_optim.gaussians`).

The network sees each Gaussian as one packed row of P = 11 + 3 * K_net numbers in the layout the
released model was trained on: means | log-scales | quaternion (x, y, z, w) | opacity logit |
SH channel-major (3 colours x K_net coefficients). Parameters of a lower SH degree than the
network's are zero-padded; the padded entries' updates are dropped.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from .knn import knn
from .network import Learn2SplatNet, NetConfig, row_chunks

Autocast = Literal["auto", "bf16", "fp32"]
AUTOCAST = ("auto", "bf16", "fp32")


def active_rows(grads: Mapping[str, Tensor]) -> Tensor:
    """[N] bool: the Gaussians with any non-zero gradient entry (the others are not stepped).

    One pass over each attribute also rejects NaN/Inf: ``ValueError`` naming the attribute.
    """
    n = grads["means"].shape[0]
    active = torch.zeros(n, dtype=torch.bool, device=grads["means"].device)
    for role, g in grads.items():
        peak = row_peaks(g)
        if not torch.isfinite(peak).all():
            raise ValueError(f"gradient of {role!r} contains NaN or Inf; parameters and state left unchanged")
        active |= peak > 0
    return active


def row_peaks(t: Tensor) -> Tensor:
    """[N] the largest magnitude in each row of ``t`` [N,...]; NaN and Inf survive the max."""
    return t.detach().reshape(t.shape[0], math.prod(t.shape[1:])).abs().amax(1)


def _first_rows(rows: Tensor, shown: int = 5) -> str:
    listed = ", ".join(map(str, rows[:shown].tolist()))
    return f"[{listed}{', ...' if rows.numel() > shown else ''}]"


def check_finite_rows(tensors: Mapping[str, Tensor], rows: Tensor | None, what: str = "parameter") -> None:
    """Refuse NaN/Inf in the ``rows`` ([N] bool; None: every row) of role -> [N,...] tensors, the rows a
    step will read: ``ValueError`` naming the attribute and the rows. One pass per tensor, one host sync."""
    read = True if rows is None else rows
    bad = {r: ~torch.isfinite(row_peaks(t)) & read for r, t in tensors.items()}
    flags = torch.stack([b.any() for b in bad.values()]).tolist()
    for (role, b), flag in zip(bad.items(), flags):
        if flag:
            at = b.nonzero().squeeze(1)
            raise ValueError(f"{what} {role!r} contains NaN or Inf in {at.numel()} Gaussian(s) to be read, rows "
                             f"{_first_rows(at)}; parameters and state left unchanged")


def _views(packed: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Views of packed [N,P] rows: means [N,3], log-scales [N,3], quaternion (x, y, z, w) [N,4],
    opacity logit [N,1] and SH [N,K_net,3] (stored channel-major)."""
    means, scales, quats, opacities, sh = packed.split([3, 3, 4, 1, packed.shape[1] - 11], dim=1)
    return means, scales, quats, opacities, sh.unflatten(1, (3, -1)).transpose(1, 2)


def pack(tensors: Mapping[str, Tensor], sh_coeffs: int) -> Tensor:
    """Pack role -> [N,...] tensors into [N,P] rows in the network's layout (see module doc), a new
    tensor (differentiable w.r.t. the inputs)."""
    n = tensors["means"].shape[0]
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors.values()))
    quats = tensors["quats"]
    sh = [tensors["sh0"].reshape(n, 1, 3)] + ([tensors["shN"]] if "shN" in tensors else [])  # sh0 may be [N,3]
    missing = sh_coeffs - sum(t.shape[1] for t in sh)  # a lower SH degree than the network's
    if missing:
        sh.append(quats.new_zeros(n, missing, 3, dtype=dtype))
    sh_rows = torch.cat([t.to(dtype) for t in sh], dim=1).transpose(1, 2).reshape(n, 3 * sh_coeffs)  # channel-major
    parts = [tensors["means"], tensors["scales"], quats[:, 1:], quats[:, :1], tensors["opacities"].reshape(n, 1)]
    return torch.cat([t.to(dtype) for t in parts] + [sh_rows], dim=1)  # quaternion w, x, y, z -> x, y, z, w


def unpack(packed: Tensor, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`pack`: [N,P] rows -> role -> [N, *row shape of ``like[role]``] (views, but the
    reordered quaternion); ``opacities`` and ``sh0`` take ``like``'s form ([N] or [N,1]; [N,1,3] or [N,3])."""
    n = packed.shape[0]
    means, scales, quats, opacities, sh = _views(packed)
    out = {
        "means": means,
        "scales": scales,
        "quats": torch.cat([quats[:, 3:], quats[:, :3]], dim=1),  # x, y, z, w -> w, x, y, z
        "opacities": opacities.reshape(n, *like["opacities"].shape[1:]),
        "sh0": sh[:, :1].reshape(n, *like["sh0"].shape[1:]),
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
    """``full`` [N,...] with its rows ``idx`` (None: every row) set to ``rows`` [A,...] (cast to ``full``'s
    dtype): written into ``full``, or returned as a new tensor (differentiable w.r.t. ``rows``)."""
    rows = rows.to(full.dtype)
    if in_place:
        return full.copy_(rows) if idx is None else full.index_copy_(0, idx, rows)
    return rows.contiguous() if idx is None else full.index_put((idx,), rows)


@dataclass
class GaussianState:
    """The learned optimizer's per-Gaussian state of N Gaussians (or of A selected rows).

    ``exp_avg``/``exp_avg_sq``: role -> Adam moments shaped like the parameter; ``gaussian_step``: role ->
    [N] Adam steps taken (fp32; the optimizer's state key of the same name); ``latent``: [N,W] the network's
    latent state. A row is fresh (gets an initial latent at its first step) when its ``means`` counter is 0
    and its latent is all zero: rows appended as zeros by gsplat's densification are fresh, latents
    projected from ``init_features`` are kept.
    """

    exp_avg: dict[str, Tensor]
    exp_avg_sq: dict[str, Tensor]
    gaussian_step: dict[str, Tensor]
    latent: Tensor

    def rows(self, idx: Tensor | None) -> GaussianState:
        """The state of rows ``idx`` [A] (this state when ``idx`` is None)."""
        if idx is None:
            return self
        mappings = (self.exp_avg, self.exp_avg_sq, self.gaussian_step)
        return GaussianState(*({r: take(t, idx) for r, t in d.items()} for d in mappings), take(self.latent, idx))

    def put_rows(self, rows: GaussianState, idx: Tensor | None, in_place: bool) -> GaussianState:
        """This state with rows ``idx`` set to ``rows`` (see :func:`put`)."""
        mappings = ((self.exp_avg, rows.exp_avg), (self.exp_avg_sq, rows.exp_avg_sq),
                    (self.gaussian_step, rows.gaussian_step))
        return GaussianState(*({r: put(full[r], new[r], idx, in_place) for r in full} for full, new in mappings),
                             put(self.latent, rows.latent, idx, in_place))

    def fresh_rows(self) -> Tensor:
        """[F] indices of the fresh rows (see the class doc); only never-stepped rows are scanned."""
        never = self.gaussian_step["means"].eq(0).nonzero().squeeze(1)
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


def nonfinite_rows(outputs: Iterable[Tensor]) -> Tensor:
    """[F] indices of the rows that are not all finite in some of the new values ``outputs`` ([B,...] each)."""
    finite = torch.stack([torch.isfinite(row_peaks(t)) for t in outputs]).all(0)
    return (~finite).nonzero().squeeze(1)


def refuse_nonfinite(rows: Tensor, params: Mapping[str, Tensor]) -> None:
    """Refuse a step that would write NaN or Inf into the Gaussians ``rows`` [F] (ascending indices into the N
    rows of ``params``, role -> [N,...]; none: return): finite but extreme inputs (a log-scale of 1e30) overflow
    the network, and the attention spreads that row's NaN to its neighbours. ``ValueError`` naming the rows and
    the largest parameter magnitude among them."""
    if not rows.numel():
        return
    peaks = {r: row_peaks(p[rows]).max(0) for r, p in params.items()}
    role = max(peaks, key=lambda r: peaks[r].values.item())
    raise ValueError(
        f"this step would write NaN or Inf into {rows.numel()} Gaussian(s), rows {_first_rows(rows)}: their inputs "
        f"overflow the network (the largest is |{role}| = {peaks[role].values.item():.3g} at row "
        f"{rows[peaks[role].indices].item()}); parameters and state left unchanged"
    )


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
    rows = prepare_rows(net.config, params, grads, state)
    net_dtype = next(net.parameters()).dtype
    with network_autocast(autocast, rows.x.device):
        delta, latent = net(rows.x.to(net_dtype), state.latent.to(net_dtype), rows.normalised.to(net_dtype), *graph,
                            steps=rows.gaussian_step["means"], entry_steps=rows.entry_steps)
    updated = updated_rows(net.config, rows.x, delta, params, lrs)
    return StepResult(unpack(updated, params), rows.new_state(state, latent.to(state.latent.dtype)),
                      unpack(rows.normalised, grads))


@dataclass
class PreparedRows:
    """B rows packed for the network (layout of :func:`pack`), their Adam moments already updated."""

    x: Tensor  # [B,P] raw parameters
    exp_avg: Tensor  # [B,P] first moments, this step's gradient included
    exp_avg_sq: Tensor  # [B,P] second moments
    gaussian_step: dict[str, Tensor]  # role -> [B] Adam steps, this one included
    normalised: Tensor  # [B,P] Adam-normalised gradients
    entry_steps: Tensor | None  # [B,P] steps of each entry's attribute when the network's bound decays, else None

    def new_state(self, state: GaussianState, latent: Tensor) -> GaussianState:
        """The rows' new state: these moments and counters (shaped like ``state``'s) and ``latent`` [B,W]."""
        return GaussianState(unpack(self.exp_avg, state.exp_avg), unpack(self.exp_avg_sq, state.exp_avg_sq),
                             self.gaussian_step, latent)


def prepare_rows(
    config: NetConfig, params: Mapping[str, Tensor], grads: Mapping[str, Tensor], state: GaussianState
) -> PreparedRows:
    """Pack B rows (role -> [B,...] parameters and gradients, their state) and take Adam's moment step;
    nothing given is modified."""
    sh = config.sh_coeffs
    steps = steps_with_this_one(state.gaussian_step)
    exp_avg, exp_avg_sq = pack(state.exp_avg, sh), pack(state.exp_avg_sq, sh)
    normalised = adam_normalise_(pack(grads, sh), exp_avg, exp_avg_sq, bias_corrections(steps, grads, config), config)
    return PreparedRows(pack(params, sh), exp_avg, exp_avg_sq, steps, normalised,
                        entry_steps_of(config, state.gaussian_step, params))


def steps_with_this_one(counts: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """role -> [B] Adam steps counting the step being taken, from the counts before it."""
    return {r: c + 1 for r, c in counts.items()}


def entry_steps_of(
    config: NetConfig, counts: Mapping[str, Tensor], like: Mapping[str, Tensor], idx: Tensor | None = None
) -> Tensor | None:
    """[B,P] step count of every packed entry, this step included, when the network's multiplier bound
    decays with it (``config.multiplier_decay_steps``), else None (nothing computed). ``counts``: role -> [N]
    counts before this step, of which the rows ``idx`` [B] (None: all) are taken; ``like`` shapes the roles."""
    if config.multiplier_decay_steps is None:
        return None
    return pack_broadcast(steps_with_this_one({r: take(c, idx) for r, c in counts.items()}), like, config.sh_coeffs)


def network_autocast(policy: Autocast, device: torch.device) -> torch.autocast:
    """The autocast context the network runs in on ``device`` under ``policy`` (see :func:`autocast_dtype`)."""
    dtype = autocast_dtype(policy, device)
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def updated_rows(
    config: NetConfig, x: Tensor, delta: Tensor, like: Mapping[str, Tensor], lrs: Mapping[str, float]
) -> Tensor:
    """Packed rows x [B,P] moved by ``-lr * delta`` (delta [B,P], lr per role of ``like``) and clamped."""
    lr = pack_broadcast({r: x.new_tensor([lrs[r]]) for r in like}, like, config.sh_coeffs)
    return torch.addcmul(x, lr, delta.to(x.dtype), value=-1).clamp_(*clamp_bounds(config, like))


def learned_step_chunked_(
    net: Learn2SplatNet,
    params: Mapping[str, Tensor],
    grads: Mapping[str, Tensor],
    state: GaussianState,
    idx: Tensor | None,
    graph: tuple[Tensor, Tensor],
    lrs: Mapping[str, float],
    autocast: Autocast,
    chunk_size: int,
    fresh: Tensor,
    fresh_latent: Callable[[int], Tensor],
    validate: bool,
) -> None:
    """:func:`learned_step` of the rows ``idx`` [A] (None: all N), written into ``params`` and ``state`` (N
    rows) ``chunk_size`` rows at a time: deployment only (no autograd), the same numbers in bounded memory.

    Everything but the attention is row by row, so it runs per chunk, in passes that write nothing until
    the last: (1) packing, Adam's moment step and the network's input projection; then the blocks, each
    over all rows chunk by chunk (:meth:`~l2s_optim.network.PointBlock.forward_chunked_`); (2) the Update
    MLP and the new parameters; with ``validate``, a step whose new parameters, moments or latent would not
    all be finite is refused here (:func:`refuse_nonfinite`); (3) the moments again (cheap, rather than
    held) and every new value written. Besides one chunk's temporaries a step holds the A rows' block
    activations [A,W], state scales [A,1] and normalised gradients, then new parameters [A,P], and one
    block's keys and values [A,2D].

    Args:
        params, grads: role -> [N,...]; state: the N rows' state.
        graph: neighbours [A,k] (indices into the A rows) and valid [A,k].
        fresh: [F] the fresh rows among ``idx`` (see :class:`GaussianState`), ascending indices into the N rows.
        fresh_latent: count -> [count,W] their initial latent states, in row order (held during pass 1 only;
            ``state`` is written for them in the last pass, as for the other rows).
        validate: refuse a step whose new rows would not be finite, before anything is written.
    """
    config = net.config
    net_dtype = next(net.parameters()).dtype
    device = params["means"].device
    a = params["means"].shape[0] if idx is None else idx.shape[0]
    chunks = row_chunks(a, chunk_size)
    at = [torch.arange(c.start, c.stop, device=device) if idx is None else idx[c] for c in chunks]

    def prepared_rows(rows_at: Tensor) -> tuple[dict[str, Tensor], GaussianState, PreparedRows]:
        rows, param_rows = state.rows(rows_at), {r: take(p, rows_at) for r, p in params.items()}
        return param_rows, rows, prepare_rows(config, param_rows, {r: take(g, rows_at) for r, g in grads.items()}, rows)

    x = scale = packed = None  # packed [A,P]: the normalised gradients, then (from pass 2 on) the new parameters
    bad = []  # indices into the N rows that would not be finite
    initial = fresh_latent(fresh.numel())
    for c, rows_at in zip(chunks, at):  # pass 1
        _, rows, prepared = prepared_rows(rows_at)
        latent = _with_fresh(rows.latent, rows_at, fresh, initial)
        with network_autocast(autocast, device):
            x_rows, scale_rows = net.encode(prepared.x.to(net_dtype), latent.to(net_dtype),
                                            prepared.normalised.to(net_dtype), steps=prepared.gaussian_step["means"])
        if x is None:
            x, scale = x_rows.new_empty(a, x_rows.shape[1]), scale_rows.new_empty(a, 1)
            packed = prepared.normalised.new_empty(a, prepared.normalised.shape[1])
        x[c], scale[c], packed[c] = x_rows, scale_rows, prepared.normalised
        if validate:
            bad.append(rows_at[nonfinite_rows([prepared.exp_avg, prepared.exp_avg_sq])])
    del initial
    with network_autocast(autocast, device):
        for block in net.blocks:
            block.forward_chunked_(x, *graph, chunk_size)
    for c, rows_at in zip(chunks, at):  # pass 2
        param_rows = {r: take(p, rows_at) for r, p in params.items()}
        with network_autocast(autocast, device):
            delta = net.decode(x[c], scale[c], packed[c].to(net_dtype),
                               entry_steps_of(config, state.gaussian_step, param_rows, rows_at))
        packed[c] = updated_rows(config, pack(param_rows, config.sh_coeffs), delta, param_rows, lrs)
        if validate:
            bad.append(rows_at[nonfinite_rows([*unpack(packed[c], param_rows).values(), x[c]])])
    if validate:
        refuse_nonfinite(torch.cat(bad).unique(), params)
    for c, rows_at in zip(chunks, at):  # pass 3
        param_rows, rows, prepared = prepared_rows(rows_at)
        for r, p in unpack(packed[c], param_rows).items():
            put(params[r], p, rows_at, in_place=True)
        state.put_rows(prepared.new_state(rows, x[c].float()), rows_at, in_place=True)


def _with_fresh(latent: Tensor, rows_at: Tensor, fresh: Tensor, fresh_latent: Tensor) -> Tensor:
    """``latent`` [B,W] of the rows ``rows_at`` [B] (ascending indices), written over with ``fresh_latent``
    [F,W] where a row is among ``fresh`` [F] (ascending indices)."""
    if not fresh.numel():
        return latent
    at = torch.searchsorted(fresh, rows_at).clamp_(max=fresh.numel() - 1)
    hit = fresh[at] == rows_at
    return latent.index_put((hit,), fresh_latent[at[hit]].to(latent.dtype))


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
    rows: StepResult | None  # the stepped rows' update; None when chunked (never held for all rows at once)


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
    chunk_size: int | None = None,
    validate: bool = False,
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
        chunk_size: with ``in_place``, step more active rows than this with :func:`learned_step_chunked_`
            (bounded memory, the same result); None: never chunk.
        validate: refuse (:func:`refuse_nonfinite`, before anything is written) a step whose new rows
            would not be finite, chunked or not.

    Returns:
        The new parameters and state, or None when no row is active.
    """
    idx = None if bool(active.all()) else active.nonzero().squeeze(1)
    if idx is not None and idx.numel() == 0:
        return None
    graph = knn_graph(take(params["means"], idx), net.config.k) if neighbours is None else neighbours(idx)
    if in_place and chunk_size is not None and graph[0].shape[0] > chunk_size:
        fresh = state.fresh_rows()
        fresh = fresh if idx is None else fresh[active[fresh]]  # in row order, as below
        learned_step_chunked_(net, params, grads, state, idx, graph, lrs or dict.fromkeys(params, 1.0), autocast,
                              chunk_size, fresh, fresh_latent, validate)
        return AppliedStep(dict(params), state, idx, None)
    rows = state.rows(idx)
    fresh = rows.fresh_rows()
    if fresh.numel():
        rows = replace(rows, latent=rows.latent.index_put((fresh,), fresh_latent(fresh.numel())))
    param_rows = {r: take(p, idx) for r, p in params.items()}
    result = learned_step(net, param_rows, {r: take(g, idx) for r, g in grads.items()}, rows, graph,
                          lrs or dict.fromkeys(params, 1.0), autocast)
    if validate:
        new = result.state
        bad = nonfinite_rows([*result.params.values(), *new.exp_avg.values(), *new.exp_avg_sq.values(), new.latent])
        refuse_nonfinite(bad if idx is None else idx[bad], params)
    new_params = {r: put(p, result.params[r], idx, in_place) for r, p in params.items()}
    return AppliedStep(new_params, state.put_rows(result.state, idx, in_place), idx, result)
