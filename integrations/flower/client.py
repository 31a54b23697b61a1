"""The ``ClientApp``: its ``@train`` handler distils the node's partition and/or trains the global model locally.

The reply carries the summary as an ``ArrayRecord`` (``summary``) plus a ``ConfigRecord`` (``summary-meta``),
a locally trained model (``arrays``) when the round asks for one, the metrics and a ``status`` record
(``ok``, ``empty-partition``, ``config-error`` or ``distill-error`` with a detail), never an exception.
"""
from __future__ import annotations

import json
import math
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import distill_apps as da
from distill_apps import RealData, SyntheticSet
from distill_apps.errors import ConfigError, DataError, DistillError
from distill_apps.runtime import generator, pick_device
from distill_apps.safe_io import checksum
from distill_apps.train import fit

from .config import FederatedConfig
from .partition import client_partition
from .wire import summary_to_records


# ---------------------------------------------------------------------------------------- distil a partition
def local_view(part: RealData, present: torch.Tensor, ipc: int) -> RealData:
    """The partition restricted to its present classes (renumbered 0..k-1, real test images of those classes);
    classes with fewer than ``ipc`` images are tiled up to ``ipc`` so every registered method (which draws
    ``ipc`` images per class) can run."""
    local = part.restrict(present.tolist())
    idx = [ix.repeat(math.ceil(ipc / len(ix)))[:ipc] if len(ix) < ipc else ix for ix in local.by_class]
    return local.subset(torch.cat(idx))


def _to_global(s: SyntheticSet, part: RealData, present: torch.Tensor) -> SyntheticSet:
    """The summary of the local view in the dataset's class ids, without exact duplicate images (which appear
    when a class had fewer real images than IPC)."""
    s = s.relabel(present.tolist(), part.num_classes, dataset=part.name)
    keep, seen = [], set()
    for i in range(len(s.y)):
        key = (int(s.y[i]), checksum({"x": s.x[i]}))
        if key not in seen:
            seen.add(key)
            keep.append(i)
    k = torch.tensor(keep, dtype=torch.long)
    meta = dict(s.meta, client_classes=present.tolist(), client_examples=len(part.y_train))
    return SyntheticSet(x=s.x[k].float().contiguous(), y=s.y[k], num_classes=s.num_classes, image_shape=s.image_shape,
                        mean=s.mean, std=s.std, soft=None if s.soft is None else s.soft[k].float(),
                        label_kind=s.label_kind, lr=s.lr, meta=meta)


def _private_method(cfg: FederatedConfig) -> str:
    """``dp=true`` runs the registered DP variant of ``cfg.method`` (``dm`` -> ``dp-dm``, ``dc`` -> ``dp-dc``)."""
    method = cfg.method if cfg.method.startswith("dp-") else f"dp-{cfg.method}"
    if method not in da.METHODS:
        private = ", ".join(n for n in da.METHODS.names() if n.startswith("dp-"))
        raise ConfigError(f"dp=true, but {cfg.method!r} has no private variant: use one of {private}.")
    return method


def distill_partition(part: RealData, cfg: FederatedConfig, *, progress: bool = False) -> SyntheticSet:
    """Distil one client's partition with ``cfg.method`` at ``cfg.ipc`` images per *present* class.

    Classes the client does not hold are absent from its summary; a class with fewer real images than IPC
    contributes at most as many distinct images as it has. Labels keep the dataset's class ids. With
    ``cfg.dp`` the private variant runs at the client's (epsilon, delta, clip); the spent budget lands in
    ``summary.privacy`` and travels with the summary.
    """
    counts = torch.bincount(part.y_train, minlength=part.num_classes)
    present = torch.nonzero(counts).flatten()
    if len(present) == 0:
        raise DataError(f"The client's partition of {part.name} is empty: nothing to distil. Use fewer clients "
                        "or a larger Dirichlet alpha so every client holds data.")
    local = local_view(part, present, cfg.ipc)
    method, opts = cfg.method, dict(cfg.method_config)
    if cfg.dp:
        method = _private_method(cfg)
        opts.update(epsilon=cfg.dp_epsilon, delta=cfg.dp_delta, clip=cfg.dp_clip)
    s = da.distill(method, local, cfg.ipc, steps=cfg.steps, model=cfg.model, seed=cfg.seed, device=cfg.device,
                   config=opts, progress=progress and not cfg.dp)
    return _to_global(s, part, present)


# ---------------------------------------------------------------------------------------- the ClientApp
client_app = ClientApp()

_SUMMARY_CACHE: dict[str, tuple[ArrayRecord, ConfigRecord]] = {}


def union_state_key(strategy: str) -> str:
    """Where a client keeps the union of summaries it received, in its ``Context.state``."""
    return f"distill-apps-union-{strategy}"


def union_training_set(x: torch.Tensor, y: torch.Tensor, union: ArrayRecord | None, mix: float,
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


def _train_locally(msg: Message, context: Context, cfg: FederatedConfig, part: RealData, pid: int,
                   strategy: str, task: Any, status: dict[str, Any]) -> tuple[ArrayRecord, int]:
    """Train the received global model on the partition (mixed with the union of summaries when the strategy asks);
    returns the new weights and the examples used."""
    union = msg.content.array_records.get("union")
    if union is not None:
        context.state[union_state_key(strategy)] = union  # sent once, kept for the later rounds
    elif bool(task["use-union"]):
        union = context.state.array_records.get(union_state_key(strategy))
        if union is None:
            status["detail"] = "union-missing: trained on own data only this round"
    g = generator("flower-local", cfg.seed, pid, int(task["round"]))
    net = da.build_model(cfg.model, part.image_shape[0], part.num_classes, part.image_shape[1:], generator=g,
                         device=pick_device(cfg.device))
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = union_training_set(part.x_train, part.y_train, union, cfg.mix, g)
    fit(net, x, y, steps=cfg.local_steps, lr=cfg.local_lr, batch_size=cfg.batch_size, generator=g,
        decay_at_half=False)
    arrays = ArrayRecord({k: v.detach().cpu() for k, v in net.state_dict().items()})
    return arrays, 0 if union is None or "y" not in union else int(union["y"].shape[0])


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
    metrics = {"num-examples": 0 if part is None else int(len(part.y_train))}
    if part is not None and bool(task["distill"]):
        key = json.dumps([cfg.as_dict(), pid, n_parts], sort_keys=True)
        try:
            if key not in _SUMMARY_CACHE:
                _SUMMARY_CACHE[key] = summary_to_records(distill_partition(part, cfg))
            reply["summary"], reply["summary-meta"] = _SUMMARY_CACHE[key]
        except DistillError as exc:
            status.update(status="distill-error", detail=str(exc))
    if part is not None and bool(task["train"]) and status["status"] == "ok":
        reply["arrays"], metrics["union-examples"] = _train_locally(msg, context, cfg, part, pid, strategy, task,
                                                                    status)
    reply["metrics"] = MetricRecord(metrics)
    reply["status"] = ConfigRecord(status)
    return Message(reply, reply_to=msg)
