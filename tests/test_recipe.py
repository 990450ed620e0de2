"""Training recipes: stored with every checkpoint, followed by l2s-bench, l2s-demo and the gsplat trainer
wrapper (user flags win), and checked by the optimizer."""

import json
import os
import subprocess
import sys
import textwrap
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import make_splats, quadratic_loss, random_net, targets_like
from release_fixture import release_state

from l2s_optim import Learn2Splat, bench, demo, load_network
from l2s_optim.convert import convert_main, convert_release_checkpoint
from l2s_optim.hub import bundled_path
from l2s_optim.recipe import RECIPE_FILE, RELEASE_RECIPE, Recipe

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CUSTOM = Recipe(views_per_step=3, background=(1.0, 0.5, 0.0), normalize_world=False, means_lr=2.0,
                sh_degree_interval=4, rasterize_mode="antialiased", eps2d=0.1, ssim_weight=0.5)


def test_recipe_round_trips_and_rejects_nonsense(tmp_path):
    assert Recipe.from_dict(json.loads(json.dumps(CUSTOM.to_dict()))) == CUSTOM
    CUSTOM.save(tmp_path)
    assert Recipe.load(tmp_path) == CUSTOM
    assert Recipe.load(tmp_path / "elsewhere") == Recipe()  # no recipe.json: the default
    with pytest.raises(ValueError, match="unknown recipe keys"):
        Recipe.from_dict({**CUSTOM.to_dict(), "lr_schedule": "cosine"})
    for bad in ({"views_per_step": 0}, {"views_per_step": 1.5}, {"background": (0, 0)}, {"background": (0, 0, 2)},
                {"normalize_world": "yes"}, {"means_lr": 0.0}, {"sh_degree_interval": -1},
                {"rasterize_mode": "packed"}, {"eps2d": -1.0}, {"ssim_weight": 1.5}):
        with pytest.raises((ValueError, TypeError), match=next(iter(bad))):
            replace(Recipe(), **bad)


def test_overrides_and_the_printed_line():
    resolved, overridden = RELEASE_RECIPE.with_overrides(views_per_step=2, background=None, eps2d=1e-4)
    assert resolved == replace(RELEASE_RECIPE, views_per_step=2) and overridden == ["views_per_step"]
    line = resolved.announce("l2s:x", overridden)
    assert line.startswith("recipe of l2s:x: batch 2, background 0 0 0, world in raw units")
    assert "eps2d 0.0001, loss 0.8 L1 + 0.2 (1 - SSIM)" in line
    assert line.endswith("overridden by the user: batch 2")


def test_checkpoints_carry_their_recipe(tmp_path):
    net = random_net()
    net.recipe = CUSTOM
    net.save_pretrained(tmp_path / "custom")
    assert json.loads((tmp_path / "custom" / RECIPE_FILE).read_text())["views_per_step"] == 3
    assert load_network(tmp_path / "custom").recipe == CUSTOM
    assert Learn2Splat(make_splats(), tmp_path / "custom").recipe == CUSTOM
    (tmp_path / "custom" / RECIPE_FILE).unlink()  # a checkpoint of an earlier version: the default, no crash
    assert load_network(tmp_path / "custom").recipe == Recipe()
    (tmp_path / "custom" / RECIPE_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="corrupt or mismatched"):
        load_network(tmp_path / "custom")


@pytest.mark.parametrize("name", ["dense", "sparse"])
def test_bundled_recipes_are_those_of_our_meta_training(name):
    # l2s-meta-train: one context view per inner step, procedural scenes and real scenes on black, scenes
    # normalised by load_scene, every SH band rendered from step 0, render's eps2d 0.3, photometric_loss 0.2
    stored = json.loads((bundled_path(name) / RECIPE_FILE).read_text())
    assert Recipe.from_dict(stored) == Recipe() == load_network(name).recipe
    assert (Recipe().views_per_step, Recipe().background, Recipe().normalize_world) == (1, (0.0, 0.0, 0.0), True)


