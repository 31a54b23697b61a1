"""Trajectory matching: MTT (Cazenavette et al., CVPR 2022) and TESLA (Cui et al., ICML 2023).

MTT ("Dataset Distillation by Matching Training Trajectories"): each step draws an expert (a network trained on
real data, :mod:`distill_apps.experts`) and a start epoch ``s < max_start_epoch``; a student starts from the
expert's epoch-``s`` parameters and takes ``syn_steps`` SGD steps on (DSA-augmented) minibatches of the synthetic
set with a learnable step size; the loss is the normalised parameter distance

    L = ||theta_N - theta*_{s+M}||^2 / ||theta*_s - theta*_{s+M}||^2

and the gradient is taken through the whole unroll by :func:`distill_apps.inner.unroll` (``unroll_memory``:
``autograd`` keeps the graph, memory linear in ``syn_steps``; ``adjoint`` is the same gradient recomputed one
student step at a time, activation memory flat; ``checkpoint`` recomputes chunks of ``unroll_chunk`` steps).

TESLA ("Scaling Up Dataset Distillation to ImageNet-1K with Constant Memory") keeps the objective and computes
the gradient step by step. With ``theta_N = theta_0 - beta * sum_i g_i`` and ``lam = dL/dtheta_N``, the gradient
w.r.t. the synthetic batch of step ``i`` is ``-beta * lam^T dg_i/dX_i`` plus terms through the later parameters.
TESLA's decomposition keeps the first term only (``grad_mode="tesla"``: the adjoint unroll with the Hessian terms
dropped, ``exact=False``); ``grad_mode="exact"`` is the adjoint pass ``lam_i = lam_{i+1} - beta * H_i lam_{i+1}``,
which equals MTT's gradient. Both hold one step's graph at a time and one parameter snapshot per step. TESLA
also learns soft labels (logits), initialised from an expert's predictions on the initial images (images the
expert gets right are preferred).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..augment import DEFAULT_STRATEGY, DSA
from ..config import MethodConfig
from ..engine import Distiller, DistillState, register_method
from ..errors import ConfigError
from ..experts import ExpertBuffer, ExpertConfig, get_or_train_experts
from ..inner import Params, UnrollPlan, functional, unroll, unroll_options
from ..parameterisation import init_pixels, training_targets
from ..runtime import generator

__all__ = ["UnrollPlan", "param_distance", "mtt_loss", "tesla_gradients", "SavedTensorMeter", "MTT", "TESLA"]

# (syn_steps, max_start_epoch, lr_img, lr_lr) by IPC: MTT's published CIFAR-10 settings (expert_epochs = 2)
SCHEDULE = {1: (50, 2, 1000.0, 1e-7), 10: (30, 20, 1000.0, 1e-5), 50: (30, 40, 100.0, 1e-5)}


def schedule_for(ipc: int) -> tuple[int, int, float, float]:
    """MTT's ``(syn_steps, max_start_epoch, lr_img, lr_lr)`` for the IPC (the nearest smaller published one)."""
    return SCHEDULE[max(k for k in SCHEDULE if k <= max(ipc, 1))]


# ---------------------------------------------------------------------- the objective, as plain functions
def param_distance(end: Params, start: Params, target: Params) -> torch.Tensor:
    """MTT's normalised distance ``||end - target||^2 / ||start - target||^2`` over all parameters."""
    num = sum(((end[k] - target[k]) ** 2).sum() for k in target)
    den = sum(((start[k] - target[k]) ** 2).sum() for k in target)
    return num / den.clamp_min(1e-12)


def mtt_loss(f, start: Params, target: Params, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor,
             plan: UnrollPlan, dsa: DSA | None = None, label_kind: str = "hard",
             shard: tuple[int, int] = (0, 1), memory: str = "autograd", chunk: int = 0,
             exact: bool = True, micro_batch: int = 0) -> torch.Tensor:
    """MTT's matching loss after unrolling the student through :func:`distill_apps.inner.unroll`.

    ``memory`` chooses how its gradient is computed (``autograd``: the whole graph; ``adjoint``: exact, one
    student step's graph at a time; ``checkpoint``: chunks of ``chunk`` steps); ``exact=False`` with
    ``adjoint`` is TESLA's decomposition; ``micro_batch`` splits every student step's minibatch in the
    recomputing modes. With ``shard=(rank, world)`` every student step's minibatch is split across the ranks (see
    ``sgd_step``).
    """
    start = {k: v.detach() for k, v in start.items()}
    end = unroll(f, start, x, y, len(plan), lr, label_kind=label_kind, plan=plan, dsa=dsa, memory=memory,
                 chunk=chunk, exact=exact, micro_batch=micro_batch, shard=shard)
    return param_distance(end, start, target)


