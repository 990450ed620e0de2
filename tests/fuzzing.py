"""Random densification sequences through Learn2Splat's per-name views: gsplat's strategy ops interleaved
with training steps (visibility masks, in-place or ``None`` ``zero_grad``), frozen attributes, save/load
resumes (into an optimizer whose groups come in another order) and bad inputs of every category of
``docs/errors.md``; invariants are checked after every op.

Used by ``tests/test_fuzz.py`` (hypothesis, CI-sized) and ``benchmarks/fuzz.py`` (long runs). An op is
``(name, seed)``, its seed drawing the details (masks, rows, values), so a sequence is plain data that
hypothesis can shrink and a failure can be replayed.
"""

from __future__ import annotations

import copy
import io
import math
import random
import traceback
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from unittest import mock

import torch
from conftest import assert_unchanged, make_splats, random_net, same, snapshot
from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci
from gsplat.strategy import ops
from test_gsplat_strategies import check_consistent, pull_loss, relocation_on_cpu
from torch import nn

from l2s_optim import Learn2Splat, NetConfig
from l2s_optim.state_io import ROW_KEYS

FUZZ_NET = NetConfig(width=8, depth=1, attn_dim=8, mlp_hidden=8, k=4)  # the smallest network
MAX_GAUSSIANS = 600  # growth ops are skipped beyond this (CI time)
BINOMS = torch.tensor([[math.comb(n, k) for k in range(10)] for n in range(10)], dtype=torch.float32)
TRAINING = ("step", "step", "step_visible")
DENSIFICATION = ("duplicate", "split", "remove", "reset_opa", "relocate", "sample_add")
BAD_INPUTS = ("bad_nonfinite_param", "bad_extreme_param", "bad_nonfinite_grad", "bad_dtype", "bad_visibility",
              "bad_stale_state", "bad_adam_state", "bad_corrupt_state")
OPS = (*TRAINING, *DENSIFICATION, "freeze", "save_load", *BAD_INPUTS)
REFUSALS = (ValueError, TypeError)


@dataclass
class FuzzResult:
    """The outcome of one sequence: ops run (up to the first violation) and the violations found."""

    ops: int = 0
    violations: list[str] = field(default_factory=list)


def random_sequence(rng: random.Random, length: int) -> list[tuple[str, int]]:
    """``length`` ops drawn uniformly from :data:`OPS` (training ops twice as often)."""
    return [(rng.choice(OPS), rng.getrandbits(31)) for _ in range(length)]


def _mask(n: int, rng: random.Random, most: float = 0.3) -> torch.Tensor:
    """[n] bool, about a fraction in (0, most] set, at least one row."""
    g = torch.Generator().manual_seed(rng.getrandbits(31))
    mask = torch.rand(n, generator=g) < rng.uniform(0.01, most)
    mask[rng.randrange(n)] = True
    return mask


