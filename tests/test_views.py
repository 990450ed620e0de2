"""Per-name optimizer views: gsplat's training-loop contract (no gsplat needed)."""

import copy

import pytest
import torch
from conftest import make_splats, quadratic_loss, random_net, steps_against_unit_lr, targets_like

from l2s_optim import Learn2Splat


def gsplat_iteration(optimizers, splats, targets, visibility=None):
    loss = quadratic_loss(splats, targets)
    loss.backward()
    for opt in optimizers.values():  # as simple_trainer: step, then zero_grad(set_to_none) at once
        opt.step() if visibility is None else opt.step(visibility)
        opt.zero_grad(set_to_none=True)


def test_views_are_real_optimizers_sharing_groups_and_state(splats):
    joint = Learn2Splat(splats, random_net())
    views = joint.per_name_optimizers()
    assert list(views) == list(splats.keys())
    for name, view in views.items():
        assert isinstance(view, torch.optim.Optimizer) and len(view.param_groups) == 1
        assert view.param_groups[0] is next(g for g in joint.param_groups if g["name"] == name)
        assert view.state is joint.state


def zero_grad_in_place_iteration(optimizers, splats, targets):
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=False)  # the same gradient tensors are reused
    quadratic_loss(splats, targets).backward()
    for opt in optimizers.values():
        opt.step()


@pytest.mark.parametrize("iteration", [gsplat_iteration, zero_grad_in_place_iteration])
def test_view_loops_equal_joint_steps(iteration):
    a, b = make_splats(), make_splats()
    targets = targets_like(a)
    joint = Learn2Splat(a, random_net())
    views = Learn2Splat(b, random_net()).per_name_optimizers()
    for _ in range(3):
        joint.zero_grad()
        quadratic_loss(a, targets).backward()
        joint.step()
        iteration(views, b, targets)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert views["means"].state[b["means"]]["step"] == 3  # one joint step per iteration, not six


def test_view_accepts_selective_adam_visibility(splats):
    views = Learn2Splat(splats, random_net()).per_name_optimizers()
    before = splats["means"].detach().clone()
    visible = torch.arange(64) % 2 == 0
    gsplat_iteration(views, splats, targets_like(splats), visibility=visible)
    assert torch.equal(splats["means"][~visible], before[~visible])
    assert not torch.equal(splats["means"][visible], before[visible])


def test_scheduler_on_a_view_drives_the_joint_lr(splats):
    joint = Learn2Splat(splats, random_net())
    views = joint.per_name_optimizers()
    scheduler = torch.optim.lr_scheduler.ExponentialLR(views["means"], gamma=0.01 ** (1 / 10))
    targets = targets_like(splats)
    for _ in range(10):
        gsplat_iteration(views, splats, targets)
        scheduler.step()
    means_group = next(g for g in joint.param_groups if g["name"] == "means")
    assert means_group["lr"] == pytest.approx(0.01)
    assert scheduler.get_last_lr() == [means_group["lr"]]
    assert all(g["lr"] == 1.0 for g in joint.param_groups if g["name"] != "means")
    scheduled, unit = steps_against_unit_lr(joint, splats, targets)  # the joint step uses the scheduled lr
    torch.testing.assert_close(scheduled["means"], means_group["lr"] * unit["means"])
    assert unit["means"].abs().max() > 1e-4
    assert all(torch.equal(scheduled[k], unit[k]) for k in splats if k != "means")


def test_view_state_dict_round_trip(splats):
    joint = Learn2Splat(splats, random_net())
    views = joint.per_name_optimizers()
    gsplat_iteration(views, splats, targets_like(splats))
    saved = copy.deepcopy(views["scales"].state_dict())
    assert len(saved["state"]) == 1 and set(saved["state"][0]) == {"exp_avg", "exp_avg_sq", "gaussian_step"}
    expected = joint.state[splats["scales"]]["exp_avg"].clone()
    joint.state[splats["scales"]]["exp_avg"].zero_()
    saved["param_groups"][0]["lr"] = 0.5
    views["scales"].load_state_dict(saved)
    assert torch.equal(joint.state[splats["scales"]]["exp_avg"], expected)
    assert views["scales"].state is joint.state
    assert next(g for g in joint.param_groups if g["name"] == "scales")["lr"] == 0.5
