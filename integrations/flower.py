"""Federated learning with distilled summaries on Flower 1.41's message API (``ClientApp`` / ``ServerApp``).

Clients share a distilled summary of their local data instead of (or besides) model updates, as in one-shot
federated distillation (Zhou et al. 2020, "Distilled One-Shot Federated Learning", DOSFL) and FedDM (Xiong et
al., CVPR 2023, "FedDM: Iterative Distribution Matching for Communication-Efficient Federated Learning").

* :data:`client_app` -- a ``ClientApp`` whose ``@train`` handler distils the node's partition with any registered
  method (method, IPC, steps, seed and optional DP come from the server's ``ConfigRecord``), replies with the
  summary as an ``ArrayRecord`` (``summary``) plus a ``ConfigRecord`` (``summary-meta``: shapes, SHA-256,
  classes, metadata), and with a locally trained model (``arrays``) when the round asks for one.
* :data:`server_app` -- a ``ServerApp`` that runs one or more registered strategies in turn
  (:data:`STRATEGIES`): ``oneshot`` (a global model trained on the union of summaries after a single round),
  ``distilled_fedavg`` (FedAvg where every client also trains on the union of summaries received earlier) and
  ``fedavg`` (the baseline). Each counts the bytes of every message, per client and per round.
* :func:`simulate` runs it in Flower's simulation engine; :func:`deploy` runs it as a real deployment: one
  ``flower-superlink`` and one ``flower-supernode`` per client as separate processes on 127.0.0.1, driven by
  ``flwr run``, every process stopped by its pid.

Robustness: replies carrying an error (a client that crashed or vanished) are logged and skipped while the
share of failures stays within ``max_failure_fraction``; a summary with a wrong shape, dtype, label range,
NaN/Inf or a SHA-256 that does not match the client's is rejected and logged, never aggregated; a client
whose partition is empty says so in its reply (``status = "empty-partition"``).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable

import numpy as np
import torch

try:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("distill_apps.integrations.flower needs Flower (flwr>=1.41): "
                      "pip install 'distill-apps[flower]'") from exc

from distill_apps import safe_io
from distill_apps.data import RealData, dirichlet_partition, iid_partition, load_dataset
from distill_apps.engine import distill as run_distill
from distill_apps.errors import ConfigError, DataError, DistillError, SummaryFormatError
from distill_apps.nets import build_model
from distill_apps.registry import Registry
from distill_apps.runtime import generator, pick_device
from distill_apps.summary import SyntheticSet
from distill_apps.train import accuracy, fit

log = logging.getLogger("distill_apps.flower")

#: the ``flwr run`` component strings of this module (the app the SuperLink/SuperNodes load)
SERVER_COMPONENT = "distill_apps.integrations.flower:server_app"
CLIENT_COMPONENT = "distill_apps.integrations.flower:client_app"


# ============================================================================ configuration
@dataclass
class FederatedConfig:
    """Everything one federated run needs; travels as a Flower ``ConfigRecord`` and as ``run_config``."""

    dataset: str = "digits"
    data_root: str = ""
    num_clients: int = 2
    partition: str = "dirichlet"  # dirichlet | iid
    alpha: float = 0.5
    seed: int = 0
    method: str = "dm"
    ipc: int = 10
    steps: int = 100  # distillation steps on each client
    method_options: str = ""  # JSON object of method option overrides
    model: str = "convnet-d2-w32"
    strategies: str = "oneshot,distilled_fedavg,fedavg"
    rounds: int = 3
    local_steps: int = 50
    local_lr: float = 0.01
    batch_size: int = 64
    mix: float = 0.5  # share of the local training set made of the union of summaries (distilled_fedavg)
    server_epochs: int = 100  # one-shot: epochs of global training on the union of summaries
    server_lr: float = 0.01
    dp: bool = False
    dp_epsilon: float = 1.0
    dp_delta: float = 1e-5
    dp_clip: float = 1.0
    round_timeout: float = 600.0
    connect_timeout: float = 60.0
    max_failure_fraction: float = 0.5
    device: str = "cpu"
    out: str = ""  # results JSON written by the ServerApp (needed for deployments)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        if self.num_clients < 1:
            raise ConfigError(f"num_clients must be >= 1; got {self.num_clients}.")
        if self.ipc < 1:
            raise ConfigError(f"ipc must be >= 1; got {self.ipc}.")
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1; got {self.rounds}.")
        if not 0.0 <= self.mix < 1.0:
            raise ConfigError(f"mix (share of summary images in local training) must lie in [0, 1); got {self.mix}.")
        if not 0.0 <= self.max_failure_fraction < 1.0:
            raise ConfigError(f"max_failure_fraction must lie in [0, 1); got {self.max_failure_fraction}.")
        PARTITIONERS.get(self.partition)
        for name in self.strategy_names():
            STRATEGIES.get(name)
        if self.method_options:
            try:
                opts = json.loads(self.method_options)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"method_options must be a JSON object; got {self.method_options!r}.") from exc
            if not isinstance(opts, dict):
                raise ConfigError(f"method_options must be a JSON object; got {self.method_options!r}.")

    def strategy_names(self) -> list[str]:
        names = [s.strip() for s in self.strategies.split(",") if s.strip()]
        if not names:
            raise ConfigError("strategies is empty: name at least one of oneshot, distilled_fedavg, fedavg.")
        return names

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(self.as_dict())

    @classmethod
    def from_mapping(cls, data: Any) -> "FederatedConfig":
        """Build from a dict, a ``ConfigRecord`` or Flower's ``run_config`` (hyphens read as underscores)."""
        known = {f.name: f for f in fields(cls)}
        kw: dict[str, Any] = {}
        for key, value in dict(data).items():
            name = str(key).replace("-", "_")
            if name not in known:
                continue  # Flower adds its own keys (server-round, ...)
            typ = known[name].type
            try:
                if typ in ("int", int):
                    value = int(value)
                elif typ in ("float", float):
                    value = float(value)
                elif typ in ("bool", bool):
                    value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
                else:
                    value = str(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"Federated option {name}={value!r} must be {typ}.") from exc
            kw[name] = value
        return cls(**kw)


