"""k-nearest-neighbour search over Gaussian means.

Backends (``backend="auto"`` picks the first available in this order):

- ``"grid"``: exact spatial-hash grid search in pure torch, any device, O(N log N) and about
  linear in practice for points that fill space or cover surfaces. First from 2e5 points on
  (:data:`_GRID_FROM`): on one CPU thread it beats SciPy's ``cKDTree`` (``workers=1``, tree
  build included) from about 1e5 points with k = 4 and 3e5 with k = 16, e.g. 1e6 points,
  k = 4, in 1.6-1.9 s vs 4.9-5.5 s, time ~ N^0.9 (``benchmarks/knn_speed.py``, uniform and
  surface points). Below that, on CPU it comes after ``"scipy"`` (whose query uses every
  core). On CUDA the order is chosen by reasoning only, not timed (no GPU was available):
  ``"grid"`` does O(N) candidate work in a few hundred kernel launches per 2^19 candidate pairs,
  while ``"torch"`` compares all N^2 pairs, which must lose at large N; for small N its few
  launches win, so there ``"grid"`` comes last;
- ``"scipy"``: SciPy's ``cKDTree`` on CPU tensors, all cores;
- ``"torch"``: exact brute force in chunks of queries, any device (the reference the others are
  tested against).

torch-cluster's ``knn`` was a backend until it was dropped: PyPI has it as source only and its build
fails without torch in the build environment, and on CUDA it is a brute-force kernel, which the grid
search must beat at the sizes where kNN cost matters.

Every backend returns the same neighbour lists up to ties in distance: row ``i`` holds ``i``
itself in column 0, then its ``k - 1`` nearest other points, nearest first.

How ``"grid"`` works: the points are sorted by the (hashed) cell of a cubic grid whose cell size
is chosen from a sample of the points (about 1.5 other points in a point's cell where points
fill space, more on surfaces, scaled with k). Each query then scans the points of the cube of
3, then 4, then 5 cells that best centres it (rows of cells along x are contiguous after the
sort; queries of one cube share its gathers) and keeps its k nearest, exact once the k-th
distance is below the distance from the query to the cube's faces. Queries still open after
that (sparse regions, outliers) go on to a grid of three times coarser cells, until the cells
cover every point or so few are left that comparing them with every point is cheaper.
Distances are fp32 from the same differences as brute force; the exactness test allows for
their rounding and for that of the fp32 cell coordinates. Memory: blocks of at most
``chunk_bytes // 512`` candidate pairs plus the grid, O(N) (135 MB at peak for 1e6 points).
"""

from __future__ import annotations

import functools
import importlib.util
import math

import torch
from torch import Tensor

BACKENDS = ("grid", "scipy", "torch")

_BLOCKS = (3, 4, 5)  # edge, in cells, of the cube searched around each query, pass by pass on one grid
_PAD = _BLOCKS[-1] // 2  # empty cells around the points, so that no cube leaves the grid
_GROW = 3.0  # cell edge ratio between successive grids
_TABLE = 4  # hash slots per point, for grids with more cells than that
_FEW = 8  # this few open queries are searched against every point at once
_SAMPLE = 1 << 16  # points sampled to choose the cell size
_STRIDES = (1_000_003, 999_983)  # primes: i * stride % N samples N points without repeats
_FP32_EPS = 2.0**-24
_FP32_D2_ERROR = 1e-6  # relative error bound of an fp32 squared distance, with margin
_KEY_BIAS = 1 << 62  # keeps the int64 keys normal positive float64 (ordered as their bits)
_COL_BITS = 31  # low key bits: the candidate's column
_NETWORK_K = 8  # up to this k, insertion networks select the k nearest faster than torch.topk
_SMALL_BLOCK = 1 << 14  # candidate pairs worth a block's fixed cost
_GRID_FROM = 200_000  # "auto" prefers "grid" from this many points on
_INF_KEY = torch.tensor(math.inf, dtype=torch.float64).view(torch.int64).item()  # padding key


def available_backends(device: torch.device | str = "cpu", n: int | None = None) -> list[str]:
    """The backends usable for points on ``device``, in ``"auto"`` preference order for ``n`` points.

    ``"grid"`` comes first, but below :data:`_GRID_FROM` points after SciPy on CPU and last on
    other devices (see the module docstring).
    """
    cpu = torch.device(device).type == "cpu"
    found = [*(["scipy"] if cpu and _installed("scipy") else []), "torch"]
    if n is None or n >= _GRID_FROM:
        return ["grid", *found]
    return [*found[:1], "grid", *found[1:]] if cpu else [*found, "grid"]


