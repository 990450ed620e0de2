"""The one step driver (``l2s_optim.step.apply_learned_step``) and its fast paths."""

from dataclasses import replace

import pytest
import torch
from conftest import TINY, AdamEchoNet, duplicate_like_gsplat, make_splats, random_net, run_steps, targets_like
from torch import nn

from l2s_optim import Learn2Splat, NetConfig
from l2s_optim.step import GaussianState, active_rows, apply_learned_step, autocast_policy, prepare_rows


def test_all_rows_fast_path_equals_the_partial_step_on_the_shared_rows():
    """64 Gaussians, all active (nothing gathered or scattered), against the same 64 with 16 far-away
    unseen ones appended (gathered and scattered): identical rows and state, bit for bit."""
    small, big = make_splats(64), make_splats(80, seed=1)
    with torch.no_grad():
        for k in small:
            big[k][:64] = small[k]
        big["means"][64:] += 100.0
    targets = targets_like(small)
    big_targets = {k: torch.cat([t, big[k][64:].detach()]) for k, t in targets.items()}  # zero gradients
    opt_small, opt_big = Learn2Splat(small, random_net(), seed=5), Learn2Splat(big, random_net(), seed=5)
    for _ in range(3):
        run_steps(opt_small, small, targets, 1)
        run_steps(opt_big, big, big_targets, 1)
    for k in small:
        assert torch.equal(big[k][:64], small[k])
        assert torch.equal(big[k][64:], make_splats(80, seed=1)[k][64:] + (100.0 if k == "means" else 0.0))
        for key, value in opt_small.state[small[k]].items():
            if key != "step":
                assert torch.equal(opt_big.state[big[k]][key][:64], value), (k, key)
                assert not opt_big.state[big[k]][key][64:].any(), (k, key)


class LatentSpy(nn.Module):
    """Wraps a network and records the latent state it is given."""

    def __init__(self, net):
        super().__init__()
        self.net, self.config, self.seen = net, net.config, []

    def forward(self, params, latent, normalised_grads, neighbours, valid, steps=None, entry_steps=None):
        self.seen.append(latent.clone())
        return self.net(params, latent, normalised_grads, neighbours, valid, steps, entry_steps)

    def project_features(self, features):
        return self.net.project_features(features)


def test_fresh_rows_are_found_from_the_step_counters():
    net = LatentSpy(random_net(NetConfig(width=32, depth=1, attn_dim=16, mlp_hidden=32, feature_dim=5)))
    splats, features = make_splats(), torch.randn(64, 5)
    opt = Learn2Splat(splats, net, seed=2, init_features=features)
    targets = targets_like(splats)
    run_steps(opt, splats, targets, 1)
    # counters 0, latents projected from features: kept, not drawn
    torch.testing.assert_close(net.seen[0], net.net.feature_proj(features).detach())

    latent = opt.state[splats["means"]]["latent"]
    latent[7] = 0.0  # a stepped row (counter 1) whose latent is zero is not fresh
    before = latent.clone()
    duplicate_like_gsplat(splats, opt, torch.arange(10))  # zero rows, counter 0: fresh
    run_steps(opt, splats, {k: torch.cat([t, t[:10]]) for k, t in targets.items()}, 1)
    assert torch.equal(net.seen[1][:64], before) and not net.seen[1][7].any()
    assert torch.equal(net.seen[1][64:], opt._fresh_latent(10, 1, torch.device("cpu")))


@pytest.mark.filterwarnings("ignore:Learn2Splat.*looks like an Adam learning rate:RuntimeWarning")  # echo net = Adam
def test_per_attribute_step_counters_match_adam_after_one_attribute_is_reset():
    """gsplat's reset_opa zeroes the opacities' moments and step counter only: Adam's bias correction
    restarts for that attribute alone."""
    lrs = {"means": 1e-2, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2, "sh0": 2.5e-3, "shN": 1.25e-4}
    ours, theirs = make_splats(), make_splats()
    targets = targets_like(ours)
    l2s = Learn2Splat([{"params": [p], "name": k, "lr": lrs[k]} for k, p in ours.items()], AdamEchoNet())
    adam = torch.optim.Adam([{"params": [p], "lr": lrs[k]} for k, p in theirs.items()], eps=1e-15)
    for i in range(6):
        if i == 3:
            for opt, p in ((l2s, ours["opacities"]), (adam, theirs["opacities"])):
                for key, value in opt.state[p].items():
                    opt.state[p][key] = torch.zeros_like(value)
        for splats, opt in ((ours, l2s), (theirs, adam)):
            run_steps(opt, splats, targets, 1)
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-5, atol=1e-6)
    assert l2s.state[ours["opacities"]]["gaussian_step"][0] == 3 and l2s.state[ours["means"]]["gaussian_step"][0] == 6


