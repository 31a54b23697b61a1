"""Flower integration: clients send distilled summaries, server strategies use them, bytes are counted.

Fast tests drive the real ClientApp handler and the real strategy hooks with real Flower messages; the two
slow tests run a 2-client simulation (through the recipe) and a real SuperLink + 2 SuperNodes on 127.0.0.1.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

flwr = pytest.importorskip("flwr")
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, Metadata, RecordDict  # noqa: E402

from distill_apps.errors import ConfigError, DataError  # noqa: E402
from distill_apps.integrations import flower as F  # noqa: E402

TINY = dict(dataset="digits", num_clients=2, alpha=0.5, ipc=2, steps=3, model="convnet-d1-w16", rounds=2,
            local_steps=5, server_epochs=20, method_config={"batch_real": 32})


def kill_when_logged(name: str, marker: str = "Receiving: train message", timeout: float = 120.0
                     ) -> Callable[[dict[str, subprocess.Popen], Path], None]:
    """A ``during_run`` fault for :func:`F.deploy`: once process ``name``'s log shows ``marker`` (by default, a
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


def instruction(cfg: F.FederatedConfig, node: int, *, strategy: str, round_: int = 1, distill: bool = True,
                train: bool = False, arrays: ArrayRecord | None = None) -> Message:
    """A server->client train message as the SuperLink delivers it (metadata filled in)."""
    task = {"strategy": strategy, "round": round_, "distill": distill, "train": train, "use-union": False}
    content = RecordDict({"config": cfg.to_record(), "task": ConfigRecord(task)})
    if arrays is not None:
        content["arrays"] = arrays
    meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=0, dst_node_id=node, reply_to_message_id="",
                    group_id=str(round_), created_at=time.time(), ttl=3600, message_type="train")
    return Message(content=content, metadata=meta)


def context(pid: int, n: int) -> Context:
    return Context(run_id=1, node_id=100 + pid, node_config={"partition-id": pid, "num-partitions": n},
                   state=RecordDict(), run_config={})


@pytest.fixture(scope="module")
def tiny_cfg() -> F.FederatedConfig:
    return F.FederatedConfig(**TINY)


@pytest.fixture(scope="module")
def replies(tiny_cfg):
    """Real client replies of both partitions to a one-shot round (distillation runs in the handler)."""
    out = []
    for pid in range(2):
        out.append(F.client_train(instruction(tiny_cfg, 100 + pid, strategy="oneshot"), context(pid, 2)))
    return out


def test_partitions_are_seeded_disjoint_and_skewed(tiny_cfg):
    y = F.federated_dataset("digits").y_train
    a = F.PARTITIONERS.get("dirichlet")(y, 4, 0.1, 0)
    b = F.PARTITIONERS.get("dirichlet")(y, 4, 0.1, 0)
    c = F.PARTITIONERS.get("dirichlet")(y, 4, 0.1, 1)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))
    allidx = torch.cat(a)
    assert len(allidx) == len(y) and len(torch.unique(allidx)) == len(y)
    # alpha 0.1 is strongly skewed: some client misses at least one class entirely
    assert any((torch.bincount(y[p], minlength=10) == 0).any() for p in a)
    with pytest.raises(ConfigError, match="partition-id 5"):
        F.client_partition(tiny_cfg, 5, 2)


def test_client_sends_summary_that_arrives_intact(tiny_cfg, replies):
    strat = F.OneShot(tiny_cfg, F.federated_dataset("digits"))
    strat._round(1)["sampled"] = 2
    arrays, metrics = strat.aggregate_train(1, replies)
    assert arrays is not None and set(arrays.keys()) == set(strat.reference_keys)  # global model trained
    assert not strat.rejected and not strat.failures
    for pid, rep in enumerate(replies):
        info = strat.clients[pid]
        # hash computed by the client before sending == hash of what the server decoded
        assert info["sha256_client"] == info["sha256_server"]
        # ... and equal to an independent distillation of the same partition here (deterministic on CPU)
        local = F.distill_partition(F.client_partition(tiny_cfg, pid, 2), tiny_cfg)
        assert F.summary_digest(F.summary_tensors(local)) == info["sha256_server"]
        # the summary only holds classes this client owns
        owned = set(torch.unique(F.client_partition(tiny_cfg, pid, 2).y_train).tolist())
        assert set(info["summary_classes"]) <= owned
        assert info["summary_images"] <= tiny_cfg.ipc * len(owned)


