"""Trajectory matching: MTT (Cazenavette et al., CVPR 2022) and TESLA (Cui et al., ICML 2023).

MTT ("Dataset Distillation by Matching Training Trajectories"): each step draws an expert (a network trained on
real data, :mod:`distill_apps.experts`) and a start epoch ``s < max_start_epoch``; a student starts from the
expert's epoch-``s`` parameters and takes ``syn_steps`` SGD steps on (DSA-augmented) minibatches of the synthetic
set with a learnable step size; the loss is the normalised parameter distance

    L = ||theta_N - theta*_{s+M}||^2 / ||theta*_s - theta*_{s+M}||^2

and autograd differentiates through the whole unroll (memory grows linearly with ``syn_steps``).

TESLA ("Scaling Up Dataset Distillation to ImageNet-1K with Constant Memory") keeps the objective and computes
the gradient step by step. With ``theta_N = theta_0 - beta * sum_i g_i`` and ``lam = dL/dtheta_N``, the gradient
w.r.t. the synthetic batch of step ``i`` is ``-beta * lam^T dg_i/dX_i`` plus terms through the later parameters.
TESLA's decomposition keeps the first term only: a first pass accumulates ``theta_N`` without any graph, a second
pass rebuilds one step's graph at a time (``grad_mode="tesla"``; memory constant in ``syn_steps``). We also
offer ``grad_mode="exact"``: the reverse (adjoint) pass ``lam_i = lam_{i+1} - beta * H_i lam_{i+1}`` over
stored parameter snapshots, one step's graph at a time, which equals MTT's gradient; its activation memory is
constant too and it stores one parameter vector per step. TESLA also learns soft labels (logits), initialised
from an expert's predictions on the initial images (images the expert gets right are preferred).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..augment import DEFAULT_STRATEGY, DSA, DSAParams
from ..config import MethodConfig
from ..engine import Distiller, DistillState, register_method
from ..errors import ConfigError
from ..experts import ExpertBuffer, ExpertConfig, get_or_train_experts
from ..inner import Params, functional, sgd_step
from ..memory import check_memory
from ..runtime import generator
from ..train import target_loss

# (syn_steps, max_start_epoch, lr_img, lr_lr) by IPC: MTT's published CIFAR-10 settings (expert_epochs = 2)
SCHEDULE = {1: (50, 2, 1000.0, 1e-7), 10: (30, 20, 1000.0, 1e-5), 50: (30, 40, 100.0, 1e-5)}


def schedule_for(ipc: int) -> tuple[int, int, float, float]:
    return SCHEDULE[max(k for k in SCHEDULE if k <= max(ipc, 1))]


# ---------------------------------------------------------------------- the objective, as plain functions
@dataclass
class UnrollPlan:
    """The minibatch indices and DSA draws of every student step, drawn once so that passes can replay them."""

    indices: list[torch.Tensor]
    aug: list[DSAParams | None]

    @classmethod
    def draw(cls, n: int, steps: int, batch: int, g: torch.Generator, dsa: DSA | None,
             image_size: tuple[int, int]) -> "UnrollPlan":
        bs = min(batch, n) if batch > 0 else n
        order, pos, idx, aug = torch.randperm(n, generator=g), 0, [], []
        for _ in range(steps):
            if pos + bs > n:
                order, pos = torch.randperm(n, generator=g), 0
            idx.append(order[pos:pos + bs])
            pos += bs
            aug.append(dsa.sample(bs, g, image_size) if dsa is not None else None)  # one draw per image
        return cls(idx, aug)

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, i: int, x: torch.Tensor, y: torch.Tensor, dsa: DSA | None) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.indices[i].to(x.device)
        xb = x[idx]
        if dsa is not None and self.aug[i] is not None:
            xb = dsa.apply(xb, self.aug[i], torch.arange(len(idx)))
        return xb, y[idx]


def param_distance(end: Params, start: Params, target: Params) -> torch.Tensor:
    """MTT's normalised distance ``||end - target||^2 / ||start - target||^2`` over all parameters."""
    num = sum(((end[k] - target[k]) ** 2).sum() for k in target)
    den = sum(((start[k] - target[k]) ** 2).sum() for k in target)
    return num / den.clamp_min(1e-12)


