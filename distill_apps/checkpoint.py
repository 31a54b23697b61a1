"""Crash-safe checkpoints of a :class:`~distill_apps.engine.DistillState` (safetensors + JSON, atomic).

A checkpoint holds the synthetic tensors, optimiser states, kept networks, buffers, counters and the step, and
names the run it belongs to (method, dataset, ipc, model, seed, config fingerprint). Loading refuses a
checkpoint of another run rather than silently mixing the two, and validates every header field and tensor
against the state this run builds: optimiser hyper-parameters (``lr``, momentum, ...) must equal this run's
(a checkpoint whose ``lr`` was edited is refused), tensors must have the state's names, shapes and dtypes and
hold finite values. RNG state needs no storing: every step's generator is derived from (seed, step), so
resuming at step t reproduces the uninterrupted run exactly.

The last two checkpoints are kept: ``<path>`` (newest) and ``<path>.prev``. When the newest is damaged
(truncated, bit-flipped, half-renamed), resuming falls back to the previous one with a warning and moves the
damaged file aside to ``<path>.damaged``.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import safe_io
from .errors import CheckpointMismatchError, ConfigError, DistillWarning, SummaryFormatError
from .validation import HeaderFields, is_int, is_real

if TYPE_CHECKING:
    from .engine import Distiller, DistillState

KIND = "checkpoint"
FORMAT_VERSION = 1
HEADER_FIELDS = ("kind", "format_version", "sha256", "run", "step", "info", "optimizers")

Payload = tuple[dict[str, torch.Tensor], dict[str, Any]]


def previous_path(path: str | os.PathLike) -> Path:
    """Where the checkpoint before the newest is kept."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


def exists(path: str | os.PathLike) -> bool:
    """True when a checkpoint (newest or previous) is at ``path``."""
    return Path(path).is_file() or previous_path(path).is_file()


def describe(path: str | os.PathLike) -> str:
    """``"step N of dm on mnist, ipc 10"`` from a checkpoint's header (for messages; not validated)."""
    for p in (Path(path), previous_path(path)):
        h = safe_io.read_header(p) if p.is_file() else None
        if h is not None:
            run = h.get("run") if isinstance(h.get("run"), dict) else {}
            return (f"step {h.get('step')!r} of {run.get('method')!r} on {run.get('dataset')!r}, ipc "
                    f"{run.get('ipc')!r}, seed {run.get('seed')!r}")
    return "unreadable"


def _identity(d: "Distiller") -> dict[str, Any]:
    """What a checkpoint must match to be resumed: method, dataset, IPC, model, seed, config fingerprint, world size."""
    return {"method": d.name, "dataset": d.real.name, "ipc": d.ipc, "model": d.model, "seed": d.seed,
            "config_fingerprint": d.cfg.fingerprint(), "world_size": d.world_size}


def _split_optimizer(name: str, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                     clone: bool) -> dict[str, Any]:
    """An optimizer's state dict with its tensors moved into ``tensors`` (``opt/<name>/...``) and the rest kept as JSON.
    """
    sd = opt.state_dict()
    plain: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt/{name}/{pid}/{k}"] = v.detach().cpu().clone() if clone else v
            else:
                plain.setdefault(str(pid), {})[k] = v
    return {"param_groups": sd["param_groups"], "plain_state": plain}


def payload(d: "Distiller", state: "DistillState", clone: bool = False) -> Payload:
    """The tensors and header of a checkpoint of ``state``; ``clone=True`` copies them to the CPU (a snapshot
    that later steps cannot change, as the memory guard keeps at the start of each step)."""
    cp = (lambda t: t.detach().cpu().clone()) if clone else (lambda t: t)
    tensors: dict[str, torch.Tensor] = {}
    tensors.update({f"param/{k}": cp(v) for k, v in state.params.items()})
    tensors.update({f"buf/{k}": cp(v) for k, v in state.buffers.items()})
    for m, mod in state.modules.items():
        tensors.update({f"mod/{m}/{k}": cp(v) for k, v in mod.state_dict().items()})
    opts = {k: _split_optimizer(k, o, tensors, clone) for k, o in state.optimizers.items()}
    header = {"run": _identity(d), "step": state.step, "info": json.loads(json.dumps(state.info, default=str)),
              "optimizers": json.loads(json.dumps(opts, default=str))}
    return tensors, header


