"""The summary protocol: what every method's result is, whatever its modality.

:class:`Summary` is the one small contract that :class:`~distill_apps.summary.SyntheticSet` (images) and each
modality's summary (``CondensedGraph``, ``GraphSet``, ``SyntheticInteractions``, ``TextSummary``) implement:

* ``save(path)`` / ``load(path)``: one safetensors file with a JSON header through :mod:`distill_apps.safe_io`
  (atomic, checksummed; foreign, corrupt or too-new files are refused); the header's ``kind`` names the class;
* ``evaluate(data=None, **kw)``: the modality's protocol, reported as an :class:`~distill_apps.evaluate.EvalResult`
  that names it (``data`` defaults to the dataset the summary was distilled from, ``source``);
* ``describe()``: a short dict of what the summary holds; ``meta``: method, dataset, budget, config, versions;
* ``privacy``: the differential-privacy accounting (:class:`Privacy`) of a ``dp-*`` summary, None otherwise.

:func:`load_summary` reads any summary file and returns the right class (the registry maps the file's ``kind`` to
it), so ``distill-apps evaluate PATH`` works on every kind.
"""
from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

from .errors import ConfigError, DataError, SummaryFormatError
from .registry import Registry

if TYPE_CHECKING:
    from .evaluate import EvalResult

SUMMARY_KINDS: Registry[type["Summary"]] = Registry("summary kind")


def register_summary(cls: type["Summary"]) -> type["Summary"]:
    """Class decorator: files of ``cls.kind`` load as ``cls`` through :func:`load_summary`."""
    return SUMMARY_KINDS.register(cls.kind)(cls)


class Summary(ABC):
    """A distilled summary of any modality (see the module docstring for the contract)."""

    kind: ClassVar[str]  # the safe_io file kind
    modality: ClassVar[str] = "image"
    meta: dict[str, Any]

    @abstractmethod
    def save(self, path: str | os.PathLike) -> Path:
        """Write one safetensors file (atomic, checksummed) with a JSON header."""

    @classmethod
    @abstractmethod
    def load(cls, path: str | os.PathLike) -> "Summary":
        """Read a file written by :meth:`save`; refuse corrupt, foreign or newer-format files."""

    @abstractmethod
    def evaluate(self, data: Any = None, **kw) -> "EvalResult":
        """Score the summary with its modality's protocol on ``data`` (default: :attr:`source`)."""

    @abstractmethod
    def contents(self) -> dict[str, Any]:
        """Sizes and shapes of what the summary holds (the modality-specific part of :meth:`describe`)."""

    @property
    def privacy(self) -> "Privacy | None":
        """The differential-privacy accounting of a ``dp-*`` summary (epsilon, delta, accountant, ...), read from
        ``meta["privacy"]``; None for a summary distilled without privacy accounting."""
        return Privacy.from_meta(self.meta.get("privacy"))

    @property
    def source(self) -> str | None:
        """The dataset the summary was distilled from (as ``load_dataset`` names it)."""
        return self.meta.get("dataset")

    def __repr__(self) -> str:
        """One line: kind, method, source, what it holds and its size (never the tensors)."""
        from .reprs import summary_repr

        return summary_repr(self)

    def describe(self) -> dict[str, Any]:
        """A short, JSON-able description: kind, modality, method, source dataset, budget and contents."""
        m = self.meta
        return {"kind": self.kind, "modality": self.modality, "method": m.get("method"), "dataset": self.source,
                "ipc": m.get("ipc"), "steps": m.get("steps"), **self.contents()}