def test_bytes_accounting(tiny_cfg, replies):
    strat = F.OneShot(tiny_cfg, F.federated_dataset("digits"))
    strat._round(1)["sampled"] = 2
    strat.aggregate_train(1, replies)
    rec = strat.rounds[1]
    for rep in replies:
        node = rep.metadata.src_node_id
        x, y = rep.content["summary"]["x"].numpy(), rep.content["summary"]["y"].numpy()
        raw = x.size * 4 + y.size * 8
        # uplink of the node = every record of its reply; the summary arrays are at least their raw bytes
        assert rec["up"][node] == F.record_bytes(rep.content)
        assert raw <= rep.content["summary"].count_bytes() < raw + 512  # + npy headers and key names
        assert rec["summary_up"][node] < rec["up"][node]
    report = strat.report({0: 0.1, 1: 0.5}, 0.0)
    assert report["bytes_up"] == sum(rec["up"].values())
    assert report["bytes_total"] == report["bytes_up"] + report["bytes_down"]
    assert set(report["by_round"][0]["per_client"]) == {"0", "1"}


def _tampered(reply: Message, **change) -> Message:
    """A copy of ``reply`` whose summary arrays are replaced (re-hashed unless ``keep_hash``)."""
    keep_hash = change.pop("keep_hash", False)
    arrays = {k: v.numpy().copy() for k, v in reply.content["summary"].items()}
    arrays.update(change)
    meta = ConfigRecord(dict(reply.content["summary-meta"]))
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    if not keep_hash:
        meta["sha256"] = F.summary_digest(tensors)
    content = RecordDict({k: v for k, v in reply.content.items() if k not in ("summary", "summary-meta")})
    content["summary"] = ArrayRecord(tensors)
    content["summary-meta"] = meta
    ins = instruction(F.FederatedConfig(**TINY), reply.metadata.src_node_id, strategy="oneshot")
    return Message(content, reply_to=ins)


@pytest.mark.parametrize("defect, match", [
    ("nan", "NaN"), ("dtype", "float32"), ("shape", "shape"), ("labels", "labels"), ("hash", "SHA-256")])
def test_malformed_summary_is_rejected_not_aggregated(tiny_cfg, replies, defect, match, caplog):
    good, bad = replies
    x = bad.content["summary"]["x"].numpy().copy()
    y = bad.content["summary"]["y"].numpy().copy()
    if defect == "nan":
        x[0, 0, 0, 0] = np.nan
        broken = _tampered(bad, x=x)
    elif defect == "dtype":
        broken = _tampered(bad, x=x.astype(np.float64))
    elif defect == "shape":
        broken = _tampered(bad, x=x[:, :, :7, :7].copy())
    elif defect == "labels":
        y[0] = 10
        broken = _tampered(bad, y=y)
    else:
        x[0, 0, 0, 0] += 1.0
        broken = _tampered(bad, x=x, keep_hash=True)
    strat = F.OneShot(tiny_cfg, F.federated_dataset("digits"))
    strat._round(1)["sampled"] = 2
    with caplog.at_level("WARNING", logger="distill_apps.flower"):
        arrays, _ = strat.aggregate_train(1, [good, broken])
    assert len(strat.rejected) == 1 and match in strat.rejected[0]["reason"]
    assert "rejected the summary" in caplog.text
    assert set(strat.summaries) == {0}  # only the good client's summary is in the union
    assert len(strat.union().y) == len(good.content["summary"]["y"].numpy())
    assert arrays is not None  # 1 of 2 bad is within max_failure_fraction=0.5


def test_failed_client_does_not_crash_the_round(tiny_cfg, replies):
    good = replies[0]
    failed = Message(Error(code=1, reason="node disconnected"), reply_to=instruction(tiny_cfg, 999,
                                                                                     strategy="oneshot"))
    strat = F.OneShot(tiny_cfg, F.federated_dataset("digits"))
    strat._round(1)["sampled"] = 2
    arrays, _ = strat.aggregate_train(1, [good, failed])
    assert arrays is not None and strat.failures[0]["reason"] == "node disconnected"
    # beyond the failure tolerance the round is skipped (global model unchanged), still without raising
    strict = F.OneShot(F.FederatedConfig(**{**TINY, "max_failure_fraction": 0.0}), F.federated_dataset("digits"))
    strict._round(1)["sampled"] = 2
    assert strict.aggregate_train(1, [good, failed]) == (None, None)


