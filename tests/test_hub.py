import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import TINY, random_net
from release_fixture import PREFIX, release_state

from l2s_optim import Learn2SplatNet, load_network
from l2s_optim.convert import convert_main, convert_release_checkpoint
from l2s_optim.hub import RELEASE_FILE, RELEASE_REPO, bundled_path
from l2s_optim.recipe import RECIPE_FILE, RELEASE_RECIPE, Recipe


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_local_folder_round_trip(tmp_path):
    net = random_net()
    net.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["width"] == TINY.width
    for spec in (tmp_path, str(tmp_path), tmp_path / "model.safetensors"):
        loaded = load_network(spec)
        assert loaded.config == TINY and same_weights(loaded, net)


def test_corrupt_and_mismatched_folders(tmp_path):
    random_net().save_pretrained(tmp_path / "ok")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    (tmp_path / "corrupt" / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="corrupt or mismatched"):
        load_network(tmp_path / "corrupt")
    config = json.loads((tmp_path / "ok" / "config.json").read_text())
    (tmp_path / "ok" / "config.json").write_text(json.dumps({**config, "width": 64}))
    with pytest.raises(ValueError, match="corrupt or mismatched"):
        load_network(tmp_path / "ok")
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="missing"):
        load_network(tmp_path / "half")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_network("no-such-thing")


@pytest.mark.parametrize("name", ["dense", "sparse"])
def test_bundled_weights_ship_and_load_offline(name, monkeypatch):
    monkeypatch.delenv("L2S_OPTIM_HUB_REPO", raising=False)
    folder = bundled_path(name)
    assert {"config.json", "model.safetensors", "README.md"} <= {f.name for f in folder.iterdir()}
    net = load_network(name)
    assert net.config.update_rule == "adam" and net.config.sh_degree == 3 and net.config.feature_dim is None
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert net.update_mlp[2].weight.abs().sum() > 0  # meta-trained, not the Adam-equivalent initialisation
    assert f"Setting: {name}." in (folder / "README.md").read_text()


def test_missing_bundled_weights_fail_clearly(no_bundled_weights):
    for name in ("dense", "sparse"):
        with pytest.raises(FileNotFoundError, match=f"no bundled '{name}' weights"):
            load_network(name)


def write_release_ckpt(path, **kw):
    torch.save({"state_dict": release_state(**kw), "epoch": 7, "global_step": 150000}, path)
    return path


def test_converter_maps_every_key_of_the_released_layout(tmp_path):
    state = release_state()
    torch.save({"state_dict": state, "global_step": 150000}, tmp_path / "joint.ckpt")
    net = convert_release_checkpoint(tmp_path / "joint.ckpt")
    c = net.config
    assert (c.sh_degree, c.width, c.depth, c.attn_dim, c.mlp_hidden, c.feature_dim, c.k) == (3, 256, 4, 64, 1024, 256, 4)
    ours = net.state_dict()
    assert torch.equal(ours["input_proj.weight"], state[PREFIX + "point_transformer.0.linear.weight"])
    assert torch.equal(ours["blocks.3.attn.qkv.weight"], state[PREFIX + "point_transformer.1.blocks.3.attn.qkv.weight"])
    assert torch.equal(ours["update_mlp.2.bias"], state[PREFIX + "delta_head.2.bias"])
    assert torch.equal(ours["feature_proj.weight"], state[PREFIX + "state_proj.weight"][:, :, 0, 0])
    n_release = sum(v.numel() for k, v in state.items() if k.startswith(PREFIX))
    assert sum(v.numel() for v in ours.values()) == n_release == 2_617_061 + 256 * 257


def test_converter_accepts_old_names(tmp_path):
    path = write_release_ckpt(tmp_path / "old.ckpt", width=32, param_dim=59, depth=1, attn=16, hidden=32,
                              feature_dim=None, transformer="update_module", head="update_head")
    assert convert_release_checkpoint(path).config.width == 32


def test_converter_rejects_missing_unexpected_and_foreign_keys(tmp_path):
    small = {"width": 32, "param_dim": 59, "depth": 1, "attn": 16, "hidden": 32, "feature_dim": None}
    state = release_state(**small)
    del state[PREFIX + "delta_head.0.bias"]
    torch.save({"state_dict": state}, tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="missing.*update_mlp.0.bias"):
        convert_release_checkpoint(tmp_path / "missing.ckpt")
    state = release_state(**small)
    state[PREFIX + "time_embedding.weight"] = torch.zeros(3)
    torch.save({"state_dict": state}, tmp_path / "extra.ckpt")
    with pytest.raises(ValueError, match="unexpected key.*time_embedding"):
        convert_release_checkpoint(tmp_path / "extra.ckpt")
    torch.save({"state_dict": {"model.weight": torch.zeros(2)}}, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="no Learn2Splat optimizer weights"):
        convert_release_checkpoint(tmp_path / "foreign.ckpt")
    (tmp_path / "garbage.ckpt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="cannot read|refuses"):
        convert_release_checkpoint(tmp_path / "garbage.ckpt")


class NotATensor:
    pass


def test_converter_never_unpickles_without_consent(tmp_path):
    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": release_state(width=32, depth=1, attn=16, hidden=32, feature_dim=None),
                "hyper_parameters": NotATensor()}, path)
    with pytest.raises(ValueError, match="--trust-pickle"):
        convert_release_checkpoint(path)
    assert convert_release_checkpoint(path, trust_pickle=True).config.width == 32


