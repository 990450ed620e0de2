"""l2s-optim: Learn2Splat, a learned optimizer for 3D Gaussian Splatting, as a drop-in for Adam."""

from .convert import convert_release_checkpoint
from .hub import load_network
from .network import Learn2SplatNet, NetConfig
from .optimizer import Learn2Splat
from .recipe import Recipe
from .step import GaussianState, apply_learned_step

__all__ = ["GaussianState", "Learn2Splat", "Learn2SplatNet", "NetConfig", "Recipe", "apply_learned_step",
           "convert_release_checkpoint", "load_network"]
__version__ = "0.1.0"
