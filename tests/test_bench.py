import json
import re
import sys
from dataclasses import replace

import pytest
import torch
from conftest import TINY, random_net

from l2s_optim import bench, demo
from l2s_optim.bench import cli, log_spaced_steps, race, report, summarize, timing
from l2s_optim.losses import photometric_loss, psnr, ssim
from l2s_optim.network import Learn2SplatNet


def tiny_scene(*args, **kwargs):
    from l2s_optim.data import synthetic_scene

    return synthetic_scene(n_views=9, size=24, n_gaussians=600)


@pytest.fixture
def tiny_scenes(monkeypatch):
    """Every scene a benchmark loads is a tiny procedural one."""
    monkeypatch.setattr(race, "load_scene", tiny_scene)


@pytest.fixture
def restore_threads():
    """``--threads`` sets torch's thread count for the process: restored after the test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_scene(monkeypatch):
    """Loading a scene fails the test: what is checked must be refused before."""

    def fail(*args, **kwargs):
        raise AssertionError("a scene was loaded")

    monkeypatch.setattr(race, "load_scene", fail)


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


@pytest.fixture
def adam_rule_checkpoint(tmp_path):
    """An untrained (zero-initialised) adam-rule network: exactly Adam at gsplat's learning rates."""
    Learn2SplatNet(replace(TINY, update_rule="adam")).save_pretrained(tmp_path / "adam-rule")
    return str(tmp_path / "adam-rule")


def test_race_writes_curves_plot_table_and_resumes(tmp_path, tiny_checkpoint, capsys, monkeypatch, tiny_scenes,
                                                    restore_threads):
    titles = []
    real_plot = race.plot
    monkeypatch.setattr(race, "plot", lambda curves, path, title: titles.append(title) or real_plot(curves, path, title))
    out = tmp_path / "out"
    argv = ["race", "--scene", "synthetic", "--optimizers", f"adam,adam-tuned,l2s:{tiny_checkpoint}", "--steps", "20",
            "--tune-steps", "5", "--background", "0", "0", "0", "--threads", "1", "--out", str(out)]
    bench.main(argv)
    results = json.loads((out / "results.json").read_text())
    curves = results["curves"]
    assert list(curves) == ["adam", "adam-tuned", f"l2s:{tiny_checkpoint}"]
    adam = curves["adam"]
    assert adam["steps"] == [0, 1, 2, 5, 10, 20] and len(adam["psnr"]) == len(adam["ssim"]) == 6
    assert adam["psnr"][-1] > adam["psnr"][0] and adam["ssim"][-1] > adam["ssim"][0]  # Adam fits the scene
    assert all(0 < s <= 1 for c in curves.values() for s in c["ssim"])
    assert all(b >= a for a, b in zip(adam["seconds"], adam["seconds"][1:]))
    sweep = curves["adam-tuned"]["extra"]["sweep_train_psnr"]
    assert curves["adam-tuned"]["extra"]["lr_multiplier"] == float(max(sweep, key=sweep.get))
    assert results["machine"]["torch"] == torch.__version__ and results["machine"]["torch_threads"] == 1
    assert results["settings"]["seed"] == 0
    assert (out / "psnr.png").stat().st_size > 10_000 and "1 thread(s) on cpu" in titles[0]
    printed = capsys.readouterr().out
    assert "adam-tuned" in printed and "@10" in printed and "x adam" in printed and "1 thread(s) on cpu" in printed
    assert f"wrote {out / 'results.json'} and {out / 'psnr.png'}" in printed
    # results.json of a version that recorded no SSIM: still read, resumed and plotted
    for curve in curves.values():
        del curve["ssim"]
    (out / "results.json").write_text(json.dumps(results))
    (out / "psnr.png").unlink()
    bench.main(argv)  # same command again: everything is resumed from results.json
    assert "already in" not in printed and capsys.readouterr().out.count("already in") == 3
    assert (out / "psnr.png").exists() and "1 thread(s) on cpu" in titles[1]


@pytest.mark.parametrize("peak, expected", [(32.0, 32.0), (0.1, 0.125), (3.0, 4.0), (1e4, 256.0)])
def test_adam_sweep_widens_until_the_best_multiplier_is_bracketed(monkeypatch, peak, expected):
    from l2s_optim.data import synthetic_scene

    scene = synthetic_scene(n_views=8, size=8, n_gaussians=10)

    def fake_fit(name, *args, **kwargs):  # train PSNR peaks at the multiplier `peak` (log-parabola)
        m = float(name.partition("x")[2])
        return bench.Curve(name, [5], [30.0 - abs(torch.tensor(m / peak).log2().item())], [0.1], [1.0])

    monkeypatch.setattr(race, "fit", fake_fit)
    best, sweep = bench.tune_adam(None, scene, None, 1.0, steps=5, seed=0)
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


