import math
from dataclasses import replace

import pytest
import torch
from conftest import TINY, make_splats, quadratic_loss, random_net, targets_like
from release_fixture import release_forward, release_state

from l2s_optim import Learn2Splat, Learn2SplatNet, NetConfig
from l2s_optim.convert import release_state_to_ours
from l2s_optim.gaussians import ROLES
from l2s_optim.network import NeighbourAttention


def inputs(config, a=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = config.param_dim
    neighbours = torch.cat([torch.arange(a)[:, None], torch.randint(0, a, (a, config.k - 1), generator=g)], 1)
    return (torch.randn(a, p, generator=g), torch.randn(a, config.width, generator=g),
            torch.randn(a, p, generator=g), neighbours, torch.ones(a, config.k, dtype=torch.bool))


def test_default_config_is_the_released_size():
    net = Learn2SplatNet()
    assert net.config.param_dim == 59 and net.config.input_dim == 374
    assert sum(p.numel() for p in net.parameters()) == 2_617_061
    assert net.state_scale[0].out_features == 187 and net.update_mlp[2].out_features == 60


def test_fresh_network_predicts_zero_update_and_unit_state_scale():
    net = Learn2SplatNet(TINY)
    x = inputs(TINY)
    delta, latent = net(*x)
    assert torch.equal(delta, torch.zeros_like(delta)) and latent.shape == (50, TINY.width)
    assert torch.equal(net.state_scale[2].bias, torch.ones(1))


def test_update_length_is_relu_of_magnitude():
    net = random_net()
    with torch.no_grad():
        net.update_mlp[2].weight[-1].normal_(0, 0.5)
    params, latent, grads, neighbours, valid = inputs(TINY)
    delta, _ = net(params, latent, grads, neighbours, valid)
    x_in = torch.cat([params, latent, grads], 1)
    h = net.input_proj(x_in)
    for block in net.blocks:
        h = block(h, neighbours, valid)
    magnitude = net.update_mlp(net.state_scale(x_in) * h)[:, -1]
    torch.testing.assert_close(delta.norm(dim=1), torch.relu(magnitude), rtol=1e-4, atol=1e-7)
    assert (magnitude < 0).any() and (magnitude > 0).any()


def test_masked_neighbours_do_not_contribute():
    net = random_net()
    params, latent, grads, neighbours, valid = inputs(TINY)
    valid[:, 2:] = False
    base, _ = net(params, latent, grads, neighbours, valid)
    other = neighbours.clone()
    other[:, 2:] = (neighbours[:, 2:] + 7) % 50
    moved, _ = net(params, latent, grads, other, valid)
    torch.testing.assert_close(base, moved)


def test_permutation_equivariance():
    net = random_net()
    params, latent, grads, neighbours, valid = inputs(TINY)
    perm = torch.randperm(50)
    inverse = torch.argsort(perm)
    delta, state = net(params, latent, grads, neighbours, valid)
    delta_p, state_p = net(params[perm], latent[perm], grads[perm], inverse[neighbours[perm]], valid)
    torch.testing.assert_close(delta_p, delta[perm])
    torch.testing.assert_close(state_p, state[perm])


def test_matches_release_reference_forward():
    """Converted weights + our module == the published architecture computed by hand."""
    state = release_state(width=32, param_dim=23, depth=2, attn=16, hidden=64, feature_dim=None)
    ours, config = release_state_to_ours(state)
    net = Learn2SplatNet(config)
    net.load_state_dict(ours)
    assert config == NetConfig(sh_degree=1, width=32, depth=2, attn_dim=16, mlp_hidden=64)
    x = inputs(config)
    delta, latent = net(*x)
    ref_delta, ref_latent = release_forward(state, *x[:4], depth=2)
    torch.testing.assert_close(delta, ref_delta, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(latent, ref_latent, rtol=1e-5, atol=1e-5)
    assert ref_delta.abs().max() > 1e-3  # the comparison is not between zeros


def test_multi_head_attention_attends_per_head():
    """Four heads over the same weights give another update than one head: the network uses its config's heads."""
    config = NetConfig(width=32, depth=1, heads=4, attn_dim=32, mlp_hidden=32, k=6)
    net = random_net(config)
    one_head = Learn2SplatNet(replace(config, heads=1))
    one_head.load_state_dict(net.state_dict())
    x = inputs(config)
    delta, _ = net(*x)
    assert delta.shape == (50, config.param_dim) and torch.isfinite(delta).all()
    assert (delta - one_head(*x)[0]).abs().max() > 1e-4


ADAM_RULE = replace(TINY, update_rule="adam")


def test_adam_rule_untrained_is_adam_at_gsplat_default_lrs():
    ours, theirs = make_splats(), make_splats()
    targets = targets_like(ours)
    l2s = Learn2Splat(ours, Learn2SplatNet(ADAM_RULE))
    lrs = dict(zip(ROLES, ADAM_RULE.adam_lrs))
    adam = torch.optim.Adam([{"params": [p], "lr": lrs[k]} for k, p in theirs.items()], eps=1e-15)
    for _ in range(5):
        for splats, opt in ((ours, l2s), (theirs, adam)):
            opt.zero_grad()
            quadratic_loss(splats, targets).backward()
            opt.step()
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-5, atol=1e-7)
    assert not torch.equal(ours["means"], make_splats()["means"])


def test_adam_rule_moves_each_entry_along_adam_by_a_bounded_multiplier():
    net = Learn2SplatNet(ADAM_RULE)
    assert net.update_mlp[2].out_features == ADAM_RULE.param_dim  # no step-length output
    with torch.no_grad():
        net.update_mlp[2].weight.normal_(0.0, 1.0)
    params, latent, grads, neighbours, valid = inputs(ADAM_RULE)
    delta, _ = net(params, latent, grads, neighbours, valid)
    ratio = delta / (ADAM_RULE.packed_adam_lrs * grads)
    bound = math.exp(ADAM_RULE.max_log_multiplier)
    assert ratio.min() >= 1 / bound * (1 - 1e-5) and ratio.max() <= bound * (1 + 1e-5)
    assert ratio.min() < 0.5 and ratio.max() > 2.0  # the multipliers are learned, not fixed
    lrs = ADAM_RULE.packed_adam_lrs  # layout of step.pack: means, scales, quats (xyzw), opacity, SH channel-major
    assert lrs[:3].eq(1.6e-4).all() and lrs[10] == 5e-2 and lrs[11] == lrs[11 + 16] == 2.5e-3 and lrs[12] == 2.5e-3 / 20


DECAYING = replace(ADAM_RULE, multiplier_decay_steps=10.0)


def test_decaying_bound_shrinks_only_the_upper_multiplier_with_each_entrys_step_count():
    net = Learn2SplatNet(DECAYING)
    with torch.no_grad():
        net.update_mlp[2].weight.normal_(0.0, 3.0)  # saturates tanh: multipliers reach both bounds
    params, latent, grads, neighbours, valid = inputs(DECAYING, a=400)
    m, t = DECAYING.max_log_multiplier, DECAYING.multiplier_decay_steps
    entry_steps = torch.tensor([1.0, 10.0, 90.0, 1e6]).repeat_interleave(100)[:, None].expand(-1, DECAYING.param_dim)
    delta, _ = net(params, latent, grads, neighbours, valid, entry_steps=entry_steps)
    ratio = (delta / (DECAYING.packed_adam_lrs * grads)).view(4, 100, -1)
    for i, steps in enumerate([1.0, 10.0, 90.0, 1e6]):
        upper = math.exp(m * t / (t + steps))
        assert ratio[i].max() <= upper * (1 + 1e-5) and ratio[i].max() > 0.9 * upper  # the bound, and reached
        assert ratio[i].min() >= math.exp(-m) * (1 - 1e-5) and ratio[i].min() < 1.1 * math.exp(-m)  # lower bound fixed
    with pytest.raises(ValueError, match="entry_steps"):
        net(params, latent, grads, neighbours, valid)
    with pytest.raises(ValueError, match="multiplier_decay_steps"):
        replace(ADAM_RULE, multiplier_decay_steps=0.0)
    with pytest.raises(ValueError, match="multiplier_decay_steps"):
        replace(TINY, multiplier_decay_steps=10.0)  # the direct rule has no multipliers


def test_adam_rule_config_round_trips_and_rejects_nonsense(tmp_path):
    Learn2SplatNet(ADAM_RULE).save_pretrained(tmp_path)
    assert Learn2SplatNet.from_pretrained(tmp_path).config == ADAM_RULE
    for bad in ({"update_rule": "sgd"}, {"adam_lrs": (1.0, 1.0)}, {"adam_lrs": (1.0, 1.0, 1.0, 1.0, 1.0, 0.0)}):
        try:
            NetConfig(**bad)
        except ValueError as error:
            assert next(iter(bad)) in str(error)
        else:
            raise AssertionError(f"{bad} accepted")


def test_attention_equals_a_naive_loop_over_rows():
    """The batched gather + broadcast reduction == attention written row by row, head by head."""
    torch.manual_seed(0)
    attn = NeighbourAttention(width=24, attn_dim=16, heads=4)
    a, k, d = 30, 5, 4
    x = torch.randn(a, 24)
    neighbours = torch.cat([torch.arange(a)[:, None], torch.randint(0, a, (a, k - 1))], 1)
    valid = torch.rand(a, k) > 0.3
    valid[:, 0] = True
    q, key, value = attn.qkv(x).chunk(3, dim=-1)
    rows = []
    for i in range(a):
        heads = []
        for h in range(4):
            part = slice(h * d, (h + 1) * d)
            seen = [j for j, ok in zip(neighbours[i].tolist(), valid[i].tolist()) if ok]
            weights = torch.stack([q[i, part] @ key[j, part] for j in seen]).div(d**0.5).softmax(0)
            heads.append(sum(w * value[j, part] for w, j in zip(weights, seen)))
        rows.append(torch.cat(heads))
    torch.testing.assert_close(attn(x, neighbours, valid), attn.proj(torch.stack(rows)), rtol=1e-5, atol=1e-6)


def test_phase_feature_reads_log_step_counts_and_is_required_when_configured():
    config = replace(ADAM_RULE, phase_feature=True)
    assert config.input_dim == ADAM_RULE.input_dim + 1
    torch.manual_seed(0)
    net = Learn2SplatNet(config)
    with torch.no_grad():
        net.update_mlp[2].weight.normal_(0.0, 1.0)
    x = inputs(config)
    with pytest.raises(ValueError, match="pass steps"):
        net(*x)
    early, _ = net(*x, steps=torch.ones(50))
    late, _ = net(*x, steps=torch.full((50,), 1000.0))
    assert not torch.allclose(early, late)  # the same Gaussian is updated differently late on
    # the extra channel is log1p(steps) / 10: zeroing its input weight removes the dependence
    with torch.no_grad():
        net.input_proj.weight[:, -1] = 0
        net.state_scale[0].weight[:, -1] = 0
    torch.testing.assert_close(net(*x, steps=torch.ones(50))[0], net(*x, steps=torch.full((50,), 1000.0))[0])
