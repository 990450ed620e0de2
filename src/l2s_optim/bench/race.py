"""The race: Adam, tuned Adam and Learn2Splat fit the same initial Gaussians of one scene, evaluated on its
held-out views at log-spaced steps (``l2s-bench race``, ``l2s-demo``); and the training loop they share with
``l2s-bench step-speed``.

Every optimizer of a race trains under one recipe: views per step, background, world normalisation, SH
schedule, eps2d and loss come from the training recipe of the first Learn2Splat checkpoint among the
optimizers (see :mod:`l2s_optim.recipe`), with :attr:`Workload.recipe_overrides` instead of its own. Both are
printed. Finished optimizers are kept in ``results.json`` and skipped when the same race is run again (resume).
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data import Scene, dense_init, load_scene, random_init, sparse_init
from ..gaussians import GSPLAT_LRS
from ..hub import load_network
from ..losses import photometric_loss, psnr, ssim
from ..network import Learn2SplatNet
from ..optimizer import Learn2Splat
from ..recipe import Recipe
from ..render import render_splats
from .report import Curve, plot, summarize

TUNE_MULTIPLIERS = (0.5, 1.0, 2.0, 4.0, 8.0)
TUNE_LIMITS = (1 / 64, 256.0)  # the sweep widens up to these multipliers while the best lies at its edge
INITS = ("dense", "random", "sparse")
STEP_PHASES = ("render", "loss", "backward", "step")


class BenchError(ValueError):
    """A user error a benchmark finds: an unknown optimizer, a checkpoint or scene that cannot be loaded, an
    unreadable results file, more views per step than the scene has. The command-line tools print it as one
    line and exit with status 2."""


class UnreadableResults(BenchError):
    """An existing results file that cannot be read as l2s-bench results (it is never overwritten)."""


@dataclass(frozen=True)
class Workload:
    """The scene a benchmark trains on, the Gaussians every optimizer starts from and the training recipe's
    settings the user overrides.

    Attributes:
        scene: a COLMAP or transforms.json folder, or ``"synthetic"`` (the procedural scene).
        init: one of :data:`INITS`: SfM points, random Gaussians in the scene's box, or pixel-aligned Gaussians.
        factor: image downscale factor.
        fraction: dense init: the fraction of SfM points kept.
        n_random: random init: the number of Gaussians.
        seed: of the initial Gaussians, the training views' order and Learn2Splat.
        recipe_overrides: :class:`~l2s_optim.recipe.Recipe` field -> value used instead of the checkpoint
            recipe's (a None value: the recipe's own).
    """

    scene: str = "synthetic"
    init: str = "dense"
    factor: int = 1
    fraction: float = 1.0
    n_random: int = 20_000
    seed: int = 0
    recipe_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RaceConfig:
    """A race (:func:`run_race`).

    Attributes:
        workload: the scene, initial Gaussians and recipe overrides.
        optimizers: in order; ``adam`` (gsplat's defaults), ``adam-tuned`` (:func:`tune_adam`'s multiplier),
            ``l2s[:CHECKPOINT]`` (default checkpoint ``dense``).
        steps: training steps of every optimizer.
        tune_steps: adam-tuned: training steps of each run of the sweep (at most ``steps``).
        device: ``auto`` (CUDA when available, else CPU) or a torch device.
        out: the folder of ``results.json`` and ``psnr.png``.
    """

    workload: Workload = field(default_factory=Workload)
    optimizers: tuple[str, ...] = ("adam", "adam-tuned", "l2s:dense")
    steps: int = 2000
    tune_steps: int = 500
    device: str = "auto"
    out: Path = Path("bench-out")

    def settings(self) -> dict[str, Any]:
        """What defines the race, as ``results.json`` stores it (with the recipe): a results file with the same
        settings is resumed."""
        w = self.workload
        return {"scene": w.scene, "init": w.init, "steps": self.steps, "factor": w.factor, "fraction": w.fraction,
                "n_random": w.n_random, "tune_steps": self.tune_steps, "seed": w.seed, "device": self.device}


def log_spaced_steps(total: int) -> list[int]:
    """0 and 1-2-5 steps up to ``total``, and ``total`` itself."""
    steps = {0, total}
    decade = 1
    while decade <= total:
        steps.update(s for s in (decade, 2 * decade, 5 * decade) if s <= total)
        decade *= 10
    return sorted(steps)


def read_results(path: Path) -> tuple[dict, dict, dict[str, Curve]]:
    """The race settings, machine and curves saved in ``path`` (empty when it does not exist);
    ``UnreadableResults`` when it exists but is not l2s-bench results, so that it is left untouched rather than
    overwritten. Curves saved before SSIM was recorded load with an empty ``ssim``."""
    if not path.exists():
        return {}, {}, {}
    try:
        saved = json.loads(path.read_text())
        curves = {name: Curve(**curve) for name, curve in saved["curves"].items()}
        if not isinstance(saved["settings"], dict) or not all(
                c.steps and len({len(c.steps), len(c.psnr), len(c.seconds)}) == 1 and len(c.ssim) in (0, len(c.steps))
                for c in curves.values()):
            raise ValueError("its settings or curves are malformed")
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise UnreadableResults(f"{path} cannot be read as l2s-bench results ({type(err).__name__}: {err}); it is "
                                "left untouched: move it away or choose another --out") from err
    return saved["settings"], saved.get("machine") or {}, curves


def checkpoint_of(name: str) -> str | None:
    """The checkpoint of optimizer ``name`` (``l2s``: ``dense``; ``l2s:X``: X); None for the Adams."""
    return (name.partition(":")[2] or "dense") if name.startswith("l2s") else None


def check_optimizer_names(names: Sequence[str], *, tuned: bool = True) -> None:
    """``BenchError`` naming the unknown ones among ``names``: known are ``adam``, ``adam-tuned`` (only when
    ``tuned``: it needs a race's sweep) and ``l2s[:CHECKPOINT]``."""
    adams = ("adam", "adam-tuned") if tuned else ("adam",)
    unknown = [n for n in names if n not in (*adams, "l2s") and not (n.startswith("l2s:") and n[4:])]
    if unknown or not names:
        raise BenchError(f"unknown optimizer(s) {unknown}: choose from {', '.join(adams)}, l2s[:CHECKPOINT]")


def load_checkpoints(names: Sequence[str], *, tuned: bool = True) -> dict[str, Learn2SplatNet]:
    """The network of each Learn2Splat optimizer among ``names``, in order, after :func:`check_optimizer_names`:
    loaded up front, so that an unknown name or a checkpoint that cannot be loaded stops a benchmark
    (``BenchError``) before any scene is loaded or any run starts."""
    check_optimizer_names(names, tuned=tuned)
    networks = {}
    for name in names:
        checkpoint = checkpoint_of(name)
        if checkpoint is not None:
            try:
                networks[name] = load_network(checkpoint)
            except (OSError, ValueError, TypeError) as err:
                raise BenchError(f"optimizer {name}: cannot load checkpoint {checkpoint!r}: {err}") from err
    return networks


StepperFactory = Callable[[nn.ParameterDict], tuple[torch.optim.Optimizer, object | None]]


def adam_factory(scene_scale: float, total_steps: int, multiplier: float = 1.0) -> StepperFactory:
    """gsplat's default Adam (one group per attribute, means lr decayed to 1% over the run)."""

    def make(splats: nn.ParameterDict) -> tuple[torch.optim.Optimizer, object]:
        groups = [{"params": [p], "lr": GSPLAT_LRS[n] * multiplier * (scene_scale if n == "means" else 1.0), "name": n}
                  for n, p in splats.items()]
        optimizer = torch.optim.Adam(groups, eps=1e-15)
        return optimizer, means_decay(optimizer, total_steps)

    return make


def means_decay(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """gsplat's schedule: the ``means`` group's lr decayed exponentially to 1% over ``total_steps``, the
    other groups' constant."""
    gamma = 0.01 ** (1.0 / max(total_steps, 1))
    decay = [(lambda s: gamma**s) if g["name"] == "means" else (lambda s: 1.0) for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, decay)


def l2s_factory(network: Learn2SplatNet, seed: int) -> StepperFactory:
    """Learn2Splat with ``network`` (no scheduler)."""

    def make(splats: nn.ParameterDict) -> tuple[torch.optim.Optimizer, None]:
        return Learn2Splat(splats, network, seed=seed), None

    return make


def optimizer_factory(name: str, networks: dict[str, Learn2SplatNet], scene_scale: float, total_steps: int,
                      seed: int) -> StepperFactory:
    """``adam`` (gsplat's defaults) or a Learn2Splat optimizer of ``networks`` (see :func:`load_checkpoints`);
    ``adam-tuned`` needs a sweep, see :func:`tune_adam`."""
    if name == "adam":
        return adam_factory(scene_scale, total_steps)
    if name in networks:
        return l2s_factory(networks[name], seed)
    raise ValueError(f"optimizer {name!r} is neither adam nor one of the loaded checkpoints {list(networks)}")


def scene_scale_of(scene: Scene) -> float:
    """gsplat's scene scale: 1.1 x the largest camera distance from the cameras' mean (scales the means lr)."""
    return 1.1 * (scene.camera_centers - scene.camera_centers.mean(0)).norm(dim=-1).max().item()


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that wall-clock timings are the work's."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def machine_info(device: torch.device) -> dict[str, Any]:
    """The platform, torch version, thread count and device a benchmark ran with (saved with its results)."""
    return {
        "platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def threads_and_device(machine: dict[str, Any]) -> str:
    """``2 thread(s) on cpu`` of a :func:`machine_info`."""
    return f"{machine['torch_threads']} thread(s) on {machine['gpu'] or machine['device']}"


@torch.no_grad()
def evaluate(splats: nn.ParameterDict, views: Scene, background: Tensor) -> tuple[float, float]:
    """Mean PSNR and SSIM over the views (rendered one at a time)."""
    scores = []
    for v in range(views.images.shape[0]):
        image, _, _ = render_splats(splats, views.viewmats[v : v + 1], views.Ks[v : v + 1], views.width, views.height, background)
        target = views.images[v : v + 1]
        scores.append((psnr(image.clamp(0, 1), target).item(), ssim(image.clamp(0, 1), target).item()))
    return sum(s[0] for s in scores) / len(scores), sum(s[1] for s in scores) / len(scores)


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
            sync(device)
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
        sync(device)
        start = time.perf_counter()
        training_step(splats, optimizer, scheduler, train, views, recipe, step)
        sync(device)
        elapsed += time.perf_counter() - start
    return curve


def tune_adam(initial: nn.ParameterDict, train: Scene, recipe: Recipe, scene_scale: float, steps: int,
              seed: int) -> tuple[float, dict[str, float]]:
    """Best global LR multiplier for Adam by PSNR after ``steps`` steps on (a subset of) the training views: the
    sweep :data:`TUNE_MULTIPLIERS`, widened by factors of 2 while the best lies at its edge (up to
    :data:`TUNE_LIMITS`), so the chosen multiplier is bracketed by worse ones. Returns it and the sweep."""
    holdout = train.subset(torch.arange(train.images.shape[0]) % max(1, train.images.shape[0] // 8) == 0)
    sweep: dict[float, float] = {}
    pending = list(TUNE_MULTIPLIERS)
    while pending:
        m = pending.pop()
        curve = fit(f"tune x{m:g}", initial, adam_factory(scene_scale, steps, m), train, holdout, steps,
                    recipe, seed, eval_at=[steps])
        sweep[m] = curve.psnr[-1] if math.isfinite(curve.psnr[-1]) else -math.inf
        if not pending:
            best, low, high = max(sweep, key=sweep.get), min(sweep), max(sweep)
            if best == high and high * 2 <= TUNE_LIMITS[1]:
                pending.append(high * 2)
            elif best == low and low / 2 >= TUNE_LIMITS[0]:
                pending.append(low / 2)
    best = max(sweep, key=sweep.get)
    return best, {f"{m:g}": sweep[m] for m in sorted(sweep)}


def initial_gaussians(scene: Scene, workload: Workload) -> nn.ParameterDict:
    """The ``workload.init`` Gaussians of ``scene`` (see :class:`Workload`)."""
    if workload.init == "dense":
        return dense_init(scene, fraction=workload.fraction, seed=workload.seed)
    if workload.init == "random":
        return random_init(scene, n=workload.n_random, seed=workload.seed)
    if workload.init == "sparse":
        return sparse_init(scene)
    raise BenchError(f"unknown init {workload.init!r}: choose from {', '.join(INITS)}")


def race_recipe(optimizers: Sequence[str], networks: dict[str, Learn2SplatNet], overrides: dict[str, Any]) -> Recipe:
    """The recipe every optimizer follows (one for all, so that the race is fair): that of the first Learn2Splat
    network of ``networks`` (``Recipe()`` without one), with ``overrides`` instead of its own. Prints both."""
    first = next(iter(networks), None)
    recipe = networks[first].recipe if first else Recipe()
    resolved, overridden = recipe.with_overrides(**overrides)
    print(resolved.announce(first or "no Learn2Splat checkpoint (defaults)", overridden))
    if len(optimizers) > 1:
        print(f"  shared by every optimizer of this run ({','.join(optimizers)})")
    if resolved.rasterize_mode != "classic":
        print(f"  l2s-bench renders in classic mode only, not {resolved.rasterize_mode}")
    return resolved


def load_race_scene(workload: Workload, recipe: Recipe, device: torch.device) -> Scene:
    """The workload's scene at its factor, composited on the recipe's background, in its world units; a scene
    that cannot be loaded is a ``BenchError``."""
    try:
        scene = load_scene(workload.scene, factor=workload.factor, background=recipe.background,
                           normalize=recipe.normalize_world)
    except (OSError, ValueError, TypeError) as err:
        raise BenchError(f"cannot load scene {workload.scene}: {err}") from err
    return scene.to(device)


@dataclass(frozen=True)
class Prepared:
    """What every run of a benchmark on a :class:`Workload` shares (see :func:`prepare`)."""

    device: torch.device
    networks: dict[str, Learn2SplatNet]
    recipe: Recipe
    scene: Scene
    initial: nn.ParameterDict
    scene_scale: float


def prepare(workload: Workload, optimizers: Sequence[str], device: str, *, tuned: bool = True) -> Prepared:
    """The optimizers' checkpoints (:func:`load_checkpoints`, first, so that bad ones stop it before the scene
    loads), their recipe (:func:`race_recipe`), the scene and the initial Gaussians, on the device."""
    networks = load_checkpoints(optimizers, tuned=tuned) if optimizers else {}
    resolved = resolve_device(device)
    torch.manual_seed(workload.seed)
    recipe = race_recipe(optimizers, networks, workload.recipe_overrides)
    scene = load_race_scene(workload, recipe, resolved)
    initial = initial_gaussians(scene, workload).to(resolved)
    return Prepared(resolved, networks, recipe, scene, initial, scene_scale_of(scene))


def run_race(config: RaceConfig) -> dict[str, Curve]:
    """Fit the workload's initial Gaussians with each optimizer for ``config.steps`` steps, evaluating PSNR and SSIM
    on the test views at :func:`log_spaced_steps`; write ``results.json`` (after each optimizer) and ``psnr.png``
    into ``config.out`` and print the table. Optimizers already in a ``results.json`` of the same race are
    skipped. ``BenchError`` (before any scene is loaded) for unknown optimizers, checkpoints that cannot be
    loaded and an unreadable ``results.json``."""
    out = Path(config.out)
    results_path = out / "results.json"
    saved_settings, saved_machine, saved_curves = read_results(results_path)
    run = prepare(config.workload, config.optimizers, config.device)
    train, test = run.scene.train_views, run.scene.test_views
    if run.recipe.views_per_step > train.images.shape[0]:
        raise BenchError(f"{run.recipe.views_per_step} views per step but only {train.images.shape[0]} training views")
    settings = {**config.settings(), "recipe": run.recipe.to_dict()}
    same_race = {k: saved_settings.get(k) for k in settings} == settings
    curves = saved_curves if same_race else {}
    current = machine_info(run.device)
    machine = saved_machine if curves and saved_machine else current  # what the plotted curves ran with
    w = config.workload
    print(f"{w.scene}: {train.images.shape[0]} train / {test.images.shape[0]} test views at "
          f"{run.scene.width}x{run.scene.height}, {len(run.initial['means'])} Gaussians ({w.init} init), "
          f"{threads_and_device(current)}")
    out.mkdir(parents=True, exist_ok=True)
    for name in config.optimizers:
        if name in curves:
            print(f"{name}: already in {results_path}, skipped")
            continue
        if name == "adam-tuned":
            tune_steps = min(config.steps, config.tune_steps)
            best, sweep = tune_adam(run.initial, train, run.recipe, run.scene_scale, tune_steps, w.seed)
            factory = adam_factory(run.scene_scale, config.steps, best)
        else:
            factory = optimizer_factory(name, run.networks, run.scene_scale, config.steps, w.seed)
        curve = fit(name, run.initial, factory, train, test, config.steps, run.recipe, w.seed)
        if name == "adam-tuned":
            curve.extra = {"lr_multiplier": best, "sweep_train_psnr": sweep, "tune_steps": tune_steps}
        curves[name] = curve
        machine = current
        results_path.write_text(json.dumps({"settings": settings, "machine": machine,
                                            "curves": {n: asdict(c) for n, c in curves.items()}}, indent=1))
    plot(curves, out / "psnr.png", f"{Path(w.scene).name}, {w.init} init, {len(run.initial['means']):,} Gaussians, "
                                   f"{config.steps} steps; {threads_and_device(machine)}")
    print(summarize(curves))
    print(f"wrote {results_path} and {out / 'psnr.png'}")
    return curves
