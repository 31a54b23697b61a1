"""Train a fresh model on a summary and score it: the one way every protocol, adapter and recipe does both.

:func:`train_on_summary` is the field's evaluation training for one model (Zhao, Mopuri & Bilen, ICLR 2021;
Cazenavette et al., CVPR 2022): the summary's images (a factorised summary decoded once, or minibatch by
minibatch when large), its soft, multi-label or regression targets when it has them, its learned learning rate
when it carries one (an explicit ``lr``, ``0`` included, always wins), an evaluation augmentation by name
(:mod:`distill_apps.eval_augment`), and a schedule: step decay at half (the default), cosine, none, or DD's
learned per-step learning rates (Wang et al. 2018). It trains through the one loop, :func:`distill_apps.train.fit`.
:func:`score` tests a model on a split of real data; :func:`fresh_model` builds the network for the data.

The evaluation protocols (``train``, ``softlabel``, ``schedule``), the medical, NNI and Flower adapters and the
privacy audit all call these two, so their defaults cannot drift apart.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .eval_augment import EvalAugmentation, resolve_augment
from .errors import ConfigError
from .nets import build_model
from .registry import Registry
from .runtime import memory_format
from .train import accuracy, fit, predict

__all__ = ["train_on_summary", "score", "fresh_model", "learned_lr", "resolve_transform", "DataTraits",
           "auto_progress", "run_range", "METRICS", "DEFAULT_LR"]

#: learning rate of the field's protocol when neither the caller nor the summary gives one
DEFAULT_LR = 0.01

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
METRICS: Registry[Callable[[nn.Module, Any, torch.Tensor, int], Any]] = Registry("score metric")


def auto_progress(progress: bool | None) -> bool:
    """``progress`` itself when given; ``None`` means "when someone watches": stderr is a terminal, or the code
    runs in a Jupyter/IPython kernel. Pipes, logs and CI stay quiet."""
    if progress is not None:
        return bool(progress)
    if "ipykernel" in sys.modules:
        return True
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def run_range(runs: int, desc: str, progress: bool):
    """``range(runs)``, under a progress bar named ``desc`` when ``progress``: the outer bar of an evaluation
    (one tick per trained model; :func:`train_on_summary` draws the inner bar over its steps)."""
    if not progress:
        return range(runs)
    from tqdm.auto import tqdm

    return tqdm(range(runs), desc=desc, unit="run", leave=False)


def learned_lr(summary: Any, lr: float | None = None, default: float = DEFAULT_LR) -> float:
    """The learning rate a model trained on ``summary`` uses: ``lr`` when given (``0`` is honoured, not read as
    "unset"), else the summary's learned learning rate (``summary.lr``), else ``default``."""
    if lr is not None:
        return lr
    own = getattr(summary, "lr", None)
    return own if own is not None else default


@dataclass(frozen=True)
class DataTraits:
    """What an evaluation augmentation needs to know of the data when no :class:`~distill_apps.data.RealData`
    is at hand (e.g. a NAS proxy task): its name, image shape and whether flips preserve its classes."""

    name: str
    image_shape: tuple[int, ...]
    flip_invariant: bool = False

    @classmethod
    def of(cls, summary: Any, flip_invariant: bool = False) -> "DataTraits":
        """The traits of the data ``summary`` was distilled from (name from its metadata)."""
        return cls(str(summary.meta.get("dataset") or ""), tuple(summary.image_shape), bool(flip_invariant))


def fresh_model(model: str, data: Any, generator: torch.Generator, device: torch.device | str | None = None
                ) -> nn.Module:
    """A freshly initialised registered ``model`` (drawn from ``generator``) for ``data``'s image shape and
    classes, on ``device`` in its memory format."""
    net = build_model(model, data.image_shape[0], data.num_classes, data.image_shape[1:], generator=generator,
                      device=device)
    return memory_format(net, torch.device(device)) if device is not None else net


def resolve_transform(augment: Any, summary: Any, data: Any, model: nn.Module) -> EvalAugmentation:
    """``augment`` as an :class:`~distill_apps.eval_augment.EvalAugmentation`: ``None``/``"none"``, a
    registered name or ``"auto"`` (resolved for ``data`` and ``model``), an ``EvalAugmentation``, or a callable
    ``(images, generator) -> images``."""
    if isinstance(augment, EvalAugmentation):
        return augment
    if augment is None or isinstance(augment, str):
        return resolve_augment(augment, summary, data if data is not None else DataTraits.of(summary), model)
    if callable(augment):
        return EvalAugmentation(getattr(augment, "__name__", "custom"), "custom", augment)
    raise ConfigError(f"augment must be a registered name, an EvalAugmentation or a callable (images, generator) "
                      f"-> images; got {type(augment).__name__}.")


