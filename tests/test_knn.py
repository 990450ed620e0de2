import pytest
import torch

from l2s_optim.knn import available_backends, knn


def brute_force_sq_distances(points, k):
    d2 = ((points[:, None] - points[None]) ** 2).sum(-1)
    return d2.sort(dim=1).values[:, :k]


@pytest.mark.parametrize("backend", available_backends("cpu"))
@pytest.mark.parametrize("n, k", [(1, 1), (7, 7), (500, 4), (3000, 16)])
def test_matches_brute_force(backend, n, k):
    points = torch.randn(n, 3, generator=torch.Generator().manual_seed(n))
    idx = knn(points, k, backend, chunk_bytes=1 << 16)  # small chunks: exercise the chunking
    assert idx.shape == (n, k) and idx.dtype == torch.long
    assert torch.equal(idx[:, 0], torch.arange(n))
    assert all(len(set(row)) == k for row in idx.tolist())
    d2 = ((points[idx] - points[:, None]) ** 2).sum(-1)
    torch.testing.assert_close(d2, brute_force_sq_distances(points, k), rtol=1e-5, atol=1e-6)


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


@pytest.mark.parametrize(
    "points, k, message",
    [
        (torch.randn(3, 3), 4, "k <= N"),
        (torch.randn(0, 3), 1, "k <= N"),
        (torch.randn(5, 2), 1, r"\[N,3\]"),
        (torch.tensor([[0.0, 0.0, float("nan")]] * 5), 2, "NaN"),
    ],
)
def test_bad_input(points, k, message):
    with pytest.raises(ValueError, match=message):
        knn(points, k)


def test_unknown_or_unavailable_backend():
    with pytest.raises(ValueError, match="unknown kNN backend"):
        knn(torch.randn(5, 3), 2, "faiss")
    if "torch_cluster" not in available_backends("cpu"):
        with pytest.raises(ValueError, match="not available"):
            knn(torch.randn(5, 3), 2, "torch_cluster")