def resolve_backend(backend: str, device: torch.device | str = "cpu", n: int | None = None) -> str:
    """The backend that :func:`knn` uses for ``backend`` (``"auto"`` or one of :data:`BACKENDS`) and ``n``
    points on ``device``; ``ValueError`` for an unknown or unavailable one."""
    usable = available_backends(device, n)
    if backend == "auto":
        return usable[0]
    if backend not in BACKENDS:
        raise ValueError(f"unknown kNN backend {backend!r}; choose from {BACKENDS} or 'auto'")
    if backend not in usable:
        raise ValueError(f"kNN backend {backend!r} is not available for {torch.device(device)} points here")
    return backend


@functools.cache
def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def knn(points: Tensor, k: int, backend: str = "auto", chunk_bytes: int = 1 << 28) -> Tensor:
    """Indices [N,k] (int64, on ``points.device``) of the k nearest points to each point.

    Args:
        points: [N,3] positions (any float dtype; searched in fp32).
        k: neighbours per point, the point itself included; ``1 <= k <= N``.
        backend: ``"auto"`` or one of :data:`BACKENDS`.
        chunk_bytes: memory bound for one block of the brute-force distance matrix; ``"grid"``
            handles ``chunk_bytes // 512`` (at least 65536) candidate pairs at a time.
    """
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [N,3], got {list(points.shape)}")
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"kNN needs 1 <= k <= N, got k={k} with N={n} points")
    if not torch.isfinite(points).all():
        raise ValueError("kNN points contain NaN or Inf")
    backend = resolve_backend(backend, points.device, n)
    pts = points.detach().float()
    if backend == "grid":
        return _self_first(_knn_grid(pts, k, max(1 << 16, chunk_bytes // 512)))
    if backend == "torch":
        return _self_first(_knn_brute_force(pts, k, chunk_bytes))
    return _self_first(_knn_scipy(pts, k))


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


def _self_first(idx: Tensor) -> Tensor:
    """Put each point itself in column 0 (coincident points can displace it) and keep order."""
    me = torch.arange(idx.shape[0], device=idx.device)
    displaced = (idx[:, 0] != me).nonzero().squeeze(1)
    if len(displaced) == 0:
        return idx
    rows, me = idx.index_select(0, displaced), displaced[:, None]
    others = rows.masked_fill(rows == me, -1)
    others = others.gather(1, (others == -1).to(torch.uint8).argsort(dim=1, stable=True))
    return idx.index_copy(0, displaced, torch.cat([me, others[:, :-1]], dim=1))


def _knn_grid(points: Tensor, k: int, pairs: int) -> Tensor:
    """Exact kNN [N,k] of fp32 points [N,3] (any order within a row), ``pairs`` candidates per block."""
    n = points.shape[0]
    out = torch.empty(n, k, dtype=torch.long, device=points.device)
    lo = points.amin(0)
    extent = float((points.amax(0) - lo).max())
    h = _cell_size(points, k, lo, extent)
    open_ = torch.ones(n, dtype=torch.bool, device=points.device)
    while True:
        grid = _Grid(points, lo, h)
        queries = grid.order[open_.index_select(0, grid.order)]
        for width in _BLOCKS:
            queries = queries[~_search(grid, points, queries, width, k, pairs, out)]
            if len(queries) == 0:
                return out
        if len(queries) <= _FEW:  # cheaper against every point than through another grid
            out[queries] = _nearest_of_all(points, points.index_select(0, queries), k)
            return out
        open_.zero_()[queries] = True
        h *= _GROW


def _nearest_of_all(points: Tensor, query_points: Tensor, k: int) -> Tensor:
    """Indices [Q,k] of the k nearest points [N,3] to a few query points [Q,3], from fp32 differences."""
    d2 = sum((points[:, axis] - query_points[:, axis, None]).square_() for axis in range(3))
    return d2.topk(k, dim=1, largest=False).indices


def _cell_size(points: Tensor, k: int, lo: Tensor, extent: float) -> float:
    """Grid cell edge for points [N,3] (lowest corner ``lo`` [3], largest extent ``extent``).

    Aims at ``1.5 * ((k - 0.5) / 3.5) ** 0.4`` other points in a point's cell (1.5 for k = 4) where
    points fill space, and at 3.5 times that on surfaces (their cells hold more points for the
    same neighbour distance), interpolating by the dimension seen in how that count scales with
    the cell edge; tuned on uniform, surface and Gaussian points. Measured on up to
    :data:`_SAMPLE` distinct sampled positions (duplicated points do not count) and scaled to all
    points.
    """
    if extent == 0:
        return 1.0
    n = points.shape[0]
    m = min(n, _SAMPLE)
    stride = _STRIDES[0] if n % _STRIDES[0] else _STRIDES[1]
    sample = points.index_select(0, torch.arange(m, device=points.device) * stride % n)
    bits = sample.view(torch.int32).long()  # hash of the exact position, to drop duplicates
    sample = sample.index_select(0, _first_of_each((bits[:, 0] * 73856093) ^ (bits[:, 1] * 19349663) ^ bits[:, 2]))
    fraction = m / n
    h_min = extent / (1 << 20)  # keeps cell coordinates within 20 bits
    h = max(h_min, extent / n ** (1 / 3))
    mates = _cell_mates(sample, lo, h) / fraction
    dim = 3.0
    for _ in range(6):
        target = 1.5 * ((k - 0.5) / 3.5) ** 0.4 * 3.5 ** (3 - dim)
        ratio = min(8.0, max(1 / 8, (target / mates) ** (1 / dim))) if mates > 0 else 8.0
        h_next = max(h_min, h * ratio)
        if abs(math.log(ratio)) < math.log(1.15) or h_next == h:
            break
        mates_next = _cell_mates(sample, lo, h_next) / fraction
        if mates > 0 and mates_next > 0:
            dim = min(3.0, max(1.0, math.log(mates_next / mates) / math.log(h_next / h)))
        h, mates = h_next, mates_next
    return h


def _first_of_each(keys: Tensor) -> Tensor:
    """The index [U] of one occurrence of each distinct value of keys [M]."""
    values, inverse = torch.unique(keys, return_inverse=True)
    return torch.empty_like(values).scatter_(0, inverse, torch.arange(len(keys), device=keys.device))


def _cell_mates(sample: Tensor, lo: Tensor, h: float) -> float:
    """Mean number of other points [M,3] in a point's cell of edge ``h``."""
    cells = ((sample - lo) / h).long()
    dims = cells.amax(0) + 1
    key = (cells[:, 2] * dims[1] + cells[:, 1]) * dims[0] + cells[:, 0]
    counts = torch.unique(key, return_counts=True)[1].double()
    return float((counts * (counts - 1)).sum()) / len(sample)


class _Grid:
    """Points [N,3] sorted by cell of edge ``h``: a padded grid, hashed into fewer slots when large.

    A slot ``s`` holds the points ``ids[starts[s]:starts[s + 1]]``; slot numbers run along x,
    then y, then z, so a row of x-consecutive cells is one range. The first slots repeat after
    the last (and a point at infinity ends the arrays) so that ranges never wrap.
    """

    def __init__(self, points: Tensor, lo: Tensor, h: float):
        n = points.shape[0]
        self.h, self.lo = h, lo
        cells = self.cells(points).long()
        dims = (cells.amax(0) + _PAD + 1).tolist()
        self.steps = torch.tensor([1, dims[0], dims[0] * dims[1]], device=points.device)  # slot step per axis
        self.covers_all = max(dims) <= 2 * _PAD + 2  # every cell is next to every other one
        self.tol = 4 * _FP32_EPS * max(dims)  # error of an fp32 cell coordinate, in cells
        self.slots = dims[0] * dims[1] * dims[2]
        self.slot = (cells * self.steps).sum(1)  # [N]
        self.hashed = self.slots > _TABLE * n + 64
        if self.hashed:
            self.slots = _table_size(_TABLE * n, dims[0], dims[0] * dims[1])
            self.slot %= self.slots
        self.order = torch.argsort(self.slot.int() if self.slots < 2**31 else self.slot)
        counts = torch.bincount(self.slot, minlength=self.slots)
        wrap = counts[: _BLOCKS[-1] - 1]
        self.starts = torch.cat([counts.new_zeros(1), torch.cat([counts, wrap]).cumsum(0)])
        self.ids = torch.cat([self.order, self.order[: int(wrap.sum())]])
        self.sentinel = len(self.ids)  # index of the point at infinity
        ext = torch.cat([points.index_select(0, self.ids), points.new_full((1, 3), math.inf)])
        self.xy = torch.complex(ext[:, 0], ext[:, 1])  # one gather fetches x and y
        self.z = ext[:, 2].contiguous()

    def cells(self, points: Tensor) -> Tensor:
        """Padded integer cell coordinates [M,3] (int32) of points [M,3]."""
        return ((points - self.lo) * (1 / self.h)).int() + _PAD


def _table_size(at_least: int, row: int, layer: int) -> int:
    """A prime number of hash slots in which the rows of any searched cube are disjoint ranges."""
    width = _BLOCKS[-1]
    size = at_least | 1
    while True:
        size += 2
        if any(size % d == 0 for d in range(3, math.isqrt(size) + 1, 2)):
            continue
        offsets = sorted((dy * row + dz * layer) % size for dy in range(width) for dz in range(width))
        gaps = [b - a for a, b in zip(offsets, offsets[1:] + [offsets[0] + size])]
        if min(gaps) >= width:
            return size


def _search(grid: _Grid, points: Tensor, queries: Tensor, width: int, k: int, pairs: int, out: Tensor) -> Tensor:
    """Search the cube of ``width`` cells around each query (ids [M], in slot order).

    Writes the k nearest [k] of each query whose k-th distance lies inside its cube into
    ``out`` [N,k] and returns which queries that was, [M] bool.
    """
    done = torch.zeros(len(queries), dtype=torch.bool, device=points.device)
    per_chunk = max(1, pairs * 4 // width**3)
    for first in range(0, len(queries), per_chunk):
        ids = queries[first : first + per_chunk]
        query_points = points.index_select(0, ids)
        corner, reach = _cube(grid, query_points, width)
        # queries of one cube share its candidates; in slot order, a cube's queries are adjacent for odd widths
        corners, cube = (torch.unique_consecutive if width % 2 else torch.unique)(corner, return_inverse=True)
        starts, counts = _rows(grid, corners, width)
        size = counts.sum(1)
        # blocks of queries with similar candidate counts, each cube's queries together
        order = torch.argsort(size.index_select(0, cube) * len(corners) + cube)
        cube, total = cube.index_select(0, order), size.index_select(0, cube.index_select(0, order))
        i = 0
        while i < len(order):
            # at most about 25% padding per block, unless the queries left are few
            limit = max(int(total[i]) * 5 // 4 + 8, _SMALL_BLOCK // (len(order) - i))
            end = min(i + max(1, pairs // limit), int(torch.searchsorted(total, limit, right=True)))
            block, columns = order[i:end], int(total[end - 1])
            cubes, local = torch.unique_consecutive(cube[i:end], return_inverse=True)
            nearest, kth = _nearest(
                grid,
                query_points.index_select(0, block),
                starts.index_select(0, cubes),
                counts.index_select(0, cubes),
                local,
                columns,
                k,
            )
            ok = (kth <= reach.index_select(0, block)).nonzero().squeeze(1)  # inf <= inf where cubes hold all
            out.index_copy_(0, ids.index_select(0, block.index_select(0, ok)), nearest.index_select(0, ok))
            done[first + block.index_select(0, ok)] = True
            i = end
    return done


def _cube(grid: _Grid, query_points: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """The cube of ``width`` cells that best centres each query point [M,3].

    Returns the slot [M] of the cube's first cell and the squared distance [M] (fp64, rounding
    margin taken off) from each query to the cube's faces.
    """
    cells = grid.cells(query_points)
    frac = (query_points.double() - grid.lo.double()) / grid.h - (cells - _PAD)  # position in the cell, [M,3]
    below = torch.full_like(cells, width // 2)  # cells of the cube below the query's cell, per axis
    if width % 2 == 0:
        below -= (frac >= 0.5).int()
    reach = torch.minimum(frac + below, width - below - frac).amin(1).sub_(grid.tol).mul_(grid.h)
    reach = reach.square_().mul_(1 - _FP32_D2_ERROR)
    if grid.covers_all:
        reach.fill_(math.inf)
    corner = ((cells - below).long() * grid.steps).sum(1)
    return (corner.remainder_(grid.slots) if grid.hashed else corner), reach


def _rows(grid: _Grid, corners: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """First sorted position and point count [C,R] of the ``R = width**2`` x-rows of the cubes at ``corners`` [C]."""
    span = torch.arange(width, device=corners.device)
    rows = (span[:, None] * grid.steps[2] + span * grid.steps[1]).flatten() % grid.slots  # [R]
    slot = corners[:, None] + rows
    slot = torch.where(slot >= grid.slots, slot - grid.slots, slot).flatten()
    starts = grid.starts.index_select(0, slot).view(len(corners), -1)
    return starts, grid.starts.index_select(0, slot.add_(width)).view(len(corners), -1).sub_(starts)


def _nearest(
    grid: _Grid, query_points: Tensor, starts: Tensor, counts: Tensor, cube: Tensor, columns: int, k: int
) -> tuple[Tensor, Tensor]:
    """The k nearest candidates (point ids [M,k]) of query points [M,3] and the k-th fp32 squared distance [M].

    The candidates of query i are the rows ``starts[cube[i]]``, ``counts[cube[i]]`` [C,R] of its
    cube, at most ``columns`` in all.
    """
    m, c = len(query_points), len(starts)
    # sorted position of column t: starts[j] + t - (first column of row j) for the row j holding t, then the
    # point at infinity: a cumulative sum of ones plus the jumps at the rows' first columns
    first_column = torch.cat([counts.new_zeros(c, 1), counts.cumsum(1)], 1)  # [C,R+1]
    offset = torch.cat([starts, counts.new_full((c, 1), grid.sentinel)], 1) - first_column
    jump = offset.diff(dim=1, prepend=offset.new_ones(c, 1))
    pos = torch.ones(c, columns, dtype=torch.long, device=starts.device)
    pos.scatter_add_(1, first_column.clamp(max=columns - 1), jump.where(first_column < columns, 0))
    pos = pos.cumsum_(1).clamp_(max=grid.sentinel).flatten()
    query_xy = torch.complex(query_points[:, 0], query_points[:, 1])[:, None]
    dxy = grid.xy.index_select(0, pos).view(c, columns).index_select(0, cube).sub_(query_xy)
    sq = torch.view_as_real(dxy).square_()
    d2 = sq[..., 0] + sq[..., 1]
    dz = grid.z.index_select(0, pos).view(c, columns).index_select(0, cube).sub_(query_points[:, 2:])
    d2.addcmul_(dz, dz)
    # keys (squared distance bits, column) in int64 [rows, M], compared as the float64 of the same bits
    rows = math.prod(_fold(columns, 8 * k)) if columns > 8 * k else max(columns, k)
    keys = torch.empty(rows, m, dtype=torch.long, device=pos.device)
    keys[columns:] = _INF_KEY
    key_columns = torch.arange(_KEY_BIAS, _KEY_BIAS + columns, device=pos.device)[:, None]
    keys[:columns].copy_(d2.view(torch.int32).t()).bitwise_left_shift_(_COL_BITS).bitwise_or_(key_columns)
    best = _k_smallest(keys.view(torch.float64), k).view(torch.int64) - _KEY_BIAS  # [k,M]
    kth = (best[-1] >> _COL_BITS).int().view(torch.float32)
    column = (best & ((1 << _COL_BITS) - 1)).t().clamp_(max=columns - 1) + (cube * columns)[:, None]
    nearest = pos.index_select(0, column.flatten()).clamp_(max=grid.sentinel - 1)
    return grid.ids.index_select(0, nearest).view(m, k), kth


def _fold(rows: int, width: int) -> tuple[int, int]:
    """Blocks, and rows per block (at most ``width``), to split ``rows`` into, with padding."""
    blocks = -(-rows // width)
    return blocks, -(-rows // blocks)


def _k_smallest(keys: Tensor, k: int) -> Tensor:
    """The k smallest [k,M] of each column of keys [L,M] (``L >= k``), ascending.

    Insertion networks over blocks of at most ``8 * k`` rows, or ``torch.topk`` for large k.
    """
    if k > _NETWORK_K:
        return keys.topk(k, dim=0, largest=False).values
    while len(keys) > 8 * k:
        blocks, size = _fold(len(keys), 8 * k)
        if blocks * size > len(keys):
            keys = torch.cat([keys, keys.new_full((blocks * size - len(keys), keys.shape[1]), math.inf)])
        keys = _insertion_network(keys.view(blocks, size, -1).unbind(1), k).flatten(0, 1)
    return _insertion_network(keys.unbind(0), k)


def _insertion_network(rows: tuple[Tensor, ...], k: int) -> Tensor:
    """The k smallest [k,...] over ``rows`` (tensors of one shape), elementwise, ascending."""
    best = [rows[0]] + [torch.full_like(rows[0], math.inf)] * (k - 1)
    for row in rows[1:]:
        for j in range(k - 1):
            best[j], row = torch.minimum(best[j], row), torch.maximum(best[j], row)
        best[-1] = torch.minimum(best[-1], row)
    return torch.stack(best)
