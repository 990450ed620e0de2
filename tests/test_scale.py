"""Memory at scale: the network run in chunks of Gaussians gives the unchunked step's result while no
activation holds more than a chunk of rows."""

import copy
import itertools
from dataclasses import replace

import pytest
import torch
from conftest import TINY, duplicate_like_gsplat, make_splats, quadratic_loss, random_net, targets_like
from torch import nn

from l2s_optim import Learn2Splat
from l2s_optim.network import PointBlock, row_chunks


def test_row_chunks_cover_the_rows_in_balanced_chunks():
    assert row_chunks(10, 10) == [slice(0, 10)]
    chunks = row_chunks(300, 64)
    assert [c.stop - c.start for c in chunks] == [60] * 5  # no small tail chunk
    for n, size in ((1, 7), (65, 64), (1000, 7)):
        chunks = row_chunks(n, size)
        assert chunks[0].start == 0 and chunks[-1].stop == n
        assert all(a.stop == b.start for a, b in itertools.pairwise(chunks))
        assert len(chunks) == -(-n // size) and max(c.stop - c.start for c in chunks) <= size


def run(net, chunk_size, autocast):
    """Four steps with unseen Gaussians, and new (fresh) ones appended after the second step."""
    splats = make_splats(60)
    opt = Learn2Splat(splats, net, chunk_size=chunk_size, autocast=autocast)
    for step in range(4):
        if step == 2:
            duplicate_like_gsplat(splats, opt, torch.arange(0, 60, 3))
        targets = targets_like(splats, seed=step)
        for k in targets:  # every fifth Gaussian unseen this step
            targets[k][step::5] = splats[k].detach()[step::5]
        opt.zero_grad()
        quadratic_loss(splats, targets).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in splats.items()}, copy.deepcopy(opt.state_dict()["state"])


@pytest.mark.parametrize("config", [TINY, replace(TINY, update_rule="adam"),
                                    replace(TINY, update_rule="adam", phase_feature=True),
                                    replace(TINY, update_rule="adam", multiplier_decay_steps=2.0)],
                         ids=["direct", "adam", "phase", "decay"])
@pytest.mark.parametrize("autocast", ["fp32", "bf16"])
def test_chunked_steps_equal_unchunked_steps(config, autocast, monkeypatch):
    net = random_net(config)
    chunked_calls = []
    real = PointBlock.forward_chunked_
    monkeypatch.setattr(PointBlock, "forward_chunked_", lambda *a: chunked_calls.append(a[4]) or real(*a))
    params, state = run(net, None, autocast)
    assert not chunked_calls
    chunked_params, chunked_state = run(net, 7, autocast)
    assert chunked_calls and set(chunked_calls) == {7}  # the chunked path ran, with the given chunk size
    for k, v in params.items():
        torch.testing.assert_close(chunked_params[k], v, rtol=0, atol=1e-6)
    for key, rows in state.items():
        for name, value in rows.items():
            torch.testing.assert_close(chunked_state[key][name], value, rtol=0, atol=1e-6)


@pytest.mark.parametrize("chunk_size, expected", [(64, 64), (None, 300)])
def test_no_network_activation_holds_more_rows_than_a_chunk(chunk_size, expected):
    net = random_net(replace(TINY, update_rule="adam"))
    rows = []
    for module in net.modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(lambda mod, inputs, out: rows.append(inputs[0].shape[0]))
    splats = make_splats(300)
    opt = Learn2Splat(splats, net, chunk_size=chunk_size)
    quadratic_loss(splats, targets_like(splats)).backward()
    opt.step()
    assert max(rows) <= expected and (chunk_size is not None or max(rows) == 300)


def test_chunk_size_is_checked():
    with pytest.raises(ValueError, match="chunk_size"):
        Learn2Splat(make_splats(), random_net(), chunk_size=0)