class Fuzzer:
    """One scene (``make_splats``), its Learn2Splat and per-name views, driven op by op."""

    def __init__(self, n: int, knn_every: int, seed: int) -> None:
        self.seed, self.knn_every = seed, knn_every
        self.net = random_net(FUZZ_NET, seed)
        self.splats = make_splats(n, seed=seed)
        self.joint = Learn2Splat(self.splats, self.net, seed=seed, knn_every=knn_every)
        self.views = self.joint.per_name_optimizers()

    # ----------------------------------------------------------------------------------- invariants
    def check(self) -> None:
        """N rows everywhere, groups and views hold the current Parameters, everything finite."""
        check_consistent(self.joint, self.splats)
        assert all(view.param_groups[0] is group for view, group in zip(self.views.values(), self.joint.param_groups))
        assert all(view.state is self.joint.state for view in self.views.values())
        for name, p in self.splats.items():
            assert p.dtype == torch.float32 and bool(torch.isfinite(p).all()), f"{name} is not finite"
            for key, value in self.joint.state.get(p, {}).items():
                assert bool(torch.isfinite(value).all()), f"state {key!r} of {name} is not finite"

    def _steps_taken(self) -> int:
        return int(self.joint.state.get(self.splats["means"], {}).get("step", 0))

    # ------------------------------------------------------------------------------------- training
    @staticmethod
    def _iteration(splats: Mapping[str, nn.Parameter], views: dict, visibility: torch.Tensor | None,
                   set_to_none: bool) -> None:
        """simple_trainer's loop: backward, then each view steps and zeroes its gradient."""
        pull_loss(splats).backward()
        for view in views.values():
            view.step() if visibility is None else view.step(visibility)
            view.zero_grad(set_to_none=set_to_none)

    def _train(self, rng: random.Random, visible: bool) -> None:
        n = len(self.splats["means"])
        visibility = _mask(n, rng, most=0.9) if visible and n else None
        frozen = {k: (p.detach().clone(), snapshot_state(self.joint, p)) for k, p in self.splats.items()
                  if not p.requires_grad}
        steps = self._steps_taken()
        self._iteration(self.splats, self.views, visibility, rng.random() < 0.5)
        assert self._steps_taken() == steps + (1 if n else 0), "the views did not run exactly one joint step"
        for k, (value, state) in frozen.items():
            assert same(self.splats[k].detach(), value), f"frozen {k} moved"
            after = snapshot_state(self.joint, self.splats[k])
            assert all(same(after[s], state[s]) if s in state and s in after else not (after | state)[s].any()
                       for s in after | state), f"frozen {k}'s state changed"  # created entries are zeros

    def op_step(self, rng: random.Random) -> None:
        self._train(rng, visible=False)

    def op_step_visible(self, rng: random.Random) -> None:
        self._train(rng, visible=True)

    def op_freeze(self, rng: random.Random) -> None:
        """Toggle one attribute's ``requires_grad`` (at least one stays trainable)."""
        name = rng.choice(list(self.splats))
        p = self.splats[name]
        if p.requires_grad and sum(q.requires_grad for q in self.splats.values()) == 1:
            return
        p.requires_grad_(not p.requires_grad)
        p.grad = None

    # -------------------------------------------------------------------------------- densification
    def _densify(self, op: Callable[..., None], **options) -> None:
        op(params=self.splats, optimizers=self.views, state={}, **options)

    def op_duplicate(self, rng: random.Random) -> None:
        if len(self.splats["means"]) < MAX_GAUSSIANS:
            self._densify(ops.duplicate, mask=_mask(len(self.splats["means"]), rng))

    def op_split(self, rng: random.Random) -> None:
        if len(self.splats["means"]) < MAX_GAUSSIANS:
            self._densify(ops.split, mask=_mask(len(self.splats["means"]), rng))

    def op_remove(self, rng: random.Random) -> None:
        mask = _mask(len(self.splats["means"]), rng)
        mask[rng.randrange(len(mask))] = False  # one Gaussian at least remains
        self._densify(ops.remove, mask=mask)

    def op_reset_opa(self, rng: random.Random) -> None:
        self._densify(ops.reset_opa, value=rng.choice([0.01, 0.5]))

    def op_relocate(self, rng: random.Random) -> None:
        dead = _mask(len(self.splats["means"]), rng)
        dead[rng.randrange(len(dead))] = False  # something alive to relocate to
        self._densify(ops.relocate, mask=dead, binoms=BINOMS)

    def op_sample_add(self, rng: random.Random) -> None:
        if len(self.splats["means"]) < MAX_GAUSSIANS:
            self._densify(ops.sample_add, n=rng.randint(1, 20), binoms=BINOMS)

    # ------------------------------------------------------------------------------------ save/load
    def op_save_load(self, rng: random.Random) -> None:
        """Save through torch.save, resume into a new optimizer over a dict in another order, check one
        training iteration is bit-identical on both, and go on with the resumed one."""
        buffer = io.BytesIO()
        torch.save({"splats": {k: p.detach() for k, p in self.splats.items()}, "optimizer": self.joint.state_dict()},
                   buffer)
        buffer.seek(0)
        saved = torch.load(buffer, weights_only=True)
        names = list(self.splats)
        rng.shuffle(names)
        splats = {k: nn.Parameter(saved["splats"][k].detach().clone(), requires_grad=self.splats[k].requires_grad)
                  for k in names}  # a dict in this order (a ParameterDict would sort the names)
        resumed = Learn2Splat(splats, self.net, seed=self.seed, knn_every=self.knn_every)
        resumed.load_state_dict(saved["optimizer"])
        views = resumed.per_name_optimizers()
        visibility = _mask(len(splats["means"]), rng, most=0.9) if rng.random() < 0.5 else None
        for each_splats, each_views in ((self.splats, self.views), (splats, views)):
            self._iteration(each_splats, each_views, visibility, set_to_none=True)
        for k, p in self.splats.items():
            assert same(p.detach(), splats[k].detach()), f"resume is not bit-identical: {k}"
            state, other = self.joint.state.get(p, {}), resumed.state.get(splats[k], {})
            assert state.keys() == other.keys() and all(same(v, other[s]) for s, v in state.items()), \
                f"resumed state of {k} differs"
        self.splats, self.joint, self.views = splats, resumed, views

    # ----------------------------------------------------------------------------------- bad inputs
    def _refused(self, action: Callable[[], object], *, may_succeed: bool = False) -> bool:
        """Run ``action`` on a snapshot: a refusal (``ValueError``/``TypeError``) must leave parameters and
        state byte-identical; success is a violation unless ``may_succeed``. Returns whether it was refused."""
        before = snapshot(self.joint)
        try:
            action()
        except REFUSALS:
            assert_unchanged(self.joint, before)
            return True
        assert may_succeed, "bad input accepted"
        return False

    def _step_views(self) -> None:
        for view in self.views.values():
            view.step()

    def _with_gradients(self) -> None:
        for p in self.splats.values():
            p.grad = None
        pull_loss(self.splats).backward()

    def _clear_gradients(self) -> None:
        for p in self.splats.values():
            p.grad = None

    def op_bad_nonfinite_param(self, rng: random.Random) -> None:
        self._poison_param(rng, rng.choice([math.nan, math.inf, -math.inf]), may_succeed=False)

    def op_bad_extreme_param(self, rng: random.Random) -> None:
        """A finite but extreme value: refused, or stepped into finite values."""
        self._poison_param(rng, rng.choice([1e30, -1e30, 1e38]), may_succeed=True)

    def _poison_param(self, rng: random.Random, value: float, may_succeed: bool) -> None:
        """``value`` in one entry of one Gaussian (of a non-means attribute 4 times in 5), then a step;
        the entry is given back its value afterwards, as a user fixing it would."""
        name = rng.choice([k for k in self.splats if k != "means"] if rng.random() < 0.8 else ["means"])
        p = self.splats[name]
        row = rng.randrange(len(p))
        original = p.detach()[row].clone()
        self._with_gradients()
        with torch.no_grad():
            p.view(len(p), -1)[row, rng.randrange(p[0].numel())] = value
        self._refused(self._step_views, may_succeed=may_succeed)
        with torch.no_grad():
            self.splats[name][row] = original
        self._clear_gradients()

    def op_bad_nonfinite_grad(self, rng: random.Random) -> None:
        self._with_gradients()
        trainable = [p for p in self.splats.values() if p.grad is not None]
        p = rng.choice(trainable)
        p.grad.view(len(p), -1)[rng.randrange(len(p)), 0] = rng.choice([math.nan, math.inf])
        self._refused(self._step_views)
        self._clear_gradients()

    def _swap(self, name: str, new: nn.Parameter) -> nn.Parameter:
        """Put ``new`` in place of ``name``'s Parameter (group and state follow); returns the old one."""
        old = self.splats[name]
        group = next(g for g in self.joint.param_groups if g["params"][0] is old)
        self.splats[name], group["params"] = new, [new]
        if old in self.joint.state:
            self.joint.state[new] = self.joint.state.pop(old)
        return old

    def op_bad_dtype(self, rng: random.Random) -> None:
        """float16/bfloat16 (Adam's eps underflows) or int64 (cannot be stepped) in place of an attribute."""
        name = rng.choice(list(self.splats))
        dtype = rng.choice([torch.float16, torch.bfloat16, torch.int64])
        self._with_gradients()
        value = self.splats[name].detach().to(dtype)
        old = self._swap(name, nn.Parameter(value, requires_grad=dtype.is_floating_point))
        self._refused(self._step_views)
        self._swap(name, old)
        self._clear_gradients()

    def op_bad_visibility(self, rng: random.Random) -> None:
        self._with_gradients()
        n = len(self.splats["means"])
        visibility = rng.choice([torch.ones(n + 1, dtype=torch.bool), torch.ones(n, 2, dtype=torch.bool), [True] * n])
        self._refused(lambda: self.views["means"].step(visibility) if self.splats["means"].requires_grad
                      else self.joint.step(visibility=visibility))
        self._clear_gradients()

    def op_bad_stale_state(self, rng: random.Random) -> None:
        """Gaussians added without remapping the state (as a hand-written strategy might)."""
        if not any(self.joint.state.get(p) for p in self.splats.values()):
            return
        extra = rng.randint(1, 3)
        old = {name: self._swap(name, nn.Parameter(torch.cat([p.detach(), p.detach()[:extra]]),
                                                   requires_grad=p.requires_grad))
               for name, p in list(self.splats.items())}
        self._with_gradients()
        self._refused(self._step_views)
        for name, p in old.items():
            self._swap(name, p)
        self._clear_gradients()

    def op_bad_adam_state(self, rng: random.Random) -> None:
        """torch.optim.Adam's state_dict (same group names), into the joint optimizer or a view."""
        params = {k: nn.Parameter(p.detach().clone()) for k, p in self.splats.items()}
        adam = torch.optim.Adam([{"params": [p], "name": k, "lr": 1e-3} for k, p in params.items()])
        pull_loss(params).backward()
        adam.step()
        if rng.random() < 0.5:
            self._refused(lambda: self.joint.load_state_dict(adam.state_dict()))
        else:
            name = rng.choice(list(self.views))
            one = torch.optim.Adam([{"params": [params[name]], "name": name, "lr": 1e-3}])
            one.state[params[name]] = adam.state[params[name]]
            self._refused(lambda: self.views[name].load_state_dict(one.state_dict()))

    def op_bad_corrupt_state(self, rng: random.Random) -> None:
        """Our own state_dict, corrupted in one place."""
        saved = copy.deepcopy(self.joint.state_dict())
        ids = {g["name"]: g["params"][0] for g in saved["param_groups"]}
        entries = [saved["state"][i] for i in ids.values() if saved["state"].get(i)]
        corruptions = ["rename_group", "nan_lr", "no_format", "stray_entry"]
        if entries:
            corruptions += ["nan_entry", "negative_second_moment", "wrong_rows", "missing_key", "fractional_count"]
        if saved["learn2splat"]["knn_graph"] is not None:
            corruptions.append("bad_graph")
        kind = rng.choice(corruptions)
        entry = rng.choice(entries) if entries else None
        if kind == "rename_group":
            saved["param_groups"][rng.randrange(len(ids))]["name"] = "colors"
        elif kind == "nan_lr":
            saved["param_groups"][rng.randrange(len(ids))]["lr"] = math.nan
        elif kind == "no_format":
            del saved["learn2splat"]
        elif kind == "stray_entry":
            saved["state"][max(ids.values()) + 1] = {}
        elif kind == "nan_entry":
            entry[rng.choice(sorted(entry))].view(-1)[0] = math.nan
        elif kind == "negative_second_moment":
            entry["exp_avg_sq"].view(-1)[0] = -1.0
        elif kind == "wrong_rows":
            key = rng.choice([k for k in entry if k != "step"])
            entry[key] = entry[key][:-1] if rng.random() < 0.5 else torch.cat([entry[key], entry[key][:1]])
        elif kind == "missing_key":
            del entry[rng.choice(sorted(entry))]
        elif kind == "fractional_count":
            entry["gaussian_step"].view(-1)[0] = 0.5
        else:  # bad_graph
            saved["learn2splat"]["knn_graph"]["neighbours"].view(-1)[0] = len(self.splats["means"])
        self._refused(lambda: self.joint.load_state_dict(saved))