# ============================================================================ data: partitions
PARTITIONERS: Registry[Callable[[torch.Tensor, int, float, int], list[torch.Tensor]]] = Registry("partition scheme")


@PARTITIONERS.register("iid")
def _iid(labels: torch.Tensor, n: int, alpha: float, seed: int) -> list[torch.Tensor]:
    return iid_partition(len(labels), n, seed)


@PARTITIONERS.register("dirichlet")
def _dirichlet(labels: torch.Tensor, n: int, alpha: float, seed: int) -> list[torch.Tensor]:
    return dirichlet_partition(labels, n, alpha, seed)


@functools.lru_cache(maxsize=2)
def _dataset(name: str, root: str) -> RealData:
    return load_dataset(name, root or None)


@functools.lru_cache(maxsize=4)
def _partitions(name: str, root: str, scheme: str, n: int, alpha: float, seed: int) -> tuple[torch.Tensor, ...]:
    return tuple(PARTITIONERS.get(scheme)(_dataset(name, root).y_train, n, alpha, seed))


def client_partition(cfg: FederatedConfig, partition_id: int, num_partitions: int | None = None) -> RealData:
    """The training data of client ``partition_id`` (seeded: every process computes the same split)."""
    n = num_partitions or cfg.num_clients
    if not 0 <= partition_id < n:
        raise ConfigError(f"partition-id {partition_id} is outside [0, {n}): start SuperNodes with "
                          f"--node-config 'partition-id=i num-partitions={n}' for i in 0..{n - 1}.")
    parts = _partitions(cfg.dataset, cfg.data_root, cfg.partition, n, cfg.alpha, cfg.seed)
    real = _dataset(cfg.dataset, cfg.data_root)
    return real.subset(parts[partition_id], name=real.name)


# ============================================================================ client: distil a partition
def _local_view(part: RealData, present: torch.Tensor, ipc: int) -> RealData:
    """The partition with its present classes renumbered 0..k-1; classes with fewer than ``ipc`` images are
    tiled up to ``ipc`` so every registered method (which draws ``ipc`` images per class) can run."""
    lookup = torch.full((part.num_classes,), -1, dtype=torch.long)
    lookup[present] = torch.arange(len(present))
    idx = []
    for c in present.tolist():
        ix = torch.nonzero(part.y_train == c).flatten()
        idx.append(ix.repeat(math.ceil(ipc / len(ix)))[:max(ipc, len(ix))] if len(ix) < ipc else ix)
    idx = torch.cat(idx)
    x, y = part.x_train[idx], lookup[part.y_train[idx]]
    return RealData(name=part.name, x_train=x, y_train=y, x_test=x[:1], y_test=y[:1], num_classes=len(present),
                    mean=part.mean, std=part.std, flip_invariant=part.flip_invariant)


def _to_global(s: SyntheticSet, part: RealData, present: torch.Tensor) -> SyntheticSet:
    """Map a summary of the local view back to the dataset's class ids, dropping exact duplicate images
    (which appear when a class had fewer real images than IPC)."""
    s = s.materialize()
    keep, seen = [], set()
    for i in range(len(s.y)):
        key = (int(s.y[i]), safe_io.checksum({"x": s.x[i]}))
        if key not in seen:
            seen.add(key)
            keep.append(i)
    keep_t = torch.tensor(keep, dtype=torch.long)
    soft = None
    if s.soft is not None:
        fill = -30.0 if s.label_kind == "logits" else float(s.soft.min())
        soft = torch.full((len(keep), part.num_classes), fill)
        soft[:, present] = s.soft[keep_t].float()
    meta = dict(s.meta, dataset=part.name, client_classes=present.tolist(), client_examples=len(part.y_train))
    return SyntheticSet(x=s.x[keep_t].float().contiguous(), y=present[s.y[keep_t]], num_classes=part.num_classes,
                        image_shape=part.image_shape, mean=part.mean, std=part.std, soft=soft,
                        label_kind=s.label_kind, lr=s.lr, meta=meta)


def _private_distill(local: RealData, cfg: FederatedConfig, opts: dict[str, Any]) -> SyntheticSet:
    """Differentially private distillation with the registered DP methods (``dp-dm``, ``dp-dc``).

    ``method="dm"`` or ``"dc"`` with ``dp=true`` runs ``dp-dm`` / ``dp-dc`` at the client's (epsilon, delta,
    clip); the spent budget lands in ``meta["privacy"]`` and travels with the summary.
    """
    from distill_apps.engine import METHODS

    method = cfg.method if cfg.method.startswith("dp-") else f"dp-{cfg.method}"
    if method not in METHODS:
        private = ", ".join(n for n in METHODS.names() if n.startswith("dp-"))
        raise ConfigError(f"dp=true, but {cfg.method!r} has no private variant: use one of {private}.")
    opts = {**opts, "epsilon": cfg.dp_epsilon, "delta": cfg.dp_delta, "clip": cfg.dp_clip}
    return run_distill(method, local, cfg.ipc, steps=cfg.steps, model=cfg.model, seed=cfg.seed,
                       device=cfg.device, config=opts, progress=False)


