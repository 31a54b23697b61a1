"""Wire format: a summary as Flower records (``ArrayRecord`` + ``ConfigRecord``), its validation on arrival, and
the byte count of every message."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from distill_apps import SyntheticSet
from distill_apps.errors import DistillError, SummaryFormatError
from distill_apps.safe_io import checksum


def summary_tensors(s: SyntheticSet) -> dict[str, torch.Tensor]:
    """The arrays a client sends: ``x`` float32, ``y`` int64 and, when present, ``soft`` float32."""
    m = s.materialize()
    out = {"x": m.x.detach().float().cpu().contiguous(), "y": m.y.detach().long().cpu().contiguous()}
    if m.soft is not None:
        out["soft"] = m.soft.detach().float().cpu().contiguous()
    return out


def summary_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes (the same function both sides compute)."""
    return checksum(tensors)


def summary_to_records(s: SyntheticSet) -> tuple[ArrayRecord, ConfigRecord]:
    """The summary as an ``ArrayRecord`` (x float32, y int64, optional soft) and a ``ConfigRecord`` of meta."""
    t = summary_tensors(s)
    meta = {"sha256": summary_digest(t), "num-classes": int(s.num_classes), "image-shape": list(s.image_shape),
            "label-kind": s.label_kind, "mean": [float(v) for v in s.mean], "std": [float(v) for v in s.std],
            "images": int(len(t["y"])), "classes": sorted({int(c) for c in t["y"].tolist()}) or [0],
            "meta-json": json.dumps(s.meta, default=str)}
    if s.lr is not None:
        meta["lr"] = float(s.lr)
    return ArrayRecord(t), ConfigRecord(meta)


def summary_from_records(arrays: ArrayRecord, meta: ConfigRecord, image_shape: tuple[int, ...],
                         num_classes: int) -> tuple[SyntheticSet, str]:
    """Validate a received summary and rebuild it; raises :class:`SummaryFormatError` naming the defect.

    Checks: the expected keys; x float32 of shape (N, *image_shape); y int64 (N,) within [0, num_classes);
    soft float32 (N, num_classes) if present; every value finite; the SHA-256 equal to the client's.
    """
    keys = set(arrays.keys())
    if not {"x", "y"} <= keys or not keys <= {"x", "y", "soft"}:
        raise SummaryFormatError(f"summary arrays must be x, y (and optionally soft); got {sorted(keys)}.")
    try:
        np_arrays = {k: arrays[k].numpy() for k in keys}
    except (TypeError, ValueError) as exc:
        raise SummaryFormatError(f"summary arrays could not be decoded: {exc}") from exc
    x, y = np_arrays["x"], np_arrays["y"]
    if x.dtype != np.float32:
        raise SummaryFormatError(f"summary x must be float32; got {x.dtype}.")
    if y.dtype != np.int64 or y.ndim != 1:
        raise SummaryFormatError(f"summary y must be int64 of shape (N,); got {y.dtype} {y.shape}.")
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(image_shape) or x.shape[0] != y.shape[0]:
        raise SummaryFormatError(f"summary x must have shape ({y.shape[0]}, {', '.join(map(str, image_shape))}); "
                                 f"got {x.shape}.")
    if not np.isfinite(x).all():
        raise SummaryFormatError("summary x holds NaN/Inf.")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise SummaryFormatError(f"summary labels must lie in [0, {num_classes}); got [{y.min()}, {y.max()}].")
    soft = np_arrays.get("soft")
    if soft is not None and (soft.dtype != np.float32 or soft.shape != (y.shape[0], num_classes)
                             or not np.isfinite(soft).all()):
        raise SummaryFormatError(f"summary soft labels must be finite float32 ({y.shape[0]}, {num_classes}); "
                                 f"got {soft.dtype} {soft.shape}.")
    tensors = {k: torch.from_numpy(v.copy()) for k, v in np_arrays.items()}
    digest = summary_digest(tensors)
    claimed = str(meta.get("sha256", ""))
    if digest != claimed:
        raise SummaryFormatError(f"summary SHA-256 mismatch: received {digest[:16]}..., the client sent "
                                 f"{claimed[:16]}...; the summary changed in transit.")
    try:
        extra = json.loads(str(meta.get("meta-json", "{}")))
        s = SyntheticSet(x=tensors["x"], y=tensors["y"], num_classes=num_classes, image_shape=tuple(image_shape),
                         mean=tuple(meta.get("mean", [])), std=tuple(meta.get("std", [])), soft=tensors.get("soft"),
                         label_kind=str(meta.get("label-kind", "hard")), lr=meta.get("lr"), meta=extra)
    except (DistillError, json.JSONDecodeError, TypeError) as exc:
        raise SummaryFormatError(f"summary metadata is invalid: {exc}") from exc
    return s, digest


def _scalar_bytes(v: Any) -> int:
    """Bytes a config or metric value takes on the wire (numbers as 64 bits, strings by length, lists summed)."""
    if isinstance(v, bool):
        return 1
    if isinstance(v, (int, float)):
        return 8  # protobuf carries config/metric numbers as 64-bit
    if isinstance(v, (str, bytes)):
        return len(v)
    if isinstance(v, list):
        return sum(_scalar_bytes(e) for e in v)
    raise TypeError(f"unexpected record value {type(v).__name__}")


def record_bytes(content: RecordDict) -> int:
    """Bytes of a message's payload: Flower's ``count_bytes`` for arrays (serialised bytes + keys) and the same
    rule for config/metric records (8 bytes per number, 1 per bool, the length of strings; keys counted).
    Flower's own ``ConfigRecord.count_bytes`` refuses empty strings, hence the local count."""
    total = 0
    for rec in content.values():
        if isinstance(rec, ArrayRecord):
            total += rec.count_bytes()
        else:
            total += sum(len(k) + _scalar_bytes(v) for k, v in rec.items())
    return int(total)
