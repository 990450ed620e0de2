"""Meta-training of the Learn2Splat network (the ``meta`` extra): checkpoint buffer, rollouts,
meta-losses and the ``l2s-meta-train`` trainer."""

from .buffer import CheckpointBuffer, SceneState
from .train import MetaConfig, MetaTrainer, main

__all__ = ["CheckpointBuffer", "MetaConfig", "MetaTrainer", "SceneState", "main"]
