"""Issue 11, categories 1-5: bad inputs to the optimizer are refused with a clear error and leave
parameters and state byte-identical (the first step included); see docs/errors.md."""

import copy
import io

import pytest
import torch
from conftest import (
    assert_unchanged,
    make_splats,
    quadratic_loss,
    random_net,
    run_steps,
    same,
    snapshot,
    targets_like,
)
from torch import nn

from l2s_optim import Learn2Splat, NetConfig


def backward(splats, seed=1):
    quadratic_loss(splats, targets_like(splats, seed)).backward()


@pytest.fixture(params=["first step", "later step"])
def stepped(request):
    """An optimizer before its first step, or after two."""
    splats = make_splats()
    opt = Learn2Splat(splats, random_net())
    if request.param == "later step":
        run_steps(opt, splats, targets_like(splats), 2)
        opt.zero_grad()
    return splats, opt


def assert_refused(opt, action, error, match):
    before = snapshot(opt)
    with pytest.raises(error, match=match):
        action()
    assert_unchanged(opt, before)


# ------------------------------------------------------------------------- 1. non-finite spread
NONFINITE = r"parameter '{}' contains NaN or Inf in 1 Gaussian\(s\) to be read, rows \[5\]"
EXTREME = r"this step would write NaN or Inf into \d+ Gaussian\(s\).*the largest is \|{}\| = 1e\+30 at row 5\)"


@pytest.mark.parametrize("name, value, message", [
    ("opacities", float("nan"), NONFINITE), ("scales", float("inf"), NONFINITE), ("sh0", -float("inf"), NONFINITE),
    ("means", float("nan"), NONFINITE), ("opacities", -1e30, EXTREME), ("scales", 1e30, EXTREME),
])
def test_a_nonfinite_or_extreme_value_in_a_stepped_row_is_refused(stepped, name, value, message):
    """NaN/Inf in the rows read, or a finite value that overflows the network (whose attention would spread
    the NaN to the neighbours): refused before anything is written."""
    splats, opt = stepped
    backward(splats)
    with torch.no_grad():
        splats[name].view(64, -1)[5, 0] = value
    assert_refused(opt, opt.step, ValueError, message.format(name) + "; parameters and state left unchanged")


@pytest.mark.parametrize("name, value", [("opacities", -1e30), ("scales", 1e30), ("gradient", 1e30)])
def test_a_step_run_in_chunks_that_would_not_be_finite_is_refused_before_any_write(stepped, name, value):
    """The chunked path (more active rows than ``chunk_size``) checks every chunk's new parameters, moments and
    latent before writing any: an extreme parameter (overflowing the network) or gradient (overflowing the
    second moment) leaves parameters and state byte-identical."""
    splats, opt = stepped
    opt.chunk_size = 16  # 64 active Gaussians: 4 chunks
    backward(splats)
    with torch.no_grad():
        if name == "gradient":
            splats["means"].grad[40, 1] = value
        else:
            splats[name].view(64, -1)[40, 0] = value
    before = snapshot(opt)
    with pytest.raises(ValueError, match=r"would write NaN or Inf into \d+ Gaussian\(s\), rows .*(\[40\]|at row 40\))"):
        opt.step()
    assert_unchanged(opt, before)


def test_a_nonfinite_parameter_in_a_row_not_stepped_is_not_read(stepped):
    splats, opt = stepped
    quadratic_loss({k: p[:32] for k, p in splats.items()}, {k: t[:32] for k, t in targets_like(splats).items()}).backward()
    with torch.no_grad():
        splats["opacities"][40] = float("nan")
    opt.step()
    assert torch.isfinite(splats["opacities"][:32]).all() and splats["opacities"][40].isnan()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_parameters_are_refused(dtype):
    splats = nn.ParameterDict({k: nn.Parameter(p.detach().to(dtype)) for k, p in make_splats().items()})
    with pytest.raises(TypeError, match=f"parameter 'means' has dtype {dtype}: Learn2Splat steps float32 or float64"):
        Learn2Splat(splats, random_net())


# -------------------------------------------------------------------------- 2. frozen attributes
@pytest.mark.parametrize("frozen", ["sh0", "means"])
def test_an_attribute_without_gradient_is_left_untouched_state_included(frozen):
    splats, reference = make_splats(), make_splats()
    splats[frozen].requires_grad_(False)
    opt = Learn2Splat(splats, random_net())
    run_steps(opt, splats, targets_like(splats), 3)
    assert same(splats[frozen], reference[frozen])
    assert frozen == "means" or splats[frozen] not in opt.state  # like torch's optimizers: no state
    assert all(not same(splats[k], reference[k]) for k in splats if k != frozen)
    if frozen == "means":  # the joint latent state lives with the means; their own moments stay zero
        state = opt.state[splats["means"]]
        assert state["step"] == 3 and state["latent"].abs().sum() > 0
        assert not state["exp_avg"].any() and not state["gaussian_step"].any()


