"""``l2s-bench``: race Adam, tuned Adam and Learn2Splat from the same initial Gaussians on one scene,
and a microbenchmark of the optimizer step alone (``--micro``).

Writes ``results.json`` (every curve, machine, versions, seeds) and ``psnr.png`` (PSNR against steps
and against seconds) into ``--out``, and prints a table. Finished optimizers are kept in
``results.json`` and skipped when the same command is run again (resume).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .data import Scene, dense_init, load_scene, random_init, sparse_init
from .losses import photometric_loss, psnr, ssim
from .network import GSPLAT_LRS
from .optimizer import Learn2Splat
from .render import render_splats

TUNE_MULTIPLIERS = (0.5, 1.0, 2.0, 4.0, 8.0)
TABLE_STEPS = (10, 50, 100, 500, 1000, 2000)
# the arguments that define a race: a results.json with the same ones is resumed
RACE_SETTINGS = ("scene", "init", "steps", "batch", "factor", "background", "fraction", "n_random", "tune_steps", "seed",
                 "device")


def log_spaced_steps(total: int) -> list[int]:
    """0 and 1-2-5 steps up to ``total``, and ``total`` itself."""
    steps = {0, total}
    decade = 1
    while decade <= total:
        steps.update(s for s in (decade, 2 * decade, 5 * decade) if s <= total)
        decade *= 10
    return sorted(steps)


@dataclass
class Curve:
    """Evaluation of one optimizer run at log-spaced steps."""

    name: str
    steps: list[int] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # training wall-clock up to each step
    extra: dict = field(default_factory=dict)

    @property
    def seconds_per_step(self) -> float:
        return self.seconds[-1] / max(self.steps[-1], 1)


StepperFactory = Callable[[nn.ParameterDict], tuple[torch.optim.Optimizer, object | None]]


def adam_factory(scene_scale: float, total_steps: int, multiplier: float = 1.0) -> StepperFactory:
    """gsplat's default Adam (one group per attribute, means lr decayed to 1% over the run)."""

    def make(splats: nn.ParameterDict):
        groups = [{"params": [p], "lr": GSPLAT_LRS[n] * multiplier * (scene_scale if n == "means" else 1.0), "name": n}
                  for n, p in splats.items()]
        optimizer = torch.optim.Adam(groups, eps=1e-15)
        gamma = 0.01 ** (1.0 / max(total_steps, 1))
        decay = [(lambda s: gamma**s) if g["name"] == "means" else (lambda s: 1.0) for g in groups]
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, decay)

    return make


def l2s_factory(checkpoint: str, seed: int) -> StepperFactory:
    def make(splats: nn.ParameterDict):
        return Learn2Splat(splats, checkpoint, seed=seed), None

    return make


def optimizer_factory(name: str, scene_scale: float, total_steps: int, seed: int) -> StepperFactory:
    """``adam`` (gsplat's defaults) or ``l2s[:CHECKPOINT]``; ``adam-tuned`` needs a sweep, see :func:`tune_adam`."""
    if name == "adam":
        return adam_factory(scene_scale, total_steps)
    if name.startswith("l2s"):
        return l2s_factory(name.partition(":")[2] or "dense", seed)
    raise ValueError(f"unknown optimizer {name!r}: adam, adam-tuned (races only) or l2s[:CHECKPOINT]")


def scene_scale_of(scene: Scene) -> float:
    """gsplat's scene scale: 1.1 x the largest camera distance from the cameras' mean (scales the means lr)."""
    return 1.1 * (scene.camera_centers - scene.camera_centers.mean(0)).norm(dim=-1).max().item()


def _device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def evaluate(splats: nn.ParameterDict, views: Scene, background: Tensor) -> tuple[float, float]:
    """Mean PSNR and SSIM over the views (rendered one at a time)."""
    scores = []
    for v in range(views.images.shape[0]):
        image, _, _ = render_splats(splats, views.viewmats[v : v + 1], views.Ks[v : v + 1], views.width, views.height, background)
        target = views.images[v : v + 1]
        scores.append((psnr(image.clamp(0, 1), target).item(), ssim(image.clamp(0, 1), target).item()))
    return sum(s[0] for s in scores) / len(scores), sum(s[1] for s in scores) / len(scores)


