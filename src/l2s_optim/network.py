"""The Learn2Splat network: input projection, kNN point-transformer blocks, State Scale MLP and
Update MLP.

Per active Gaussian the network reads one row of ``2 * P + W`` channels: the packed raw
parameters (``P`` numbers, see :mod:`l2s_optim.step`), the latent state (``W``) and the
Adam-normalised gradients (``P``). It returns the new latent state and the parameter update
``delta`` (the optimizer subtracts ``lr * delta``).

Two update rules (``NetConfig.update_rule``):

- ``"direct"`` (released): the Update MLP predicts a direction ``d`` and a step length ``a``;
  ``delta = act(a) * d / (||d|| + 1e-8)``.
- ``"adam"`` (l2s-optim's bundled checkpoints): the Update MLP predicts one bounded log-multiplier
  per packed entry; ``delta = base_lr * exp(m * tanh(u)) * n`` with ``n`` the Adam-normalised gradient,
  ``base_lr`` gsplat's default Adam learning rate of that attribute and ``m = max_log_multiplier``.
  Each entry moves along Adam's direction by at most ``exp(m)`` times Adam's default step, so the
  learned part cannot run away on states far past the meta-training horizon; zero-initialised, the
  untrained network is exactly Adam with gsplat's defaults.

  With ``multiplier_decay_steps = T`` the upper bound shrinks with each entry's step count ``t`` (the
  Adam step count of its attribute): multipliers lie in ``[exp(-m), exp(m * T / (T + t))]``. Early
  steps may be ``exp(m)`` times Adam's; late ones at most Adam's own step, whatever the network
  predicts, so a network meta-trained on short horizons cannot make long runs unstable, while
  it can still shrink any step down to ``exp(-m)`` of Adam's.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from .gaussians import GSPLAT_LRS
from .recipe import Recipe


@dataclass(frozen=True)
class NetConfig:
    """Architecture and the conventions the weights were meta-trained with.

    Defaults are those of the authors' released joint model.
    """

    sh_degree: int = 3  # SH degree of the packed colour (P = 11 + 3 * (sh_degree + 1) ** 2)
    width: int = 256  # latent state and transformer width W
    depth: int = 4  # point-transformer blocks
    heads: int = 1  # attention heads
    attn_dim: int = 64  # q/k/v channels, all heads together
    mlp_hidden: int = 1024  # hidden width of each block's MLP
    k: int = 4  # neighbours per Gaussian, the Gaussian itself included
    feature_dim: int | None = None  # channels of feed-forward features (sparse setting), or None
    # one more input channel per Gaussian: its phase log1p(step count) / 10 (l2s-optim's meta-training;
    # the release has none)
    phase_feature: bool = False
    magnitude_activation: str = "relu"  # "relu" as released; "softplus" cannot die during meta-training
    update_rule: str = "direct"  # "direct" as released, or "adam" (see the module doc)
    # update_rule "adam": base lrs of means (normalised scene), scales, quats, opacities, sh0, shN
    adam_lrs: tuple[float, ...] = tuple(GSPLAT_LRS.values())
    max_log_multiplier: float = math.log(5.0)  # update_rule "adam": multipliers in [1/5, 5]
    # update_rule "adam": the upper bound decays as m * T / (T + steps), T this (see the module doc); None: fixed
    multiplier_decay_steps: float | None = None
    adam_beta1: float = 0.9  # moments behind the normalised-gradient features
    adam_beta2: float = 0.999
    adam_eps: float = 1e-15
    log_scale_min: float = -8.0  # clamps applied to the updated Gaussians
    log_scale_max: float = math.log(3.0)
    opacity_logit_min: float = -7.0
    opacity_logit_max: float = 7.0
    sh_min: float = -2.0
    sh_max: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"sh_degree must be in 0..3, got {self.sh_degree}")
        for name in ("width", "depth", "heads", "attn_dim", "mlp_hidden", "k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.attn_dim % self.heads:
            raise ValueError(f"attn_dim {self.attn_dim} is not divisible by heads {self.heads}")
        if self.magnitude_activation not in ("relu", "softplus"):
            raise ValueError(f"magnitude_activation must be 'relu' or 'softplus', got {self.magnitude_activation!r}")
        if self.update_rule not in ("direct", "adam"):
            raise ValueError(f"update_rule must be 'direct' or 'adam', got {self.update_rule!r}")
        if len(self.adam_lrs) != 6 or min(self.adam_lrs) <= 0:
            raise ValueError(f"adam_lrs must be 6 positive learning rates (means .. shN), got {self.adam_lrs}")
        object.__setattr__(self, "adam_lrs", tuple(float(v) for v in self.adam_lrs))  # JSON gives a list
        decay = self.multiplier_decay_steps
        if decay is not None and not (math.isfinite(decay) and decay > 0):
            raise ValueError(f"multiplier_decay_steps must be None or a finite number > 0, got {decay!r}")
        if decay is not None and self.update_rule != "adam":
            raise ValueError("multiplier_decay_steps bounds the 'adam' update rule's multipliers; "
                             f"this network's rule is {self.update_rule!r}")

    @property
    def packed_adam_lrs(self) -> Tensor:
        """[P] base learning rate of every packed entry (layout of :func:`l2s_optim.step.pack`)."""
        means, scales, quats, opacities, sh0, shn = self.adam_lrs
        sh = torch.tensor([sh0] + [shn] * (self.sh_coeffs - 1)).repeat(3)  # channel-major
        return torch.cat([torch.tensor([means] * 3 + [scales] * 3 + [quats] * 4 + [opacities]), sh])

    @property
    def sh_coeffs(self) -> int:
        return (self.sh_degree + 1) ** 2

    @property
    def param_dim(self) -> int:
        """P: means 3 + log-scales 3 + quaternion 4 + opacity logit 1 + SH 3 * sh_coeffs."""
        return 11 + 3 * self.sh_coeffs

    @property
    def input_dim(self) -> int:
        return 2 * self.param_dim + self.width + int(self.phase_feature)

    @classmethod
    def from_dict(cls, values: dict) -> NetConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown network config keys: {sorted(unknown)}")
        return cls(**values)


class NeighbourAttention(nn.Module):
    """Scaled dot-product attention of each Gaussian over its kNN list; scores in fp32.

    Keys and values of all neighbours are gathered in one contiguous [A,k,H,d] block and reduced
    with broadcast products (no per-row matmuls).
    """

    def __init__(self, width: int, attn_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * attn_dim, bias=False)
        self.proj = nn.Linear(attn_dim, width)

    def forward(self, x: Tensor, neighbours: Tensor, valid: Tensor) -> Tensor:
        """x [A,W]; neighbours [A,k] row indices into x; valid [A,k] bool (column 0 = self). Returns [A,W]."""
        q, kv = self.queries_keys_values(x)
        return self.attend(q, kv, neighbours, valid)

    def queries_keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Queries [B,D] and keys and values [B,2D] of B rows x [B,W] (D = attn_dim, all heads)."""
        q, kv = self.qkv(x).split([self.proj.in_features, 2 * self.proj.in_features], dim=-1)
        return q, kv

    def attend(self, q: Tensor, kv: Tensor, neighbours: Tensor, valid: Tensor) -> Tensor:
        """B query rows q [B,D] attend to their neighbours [B,k] (indices into the A rows of kv [A,2D]);
        valid [B,k] masks padded slots. Returns the projected output [B,W]."""
        b, k = neighbours.shape
        gathered = kv.index_select(0, neighbours.reshape(-1)).view(b, k, 2, self.heads, -1)
        key, value = gathered.unbind(2)  # [B,k,H,d] each
        q = q.float().view(b, 1, self.heads, -1)
        scores = (q * key.float()).sum(-1) * q.shape[-1] ** -0.5  # [B,k,H]
        scores = scores.masked_fill(~valid[:, :, None], float("-inf"))
        weights = scores.softmax(dim=1).to(value.dtype)
        out = (weights[..., None] * value).sum(1)  # [B,H,d]
        return self.proj(out.reshape(b, -1))


