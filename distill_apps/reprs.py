"""Short, one-line ``repr``s for the package's public objects: what an object is and how big, never its tensors.

``print(summary)`` or ``print(real)`` in a notebook must not dump thousands of numbers. Every public class that
holds tensors (summaries, datasets, results, adapters) writes its ``__repr__`` with :func:`one_line`, e.g.
``SyntheticSet(dm, digits, 10 classes x 10 ipc, 1x8x8, hard labels, 6.3 KB)``; the helpers below format sizes,
shapes and byte counts the same way everywhere.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import torch

LIMIT = 200  # characters of a repr, at most
NAMED = {"length", "dim"}  # contents read as "length 40", not "40 length"


def human_bytes(n: int | float) -> str:
    """``1536`` -> ``'1.5 KB'`` (powers of 1024; B, KB, MB, GB, TB)."""
    n = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TB"


def shape(x: Any) -> str:
    """A tensor's (or a shape's) dimensions as ``'10x1x8x8'``."""
    dims = x.shape if hasattr(x, "shape") else x
    return "x".join(str(int(d)) for d in dims)


def tensor_bytes(*objs: Any) -> int:
    """Bytes held by the tensors among ``objs`` (tensors, or dicts/lists/tuples of them, one level deep)."""
    total = 0
    for o in objs:
        if torch.is_tensor(o):
            if o.layout == torch.sparse_csr:
                total += sum(t.numel() * t.element_size() for t in (o.crow_indices(), o.col_indices(), o.values()))
            elif o.is_sparse:
                total += sum(t.numel() * t.element_size() for t in (o._indices(), o._values()))
            else:
                total += o.numel() * o.element_size()
        elif isinstance(o, dict):
            total += tensor_bytes(*o.values())
        elif isinstance(o, (list, tuple)):
            total += sum(tensor_bytes(v) for v in o if torch.is_tensor(v))
    return total


def field_bytes(obj: Any) -> int:
    """Bytes held by the tensors in a dataclass's fields."""
    return tensor_bytes(*(getattr(obj, f.name) for f in dataclasses.fields(obj)))


def one_line(name: str, parts: Iterable[Any], limit: int = LIMIT) -> str:
    """``name(part, part, ...)`` on one line: empty parts dropped, whitespace runs folded, cut to ``limit``
    characters with an ellipsis."""
    body = ", ".join(" ".join(str(p).split()) for p in parts if p not in (None, ""))
    text = f"{name}({body})"
    return text if len(text) <= limit else text[:limit - 4] + "...)"


def counted(contents: dict[str, Any]) -> list[str]:
    """A summary's :meth:`contents` as words: ``{'nodes': 35, 'density': 0.031}`` -> ``['35 nodes', 'density
    0.031']`` (None values dropped)."""
    out = []
    for k, v in contents.items():
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or k in NAMED:
            out.append(f"{k} {v}")
        elif isinstance(v, int):
            out.append(f"{v} {k}")
        else:
            out.append(f"{k} {v:.3g}")
    return out


def summary_repr(summary: Any, parts: Iterable[Any] | None = None) -> str:
    """``Kind(method, dataset, <parts or contents>, privacy, bytes)`` for any :class:`~distill_apps.summaries.
    Summary`."""
    m = summary.meta
    privacy = summary.privacy
    return one_line(type(summary).__name__, [
        m.get("method") or "unknown method", summary.source or "unknown data",
        *(counted(summary.contents()) if parts is None else parts),
        f"{m['steps']} step{'' if m['steps'] == 1 else 's'}" if m.get("steps") is not None else None,
        f"({privacy.epsilon:.3g}, {privacy.delta:g})-DP" if privacy is not None and privacy.private else None,
        human_bytes(field_bytes(summary))])


def eval_result_repr(result: Any) -> str:
    """``EvalResult(digits: 97.10 +- 0.30 % (train, convnet, 3 runs, 300 epochs, augment dsa), 12.3 s)``: the
    score line of :class:`~distill_apps.evaluate.EvalResult`, not its per-run list or extras."""
    return one_line("EvalResult", [f"{result.dataset}: {result}", f"{result.seconds:.1f} s"])
