"""``l2s-bench``: race Adam, tuned Adam and Learn2Splat from the same initial Gaussians on one scene,
and a microbenchmark of the optimizer step alone (``--micro``).

Writes ``results.json`` (every curve, machine, versions, seeds) and ``psnr.png`` (PSNR against steps
and against seconds) into ``--out``, and prints a table. Finished optimizers are kept in
``results.json`` and skipped when the same command is run again (resume).

Every optimizer of a run trains under one recipe: views per step, background, world normalisation, SH
schedule, eps2d and loss come from the training recipe of the first Learn2Splat checkpoint in
``--optimizers`` (see ``l2s_optim.recipe``); ``--batch``, ``--background``, ``--[no-]normalize-world``,
``--sh-degree-interval`` and ``--eps2d`` override it. Both are printed.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .cli import bounded, non_negative_float, non_negative_int, positive_int, size_list, unit_float
from .data import Scene, dense_init, load_scene, random_init, sparse_init
from .losses import photometric_loss, psnr, ssim
from .network import GSPLAT_LRS
from .optimizer import Learn2Splat
from .recipe import Recipe
from .render import render_splats

TUNE_MULTIPLIERS = (0.5, 1.0, 2.0, 4.0, 8.0)
TUNE_LIMITS = (1 / 64, 256.0)  # the sweep widens up to these multipliers while the best lies at its edge
TABLE_STEPS = (10, 50, 100, 500, 1000, 2000)
# the arguments that define a race: a results.json with the same ones is resumed
RACE_SETTINGS = ("scene", "init", "steps", "factor", "fraction", "n_random", "tune_steps", "seed",
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


class UnreadableResults(ValueError):
    """An existing results file that cannot be read as l2s-bench results (it is never overwritten)."""


def read_results(path: Path) -> tuple[dict, dict[str, Curve]]:
    """The race settings and curves saved in ``path`` (none when it does not exist); ``UnreadableResults``
    when it exists but is not l2s-bench results, so that it is left untouched rather than overwritten."""
    if not path.exists():
        return {}, {}
    try:
        saved = json.loads(path.read_text())
        curves = {name: Curve(**curve) for name, curve in saved["curves"].items()}
        if not isinstance(saved["settings"], dict) or not all(
                c.steps and len({len(c.steps), len(c.psnr), len(c.ssim), len(c.seconds)}) == 1 for c in curves.values()):
            raise ValueError("its settings or curves are malformed")
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise UnreadableResults(f"{path} cannot be read as l2s-bench results ({type(err).__name__}: {err}); it is "
                                "left untouched: move it away or choose another --out") from err
    return saved["settings"], curves


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
    recipe: Recipe, seed: int, eval_at: list[int] | None = None, progress: bool = True,
) -> Curve:
    """Optimise a copy of ``initial`` for ``steps`` steps following ``recipe`` (distinct training views per
    step, the same view sequence for every optimizer given ``seed``), evaluating at ``eval_at``."""
    from tqdm.auto import tqdm

    splats = copy.deepcopy(initial)
    optimizer, scheduler = factory(splats)
    device = splats["means"].device
    generator = torch.Generator().manual_seed(seed)
    background = torch.tensor(recipe.background, device=device)
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
        views = draw_views(train.images.shape[0], recipe.views_per_step, generator)
        _sync(device)
        start = time.perf_counter()
        training_step(splats, optimizer, scheduler, train, views, recipe, step)
        _sync(device)
        elapsed += time.perf_counter() - start
    return curve


STEP_PHASES = ("render", "loss", "backward", "step")


def draw_views(count: int, batch: int, generator: torch.Generator) -> Tensor:
    """[batch] distinct training views of ``count`` (one view: the draw of earlier versions, so that recorded
    races reproduce)."""
    if batch == 1:
        return torch.randint(count, (1,), generator=generator)
    return torch.randperm(count, generator=generator)[:batch]


def sh_degree_at(step: int, interval: int) -> int | None:
    """The SH degree rendered at ``step`` under gsplat's schedule (one more band every ``interval`` steps, up to
    the splats' degree); None (every band) when ``interval`` is 0."""
    return None if interval == 0 else step // interval


