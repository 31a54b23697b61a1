"""The field's evaluation protocol (Zhao et al. 2021; Cazenavette et al. 2022), one function for every variant.

``protocol="train"`` (default): train fresh models from scratch on the summary (ConvNet-3 by default; SGD lr
0.01 or the summary's learned lr, momentum 0.9, wd 5e-4, batch 256, lr x0.1 at half; 300 epochs, 1000 with
DSA augmentation) and test on the real test split; mean +- std over ``runs``. Any registered model can be named
for cross-architecture checks. ``protocol="krr"`` is the kernel methods' own protocol (KIP/RFAD/FRePO): kernel
ridge regression on the summary, registered by the kernel module. Results always say which protocol ran.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .augment import DSA
from .data import RealData, load_dataset
from .errors import DataError
from .nets import build_model
from .registry import Registry
from .runtime import generator, pick_device
from .summary import SyntheticSet
from .train import accuracy, fit

PROTOCOLS: Registry[Callable[..., "EvalResult"]] = Registry("evaluation protocol")
register_protocol = PROTOCOLS.register


@dataclass
class EvalResult:
    accuracy_mean: float
    accuracy_std: float
    accuracies: list[float]
    runs: int
    model: str
    dataset: str
    protocol: str
    epochs: int | None
    augment: str | None
    lr: float | None
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"{100 * self.accuracy_mean:.2f} +- {100 * self.accuracy_std:.2f} % "
                f"({self.protocol}, {self.model}, {self.runs} runs)")


def check_compatible(summary: SyntheticSet, real: RealData) -> None:
    """Refuse evaluating a summary on a dataset of another image shape or class count."""
    if tuple(summary.image_shape) != tuple(real.image_shape):
        raise DataError(f"The summary holds {tuple(summary.image_shape)} images but {real.name} has "
                        f"{tuple(real.image_shape)}: evaluate on the dataset it was distilled from "
                        f"({summary.meta.get('dataset', 'unknown')}).")
    if summary.num_classes != real.num_classes:
        raise DataError(f"The summary has {summary.num_classes} classes but {real.name} has {real.num_classes}.")


def evaluate(summary: SyntheticSet, dataset: RealData | str | None = None, *, model: str = "convnet",
             runs: int = 3, epochs: int | None = None, lr: float | None = None, batch_size: int = 256,
             augment: str | None = "auto", protocol: str = "train", seed: int = 0, device: str = "auto",
             data_root: str | None = None, progress: bool = False, **kw) -> EvalResult:
    """Evaluate ``summary`` on the real test split of ``dataset`` (default: the one it was distilled from).

    ``augment="auto"`` uses DSA when the summary's method was distilled with it (and then 1000 epochs, as in
    the DSA/DM papers), none otherwise; pass ``"dsa"`` or ``None`` to choose.
    """
    dev = pick_device(device)
    if dataset is None:
        dataset = summary.meta.get("dataset")
        if dataset is None:
            raise DataError("The summary does not name its dataset: pass dataset=...")
    real = load_dataset(dataset, data_root) if isinstance(dataset, str) else dataset
    check_compatible(summary, real)
    return PROTOCOLS.get(protocol)(summary, real, model=model, runs=runs, epochs=epochs, lr=lr,
                                   batch_size=batch_size, augment=augment, seed=seed, device=dev,
                                   progress=progress, **kw)


@register_protocol("train")
def train_from_scratch(summary: SyntheticSet, real: RealData, *, model: str, runs: int, epochs: int | None,
                       lr: float | None, batch_size: int, augment: str | None, seed: int, device: torch.device,
                       progress: bool = False, amp: bool = True,
                       on_student: Callable[[torch.nn.Module, int], Any] | None = None) -> EvalResult:
    """``on_student(net, run)`` is called with every trained model (e.g. to attack it, see robustness.py)."""
    t0 = time.perf_counter()
    m = summary.materialize()
    if augment == "auto":
        augment = "dsa" if summary.meta.get("eval_augment") == "dsa" else None
    if epochs is None:
        epochs = 1000 if augment == "dsa" else 300
    lr_used = lr if lr is not None else (summary.lr or 0.01)
    dsa = DSA.for_dataset(real.flip_invariant) if augment == "dsa" else None
    target = m.soft if m.soft is not None else m.y
    accs: list[float] = []
    it = range(runs)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"evaluate {model}", leave=False)
    x_test, y_test = real.x_test.to(device), real.y_test
    for r in it:
        g = generator("evaluate", seed, r)
        net = build_model(model, real.image_shape[0], real.num_classes, real.image_shape[1:], generator=g,
                          device=device)
        fit(net, m.x.to(device), target.to(device), epochs=epochs, lr=lr_used, batch_size=batch_size,
            label_kind=m.label_kind, augment=(lambda xb, gg: dsa(xb, gg)) if dsa else None, generator=g, amp=amp)
        accs.append(accuracy(net, x_test, y_test))
        if on_student is not None:
            on_student(net, r)
    return EvalResult(float(np.mean(accs)), float(np.std(accs)), accs, runs, model, real.name, "train",
                      epochs, augment, lr_used, time.perf_counter() - t0)