def fit(
    name: str, initial: nn.ParameterDict, factory: StepperFactory, train: Scene, evals: Scene, steps: int,
    batch: int, seed: int, background: Tensor, eval_at: list[int] | None = None, progress: bool = True,
) -> Curve:
    """Optimise a copy of ``initial`` for ``steps`` steps on batches of ``batch`` training views
    (the same view sequence for every optimizer, given ``seed``), evaluating at ``eval_at``."""
    from tqdm.auto import tqdm

    splats = copy.deepcopy(initial)
    optimizer, scheduler = factory(splats)
    device = splats["means"].device
    generator = torch.Generator().manual_seed(seed)
    eval_at = set(log_spaced_steps(steps) if eval_at is None else eval_at)
    curve, elapsed = Curve(name), 0.0
    for step in tqdm(range(steps + 1), desc=name, disable=not progress, leave=False):
        if step in eval_at:
            p, s = evaluate(splats, evals, background)
            curve.steps.append(step)
            curve.psnr.append(p)
            curve.ssim.append(s)
            curve.seconds.append(elapsed)
        if step == steps:
            break
        views = torch.randint(train.images.shape[0], (batch,), generator=generator)
        _sync(device)
        start = time.perf_counter()
        training_step(splats, optimizer, scheduler, train, views, background)
        _sync(device)
        elapsed += time.perf_counter() - start
    return curve


STEP_PHASES = ("render", "loss", "backward", "step")


def training_step(
    splats: nn.ParameterDict, optimizer: torch.optim.Optimizer, scheduler: object | None, train: Scene, views: Tensor,
    background: Tensor, phases: dict[str, list[float]] | None = None,
) -> None:
    """One step on the training views ``views``: render, photometric loss, backward, optimizer (and scheduler)
    step. ``phases``: when given, the seconds of each of :data:`STEP_PHASES` are appended to it (synchronised)."""
    device = splats["means"].device
    marks = [time.perf_counter()]

    def mark() -> None:
        if phases is not None:
            _sync(device)
            marks.append(time.perf_counter())

    images, _, _ = render_splats(splats, train.viewmats[views], train.Ks[views], train.width, train.height, background)
    mark()
    loss = photometric_loss(images, train.images[views])
    mark()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    mark()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    mark()
    for name, begin, end in zip(STEP_PHASES, marks, marks[1:]):
        phases.setdefault(name, []).append(end - begin)


