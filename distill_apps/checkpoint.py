"""Crash-safe checkpoints of a :class:`~distill_apps.engine.DistillState` (safetensors + JSON, atomic).

A checkpoint holds the synthetic tensors, optimiser states, kept networks, buffers, counters and the step, and
names the run it belongs to (method, dataset, ipc, model, seed, config fingerprint). Loading refuses a
checkpoint of another run rather than silently mixing the two. RNG state needs no storing: every step's
generator is derived from (seed, step), so resuming at step t reproduces the uninterrupted run exactly.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import safe_io
from .errors import CheckpointMismatchError, SummaryFormatError

if TYPE_CHECKING:
    from .engine import Distiller, DistillState

KIND = "checkpoint"
FORMAT_VERSION = 1


def _identity(d: "Distiller") -> dict[str, Any]:
    return {"method": d.name, "dataset": d.real.name, "ipc": d.ipc, "model": d.model, "seed": d.seed,
            "config_fingerprint": d.cfg.fingerprint(), "world_size": d.world_size}


def _split_optimizer(name: str, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    sd = opt.state_dict()
    plain: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt/{name}/{pid}/{k}"] = v
            else:
                plain.setdefault(str(pid), {})[k] = v
    return {"param_groups": sd["param_groups"], "plain_state": plain}


def _join_optimizer(name: str, spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"opt/{name}/"
    for key, v in tensors.items():
        if key.startswith(prefix):
            pid, k = key[len(prefix):].split("/", 1)
            state.setdefault(int(pid), {})[k] = v
    for pid, st in spec["plain_state"].items():
        state.setdefault(int(pid), {}).update(st)
    return {"state": state, "param_groups": spec["param_groups"]}


def save(path: str | os.PathLike, d: "Distiller", state: "DistillState") -> Path:
    tensors: dict[str, torch.Tensor] = {}
    tensors.update({f"param/{k}": v for k, v in state.params.items()})
    tensors.update({f"buf/{k}": v for k, v in state.buffers.items()})
    for m, mod in state.modules.items():
        tensors.update({f"mod/{m}/{k}": v for k, v in mod.state_dict().items()})
    opts = {k: _split_optimizer(k, o, tensors) for k, o in state.optimizers.items()}
    header = {"run": _identity(d), "step": state.step, "info": state.info, "optimizers": opts}
    return safe_io.write(path, tensors, header, KIND, FORMAT_VERSION)


def load_into(path: str | os.PathLike, d: "Distiller", state: "DistillState") -> None:
    """Fill ``state`` (freshly built by ``d.init``) from the checkpoint at ``path``."""
    tensors, h = safe_io.read(path, KIND, FORMAT_VERSION)
    mine, theirs = _identity(d), h.get("run", {})
    diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
    if diff:
        what = "; ".join(f"{k}: checkpoint {a!r} vs this run {b!r}" for k, (a, b) in diff.items())
        raise CheckpointMismatchError(
            f"Checkpoint {path} belongs to another run ({what}). Start without --resume, or point --out/"
            "--checkpoint at a fresh path.")
    try:
        with torch.no_grad():
            for k, p in state.params.items():
                p.copy_(tensors[f"param/{k}"].to(p.device, p.dtype))
            for k in list(state.buffers):
                state.buffers[k] = tensors[f"buf/{k}"].to(state.buffers[k].device)
        for m, mod in state.modules.items():
            pre = f"mod/{m}/"
            mod.load_state_dict({k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)})
        for k, opt in state.optimizers.items():
            opt.load_state_dict(_join_optimizer(k, h["optimizers"][k], tensors))
    except (KeyError, RuntimeError, ValueError) as exc:
        raise SummaryFormatError(f"Checkpoint {path} does not fit this run's state ({exc}); start afresh.") from exc
    state.step = int(h["step"])
    state.info = dict(h.get("info", {}))
