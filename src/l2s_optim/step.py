"""The math of one Learn2Splat step on plain tensors: validation, packing, Adam normalisation,
the network call, unpacking and clamps. No optimizer bookkeeping lives here.

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

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

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
_QUAT_WXYZ_TO_XYZW = [1, 2, 3, 0]
_QUAT_XYZW_TO_WXYZ = [3, 0, 1, 2]


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


def nonzero_gradient_rows(grads: Mapping[str, Tensor]) -> Tensor:
    """[N] bool: the Gaussians with any non-zero gradient entry (the released step skips the others)."""
    n = grads["means"].shape[0]
    return torch.stack([g.reshape(n, -1).ne(0).any(1) for g in grads.values()]).any(0)


def pack(tensors: Mapping[str, Tensor], sh_coeffs: int) -> Tensor:
    """Pack role -> [N,...] tensors into [N,P] rows in the network's layout (see module doc)."""
    n = tensors["means"].shape[0]
    sh = tensors["sh0"].reshape(n, 1, 3)
    if "shN" in tensors:
        sh = torch.cat([sh, tensors["shN"]], dim=1)
    sh = torch.nn.functional.pad(sh, (0, 0, 0, sh_coeffs - sh.shape[1]))  # [N,K_net,3]
    return torch.cat(
        [
            tensors["means"],
            tensors["scales"],
            tensors["quats"][:, _QUAT_WXYZ_TO_XYZW],
            tensors["opacities"].reshape(n, 1),
            sh.transpose(1, 2).reshape(n, -1),
        ],
        dim=1,
    )


def unpack(packed: Tensor, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`pack`: [N,P] rows -> role -> [N, *row shape of ``like[role]``]."""
    n = packed.shape[0]
    means, scales, quats, opacities, sh = packed.split([3, 3, 4, 1, packed.shape[1] - 11], dim=1)
    sh = sh.reshape(n, 3, -1).transpose(1, 2)  # [N,K_net,3]
    out = {
        "means": means,
        "scales": scales,
        "quats": quats[:, _QUAT_XYZW_TO_WXYZ],
        "opacities": opacities.reshape(n, *like["opacities"].shape[1:]),
        "sh0": sh[:, :1],
    }
    if "shN" in like:
        out["shN"] = sh[:, 1 : like["shN"].shape[1] + 1]
    return out


def adam_normalise(
    grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, count: Tensor, beta1: float, beta2: float, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Adam's bias-corrected direction m_hat / (sqrt(v_hat) + eps) with a step count per row.

    Args:
        grad, exp_avg, exp_avg_sq: [A,...] rows of one attribute.
        count: [A] steps already taken by each row (fp32; 0 for a fresh row).

    Returns:
        (normalised gradient, new exp_avg, new exp_avg_sq, new count), new tensors.
    """
    count = count + 1
    exp_avg = exp_avg.lerp(grad, 1 - beta1)
    exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * grad * grad
    per_row = (-1,) + (1,) * (grad.ndim - 1)
    bias1 = (1 - beta1 ** count.double()).to(grad.dtype).view(per_row)
    bias2 = (1 - beta2 ** count.double()).to(grad.dtype).view(per_row)
    normalised = (exp_avg / bias1) / ((exp_avg_sq / bias2).sqrt() + eps)
    return normalised, exp_avg, exp_avg_sq, count


def clamp_(rows: dict[str, Tensor], config: NetConfig) -> None:
    """Clamp updated rows in place to the ranges the network was trained in."""
    rows["scales"].clamp_(config.log_scale_min, config.log_scale_max)
    rows["opacities"].clamp_(config.opacity_logit_min, config.opacity_logit_max)
    for role in ("sh0", "shN"):
        if role in rows:
            rows[role].clamp_(config.sh_min, config.sh_max)


@dataclass
class StepResult:
    """New values for the active rows (index with the same ``active`` indices)."""

    params: dict[str, Tensor]  # role -> [A,...], clamped
    normalised: dict[str, Tensor]  # the Adam-normalised gradients the network saw
    exp_avg: dict[str, Tensor]
    exp_avg_sq: dict[str, Tensor]
    count: dict[str, Tensor]  # role -> [A]
    latent: Tensor  # [A,W]


def learned_step(
    net: Learn2SplatNet,
    params: Mapping[str, Tensor],
    grads: Mapping[str, Tensor],
    exp_avg: Mapping[str, Tensor],
    exp_avg_sq: Mapping[str, Tensor],
    count: Mapping[str, Tensor],
    latent: Tensor,
    neighbours: Tensor,
    valid: Tensor,
    lrs: Mapping[str, float],
    autocast: bool = True,
) -> StepResult:
    """One learned update of A active Gaussians; pure (inputs are not modified).

    Every mapping is role -> [A,...] rows of the active Gaussians only. ``latent`` [A,W] has no
    fresh (all-zero) rows left; ``neighbours``/``valid`` [A,k] index the A rows. ``lrs`` scales each
    role's update (1.0 = as meta-trained).
    """
    config = net.config
    b1, b2, eps = config.adam_beta1, config.adam_beta2, config.adam_eps
    normalised, new_m, new_v, new_count = {}, {}, {}, {}
    for role, g in grads.items():
        normalised[role], new_m[role], new_v[role], new_count[role] = adam_normalise(
            g, exp_avg[role], exp_avg_sq[role], count[role], b1, b2, eps
        )
    net_dtype = next(net.parameters()).dtype
    x_params = pack(params, config.sh_coeffs).to(net_dtype)
    x_grads = pack(normalised, config.sh_coeffs).to(net_dtype)
    use_autocast = autocast and latent.device.type == "cuda"
    with torch.autocast(latent.device.type, dtype=torch.bfloat16, enabled=use_autocast):
        delta, new_latent = net(x_params, latent.to(net_dtype), x_grads, neighbours, valid)
    delta = unpack(delta, params)
    updated = {r: params[r] - lrs[r] * delta[r].to(params[r].dtype) for r in params}
    clamp_(updated, config)
    return StepResult(updated, normalised, new_m, new_v, new_count, new_latent.to(latent.dtype))
