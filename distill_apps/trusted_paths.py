"""Which files a summary's metadata may make distill-apps open.

A summary is data, and data can come from anyone: a path written in it (the IT-GAN decoder's
``decoder_spec.path``) is opened only when it resolves (symbolic links followed) inside a root the user chose:

* the data root (``--data-root`` / ``$DISTILL_APPS_DATA``),
* the cache root (``$DISTILL_APPS_CACHE``, else ``~/.cache/distill_apps``), where the package keeps what it trains,
* folders or files listed in ``$DISTILL_APPS_TRUSTED_PATHS`` (``os.pathsep``-separated),
* paths the user passed to this process as options (e.g. IT-GAN's ``generator_path``), registered with
  :func:`allow`.

Anything else is refused with :class:`~distill_apps.errors.SummaryFormatError` before the file is touched, so a
crafted summary cannot make the package read (or hash) an arbitrary file.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import SummaryFormatError

TRUST_ENV = "DISTILL_APPS_TRUSTED_PATHS"
_ALLOWED: list[Path] = []


def allow(path: str | os.PathLike) -> None:
    """Trust ``path`` (a file or a folder) for this process: the user passed it."""
    p = Path(path).expanduser().resolve()
    if p not in _ALLOWED:
        _ALLOWED.append(p)


def trusted_roots() -> list[Path]:
    """The folders a path read from a file may point into: the data root, the cache root and $DISTILL_APPS_TRUSTED_PATHS."""
    from .data.registry import cache_root, data_root

    roots = [data_root(), cache_root()]
    roots += [Path(p).expanduser() for p in os.environ.get(TRUST_ENV, "").split(os.pathsep) if p.strip()]
    return [r.resolve() for r in roots] + list(_ALLOWED)


def resolve_trusted(value: object, what: str) -> Path:
    """``value`` (a path read from a file) as a resolved path inside a trusted root, or refuse it."""
    if not isinstance(value, str) or not value or "\x00" in value or len(value) > 4096:
        raise SummaryFormatError(f"The summary's {what} path is not a usable path ({value!r}); the summary is damaged "
                                 "or was edited: re-create it.")
    p = Path(value)
    if not p.is_absolute():
        raise SummaryFormatError(f"The summary names its {what} by the relative path {value!r}; distill-apps records "
                                 "absolute paths, so the summary was edited: re-create it.")
    real = p.resolve()
    roots = trusted_roots()
    if any(real == r or real.is_relative_to(r) for r in roots):
        return real
    raise SummaryFormatError(
        f"The summary names its {what} at {value}, outside the data root and the cache root ({', '.join(map(str, roots[:2]))}); "
        "a summary cannot make distill-apps open files elsewhere. If you trust this summary and that file, put the "
        f"file under the cache root, or add its folder to ${TRUST_ENV}.")
