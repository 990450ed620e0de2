"""kNN speed on one CPU thread: the ``grid`` backend vs SciPy's cKDTree (``workers=1``) vs torch brute force.

    OMP_NUM_THREADS=1 python benchmarks/knn_speed.py --out benchmarks/knn_speed

Prints a table and writes ``<out>/knn_speed.json`` and a log-log plot ``<out>/knn_speed.png``. A time is the
best of up to ``--repeats`` runs (a single run once one takes longer than ``--budget`` seconds), as wall-clock
and as process CPU seconds; on a shared machine the CPU seconds are the steadier number and the scaling
exponents (least-squares slope of log seconds over log N) use them. cKDTree's time includes building the tree.
Brute force runs up to ``--brute-max`` points (it is O(N^2)). Every grid result is checked against cKDTree's
distances (``max_d2_error``: largest relative difference of a squared neighbour distance).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import scipy
import torch
from scipy.spatial import cKDTree

from l2s_optim.knn import knn


def uniform(n: int, g: torch.Generator) -> torch.Tensor:
    """[n,3] points uniform in the unit cube."""
    return torch.rand(n, 3, generator=g)


def surfaces(n: int, g: torch.Generator) -> torch.Tensor:
    """[n,3] Gaussian-splat-like points: on 8 spheres and 4 square patches of random size and orientation in the
    unit cube, as many points on each (so densities differ up to 6 times), jittered by 1e-3."""
    sphere = torch.randint(0, 12, (n,), generator=g)
    centre = 0.2 + 0.6 * torch.rand(12, 3, generator=g)
    radius = 0.1 + 0.15 * torch.rand(12, generator=g)
    direction = torch.randn(n, 3, generator=g)
    on_sphere = centre[sphere] + radius[sphere, None] * direction / direction.norm(dim=1, keepdim=True)
    axes = torch.linalg.qr(torch.randn(12, 3, 3, generator=g)).Q  # a random frame per patch
    uv = (torch.rand(n, 2, generator=g) - 0.5) * 2 * radius[sphere, None]
    on_patch = centre[sphere] + (axes[sphere, :, :2] @ uv[:, :, None]).squeeze(2)
    points = torch.where((sphere < 8)[:, None], on_sphere, on_patch)
    return points + 1e-3 * torch.randn(n, 3, generator=g)


DISTRIBUTIONS = {"uniform": uniform, "surfaces": surfaces}


def run_grid(points: torch.Tensor, k: int) -> np.ndarray:
    return knn(points, k, "grid").numpy()


def run_scipy(points: torch.Tensor, k: int) -> np.ndarray:
    xyz = points.numpy()
    return cKDTree(xyz).query(xyz, k=k, workers=1)[1].reshape(len(xyz), k)


def run_torch(points: torch.Tensor, k: int) -> np.ndarray:
    return knn(points, k, "torch").numpy()


BACKENDS = {"grid": run_grid, "scipy": run_scipy, "torch": run_torch}


def timed(fn, points: torch.Tensor, k: int, repeats: int, budget: float) -> tuple[float, float, np.ndarray]:
    """Best wall and CPU seconds over up to ``repeats`` runs (stopping once a run exceeds ``budget``)."""
    wall, cpu = math.inf, math.inf
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        idx = fn(points, k)
        w, c = time.perf_counter() - w, time.process_time() - c
        wall, cpu = min(wall, w), min(cpu, c)
        if w > budget:
            break
    return wall, cpu, idx


def sq_distances(points: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Squared distances [N,k] (fp64) from each point to its listed neighbours [N,k], sorted."""
    return np.sort(((points[idx].astype(np.float64) - points[:, None]) ** 2).sum(-1), axis=1)


def exponent(sizes: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(seconds) over log(N)."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["distribution"], r["k"]) for r in results})
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 4), squeeze=False)
    for ax, (dist, k) in zip(axes[0], keys):
        for backend in BACKENDS:
            rows = [r for r in results if (r["distribution"], r["k"], r["backend"]) == (dist, k, backend)]
            if rows:
                ax.plot([r["n"] for r in rows], [r["cpu_seconds"] for r in rows], "o-", label=backend)
        ax.set(xscale="log", yscale="log", xlabel="points N", title=f"{dist}, k = {k}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("CPU seconds, one thread")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1e4,3e4,1e5,3e5,1e6")
    p.add_argument("--ks", default="4,16")
    p.add_argument("--distributions", default=",".join(DISTRIBUTIONS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget", type=float, default=5.0, help="no repeats once a run takes longer (seconds)")
    p.add_argument("--brute-max", type=int, default=100_000)
    p.add_argument("--out", default="benchmarks/knn_speed")
    args = p.parse_args()
    torch.set_num_threads(1)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    results = []
    print(
        f"{'distribution':>12} {'k':>3} {'N':>8} | CPU s: {'grid':>7} {'scipy':>7} {'torch':>7} | wall s: grid  scipy"
    )
    for dist in args.distributions.split(","):
        for k in [int(s) for s in args.ks.split(",")]:
            for n in sizes:
                points = DISTRIBUTIONS[dist](n, torch.Generator().manual_seed(0))
                row = {}
                for backend, fn in BACKENDS.items():
                    if backend == "torch" and n > args.brute_max:
                        continue
                    wall, cpu, idx = timed(fn, points, k, args.repeats, args.budget)
                    row[backend] = {
                        "distribution": dist,
                        "k": k,
                        "n": n,
                        "backend": backend,
                        "seconds": wall,
                        "cpu_seconds": cpu,
                    }
                    if backend == "scipy":
                        reference = sq_distances(points.numpy(), idx)
                    if backend == "grid":
                        grid_d2 = sq_distances(points.numpy(), idx)
                    results.append(row[backend])
                error = np.abs(grid_d2 - reference) / np.maximum(reference, 1e-30)
                row["grid"]["max_d2_error"] = float(np.where(reference > 0, error, np.abs(grid_d2)).max())
                cpu = {b: f"{row[b]['cpu_seconds']:7.3f}" if b in row else f"{'-':>7}" for b in BACKENDS}
                print(
                    f"{dist:>12} {k:>3} {n:>8} | CPU s: {cpu['grid']} {cpu['scipy']} {cpu['torch']} | "
                    f"wall s: {row['grid']['seconds']:.3f} {row['scipy']['seconds']:.3f}",
                    flush=True,
                )
    exponents = {}
    for dist in args.distributions.split(","):
        for k in [int(s) for s in args.ks.split(",")]:
            for backend in BACKENDS:
                rows = [r for r in results if (r["distribution"], r["k"], r["backend"]) == (dist, k, backend)]
                if len(rows) > 1:
                    exponents[f"{dist} k={k} {backend}"] = round(
                        exponent([r["n"] for r in rows], [r["cpu_seconds"] for r in rows]), 3
                    )
    print("\nscaling exponents (CPU seconds ~ N^e):")
    for name, e in exponents.items():
        print(f"  {name}: {e}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "scipy": scipy.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "threads": torch.get_num_threads(),
        "args": vars(args),
    }
    (out / "knn_speed.json").write_text(
        json.dumps({"meta": meta, "results": results, "exponents": exponents}, indent=1)
    )
    plot(results, out / "knn_speed.png")


if __name__ == "__main__":
    main()
