"""Run in a venv holding only l2s-optim's core dependencies (see .ci/run): the optimizer imports and
steps, and none of the [bench] extra's packages was needed or installed."""

import importlib.util

import torch

import l2s_optim
from l2s_optim import Learn2Splat

missing = [name for name in ("PIL", "matplotlib", "scipy") if importlib.util.find_spec(name) is None]
assert missing == ["PIL", "matplotlib", "scipy"], f"bench extra packages present in the core-only venv: {missing}"
torch.manual_seed(0)
n = 64
splats = torch.nn.ParameterDict({
    "means": torch.randn(n, 3), "scales": torch.full((n, 3), -3.0), "quats": torch.randn(n, 4),
    "opacities": torch.zeros(n), "sh0": torch.rand(n, 1, 3), "shN": torch.zeros(n, 15, 3),
})
optimizer = Learn2Splat(splats)  # the bundled dense network
before = {k: p.detach().clone() for k, p in splats.items()}
sum((p * torch.randn_like(p)).sum() for p in splats.values()).backward()
optimizer.step()
moved = [k for k in splats if not torch.equal(splats[k], before[k])]
assert moved == list(splats), f"attributes not stepped: {set(splats) - set(moved)}"
print(f"core-only install OK: l2s_optim {l2s_optim.__version__ if hasattr(l2s_optim, '__version__') else ''} "
      f"stepped {n} Gaussians without {', '.join(missing)}")
