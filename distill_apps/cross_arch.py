"""Cross-architecture evaluation: one summary trained into several networks, each beside a random real subset.

Every paper of the field reports how a summary distilled with one network (ConvNet) trains others (DC, ICLR 2021,
Table 2; DSA; DM; MTT): :func:`evaluate_cross_arch` runs :func:`distill_apps.evaluate.evaluate` for each model
of the zoo under one protocol (the summary's augmentation and epochs), and evaluates a random real subset of the
same size (same images per class, drawn with the summary's seed) under the very same protocol as the baseline of
each architecture. ``distill-apps evaluate PATH --models convnet,mlp,...`` prints the same table.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from .data import RealData, data_for_summary
from .errors import ConfigError, DataError
from .eval_augment import auto_augment, check_augment
from .evaluate import EvalResult, evaluate
from .nets import check_model_name
from .summary import SyntheticSet

ZOO = ("convnet", "mlp", "lenet", "alexnet", "vgg11", "resnet18")  # DC's cross-architecture pool ("M")


@dataclass(repr=False)
class CrossArchResult:
    """Per model: the summary's :class:`EvalResult` and (unless turned off) the random subset's."""

    dataset: str
    method: str | None
    ipc: int
    models: list[str]
    summary: dict[str, EvalResult]
    baseline: dict[str, EvalResult] = field(default_factory=dict)
    baseline_seed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The table as a JSON-ready dict (per model: summary and random-subset results)."""
        rows = []
        for m in self.models:
            s, b = self.summary[m], self.baseline.get(m)
            rows.append({"model": m, "summary": s.as_dict(), "random": b.as_dict() if b else None})
        return {"dataset": self.dataset, "method": self.method, "ipc": self.ipc, "models": list(self.models),
                "baseline": "random" if self.baseline else None, "baseline_seed": self.baseline_seed,
                "rows": rows}

    def __repr__(self) -> str:
        from .reprs import one_line

        scores = [f"{m} {100 * self.summary[m].accuracy_mean:.1f}"
                  + (f"/{100 * self.baseline[m].accuracy_mean:.1f}" if m in self.baseline else "") for m in self.models]
        return one_line("CrossArchResult", [self.method or "summary", self.dataset, f"ipc {self.ipc}",
                                            "% summary/random:" if self.baseline else "%:", *scores])

    def table(self) -> str:
        """A text table: one row per model (summary, random subset, epochs and augmentation)."""
        name = self.method or "summary"
        head = f"{'model':<12} {name:>16} {'random':>16}  protocol"
        lines = [f"{self.dataset}, {self.ipc} images per class: test accuracy (%) over "
                 f"{next(iter(self.summary.values())).runs} runs", head, "-" * len(head)]
        for m in self.models:
            s, b = self.summary[m], self.baseline.get(m)
            rnd = f"{100 * b.accuracy_mean:6.2f} +- {100 * b.accuracy_std:5.2f}" if b else f"{'-':>16}"
            detail = s.extra.get("augment_detail")
            aug = s.augment + (f" ({detail})" if detail and detail != s.augment else "")
            lines.append(f"{m:<12} {100 * s.accuracy_mean:6.2f} +- {100 * s.accuracy_std:5.2f} {rnd}  "
                         f"{s.epochs} epochs, augment {aug}")
        return "\n".join(lines)


def summary_ipc(summary: SyntheticSet) -> int:
    """Images per class the summary stands for: its ``ipc`` metadata, else its largest class count."""
    ipc = summary.meta.get("ipc")
    if ipc:
        return int(ipc)
    y = summary.materialize().y
    if y is None or y.ndim != 1 or y.numel() == 0:
        raise DataError("The summary does not say its images per class and has no class ids to count; set "
                        "summary.meta['ipc'] or pass baseline=False.")
    return int(y.bincount().max())


def parse_models(models: str | Sequence[str]) -> list[str]:
    """``"convnet,mlp"`` or a list -> checked model names (unknown names raise listing the registered ones)."""
    names = [m.strip() for m in (models.split(",") if isinstance(models, str) else models) if m and m.strip()]
    if not names:
        raise ConfigError(f"No models named: give a comma-separated list such as {','.join(ZOO)}.")
    for n in names:
        check_model_name(n)  # unknown names and options fail here, before anything trains
    if len(set(names)) != len(names):
        raise ConfigError(f"A model is named twice in {','.join(names)}.")
    return names


def evaluate_cross_arch(summary: SyntheticSet, dataset: RealData | str | None = None, *,
                        models: str | Sequence[str] = ZOO, runs: int = 3, epochs: int | None = None,
                        augment: str | None = "auto", baseline: bool = True, seed: int = 0, device: str = "auto",
                        data_root: str | None = None, progress: bool | None = None, **kw) -> CrossArchResult:
    """Evaluate ``summary`` with each of ``models`` (default DC's six) and, beside it, a random real subset.

    The protocol is one for the whole table: ``augment`` (``auto``: the summary's paper's) is resolved once from
    the summary and used for the baseline too, as are ``epochs`` (``None``: 1,000 when augmenting, else 300),
    ``runs`` and ``seed``. The random subset has the summary's images per class and is drawn with the seed it was
    distilled with (``meta["seed"]``, default 0). Extra keywords go to :func:`~distill_apps.evaluate.evaluate`.
    ``progress``: bars over each evaluation's runs and steps (``None``: when someone watches, as ``evaluate``).
    """
    from .fit_summary import auto_progress

    progress = auto_progress(progress)
    names = parse_models(models)
    aug = check_augment(augment)
    if aug == "auto":
        aug = auto_augment(summary)
    real = data_for_summary(summary, dataset, data_root, progress=progress)  # names, folders, objects; ZCA again
    common = dict(runs=runs, epochs=epochs, augment=aug, seed=seed, device=device, progress=progress, **kw)
    results = {m: evaluate(summary, real, model=m, **common) for m in names}
    ipc, base, base_seed = summary_ipc(summary), {}, None
    if baseline:
        from .fair import random_subset

        base_seed = int(summary.meta.get("seed", 0) or 0)
        rnd = random_subset(real, ipc, base_seed, device=device)  # the augmentation is given explicitly (common)
        base = {m: evaluate(rnd, real, model=m, **common) for m in names}
    return CrossArchResult(real.name, summary.meta.get("method"), ipc, names, results, base, base_seed)
