"""l2s-optim: Learn2Splat, a learned optimizer for 3D Gaussian Splatting, as a drop-in for Adam."""

from .hub import convert_release_checkpoint, load_network
from .knn import knn
from .network import Learn2SplatNet, NetConfig
from .optimizer import Learn2Splat
from .recipe import Recipe

__all__ = ["Learn2Splat", "Learn2SplatNet", "NetConfig", "Recipe", "convert_release_checkpoint", "knn", "load_network"]
__version__ = "0.1.0"
