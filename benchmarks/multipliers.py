"""What an ``adam``-rule checkpoint learned: percentiles of its step multipliers (Adam's step at
gsplat's default learning rates x this) per attribute, over the Gaussians of a procedural scene never
seen in meta-training (seed 0), at a few steps of a fit from SfM-like points (with a decaying bound,
``multiplier_decay_steps``, the multipliers are read as taken, bound included).

    python benchmarks/multipliers.py dense sparse --out benchmarks/multipliers.json
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from l2s_optim import Learn2Splat, load_network
from l2s_optim.data import dense_init, synthetic_scene
from l2s_optim.losses import photometric_loss
from l2s_optim.render import render_splats

# packed entries of each attribute (layout of l2s_optim.step.pack; quaternion x, y, z, w)
ENTRIES = {"means": slice(0, 3), "scales": slice(3, 6), "quats xyz": slice(6, 9), "quat w": slice(9, 10),
           "opacity": slice(10, 11), "sh": slice(11, None)}
REPORTED_STEPS = (0, 10, 50, 100, 199, 999)


def multipliers(checkpoint: str) -> dict:
    net = load_network(checkpoint)
    if net.config.update_rule != "adam":
        raise ValueError(f"{checkpoint} uses the {net.config.update_rule!r} update rule: it has no multipliers")
    taken = []  # the multipliers of each step, bound included (also where a gradient is 0, e.g. isotropic quats)
    step_multipliers = net.step_multipliers

    def recording_step_multipliers(update_out, entry_steps=None):
        multipliers = step_multipliers(update_out, entry_steps)
        taken.append(multipliers.detach())
        return multipliers

    net.step_multipliers = recording_step_multipliers
    scene = synthetic_scene(n_views=12, size=32, n_gaussians=1500, seed=0)
    train = scene.train_views
    splats = dense_init(scene)
    optimizer = Learn2Splat(splats, net)
    report = {}
    for step in range(max(REPORTED_STEPS) + 1):
        v = step % len(train.images)
        image = render_splats(splats, train.viewmats[v : v + 1], train.Ks[v : v + 1], scene.width, scene.height)[0]
        photometric_loss(image, train.images[v : v + 1]).backward()
        optimizer.step()
        optimizer.zero_grad()
        if step in REPORTED_STEPS:
            m = taken[-1]
            report[step] = {}
            for name, cols in ENTRIES.items():
                quantiles = m[:, cols].flatten().quantile(torch.tensor([0.1, 0.5, 0.9]))
                report[step][name] = [round(q, 3) for q in quantiles.tolist()]
    bound = round(math.exp(net.config.max_log_multiplier), 3)
    return {"bound": bound, "decay_steps": net.config.multiplier_decay_steps, "steps": report}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--out", default="multipliers.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    results = {}
    for checkpoint in args.checkpoints:
        results[checkpoint] = multipliers(checkpoint)
        bound, decay = results[checkpoint]["bound"], results[checkpoint]["decay_steps"]
        upper = f"{bound} ** ({decay:g} / ({decay:g} + steps))" if decay else f"{bound}"
        print(f"{checkpoint}: multipliers in [1/{bound}, {upper}], 10th / 50th / 90th percentiles")
        for step, row in results[checkpoint]["steps"].items():
            print(f"  step {step:>3}: " + "  ".join(f"{name} {'/'.join(f'{q:g}' for q in qs)}" for name, qs in row.items()))
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
