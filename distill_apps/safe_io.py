"""Safe, atomic, checksummed files: safetensors tensors + a JSON header in the safetensors metadata.

Every file distill-apps writes (summaries, checkpoints, expert trajectories, generators, teachers, caches) goes
through :func:`write` and :func:`read`. Nothing is ever unpickled. ``write`` goes to a temporary file in the same
folder (named ``.<target>.da-<host>-<pid>-<random>.tmp``), fsyncs it, gives it the usual permissions (``0666``
minus the umask, so ``0644`` by default) and renames it over the target, so a crash, ``kill -9`` or a full disk
never leaves a half file under the real name. Temporary files that a killed writer left next to a target are
removed on the next write there (only ours, and only when their process is gone or they are a day old).

Integrity (container format 2). The header holds ``sha256``, a SHA-256 over every tensor's name, dtype, shape and
bytes; a second metadata entry holds a SHA-256 over the exact header text, which includes that tensor digest, so
one digest covers the header *and* the tensors: a flipped bit or a hand edit anywhere is refused. A checksum is
not a signature (whoever edits a file can recompute it), so :func:`read` is only the first line: every reader
also validates each header field by type and range (see ``summary.py``, ``checkpoint.py``, ``experts.py``).

Files written before the header digest existed (container format 1: the tensor digest only) still load, with a
:class:`~distill_apps.errors.LegacyFileWarning` saying the header is not covered; saving them again upgrades them.
Readers of format 1 still read format-2 files (the tensor digest is where it was; they ignore the new entry).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from .errors import DistillError, LegacyFileWarning, SummaryFormatError

HEADER_KEY = "distill_apps"
DIGEST_KEY = "distill_apps_sha256"  # SHA-256 over the exact header text (which holds the tensor digest)
CONTAINER_VERSION = 2
STALE_AFTER_S = 24 * 3600  # a temp file of another host (or a live pid) is stale after a day
_TMP_RE = re.compile(r"^\.(?P<target>.+)\.da-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
_OLD_TMP_RE = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")  # mkstemp names of distill-apps < container 2


def checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes (sorted by name)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too (Adam step)
    return h.hexdigest()


def header_digest(header_text: str) -> str:
    """SHA-256 of the exact JSON header text (which itself holds the tensor digest)."""
    return hashlib.sha256(b"distill-apps container 2\n" + header_text.encode()).hexdigest()


# ---------------------------------------------------------------------- temp files and permissions
def _host_tag() -> str:
    """A short hash of the host name, written into lock files."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_path(path: Path) -> Path:
    """A fresh temporary name next to ``path`` that :func:`clean_stale_temps` recognises as ours."""
    return path.with_name(f".{path.name}.da-{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove our temporary files for ``path`` left by writers that died (``kill -9``, power loss).

    Only names of our pattern for this very target are touched; one is stale when it was made on this host by a
    process that no longer runs, or when it is older than a day (another host's, a reused pid, or the pid-less
    names of older versions). Returns them.
    """
    path = Path(path)
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    host, me = _host_tag(), os.getpid()
    for e in entries:
        m = _TMP_RE.match(e.name)
        old = None if m else _OLD_TMP_RE.match(e.name)  # no pid recorded: stale by age only
        if not (m or old) or (m or old)["target"] != path.name or not e.is_file(follow_symlinks=False):
            continue
        try:
            age = time.time() - e.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        dead = m is not None and m["host"] == host and int(m["pid"]) != me and not _pid_alive(int(m["pid"]))
        if dead or age > STALE_AFTER_S:
            try:
                os.unlink(e.path)
                removed.append(Path(e.path))
            except OSError:
                pass
    return removed


def _umask() -> int:
    """The process umask (read from /proc, so the umask is never changed to read it)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode() -> int:
    """The mode a plain ``open(..., "w")`` would give: ``0666`` minus the umask (``0644`` by default)."""
    return 0o666 & ~_umask()


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries to disk after a rename (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_error(path: Path, exc: BaseException) -> DistillError:
    """A DistillError for a failed write, saying that nothing was overwritten and what to do (a full disk is named as
    such)."""
    text = getattr(exc, "strerror", None) or str(exc)
    full = getattr(exc, "errno", None) == 28 or "os error 28" in str(exc) or "No space left" in str(exc)
    hint = ("the disk is full: free space or write to another folder (--out)" if full else
            "check that the folder is writable, or write to another folder (--out)")
    return DistillError(f"Could not write {path}: {text}. Nothing was overwritten; {hint}.")


def _keep_previous(path: Path, previous: Path) -> None:
    """Make ``previous`` a copy of ``path`` without a moment where ``path`` is missing: a hard link renamed into
    place (a rename of ``path`` itself where the file system has no hard links)."""
    clean_stale_temps(previous)
    link = temp_path(previous)
    try:
        os.link(path, link)
    except OSError:
        os.replace(path, previous)
        return
    try:
        os.replace(link, previous)
    finally:
        if os.path.lexists(link):
            os.unlink(link)


def _atomic(path: Path, fill, previous: Path | None = None) -> Path:
    """Create a temp file, let ``fill(tmp)`` write it, fsync, chmod, then rename over ``path`` (keeping the old
    file as ``previous`` when given). Any failure leaves ``path`` as it was and removes the temp file."""
    from safetensors import SafetensorError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    clean_stale_temps(path)
    tmp = temp_path(path)
    try:
        fill(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())
        if previous is not None and path.exists():
            _keep_previous(path, previous)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except (OSError, SafetensorError) as exc:  # a full disk is a SafetensorError from save_file, not an OSError
        raise _write_error(path, exc) from exc
    finally:
        if os.path.lexists(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path


# ---------------------------------------------------------------------- write
def encode_header(tensors: dict[str, torch.Tensor], header: dict[str, Any], kind: str, version: int,
                  path: str | os.PathLike = "") -> dict[str, str]:
    """The safetensors metadata of a file: the JSON header (with kind, version, tensor digest) and its digest."""
    full = {"kind": kind, "format_version": version, "container": CONTAINER_VERSION, "sha256": checksum(tensors),
            **header}
    try:
        text = json.dumps(full, sort_keys=True, allow_nan=False)
    except ValueError as exc:
        raise DistillError(f"Refusing to write {path}: the header holds NaN/Inf ({exc}).") from exc
    except TypeError as exc:
        raise DistillError(f"Refusing to write {path}: the header holds a value JSON cannot store ({exc}).") from exc
    return {HEADER_KEY: text, DIGEST_KEY: header_digest(text)}


def write(path: str | os.PathLike, tensors: dict[str, torch.Tensor], header: dict[str, Any], kind: str,
          version: int, *, previous: str | os.PathLike | None = None) -> Path:
    """Atomically write ``tensors`` and the JSON ``header`` as a safetensors file of ``kind``/``version``.

    With ``previous``, an existing file at ``path`` is renamed to ``previous`` just before the new one takes its
    place (how checkpoints keep the last two).
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = encode_header(tensors, header, kind, version, path)
    return _atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta),
                   Path(previous) if previous is not None else None)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically write ``data`` (same temp-file, fsync, permission and clean-up rules as :func:`write`)."""
    return _atomic(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> Path:
    """Atomically write ``obj`` as JSON (a temporary file, then ``os.replace``): a stopped run never leaves half a file."""
    return write_bytes(path, json.dumps(obj, indent=indent, default=str).encode())


def write_png(path: str | os.PathLike, images: torch.Tensor, **kw) -> Path:
    """Atomically write a torchvision ``save_image`` grid of ``images`` as a PNG."""
    from torchvision.utils import save_image

    buf = io.BytesIO()
    save_image(images, buf, format="png", **kw)
    return write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------- read
def read_header(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON header of a distill-apps file without loading or checking its tensors (None if unreadable);
    for messages only, never for trusting values."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            h = json.loads((fh.metadata() or {})[HEADER_KEY])
        return h if isinstance(h, dict) else None
    except Exception:  # noqa: BLE001 - any unreadable file is simply "no header"
        return None


def read(path: str | os.PathLike, kind: str, version: int, tensors: set[str] | None = None
         ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`write`; refuse anything corrupt, foreign, of another kind or too new, and,
    when ``tensors`` is given, anything that does not hold exactly those tensors."""
    out = _read(path, kind, version)
    if tensors is not None and set(out[0]) != set(tensors):
        raise SummaryFormatError(f"{path}: a {kind} holds {', '.join(sorted(tensors))}; found {sorted(out[0])}.")
    return out


def _read(path: str | os.PathLike, kind: str, version: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Open a safetensors file of ``kind`` and check its header (kind, version, JSON) and checksum; returns tensors and
    header."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise SummaryFormatError(f"{path} is a folder, not a {kind} file. Check the path (a {kind} file ends in "
                                     ".safetensors).")
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
    text = meta[HEADER_KEY]
    digest = meta.get(DIGEST_KEY)
    damaged = digest is not None and digest != header_digest(text)
    try:
        header = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SummaryFormatError(f"{path}: its distill-apps header is not valid JSON ({exc}); the file is corrupt.") from exc
    if not isinstance(header, dict):
        raise SummaryFormatError(f"{path}: its distill-apps header is not a JSON object; the file is corrupt.")
    # a newer file first: its integrity scheme may be one this version does not know
    v, cv = header.get("format_version"), header.get("container", 1)
    newer = [f"{what} format version {n}" for what, n, mine in ((kind, v, version), ("container", cv, CONTAINER_VERSION))
             if isinstance(n, int) and not isinstance(n, bool) and n > mine]
    if newer and header.get("kind") == kind:
        raise SummaryFormatError(f"{path} has {' and '.join(newer)}, newer than this distill-apps reads ({kind} up to "
                                 f"{version}): upgrade distill-apps to load it.")
    if damaged:
        raise SummaryFormatError(f"{path} failed its checksum: its header was changed or damaged after writing. "
                                 "Re-create the file, or restore it from a copy.")
    if header.get("kind") != kind:
        raise SummaryFormatError(f"{path} holds a distill-apps {header.get('kind')!r}, not a {kind}.")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1 or not isinstance(cv, int) or isinstance(cv, bool):
        raise SummaryFormatError(f"{path} has an invalid {kind} format version {v!r}; the file is corrupt.")
    if header.get("sha256") != checksum(tensors):
        raise SummaryFormatError(f"{path} failed its checksum: its tensor data was changed or damaged after writing.")
    if digest is None:
        warnings.warn(LegacyFileWarning(
            f"{path} was written by an older distill-apps (container format 1): its checksum covers the tensors "
            "but not the header, so an edit to the header would go unnoticed (every field is still validated). "
            "Save it again with this version to upgrade it."), stacklevel=3)
    header.pop("container", None)
    return tensors, header


# ---------------------------------------------------------------------- large array files (memory-mapped)
# Data caches can be larger than RAM, so they are written and read without holding their tensors in memory: the
# arrays are filled through numpy memmaps of a temporary file, and the checksum (SHA-256 over the JSON header, the
# tensor table and every byte, streamed) is computed from the file itself. The files are ordinary safetensors
# files (any safetensors reader opens them); :func:`read_arrays` maps them instead of loading them.

_DTYPES = {"uint8": ("U8", 1), "int64": ("I64", 8), "float32": ("F32", 4), "int32": ("I32", 4)}
ARRAYS_SUM_KEY = "sha256_all"


def _arrays_digest(header: dict[str, Any], table: dict[str, Any], fh, start: int, length: int) -> str:
    """SHA-256 over the header (without the checksum), the tensor table and the raw array bytes, read in 8 MB blocks."""
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
        """Lay out ``arrays`` (name -> shape, dtype), widest dtype first, in a temporary file next to ``path``."""
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
        clean_stale_temps(self.path)
        self.tmp = str(temp_path(self.path))
        open(self.tmp, "xb").close()
        self._maps: dict[str, Any] = {}
        self._slot: int | None = None

    def _header_bytes(self, header: dict[str, Any]) -> bytes:
        """The safetensors JSON header: the tensor table plus our header under ``__metadata__``."""
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
            os.chmod(self.tmp, file_mode())
            os.replace(self.tmp, self.path)
            _fsync_dir(self.path.parent)
        except OSError as exc:
            self.abort()
            raise DistillError(f"Could not write {self.path}: {exc.strerror or exc}. Nothing was overwritten; free "
                               "disk space or point $DISTILL_APPS_CACHE at another folder.") from exc
        return self.path

    def abort(self) -> None:
        """Drop the memory maps and delete the temporary file; ``path`` is untouched."""
        self._maps.clear()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)

    def __enter__(self) -> "ArrayFileWriter":
        """Use as a context manager: an exception inside aborts the write."""
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Abort unless the file was committed."""
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
