from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor, nn

from l2s_optim import Learn2SplatNet, NetConfig

TINY = NetConfig(width=32, depth=2, attn_dim=16, mlp_hidden=64, k=4)


def make_splats(n: int = 64, sh_degree: int = 3, seed: int = 0) -> nn.ParameterDict:
    """A random gsplat-style scene, raw attributes, N first."""
    g = torch.Generator().manual_seed(seed)
    splats = {
        "means": torch.randn(n, 3, generator=g),
        "scales": torch.rand(n, 3, generator=g) - 3.0,
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.randn(n, generator=g),
        "sh0": torch.rand(n, 1, 3, generator=g) - 0.5,
    }
    if sh_degree:
        splats["shN"] = 0.1 * torch.randn(n, (sh_degree + 1) ** 2 - 1, 3, generator=g)
    return nn.ParameterDict({k: nn.Parameter(v) for k, v in splats.items()})


def random_net(config: NetConfig = TINY, seed: int = 0) -> Learn2SplatNet:
    """A network with non-trivial (random) output layer, so that updates are not zero."""
    torch.manual_seed(seed)
    net = Learn2SplatNet(config)
    with torch.no_grad():
        net.update_mlp[2].weight.normal_(0.0, 0.05)
        net.update_mlp[2].weight[-1] = 0.0  # constant step length 0.01, random directions
        net.update_mlp[2].bias[-1] = 0.01
    return net


def quadratic_loss(splats, targets: dict[str, Tensor]) -> Tensor:
    return sum(((splats[k] - t) ** 2).sum() * (1 + i) for i, (k, t) in enumerate(targets.items()))


def targets_like(splats, seed: int = 1) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(p.shape, generator=g) * 0.1 + p.detach() for k, p in splats.items()}


def run_steps(opt, splats, targets, steps):
    """``steps`` optimizer steps on the quadratic loss towards ``targets`` (a target equal to the
    parameter gives a zero gradient)."""
    for _ in range(steps):
        opt.zero_grad()
        quadratic_loss(splats, targets).backward()
        opt.step()


def steps_against_unit_lr(opt, splats, targets) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """One more step of the Learn2Splat ``opt`` (with its groups' lrs as they are now) and one of a twin loaded
    from its state with every group's lr at 1.0, from the same parameters: each attribute's displacement under
    ``opt`` and under the twin (equal to it times the lr, but where a clamp bites)."""
    from l2s_optim import Learn2Splat

    twin_splats = nn.ParameterDict({k: nn.Parameter(v.detach().clone()) for k, v in splats.items()})
    twin = Learn2Splat(twin_splats, opt.net, seed=opt.seed)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    for group in twin.param_groups:
        group["lr"] = 1.0
    before = {k: v.detach().clone() for k, v in splats.items()}
    run_steps(opt, splats, targets, 1)
    run_steps(twin, twin_splats, targets, 1)
    return ({k: splats[k].detach() - before[k] for k in splats},
            {k: twin_splats[k].detach() - before[k] for k in splats})


def snapshot(opt) -> tuple:
    """Clones of every parameter, state tensor and group setting of ``opt``, for :func:`assert_unchanged`."""
    params = [g["params"][0] for g in opt.param_groups]
    return ([p.detach().clone() for p in params],
            [{k: v.clone() for k, v in opt.state[p].items()} if p in opt.state else None for p in params],
            [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups], len(opt.state))


def same(a: Tensor, b: Tensor) -> bool:
    """Byte-identical up to NaN payloads: the same dtype, shape, values and NaN positions."""
    return (a.dtype == b.dtype and torch.equal(a.isnan(), b.isnan())
            and torch.equal(a.nan_to_num(nan=0.0), b.nan_to_num(nan=0.0)))


def assert_unchanged(opt, before: tuple) -> None:
    """Every parameter, state tensor and group setting of ``opt`` as in ``before`` (see :func:`snapshot`);
    no state entry was created."""
    params_before, states_before, groups_before, entries = before
    params = [g["params"][0] for g in opt.param_groups]
    assert len(opt.state) == entries
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups_before
    for p, old, state in zip(params, params_before, states_before):
        assert same(p.detach(), old)
        assert (p in opt.state) == (state is not None)
        if state is not None:
            assert opt.state[p].keys() == state.keys()
            assert all(same(opt.state[p][k], v) for k, v in state.items())


def duplicate_like_gsplat(splats, opt, sel):
    """What gsplat's strategy ops do: new Parameters, state rows concatenated with zeros."""
    for k in list(splats.keys()):
        old = splats[k]
        new = nn.Parameter(torch.cat([old.detach(), old.detach()[sel]]))
        splats[k] = new
        state = opt.state.pop(old)
        for key, v in state.items():
            if key != "step":
                state[key] = torch.cat([v, torch.zeros((len(sel), *v.shape[1:]))])
        group = next(g for g in opt.param_groups if g["params"][0] is old)
        group["params"] = [new]
        opt.state[new] = state


class AdamEchoNet(nn.Module):
    """A stand-in network whose update is the Adam-normalised gradient itself: with it,
    Learn2Splat must reproduce torch.optim.Adam exactly (a reference for packing, per-Gaussian
    moments, learning rates and the commit of updates)."""

    def __init__(self, sh_degree: int = 3) -> None:
        super().__init__()
        wide = math.inf
        self.config = NetConfig(sh_degree=sh_degree, width=8, depth=1, attn_dim=8, mlp_hidden=8,
                                log_scale_min=-wide, log_scale_max=wide, opacity_logit_min=-wide,
                                opacity_logit_max=wide, sh_min=-wide, sh_max=wide)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, params, latent, normalised_grads, neighbours, valid, steps=None, entry_steps=None):
        return normalised_grads.float(), latent + 1.0


@pytest.fixture
def splats():
    return make_splats()


@pytest.fixture
def no_bundled_weights(monkeypatch, tmp_path):
    """As if this install shipped no bundled checkpoints."""
    import l2s_optim.hub

    monkeypatch.setattr(l2s_optim.hub, "bundled_path", lambda name: tmp_path / "no-weights" / name)