def test_empty_partition_is_reported(tiny_cfg):
    cfg = F.FederatedConfig(**{**TINY, "partition": "iid"})
    n = 2000  # more clients than digits' training images: the last partitions are empty
    rep = F.client_train(instruction(cfg, 5, strategy="oneshot"), context(n - 1, n))
    status = rep.content["status"]
    assert status["status"] == "empty-partition" and "no training examples" in status["detail"]
    assert "summary" not in rep.content.array_records
    strat = F.OneShot(cfg, F.federated_dataset("digits"))
    strat._round(1)["sampled"] = 1
    assert strat.aggregate_train(1, [rep]) == (None, None)
    assert strat.clients[n - 1]["status"] == "empty-partition"
    with pytest.raises(DataError, match="empty"):
        F.distill_partition(F.client_partition(cfg, n - 1, n), cfg)


def test_dp_request_is_private_or_refused_clearly():
    """dp=true runs the registered DP variant and ships its spent budget; a method without one is refused."""
    cfg = F.FederatedConfig(**{**TINY, "method": "dm", "dp": True, "dp_epsilon": 8.0})
    rep = F.client_train(instruction(cfg, 7, strategy="oneshot"), context(0, 2))
    meta = json.loads(rep.content["summary-meta"]["meta-json"])
    assert meta["method"] == "dp-dm"
    assert 0 < meta["privacy"]["epsilon"] <= 8.0 + 1e-6
    bad = F.FederatedConfig(**{**TINY, "method": "herding", "dp": True, "dp_epsilon": 8.0})
    rep = F.client_train(instruction(bad, 7, strategy="oneshot"), context(0, 2))
    assert rep.content["status"]["status"] == "distill-error"
    assert "no private variant" in rep.content["status"]["detail"]
    assert "summary" not in rep.content.array_records


def test_union_training_mix_and_config_errors():
    x, y = torch.zeros(30, 1, 8, 8), torch.zeros(30, dtype=torch.long)
    union = ArrayRecord({"x": torch.ones(4, 1, 8, 8), "y": torch.full((4,), 3)})
    xm, ym = F.union_training_set(x, y, union, 0.5, torch.Generator().manual_seed(0))
    assert len(ym) == 60 and int((ym == 3).sum()) == 30  # half of the local set is summary images
    with pytest.raises(ConfigError, match="Unknown federated strategy"):
        F.FederatedConfig(strategies="oneshot,bogus")
    with pytest.raises(ConfigError, match="mix"):
        F.FederatedConfig(mix=1.0)


def test_config_travels_as_record_and_run_config():
    """Method options (``method_config``, the API's ``config=``) survive a ConfigRecord and a TOML run config."""
    cfg = F.FederatedConfig(**TINY)
    assert F.FederatedConfig.from_mapping(cfg.to_record()) == cfg
    flat = cfg.as_flat_dict()
    assert flat["method_config"] == '{"batch_real": 32}'
    assert F.FederatedConfig.from_mapping({k.replace("_", "-"): v for k, v in flat.items()}) == cfg  # run_config
    assert F.FederatedConfig(strategies=["oneshot", "fedavg"]).strategy_names() == ["oneshot", "fedavg"]
    with pytest.raises(ConfigError, match="method_config"):
        F.FederatedConfig.from_mapping({"method_config": "{not json"})


def test_client_summary_uses_the_real_test_split_and_global_ids(tiny_cfg):
    """A client distils the restricted view of its partition (its present classes, their real test images) and
    hands back a summary in the dataset's class ids."""
    part = F.client_partition(tiny_cfg, 0, 2)
    present = torch.unique(part.y_train)
    local = F.client.local_view(part, present, tiny_cfg.ipc)
    assert local.num_classes == len(present) and len(local.x_test) == int(torch.isin(part.y_test, present).sum())
    s = F.distill_partition(part, tiny_cfg)
    assert s.num_classes == 10 and set(s.y.tolist()) <= set(present.tolist())
    assert s.meta["dataset"] == "digits" and s.meta["client_classes"] == present.tolist()


