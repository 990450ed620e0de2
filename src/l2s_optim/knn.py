"""k-nearest-neighbour search over Gaussian means.

Backends (``backend="auto"`` picks the first available in this order):

- ``"torch_cluster"``: ``torch_cluster.knn`` (the ``knn`` extra), CPU and CUDA;
- ``"scipy"``: SciPy's ``cKDTree`` on CPU tensors (faster than torch_cluster there);
- ``"torch"``: exact brute force in chunks of queries, any device (the CUDA default without
  torch_cluster, and the reference the others are tested against).

Every backend returns the same neighbour lists up to ties in distance: row ``i`` holds ``i``
itself in column 0, then its ``k - 1`` nearest other points, nearest first.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

BACKENDS = ("torch_cluster", "scipy", "torch")


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends usable for points on ``device``, in ``"auto"`` preference order."""
    found = []
    if importlib.util.find_spec("torch_cluster") is not None:
        found.append("torch_cluster")
    if torch.device(device).type == "cpu" and importlib.util.find_spec("scipy") is not None:
        found.append("scipy")
    found.append("torch")
    return found


def knn(points: Tensor, k: int, backend: str = "auto", chunk_bytes: int = 1 << 28) -> Tensor:
    """Indices [N,k] (int64, on ``points.device``) of the k nearest points to each point.

    Args:
        points: [N,3] positions (any float dtype; searched in fp32).
        k: neighbours per point, the point itself included; ``1 <= k <= N``.
        backend: ``"auto"`` or one of :data:`BACKENDS`.
        chunk_bytes: memory bound for one block of the brute-force distance matrix.
    """
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [N,3], got {list(points.shape)}")
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"kNN needs 1 <= k <= N, got k={k} with N={n} points")
    if not torch.isfinite(points).all():
        raise ValueError("kNN points contain NaN or Inf")
    usable = available_backends(points.device)
    if backend == "auto":
        backend = usable[0]
    elif backend not in BACKENDS:
        raise ValueError(f"unknown kNN backend {backend!r}; choose from {BACKENDS} or 'auto'")
    elif backend not in usable:
        raise ValueError(f"kNN backend {backend!r} is not available for {points.device} points here")
    pts = points.detach().float()
    if backend == "torch":
        return _self_first(_knn_brute_force(pts, k, chunk_bytes))
    return _self_first(_knn_scipy(pts, k) if backend == "scipy" else _knn_torch_cluster(pts, k))


def _knn_brute_force(points: Tensor, k: int, chunk_bytes: int) -> Tensor:
    n = points.shape[0]
    rows = max(1, chunk_bytes // (4 * n))
    out = torch.empty(n, k, dtype=torch.long, device=points.device)
    for start in range(0, n, rows):
        d2 = torch.cdist(points[start : start + rows], points).square_()
        out[start : start + rows] = d2.topk(k, dim=1, largest=False, sorted=True).indices
    return out


def _knn_scipy(points: Tensor, k: int) -> Tensor:
    from scipy.spatial import cKDTree

    xyz = points.cpu().numpy()
    _, idx = cKDTree(xyz).query(xyz, k=k, workers=-1)
    return torch.from_numpy(idx.reshape(len(xyz), k)).long().to(points.device)


def _knn_torch_cluster(points: Tensor, k: int) -> Tensor:
    import torch_cluster

    query, found = torch_cluster.knn(points, points, k)
    order = torch.argsort(query, stable=True)  # group the pairs by query point
    found = found[order].view(-1, k)
    d2 = (points[found] - points[:, None]).square().sum(-1)
    return found.gather(1, d2.argsort(dim=1, stable=True))


def _self_first(idx: Tensor) -> Tensor:
    """Put each point itself in column 0 (coincident points can displace it) and keep order."""
    n, k = idx.shape
    me = torch.arange(n, device=idx.device)[:, None]
    others = idx.masked_fill(idx == me, -1)
    others = others.gather(1, (others == -1).to(torch.uint8).argsort(dim=1, stable=True))
    return torch.cat([me, others[:, : k - 1]], dim=1)