def tesla_gradients(f, start: Params, target: Params, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor,
                    plan: UnrollPlan, dsa: DSA | None = None, label_kind: str = "hard",
                    mode: str = "tesla") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The matching loss and its gradients w.r.t. ``x``, ``y`` (when it requires grad) and ``lr``, one step's graph
    at a time (:func:`mtt_loss` with ``memory="adjoint"``). ``mode="tesla"``: TESLA's decomposition (the explicit
    term of each step); ``"exact"``: the adjoint pass, equal to autograd through the unroll. Returns
    ``(loss, {"x", "y", "lr": grad})``.
    """
    if mode not in ("tesla", "exact"):
        raise ConfigError(f"grad_mode must be 'tesla' (the paper's) or 'exact'; got {mode!r}.")
    lr = lr if lr.requires_grad else lr.detach().requires_grad_(True)
    wrt = {k: t for k, t in (("x", x), ("y", y), ("lr", lr)) if t.requires_grad}
    loss = mtt_loss(f, start, target, x, y, lr, plan, dsa, label_kind, memory="adjoint", exact=mode == "exact")
    grads = torch.autograd.grad(loss, list(wrt.values()), allow_unused=True)
    out = {k: torch.zeros_like(t) if gr is None else gr for (k, t), gr in zip(wrt.items(), grads)}
    return loss.detach(), out


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
    """Options of MTT (Cazenavette et al., CVPR 2022): the unroll, expert buffer and learning rates."""
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
    #   (the same gradient, activation memory flat in syn_steps; one parameter copy per step is kept);
    #   checkpoint: chunks of unroll_chunk steps recomputed (inner.unroll)
    unroll_chunk: int = 0  # steps per chunk for unroll_memory=checkpoint
    unroll_micro_batch: int = 0  # recomputing modes: examples per micro-batch (0: whole minibatches; exact
    #   without batch statistics), so memory is flat in the inner batch size too


@dataclass
class TESLAConfig(MTTConfig):
    """Options of TESLA (Cui et al., ICML 2023): MTT's plus soft labels and the gradient mode."""
    lr_y: float = 2.0
    momentum_y: float = 0.9
    grad_mode: str = "tesla"  # tesla (the paper's decomposition) | exact (adjoint, equals MTT's gradient)
    label_pool: int = 4  # candidates per image for the initial images (the expert's correct ones first)


