"""Timings: the optimizer step alone on N random Gaussians (``l2s-bench micro``), the rasterizer backends side by
side (``l2s-bench render-speed``) and whole training steps per phase (``l2s-bench step-speed``). Each writes
``OUT/<tool>.json`` (the machine, the settings and the rows), prints the rows, and returns them."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.init import gaussians_from_points
from ..data.synthetic import orbit_cameras
from ..gaussians import GSPLAT_LRS
from ..hub import load_network
from ..network import Learn2SplatNet
from ..optimizer import Learn2Splat
from ..render import render_splats
from .race import (
    STEP_PHASES,
    BenchError,
    Workload,
    machine_info,
    optimizer_factory,
    prepare,
    resolve_device,
    sync,
    threads_and_device,
    training_step,
)

MICRO_KINDS = ("adam", "l2s", "l2s_no_knn")
RELEASED_RANDOM = "released-random"  # micro's stand-in checkpoint: the released architecture, random weights


@dataclass(frozen=True)
class MicroConfig:
    """The optimizer step alone (:func:`run_micro`).

    Attributes:
        sizes: numbers of random Gaussians, one row each.
        repeats: timed steps per optimizer and size (after a warm-up step).
        chunk_size: Learn2Splat's ``chunk_size`` (Gaussians per network pass; None: no chunking).
        checkpoint: the Learn2Splat checkpoint, or ``released-random`` for the released architecture's size.
        device: ``auto`` (CUDA when available, else CPU) or a torch device.
        out: the folder of ``micro.json``.
    """

    sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
    repeats: int = 5
    chunk_size: int | None = 65_536
    checkpoint: str = "dense"
    device: str = "auto"
    out: Path = Path("bench-out")


@dataclass(frozen=True)
class RenderSpeedConfig:
    """The rasterizer backends side by side (:func:`run_render_speed`).

    Attributes:
        sizes: numbers of random Gaussians (in a lego-like view), one workload each.
        render_size: the random workloads' square image size.
        backends: rasterizer backends to compare (see :mod:`l2s_optim.render`).
        repeats: timed runs per backend and workload (after a warm-up run).
        workload: also time the first ``views`` training views of this scene with its initial Gaussians.
        views: training views of ``workload`` timed.
        device: ``auto`` (CUDA when available, else CPU) or a torch device.
        out: the folder of ``render_speed.json``.
    """

    sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
    render_size: int = 200
    backends: tuple[str, ...] = ("cpp", "torch")
    repeats: int = 5
    workload: Workload | None = None
    views: int = 4
    device: str = "auto"
    out: Path = Path("bench-out")


@dataclass(frozen=True)
class StepSpeedConfig:
    """Whole training steps per phase (:func:`run_step_speed`).

    Attributes:
        workload: the scene, initial Gaussians and recipe overrides.
        optimizers: ``adam`` and ``l2s[:CHECKPOINT]``, in order (ratios are to the first).
        repeats: timed steps per optimizer (after a warm-up step).
        device: ``auto`` (CUDA when available, else CPU) or a torch device.
        out: the folder of ``step_speed.json``.
    """

    workload: Workload = field(default_factory=Workload)
    optimizers: tuple[str, ...] = ("adam", "l2s:dense")
    repeats: int = 5
    device: str = "auto"
    out: Path = Path("bench-out")


def write_rows(out: Path, name: str, rows: list[dict], device: torch.device, **extra: Any) -> Path:
    """``out/NAME.json``: the machine, ``extra`` (the settings, ...) and the rows; prints where it went and with
    how many threads on which device the rows were measured."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    machine = machine_info(device)
    path.write_text(json.dumps({"machine": machine, **extra, "rows": rows}, indent=1, default=str))
    print(f"{threads_and_device(machine)}; wrote {path}")
    return path


