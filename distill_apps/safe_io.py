"""Safe, atomic, checksummed files: safetensors tensors + a JSON header in the safetensors metadata.

Every file distill-apps writes (summaries, checkpoints, expert trajectories, generators) goes through
:func:`write` and :func:`read`. Nothing is ever unpickled. ``write`` goes to a temporary file in the same
folder, fsyncs it and renames it over the target, so a crash, ``kill -9`` or a full disk never leaves a half
file under the real name. ``read`` checks the file kind, the format version and a SHA-256 over all tensor
bytes, so truncation and bit flips are refused with a clear error instead of being loaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import DistillError, SummaryFormatError

HEADER_KEY = "distill_apps"


def checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too (Adam step)
    return h.hexdigest()


def write(path: str | os.PathLike, tensors: dict[str, torch.Tensor], header: dict[str, Any], kind: str,
          version: int) -> Path:
    """Atomically write ``tensors`` and the JSON ``header`` as a safetensors file of ``kind``/``version``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    full = {"kind": kind, "format_version": version, "sha256": checksum(tensors), **header}
    try:
        meta = {HEADER_KEY: json.dumps(full, sort_keys=True, allow_nan=False)}
    except ValueError as exc:
        raise DistillError(f"Refusing to write {path}: the header holds NaN/Inf ({exc}).") from exc
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise DistillError(
            f"Could not write {path}: {exc.strerror or exc}. Nothing was overwritten; free disk space or write "
            "to another folder (--out)."
        ) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> Path:
    """Atomically write ``obj`` as JSON (a temporary file, then ``os.replace``): a stopped run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent, default=str))
    os.replace(tmp, path)
    return path


def read(path: str | os.PathLike, kind: str, version: int, tensors: set[str] | None = None
         ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`write`; refuse anything corrupt, foreign, of another kind or too new, and,
    when ``tensors`` is given, anything that does not hold exactly those tensors."""
    out = _read(path, kind, version)
    if tensors is not None and set(out[0]) != set(tensors):
        raise SummaryFormatError(f"{path}: a {kind} holds {', '.join(sorted(tensors))}; found {sorted(out[0])}.")
    return out


def _read(path: str | os.PathLike, kind: str, version: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SummaryFormatError(f"No such file: {path}. Check the path (a {kind} file ends in .safetensors).")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for bad headers and short files
        raise SummaryFormatError(
            f"{path} is not a readable safetensors file (corrupt or truncated: {exc}). Re-create it, or restore "
            "it from a copy."
        ) from exc
    if HEADER_KEY not in meta:
        raise SummaryFormatError(f"{path} is a safetensors file but not a distill-apps {kind} (no distill-apps header).")
    try:
        header = json.loads(meta[HEADER_KEY])
    except json.JSONDecodeError as exc:
        raise SummaryFormatError(f"{path}: its distill-apps header is not valid JSON ({exc}); the file is corrupt.") from exc
    if header.get("kind") != kind:
        raise SummaryFormatError(f"{path} holds a distill-apps {header.get('kind')!r}, not a {kind}.")
    v = header.get("format_version")
    if not isinstance(v, int) or v > version:
        raise SummaryFormatError(
            f"{path} has {kind} format version {v!r}, newer than this distill-apps reads (up to {version}): "
            "upgrade distill-apps to load it."
        )
    if header.get("sha256") != checksum(tensors):
        raise SummaryFormatError(f"{path} failed its checksum: its tensor data was changed or damaged after writing.")
    return tensors, header
