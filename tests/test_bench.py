import json
import sys

import pytest
import torch
from conftest import random_net

from l2s_optim import bench, demo
from l2s_optim.bench import log_spaced_steps, summarize
from l2s_optim.losses import photometric_loss, psnr, ssim


def test_log_spaced_steps():
    assert log_spaced_steps(2000) == [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]
    assert log_spaced_steps(30) == [0, 1, 2, 5, 10, 20, 30]


def test_metrics():
    a = torch.rand(2, 24, 24, 3, generator=torch.Generator().manual_seed(0))
    b = (a + 0.1).clamp(0, 1)
    torch.testing.assert_close(psnr(a, a + 0.1), torch.full((2,), 20.0))
    torch.testing.assert_close(ssim(a, a), torch.ones(2))
    assert (ssim(a, b) < 1).all() and (ssim(a, torch.rand_like(a)) < 0.2).all()
    assert photometric_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    expected = (0.8 * 0.1 + 0.2 * (1 - ssim(a, a + 0.1))).sum()  # per view, summed over views
    torch.testing.assert_close(photometric_loss(a, a + 0.1), expected, rtol=1e-5, atol=0)


@pytest.fixture
def tiny_checkpoint(tmp_path):
    random_net().save_pretrained(tmp_path / "tiny")
    return str(tmp_path / "tiny")


