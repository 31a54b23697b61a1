"""Rank agreement between two scorings of the same candidates (plain numpy, checked against scipy in the tests):
Spearman's rho, Kendall's tau-b and top-k overlap."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from distill_apps.errors import ConfigError, DataError

__all__ = ["rankdata", "spearman", "kendall_tau", "top_k_overlap"]


def rankdata(a: Sequence[float]) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (``scipy.stats.rankdata(method="average")``)."""
    a = np.asarray(a, dtype=float)
    order = np.argsort(a, kind="mergesort")
    s = a[order]
    ranks = np.empty(len(a), dtype=float)
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _check_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Two equally long 1-D float arrays of at least 2 entries, or a DataError."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise DataError(f"rank correlation needs two 1-D sequences of the same length; got {a.shape} and {b.shape}.")
    if len(a) < 2:
        raise DataError("rank correlation needs at least 2 candidates: raise --k.")
    return a, b


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho: Pearson correlation of the average ranks (NaN when one side is constant)."""
    a, b = _check_pair(a, b)
    ra, rb = rankdata(a) - (len(a) + 1) / 2, rankdata(b) - (len(b) + 1) / 2
    den = math.sqrt(float((ra ** 2).sum() * (rb ** 2).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b (ties corrected, as ``scipy.stats.kendalltau``): (C - D) / sqrt(pairs untied in a * in b)."""
    a, b = _check_pair(a, b)
    sa = np.sign(a[:, None] - a[None, :])
    sb = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(len(a), 1)
    sa, sb = sa[iu], sb[iu]
    den = math.sqrt(float(np.abs(sa).sum() * np.abs(sb).sum()))
    return float((sa * sb).sum() / den) if den > 0 else float("nan")


def top_k_overlap(a: Sequence[float], b: Sequence[float], k: int) -> float:
    """Fraction of the ``k`` best candidates under ``a`` that are also among the ``k`` best under ``b``."""
    a, b = _check_pair(a, b)
    if not 1 <= k <= len(a):
        raise ConfigError(f"top-k needs 1 <= k <= {len(a)}; got k={k}.")
    ta = set(np.argsort(-a, kind="mergesort")[:k].tolist())
    tb = set(np.argsort(-b, kind="mergesort")[:k].tolist())
    return len(ta & tb) / k