def train_on_summary(summary: Any, model: nn.Module, *, epochs: int | None = None, steps: int | None = None,
                     lr: float | None = None, default_lr: float = DEFAULT_LR, batch_size: int = 256,
                     momentum: float = 0.9, weight_decay: float = 5e-4,
                     optimizer: str | torch.optim.Optimizer = "sgd", schedule: str | Sequence[float] | None = None,
                     augment: Any = None, data: Any = None, label_kind: str | None = None,
                     target_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, temperature: float = 1.0,
                     training_data: tuple[Any, torch.Tensor, str] | None = None,
                     generator: torch.Generator | None = None, device: torch.device | str | None = None,
                     amp: bool = True, progress: bool = False) -> nn.Module:
    """Train ``model`` (fresh: see :func:`fresh_model`) on ``summary`` with :func:`~distill_apps.train.fit`;
    returns the model.

    - data: ``summary.training_data(device)`` (images, soft labels when present else class ids, label kind), or
      ``training_data=(images, target, label_kind)`` computed once for several runs; ``label_kind`` overrides.
    - ``lr``: see :func:`learned_lr` (``None``: the summary's learned rate, else ``default_lr``; ``0`` stays 0).
    - ``augment``: see :func:`resolve_transform`; names are resolved for ``data`` (the real data: its name,
      image shape and flips; default :meth:`DataTraits.of` the summary).
    - ``epochs``/``steps``: at most one; neither means the field's count (1,000 epochs when augmenting, else 300).
    - ``schedule``: ``"step"`` (lr x0.1 at half; default), ``"cosine"``, ``"none"``, or a sequence of per-step
      learning rates: one plain full-batch gradient step on the whole summary per entry, in order (DD).
    - ``optimizer``: ``"sgd"`` (``momentum``, ``weight_decay``), ``"adamw"`` (``weight_decay``) or an optimiser.
    - ``target_fn``/``temperature``: per-minibatch targets by a teacher (the soft-label protocol).
    - ``generator`` draws the minibatch order and the augmentation; ``device`` moves the model (default: where
      it is); ``progress`` shows a bar over the training steps.
    """
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    if device is not None:
        model = model.to(dev)
    x, target, kind = training_data if training_data is not None else summary.training_data(dev)
    kind = label_kind or kind
    aug = resolve_transform(augment, summary, data, model)
    shuffle = True
    if schedule is not None and not isinstance(schedule, str):
        schedule = [float(v) for v in schedule]
        if epochs is not None or steps is not None:
            raise ConfigError("A per-step learning-rate schedule sets the number of steps itself (one per rate); "
                              "drop epochs/steps.")
        steps, batch_size, shuffle = len(schedule), max(1, len(x)), False
    elif epochs is not None and steps is not None:
        raise ConfigError("Give epochs or steps to train on a summary, not both.")
    elif epochs is None and steps is None:
        epochs = aug.default_epochs()
    lr_used = learned_lr(summary, lr, default_lr)
    if not 0 <= lr_used < float("inf"):
        raise ConfigError(f"The learning rate must be >= 0 and finite; got {lr_used}. Pass lr=None to use the "
                          "summary's learned rate (else 0.01).")
    opt = None
    if isinstance(optimizer, torch.optim.Optimizer):
        opt = optimizer
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=lr_used, weight_decay=weight_decay)
    elif optimizer != "sgd":
        raise ConfigError(f"optimizer must be 'sgd', 'adamw' or a torch optimiser; got {optimizer!r}.")
    return fit(model, x, target, epochs=epochs, steps=steps, lr=lr_used, batch_size=batch_size, momentum=momentum,
               weight_decay=weight_decay, label_kind=kind, augment=aug.transform, generator=generator, amp=amp,
               optimizer=opt, progress=progress, schedule=schedule, target_fn=target_fn, temperature=temperature,
               shuffle=shuffle)


def _split(data: Any, split: str, device: torch.device) -> tuple[Any, torch.Tensor]:
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise ConfigError("score() takes real data (RealData) or an (images, labels) pair.")
        return data[0], data[1]
    y = data.labels(None, split)  # raises DataError naming a split the data lacks
    return data.view(split, device), y


def score(model: nn.Module, data: Any, split: str = "test", metric: str | Callable[..., Any] = "accuracy",
          batch_size: int = 1024) -> Any:
    """``model``'s ``metric`` on ``split`` of ``data`` (:class:`~distill_apps.data.RealData`, normalised batch by
    batch on the model's device, or an ``(images, labels)`` pair).

    ``metric``: a registered name (``accuracy``: top-1, or per-label accuracy for multi-hot labels) or a
    callable ``(logits, labels) -> value`` (e.g. MedMNIST's AUC), given the model's float32 logits."""
    dev = next(model.parameters()).device
    x, y = _split(data, split, dev)
    if callable(metric):
        return metric(predict(model, x, batch_size), y)
    return METRICS.get(metric)(model, x, y, batch_size)


@METRICS.register("accuracy")
def _accuracy(model: nn.Module, x: Any, y: torch.Tensor, batch_size: int) -> float:
    return accuracy(model, x, y, batch_size)