def training_step(
    splats: nn.ParameterDict, optimizer: torch.optim.Optimizer, scheduler: object | None, train: Scene, views: Tensor,
    recipe: Recipe, step: int, phases: dict[str, list[float]] | None = None,
) -> None:
    """Training step ``step`` on the training views ``views`` [B] as ``recipe`` says (background, SH bands, eps2d,
    loss): render, photometric loss summed over the views, backward, optimizer (and scheduler) step. ``phases``:
    when given, the seconds of each of :data:`STEP_PHASES` are appended to it (synchronised)."""
    device = splats["means"].device
    marks = [time.perf_counter()]

    def mark() -> None:
        if phases is not None:
            _sync(device)
            marks.append(time.perf_counter())

    images, _, _ = render_splats(splats, train.viewmats[views], train.Ks[views], train.width, train.height,
                                 torch.tensor(recipe.background, device=device),
                                 sh_degree_at(step, recipe.sh_degree_interval), eps2d=recipe.eps2d)
    mark()
    loss = photometric_loss(images, train.images[views], ssim_weight=recipe.ssim_weight)
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


def tune_adam(initial, train: Scene, args, recipe: Recipe, scene_scale: float) -> tuple[float, dict]:
    """Best global LR multiplier for Adam by PSNR on (a subset of) the training views: the sweep
    :data:`TUNE_MULTIPLIERS`, widened by factors of 2 while the best lies at its edge (up to
    :data:`TUNE_LIMITS`), so the chosen multiplier is bracketed by worse ones."""
    holdout = train.subset(torch.arange(train.images.shape[0]) % max(1, train.images.shape[0] // 8) == 0)
    tune_steps = min(args.steps, args.tune_steps)
    sweep: dict[float, float] = {}
    pending = list(TUNE_MULTIPLIERS)
    while pending:
        m = pending.pop()
        curve = fit(f"tune x{m:g}", initial, adam_factory(scene_scale, tune_steps, m), train, holdout, tune_steps,
                    recipe, args.seed, eval_at=[tune_steps])
        sweep[m] = curve.psnr[-1] if math.isfinite(curve.psnr[-1]) else -math.inf
        if not pending:
            best, low, high = max(sweep, key=sweep.get), min(sweep), max(sweep)
            if best == high and high * 2 <= TUNE_LIMITS[1]:
                pending.append(high * 2)
            elif best == low and low / 2 >= TUNE_LIMITS[0]:
                pending.append(low / 2)
    best = max(sweep, key=sweep.get)
    return best, {f"{m:g}": sweep[m] for m in sorted(sweep)}


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


def summary_rows(curves: dict[str, Curve]) -> list[dict]:
    """One row per curve: PSNR at :data:`TABLE_STEPS` (``"@STEP"``, None when not evaluated) and at the
    end; steps and seconds to Adam's final PSNR (None: never reached); PSNR at Adam's total training
    time (the best evaluation within it); the largest drop below the curve's own best so far (0 = never
    degraded); ms per step and its ratio to Adam's."""
    reference = curves.get("adam")
    last = max(c.steps[-1] for c in curves.values())
    rows = []
    for name, c in curves.items():
        at = dict(zip(c.steps, c.psnr))
        row: dict = {"optimizer": name, **{f"@{s}": at.get(s) for s in TABLE_STEPS if s <= last}, "final": c.psnr[-1],
                     "steps_to_adam": None, "seconds_to_adam": None, "at_adam_seconds": None}
        if reference is not None:
            hits = [i for i, p in enumerate(c.psnr) if p >= reference.psnr[-1]]
            if hits:
                row["steps_to_adam"], row["seconds_to_adam"] = c.steps[hits[0]], c.seconds[hits[0]]
            row["at_adam_seconds"] = max(p for p, t in zip(c.psnr, c.seconds) if t <= reference.seconds[-1])
        row["drop"] = max(best - p for best, p in zip(itertools.accumulate(c.psnr, max), c.psnr))
        row["ms_per_step"] = 1000 * c.seconds_per_step
        row["x_adam"] = c.seconds_per_step / reference.seconds_per_step if reference else None
        rows.append(row)
    return rows


SUMMARY_COLUMNS = {"final": ("final", "{:.2f}"), "steps_to_adam": ("steps->adam", "{}"),
                   "seconds_to_adam": ("s->adam", "{:.1f}"), "at_adam_seconds": ("@adam-s", "{:.2f}"),
                   "drop": ("drop", "{:.2f}"), "ms_per_step": ("ms/step", "{:.1f}"), "x_adam": ("x adam", "{:.2f}")}


def summary_cells(row: dict) -> dict[str, str]:
    """Column title -> formatted cell ("-" where there is no value) of a :func:`summary_rows` row."""
    formats = {k: (k, "{:.2f}") for k in row if k.startswith("@")} | SUMMARY_COLUMNS
    return {title: "-" if row[k] is None else fmt.format(row[k]) for k, (title, fmt) in formats.items()}


def summarize(curves: dict[str, Curve]) -> str:
    """The text table of :func:`summary_rows`."""
    width = max(22, *(len(name) + 2 for name in curves))
    cells = [summary_cells(r) for r in summary_rows(curves)]
    lines = [f"{'optimizer':<{width}}" + "".join(f"{t:>{max(8, len(t) + 2)}}" for t in cells[0])]
    for name, row in zip(curves, cells):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{max(8, len(t) + 2)}}" for t, v in row.items()))
    return "\n".join(lines)


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


# recipe setting -> the l2s-bench flag that overrides it
RECIPE_FLAGS = {"views_per_step": "batch", "background": "background", "normalize_world": "normalize_world",
                "sh_degree_interval": "sh_degree_interval", "eps2d": "eps2d"}


def race_recipe(args) -> Recipe:
    """The recipe every optimizer of the run follows (one for all, so that the race is fair): that of the first
    Learn2Splat checkpoint in ``--optimizers`` (``Recipe()`` without one), with the settings given as flags
    (:data:`RECIPE_FLAGS`) instead of its own. Prints both."""
    from .hub import load_network

    first = next((name for name in args.optimizers.split(",") if name.startswith("l2s")), None)
    recipe = load_network(first.partition(":")[2] or "dense").recipe if first else Recipe()
    resolved, overridden = recipe.with_overrides(**{key: getattr(args, flag) for key, flag in RECIPE_FLAGS.items()})
    print(resolved.announce(first or "no Learn2Splat checkpoint (defaults)", overridden))
    if len(args.optimizers.split(",")) > 1:
        print(f"  shared by every optimizer of this run ({args.optimizers})")
    if resolved.rasterize_mode != "classic":
        print(f"  l2s-bench renders in classic mode only, not {resolved.rasterize_mode}")
    return resolved


def load_race_scene(args, recipe: Recipe, device: torch.device) -> Scene:
    """``--scene`` at ``--factor``, composited on the recipe's background, in its world units."""
    return load_scene(args.scene, factor=args.factor, background=recipe.background,
                      normalize=recipe.normalize_world).to(device)


def run_race(args) -> dict[str, Curve]:
    device = _device(args.device)
    torch.manual_seed(args.seed)
    recipe = race_recipe(args)
    scene = load_race_scene(args, recipe, device)
    train, test = scene.train_views, scene.test_views
    if recipe.views_per_step > train.images.shape[0]:
        raise ValueError(f"{recipe.views_per_step} views per step but only {train.images.shape[0]} training views")
    initial = initial_gaussians(scene, args.init, args).to(device)
    scene_scale = scene_scale_of(scene)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    settings = {**{k: getattr(args, k) for k in RACE_SETTINGS}, "recipe": recipe.to_dict()}
    saved_settings, saved_curves = read_results(results_path)
    same_race = {k: saved_settings.get(k) for k in settings} == settings
    curves = saved_curves if same_race else {}
    print(f"{args.scene}: {train.images.shape[0]} train / {test.images.shape[0]} test views at "
          f"{scene.width}x{scene.height}, {len(initial['means'])} Gaussians ({args.init} init), device {device}")
    for name in args.optimizers.split(","):
        if name in curves:
            print(f"{name}: already in {results_path}, skipped")
            continue
        if name == "adam-tuned":
            best, sweep = tune_adam(initial, train, args, recipe, scene_scale)
            factory = adam_factory(scene_scale, args.steps, best)
        else:
            factory = optimizer_factory(name, scene_scale, args.steps, args.seed)
        curve = fit(name, initial, factory, train, test, args.steps, recipe, args.seed)
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


def _micro_network(checkpoint: str) -> tuple[nn.Module, str]:
    """The network ``--micro`` times and a description of its weights."""
    from .hub import load_network
    from .network import Learn2SplatNet

    if checkpoint == "released-random":
        return Learn2SplatNet(), "random weights, released architecture (timing does not depend on weights)"
    return load_network(checkpoint), checkpoint


def _micro_workload(n: int, device: torch.device) -> tuple[nn.ParameterDict, dict[str, Tensor]]:
    """N random Gaussians (uniform in the unit cube, 3-NN scales, SH degree 3) and fixed random gradients."""
    from .data.init import gaussians_from_points

    g = torch.Generator().manual_seed(0)
    splats = gaussians_from_points(torch.rand(n, 3, generator=g), torch.rand(n, 3, generator=g)).to(device)
    return splats, {k: torch.randn(p.shape, generator=g).to(device) * 1e-3 for k, p in splats.items()}


def _micro_optimizer(kind: str, splats: nn.ParameterDict, net: nn.Module, chunk_size: int | None) -> torch.optim.Optimizer:
    """``adam`` (foreach), ``l2s`` or ``l2s_no_knn`` (the neighbour graph reused, so its search is not timed)."""
    if kind == "adam":
        return torch.optim.Adam([{"params": [p], "lr": 1e-3} for p in splats.values()], foreach=True)
    return Learn2Splat(splats, net, knn_every=10**9 if kind == "l2s_no_knn" else 1, chunk_size=chunk_size)


def _proc_status_kb(key: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key + ":"))