def snapshot_state(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict[str, torch.Tensor]:
    """Clones of ``param``'s own state entries (not the joint latent and step counter kept with the means)."""
    return {k: v.clone() for k, v in optimizer.state.get(param, {}).items() if k in ROW_KEYS}


def run_sequence(sequence: list[tuple[str, int]], *, n: int, knn_every: int, seed: int) -> FuzzResult:
    """Run ``sequence`` on a fresh scene of ``n`` Gaussians, checking the invariants after every op; stops
    at the first violation (an assertion or any unexpected exception, with its op and traceback)."""
    result = FuzzResult()
    with mock.patch.multiple(ops, quat_scale_to_covar_preci=_quat_scale_to_covar_preci,
                             compute_relocation=relocation_on_cpu), warnings.catch_warnings():  # CUDA kernels, in torch
        warnings.filterwarnings("ignore", "Learn2Splat: ", RuntimeWarning)  # recipe notes (pull_loss is no recipe)
        fuzzer = Fuzzer(n, knn_every, seed)
        for index, (name, op_seed) in enumerate(sequence):
            try:
                getattr(fuzzer, f"op_{name}")(random.Random(op_seed))
                fuzzer.check()
            except Exception as err:  # noqa: BLE001 -- every failure is a finding, reported with its op
                where = "".join(traceback.format_exception(err)[-3:])
                result.violations.append(f"op {index} {name}({op_seed}) of n={n}, knn_every={knn_every}, "
                                          f"seed={seed}: {err!r}\n{where}")
                break
            result.ops += 1
    return result
