"""Learn2Splat's ``autocast="bf16"`` on CPU against the default (fp32 there): ms per step of the bundled
``dense`` network (gradients given, kNN graph reused so that only the step is timed; the two policies
step in turn) and the test-PSNR gain of 40 steps (``psnr_gain_in_40_steps`` of tests/test_optimizer.py).

    OMP_NUM_THREADS=1 python benchmarks/micro_lean/bf16_cpu.py 1e3,1e4 benchmarks/micro_lean/bf16_cpu.json
"""

import json
import sys
from pathlib import Path

import torch
from ab_interleaved import random_splats, step_ms

from l2s_optim import Learn2Splat
from l2s_optim.hub import load_network

POLICIES = ("fp32", "bf16")


def step_ms_by_policy(n: int, repeats: int = 7) -> dict[str, float]:
    """Median ms per step of each autocast policy on N random Gaussians."""
    network = load_network("dense")
    optimizers = {p: Learn2Splat(random_splats(n), network, autocast=p, knn_every=10**9) for p in POLICIES}
    for optimizer in optimizers.values():
        optimizer.step()  # warm-up
    return {f"{policy}_ms": sorted(t)[len(t) // 2] for policy, t in step_ms(optimizers, repeats).items()}


def main() -> None:
    sizes, out = sys.argv[1:3]
    sys.path.insert(0, str(Path(__file__).parents[2] / "tests"))
    from test_optimizer import psnr_gain_in_40_steps

    timing = [{"n": n, **step_ms_by_policy(n)} for n in (int(float(s)) for s in sizes.split(","))]
    print(timing, flush=True)
    psnr = {f"{setting}_{policy}": psnr_gain_in_40_steps(setting, setting, autocast=policy)
            for setting in ("dense", "sparse") for policy in POLICIES}
    psnr.update({f"{setting}_adam": psnr_gain_in_40_steps("adam", setting) for setting in ("dense", "sparse")})
    print(psnr)
    with open(out, "w") as f:
        json.dump({"threads": torch.get_num_threads(), "step_ms_without_knn": timing, "psnr_gain_40_steps_db": psnr},
                  f, indent=1)


if __name__ == "__main__":
    main()
