"""Modalities: what kind of data a method distils, what its budget counts, and its default dataset and model.

Every method class names its ``modality`` (``"image"`` by default); datasets are registered with one
(``register_dataset(..., modality=...)``) and loaded data objects carry it as a ``modality`` attribute (image data,
:class:`~distill_apps.data.RealData`, counts as ``"image"``). Summaries name theirs too. :func:`check_modality` is
the one place that refuses pairing a method or a summary with data of another modality. The image modality is
registered here; each other one by its module in :mod:`distill_apps.modalities`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError
from .registry import Registry

# (data, summary, ipc, seed, device) -> a random-real-data summary of the same budget, scored by the same protocol
Baseline = Callable[[Any, Any, int, int, str], Any]


@dataclass(frozen=True)
class Modality:
    """What the registry knows about a modality: the meaning of ``ipc``, the default dataset and model, and the
    random baseline the CLI compares a summary with."""

    name: str
    ipc: str  # what the ``ipc`` budget counts (shown by ``distill-apps methods`` and ``--help``)
    default_dataset: str
    default_model: str
    baseline: Baseline | None = None
    quick_eval_epochs: int | None = None  # the CLI's evaluation epochs under --budget quick (None: the protocol's)


MODALITIES: Registry[Modality] = Registry("modality")


def register_modality(m: Modality) -> Modality:
    """Make a modality known (its methods still register with ``@register_method``)."""
    return MODALITIES.register(m.name)(m)


def modality_of(obj: Any) -> str:
    """The modality of a loaded dataset, a summary or a method class (``"image"`` when it names none)."""
    return getattr(obj, "modality", "image")


def datasets_of(modality: str) -> list[str]:
    """Registered dataset names of ``modality``."""
    from .data import DATASETS

    return [n for n in DATASETS.names() if getattr(DATASETS.get(n), "modality", "image") == modality]


def dataset_modality(name: str) -> str | None:
    """The modality a dataset name is registered with (``family:arg`` names by their family); None if unknown."""
    from .data import DATASETS

    key = name if name in DATASETS else name.split(":", 1)[0]
    return getattr(DATASETS.get(key), "modality", "image") if key in DATASETS else None


def check_modality(modality: str, data: Any, who: str) -> None:
    """Refuse ``data`` (a loaded dataset or a dataset name) when it is not of ``modality``, naming the datasets
    that are; ``who`` is what needs the data ("method 'gcond'", "a condensed_graph summary")."""
    kind = dataset_modality(data) if isinstance(data, str) else modality_of(data)
    if kind is None or kind == modality:
        return
    name = data if isinstance(data, str) else getattr(data, "name", type(data).__name__)
    raise ConfigError(
        f"{who} works on {modality} data, but {name!r} is a{'n' if kind[0] in 'aeiou' else ''} {kind} dataset. "
        f"{modality.capitalize()} datasets: "
        f"{', '.join(datasets_of(modality)) or 'none registered'} (`distill-apps datasets` shows which are "
        "present); pass one with --dataset (or dataset=...).")


def default_dataset(method_cls: Any) -> str:
    """The dataset a method distils when none is named: its own ``default_dataset`` or its modality's."""
    return getattr(method_cls, "default_dataset", None) or MODALITIES.get(modality_of(method_cls)).default_dataset


def ipc_help() -> str:
    """One line per modality: what ``--ipc`` counts there."""
    return "; ".join(f"{m}: {MODALITIES.get(m).ipc}" for m in MODALITIES.names())


def _image_baseline(real: Any, summary: Any, ipc: int, seed: int, device: str) -> Any:
    """A random real subset of the summary's size, evaluated with the summary's augmentation."""
    from .fair import random_subset

    return random_subset(real, ipc, seed, summary.meta.get("eval_augment"), device)


# the quick budget evaluates images for 300 epochs (the paper protocol's no-augmentation count) to stay in CPU
# minutes; --budget paper (or --eval-epochs) runs the full protocol (1000 epochs with DSA)
register_modality(Modality("image", "synthetic images per class", "digits", "convnet", _image_baseline, 300))