def test_plot_separates_identical_curves_and_marks_adams_final_value():
    import matplotlib.pyplot as plt

    steps, seconds = [0, 1, 10, 100], [0.0, 0.1, 1.0, 10.0]
    curves = {name: bench.Curve(name, steps, [10.0, 15.0, 20.0, 25.0], [0.2, 0.4, 0.6, 0.8], seconds, extra)
              for name, extra in [("adam", {}), ("adam-tuned", {"lr_multiplier": 4.0}), ("l2s:dense", {})]}
    fig = report.figure(curves, "beer, 2 thread(s) on cpu")
    try:
        (psnr_by_step, psnr_by_time), (ssim_by_step, _) = fig.axes[:2], fig.axes[2:]
        assert fig._suptitle.get_text() == "beer, 2 thread(s) on cpu"
        assert all(ax.get_xscale() == "log" for ax in fig.axes)
        assert "PSNR" in psnr_by_step.get_ylabel() and "SSIM" in ssim_by_step.get_ylabel()
        labels = [t.get_text() for t in psnr_by_step.get_legend().get_texts()]
        assert labels[:3] == ["adam", "adam-tuned (x4)", "l2s:dense"] and labels[3].startswith("adam's final")
        drawn = psnr_by_step.get_lines()[:3]  # the same values: told apart by marker and line style
        assert len({(line.get_marker(), line.get_linestyle()) for line in drawn}) == 3
        reference = psnr_by_step.get_lines()[3]
        assert list(reference.get_ydata()) == [25.0, 25.0]
        assert list(psnr_by_time.get_lines()[0].get_xdata()) == seconds[1:]  # 0 s has no place on a log axis
    finally:
        plt.close(fig)


def test_micro_times_an_l2s_step_that_is_adams_for_an_untrained_adam_rule_network(tmp_path, adam_rule_checkpoint, capsys):
    net, _ = timing.micro_network(adam_rule_checkpoint)
    stepped = {}
    for kind in ("adam", "l2s"):
        splats, grads = timing.micro_workload(300, torch.device("cpu"))
        timing.ms_per_step(timing.micro_optimizer(kind, splats, net, None), splats, grads, repeats=2)
        stepped[kind] = splats
    for name, p in stepped["adam"].items():
        torch.testing.assert_close(stepped["l2s"][name], p, rtol=1e-5, atol=1e-7, msg=name)
    assert not torch.equal(stepped["adam"]["means"], timing.micro_workload(300, torch.device("cpu"))[0]["means"])

    rows = bench.run_micro(bench.MicroConfig(sizes=(100, 200), repeats=1, checkpoint=adam_rule_checkpoint, out=tmp_path))
    assert [r["n"] for r in rows] == [100, 200]
    for row in rows:
        assert {f"{kind}_ms" for kind in timing.MICRO_KINDS} <= set(row) and {"adam_peak_mb", "l2s_peak_mb"} <= set(row)
        # state per Gaussian: Adam moments of the 59 packed numbers, 6 step counters, the latent state (fp32)
        assert row["l2s_state_bytes_per_gaussian"] == 2 * 59 * 4 + 6 * 4 + TINY.width * 4
        assert row["adam_state_bytes_per_gaussian"] == 2 * 59 * 4
        if sys.platform == "linux":  # peak resident memory of one step, measured in a child process
            assert row["l2s_peak_mb"] > 0 and row["adam_peak_mb"] >= 0
    saved = json.loads((tmp_path / "micro.json").read_text())
    assert saved["rows"] == rows and saved["network"] == adam_rule_checkpoint
    assert saved["settings"]["sizes"] == [100, 200] and saved["machine"]["torch_threads"] == torch.get_num_threads()
    assert f"wrote {tmp_path / 'micro.json'}" in capsys.readouterr().out


def test_render_speed_compares_backends_on_the_same_workload(tmp_path, capsys):
    rows = bench.run_render_speed(bench.RenderSpeedConfig(sizes=(300, 600), render_size=32, repeats=1, out=tmp_path))
    assert [r["n"] for r in rows] == [300, 600]
    for row in rows:
        assert row["max_abs_diff_torch"] < 1e-5  # cpp renders the torch reference's image
        for mode in ("forward", "forward_backward"):
            assert row[f"speedup_{mode}"] == row[f"torch_{mode}_ms"] / row[f"cpp_{mode}_ms"]
    assert json.loads((tmp_path / "render_speed.json").read_text())["rows"] == rows
    assert f"wrote {tmp_path / 'render_speed.json'}" in capsys.readouterr().out


