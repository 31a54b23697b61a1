"""The engine: one outer loop for every method (DESIGN.md, "Distiller" contract).

A method subclasses :class:`Distiller` and writes ``init`` (build the learnable state), ``step`` (one outer
iteration) and ``export`` (a :class:`SyntheticSet`). The engine owns the rest: the loop, tqdm progress,
periodic evaluation, atomic checkpoints and exact resume, the RNG, devices and ``torch.distributed``.

Randomness: step ``t`` draws everything from ``runtime.generator("step", seed, t)``, so a run resumed at step
``t`` sees exactly the random numbers an uninterrupted run saw (bit-for-bit on CPU), and the global RNG is never
used. Distributed: the classes are dealt across ranks (``self.classes``); every method's loss is a sum over
classes, each rank computes its classes' part, and :meth:`Distiller.update` all-reduces the synthetic gradient.
"""
from __future__ import annotations

import math
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from . import checkpoint as ckpt
from .config import MethodConfig, make_config
from .data import RealData, load_dataset
from .errors import ConfigError, MemoryBudgetError, NonFiniteError
from .registry import Registry
from .runtime import autocast, generator, pick_device
from .summary import SyntheticSet, library_versions

METHODS: Registry[type["Distiller"]] = Registry("method")


def register_method(name: str):
    """Class decorator: ``@register_method("dm")`` makes the method available to ``distill`` and the CLI."""

    def deco(cls: type[Distiller]) -> type[Distiller]:
        cls.name = name
        return METHODS.register(name)(cls)

    return deco


def list_methods(family: str | None = None) -> list[str]:
    return [n for n in METHODS.names() if family is None or METHODS.get(n).family == family]


