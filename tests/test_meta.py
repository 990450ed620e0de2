import inspect
import json
import math
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from l2s_optim import Learn2Splat
from l2s_optim.data import dense_init, synthetic_scene
from l2s_optim.meta import CheckpointBuffer, MetaConfig, MetaTrainer, SceneState

TINY = MetaConfig(iterations=4, net={"width": 16, "depth": 1, "attn_dim": 8, "mlp_hidden": 16, "k": 4}, max_tau=3,
                  rollout_max=3, context_views=2, target_views=2, procedural_scenes=1, procedural_size=20,
                  deltas_after=0, save_every=2, adam_warm_start_max=3)


def state(n=5, value=0.0):
    t = torch.full((n, 3), value)
    return SceneState(0, {"means": t}, {"means": t}, {"means": t}, {"means": torch.zeros(n)}, torch.zeros(n, 4))


def test_buffer_samples_only_when_full_and_evicts_oldest():
    buffer = CheckpointBuffer(capacity=3, p_sample=1.0, p_insert=1.0, p_reinsert=1.0)
    for i in range(3):
        assert buffer.sample() is None
        assert buffer.push(state(value=float(i)), was_sampled=False)
    assert buffer.push(state(value=3.0), was_sampled=False)
    assert [s.params["means"][0, 0].item() for s in buffer.states] == [1.0, 2.0, 3.0]
    drawn = buffer.sample()
    assert drawn is not None and len(buffer.states) == 2
    never = CheckpointBuffer(capacity=1, p_insert=0.0, p_reinsert=1.0)
    assert not never.push(state(), was_sampled=False) and never.push(state(), was_sampled=True)
    restored = CheckpointBuffer(capacity=3)
    restored.load_state_dict(buffer.state_dict())
    assert len(restored.states) == 2 and torch.equal(restored.generator.get_state(), buffer.generator.get_state())


@pytest.fixture
def trainer(tmp_path):
    torch.set_num_threads(1)  # bit-exact comparisons below
    return MetaTrainer(replace(TINY), tmp_path, torch.device("cpu"))  # a copy: tests change its config


@pytest.mark.parametrize("param_path", [True, False])
def test_inner_steps_carry_the_latent_state_and_the_gaussians_when_asked(trainer, param_path):
    with torch.no_grad():
        trainer.net.update_mlp[2].weight.normal_(0, 0.1)
    trainer.config.adam_warm_start = 0.0
    trainer.config.param_path = param_path
    start = trainer._fresh_state()
    views = torch.arange(2)
    first, _ = trainer.inner_step(start, views, differentiable=True)
    second, aux = trainer.inner_step(first, views, differentiable=True)
    loss = second.params["means"].sum()
    grads = torch.autograd.grad(loss, [first.params["means"], first.latent, trainer.net.input_proj.weight], allow_unused=True)
    if param_path:  # d(second means)/d(first means) = identity plus the step's own dependence on them
        assert grads[0] is not None and (grads[0] - 1).abs().max() < 0.5
    else:  # Gaussians enter each inner step detached
        assert grads[0] is None
    assert grads[1] is not None and grads[1].abs().sum() > 0  # the meta-gradient crosses steps via the latent
    assert grads[2].abs().sum() > 0
    assert second.steps == 2 and torch.equal(second.gaussian_step["means"], torch.full_like(second.gaussian_step["means"], 2.0))
    assert set(aux) == {"delta", "normalised", "raw"}


def test_inner_step_without_visible_gaussians_changes_nothing(trainer):
    start = trainer._fresh_state()
    start.params["means"] = start.params["means"] + 100.0  # far outside every view
    after, aux = trainer.inner_step(start, torch.arange(2), differentiable=True)
    assert after.steps == start.steps + 1 and aux["delta"] == {}
    for k in start.params:
        assert torch.equal(after.params[k], start.params[k])