def distill_partition(part: RealData, cfg: FederatedConfig, *, progress: bool = False) -> SyntheticSet:
    """Distil one client's partition with ``cfg.method`` at ``cfg.ipc`` images per *present* class.

    Classes the client does not hold are absent from its summary; a class with fewer real images than IPC
    contributes at most as many distinct images as it has. Labels keep the dataset's class ids.
    """
    counts = torch.bincount(part.y_train, minlength=part.num_classes)
    present = torch.nonzero(counts).flatten()
    if len(present) == 0:
        raise DataError(f"The client's partition of {part.name} is empty: nothing to distil. Use fewer clients "
                        "or a larger Dirichlet alpha so every client holds data.")
    local = _local_view(part, present, cfg.ipc)
    opts = json.loads(cfg.method_options) if cfg.method_options else {}
    if cfg.dp:
        s = _private_distill(local, cfg, opts)
    else:
        s = run_distill(cfg.method, local, cfg.ipc, steps=cfg.steps, model=cfg.model, seed=cfg.seed,
                        device=cfg.device, config=opts, progress=progress)
    return _to_global(s, part, present)


# ============================================================================ summary <-> records
def summary_tensors(s: SyntheticSet) -> dict[str, torch.Tensor]:
    m = s.materialize()
    out = {"x": m.x.detach().float().cpu().contiguous(), "y": m.y.detach().long().cpu().contiguous()}
    if m.soft is not None:
        out["soft"] = m.soft.detach().float().cpu().contiguous()
    return out


def summary_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes (the same function both sides compute)."""
    return safe_io.checksum(tensors)


def summary_to_records(s: SyntheticSet) -> tuple[ArrayRecord, ConfigRecord]:
    """The summary as an ``ArrayRecord`` (x float32, y int64, optional soft) and a ``ConfigRecord`` of meta."""
    t = summary_tensors(s)
    meta = {"sha256": summary_digest(t), "num-classes": int(s.num_classes), "image-shape": list(s.image_shape),
            "label-kind": s.label_kind, "mean": [float(v) for v in s.mean], "std": [float(v) for v in s.std],
            "images": int(len(t["y"])), "classes": sorted({int(c) for c in t["y"].tolist()}) or [0],
            "meta-json": json.dumps(s.meta, default=str)}
    if s.lr is not None:
        meta["lr"] = float(s.lr)
    return ArrayRecord(t), ConfigRecord(meta)


def summary_from_records(arrays: ArrayRecord, meta: ConfigRecord, image_shape: tuple[int, ...],
                         num_classes: int) -> tuple[SyntheticSet, str]:
    """Validate a received summary and rebuild it; raises :class:`SummaryFormatError` naming the defect.

    Checks: the expected keys; x float32 of shape (N, *image_shape); y int64 (N,) within [0, num_classes);
    soft float32 (N, num_classes) if present; every value finite; the SHA-256 equal to the client's.
    """
    keys = set(arrays.keys())
    if not {"x", "y"} <= keys or not keys <= {"x", "y", "soft"}:
        raise SummaryFormatError(f"summary arrays must be x, y (and optionally soft); got {sorted(keys)}.")
    try:
        np_arrays = {k: arrays[k].numpy() for k in keys}
    except (TypeError, ValueError) as exc:
        raise SummaryFormatError(f"summary arrays could not be decoded: {exc}") from exc
    x, y = np_arrays["x"], np_arrays["y"]
    if x.dtype != np.float32:
        raise SummaryFormatError(f"summary x must be float32; got {x.dtype}.")
    if y.dtype != np.int64 or y.ndim != 1:
        raise SummaryFormatError(f"summary y must be int64 of shape (N,); got {y.dtype} {y.shape}.")
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(image_shape) or x.shape[0] != y.shape[0]:
        raise SummaryFormatError(f"summary x must have shape ({y.shape[0]}, {', '.join(map(str, image_shape))}); "
                                 f"got {x.shape}.")
    if not np.isfinite(x).all():
        raise SummaryFormatError("summary x holds NaN/Inf.")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise SummaryFormatError(f"summary labels must lie in [0, {num_classes}); got [{y.min()}, {y.max()}].")
    soft = np_arrays.get("soft")
    if soft is not None and (soft.dtype != np.float32 or soft.shape != (y.shape[0], num_classes)
                             or not np.isfinite(soft).all()):
        raise SummaryFormatError(f"summary soft labels must be finite float32 ({y.shape[0]}, {num_classes}); "
                                 f"got {soft.dtype} {soft.shape}.")
    tensors = {k: torch.from_numpy(v.copy()) for k, v in np_arrays.items()}
    digest = summary_digest(tensors)
    claimed = str(meta.get("sha256", ""))
    if digest != claimed:
        raise SummaryFormatError(f"summary SHA-256 mismatch: received {digest[:16]}..., the client sent "
                                 f"{claimed[:16]}...; the summary changed in transit.")
    try:
        extra = json.loads(str(meta.get("meta-json", "{}")))
        s = SyntheticSet(x=tensors["x"], y=tensors["y"], num_classes=num_classes, image_shape=tuple(image_shape),
                         mean=tuple(meta.get("mean", [])), std=tuple(meta.get("std", [])), soft=tensors.get("soft"),
                         label_kind=str(meta.get("label-kind", "hard")), lr=meta.get("lr"), meta=extra)
    except (DistillError, json.JSONDecodeError, TypeError) as exc:
        raise SummaryFormatError(f"summary metadata is invalid: {exc}") from exc
    return s, digest


def _scalar_bytes(v: Any) -> int:
    if isinstance(v, bool):
        return 1
    if isinstance(v, (int, float)):
        return 8  # protobuf carries config/metric numbers as 64-bit
    if isinstance(v, (str, bytes)):
        return len(v)
    if isinstance(v, list):
        return sum(_scalar_bytes(e) for e in v)
    raise TypeError(f"unexpected record value {type(v).__name__}")


def record_bytes(content: RecordDict) -> int:
    """Bytes of a message's payload: Flower's ``count_bytes`` for arrays (serialised bytes + keys) and the same
    rule for config/metric records (8 bytes per number, 1 per bool, the length of strings; keys counted).
    Flower's own ``ConfigRecord.count_bytes`` refuses empty strings, hence the local count."""
    total = 0
    for rec in content.values():
        if isinstance(rec, ArrayRecord):
            total += rec.count_bytes()
        else:
            total += sum(len(k) + _scalar_bytes(v) for k, v in rec.items())
    return int(total)


