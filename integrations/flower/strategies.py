"""Server strategies: FedAvg subclasses that also move distilled summaries, validate them and count every byte.

Registered in :data:`STRATEGIES`: ``oneshot`` (a global model trained on the union of summaries after a single
round; Zhou et al. 2020, "Distilled One-Shot Federated Learning"), ``distilled_fedavg`` (FedAvg where every client
also trains on the union of summaries received earlier; FedDM, Xiong et al., CVPR 2023) and ``fedavg`` (McMahan
et al. 2017, the baseline). Replies carrying an error (a client that crashed or vanished) are logged and skipped
while the share of failures stays within ``max_failure_fraction``; a summary with a wrong shape, dtype, label
range, NaN/Inf or a SHA-256 that does not match the client's is rejected and logged, never aggregated.
"""
from __future__ import annotations

import logging
import time
from typing import Any, ClassVar, Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

import distill_apps as da
from distill_apps import RealData, SyntheticSet
from distill_apps.errors import DataError, SummaryFormatError
from distill_apps.registry import Registry
from distill_apps.runtime import generator, pick_device

from .config import FederatedConfig
from .wire import record_bytes, summary_from_records

log = logging.getLogger("distill_apps.flower")

#: the registered server strategies by name
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
        """Flower's FedAvg over all connected nodes, with per-client and per-round byte accounting and the received
        summaries."""
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
        """Rounds this strategy runs."""
        return self.cfg.rounds

    # ------------------------------------------------------------------ helpers
    def _round(self, r: int) -> dict[str, Any]:
        """The byte and reply record of round ``r`` (created on first use)."""
        return self.rounds.setdefault(r, {"round": r, "up": {}, "down": {}, "summary_up": {}, "sampled": 0,
                                          "replies": 0, "failures": 0, "rejected": 0})

    def _pid(self, node: int) -> int | str:
        """The partition id a node reported (or ``node-<id>`` before it did)."""
        return self._node_pid.get(node, f"node-{node}")

    def _wait_nodes(self, grid: Grid) -> list[int]:
        """Wait up to ``connect_timeout`` for all clients to connect; returns the node ids (none is a DistillError)."""
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
        """A freshly initialised global model drawn from ``g``."""
        r = self.real
        return da.build_model(self.cfg.model, r.image_shape[0], r.num_classes, r.image_shape[1:], generator=g,
                           device=pick_device(self.cfg.device))

    # ------------------------------------------------------------------ Flower hooks
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """One train message per node: the task (distil? train? use the union?), the global model and, once, the union
        of summaries; bytes are counted."""
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
        """Validate each reply (summary and/or model), count bytes and failures, then average models (FedAvg) or train
        the global model on the union of summaries."""
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
        """Validate a client's summary (shapes, dtypes, labels, finite values, SHA-256) and keep it; a bad one is
        recorded as rejected."""
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
        """Check a client's model arrays against the global model's keys and shapes; a bad reply is recorded as
        rejected."""
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
        """Train a fresh global model on the union of the clients' summaries (one-shot federated learning); None when no
        summary arrived."""
        union = self.union()
        if union is None:
            log.error("round %d: no valid summary arrived; no global model was trained", server_round)
            return None
        g = generator("flower-server", self.cfg.seed, self.name, server_round)
        net = self.new_model(g)
        da.train_on_summary(union, net, epochs=self.cfg.server_epochs, default_lr=self.cfg.server_lr,
                            batch_size=256, generator=g)  # the union's learned lr when it has one
        return ArrayRecord({k: v.detach().cpu() for k, v in net.state_dict().items()})

    # ------------------------------------------------------------------ driving one strategy
    def evaluate_fn(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Server-side test accuracy of the global model on the real test split."""
        if not len(arrays):
            return None
        net = self.new_model(generator("flower-eval", self.cfg.seed))
        net.load_state_dict(arrays.to_torch_state_dict())
        return MetricRecord({"accuracy": da.score(net, self.real)})

    def run(self, grid: Grid) -> dict[str, Any]:
        """Run the strategy on ``grid`` and return its report (accuracy per round, bytes, failures)."""
        t0 = time.perf_counter()
        result = self.start(grid=grid, initial_arrays=self.initial_arrays, num_rounds=self.num_rounds(),
                            timeout=self.cfg.round_timeout, evaluate_fn=self.evaluate_fn)
        acc = {int(r): float(m["accuracy"]) for r, m in result.evaluate_metrics_serverapp.items()}
        return self.report(acc, time.perf_counter() - t0)

    def report(self, acc: dict[int, float], seconds: float) -> dict[str, Any]:
        """Accuracy per round, bytes up and down per round and client, rejected replies and failures, as a dict."""
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
        """One round: clients distil once, the server trains on the union."""
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