def _peak_step_mb(optimizer: torch.optim.Optimizer, splats: nn.ParameterDict, grads: dict[str, Tensor]) -> float | None:
    """MB by which memory rises above its level before one ``optimizer.step()``, after a warm-up step (so the
    optimizer state exists): the step's working memory beyond parameters, gradients and optimizer state. CUDA:
    torch's peak of allocated bytes; CPU on Linux: the peak resident set size (``VmHWM``, reset through
    ``/proc/self/clear_refs``) over the resident set before the step; None elsewhere."""
    for name, p in splats.items():
        p.grad = grads[name]
    optimizer.step()
    device = splats["means"].device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        optimizer.step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the peak resident set restarts from the current one
    before = _proc_status_kb("VmRSS")
    optimizer.step()
    return (_proc_status_kb("VmHWM") - before) / 1024


def measure_peak_mb(n: int, kind: str, checkpoint: str, chunk_size: int | None, device: str) -> float | None:
    """:func:`_peak_step_mb` of a ``kind`` optimizer (see :func:`_micro_optimizer`) on N random Gaussians."""
    net, _ = _micro_network(checkpoint)
    splats, grads = _micro_workload(n, _device(device))
    return _peak_step_mb(_micro_optimizer(kind, splats, net, chunk_size), splats, grads)


