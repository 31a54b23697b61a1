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

from .data import RealData, data_for_summary
from .errors import DataError
from .eval_augment import check_augment, resolve_augment
from .fit_summary import auto_progress, fresh_model, learned_lr, run_range, score, train_on_summary
from .modality import check_modality
from .registry import Registry
from .runtime import generator, pick_device
from .summaries import Summary
from .summary import SyntheticSet

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
    metric: str = "accuracy"  # what accuracy_* hold: "accuracy", or e.g. "ndcg@10" for recommenders

    def as_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return asdict(self)

    def score(self) -> str:
        """Mean +- std: in percent for accuracy, else the metric's value."""
        if self.metric == "accuracy":
            return f"{100 * self.accuracy_mean:.2f} +- {100 * self.accuracy_std:.2f} %"
        return f"{self.metric} {self.accuracy_mean:.4f} +- {self.accuracy_std:.4f}"

    def __str__(self) -> str:
        aug = f", augment {self.augment}" if self.augment else ""
        detail = self.extra.get("augment_detail")
        aug += f" ({detail})" if detail and detail != self.augment else ""
        ep = f", {self.epochs} epochs" if self.epochs is not None else ""
        return f"{self.score()} ({self.protocol}, {self.model}, {self.runs} runs{ep}{aug})"


def check_compatible(summary: SyntheticSet, real: RealData) -> None:
    """Refuse evaluating a summary on a dataset of another image shape or class count."""
    if tuple(summary.image_shape) != tuple(real.image_shape):
        raise DataError(f"The summary holds {tuple(summary.image_shape)} images but {real.name} has "
                        f"{tuple(real.image_shape)}: evaluate on the dataset it was distilled from "
                        f"({summary.meta.get('dataset', 'unknown')}).")
    if summary.num_classes != real.num_classes:
        raise DataError(f"The summary has {summary.num_classes} classes but {real.name} has {real.num_classes}.")


def evaluate(summary: Summary, dataset: Any = None, *, model: str | None = None,
             runs: int = 3, epochs: int | None = None, lr: float | None = None, batch_size: int = 256,
             augment: str | None = "auto", protocol: str | None = None, seed: int = 0, device: str = "auto",
             data_root: str | None = None, progress: bool | None = None, force_dataset: bool = False,
             **kw) -> EvalResult:
    """Evaluate ``summary`` on the real test split of ``dataset`` (default: the one it was distilled from, as its
    metadata records it; any data object :func:`~distill_apps.data.as_real_data` takes). The summary's data
    transform (ZCA) is applied again to the test images.

    ``augment`` names an evaluation augmentation (:mod:`distill_apps.eval_augment`: ``none``, ``dsa``, ``dc``);
    ``"auto"`` uses the one the summary's paper evaluates with (``dc`` for DC, ``dsa`` for DSA/DM/MTT...), and
    ``epochs=None`` then means 1,000 epochs when augmenting and 300 otherwise. The result names the augmentation
    (``augment``, and what it did in ``extra["augment_detail"]``). For several architectures with a random-subset
    baseline, see :func:`distill_apps.cross_arch.evaluate_cross_arch`. ``model`` defaults to ``convnet`` and
    ``protocol`` to ``train``. A dataset other than the one in the summary's metadata is refused
    unless ``force_dataset=True`` (then a warning says so). A summary of another modality (graph, recommender,
    text) is scored by its own protocol (``summary.evaluate``) with the same ``runs``/``epochs``/``lr``/``seed``
    options. ``progress`` shows a bar over the runs and one over each run's training steps; ``None`` (default)
    shows them when someone watches (a terminal or a notebook, see :func:`~distill_apps.fit_summary.auto_progress`).
    Every protocol trains through :func:`~distill_apps.fit_summary.train_on_summary` and scores with
    :func:`~distill_apps.fit_summary.score`.
    """
    from .validation import check_int, check_same_dataset

    check_int("runs", runs, 1)
    progress = auto_progress(progress)
    if epochs is not None:
        check_int("epochs", epochs, 1)
    if not isinstance(summary, SyntheticSet):
        return summary.evaluate(dataset, model=model, runs=runs, epochs=epochs, lr=lr, augment=augment,
                                protocol=protocol, seed=seed, device=device, data_root=data_root, progress=progress,
                                **kw)
    model, protocol = model or "convnet", protocol or summary.meta.get("eval_protocol") or "train"
    if protocol != "softlabel":  # the soft-label protocol has its own augmentations (crop, cutmix)
        augment = check_augment(augment)
    dev = pick_device(device)
    if dataset is not None:
        check_modality("image", dataset, f"An image summary ({summary.meta.get('method', 'unknown method')})")
    real = data_for_summary(summary, dataset, data_root, progress=progress)
    check_same_dataset(summary.meta, real, force_dataset)
    check_compatible(summary, real)
    if real.size("test") == 0:
        raise DataError(f"{real.name} has no test split to evaluate on: give one (da.from_tensors(x_train, y_train, "
                        "x_test, y_test) or da.from_torch(train, test)).")
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
    data = summary.training_data(device)  # decoded once (factorised: in chunks, or per minibatch when large)
    lr_used = learned_lr(summary, lr)
    accs: list[float] = []
    aug = None
    for r in run_range(runs, f"evaluate {model}", progress):
        g = generator("evaluate", seed, r)
        net = fresh_model(model, real, g, device)
        if aug is None:  # the augmentation (and so the epoch count) may depend on the net: DC's crop_noise for BN
            aug = resolve_augment(augment, summary, real, net)
            epochs = aug.default_epochs() if epochs is None else epochs
        train_on_summary(summary, net, epochs=epochs, lr=lr_used, batch_size=batch_size, augment=aug,
                         training_data=data, generator=g, amp=amp, progress=progress)
        accs.append(score(net, real))
        if on_student is not None:
            on_student(net, r)
    return EvalResult(float(np.mean(accs)), float(np.std(accs)), accs, runs, model, real.name, "train",
                      epochs, aug.name, lr_used, time.perf_counter() - t0, extra={"augment_detail": aug.detail})