def test_convert_cli_writes_our_format(tmp_path, capsys):
    path = write_release_ckpt(tmp_path / "r.ckpt", width=32, depth=1, attn=16, hidden=32, feature_dim=8)
    convert_main([str(path), str(tmp_path / "out")])
    assert "model.safetensors" in capsys.readouterr().out
    assert same_weights(load_network(tmp_path / "out"), convert_release_checkpoint(path))
    assert same_weights(load_network(path), convert_release_checkpoint(path))  # a .ckpt loads directly too


def fill_hf_cache(cache: Path, repo_id: str, files: dict[str, Path]) -> None:
    """Lay out files as huggingface_hub's cache would after a download."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for name, src in files.items():
        dst = repo / "snapshots" / commit / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())


def run_offline(cache: Path, code: str, **env) -> str:
    environment = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", **env}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environment,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_hub_repo_ids_load_from_offline_cache(tmp_path):
    net = random_net()
    net.save_pretrained(tmp_path / "ours")
    release = write_release_ckpt(tmp_path / "r.ckpt", width=32, depth=1, attn=16, hidden=32, feature_dim=None)
    cache = tmp_path / "cache"
    fill_hf_cache(cache, "acme/l2s-tiny", {"config.json": tmp_path / "ours" / "config.json",
                                          "model.safetensors": tmp_path / "ours" / "model.safetensors"})
    fill_hf_cache(cache, RELEASE_REPO, {RELEASE_FILE: release})
    fill_hf_cache(cache, "acme/bundle", {"dense/config.json": tmp_path / "ours" / "config.json",
                                        "dense/model.safetensors": tmp_path / "ours" / "model.safetensors"})
    out = run_offline(cache, f"""
        from l2s_optim import load_network
        print(load_network("acme/l2s-tiny").config.width)
        print(load_network("{RELEASE_REPO}").config.width)
        print(load_network("dense").config.width)
        try:
            load_network("acme/not-cached")
        except Exception as err:
            print(type(err).__name__)
    """, L2S_OPTIM_HUB_REPO="acme/bundle")
    assert out.split() == ["32", "32", "32", "LocalEntryNotFoundError"]


def test_configured_but_unreachable_hub_repo_falls_back_with_reason(tmp_path):
    out = run_offline(tmp_path, """
        from pathlib import Path
        import l2s_optim.hub
        from l2s_optim import load_network
        l2s_optim.hub.bundled_path = lambda name: Path("/nonexistent") / name  # as if none shipped
        try:
            load_network("sparse")
        except FileNotFoundError as err:
            print(err)
    """, L2S_OPTIM_HUB_REPO="acme/absent")
    assert "no bundled 'sparse' weights" in out and "acme/absent" in out


def test_hub_mixin_round_trip(tmp_path):
    """huggingface_hub's mixin: save_pretrained writes the config (through NetConfig's coder), the weights and
    our recipe.json beside them; from_pretrained restores the config and weights."""
    net = random_net()  # TINY, not the default config
    net.recipe = RELEASE_RECIPE
    net.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors", RECIPE_FILE} <= {f.name for f in tmp_path.iterdir()}
    assert Recipe.load(tmp_path) == RELEASE_RECIPE
    loaded = Learn2SplatNet.from_pretrained(tmp_path)
    assert type(loaded) is Learn2SplatNet and loaded.config == TINY and same_weights(loaded, net)


@pytest.mark.parametrize("setting", ["dense", "sparse"])
def test_bundled_model_cards_carry_hub_metadata_and_no_developer_paths(setting):
    from importlib.resources import files

    from huggingface_hub import ModelCard

    card = ModelCard.load(files("l2s_optim") / "weights" / setting / "README.md")
    assert card.data.library_name == "l2s-optim" and card.data.license == "mit"
    assert "learned-optimizer" in card.data.tags and "arxiv.org/abs/2605.15760" in card.text
    assert "../shared" not in card.content and f"Setting: {setting}" in card.text
