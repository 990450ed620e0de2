"""``l2s-meta-train``: meta-train the Learn2Splat network at any scale.

Each meta-iteration starts a scene fresh from its initialiser (optionally advanced by Adam) or from
the checkpoint buffer, unrolls the learned optimizer for tau ~ U[1, max_tau] inner steps on batches
of context views and scores every inner step on held-out target views and a few context views
(L1 + SSIM term; by default its log, so that a relative gain counts alike early and late; weight
0.9^(tau-1-i)), with the deltas penalty and the stability loss. The Gaussians stay in the meta-graph
across inner steps (the inner gradients are constants), so a later step's loss pays for an earlier
step's overshoot: the answer to the short-horizon bias of greedy per-step credit, which
``--no-param-path`` restores (Gaussians detached between inner steps, the meta-gradient crossing
steps only through the latent state). Afterwards a rollout advances the scene by U[1, max] steps with
the current (frozen) network and the state returns to the buffer.

Distributed: under ``torchrun`` each rank meta-trains on its own scenes and gradients are averaged
(gloo on CPU, nccl on GPU). Progress bar, CSV (and TensorBoard when installed) logs, exact resume
from ``meta_state_rank*.pt``, and a final ``model/`` folder (``save_pretrained``) with a model card.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from ..cli import HelpFormatter, bounded, non_negative_float, non_negative_int, positive_float, positive_int
from ..data import Scene, dense_init, load_scene, random_init, sparse_init, synthetic_scene
from ..hub import load_network
from ..losses import photometric_loss, psnr, ssim
from ..network import HUB_LIBRARY, HUB_TAGS, Learn2SplatNet, NetConfig
from ..recipe import Recipe
from ..render import render_splats
from ..step import AUTOCAST, Autocast, GaussianState, active_rows, apply_learned_step, autocast_policy, take
from .buffer import CheckpointBuffer, SceneState


@dataclass
class MetaConfig:
    setting: str = "dense"  # dense: SfM-like points, random latent; sparse: pixel-aligned from context views
    iterations: int = 2000
    net: dict = field(default_factory=lambda: {"width": 64, "depth": 2, "attn_dim": 32, "mlp_hidden": 128, "k": 4,
                                               "update_rule": "adam"})
    lr: float = 5e-4  # AdamW, one-cycle cosine with 1% warm-up
    weight_decay: float = 0.01
    grad_clip: float = 0.5
    max_tau: int = 20
    # keep each inner step's parameters in the meta-graph (gradients of the inner loss are constants, as
    # in first-order learned-optimizer training), so a later step's loss pays for an earlier overshoot;
    # False detaches the Gaussians between inner steps (the meta-gradient then crosses steps only
    # through the latent state and every step is scored greedily)
    param_path: bool = True
    # score each inner step by the log of its error: the same relative gain counts the same early and
    # late in an optimisation (equal to the log-ratio to a fixed baseline's error, e.g. Adam's)
    log_loss: bool = True
    rollout_max: int = 50  # grows linearly from 1 over the first rollout_warmup of the iterations
    rollout_warmup: float = 0.1
    context_views: int = 1  # views per inner step (gsplat's trainer and l2s-bench step on one view)
    target_views: int = 3
    context_in_meta_loss: int = 2
    ssim_weight: float = 0.5  # stand-in for the released LPIPS weight
    deltas_weight: float = 1.0
    deltas_after: int = 100
    stability_weight: float = 10.0  # strong: short unrolls otherwise favour the largest steps
    buffer_size: int = 20
    # a fresh scene is first advanced by U[0, max] Adam steps with this probability, so that states far
    # past the meta-training horizon (thousands of steps) are met during meta-training
    adam_warm_start: float = 0.3
    adam_warm_start_max: int = 1000
    procedural_scenes: int = 8  # per rank
    procedural_size: int = 40
    random_gaussians: int = 3000  # random init of the real scenes without SfM points (dense setting)
    scene_dirs: list[str] = field(default_factory=list)
    scene_factor: int = 8
    seed: int = 0
    save_every: int = 100
    autocast: Autocast = "auto"  # the network's autocast policy, Learn2Splat's default (step.autocast_policy)
    # start from this checkpoint's weights (same architecture; the config's update bounds may differ)
    init_from: str | None = None


class MetaTrainer:
    def __init__(self, config: MetaConfig, out: Path, device: torch.device, rank: int = 0, world: int = 1) -> None:
        self.config, self.out, self.device, self.rank, self.world = config, out, device, rank, world
        autocast_policy(config.autocast)  # an unknown policy fails here, not mid-run
        self.generator = torch.Generator().manual_seed(config.seed * 1000 + rank)
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        self.net = Learn2SplatNet(NetConfig(**config.net)).to(device)
        if config.init_from is not None:
            self.net.load_state_dict(load_network(config.init_from).state_dict())
        # untrained with the "adam" rule, the network is exactly Adam at its base learning rates
        self.adam_net = Learn2SplatNet(replace(self.net.config, update_rule="adam")).to(device)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.schedule = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=config.lr, total_steps=max(config.iterations, 2), pct_start=0.01, anneal_strategy="cos"
        )
        self.buffer = CheckpointBuffer(config.buffer_size, seed=config.seed * 1000 + rank)
        self.scenes = self._scenes()
        self.iteration = 0
        self.seconds = 0.0

    # --------------------------------------------------------------------------------- scenes
    def _scenes(self) -> list[Scene]:
        c = self.config
        scenes = [synthetic_scene(n_views=16, size=c.procedural_size, n_gaussians=2000, seed=10_000 + 100 * self.rank + i,
                                  test_every=10**9) for i in range(c.procedural_scenes)]
        for folder in c.scene_dirs:  # real scenes: their training views only, never their test views
            scenes.append(load_scene(folder, factor=c.scene_factor, background=(0.0, 0.0, 0.0)).train_views)
        return [s.to(self.device) for s in scenes]

    def _randint(self, low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (), generator=self.generator))

    def _fresh_state(self) -> SceneState:
        index = self._randint(0, len(self.scenes) - 1)
        scene = self.scenes[index]
        if self.config.setting == "dense" and scene.points is None:
            splats = random_init(scene, n=self.config.random_gaussians, seed=self._randint(0, 10**6))
        elif self.config.setting == "dense":
            fraction = 0.1 + 0.9 * torch.rand((), generator=self.generator).item()
            splats = dense_init(scene, fraction=fraction, seed=self._randint(0, 10**6))
        else:
            views = torch.randperm(scene.images.shape[0], generator=self.generator)[:4].tolist()
            splats = sparse_init(scene, views)
        params = {k: v.detach().to(self.device) for k, v in splats.items()}
        n = params["means"].shape[0]
        zeros = {k: torch.zeros_like(v) for k, v in params.items()}
        state = SceneState(index, params, zeros, {k: torch.zeros_like(v) for k, v in params.items()},
                           {k: torch.zeros(n, device=self.device) for k in params},
                           torch.zeros(n, self.net.config.width, device=self.device))
        if torch.rand((), generator=self.generator).item() < self.config.adam_warm_start:
            advanced = self.advance(state, self._randint(0, self.config.adam_warm_start_max), self.adam_net)
            state = replace(advanced, latent=self._fresh_latent(n))  # the learned optimizer starts from fresh latents
        return state

    def _fresh_latent(self, count: int) -> Tensor:
        """[count,W] N(0,1) initial latent states (dense setting, as released)."""
        return torch.randn(count, self.net.config.width, generator=self.generator).to(self.device)

    def _views(self, scene: Scene, count: int, exclude: Tensor | None = None) -> Tensor:
        order = torch.randperm(scene.images.shape[0], generator=self.generator)
        if exclude is not None:
            order = order[~torch.isin(order, exclude)]
        return order[:count]

    def _render(self, params: dict[str, Tensor], scene: Scene, views: Tensor) -> Tensor:
        background = torch.tensor(scene.background, device=self.device)
        images, _, _ = render_splats(params, scene.viewmats[views], scene.Ks[views], scene.width, scene.height, background)
        return images

    # ------------------------------------------------------------------------------ inner step
    def inner_step(self, state: SceneState, views: Tensor, differentiable: bool,
                   net: Learn2SplatNet | None = None) -> tuple[SceneState, dict]:
        """One learned-optimizer step on ``views`` with ``net`` (default: the meta-trained network);
        differentiable w.r.t. the network (and the incoming latent state) when asked. Parameters
        enter detached."""
        net = net or self.net
        scene = self.scenes[state.scene]
        leaves = {k: v.detach().requires_grad_(True) for k, v in state.params.items()}
        with torch.enable_grad():
            loss = photometric_loss(self._render(leaves, scene, views), scene.images[views])
            grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
        detached = {k: v.detach() for k, v in leaves.items()}
        params = state.params if differentiable and self.config.param_path else detached
        with torch.set_grad_enabled(differentiable):
            applied = apply_learned_step(
                net, params, grads,
                GaussianState(state.exp_avg, state.exp_avg_sq, state.gaussian_step, state.latent), active_rows(grads),
                fresh_latent=self._fresh_latent, autocast=self.config.autocast,
            )
        if applied is None:  # no Gaussian seen from these views: nothing moves, as in Learn2Splat.step
            return replace(state, steps=state.steps + 1), {"delta": {}, "normalised": {}, "raw": {}}
        new = applied.state
        new_state = SceneState(state.scene, applied.params, new.exp_avg, new.exp_avg_sq, new.gaussian_step, new.latent,
                               state.steps + 1)
        rows = applied.rows
        aux = {"delta": {k: take(v, applied.active) - rows.params[k] for k, v in params.items()},
               "normalised": rows.normalised, "raw": {k: take(g, applied.active) for k, g in grads.items()}}
        return new_state, aux

    # --------------------------------------------------------------------------- meta losses
    def _deltas_loss(self, aux: dict) -> Tensor:
        """L1 of update entries that move against Adam's direction or where the gradient is ~0."""
        total, count = 0.0, 0
        for k, delta in aux["delta"].items():
            wrong = (aux["raw"][k].abs() < 1e-8) | (delta * aux["normalised"][k] < 0)
            total = total + (delta.abs() * wrong).sum()
            count += delta.numel()
        return total / max(count, 1)

    def _view_errors(self, params: dict[str, Tensor], scene: Scene, views: Tensor) -> tuple[Tensor, Tensor]:
        images = self._render(params, scene, views)
        target = scene.images[views]
        l1 = (images - target).abs().mean((-3, -2, -1))
        return l1, l1 + self.config.ssim_weight * (1 - ssim(images, target))

    def meta_iteration(self) -> dict:
        c = self.config
        sampled = self.buffer.sample()
        state = (sampled.detached(self.device) if sampled is not None else self._fresh_state())
        scene = self.scenes[state.scene]
        tau = self._randint(1, c.max_tau)
        targets = self._views(scene, c.target_views)
        with torch.no_grad():
            previous_l1, _ = self._view_errors(state.params, scene, targets)
        previous_l1 = previous_l1.detach()
        image_loss = deltas_loss = stability_loss = torch.zeros((), device=self.device)
        for i in range(tau):
            context = self._views(scene, c.context_views, exclude=targets)
            state, aux = self.inner_step(state, context, differentiable=True)
            scored = torch.cat([targets, context[: c.context_in_meta_loss]])
            l1, per_view = self._view_errors(state.params, scene, scored)
            error = per_view.mean()
            image_loss = image_loss + 0.9 ** (tau - 1 - i) * (error.clamp_min(1e-6).log() if c.log_loss else error)
            stability_loss = stability_loss + torch.relu(l1[: len(targets)] - previous_l1).sum()
            previous_l1 = l1[: len(targets)].detach()
            if self.iteration >= c.deltas_after:
                deltas_loss = deltas_loss + self._deltas_loss(aux)
        loss = image_loss + c.deltas_weight * deltas_loss + c.stability_weight * stability_loss
        self.optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:  # False only when no inner step saw a Gaussian
            loss.backward()
        self._average_gradients()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), c.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        with torch.no_grad():
            target_psnr = psnr(self._render(state.params, scene, targets), scene.images[targets]).mean().item()
            state = self.rollout(state.detached())
        self.buffer.push(state, sampled is not None)
        return {"loss": loss.item(), "image": image_loss.item(), "deltas": deltas_loss.item(),
                "stability": stability_loss.item(), "grad_norm": grad_norm.item(), "tau": tau,
                "target_psnr": target_psnr, "scene_steps": state.steps, "lr": self.schedule.get_last_lr()[0]}

    def rollout(self, state: SceneState) -> SceneState:
        """Advance a scene by U[1, max] frozen steps; max grows from 1 to rollout_max."""
        c = self.config
        progress = min(1.0, self.iteration / max(1.0, c.rollout_warmup * c.iterations))
        return self.advance(state, self._randint(1, max(1, round(1 + progress * (c.rollout_max - 1)))), self.net)

    @torch.no_grad()
    def advance(self, state: SceneState, steps: int, net: Learn2SplatNet) -> SceneState:
        """``steps`` frozen steps of ``net``, one random view each."""
        scene = self.scenes[state.scene]
        for _ in range(steps):
            state, _ = self.inner_step(state, self._views(scene, 1), differentiable=False, net=net)
        return state

    def _average_gradients(self) -> None:
        if self.world == 1:
            return
        for p in self.net.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= self.world

    # ----------------------------------------------------------------------- checkpointing
    def state_path(self) -> Path:
        return self.out / f"meta_state_rank{self.rank}.pt"

    def save(self) -> None:
        torch.save({"iteration": self.iteration, "seconds": self.seconds, "net": self.net.state_dict(),
                    "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                    "buffer": self.buffer.state_dict(), "generator": self.generator.get_state(),
                    "config": asdict(self.config)}, self.state_path())

    def load(self) -> None:
        saved = torch.load(self.state_path(), map_location=self.device, weights_only=True)
        if saved["config"] != asdict(self.config):
            raise ValueError(f"{self.state_path()} was written with another configuration; refusing to resume")
        self.net.load_state_dict(saved["net"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["schedule"])
        self.buffer.load_state_dict(saved["buffer"])
        self.generator.set_state(saved["generator"])
        self.iteration, self.seconds = saved["iteration"], saved["seconds"]
        if self.log_path().is_file():  # rows logged after the saved state (an interrupted run) are redone
            rows = self.log_path().read_text().splitlines(keepends=True)
            self.log_path().write_text("".join(rows[: 1 + self.iteration]))

    def log_path(self) -> Path:
        """The CSV log: a header, then one row per meta-iteration."""
        return self.out / f"log_rank{self.rank}.csv"

    # ------------------------------------------------------------------------------ the loop
    def train(self, progress: bool = True, until: int | None = None) -> None:
        """Meta-train up to ``config.iterations`` (or ``until``, to stop early and resume later)."""
        from tqdm.auto import tqdm

        c = self.config
        log_path = self.log_path()
        writer = _tensorboard(self.out) if self.rank == 0 else None
        bar = tqdm(total=c.iterations, initial=self.iteration, disable=not progress or self.rank != 0, desc="meta")
        while self.iteration < min(c.iterations, until or c.iterations):
            start = time.perf_counter()
            row = self.meta_iteration()
            self.seconds += time.perf_counter() - start
            self.iteration += 1
            row = {"iteration": self.iteration, "seconds": round(self.seconds, 3), **row}
            new_file = not log_path.is_file()
            with open(log_path, "a", newline="") as f:
                csv_writer = csv.DictWriter(f, fieldnames=list(row))
                if new_file:
                    csv_writer.writeheader()
                csv_writer.writerow(row)
            if writer is not None:
                for key, value in row.items():
                    writer.add_scalar(key, value, self.iteration)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", psnr=f"{row['target_psnr']:.2f}")
            if self.iteration % c.save_every == 0 or self.iteration in (c.iterations, until):
                self.save()
        bar.close()

    @torch.no_grad()
    def weights_checksum(self) -> float:
        return float(sum(p.double().sum() for p in self.net.parameters()))

    def finish(self, command: str = "") -> Path:
        """Save ``model/``: config.json, model.safetensors and a model card (README.md with the Hub's
        YAML metadata) stating the data (scene folder names only), the command, the meta-iterations
        and the wall-clock."""
        from huggingface_hub import ModelCard, ModelCardData

        folder = self.out / "model"
        c = self.config
        # the loop of inner_step: c.context_views views per gradient, black background, normalised
        # world, every SH band, the default rasterizer and loss (Recipe's defaults)
        self.net.recipe = Recipe(views_per_step=c.context_views)
        self.net.save_pretrained(folder)
        scenes = [Path(d).name for d in c.scene_dirs]
        for folder_path, name in zip(c.scene_dirs, scenes):  # the card names scenes, not developer paths
            command = command.replace(folder_path, name)
        config = {**asdict(c), "scene_dirs": scenes}
        metadata = ModelCardData(license="mit", library_name=HUB_LIBRARY, pipeline_tag="other",
                                 tags=[*HUB_TAGS, "3dgs", "gsplat"])
        text = "\n".join([
            "---", metadata.to_yaml(), "---", "",
            "# Learn2Splat network meta-trained with l2s-optim", "",
            ("A learned optimizer for 3D Gaussian Splatting ([Learn2Splat](https://arxiv.org/abs/2605.15760)), "
             "used through `l2s_optim.Learn2Splat`."), "",
            f"- Setting: {c.setting}.",
            f"- Data: {c.procedural_scenes} procedural scenes per rank"
            + (f", plus the training views of {', '.join(scenes)} (image factor {c.scene_factor})." if scenes else "."),
            (f"- Meta-iterations: {self.iteration} of a {c.iterations}-iteration schedule; wall-clock "
             f"{self.seconds / 60:.1f} min on {self.world} x {self.device}."),
            *([f"- Started from the weights of `{c.init_from}`."] if c.init_from else []),
            *([f"- Command: `{command}`"] if command else []), "",
            "Benchmark numbers: the l2s-optim README (measured with `l2s-bench`).", "",
            "```json", json.dumps({"config": config, "network": asdict(self.net.config)}, indent=1), "```", "",
        ])
        ModelCard(text).save(folder / "README.md")
        return folder


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


def main(argv: list[str] | None = None) -> None:
    d = MetaConfig()  # the defaults
    p = argparse.ArgumentParser(prog="l2s-meta-train", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="run folder (logs, resumable state, model/)")
    p.add_argument("--setting", choices=["dense", "sparse"], default="dense",
                   help="dense: SfM or random init; sparse: pixel-aligned init from a few views")
    p.add_argument("--iterations", type=positive_int, default=d.iterations,
                   help="meta-iterations the one-cycle schedule is planned for")
    p.add_argument("--stop-at", type=positive_int, default=None,
                   help="stop (and export model/) after this many meta-iterations; the schedule keeps --iterations")
    p.add_argument("--width", type=positive_int, default=d.net["width"], help="latent state and transformer width")
    p.add_argument("--depth", type=positive_int, default=d.net["depth"], help="point-transformer blocks")
    p.add_argument("--attn-dim", type=positive_int, default=d.net["attn_dim"], help="attention q/k/v channels")
    p.add_argument("--mlp-hidden", type=positive_int, default=d.net["mlp_hidden"], help="hidden width of each block's MLP")
    p.add_argument("--k", type=positive_int, default=d.net["k"], help="neighbours per Gaussian, itself included")
    p.add_argument("--phase-feature", action="store_true",
                   help="the network also reads each Gaussian's step count (log1p(steps) / 10)")
    p.add_argument("--no-param-path", dest="param_path", action="store_false",
                   help="detach the Gaussians between inner steps (greedy per-step credit, the former method)")
    p.add_argument("--no-log-loss", dest="log_loss", action="store_false",
                   help="score inner steps by their error instead of its log")
    p.add_argument("--random-gaussians", type=bounded(int, 4), default=d.random_gaussians,
                   help="dense setting: Gaussians of the random init of scenes without SfM points")
    p.add_argument("--magnitude-activation", choices=["relu", "softplus"], default="softplus",
                   help="relu as released; softplus (default) cannot collapse to zero updates early in meta-training")
    p.add_argument("--update-rule", choices=["adam", "direct"], default=d.net["update_rule"],
                   help="adam (default): bounded learned multipliers of Adam's step; direct: the released rule")
    p.add_argument("--max-multiplier", type=bounded(float, 1, inclusive=False), default=math.exp(NetConfig().max_log_multiplier),
                   help="update rule adam: the learned multipliers of Adam's step lie in [1/this, this]")
    p.add_argument("--multiplier-decay-steps", type=positive_float, default=None,
                   help="update rule adam: the multipliers' upper bound decays as max * T / (T + steps), T this "
                        "(per entry, with its attribute's step count); default: a fixed bound")
    p.add_argument("--init-from", default=None,
                   help="start from this checkpoint's weights (same architecture), e.g. a network to fine-tune")
    p.add_argument("--stability-weight", type=non_negative_float, default=d.stability_weight,
                   help="weight of the stability loss (any per-view error increase between inner steps)")
    p.add_argument("--lr", type=positive_float, default=d.lr, help="AdamW peak learning rate of the network")
    p.add_argument("--max-tau", type=positive_int, default=d.max_tau, help="inner steps per unroll: U[1, this]")
    p.add_argument("--rollout-max", type=positive_int, default=d.rollout_max,
                   help="frozen steps after each meta-iteration: U[1, this] (grows from 1 over the first 10%%)")
    p.add_argument("--procedural-scenes", type=non_negative_int, default=d.procedural_scenes,
                   help="procedural scenes per rank")
    p.add_argument("--procedural-size", type=bounded(int, 8), default=d.procedural_size,
                   help="image size of the procedural scenes")
    p.add_argument("--context-views", type=positive_int, default=d.context_views, help="views per inner step")
    p.add_argument("--adam-warm-start-max", type=non_negative_int, default=d.adam_warm_start_max,
                   help=f"fresh scenes are first advanced by up to this many Adam steps (probability {d.adam_warm_start})")
    p.add_argument("--scenes", nargs="*", default=[], help="COLMAP / transforms.json folders (training views used)")
    p.add_argument("--scene-factor", type=positive_int, default=d.scene_factor, help="image downscale factor of --scenes")
    p.add_argument("--save-every", type=positive_int, default=d.save_every, help="meta-iterations between resumable saves")
    p.add_argument("--seed", type=non_negative_int, default=d.seed, help="random seed")
    p.add_argument("--autocast", choices=AUTOCAST, default=d.autocast,
                   help="the network's autocast policy (as Learn2Splat's): auto = bf16 on CUDA, fp32 on CPU")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue from --out/meta_state_rank*.pt")
    args = p.parse_args(argv)
    if args.procedural_scenes == 0 and not args.scenes:
        p.error("nothing to meta-train on: --procedural-scenes 0 and no --scenes")
    config = MetaConfig(
        setting=args.setting, iterations=args.iterations, lr=args.lr, max_tau=args.max_tau, rollout_max=args.rollout_max,
        net={"width": args.width, "depth": args.depth, "attn_dim": args.attn_dim, "mlp_hidden": args.mlp_hidden, "k": args.k,
             "magnitude_activation": args.magnitude_activation, "phase_feature": args.phase_feature, "update_rule": args.update_rule,
             "max_log_multiplier": math.log(args.max_multiplier),
             "multiplier_decay_steps": args.multiplier_decay_steps},
        procedural_scenes=args.procedural_scenes, procedural_size=args.procedural_size, scene_dirs=args.scenes,
        stability_weight=args.stability_weight, param_path=args.param_path, log_loss=args.log_loss,
        random_gaussians=args.random_gaussians, scene_factor=args.scene_factor, context_views=args.context_views, adam_warm_start_max=args.adam_warm_start_max,
        save_every=args.save_every, seed=args.seed, autocast=args.autocast, init_from=args.init_from,
    )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available() if args.device == "auto" else args.device.startswith("cuda")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if cuda else "cpu")
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    args.out.mkdir(parents=True, exist_ok=True)
    trainer = MetaTrainer(config, args.out, device, rank, world)
    if args.resume:
        trainer.load()
    trainer.train(until=args.stop_at)
    checksums = [trainer.weights_checksum()]
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, checksums[0])
        checksums = gathered
    if rank == 0:
        (args.out / "sync.json").write_text(json.dumps({"weight_checksums": checksums}))
        command = "l2s-meta-train " + " ".join(sys.argv[1:] if argv is None else argv)
        print(f"saved {trainer.finish(command)} after {trainer.iteration} meta-iterations ({trainer.seconds / 60:.1f} min)")
    if world > 1:
        dist.destroy_process_group()