@pytest.mark.slow
def test_simulation_two_clients_end_to_end_via_recipe(tmp_path, capsys):
    """Recipe -> Flower simulation (Ray) with 2 clients: all three strategies, one JSON object on stdout."""
    from distill_apps.recipes import federated_distilled as recipe

    out = tmp_path / "fed"
    rc = recipe.main(["--clients", "2", "--alpha", "0.5", "--rounds", "2", "--ipc", "2", "--steps", "3",
                      "--set", "batch_real=32", "--model", "convnet-d1-w16", "--local-steps", "5",
                      "--server-epochs", "20", "--out", str(out), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)  # exactly one JSON object
    s = summary["strategies"]
    assert set(s) == {"oneshot", "distilled_fedavg", "fedavg"}
    assert s["oneshot"]["rounds"] == 1 and s["fedavg"]["rounds"] == s["distilled_fedavg"]["rounds"] == 2
    for v in s.values():
        assert v["accuracy"] > 0.2 and v["rejected"] == 0 and v["failures"] == 0  # chance is 0.1
    # one-shot only uploads summaries: far fewer bytes than FedAvg's model updates both ways
    assert s["oneshot"]["bytes_total"] < s["fedavg"]["bytes_total"] / 2
    full = json.loads((out / "results.json").read_text())["strategies"]
    # distilled+FedAvg sends the union once in round 2: downlink grows by at least its raw size
    union_raw = full["distilled_fedavg"]["summary_images"] * (64 * 4 + 8)
    d2 = full["distilled_fedavg"]["by_round"][1]["down"] - full["fedavg"]["by_round"][1]["down"]
    assert d2 >= 2 * union_raw  # both clients receive it
    cfg = F.FederatedConfig(**{**TINY, "strategies": "oneshot,distilled_fedavg,fedavg", "local_steps": 5})
    for pid, info in full["oneshot"]["clients"].items():
        assert info["sha256_client"] == info["sha256_server"]
        # an independent distillation of the same partition, single-threaded like Ray's workers (float sums
        # depend on the thread count), gives the very bytes the server received
        code = ("import json, sys; from distill_apps.integrations import flower as F; "
                "cfg = F.FederatedConfig(**json.loads(sys.argv[1])); "
                "s = F.distill_partition(F.client_partition(cfg, int(sys.argv[2]), 2), cfg); "
                "print(F.summary_digest(F.summary_tensors(s)))")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        r = subprocess.run([sys.executable, "-c", code, json.dumps(dataclasses.asdict(cfg)), pid], env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.stdout.strip().splitlines()[-1] == info["sha256_server"], r.stderr[-2000:]
    assert (out / "report.md").read_text().count("| oneshot |") == 1 and (out / "federated.png").stat().st_size
    assert (out / "accuracy_bytes.png").stat().st_size > 0 and "](accuracy_bytes.png)" in (out / "report.md").read_text()


@pytest.mark.slow
def test_real_deployment_superlink_and_two_supernodes_on_loopback(tmp_path):
    """flower-superlink + 2 flower-supernode processes on 127.0.0.1 driven by `flwr run`, stopped by pid."""
    cfg = F.FederatedConfig(**{**TINY, "strategies": "oneshot", "rounds": 1})
    # 85 s bounds the run on an idle 2-core machine; a loaded shared box may need DISTILL_APPS_FLOWER_TIMEOUT
    res = F.deploy(cfg, workdir=tmp_path, timeout=float(os.environ.get("DISTILL_APPS_FLOWER_TIMEOUT", "85")))
    assert res["deployment"]["superlink"].startswith("127.0.0.1:")
    one = res["strategies"]["oneshot"]
    assert one["accuracy"] > 0.2 and not one["rejected"] and not one["failures"]
    assert set(one["clients"]) == {"0", "1"}
    for pid, info in one["clients"].items():
        local = F.distill_partition(F.client_partition(cfg, int(pid), 2), cfg)
        assert info["sha256_client"] == info["sha256_server"] == F.summary_digest(F.summary_tensors(local))
    assert one["bytes_up"] == sum(c["up"] for r in one["by_round"] for c in r["per_client"].values())
    for pid in res["deployment"]["pids"]:  # every process we started is gone
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


@pytest.mark.slow
def test_supernode_killed_mid_round_does_not_crash_the_server(tmp_path):
    """3 SuperNodes; one is SIGKILLed (with its ClientApp) right after it pulls its train message. The SuperLink
    turns the lost heartbeat into an error reply, the strategy records the failure and aggregates the other two."""
    cfg = F.FederatedConfig(**{**TINY, "num_clients": 3, "strategies": "oneshot", "rounds": 1, "steps": 30,
                               "round_timeout": 90.0})
    res = F.deploy(cfg, workdir=tmp_path, timeout=float(os.environ.get("DISTILL_APPS_FLOWER_TIMEOUT", "85")) + 90,
                   during_run=kill_when_logged("supernode-2"))
    assert (tmp_path / "logs" / "supernode-2.killed").exists()
    one = res["strategies"]["oneshot"]
    rnd = one["by_round"][0]
    assert rnd["sampled"] == 3 and rnd["failures"] + (rnd["sampled"] - rnd["replies"]) == 1
    assert set(one["clients"]) == {"0", "1"} and len(one["failures"]) <= 1
    assert one["accuracy"] > 0.2  # the global model was trained on the two summaries that arrived
