"""What a summary file holds, for ``distill-apps info``: method, data, budget, protocol, privacy, sizes, checksums.

:func:`summary_info` loads the file with :func:`~distill_apps.summaries.load_summary` (so every kind works and the
file's checksums are verified first) and returns one JSON-able dict; :func:`format_info` renders it as text.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

__all__ = ["summary_info", "format_info"]

# The protocol a summary of each modality is scored with when its meta names none (``evaluate --protocol``).
_DEFAULT_PROTOCOL = {"recsys": "krr"}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tensors(path: Path) -> list[dict[str, Any]]:
    """Name, dtype, shape and bytes of every tensor in the file (read from the safetensors table)."""
    from safetensors import safe_open

    rows = []
    with safe_open(str(path), framework="pt") as fh:
        for name in sorted(fh.keys()):
            sl = fh.get_slice(name)
            shape = list(sl.get_shape())
            t = fh.get_tensor(name)
            rows.append({"name": name, "dtype": str(t.dtype).replace("torch.", ""), "shape": shape,
                         "bytes": t.numel() * t.element_size()})
    return rows


def summary_info(path: str | os.PathLike) -> dict[str, Any]:
    """Everything a summary file records that a user asks about, as a JSON-able dict (the file is verified)."""
    from .safe_io import DIGEST_KEY, read_header
    from .summaries import load_summary

    path = Path(path)
    summary = load_summary(path)  # refuses missing, corrupt, foreign or edited files with one clear message
    header = read_header(path) or {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        header_digest = (fh.metadata() or {}).get(DIGEST_KEY)
    m = summary.meta
    data = m.get("data") if isinstance(m.get("data"), dict) else {}
    transform = data.get("transform") if isinstance(data.get("transform"), dict) else None
    tensors = _tensors(path)
    privacy = summary.privacy
    teacher = m.get("teacher") if isinstance(m.get("teacher"), dict) else None
    return {
        "path": str(path), "kind": summary.kind, "modality": summary.modality, "method": m.get("method"),
        "family": m.get("family"), "dataset": summary.source, "data_source": data.get("source") or m.get("data_source"),
        "class_names": data.get("class_names"), "ipc": m.get("ipc"), "steps": m.get("steps"), "seed": m.get("seed"),
        "model": m.get("model"),
        "evaluation": {"protocol": m.get("eval_protocol") or _DEFAULT_PROTOCOL.get(summary.modality, "train"),
                       "augment": m.get("eval_augment"),
                       "teacher": None if teacher is None else teacher.get("path")},
        "transform": None if transform is None else transform.get("kind"),
        "privacy": None if privacy is None else privacy.as_dict(),
        "contents": summary.contents(),
        "tensors": tensors, "tensor_bytes": sum(t["bytes"] for t in tensors), "file_bytes": path.stat().st_size,
        "format_version": header.get("format_version"),
        "checksums": {"file_sha256": _file_sha256(path), "tensors_sha256": header.get("sha256"),
                      "header_sha256": header_digest},
        "versions": m.get("versions"),
    }


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def format_info(info: dict[str, Any]) -> str:
    """The text ``distill-apps info`` prints for :func:`summary_info`'s dict."""
    from .summaries import Privacy

    src = info["data_source"]
    source = (", ".join(f"{k} {v}" for k, v in src.items() if isinstance(v, (str, int, float)) and k != "kind")
              if isinstance(src, dict) else None)
    ev = info["evaluation"]
    lines = [
        f"{info['path']}: {info['modality']} summary (file kind {info['kind']!r})",
        f"  method      {info['method']}" + (f" ({info['family']})" if info.get("family") else ""),
        f"  data        {info['dataset']}" + (f" [{src.get('kind')}: {source}]" if isinstance(src, dict) and source
                                              else "")
        + (f", {info['transform']}-whitened" if info["transform"] else ""),
        f"  budget      ipc {info['ipc']}, {info['steps']} steps"
        + (f", seed {info['seed']}" if info["seed"] is not None else "")
        + (f", model {info['model']}" if info.get("model") else ""),
        f"  evaluation  protocol {ev['protocol']}" + (f", augment {ev['augment']}" if ev["augment"] else "")
        + (f", teacher {ev['teacher']}" if ev["teacher"] else ""),
        "  privacy     " + (str(Privacy(**info["privacy"])) if info["privacy"] else "none (not a dp-* summary)"),
        "  contents    " + ", ".join(f"{k} {v}" for k, v in info["contents"].items() if v is not None),
        f"  size        {_size(info['tensor_bytes'])} of tensors in a {_size(info['file_bytes'])} file "
        f"(format version {info['format_version']})",
    ]
    lines += [f"    {t['name']:<16} {t['dtype']:<8} {'x'.join(map(str, t['shape'])) or 'scalar':<16} "
              f"{_size(t['bytes'])}" for t in info["tensors"]]
    c = info["checksums"]
    lines += [f"  sha256      file    {c['file_sha256']}", f"              tensors {c['tensors_sha256']} (verified)",
              f"              header  {c['header_sha256'] or 'none (container format 1)'}"
              + (" (verified)" if c["header_sha256"] else "")]
    return "\n".join(lines)