def test_an_attribute_without_gradient_this_step_keeps_its_state(stepped):
    splats, opt = stepped
    backward(splats)
    splats["quats"].grad = None
    quats, state = splats["quats"].detach().clone(), {k: v.clone() for k, v in opt.state.get(splats["quats"], {}).items()}
    opt.step()
    assert same(splats["quats"], quats)
    assert {k: v for k, v in opt.state.get(splats["quats"], {}).items()}.keys() == state.keys()
    assert all(same(opt.state[splats["quats"]][k], v) for k, v in state.items())


# ---------------------------------------------------------------------------- 3. views stepped twice
def test_views_step_once_per_backward_when_each_zeroes_its_gradient_in_place():
    a, b = make_splats(), make_splats()
    targets = targets_like(a)
    joint = Learn2Splat(a, random_net())
    views = Learn2Splat(b, random_net()).per_name_optimizers()
    for _ in range(3):
        run_steps(joint, a, targets, 1)
        quadratic_loss(b, targets).backward()
        for view in views.values():  # simple_trainer's loop, zeroing in place
            view.step()
            view.zero_grad(set_to_none=False)
    assert views["means"].state[b["means"]]["step"] == 3
    assert all(same(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------- 4. errors after writes
def swap(opt, splats, name, new):
    old = splats[name]
    group = next(g for g in opt.param_groups if g["name"] == name)
    splats[name], group["params"] = new, [new]
    if old in opt.state:
        opt.state[new] = opt.state.pop(old)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float16])
def test_a_parameter_of_another_dtype_is_refused_before_any_write(stepped, dtype):
    splats, opt = stepped
    backward(splats)
    swap(opt, splats, "opacities", nn.Parameter(splats["opacities"].detach().to(dtype), requires_grad=False))
    assert_refused(opt, opt.step, TypeError, f"parameter 'opacities' has dtype {dtype}")


def test_a_group_lr_set_to_nan_later_is_refused_at_the_step(stepped):
    splats, opt = stepped
    backward(splats)
    opt.param_groups[2]["lr"] = float("nan")  # as a broken scheduler would
    assert_refused(opt, opt.step, ValueError, "Invalid learning rate multiplier for param group 'quats': nan")


def test_an_unknown_knn_backend_is_refused_at_construction(splats):
    with pytest.raises(ValueError, match="unknown kNN backend 'kdtree'"):
        Learn2Splat(splats, random_net(), knn_backend="kdtree")


@pytest.mark.parametrize("bad, error, match", [
    (lambda s: s["scales"].grad.__setitem__(3, float("nan")), ValueError, "gradient of 'scales' contains NaN"),
    (lambda s: setattr(s["quats"], "grad", s["quats"].grad.to_sparse()), ValueError, "gradient of 'quats' must be dense"),
])
def test_bad_gradients_leave_no_trace(stepped, bad, error, match):
    splats, opt = stepped
    backward(splats)
    bad(splats)
    assert_refused(opt, opt.step, error, match)


@pytest.mark.parametrize("visibility", [torch.ones(65, dtype=torch.bool), [True] * 64])
def test_a_bad_visibility_mask_leaves_no_trace(stepped, visibility):
    splats, opt = stepped
    backward(splats)
    assert_refused(opt, lambda: opt.step(visibility=visibility), ValueError, r"visibility must be a \[N\]=64 mask")


# ------------------------------------------------------------------------------------ 5. state_dict
def trained(seed=3, knn_every=1, order=None):
    splats = make_splats()
    if order is not None:
        splats = nn.ParameterDict({k: splats[k] for k in order})
    opt = Learn2Splat(splats, random_net(), seed=seed, knn_every=knn_every)
    run_steps(opt, splats, targets_like(make_splats()), 3)
    return splats, opt


def resume(saved_splats, saved_optimizer, order=None, knn_every=1):
    splats = {k: nn.Parameter(saved_splats[k].detach().clone()) for k in order or saved_splats}  # in this order
    opt = Learn2Splat(splats, random_net(), seed=3, knn_every=knn_every)
    opt.load_state_dict(saved_optimizer)
    return splats, opt


def assert_same_run(a, opt_a, b, opt_b):
    for k in a:
        assert same(a[k], b[k]), k
        assert opt_a.state[a[k]].keys() == opt_b.state[b[k]].keys()
        assert all(same(v, opt_b.state[b[k]][s]) for s, v in opt_a.state[a[k]].items()), k


def test_groups_are_matched_by_name_not_position():
    splats, opt = trained()
    order = ["shN", "sh0", "scales", "quats", "opacities", "means"]
    resumed, opt2 = resume(splats, copy.deepcopy(opt.state_dict()), order)
    assert [g["name"] for g in opt2.param_groups] == order
    assert_same_run(splats, opt, resumed, opt2)


@pytest.mark.parametrize("knn_every", [1, 3])
def test_resume_is_bit_identical(knn_every):
    targets = targets_like(make_splats())
    splats, opt = trained(knn_every=knn_every)  # 3 steps: the graph of step 0 is reused at steps 1 and 2
    buffer = io.BytesIO()
    torch.save({"splats": {k: p.detach() for k, p in splats.items()}, "optimizer": opt.state_dict()}, buffer)
    run_steps(opt, splats, targets, 4)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed, opt2 = resume(saved["splats"], saved["optimizer"], knn_every=knn_every)
    run_steps(opt2, resumed, targets, 4)
    assert_same_run(splats, opt, resumed, opt2)


