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


# ---------------------------------------------------------------------- large array files (memory-mapped)
# Data caches can be larger than RAM, so they are written and read without holding their tensors in memory: the
# arrays are filled through numpy memmaps of a temporary file, and the checksum (SHA-256 over the JSON header, the
# tensor table and every byte, streamed) is computed from the file itself. The files are ordinary safetensors
# files (any safetensors reader opens them); :func:`read_arrays` maps them instead of loading them.

_DTYPES = {"uint8": ("U8", 1), "int64": ("I64", 8), "float32": ("F32", 4), "int32": ("I32", 4)}
ARRAYS_SUM_KEY = "sha256_all"


def _arrays_digest(header: dict[str, Any], table: dict[str, Any], fh, start: int, length: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in header.items() if k != ARRAYS_SUM_KEY}, sort_keys=True).encode())
    h.update(json.dumps(table, sort_keys=True).encode())
    fh.seek(start)
    left, buf = length, bytearray(8 << 20)
    while left > 0:
        n = fh.readinto(memoryview(buf)[:min(left, len(buf))])
        if not n:
            raise SummaryFormatError(f"{fh.name} is truncated: {left} bytes of tensor data are missing.")
        h.update(memoryview(buf)[:n])
        left -= n
    return h.hexdigest()


class ArrayFileWriter:
    """Write a (possibly larger than RAM) safetensors file atomically: declare the arrays, fill them through
    :meth:`array` (numpy memmaps of a temporary file), then :meth:`commit` with a JSON header.

    Until ``commit`` nothing exists under the real name; an exception inside ``with`` removes the temporary file.
    """

    def __init__(self, path: str | os.PathLike, arrays: dict[str, tuple[tuple[int, ...], str]], kind: str,
                 version: int) -> None:
        import numpy as np

        self.path, self.kind, self.version = Path(path), kind, version
        unknown = {k: d for k, (_, d) in arrays.items() if d not in _DTYPES}
        if unknown:
            raise ValueError(f"unsupported dtypes {unknown}; use one of {sorted(_DTYPES)}")
        # widest dtype first, so every array starts aligned to its item size (as safetensors itself lays them out)
        order = sorted(arrays, key=lambda k: (-_DTYPES[arrays[k][1]][1], k))
        self.table: dict[str, Any] = {}
        off = 0
        for k in order:
            shape, dt = arrays[k]
            n = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dt][1]
            self.table[k] = {"dtype": _DTYPES[dt][0], "shape": [int(s) for s in shape], "data_offsets": [off, off + n]}
            off += n
        self.data_bytes = off
        self._arrays = arrays
        # the header is written last, into a slot sized now: the checksum is a fixed-length hex string
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self._maps: dict[str, Any] = {}
        self._slot: int | None = None

    def _header_bytes(self, header: dict[str, Any]) -> bytes:
        meta = {HEADER_KEY: json.dumps(header, sort_keys=True, allow_nan=False)}
        raw = json.dumps({**self.table, "__metadata__": meta}, separators=(",", ":")).encode()
        return raw

    def array(self, name: str):
        """The writable memmap of array ``name`` (valid until :meth:`commit`)."""
        import numpy as np

        if self._slot is None:
            raise RuntimeError("call reserve(header) before filling arrays")
        if name not in self._maps:
            shape, dt = self._arrays[name]
            start = 8 + self._slot + self.table[name]["data_offsets"][0]
            if int(np.prod(shape)) == 0:
                self._maps[name] = np.zeros(shape, dtype=dt)
            else:
                self._maps[name] = np.memmap(self.tmp, dtype=dt, mode="r+", offset=start, shape=tuple(shape))
        return self._maps[name]

    def reserve(self, header: dict[str, Any], spare: int = 4096) -> None:
        """Size the header slot for ``header`` (plus ``spare`` bytes of growth) and allocate the file."""
        size = len(self._header_bytes({**header, "kind": self.kind, "format_version": self.version,
                                        ARRAYS_SUM_KEY: "0" * 64})) + spare
        self._slot = (size + 7) // 8 * 8  # tensor data starts 8-byte aligned
        with open(self.tmp, "r+b") as fh:
            fh.truncate(8 + self._slot + self.data_bytes)

    def commit(self, header: dict[str, Any]) -> Path:
        """Checksum the filled file, write its header, fsync and rename it over ``path``; returns ``path``."""
        for m in self._maps.values():
            if hasattr(m, "flush"):
                m.flush()
        self._maps.clear()
        full = {**header, "kind": self.kind, "format_version": self.version}
        try:
            with open(self.tmp, "r+b") as fh:
                full[ARRAYS_SUM_KEY] = _arrays_digest(full, self.table, fh, 8 + self._slot, self.data_bytes)
                raw = self._header_bytes(full)
                if len(raw) > self._slot:
                    raise ValueError(f"header of {len(raw)} bytes does not fit its {self._slot}-byte slot")
                fh.seek(0)
                fh.write(len(raw + b" " * (self._slot - len(raw))).to_bytes(8, "little"))
                fh.write(raw + b" " * (self._slot - len(raw)))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self.abort()
            raise DistillError(f"Could not write {self.path}: {exc.strerror or exc}. Nothing was overwritten; free "
                               "disk space or point $DISTILL_APPS_CACHE at another folder.") from exc
        return self.path

    def abort(self) -> None:
        self._maps.clear()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)

    def __enter__(self) -> "ArrayFileWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or os.path.exists(self.tmp):
            self.abort()