def test_converter_writes_the_release_recipe(tmp_path, capsys):
    state = release_state(width=32, depth=1, attn=16, hidden=32, feature_dim=None)
    torch.save({"state_dict": state}, tmp_path / "r.ckpt")
    assert convert_release_checkpoint(tmp_path / "r.ckpt").recipe == RELEASE_RECIPE
    convert_main([str(tmp_path / "r.ckpt"), str(tmp_path / "out")])
    assert "batch 8" in capsys.readouterr().out
    stored = json.loads((tmp_path / "out" / RECIPE_FILE).read_text())
    assert stored == {"views_per_step": 8, "background": [0.0, 0.0, 0.0], "normalize_world": False, "means_lr": 1.0,
                      "sh_degree_interval": 0, "rasterize_mode": "classic", "eps2d": 1e-4, "ssim_weight": 0.2}
    assert load_network(tmp_path / "out").recipe == RELEASE_RECIPE


# ------------------------------------------------------------------------------------------- warnings
def step_once(opt, splats, zero_shn: bool) -> None:
    opt.zero_grad()
    targets = targets_like(splats)
    if zero_shn:
        targets["shN"] = splats["shN"].detach()  # as if rendered at SH degree 0
    quadratic_loss(splats, targets).backward()
    opt.step()


def test_warns_once_when_every_higher_band_gradient_is_zero():
    splats = make_splats()
    opt = Learn2Splat(splats, random_net())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            step_once(opt, splats, zero_shn=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "every shN gradient is exactly zero" in messages[0]


def test_no_warning_when_the_loop_follows_the_recipe_or_the_recipe_has_an_sh_schedule():
    net = random_net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        splats = make_splats()
        opt = Learn2Splat(splats, net)
        for _ in range(2):
            step_once(opt, splats, zero_shn=False)
        net.recipe = replace(Recipe(), sh_degree_interval=1000)  # gsplat's schedule: zero shN gradients expected
        splats = make_splats()
        opt = Learn2Splat(splats, net)
        step_once(opt, splats, zero_shn=True)


def test_warns_at_construction_on_splats_of_a_lower_sh_degree():
    with pytest.warns(RuntimeWarning, match="SH degree 1 but the checkpoint was meta-trained on degree-3 splats"):
        Learn2Splat(make_splats(sh_degree=1), random_net())


def test_rendering_fewer_bands_triggers_the_warning():
    from l2s_optim.data import dense_init, synthetic_scene
    from l2s_optim.render import render_splats

    scene = synthetic_scene(n_views=2, size=16, n_gaussians=300)
    splats = dense_init(scene)
    opt = Learn2Splat(splats, random_net())
    image, _, _ = render_splats(splats, scene.viewmats[:1], scene.Ks[:1], 16, 16, sh_degree=0)
    image.sum().backward()
    assert splats["sh0"].grad.abs().sum() > 0 and splats["shN"].grad.eq(0).all()
    with pytest.warns(RuntimeWarning, match="shN gradient"):
        opt.step()


# ------------------------------------------------------------------------------------ integrations
@pytest.fixture
def recorded_race(monkeypatch, tmp_path):
    """A tiny race whose scene loading and training steps are recorded."""
    from l2s_optim.data import synthetic_scene

    calls = {"load": [], "steps": []}

    def load_scene(*args, **kwargs):
        calls["load"].append(kwargs)
        return synthetic_scene(n_views=9, size=16, n_gaussians=300)

    real_step = bench.training_step

    def training_step(splats, optimizer, scheduler, train, views, recipe, step, phases=None):
        calls["steps"].append((type(optimizer).__name__, len(views), recipe))
        return real_step(splats, optimizer, scheduler, train, views, recipe, step, phases)

    monkeypatch.setattr(bench.race, "load_scene", load_scene)
    monkeypatch.setattr(bench.race, "training_step", training_step)
    net = random_net()
    net.recipe = CUSTOM
    net.save_pretrained(tmp_path / "custom")
    return calls, str(tmp_path / "custom")


def test_bench_follows_the_first_checkpoints_recipe_for_every_optimizer(recorded_race, tmp_path, capsys):
    calls, checkpoint = recorded_race
    bench.main(["race", "--optimizers", f"adam,l2s:{checkpoint}", "--steps", "3", "--out", str(tmp_path / "a")])
    printed = capsys.readouterr().out
    assert f"recipe of l2s:{checkpoint}: batch 3, background 1 0.5 0, world in raw units" in printed
    assert "shared by every optimizer of this run" in printed and "overridden" not in printed
    assert calls["load"][-1]["background"] == (1.0, 0.5, 0.0) and calls["load"][-1]["normalize"] is False
    assert {(name, views) for name, views, _ in calls["steps"]} == {("Adam", 3), ("Learn2Splat", 3)}
    assert all(recipe == CUSTOM for _, _, recipe in calls["steps"])
    saved = json.loads((tmp_path / "a" / "results.json").read_text())["settings"]["recipe"]
    assert Recipe.from_dict(saved) == CUSTOM


def test_bench_flags_override_the_recipe_and_are_printed(recorded_race, tmp_path, capsys):
    calls, checkpoint = recorded_race
    bench.main(["race", "--optimizers", f"l2s:{checkpoint}", "--steps", "2", "--batch", "2", "--background", "0", "0", "0",
                "--normalize-world", "--sh-degree-interval", "0", "--out", str(tmp_path / "b")])
    printed = capsys.readouterr().out
    assert "overridden by the user: batch 2, background 0 0 0, world normalised, SH all bands from step 0" in printed
    expected = replace(CUSTOM, views_per_step=2, background=(0.0, 0.0, 0.0), normalize_world=True, sh_degree_interval=0)
    assert all(views == 2 and recipe == expected for _, views, recipe in calls["steps"])
    assert calls["load"][-1]["normalize"] is True


def test_bench_renders_the_sh_bands_of_the_recipes_schedule(monkeypatch):
    from l2s_optim.data import synthetic_scene

    scene = synthetic_scene(n_views=2, size=8, n_gaussians=50)
    seen = []
    monkeypatch.setattr(bench.race, "render_splats", lambda *a, **k: seen.append((a[6], k["eps2d"])) or 1 / 0)
    for step in (0, 3, 4, 20):
        with pytest.raises(ZeroDivisionError):
            bench.training_step(make_splats(), None, None, scene, torch.tensor([0]), CUSTOM, step)
    assert seen == [(0, 0.1), (0, 0.1), (1, 0.1), (5, 0.1)]  # interval 4; render_splats caps at the splats' degree
    assert bench.sh_degree_at(10**6, 0) is None  # interval 0: every band


def test_demo_follows_the_recipe_unless_told(monkeypatch):
    configs = []
    monkeypatch.setattr(demo, "run_race", configs.append)
    demo.main(["--steps", "5"])
    demo.main(["--steps", "5", "--batch", "4", "--background", "1", "1", "1"])
    assert set(configs[0].workload.recipe_overrides.values()) == {None}
    overrides = {k: v for k, v in configs[1].workload.recipe_overrides.items() if v is not None}
    assert overrides == {"views_per_step": 4, "background": [1.0, 1.0, 1.0]}


FAKE_TRAINER = '''
"""A CPU stand-in for gsplat's simple_trainer: its Config fields, a Runner, and cli(main, cfg)."""
import sys
from dataclasses import dataclass, field

import torch
from gsplat.distributed import cli
from gsplat.strategy import DefaultStrategy


@dataclass
class Config:
    batch_size: int = 1
    normalize_world_space: bool = True
    sh_degree: int = 3
    sh_degree_interval: int = 1000
    ssim_lambda: float = 0.2
    antialiased: bool = False
    random_bkgd: bool = False
    sparse_grad: bool = False
    strategy: DefaultStrategy = field(default_factory=DefaultStrategy)


class Runner:
    def __init__(self, local_rank, world_rank, world_size, cfg):
        self.cfg = cfg
        self.splats = torch.nn.ParameterDict({
            "means": torch.nn.Parameter(torch.randn(50, 3)), "scales": torch.nn.Parameter(torch.zeros(50, 3)),
            "quats": torch.nn.Parameter(torch.randn(50, 4)), "opacities": torch.nn.Parameter(torch.zeros(50)),
            "sh0": torch.nn.Parameter(torch.zeros(50, 1, 3)), "shN": torch.nn.Parameter(torch.zeros(50, 15, 3))})
        self.optimizers = {n: torch.optim.Adam([{"params": [p], "lr": 1e-3, "name": n}]) for n, p in self.splats.items()}

    def rasterize_splats(self, camtoworlds, Ks, width, height, **kwargs):
        return kwargs


def main(local_rank, world_rank, world_size, cfg):
    runner = Runner(local_rank, world_rank, world_size, cfg)
    seen = runner.rasterize_splats(None, None, 8, 8, sh_degree=0)  # gsplat's SH schedule at step 0
    print("CFG", cfg.batch_size, cfg.normalize_world_space, cfg.sh_degree_interval, cfg.ssim_lambda, cfg.antialiased)
    print("RASTERIZE", seen["sh_degree"], seen["eps2d"], type(runner.l2s).__name__)


if __name__ == "__main__":
    cfg = Config()
    args = sys.argv[1:]
    for i, arg in enumerate(args):
        if arg.startswith("--") and arg[2:] in {"batch_size", "sh_degree_interval"}:
            setattr(cfg, arg[2:], int(args[i + 1]))
    cli(main, cfg, verbose=True)
'''


def run_trainer_wrapper(tmp_path, *args) -> str:
    (tmp_path / "simple_trainer.py").write_text(FAKE_TRAINER)
    driver = textwrap.dedent(f"""
        import runpy, sys
        import gsplat.distributed
        gsplat.distributed.cli = lambda fn, cfg, verbose=False: fn(0, 0, 1, cfg)  # gsplat's launcher needs CUDA
        sys.argv = [{str(EXAMPLES / "gsplat_simple_trainer.py")!r}, *{list(args)!r}]
        runpy.run_path(sys.argv[0], run_name="__main__")
    """)
    result = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_gsplat_trainer_wrapper_follows_the_recipe(tmp_path):
    net = random_net()
    net.recipe = RELEASE_RECIPE
    net.save_pretrained(tmp_path / "release")
    out = run_trainer_wrapper(tmp_path, "--trainer", str(tmp_path / "simple_trainer.py"),
                              "--l2s-checkpoint", str(tmp_path / "release"))
    assert f"recipe of l2s:{tmp_path / 'release'}: batch 8, background 0 0 0, world in raw units" in out
    assert "overridden" not in out
    # batch 8, raw units, interval kept positive for gsplat's step // interval, loss weight, classic
    assert "CFG 8 False 1000 0.2 False" in out
    assert "RASTERIZE 3 0.0001 Learn2Splat" in out  # every band rendered from step 0, eps2d 1e-4


def test_gsplat_trainer_wrapper_lets_given_options_win(tmp_path):
    random_net().save_pretrained(tmp_path / "ours")
    out = run_trainer_wrapper(tmp_path, "--trainer", str(tmp_path / "simple_trainer.py"), "--l2s-checkpoint",
                              str(tmp_path / "ours"), "--batch_size", "4", "--sh_degree_interval", "500",
                              "--l2s-eps2d", "0.2")
    assert "overridden by the user: batch 4, SH one more band every 500 steps, eps2d 0.2" in out
    assert "CFG 4 True 500 0.2 False" in out and "RASTERIZE 0 0.2 Learn2Splat" in out  # gsplat's schedule kept
