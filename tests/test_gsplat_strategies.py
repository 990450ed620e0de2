"""gsplat's densification strategies (v1.5.3) operating on Learn2Splat through its per-name views,
on CPU, with real optimizer steps before and after every operation."""

import math

import pytest
import torch
from conftest import AdamEchoNet, make_splats, random_net

from l2s_optim import Learn2Splat

gsplat = pytest.importorskip("gsplat")
from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci
from gsplat.strategy import DefaultStrategy, MCMCStrategy, ops

# the Adam-equivalent echo network steps with Adam's learning rates as its lr
pytestmark = pytest.mark.filterwarnings("ignore:Learn2Splat.*looks like an Adam learning rate:RuntimeWarning")


def pull_loss(splats):
    """Every Gaussian pulled to fixed targets: a loss whose mean is comparable across N."""
    return (
        (splats["means"] - 0.5).square().sum(-1)
        + (splats["scales"] + 2.0).square().sum(-1)
        + (torch.sigmoid(splats["opacities"]) - 0.8).square()
        + (splats["sh0"] - 0.3).square().sum((-1, -2))
        + splats["shN"].square().sum((-1, -2))
        + (torch.nn.functional.normalize(splats["quats"], dim=-1)[:, 0] - 1).square()
    ).mean()


def iterate(optimizers, splats, steps):
    losses = []
    for _ in range(steps):
        loss = pull_loss(splats)
        loss.backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def check_consistent(joint, splats):
    n = splats["means"].shape[0]
    for group in joint.param_groups:
        param = splats[group["name"]]
        assert group["params"][0] is param  # the group holds the new Parameter
        for key, value in joint.state[param].items():
            if key != "step":
                assert value.shape[0] == n, (group["name"], key, value.shape)
    return n


@pytest.fixture
def scene():
    splats = make_splats(200)
    joint = Learn2Splat(splats, AdamEchoNet(), lr=0.01)  # Adam-equivalent network: the loss must fall
    return splats, joint, joint.per_name_optimizers()


def test_check_sanity_accepts_views(scene):
    splats, _, optimizers = scene
    DefaultStrategy().check_sanity(splats, optimizers)
    MCMCStrategy().check_sanity(splats, optimizers)


@pytest.mark.parametrize("op", ["duplicate", "split", "remove"])
def test_default_strategy_ops_keep_state_consistent(scene, op):
    splats, joint, optimizers = scene
    iterate(optimizers, splats, 5)
    mask = torch.arange(200) % 4 == 0
    counts = joint.state[splats["means"]]["gaussian_step"].clone()
    getattr(ops, op)(params=splats, optimizers=optimizers, state={}, mask=mask)
    n = check_consistent(joint, splats)
    assert n == {"duplicate": 250, "split": 250, "remove": 150}[op]
    expected = {"duplicate": torch.cat([counts, torch.zeros(50)]),
                "split": torch.cat([counts[~mask], torch.zeros(100)]),
                "remove": counts[~mask]}[op]
    assert torch.equal(joint.state[splats["means"]]["gaussian_step"], expected)
    losses = iterate(optimizers, splats, 20)
    check_consistent(joint, splats)
    assert losses[-1] < 0.9 * losses[0]
    state = joint.state[splats["means"]]
    assert state["gaussian_step"].min() >= 20 and state["latent"].abs().sum(1).gt(0).all()


def test_reset_opa_restarts_opacity_moments_only(scene):
    splats, joint, optimizers = scene
    iterate(optimizers, splats, 5)
    ops.reset_opa(params=splats, optimizers=optimizers, state={}, value=0.01)
    assert torch.sigmoid(splats["opacities"]).max() <= 0.01 + 1e-6
    assert joint.state[splats["opacities"]]["gaussian_step"].eq(0).all()
    assert joint.state[splats["means"]]["gaussian_step"].eq(5).all()
    iterate(optimizers, splats, 1)
    assert joint.state[splats["opacities"]]["gaussian_step"].eq(1).all()
    check_consistent(joint, splats)


def relocation_on_cpu(opacities, scales, ratios, binoms):
    """MCMC relocation (Kheradmand et al. 2024, eq. 9) in plain torch: gsplat only has a CUDA kernel."""
    n_max = binoms.shape[0]
    ratios = ratios.clamp(1, n_max).long()
    new_opacities = 1.0 - (1.0 - opacities) ** (1.0 / ratios)
    denominators = torch.zeros_like(opacities)
    for i in range(1, n_max + 1):
        for k in range(i):
            term = binoms[i - 1, k] * (-1) ** k / math.sqrt(k + 1) * new_opacities ** (k + 1)
            denominators += torch.where(i <= ratios, term, torch.zeros_like(term))
    return new_opacities, scales * (opacities / denominators)[:, None]


