"""Interleaved timing of one Learn2Splat step, before and after a change, on a shared machine.

As ``l2s-bench micro`` (bundled ``dense`` network, fixed random gradients, one warm-up step), but
the old and the new optimizer step alternately in one process, so that both see the same load.
``OLD_SRC`` is a folder holding a copy of the old package renamed ``l2s_old`` (its imports are
relative), e.g. ``git archive HEAD src/l2s_optim | tar -x -C /tmp/old && mv /tmp/old/src/l2s_optim
/tmp/old/src/l2s_old``.

    OMP_NUM_THREADS=1 python benchmarks/micro_lean/ab_interleaved.py OLD_SRC 1e3,1e4,1e5 OUT.json
"""

import json
import sys
import time

import torch

import l2s_optim
from l2s_optim.data.init import gaussians_from_points


def random_splats(n: int) -> torch.nn.ParameterDict:
    """N random Gaussians with fixed random gradients, as ``l2s-bench micro``."""
    g = torch.Generator().manual_seed(0)
    splats = gaussians_from_points(torch.rand(n, 3, generator=g), torch.rand(n, 3, generator=g))
    for p in splats.values():
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    return splats


def step_ms(optimizers: dict, repeats: int) -> dict[str, list[float]]:
    """ms of each optimizer's step, the optimizers stepping in turn."""
    times = {name: [] for name in optimizers}
    for _ in range(repeats):
        for name, optimizer in optimizers.items():
            start = time.perf_counter()
            optimizer.step()
            times[name].append(1000 * (time.perf_counter() - start))
    return times


def main() -> None:
    old_src, sizes, out = sys.argv[1:4]
    sys.path.insert(0, old_src)
    import l2s_old

    rows = []
    for n in (int(float(s)) for s in sizes.split(",")):
        repeats = 15 if n <= 10_000 else 5
        row = {"n": n, "threads": torch.get_num_threads(), "repeats": repeats}
        for knn_every, label in ((1, "l2s"), (10**9, "l2s_no_knn")):
            optimizers = {}
            for name, package in (("before", l2s_old), ("after", l2s_optim)):
                network = package.hub.load_network("dense")
                optimizers[name] = package.Learn2Splat(random_splats(n), network, knn_every=knn_every)
                optimizers[name].step()  # warm-up (and the first kNN graph)
            for name, t in step_ms(optimizers, repeats).items():
                t.sort()
                row[f"{label}_{name}_min_ms"] = round(t[0], 2)
                row[f"{label}_{name}_median_ms"] = round(t[len(t) // 2], 2)
        rows.append(row)
        print(row, flush=True)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    with open(out, "w") as f:
        json.dump({"load_average_after": load, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
