"""Type and range checks, with no silent coercion, for options (CLI, API, configs) and for header fields of files.

Options raise :class:`~distill_apps.errors.ConfigError`; header fields raise
:class:`~distill_apps.errors.SummaryFormatError` naming the file, the field, what it must be and what it holds.
Booleans are never accepted as numbers, floats never as integers (``2.7`` does not become ``2``), and
non-finite floats (NaN, Inf) are refused.
"""
from __future__ import annotations

import builtins
import math
import warnings
from typing import Any, Iterable

from .errors import ConfigError, DataError, DistillWarning, SummaryFormatError


def is_int(v: Any) -> bool:
    """True for an int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_real(v: Any) -> bool:
    """True for an int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _range_text(lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    """The range ``[lo, hi]`` (open or closed ends) in words, for error messages."""
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return "finite"


def in_range(v: float, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False) -> bool:
    """Whether ``v`` lies in the range (a None bound is no bound)."""
    if lo is not None and (v <= lo if lo_open else v < lo):
        return False
    if hi is not None and (v >= hi if hi_open else v > hi):
        return False
    return True


# ---------------------------------------------------------------------- options
def check_int(name: str, v: Any, lo: int | None = None, hi: int | None = None, *, hint: str = "") -> int:
    """``v`` as an int within ``[lo, hi]``; refuses bools, floats and strings."""
    if not is_int(v) or not in_range(v, lo, hi):
        raise ConfigError(f"{name} must be a whole number {_range_text(lo, hi)}; got {v!r}.{' ' + hint if hint else ''}")
    return v


def check_float(name: str, v: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                hi_open: bool = False, hint: str = "") -> float:
    """``v`` as a finite float within the range; refuses bools, strings, NaN and Inf."""
    if not is_real(v) or not math.isfinite(v) or not in_range(v, lo, hi, lo_open, hi_open):
        raise ConfigError(f"{name} must be a finite number {_range_text(lo, hi, lo_open, hi_open)}; got {v!r}."
                          f"{' ' + hint if hint else ''}")
    return float(v)


def check_choice(name: str, v: Any, choices: Iterable[Any]) -> Any:
    """``v`` if it equals one of ``choices`` with the same type, else a ConfigError listing them."""
    choices = tuple(choices)
    if not any(type(v) is type(c) and v == c for c in choices):
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}; got {v!r}.")
    return v


# ---------------------------------------------------------------------- header fields of files
class HeaderFields:
    """Typed access to a file's JSON header: every getter checks type and range and names the file and field.

    >>> f = HeaderFields(path, "summary", header)
    >>> n = f.int("num_classes", 1, 100_000)
    """

    def __init__(self, path: Any, kind: builtins.str, header: builtins.dict[builtins.str, Any]) -> None:
        """Fields of ``header``, read from the ``kind`` file at ``path`` (named in every error)."""
        self.path, self.kind, self.h = path, kind, header

    def fail(self, key: builtins.str, must: builtins.str, got: Any = ...) -> SummaryFormatError:
        """The SummaryFormatError for field ``key``: what it must be and what it holds."""
        shown = "nothing" if got is ... else repr(got)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        return SummaryFormatError(
            f"{self.path}: the {self.kind} header field {key!r} must be {must}; it holds {shown}. The file is "
            "damaged or was edited by hand: re-create it (or restore it from a copy).")

    def has(self, key: builtins.str) -> bool:
        """Whether the header has field ``key``."""
        return key in self.h

    def raw(self, key: builtins.str, optional: bool = False) -> Any:
        """Field ``key`` unchecked (None when absent and ``optional``)."""
        if key not in self.h:
            if optional:
                return None
            raise self.fail(key, "present")
        return self.h[key]

    def int(self, key: builtins.str, lo: builtins.int | None = None, hi: builtins.int | None = None,
            optional: bool = False) -> builtins.int | None:
        """Field ``key`` as a whole number in ``[lo, hi]``."""
        v = self.raw(key, optional)
        if v is None and optional:
            return None
        if not is_int(v) or not in_range(v, lo, hi):
            raise self.fail(key, f"a whole number {_range_text(lo, hi)}", v)
        return v

    def float(self, key: builtins.str, lo: builtins.float | None = None, hi: builtins.float | None = None, *,
              lo_open: bool = False, optional: bool = False) -> builtins.float | None:
        """Field ``key`` as a finite number in the range."""
        v = self.raw(key, optional)
        if v is None and optional:
            return None
        if not is_real(v) or not math.isfinite(v) or not in_range(v, lo, hi, lo_open):
            raise self.fail(key, f"a finite number {_range_text(lo, hi, lo_open)}", v)
        return float(v)

    def str(self, key: builtins.str, choices: Iterable[builtins.str] | None = None, optional: bool = False,
            max_len: builtins.int = 4096) -> builtins.str | None:
        """Field ``key`` as a string of at most ``max_len`` characters (one of ``choices`` when given)."""
        v = self.raw(key, optional)
        if v is None and optional:
            return None
        choices = tuple(choices) if choices is not None else None
        if not isinstance(v, str) or len(v) > max_len or (choices is not None and v not in choices):
            raise self.fail(key, f"one of {', '.join(map(repr, choices))}" if choices else "a string", v)
        return v

    def dict(self, key: builtins.str, optional: bool = False) -> builtins.dict[builtins.str, Any] | None:
        """Field ``key`` as a JSON object."""
        v = self.raw(key, optional)
        if v is None and optional:
            return None
        if not isinstance(v, dict):
            raise self.fail(key, "a JSON object", v)
        return v

    def floats(self, key: builtins.str, length: builtins.int | None = None, lo: builtins.float | None = None, *,
               lo_open: bool = False, allow_empty: bool = False) -> list[builtins.float]:
        """Field ``key`` as a list of finite numbers (of ``length`` when given, each at least ``lo``)."""
        v = self.raw(key)
        ok = isinstance(v, list) and all(is_real(x) and math.isfinite(x) and in_range(x, lo, None, lo_open)
                                         for x in v)
        if ok and not (allow_empty and not v) and length is not None and len(v) != length:
            ok = False
        if not ok:
            n = f"{length} " if length is not None else ""
            raise self.fail(key, f"a list of {n}finite numbers{' ' + _range_text(lo, None, lo_open) if lo is not None else ''}"
                            + (" (or empty)" if allow_empty else ""), v)
        return [float(x) for x in v]

    def ints(self, key: builtins.str, lo: builtins.int | None = None, hi: builtins.int | None = None,
             min_len: builtins.int = 0, max_len: builtins.int = 1 << 20) -> list[builtins.int]:
        """Field ``key`` as a list of ``min_len`` to ``max_len`` whole numbers in ``[lo, hi]``."""
        v = self.raw(key)
        if not (isinstance(v, list) and min_len <= len(v) <= max_len and all(is_int(x) and in_range(x, lo, hi) for x in v)):
            raise self.fail(key, f"a list of {min_len}..{max_len} whole numbers {_range_text(lo, hi)}", v)
        return list(v)

    def only(self, allowed: Iterable[builtins.str]) -> None:
        """Refuse fields this kind of file never holds."""
        extra = sorted(set(self.h) - set(allowed))
        if extra:
            raise SummaryFormatError(f"{self.path}: the {self.kind} header holds unknown field(s) {extra}; the file "
                                     "was not written by this distill-apps (or was edited): re-create it.")