def median_ms(seconds: list[float]) -> float:
    """The median of ``seconds``, in milliseconds."""
    return 1000 * sorted(seconds)[len(seconds) // 2]


def ms_per_step(optimizer: torch.optim.Optimizer, splats: nn.ParameterDict, grads: dict[str, Tensor], repeats: int) -> float:
    """Milliseconds per ``optimizer.step()`` with fixed gradients, after one warm-up step."""
    for name, p in splats.items():
        p.grad = grads[name]
    device = splats["means"].device
    optimizer.step()  # warm-up (and the first kNN graph)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        optimizer.step()
    sync(device)
    return 1000 * (time.perf_counter() - start) / repeats


def micro_network(checkpoint: str) -> tuple[Learn2SplatNet, str]:
    """The network micro times and a description of its weights; ``BenchError`` when it cannot be loaded."""
    if checkpoint == RELEASED_RANDOM:
        return Learn2SplatNet(), "random weights, released architecture (timing does not depend on weights)"
    try:
        return load_network(checkpoint), checkpoint
    except (OSError, ValueError, TypeError) as err:
        raise BenchError(f"cannot load checkpoint {checkpoint!r}: {err}") from err


def micro_workload(n: int, device: torch.device) -> tuple[nn.ParameterDict, dict[str, Tensor]]:
    """N random Gaussians (uniform in the unit cube, 3-NN scales, SH degree 3) and fixed random gradients."""
    g = torch.Generator().manual_seed(0)
    splats = gaussians_from_points(torch.rand(n, 3, generator=g), torch.rand(n, 3, generator=g)).to(device)
    return splats, {k: torch.randn(p.shape, generator=g).to(device) * 1e-3 for k, p in splats.items()}


def micro_optimizer(kind: str, splats: nn.ParameterDict, net: nn.Module, chunk_size: int | None) -> torch.optim.Optimizer:
    """One of :data:`MICRO_KINDS`: ``adam`` (foreach, gsplat's default learning rates), ``l2s`` or ``l2s_no_knn``
    (the neighbour graph reused, so its search is not timed)."""
    if kind == "adam":
        return torch.optim.Adam([{"params": [p], "lr": GSPLAT_LRS[n]} for n, p in splats.items()], eps=1e-15,
                                foreach=True)
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
    """:func:`_peak_step_mb` of a ``kind`` optimizer (see :func:`micro_optimizer`) on N random Gaussians."""
    net, _ = micro_network(checkpoint)
    splats, grads = micro_workload(n, torch.device(device))
    return _peak_step_mb(micro_optimizer(kind, splats, net, chunk_size), splats, grads)


def peak_step_memory_mb(n: int, kind: str, checkpoint: str, chunk_size: int | None, device: torch.device) -> float | None:
    """:func:`measure_peak_mb`; on CPU in a fresh child process (same torch threads) whose glibc returns every freed
    block over 64 KB to the system (``MALLOC_MMAP_THRESHOLD_``), so that its resident set follows the live tensors
    and nothing allocated before (by this process or another optimizer) hides or inflates the step's peak."""
    if device.type == "cuda":
        return measure_peak_mb(n, kind, checkpoint, chunk_size, str(device))
    code = (f"import torch; torch.set_num_threads({torch.get_num_threads()}); from l2s_optim.bench.timing import "
            f"measure_peak_mb; print(measure_peak_mb({n}, {kind!r}, {checkpoint!r}, {chunk_size!r}, 'cpu'))")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    value = result.stdout.split()[-1]
    return None if value == "None" else float(value)


def state_bytes_per_gaussian(optimizer: torch.optim.Optimizer, n: int) -> float:
    """Bytes of optimizer state per Gaussian: every state tensor with N rows (moments, counters, latent state)."""
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
               if isinstance(v, Tensor) and v.ndim and v.shape[0] == n) / n


def run_micro(config: MicroConfig) -> list[dict]:
    """Per optimizer step (gradients given) on N random Gaussians, for Learn2Splat (with and without the kNN
    search) and Adam (foreach): ms, the step's peak working memory (MB, see :func:`peak_step_memory_mb`) and
    the optimizer state (bytes per Gaussian). ``BenchError`` first when the checkpoint cannot be loaded."""
    net, weights = micro_network(config.checkpoint)
    device = resolve_device(config.device)
    rows = []
    for n in config.sizes:
        splats, grads = micro_workload(n, device)
        row: dict = {"n": n}
        for kind in MICRO_KINDS:
            optimizer = micro_optimizer(kind, splats, net, config.chunk_size)
            row[f"{kind}_ms"] = ms_per_step(optimizer, splats, grads, config.repeats)
            if kind != "l2s_no_knn":
                row[f"{kind}_state_bytes_per_gaussian"] = state_bytes_per_gaussian(optimizer, n)
            del optimizer
        for kind in ("adam", "l2s"):
            row[f"{kind}_peak_mb"] = peak_step_memory_mb(n, kind, config.checkpoint, config.chunk_size, device)
        rows.append(row)
        peak = "-" if row["l2s_peak_mb"] is None else f"{row['l2s_peak_mb']:.0f}"
        print(f"N={n:>9,}  adam {row['adam_ms']:9.2f} ms   learn2splat {row['l2s_ms']:9.2f} ms "
              f"(x{row['l2s_ms'] / row['adam_ms']:.0f})   without kNN {row['l2s_no_knn_ms']:9.2f} ms "
              f"(x{row['l2s_no_knn_ms'] / row['adam_ms']:.0f})   learn2splat peak {peak} MB, state "
              f"{row['l2s_state_bytes_per_gaussian']:.0f} B/Gaussian", flush=True)
    write_rows(Path(config.out), "micro", rows, device, network=weights, config=asdict(net.config),
               chunk_size=config.chunk_size, settings=asdict(config))
    return rows