class _EmbedView(nn.Module):
    """A module whose forward is ``net.embed`` (so ``functional_call`` can run the embedding alone)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.embed(x)


@dataclass
class DistillState:
    """Everything that changes during distillation, and so everything a checkpoint holds."""

    params: dict[str, torch.Tensor] = field(default_factory=dict)  # learnable synthetic tensors
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    modules: dict[str, nn.Module] = field(default_factory=dict)  # networks kept across steps
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # non-learned tensors (labels, ...)
    info: dict[str, Any] = field(default_factory=dict)  # JSON-able counters
    step: int = 0


class Distiller(ABC):
    """Base class of every method. Subclasses set ``Config``, ``family``, ``paper`` and write 3 methods."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    eval_augment: ClassVar[str | None] = None  # "dsa" when the paper evaluates with DSA augmentation
    modality: ClassVar[str] = "image"
    multilabel: ClassVar[bool] = False  # True where the method trains on multi-hot targets (per-label loss)
    max_skipped: ClassVar[int] = 20
    total_steps: int | None = None  # the run's step count, set by the engine before init (for lr schedules)

    def __init__(self, real: RealData, ipc: int, cfg: MethodConfig, device: torch.device, model: str = "convnet",
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.real, self.ipc, self.cfg, self.device, self.model, self.seed = real, ipc, cfg, device, model, seed
        self.rank, self.world_size = rank, world_size
        self.classes = list(range(real.num_classes))[rank::world_size]
        if getattr(real, "multilabel", False) and not self.multilabel:
            able = sorted(n for n in METHODS.names() if getattr(METHODS.get(n), "multilabel", False))
            raise ConfigError(f"{real.name} is multi-label and {self.name!r} trains on one class id per image. "
                              f"Methods with a per-label loss: {', '.join(able)}.")

    # ------------------------------------------------------------------ to write
    @abstractmethod
    def init(self, g: torch.Generator) -> DistillState:
        """Build the initial state (synthetic tensors, optimisers, kept networks)."""

    @abstractmethod
    def step(self, state: DistillState, g: torch.Generator) -> dict[str, float]:
        """One outer iteration; returns scalar metrics for the progress bar."""

    @abstractmethod
    def export(self, state: DistillState) -> SyntheticSet:
        """The current summary (detached)."""

    # ------------------------------------------------------------------ helpers for methods
    def real_batch(self, n_per_class: int, g: torch.Generator, classes: list[int] | None = None):
        """A class-balanced real batch ``(x, y)`` on the device, ``n_per_class`` images of each class in order."""
        classes = self.classes if classes is None else classes
        # every rank draws the batch of all classes from the same generator and keeps its own classes, so
        # a run on N ranks sees exactly the real images a single-process run sees
        idx = self.real.sample_balanced(n_per_class, g).view(self.real.num_classes, n_per_class)[classes].flatten()
        return self.real.x_train[idx].to(self.device, non_blocking=True), self.real.y_train[idx].to(self.device)

    def siamese_batches(self, x_syn: torch.Tensor, g: torch.Generator, aug, batch_real: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """A class-balanced real batch and this rank's synthetic images (class-major), both passed through the
        same DSA draw per class (DSA's Siamese augmentation; ``aug`` is a :class:`~distill_apps.augment.DSA`)."""
        xr, _ = self.real_batch(batch_real, g)
        params = aug.sample(self.real.num_classes, g, self.real.image_shape[1:])
        cls = torch.tensor(self.classes)
        xr = aug.apply(xr, params, cls.repeat_interleave(batch_real))
        xs = x_syn.view(self.real.num_classes, self.ipc, *x_syn.shape[1:])[cls.to(x_syn.device)].flatten(0, 1)
        return xr, aug.apply(xs, params, cls.repeat_interleave(self.ipc))

    def new_net(self, g: torch.Generator, model: str | None = None, **kw) -> nn.Module:
        from .nets import build_model

        r = self.real
        return build_model(model or self.model, r.image_shape[0], r.num_classes, r.image_shape[1:], generator=g,
                           device=self.device, **kw)

    def autocast(self):
        return autocast(self.device, self.cfg.amp)

    def embed_fn(self, net: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """``x -> net.embed(x)``; with ``cfg.compile`` a ``torch.compile``d functional version whose compiled
        graph is shared by every network of this architecture (fresh networks each step do not recompile)."""
        if not self.cfg.compile:
            return net.embed
        if getattr(self, "_compiled_embed", None) is None:
            from torch.func import functional_call

            template = _EmbedView(net)
            self._compiled_embed = torch.compile(
                lambda state, x: functional_call(template, state, (x,)), dynamic=False)
        state = {f"net.{k}": v for k, v in [*net.named_parameters(), *net.named_buffers()]}
        return lambda x: self._compiled_embed(state, x)

    def init_from_real(self, g: torch.Generator, ipc: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Synthetic images initialised from random real images of every class (all ranks agree), with their
        class ids in class order; :meth:`init_images` also keeps their multi-hot rows for multi-label data."""
        x, y, _ = self._draw_real(g, ipc or self.ipc)
        return x, y

    def _draw_real(self, g: torch.Generator, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = self.real.sample_balanced(k, g)
        y = torch.arange(self.real.num_classes).repeat_interleave(k)  # == y_train[idx] for single-label data
        return (self.real.x_train[idx].clone().to(self.device), y.to(self.device),
                self.real.y_train[idx].clone().to(self.device))

    def init_images(self, g: torch.Generator, init: str = "real", lr: float | None = None,
                    momentum: float | None = None) -> DistillState:
        """The usual start of an image method: synthetic images from real images of every class (or Gaussian
        noise), learnable, with an SGD optimiser ``"syn"`` at ``cfg.lr_img`` / ``cfg.momentum_img``."""
        if init not in ("real", "noise"):
            raise ConfigError(f"{self.name}: init must be 'real' or 'noise'; got {init!r}.")
        x, y, rows = self._draw_real(g, self.ipc)
        if init == "noise":
            x = torch.randn(x.shape, generator=g).to(x)
        x.requires_grad_(True)
        lr = self.cfg.lr_img if lr is None else lr
        momentum = getattr(self.cfg, "momentum_img", 0.5) if momentum is None else momentum
        opt = torch.optim.SGD([x], lr=lr, momentum=momentum)
        buffers = {"y": y, "multi_hot": rows.float()} if self.real.multilabel else {"y": y}
        return DistillState(params={"x": x}, optimizers={"syn": opt}, buffers=buffers)

    def targets(self, state: DistillState) -> torch.Tensor:
        """What the synthetic images are trained to predict: class ids, or multi-hot rows for multi-label data."""
        return state.buffers.get("multi_hot", state.buffers["y"])

    def update(self, state: DistillState, loss: torch.Tensor, opt: str = "syn") -> bool:
        """Backward, all-reduce the synthetic gradient across ranks, skip non-finite steps, optimiser step.

        Returns False (and counts a skip) when the loss or a gradient is NaN/Inf; stops the run with a
        :class:`NonFiniteError` after ``max_skipped`` skips in a row, so a NaN never reaches the summary.
        """
        optimizer = state.optimizers[opt]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self.world_size > 1:
            import torch.distributed as dist

            for gr in grads:
                dist.all_reduce(gr)  # losses are sums over classes: sum the per-rank parts
        finite = bool(torch.isfinite(loss).all()) and all(bool(torch.isfinite(gr).all()) for gr in grads)
        if not finite:
            state.info["skipped"] = state.info.get("skipped", 0) + 1
            state.info["skipped_in_row"] = state.info.get("skipped_in_row", 0) + 1
            if state.info["skipped_in_row"] >= self.max_skipped:
                raise NonFiniteError(
                    f"{self.name}: the loss or gradient was NaN/Inf in {self.max_skipped} steps in a row (step "
                    f"{state.step}); stopped without writing a summary. Lower the image learning rate or "
                    "disable amp (amp: false), and check the data for extreme values.")
            optimizer.zero_grad(set_to_none=True)
            return False
        state.info["skipped_in_row"] = 0
        optimizer.step()
        return True

    def meta(self, state: DistillState, **extra) -> dict[str, Any]:
        return {"method": self.name, "family": self.family, "paper": self.paper, "dataset": self.real.name,
                "ipc": self.ipc, "steps": state.step, "seed": self.seed, "model": self.model,
                "config": self.cfg.as_dict(), "eval_augment": self.eval_augment, "versions": library_versions(),
                "skipped_steps": state.info.get("skipped", 0), **extra}

    def synthetic(self, state: DistillState, x: torch.Tensor, y: torch.Tensor, **kw) -> SyntheticSet:
        """Shorthand for ``export``: a plain-image SyntheticSet with this run's metadata."""
        meta = self.meta(state, **kw.pop("meta", {}))
        if self.real.multilabel and "soft" not in kw and "multi_hot" in state.buffers:
            kw.update(soft=state.buffers["multi_hot"].detach().float().cpu().clone(), label_kind="multilabel")
        return SyntheticSet(x=x.detach().float().cpu().clone(), y=y.detach().long().cpu().clone(),
                            num_classes=self.real.num_classes, image_shape=self.real.image_shape,
                            mean=self.real.mean, std=self.real.std, meta=meta, **kw)


# ---------------------------------------------------------------------- the loop
def _distributed() -> tuple[int, int]:
    """Rank and world size; initialises the process group when launched by torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def make_distiller(method: str, real: RealData, ipc: int, config: dict[str, Any] | MethodConfig | None = None,
                   device: str | torch.device = "auto", model: str = "convnet", seed: int = 0) -> Distiller:
    cls = METHODS.get(method)
    if cls.modality == "image":
        real.check_ipc(ipc)
    cfg = config if isinstance(config, MethodConfig) else make_config(cls.Config, config, method)
    rank, world = _distributed()
    dev = pick_device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    return cls(real.to(dev), ipc, cfg, dev, model, seed, rank, world)


def distill(method: str = "dm", dataset: str | RealData = "digits", ipc: int = 10, *, steps: int | None = None,
            budget: str = "paper", model: str = "convnet", seed: int = 0, device: str = "auto",
            data_root: str | None = None, config: dict[str, Any] | MethodConfig | None = None,
            checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 0, resume: bool = False,
            eval_every: int = 0, callbacks: tuple[Callable[[int, dict, DistillState], None], ...] = (),
            progress: bool = True, time_limit: float | None = None,
            max_memory_gb: float | None = None) -> SyntheticSet:
    """Distil ``dataset`` into ``ipc`` synthetic images per class with ``method``; returns a SyntheticSet.

    ``steps`` overrides the method's iteration count; otherwise ``budget="paper"`` runs the paper's count and
    ``budget="quick"`` a CPU-minutes preset. With ``checkpoint`` and ``checkpoint_every=N`` the state is saved
    atomically every N steps; ``resume=True`` continues from it (refusing a checkpoint of another run).
    ``max_memory_gb`` stops the run (after checkpointing) once its peak memory passes the limit, with a message
    naming what to lower, instead of letting the OS kill it.
    """
    real = load_dataset(dataset, data_root) if isinstance(dataset, str) else dataset
    d = make_distiller(method, real, ipc, config, device, model, seed)
    if budget not in ("paper", "quick"):
        raise ConfigError(f"budget must be 'paper' or 'quick'; got {budget!r}.")
    total = steps if steps is not None else (d.cfg.steps if budget == "paper" else d.cfg.quick_steps)
    if total < 0:
        raise ConfigError(f"steps must be >= 0; got {total}.")
    return run(d, total, checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume,
               eval_every=eval_every, callbacks=callbacks, progress=progress, time_limit=time_limit,
               max_memory_gb=max_memory_gb)


def shutdown_distributed(barrier: bool = True) -> None:
    """Wait for every rank (unless ``barrier=False``), then tear the process group down before exit.

    Without this, torchrun ranks that leave while gloo's threads are alive can abort with
    "terminate called without an active exception" (seen on CI).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            if barrier:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def is_main_process() -> bool:
    """True on rank 0 (or without torch.distributed): the process that writes outputs."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process so far: CUDA allocator peak on GPUs, max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _memory_advice(d: "Distiller") -> str:
    knobs = [k for k in ("batch_real", "batch_syn", "syn_steps", "batch_train") if hasattr(d.cfg, k)]
    return (f"lower --ipc (now {d.ipc}), " + (f"the batch options {', '.join(knobs)} (--set name=value), " if knobs else "")
            + "use a smaller --model, or add devices with torchrun; resume with --resume from the last checkpoint.")


def _guarded_step(d: "Distiller", state: DistillState) -> dict[str, float]:
    try:
        return d.step(state, generator("step", d.seed, state.step))
    except (torch.cuda.OutOfMemoryError, MemoryError) as exc:
        raise MemoryBudgetError(f"{d.name} ran out of memory at step {state.step} ({exc.__class__.__name__}): "
                                + _memory_advice(d)) from exc


def run(d: Distiller, total: int, *, checkpoint=None, checkpoint_every: int = 0, resume: bool = False,
        eval_every: int = 0, callbacks=(), progress: bool = True, time_limit: float | None = None,
        max_memory_gb: float | None = None) -> SyntheticSet:
    """Drive ``d`` for ``total`` steps (see :func:`distill`)."""
    d.total_steps = total
    state = d.init(generator("init", d.seed))
    if resume:
        if checkpoint is None:
            raise ConfigError("--resume needs a checkpoint path (--checkpoint, or --out whose .ckpt is used).")
        if Path(checkpoint).exists():
            ckpt.load_into(checkpoint, d, state)
    start = state.step
    bar = None
    if progress and d.rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start, desc=f"{d.name} {d.real.name} ipc{d.ipc}", dynamic_ncols=True)
    t0 = time.perf_counter()
    while state.step < total:
        metrics = _guarded_step(d, state)
        state.step += 1
        if any(isinstance(v, float) and not math.isfinite(v) for v in metrics.values()):
            state.info["nonfinite_metric_steps"] = state.info.get("nonfinite_metric_steps", 0) + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float))}, refresh=False)
        for cb in callbacks:
            cb(state.step, metrics, state)
        if eval_every and state.step % eval_every == 0 and d.rank == 0:
            from .evaluate import evaluate

            res = evaluate(d.export(state), d.real, runs=1, epochs=min(300, 100), device=str(d.device))
            msg = f"step {state.step}: quick eval {res}"
            (bar.write if bar else print)(msg)
        last = state.step == total
        if checkpoint is not None and checkpoint_every and (state.step % checkpoint_every == 0 or last):
            if d.rank == 0:
                ckpt.save(checkpoint, d, state)
        if max_memory_gb is not None and peak_memory_gb(d.device) > max_memory_gb:
            if checkpoint is not None and d.rank == 0:
                ckpt.save(checkpoint, d, state)
            raise MemoryBudgetError(
                f"{d.name} passed the memory limit of {max_memory_gb:.2f} GB (peak {peak_memory_gb(d.device):.2f} GB) "
                f"at step {state.step}: " + _memory_advice(d))
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            break
    if bar is not None:
        bar.close()
    return d.export(state)