def _loss_grad(f, params: Params, xb, yb, label_kind: str, create_graph: bool) -> list[torch.Tensor]:
    return list(torch.autograd.grad(target_loss(f(params, xb), yb, label_kind), list(params.values()),
                                    create_graph=create_graph))


def mtt_loss(f, start: Params, target: Params, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor,
             plan: UnrollPlan, dsa: DSA | None = None, label_kind: str = "hard",
             shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """MTT: unroll the student through :func:`distill_apps.inner.sgd_step` keeping the whole graph; with
    ``shard=(rank, world)`` every student step's minibatch is split across the ranks (see ``sgd_step``)."""
    params = {k: v.detach().requires_grad_(True) for k, v in start.items()}
    for i in range(len(plan)):
        xb, yb = plan.batch(i, x, y, dsa)
        params = sgd_step(f, params, xb, yb, lr, label_kind, create_graph=True, shard=shard)
        check_memory(f"unroll step {i}")
    return param_distance(params, start, target)


def tesla_gradients(f, start: Params, target: Params, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor,
                    plan: UnrollPlan, dsa: DSA | None = None, label_kind: str = "hard",
                    mode: str = "tesla") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The matching loss and its gradients w.r.t. ``x``, ``y`` (when it requires grad) and ``lr``, one step's graph
    at a time. ``mode="tesla"``: TESLA's decomposition (the explicit term of each step); ``"exact"``: the adjoint
    pass, equal to autograd through the unroll (:func:`mtt_loss`). Returns ``(loss, {"x", "y", "lr": grad})``.
    """
    if mode not in ("tesla", "exact"):
        raise ConfigError(f"grad_mode must be 'tesla' (the paper's) or 'exact'; got {mode!r}.")
    beta = lr.detach()
    names = list(start)
    wrt = {k: t for k, t in (("x", x), ("y", y)) if t.requires_grad}
    xd, yd = x.detach(), y.detach()
    # pass 1: the student's trajectory without a graph
    theta = {k: v.detach() for k, v in start.items()}
    snaps: list[Params] = []
    gsum = [torch.zeros_like(v) for v in theta.values()]
    for i in range(len(plan)):
        if mode == "exact":
            snaps.append(theta)
        p = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
        gi = _loss_grad(f, p, *plan.batch(i, xd, yd, dsa), label_kind, False)
        gsum = [a + b for a, b in zip(gsum, gi)]
        theta = {k: theta[k] - beta * gr for k, gr in zip(names, gi)}
        check_memory(f"unroll step {i}")
    with torch.no_grad():
        den = sum(((start[k] - target[k]) ** 2).sum() for k in names).clamp_min(1e-12)
        loss = sum(((theta[k] - target[k]) ** 2).sum() for k in names) / den
        lam = [2 * (theta[k] - target[k]) / den for k in names]
    grads = {k: torch.zeros_like(t) for k, t in wrt.items()}
    glr = torch.zeros_like(beta)
    order = range(len(plan)) if mode == "tesla" else reversed(range(len(plan)))
    theta = {k: v.detach() for k, v in start.items()}
    for i in order:
        base = theta if mode == "tesla" else snaps[i]
        p = {k: v.detach().requires_grad_(True) for k, v in base.items()}
        gi = _loss_grad(f, p, *plan.batch(i, x, y, dsa), label_kind, True)
        with torch.no_grad():
            glr -= sum((a * b).sum() for a, b in zip(lam, gi))
        s = -beta * sum((a * b).sum() for a, b in zip(lam, gi))
        inputs = list(wrt.values()) + (list(p.values()) if mode == "exact" else [])
        outs = torch.autograd.grad(s, inputs, allow_unused=True)
        for k, o in zip(wrt, outs):
            if o is not None:
                grads[k] += o
        if mode == "exact":  # lam_i = lam_{i+1} - beta * H_i lam_{i+1}
            lam = [a if o is None else a + o for a, o in zip(lam, outs[len(wrt):])]
        else:
            theta = {k: theta[k] - beta * gr.detach() for k, gr in zip(names, gi)}
        check_memory(f"backward unroll step {i}")
    if mode == "tesla":  # the explicit dependence of theta_N on beta (the g_i held fixed)
        with torch.no_grad():
            glr = -sum((a * b).sum() for a, b in zip(lam, gsum))
    grads["lr"] = glr
    return loss.detach(), grads


class SavedTensorMeter:
    """Peak bytes of the tensors autograd holds for backward while the context is active.

    A deterministic memory measure that works on CPU (``torch.autograd.graph.saved_tensors_hooks``): every tensor
    saved for backward adds its size when saved and subtracts it when its graph is freed. Tensors saved twice
    count twice, so it is an upper bound on the graph's own memory (parameters and inputs included).
    """

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0
        self._ctx = None

    def _pack(self, t: torch.Tensor):
        n = t.numel() * t.element_size()
        self.current += n
        self.peak = max(self.peak, self.current)
        return _Held(t, n, self)

    @staticmethod
    def _unpack(h: "_Held") -> torch.Tensor:
        return h.t

    def __enter__(self) -> "SavedTensorMeter":
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)


class _Held:
    __slots__ = ("t", "n", "meter")

    def __init__(self, t: torch.Tensor, n: int, meter: SavedTensorMeter) -> None:
        self.t, self.n, self.meter = t, n, meter

    def __del__(self) -> None:
        self.meter.current -= self.n


# ---------------------------------------------------------------------- methods
@dataclass
class MTTConfig(MethodConfig):
    steps: int = 5000
    quick_steps: int = 20
    amp: bool = False  # the unroll's second-order gradients are kept in float32
    syn_steps: int = 0  # 0: the schedule for the IPC (SCHEDULE)
    expert_epochs: int = 2
    max_start_epoch: int = 0  # 0: schedule
    lr_img: float = 0.0  # 0: schedule
    lr_lr: float = 0.0  # 0: schedule
    lr_teacher: float = 0.01  # initial synthetic step size (the experts' lr)
    momentum_img: float = 0.5
    momentum_lr: float = 0.5
    batch_syn: int = 0  # 0: the whole synthetic set each student step
    dsa: bool = True
    dsa_strategy: str = DEFAULT_STRATEGY
    init: str = "real"  # real | noise
    num_experts: int = 100
    expert_train_epochs: int = 50
    expert_lr: float = 0.01
    expert_batch: int = 256
    expert_dir: str = ""  # "" = $DISTILL_APPS_CACHE/experts or ~/.cache/distill_apps/experts
    eager_experts: bool = False  # False: train each expert the first time it is sampled
    unroll_memory: str = "autograd"  # autograd: the whole unroll's graph; adjoint: one step's graph at a time
    #   (the same gradient, activation memory flat in syn_steps; one parameter copy per step is kept)


@dataclass
class TESLAConfig(MTTConfig):
    lr_y: float = 2.0
    momentum_y: float = 0.9
    grad_mode: str = "tesla"  # tesla (the paper's decomposition) | exact (adjoint, equals MTT's gradient)
    label_pool: int = 4  # candidates per image for the initial images (the expert's correct ones first)


@register_method("mtt")
class MTT(Distiller):
    family = "trajectory"
    paper = "Cazenavette et al., CVPR 2022, Dataset Distillation by Matching Training Trajectories"
    Config = MTTConfig
    eval_augment = "dsa"
    label_kind = "hard"

    # ---------------------------------------------------------------- settings
    def settings(self) -> tuple[int, int, float, float]:
        c = self.cfg
        s, m, li, ll = schedule_for(self.ipc)
        return c.syn_steps or s, c.max_start_epoch or m, c.lr_img or li, c.lr_lr or ll

    def experts(self) -> ExpertBuffer:
        if getattr(self, "_experts", None) is None:
            c = self.cfg
            ec = ExpertConfig(num_experts=c.num_experts, epochs=c.expert_train_epochs, lr=c.expert_lr,
                              batch_size=c.expert_batch, augment="dsa" if c.dsa else None)
            _, max_start, _, _ = self.settings()
            if max_start - 1 + c.expert_epochs > ec.epochs:
                raise ConfigError(f"max_start_epoch {max_start} + expert_epochs {c.expert_epochs} exceeds the "
                                  f"{ec.epochs} expert epochs: lower them or raise expert_train_epochs.")
            self._experts = get_or_train_experts(self.real, self.model, config=ec, seed=self.seed,
                                                 cache_dir=c.expert_dir or None, device=self.device,
                                                 eager=c.eager_experts, progress=self.rank == 0)
        return self._experts

    def student(self) -> Callable:
        """The student as a pure function ``f(params, x)`` (the template's own weights are never used)."""
        if getattr(self, "_f", None) is None:
            net = self.new_net(generator("student-template", self.seed))
            for p in net.parameters():
                p.requires_grad_(False)
            self._f, _ = functional(net)
        return self._f

    def augmenter(self) -> DSA | None:
        return DSA.for_dataset(self.real.flip_invariant, strategy=self.cfg.dsa_strategy) if self.cfg.dsa else None

    # ---------------------------------------------------------------- Distiller
    def init_images(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.init_from_real(g)
        if self.cfg.init == "noise":
            x = torch.randn(x.shape, generator=g).to(x)
        elif self.cfg.init != "real":
            raise ConfigError(f"init must be 'real' or 'noise'; got {self.cfg.init!r}.")
        return x, y

    def param_groups(self, state: DistillState) -> list[dict]:
        _, _, lr_img, lr_lr = self.settings()
        c = self.cfg
        return [{"params": [state.params["x"]], "lr": lr_img, "momentum": c.momentum_img},
                {"params": [state.params["lr"]], "lr": lr_lr, "momentum": c.momentum_lr}]

    def init(self, g: torch.Generator) -> DistillState:
        self.experts()
        x, y = self.init_images(g)
        state = DistillState(params={"x": x.requires_grad_(True),
                                     "lr": torch.tensor(float(self.cfg.lr_teacher), device=self.device,
                                                        requires_grad=True)},
                             buffers={"y": y})
        self.add_labels(state, g)
        state.optimizers["syn"] = torch.optim.SGD(self.param_groups(state), lr=1.0)
        return state

    def add_labels(self, state: DistillState, g: torch.Generator) -> None:
        """Hook for learnable labels (TESLA); MTT trains on hard labels."""

    def targets(self, state: DistillState) -> torch.Tensor:
        return state.buffers["y"]

    def draw(self, state: DistillState, g: torch.Generator):
        syn_steps, max_start, _, _ = self.settings()
        start, target = self.experts().sample(g, self.cfg.expert_epochs, max_start)
        aug = self.augmenter()
        plan = UnrollPlan.draw(state.params["x"].shape[0], syn_steps, self.cfg.batch_syn, g, aug,
                               self.real.image_shape[1:])
        return start, target, plan, aug

    def step(self, state: DistillState, g: torch.Generator) -> dict[str, float]:
        start, target, plan, aug = self.draw(state, g)
        if self.cfg.unroll_memory == "adjoint":
            return self.step_stepwise(state, start, target, plan, aug, "exact")
        if self.cfg.unroll_memory != "autograd":
            raise ConfigError(f"unroll_memory must be 'autograd' or 'adjoint'; got {self.cfg.unroll_memory!r}.")
        with self.autocast():
            loss = mtt_loss(self.student(), start, target, state.params["x"], self.targets(state),
                            state.params["lr"], plan, aug, self.label_kind, (self.rank, self.world_size))
        # each student step's batch is split across ranks and its gradient all-reduced inside the unroll, so
        # every rank holds the same loss; each back-propagates 1/world of it, and the summed image and lr
        # gradients (Distiller.update) equal the single-process gradient
        self.update(state, loss / self.world_size)
        return {"loss": float(loss.detach()), "syn_lr": float(state.params["lr"].detach())}

    def step_stepwise(self, state: DistillState, start, target, plan, aug, mode: str) -> dict[str, float]:
        """A step whose gradient is computed one student step at a time (:func:`tesla_gradients`): ``exact``
        (the adjoint pass, MTT's gradient) or ``tesla`` (the paper's decomposition). Ranks replicate the work."""
        x, lr, t = state.params["x"], state.params["lr"], self.targets(state)
        with self.autocast():
            loss, grads = tesla_gradients(self.student(), start, target, x, t, lr, plan, aug, self.label_kind, mode)
        # a surrogate whose gradient is the one computed above; (loss - loss) carries a NaN loss into the skip check
        surrogate = (x * grads["x"]).sum() + lr * grads["lr"]
        if "y" in grads:
            surrogate = surrogate + (t * grads["y"]).sum()
        self.update(state, surrogate / self.world_size + (loss - loss))
        return {"loss": float(loss), "syn_lr": float(lr.detach())}

    def export(self, state: DistillState):
        lr = float(state.params["lr"].detach())
        return self.synthetic(state, state.params["x"], state.buffers["y"], lr=lr if lr > 0 else None)


@register_method("tesla")
class TESLA(MTT):
    family = "trajectory"
    paper = "Cui et al., ICML 2023, Scaling Up Dataset Distillation to ImageNet-1K with Constant Memory"
    Config = TESLAConfig
    label_kind = "logits"

    def init_images(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Real images, preferring those the label expert classifies correctly (TESLA's initialisation)."""
        if self.cfg.init != "real":
            return super().init_images(g)
        r, k = self.real, self.ipc
        pool = max(k, min(k * self.cfg.label_pool, min(r.class_counts())))
        idx = r.sample_balanced(pool, g).view(r.num_classes, pool)
        xs = r.images(idx.flatten(), device=self.device)
        pred = self.label_logits(xs).argmax(1).view(r.num_classes, pool).cpu()
        keep = []
        for c in range(r.num_classes):
            ok = pred[c] == c
            order = torch.cat([torch.nonzero(ok).flatten(), torch.nonzero(~ok).flatten()])[:k]
            keep.append(idx[c][order])
        keep = torch.cat(keep)
        return r.images(keep, device=self.device), r.labels(keep, device=self.device).clone()

    def label_logits(self, x: torch.Tensor) -> torch.Tensor:
        _, max_start, _, _ = self.settings()
        params = self.experts().params(0, min(max_start, self.experts().epochs))
        with torch.no_grad():
            return torch.cat([self.student()(params, xb).float() for xb in x.split(256)])

    def add_labels(self, state: DistillState, g: torch.Generator) -> None:
        soft = self.label_logits(state.params["x"].detach())
        state.params["soft"] = soft.clone().requires_grad_(True)

    def param_groups(self, state: DistillState) -> list[dict]:
        return super().param_groups(state) + [
            {"params": [state.params["soft"]], "lr": self.cfg.lr_y, "momentum": self.cfg.momentum_y}]

    def targets(self, state: DistillState) -> torch.Tensor:
        return state.params["soft"]

    def step(self, state: DistillState, g: torch.Generator) -> dict[str, float]:
        start, target, plan, aug = self.draw(state, g)
        return self.step_stepwise(state, start, target, plan, aug, self.cfg.grad_mode)

    def export(self, state: DistillState):
        lr = float(state.params["lr"].detach())
        soft = state.params["soft"].detach().float().cpu()
        return self.synthetic(state, state.params["x"], state.buffers["y"], soft=soft, label_kind="logits",
                              lr=lr if lr > 0 else None)