def save(path: str | os.PathLike, d: "Distiller", state: "DistillState", *, keep_previous: bool = True) -> Path:
    """Write a checkpoint of ``state``; with ``keep_previous`` the existing one becomes ``<path>.prev``."""
    return write_payload(path, payload(d, state), keep_previous=keep_previous)


def write_payload(path: str | os.PathLike, p: Payload, *, keep_previous: bool = True) -> Path:
    """Write a checkpoint payload atomically, keeping the previous checkpoint beside it when ``keep_previous``."""
    tensors, header = p
    return safe_io.write(path, tensors, header, KIND, FORMAT_VERSION,
                         previous=previous_path(path) if keep_previous else None)


class CheckpointWriter:
    """Saves a run's checkpoints. A run that started afresh replaces an old run's files on its first save (the
    old ``.prev`` is removed then, so the two kept checkpoints always belong to this run); later saves keep the
    previous one as ``<path>.prev``."""

    def __init__(self, path: str | os.PathLike, d: "Distiller", continuing: bool) -> None:
        """Write checkpoints of distiller ``d`` to ``path``; ``continuing`` keeps the previous one as a fallback."""
        self.path, self.d, self.continuing = Path(path), d, continuing

    def save(self, state: "DistillState | None" = None, snapshot: Payload | None = None) -> Path:
        """Write ``state`` (or a prepared snapshot) atomically; a fresh run's stale fallback is removed after its first
        write."""
        p = snapshot if snapshot is not None else payload(self.d, state)
        out = write_payload(self.path, p, keep_previous=self.continuing)
        if not self.continuing:
            prev = previous_path(self.path)
            if prev.is_file():
                prev.unlink()
            self.continuing = True
        return out


def open_for_run(path: str | os.PathLike, d: "Distiller", state: "DistillState", resume: bool | str = False,
                 overwrite: bool = False) -> CheckpointWriter:
    """Apply the resume / overwrite rules at the start of a run and return its checkpoint writer.

    ``resume`` (``True``/``"auto"``): continue from the checkpoint, or start fresh with a warning when there is
    none; ``"require"``: refuse when there is none. Without ``resume`` an existing checkpoint is never
    overwritten unless ``overwrite=True``.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"The checkpoint path {path} is a folder: give a file path (--out sets <out>.ckpt).")
    have = exists(path)
    if resume:
        if have:
            resume_into(path, d, state)
            return CheckpointWriter(path, d, continuing=True)
        if resume == "require":
            raise ConfigError(f"--resume=require: there is no checkpoint at {path} (nor {previous_path(path).name}). "
                              "Check --out (the checkpoint is <out>.ckpt), or use plain --resume to start afresh.")
        warnings.warn(DistillWarning(f"--resume: no checkpoint at {path}, so this run starts from step 0 "
                                     "(--resume=require refuses instead)."), stacklevel=3)
        return CheckpointWriter(path, d, continuing=False)
    if have and not overwrite:
        raise ConfigError(
            f"A checkpoint already exists at {path} ({describe(path)}) and this run would overwrite it. Pass "
            "--resume (resume=True) to continue it, --overwrite (overwrite=True) to start afresh and replace it, "
            "or choose another --out.")
    return CheckpointWriter(path, d, continuing=False)


def resume_into(path: str | os.PathLike, d: "Distiller", state: "DistillState") -> Path:
    """Load the newest checkpoint at ``path`` into ``state``; when it is damaged (or missing after a crash
    between the two renames of a save), load the previous one with a warning. Returns the file used."""
    path, prev = Path(path), previous_path(path)
    damage: SummaryFormatError | None = None
    if path.is_file():
        try:
            load_into(path, d, state)
            return path
        except SummaryFormatError as exc:  # damaged; a checkpoint of another run is not a reason to fall back
            damage = exc
    if not prev.is_file():
        if damage is not None:
            raise damage
        raise ConfigError(f"No checkpoint at {path}.")
    load_into(prev, d, state)
    if damage is not None:
        aside = path.with_name(path.name + ".damaged")
        os.replace(path, aside)
        why = f"is damaged ({damage}); it was moved to {aside.name} and"
    else:
        why = "is missing (the run stopped while replacing it) and"
    warnings.warn(DistillWarning(f"The newest checkpoint {path} {why} the run resumes from the previous one, "
                                 f"{prev.name}, at step {state.step}."), stacklevel=3)
    return prev


# ---------------------------------------------------------------------- validated loading
def _json_like(a: Any, b: Any) -> bool:
    """Same JSON structure: same type (numbers by int/float), same keys; lists may grow during a run (a privacy
    ledger's history), so their items must look like the fresh state's items, whatever their number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    if is_real(a) and is_real(b):
        return is_int(a) == is_int(b) or isinstance(a, float) or isinstance(b, float)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) == len(b):
            return all(_json_like(x, y) for x, y in zip(a, b))
        return all(_json_like(x, b[0]) for x in a) if b else all(_scalarish(x) for x in a)
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(_json_like(a[k], b[k]) for k in a)
    return type(a) is type(b)


