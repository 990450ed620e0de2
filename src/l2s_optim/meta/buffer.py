"""The checkpoint buffer of partially optimised scene states (Learn2Splat's meta-training)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class SceneState:
    """One scene in the middle of its optimisation: Gaussians and the optimizer's per-Gaussian state.

    Every dict maps a role (``means``, ``scales``, ...) to an [N,...] tensor; ``gaussian_step`` holds the
    per-Gaussian Adam step counters, ``latent`` [N,W] the network's latent state (fresh rows: see
    ``l2s_optim.step.GaussianState``).
    """

    scene: int  # index of the scene (and its views) in the trainer's scene list
    params: dict[str, Tensor]
    exp_avg: dict[str, Tensor]
    exp_avg_sq: dict[str, Tensor]
    gaussian_step: dict[str, Tensor]
    latent: Tensor
    steps: int = 0  # learned-optimizer steps taken since the initialisation

    def detached(self, device: torch.device | str | None = None) -> SceneState:
        def move(t: Tensor) -> Tensor:
            return t.detach().to(device) if device is not None else t.detach()

        return SceneState(self.scene, *({k: move(v) for k, v in getattr(self, f.name).items()}
                                        for f in fields(self)[1:5]), move(self.latent), self.steps)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class CheckpointBuffer:
    """Holds up to ``capacity`` scene states on CPU. A state is drawn (and removed) only when the
    buffer is full, with probability ``p_sample``; after the meta-iteration and rollout, a new state
    is pushed with probability ``p_insert``, a drawn one re-inserted with ``p_reinsert``; the oldest
    is evicted beyond capacity."""

    def __init__(self, capacity: int = 20, p_sample: float = 0.7, p_insert: float = 0.7, p_reinsert: float = 0.99,
                 seed: int = 0) -> None:
        self.capacity, self.p_sample, self.p_insert, self.p_reinsert = capacity, p_sample, p_insert, p_reinsert
        self.states: list[SceneState] = []
        self.generator = torch.Generator().manual_seed(seed)

    def _coin(self, p: float) -> bool:
        return torch.rand((), generator=self.generator).item() < p

    def sample(self) -> SceneState | None:
        if len(self.states) < self.capacity or not self._coin(self.p_sample):
            return None
        index = int(torch.randint(len(self.states), (), generator=self.generator))
        return self.states.pop(index)

    def push(self, state: SceneState, was_sampled: bool) -> bool:
        if not self._coin(self.p_reinsert if was_sampled else self.p_insert):
            return False
        self.states.append(state.detached("cpu"))
        del self.states[: max(0, len(self.states) - self.capacity)]
        return True

    def state_dict(self) -> dict:
        return {"states": [s.to_dict() for s in self.states], "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.states = [SceneState(**s) for s in state["states"]]
        self.generator.set_state(state["generator"])