def peak_step_memory_mb(n: int, kind: str, args) -> float | None:
    """:func:`measure_peak_mb`; on CPU in a fresh child process (same torch threads) whose glibc returns every freed
    block over 64 KB to the system (``MALLOC_MMAP_THRESHOLD_``), so that its resident set follows the live tensors
    and nothing allocated before (by this process or another optimizer) hides or inflates the step's peak."""
    chunk_size = args.chunk_size or None
    device = _device(args.device)
    if device.type == "cuda":
        return measure_peak_mb(n, kind, args.checkpoint, chunk_size, str(device))
    code = (f"import torch; torch.set_num_threads({torch.get_num_threads()}); from l2s_optim.bench import "
            f"measure_peak_mb; print(measure_peak_mb({n}, {kind!r}, {args.checkpoint!r}, {chunk_size!r}, 'cpu'))")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    value = result.stdout.split()[-1]
    return None if value == "None" else float(value)


def state_bytes_per_gaussian(optimizer: torch.optim.Optimizer, n: int) -> float:
    """Bytes of optimizer state per Gaussian: every state tensor with N rows (moments, counters, latent state)."""
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
               if isinstance(v, Tensor) and v.ndim and v.shape[0] == n) / n


def run_micro(args) -> list[dict]:
    """Per optimizer step (gradients given) on N random Gaussians, for Learn2Splat (with and without the kNN
    search) and Adam (foreach): ms, the step's peak working memory (MB, see :func:`peak_step_memory_mb`) and
    the optimizer state (bytes per Gaussian)."""
    device = _device(args.device)
    net, weights = _micro_network(args.checkpoint)
    chunk_size = args.chunk_size or None
    rows = []
    for n in args.sizes:
        splats, grads = _micro_workload(n, device)
        row: dict = {"n": n}
        for kind in ("adam", "l2s", "l2s_no_knn"):
            optimizer = _micro_optimizer(kind, splats, net, chunk_size)
            row[f"{kind}_ms"] = _ms_per_step(optimizer, splats, grads, args.repeats)
            if kind != "l2s_no_knn":
                row[f"{kind}_state_bytes_per_gaussian"] = state_bytes_per_gaussian(optimizer, n)
            del optimizer
        for kind in ("adam", "l2s"):
            row[f"{kind}_peak_mb"] = peak_step_memory_mb(n, kind, args)
        rows.append(row)
        peak = "-" if row["l2s_peak_mb"] is None else f"{row['l2s_peak_mb']:.0f}"
        print(f"N={n:>9,}  adam {row['adam_ms']:9.2f} ms   learn2splat {row['l2s_ms']:9.2f} ms "
              f"(x{row['l2s_ms'] / row['adam_ms']:.0f})   without kNN {row['l2s_no_knn_ms']:9.2f} ms "
              f"(x{row['l2s_no_knn_ms'] / row['adam_ms']:.0f})   learn2splat peak {peak} MB, state "
              f"{row['l2s_state_bytes_per_gaussian']:.0f} B/Gaussian", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "micro.json").write_text(json.dumps({"machine": machine_info(device), "network": weights,
                                                "config": asdict(net.config), "chunk_size": chunk_size,
                                                "argv": vars(args), "rows": rows}, indent=1))
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
    for n in args.sizes:
        g = torch.Generator().manual_seed(0)
        points = (torch.rand(n, 3, generator=g) * 2 - 1) * 0.45
        splats = gaussians_from_points(points, torch.rand(n, 3, generator=g)).to(device)
        workloads.append((f"random {n:,} @{size}x{size}", splats, viewmat, K, size, size))
    if args.scene != "synthetic":
        scene = load_race_scene(args, race_recipe(args), device)
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
    """ms per whole training step (render, loss, backward, optimizer step on the recipe's views per step of
    ``--scene``, see :func:`race_recipe`) for each of ``--optimizers``, in the same run, with the ratio to the
    first optimizer."""
    device = _device(args.device)
    recipe = race_recipe(args)
    scene = load_race_scene(args, recipe, device)
    train = scene.train_views
    initial = initial_gaussians(scene, args.init, args).to(device)
    scene_scale = scene_scale_of(scene)
    rows = []
    for name in args.optimizers.split(","):
        splats = copy.deepcopy(initial)
        optimizer, scheduler = optimizer_factory(name, scene_scale, args.steps, args.seed)(splats)
        phases: dict[str, list[float]] = {}
        for repeat in range(args.repeats + 1):  # the first step warms up
            views = torch.arange(repeat * recipe.views_per_step, (repeat + 1) * recipe.views_per_step)
            training_step(splats, optimizer, scheduler, train, views % train.images.shape[0], recipe, repeat,
                          phases if repeat else None)
        row = {"optimizer": name, **{f"{p}_ms": _median_ms(phases[p]) for p in STEP_PHASES}}
        row["step_total_ms"] = _median_ms([sum(t) for t in zip(*phases.values())])
        row["ratio_to_first"] = row["step_total_ms"] / (rows[0]["step_total_ms"] if rows else row["step_total_ms"])
        rows.append(row)
        print(f"{name:>12}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k != "optimizer"))
    print(f"{Path(args.scene).name} at {scene.width}x{scene.height}, {len(initial['means']):,} Gaussians "
          f"({args.init} init), median of {args.repeats} steps, {torch.get_num_threads()} threads")
    _write_timing(args, "step_speed", rows, device)
    return rows


def optimizer_names(text: str) -> str:
    """``type=`` of ``--optimizers``: a comma list of ``adam``, ``adam-tuned`` and ``l2s[:CHECKPOINT]``."""
    unknown = [n for n in text.split(",") if n not in ("adam", "adam-tuned", "l2s") and not (n.startswith("l2s:") and n[4:])]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown optimizer(s) {unknown}: choose from adam, adam-tuned, l2s[:CHECKPOINT]")
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="l2s-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", default="synthetic", help="COLMAP or transforms.json folder, or 'synthetic'")
    p.add_argument("--init", default="dense", choices=["dense", "random", "sparse"])
    p.add_argument("--optimizers", type=optimizer_names, default="adam,adam-tuned,l2s:dense",
                   help="comma list: adam, adam-tuned, l2s[:CHECKPOINT]")
    p.add_argument("--steps", type=positive_int, default=2000)
    p.add_argument("--batch", type=positive_int, default=None, help="views per step (default: the recipe's, see below)")
    p.add_argument("--factor", type=positive_int, default=1, help="image downscale factor")
    p.add_argument("--background", type=unit_float, nargs=3, default=None, help="RGB in [0,1] (default: the recipe's)")
    p.add_argument("--normalize-world", action=argparse.BooleanOptionalAction, default=None,
                   help="recentre and rescale the scene so cameras lie about 1 from the centre (default: the recipe's)")
    p.add_argument("--sh-degree-interval", type=non_negative_int, default=None,
                   help="0: render every SH band from step 0; s: one more band every s steps (default: the recipe's)")
    p.add_argument("--eps2d", type=non_negative_float, default=None, help="rasterizer 2D low-pass (default: the recipe's)")
    p.add_argument("--fraction", type=bounded(float, 0, inclusive=False, high=1), default=1.0,
                   help="dense init: fraction of SfM points kept")
    p.add_argument("--n-random", type=bounded(int, 4), default=20_000, help="random init: number of Gaussians")
    p.add_argument("--tune-steps", type=positive_int, default=500, help="adam-tuned: steps per sweep run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="bench-out")
    p.add_argument("--micro", action="store_true", help="microbenchmark the optimizer step instead")
    p.add_argument("--render-speed", action="store_true", help="time the rasterizer instead")
    p.add_argument("--step-speed", action="store_true",
                   help="time whole training steps of --optimizers (adam, l2s[:CHECKPOINT]) on --scene instead")
    p.add_argument("--render-size", type=positive_int, default=200, help="--render-speed: image size")
    p.add_argument("--backends", default="cpp,torch", help="--render-speed: rasterizer backends to compare")
    p.add_argument("--views", type=positive_int, default=4, help="--render-speed with --scene: training views timed")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--sizes", type=size_list, default="1e3,1e4,1e5", help="--micro/--render-speed: numbers of Gaussians")
    p.add_argument("--repeats", type=positive_int, default=5, help="--micro/--render-speed/--step-speed: timed runs")
    p.add_argument("--chunk-size", type=non_negative_int, default=65_536,
                   help="--micro: Learn2Splat's chunk_size (Gaussians per network pass; 0: no chunking)")
    p.add_argument("--checkpoint", default="dense",
                   help="--micro: Learn2Splat checkpoint, or 'released-random' for the released architecture's size")
    return p


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.step_speed:
        run_step_speed(args)
    elif args.micro:
        run_micro(args)
    elif args.render_speed:
        run_render_speed(args)
    else:
        try:
            run_race(args)
        except UnreadableResults as err:
            p.error(str(err))