@pytest.mark.parametrize("partial", [False, True])
def test_in_place_and_functional_steps_agree(partial):
    """Deployment writes in place, meta-training builds new tensors: the same step either way."""
    net, splats = random_net(), make_splats()
    params = {k: p.detach() for k, p in splats.items()}
    generator = torch.Generator().manual_seed(0)
    grads = {k: torch.randn(p.shape, generator=generator) for k, p in params.items()}
    if partial:
        grads = {k: g * (torch.arange(64) % 3 > 0).view(-1, *(1,) * (g.ndim - 1)) for k, g in grads.items()}

    def fresh_state():
        zeros = {k: torch.zeros_like(p) for k, p in params.items()}
        return GaussianState(zeros, {k: z.clone() for k, z in zeros.items()}, {k: torch.zeros(64) for k in params},
                             torch.zeros(64, 32))

    def run(in_place):
        p, state = {k: v.clone() for k, v in params.items()}, fresh_state()
        applied = apply_learned_step(net, p, grads, state, active_rows(grads), in_place=in_place,
                                     fresh_latent=lambda n: torch.ones(n, 32))
        if in_place:
            assert all(applied.params[k] is p[k] for k in p) and applied.state.latent is state.latent
        else:
            assert torch.equal(p["means"], params["means"]) and not state.latent.any()  # inputs untouched
        return applied

    a, b = run(True), run(False)
    assert (a.active is None) != partial
    for k in params:
        assert torch.equal(a.params[k], b.params[k])
        assert torch.equal(a.state.exp_avg[k], b.state.exp_avg[k]) and torch.equal(a.state.gaussian_step[k], b.state.gaussian_step[k])
    assert torch.equal(a.state.latent, b.state.latent)


def test_autocast_policy_option():
    assert [autocast_policy(v) for v in (True, False, "bf16")] == ["auto", "fp32", "bf16"]
    with pytest.raises(ValueError, match="autocast must be one of"):
        Learn2Splat(make_splats(), random_net(), autocast="fp16")
    results = {}
    for policy in ("auto", "bf16"):  # on CPU, "auto" is fp32
        splats = make_splats()
        run_steps(Learn2Splat(splats, random_net(), autocast=policy), splats, targets_like(splats), 1)
        results[policy] = splats["means"].detach()
    start = make_splats()["means"].detach()
    torch.testing.assert_close(results["bf16"] - start, results["auto"] - start, rtol=0.05, atol=2e-4)
    assert not torch.equal(results["bf16"], results["auto"])


def test_a_decaying_bound_reads_each_attributes_own_step_count():
    """With frozen means (their counter stays 0) the other attributes' bounds still decay: every packed
    entry carries its own attribute's count, this step included, in the layout of ``pack``."""
    config = replace(TINY, update_rule="adam", multiplier_decay_steps=10.0)
    splats = {k: v.detach() for k, v in make_splats(6).items()}
    counts = {"means": 0.0, "scales": 4.0, "quats": 9.0, "opacities": 2.0, "sh0": 7.0, "shN": 5.0}
    state = GaussianState({k: torch.zeros_like(v) for k, v in splats.items()},
                          {k: torch.zeros_like(v) for k, v in splats.items()},
                          {k: torch.full((6,), c) for k, c in counts.items()}, torch.zeros(6, config.width))
    entry_steps = prepare_rows(config, splats, {k: torch.ones_like(v) for k, v in splats.items()}, state).entry_steps
    expected = torch.tensor([1.0] * 3 + [5.0] * 3 + [10.0] * 4 + [3.0] + ([8.0] + [6.0] * 15) * 3)
    assert torch.equal(entry_steps, expected.expand(6, -1))
    assert prepare_rows(TINY, splats, {k: torch.ones_like(v) for k, v in splats.items()}, state).entry_steps is None
