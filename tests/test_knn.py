import pytest
import torch

import l2s_optim.knn as knn_module
from l2s_optim.knn import available_backends, knn, resolve_backend


def brute_force_sq_distances(points, k, rows=1024):
    """Squared distances [N,k] to the k nearest points, nearest first (cdist from differences, no matmul)."""
    out = []
    for start in range(0, len(points), rows):
        d = torch.cdist(points[start : start + rows], points, compute_mode="donot_use_mm_for_euclid_dist")
        out.append(d.topk(k, dim=1, largest=False).values.square())
    return torch.cat(out)


def assert_exact(points, k, idx, reference=None):
    """idx [N,k] is an exact kNN of points: self first, distinct, the brute-force distances in order."""
    n = len(points)
    assert idx.shape == (n, k) and idx.dtype == torch.long
    assert torch.equal(idx[:, 0], torch.arange(n))
    assert (idx.sort(dim=1).values.diff(dim=1) > 0).all()  # no point twice in a row
    d2 = ((points[idx] - points[:, None]) ** 2).sum(-1)
    reference = brute_force_sq_distances(points, k) if reference is None else reference
    torch.testing.assert_close(d2, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", available_backends("cpu"))
@pytest.mark.parametrize("n, k", [(1, 1), (7, 7), (500, 4), (3000, 16)])
def test_matches_brute_force(backend, n, k):
    points = torch.randn(n, 3, generator=torch.Generator().manual_seed(n))
    idx = knn(points, k, backend, chunk_bytes=1 << 16)  # small chunks: exercise the chunking
    assert_exact(points, k, idx)


def test_backends_agree_on_indices_without_ties():
    points = torch.rand(2000, 3, generator=torch.Generator().manual_seed(1)).double()
    results = [knn(points, 8, b) for b in available_backends("cpu")]
    for other in results[1:]:
        assert (other == results[0]).float().mean() > 0.999


def test_coincident_points_keep_self_first():
    base = torch.randn(20, 3)
    points = torch.cat([base, base])  # every point has an exact twin (as after gsplat's duplicate)
    for backend in available_backends("cpu"):
        idx = knn(points, 3, backend)
        assert torch.equal(idx[:, 0], torch.arange(40))
        twins = torch.arange(40).remainder(20) + torch.where(torch.arange(40) < 20, 20, 0)
        assert torch.equal(idx[:, 1], twins)


def _generator():
    return torch.Generator().manual_seed(0)


def duplicated(n):
    """A quarter of the points three times each, 40 more copies of one of them, and distinct points."""
    base = torch.rand(n // 4, 3, generator=_generator())
    return torch.cat([base, base, base, base[:1].expand(40, 3), torch.rand(n // 4, 3, generator=_generator())])


def anisotropic(n):
    """1000 : 1 : 1 box, then a flat square and a line (zero extents)."""
    box = torch.rand(n, 3, generator=_generator()) * torch.tensor([1000.0, 1.0, 1.0])
    flat = torch.rand(n // 4, 3, generator=_generator()) * torch.tensor([1.0, 1.0, 0.0])
    line = torch.rand(n // 4, 3, generator=_generator()) * torch.tensor([0.0, 0.0, 5.0]) + 3
    return torch.cat([box, flat, line])


def clustered(n):
    """Five dense clusters (spread 0.01) far apart in a 200-wide box, plus 1% uniform outliers."""
    g = _generator()
    centres = torch.rand(5, 3, generator=g) * 200 - 100
    members = centres[torch.arange(n) % 5] + 0.01 * torch.randn(n, 3, generator=g)
    return torch.cat([members, torch.rand(n // 100, 3, generator=g) * 200 - 100])


def far_outlier(n):
    return torch.cat([torch.randn(n, 3, generator=_generator()), torch.tensor([[1e4, -3.0, 2.0]])])


def offset_cluster(n):
    """A tiny cluster far from the origin: fp32 cells and differences at their precision limit."""
    return 1000 + 1e-3 * torch.rand(n, 3, generator=_generator())


HARD = {
    "duplicated": duplicated,
    "coincident": lambda n: torch.full((n // 10, 3), 0.5),
    "anisotropic": anisotropic,
    "clustered": clustered,
    "far_outlier": far_outlier,
    "offset_cluster": offset_cluster,
}


@pytest.mark.parametrize("k", [1, 4, 9])
@pytest.mark.parametrize("name", HARD)
def test_grid_exact_on_hard_distributions(name, k):
    points = HARD[name](2000)
    assert_exact(points, k, knn(points, k, "grid"))


@pytest.mark.parametrize("cell", ["one_cell", "tiny"])
def test_grid_exact_whatever_the_cell_size(monkeypatch, cell):
    """All points in one cell (one block of every pair), or cells far too small (many widenings)."""
    size = {"one_cell": lambda extent: extent * 10, "tiny": lambda extent: extent / 2**20}[cell]
    monkeypatch.setattr(knn_module, "_cell_size", lambda points, k, lo, extent: size(extent))
    points = clustered(1500)
    assert_exact(points, 5, knn(points, 5, "grid"))


@pytest.mark.parametrize("n, k", [(5, 5), (40, 40), (40, 1)])
def test_grid_n_equals_k_and_k_one(n, k):
    points = torch.rand(n, 3, generator=_generator())
    assert_exact(points, k, knn(points, k, "grid"))


def test_grid_large_random():
    points = torch.rand(20_000, 3, generator=_generator())
    reference = brute_force_sq_distances(points, 16)
    for k in (4, 16):
        assert_exact(points, k, knn(points, k, "grid"), reference[:, :k])


@pytest.mark.parametrize(
    "points, k, message",
    [
        (torch.randn(3, 3), 4, "k <= N"),
        (torch.randn(0, 3), 1, "k <= N"),
        (torch.randn(5, 2), 1, r"\[N,3\]"),
        (torch.tensor([[0.0, 0.0, float("nan")]] * 5), 2, "NaN"),
    ],
)
@pytest.mark.parametrize("backend", ["auto", "grid"])
def test_bad_input(points, k, message, backend):
    with pytest.raises(ValueError, match=message):
        knn(points, k, backend)


def test_unknown_or_unavailable_backend():
    with pytest.raises(ValueError, match="unknown kNN backend"):
        knn(torch.randn(5, 3), 2, "faiss")
    with pytest.raises(ValueError, match="'scipy' is not available for cuda"):
        resolve_backend("scipy", "cuda", 10)


def test_auto_order():
    """grid first for large N, or when N is not given; below that, SciPy first on CPU and grid last on CUDA."""
    large, small = 10**6, 1000
    assert available_backends("cpu")[0] == available_backends("cpu", large)[0] == "grid"
    assert available_backends("cpu", small)[:2] == ["scipy", "grid"]
    assert available_backends("cuda", large)[0] == "grid" and available_backends("cuda", small)[-1] == "grid"
    assert "scipy" not in available_backends("cuda") and available_backends("cuda", small)[-2] == "torch"