# ============================================================================ the ClientApp
client_app = ClientApp()

_SUMMARY_CACHE: dict[str, tuple[ArrayRecord, ConfigRecord]] = {}


def _state_key(strategy: str) -> str:
    return f"distill-apps-union-{strategy}"


def _union_training_set(x: torch.Tensor, y: torch.Tensor, union: ArrayRecord | None, mix: float,
                        g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Own data plus the union of summaries, repeated so it makes up ``mix`` of the local training set."""
    if union is None or mix <= 0 or "x" not in union:
        return x, y
    ux, uy = torch.from_numpy(union["x"].numpy().copy()), torch.from_numpy(union["y"].numpy().copy())
    if len(uy) == 0:
        return x, y
    want = int(round(mix / (1 - mix) * len(y)))
    idx = torch.randint(len(uy), (max(want, len(uy)),), generator=g)
    return torch.cat([x, ux[idx]]), torch.cat([y, uy[idx]])


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    """Distil the partition and/or train the global model locally, as the round's ``task`` asks."""
    cfg = FederatedConfig.from_mapping(msg.content["config"])
    task = msg.content["task"]
    strategy = str(task["strategy"])
    pid = int(context.node_config.get("partition-id", -1))
    n_parts = int(context.node_config.get("num-partitions", cfg.num_clients))
    status = {"partition-id": pid, "strategy": strategy, "status": "ok", "detail": ""}
    reply = RecordDict()
    try:
        part = client_partition(cfg, pid, n_parts)
    except DistillError as exc:
        status.update(status="config-error", detail=str(exc))
        part = None
    if part is not None and len(part.y_train) == 0:
        status.update(status="empty-partition", detail=f"partition {pid} of {n_parts} ({cfg.partition}, alpha="
                      f"{cfg.alpha}) holds no training examples of {cfg.dataset}: use fewer clients or a "
                      "larger alpha.")
        part = None
    n_ex = 0 if part is None else int(len(part.y_train))
    metrics = {"num-examples": n_ex}
    if part is not None and bool(task["distill"]):
        key = json.dumps([cfg.as_dict(), pid, n_parts], sort_keys=True)
        try:
            if key not in _SUMMARY_CACHE:
                _SUMMARY_CACHE[key] = summary_to_records(distill_partition(part, cfg))
            arrays, meta = _SUMMARY_CACHE[key]
            reply["summary"], reply["summary-meta"] = arrays, meta
        except DistillError as exc:
            status.update(status="distill-error", detail=str(exc))
    if part is not None and bool(task["train"]) and status["status"] == "ok":
        union = msg.content.array_records.get("union")
        if union is not None:
            context.state[_state_key(strategy)] = union  # sent once, kept for the later rounds
        elif bool(task["use-union"]):
            union = context.state.array_records.get(_state_key(strategy))
            if union is None:
                status["detail"] = "union-missing: trained on own data only this round"
        g = generator("flower-local", cfg.seed, pid, int(task["round"]))
        net = build_model(cfg.model, part.image_shape[0], part.num_classes, part.image_shape[1:], generator=g,
                          device=pick_device(cfg.device))
        net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        x, y = _union_training_set(part.x_train, part.y_train, union, cfg.mix, g)
        fit(net, x, y, steps=cfg.local_steps, lr=cfg.local_lr, batch_size=cfg.batch_size, generator=g,
            decay_at_half=False)
        reply["arrays"] = ArrayRecord({k: v.detach().cpu() for k, v in net.state_dict().items()})
        metrics["union-examples"] = 0 if union is None or "y" not in union else int(union["y"].shape[0])
    reply["metrics"] = MetricRecord(metrics)
    reply["status"] = ConfigRecord(status)
    return Message(reply, reply_to=msg)


# ============================================================================ server: strategies
STRATEGIES: Registry[type["SummaryStrategy"]] = Registry("federated strategy")


class SummaryStrategy(FedAvg):
    """FedAvg that also moves distilled summaries, validates them and counts every byte.

    Subclasses set four switches: ``distill_round`` (the round whose clients send a summary; 0 = never),
    ``local_training`` (clients return a trained model), ``share_union`` (later rounds send clients the union
    of summaries received so far) and ``train_on_union`` (the server trains the global model on the union).
    """

    name: ClassVar[str] = ""
    distill_round: ClassVar[int] = 0
    local_training: ClassVar[bool] = True
    share_union: ClassVar[bool] = False
    train_on_union: ClassVar[bool] = False

    def __init__(self, cfg: FederatedConfig, real: RealData) -> None:
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
        self.cfg, self.real = cfg, real
        self.summaries: dict[int, SyntheticSet] = {}  # by partition id
        self.clients: dict[int, dict[str, Any]] = {}
        self.rounds: dict[int, dict[str, Any]] = {}
        self.rejected: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self._union_sent: set[int] = set()
        self._node_pid: dict[int, int] = {}
        init = self.new_model(generator("flower-init", cfg.seed))
        self.initial_arrays = ArrayRecord({k: v.detach().cpu() for k, v in init.state_dict().items()})
        self.reference_keys = {k: tuple(v.shape) for k, v in init.state_dict().items()}

    def num_rounds(self) -> int:
        return self.cfg.rounds

    # ------------------------------------------------------------------ helpers
    def _round(self, r: int) -> dict[str, Any]:
        return self.rounds.setdefault(r, {"round": r, "up": {}, "down": {}, "summary_up": {}, "sampled": 0,
                                          "replies": 0, "failures": 0, "rejected": 0})

    def _pid(self, node: int) -> int | str:
        return self._node_pid.get(node, f"node-{node}")

    def _wait_nodes(self, grid: Grid) -> list[int]:
        deadline = time.monotonic() + self.cfg.connect_timeout
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= self.cfg.num_clients or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if not nodes:
            raise DataError(f"No SuperNode connected within {self.cfg.connect_timeout:.0f} s: start the "
                            "SuperNodes (flower-supernode --superlink ...) or raise connect_timeout.")
        if len(nodes) < self.cfg.num_clients:
            log.warning("only %d of %d nodes connected after %.0f s; proceeding with them", len(nodes),
                        self.cfg.num_clients, self.cfg.connect_timeout)
        return nodes

    def union(self) -> SyntheticSet | None:
        """The union of all accepted summaries (hard labels; soft labels kept when every summary has them)."""
        if not self.summaries:
            return None
        ss = [self.summaries[k] for k in sorted(self.summaries)]
        kinds = {s.label_kind for s in ss}
        soft = None
        kind = "hard"
        if len(kinds) == 1 and all(s.soft is not None for s in ss):
            soft, kind = torch.cat([s.soft for s in ss]), ss[0].label_kind
        return SyntheticSet(x=torch.cat([s.x for s in ss]), y=torch.cat([s.y for s in ss]),
                            num_classes=self.real.num_classes, image_shape=self.real.image_shape,
                            mean=self.real.mean, std=self.real.std, soft=soft, label_kind=kind,
                            meta={"clients": sorted(self.summaries), "dataset": self.real.name})

    def new_model(self, g: torch.Generator) -> torch.nn.Module:
        r = self.real
        return build_model(self.cfg.model, r.image_shape[0], r.num_classes, r.image_shape[1:], generator=g,
                           device=pick_device(self.cfg.device))

    # ------------------------------------------------------------------ Flower hooks
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        nodes = self._wait_nodes(grid)
        rec = self._round(server_round)
        rec["sampled"] = len(nodes)
        use_union = self.share_union and server_round > self.distill_round > 0
        union = self.union() if use_union else None
        union_record = None
        if union is not None:
            union_record = ArrayRecord({"x": union.x.float().contiguous(), "y": union.y.long().contiguous()})
        task = {"strategy": self.name, "round": server_round, "distill": server_round == self.distill_round,
                "train": self.local_training, "use-union": union is not None}
        messages = []
        for node in nodes:
            content = RecordDict({"config": self.cfg.to_record(), "task": ConfigRecord(task)})
            if self.local_training:
                content["arrays"] = arrays
            if union_record is not None and node not in self._union_sent:
                content["union"] = union_record
                self._union_sent.add(node)
            rec["down"][node] = record_bytes(content)
            messages.append(Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node))
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rec = self._round(server_round)
        models: list[RecordDict] = []
        examples = 0
        for msg in replies:
            node = msg.metadata.src_node_id
            rec["replies"] += 1
            if msg.has_error():
                rec["failures"] += 1
                self._union_sent.discard(node)
                self.failures.append({"round": server_round, "node": node, "reason": str(msg.error.reason)[:500]})
                log.warning("round %d: node %s failed: %s", server_round, node, msg.error.reason)
                continue
            content = msg.content
            rec["up"][node] = record_bytes(content)
            status = content.config_records.get("status", ConfigRecord())
            pid = int(status.get("partition-id", -1))
            self._node_pid[node] = pid
            info = self.clients.setdefault(pid, {"partition_id": pid, "node_id": node})
            info["status"] = str(status.get("status", "unknown"))
            if status.get("detail"):
                info["detail"] = str(status.get("detail"))
            if info["status"] != "ok":
                rec["failures"] += 1
                self.failures.append({"round": server_round, "node": node, "partition_id": pid,
                                      "reason": f"{info['status']}: {status.get('detail', '')}"})
                log.warning("round %d: client %s reports %s: %s", server_round, pid, info["status"],
                            status.get("detail", ""))
                continue
            info["num_examples"] = int(content["metrics"]["num-examples"])
            if server_round == self.distill_round:
                if not self._accept_summary(server_round, node, pid, content, rec):
                    continue
            if self.local_training:
                if not self._accept_model(server_round, node, pid, content):
                    rec["rejected"] += 1
                    continue
                examples += info["num_examples"]
                models.append(RecordDict({"arrays": content["arrays"],
                                          "metrics": MetricRecord({"num-examples": info["num_examples"]})}))
        rec["up_total"], rec["down_total"] = sum(rec["up"].values()), sum(rec["down"].values())
        sampled = max(1, rec["sampled"])
        bad = rec["failures"] + rec["rejected"] + max(0, rec["sampled"] - rec["replies"])
        if bad / sampled > self.cfg.max_failure_fraction:
            log.error("round %d: %d of %d clients failed or were rejected (more than max_failure_fraction=%.2f);"
                      " the global model is left unchanged this round", server_round, bad, sampled,
                      self.cfg.max_failure_fraction)
            return None, None
        arrays = None
        if self.train_on_union:
            arrays = self._server_train(server_round)
        elif models:
            arrays = aggregate_arrayrecords(models, "num-examples")
        metrics = MetricRecord({"clients-used": len(models) if self.local_training else len(self.summaries),
                                "examples": examples})
        return arrays, metrics

    def _accept_summary(self, server_round: int, node: int, pid: int, content: RecordDict,
                        rec: dict[str, Any]) -> bool:
        if "summary" not in content.array_records or "summary-meta" not in content.config_records:
            reason = "reply carries no summary although this round asked for one"
        else:
            meta = content["summary-meta"]
            try:
                s, digest = summary_from_records(content["summary"], meta, self.real.image_shape,
                                                 self.real.num_classes)
            except SummaryFormatError as exc:
                reason = str(exc)
            else:
                self.summaries[pid] = s
                rec["summary_up"][node] = record_bytes(RecordDict({"summary": content["summary"],
                                                                   "summary-meta": meta}))
                self.clients[pid].update(sha256_client=str(meta["sha256"]), sha256_server=digest,
                                         summary_images=int(len(s.y)),
                                         summary_classes=sorted({int(c) for c in s.y.tolist()}),
                                         summary_bytes=rec["summary_up"][node])
                return True
        rec["rejected"] += 1
        self.rejected.append({"round": server_round, "node": node, "partition_id": pid, "reason": reason})
        log.warning("round %d: rejected the summary of client %s: %s", server_round, pid, reason)
        return False

    def _accept_model(self, server_round: int, node: int, pid: int, content: RecordDict) -> bool:
        ref = self.reference_keys
        reason = ""
        if "arrays" not in content.array_records:
            reason = "reply carries no model arrays"
        else:
            got = content["arrays"]
            if set(got.keys()) != set(ref):
                reason = f"model arrays have keys {sorted(got.keys())[:4]}..., expected the global model's"
            else:
                for k, shape in ref.items():
                    a = got[k].numpy()
                    if (tuple(a.shape) != shape or not np.issubdtype(a.dtype, np.floating)
                            or not np.isfinite(a).all()):
                        reason = f"model array {k!r} has shape {a.shape}, dtype {a.dtype} or NaN/Inf"
                        break
        if reason:
            self.rejected.append({"round": server_round, "node": node, "partition_id": pid, "reason": reason})
            log.warning("round %d: rejected the model update of client %s: %s", server_round, pid, reason)
            return False
        return True

    def _server_train(self, server_round: int) -> ArrayRecord | None:
        union = self.union()
        if union is None:
            log.error("round %d: no valid summary arrived; no global model was trained", server_round)
            return None
        g = generator("flower-server", self.cfg.seed, self.name, server_round)
        net = self.new_model(g)
        target = union.soft if union.soft is not None else union.y
        fit(net, union.x, target, epochs=self.cfg.server_epochs, lr=union.lr or self.cfg.server_lr,
            batch_size=256, label_kind=union.label_kind, generator=g)
        return ArrayRecord({k: v.detach().cpu() for k, v in net.state_dict().items()})

    # ------------------------------------------------------------------ driving one strategy
    def evaluate_fn(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if not len(arrays):
            return None
        net = self.new_model(generator("flower-eval", self.cfg.seed))
        net.load_state_dict(arrays.to_torch_state_dict())
        return MetricRecord({"accuracy": accuracy(net, self.real.x_test, self.real.y_test)})

    def run(self, grid: Grid) -> dict[str, Any]:
        t0 = time.perf_counter()
        result = self.start(grid=grid, initial_arrays=self.initial_arrays, num_rounds=self.num_rounds(),
                            timeout=self.cfg.round_timeout, evaluate_fn=self.evaluate_fn)
        acc = {int(r): float(m["accuracy"]) for r, m in result.evaluate_metrics_serverapp.items()}
        return self.report(acc, time.perf_counter() - t0)

    def report(self, acc: dict[int, float], seconds: float) -> dict[str, Any]:
        rounds = []
        for r in sorted(self.rounds):
            rec = self.rounds[r]
            per_client: dict[str, dict[str, int]] = {}
            for node in set(rec["up"]) | set(rec["down"]):
                per_client[str(self._pid(node))] = {"up": rec["up"].get(node, 0), "down": rec["down"].get(node, 0)}
            rounds.append({"round": r, "up": sum(rec["up"].values()), "down": sum(rec["down"].values()),
                           "summary_up": sum(rec["summary_up"].values()), "sampled": rec["sampled"],
                           "replies": rec["replies"], "failures": rec["failures"], "rejected": rec["rejected"],
                           "accuracy": acc.get(r), "per_client": per_client})
        up, down = sum(x["up"] for x in rounds), sum(x["down"] for x in rounds)
        return {"strategy": self.name, "rounds": self.num_rounds(), "accuracy": acc[max(acc)] if acc else None,
                "accuracy_by_round": {str(k): v for k, v in sorted(acc.items())}, "bytes_up": up,
                "bytes_down": down, "bytes_total": up + down, "by_round": rounds,
                "clients": {str(k): v for k, v in sorted(self.clients.items())}, "rejected": self.rejected,
                "failures": self.failures, "summary_images": sum(len(s.y) for s in self.summaries.values()),
                "seconds": round(seconds, 2)}


@STRATEGIES.register("oneshot")
class OneShot(SummaryStrategy):
    """One round: every client sends a summary; the server trains a global model on their union (DOSFL)."""

    name = "oneshot"
    distill_round = 1
    local_training = False
    train_on_union = True

    def num_rounds(self) -> int:
        return 1


@STRATEGIES.register("distilled_fedavg")
class DistilledFedAvg(SummaryStrategy):
    """FedAvg; round 1 also collects summaries, later rounds train each client on its data + their union."""

    name = "distilled_fedavg"
    distill_round = 1
    share_union = True


@STRATEGIES.register("fedavg")
class PlainFedAvg(SummaryStrategy):
    """FedAvg (McMahan et al. 2017), the baseline: model updates only."""

    name = "fedavg"


def run_server(grid: Grid, cfg: FederatedConfig) -> dict[str, Any]:
    """Run every strategy in ``cfg.strategies`` on ``grid``, one after another; returns the results."""
    real = _dataset(cfg.dataset, cfg.data_root)
    out = {"config": cfg.as_dict(), "strategies": {}}
    for name in cfg.strategy_names():
        out["strategies"][name] = STRATEGIES.get(name)(cfg, real).run(grid)
    if cfg.out:
        safe_io.write_json(cfg.out, out, indent=1)
    return out


server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Deployment entry point: the configuration is the run config (``[tool.flwr.app.config]``)."""
    cfg = FederatedConfig.from_mapping(context.run_config)
    if not cfg.out:
        raise ConfigError("Set out=<path.json> in the run config: the ServerApp writes its results there.")
    run_server(grid, cfg)


def make_server_app(cfg: FederatedConfig, sink: dict[str, Any]) -> ServerApp:
    """A ServerApp running ``cfg`` and putting its results into ``sink`` (for the in-process simulation)."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        sink.update(run_server(grid, cfg))

    return app


# ============================================================================ simulation
def simulate(cfg: FederatedConfig, *, num_cpus: int | None = None, verbose: bool = False) -> dict[str, Any]:
    """Run ``cfg`` in Flower's simulation engine (Ray backend), one virtual SuperNode per client."""
    from flwr.simulation import run_simulation

    cpus = num_cpus or max(1, min(os.cpu_count() or 1, cfg.num_clients))
    sink: dict[str, Any] = {}
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               # Ray registers its GCS/raylet on the machine's own address whatever is asked (it maps 127.0.0.1
               # to it: ray._private.services.resolve_ip_for_localhost); deploy() is the loopback-only path
               "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False,
                             "logging_level": "error", "log_to_driver": verbose}}
    run_simulation(server_app=make_server_app(cfg, sink), client_app=client_app, num_supernodes=cfg.num_clients,
                   backend_config=backend, verbose_logging=verbose)
    if not sink:
        raise DistillError("The Flower simulation ended without results: see the log above for the ServerApp's "
                           "error.")
    return sink