def test_race_writes_curves_plot_table_and_resumes(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    from l2s_optim.data import synthetic_scene

    monkeypatch.setattr(bench, "load_scene", lambda *a, **k: synthetic_scene(n_views=9, size=24, n_gaussians=600))
    out = tmp_path / "out"
    argv = ["--scene", "synthetic", "--optimizers", f"adam,adam-tuned,l2s:{tiny_checkpoint}", "--steps", "20",
            "--tune-steps", "5", "--background", "0", "0", "0", "--out", str(out)]
    bench.main(argv)
    results = json.loads((out / "results.json").read_text())
    curves = results["curves"]
    assert list(curves) == ["adam", "adam-tuned", f"l2s:{tiny_checkpoint}"]
    adam = curves["adam"]
    assert adam["steps"] == [0, 1, 2, 5, 10, 20] and len(adam["psnr"]) == 6
    assert adam["psnr"][-1] > adam["psnr"][0]  # Adam fits the scene
    assert all(b >= a for a, b in zip(adam["seconds"], adam["seconds"][1:]))
    sweep = curves["adam-tuned"]["extra"]["sweep_train_psnr"]
    assert curves["adam-tuned"]["extra"]["lr_multiplier"] == float(max(sweep, key=sweep.get))
    assert results["machine"]["torch"] == torch.__version__ and results["settings"]["seed"] == 0
    assert (out / "psnr.png").stat().st_size > 10_000
    table = capsys.readouterr().out
    assert "adam-tuned" in table and "@10" in table and "x adam" in table
    bench.main(argv)  # same command again: everything is resumed from results.json
    assert table.count("already in") == 0 and capsys.readouterr().out.count("already in") == 3


@pytest.mark.parametrize("peak, expected", [(32.0, 32.0), (0.1, 0.125), (3.0, 4.0), (1e4, 256.0)])
def test_adam_sweep_widens_until_the_best_multiplier_is_bracketed(monkeypatch, peak, expected):
    from types import SimpleNamespace

    from l2s_optim.data import synthetic_scene

    scene = synthetic_scene(n_views=8, size=8, n_gaussians=10)

    def fake_fit(name, *args, **kwargs):  # train PSNR peaks at the multiplier `peak` (log-parabola)
        m = float(name.partition("x")[2])
        return bench.Curve(name, [5], [30.0 - abs(torch.tensor(m / peak).log2().item())], [0.1], [1.0])

    monkeypatch.setattr(bench, "fit", fake_fit)
    args = SimpleNamespace(steps=5, tune_steps=5, batch=1, seed=0)
    best, sweep = bench.tune_adam(None, scene, args, torch.zeros(3), 1.0)
    tried = sorted(float(m) for m in sweep)
    assert best == expected
    if bench.TUNE_LIMITS[0] < best < bench.TUNE_LIMITS[1]:
        assert tried[0] < best < tried[-1]  # bracketed by worse multipliers
    assert set(bench.TUNE_MULTIPLIERS) <= set(tried)


def test_summary_reports_steps_and_seconds_to_adams_final_psnr():
    curves = {
        "adam": bench.Curve("adam", [0, 10, 100], [10.0, 20.0, 25.0], [0.5] * 3, [0.0, 1.0, 10.0]),
        "fast": bench.Curve("fast", [0, 10, 100], [10.0, 26.0, 25.5], [0.5] * 3, [0.0, 2.0, 20.0]),
    }
    adam_row, fast_row = (line.split() for line in summarize(curves).splitlines()[1:])
    # PSNR at 10 / 50 / 100, final, steps and seconds to Adam's final PSNR, best PSNR within Adam's
    # 10 s, the largest drop below its own best, ms/step, ratio to Adam
    assert fast_row == ["fast", "26.00", "-", "25.50", "25.50", "10", "2.0", "26.00", "0.50", "200.0", "2.00"]
    assert adam_row[-4:] == ["25.00", "0.00", "100.0", "1.00"]


def test_micro_benchmark(tmp_path, tiny_checkpoint):
    rows = bench.run_micro(bench.parser().parse_args(
        ["--micro", "--sizes", "200", "--repeats", "1", "--checkpoint", tiny_checkpoint, "--out", str(tmp_path)]))
    assert rows[0]["n"] == 200 and rows[0]["l2s_ms"] > 0 and rows[0]["adam_ms"] > 0
    assert json.loads((tmp_path / "micro.json").read_text())["rows"] == rows
    # state per Gaussian: Adam moments of the 59 packed numbers, 6 step counters, the latent state (fp32)
    width = random_net().config.width
    assert rows[0]["l2s_state_bytes_per_gaussian"] == 2 * 59 * 4 + 6 * 4 + width * 4
    assert rows[0]["adam_state_bytes_per_gaussian"] == 2 * 59 * 4
    if sys.platform == "linux":  # peak resident memory of one step, measured in a child process
        assert rows[0]["l2s_peak_mb"] > 0 and rows[0]["adam_peak_mb"] >= 0


def test_demo_runs_adam_alone_without_bundled_weights(tmp_path, capsys, monkeypatch, no_bundled_weights):
    from l2s_optim.data import synthetic_scene

    monkeypatch.setattr(bench, "load_scene", lambda *a, **k: synthetic_scene(n_views=9, size=24, n_gaussians=600))
    demo.main(["--steps", "5", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "Learn2Splat is left out of this demo: no bundled 'dense' weights" in printed
    assert list(json.loads((tmp_path / "results.json").read_text())["curves"]) == ["adam"]


def test_demo_races_the_bundled_dense_weights_against_adam(tmp_path, capsys, monkeypatch):
    from l2s_optim.data import synthetic_scene

    monkeypatch.setattr(bench, "load_scene", lambda *a, **k: synthetic_scene(n_views=9, size=24, n_gaussians=600))
    demo.main(["--steps", "5", "--out", str(tmp_path)])
    curves = json.loads((tmp_path / "results.json").read_text())["curves"]
    assert list(curves) == ["adam", "l2s:dense"]
    assert curves["l2s:dense"]["psnr"][0] == curves["adam"]["psnr"][0]  # same initial Gaussians
    assert curves["l2s:dense"]["psnr"][-1] != curves["adam"]["psnr"][-1]
    assert "l2s:dense" in capsys.readouterr().out


def test_render_speed_benchmark_compares_backends_on_the_same_workload(tmp_path):
    rows = bench.run_render_speed(bench.parser().parse_args(
        ["--render-speed", "--sizes", "300,600", "--render-size", "32", "--repeats", "1", "--out", str(tmp_path)]))
    assert [r["n"] for r in rows] == [300, 600]
    for row in rows:
        for mode in ("forward", "forward_backward"):
            assert row[f"speedup_{mode}"] == row[f"torch_{mode}_ms"] / row[f"cpp_{mode}_ms"]
    assert json.loads((tmp_path / "render_speed.json").read_text())["rows"] == rows


def test_step_speed_times_each_phase_of_whole_training_steps(tmp_path, monkeypatch, tiny_checkpoint):
    from l2s_optim.data import synthetic_scene

    monkeypatch.setattr(bench, "load_scene", lambda *a, **k: synthetic_scene(n_views=9, size=24, n_gaussians=600))
    steps = []
    real_step = bench.training_step
    monkeypatch.setattr(bench, "training_step", lambda *a, **k: steps.append(a[1]) or real_step(*a, **k))
    rows = bench.run_step_speed(bench.parser().parse_args(
        ["--step-speed", "--optimizers", f"adam,l2s:{tiny_checkpoint}", "--repeats", "3", "--out", str(tmp_path)]))
    assert [r["optimizer"] for r in rows] == ["adam", f"l2s:{tiny_checkpoint}"]
    assert len(steps) == 8 and isinstance(steps[0], torch.optim.Adam) and type(steps[-1]).__name__ == "Learn2Splat"
    for row in rows:
        phases = [row[f"{p}_ms"] for p in bench.STEP_PHASES]
        assert min(phases) > 0 and row["step_total_ms"] >= max(phases)
    assert rows[1]["ratio_to_first"] == rows[1]["step_total_ms"] / rows[0]["step_total_ms"]


def test_demo_races_a_given_checkpoint_against_adam(tmp_path, monkeypatch, tiny_checkpoint):
    from l2s_optim.data import synthetic_scene

    monkeypatch.setattr(bench, "load_scene", lambda *a, **k: synthetic_scene(n_views=9, size=24, n_gaussians=600))
    demo.main(["--steps", "5", "--checkpoint", tiny_checkpoint, "--out", str(tmp_path)])
    assert list(json.loads((tmp_path / "results.json").read_text())["curves"]) == ["adam", f"l2s:{tiny_checkpoint}"]