class FeedForward(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class PointBlock(nn.Module):
    """Pre-LayerNorm transformer block over kNN neighbourhoods."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width)
        self.attn = NeighbourAttention(config.width, config.attn_dim, config.heads)
        self.norm2 = nn.LayerNorm(config.width)
        self.mlp = FeedForward(config.width, config.mlp_hidden)

    def forward(self, x: Tensor, neighbours: Tensor, valid: Tensor) -> Tensor:
        """x [A,W]; neighbours, valid [A,k] (see :class:`NeighbourAttention`). Returns [A,W]."""
        x = x + self.attn(self.norm1(x), neighbours, valid)
        return x + self.mlp(self.norm2(x))

    def forward_chunked_(self, x: Tensor, neighbours: Tensor, valid: Tensor, chunk_size: int) -> Tensor:
        """:meth:`forward` written into ``x`` [A,W], ``chunk_size`` rows at a time (deployment, no autograd).

        Keys and values of every row are computed first, chunk by chunk, into one [A,2D] buffer; then each
        chunk's rows attend to them and run the MLP. Every row sees the same numbers as in :meth:`forward`;
        the working memory is the buffer plus one chunk's activations instead of every row's.
        """
        kv = None
        for rows in row_chunks(x.shape[0], chunk_size):
            _, kv_rows = self.attn.queries_keys_values(self.norm1(x[rows]))
            kv = kv_rows.new_empty(x.shape[0], kv_rows.shape[1]) if kv is None else kv
            kv[rows] = kv_rows
        for rows in row_chunks(x.shape[0], chunk_size):
            q, _ = self.attn.queries_keys_values(self.norm1(x[rows]))
            h = x[rows] + self.attn.attend(q, kv, neighbours[rows], valid[rows])
            x[rows] = h + self.mlp(self.norm2(h))
        return x


def row_chunks(n: int, chunk_size: int) -> list[slice]:
    """The fewest consecutive slices of at most ``chunk_size`` rows that cover ``range(n)``, of equal sizes
    (within one row): no small tail chunk, whose matrix products could take another kernel's rounding
    than the rest (on CPU, products of fewer than about 16 rows do)."""
    count = -(-n // chunk_size)
    bounds = [n * i // count for i in range(count + 1)]
    return [slice(start, stop) for start, stop in itertools.pairwise(bounds)]


def _config_from_json(value: dict | NetConfig) -> NetConfig:
    return value if isinstance(value, NetConfig) else NetConfig.from_dict(value)


HUB_LIBRARY = "l2s-optim"  # the Hub metadata of every card l2s-optim writes
HUB_TAGS = ("gaussian-splatting", "learned-optimizer")


class Learn2SplatNet(
    nn.Module,
    PyTorchModelHubMixin,
    library_name=HUB_LIBRARY,
    tags=list(HUB_TAGS),
    coders={NetConfig: (asdict, _config_from_json)},
):
    """The meta-trained network. ``save_pretrained``/``from_pretrained``/``push_to_hub`` write and
    read ``config.json`` + ``model.safetensors`` (Hugging Face Hub conventions); ``save_pretrained``
    also writes ``recipe.json``, the :class:`~l2s_optim.recipe.Recipe` in ``recipe`` (the training loop
    the weights were meta-trained for; ``Recipe()`` unless a loader set another), which
    :func:`l2s_optim.load_network` reads back."""

    def __init__(self, config: NetConfig | dict | None = None) -> None:
        super().__init__()
        self.config = NetConfig() if config is None else _config_from_json(config)
        self.recipe = Recipe()
        c = self.config
        self.input_proj = nn.Linear(c.input_dim, c.width)
        self.blocks = nn.ModuleList(PointBlock(c) for _ in range(c.depth))
        self.state_scale = nn.Sequential(
            nn.Linear(c.input_dim, c.input_dim // 2), nn.ReLU(), nn.Linear(c.input_dim // 2, 1), nn.ReLU()
        )
        outputs = c.param_dim + (1 if c.update_rule == "direct" else 0)
        self.update_mlp = nn.Sequential(nn.Linear(c.width, c.width), nn.GELU(), nn.Linear(c.width, outputs))
        self.register_buffer("packed_adam_lrs", c.packed_adam_lrs, persistent=False)
        self.feature_proj = nn.Linear(c.feature_dim, c.width) if c.feature_dim else None
        nn.init.ones_(self.state_scale[2].bias)
        nn.init.zeros_(self.update_mlp[2].weight)
        nn.init.zeros_(self.update_mlp[2].bias)
        if c.update_rule == "direct":  # the direction starts at zero; the step length at 1e-8 (relu) or 1e-3 (softplus)
            with torch.no_grad():
                self.update_mlp[2].bias[-1] = 1e-8 if c.magnitude_activation == "relu" else math.log(math.expm1(1e-3))

    def _save_pretrained(self, save_directory: Path) -> None:
        """The Hub mixin's weights file, and ``recipe.json`` beside it."""
        super()._save_pretrained(save_directory)
        self.recipe.save(save_directory)

    def step_multipliers(self, update_out: Tensor, entry_steps: Tensor | None = None) -> Tensor:
        """Update rule "adam": the multipliers of Adam's step, in [1/exp(m), exp(m)] (the upper bound
        decaying with ``config.multiplier_decay_steps``), from the Update MLP's output [A,P] and each
        entry's step count ``entry_steps`` [A,P] (this step included; needed only with a decay)."""
        m, decay = self.config.max_log_multiplier, self.config.multiplier_decay_steps
        u = torch.tanh(update_out)
        if decay is None:
            return torch.exp(m * u)
        if entry_steps is None:
            raise ValueError("this network's multiplier bound decays with the step count: pass entry_steps")
        upper = m * decay / (decay + entry_steps.float())
        return torch.exp(torch.where(u > 0, upper, m) * u)

    def project_features(self, features: Tensor) -> Tensor:
        """Initial latent state [N,W] from feed-forward features [N,feature_dim] (sparse setting)."""
        if self.feature_proj is None:
            raise ValueError("this checkpoint has no feature projection (feature_dim is None): "
                             "it cannot initialise the latent state from features")
        if features.ndim != 2 or features.shape[1] != self.config.feature_dim:
            raise ValueError(f"features must be [N, {self.config.feature_dim}], got {list(features.shape)}")
        return self.feature_proj(features)

    def forward(
        self, params: Tensor, latent: Tensor, normalised_grads: Tensor, neighbours: Tensor, valid: Tensor,
        steps: Tensor | None = None, entry_steps: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One learned update for A active Gaussians.

        Args:
            params: [A,P] packed raw parameters.
            latent: [A,W] latent state.
            normalised_grads: [A,P] Adam-normalised gradients, packed like ``params``.
            neighbours: [A,k] indices into the A rows (column 0 is the Gaussian itself).
            valid: [A,k] bool, False for padded neighbour slots.
            steps: [A] steps taken by each Gaussian, this one included; required when
                ``config.phase_feature`` (the network then reads ``log1p(steps) / 10``), else ignored.
            entry_steps: [A,P] steps of each packed entry's attribute, this one included; required when
                ``config.multiplier_decay_steps`` is set, else ignored.

        Returns:
            delta [A,P] in fp32 (parameters move by ``-lr * delta``) and the new latent state [A,W].
        """
        x, scale = self.encode(params, latent, normalised_grads, steps)
        for block in self.blocks:
            x = block(x, neighbours, valid)
        return self.decode(x, scale, normalised_grads, entry_steps), x.float()

    def encode(
        self, params: Tensor, latent: Tensor, normalised_grads: Tensor, steps: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The part of :meth:`forward` before the blocks, row by row: the projected input [B,W] and the
        State Scale MLP's scale [B,1] of B rows (arguments as in :meth:`forward`)."""
        inputs = [params, latent, normalised_grads]
        if self.config.phase_feature:
            if steps is None:
                raise ValueError("this network reads each Gaussian's step count (phase_feature): pass steps")
            inputs.append(torch.log1p(steps.float())[:, None].to(params.dtype) / 10)
        x_in = torch.cat(inputs, dim=-1)
        return self.input_proj(x_in), self.state_scale(x_in.detach())

    def decode(self, x: Tensor, scale: Tensor, normalised_grads: Tensor, entry_steps: Tensor | None = None) -> Tensor:
        """The part of :meth:`forward` after the blocks, row by row: delta [B,P] (fp32) of B rows from the
        blocks' output x [B,W], the scale [B,1] of :meth:`encode`, the normalised gradients [B,P] and the
        entries' step counts [B,P] (see :meth:`forward`)."""
        p = self.config.param_dim
        out = self.update_mlp(scale * x).float()
        if self.config.update_rule == "adam":
            return self.packed_adam_lrs * self.step_multipliers(out, entry_steps) * normalised_grads.float()
        direction, magnitude = out[:, :p], out[:, p:]
        length = F.relu(magnitude) if self.config.magnitude_activation == "relu" else F.softplus(magnitude)
        return length * direction / (direction.norm(dim=-1, keepdim=True) + 1e-8)
