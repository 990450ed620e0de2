"""Benchmarks of Learn2Splat against Adam (``l2s-bench``, ``l2s-demo``): the race and the training loop
(:mod:`.race`), its table and plot (:mod:`.report`), the timings (:mod:`.timing`) and the command line
(:mod:`.cli`). The names other code uses are importable from here."""

from .cli import main
from .race import (
    STEP_PHASES,
    TUNE_LIMITS,
    TUNE_MULTIPLIERS,
    BenchError,
    RaceConfig,
    UnreadableResults,
    Workload,
    fit,
    log_spaced_steps,
    run_race,
    sh_degree_at,
    training_step,
    tune_adam,
)
from .report import Curve, summarize, summary_cells, summary_rows
from .timing import (
    MicroConfig,
    RenderSpeedConfig,
    StepSpeedConfig,
    run_micro,
    run_render_speed,
    run_step_speed,
    state_bytes_per_gaussian,
)

__all__ = [
    "STEP_PHASES", "TUNE_LIMITS", "TUNE_MULTIPLIERS", "BenchError", "Curve", "MicroConfig", "RaceConfig",
    "RenderSpeedConfig", "StepSpeedConfig", "UnreadableResults", "Workload", "fit", "log_spaced_steps", "main",
    "run_micro", "run_race", "run_render_speed", "run_step_speed", "sh_degree_at", "state_bytes_per_gaussian",
    "summarize", "summary_cells", "summary_rows", "training_step", "tune_adam",
]
