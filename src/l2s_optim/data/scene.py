"""The scene container every loader returns."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass
class Scene:
    """Posed images of one scene, in gsplat's camera conventions.

    images: [V,H,W,3] float in [0,1] (RGBA sources already composited onto ``background``).
    viewmats: [V,4,4] world-to-camera, OpenCV axes (x right, y down, z forward).
    Ks: [V,3,3] pinhole intrinsics in pixels of these images (distortion already removed).
    points, point_colors: [P,3] SfM points and their colours in [0,1], or None.
    depths: [V,H,W] z-depth per pixel (0 = unknown), or None.
    test: [V] bool, the held-out evaluation views.
    """

    images: Tensor
    viewmats: Tensor
    Ks: Tensor
    names: list[str]
    test: Tensor
    points: Tensor | None = None
    point_colors: Tensor | None = None
    depths: Tensor | None = None
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        v = self.images.shape[0]
        if v == 0:
            raise ValueError("scene has no images")
        if self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be [V,H,W,3], got {list(self.images.shape)}")
        if self.viewmats.shape != (v, 4, 4) or self.Ks.shape != (v, 3, 3) or self.test.shape != (v,):
            raise ValueError(f"need viewmats [V,4,4], Ks [V,3,3] and test [V] for V={v} images")
        if self.points is not None and (self.points.ndim != 2 or self.points.shape[1] != 3 or len(self.points) == 0):
            raise ValueError(f"points must be a non-empty [P,3], got {list(self.points.shape)}")

    @property
    def height(self) -> int:
        return self.images.shape[1]

    @property
    def width(self) -> int:
        return self.images.shape[2]

    @property
    def camera_centers(self) -> Tensor:
        return torch.linalg.inv(self.viewmats)[:, :3, 3]

    @property
    def focus(self) -> Tensor:
        """[3] the point nearest to every camera's optical axis (least squares): what the views look at."""
        forward = self.viewmats[:, 2, :3]  # camera z axes in world coordinates
        projector = torch.eye(3, device=forward.device) - forward[:, :, None] * forward[:, None, :]  # [V,3,3]
        rhs = (projector @ self.camera_centers[:, :, None]).sum(0)
        return torch.linalg.lstsq(projector.sum(0), rhs).solution[:, 0]

    def to(self, device: torch.device | str) -> Scene:
        """Images and cameras on ``device`` (points and depths stay where they are, for initialisation)."""
        return replace(self, images=self.images.to(device), viewmats=self.viewmats.to(device), Ks=self.Ks.to(device))

    def subset(self, mask: Tensor) -> Scene:
        """The views selected by a [V] bool mask (points are shared)."""
        pick = mask.nonzero().squeeze(1)
        return replace(
            self, images=self.images[pick], viewmats=self.viewmats[pick], Ks=self.Ks[pick],
            names=[self.names[i] for i in pick.tolist()], test=self.test[pick],
            depths=None if self.depths is None else self.depths[pick],
        )

    @property
    def train_views(self) -> Scene:
        return self.subset(~self.test)

    @property
    def test_views(self) -> Scene:
        return self.subset(self.test)

    def normalised(self) -> Scene:
        """Similarity-transformed so that camera centres are centred at the origin with the farthest
        at distance 1 (the scale Learn2Splat's clamps and gsplat's default learning rates expect)."""
        centers = self.camera_centers
        center = centers.mean(0)
        spread = (centers - center).norm(dim=-1).max()
        if not spread > 1e-6 * max(1.0, center.abs().max().item()):
            raise ValueError(f"cannot normalise a scene whose {len(centers)} camera centre(s) coincide (spread "
                             f"{spread.item():.3g}): there is no scale to normalise by; pass normalize=False")
        scale = 1.0 / spread
        # world' = scale * (world - center); w2c' keeps the rotation, t' = scale * (t + R center)
        viewmats = self.viewmats.clone()
        viewmats[:, :3, 3] = scale * (self.viewmats[:, :3, 3] + self.viewmats[:, :3, :3] @ center)
        return replace(
            self, viewmats=viewmats, points=None if self.points is None else (self.points - center) * scale,
            depths=None if self.depths is None else self.depths * scale,
        )


def every_nth_is_test(n_views: int, every: int = 8) -> Tensor:
    """The usual hold-out: views 0, every, 2*every, ... are test views."""
    return torch.arange(n_views) % every == 0
