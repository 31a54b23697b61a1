"""Export an image summary as an image folder (``distill-apps export SUMMARY --png-dir DIR``).

One PNG per (decoded) image, in one sub-folder per class named by the class's name, so the folder loads back
with ``imagefolder:DIR`` (:func:`distill_apps.data.from_folder`) or any ``ImageFolder`` reader. Images are
de-normalised to pixels, and de-whitened first when the summary records a ZCA transform. The folder is written
next to ``DIR`` and renamed into place when complete: a stopped export never leaves half a folder, and an
existing non-empty ``DIR`` is replaced only when asked (``overwrite=True``).
"""
from __future__ import annotations

import io
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, DataError

__all__ = ["class_folder_names", "export_pngs"]


def class_folder_names(summary: Any) -> list[str]:
    """One folder name per class: the class names the summary records (made safe as file names), else the ids.

    Refuses names that collide once made safe, since the folder would then merge two classes."""
    names = (summary.meta.get("data") or {}).get("class_names") or [str(c) for c in range(summary.num_classes)]
    if len(names) != summary.num_classes:
        names = [str(c) for c in range(summary.num_classes)]
    safe = [re.sub(r"[^\w.+-]+", "_", str(n)).strip("._") or f"class_{i}" for i, n in enumerate(names)]
    if len(set(safe)) != len(safe):
        raise DataError(f"The class names {names} give clashing folder names {safe}; rename the classes first "
                        "(summary.meta['data']['class_names']).")
    return safe


def _png(img: torch.Tensor) -> bytes:
    from PIL import Image

    arr = (img.mul(255).round().to(torch.uint8)).permute(1, 2, 0).numpy()
    im = Image.fromarray(arr[:, :, 0], mode="L") if arr.shape[2] == 1 else Image.fromarray(arr, mode="RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def export_pngs(summary: Any, png_dir: str | os.PathLike, *, transform: Any = None, overwrite: bool = False
                ) -> dict[str, Any]:
    """Write every image of ``summary`` as ``png_dir/<class name>/<index>.png``; returns what was written
    (``{"png_dir", "images", "classes", "per_class"}``). See the module docstring for the guarantees."""
    from .summary import SyntheticSet

    if not isinstance(summary, SyntheticSet):
        raise ConfigError(f"export writes image summaries as PNG files; this is a {summary.kind} summary (no images).")
    out = Path(png_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder; choose another --png-dir.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty; refusing to overwrite it. Choose another --png-dir, or pass "
                          "--overwrite (overwrite=True) to replace its contents.")
    x = summary.pixels(transform)
    y = summary.materialize().y.cpu()
    names = class_folder_names(summary)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-{secrets.token_hex(4)}.tmp"
    per_class: dict[str, int] = {}
    try:
        for c, name in enumerate(names):
            idx = (y == c).nonzero().flatten().tolist()
            if not idx:
                continue  # a class the summary holds no image of (an image folder has no empty classes)
            folder = tmp / name
            folder.mkdir(parents=True)
            for k, i in enumerate(idx):
                (folder / f"{k:04d}.png").write_bytes(_png(x[i]))
            per_class[name] = len(idx)
        for p in [tmp, *tmp.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        if out.exists():
            shutil.rmtree(out)  # empty, or replacing was asked for
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {"png_dir": str(out), "images": int(len(y)), "classes": names, "per_class": per_class}