def read_arrays(path: str | os.PathLike, kind: str, version: int, mmap: bool = True, verify: bool = True
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Open a file written by :class:`ArrayFileWriter`: ``({name: numpy array}, header)``.

    With ``mmap`` the arrays are copy-on-write memory maps (pages are read on first touch, so a file larger than
    RAM can be sampled); otherwise they are read into memory. Truncated files, files of another kind, a format
    version other than ``version`` and checksum failures (header or data) raise :class:`SummaryFormatError`.
    """
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise SummaryFormatError(f"No such file: {path}.")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise SummaryFormatError(f"{path} is truncated or not a safetensors file (header of {n} bytes, file of "
                                     f"{size} bytes).")
        try:
            raw = json.loads(fh.read(n).decode())
            header = json.loads(raw["__metadata__"][HEADER_KEY])
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise SummaryFormatError(f"{path}: its header is not a distill-apps header ({exc}); the file is corrupt "
                                     "or foreign.") from exc
        if header.get("kind") != kind:
            raise SummaryFormatError(f"{path} holds a distill-apps {header.get('kind')!r}, not a {kind}.")
        if header.get("format_version") != version:
            raise SummaryFormatError(f"{path} has {kind} format version {header.get('format_version')!r}; this "
                                     f"distill-apps writes and reads version {version}.")
        table = {k: v for k, v in raw.items() if k != "__metadata__"}
        end = max((v["data_offsets"][1] for v in table.values()), default=0)
        if 8 + n + end != size:
            raise SummaryFormatError(f"{path} is truncated or padded: {size} bytes on disk, {8 + n + end} expected.")
        if verify and header.get(ARRAYS_SUM_KEY) != _arrays_digest(header, table, fh, 8 + n, end):
            raise SummaryFormatError(f"{path} failed its checksum: its header or data changed after writing.")
    rev = {v[0]: k for k, v in _DTYPES.items()}
    out: dict[str, Any] = {}
    for k, v in table.items():
        dt, shape = rev[v["dtype"]], tuple(v["shape"])
        a, b = v["data_offsets"]
        if a == b:
            out[k] = np.zeros(shape, dtype=dt)
        elif mmap:
            out[k] = np.memmap(path, dtype=dt, mode="c", offset=8 + n + a, shape=shape)
        else:
            out[k] = np.fromfile(path, dtype=dt, count=(b - a) // np.dtype(dt).itemsize, offset=8 + n + a).reshape(shape)
    return out, header
