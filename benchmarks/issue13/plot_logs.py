"""Meta-training curves of the issue-13 runs: the meta-loss and the target views' PSNR after each
unroll (running means over 25 meta-iterations), from the CSV logs in ``logs/``.

    python benchmarks/issue13/plot_logs.py      # writes logs/meta_training.png
"""

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

LOGS = Path(__file__).parent / "logs"
WINDOW = 25


def running_mean(values: list[float]) -> list[float]:
    windows = (values[max(0, i - WINDOW + 1) : i + 1] for i in range(len(values)))
    return [sum(w) / len(w) for w in windows]


fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for path in sorted(LOGS.glob("*.csv")):
    rows = list(csv.DictReader(path.open()))
    steps = [int(r["iteration"]) for r in rows]
    for ax, key in zip(axes, ("loss", "target_psnr")):
        ax.plot(steps, running_mean([float(r[key]) for r in rows]), label=path.stem)
for ax, title in zip(axes, ("meta-loss (log error, summed over the unroll)", "target views' PSNR after the unroll (dB)")):
    ax.set_xlabel("meta-iteration")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
axes[1].legend()
fig.suptitle(f"issue-13 meta-training runs, running means over {WINDOW} meta-iterations, 1 CPU thread each")
fig.tight_layout()
fig.savefig(LOGS / "meta_training.png", dpi=110)
print(f"wrote {LOGS / 'meta_training.png'}")
