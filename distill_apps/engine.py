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

import gc
import math
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from . import checkpoint as ckpt
from . import memory
from .config import MethodConfig, make_config
from .data import RealData, as_real_data, load_dataset
from .errors import ConfigError, DistillError, MemoryBudgetError, NonFiniteError
from .modality import MODALITIES, check_modality, default_dataset
from .registry import Registry
from .runtime import autocast, generator, memory_format, pick_device
from .summaries import Summary
from .summary import SyntheticSet, library_versions

METHODS: Registry[type["Distiller"]] = Registry("method")


def register_method(name: str):
    """Class decorator: ``@register_method("dm")`` makes the method available to ``distill`` and the CLI."""

    def deco(cls: type[Distiller]) -> type[Distiller]:
        cls.name = name
        return METHODS.register(name)(cls)

    return deco


def list_methods(family: str | None = None) -> list[str]:
    """Registered method names, all of them or those of one ``family`` (``"gradient"``, ``"trajectory"``, ...)."""
    return [n for n in METHODS.names() if family is None or METHODS.get(n).family == family]


class _EmbedView(nn.Module):
    """A module whose forward is ``net.embed`` (so ``functional_call`` can run the embedding alone)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped network's embedding of ``x``."""
        return self.net.embed(x)


@dataclass(repr=False)
class DistillState:
    """Everything that changes during distillation, and so everything a checkpoint holds."""

    params: dict[str, torch.Tensor] = field(default_factory=dict)  # learnable synthetic tensors
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    modules: dict[str, nn.Module] = field(default_factory=dict)  # networks kept across steps
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # non-learned tensors (labels, ...)
    info: dict[str, Any] = field(default_factory=dict)  # JSON-able counters
    step: int = 0

    def __repr__(self) -> str:
        from .reprs import field_bytes, human_bytes, one_line, shape

        return one_line("DistillState", [f"step {self.step}",
                                         *(f"{k} {shape(v)}" for k, v in self.params.items()),
                                         f"{len(self.optimizers)} optimizers", f"{len(self.modules)} modules",
                                         f"{len(self.buffers)} buffers", human_bytes(field_bytes(self))])


