"""A complete 3DGS fitting loop with l2s-optim's renderer (CPU or CUDA), showing the one-line swap
from Adam to Learn2Splat and how to checkpoint the optimizer together with the splats.

    python examples/minimal_loop.py --optimizer adam
    python examples/minimal_loop.py --optimizer l2s --checkpoint ./l2s-joint   # or "dense" once bundled
    python examples/minimal_loop.py --scene path/to/colmap_or_transforms_folder --steps 1000
"""

import argparse
from pathlib import Path

import torch

from l2s_optim import Learn2Splat
from l2s_optim.data import dense_init, load_scene, random_init, synthetic_scene
from l2s_optim.losses import photometric_loss, psnr
from l2s_optim.render import render_splats

p = argparse.ArgumentParser()
p.add_argument("--scene", default=None, help="scene folder (default: a procedural scene)")
p.add_argument("--optimizer", choices=["adam", "l2s"], default="l2s")
p.add_argument("--checkpoint", default="dense", help="Learn2Splat weights")
p.add_argument("--steps", type=int, default=300)
p.add_argument("--size", type=int, default=64, help="procedural scene: image size")
p.add_argument("--save", type=Path, default=None, help="write splats + optimizer state here at the end")
p.add_argument("--resume", type=Path, default=None, help="continue from a file written by --save")
args = p.parse_args()

device = "cuda" if torch.cuda.is_available() else "cpu"
scene = synthetic_scene(size=args.size) if args.scene is None else load_scene(args.scene)
train, test = scene.train_views, scene.test_views
splats = (dense_init(scene) if scene.points is not None else random_init(scene)).to(device)
background = torch.tensor(scene.background, device=device)

if args.optimizer == "adam":
    lrs = {"means": 1.6e-4, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2, "sh0": 2.5e-3, "shN": 2.5e-3 / 20}
    optimizer = torch.optim.Adam([{"params": [p], "lr": lrs[n], "name": n} for n, p in splats.items()], eps=1e-15)
else:
    optimizer = Learn2Splat(splats, checkpoint=args.checkpoint)  # <- the one-line swap

start = 0
if args.resume is not None:  # optimizer state resumes with the splats (gsplat's example saves splats only)
    saved = torch.load(args.resume, map_location=device, weights_only=True)
    splats.load_state_dict(saved["splats"])
    optimizer.load_state_dict(saved["optimizer"])
    start = saved["step"]


def test_psnr() -> float:
    with torch.no_grad():
        image, _, _ = render_splats(splats, test.viewmats.to(device), test.Ks.to(device), scene.width, scene.height, background)
        return psnr(image.clamp(0, 1), test.images.to(device)).mean().item()


print(f"{args.optimizer}: step {start}, test PSNR {test_psnr():.2f} dB")
for step in range(start, start + args.steps):
    v = torch.randint(len(train.images), (1,), generator=torch.Generator().manual_seed(step))  # resumable
    image, _, _ = render_splats(splats, train.viewmats[v].to(device), train.Ks[v].to(device), scene.width, scene.height, background)
    loss = photometric_loss(image, train.images[v].to(device))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

print(f"{args.optimizer}: step {start + args.steps}, test PSNR {test_psnr():.2f} dB")
if args.save is not None:
    torch.save({"splats": splats.state_dict(), "optimizer": optimizer.state_dict(), "step": start + args.steps}, args.save)
