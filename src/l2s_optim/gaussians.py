"""Gaussian attributes: their names, shapes and conventions, in one place for the optimizer, the
renderer and the loaders.

Every attribute is stored raw (pre-activation), N first, as gsplat stores it. Three naming schemes
are accepted; each name maps to one *role*, the name used inside this package:

=============  =================  ===========================  ===========================  ==============
role           gsplat             INRIA 3DGS                   nerfstudio splatfacto        activation
=============  =================  ===========================  ===========================  ==============
``means``      ``means`` [N,3]    ``xyz`` [N,3]                ``means`` [N,3]              none
``scales``     ``scales`` [N,3]   ``scaling`` [N,3]            ``scales`` [N,3]             ``exp``
``quats``      ``quats`` [N,4]    ``rotation`` [N,4]           ``quats`` [N,4]              normalise
``opacities``  ``opacities`` [N]  ``opacity`` [N,1]            ``opacities`` [N,1]          ``sigmoid``
``sh0``        ``sh0`` [N,1,3]    ``features_dc`` [N,1,3]      ``features_dc`` [N,3]        SH (see below)
``shN``        ``shN`` [N,K-1,3]  ``features_rest`` [N,K-1,3]  ``features_rest`` [N,K-1,3]  SH
=============  =================  ===========================  ===========================  ==============

Quaternions are scalar first (w, x, y, z) and unnormalised (the rasterizer normalises them).
``opacities`` may be [N] or [N,1] and ``sh0`` [N,1,3] or [N,3] under any name. SH coefficients
are RGB last, K = (degree + 1)^2 with degree 0..3; ``shN`` is absent at degree 0. A colour is
``SH_C0 * sh0 + 0.5`` plus the higher bands' terms.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

SH_C0 = 0.28209479177387814  # the degree-0 real SH basis function, 1 / (2 sqrt(pi))

ROLES = ("means", "scales", "quats", "opacities", "sh0", "shN")
REQUIRED_ROLES = ROLES[:5]
# INRIA 3DGS names; nerfstudio splatfacto uses gsplat's names but features_dc and features_rest for the SH
ALIASES = {
    "xyz": "means",
    "scaling": "scales",
    "rotation": "quats",
    "opacity": "opacities",
    "features_dc": "sh0",
    "features_rest": "shN",
}
# the row shapes (after N) each role may have; shN is checked by sh_degree_of
ROW_SHAPES = {"means": [(3,)], "scales": [(3,)], "quats": [(4,)], "opacities": [(), (1,)], "sh0": [(1, 3), (3,)]}

# gsplat simple_trainer's default Adam learning rates (means: for a scene of scale 1)
GSPLAT_LRS = {"means": 1.6e-4, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2, "sh0": 2.5e-3, "shN": 2.5e-3 / 20}


def role_of(name: str) -> str | None:
    """The role of a parameter name (gsplat, INRIA or splatfacto naming), or None."""
    return name if name in ROLES else ALIASES.get(name)


def sh_degree_of(tensors: Mapping[str, Tensor]) -> int:
    """SH degree implied by the role -> tensor mapping's ``shN`` [N,K-1,3] (0 when absent); ``ValueError``
    when K is not 4, 9 or 16."""
    if "shN" not in tensors:
        return 0
    shn = tensors["shN"]
    coeffs = shn.shape[1] + 1 if shn.ndim == 3 and shn.shape[2] == 3 else 0
    degree = round(coeffs**0.5) - 1
    if (degree + 1) ** 2 != coeffs or not 0 <= degree <= 3:
        raise ValueError(f"shN must be [N,K-1,3] with K in (4, 9, 16), got {list(shn.shape)}")
    return degree


def _shape_text(row: tuple[int, ...]) -> str:
    return "[" + ",".join(["N", *map(str, row)]) + "]"


def check_gaussians(tensors: Mapping[str, Tensor], what: str = "parameter") -> int:
    """Validate a role -> tensor mapping (parameters or gradients); return N.

    Raises ``ValueError`` naming the missing role, the wrong shape or the mismatched N, and ``TypeError``
    for a dtype other than float32/float64 (integers cannot be stepped; in float16/bfloat16 Adam's
    moments and ``eps`` underflow).
    """
    missing = [r for r in REQUIRED_ROLES if r not in tensors]
    if missing:
        raise ValueError(f"missing Gaussian {what}(s) {missing}: Learn2Splat needs means, scales, quats, "
                         "opacities and sh0 (shN optional), by gsplat, INRIA or splatfacto names")
    n = tensors["means"].shape[0] if tensors["means"].ndim else -1
    for role, t in tensors.items():
        if t.ndim == 0 or t.shape[0] != n:
            raise ValueError(f"{what} {role!r} has shape {list(t.shape)} but means has N={n} rows; "
                             "every attribute must have the same number of Gaussians first")
        if t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{what} {role!r} has dtype {t.dtype}: Learn2Splat steps float32 or float64 Gaussians "
                            "(keep them in float32 and autocast the renderer instead)")
        allowed = ROW_SHAPES.get(role)
        if allowed is not None and tuple(t.shape[1:]) not in allowed:
            raise ValueError(f"{what} {role!r} must be {' or '.join(map(_shape_text, allowed))}, got {list(t.shape)}")
    sh_degree_of(tensors)
    return n


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [...,3,3] from quaternions [...,4] (w, x, y, z), normalised here."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).unflatten(-1, (3, 3))