# ============================================================================ real deployment on 127.0.0.1
def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))


def write_app(app_dir: Path, cfg: FederatedConfig) -> Path:
    """Write the Flower app's ``pyproject.toml`` by hand (``flwr new`` needs the network)."""
    app_dir.mkdir(parents=True, exist_ok=True)
    conf = "\n".join(f"{k} = {_toml_value(v)}" for k, v in cfg.as_dict().items())
    (app_dir / "pyproject.toml").write_text(f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "distill-apps-federated"
version = "1.0.0"
description = "Federated learning with distilled summaries (distill-apps)"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "distill-apps"

[tool.flwr.app.components]
serverapp = "{SERVER_COMPONENT}"
clientapp = "{CLIENT_COMPONENT}"

[tool.flwr.app.config]
{conf}
""")
    (app_dir / "README.md").write_text("Flower app of distill-apps: components live in the installed package.\n")
    return app_dir


def _stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop a process we started and its children (its own process group, whose id is its pid)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children left in the group (flwr-serverapp / flwr-clientapp)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=grace)


def _wait_http(port: int, proc: subprocess.Popen, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DistillError(f"flower-superlink exited with code {proc.returncode}; see {log_path}.")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise DistillError(f"flower-superlink did not answer on 127.0.0.1:{port} within {timeout:.0f} s; see {log_path}.")


def _executable(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(found).exists():
        raise DistillError(f"{name} is not on PATH: pip install 'distill-apps[flower]' in this environment.")
    return found


def deploy(cfg: FederatedConfig, *, workdir: str | os.PathLike | None = None, timeout: float = 600.0,
           startup_timeout: float = 30.0, keep_logs: bool = False,
           during_run: Callable[[dict[str, subprocess.Popen], Path], None] | None = None) -> dict[str, Any]:
    """Run ``cfg`` as a real deployment on loopback and return the results.

    Starts ``flower-superlink --insecure`` on a free 127.0.0.1 port, one ``flower-supernode --insecure`` per
    client (``--node-config 'partition-id=i num-partitions=n'``), then ``flwr run <app> <federation> --stream``
    with a temporary ``FLWR_HOME`` and a hand-written app ``pyproject.toml``. Everything is bounded by
    ``timeout`` seconds, and every process started here is stopped by its pid in a ``finally``.

    ``during_run(processes, logs_dir)``, when given, runs in a thread once ``flwr run`` has started; it gets the
    processes by name (``superlink``, ``supernode-i``, ``flwr-run``) and may e.g. kill a SuperNode to rehearse
    a client lost in the middle of a round (see :func:`kill_when_logged`).
    """
    own_tmp = workdir is None
    work = Path(tempfile.mkdtemp(prefix="distill-flower-")) if own_tmp else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    home, app_dir, logs = work / "flwr-home", work / "app", work / "logs"
    for d in (home, logs):
        d.mkdir(parents=True, exist_ok=True)
    out = work / "results.json"
    if out.exists():
        out.unlink()
    cfg = dataclasses.replace(cfg, out=str(out))
    write_app(app_dir, cfg)
    link_port = free_port()
    federation = "distill-local"
    (home / "config.toml").write_text(f'[superlink]\ndefault = "{federation}"\n\n[superlink.{federation}]\n'
                                      f'address = "127.0.0.1:{link_port}"\ninsecure = true\n')
    env = dict(os.environ, FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0",
               FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", FLWR_DISABLE_UPDATE_CHECK="1")
    if cfg.data_root:
        env["DISTILL_APPS_DATA"] = cfg.data_root
    procs: list[subprocess.Popen] = []
    named: dict[str, subprocess.Popen] = {}
    handles = []
    deadline = time.monotonic() + timeout

    def start(cmd: list[str], name: str) -> subprocess.Popen:
        fh = open(logs / f"{name}.log", "wb")
        handles.append(fh)
        p = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             cwd=work, start_new_session=True)
        procs.append(p)
        named[name] = p
        return p

    try:
        link = start([_executable("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port",
                      str(link_port), "--disable-runtime-dependency-installation"], "superlink")
        _wait_http(link_port, link, startup_timeout, logs / "superlink.log")
        for i in range(cfg.num_clients):
            start([_executable("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link_port}",
                   "--host", "127.0.0.1", "--port", str(free_port()),
                   "--node-config", f"partition-id={i} num-partitions={cfg.num_clients}"], f"supernode-{i}")
        remaining = max(1.0, deadline - time.monotonic())
        fh = open(logs / "flwr-run.log", "wb")
        handles.append(fh)
        run = subprocess.Popen([_executable("flwr"), "run", str(app_dir), federation, "--stream"], env=env,
                               stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=work,
                               start_new_session=True)
        procs.append(run)
        named["flwr-run"] = run
        if during_run is not None:
            threading.Thread(target=during_run, args=(dict(named), logs), daemon=True).start()
        while time.monotonic() < deadline and not out.exists():
            if run.poll() is not None and not out.exists():
                time.sleep(1.0)  # the stream may end a moment before the ServerApp's file lands
                if not out.exists():
                    break
            time.sleep(0.5)
        if not out.exists():
            tail = (logs / "flwr-run.log").read_text(errors="replace")[-3000:]
            raise DistillError(f"The deployment produced no results within {remaining:.0f} s (flwr run exit "
                               f"code {run.poll()}). Logs under {logs}. Last output of flwr run:\n{tail}")
        results = json.loads(out.read_text())
        results["deployment"] = {"superlink": f"127.0.0.1:{link_port}", "supernodes": cfg.num_clients,
                                 "pids": [p.pid for p in procs], "logs": str(logs) if keep_logs or not own_tmp else ""}
        return results
    finally:
        for p in reversed(procs):
            _stop(p)
        for fh in handles:
            fh.close()
        if own_tmp and not keep_logs:
            shutil.rmtree(work, ignore_errors=True)


def kill_when_logged(name: str, marker: str = "Receiving: train message", timeout: float = 120.0
                     ) -> Callable[[dict[str, subprocess.Popen], Path], None]:
    """A ``during_run`` fault for :func:`deploy`: once process ``name``'s log shows ``marker`` (by default, a
    SuperNode has just pulled its train message, i.e. the round is under way), SIGKILL its whole process group
    (the SuperNode and the ClientApp it started), as a crashed or disconnected client."""

    def fault(procs: dict[str, subprocess.Popen], logs: Path) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            path = logs / f"{name}.log"
            if path.exists() and marker in path.read_text(errors="replace"):
                try:
                    os.killpg(procs[name].pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                (logs / f"{name}.killed").write_text(f"{time.time()}\n")
                return
            time.sleep(0.2)

    return fault


__all__ = [
    "FederatedConfig", "client_app", "server_app", "client_partition", "distill_partition", "summary_to_records",
    "summary_from_records", "summary_digest", "summary_tensors", "record_bytes", "STRATEGIES", "SummaryStrategy",
    "OneShot", "DistilledFedAvg", "PlainFedAvg", "run_server", "make_server_app", "simulate", "deploy",
    "write_app", "free_port", "PARTITIONERS", "kill_when_logged",
]