def _scalarish(v: Any) -> bool:
    """Whether ``v`` is JSON-safe scalar data (None, bool, number, string, or a list of those)."""
    return v is None or isinstance(v, (bool, int, float, str)) or (
        isinstance(v, list) and all(_scalarish(x) for x in v))


def load_into(path: str | os.PathLike, d: "Distiller", state: "DistillState") -> None:
    """Fill ``state`` (freshly built by ``d.init``) from the checkpoint at ``path``; everything is validated
    before anything is copied, so a refused checkpoint leaves ``state`` untouched."""
    tensors, h = safe_io.read(path, KIND, FORMAT_VERSION)
    f = HeaderFields(path, "checkpoint", h)
    f.only(HEADER_FIELDS)
    theirs, mine = f.dict("run"), _identity(d)
    diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
    extra = sorted(set(theirs) - set(mine))
    if diff or extra:
        what = "; ".join([f"{k}: checkpoint {a!r} vs this run {b!r}" for k, (a, b) in diff.items()]
                         + [f"unknown field {k!r}" for k in extra])
        raise CheckpointMismatchError(
            f"Checkpoint {path} belongs to another run ({what}). Start without --resume (with --overwrite to replace "
            "it), or point --out/--checkpoint at a fresh path.")
    step = f.int("step", 0, 10**12)
    info = f.dict("info")
    for k, v in info.items():
        ok = _json_like(v, state.info[k]) if k in state.info else _scalarish(v)
        if not ok or (k in ("skipped", "skipped_in_row", "nonfinite_metric_steps") and not (is_int(v) and v >= 0)):
            raise f.fail(f"info.{k}", "what this method keeps there" if k in state.info else "a counter", v)
    opts = f.dict("optimizers")
    if set(opts) != set(state.optimizers):
        raise f.fail("optimizers", f"the optimisers {sorted(state.optimizers)}", sorted(opts))

    # tensors: the state's names, shapes and dtypes, finite values
    expected: dict[str, torch.Tensor] = {f"param/{k}": v for k, v in state.params.items()}
    expected.update({f"buf/{k}": v for k, v in state.buffers.items()})
    for m, mod in state.modules.items():
        expected.update({f"mod/{m}/{k}": v for k, v in mod.state_dict().items()})
    params_of = {name: [p for g in opt.param_groups for p in g["params"]] for name, opt in state.optimizers.items()}
    opt_state: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in state.optimizers}
    for key, t in tensors.items():
        if key.startswith("opt/"):
            parts = key.split("/", 3)
            if len(parts) != 4 or parts[1] not in params_of or not parts[2].isdigit() \
                    or int(parts[2]) >= len(params_of[parts[1]]):
                raise SummaryFormatError(f"{path}: tensor {key!r} names no parameter of this run's optimisers; the "
                                         "checkpoint is damaged or was edited: start afresh with --overwrite.")
            p = params_of[parts[1]][int(parts[2])]
            if t.ndim and tuple(t.shape) != tuple(p.shape):
                raise SummaryFormatError(f"{path}: optimiser state {key!r} has shape {tuple(t.shape)}, its parameter "
                                         f"{tuple(p.shape)}; the checkpoint is damaged or was edited.")
            opt_state[parts[1]].setdefault(int(parts[2]), {})[parts[3]] = t
            ref = None
        else:
            ref = expected.get(key)
            if ref is None:
                raise SummaryFormatError(f"{path}: tensor {key!r} is not part of this run's state; the checkpoint was "
                                         "written by another version or edited: start afresh with --overwrite.")
            if tuple(t.shape) != tuple(ref.shape) or t.dtype != ref.dtype:
                raise SummaryFormatError(f"{path}: tensor {key!r} is {t.dtype} {tuple(t.shape)} but this run's state "
                                         f"holds {ref.dtype} {tuple(ref.shape)}; the checkpoint does not fit this run.")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise SummaryFormatError(f"{path}: tensor {key!r} holds NaN/Inf; the checkpoint is damaged: resume from "
                                     f"{previous_path(path).name} or start afresh with --overwrite.")
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise SummaryFormatError(f"{path}: the checkpoint lacks {missing[:4]}; it does not fit this run's state.")

    # optimisers: the run's own hyper-parameters; the checkpoint only supplies the state (momenta, steps)
    full: dict[str, dict[str, Any]] = {}
    for name, opt in state.optimizers.items():
        spec = opts[name]
        if not isinstance(spec, dict) or set(spec) != {"param_groups", "plain_state"}:
            raise f.fail(f"optimizers.{name}", "{param_groups, plain_state}", spec)
        fresh = json.loads(json.dumps(opt.state_dict()["param_groups"], default=str))
        groups = spec["param_groups"]
        if not isinstance(groups, list) or len(groups) != len(fresh) or not all(isinstance(g, dict) for g in groups):
            raise f.fail(f"optimizers.{name}.param_groups", f"{len(fresh)} parameter groups", groups)
        for i, (gf, gt) in enumerate(zip(fresh, groups)):
            for key in sorted(set(gf) & set(gt)):
                if gt[key] != gf[key]:
                    raise CheckpointMismatchError(
                        f"Checkpoint {path}: optimiser {name!r} group {i} has {key}={gt[key]!r} but this run's "
                        f"configuration gives {key}={gf[key]!r}. The checkpoint was edited or written with other "
                        "settings: resume with the settings it was written with, or start afresh with --overwrite.")
        plain = spec["plain_state"]
        if not isinstance(plain, dict):
            raise f.fail(f"optimizers.{name}.plain_state", "a JSON object", plain)
        st = opt_state[name]
        for pid, vals in plain.items():
            if not pid.isdigit() or int(pid) >= len(params_of[name]) or not isinstance(vals, dict) or not all(
                    v is None or (isinstance(v, (bool, int, float)) and (not is_real(v) or v == v and abs(v) < float("inf")))
                    for v in vals.values()):
                raise f.fail(f"optimizers.{name}.plain_state", "numbers per parameter", {pid: vals})
            st.setdefault(int(pid), {}).update(vals)
        full[name] = {"state": st, "param_groups": opt.state_dict()["param_groups"]}

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
            opt.load_state_dict(full[k])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise SummaryFormatError(f"Checkpoint {path} does not fit this run's state ({exc}); start afresh.") from exc
    state.step = step
    state.info = dict(info)