def tune_adam(initial, train: Scene, args, background: Tensor, scene_scale: float) -> tuple[float, dict]:
    """Best global LR multiplier for Adam by PSNR on (a subset of) the training views."""
    holdout = train.subset(torch.arange(train.images.shape[0]) % max(1, train.images.shape[0] // 8) == 0)
    tune_steps = min(args.steps, args.tune_steps)
    sweep = {}
    for m in TUNE_MULTIPLIERS:
        curve = fit(f"tune x{m:g}", initial, adam_factory(scene_scale, tune_steps, m), train, holdout, tune_steps,
                    args.batch, args.seed, background, eval_at=[tune_steps])
        sweep[m] = curve.psnr[-1] if math.isfinite(curve.psnr[-1]) else -math.inf
    return max(sweep, key=sweep.get), {f"{m:g}": p for m, p in sweep.items()}


def initial_gaussians(scene: Scene, init: str, args) -> nn.ParameterDict:
    if init == "dense":
        return dense_init(scene, fraction=args.fraction, seed=args.seed)
    if init == "random":
        return random_init(scene, n=args.n_random, seed=args.seed)
    if init == "sparse":
        return sparse_init(scene)
    raise ValueError(f"unknown init {init!r}: choose dense, random or sparse")


def machine_info(device: torch.device) -> dict:
    return {
        "platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def summarize(curves: dict[str, Curve]) -> str:
    """The table: PSNR at fixed steps; steps and seconds to Adam's final PSNR; PSNR at Adam's total
    training time (the best evaluation within it); the largest drop below the curve's own best so
    far (0 = never degraded); time per step against Adam."""
    reference = curves.get("adam")
    last = max(c.steps[-1] for c in curves.values())
    shown = [s for s in TABLE_STEPS if s <= last]
    width = max(22, *(len(name) + 2 for name in curves))
    header = f"{'optimizer':<{width}}" + "".join(f"{'@' + str(s):>8}" for s in shown)
    header += f"{'final':>8}{'steps->adam':>13}{'s->adam':>9}{'@adam-s':>9}{'drop':>7}{'ms/step':>9}{'x adam':>8}"
    rows = [header]
    for name, c in curves.items():
        at = dict(zip(c.steps, c.psnr))
        row = f"{name:<{width}}" + "".join(f"{at[s]:8.2f}" if s in at else f"{'-':>8}" for s in shown) + f"{c.psnr[-1]:8.2f}"
        reached, seconds, at_adam_time = "-", "-", "-"
        if reference is not None:
            hits = [i for i, p in enumerate(c.psnr) if p >= reference.psnr[-1]]
            if hits:
                reached, seconds = str(c.steps[hits[0]]), f"{c.seconds[hits[0]]:.1f}"
            within = [p for p, t in zip(c.psnr, c.seconds) if t <= reference.seconds[-1]]
            at_adam_time = f"{max(within):.2f}"
        drop = max(best - p for best, p in zip(itertools.accumulate(c.psnr, max), c.psnr))
        ratio = c.seconds_per_step / reference.seconds_per_step if reference else float("nan")
        rows.append(row + f"{reached:>13}{seconds:>9}{at_adam_time:>9}{drop:7.2f}{1000 * c.seconds_per_step:9.1f}{ratio:8.2f}")
    return "\n".join(rows)


def plot(curves: dict[str, Curve], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, c in curves.items():
        by_step.plot([max(s, 1) for s in c.steps], c.psnr, marker="o", ms=3, label=name)
        by_time.plot(c.seconds, c.psnr, marker="o", ms=3, label=name)
    by_step.set_xscale("log")
    by_step.set_xlabel("step (step 0 drawn at 1)")
    by_time.set_xlabel("training seconds")
    for ax in (by_step, by_time):
        ax.set_ylabel("test PSNR (dB)")
        ax.grid(alpha=0.3)
    by_step.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_race(args) -> dict[str, Curve]:
    device = _device(args.device)
    torch.manual_seed(args.seed)
    scene = load_scene(args.scene, factor=args.factor, background=tuple(args.background)).to(device)
    train, test = scene.train_views, scene.test_views
    background = torch.tensor(args.background, device=device)
    initial = initial_gaussians(scene, args.init, args).to(device)
    scene_scale = scene_scale_of(scene)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    settings = {k: getattr(args, k) for k in RACE_SETTINGS}
    saved = json.loads(results_path.read_text()) if results_path.is_file() else {}
    same_race = {k: saved.get("settings", {}).get(k) for k in RACE_SETTINGS} == settings
    done = saved.get("curves", {}) if same_race else {}
    curves = {name: Curve(**c) for name, c in done.items()}
    print(f"{args.scene}: {train.images.shape[0]} train / {test.images.shape[0]} test views at "
          f"{scene.width}x{scene.height}, {len(initial['means'])} Gaussians ({args.init} init), device {device}")
    for name in args.optimizers.split(","):
        if name in curves:
            print(f"{name}: already in {results_path}, skipped")
            continue
        if name == "adam-tuned":
            best, sweep = tune_adam(initial, train, args, background, scene_scale)
            factory = adam_factory(scene_scale, args.steps, best)
        else:
            factory = optimizer_factory(name, scene_scale, args.steps, args.seed)
        curve = fit(name, initial, factory, train, test, args.steps, args.batch, args.seed, background)
        if name == "adam-tuned":
            curve.extra = {"lr_multiplier": best, "sweep_train_psnr": sweep, "tune_steps": min(args.steps, args.tune_steps)}
        curves[name] = curve
        results_path.write_text(json.dumps({"settings": settings, "machine": machine_info(device),
                                            "curves": {n: asdict(c) for n, c in curves.items()}}, indent=1))
    plot(curves, out / "psnr.png", f"{Path(args.scene).name}, {args.init} init, {len(initial['means'])} Gaussians")
    print(summarize(curves))
    print(f"wrote {results_path} and {out / 'psnr.png'}")
    return curves


def _ms_per_step(optimizer: torch.optim.Optimizer, splats: nn.ParameterDict, grads: dict[str, Tensor], repeats: int) -> float:
    """Milliseconds per ``optimizer.step()`` with fixed gradients, after one warm-up step."""
    for name, p in splats.items():
        p.grad = grads[name]
    device = splats["means"].device
    optimizer.step()  # warm-up (and the first kNN graph)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        optimizer.step()
    _sync(device)
    return 1000 * (time.perf_counter() - start) / repeats


def run_micro(args) -> list[dict]:
    """ms per optimizer step (gradients given) for Learn2Splat, with and without the kNN search, and
    Adam (foreach) on N random Gaussians."""
    from .data.init import gaussians_from_points
    from .hub import load_network
    from .network import Learn2SplatNet

    device = _device(args.device)
    if args.checkpoint == "released-random":
        net, weights = Learn2SplatNet(), "random weights, released architecture (timing does not depend on weights)"
    else:
        net, weights = load_network(args.checkpoint), args.checkpoint
    rows = []
    for n in (int(float(s)) for s in args.sizes.split(",")):
        g = torch.Generator().manual_seed(0)
        splats = gaussians_from_points(torch.rand(n, 3, generator=g), torch.rand(n, 3, generator=g)).to(device)
        grads = {k: torch.randn(p.shape, generator=g).to(device) * 1e-3 for k, p in splats.items()}

        adam = torch.optim.Adam([{"params": [p], "lr": 1e-3} for p in splats.values()], foreach=True)
        row = {"n": n, "adam_ms": _ms_per_step(adam, splats, grads, args.repeats)}
        row["l2s_ms"] = _ms_per_step(Learn2Splat(splats, net), splats, grads, args.repeats)
        row["l2s_no_knn_ms"] = _ms_per_step(Learn2Splat(splats, net, knn_every=10**9), splats, grads, args.repeats)
        rows.append(row)
        print(f"N={n:>9,}  adam {row['adam_ms']:9.2f} ms   learn2splat {row['l2s_ms']:9.2f} ms "
              f"(x{row['l2s_ms'] / row['adam_ms']:.0f})   without kNN {row['l2s_no_knn_ms']:9.2f} ms "
              f"(x{row['l2s_no_knn_ms'] / row['adam_ms']:.0f})", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "micro.json").write_text(json.dumps({"machine": machine_info(device), "network": weights,
                                                "config": asdict(net.config), "rows": rows}, indent=1))
    return rows


def _median_ms(seconds: list[float]) -> float:
    return 1000 * sorted(seconds)[len(seconds) // 2]


def _write_timing(args, name: str, rows: list[dict], device: torch.device) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"machine": machine_info(device), "argv": vars(args), "rows": rows}, indent=1))
    print(f"wrote {path}")
    return path


def render_workloads(args, device: torch.device) -> list[tuple[str, nn.ParameterDict, Tensor, Tensor, int, int]]:
    """(label, splats, viewmats [1,4,4], Ks [1,3,3], width, height) to time: random Gaussians (uniform in a cube,
    3-NN scales, opacity 0.1) of each ``--sizes`` in a ``--render-size`` square lego-like view, and with ``--scene``,
    its first ``--views`` training views with the ``--init`` Gaussians at ``--factor``."""
    from .data.init import gaussians_from_points
    from .data.synthetic import orbit_cameras

    size = args.render_size
    viewmat = orbit_cameras(1).to(device)
    K = torch.tensor([[[1.39 * size, 0.0, size / 2], [0.0, 1.39 * size, size / 2], [0.0, 0.0, 1.0]]], device=device)
    workloads = []
    for n in (int(float(s)) for s in args.sizes.split(",") if s):
        g = torch.Generator().manual_seed(0)
        points = (torch.rand(n, 3, generator=g) * 2 - 1) * 0.45
        splats = gaussians_from_points(points, torch.rand(n, 3, generator=g)).to(device)
        workloads.append((f"random {n:,} @{size}x{size}", splats, viewmat, K, size, size))
    if args.scene != "synthetic":
        scene = load_scene(args.scene, factor=args.factor, background=tuple(args.background)).to(device)
        splats = initial_gaussians(scene, args.init, args).to(device)
        train = scene.train_views
        for v in range(min(args.views, train.images.shape[0])):
            label = f"{Path(args.scene).name} view {v} ({len(splats['means']):,} {args.init}) @{scene.width}x{scene.height}"
            workloads.append((label, splats, train.viewmats[v : v + 1], train.Ks[v : v + 1], scene.width, scene.height))
    return workloads


def run_render_speed(args) -> list[dict]:
    """ms per view of each CPU rasterizer backend, forward and forward+backward (of the image sum), on the same
    workloads in the same run, and the speed-up of cpp over the torch reference."""
    device = _device(args.device)
    backends = args.backends.split(",")
    rows = []
    for label, splats, viewmats, Ks, width, height in render_workloads(args, device):
        row = {"workload": label, "n": len(splats["means"]), "width": width, "height": height}
        for backend in backends:
            for mode in ("forward", "forward_backward"):
                seconds = []
                for repeat in range(args.repeats + 1):  # the first run warms up
                    _sync(device)
                    start = time.perf_counter()
                    with torch.set_grad_enabled(mode != "forward"):
                        image, _, _ = render_splats(splats, viewmats, Ks, width, height, backend=backend)
                        if mode != "forward":
                            image.sum().backward()
                    _sync(device)
                    if repeat:
                        seconds.append(time.perf_counter() - start)
                row[f"{backend}_{mode}_ms"] = _median_ms(seconds)
        if {"cpp", "torch"} <= set(backends):
            for mode in ("forward", "forward_backward"):
                row[f"speedup_{mode}"] = row[f"torch_{mode}_ms"] / row[f"cpp_{mode}_ms"]
        rows.append(row)
        print(label + ": " + ", ".join(f"{k} {v:.1f}" for k, v in row.items() if k.endswith(("_ms", "backward", "forward"))
                                       and isinstance(v, float)))
    print(f"(median of {args.repeats} runs, {torch.get_num_threads()} threads)")
    _write_timing(args, "render_speed", rows, device)
    return rows


def run_step_speed(args) -> list[dict]:
    """ms per whole training step (render, loss, backward, optimizer step; one view of ``--scene``) for each of
    ``--optimizers``, in the same run, with the ratio to the first optimizer."""
    device = _device(args.device)
    scene = load_scene(args.scene, factor=args.factor, background=tuple(args.background)).to(device)
    train = scene.train_views
    background = torch.tensor(args.background, device=device)
    initial = initial_gaussians(scene, args.init, args).to(device)
    scene_scale = scene_scale_of(scene)
    rows = []
    for name in args.optimizers.split(","):
        splats = copy.deepcopy(initial)
        optimizer, scheduler = optimizer_factory(name, scene_scale, args.steps, args.seed)(splats)
        phases: dict[str, list[float]] = {}
        for repeat in range(args.repeats + 1):  # the first step warms up
            views = torch.tensor([repeat % train.images.shape[0]])
            training_step(splats, optimizer, scheduler, train, views, background, phases if repeat else None)
        row = {"optimizer": name, **{f"{p}_ms": _median_ms(phases[p]) for p in STEP_PHASES}}
        row["step_total_ms"] = _median_ms([sum(t) for t in zip(*phases.values())])
        row["ratio_to_first"] = row["step_total_ms"] / (rows[0]["step_total_ms"] if rows else row["step_total_ms"])
        rows.append(row)
        print(f"{name:>12}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k != "optimizer"))
    print(f"{Path(args.scene).name} at {scene.width}x{scene.height}, {len(initial['means']):,} Gaussians "
          f"({args.init} init), median of {args.repeats} steps, {torch.get_num_threads()} threads")
    _write_timing(args, "step_speed", rows, device)
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="l2s-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", default="synthetic", help="COLMAP or transforms.json folder, or 'synthetic'")
    p.add_argument("--init", default="dense", choices=["dense", "random", "sparse"])
    p.add_argument("--optimizers", default="adam,adam-tuned,l2s:dense", help="comma list: adam, adam-tuned, l2s[:CHECKPOINT]")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=1, help="views per step")
    p.add_argument("--factor", type=int, default=1, help="image downscale factor")
    p.add_argument("--background", type=float, nargs=3, default=[1.0, 1.0, 1.0])
    p.add_argument("--fraction", type=float, default=1.0, help="dense init: fraction of SfM points kept")
    p.add_argument("--n-random", type=int, default=20_000, help="random init: number of Gaussians")
    p.add_argument("--tune-steps", type=int, default=500, help="adam-tuned: steps per sweep run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="bench-out")
    p.add_argument("--micro", action="store_true", help="microbenchmark the optimizer step instead")
    p.add_argument("--render-speed", action="store_true", help="time the rasterizer instead")
    p.add_argument("--step-speed", action="store_true",
                   help="time whole training steps of --optimizers (adam, l2s[:CHECKPOINT]) on --scene instead")
    p.add_argument("--render-size", type=int, default=200, help="--render-speed: image size")
    p.add_argument("--backends", default="cpp,torch", help="--render-speed: rasterizer backends to compare")
    p.add_argument("--views", type=int, default=4, help="--render-speed with --scene: training views timed")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--sizes", default="1e3,1e4,1e5", help="--micro/--render-speed: numbers of Gaussians")
    p.add_argument("--repeats", type=int, default=5, help="--micro/--render-speed/--step-speed: timed runs")
    p.add_argument("--checkpoint", default="dense",
                   help="--micro: Learn2Splat checkpoint, or 'released-random' for the released architecture's size")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.step_speed:
        run_step_speed(args)
    elif args.micro:
        run_micro(args)
    elif args.render_speed:
        run_render_speed(args)
    else:
        run_race(args)