def test_step_speed_times_each_phase_of_whole_training_steps(tmp_path, monkeypatch, tiny_checkpoint, tiny_scenes):
    steps = []
    real_step = timing.training_step
    monkeypatch.setattr(timing, "training_step", lambda *a, **k: steps.append(a[1]) or real_step(*a, **k))
    rows = bench.run_step_speed(bench.StepSpeedConfig(optimizers=("adam", f"l2s:{tiny_checkpoint}"), repeats=3,
                                                      out=tmp_path))
    assert [r["optimizer"] for r in rows] == ["adam", f"l2s:{tiny_checkpoint}"]
    assert len(steps) == 8 and isinstance(steps[0], torch.optim.Adam) and type(steps[-1]).__name__ == "Learn2Splat"
    for row in rows:
        phases = [row[f"{p}_ms"] for p in bench.STEP_PHASES]
        assert min(phases) > 0 and row["step_total_ms"] >= max(phases)
    assert rows[1]["ratio_to_first"] == rows[1]["step_total_ms"] / rows[0]["step_total_ms"]
    assert json.loads((tmp_path / "step_speed.json").read_text())["rows"] == rows


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required"),
    (["--steps", "10"], r"the subcommand comes first \(l2s-bench race --steps ...\): choose from race, micro"),
    (["race", "--steps", "0"], "argument --steps: must be >= 1, got 0"),
    (["race", "--optimizers", "adam,sgd"], r"argument --optimizers: unknown optimizer\(s\) \['sgd'\]"),
    (["race", "--optimizers", "adam,l2s:MISSING"], "optimizer l2s:.*missing: cannot load checkpoint '.*missing'"),
    (["race", "--scene", "MISSING"], "argument --scene: no such folder: '.*missing'"),
    (["race", "--device", "gpu0"], "argument --device: expected 'auto' or a torch device"),
    (["micro", "--sizes", "1e3,x"], "argument --sizes: expected a comma list of whole counts >= 1"),
    (["micro", "--checkpoint", "MISSING"], "cannot load checkpoint '.*missing'"),
    (["render-speed", "--backends", "cpp,opengl"], r"argument --backends: unknown backend\(s\) \['opengl'\]"),
    (["render-speed", "--batch", "2"], "unrecognized arguments: --batch 2"),  # views per step mean nothing there
    (["step-speed", "--optimizers", "adam,adam-tuned"], r"unknown optimizer\(s\) \['adam-tuned'\]"),
    (["step-speed", "--optimizers", "l2s:MISSING"], "optimizer l2s:.*missing: cannot load checkpoint"),
    (["step-speed", "--threads", "0"], "argument --threads: must be >= 1, got 0"),
])
def test_user_errors_are_one_line_before_any_scene_loads(tmp_path, capsys, no_scene, argv, message):
    argv = [arg.replace("MISSING", str(tmp_path / "missing")) for arg in argv]
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*argv, "--out", str(tmp_path / "out")] if argv else argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("l2s-bench") and "error: " in err, err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_help_gives_every_option_a_help_text_and_its_default(capsys, command):
    _, subs = cli.parsers()
    with pytest.raises(SystemExit) as exit_info:
        bench.main([command, "--help"])
    assert exit_info.value.code == 0
    text = "".join(capsys.readouterr().out.split())  # wrapping is free to break lines anywhere
    for action in subs[command]._actions:
        assert action.help, action.dest
        if action.default is not None and action.dest != "help":
            assert f"(default:{''.join(str(action.default).split())})" in text, action.dest
    assert "--threads" in text and "--out" in text and "--device" in text


def test_demo_races_adam_alone_without_bundled_weights(tmp_path, capsys, tiny_scenes, no_bundled_weights):
    demo.main(["--steps", "5", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "Learn2Splat is left out of this demo" in printed and "no bundled 'dense' weights" in printed
    assert list(json.loads((tmp_path / "results.json").read_text())["curves"]) == ["adam", "adam-tuned"]


def test_demo_races_the_bundled_dense_weights_against_adam_and_tuned_adam(tmp_path, capsys, tiny_scenes,
                                                                         restore_threads):
    demo.main(["--steps", "5", "--threads", "1", "--out", str(tmp_path)])
    curves = json.loads((tmp_path / "results.json").read_text())["curves"]
    assert list(curves) == ["adam", "adam-tuned", "l2s:dense"]
    assert curves["l2s:dense"]["psnr"][0] == curves["adam"]["psnr"][0]  # same initial Gaussians
    assert curves["l2s:dense"]["psnr"][-1] != curves["adam"]["psnr"][-1]
    assert curves["adam-tuned"]["extra"]["tune_steps"] == 5
    printed = capsys.readouterr().out
    assert "l2s:dense" in printed and "1 thread(s) on cpu" in printed


def test_demo_races_a_given_checkpoint_against_adam(tmp_path, tiny_checkpoint, tiny_scenes):
    demo.main(["--steps", "5", "--checkpoint", tiny_checkpoint, "--out", str(tmp_path)])
    curves = json.loads((tmp_path / "results.json").read_text())["curves"]
    assert list(curves) == ["adam", "adam-tuned", f"l2s:{tiny_checkpoint}"]


def test_demo_refuses_a_checkpoint_it_cannot_load(tmp_path, capsys, no_scene):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("l2s-demo: error: optimizer l2s:") and "not found" in err
    assert not (tmp_path / "out").exists()