class Distiller(ABC):
    """Base class of every method. Subclasses set ``Config``, ``family``, ``paper`` and write 3 methods.

    The contract is ``init``/``step``/``export``; everything else here is a service methods call and never
    override (the real batches, fresh networks, the guarded update, the summary's metadata). How a method stores
    its synthetic set is composed, not inherited: :mod:`distill_apps.parameterisation` (image tensors) and the
    parameterisations next to their methods (factorised bases, multi-formation, generator latents). Every
    piece of run state lives in the :class:`DistillState` that ``init`` returns, so a checkpoint holds it.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    eval_augment: ClassVar[str | None] = None  # the paper's evaluation augmentation (eval_augment.py: dsa, dc)
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
        return self.real.images(idx, device=self.device), self.real.labels(idx, device=self.device)

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
        """A fresh network (``model``, default the run's) for this data, initialised from ``g``, on the device."""
        from .nets import build_model

        r = self.real
        return memory_format(build_model(model or self.model, r.image_shape[0], r.num_classes, r.image_shape[1:],
                                         generator=g, device=self.device, **kw), self.device)

    def autocast(self):
        """The mixed-precision context of this run (``cfg.amp``; see :func:`distill_apps.runtime.autocast`)."""
        return autocast(self.device, self.cfg.amp)

    def check_memory(self, where: str = "") -> None:
        """Cheap (one ``/proc`` read; nothing without a limit): stop the run with :class:`MemoryBudgetError` when
        the memory limit (``max_memory_gb``) is passed. Long steps call it between classes or unroll chunks (plain
        functions call :func:`distill_apps.memory.check_memory`); the engine then writes the checkpoint of the
        last completed step and adds advice."""
        memory.check_memory(where)

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
        """The summary's metadata: method, paper, data, budget, steps, seed, model, config, versions, ``extra``."""
        return {"method": self.name, "family": self.family, "paper": self.paper, "dataset": self.real.name,
                "ipc": self.ipc, "steps": state.step, "seed": self.seed, "model": self.model,
                "config": self.cfg.as_dict(), "eval_augment": self.eval_augment, "versions": library_versions(),
                "skipped_steps": state.info.get("skipped", 0), **self._provenance(), **extra}

    def _provenance(self) -> dict[str, Any]:
        """The data's source, normalisation and transform (``meta["data"]``), where the data type records them."""
        prov = getattr(self.real, "provenance", None)
        return {"data": prov()} if callable(prov) else {}

    def synthetic(self, state: DistillState, x: torch.Tensor | None, y: torch.Tensor, **kw) -> SyntheticSet:
        """Shorthand for ``export``: the SyntheticSet of images ``x`` and class ids ``y`` (detached CPU copies) with
        this run's metadata. A decoded parameterisation passes ``x=None`` with its stored ``params`` (copied the
        same way), ``decoder`` and ``decoder_spec`` (factorised bases, multi-formation, generator latents)."""
        meta = self.meta(state, **kw.pop("meta", {}))
        if self.real.multilabel and "soft" not in kw and "multi_hot" in state.buffers:
            kw.update(soft=state.buffers["multi_hot"].detach().float().cpu().clone(), label_kind="multilabel")
        if kw.get("params") is not None:
            kw["params"] = {k: v.detach().float().cpu().clone() for k, v in kw["params"].items()}
        x = None if x is None else x.detach().float().cpu().clone()
        return SyntheticSet(x=x, y=y.detach().long().cpu().clone(),
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
                   device: str | torch.device = "auto", model: str | None = None, seed: int = 0) -> Distiller:
    """Build ``method``'s distiller on loaded data ``real`` (of the method's modality; ``real.check_ipc`` says
    what ``ipc`` may be there) with ``model`` (default: the modality's, e.g. ``convnet`` for images)."""
    cls = METHODS.get(method)
    check_modality(cls.modality, real, f"Method {method!r}")
    real.check_ipc(ipc)
    model = model or MODALITIES.get(cls.modality).default_model
    cfg = config if isinstance(config, MethodConfig) else make_config(cls.Config, config, method)
    rank, world = _distributed()
    dev = pick_device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    return cls(real.to(dev), ipc, cfg, dev, model, seed, rank, world)


def distill(method: str = "dm", dataset: str | RealData | None = None, ipc: int = 10, *, steps: int | None = None,
            budget: str = "quick", model: str | None = None, seed: int = 0, device: str = "auto",
            data_root: str | None = None, config: dict[str, Any] | MethodConfig | None = None,
            checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 0, resume: bool | str = False,
            overwrite: bool = False, eval_every: int = 0,
            callbacks: tuple[Callable[[int, dict, DistillState], None], ...] = (), progress: bool = True,
            time_limit: float | None = None, max_memory_gb: float | None = None) -> Summary:
    """Distil ``dataset`` with ``method`` into its summary (a SyntheticSet for images; a CondensedGraph, GraphSet,
    SyntheticInteractions or TextSummary for the other modalities).

    ``dataset`` is a registered name or loaded data of the method's modality (default: the modality's default
    dataset, e.g. ``digits``, ``cora``, ``ml-100k``, ``sst2``); ``ipc`` is the budget in the modality's unit
    (images, condensed nodes, graphs or sentences per class; synthetic users for ``distill_cf``) and ``model`` the
    network (default: the modality's).

    ``dataset`` is a registered name, ``imagefolder:<path>``, a :class:`RealData`, a map-style torch ``Dataset``,
    ``(x, y)`` tensors or a Hugging Face ``Dataset`` (converted by :func:`~distill_apps.data.as_real_data`).

    ``steps`` overrides the method's iteration count; otherwise ``budget="quick"`` (the default, as on the command
    line) runs a CPU-minutes preset and ``budget="paper"`` the paper's count (hours to days on a CPU). With
    ``checkpoint`` and ``checkpoint_every=N`` the state is saved
    atomically every N steps (the last two are kept); ``resume=True`` continues from it (refusing a checkpoint of
    another run; starting fresh with a warning when there is none, or refusing with ``resume="require"``). An
    existing checkpoint is never overwritten by a run that does not resume it, unless ``overwrite=True``.
    ``max_memory_gb`` stops the run (after checkpointing the last completed step) once its current memory passes
    the limit, after a step or inside one, with a message naming what to lower, instead of letting the OS kill it.
    """
    cls = METHODS.get(method)
    dataset = default_dataset(cls) if dataset is None else dataset
    if isinstance(dataset, str):
        check_modality(cls.modality, dataset, f"Method {method!r}")  # before loading anything
    if getattr(cls, "modality", "image") == "image":
        real = as_real_data(dataset, data_root)  # names, image folders, tensors, torch/HF datasets
    else:
        real = load_dataset(dataset, data_root) if isinstance(dataset, str) else dataset
    d = make_distiller(method, real, ipc, config, device, model, seed)
    if budget not in ("paper", "quick"):
        raise ConfigError(f"budget must be 'paper' or 'quick'; got {budget!r}.")
    total = steps if steps is not None else (d.cfg.steps if budget == "paper" else d.cfg.quick_steps)
    return run(d, total, checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume,
               overwrite=overwrite, eval_every=eval_every, callbacks=callbacks, progress=progress,
               time_limit=time_limit, max_memory_gb=max_memory_gb)


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
    """Peak memory of this process so far: CUDA allocator peak on GPUs, max RSS on CPU (reported, not compared:
    see :mod:`distill_apps.memory`)."""
    return memory.peak_gb(device)


def _memory_advice(d: "Distiller") -> str:
    knobs = [k for k in ("batch_real", "batch_syn", "syn_steps", "batch_train", "real_chunk") if hasattr(d.cfg, k)]
    return (f"lower --ipc (now {d.ipc}), " + (f"the batch options {', '.join(knobs)} (--set name=value), " if knobs else "")
            + "use a smaller --model, or add devices with torchrun.")


def _signature(state: DistillState) -> list[Any]:
    """What a step may change, cheaply: every state tensor (by identity) with its in-place version counter, the
    optimiser state sizes and the counters. Equal before and after a failed step means the step changed nothing."""
    sig: list[Any] = [state.step, repr(sorted(state.info.items(), key=str))]
    for group in (state.params, state.buffers):
        sig += [(k, t, t._version) for k, t in sorted(group.items())]
    for m, mod in sorted(state.modules.items()):
        sig += [(m, k, t, t._version) for k, t in mod.state_dict(keep_vars=True).items()]
    for name, opt in sorted(state.optimizers.items()):
        sig.append((name, len(opt.state), repr([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])))
        for st in opt.state.values():
            sig += [(k, v, v._version) if torch.is_tensor(v) else (k, repr(v)) for k, v in st.items()]
    return sig


def _same(a: list[Any], b: list[Any]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, tuple) and isinstance(y, tuple):
            if len(x) != len(y) or any((u is not v) if torch.is_tensor(u) else (u != v) for u, v in zip(x, y)):
                return False
        elif x != y:
            return False
    return True


def _guarded_step(d: "Distiller", state: DistillState, rescue: Callable[[list[Any]], str] | None = None,
                  track: bool = False) -> dict[str, float]:
    """One step; an out-of-memory error (CUDA, or the CPU allocator's ``RuntimeError``) or a memory-limit stop
    inside the step becomes a :class:`MemoryBudgetError` with advice, after ``rescue`` saved what it can
    (given the state's :func:`_signature` from before the step when ``track``)."""
    before = _signature(state) if track else []
    try:
        return d.step(state, generator("step", d.seed, state.step))
    except MemoryBudgetError as exc:
        failure = str(exc)
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
        if not memory.is_out_of_memory(exc):
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        failure = f"{d.name} ran out of memory at step {state.step} ({exc.__class__.__name__}: {first})"
    # outside the except blocks the failed step's tensors are unreachable: free them before writing anything
    gc.collect()
    if d.device.type == "cuda":
        torch.cuda.empty_cache()
    note = rescue(before) if rescue is not None else ""
    raise MemoryBudgetError(f"{failure}: {_memory_advice(d)}{note}")


def _check_run_args(total, checkpoint_every, eval_every, time_limit, max_memory_gb, resume) -> None:
    from .validation import check_float, check_int

    check_int("steps", total, 0)
    check_int("checkpoint_every (--checkpoint-every)", checkpoint_every, 0, hint="0 turns checkpoints off.")
    check_int("eval_every", eval_every, 0)
    if time_limit is not None:
        check_float("time_limit", time_limit, 0.0)
    if max_memory_gb is not None:
        check_float("max_memory_gb (--max-memory)", max_memory_gb, 0.0, lo_open=True)
    if resume not in (False, True, "auto", "require"):
        raise ConfigError(f"resume must be False, True (or 'auto') or 'require'; got {resume!r}.")


def run(d: Distiller, total: int, *, checkpoint=None, checkpoint_every: int = 0, resume: bool | str = False,
        overwrite: bool = False, eval_every: int = 0, callbacks=(), progress: bool = True,
        time_limit: float | None = None, max_memory_gb: float | None = None) -> Summary:
    """Drive ``d`` for ``total`` steps (see :func:`distill`)."""
    _check_run_args(total, checkpoint_every, eval_every, time_limit, max_memory_gb, resume)
    d.total_steps = total
    state = d.init(generator("init", d.seed))
    writer = None
    if checkpoint is not None:
        writer = ckpt.open_for_run(checkpoint, d, state, resume=resume, overwrite=overwrite)
    elif resume:
        raise ConfigError("--resume needs a checkpoint path (--checkpoint, or --out whose .ckpt is used).")
    guard = memory.MemoryGuard(max_memory_gb, d.device, d.name) if max_memory_gb is not None else None
    if guard is not None:
        guard.__enter__()
    saves = writer is not None and d.rank == 0
    snapshot: list[ckpt.Payload | None] = [None]

    def rescue(before: list[Any]) -> str:
        """Checkpoint the last completed step after a memory stop; say where it is (or why there is none)."""
        if writer is None:
            return (" Nothing was saved: run with a checkpoint (--checkpoint-every N) to keep the progress made "
                    "before such a stop.")
        if d.rank != 0:
            return " Rank 0 writes the checkpoint."
        try:
            if _same(before, _signature(state)):
                writer.save(state)
            elif snapshot[0] is not None:
                writer.save(snapshot=snapshot[0])
            elif ckpt.exists(checkpoint):
                return (f" The failed step had already changed the state, so it was not saved; {checkpoint} holds "
                        f"the last checkpoint ({ckpt.describe(checkpoint)}): resume from it with --resume.")
            else:
                return " The failed step had already changed the state and no checkpoint was written before it."
        except DistillError as exc:
            return f" Writing the checkpoint failed too ({exc})."
        return (f" The state after step {state.step} is saved in {checkpoint}: resume from it with --resume once "
                "you have lowered the memory use.")

    start = state.step
    bar = None
    if progress and d.rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start, desc=f"{d.name} {d.real.name} ipc{d.ipc}", dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        while state.step < total:
            if guard is not None:
                guard.step = state.step
                if saves:  # a step may stop half-way: keep what the checkpoint would hold now
                    snapshot[0] = ckpt.payload(d, state, clone=True)
            metrics = _guarded_step(d, state, rescue, track=saves)
            snapshot[0] = None
            state.step += 1
            if any(isinstance(v, float) and not math.isfinite(v) for v in metrics.values()):
                state.info["nonfinite_metric_steps"] = state.info.get("nonfinite_metric_steps", 0) + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float))},
                                refresh=False)
            for cb in callbacks:
                cb(state.step, metrics, state)
            if eval_every and state.step % eval_every == 0 and d.rank == 0:
                from .evaluate import evaluate

                res = evaluate(d.export(state), d.real, runs=1, epochs=min(300, 100), device=str(d.device),
                               progress=False)
                msg = f"step {state.step}: quick eval {res}"
                (bar.write if bar else print)(msg)
            last = state.step == total
            saved = False
            if saves and checkpoint_every and (state.step % checkpoint_every == 0 or last):
                writer.save(state)
                saved = True
            now = guard.over() if guard is not None else None
            if now is not None:
                if saves and not saved:
                    writer.save(state)
                where = (f" The state after step {state.step} is saved in {checkpoint}: resume from it with --resume."
                         if saves else "")
                raise MemoryBudgetError(
                    f"{d.name} passed the memory limit of {max_memory_gb:.2f} GB (now {now:.2f} GB, peak "
                    f"{peak_memory_gb(d.device):.2f} GB) after step {state.step}: " + _memory_advice(d) + where)
            if time_limit is not None and time.perf_counter() - t0 > time_limit:
                break
    finally:
        if guard is not None:
            guard.__exit__()
        if bar is not None:
            bar.close()
    return d.export(state)