def test_a_state_saved_with_fewer_gaussians_than_k_resumes():
    splats = make_splats(3)
    targets = targets_like(splats)
    opt = Learn2Splat(splats, random_net(), seed=3)
    run_steps(opt, splats, targets, 2)
    resumed, opt2 = resume(splats, copy.deepcopy(opt.state_dict()))
    run_steps(opt, splats, targets, 1)
    run_steps(opt2, resumed, targets, 1)
    assert_same_run(splats, opt, resumed, opt2)


def test_views_made_before_a_load_keep_acting_on_the_optimizer():
    _, opt = trained()
    saved = copy.deepcopy(opt.state_dict())
    views = opt.per_name_optimizers()
    saved["param_groups"][0]["lr"] = 0.5
    opt.load_state_dict(saved)
    assert all(view.param_groups[0] is group and view.state is opt.state
               for view, group in zip(views.values(), opt.param_groups))
    assert views["means"].param_groups[0]["lr"] == 0.5


def adam_state_dict(splats):
    adam = torch.optim.Adam([{"params": [p], "name": k, "lr": 1.6e-4} for k, p in splats.items()])
    backward(splats)
    adam.step()
    return adam.state_dict()


def test_adams_state_dict_is_refused():
    _, opt = trained()
    saved = adam_state_dict(make_splats())
    assert_refused(opt, lambda: opt.load_state_dict(saved), ValueError, "not a Learn2Splat state_dict")
    view = opt.per_name_optimizers()["means"]
    one = {"state": {0: saved["state"][0]}, "param_groups": [saved["param_groups"][0]]}
    assert_refused(opt, lambda: view.load_state_dict(one), ValueError, "not a Learn2Splat state_dict")


def corrupt(path, value):
    """Set ``saved[path[0]][path[1]]...`` to ``value`` (a function of the old value), or delete it (None)."""

    def apply(saved):
        *parents, last = path
        for key in parents:
            saved = saved[key]
        if value is None:
            del saved[last]
        else:
            saved[last] = value(saved[last])

    return apply


@pytest.mark.parametrize("mutate, error, match", [
    (corrupt(["state", 0, "latent"], lambda v: v.index_fill(0, torch.tensor([2]), float("nan"))), ValueError,
     "saved state of 'means' 'latent' contains NaN or Inf"),
    (corrupt(["state", 1, "exp_avg_sq"], lambda v: -v - 1), ValueError, "'exp_avg_sq' has negative entries"),
    (corrupt(["state", 2, "exp_avg"], lambda v: v[:-1]), ValueError,
     r"saved state of 'quats' 'exp_avg' has shape \[63, 4\] but the parameter 'quats' of 64 Gaussians needs \[64, 4\]"),
    (corrupt(["state", 0, "latent"], lambda v: v[:, :16]), ValueError, "latent width 32"),
    (corrupt(["state", 3, "gaussian_step"], None), ValueError, "saved state of 'scales' must have the entries"),
    (corrupt(["state", 3, "gaussian_step"], lambda v: v + 0.5), ValueError, "whole step counts"),
    (corrupt(["state"], lambda v: {**v, 9: {}}), ValueError, "belong to no saved param group"),
    (corrupt(["param_groups", 4, "name"], lambda v: "colors"), ValueError, "groups are matched by name"),
    (corrupt(["param_groups", 5, "lr"], lambda v: float("nan")), ValueError, "learning rate multiplier for saved group"),
    (corrupt(["learn2splat", "version"], lambda v: 7), ValueError, "unsupported Learn2Splat state_dict format"),
    (corrupt(["param_groups"], None), TypeError, "expected an optimizer state_dict"),
])
def test_a_corrupt_state_dict_is_refused_on_load(mutate, error, match):
    _, opt = trained()
    saved = copy.deepcopy(opt.state_dict())
    mutate(saved)
    assert_refused(opt, lambda: opt.load_state_dict(saved), error, match)


def test_a_corrupt_knn_graph_is_refused_on_load():
    _, opt = trained(knn_every=5)
    saved = copy.deepcopy(opt.state_dict())
    saved["learn2splat"]["knn_graph"]["neighbours"][0, 1] = 64
    assert_refused(opt, lambda: opt.load_state_dict(saved), ValueError, r"row indices outside \[0, 64\)")


def test_a_state_saved_before_the_first_step_resumes(splats):
    """Nothing stepped yet: only the latent projected from init_features."""
    net = random_net(NetConfig(width=32, depth=1, attn_dim=16, mlp_hidden=32, feature_dim=5))
    opt = Learn2Splat(splats, net, init_features=torch.randn(64, 5))
    saved = copy.deepcopy(opt.state_dict())
    assert list(saved["state"][0]) == ["latent"]
    other = Learn2Splat(make_splats(), net)
    other.load_state_dict(saved)
    assert torch.equal(other.state[other.param_groups[0]["params"][0]]["latent"], saved["state"][0]["latent"])