@register_method("mtt")
class MTT(Distiller):
    """MTT (Cazenavette et al., CVPR 2022): images and step size matched to expert training trajectories."""
    family = "trajectory"
    paper = "Cazenavette et al., CVPR 2022, Dataset Distillation by Matching Training Trajectories"
    Config = MTTConfig
    eval_augment = "dsa"
    label_kind = "hard"

    # ---------------------------------------------------------------- settings
    def settings(self) -> tuple[int, int, float, float]:
        """``(syn_steps, max_start_epoch, lr_img, lr_lr)``: configured, or the schedule for the IPC."""
        c = self.cfg
        s, m, li, ll = schedule_for(self.ipc)
        return c.syn_steps or s, c.max_start_epoch or m, c.lr_img or li, c.lr_lr or ll

    def experts(self) -> ExpertBuffer:
        """The expert buffer (trained and cached on first use; each expert lazily unless ``eager_experts``)."""
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
        """DSA for the student steps (None with ``dsa: false``)."""
        return DSA.for_dataset(self.real.flip_invariant, strategy=self.cfg.dsa_strategy) if self.cfg.dsa else None

    # ---------------------------------------------------------------- Distiller
    def initial_images(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The synthetic images' start (``cfg.init``: real images or noise, :func:`init_pixels`) and class ids."""
        x, y, _ = init_pixels(self.real, self.ipc, g, self.device, self.cfg.init, self.name)
        return x, y

    def param_groups(self, state: DistillState) -> list[dict]:
        """SGD groups: images at ``lr_img``, the step size at ``lr_lr`` (TESLA adds its labels)."""
        _, _, lr_img, lr_lr = self.settings()
        c = self.cfg
        return [{"params": [state.params["x"]], "lr": lr_img, "momentum": c.momentum_img},
                {"params": [state.params["lr"]], "lr": lr_lr, "momentum": c.momentum_lr}]

    def init(self, g: torch.Generator) -> DistillState:
        """The experts, the initial images, the learnable step size ``lr_teacher`` and their SGD."""
        self.experts()
        x, y = self.initial_images(g)
        state = DistillState(params={"x": x.requires_grad_(True),
                                     "lr": torch.tensor(float(self.cfg.lr_teacher), device=self.device,
                                                        requires_grad=True)},
                             buffers={"y": y})
        self.add_labels(state, g)
        state.optimizers["syn"] = torch.optim.SGD(self.param_groups(state), lr=1.0)
        return state

    def add_labels(self, state: DistillState, g: torch.Generator) -> None:
        """Hook for learnable labels (TESLA); MTT trains on hard labels."""

    def draw(self, state: DistillState, g: torch.Generator):
        """This step's expert segment (start, target), student minibatch plan and augmenter."""
        syn_steps, max_start, _, _ = self.settings()
        start, target = self.experts().sample(g, self.cfg.expert_epochs, max_start)
        aug = self.augmenter()
        plan = UnrollPlan.draw(state.params["x"].shape[0], syn_steps, self.cfg.batch_syn, g, aug,
                               self.real.image_shape[1:])
        return start, target, plan, aug

    def unroll_kw(self) -> dict:
        """How the student unroll is differentiated (``unroll_memory``/``unroll_chunk``; TESLA: ``grad_mode``)."""
        return unroll_options(self.cfg)

    def step(self, state: DistillState, g: torch.Generator) -> dict[str, float]:
        """One expert segment: unroll a student on the images and match its end to the expert's."""
        start, target, plan, aug = self.draw(state, g)
        with self.autocast():
            loss = mtt_loss(self.student(), start, target, state.params["x"], training_targets(state),
                            state.params["lr"], plan, aug, self.label_kind, (self.rank, self.world_size),
                            **self.unroll_kw())
        # each student step's batch is split across ranks and its gradient all-reduced inside the unroll, so
        # every rank holds the same loss; each back-propagates 1/world of it, and the summed image and lr
        # gradients (Distiller.update) equal the single-process gradient
        self.update(state, loss / self.world_size)
        return {"loss": float(loss.detach()), "syn_lr": float(state.params["lr"].detach())}

    def export(self, state: DistillState):
        """The synthetic images with the learned step size."""
        lr = float(state.params["lr"].detach())
        return self.synthetic(state, state.params["x"], state.buffers["y"], lr=lr if lr > 0 else None)


@register_method("tesla")
class TESLA(MTT):
    """TESLA (Cui et al., ICML 2023): MTT with constant-memory gradients and learned soft labels."""
    family = "trajectory"
    paper = "Cui et al., ICML 2023, Scaling Up Dataset Distillation to ImageNet-1K with Constant Memory"
    Config = TESLAConfig
    label_kind = "logits"

    def initial_images(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Real images, preferring those the label expert classifies correctly (TESLA's initialisation)."""
        if self.cfg.init != "real":
            return super().initial_images(g)
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
        """The label expert's logits on ``x`` (its parameters at ``max_start_epoch``)."""
        _, max_start, _, _ = self.settings()
        params = self.experts().params(0, min(max_start, self.experts().epochs))
        with torch.no_grad():
            return torch.cat([self.student()(params, xb).float() for xb in x.split(256)])

    def add_labels(self, state: DistillState, g: torch.Generator) -> None:
        """Learnable soft labels, initialised from the label expert's logits on the initial images."""
        soft = self.label_logits(state.params["x"].detach())
        state.params["soft"] = soft.clone().requires_grad_(True)

    def param_groups(self, state: DistillState) -> list[dict]:
        """MTT's groups plus the soft labels at ``lr_y``."""
        return super().param_groups(state) + [
            {"params": [state.params["soft"]], "lr": self.cfg.lr_y, "momentum": self.cfg.momentum_y}]

    def unroll_kw(self) -> dict:
        """TESLA always recomputes step by step: ``grad_mode`` tesla (the paper's decomposition) or exact
        (the adjoint, MTT's gradient; ``unroll_memory="checkpoint"`` recomputes chunks instead)."""
        if self.cfg.grad_mode not in ("tesla", "exact"):
            raise ConfigError(f"grad_mode must be 'tesla' (the paper's) or 'exact'; got {self.cfg.grad_mode!r}.")
        kw = unroll_options(self.cfg)
        if self.cfg.grad_mode == "tesla":
            return {"memory": "adjoint", "exact": False, "micro_batch": kw["micro_batch"]}
        return kw if kw["memory"] == "checkpoint" else {**kw, "memory": "adjoint"}

    def export(self, state: DistillState):
        """The synthetic images with the learned logits (``label_kind="logits"``) and step size."""
        lr = float(state.params["lr"].detach())
        soft = state.params["soft"].detach().float().cpu()
        return self.synthetic(state, state.params["x"], state.buffers["y"], soft=soft, label_kind="logits",
                              lr=lr if lr > 0 else None)