def render_workloads(config: RenderSpeedConfig, device: torch.device) -> list[tuple[str, nn.ParameterDict, Tensor, Tensor, int, int]]:
    """(label, splats, viewmats [1,4,4], Ks [1,3,3], width, height) to time: random Gaussians (uniform in a cube,
    3-NN scales, opacity 0.1) of each size in a ``render_size`` square lego-like view, and with a workload, its
    first ``views`` training views with its initial Gaussians."""
    size = config.render_size
    viewmat = orbit_cameras(1).to(device)
    K = torch.tensor([[[1.39 * size, 0.0, size / 2], [0.0, 1.39 * size, size / 2], [0.0, 0.0, 1.0]]], device=device)
    workloads = []
    for n in config.sizes:
        g = torch.Generator().manual_seed(0)
        points = (torch.rand(n, 3, generator=g) * 2 - 1) * 0.45
        splats = gaussians_from_points(points, torch.rand(n, 3, generator=g)).to(device)
        workloads.append((f"random {n:,} @{size}x{size}", splats, viewmat, K, size, size))
    if config.workload is not None:
        run = prepare(config.workload, (), config.device)
        train, splats, w = run.scene.train_views, run.initial, config.workload
        for v in range(min(config.views, train.images.shape[0])):
            label = f"{Path(w.scene).name} view {v} ({len(splats['means']):,} {w.init}) @{train.width}x{train.height}"
            workloads.append((label, splats, train.viewmats[v : v + 1], train.Ks[v : v + 1], train.width, train.height))
    return workloads


def run_render_speed(config: RenderSpeedConfig) -> list[dict]:
    """ms per view of each rasterizer backend, forward and forward+backward (of the image sum), on the same
    workloads in the same run; the speed-up of cpp over the torch reference; and the largest difference of each
    backend's image from the first backend's (``max_abs_diff_<backend>``), which should be float noise."""
    device = resolve_device(config.device)
    rows = []
    for label, splats, viewmats, Ks, width, height in render_workloads(config, device):
        row: dict = {"workload": label, "n": len(splats["means"]), "width": width, "height": height}
        images = {}
        for backend in config.backends:
            for mode in ("forward", "forward_backward"):
                seconds = []
                for repeat in range(config.repeats + 1):  # the first run warms up
                    sync(device)
                    start = time.perf_counter()
                    with torch.set_grad_enabled(mode != "forward"):
                        image, _, _ = render_splats(splats, viewmats, Ks, width, height, backend=backend)
                        if mode != "forward":
                            image.sum().backward()
                    sync(device)
                    if repeat:
                        seconds.append(time.perf_counter() - start)
                row[f"{backend}_{mode}_ms"] = median_ms(seconds)
            images[backend] = image.detach()
        first = config.backends[0]
        row |= {f"max_abs_diff_{b}": (images[b] - images[first]).abs().max().item() for b in config.backends[1:]}
        if {"cpp", "torch"} <= set(config.backends):
            for mode in ("forward", "forward_backward"):
                row[f"speedup_{mode}"] = row[f"torch_{mode}_ms"] / row[f"cpp_{mode}_ms"]
        rows.append(row)
        print(label + ": " + ", ".join(f"{k} {v:.3g}" for k, v in row.items() if isinstance(v, float)))
    print(f"(median of {config.repeats} runs)")
    write_rows(Path(config.out), "render_speed", rows, device, settings=asdict(config))
    return rows


def run_step_speed(config: StepSpeedConfig) -> list[dict]:
    """ms per whole training step (render, loss, backward, optimizer step on the recipe's views per step of the
    workload's scene, see :func:`~l2s_optim.bench.race.race_recipe`) for each optimizer, in the same run, with the
    ratio to the first optimizer. ``BenchError`` before the scene loads for unknown optimizers and checkpoints
    that cannot be loaded."""
    run = prepare(config.workload, config.optimizers, config.device, tuned=False)
    train, recipe = run.scene.train_views, run.recipe
    rows = []
    for name in config.optimizers:
        splats = copy.deepcopy(run.initial)
        factory = optimizer_factory(name, run.networks, run.scene_scale, config.repeats + 1, config.workload.seed)
        optimizer, scheduler = factory(splats)
        phases: dict[str, list[float]] = {}
        for repeat in range(config.repeats + 1):  # the first step warms up
            views = torch.arange(repeat * recipe.views_per_step, (repeat + 1) * recipe.views_per_step)
            training_step(splats, optimizer, scheduler, train, views % train.images.shape[0], recipe, repeat,
                          phases if repeat else None)
        row: dict = {"optimizer": name, **{f"{p}_ms": median_ms(phases[p]) for p in STEP_PHASES}}
        row["step_total_ms"] = median_ms([sum(t) for t in zip(*phases.values())])
        row["ratio_to_first"] = row["step_total_ms"] / (rows[0]["step_total_ms"] if rows else row["step_total_ms"])
        rows.append(row)
        print(f"{name:>12}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k != "optimizer"))
    print(f"{Path(config.workload.scene).name} at {train.width}x{train.height}, {len(run.initial['means']):,} "
          f"Gaussians ({config.workload.init} init), median of {config.repeats} steps")
    write_rows(Path(config.out), "step_speed", rows, run.device, settings=asdict(config))
    return rows
