"""The proxy task: what each candidate trains on (a distilled summary) and is scored on (held-out *real*
training images, never the test split), and the NNI evaluator that reports the score."""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nni
import torch
from nni.nas.evaluator import FunctionalEvaluator
from torch import nn

import distill_apps as da
from distill_apps import RealData, SyntheticSet
from distill_apps.errors import ConfigError, DataError
from distill_apps.fit_summary import DataTraits
from distill_apps.runtime import generator, pick_device
from distill_apps.safe_io import read, write

from .space import reinit_

__all__ = ["holdout_split", "ProxyTask", "train_and_score", "evaluate_on_proxy", "proxy_evaluator"]

VAL_KIND, VAL_VERSION = "nas-validation", 1


def holdout_split(real: RealData, val_per_class: int, seed: int = 0) -> tuple[RealData, torch.Tensor, torch.Tensor]:
    """Hold ``val_per_class`` real training images of every class out: ``(rest, x_val, y_val)``.

    The search scores candidates on these (never on the test split); distil the proxies from ``rest``.
    """
    if val_per_class < 1:
        raise ConfigError(f"val_per_class must be >= 1; got {val_per_class}.")
    smallest = min(real.class_counts())
    if val_per_class >= smallest:
        raise ConfigError(f"val_per_class={val_per_class} leaves no training image in the smallest class of "
                          f"{real.name} ({smallest} images): use --val-per-class {max(1, smallest // 5)}.")
    val = real.sample_balanced(val_per_class, generator("nas-holdout", seed))
    keep = torch.ones(real.x_train.shape[0], dtype=torch.bool)
    keep[val] = False
    rest = real.subset(torch.nonzero(keep).flatten())
    return rest, real.x_train[val], real.y_train[val]


@dataclass(repr=False)
class ProxyTask:
    """What each candidate trains on (``summary``) and is scored on (held-out real ``x_val``, ``y_val``).

    ``lr=None`` uses the summary's learned lr (else 0.01); soft labels are used when the summary has them;
    ``augment="auto"`` trains with DSA when the summary's method is evaluated with it (as the papers do).
    """

    summary: SyntheticSet
    x_val: torch.Tensor
    y_val: torch.Tensor
    epochs: int = 300
    lr: float | None = None
    weight_decay: float = 5e-4
    momentum: float = 0.9
    batch_size: int = 256
    augment: str | None = "auto"
    flip_invariant: bool = False
    seed: int = 0
    device: str = "cpu"

    def __repr__(self) -> str:
        from distill_apps.reprs import one_line

        return one_line("ProxyTask", [f"{self.summary.meta.get('method', 'summary')} {len(self.summary)} images",
                                      f"{len(self.y_val)} validation images", f"{self.epochs} epochs",
                                      f"augment {self.augment}", self.device])

    def __post_init__(self) -> None:
        """Refuse epochs < 1 and validation images that do not match the summary's shape or labels."""
        if self.epochs < 1:
            raise ConfigError(f"proxy epochs must be >= 1; got {self.epochs}.")
        if self.x_val.ndim != 4 or tuple(self.x_val.shape[1:]) != tuple(self.summary.image_shape):
            raise DataError(f"validation images {tuple(self.x_val.shape)} do not match the summary's image shape "
                            f"{tuple(self.summary.image_shape)}: hold out images of the dataset it was distilled from.")
        if self.x_val.shape[0] != self.y_val.shape[0] or self.x_val.shape[0] == 0:
            raise DataError(f"validation split needs as many labels as images (and at least one); got "
                            f"{self.x_val.shape[0]} images and {self.y_val.shape[0]} labels.")
        if self.augment not in ("auto", "dsa", None, "none"):
            raise ConfigError(f"augment must be 'auto', 'dsa' or None; got {self.augment!r}.")

    @property
    def augment_used(self) -> str | None:
        """The augmentation candidates train with: DSA when ``auto`` and the summary is evaluated with it, else the one
        given."""
        if self.augment == "auto":
            return "dsa" if self.summary.meta.get("eval_augment") == "dsa" else None
        return None if self.augment == "none" else self.augment

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the task (summary + validation split + options) under ``folder`` for trial processes."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.summary.save(folder / "proxy.safetensors")
        opts = {k: v for k, v in asdict(self).items() if k not in ("summary", "x_val", "y_val")}
        write(folder / "validation.safetensors", {"x": self.x_val, "y": self.y_val}, {"options": opts}, VAL_KIND,
              VAL_VERSION)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "ProxyTask":
        """Read a task :meth:`save` wrote (in a trial process)."""
        folder = Path(folder)
        tensors, header = read(folder / "validation.safetensors", VAL_KIND, VAL_VERSION)
        return cls(SyntheticSet.load(folder / "proxy.safetensors"), tensors["x"], tensors["y"], **header["options"])


def train_and_score(model: nn.Module, task: ProxyTask, *, lr: float | None = None,
                    weight_decay: float | None = None, epochs: int | None = None,
                    batch_size: int | None = None, seed: int | None = None) -> dict[str, float]:
    """Train ``model`` on the task's summary with :func:`distill_apps.train_on_summary`; score on the real split.

    Keyword overrides are the hyper-parameters HPO tunes. Returns ``accuracy`` (validation), ``train_seconds``
    and ``seconds`` (training + scoring).
    """
    dev = pick_device(task.device)
    t0 = time.perf_counter()
    m = task.summary.materialize()
    g = generator("nas-proxy-train", task.seed if seed is None else seed)
    model = model.to(dev)
    da.train_on_summary(m, model, epochs=epochs or task.epochs, lr=lr if lr is not None else task.lr,
                        weight_decay=task.weight_decay if weight_decay is None else weight_decay,
                        momentum=task.momentum, batch_size=batch_size or task.batch_size,
                        augment=task.augment_used, data=DataTraits.of(m, task.flip_invariant), generator=g)
    t1 = time.perf_counter()
    acc = da.score(model, (task.x_val.to(dev), task.y_val))
    return {"accuracy": acc, "train_seconds": t1 - t0, "seconds": time.perf_counter() - t0}


def evaluate_on_proxy(model: nn.Module, task: ProxyTask, seed: int = 0, **hparams: Any) -> float:
    """NNI evaluator function: re-initialise ``model`` from ``seed``, train it on the proxy, report accuracy.

    ``nni.report_final_result`` receives the validation accuracy as a float (higher is better), the metric
    NNI's strategies sort by. ``hparams`` (lr, weight_decay, epochs, batch_size) may be NNI mutables; the
    evaluator sees their sampled values.
    """
    reinit_(model, generator("nas-candidate-init", seed))
    res = train_and_score(model, task, seed=seed, **hparams)
    nni.report_final_result(float(res["accuracy"]))
    return float(res["accuracy"])


def proxy_evaluator(task: ProxyTask, seed: int = 0, **hparams: Any) -> FunctionalEvaluator:
    """A ``FunctionalEvaluator`` running :func:`evaluate_on_proxy` on ``task`` (``hparams`` may be mutables)."""
    return FunctionalEvaluator(evaluate_on_proxy, task=task, seed=seed, **hparams)