@dataclass(frozen=True, repr=False)
class Privacy:
    """What a private summary's release spent: ``(epsilon, delta)`` under ``accountant`` (Opacus' ``rdp`` or
    ``prv``), with the mechanism's parameters. A run asked for with ``non_private: true`` reports
    ``epsilon = inf`` and ``private = False``: it carries no guarantee."""

    epsilon: float
    delta: float
    accountant: str | None
    private: bool = True
    target_epsilon: float | None = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    releases: int | None = None
    mechanism: str | None = None

    @classmethod
    def from_meta(cls, p: Any) -> "Privacy | None":
        """Read ``meta["privacy"]`` as the private methods write it; None when absent."""
        if not isinstance(p, dict) or "epsilon" not in p:
            return None
        return cls(epsilon=float(p["epsilon"]), delta=float(p.get("delta", 0.0)), accountant=p.get("accountant"),
                   private=not p.get("non_private", False), target_epsilon=p.get("target_epsilon"),
                   noise_multiplier=p.get("noise_multiplier"), sample_rate=p.get("sample_rate"),
                   releases=p.get("releases"), mechanism=p.get("mechanism"))

    def as_dict(self) -> dict[str, Any]:
        """JSON-able fields (``epsilon`` stays a float; ``inf`` for a non-private run)."""
        return asdict(self)

    def __repr__(self) -> str:
        return f"Privacy({self})"

    def __str__(self) -> str:
        if not self.private:
            return "no privacy guarantee (non-private run, epsilon = inf)"
        target = f", target {self.target_epsilon:g}" if self.target_epsilon is not None else ""
        return f"({self.epsilon:.3g}, {self.delta:g})-DP, {self.accountant} accountant{target}"


def file_kind(path: str | os.PathLike) -> str | None:
    """The ``kind`` in a distill-apps file's header, or None when the file cannot be read as one (the
    summary's own ``load`` then says why)."""
    from safetensors import safe_open

    from .safe_io import HEADER_KEY

    try:
        with safe_open(str(path), framework="pt") as fh:
            header = json.loads((fh.metadata() or {}).get(HEADER_KEY, "{}"))
    except Exception:  # missing, truncated, not safetensors: the full read reports it
        return None
    return header.get("kind") if isinstance(header, dict) else None


def load_summary(path: str | os.PathLike) -> Summary:
    """Load a summary file of any kind as its class (SyntheticSet, CondensedGraph, GraphSet, ...)."""
    from . import modalities  # noqa: F401  (registers the modality summaries)
    from .summary import SyntheticSet

    kind = file_kind(path)
    if kind is None:
        return SyntheticSet.load(path)  # raises the precise error (no such file, corrupt, not distill-apps)
    if kind not in SUMMARY_KINDS:
        raise SummaryFormatError(f"{path} holds a distill-apps {kind!r}, not a summary. Summary kinds: "
                                 f"{', '.join(SUMMARY_KINDS.names())}; pass the .safetensors file `distill` wrote.")
    return SUMMARY_KINDS.get(kind).load(path)


@contextmanager
def header_errors(path: str | os.PathLike, kind: str) -> Iterator[None]:
    """Turn a missing or mangled header field (or invalid contents) met while rebuilding a summary from its
    file into one :class:`SummaryFormatError` naming the file."""
    try:
        yield
    except SummaryFormatError:
        raise
    except DataError as exc:
        raise SummaryFormatError(f"{path}: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise SummaryFormatError(f"{path}: the {kind} header lacks or mangles field {exc}; the file is "
                                 "corrupt.") from exc


def resolve_data(summary: Summary, data: Any, data_root: str | None = None) -> Any:
    """The data to evaluate ``summary`` on: ``data`` (a loaded dataset or a name) or the summary's source,
    refused with one clear error when it is of another modality."""
    from .data import load_dataset
    from .modality import check_modality

    data = summary.source if data is None else data
    if data is None:
        raise DataError(f"This {summary.kind} does not name its dataset: pass the dataset to evaluate on.")
    who = f"A {summary.kind} summary ({summary.meta.get('method', 'unknown method')})"
    check_modality(summary.modality, data, who)
    return load_dataset(data, data_root) if isinstance(data, str) else data


def check_eval_options(summary: Summary, *, model: str | None, protocol: str | None, augment: str | None,
                       own_model: str, own_protocol: str) -> None:
    """Refuse evaluation options a modality's protocol does not have (a model or protocol of another modality,
    augmentation), rather than silently ignoring them."""
    if model not in (None, own_model):
        raise ConfigError(f"A {summary.kind} summary is evaluated with a {own_model}; got model {model!r} (omit it).")
    if protocol not in (None, own_protocol):
        raise ConfigError(f"A {summary.kind} summary is evaluated with protocol {own_protocol!r}; got {protocol!r}.")
    if augment not in (None, "auto", "none"):
        raise ConfigError(f"A {summary.kind} summary is evaluated without augmentation; got augment={augment!r}.")
