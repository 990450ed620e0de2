"""The race's results: :class:`Curve` (one optimizer's evaluations, as ``results.json`` stores them), the summary
table (:func:`summary_rows`, also behind ``benchmarks/tables.py``) and the plot (``psnr.png``)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TABLE_STEPS = (10, 50, 100, 500, 1000, 2000)
# curve i is drawn with marker i and line style i (cycled), so that curves lying on top of each other stay apart
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINESTYLES = ("-", "--", "-.", ":")


@dataclass
class Curve:
    """Evaluation of one optimizer run at log-spaced steps: mean PSNR and SSIM over the test views, and the
    training wall-clock up to each step. ``ssim`` is empty in results written before SSIM was recorded."""

    name: str
    steps: list[int] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # adam-tuned: lr_multiplier, sweep_train_psnr, tune_steps

    @property
    def seconds_per_step(self) -> float:
        """Training seconds per step over the whole run."""
        return self.seconds[-1] / max(self.steps[-1], 1)

    @property
    def label(self) -> str:
        """The name, with adam-tuned's chosen learning-rate multiplier (``adam-tuned (x4)``)."""
        multiplier = self.extra.get("lr_multiplier")
        return self.name if multiplier is None else f"{self.name} (x{multiplier:g})"


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


def figure(curves: dict[str, Curve], title: str) -> Figure:
    """Test PSNR (top) and SSIM (bottom, when recorded) against steps (left) and training seconds (right), both
    on log axes, one marker and line style per curve, adam-tuned's multiplier in the legend and a dotted line
    at Adam's final value. The caller closes it (``matplotlib.pyplot.close``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("psnr", "test PSNR (dB)")]
    if any(c.ssim for c in curves.values()):
        metrics.append(("ssim", "test SSIM"))
    fig, axes = plt.subplots(len(metrics), 2, figsize=(11, 1 + 3.6 * len(metrics)), squeeze=False)
    reference = curves.get("adam")
    for (metric, ylabel), (by_step, by_time) in zip(metrics, axes):
        for i, c in enumerate(curves.values()):
            values = getattr(c, metric)
            if not values:
                continue
            style = {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)], "ms": 4, "mfc": "none",
                     "linestyle": LINESTYLES[i % len(LINESTYLES)], "label": c.label}
            by_step.plot([max(s, 1) for s in c.steps], values, **style)
            timed = [(t, v) for t, v in zip(c.seconds, values) if t > 0]
            if timed:
                by_time.plot(*zip(*timed), **style)
        if reference is not None and getattr(reference, metric):
            final = getattr(reference, metric)[-1]
            for ax in (by_step, by_time):
                ax.axhline(final, color="0.3", lw=0.8, ls=":", label=f"adam's final ({final:.3g})")
        for ax in (by_step, by_time):
            ax.set_xscale("log")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3, which="both")
        by_step.set_xlabel("step (step 0 drawn at 1)")
        by_time.set_xlabel("training seconds (step 0, at 0 s, not drawn)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot(curves: dict[str, Curve], path: Path, title: str) -> None:
    """Write :func:`figure` to ``path``."""
    import matplotlib.pyplot as plt

    fig = figure(curves, title)
    fig.savefig(path, dpi=120)
    plt.close(fig)
