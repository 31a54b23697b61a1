"""Devices, seeds and mixed precision: the small runtime facts every module needs."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import sys
from typing import Iterator

import torch

from .errors import ConfigError


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is validated."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"Unknown device {device!r}: use auto, cpu, cuda or cuda:N.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"Device {device!r} asked for, but CUDA is not available here: use --device cpu.")
    return dev


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (seed, step, purpose): same parts, same seed, on every OS."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator(*parts: object) -> torch.Generator:
    """A fresh CPU ``torch.Generator`` seeded from ``parts``; the global RNG is never touched."""
    g = torch.Generator()
    g.manual_seed(derive_seed(*parts))
    return g


@contextlib.contextmanager
def seeded_global_rng(g: torch.Generator) -> Iterator[None]:
    """Run code that uses the global RNG (``nn.Module`` init) from ``g``, restoring the global state after."""
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@functools.lru_cache(maxsize=None)
def bf16_fast(device_type: str) -> bool:
    """Whether bf16 matrix work is fast here: CUDA with bf16, or a CPU with AVX-512-BF16/AMX.

    On CPUs without bf16 units (AVX2 only) oneDNN emulates bf16 and convolutions run 10-50x *slower* than
    fp32 (measured: 0.34 GFLOP/s bf16 vs 120 GFLOP/s fp32 matmul on the 2-core CI machine), so autocast is off.
    """
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and "AVX512" in torch.backends.cpu.get_cpu_capability()
        except (AttributeError, RuntimeError):
            return False
    return False


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast where the hardware makes it fast (see :func:`bf16_fast`); off with ``DISTILL_APPS_FP32=1``."""
    if not enabled or os.environ.get("DISTILL_APPS_FP32") == "1" or not bf16_fast(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def tune_cpu_allocator() -> bool:
    """Keep freed memory in glibc's heap instead of returning it to the OS after every large tensor.

    Conv nets on CPU allocate and free 10-100 MB activations each layer; by default glibc serves those with
    mmap/munmap, so every layer pays page faults. Measured on the 2-core machine: a ConvNet-3 forward over
    2560 MNIST images drops from 5-6.5 s to 2.4-2.7 s. Opt out with ``DISTILL_APPS_NO_MALLOPT=1``.
    """
    if os.environ.get("DISTILL_APPS_NO_MALLOPT") == "1" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
    return bool(libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 1 << 30)
                and libc.mallopt(m_top_pad, 256 << 20))


def channels_last(device: torch.device) -> bool:
    """Whether convolution inputs and networks use the channels-last layout on ``device``.

    Channels-last lets cuDNN's bf16 tensor-core kernels skip layout transposes, but ConvNet's instance norm runs
    on the NCHW layout, so which is faster depends on the model; ``benchmarks/device_check.sh`` measures DM both
    ways. Off unless ``DISTILL_APPS_CHANNELS_LAST=1``, and only ever on CUDA (on CPU oneDNN picks its own layout).
    """
    return device.type == "cuda" and os.environ.get("DISTILL_APPS_CHANNELS_LAST") == "1"


def memory_format(obj, device: torch.device):
    """``obj`` (a 4-d tensor or a module) in channels-last layout where :func:`channels_last` says so; else as is."""
    if not channels_last(device):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.contiguous(memory_format=torch.channels_last) if obj.ndim == 4 else obj
    return obj.to(memory_format=torch.channels_last)