# ---------------------------------------------------------------------- dataset identity
def dataset_identity(meta: dict[str, Any]) -> dict[str, Any]:
    """What names a summary's dataset: ``meta["dataset"]`` and, when present, ``meta["data_source"]``'s name and
    fingerprint (summaries without them are tolerated: the missing parts are not compared). A summary of user
    data (an image folder, tensors, a torch or Hugging Face dataset; ``meta["data"]["source"]``) is named by its
    classes and image shape instead, so the same folder found under another path still matches."""
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    return _identity(meta.get("dataset"), meta.get("data_source"), data)


def real_identity(real: Any) -> dict[str, Any]:
    """The same identity for a loaded dataset (its ``name``, and its ``data_source`` when it has one)."""
    prov = getattr(real, "provenance", None)
    return _identity(getattr(real, "name", None), getattr(real, "data_source", None),
                     prov() if callable(prov) else {})


def _identity(name: Any, src: Any, data: dict[str, Any]) -> dict[str, Any]:
    """The fields that identify a dataset (name, fingerprint, class names, image shape) for comparing a summary's data
    with the data given."""
    source = data.get("source") if isinstance(data.get("source"), dict) else {}
    out: dict[str, Any] = {k: list(data[k]) for k in ("class_names", "image_shape") if data.get(k) is not None}
    if isinstance(name, str) and (not source or source.get("kind") == "registered"):
        out["name"] = name
    if isinstance(src, dict):
        for k in ("name", "fingerprint"):
            if isinstance(src.get(k), str):
                out[f"source_{k}"] = src[k]
    return out


def check_same_dataset(meta: dict[str, Any], real: Any, force: bool = False) -> None:
    """Refuse evaluating a summary on a dataset other than the one it was distilled from, unless ``force``
    (then warn). Only the identity parts both sides have are compared."""
    mine, theirs = dataset_identity(meta), real_identity(real)
    diff = [k for k in mine if k in theirs and theirs[k] is not None and mine[k] != theirs[k]]
    if not diff:
        return
    what = ", ".join(f"{k.replace('_', ' ')} {mine[k]!r} vs {theirs[k]!r}" for k in diff)
    mine.setdefault("name", meta.get("dataset"))
    theirs.setdefault("name", getattr(real, "name", None))
    if force:
        warnings.warn(DistillWarning(
            f"evaluating a summary distilled from {mine.get('name', '?')!r} on {theirs.get('name')!r} ({what}), as "
            "forced: the accuracy says how these images transfer, not how well the summary represents its dataset."),
            stacklevel=3)
        return
    raise DataError(
        f"The summary was distilled from {mine.get('name', '?')!r} but is being evaluated on {theirs.get('name')!r} "
        f"({what}): its accuracy there would not measure the summary. Evaluate on the dataset it was distilled from "
        "(leave out --dataset), or pass --force-dataset (force_dataset=True) to evaluate across datasets on purpose.")
