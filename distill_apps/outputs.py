"""Where a distillation run writes, checked before it starts, and what happens when the final write fails.

A run writes three artefacts next to each other: the summary (``--out``), its PNG grid (``<out>.png``) and,
with checkpoints, ``<out>.ckpt`` (plus ``<out>.ckpt.prev``). :func:`plan_outputs` refuses, before any work:
an ``--out`` that is a folder; a folder that cannot be written (tested by creating a file, which also catches
read-only mounts and root on them); names that collide (``--out x.png`` would let the grid overwrite the summary,
``--out y.ckpt`` the summary overwrite the checkpoint); an existing summary or grid that the run would replace
without ``--resume`` or ``--overwrite``; and a disk without room for the summary (an estimate from its size, plus
two checkpoints when checkpointing).

When the final write fails anyway (the disk filled up during the run), :func:`save_or_rescue` keeps the result:
it writes the summary to a fallback path it names (the cache root, then the system's temporary folder) and,
when there is a checkpoint of the final step, says how to finish from it.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import checkpoint as ckpt
from . import safe_io
from .errors import ConfigError, DistillError

HEADER_ROOM = 256 * 1024  # JSON header, PNG grid and safetensors framing, generously


@dataclass(frozen=True)
class RunOutputs:
    """The files of one run."""

    summary: Path
    grid: Path
    checkpoint: Path

    @classmethod
    def for_out(cls, out: str | os.PathLike) -> "RunOutputs":
        """The file names one ``--out`` implies: the summary, its PNG grid and its checkpoint."""
        out = Path(out)
        return cls(out, out.with_suffix(".png"), out.with_suffix(".ckpt"))


def summary_bytes(n_images: int, image_shape: tuple[int, ...], num_classes: int, soft: bool = True) -> int:
    """An upper estimate of a plain-image summary's file size (float32 images, int64 labels, soft labels)."""
    return int(n_images * (math.prod(image_shape) * 4 + 8 + (num_classes * 4 if soft else 0)) + HEADER_ROOM)


def _probe_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"Cannot create the output folder {folder}: {exc.strerror or exc}. Choose another --out.") from exc
    probe = safe_io.temp_path(folder / ".distill-apps-write-test")
    try:
        with open(probe, "wb") as fh:
            fh.write(b"0")
    except OSError as exc:
        raise ConfigError(f"The output folder {folder} is not writable ({exc.strerror or exc}): the run would "
                          "finish and then fail to save. Choose another --out, or fix the folder's permissions.") from exc
    finally:
        try:
            os.unlink(probe)
        except OSError:
            pass


def plan_outputs(out: str | os.PathLike, *, need_bytes: int, checkpointing: bool, resume: bool,
                 overwrite: bool) -> RunOutputs:
    """Check the run's output paths before it starts (see the module docstring); returns them."""
    o = RunOutputs.for_out(out)
    names = {"the summary (--out)": o.summary, "the PNG grid": o.grid, "the checkpoint": o.checkpoint,
             "the previous checkpoint": ckpt.previous_path(o.checkpoint)}
    seen: dict[Path, str] = {}
    for what, p in names.items():
        key = Path(os.path.abspath(p))
        if key in seen:
            raise ConfigError(f"--out {out} would make {what} and {seen[key]} the same file ({p}), so one would "
                              "overwrite the other: give --out a .safetensors name.")
        seen[key] = what
    for what, p in names.items():
        if p.is_dir():
            raise ConfigError(f"{what.capitalize()} path {p} is a folder: give --out a file name "
                              "(e.g. out/run.safetensors).")
    _probe_writable(o.summary.parent)
    if not (resume or overwrite):
        for what, p in (("a summary", o.summary), ("a PNG grid", o.grid)):
            if p.exists():
                kind = "a distill-apps summary" if what == "a summary" and safe_io.read_header(p) else "a file"
                raise ConfigError(f"{p} already exists ({kind}) and this run would replace it with {what}. Pass "
                                  "--overwrite to replace it, --resume to continue the run that wrote it, or choose "
                                  "another --out.")
    free = shutil.disk_usage(o.summary.parent).free
    need = need_bytes * (3 if checkpointing else 1)  # the summary, and room for two checkpoints of about its size
    if free < need:
        raise ConfigError(f"The disk holding {o.summary.parent} has {free / 2**20:.1f} MiB free, and this run needs "
                          f"about {need / 2**20:.1f} MiB (the summary{' and its checkpoints' if checkpointing else ''}):"
                          " free space or choose another --out.")
    return o


def fallback_paths(out: Path) -> list[Path]:
    """Where a summary goes when ``out`` cannot be written: the cache root, then the temporary folder."""
    from .data.registry import cache_root

    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{out.stem}-{stamp}-{os.getpid()}{out.suffix or '.safetensors'}"
    return [cache_root() / "rescued" / name, Path(tempfile.gettempdir()) / "distill-apps-rescued" / name]


def save_or_rescue(summary, out: Path, checkpoint: Path | None) -> None:
    """``summary.save(out)``; when that fails, write it to a fallback path and raise a :class:`DistillError`
    naming it (and the checkpoint to finish from), so the result is never lost with the error."""
    try:
        summary.save(out)
        return
    except DistillError as exc:
        first = exc
    where = None
    for p in fallback_paths(out):
        try:
            summary.save(p)
            where = p
            break
        except DistillError:
            continue
    finish = ""
    if checkpoint is not None and ckpt.exists(checkpoint):
        finish = (f" The checkpoint {checkpoint} ({ckpt.describe(checkpoint)}) holds the final state: once there is "
                  "room, run the same command with --resume to write the summary without repeating any step.")
    if where is not None:
        raise DistillError(f"{first} The distilled summary was kept: it is in {where} (move it where you want it)."
                           + finish)
    raise DistillError(f"{first} No fallback location could be written either (tried "
                       f"{', '.join(str(p.parent) for p in fallback_paths(out))})." + (finish or
                       " Nothing of this run was kept: rerun with --checkpoint-every N to keep its progress."))
