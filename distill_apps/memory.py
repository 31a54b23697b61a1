"""Memory readings and the memory guard of a distillation run.

What is compared with ``--max-memory`` (``max_memory_gb``) is the memory the process holds *now*: resident set
size from ``/proc/self/statm`` on CPU, the CUDA allocator's allocated bytes on GPUs. The peak (``ru_maxrss``,
``max_memory_allocated``) never goes down, so it would keep stopping a run after one brief spike that is long
gone (and count what was allocated before distillation started); it is reported in messages, not compared.

Freed memory that the allocator keeps for reuse (``runtime.tune_cpu_allocator``) is resident too; before the
guard stops a run it hands that back to the OS (``malloc_trim``) and reads again, so only memory in use counts.

The guard is read after every step and, through :meth:`~distill_apps.engine.Distiller.check_memory`, inside
long steps (between classes, between unroll chunks), so a step that grows past the limit stops before the
operating system kills the process. Out-of-memory errors are recognised on both devices: CUDA's
``OutOfMemoryError``, Python's ``MemoryError`` and the CPU allocator's ``RuntimeError`` ("DefaultCPUAllocator:
can't allocate memory", "not enough memory").
"""
from __future__ import annotations

import contextvars
import os
import re
import sys

import torch

from .errors import MemoryBudgetError

_OOM_TEXT = re.compile(r"DefaultCPUAllocator: can't allocate memory|not enough memory|out of memory|"
                       r"Cannot allocate memory|std::bad_alloc|failed to allocate", re.IGNORECASE)


def current_rss_gb() -> float:
    """Resident memory of this process now (GB); falls back to the peak where ``/proc`` is missing."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError, IndexError):
        return peak_rss_gb()


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GB; ``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (2**30 if sys.platform == "darwin" else 2**20)


def current_gb(device: torch.device) -> float:
    """Memory in use now, in GiB: CUDA allocations on a GPU, the process's resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**30
    return current_rss_gb()


def peak_gb(device: torch.device) -> float:
    """Peak memory so far, in GiB: CUDA's max allocation on a GPU, the process's peak resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return peak_rss_gb()


def release_free_memory() -> bool:
    """Hand memory that was freed but kept in glibc's heap back to the OS (``malloc_trim``). The package keeps
    freed memory by default (``runtime.tune_cpu_allocator``), which would otherwise count as resident forever."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/CPU allocation failures (the CPU allocator raises a plain ``RuntimeError``)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and bool(_OOM_TEXT.search(str(exc)))


_ACTIVE: contextvars.ContextVar["MemoryGuard | None"] = contextvars.ContextVar("distill_apps_memory_guard",
                                                                               default=None)


def check_memory(where: str = "") -> None:
    """Raise :class:`MemoryBudgetError` when the running distillation passed its memory limit; a no-op (one
    context-variable read) when no limit is set. Methods call it between classes and unroll steps."""
    guard = _ACTIVE.get()
    if guard is not None:
        guard.check(where)


class MemoryGuard:
    """Stops a run whose current memory passes ``limit_gb`` (see the module docstring). Used as a context
    manager it is the guard :func:`check_memory` consults; ``name`` and ``step`` label its messages."""

    def __init__(self, limit_gb: float, device: torch.device, name: str = "the run") -> None:
        """A guard that stops ``name`` with a MemoryBudgetError when memory passes ``limit_gb`` on ``device``."""
        self.limit_gb, self.device, self.name = float(limit_gb), device, name
        self.step = 0
        self.checks = 0
        self._token: contextvars.Token | None = None

    def __enter__(self) -> "MemoryGuard":
        """Make this guard the active one (checks inside unrolls find it)."""
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc) -> None:
        """Restore the previously active guard."""
        if self._token is not None:
            _ACTIVE.reset(self._token)
            self._token = None

    def over(self) -> float | None:
        """The current memory in GB when it is above the limit, else None. On CPU, freed memory the allocator
        kept is handed back first (only when over the limit), so only memory in use counts."""
        self.checks += 1
        now = current_gb(self.device)
        if now > self.limit_gb and self.device.type != "cuda" and release_free_memory():
            now = current_gb(self.device)
        return now if now > self.limit_gb else None

    def check(self, where: str = "") -> None:
        """Raise :class:`MemoryBudgetError` (the engine adds advice and the checkpoint) when over the limit."""
        now = self.over()
        if now is not None:
            raise MemoryBudgetError(
                f"{self.name} passed the memory limit of {self.limit_gb:.2f} GB (now {now:.2f} GB, peak "
                f"{peak_gb(self.device):.2f} GB) {'inside' if where else 'after'} step {self.step}"
                f"{' (' + where + ')' if where else ''}")