def test_adam_warm_start_gives_fresh_scenes_adam_steps_and_fresh_latents(tmp_path):
    trainer = MetaTrainer(replace(TINY, adam_warm_start=1.0, adam_warm_start_max=4), tmp_path, torch.device("cpu"))
    states = [trainer._fresh_state() for _ in range(4)]
    assert all(0 <= s.steps <= 4 for s in states) and any(s.steps >= 2 for s in states)
    for s in states:
        initial = dense_init(trainer.scenes[s.scene], fraction=1.0)  # every SfM point, to compare shapes
        n = s.params["means"].shape[0]
        assert max(4, round(0.1 * len(initial["means"]))) <= n <= len(initial["means"])  # a fraction of the points
        for group in (s.params, s.exp_avg, s.exp_avg_sq):
            assert group.keys() == initial.keys()
            shapes = {k: v.shape for k, v in group.items()}
            assert all(shapes[k] == (n, *initial[k].shape[1:]) for k in initial), shapes
        assert all(c.shape == (n,) for c in s.gaussian_step.values()) and s.latent.shape == (n, trainer.net.config.width)
        assert s.latent.ne(0).all() and abs(s.latent.std().item() - 1) < 0.1  # fresh N(0,1), not Adam's
        assert s.gaussian_step["means"].max() == s.steps and s.gaussian_step["means"].min() >= 0
        assert (s.exp_avg_sq["sh0"].abs().sum() > 0) == (s.steps > 0)


def test_deltas_loss_penalises_only_wrong_way_and_zero_gradient_entries(trainer):
    aux = {"delta": {"means": torch.tensor([[0.5, -0.5, 0.2]])},
           "normalised": {"means": torch.tensor([[1.0, 1.0, 1.0]])},
           "raw": {"means": torch.tensor([[1.0, 1.0, 0.0]])}}
    # entry 0 moves with Adam (kept), entry 1 against it, entry 2 has a zero gradient
    assert trainer._deltas_loss(aux).item() == pytest.approx((0.5 + 0.2) / 3)