def test_mcmc_relocate_and_sample_add(scene, monkeypatch):
    monkeypatch.setattr(ops, "compute_relocation", relocation_on_cpu)
    monkeypatch.setattr(ops, "quat_scale_to_covar_preci", _quat_scale_to_covar_preci)
    splats, joint, optimizers = scene
    iterate(optimizers, splats, 5)
    with torch.no_grad():
        splats["opacities"][:30] = -10.0  # dead
    strategy = MCMCStrategy(cap_max=230, refine_start_iter=0, refine_every=1)
    state = strategy.initialize_state()
    strategy.step_post_backward(splats, optimizers, state, step=10, info={}, lr=1e-4)
    n = check_consistent(joint, splats)
    assert n == 210  # 5% added
    counts = joint.state[splats["means"]]["gaussian_step"]
    assert counts[200:].eq(0).all() and counts[:30].eq(5).all()  # new rows fresh; dead rows keep theirs
    assert torch.sigmoid(splats["opacities"][:30]).min() > 0.005  # relocated
    losses = iterate(optimizers, splats, 20)
    check_consistent(joint, splats)
    assert losses[-1] < 0.9 * losses[0]


def test_default_strategy_step_post_backward_with_cpu_renderer_info():
    """The whole DefaultStrategy loop (grad2d statistics, grow, prune) fed by our renderer's info."""
    from l2s_optim.data import dense_init, synthetic_scene
    from l2s_optim.losses import photometric_loss
    from l2s_optim.render import render_splats

    scene = synthetic_scene(n_views=8, size=32, n_gaussians=1200)
    splats = dense_init(scene)
    joint = Learn2Splat(splats, AdamEchoNet(), lr=0.01)
    optimizers = joint.per_name_optimizers()
    strategy = DefaultStrategy(refine_start_iter=2, refine_every=4, reset_every=1000, grow_grad2d=1e-5,
                               prune_opa=0.05, verbose=False)
    strategy.check_sanity(splats, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    counts, losses = [], []
    for step in range(13):
        v = step % 8
        image, _, info = render_splats(splats, scene.viewmats[v : v + 1], scene.Ks[v : v + 1], 32, 32)
        strategy.step_pre_backward(splats, optimizers, state, step, info)
        loss = photometric_loss(image, scene.images[v : v + 1])
        loss.backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        strategy.step_post_backward(splats, optimizers, state, step, info, packed=False)
        counts.append(len(splats["means"]))
        losses.append(loss.item())
        check_consistent(joint, splats)
    assert counts[-1] != counts[0]  # the strategy grew and/or pruned at steps 4, 8 and 12
    assert sum(losses[-4:]) < sum(losses[:4])


def test_several_fold_growth_while_stepping_in_chunks():
    """DefaultStrategy's growth ops (duplicate, split) grow the splats 8-fold between steps of the real network,
    run in chunks: state rows follow N, new Gaussians start fresh, the state per Gaussian stays the same size and
    no network activation holds more than a chunk of rows."""
    from l2s_optim.bench import state_bytes_per_gaussian

    splats = make_splats(1000)
    joint = Learn2Splat(splats, random_net(), chunk_size=512)
    optimizers = joint.per_name_optimizers()
    rows = []
    for module in joint.net.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda mod, inputs, out: rows.append(inputs[0].shape[0]))
    iterate(optimizers, splats, 2)
    per_gaussian = state_bytes_per_gaussian(joint, 1000)
    for op in ("duplicate", "split", "duplicate"):
        before = len(splats["means"])
        getattr(ops, op)(params=splats, optimizers=optimizers, state={}, mask=torch.ones(before, dtype=torch.bool))
        assert check_consistent(joint, splats) == 2 * before
        assert joint.state[splats["means"]]["gaussian_step"][-before:].eq(0).all()  # new rows are fresh
        losses = iterate(optimizers, splats, 2)
        n = check_consistent(joint, splats)
        state = joint.state[splats["means"]]
        assert state["gaussian_step"][-before:].eq(2).all() and state["latent"].abs().sum(1).gt(0).all()
        assert math.isfinite(losses[-1]) and all(torch.isfinite(p).all() for p in splats.values())
        assert state_bytes_per_gaussian(joint, n) == per_gaussian
    assert len(splats["means"]) == 8000 and max(rows) <= 512