def test_meta_training_runs_logs_and_resumes_exactly(tmp_path):
    torch.set_num_threads(1)
    straight = MetaTrainer(replace(TINY), tmp_path / "a", torch.device("cpu"))  # a copy: changed below
    (tmp_path / "a").mkdir()
    straight.train(progress=False)
    rows = (tmp_path / "a" / "log_rank0.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("iteration,seconds,loss")
    assert all(math.isfinite(float(r.split(",")[2])) and float(r.split(",")[2]) != 0 for r in rows[1:])

    (tmp_path / "b").mkdir()
    MetaTrainer(TINY, tmp_path / "b", torch.device("cpu")).train(progress=False, until=2)  # interrupted
    log = tmp_path / "b" / "log_rank0.csv"
    log.write_text(log.read_text() + rows[3] + "\n")  # a row logged after the last save, before the kill
    resumed = MetaTrainer(TINY, tmp_path / "b", torch.device("cpu"))
    resumed.load()
    assert resumed.iteration == 2
    resumed.train(progress=False)
    assert [r.split(",")[0] for r in log.read_text().splitlines()] == ["iteration", "1", "2", "3", "4"]
    for a, b in zip(straight.net.state_dict().values(), resumed.net.state_dict().values()):
        assert torch.equal(a, b)

    straight.config.scene_dirs = ["../shared/data/beer"]  # as a real run names its scenes
    straight.config.context_views = 2  # the recipe must carry the loop's views per step
    folder = straight.finish("l2s-meta-train --out run --scenes ../shared/data/beer")
    from huggingface_hub import ModelCard

    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "l2s-optim" and card.data.license == "mit" and "learned-optimizer" in card.data.tags
    assert "Meta-iterations: 4 of a 4-iteration schedule" in card.text and "`l2s-meta-train --out run --scenes beer`" in card.text
    assert "training views of beer" in card.text and "../shared" not in card.content  # no developer paths
    from l2s_optim.hub import load_network
    from l2s_optim.recipe import Recipe

    assert load_network(str(folder)).recipe == Recipe(views_per_step=2)  # the loop it was trained in
    splats = dense_init(synthetic_scene(n_views=8, size=16, n_gaussians=300))
    Learn2Splat(splats, folder)  # the result loads as a checkpoint


def test_fine_tuning_starts_from_the_given_weights_under_the_new_bound(tmp_path):
    torch.manual_seed(1)
    cpu = torch.device("cpu")
    donor = MetaTrainer(replace(TINY, net={**TINY.net, "update_rule": "adam"}), tmp_path / "donor", cpu).net
    with torch.no_grad():
        donor.update_mlp[2].weight.normal_(0, 0.1)
    donor.save_pretrained(tmp_path / "donor")
    decaying = {**TINY.net, "update_rule": "adam", "multiplier_decay_steps": 50.0}
    trainer = MetaTrainer(replace(TINY, net=decaying, init_from=str(tmp_path / "donor")), tmp_path, cpu)
    assert trainer.net.config.multiplier_decay_steps == 50.0
    for name, value in donor.state_dict().items():
        assert torch.equal(trainer.net.state_dict()[name], value), name
    trainer.train(progress=False, until=1)  # the decaying bound steps inside meta-training too
    assert trainer.iteration == 1
    folder = trainer.finish()
    assert f"Started from the weights of `{tmp_path / 'donor'}`" in (folder / "README.md").read_text()
    from l2s_optim.hub import load_network

    assert load_network(str(folder)).config.multiplier_decay_steps == 50.0  # exported with its bound
    with pytest.raises(RuntimeError, match="size mismatch"):  # another architecture is refused
        MetaTrainer(replace(TINY, net={**decaying, "width": 8}, init_from=str(tmp_path / "donor")), tmp_path, cpu)


def test_two_gloo_ranks_stay_in_sync(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29617",
           "-m", "l2s_optim.meta", "--out", str(tmp_path), "--iterations", "3", "--width", "16", "--depth", "1",
           "--attn-dim", "8", "--mlp-hidden", "16", "--max-tau", "2", "--rollout-max", "2",
           "--procedural-scenes", "1", "--procedural-size", "20", "--adam-warm-start-max", "3", "--device", "cpu"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    checksums = json.loads((tmp_path / "sync.json").read_text())["weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    logs = [(tmp_path / f"log_rank{r}.csv").read_text() for r in (0, 1)]
    assert logs[0] != logs[1]  # each rank trained on its own scenes


def test_meta_training_runs_the_network_under_the_deployment_autocast_policy(tmp_path):
    assert MetaConfig().autocast == inspect.signature(Learn2Splat).parameters["autocast"].default
    with pytest.raises(ValueError, match="autocast"):
        MetaTrainer(replace(TINY, autocast="fp16"), tmp_path, torch.device("cpu"))
    trainer = MetaTrainer(replace(TINY, autocast="bf16", adam_warm_start=0.0), tmp_path, torch.device("cpu"))
    with torch.no_grad():
        trainer.net.update_mlp[2].weight.normal_(0, 0.1)
    seen, forward = [], trainer.net.forward

    def spy(*inputs, **options):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return forward(*inputs, **options)

    trainer.net.forward = spy
    state, _ = trainer.inner_step(trainer._fresh_state(), torch.arange(2), differentiable=True)
    assert seen == [torch.bfloat16]
    assert torch.autograd.grad(state.params["means"].sum(), trainer.net.input_proj.weight)[0].abs().sum() > 0


@pytest.mark.parametrize("flags, message", [
    (["--iterations", "-1"], "argument --iterations: must be >= 1, got -1"),
    (["--max-multiplier", "0"], "argument --max-multiplier: must be > 1, got 0"),
    (["--procedural-scenes", "0"], "nothing to meta-train on"),
    (["--lr", "nan"], "argument --lr: must be > 0, got nan"),
    (["--max-tau", "two"], "argument --max-tau: expected an integer, got 'two'"),
])
def test_meta_train_cli_refuses_bad_arguments_before_any_work(tmp_path, capsys, flags, message):
    from l2s_optim.meta.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "run"), *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
